"""Key-mapping helpers for state dicts, and a strict key check.

Checkpoints arrive wrapped in containers (``{'state_dict': ...}``,
``{'model': ...}``), with DDP's ``module.`` prefix, or in another project's
key layout.  These small functions turn them into the layout a module
expects; :func:`check_state_dict` then says precisely what does not match.
"""
import re
from typing import (Dict, Iterable, List, Mapping, Optional, Sequence, Tuple,
                    Union)

import torch

#: Keys under which training frameworks store the weights, tried in order.
CONTAINER_KEYS = ('state_dict', 'model', 'module', 'model_state_dict', 'net',
                  'weights')

#: Shown when keys do not match; every loader in the package suggests it.
CONVERTER_HINT = (
    'convert the file with `python tools/convert_clip_checkpoint.py '
    'IN OUT.safetensors --model-name NAME`, or pass a checkpoint '
    'of the same architecture')

StateDict = Dict[str, torch.Tensor]


class StateDictMismatchError(ValueError):
    """Raised when a checkpoint's keys or shapes do not fit a module.

    Attributes:
        missing (list[str]): keys the module has and the checkpoint lacks.
        unexpected (list[str]): keys the checkpoint has and the module lacks.
        mismatched (list[tuple[str, tuple, tuple]]): ``(key, shape in
            checkpoint, shape in module)``.
    """

    def __init__(self,
                 message: str,
                 missing: Sequence[str] = (),
                 unexpected: Sequence[str] = (),
                 mismatched: Sequence[Tuple[str, tuple, tuple]] = ()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)


def unwrap_state_dict(obj, key: Optional[str] = None) -> StateDict:
    """Find the weights inside a loaded checkpoint object.

    Args:
        obj: what ``torch.load``/``safetensors`` returned.
        key (str, optional): container key to use (e.g. ``'state_dict_ema'``);
            by default the first of :data:`CONTAINER_KEYS` present is
            followed, repeatedly (``{'model': {'state_dict': ...}}``).

    Returns:
        dict[str, Tensor]: tensors only (non-tensor entries such as an
        ``epoch`` counter are dropped), with a ``module.`` prefix on every key
        removed.
    """
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            found = list(obj.keys()) if isinstance(obj, Mapping) else type(obj)
            raise KeyError(f"checkpoint has no entry '{key}' (found: {found})")
        obj = obj[key]
    # Follow a container that holds tensors even when tensors sit beside
    # it: mmengine checkpoints of this project keep `torch_rng_state` (a
    # tensor, RNGStateHook) next to `state_dict`.
    while isinstance(obj, Mapping):
        nxt = next((k for k in CONTAINER_KEYS
                    if isinstance(obj.get(k), Mapping)
                    and _holds_tensors(obj[k])), None)
        if nxt is None:
            break
        obj = obj[nxt]
    if not isinstance(obj, Mapping):
        raise TypeError(
            f'expected a dict of tensors, got {type(obj).__name__}')
    state = {
        k: v
        for k, v in obj.items()
        if isinstance(k, str) and isinstance(v, torch.Tensor)
    }
    if not state:
        raise ValueError('checkpoint holds no tensors (top-level keys: '
                         f'{_preview(list(obj.keys()))})')
    return strip_prefix(state, 'module.', only_if_all=True)


def _holds_tensors(obj: Mapping, depth: int = 3) -> bool:
    """Whether a tensor is among the values, or (``depth`` levels down)
    among those of nested mappings."""
    return any(isinstance(v, torch.Tensor) or (
        depth > 0 and isinstance(v, Mapping) and _holds_tensors(v, depth - 1))
        for v in obj.values())


def strip_prefix(state: Mapping[str, torch.Tensor],
                 prefix: str,
                 only_if_all: bool = False) -> StateDict:
    """Remove ``prefix`` from the keys that start with it.

    Args:
        state: the state dict.
        prefix (str): e.g. ``'module.'`` or ``'backbone.'``.
        only_if_all (bool): leave ``state`` unchanged unless every key starts
            with ``prefix`` (safe for DDP's ``module.``). Default: False.
    """
    if only_if_all and not all(k.startswith(prefix) for k in state):
        return dict(state)
    n = len(prefix)
    return {
        (k[n:] if k.startswith(prefix) else k): v
        for k, v in state.items()
    }


