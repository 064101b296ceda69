"""The deformable cross-attention projector: queries attend to every level
of a feature pyramid."""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ms_deform_cross_attention import MSDeformCrossAttention
from .norm import group_norm
from .position_encoding import reference_grid, sine_position_encoding
from .sizes import check_projector_args

Features = Union[Sequence[torch.Tensor], Dict[str, torch.Tensor]]

#: The projector's defaults, written once: attention width, heads and
#: sampling points per head and level (the user's notes: 256 / 8 / 4).
#: The PSALM builder, its swin_conv adapter (``adapt_pretrain``), the
#: LLaVA-Phi config and the mmdet neck take their defaults from here.
DEFAULT_HIDDEN_DIM = 256
DEFAULT_NUM_HEADS = 8
DEFAULT_NUM_POINTS = 4


class DeformableCrossAttentionLayer(nn.Module):
    """Deformable cross-attention + FFN, each with residual and LayerNorm.

    Args:
        hidden_dim (int): Width ``C``.
        n_heads (int): Attention heads.
        n_levels (int): Feature levels attended to.
        n_points (int): Sampling points per head and level.
        ffn_dim (int): FFN hidden width.
        dropout (float): Dropout after attention and in the FFN.
    """

    def __init__(self, hidden_dim: int, n_heads: int, n_levels: int,
                 n_points: int, ffn_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.cross_attn = MSDeformCrossAttention(hidden_dim, n_heads,
                                                 n_levels, n_points)
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.ffn = nn.Sequential(
            nn.Linear(hidden_dim, ffn_dim), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(ffn_dim, hidden_dim))
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.dropout = nn.Dropout(dropout)
        for layer in (self.ffn[0], self.ffn[3]):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, query, query_pos, value, reference_points,
                spatial_shapes, level_start_index):
        """``query``/``query_pos`` ``(B, Q, C)``, ``value`` ``(B, S, C)``,
        ``reference_points`` ``(B, Q, L, 2)`` -> ``(B, Q, C)``."""
        attended = self.cross_attn(query + query_pos, value,
                                   reference_points, spatial_shapes,
                                   level_start_index)
        query = self.norm1(query + self.dropout(attended))
        return self.norm2(query + self.dropout(self.ffn(query)))


