"""Evaluate a trained model, optionally writing pictures of predictions.

mmdet 3.x's command line::

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE.pkl]
        [--show-dir DIR] [--show] [--wait-time S] [--tta]
        [--cfg-options k=v ...] [--launcher {none,pytorch,slurm,mpi}]
        [--allow-partial]

The checkpoint must fit the config's model exactly: one that leaves model
weights unset (another architecture's checkpoint, a bare backbone file) is
refused, naming how many keys are missing/unexpected and a few of them
(mmengine alone would log them and evaluate a randomly initialised model).
``--allow-partial`` loads only the matching weights instead.

``--show-dir`` writes one image per test image with the predicted boxes and
labels drawn by mmdet's visualizer (``work_dir/<timestamp>/<show-dir>``).
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

# First: importing plugins puts the Hugging Face hub offline (unless
# PLUGINS_ALLOW_HUB=1 or HF_HUB_OFFLINE is set) before anything loads it,
# and registers every plugin.
import plugins  # noqa: E402,F401,I001
from mmengine.config import Config  # noqa: E402
from plugins.mmdet_custom.apis import (  # noqa: E402
    CheckpointMismatchError, load_model_checkpoint)
from plugins.mmdet_custom.engine.runner.cli import (  # noqa: E402
    add_common_args, build_runner, load_config)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    add_common_args(parser)
    parser.add_argument(
        '--out', type=str,
        help='dump predictions to a pickle file for offline evaluation')
    parser.add_argument(
        '--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir',
        help='directory (inside the work dir) where painted images are saved')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--tta', action='store_true',
                        help='test-time augmentation (config key tta_model)')
    parser.add_argument(
        '--allow-partial', action='store_true',
        help='accept a checkpoint that does not set every model weight '
        '(load the matching keys, leave the rest as built)')
    return parser.parse_args(argv)


def enable_visualization(cfg: Config, args) -> None:
    """Turn on mmdet's visualisation hook for --show / --show-dir."""
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise KeyError(f'{args.config}: --show/--show-dir need a '
                       '`visualization` entry in default_hooks '
                       '(e.g. dict(type="DetVisualizationHook"))')
    hooks.visualization.draw = True
    if args.show:
        hooks.visualization.show = True
        hooks.visualization.wait_time = args.wait_time
    if args.show_dir:
        hooks.visualization.test_out_dir = args.show_dir


def build_config(args) -> Config:
    cfg = load_config(args)
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {args.checkpoint}')
    # Loaded by main() with a strict key check, not by the runner (which
    # would only log missing/unexpected keys).
    cfg.load_from = None
    if args.show or args.show_dir:
        enable_visualization(cfg, args)
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise KeyError(f'{args.config}: --tta needs `tta_model` and '
                           '`tta_pipeline` in the config')
        cfg.model = dict(**cfg.tta_model, module=cfg.model)
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    if args.out is not None:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError(f'--out {args.out}: must be a .pkl/.pickle file')
        cfg.test_evaluator = _with_dump(cfg.test_evaluator, args.out)
    return cfg


def _with_dump(evaluator, out):
    dump = dict(type='DumpDetResults', out_file_path=out)
    if isinstance(evaluator, (list, tuple)):
        return [*evaluator, dump]
    return [evaluator, dump]


def main(argv=None) -> None:
    args = parse_args(argv)
    runner = build_runner(build_config(args))
    try:
        load_model_checkpoint(runner.model, args.checkpoint,
                              allow_partial=args.allow_partial)
    except CheckpointMismatchError as err:
        # exit 2 with the reason, as for a bad command line: nothing ran
        print(f'tools/test.py: error: refusing {args.checkpoint} for '
              f'{args.config}:\n{err}', file=sys.stderr)
        sys.exit(2)
    runner.test()


if __name__ == '__main__':
    main()
