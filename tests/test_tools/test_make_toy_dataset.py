import json

import numpy as np
from PIL import Image

from tools.make_toy_dataset import CATEGORIES, make_toy_dataset


def _load(root, split):
    with open(root / 'annotations' / f'instances_{split}.json') as f:
        return json.load(f)


def test_layout_and_counts(toy_data_root):
    train, val = _load(toy_data_root, 'train'), _load(toy_data_root, 'val')
    assert len(train['images']) == 8 and len(val['images']) == 4
    assert [c['name'] for c in train['categories']] == list(CATEGORIES)
    train8 = _load(toy_data_root, 'train8')
    assert len(train8['images']) == 8
    for img in train['images']:
        assert (toy_data_root / 'images' / 'train' / img['file_name']).is_file()
        assert (toy_data_root / 'semantic' / 'train' / img['file_name']).is_file()


def test_boxes_match_semantic_masks(toy_data_root):
    coco = _load(toy_data_root, 'train')
    for img in coco['images']:
        sem = np.array(Image.open(toy_data_root / 'semantic' / 'train' /
                                  img['file_name']))
        anns = [a for a in coco['annotations'] if a['image_id'] == img['id']]
        assert anns, 'every image has at least one shape'
        for ann in anns:
            x, y, w, h = ann['bbox']
            crop = sem[int(y) + 1:int(y + h), int(x) + 1:int(x + w)]
            # The category's pixels fill most of its own box...
            frac = (crop == ann['category_id']).mean()
            assert frac > 0.4, (ann, frac)
        # ...and nothing outside the union of boxes is labelled.
        inside = np.zeros_like(sem, dtype=bool)
        for ann in anns:
            x, y, w, h = ann['bbox']
            inside[int(y):int(np.ceil(y + h)) + 1,
                   int(x):int(np.ceil(x + w)) + 1] = True
        assert not sem[~inside].any()


def test_deterministic(tmp_path):
    a = make_toy_dataset(tmp_path / 'a', num_train=2, num_val=1, size=64)
    b = make_toy_dataset(tmp_path / 'b', num_train=2, num_val=1, size=64)
    assert _load(a, 'train') == _load(b, 'train')
    img_a = np.array(Image.open(a / 'images' / 'train' / '000001.png'))
    img_b = np.array(Image.open(b / 'images' / 'train' / '000001.png'))
    assert np.array_equal(img_a, img_b)


def test_small_object_variant(tmp_path):
    from tools.make_toy_dataset import make_small_object_dataset
    a = make_small_object_dataset(tmp_path / 'a', num_train=6, num_val=2)
    b = make_small_object_dataset(tmp_path / 'b', num_train=6, num_val=2)
    coco = _load(a, 'train')
    assert coco == _load(b, 'train')  # deterministic
    assert len(coco['images']) == 6 and len(_load(a, 'train8')['images']) == 6
    sizes = {(img['width'], img['height']) for img in coco['images']}
    assert len(sizes) > 1  # random sizes...
    for img in coco['images']:
        assert 256 <= img['width'] <= 512 and 256 <= img['height'] <= 512
        pixels = Image.open(a / 'images' / 'train' / img['file_name'])
        assert pixels.size == (img['width'], img['height'])
        anns = [x for x in coco['annotations'] if x['image_id'] == img['id']]
        assert 4 <= len(anns) <= 10  # several objects per image
        for ann in anns:
            x, y, w, h = ann['bbox']
            assert 5.5 <= max(w, h) <= 24.5, ann  # 6-24 px boxes
            assert w * h < 32 * 32  # COCO "small"
            assert x >= 0 and y >= 0 and x + w <= img['width']
    img_a = np.array(Image.open(a / 'images' / 'train' / '000002.png'))
    img_b = np.array(Image.open(b / 'images' / 'train' / '000002.png'))
    assert np.array_equal(img_a, img_b)
