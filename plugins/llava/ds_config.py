"""Resolve ``"auto"`` values of a DeepSpeed JSON config from the arguments.

The shipped JSON files (``plugins/llava/configs/zero2.json``,
``zero3.json``; ``--deepspeed zero2`` names them) are PSALM's/Hugging Face's
kind: batch sizes, precision and bucket sizes say
``"auto"`` and the trainer fills them in, so one file serves every run.
"""
import copy
from pathlib import Path
from typing import Union

from .config import load_json_config


def _fill(section: dict, key: str, value) -> None:
    if section.get(key, 'auto') == 'auto':
        section[key] = value


def resolve_ds_config(config: Union[str, Path, dict], *,
                      micro_batch_size: int, grad_accum_steps: int,
                      world_size: int, bf16: bool, fp16: bool,
                      hidden_size: int, max_grad_norm: float = 1.0) -> dict:
    """Return a copy of ``config`` with every ``"auto"`` replaced.

    Args:
        config: A path to a JSON file, the name of a shipped one
            (``'zero2'``, ``'zero3'``), or a dict.
        micro_batch_size: ``--per_device_train_batch_size``.
        grad_accum_steps: ``--gradient_accumulation_steps``.
        world_size: Number of processes.
        bf16, fp16: Precision flags (at most one).
        hidden_size: The LLM hidden size (ZeRO bucket sizes scale with it,
            as in Hugging Face's integration).
        max_grad_norm: Gradient clipping for ``"gradient_clipping": "auto"``.
    """
    if bf16 and fp16:
        raise ValueError('--bf16 and --fp16 are mutually exclusive')
    if isinstance(config, (str, Path)):
        # a path, or the name of a shipped config (``zero2``, ``zero3``)
        config = load_json_config(config)
    cfg = copy.deepcopy(config)
    _fill(cfg, 'train_micro_batch_size_per_gpu', micro_batch_size)
    _fill(cfg, 'gradient_accumulation_steps', grad_accum_steps)
    _fill(cfg, 'train_batch_size',
          micro_batch_size * grad_accum_steps * world_size)
    _fill(cfg, 'gradient_clipping', max_grad_norm)
    for name, enabled in (('bf16', bf16), ('fp16', fp16)):
        section = cfg.setdefault(name, {})
        _fill(section, 'enabled', enabled)
    zero = cfg.setdefault('zero_optimization', {})
    _fill(zero, 'reduce_bucket_size', hidden_size * hidden_size)
    if zero.get('stage', 0) == 3:
        _fill(zero, 'stage3_prefetch_bucket_size',
              int(0.9 * hidden_size * hidden_size))
        _fill(zero, 'stage3_param_persistence_threshold', 10 * hidden_size)
    # The trainer passes its own torch optimizer (DeepSpeed's fused Adam
    # needs a compiled op on CPU); ZeRO must be told that is intended.
    cfg.setdefault('zero_allow_untested_optimizer', True)
    leftover = [k for k, v in _walk(cfg) if v == 'auto']
    if leftover:
        raise ValueError(f'DeepSpeed config keys left at "auto": {leftover}')
    return cfg


def _walk(node, prefix=''):
    for key, value in node.items():
        path = f'{prefix}{key}'
        if isinstance(value, dict):
            yield from _walk(value, path + '.')
        else:
            yield path, value
