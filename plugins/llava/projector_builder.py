"""PSALM-compatible ``build_vision_projector(config)``.

A drop-in for ``psalm/model/multimodal_projector/builder.py``: the same
function name, the same attribute-access config, PSALM's projector types
(``linear``, ``mlp{N}x_gelu``, ``swin_conv``, ``identity``) rebuilt, plus
``deformable``: our multi-scale deformable cross-attention projector over
all four Swin maps.
"""
import logging
import math
import re
from typing import Dict, Sequence, Union

import torch
import torch.nn as nn

from plugins.layers import MultiScaleDeformableCrossAttentionAlignment

logger = logging.getLogger('plugins.llava')

#: Channels of the four Swin stages PSALM's vision tower returns.
SWIN_DIMS = {'base': [128, 256, 512, 1024], 'large': [192, 384, 768, 1536]}
#: Width of PSALM's ``swin_conv`` block (its output Linear reads 2048).
SWIN_CONV_DIM = 2048
PROJECTOR_TYPES = ('deformable', 'swin_conv', 'linear', 'mlp{N}x_gelu',
                   'identity')
DEFAULT_NUM_TOKENS = 256  # a 16x16 grid, as many as swin_conv emits


def _last_map(x: Union[Sequence[torch.Tensor], Dict[str, torch.Tensor],
                       torch.Tensor]) -> torch.Tensor:
    """PSALM passes the last Swin map; accept the 4-map list/dict too."""
    if isinstance(x, dict):
        return x[sorted(x)[-1]]
    if isinstance(x, (list, tuple)):
        return x[-1]
    return x


class IdentityMap(nn.Module):
    """PSALM's ``identity`` projector."""

    def forward(self, x, *args, **kwargs):
        return x


class SwinConvProjector(nn.Module):
    """PSALM's default ``swin_conv`` projector.

    A stride-2 ResNet BasicBlock (``in_channels -> 2048``) then a Linear to
    the LLM width: ``(B, 1024, 32, 32) -> (B, 256, 2048)``.

    Args:
        in_channels (int): Channels of the last Swin map (1024 for Swin-B).
        out_dim (int): LLM hidden size.
        mid_channels (int): BasicBlock width. Default: 2048.
    """

    def __init__(self, in_channels: int, out_dim: int,
                 mid_channels: int = SWIN_CONV_DIM) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 3, stride=2,
                               padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.conv2 = nn.Conv2d(mid_channels, mid_channels, 3, padding=1,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.downsample = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1, stride=2, bias=False),
            nn.BatchNorm2d(mid_channels))
        self.relu = nn.ReLU(inplace=True)
        self.proj = nn.Linear(mid_channels, out_dim)

    def forward(self, x) -> torch.Tensor:
        x = _last_map(x).to(self.conv1.weight.dtype)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)) + self.downsample(x))
        return self.proj(out.flatten(2).transpose(1, 2))


def _vision_dims(config) -> list:
    dims = getattr(config, 'mm_vision_dims', None)
    if dims:
        return list(dims)
    swin_type = getattr(config, 'swin_type', 'base')
    if swin_type not in SWIN_DIMS:
        raise ValueError(f'unknown swin_type {swin_type!r}; expected one of '
                         f'{sorted(SWIN_DIMS)} (or set mm_vision_dims)')
    return SWIN_DIMS[swin_type]


def _out_dim(config) -> int:
    out_dim = getattr(config, 'projector_outdim', None) or getattr(
        config, 'hidden_size', None)
    if not out_dim:
        raise ValueError('config needs projector_outdim (the LLM hidden '
                         'size: 2048 for Phi-1.5, 2560 for Phi-3)')
    return int(out_dim)


def build_deformable_projector(config) -> nn.Module:
    """The ``deformable`` projector from PSALM-style config attributes."""
    hidden = int(getattr(config, 'mm_hidden_dim', 256))
    n_heads = int(getattr(config, 'mm_n_heads', 8))
    n_points = int(getattr(config, 'mm_n_points', 4))
    num_tokens = int(getattr(config, 'mm_num_tokens', None) or
                     DEFAULT_NUM_TOKENS)
    if hidden % n_heads != 0:
        raise ValueError(f'mm_n_heads ({n_heads}) must divide mm_hidden_dim '
                         f'({hidden})')
    if math.isqrt(num_tokens) ** 2 != num_tokens:
        raise ValueError(f'mm_num_tokens ({num_tokens}) must be a square '
                         'number (the tokens form a grid)')
    dims = _vision_dims(config)
    projector = MultiScaleDeformableCrossAttentionAlignment(
        dims, hidden_dim=hidden, n_heads=n_heads, n_points=n_points,
        num_layers=int(getattr(config, 'mm_num_layers', 2)),
        query_mode='pooled', query_level=-1, num_queries=num_tokens,
        out_dim=_out_dim(config), out_hidden_dim=SWIN_CONV_DIM)
    logger.info('mm_projector type: %s', type(projector).__name__)
    logger.info('n_levels=%d, n_heads=%d, n_points=%d', projector.n_levels,
                projector.n_heads, projector.n_points)
    return projector


def build_vision_projector(config, delay_load: bool = False,
                           **kwargs) -> nn.Module:
    """Build the ``mm_projector`` named by ``config.mm_projector_type``.

    Config attributes (PSALM's names): ``mm_projector_type`` (default
    ``'linear'``, as PSALM), ``mm_hidden_size``/``mm_input_embeds`` (vision
    width), ``hidden_size``/``projector_outdim`` (LLM width), and for
    ``deformable``: ``mm_hidden_dim`` (256), ``mm_n_heads`` (8),
    ``mm_n_points`` (4), ``swin_type`` (``base``/``large``) or
    ``mm_vision_dims``, ``mm_num_tokens`` (256), ``mm_num_layers`` (2).

    Inputs of the built module: ``deformable`` takes the 4 Swin maps (list,
    tuple, or dict ``res2..res5``); ``swin_conv`` the last map (or all
    four); ``linear``/``mlp``/``identity`` tokens ``(B, N, C)``.
    All return ``(B, N_tokens, out_dim)``.
    """
    projector_type = getattr(config, 'mm_projector_type', 'linear')
    if projector_type == 'deformable':
        return build_deformable_projector(config)
    if projector_type == 'swin_conv':
        return SwinConvProjector(
            int(getattr(config, 'mm_input_embeds', None) or
                _vision_dims(config)[-1]), _out_dim(config))
    if projector_type == 'identity':
        return IdentityMap()
    in_dim = getattr(config, 'mm_hidden_size', None)
    if projector_type == 'linear':
        return nn.Linear(int(in_dim), _out_dim(config))
    mlp = re.match(r'^mlp(\d+)x_gelu$', projector_type)
    if mlp:
        layers = [nn.Linear(int(in_dim), _out_dim(config))]
        for _ in range(int(mlp.group(1)) - 1):
            layers += [nn.GELU(), nn.Linear(_out_dim(config),
                                            _out_dim(config))]
        return nn.Sequential(*layers)
    raise ValueError(f'unknown mm_projector_type {projector_type!r}; '
                     f'expected one of {PROJECTOR_TYPES}')
