"""The public ``ms_deform_attn`` function: checks, then the best backend."""
import os

import torch

from . import loader
from .checks import check_inputs, check_levels
from .reference import reference_forward

#: ``PLUGINS_MSDA_BACKEND=reference`` forces the PyTorch reference
#: (debugging, benchmarking); the default ``auto`` uses the compiled kernel.
BACKEND_ENV = 'PLUGINS_MSDA_BACKEND'


@torch.compiler.assume_constant_result
def _kernel_available(kind: str) -> bool:
    # Under torch.compile this runs once while the graph is traced (its
    # result is a constant of the graph), so the very first call of a fresh
    # process loads the library before the op is looked up and
    # fullgraph=True holds; eagerly it is a dict lookup after the first call.
    return loader.load(kind)


#: value dtypes that may take float32 locations and weights (mixed
#: precision, see docs/ops.md).
MIXED_VALUE_DTYPES = (torch.float16, torch.bfloat16)


def _common_dtypes(value, sampling_locations, attention_weights):
    """The dtypes the kernels take: all three alike, or a half/bfloat16
    value with float32 locations and weights."""
    coord = torch.promote_types(sampling_locations.dtype,
                                attention_weights.dtype)
    if value.dtype in MIXED_VALUE_DTYPES and coord in (value.dtype,
                                                       torch.float32):
        return (value, sampling_locations.to(coord),
                attention_weights.to(coord))
    dtype = torch.promote_types(value.dtype, coord)
    return (value.to(dtype), sampling_locations.to(dtype),
            attention_weights.to(dtype))


def ms_deform_attn(value: torch.Tensor,
                   spatial_shapes: torch.Tensor,
                   level_start_index: torch.Tensor,
                   sampling_locations: torch.Tensor,
                   attention_weights: torch.Tensor) -> torch.Tensor:
    """Multi-scale deformable attention (Deformable-DETR / mmcv contract).

    For every query ``q`` and head ``m`` the output is
    ``sum_{l,p} attention_weights[n,q,m,l,p] * bilinear(value_l[n,:,m,:],
    sampling_locations[n,q,m,l,p])`` where level ``l`` is sampled at pixel
    ``loc * (W_l, H_l) - 0.5`` with zeros outside the map (``grid_sample``
    with ``align_corners=False``).

    Runs the compiled kernel of the input's device (CPU: float32/float64,
    half/bfloat16 with float32 accumulation; CUDA: float32/half/bfloat16),
    and the PyTorch reference where none is available.  Differentiable in
    ``value``, ``sampling_locations`` and ``attention_weights``; works under
    ``torch.compile``.

    Mixed precision: a float16/bfloat16 ``value`` may come with float32
    ``sampling_locations`` and ``attention_weights`` (what autocast hands
    over: offsets and softmax stay float32); points are then sampled at
    float32 resolution and the output is in ``value``'s dtype.  Any other
    mix of dtypes is promoted to the widest one.

    Args:
        value (Tensor): ``(N, S, M, D)``, ``S = sum_l H_l * W_l``, levels
            flattened row-major (``h * W_l + w``) and concatenated.
        spatial_shapes (Tensor): ``(L, 2)`` int64 rows ``(H_l, W_l)``.
        level_start_index (Tensor): ``(L,)`` int64 offset of each level in S.
        sampling_locations (Tensor): ``(N, Lq, M, L, P, 2)`` normalised
            ``(x, y)``, ``(0, 0)`` the top-left corner, ``(1, 1)`` the
            bottom-right one; values outside ``[0, 1]`` are allowed.
        attention_weights (Tensor): ``(N, Lq, M, L, P)``.

    Returns:
        Tensor: ``(N, Lq, M * D)`` in ``value``'s (promoted) dtype.
    """
    spatial_shapes, level_start_index = check_inputs(
        value, spatial_shapes, level_start_index, sampling_locations,
        attention_weights)
    value, sampling_locations, attention_weights = _common_dtypes(
        value, sampling_locations, attention_weights)
    device = value.device.type
    kind = 'cpu' if device == 'meta' else device
    if kind in loader.KINDS and os.environ.get(BACKEND_ENV, 'auto') != 'reference':
        if _kernel_available(kind):
            return torch.ops.plugins.ms_deform_attn(
                value, spatial_shapes, level_start_index, sampling_locations,
                attention_weights)
        loader.warn_fallback(kind)
    if not torch.compiler.is_compiling() and device != 'meta':
        check_levels(spatial_shapes, level_start_index, value.shape[1])
    return reference_forward(value, spatial_shapes, sampling_locations,
                             attention_weights)
