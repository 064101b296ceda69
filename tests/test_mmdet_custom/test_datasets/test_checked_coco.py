"""CheckedCocoDataset: a COCO annotation file is checked once when loaded.
Bad geometry is an error naming file, image id and annotation id (mmdet's
CocoDataset turns it into training targets); the annotations mmdet drops
are counted in one warning line; a broken file says what is missing."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
from mmengine.config import Config

from mmdet.datasets import CocoDataset
from plugins.mmdet_custom.datasets import CheckedCocoDataset, checked_coco

CLASSES = ('circle', 'square', 'triangle')


@pytest.fixture(scope='module')
def toy_train(toy_data_root) -> dict:
    return json.loads(
        (toy_data_root / 'annotations' / 'instances_train.json').read_text())


def _dataset(root: Path, ann_file: Path, cls=CheckedCocoDataset, **kwargs):
    return cls(data_root=str(root) + '/', ann_file=str(ann_file),
               data_prefix=dict(img='images/train/'),
               metainfo=dict(classes=CLASSES),
               filter_cfg=dict(filter_empty_gt=False), pipeline=[], **kwargs)


def _write(tmp_path: Path, data, name='ann.json') -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.fixture
def warnings_seen(monkeypatch) -> list:
    seen = []

    def record(msg, logger=None, level=None):
        seen.append((level, msg))

    monkeypatch.setattr(checked_coco, 'print_log', record)
    return seen


def test_clean_file_loads_as_mmdet_does(toy_data_root, toy_train, tmp_path,
                                        warnings_seen):
    ann = _write(tmp_path, toy_train)
    ours, theirs = _dataset(toy_data_root, ann), _dataset(toy_data_root, ann,
                                                          cls=CocoDataset)
    assert len(ours) == len(theirs) == len(toy_train['images'])
    for i in range(len(ours)):
        assert ours.get_data_info(i)['instances'] == \
            theirs.get_data_info(i)['instances']
    assert warnings_seen == []


@pytest.mark.parametrize('value', [float('inf'), float('nan')])
def test_non_finite_box_is_an_error(toy_data_root, toy_train, tmp_path,
                                    value):
    data = copy.deepcopy(toy_train)
    ann = data['annotations'][2]
    ann['bbox'][2] = value  # json writes Infinity / NaN, Python reads them
    path = _write(tmp_path, data)
    if value == float('inf'):
        # mmdet alone keeps the box: an infinite x2, clipped later.
        plain = _dataset(toy_data_root, path, cls=CocoDataset)
        boxes = [inst['bbox'] for i in range(len(plain))
                 for inst in plain.get_data_info(i)['instances']]
        assert any(np.isinf(box).any() for box in boxes)
    with pytest.raises(ValueError) as err:
        _dataset(toy_data_root, path)
    message = str(err.value)
    assert str(path) in message and 'not finite' in message
    assert f'image id {ann["image_id"]}, annotation id {ann["id"]}' in message


def test_image_size_disagreeing_with_the_file_is_an_error(
        toy_data_root, toy_train, tmp_path):
    data = copy.deepcopy(toy_train)
    image = data['images'][1]
    assert (image['width'], image['height']) == (128, 128)
    image['width'] = image['height'] = 256
    ids = [a['id'] for a in data['annotations'] if a['image_id'] == image['id']]
    path = _write(tmp_path, data)
    _dataset(toy_data_root, path, cls=CocoDataset)  # mmdet: silently wrong
    with pytest.raises(ValueError) as err:
        _dataset(toy_data_root, path)
    message = str(err.value)
    assert str(path) in message and f'image id {image["id"]} ' in message
    assert image['file_name'] in message
    assert '256x256 (width x height) in the annotation file but 128x128 in ' \
        'the image file' in message
    assert f'ids {ids}' in message
    # the check can be turned off for remote or huge data
    assert len(_dataset(toy_data_root, path, check_image_sizes=False)) == 8


def test_dropped_annotations_are_counted_in_one_warning(
        toy_data_root, toy_train, tmp_path, warnings_seen):
    data = copy.deepcopy(toy_train)
    anns = data['annotations']
    anns[0]['bbox'][2] = -5           # negative width
    anns[1]['area'] = 0               # no area
    anns[2]['bbox'][:2] = [500, 500]  # off the 128x128 image
    anns[3]['category_id'] = 99       # not a class
    anns[4]['image_id'] = 4242        # names no image
    path = _write(tmp_path, data)
    dataset = _dataset(toy_data_root, path)
    kept = sum(len(dataset.get_data_info(i)['instances'])
               for i in range(len(dataset)))
    assert kept == len(anns) - 5
    assert len(warnings_seen) == 1
    level, message = warnings_seen[0]
    assert level == 30 and '\n' not in message  # logging.WARNING, one line
    assert message.startswith(f'{path}: 5 of {len(anns)} annotations are '
                              'not used: ')
    for part in ('2 have a width or height below 1 px or area <= 0',
                 '1 lie outside their image',
                 '1 have a category not in classes (category ids [99], '
                 "classes ['circle', 'square', 'triangle'])",
                 '1 name an image id not in "images"'):
        assert part in message, message


@pytest.mark.parametrize('case,expected', [
    ('truncated', 'not valid JSON (Expecting value at line 1 column 17)'),
    ('no_images', "no 'images' key (it has ['annotations', 'categories'"),
    ('no_annotations', "no 'annotations' key"),
    ('a_list', 'expected a JSON object'),
    ('empty_images', '"images" is empty'),
    ('image_without_size', "images[0] (id 1) has no 'width', 'height'"),
    ('annotation_without_bbox', "annotations[1] (id 2) has no 'bbox'"),
    ('bbox_of_three', 'is not four numbers'),
    ('duplicate_image_id', 'appears twice'),
])
def test_broken_file_names_itself_and_what_is_missing(
        toy_data_root, toy_train, tmp_path, case, expected):
    data = copy.deepcopy(toy_train)
    if case == 'truncated':  # a copy cut short
        data = '{"images": [{}, '
    elif case == 'no_images':
        del data['images']
    elif case == 'no_annotations':
        del data['annotations']
    elif case == 'a_list':
        data = [data]
    elif case == 'empty_images':
        data['images'] = []
    elif case == 'image_without_size':
        del data['images'][0]['width'], data['images'][0]['height']
    elif case == 'annotation_without_bbox':
        del data['annotations'][1]['bbox']
    elif case == 'bbox_of_three':
        data['annotations'][1]['bbox'] = [1, 2, 3]
    else:
        data['images'][1]['id'] = data['images'][0]['id']
    path = _write(tmp_path, data)
    with pytest.raises(ValueError) as err:
        _dataset(toy_data_root, path)
    assert str(path) in str(err.value) and expected in str(err.value), \
        str(err.value)


def test_test_mode_accepts_an_image_list_without_annotations(
        toy_data_root, toy_train, tmp_path):
    data = copy.deepcopy(toy_train)
    del data['annotations']
    dataset = _dataset(toy_data_root, _write(tmp_path, data), test_mode=True)
    assert len(dataset) == 8


CONFIGS = [
    'configs/_base_/datasets/toy_detection.py',
    'configs/_demo_/grounding_dino-4scale_r18-tiny_toy.py',
    'configs/_demo_/dino-4scale_surgeryclip-tiny_deformneck_toy-small.py',
    'configs/dino/dino-4scale_surgeryclip-vitb16_deformneck_8xb2-12e_coco.py',
    'configs/deformable_detr/deformable-detr-refine-twostage_surgeryclip-'
    'vitb16_deformneck_16xb2-50e_coco.py',
    'configs/grounding_dino/grounding_dino-4scale_surgeryclip-vitb16_'
    'deformneck_16xb2_1x_coco.py',
]


@pytest.mark.parametrize('config', CONFIGS)
def test_shipped_configs_use_the_checked_dataset(repo_root, config):
    cfg = Config.fromfile(str(repo_root / config))
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[loader].dataset.type == 'CheckedCocoDataset', loader
