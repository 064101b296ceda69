"""The one input check of ``ms_deform_attn``, shared by every backend.

:func:`check_inputs` runs before the compiled CPU kernel, the CUDA kernel
and the PyTorch reference alike, so a bad call gets the same message
whichever backend would have run: wrong types, devices, shapes and
metadata dtypes are refused here.  The level metadata's *values* are
checked by :func:`check_levels` (the same rules and messages as the C++
``check_levels_cpu`` of ``csrc/ms_deform_attn.h``) where the backend reads
them on the host anyway: always for the reference, and by the C++ kernel
itself on the CPU.  The CUDA kernel checks them on the device
(``csrc/levels.h``), since a host check would need a sync per call.

Nothing here reads tensor data while ``torch.compile`` traces the op (a
data-dependent check would break the graph); the compiled kernels' own
checks still run then.
"""
from typing import Tuple

import torch

#: The op's arguments, in order.
INPUT_NAMES = ('value', 'spatial_shapes', 'level_start_index',
               'sampling_locations', 'attention_weights')

#: H, W and H * W of a level must fit the kernels' 32-bit offsets
#: (``level_size_ok`` in ``csrc/levels.h``).
MAX_LEVEL_SIZE = 2**31 - 1


def _tracing() -> bool:
    return torch.compiler.is_compiling()


def check_types(*args: object) -> None:
    """Every argument is a tensor (a list or numpy array gets a TypeError
    naming the argument, not an ``AttributeError`` from deep inside)."""
    for name, arg in zip(INPUT_NAMES, args):
        if not isinstance(arg, torch.Tensor):
            raise TypeError(
                f'ms_deform_attn: {name} must be a torch.Tensor, got '
                f'{type(arg).__module__}.{type(arg).__qualname__} '
                f'(convert it with torch.as_tensor)')


def check_devices(*args: torch.Tensor) -> None:
    """Every input is on ``value``'s device.

    The kernels read all five tensors where ``value`` lives; a tensor
    elsewhere (e.g. on ``meta``, which has no storage) would be read through
    the wrong device.  Raises a ValueError naming each tensor and its
    device.
    """
    device = args[0].device
    wrong = [f'{name} on {arg.device}'
             for name, arg in zip(INPUT_NAMES[1:], args[1:])
             if arg.device != device]
    if wrong:
        raise ValueError(f'ms_deform_attn: every input must be on value\'s '
                         f'device ({device}); got {", ".join(wrong)}')


def check_shapes(value, spatial_shapes, level_start_index,
                 sampling_locations, attention_weights) -> None:
    """The shapes of the contract, with the numbers in the message."""
    if value.dim() != 4:
        raise ValueError(f'ms_deform_attn: value must be (N, S, M, D), got '
                         f'shape {tuple(value.shape)}')
    N, _, M, _ = value.shape
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(f'ms_deform_attn: sampling_locations must be '
                         f'(N, Lq, M, L, P, 2), got shape '
                         f'{tuple(sampling_locations.shape)}')
    _, Lq, _, L, P, _ = sampling_locations.shape
    if tuple(sampling_locations.shape[:3]) != (N, Lq, M):
        raise ValueError(f'ms_deform_attn: sampling_locations '
                         f'{tuple(sampling_locations.shape)} does not match '
                         f'value (N={N}, M={M})')
    if tuple(attention_weights.shape) != (N, Lq, M, L, P):
        raise ValueError(f'ms_deform_attn: attention_weights must be '
                         f'(N, Lq, M, L, P) = {(N, Lq, M, L, P)}, got '
                         f'{tuple(attention_weights.shape)}')
    if tuple(spatial_shapes.shape) != (L, 2):
        raise ValueError(f'ms_deform_attn: spatial_shapes must be (L, 2) = '
                         f'({L}, 2), got {tuple(spatial_shapes.shape)}')
    if tuple(level_start_index.shape) != (L,):
        raise ValueError(f'ms_deform_attn: level_start_index must be (L,) = '
                         f'({L},), got {tuple(level_start_index.shape)}')


def as_index(name: str, t: torch.Tensor) -> torch.Tensor:
    """``spatial_shapes`` / ``level_start_index`` as int64.

    Integer tensors are widened; floating ones must hold whole numbers
    (``4.9`` used to be truncated to 4 silently).  bool and complex are
    refused.
    """
    if t.dtype == torch.long:
        return t
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f'ms_deform_attn: {name} must hold integers '
                        f'(int64), got {t.dtype}')
    if t.is_floating_point() and not _tracing() and t.device.type != 'meta':
        bad = ~torch.isfinite(t) | (t != t.trunc())
        if bool(bad.any()):
            where = bad.nonzero()[0].tolist()
            raise ValueError(
                f'ms_deform_attn: {name} must hold whole numbers (int64), '
                f'got {t.dtype} {t.tolist()} ({name}'
                f'[{", ".join(map(str, where))}] = '
                f'{t[tuple(where)].item()})')
    return t.long()


def check_levels(spatial_shapes: torch.Tensor,
                 level_start_index: torch.Tensor, S: int) -> None:
    """Levels consecutive from 0, sizes within the kernels' limits, filling
    ``value``'s ``S`` positions: the C++ ``check_levels_cpu`` in Python,
    with the same messages.  Reads the (tiny) metadata on the host."""
    shapes = spatial_shapes.tolist()
    starts = level_start_index.tolist()
    total = 0
    for level, ((h, w), start) in enumerate(zip(shapes, starts)):
        if h < 0 or w < 0:
            raise RuntimeError(f'ms_deform_attn: spatial_shapes[{level}] = '
                               f'({h}, {w}) must be non-negative')
        if h > MAX_LEVEL_SIZE or w > MAX_LEVEL_SIZE or h * w > MAX_LEVEL_SIZE:
            raise RuntimeError(f'ms_deform_attn: level {level} is {h} x {w}: '
                               f'H, W and H * W must be at most 2^31 - 1')
        if start != total:
            raise RuntimeError(f'ms_deform_attn: level_start_index[{level}] '
                               f'= {start} but the levels before it hold '
                               f'{total} positions')
        total += h * w
    if total != S:
        raise RuntimeError(f'ms_deform_attn: spatial_shapes hold {total} '
                           f'positions but value has S = {S}')


def check_inputs(value, spatial_shapes, level_start_index,
                 sampling_locations, attention_weights,
                 levels: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Types, devices, shapes and metadata dtypes of the op's inputs; with
    ``levels=True`` also the metadata's values (:func:`check_levels`).

    Returns:
        tuple: ``(spatial_shapes, level_start_index)`` as int64.
    """
    args = (value, spatial_shapes, level_start_index, sampling_locations,
            attention_weights)
    check_types(*args)
    check_devices(*args)
    check_shapes(*args)
    spatial_shapes = as_index('spatial_shapes', spatial_shapes)
    level_start_index = as_index('level_start_index', level_start_index)
    if levels and not _tracing() and value.device.type != 'meta':
        check_levels(spatial_shapes, level_start_index, value.shape[1])
    return spatial_shapes, level_start_index
