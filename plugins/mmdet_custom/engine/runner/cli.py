"""Pieces shared by ``tools/train.py`` and ``tools/test.py``."""
import argparse
import atexit
import os
import os.path as osp

from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """``--work-dir``, ``--cfg-options``, ``--launcher``, ``--local-rank``."""
    parser.add_argument('--work-dir',
                        help='the dir to save logs, models and results')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, e.g. train_cfg.max_iters=8')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def load_config(args) -> Config:
    """Read ``args.config`` and merge the common command-line options.

    The work dir is ``--work-dir``, else the config's ``work_dir``, else
    ``./work_dirs/<config name>``, as in mmdet.
    """
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    if not osp.isfile(args.config):
        raise FileNotFoundError(f'config file not found: {args.config}')
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    check_local_model_folders(cfg)
    return cfg


#: Registered types whose ``name`` is a Hugging Face model folder (mmdet's
#: GroundingDINO text encoder reads ``model.language_model.name`` with
#: ``AutoTokenizer``/``BertModel.from_pretrained``), and the config variable
#: the shipped configs set it from.
HF_FOLDER_TYPES = {'BertModel': 'lang_model_name'}


def _hf_folder_refs(node, path):
    if isinstance(node, dict):
        if node.get('type') in HF_FOLDER_TYPES and 'name' in node:
            yield f'{path}.name', node['type'], node['name']
        for key, value in node.items():
            yield from _hf_folder_refs(value, f'{path}.{key}')
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _hf_folder_refs(value, f'{path}[{i}]')


def check_local_model_folders(cfg: Config) -> None:
    """Fail at once, naming the config key and the path, when a Hugging Face
    model folder the model will load (GroundingDINO's BERT) is missing.

    Models are built from local folders only (no model hub); without this
    check transformers would fail only after building the rest of the
    model, or, with the hub reachable, try the hub first.
    """
    for key, typ, name in _hf_folder_refs(cfg.get('model', {}), 'model'):
        folder = osp.abspath(osp.expanduser(str(name)))
        if osp.isfile(osp.join(folder, 'config.json')):
            continue
        what = ('has no config.json' if osp.isdir(folder) else
                'is not a local folder')
        raise FileNotFoundError(
            f'{cfg.filename}: {key} (`{HF_FOLDER_TYPES[typ]}` in the shipped '
            f'configs) = {name!r} {what} (looked at {folder}). Models are '
            'built from local files only, so the text encoder must be a '
            'local folder with config.json, the weights and the tokenizer '
            'files (`make tiny-bert` writes a tiny one to data/tiny_bert)')


def prepare_cpu_distributed(cfg: Config) -> bool:
    """Set up a ``--launcher pytorch`` job on a machine without a usable
    GPU (CPU machines, CI); return whether it applied.

    mmengine 0.10.7 assumes one GPU per process there: ``init_dist``
    calls ``torch.cuda.set_device(LOCAL_RANK)`` (which raises on a CUDA
    build of torch without a driver) and the default DDP wrapper passes
    ``device_ids=[LOCAL_RANK]`` (which DDP refuses for CPU modules). So the
    process group is started here (env:// rendezvous from torchrun,
    backend from ``env_cfg.dist_cfg``, default gloo), which makes the
    runner skip ``init_dist``, and the wrapper gets ``device_ids=None``.
    """
    import torch
    import torch.distributed as dist
    if cfg.get('launcher', 'none') != 'pytorch' or torch.cuda.is_available():
        return False
    if not dist.is_initialized():
        dist_cfg = dict(cfg.get('env_cfg', {}).get('dist_cfg', {}))
        backend = dist_cfg.pop('backend', 'gloo')
        if backend == 'nccl':
            raise RuntimeError(
                f'{cfg.filename}: env_cfg.dist_cfg.backend is nccl but no '
                'CUDA device is available; use gloo for CPU training '
                '(--cfg-options env_cfg.dist_cfg.backend=gloo)')
        dist.init_process_group(backend=backend, **dist_cfg)
        # Tear the group down before interpreter shutdown: left to static
        # destructors, gloo's worker threads can be destroyed while still
        # joinable ("terminate called without an active exception", SIGABRT
        # after training finished, seen in about 1 of 3 CPU runs).
        atexit.register(_destroy_process_group)
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper.setdefault('device_ids', None)
    cfg.model_wrapper_cfg = wrapper
    return True


def _destroy_process_group() -> None:
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()


def build_runner(cfg: Config) -> Runner:
    """A custom ``runner_type`` when the config names one, else ``Runner``."""
    prepare_cpu_distributed(cfg)
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)
