"""Pure-PyTorch multi-scale deformable attention (``F.grid_sample``).

The slow but obviously-correct definition of the op: every other backend is
tested against it.  It materialises one ``(N*M, D, Lq, P)`` tensor per level,
which is what makes it memory-hungry.
"""
import torch
import torch.nn.functional as F

from .checks import check_inputs


def ms_deform_attn_reference(value: torch.Tensor,
                             spatial_shapes: torch.Tensor,
                             level_start_index: torch.Tensor,
                             sampling_locations: torch.Tensor,
                             attention_weights: torch.Tensor) -> torch.Tensor:
    """Multi-scale deformable attention with ``grid_sample``.

    The inputs pass the same check as the compiled kernels' (types, devices,
    shapes, and the level metadata's values: ``checks.check_inputs``), so a
    bad call raises the same error here.  Non-finite sampling locations
    (NaN, +-inf) count as outside the map, as in the kernels: they sample
    zeros and get zero gradient.

    Args:
        value (Tensor): ``(N, S, M, D)`` values of all levels, flattened
            row-major per level and concatenated, ``S = sum(H_l * W_l)``.
        spatial_shapes (Tensor): ``(L, 2)`` int64 rows ``(H_l, W_l)``.
        level_start_index (Tensor): ``(L,)`` offset of each level in ``S``
            (checked, then unused: the levels are split by
            ``spatial_shapes``).
        sampling_locations (Tensor): ``(N, Lq, M, L, P, 2)`` normalised
            ``(x, y)``; ``(0, 0)`` is the top-left corner of the map,
            ``(1, 1)`` the bottom-right one.
        attention_weights (Tensor): ``(N, Lq, M, L, P)``.

    Returns:
        Tensor: ``(N, Lq, M * D)`` in ``value``'s dtype.  A value of another
        dtype than the locations (mixed precision: half/bfloat16 value,
        float32 locations and weights) is sampled in the locations' dtype.
    """
    spatial_shapes, level_start_index = check_inputs(
        value, spatial_shapes, level_start_index, sampling_locations,
        attention_weights, levels=True)
    return reference_forward(value, spatial_shapes, sampling_locations,
                             attention_weights)


#: Where a location that is surely outside every map is moved (pixel
#: ``-2 * W - 0.5``): grid_sample gives NaN at a NaN location (and +-inf or a
#: huge finite one overflow its pixel arithmetic), the kernels' range test
#: counts them all as outside.
OUTSIDE = -2.0


def reference_forward(value: torch.Tensor, spatial_shapes: torch.Tensor,
                      sampling_locations: torch.Tensor,
                      attention_weights: torch.Tensor) -> torch.Tensor:
    """:func:`ms_deform_attn_reference` on inputs already checked
    (``spatial_shapes`` int64, consistent with ``value``)."""
    if value.dtype != sampling_locations.dtype:
        out = reference_forward(
            value.to(sampling_locations.dtype), spatial_shapes,
            sampling_locations, attention_weights.to(sampling_locations.dtype))
        return out.to(value.dtype)
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    if L == 0:  # no level: nothing is sampled (as in the kernels)
        return value.new_zeros(N, Lq, M * D)
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    values = value.split([h * w for h, w in shapes], dim=1)
    # |loc| >= 2 is outside a map of any size (a point samples when
    # -1 < loc * W - 0.5 < W), and NaN fails the test too.  torch.where
    # passes no gradient to the replaced entries: zero, as in the kernels
    # (grid_sample's own gradient there is zero too, or NaN).
    locations = torch.where(sampling_locations.abs() < 2, sampling_locations,
                            sampling_locations.new_tensor(OUTSIDE))
    # grid_sample wants [-1, 1] with align_corners=False, i.e. pixel
    # coordinate loc * size - 0.5 and zeros outside the map.
    grids = 2 * locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        if h * w == 0:  # an empty map samples zeros (grid_sample refuses it)
            sampled.append(value.new_zeros(N * M, D, Lq, P))
            continue
        # (N, H*W, M, D) -> (N*M, D, H, W)
        v = values[lvl].flatten(2).transpose(1, 2).reshape(N * M, D, h, w)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode='bilinear',
                                     padding_mode='zeros',
                                     align_corners=False))
    # (N*M, D, Lq, L*P) * (N*M, 1, Lq, L*P) -> (N*M, D, Lq)
    weights = attention_weights.transpose(1, 2).reshape(N * M, 1, Lq, L * P)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(N, M * D, Lq).transpose(1, 2).contiguous()
