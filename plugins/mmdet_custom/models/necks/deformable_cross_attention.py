"""``DeformableCrossAttentionNeck``: a ChannelMapper replacement in which
every output level is refined by deformable attention over all levels."""
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
from mmdet.registry import MODELS
from mmengine.model import BaseModule

from plugins.layers import (MultiScaleDeformableCrossAttentionAlignment,
                            group_norm)

# The host-free projector, registered so configs can build it by name.
MODELS.register_module(module=MultiScaleDeformableCrossAttentionAlignment)


@MODELS.register_module()
class DeformableCrossAttentionNeck(BaseModule):
    """Multi-level neck on deformable cross-attention, for DETR-family
    detectors (DINO, Deformable-DETR, GroundingDINO).

    Takes the backbone's maps, adds ``num_extra_levels`` strided levels
    (3x3 stride-2 conv + GroupNorm, the first one on the last input map, as
    mmdet's ``ChannelMapper`` does), then lets every token of every level
    cross-attend to all levels (:class:`MultiScaleDeformableCrossAttentionAlignment`
    with ``query_mode='all'``) and returns one ``out_channels`` map per
    level.  With a single-scale backbone (one input level, e.g. a CLIP ViT)
    the extra levels turn it into a pyramid whose every level has seen the
    others.

    Args:
        in_channels (Sequence[int]): Channels of each input level.
        out_channels (int): Channels of every output map. Default: 256.
        num_extra_levels (int): Strided levels added after the inputs.
            Default: 3 (1 input level -> 4 output levels).
        hidden_dim (int, optional): Attention width; ``out_channels`` if
            None.
        n_heads (int): Attention heads. Default: 8.
        n_points (int): Points per head and level. Default: 4.
        num_layers (int): Attention + FFN blocks. Default: 1.
        ffn_dim (int, optional): FFN width; ``4 * hidden_dim`` if None.
        dropout (float): Dropout in the blocks. Default: 0.
        init_cfg (dict, optional): mmengine init config.

    Shapes:
        ``[(B, C_l, H_l, W_l)]`` -> tuple of ``(B, out_channels, H_l, W_l)``
        for the inputs, then ``ceil(H/2), ceil(W/2)`` per extra level.

    Example:
        >>> import torch
        >>> neck = DeformableCrossAttentionNeck([96], out_channels=64,
        ...                                     num_extra_levels=3, n_heads=4)
        >>> outs = neck([torch.rand(2, 96, 16, 16)])
        >>> [tuple(o.shape) for o in outs]
        [(2, 64, 16, 16), (2, 64, 8, 8), (2, 64, 4, 4), (2, 64, 2, 2)]
    """

    def __init__(self,
                 in_channels: Sequence[int],
                 out_channels: int = 256,
                 num_extra_levels: int = 3,
                 hidden_dim=None,
                 n_heads: int = 8,
                 n_points: int = 4,
                 num_layers: int = 1,
                 ffn_dim=None,
                 dropout: float = 0.0,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.extra_convs = nn.ModuleList()
        for i in range(num_extra_levels):
            c_in = self.in_channels[-1] if i == 0 else out_channels
            self.extra_convs.append(nn.Sequential(
                nn.Conv2d(c_in, out_channels, 3, stride=2, padding=1),
                group_norm(out_channels)))
        self.alignment = MultiScaleDeformableCrossAttentionAlignment(
            self.in_channels + [out_channels] * num_extra_levels,
            hidden_dim=hidden_dim or out_channels, n_heads=n_heads,
            n_points=n_points, num_layers=num_layers, ffn_dim=ffn_dim,
            query_mode='all', out_dim=out_channels, dropout=dropout)

    def forward(self, inputs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor]:
        maps: List[torch.Tensor] = list(inputs)
        if len(maps) != len(self.in_channels):
            raise ValueError(f'expected {len(self.in_channels)} input maps '
                             f'with channels {self.in_channels}, got '
                             f'{len(maps)}')
        last = maps[-1]
        for conv in self.extra_convs:
            last = conv(last)
            maps.append(last)
        tokens = self.alignment(maps)
        outs, start = [], 0
        for m in maps:
            h, w = m.shape[-2:]
            level = tokens[:, start:start + h * w]
            outs.append(level.transpose(1, 2).reshape(-1, self.out_channels,
                                                      h, w))
            start += h * w
        return tuple(outs)
