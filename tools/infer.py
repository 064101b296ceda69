"""Run a trained model on your own images, folders, globs and videos.

::

    python tools/infer.py CONFIG CHECKPOINT INPUT [INPUT ...] --out-dir DIR
        [--batch-size N] [--score-thr T] [--texts "a . b"]
        [--device cpu|cuda] [--every K] [--no-vis] [--allow-partial]
        [--cfg-options k=v ...]

Needs only the config and the checkpoint: each image goes through the
config's test pipeline and the model's own ``test_step``, so the boxes are
``tools/test.py``'s on the same images, whatever ``--batch-size``. Writes
``DIR/predictions.json`` (one record per detection: ``file_name``,
``frame`` for videos, ``bbox`` as COCO ``[x, y, w, h]`` in original-image
pixels, ``score``, ``category_id`` = label index, ``category_name``) and
``DIR/vis/`` (pictures with boxes, labels and scores; an annotated video per
video input; mask overlays for the segmentation model). Unreadable images
are skipped and listed at the end. See docs/inference.md.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

# Importing the mmdet wing registers every plugin.
import plugins.mmdet_custom  # noqa: E402,F401,I001
from mmengine.config import DictAction  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Predict with a trained model on images and videos')
    parser.add_argument('config', help='the model\'s config file')
    parser.add_argument('checkpoint', help='trained weights (.pth or '
                        '.safetensors)')
    parser.add_argument('inputs', nargs='+', metavar='INPUT',
                        help='image or video files, folders, glob patterns')
    parser.add_argument('--out-dir', required=True,
                        help='where predictions.json and vis/ are written')
    parser.add_argument('--batch-size', type=int, default=1,
                        help='images per forward pass (default 1)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='keep detections scoring at least this '
                        '(default 0.3)')
    parser.add_argument('--texts', default=None,
                        help='class prompt of a GroundingDINO model, e.g. '
                        '"cat . dog" (default: the dataset\'s class names)')
    parser.add_argument('--device', default=None,
                        help='cpu, cuda or cuda:N (default: cuda if '
                        'available)')
    parser.add_argument('--every', type=int, default=1, metavar='K',
                        help='every K-th frame of a video (default 1)')
    parser.add_argument('--no-vis', action='store_true',
                        help='write predictions.json only')
    parser.add_argument('--no-progress', action='store_true',
                        help='no progress bar')
    parser.add_argument('--allow-partial', action='store_true',
                        help='accept a checkpoint that does not set every '
                        'model weight')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings')
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f'--batch-size must be >= 1, got {args.batch_size}')
    if args.every < 1:
        parser.error(f'--every must be >= 1, got {args.every}')
    return args


def _refuse(message: str) -> None:
    print(f'tools/infer.py: error: {message}', file=sys.stderr)
    sys.exit(2)


def main(argv=None):
    args = parse_args(argv)
    import torch

    from plugins.mmdet_custom.apis import (CheckpointMismatchError,
                                           Predictor, collect_inputs,
                                           init_detector, run_inference)
    from plugins.utils import CheckpointError
    for what, path in (('config', args.config),
                       ('checkpoint', args.checkpoint)):
        if not osp.isfile(path):
            _refuse(f'{what} not found: {path}')
    try:  # before the model is built: a typo fails at once
        items = collect_inputs(args.inputs)
    except (FileNotFoundError, ValueError) as err:
        _refuse(str(err))
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        model = init_detector(args.config, args.checkpoint, device=device,
                              cfg_options=args.cfg_options,
                              allow_partial=args.allow_partial)
    except (CheckpointMismatchError, CheckpointError) as err:
        _refuse(f'refusing {args.checkpoint} for {args.config}:\n{err}')
    try:
        predictor = Predictor(model, texts=args.texts)
    except (KeyError, ValueError) as err:  # no test pipeline, bad --texts
        _refuse(str(err.args[0]) if err.args else repr(err))
    summary = run_inference(model, items, args.out_dir,
                            batch_size=args.batch_size,
                            score_thr=args.score_thr, every=args.every,
                            draw=not args.no_vis,
                            progress=not args.no_progress,
                            predictor=predictor)
    what = (f'{summary.masks} masks' if summary.masks else
            f'{summary.detections} detections with score >= '
            f'{args.score_thr}')
    print(f'{summary.images} images in {summary.seconds:.1f} s '
          f'({summary.images_per_second:.2f} images/s), {what} -> '
          f'{summary.predictions}')
    if not args.no_vis:
        print(f'pictures: {osp.join(args.out_dir, "vis")}')
    if summary.failed:
        print(f'skipped {len(summary.failed)} unreadable inputs:')
        for name, why in summary.failed:
            print(f'  {name}: {why}')
        if not summary.images:
            sys.exit(1)
    return summary


if __name__ == '__main__':
    main()
