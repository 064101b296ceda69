"""PSALM-compatible ``build_vision_projector(config)``.

A drop-in for ``psalm/model/multimodal_projector/builder.py``: the same
function name, the same attribute-access config, every PSALM projector type
(``linear``, ``conv``, ``swin_conv``, ``mlp{N}x_gelu``, ``identity``)
rebuilt with PSALM's state-dict names, shapes, forward and defaults (so a
PSALM checkpoint loads strictly and gives the same output), plus
``deformable``: our multi-scale deformable cross-attention projector over
all four Swin maps.
"""
import logging
import math
import re
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from plugins.layers import (DEFAULT_HIDDEN_DIM, DEFAULT_NUM_HEADS,
                            DEFAULT_NUM_POINTS,
                            MultiScaleDeformableCrossAttentionAlignment,
                            check_projector_args, check_size)

logger = logging.getLogger('plugins.llava')

#: Channels of the four Swin stages PSALM's vision tower returns.
SWIN_DIMS = {'base': [128, 256, 512, 1024], 'large': [192, 384, 768, 1536]}
#: Width of PSALM's ``swin_conv`` block (its output Linear reads 2048).
SWIN_CONV_DIM = 2048
#: PSALM's defaults where its builder reads a missing config attribute.
PSALM_DEFAULT_OUTDIM = 4096     # ``projector_outdim`` (conv, swin_conv)
PSALM_DEFAULT_INPUT_EMBEDS = 1024   # ``mm_input_embeds`` (swin_conv)
#: PSALM's ``conv`` projector: input channels, block widths, input size.
CONV_IN_CHANNELS = 256
CONV_WIDTHS = (1024, 4096)
CONV_INPUT_SIZE = 64
PROJECTOR_TYPES = ('deformable', 'swin_conv', 'conv', 'linear',
                   'mlp{N}x_gelu', 'identity')
DEFAULT_NUM_TOKENS = 256  # a 16x16 grid, as many as swin_conv emits
DEFAULT_NUM_LAYERS = 2  # attention + FFN blocks of the deformable projector
#: The deformable projector's arguments under PSALM's config names.
DEFORMABLE_NAMES = dict(in_channels='mm_vision_dims',
                        hidden_dim='mm_hidden_dim', n_heads='mm_n_heads',
                        n_points='mm_n_points', num_layers='mm_num_layers',
                        num_queries='mm_num_tokens',
                        out_dim='projector_outdim')


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

    @property
    def config(self):
        return {'mm_projector_type': 'identity'}


def _norm(kind: str, channels: int, size: Optional[int]) -> nn.Module:
    if kind == 'batch':
        return nn.BatchNorm2d(channels)
    if kind == 'layer':
        # PSALM's LayerNorm variant normalises each sample over (C, H, W),
        # so it is tied to one input size.
        return nn.LayerNorm([channels, size, size])
    raise ValueError(f"norm must be 'batch' or 'layer', got {kind!r}")


