"""``DeformableCrossAttentionNeck``: a feature pyramid for DETR-family
detectors built from a plain ViT's single map (finer levels by transposed
convolutions as in ViTDet's simple feature pyramid, coarser ones by strided
convolutions), every level then refined by deformable attention over all
levels."""
import math
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmdet.registry import MODELS
from mmengine.model import BaseModule

from plugins.layers import (DEFAULT_NUM_HEADS, DEFAULT_NUM_POINTS,
                            MultiScaleDeformableCrossAttentionAlignment,
                            check_projector_args, check_size, group_norm)

# The host-free projector, registered so configs can build it by name.
MODELS.register_module(module=MultiScaleDeformableCrossAttentionAlignment)

#: Old argument names of this neck and the mmdet names that replace them.
RENAMED_ARGS = {'n_heads': 'num_heads', 'n_points': 'num_points'}


@MODELS.register_module()
class DeformableCrossAttentionNeck(BaseModule):
    """Multi-level neck on deformable cross-attention, for DETR-family
    detectors (DINO, Deformable-DETR, GroundingDINO).

    The output levels are named by their strides (``out_strides``):

    * a stride of an input map: that map;
    * finer than the finest input (e.g. 8 and 4 from a ViT's stride-16
      map): one ``2x2`` stride-2 transposed convolution per factor of 2, each
      followed by a norm and an activation and halving the channels (the
      finer levels of ViTDet's simple feature pyramid), from the finest
      input map;
    * coarser than the coarsest input: a chain of ``3x3`` stride-2
      convolutions + norm starting on the coarsest input map (as mmdet's
      ``ChannelMapper`` adds extra levels).

    Every token of every level then cross-attends to all levels
    (:class:`MultiScaleDeformableCrossAttentionAlignment` with
    ``query_mode='all'``, ``num_layers`` blocks), and one ``out_channels``
    map per level is returned, finest first.  With ``num_layers=0`` there is
    no refinement: each level is only projected (1x1 conv + GroupNorm), a
    ChannelMapper-style baseline on the same pyramid.

    Args:
        in_channels (Sequence[int]): Channels of each input level.
        out_channels (int): Channels of every output map. Default: 256.
        out_strides (Sequence[int], optional): Strides of the output levels,
            increasing, 1 to 5 of them, each a power-of-2 multiple or
            divisor of the input strides, e.g. ``(8, 16, 32, 64)`` (the
            configs' default for a stride-16 ViT) or ``(16, 32, 64, 128)``.
            Default: None (the input strides, then ``num_extra_levels``
            coarser ones).
        in_strides (Sequence[int], optional): Stride of each input level,
            increasing. Default: None = 16 doubling per level (``(16,)``
            for one input: a ViT-B/16; a ViT-B/32 needs ``(32,)``).
        num_extra_levels (int, optional): Shorthand kept from earlier
            versions: ``out_strides`` = the input strides then this many
            coarser levels. Give this or ``out_strides``. Default: 3 when
            neither is given.
        num_heads (int): Attention heads. Default: 8.
        num_points (int): Points per head and level. Default: 4.
        num_layers (int): Attention + FFN blocks; 0 = no refinement.
            Default: 1.
        hidden_dim (int, optional): Attention width; ``out_channels`` if
            None.
        ffn_dim (int, optional): FFN width; ``4 * hidden_dim`` if None.
        dropout (float): Dropout in the blocks. Default: 0.
        norm_cfg (dict, optional): Norm after each transposed or strided
            convolution, e.g. ``dict(type='GN', num_groups=32)``; None is a
            GroupNorm of up to 32 groups of at least 8 channels (safe for
            the narrow finer levels of small models). Default: None.
        act_cfg (dict): Activation after each transposed convolution.
            Default: ``dict(type='GELU')`` (ViTDet).
        init_cfg (dict, optional): mmengine init config.

    ``n_heads`` / ``n_points`` (the old names) still work, with a
    ``DeprecationWarning`` naming ``num_heads`` / ``num_points``.

    Shapes:
        ``[(B, C_l, H_l, W_l)]`` -> tuple of ``(B, out_channels, h, w)``, one
        per output stride: ``(2^k H, 2^k W)`` for a level ``2^k`` times finer
        than the finest input, ``ceil(H / 2)`` per step for coarser levels.

    Example:
        >>> import torch
        >>> neck = DeformableCrossAttentionNeck(
        ...     [96], out_channels=64, out_strides=(8, 16, 32, 64),
        ...     num_heads=4)
        >>> outs = neck([torch.rand(2, 96, 16, 16)])
        >>> [tuple(o.shape) for o in outs]
        [(2, 64, 32, 32), (2, 64, 16, 16), (2, 64, 8, 8), (2, 64, 4, 4)]
    """

    def __init__(self,
                 in_channels: Sequence[int],
                 out_channels: int = 256,
                 out_strides: Optional[Sequence[int]] = None,
                 in_strides: Optional[Sequence[int]] = None,
                 num_extra_levels: Optional[int] = None,
                 num_heads: int = DEFAULT_NUM_HEADS,
                 num_points: int = DEFAULT_NUM_POINTS,
                 num_layers: int = 1,
                 hidden_dim: Optional[int] = None,
                 ffn_dim: Optional[int] = None,
                 dropout: float = 0.0,
                 norm_cfg: Optional[dict] = None,
                 act_cfg: dict = dict(type='GELU'),
                 init_cfg=None,
                 **old_args) -> None:
        super().__init__(init_cfg=init_cfg)
        num_heads, num_points = _renamed_args(old_args, num_heads,
                                              num_points)
        _check_sizes(in_channels, out_channels, num_heads, num_points,
                     num_layers, hidden_dim, ffn_dim)
        self.in_channels = [int(c) for c in in_channels]
        self.out_channels = out_channels
        self.norm_cfg = norm_cfg
        self.in_strides, self.out_strides = _check_strides(
            self.in_channels, in_strides, out_strides, num_extra_levels)
        self.num_layers = num_layers

        finest, coarsest = self.in_strides[0], self.in_strides[-1]
        # Finer levels: one independent upsampling path per level.
        self.fine_convs = nn.ModuleList()
        for s in self.out_strides:
            if s < finest:
                self.fine_convs.append(self._upsampler(
                    self.in_channels[0], int(math.log2(finest // s)),
                    act_cfg))
        # Coarser levels: one chain of stride-2 steps (each may be emitted).
        self.extra_convs = nn.ModuleList()
        steps = int(math.log2(self.out_strides[-1] // coarsest)) \
            if self.out_strides[-1] > coarsest else 0
        for i in range(steps):
            c_in = self.in_channels[-1] if i == 0 else out_channels
            self.extra_convs.append(nn.Sequential(
                nn.Conv2d(c_in, out_channels, 3, stride=2, padding=1),
                self._norm(out_channels)))
        self.level_channels = self._level_channels()
        self.alignment = MultiScaleDeformableCrossAttentionAlignment(
            self.level_channels,
            hidden_dim=out_channels if hidden_dim is None else hidden_dim,
            n_heads=num_heads,
            n_points=num_points, num_layers=num_layers, ffn_dim=ffn_dim,
            query_mode='all', out_dim=out_channels, dropout=dropout)

    # -- construction --------------------------------------------------------
    def _norm(self, channels: int) -> nn.Module:
        if self.norm_cfg is None:
            return group_norm(channels)
        return build_norm_layer(self.norm_cfg, channels)[1]

    def _upsampler(self, channels: int, factor_log2: int,
                   act_cfg: dict) -> nn.Sequential:
        """``factor_log2`` x (2x2 stride-2 transposed conv -> norm -> act),
        halving the channels at each step."""
        layers: List[nn.Module] = []
        for _ in range(factor_log2):
            c_out = max(channels // 2, 1)
            layers += [nn.ConvTranspose2d(channels, c_out, 2, stride=2),
                       self._norm(c_out), build_activation_layer(act_cfg)]
            channels = c_out
        return nn.Sequential(*layers)

    def _level_channels(self) -> List[int]:
        finest = self.in_strides[0]
        channels = []
        for s in self.out_strides:
            if s in self.in_strides:
                channels.append(self.in_channels[self.in_strides.index(s)])
            elif s < finest:
                c = self.in_channels[0]
                for _ in range(int(math.log2(finest // s))):
                    c = max(c // 2, 1)
                channels.append(c)
            else:
                channels.append(self.out_channels)
        return channels

    # -- forward -------------------------------------------------------------
    def build_pyramid(self, inputs: Sequence[torch.Tensor]
                      ) -> List[torch.Tensor]:
        """The unrefined levels, one per ``out_strides`` entry, finest first
        (channels :attr:`level_channels`)."""
        maps: List[torch.Tensor] = list(inputs)
        if len(maps) != len(self.in_channels):
            raise ValueError(f'expected {len(self.in_channels)} input maps '
                             f'with channels {self.in_channels}, got '
                             f'{len(maps)}')
        by_stride: Dict[int, torch.Tensor] = dict(zip(self.in_strides, maps))
        fine = iter(self.fine_convs)
        for s in self.out_strides:
            if s < self.in_strides[0]:
                by_stride[s] = next(fine)(maps[0])
        last, stride = maps[-1], self.in_strides[-1]
        for conv in self.extra_convs:
            last, stride = conv(last), stride * 2
            by_stride[stride] = last
        return [by_stride[s] for s in self.out_strides]

    def forward(self, inputs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor]:
        """``[(B, C_l, H_l, W_l)]`` -> one ``(B, out_channels, h, w)`` map per
        output stride."""
        levels = self.build_pyramid(inputs)
        tokens = self.alignment(levels)
        outs, start = [], 0
        for m in levels:
            h, w = m.shape[-2:]
            level = tokens[:, start:start + h * w]
            outs.append(level.transpose(1, 2).reshape(-1, self.out_channels,
                                                      h, w))
            start += h * w
        return tuple(outs)


def _renamed_args(old_args: dict, num_heads: int,
                  num_points: int) -> Tuple[int, int]:
    """Map ``n_heads`` / ``n_points`` to the mmdet names, with a warning."""
    new = dict(num_heads=num_heads, num_points=num_points)
    for old, value in old_args.items():
        if old not in RENAMED_ARGS:
            raise TypeError(f'DeformableCrossAttentionNeck got an unexpected '
                            f'argument {old!r}')
        key = RENAMED_ARGS[old]
        warnings.warn(f'DeformableCrossAttentionNeck: {old!r} is renamed '
                      f'{key!r} (mmdet\'s name); please update the config',
                      DeprecationWarning, stacklevel=3)
        new[key] = value
    return new['num_heads'], new['num_points']


def _check_sizes(in_channels, out_channels, num_heads, num_points,
                 num_layers, hidden_dim, ffn_dim) -> None:
    """The projector's shared size check, under this neck's argument names
    (the attention width is ``out_channels`` when ``hidden_dim`` is None)."""
    owner = 'DeformableCrossAttentionNeck'
    check_size(owner, 'out_channels', out_channels)
    check_projector_args(
        owner, in_channels,
        out_channels if hidden_dim is None else hidden_dim, num_heads,
        num_points, num_layers, ffn_dim=ffn_dim, out_dim=out_channels,
        query_mode='all',
        names=dict(hidden_dim='out_channels' if hidden_dim is None
                   else 'hidden_dim', n_heads='num_heads',
                   n_points='num_points', out_dim='out_channels'))


def _is_pow2(x: int) -> bool:
    return x >= 1 and x & (x - 1) == 0


def _check_strides(in_channels: List[int], in_strides, out_strides,
                   num_extra_levels) -> Tuple[List[int], List[int]]:
    owner = 'DeformableCrossAttentionNeck'
    if in_strides is None:
        in_strides = [16 * 2**i for i in range(len(in_channels))]
    in_strides = [check_size(owner, f'in_strides[{i}]', s)
                  for i, s in enumerate(in_strides)]
    if len(in_strides) != len(in_channels):
        raise ValueError(f'in_strides {in_strides} must give one stride per '
                         f'input level (in_channels {in_channels})')
    if any(b <= a for a, b in zip(in_strides, in_strides[1:])):
        raise ValueError(f'in_strides {in_strides} must increase')
    if out_strides is not None and num_extra_levels is not None:
        raise ValueError(f'give out_strides ({tuple(out_strides)}) or '
                         f'num_extra_levels ({num_extra_levels}), not both')
    if out_strides is None:
        n = 3 if num_extra_levels is None else check_size(
            owner, 'num_extra_levels', num_extra_levels, minimum=0)
        out_strides = in_strides + [in_strides[-1] * 2**k
                                    for k in range(1, n + 1)]
    out_strides = [check_size(owner, f'out_strides[{i}]', s)
                   for i, s in enumerate(out_strides)]
    if not 1 <= len(out_strides) <= 5:
        raise ValueError(f'out_strides {out_strides} must name 1 to 5 '
                         'levels')
    if any(b <= a for a, b in zip(out_strides, out_strides[1:])):
        raise ValueError(f'out_strides {out_strides} must increase')
    lo, hi = in_strides[0], in_strides[-1]
    for s in out_strides:
        ok = (s in in_strides
              or (s < lo and lo % s == 0 and _is_pow2(lo // s))
              or (s > hi and s % hi == 0 and _is_pow2(s // hi)))
        if not ok:
            raise ValueError(
                f'output stride {s} cannot be built from input strides '
                f'{in_strides}: it must be an input stride, or the finest '
                f'({lo}) divided by a power of 2, or the coarsest ({hi}) '
                'times a power of 2')
    return in_strides, out_strides
