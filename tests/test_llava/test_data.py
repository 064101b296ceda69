"""Toy referring-segmentation data and its tokenisation."""
import json

import numpy as np
import pytest
import torch

from plugins.llava.data import (IMAGENET_MEAN, IMAGENET_STD,
                                ToyReferringSegDataset, collate_referring,
                                rasterize_polygons)
from plugins.llava.splice import IGNORE_INDEX
from tools.make_toy_dataset import COLORS


def test_samples_are_colour_shape_pairs(toy_data_root, toy_tokenizer):
    dataset = ToyReferringSegDataset(toy_data_root, toy_tokenizer,
                                     image_size=128)
    with open(toy_data_root / 'annotations' / 'instances_train.json') as f:
        coco = json.load(f)
    pairs = {(a['image_id'], a['color'], a['category_id'])
             for a in coco['annotations']}
    assert len(dataset) == len(pairs)
    item = dataset[0]
    assert item['pixel_values'].shape == (3, 128, 128)
    assert item['masks'].shape == (1, 128, 128)
    color, shape = item['expression'].split()
    assert color in COLORS and shape in ('circle', 'square', 'triangle')


def test_mask_covers_the_named_colour(toy_data_root, toy_tokenizer):
    dataset = ToyReferringSegDataset(toy_data_root, toy_tokenizer,
                                     image_size=128)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for index in range(min(len(dataset), 6)):
        item = dataset[index]
        rgb = (item['pixel_values'] * std + mean) * 255
        mask = item['masks'][0].bool()
        assert mask.sum() > 20
        inside = rgb[:, mask].mean(dim=1)
        target = torch.tensor(COLORS[item['expression'].split()[0]],
                              dtype=torch.float)
        assert (inside - target).abs().max() < 25, item['expression']


def test_tokens_and_labels(toy_data_root, toy_tokenizer):
    dataset = ToyReferringSegDataset(toy_data_root, toy_tokenizer,
                                     image_size=128)
    item = dataset[0]
    ids, labels = item['input_ids'], item['labels']
    image_id = toy_tokenizer.convert_tokens_to_ids('<image>')
    seg_id = toy_tokenizer.convert_tokens_to_ids('[SEG]')
    assert int((ids == image_id).sum()) == 1 and int((ids == seg_id).sum()) == 1
    assert toy_tokenizer.unk_token_id not in ids.tolist()
    # The prompt is not supervised; the answer (with [SEG] and eos) is.
    supervised = ids[labels != IGNORE_INDEX]
    assert seg_id in supervised.tolist()
    assert supervised[-1] == toy_tokenizer.eos_token_id
    assert labels[(ids == image_id)].eq(IGNORE_INDEX).all()
    text = toy_tokenizer.decode(ids)
    assert item['expression'] in text


def test_collate_pads_right(toy_data_root, toy_tokenizer):
    dataset = ToyReferringSegDataset(toy_data_root, toy_tokenizer,
                                     image_size=64)
    items = [dataset[0], dataset[1]]
    items[1]['input_ids'] = items[1]['input_ids'][:-2]
    items[1]['labels'] = items[1]['labels'][:-2]
    batch = collate_referring(items, toy_tokenizer.pad_token_id)
    n0 = len(items[0]['input_ids'])
    assert batch['input_ids'].shape == (2, n0)
    assert batch['attention_mask'][1, -2:].tolist() == [0, 0]
    assert batch['labels'][1, -2:].tolist() == [IGNORE_INDEX] * 2
    assert batch['masks'].shape == (2, 64, 64)
    assert batch['pixel_values'].shape == (2, 3, 64, 64)


def test_rasterize_polygons_square():
    mask = rasterize_polygons([[2, 2, 9, 2, 9, 9, 2, 9]], 12, 12)
    assert mask.dtype == np.uint8 and mask.sum() == 64
    half = rasterize_polygons([[2, 2, 9, 2, 9, 9, 2, 9]], 6, 6, scale=0.5)
    assert half[1:5, 1:5].all()


def test_missing_data_explains_how_to_generate(tmp_path, toy_tokenizer):
    with pytest.raises(FileNotFoundError, match='make_toy_dataset'):
        ToyReferringSegDataset(tmp_path, toy_tokenizer)
