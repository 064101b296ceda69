"""The command line on real file formats (one ViT-B-32 run, tiny others)."""
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from plugins.scoring import RECORD_FIELDS

REGIONS = [{
    'box': [2, 3, 40, 30]
}, {
    'bbox': [10, 10, 20, 25],
    'score': 0.8,
    'segmentation': [[10, 10, 30, 10, 30, 35, 10, 35]]
}]


@pytest.fixture
def image_file(tmp_path, image):
    path = tmp_path / 'img.png'
    Image.fromarray(image).save(path)
    (tmp_path / 'regions.json').write_text(json.dumps(REGIONS))
    return path


def check_records(result, n):
    assert len(result['records']) == n
    for rec in result['records']:
        for key in RECORD_FIELDS:
            assert key in rec, key
        assert 0 <= rec['p_pos_sum'] <= 1 and 0 <= rec['p_neg_sum'] <= 1


def test_vit_b32_safetensors_by_path(tmp_path, image_file, repo_root):
    """Random ViT-B-32 saved as open_clip_model.safetensors, loaded by the
    CLI through --weights, one JSON record per region with every field."""
    from plugins.models import create_model
    from plugins.models.testing import save_clip_checkpoint
    torch.manual_seed(0)
    model = create_model('ViT-B-32')
    weights = save_clip_checkpoint(model, tmp_path, 'safetensors')
    assert weights.name == 'open_clip_model.safetensors'
    del model
    out = tmp_path / 'scores.json'
    cmd = [
        sys.executable,
        str(repo_root / 'tools' / 'score_regions.py'),
        str(image_file), '--regions',
        str(tmp_path / 'regions.json'), '--model', 'ViT-B-32', '--weights',
        str(weights), '--strategy', 'soft', '--positive', 'a cat,a dog',
        '--out',
        str(out), '--show'
    ]
    subprocess.run(cmd, check=True, cwd=repo_root, timeout=600)
    result = json.loads(out.read_text())
    check_records(result, 2)
    assert result['head'] == 'softmax' and result['strategy'] == 'soft'
    rec = result['records'][1]
    assert rec['box'] == [10.0, 10.0, 30.0, 35.0]
    assert rec['rescored'] == pytest.approx(0.8 * rec['semantic_multiplier'])
    assert (tmp_path / 'scores_show' / 'img.png').is_file()


def test_folder_and_coco_results_inputs(tmp_path, image, repo_root):
    sys.path.insert(0, str(repo_root))
    from tools.score_regions import main
    folder = tmp_path / 'imgs'
    folder.mkdir()
    for name in ('a.png', 'b.png'):
        Image.fromarray(image).save(folder / name)
    regions = tmp_path / 'regions.json'
    regions.write_text(json.dumps({'a.png': REGIONS, 'b.png': REGIONS[:1]}))
    common = [
        '--model', 'ViT-Tiny-16-test', '--random-weights', '--positive',
        'a cat', '--negative',
        'sky,grass'
    ]
    result = main([
        str(folder), '--regions',
        str(regions), '--out',
        str(tmp_path / 'f.json')
    ] + common)
    check_records(result, 3)
    ann = tmp_path / 'ann.json'
    ann.write_text(json.dumps({'images': [{'id': 7, 'file_name': 'a.png'}]}))
    dets = tmp_path / 'dets.json'
    dets.write_text(
        json.dumps([
            dict(image_id=7, category_id=1, bbox=[1, 2, 30, 20], score=0.5),
            dict(image_id=7, category_id=2, bbox=[5, 5, 10, 10], score=0.9)
        ]))
    result = main([
        str(dets), '--ann',
        str(ann), '--image-root',
        str(folder), '--out',
        str(tmp_path / 'c.json'), '--rule', 'default_value=0.25'
    ] + common)
    check_records(result, 2)
    assert result['multiplier_rule']['default_value'] == 0.25
    assert [r['image_id'] for r in result['records']] == [7, 7]


def test_decode_mask_rle_and_polygon(repo_root):
    import numpy as np
    from pycocotools import mask as mask_utils
    sys.path.insert(0, str(repo_root))
    from plugins.scoring import decode_mask, to_xyxy
    m = np.zeros((6, 8), np.uint8, order='F')
    m[1:4, 2:6] = 1
    rle = mask_utils.encode(m)
    rle['counts'] = rle['counts'].decode()  # as stored in JSON
    np.testing.assert_array_equal(decode_mask(rle, 6, 8), m.astype(bool))
    poly = decode_mask([[2, 1, 6, 1, 6, 4, 2, 4]], 6, 8)
    assert poly.shape == (6, 8) and poly[2, 3] and not poly[5, 7]
    assert decode_mask(None, 6, 8) is None
    assert to_xyxy({'bbox': [1, 2, 3, 4]}) == [1.0, 2.0, 4.0, 6.0]
    with pytest.raises(ValueError, match="neither 'box' nor 'bbox'"):
        to_xyxy({'score': 1})
