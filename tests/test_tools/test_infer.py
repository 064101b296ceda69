"""tools/infer.py predicts what tools/test.py predicts (same boxes, scores
and labels on the same images, at any --batch-size), reads folders and
videos, skips unreadable images without losing the rest; tools/test.py and
tools/infer.py refuse a checkpoint that does not fit the config (issue 25.1:
mmengine alone evaluates a randomly initialised model and exits 0)."""
import io
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import plugins.mmdet_custom  # noqa: F401  (registers the wing)
from tools import infer as infer_tool
from tools import test as test_tool

CONFIG = 'configs/_demo_/dino-4scale_surgeryclip-tiny_deformneck-s16-128_toy.py'


def _random_checkpoint(config: Path, path: Path, options=None) -> Path:
    """A config's model with initialised random weights, saved as this
    project's runner saves a checkpoint."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    cfg = Config.fromfile(str(config))
    cfg.merge_from_dict(options or {})
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    # torch_rng_state beside state_dict, as RNGStateHook writes it
    torch.save({'meta': {'iter': 0}, 'state_dict': model.state_dict(),
                'torch_rng_state': torch.get_rng_state()}, path)
    return path


@pytest.fixture(scope='module')
def demo_checkpoint(repo_root, tmp_path_factory) -> Path:
    return _random_checkpoint(repo_root / CONFIG,
                              tmp_path_factory.mktemp('ckpt') / 'demo.pth')


def _val_options(data_root: Path) -> list:
    ann = f'{data_root}/annotations/instances_val.json'
    return [f'test_dataloader.dataset.data_root={data_root}/',
            'test_dataloader.dataset.ann_file=annotations/instances_val.json',
            'test_dataloader.dataset.data_prefix.img=images/val/',
            f'test_evaluator.ann_file={ann}']


class _ResultUnpickler(pickle.Unpickler):
    """Reads tools/test.py --out: containers, numpy and torch tensors only
    (no other global may be imported)."""

    ALLOWED = {('torch._utils', '_rebuild_tensor_v2'),
               ('torch._utils', '_rebuild_tensor'),
               ('torch', 'Size'), ('collections', 'OrderedDict'),
               ('numpy._core.multiarray', '_reconstruct'),
               ('numpy._core.multiarray', 'scalar'), ('numpy', 'ndarray'),
               ('numpy', 'dtype'), ('torch.storage', '_load_from_bytes'),
               # pickle protocol 2 (mmengine.dump) writes bytes this way
               ('_codecs', 'encode')}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED or (
                module == 'torch' and name.endswith('Storage')) or (
                module == 'numpy.dtypes'):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'{module}.{name} not allowed')


def _test_py_predictions(repo_root, data_root, checkpoint, tmp_path) -> dict:
    out = tmp_path / 'test_out.pkl'
    result = subprocess.run(
        [sys.executable, 'tools/test.py', CONFIG, str(checkpoint),
         '--work-dir', str(tmp_path / 'work'), '--out', str(out),
         '--cfg-options', *_val_options(data_root)],
        cwd=repo_root, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    with open(out, 'rb') as f:
        samples = _ResultUnpickler(io.BytesIO(f.read())).load()
    preds = {}
    for sample in samples:
        inst = sample['pred_instances']
        preds[Path(sample['img_path']).name] = (
            np.asarray(inst['bboxes'], np.float64),
            np.asarray(inst['scores'], np.float64),
            np.asarray(inst['labels'], np.int64))
    return preds


def _infer_predictions(out_dir: Path) -> dict:
    records = json.loads((out_dir / 'predictions.json').read_text())
    grouped = {}
    for r in records:
        x, y, w, h = r['bbox']
        grouped.setdefault(Path(r['file_name']).name, []).append(
            ([x, y, x + w, y + h], r['score'], r['category_id']))
    preds = {}
    for name, rows in grouped.items():
        preds[name] = (np.array([b for b, _, _ in rows], np.float64),
                       np.array([s for _, s, _ in rows], np.float64),
                       np.array([c for _, _, c in rows], np.int64))
    return preds


def _assert_same(ours: dict, theirs: dict) -> None:
    assert sorted(ours) == sorted(theirs)
    for name in theirs:
        (b1, s1, l1), (b2, s2, l2) = ours[name], theirs[name]
        order1, order2 = np.argsort(-s1, kind='stable'), np.argsort(
            -s2, kind='stable')
        assert len(s1) == len(s2), name
        np.testing.assert_allclose(s1[order1], s2[order2], rtol=0, atol=1e-5,
                                   err_msg=name)
        np.testing.assert_array_equal(l1[order1], l2[order2], err_msg=name)
        np.testing.assert_allclose(b1[order1], b2[order2], rtol=0, atol=1e-3,
                                   err_msg=name)


@pytest.mark.slow
def test_infer_matches_test_py_at_batch_1_and_4(repo_root, toy_data_root,
                                                demo_checkpoint, tmp_path):
    theirs = _test_py_predictions(repo_root, toy_data_root, demo_checkpoint,
                                  tmp_path)
    assert len(theirs) == 4
    # the comparison can fail: predictions differ between images
    boxes = [b for b, _, _ in theirs.values()]
    assert not np.allclose(boxes[0], boxes[1])
    for batch in (1, 4):
        out = tmp_path / f'infer_b{batch}'
        summary = infer_tool.main(
            [CONFIG, str(demo_checkpoint),
             str(toy_data_root / 'images' / 'val'), '--out-dir', str(out),
             '--batch-size', str(batch), '--score-thr', '0', '--device',
             'cpu', '--no-progress'])
        assert summary.images == 4 and not summary.failed
        ours = _infer_predictions(out)
        _assert_same(ours, theirs)
        assert sorted(p.name for p in (out / 'vis').iterdir()) == sorted(
            Path(n).with_suffix('.png').name for n in theirs)


def _write_video(path: Path, frames: list, fps: float = 5.0) -> None:
    import cv2
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), fps,
                             (w, h))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame[..., ::-1].copy())
    writer.release()


def _frame_count(path: Path) -> int:
    import cv2
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def test_infer_video_and_bad_images(repo_root, toy_data_root,
                                    demo_checkpoint, tmp_path):
    val = sorted((toy_data_root / 'images' / 'val').glob('*.png'))
    images = [np.asarray(Image.open(p).convert('RGB')) for p in val]
    folder = tmp_path / 'inputs'
    (folder / 'sub').mkdir(parents=True)
    _write_video(folder / 'clip.mp4', images + images[:1])  # 5 frames
    shutil.copy(val[0], folder / 'a.png')
    # another size: batching must not pad it to its neighbours' size
    Image.fromarray(images[1][:96, :]).save(folder / 'sub' / 'b.png')
    (folder / 'broken.png').write_bytes(b'not a png at all')
    shutil.copy(val[2], folder / 'c.png')
    results = {}
    for batch in (1, 3):
        out = tmp_path / f'out_b{batch}'
        summary = infer_tool.main(
            [CONFIG, str(demo_checkpoint), str(folder), '--out-dir',
             str(out), '--batch-size', str(batch), '--score-thr', '0.0',
             '--every', '2', '--device', 'cpu', '--no-progress'])
        assert [name for name, _ in summary.failed] == ['broken.png']
        assert summary.images == 3 + 3  # a, c, sub/b + frames 0, 2, 4
        records = json.loads((out / 'predictions.json').read_text())
        frames = sorted({r['frame'] for r in records
                         if r['file_name'] == 'clip.mp4'})
        assert frames == [0, 2, 4]
        assert {r['file_name'] for r in records} == {
            'a.png', 'c.png', 'sub/b.png', 'clip.mp4'}
        assert (out / 'vis' / 'sub' / 'b.png').is_file()
        assert _frame_count(out / 'vis' / 'clip.mp4') == 3
        results[batch] = _infer_predictions(out)
    # sub/b.png and clip.mp4 share a base name with nothing; compare all
    for name in results[1]:
        assert name in results[3]
    _assert_same(results[3], results[1])


def test_checkpoint_of_another_model_is_refused(repo_root, demo_checkpoint,
                                                toy_data_root, tmp_path,
                                                capsys):
    from plugins.mmdet_custom.apis import (CheckpointMismatchError,
                                           init_detector)
    from plugins.utils import save_safetensors
    state = torch.load(demo_checkpoint, weights_only=True)['state_dict']
    backbone = {k[len('backbone.'):]: v for k, v in state.items()
                if k.startswith('backbone.')}
    bare = save_safetensors(backbone, tmp_path / 'backbone.safetensors')
    with pytest.raises(CheckpointMismatchError) as err:
        init_detector(str(repo_root / CONFIG), str(bare))
    # every key of the model is missing except the backbone's activation
    # record, which checkpoints from before it may lack (a warning)
    expected_missing = len([k for k in state
                            if k != 'backbone.activation'])
    assert f'{expected_missing} missing, {len(backbone)} unexpected' in str(
        err.value)
    # an explicit partial load is allowed
    model = init_detector(str(repo_root / CONFIG), str(bare),
                          allow_partial=True)
    assert not model.training

    with pytest.raises(SystemExit) as exit_info:
        infer_tool.main([CONFIG, str(bare), str(toy_data_root / 'images' /
                                                'val'),
                         '--out-dir', str(tmp_path / 'o'), '--device', 'cpu'])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert 'missing' in message and 'unexpected' in message
    assert not (tmp_path / 'o' / 'predictions.json').exists()

    with pytest.raises(SystemExit) as exit_info:
        test_tool.main([CONFIG, str(bare), '--work-dir', str(tmp_path / 'w'),
                        '--cfg-options', *_val_options(toy_data_root)])
    assert exit_info.value.code == 2
    assert f'{expected_missing} missing' in capsys.readouterr().err


def test_region_rescoring_takes_a_bare_detector_checkpoint(repo_root,
                                                           tmp_path):
    """The strict check sees keys after the model's own load hooks: the
    rescoring wrapper moves a bare detector's keys under ``detector.``."""
    from plugins.mmdet_custom.apis import (CheckpointMismatchError,
                                           init_detector)
    inner = repo_root / ('configs/_demo_/dino-4scale_openclip-tiny_'
                         'deformneck-s16-128_toy.py')
    wrapper = repo_root / ('configs/region_scoring/dino-4scale_openclip-'
                           'tiny_deformneck-s16-128_rescored-vitb32_toy.py')
    bare = _random_checkpoint(inner, tmp_path / 'bare.pth')
    model = init_detector(wrapper, bare)
    state = torch.load(bare, weights_only=True)['state_dict']
    key = 'bbox_head.cls_branches.0.bias'
    assert torch.equal(model.detector.state_dict()[key], state[key])
    del state[key]
    torch.save({'state_dict': state}, tmp_path / 'short.pth')
    with pytest.raises(CheckpointMismatchError, match='1 missing, 0 unexp'):
        init_detector(wrapper, tmp_path / 'short.pth')