def add_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """Prepend ``prefix`` to every key."""
    return {prefix + k: v for k, v in state.items()}


def select_prefix(state: Mapping[str, torch.Tensor],
                  prefix: str,
                  strip: bool = True) -> StateDict:
    """Keep only the keys under ``prefix`` (e.g. ``'visual.'``).

    Args:
        strip (bool): remove the prefix from the kept keys. Default: True.
    """
    n = len(prefix) if strip else 0
    return {k[n:]: v for k, v in state.items() if k.startswith(prefix)}


def rename_keys(state: Mapping[str, torch.Tensor],
                rules: Iterable[Tuple[str, str]]) -> StateDict:
    """Rename keys with ``(regex, replacement)`` rules, applied in order.

    Example:
        >>> rename_keys({'blocks.0.attn.qkv.weight': t},
        ...             [(r'^blocks\\.', 'trunk.blocks.')])
        {'trunk.blocks.0.attn.qkv.weight': t}
    """
    compiled = [(re.compile(p), r) for p, r in rules]
    out = {}
    for k, v in state.items():
        for pattern, repl in compiled:
            k = pattern.sub(repl, k)
        out[k] = v
    return out


def _preview(keys: Sequence[str], limit: int = 20) -> str:
    keys = list(keys)
    shown = ', '.join(keys[:limit])
    more = f', ... (+{len(keys) - limit} more)' if len(keys) > limit else ''
    return f'[{shown}{more}]'


def key_mismatch(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
) -> Tuple[List[str], List[str], List[Tuple[str, tuple, tuple]]]:
    """Compare keys and shapes without raising.

    Returns:
        tuple: ``(missing, unexpected, mismatched)``, each sorted.
    """
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    mismatched = sorted(
        (k, tuple(state[k].shape), tuple(expected[k].shape)) for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape))
    return missing, unexpected, mismatched


def check_state_dict(expected: Mapping[str, torch.Tensor],
                     state: Mapping[str, torch.Tensor],
                     source: Union[str, None] = None,
                     target: str = 'the model',
                     hint: str = CONVERTER_HINT) -> None:
    """Raise unless ``state`` has exactly the keys and shapes of ``expected``.

    Args:
        expected: the target module's ``state_dict()``.
        state: the (converted) checkpoint.
        source (str, optional): the file it came from, for the message.
        target (str): what it is loaded into, for the message.
        hint (str): what the user can do about it.

    Raises:
        StateDictMismatchError: listing missing keys, unexpected keys and
            shape mismatches (at most 20 of each, with counts).
    """
    missing, unexpected, mismatched = key_mismatch(expected, state)
    if not (missing or unexpected or mismatched):
        return
    raise StateDictMismatchError(
        describe_mismatch(missing, unexpected, mismatched, source, target,
                          hint), missing, unexpected, mismatched)


def describe_mismatch(missing: Sequence[str],
                      unexpected: Sequence[str],
                      mismatched: Sequence[Tuple[str, tuple, tuple]] = (),
                      source: Union[str, None] = None,
                      target: str = 'the model',
                      hint: str = CONVERTER_HINT) -> str:
    """The message of :func:`check_state_dict`: the counts of missing,
    unexpected and shape-mismatched keys, then at most 20 of each, then
    ``hint``."""
    where = f' from {source}' if source else ''
    lines = [
        f'checkpoint{where} does not match {target}: '
        f'{len(missing)} missing, {len(unexpected)} unexpected, '
        f'{len(mismatched)} shape-mismatched keys'
    ]
    if missing:
        lines.append(f'  missing keys: {_preview(missing)}')
    if unexpected:
        lines.append(f'  unexpected keys: {_preview(unexpected)}')
    if mismatched:
        shown = [f'{k}: checkpoint {a} vs model {b}' for k, a, b in mismatched]
        lines.append(f'  shape mismatches: {_preview(shown)}')
    if hint:
        lines.append(f'  hint: {hint}')
    return '\n'.join(lines)
