"""A toy referring-segmentation dataset built from the bundled toy data.

Every distinct ``(colour, shape)`` pair of a toy image becomes one sample:
"segment the red circle" -> the binary mask of all red circles of that
image (the union when there are several, as in gRefCOCO). Masks are
rasterised from the COCO polygons (the toy shapes never overlap), so no
mask files are needed; the data is generated locally by
``tools/make_toy_dataset.py``.
"""
import json
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from .splice import IGNORE_INDEX
from .tokenizer import IMAGE_TOKEN, SEG_TOKEN

# Swin was trained on ImageNet statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def referring_prompt(expression: str) -> str:
    """The user turn; the image placeholder comes first, as in PSALM."""
    return f'USER: {IMAGE_TOKEN} please segment the {expression} . ASSISTANT:'


def referring_answer() -> str:
    """The supervised assistant turn; ``[SEG]`` carries the mask query."""
    return f' sure , it is {SEG_TOKEN} .'


def rasterize_polygons(polygons: Sequence[Sequence[float]], height: int,
                       width: int, scale: float = 1.0) -> np.ndarray:
    """Fill COCO polygons ``[x0, y0, x1, y1, ...]`` into a ``(H, W)`` uint8
    mask, scaling the coordinates by ``scale`` first."""
    canvas = Image.new('L', (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        points = [(poly[i] * scale, poly[i + 1] * scale)
                  for i in range(0, len(poly) - 1, 2)]
        if len(points) >= 3:
            draw.polygon(points, fill=1)
    return np.asarray(canvas, dtype=np.uint8)


def tokenize_example(tokenizer, prompt: str, answer: str,
                     max_length: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """``input_ids`` and ``labels`` (prompt masked with ``IGNORE_INDEX``) of
    ``prompt + answer + eos``."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)['input_ids']
    answer_ids = tokenizer(answer, add_special_tokens=False)['input_ids']
    answer_ids = answer_ids + [tokenizer.eos_token_id]
    input_ids = prompt_ids + answer_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    if max_length is not None and len(input_ids) > max_length:
        raise ValueError(f'example has {len(input_ids)} tokens, more than '
                         f'max_length ({max_length})')
    return dict(input_ids=torch.tensor(input_ids, dtype=torch.long),
                labels=torch.tensor(labels, dtype=torch.long))


class ToyReferringSegDataset(Dataset):
    """Referring segmentation samples from a toy COCO file.

    Args:
        data_root (str | Path): The toy dataset folder (``data/toy``).
        tokenizer: A Hugging Face tokenizer with ``<image>`` and ``[SEG]``.
        split (str): ``'train'`` or ``'val'``. Default: ``'train'``.
        image_size (int): Images and masks are resized to a square of this
            size. Default: 128.
        ann_file (str, optional): Annotation file name inside
            ``annotations/`` (e.g. ``instances_train8.json``); default
            ``instances_{split}.json``.

    Each item is a dict: ``pixel_values (3, S, S)`` float (ImageNet-normalised),
    ``input_ids (L,)``, ``labels (L,)``, ``masks (1, S, S)`` float (one mask
    per ``[SEG]``), ``expression`` str, ``image_id`` int.
    """

    def __init__(self, data_root, tokenizer, split: str = 'train',
                 image_size: int = 128, ann_file: Optional[str] = None):
        self.root = Path(data_root)
        self.tokenizer = tokenizer
        self.split = split
        self.image_size = image_size
        ann_path = self.root / 'annotations' / (
            ann_file or f'instances_{split}.json')
        if not ann_path.is_file():
            raise FileNotFoundError(
                f'{ann_path} not found; generate the toy data with '
                f'`python tools/make_toy_dataset.py --out {self.root}`')
        with open(ann_path) as f:
            coco = json.load(f)
        self.samples = self._build_samples(coco)
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        self._norm = (mean, std)

    @staticmethod
    def _build_samples(coco: dict) -> List[dict]:
        names = {c['id']: c['name'] for c in coco['categories']}
        images = {img['id']: img for img in coco['images']}
        groups = defaultdict(list)
        for ann in coco['annotations']:
            key = (ann['image_id'], ann['color'], names[ann['category_id']])
            groups[key].append(ann)
        samples = []
        # Sorted for a deterministic order independent of the JSON layout.
        for (image_id, color, name), anns in sorted(groups.items()):
            samples.append(dict(
                image=images[image_id], expression=f'{color} {name}',
                polygons=[p for a in anns for p in a['segmentation']]))
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        info = sample['image']
        path = self.root / 'images' / self.split / info['file_name']
        size = self.image_size
        image = Image.open(path).convert('RGB')
        scale = size / image.width
        if image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
        pixels = torch.from_numpy(np.array(image, dtype=np.float32) / 255.0)
        pixels = (pixels.permute(2, 0, 1) - self._norm[0]) / self._norm[1]
        mask = rasterize_polygons(sample['polygons'], size, size, scale)
        item = tokenize_example(self.tokenizer,
                                referring_prompt(sample['expression']),
                                referring_answer())
        item.update(pixel_values=pixels,
                    masks=torch.from_numpy(mask.copy()).float()[None],
                    expression=sample['expression'], image_id=info['id'])
        return item


def collate_referring(batch: List[dict], pad_token_id: int) -> dict:
    """Right-pad ``input_ids``/``labels``, stack images, concatenate masks.

    Returns ``pixel_values (B, 3, S, S)``, ``input_ids (B, L)``,
    ``attention_mask (B, L)``, ``labels (B, L)``, ``masks (sum_b K_b, S, S)``
    in the order of the ``[SEG]`` tokens.
    """
    length = max(len(item['input_ids']) for item in batch)
    input_ids = torch.full((len(batch), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, item in enumerate(batch):
        n = len(item['input_ids'])
        input_ids[row, :n] = item['input_ids']
        labels[row, :n] = item['labels']
        attention_mask[row, :n] = 1
    return dict(pixel_values=torch.stack([b['pixel_values'] for b in batch]),
                input_ids=input_ids, attention_mask=attention_mask,
                labels=labels, masks=torch.cat([b['masks'] for b in batch]))
