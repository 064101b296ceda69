"""Score candidate regions against positive/negative prompts (zero-shot).

Inputs (positional ``INPUT``):

* an image file, with ``--regions`` a JSON list of regions (or
  ``{"regions": [...]}``);
* a folder of images, with ``--regions`` a JSON object
  ``{"file_name": [regions], ...}`` (names relative to the folder);
* a COCO results file (``*.json``: ``[{"image_id", "bbox", "score", ...}]``,
  e.g. from ``tools/test.py``), with ``--ann`` the COCO annotation file
  (for file names) and ``--image-root`` the image folder.

A region is ``{"box": [x1, y1, x2, y2]}`` or ``{"bbox": [x, y, w, h]}``
(COCO), optionally with ``"segmentation"`` (COCO RLE or polygons) and
``"score"``.  The output ``--out`` holds one record per region: the image,
its index, the box (xyxy), every field of
:data:`plugins.scoring.RECORD_FIELDS` and, when the region had a score,
``rescored = score * semantic_multiplier``.

Example::

    python tools/score_regions.py demo.jpg --regions regions.json \\
        --model ViT-B-32 --weights /models/open_clip_model.safetensors \\
        --pretrained-tag laion2b_s34b_b79k --strategy soft \\
        --out scores.json --show
"""
import argparse
import json
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
#: --show colours (RGB) by multiplier value (defaults of the rule).
COLOURS = {
    2.0: (0, 200, 0),
    1.0: (255, 215, 0),
    0.5: (255, 140, 0),
    0.1: (220, 0, 0)
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('input',
                   help='image, folder of images, or COCO results '
                   'JSON')
    p.add_argument('--regions', help='regions JSON (image or folder input)')
    p.add_argument('--ann', help='COCO annotation JSON (results input)')
    p.add_argument('--image-root', help='image folder (results input)')
    p.add_argument('--model', default='ViT-B-32', help='open_clip config')
    p.add_argument('--weights',
                   help='open_clip_model.safetensors / .bin or a folder '
                   'holding one (required: scores from random weights mean '
                   'nothing; see --random-weights)')
    p.add_argument('--random-weights', action='store_true',
                   help='smoke runs only: score with randomly initialised '
                   'weights instead of --weights')
    p.add_argument('--pretrained-tag',
                   help='open_clip release of the '
                   'weights, for its mean/std (e.g. laion2b_s34b_b79k)')
    p.add_argument('--positive',
                   default='coco80',
                   help="prompts: 'coco80',"
                   ' a file (one per line) or a comma-separated list')
    p.add_argument('--negative', default='background')
    p.add_argument('--strategy',
                   default='gray',
                   choices=['gray', 'raw', 'soft'])
    p.add_argument('--soft-alpha', type=float, default=0.4)
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--device', default='cpu')
    p.add_argument('--rule',
                   nargs='*',
                   default=[],
                   metavar='KEY=VALUE',
                   help='multiplier overrides, e.g. neg_thr=0.6')
    p.add_argument('--out', default='scores.json')
    p.add_argument('--show',
                   action='store_true',
                   help='write each image '
                   'with its regions coloured by multiplier')
    p.add_argument('--show-dir', help='default: <out stem>_show/')
    args = p.parse_args(argv)
    if bool(args.weights) == bool(args.random_weights):
        p.error('--weights PATH is required (region scores from random '
                'weights mean nothing); pass --random-weights instead for a '
                'smoke run' if not args.weights else
                '--weights and --random-weights exclude each other')
    return args


def collect_jobs(args) -> 'OrderedDict[str, list]':
    """``{image path: [region dicts]}`` from the inputs."""
    src = Path(args.input)
    jobs = OrderedDict()
    if src.is_file() and src.suffix.lower() == '.json':
        if not (args.ann and args.image_root):
            raise SystemExit('a COCO results input needs --ann and '
                             '--image-root')
        images = {
            im['id']: im['file_name']
            for im in json.loads(Path(args.ann).read_text())['images']
        }
        for det in json.loads(src.read_text()):
            path = str(Path(args.image_root) / images[det['image_id']])
            jobs.setdefault(path, []).append(det)
        return jobs
    if not args.regions:
        raise SystemExit('--regions is required for image/folder inputs')
    regions = json.loads(Path(args.regions).read_text())
    if src.is_dir():
        if not isinstance(regions, dict):
            raise SystemExit('for a folder, --regions must map file names '
                             'to region lists')
        for name, regs in regions.items():
            jobs[str(src / name)] = regs
        return jobs
    if isinstance(regions, dict):
        regions = regions.get('regions', regions.get(src.name))
    if not isinstance(regions, list):
        raise SystemExit(f'--regions must hold a list of regions for '
                         f'{src.name}')
    jobs[str(src)] = regions
    return jobs


def parse_rule(items) -> dict:
    rule = {}
    for item in items:
        key, _, value = item.partition('=')
        rule[key.strip()] = float(value)
    return rule


def draw(image: np.ndarray, boxes, records, path: Path) -> None:
    from PIL import Image, ImageDraw
    im = Image.fromarray(image)
    d = ImageDraw.Draw(im)
    for box, rec in zip(boxes, records):
        m = rec['semantic_multiplier']
        colour = COLOURS.get(m, (0, 120, 255))
        d.rectangle(box, outline=colour, width=2)
        d.text((box[0] + 2, box[1] + 1),
               f'x{m:g} {rec["s_pos_text"]}',
               fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from tqdm import tqdm

    from plugins.scoring import (build_region_scorer, decode_mask,
                                 load_image, to_xyxy)
    jobs = collect_jobs(args)
    scorer = build_region_scorer(args.model,
                                 args.weights,
                                 positive_prompts=args.positive,
                                 negative_prompts=args.negative,
                                 strategy=args.strategy,
                                 soft_alpha=args.soft_alpha,
                                 batch_size=args.batch_size,
                                 multiplier=parse_rule(args.rule),
                                 device=args.device,
                                 pretrained_tag=args.pretrained_tag)
    out_path = Path(args.out)
    show_dir = Path(args.show_dir
                    or out_path.with_name(out_path.stem + '_show'))
    records = []
    for path, regions in tqdm(jobs.items(), desc='images', unit='img'):
        image = load_image(path)
        h, w = image.shape[:2]
        boxes = [to_xyxy(r) for r in regions]
        masks = [decode_mask(r.get('segmentation'), h, w) for r in regions]
        scored = scorer.score(image, boxes, masks)
        for i, (region, box, rec) in enumerate(zip(regions, boxes, scored)):
            row = dict(image=path, index=i, box=box)
            for key in ('image_id', 'category_id', 'score'):
                if key in region:
                    row[key] = region[key]
            row.update(rec)
            if 'score' in region:
                row['rescored'] = float(region['score']) * \
                    rec['semantic_multiplier']
            records.append(row)
        if args.show:
            draw(image, boxes, scored, show_dir / (Path(path).stem + '.png'))
    result = dict(model=args.model,
                  weights=args.weights,
                  random_weights=args.random_weights,
                  strategy=args.strategy,
                  head=scorer.head,
                  multiplier_rule=scorer.rule.to_dict(),
                  positive_prompts=scorer.positive_prompts,
                  negative_prompts=scorer.negative_prompts,
                  records=records)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1))
    print(f'{len(records)} regions of {len(jobs)} images -> {out_path}')
    return result


if __name__ == '__main__':
    main()
