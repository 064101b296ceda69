"""Write the bundled toy dataset: coloured shapes on a noisy background.

Deterministic (a seed fixes every pixel), small, and in the formats the
project's demos read:

* ``images/{train,val}/NNNNNN.png``         RGB images
* ``annotations/instances_{train,val}.json`` COCO detection + polygons
  (extra key ``color`` per annotation), and ``instances_train8.json``, the
  first 8 training images, for overfit checks
* ``semantic/{train,val}/NNNNNN.png``        uint8 class index per pixel
  (0 background, then the category ids)

Shapes never overlap, so polygons, boxes and semantic masks agree exactly.

Usage::

    python tools/make_toy_dataset.py [--out data/toy] [--num-train 64]
        [--num-val 16] [--size 256] [--seed 0]
"""
import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = ('circle', 'square', 'triangle')
COLORS = {
    'red': (220, 40, 40),
    'green': (40, 180, 60),
    'blue': (40, 80, 220),
    'yellow': (230, 210, 40),
}


def shape_polygon(kind: str, cx: float, cy: float, r: float) -> list:
    """Vertices ``[(x, y), ...]`` of a shape centred at ``(cx, cy)``.

    ``r`` is the circumradius; circles are 32-gons so polygon, box and
    rasterised mask agree to a pixel.
    """
    if kind == 'circle':
        n, phase = 32, 0.0
    elif kind == 'square':
        n, phase = 4, math.pi / 4
    elif kind == 'triangle':
        n, phase = 3, -math.pi / 2
    else:
        raise ValueError(f'unknown shape {kind!r}; expected one of {CATEGORIES}')
    return [(cx + r * math.cos(phase + 2 * math.pi * i / n),
             cy + r * math.sin(phase + 2 * math.pi * i / n)) for i in range(n)]


def _place_shapes(rng: np.random.Generator, size: int) -> list:
    """Pick 1-4 non-overlapping shapes (kind, colour, centre, radius)."""
    shapes = []
    target = int(rng.integers(1, 5))
    for _ in range(100):
        if len(shapes) == target:
            break
        r = float(rng.uniform(0.08, 0.2) * size)
        cx, cy = (float(v) for v in rng.uniform(r + 2, size - r - 2, size=2))
        if all(math.hypot(cx - s[2], cy - s[3]) > r + s[4] + 4 for s in shapes):
            kind = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
            color = list(COLORS)[int(rng.integers(len(COLORS)))]
            shapes.append((kind, color, cx, cy, r))
    return shapes


def _render(rng: np.random.Generator, size: int, shapes: list):
    base = rng.normal(110, 18, size=(size, size, 3)).clip(0, 255)
    image = Image.fromarray(base.astype(np.uint8))
    semantic = Image.new('L', (size, size), 0)
    draw, draw_sem = ImageDraw.Draw(image), ImageDraw.Draw(semantic)
    for kind, color, cx, cy, r in shapes:
        poly = shape_polygon(kind, cx, cy, r)
        draw.polygon(poly, fill=COLORS[color])
        draw_sem.polygon(poly, fill=CATEGORIES.index(kind) + 1)
    return image, semantic


def _annotation(ann_id: int, image_id: int, shape: tuple, size: int) -> dict:
    kind, color, cx, cy, r = shape
    poly = [(min(max(x, 0.0), size - 1.0), min(max(y, 0.0), size - 1.0))
            for x, y in shape_polygon(kind, cx, cy, r)]
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
    # Shoelace formula: the exact polygon area, as COCO expects.
    area = 0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i]
                         for i in range(len(poly))))
    return dict(id=ann_id, image_id=image_id,
                category_id=CATEGORIES.index(kind) + 1, color=color,
                bbox=[round(x0, 2), round(y0, 2), round(x1 - x0, 2),
                      round(y1 - y0, 2)],
                segmentation=[[round(v, 2) for p in poly for v in p]],
                area=round(area, 2), iscrowd=0)


def _write_split(root: Path, split: str, num_images: int, size: int,
                 rng: np.random.Generator) -> dict:
    img_dir = root / 'images' / split
    sem_dir = root / 'semantic' / split
    img_dir.mkdir(parents=True, exist_ok=True)
    sem_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        shapes = _place_shapes(rng, size)
        image, semantic = _render(rng, size, shapes)
        name = f'{index:06d}.png'
        image.save(img_dir / name)
        semantic.save(sem_dir / name)
        images.append(dict(id=index + 1, file_name=name, width=size,
                           height=size))
        for shape in shapes:
            annotations.append(_annotation(len(annotations) + 1, index + 1,
                                           shape, size))
    return dict(images=images, annotations=annotations,
                categories=[dict(id=i + 1, name=n, supercategory='shape')
                            for i, n in enumerate(CATEGORIES)])


def make_toy_dataset(root, num_train: int = 64, num_val: int = 16,
                     size: int = 256, seed: int = 0) -> Path:
    """Generate the toy dataset under ``root`` and return its path."""
    root = Path(root)
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, count in (('train', num_train), ('val', num_val)):
        coco = _write_split(root, split, count, size, rng)
        with open(root / 'annotations' / f'instances_{split}.json', 'w') as f:
            json.dump(coco, f)
        if split == 'train':
            subset = _first_images(coco, 8)
            with open(root / 'annotations' / 'instances_train8.json', 'w') as f:
                json.dump(subset, f)
    return root


def _first_images(coco: dict, count: int) -> dict:
    keep = {img['id'] for img in coco['images'][:count]}
    return dict(images=coco['images'][:count],
                annotations=[a for a in coco['annotations']
                             if a['image_id'] in keep],
                categories=coco['categories'])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='data/toy')
    parser.add_argument('--num-train', type=int, default=64)
    parser.add_argument('--num-val', type=int, default=16)
    parser.add_argument('--size', type=int, default=256)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    root = make_toy_dataset(args.out, args.num_train, args.num_val,
                            args.size, args.seed)
    print(f'toy dataset written to {root} '
          f'({args.num_train} train / {args.num_val} val images)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
