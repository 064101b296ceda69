"""Export a trained detector to ONNX or an AOTInductor package.

    python tools/export.py CONFIG CHECKPOINT --format onnx|aoti --out FILE
        [--size H W] [--dynamic] [--batch-size N] [--texts "a . b"]
        [--cfg-options k=v ...] [--allow-partial] [--verify [SEED]]

The exported program takes ``images`` float32 ``(N, 3, H, W)``, RGB 0-255,
resized and padded to ``H x W``, and returns ``boxes (N, K, 4)`` (xyxy,
input pixels), ``scores (N, K)`` and ``labels (N, K)`` int64.  ``FILE.json``
records the input size, the class names and the pad divisor.  See
docs/inference.md ("Export").  ``--verify`` runs the written file and eager
PyTorch on a random image and compares their top-K (one comparison for
every check of this project: ``compare_detections``); it exits with status
1 when they disagree.  A thin command line over
:func:`plugins.mmdet_custom.apis.export_detector`.
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import plugins.mmdet_custom  # noqa: E402,F401,I001  (registers the wing)
from mmengine.config import DictAction  # noqa: E402

from plugins.mmdet_custom.apis.export import (  # noqa: E402
    FORMATS, ExportError, export_detector)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Export a detector (config + checkpoint) to ONNX or '
                    'an AOTInductor .pt2 package')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='trained checkpoint')
    parser.add_argument('--format', required=True, choices=FORMATS,
                        help='onnx (ONNX Runtime, TensorRT) or aoti '
                             '(AOTInductor .pt2 package)')
    parser.add_argument('--out', required=True,
                        help='output file (.onnx / .pt2); FILE.json gets '
                             'the metadata')
    parser.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'),
                        help='input size (multiples of the pad divisor); '
                             "default: the test pipeline's resize scale")
    parser.add_argument('--dynamic', action='store_true',
                        help='symbolic height and width (multiples of the '
                             'pad divisor)')
    parser.add_argument('--batch-size', type=int, default=1,
                        help='N of the exported program (fixed; default 1)')
    parser.add_argument('--texts',
                        help='GroundingDINO: the class prompt fixed into the '
                             'export (default: the class names)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. '
                             'model.backbone.pretrained=None')
    parser.add_argument('--allow-partial', action='store_true',
                        help='accept a checkpoint that does not set every '
                             'weight (left as built)')
    parser.add_argument('--verify', type=int, nargs='?', const=0,
                        metavar='SEED',
                        help='run the exported file and eager PyTorch on a '
                             'random image (seed SEED, default 0) and '
                             'compare boxes (1e-2 px), scores (1e-4) and '
                             'labels; exit 1 if they disagree')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    # Cheap checks first: a wrong path fails before the model is built.
    for what, path in (('config', args.config),
                       ('checkpoint', args.checkpoint)):
        if not osp.isfile(path):
            sys.exit(f'tools/export.py: {what} not found: {path}')
    try:
        meta = export_detector(args.config, args.checkpoint, args.format,
                               args.out, size=args.size, dynamic=args.dynamic,
                               batch_size=args.batch_size, texts=args.texts,
                               cfg_options=args.cfg_options,
                               allow_partial=args.allow_partial,
                               verify=args.verify is not None,
                               verify_seed=args.verify or 0)
    except ExportError as err:
        sys.exit(f'tools/export.py: {err}')
    print(json.dumps(meta, indent=2))
    print(f'wrote {args.out} and {args.out}.json')
    if 'verify' in meta:
        v = meta['verify']
        print(f'verify ({args.format} vs eager, seed {v["seed"]}): '
              f'{"OK" if v["ok"] else "MISMATCH"}; {v["matched"]}/'
              f'{v["detections"]} detections matched ({v["moved"]} at '
              f'another position among near-tied scores, '
              f'{v["boundary_unmatched"]} swapped at the top-K boundary); '
              f'max box diff {v["max_box_px"]:.2e} px, max score diff '
              f'{v["max_score"]:.2e}')
        if not v['ok']:
            sys.exit('tools/export.py: the exported file disagrees with '
                     'eager PyTorch: ' + '; '.join(v['problems']))


if __name__ == '__main__':
    main()
