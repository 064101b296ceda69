"""Pure-PyTorch multi-scale deformable attention (``F.grid_sample``).

The slow but obviously-correct definition of the op: every other backend is
tested against it.  It materialises one ``(N*M, D, Lq, P)`` tensor per level,
which is what makes it memory-hungry.
"""
import torch
import torch.nn.functional as F


def ms_deform_attn_reference(value: torch.Tensor,
                             spatial_shapes: torch.Tensor,
                             level_start_index: torch.Tensor,
                             sampling_locations: torch.Tensor,
                             attention_weights: torch.Tensor) -> torch.Tensor:
    """Multi-scale deformable attention with ``grid_sample``.

    Args:
        value (Tensor): ``(N, S, M, D)`` values of all levels, flattened
            row-major per level and concatenated, ``S = sum(H_l * W_l)``.
        spatial_shapes (Tensor): ``(L, 2)`` int64 rows ``(H_l, W_l)``.
        level_start_index (Tensor): ``(L,)`` offset of each level in ``S``
            (unused here: the levels are split by ``spatial_shapes``).
        sampling_locations (Tensor): ``(N, Lq, M, L, P, 2)`` normalised
            ``(x, y)``; ``(0, 0)`` is the top-left corner of the map,
            ``(1, 1)`` the bottom-right one.
        attention_weights (Tensor): ``(N, Lq, M, L, P)``.

    Returns:
        Tensor: ``(N, Lq, M * D)`` in ``value``'s dtype.  A value of another
        dtype than the locations (mixed precision: half/bfloat16 value,
        float32 locations and weights) is sampled in the locations' dtype.
    """
    del level_start_index  # the split sizes follow from spatial_shapes
    if value.dtype != sampling_locations.dtype:
        out = ms_deform_attn_reference(
            value.to(sampling_locations.dtype), spatial_shapes, None,
            sampling_locations, attention_weights.to(sampling_locations.dtype))
        return out.to(value.dtype)
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    values = value.split([h * w for h, w in shapes], dim=1)
    # grid_sample wants [-1, 1] with align_corners=False, i.e. pixel
    # coordinate loc * size - 0.5 and zeros outside the map.
    grids = 2 * sampling_locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
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