class MultiScaleDeformableCrossAttentionAlignment(nn.Module):
    """Align a feature pyramid into tokens by deformable cross-attention.

    Each input level is projected to ``hidden_dim`` (1x1 conv + GroupNorm)
    and tagged with a learned level embedding; a 2-D sine encoding gives
    positions.  Queries then cross-attend, through ``num_layers`` blocks of
    multi-scale deformable attention + FFN, to ``n_points`` learned points
    per head on *every* level, and are projected to ``out_dim``.

    Queries (``query_mode``):

    * ``'pooled'``: the ``query_level`` map average-pooled to a square grid
      of ``num_queries`` tokens (PSALM's 256 = 16x16);
    * ``'level'``: every token of the ``query_level`` map;
    * ``'all'``: every token of every level (the mmdet neck: each output
      level is refined by all levels);
    * ``'learnable'``: ``num_queries`` learned embeddings on a square grid.

    Args:
        in_channels (Sequence[int]): Channels of each input level (1 to 5).
        hidden_dim (int): Attention width. Default: 256.
        n_heads (int): Heads; must divide ``hidden_dim``. Default: 8.
        n_points (int): Points per head and level. Default: 4.
        num_layers (int): Attention + FFN blocks. Default: 2.
        ffn_dim (int): FFN width. Default: 4 * hidden_dim.
        query_mode (str): One of ``'pooled' | 'level' | 'all' |
            'learnable'``. Default: ``'pooled'``.
        query_level (int): Level the queries come from (``pooled``/
            ``level``). Default: -1 (the coarsest).
        num_queries (int): Token count for ``pooled``/``learnable``; a square
            number. Default: 256.
        out_dim (int, optional): Output width; ``hidden_dim`` if None.
        out_hidden_dim (int, optional): If set, the output head is
            ``Linear(hidden, out_hidden) -> GELU -> Linear(out_hidden,
            out_dim)`` (PSALM's ``swin_conv`` head has this last Linear, so
            its pretrained weights transfer); else one Linear.
        dropout (float): Dropout in the blocks. Default: 0.

    Inputs are NCHW maps (a list/tuple, or a dict whose sorted keys give the
    level order, e.g. ``res2..res5``) in fp32, fp16 or bf16; they are
    computed in the module's parameter dtype, which is also the output
    dtype.

    Shapes:
        ``[(B, C_l, H_l, W_l)] * L`` -> ``(B, Q, out_dim)``.

    Example:
        >>> import torch
        >>> m = MultiScaleDeformableCrossAttentionAlignment(
        ...     [32, 64], hidden_dim=32, n_heads=4, num_queries=16, out_dim=48)
        >>> maps = [torch.rand(2, 32, 16, 16), torch.rand(2, 64, 8, 8)]
        >>> m(maps).shape
        torch.Size([2, 16, 48])
    """

    def __init__(self,
                 in_channels: Sequence[int],
                 hidden_dim: int = DEFAULT_HIDDEN_DIM,
                 n_heads: int = DEFAULT_NUM_HEADS,
                 n_points: int = DEFAULT_NUM_POINTS,
                 num_layers: int = 2,
                 ffn_dim: Optional[int] = None,
                 query_mode: str = 'pooled',
                 query_level: int = -1,
                 num_queries: int = 256,
                 out_dim: Optional[int] = None,
                 out_hidden_dim: Optional[int] = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        check_projector_args(type(self).__name__, in_channels, hidden_dim,
                             n_heads, n_points, num_layers, ffn_dim, out_dim,
                             out_hidden_dim, query_mode, query_level,
                             num_queries)
        self.in_channels = [int(c) for c in in_channels]
        self.n_levels = len(self.in_channels)
        self.hidden_dim = hidden_dim
        self.n_heads = n_heads
        self.n_points = n_points
        self.query_mode = query_mode
        self.query_level = query_level % self.n_levels
        self.num_queries = num_queries
        # None means "the default"; 0 was refused above (it used to mean
        # the default too, silently).
        self.out_dim = hidden_dim if out_dim is None else out_dim

        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, hidden_dim, kernel_size=1),
                          group_norm(hidden_dim))
            for c in self.in_channels)
        self.level_embed = nn.Parameter(torch.empty(self.n_levels,
                                                    hidden_dim))
        if query_mode == 'learnable':
            self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.layers = nn.ModuleList(
            DeformableCrossAttentionLayer(hidden_dim, n_heads, self.n_levels,
                                          n_points,
                                          4 * hidden_dim if ffn_dim is None
                                          else ffn_dim, dropout)
            for _ in range(num_layers))
        self.output_proj = _output_head(hidden_dim, self.out_dim,
                                        out_hidden_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.level_embed)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight)
            nn.init.zeros_(proj[0].bias)
        for layer in self.output_proj.modules():
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    # -- inputs --------------------------------------------------------------
    def _as_list(self, features: Features) -> List[torch.Tensor]:
        if isinstance(features, dict):
            features = [features[k] for k in sorted(features)]
        features = list(features)
        received = [tuple(f.shape) for f in features]
        if len(features) != self.n_levels or any(
                f.dim() != 4 or f.shape[1] != c
                for f, c in zip(features, self.in_channels)):
            raise ValueError(
                f'expected {self.n_levels} NCHW feature maps with channels '
                f'{self.in_channels}, got {len(features)} with shapes '
                f'{received}')
        dtype = self.level_embed.dtype
        return [f.to(dtype) for f in features]

    def _flatten_levels(self, maps: List[torch.Tensor]):
        """Projected tokens, their position+level encodings, and shapes."""
        tokens, pos = [], []
        for level, (proj, x) in enumerate(zip(self.input_proj, maps)):
            x = proj(x)
            h, w = x.shape[-2:]
            tokens.append(x.flatten(2).transpose(1, 2))
            pos.append(self._position(h, w, level, x))
        shapes = torch.as_tensor([m.shape[-2:] for m in maps],
                                 dtype=torch.long, device=maps[0].device)
        starts = torch.cat([shapes.new_zeros(1),
                            shapes.prod(1).cumsum(0)[:-1]])
        return tokens, pos, shapes, starts

    def _position(self, h: int, w: int, level: int, like: torch.Tensor):
        pos = sine_position_encoding(h, w, self.hidden_dim,
                                     device=like.device, dtype=like.dtype)
        return (pos + self.level_embed[level])[None]

    # -- queries -------------------------------------------------------------
    def _queries(self, tokens, pos, sizes, batch: int):
        """``(query, query_pos, grid_hw_list)`` for the configured mode;
        ``sizes`` are the maps' ``(h, w)`` as Python (or symbolic) ints, not
        read back from the shapes tensor, so that torch.export can trace."""
        level = self.query_level
        h, w = sizes[level]
        if self.query_mode == 'all':
            grids = [tuple(s) for s in sizes]
            return torch.cat(tokens, 1), torch.cat(pos, 1), grids
        if self.query_mode == 'level':
            return tokens[level], pos[level], [(h, w)]
        side = math.isqrt(self.num_queries)
        query_pos = self._position(side, side, level, tokens[level])
        if self.query_mode == 'learnable':
            query = self.query_embed.weight[None].expand(batch, -1, -1)
            return query, query_pos, [(side, side)]
        grid = tokens[level].transpose(1, 2).reshape(batch, -1, h, w)
        query = F.adaptive_avg_pool2d(grid, side).flatten(2).transpose(1, 2)
        return query, query_pos, [(side, side)]

    def _reference_points(self, grids, batch: int, device) -> torch.Tensor:
        ref = torch.cat([reference_grid(h, w, device=device)
                         for h, w in grids])
        return ref[None, :, None].expand(batch, -1, self.n_levels, -1)

    def forward(self, features: Features) -> torch.Tensor:
        maps = self._as_list(features)
        batch = maps[0].shape[0]
        tokens, pos, shapes, starts = self._flatten_levels(maps)
        value = torch.cat(tokens, 1)
        sizes = [tuple(m.shape[-2:]) for m in maps]
        query, query_pos, grids = self._queries(tokens, pos, sizes, batch)
        ref = self._reference_points(grids, batch, value.device).to(
            value.dtype)
        for layer in self.layers:
            query = layer(query, query_pos, value, ref, shapes, starts)
        return self.output_proj(query)

    def extra_repr(self) -> str:
        return (f'n_levels={self.n_levels}, n_heads={self.n_heads}, '
                f'n_points={self.n_points}, query_mode={self.query_mode!r}, '
                f'out_dim={self.out_dim}')


def _output_head(hidden_dim: int, out_dim: int,
                 out_hidden_dim: Optional[int]) -> nn.Module:
    if out_hidden_dim is not None:
        return nn.Sequential(nn.Linear(hidden_dim, out_hidden_dim), nn.GELU(),
                             nn.Linear(out_hidden_dim, out_dim))
    if out_dim != hidden_dim:
        return nn.Linear(hidden_dim, out_dim)
    return nn.Identity()
