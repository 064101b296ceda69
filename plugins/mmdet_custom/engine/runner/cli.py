"""Pieces shared by ``tools/train.py`` and ``tools/test.py``."""
import argparse
import atexit
import copy
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
        '--cfg-options', nargs='+', action=CfgOptionsAction,
        help='override config settings, e.g. train_cfg.max_iters=8; a '
        'value with spaces is kept as typed (quote it for the shell)')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def _outside_quotes(text: str):
    """``(index, char, depth)`` of each character of ``text`` outside
    quotes (``depth``: open ``(``/``[`` after it), and whether a quote is
    left open."""
    chars, depth, quote = [], 0, None
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
            continue
        if char in '\'"':
            quote = char
            continue
        if char in '([':
            depth += 1
        elif char in ')]':
            depth -= 1
        chars.append((i, char, depth))
    return chars, quote is not None


def _split_top_level(text: str) -> list:
    """``text`` cut at the commas outside brackets and quotes.

    Raises:
        ValueError: unbalanced brackets or quotes.
    """
    chars, open_quote = _outside_quotes(text)
    depths = [depth for _, _, depth in chars]
    if open_quote or (depths and (min(depths) < 0 or depths[-1] != 0)):
        raise ValueError(f'unbalanced brackets or quotes in {text!r}')
    parts, start = [], 0
    for i, char, depth in chars:
        if char == ',' and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _is_one_bracket(text: str) -> bool:
    """Whether ``text`` is one ``[...]`` or ``(...)`` (its first bracket
    closes at its last character, as in ``[1, 2]`` but not ``(1), (2)``)."""
    if text[:1] not in '([' or text[-1:] != {'(': ')', '[': ']'}[text[:1]]:
        return False
    for i, char, depth in _outside_quotes(text)[0]:
        if char in ')]' and depth == 0:
            return i == len(text) - 1
    return False


def parse_cfg_option(value: str):
    """One ``--cfg-options`` value, as mmengine's ``DictAction`` reads it,
    except that spaces inside a value are kept.

    ``DictAction`` deletes every space (``'/dir with spaces/w.pth'`` becomes
    ``'/dirwithspaces/w.pth'``), so a path the user quoted for the shell
    turns into one they never typed.  A value without whitespace goes
    through ``DictAction`` unchanged; one with whitespace keeps it: a
    scalar stays one string, a quoted part is taken verbatim, and lists or
    tuples (``[a, b]``, ``(1, 2)``, ``a, b``) are split at their top-level
    commas with the spaces around each element dropped, as before.

    Args:
        value (str): the text after ``KEY=``.

    Returns:
        int | float | bool | None | str | list | tuple: the parsed value.

    Raises:
        ValueError: unbalanced brackets or quotes.
    """
    if not any(char.isspace() for char in value):
        try:
            return DictAction._parse_iterable(value)
        except AssertionError as err:  # DictAction's bracket check
            raise ValueError(str(err)) from err
    text = value.strip()
    if not text:
        return ''
    if len(text) >= 2 and text[0] == text[-1] and text[0] in '\'"' and \
            text[0] not in text[1:-1]:
        return text[1:-1]
    if _is_one_bracket(text):
        inner = text[1:-1].strip()
        items = ([parse_cfg_option(part) for part in _split_top_level(inner)]
                 if inner else [])
        return tuple(items) if text[0] == '(' else items
    parts = _split_top_level(text)
    if len(parts) > 1:
        return [parse_cfg_option(part) for part in parts]
    return DictAction._parse_int_float_bool(text)


class CfgOptionsAction(DictAction):
    """``--cfg-options KEY=VALUE ...``: mmengine's ``DictAction`` with the
    values read by :func:`parse_cfg_option` (spaces kept), and a usage
    error naming the item instead of a traceback for a malformed one.
    Repeated ``--cfg-options`` merge, as with ``DictAction``."""

    def __call__(self, parser, namespace, values, option_string=None):
        options = copy.copy(getattr(namespace, self.dest, None) or {})
        for item in values or ():
            key, sep, value = item.partition('=')
            if not sep or not key:
                parser.error(f'{option_string} {item!r}: expected KEY=VALUE')
            try:
                options[key] = parse_cfg_option(value)
            except ValueError as err:
                parser.error(f'{option_string} {key}: {err}')
        setattr(namespace, self.dest, options)


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