class PsalmBasicBlock(nn.Module):
    """The ResNet BasicBlock of PSALM's ``conv``/``swin_conv`` projectors.

    ``conv1`` (3x3, stride) -> ``bn1`` -> ReLU -> ``conv2`` -> ``conv2``
    -> ``bn2``, plus ``downsample`` (1x1 conv, stride -> norm) of the
    input, -> ReLU. Convolutions have no bias.

    Args:
        in_channels (int): Input channels.
        channels (int): Output channels.
        stride (int): Stride of ``conv1`` and ``downsample``. Default: 2.
        norm (str): ``'batch'`` (BatchNorm2d) or ``'layer'`` (LayerNorm
            over ``(channels, size, size)``). Default: ``'batch'``.
        out_size (int, optional): Output side length, for ``'layer'``.

    Shapes:
        ``(B, in_channels, H, W) -> (B, channels, H/stride, W/stride)``.
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 2,
                 norm: str = 'batch', out_size: Optional[int] = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride,
                               padding=1, bias=False)
        self.bn1 = _norm(norm, channels, out_size)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = _norm(norm, channels, out_size)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride,
                          bias=False), _norm(norm, channels, out_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        # PSALM's behaviour, kept on purpose: its BasicBlock.forward (no DCN)
        # calls conv2 once, then once more in its `not with_dcn` branch, so
        # the same 3x3 conv runs twice.  PSALM's trained weights expect it.
        out = self.bn2(self.conv2(self.conv2(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def _psalm_init(module: nn.Module) -> None:
    """PSALM's initialisation: conv ~ N(0, sqrt(2 / (k*k*out))), BatchNorm
    weight 1 / bias 0 (LayerNorm and Linear keep PyTorch's defaults)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, H*W, C)`` in row-major order."""
    return x.flatten(2).transpose(1, 2)


class SwinConvProjector(nn.Module):
    """PSALM's default ``swin_conv`` projector (its ``ResNetSwin``).

    One stride-2 :class:`PsalmBasicBlock` (``in_channels -> 2048``,
    BatchNorm) then ``fc``, a Linear to the LLM width. State-dict names are
    PSALM's: ``layer1.0.{conv1,bn1,conv2,bn2}.*``,
    ``layer1.0.downsample.{0,1}.*``, ``fc.{weight,bias}``.

    Args:
        in_channels (int): Channels of the last Swin map (1024 for Swin-B,
            1536 for Swin-L).
        out_dim (int): LLM hidden size.
        mid_channels (int): Block width. Default: 2048 (PSALM's).

    Shapes:
        ``(B, in_channels, H, W) -> (B, H/2 * W/2, out_dim)``, e.g.
        ``(B, 1024, 32, 32) -> (B, 256, 2048)``. A list/tuple/dict of the
        four Swin maps is also accepted (the last one is used).
    """

    def __init__(self, in_channels: int, out_dim: int,
                 mid_channels: int = SWIN_CONV_DIM) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(
            PsalmBasicBlock(in_channels, mid_channels, stride=2))
        self.fc = nn.Linear(mid_channels, out_dim)
        _psalm_init(self)

    def forward(self, x) -> torch.Tensor:
        x = _last_map(x).to(self.fc.weight.dtype)
        return self.fc(_tokens(self.layer1(x)))


class ConvProjector(nn.Module):
    """PSALM's ``conv`` projector (its ``ResNet`` / ``ResNetLayerNorm`` /
    ``ResNetWOnorm``).

    Two stride-2 :class:`PsalmBasicBlock` s (``layer1``: ``in_channels ->
    widths[0]``, ``layer2``: ``widths[0] -> widths[1]``) then ``fc``.
    PSALM builds it with ``in_channels=256``, ``widths=(1024, 4096)``;
    ``norm='layer'`` (its default, ``with_layernorm``) ties the block to a
    64x64 input. PSALM's ``ResNetWOnorm`` (``with_norm=False``), despite its
    name, has BatchNorm too and is this module with ``norm='batch'``.

    Args:
        out_dim (int): LLM hidden size.
        norm (str): ``'layer'`` or ``'batch'``. Default: ``'layer'``.
        in_channels (int): Input channels. Default: 256.
        widths (tuple): Block widths. Default: ``(1024, 4096)``.
        input_size (int): Input side length (``'layer'`` only). Default: 64.

    Shapes:
        ``(B, in_channels, S, S) -> (B, (S/4)**2, out_dim)``.
    """

    def __init__(self, out_dim: int, norm: str = 'layer',
                 in_channels: int = CONV_IN_CHANNELS,
                 widths: Tuple[int, int] = CONV_WIDTHS,
                 input_size: int = CONV_INPUT_SIZE) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(PsalmBasicBlock(
            in_channels, widths[0], stride=2, norm=norm,
            out_size=input_size // 2))
        self.layer2 = nn.Sequential(PsalmBasicBlock(
            widths[0], widths[1], stride=2, norm=norm,
            out_size=input_size // 4))
        self.fc = nn.Linear(widths[1], out_dim)
        _psalm_init(self)

    def forward(self, x) -> torch.Tensor:
        x = _last_map(x).to(self.fc.weight.dtype)
        return self.fc(_tokens(self.layer2(self.layer1(x))))


def _vision_dims(config) -> list:
    dims = getattr(config, 'mm_vision_dims', None)
    if dims is not None:  # an empty list is refused by the size check
        return dims
    swin_type = getattr(config, 'swin_type', 'base')
    if swin_type not in SWIN_DIMS:
        raise ValueError(f'unknown swin_type {swin_type!r}; expected one of '
                         f'{sorted(SWIN_DIMS)} (or set mm_vision_dims)')
    return SWIN_DIMS[swin_type]


def _out_dim(config):
    """``(name, value)`` of the output width: ``projector_outdim``, or the
    LLM's ``hidden_size`` when it is None (0 is refused, not a default)."""
    for name in ('projector_outdim', 'hidden_size'):
        value = getattr(config, name, None)
        if value is not None:
            return name, value
    raise ValueError('config needs projector_outdim (the LLM hidden '
                     'size: 2048 for Phi-1.5, 2560 for Phi-3)')


def build_deformable_projector(config) -> nn.Module:
    """The ``deformable`` projector from PSALM-style config attributes.

    Every size is checked before anything is built (``None`` or a missing
    attribute means the default; 0 or a negative value is an error naming
    the attribute).
    """
    hidden = _or_default(config, 'mm_hidden_dim', DEFAULT_HIDDEN_DIM)
    n_heads = _or_default(config, 'mm_n_heads', DEFAULT_NUM_HEADS)
    n_points = _or_default(config, 'mm_n_points', DEFAULT_NUM_POINTS)
    # Only None means the default: `x or DEFAULT` turned 0 into 256 tokens.
    num_tokens = _or_default(config, 'mm_num_tokens', DEFAULT_NUM_TOKENS)
    num_layers = _or_default(config, 'mm_num_layers', DEFAULT_NUM_LAYERS)
    out_name, out_dim = _out_dim(config)
    dims = _vision_dims(config)
    check_projector_args(
        "build_vision_projector (mm_projector_type='deformable')", dims,
        hidden, n_heads, n_points, num_layers, out_dim=out_dim,
        out_hidden_dim=SWIN_CONV_DIM, query_mode='pooled', query_level=-1,
        num_queries=num_tokens,
        names=dict(DEFORMABLE_NAMES, out_dim=out_name))
    projector = MultiScaleDeformableCrossAttentionAlignment(
        dims, hidden_dim=hidden, n_heads=n_heads, n_points=n_points,
        num_layers=num_layers, query_mode='pooled', query_level=-1,
        num_queries=num_tokens, out_dim=out_dim, out_hidden_dim=SWIN_CONV_DIM)
    logger.info('mm_projector type: %s', type(projector).__name__)
    logger.info('n_levels=%d, n_heads=%d, n_points=%d', projector.n_levels,
                projector.n_heads, projector.n_points)
    return projector


def _psalm_attr(config, name: str, projector_type: str) -> int:
    """``config.<name>``, which PSALM's builder reads without a default: a
    size of at least 1."""
    value = getattr(config, name, None)
    if value is None:
        raise ValueError(f'mm_projector_type {projector_type!r} needs '
                         f'config.{name}')
    return check_size(f'build_vision_projector (mm_projector_type='
                      f'{projector_type!r})', name, value)


def _or_default(config, name: str, default: int):
    """PSALM's ``getattr(config, name, default)`` (``None`` counts as
    missing here; any other value is returned as given, to be checked)."""
    value = getattr(config, name, None)
    return default if value is None else value


def _sized(config, name: str, default: int, projector_type: str) -> int:
    """:func:`_or_default`, checked to be a size of at least 1."""
    return check_size(f'build_vision_projector (mm_projector_type='
                      f'{projector_type!r})', name,
                      _or_default(config, name, default))


def build_vision_projector(config, delay_load: bool = False,
                           **kwargs) -> nn.Module:
    """Build the ``mm_projector`` named by ``config.mm_projector_type``.

    Config attributes are PSALM's, read with PSALM's defaults:

    * ``linear``: ``Linear(mm_hidden_size, hidden_size)``; ``mlp{N}x_gelu``:
      that Linear then ``N-1`` x (GELU, ``Linear(hidden_size,
      hidden_size)``); ``identity``.
    * ``swin_conv`` (:class:`SwinConvProjector`): ``mm_input_embeds``
      (1024) -> ``projector_outdim`` (4096).
    * ``conv`` (:class:`ConvProjector`): 256 channels at 64x64 ->
      ``projector_outdim`` (4096); ``with_layernorm`` (True) selects
      LayerNorm, else BatchNorm (``with_norm`` only changes PSALM's print).
    * ``deformable`` (ours): ``mm_hidden_dim`` (256), ``mm_n_heads`` (8),
      ``mm_n_points`` (4), ``swin_type`` (``base``/``large``) or
      ``mm_vision_dims``, ``mm_num_tokens`` (256), ``mm_num_layers`` (2),
      ``projector_outdim`` (or ``hidden_size``).

    Inputs of the built module: ``deformable`` takes the 4 Swin maps (list,
    tuple, or dict ``res2..res5``); ``swin_conv``/``conv`` the last map (or
    all four); ``linear``/``mlp``/``identity`` tokens ``(B, N, C)``.
    All return ``(B, N_tokens, out_dim)``.
    """
    projector_type = getattr(config, 'mm_projector_type', 'linear')
    if projector_type == 'deformable':
        return build_deformable_projector(config)
    if projector_type == 'swin_conv':
        return SwinConvProjector(
            _sized(config, 'mm_input_embeds', PSALM_DEFAULT_INPUT_EMBEDS,
                   projector_type),
            _sized(config, 'projector_outdim', PSALM_DEFAULT_OUTDIM,
                   projector_type))
    if projector_type == 'conv':
        with_layernorm = getattr(config, 'with_layernorm', True)
        return ConvProjector(
            _sized(config, 'projector_outdim', PSALM_DEFAULT_OUTDIM,
                   projector_type),
            norm='layer' if with_layernorm else 'batch')
    if projector_type == 'identity':
        return IdentityMap()
    if projector_type == 'linear':
        return nn.Linear(_psalm_attr(config, 'mm_hidden_size', projector_type),
                         _psalm_attr(config, 'hidden_size', projector_type))
    mlp = re.match(r'^mlp(\d+)x_gelu$', projector_type)
    if mlp:
        in_dim = _psalm_attr(config, 'mm_hidden_size', projector_type)
        width = _psalm_attr(config, 'hidden_size', projector_type)
        depth = check_size(f'build_vision_projector (mm_projector_type='
                           f'{projector_type!r})', 'the N of mlp{N}x_gelu',
                           int(mlp.group(1)))
        layers = [nn.Linear(in_dim, width)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(width, width)]
        return nn.Sequential(*layers)
    raise ValueError(f'unknown mm_projector_type {projector_type!r}; '
                     f'expected one of {PROJECTOR_TYPES}')
