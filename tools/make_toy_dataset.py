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

``--variant small`` writes the small-object set instead (same layout, same
categories): images of random size between ``--min-size`` and ``--max-size``
(256-512 px by default), each with 4-10 shapes whose boxes are 6-24 px on
their longer side (COCO "small" is < 32x32 px): the case a stride-16
feature map resolves poorly.

Usage::

    python tools/make_toy_dataset.py [--out data/toy] [--num-train 64]
        [--num-val 16] [--size 256] [--seed 0]
    python tools/make_toy_dataset.py --variant small --out data/toy_small
        [--num-train 64] [--num-val 16] [--min-size 256] [--max-size 512]
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


#: Box side range (px, longer side) and shapes per image of the small variant.
SMALL_OBJECT_PX = (6.0, 24.0)
SMALL_OBJECTS_PER_IMAGE = (4, 10)
#: Circumradius per box side: a circle's box is 2r, a square's (a diamond
#: here, phase pi/4, so its box is) 2r, a triangle's width r*sqrt(3).
_RADIUS_PER_SIDE = {'circle': 0.5, 'square': 0.5, 'triangle': 1 / math.sqrt(3)}


def _place_small_shapes(rng: np.random.Generator, width: int,
                        height: int) -> list:
    """4-10 non-overlapping shapes with 6-24 px boxes."""
    shapes = []
    lo, hi = SMALL_OBJECTS_PER_IMAGE
    target = int(rng.integers(lo, hi + 1))
    for _ in range(500):
        if len(shapes) == target:
            break
        kind = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        side = float(rng.uniform(*SMALL_OBJECT_PX))
        r = side * _RADIUS_PER_SIDE[kind]
        cx = float(rng.uniform(r + 2, width - r - 2))
        cy = float(rng.uniform(r + 2, height - r - 2))
        if all(math.hypot(cx - s[2], cy - s[3]) > r + s[4] + 4 for s in shapes):
            color = list(COLORS)[int(rng.integers(len(COLORS)))]
            shapes.append((kind, color, cx, cy, r))
    return shapes


def _render(rng: np.random.Generator, size, shapes: list):
    width, height = (size, size) if isinstance(size, int) else size
    base = rng.normal(110, 18, size=(height, width, 3)).clip(0, 255)
    image = Image.fromarray(base.astype(np.uint8))
    semantic = Image.new('L', (width, height), 0)
    draw, draw_sem = ImageDraw.Draw(image), ImageDraw.Draw(semantic)
    for kind, color, cx, cy, r in shapes:
        poly = shape_polygon(kind, cx, cy, r)
        draw.polygon(poly, fill=COLORS[color])
        draw_sem.polygon(poly, fill=CATEGORIES.index(kind) + 1)
    return image, semantic


def _annotation(ann_id: int, image_id: int, shape: tuple, size) -> dict:
    kind, color, cx, cy, r = shape
    width, height = (size, size) if isinstance(size, int) else size
    poly = [(min(max(x, 0.0), width - 1.0), min(max(y, 0.0), height - 1.0))
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
                 rng: np.random.Generator, small_sizes=None) -> dict:
    """One split; ``small_sizes=(min, max)`` switches to the small-object
    variant (random image sizes in that range)."""
    img_dir = root / 'images' / split
    sem_dir = root / 'semantic' / split
    img_dir.mkdir(parents=True, exist_ok=True)
    sem_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        if small_sizes is None:
            width = height = size
            shapes = _place_shapes(rng, size)
        else:
            width, height = (int(v) for v in rng.integers(
                small_sizes[0], small_sizes[1] + 1, size=2))
            shapes = _place_small_shapes(rng, width, height)
        image, semantic = _render(rng, (width, height), shapes)
        name = f'{index:06d}.png'
        image.save(img_dir / name)
        semantic.save(sem_dir / name)
        images.append(dict(id=index + 1, file_name=name, width=width,
                           height=height))
        for shape in shapes:
            annotations.append(_annotation(len(annotations) + 1, index + 1,
                                           shape, (width, height)))
    return dict(images=images, annotations=annotations,
                categories=[dict(id=i + 1, name=n, supercategory='shape')
                            for i, n in enumerate(CATEGORIES)])


def make_toy_dataset(root, num_train: int = 64, num_val: int = 16,
                     size: int = 256, seed: int = 0,
                     small_sizes=None) -> Path:
    """Generate the toy dataset under ``root`` and return its path.

    ``small_sizes=(min_side, max_side)`` writes the small-object variant
    instead (see :func:`make_small_object_dataset`); ``size`` is then
    unused.
    """
    root = Path(root)
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if small_sizes is not None and not 64 <= small_sizes[0] <= small_sizes[1]:
        raise ValueError(f'small-object image sides {tuple(small_sizes)} '
                         'must satisfy 64 <= min <= max')
    for split, count in (('train', num_train), ('val', num_val)):
        coco = _write_split(root, split, count, size, rng, small_sizes)
        with open(root / 'annotations' / f'instances_{split}.json', 'w') as f:
            json.dump(coco, f)
        if split == 'train':
            subset = _first_images(coco, 8)
            with open(root / 'annotations' / 'instances_train8.json', 'w') as f:
                json.dump(subset, f)
    return root


def make_small_object_dataset(root, num_train: int = 64, num_val: int = 16,
                              min_size: int = 256, max_size: int = 512,
                              seed: int = 0) -> Path:
    """The small-object variant: ``min_size``-``max_size`` px images (width
    and height drawn independently), 4-10 shapes each with 6-24 px boxes;
    deterministic for a seed."""
    return make_toy_dataset(root, num_train, num_val, seed=seed,
                            small_sizes=(min_size, max_size))


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
    parser.add_argument('--variant', choices=('shapes', 'small'),
                        default='shapes',
                        help='small: 6-24 px objects on 256-512 px images')
    parser.add_argument('--min-size', type=int, default=256,
                        help='small variant: smallest image side')
    parser.add_argument('--max-size', type=int, default=512,
                        help='small variant: largest image side')
    args = parser.parse_args(argv)
    if args.variant == 'small':
        root = make_small_object_dataset(args.out, args.num_train,
                                         args.num_val, args.min_size,
                                         args.max_size, args.seed)
    else:
        root = make_toy_dataset(args.out, args.num_train, args.num_val,
                                args.size, args.seed)
    print(f'toy dataset written to {root} '
          f'({args.num_train} train / {args.num_val} val images)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
