"""Multi-scale deformable cross-attention (Deformable DETR), host-free."""
import math
from typing import Optional

import torch
import torch.nn as nn

from plugins.ops import ms_deform_attn, sampling_locations

from .sizes import check_attention_args


def ms_deform_attention_forward(module: nn.Module,
                                query: torch.Tensor,
                                value: torch.Tensor,
                                reference_points: torch.Tensor,
                                spatial_shapes: torch.Tensor,
                                level_start_index: torch.Tensor,
                                value_padding_mask: Optional[
                                    torch.Tensor] = None) -> torch.Tensor:
    """Deformable attention of any module laid out like Deformable DETR's.

    ``module`` needs ``value_proj``, ``sampling_offsets``,
    ``attention_weights``, ``output_proj`` and ``num_heads``,
    ``num_levels``, ``num_points`` -- the layout shared by
    :class:`MSDeformCrossAttention` and mmcv's
    ``MultiScaleDeformableAttention`` (so both run this one function).

    Args:
        query (Tensor): ``(N, Lq, C)``, position embedding already added.
        value (Tensor): ``(N, S, C)`` flattened levels.
        reference_points (Tensor): ``(N, Lq, L, 2)`` normalised ``(x, y)`` or
            ``(N, Lq, L, 4)`` boxes.
        spatial_shapes (Tensor): ``(L, 2)`` int64 ``(H, W)``.
        level_start_index (Tensor): ``(L,)``.
        value_padding_mask (Tensor, optional): ``(N, S)`` bool, True at
            padding (those values are zeroed).

    Returns:
        Tensor: ``(N, Lq, C)`` after ``output_proj`` (no residual, no
        dropout).
    """
    N, Lq, _ = query.shape
    S = value.shape[1]
    M, L, P = module.num_heads, module.num_levels, module.num_points
    value = module.value_proj(value)
    if value_padding_mask is not None:
        value = value.masked_fill(value_padding_mask[..., None], 0.0)
    value = value.view(N, S, M, -1)
    offsets = module.sampling_offsets(query).view(N, Lq, M, L, P, 2)
    weights = module.attention_weights(query).view(N, Lq, M, L * P)
    weights = weights.softmax(-1).view(N, Lq, M, L, P)
    locations = sampling_locations(reference_points, offsets, spatial_shapes)
    return module.output_proj(
        ms_deform_attn(value, spatial_shapes, level_start_index, locations,
                       weights))


def grid_init_offsets_(linear: nn.Linear, num_heads: int, num_levels: int,
                       num_points: int) -> None:
    """Deformable DETR's offset init: zero weights, and a bias that points
    head ``m`` in direction ``2*pi*m/M``, point ``i`` at distance ``i+1``."""
    nn.init.zeros_(linear.weight)
    thetas = torch.arange(num_heads, dtype=torch.float32) * (
        2.0 * math.pi / num_heads)
    grid = torch.stack([thetas.cos(), thetas.sin()], -1)
    grid = grid / grid.abs().max(-1, keepdim=True)[0]
    grid = grid.view(num_heads, 1, 1, 2).repeat(1, num_levels, num_points, 1)
    grid = grid * torch.arange(1, num_points + 1,
                               dtype=torch.float32).view(1, 1, -1, 1)
    with torch.no_grad():
        linear.bias.copy_(grid.flatten())


class MSDeformCrossAttention(nn.Module):
    """Queries attend to ``P`` learned points per head on every level.

    Args:
        embed_dims (int): Width ``C`` of queries and values. Default: 256.
        num_heads (int): Heads ``M``; must divide ``embed_dims``. Default: 8.
        num_levels (int): Levels ``L``. Default: 4.
        num_points (int): Points per head and level ``P``. Default: 4.

    Shapes:
        query ``(N, Lq, C)``, value ``(N, S, C)``, reference_points
        ``(N, Lq, L, 2)`` -> ``(N, Lq, C)``.
    """

    def __init__(self, embed_dims: int = 256, num_heads: int = 8,
                 num_levels: int = 4, num_points: int = 4) -> None:
        super().__init__()
        check_attention_args(type(self).__name__, embed_dims, num_heads,
                             num_levels, num_points)
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(
            embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(
            embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        grid_init_offsets_(self.sampling_offsets, self.num_heads,
                           self.num_levels, self.num_points)
        # Zero attention logits: every point starts with the same weight.
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for linear in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, query: torch.Tensor, value: torch.Tensor,
                reference_points: torch.Tensor, spatial_shapes: torch.Tensor,
                level_start_index: torch.Tensor,
                value_padding_mask: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        return ms_deform_attention_forward(self, query, value,
                                           reference_points, spatial_shapes,
                                           level_start_index,
                                           value_padding_mask)
