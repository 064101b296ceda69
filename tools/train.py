"""Train a detector or segmentor from an mmdet-style config.

The command line is mmdet 3.x's, so existing scripts and launchers work::

    python tools/train.py CONFIG [--work-dir DIR] [--resume [auto|PATH]]
        [--amp] [--auto-scale-lr] [--cfg-options k=v ...]
        [--launcher {none,pytorch,slurm,mpi}]

Importing ``plugins.mmdet_custom`` registers every plugin; the shipped
configs also say ``custom_imports = dict(imports=['plugins.mmdet_custom'])``
(``configs/_base_/plugins_runtime.py``), so they run under mmdet's own
``tools/train.py`` unchanged.
"""
import argparse
import os.path as osp
import sys

# Running as `python tools/train.py` puts tools/ (not the repo) on sys.path;
# an uninstalled checkout still finds `plugins` this way.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

# Importing the mmdet wing registers every plugin (configs also name it in
# custom_imports, for mmdet's own tools).
import plugins.mmdet_custom  # noqa: E402,F401,I001
from mmengine.config import Config  # noqa: E402
from plugins.mmdet_custom.engine.runner.cli import (  # noqa: E402
    add_common_args, build_runner, load_config)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    add_common_args(parser)
    parser.add_argument(
        '--amp', action='store_true',
        help='enable automatic-mixed-precision training')
    parser.add_argument(
        '--auto-scale-lr', action='store_true',
        help='scale the learning rate by the actual batch size '
        '(config key auto_scale_lr.base_batch_size)')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from PATH, or from the latest checkpoint in the work '
        'dir when given without a value (or with "auto")')
    return parser.parse_args(argv)


def build_config(args) -> Config:
    """Merge the command line into the config, as mmdet's train.py does."""
    cfg = load_config(args)
    if args.amp:
        _enable_amp(cfg)
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.get(
                'auto_scale_lr', {}):
            raise KeyError(f'{args.config}: --auto-scale-lr needs '
                           '`auto_scale_lr = dict(base_batch_size=...)` in '
                           'the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    return cfg


def _enable_amp(cfg: Config) -> None:
    wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if wrapper == 'AmpOptimWrapper':
        return
    if wrapper != 'OptimWrapper':
        raise ValueError(f'--amp only converts OptimWrapper, found {wrapper}')
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.loss_scale = 'dynamic'


def main(argv=None) -> None:
    args = parse_args(argv)
    build_runner(build_config(args)).train()


if __name__ == '__main__':
    main()