def test_infer_segmentor_writes_masks_and_overlays(repo_root, toy_data_root,
                                                   tmp_path):
    config = 'configs/_demo_/vpt4-tpt4_biomedclip-tiny_toy-semantic.py'
    ckpt = _random_checkpoint(repo_root / config, tmp_path / 'vpt.pth')
    val = sorted((toy_data_root / 'images' / 'val').glob('*.png'))[:2]
    summary = infer_tool.main([config, str(ckpt), *map(str, val),
                               '--out-dir', str(tmp_path / 'out'),
                               '--batch-size', '2', '--device', 'cpu',
                               '--no-progress'])
    assert summary.masks == 2
    records = json.loads((tmp_path / 'out' / 'predictions.json').read_text())
    for record, image in zip(records, val):
        mask = np.asarray(Image.open(tmp_path / 'out' / record['mask_file']))
        assert mask.shape == (128, 128)  # the toy fixture's image size
        assert sum(record['class_pixels'].values()) == mask.size
        overlay = Image.open(tmp_path / 'out' / 'vis' / Path(
            record['file_name']).with_suffix('.png').name)
        assert overlay.size == (128, 128)


def test_infer_grounding_dino_takes_the_prompt(repo_root, toy_data_root,
                                               tmp_path):
    from tools.make_tiny_bert import make_tiny_bert
    config = ('configs/_demo_/grounding_dino-4scale_surgeryclip-tiny_'
              'deformneck-s16-128_toy.py')
    bert = str(make_tiny_bert(tmp_path / 'bert'))
    option = {'model.language_model.name': bert}
    ckpt = _random_checkpoint(repo_root / config, tmp_path / 'gd.pth',
                              option)
    image = str(sorted((toy_data_root / 'images' / 'val').glob('*.png'))[0])
    names = {}
    for texts in (None, 'red shape . blue shape'):
        out = tmp_path / f'out_{texts is None}'
        summary = infer_tool.main(
            [config, str(ckpt), image, '--out-dir', str(out),
             '--score-thr', '0', '--device', 'cpu', '--no-progress',
             '--cfg-options', f'model.language_model.name={bert}'] +
            (['--texts', texts] if texts else []))
        assert summary.detections == 50
        records = json.loads((out / 'predictions.json').read_text())
        names[texts] = {(r['category_id'], r['category_name'])
                        for r in records}
    assert names[None] <= {(0, 'circle'), (1, 'square'), (2, 'triangle')}
    assert names['red shape . blue shape'] <= {(0, 'red shape'),
                                               (1, 'blue shape')}
