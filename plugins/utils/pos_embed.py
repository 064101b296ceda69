"""Resampling of absolute position embeddings to a new patch grid.

Every CLIP-family backbone in this package (open_clip ViTs, timm trunks,
SigLIP-style towers) runs at input sizes other than the one it was trained
at, so the learned position embedding of the training grid is resized to
the new patch grid.  This is the one implementation all of them use; how it
interpolates is chosen per upstream model with a ``pos_embed_interp`` spec
(:func:`pos_embed_interp_args`), defaulting to what that upstream does:

=================  ==========================================================
``'open_clip'``    bicubic, anti-aliased, ``align_corners=False`` (open_clip
                   ``model.resize_pos_embed``)
``'timm'``         the same numbers (timm ``layers.resample_abs_pos_embed``:
                   ``interpolation='bicubic'``, ``antialias=True``)
``'clip_surgery'`` bilinear, ``align_corners=False``, no anti-aliasing (CLIP
                   Surgery's ``VisionTransformer.forward``:
                   ``F.interpolate(..., mode='bilinear')``)
=================  ==========================================================

Anti-aliasing only changes the result when the grid shrinks.
"""
from typing import Mapping, Tuple, Union

import torch
import torch.nn.functional as F


#: Named ``pos_embed_interp`` specs: what each upstream's resampling does.
POS_EMBED_INTERP_PRESETS = {
    'open_clip': dict(interpolation='bicubic', antialias=True),
    'timm': dict(interpolation='bicubic', antialias=True),
    'clip_surgery': dict(interpolation='bilinear', antialias=False),
}

#: ``F.interpolate`` modes a spec may name directly (4-D input).
_MODES = ('nearest', 'nearest-exact', 'bilinear', 'bicubic', 'area')

PosEmbedInterp = Union[str, Mapping]


def pos_embed_interp_args(spec: PosEmbedInterp) -> dict:
    """``interpolation``/``antialias`` arguments of
    :func:`resample_pos_embed` for a ``pos_embed_interp`` spec.

    Args:
        spec (str | dict): a preset name (:data:`POS_EMBED_INTERP_PRESETS`:
            ``'open_clip'``, ``'timm'``, ``'clip_surgery'``), an
            ``F.interpolate`` mode (``'bilinear'``, ``'bicubic'``, ...;
            no anti-aliasing), or ``dict(mode=..., antialias=...)``.

    Raises:
        ValueError: an unknown name or mode, or unknown dict keys.
    """
    if isinstance(spec, str):
        if spec in POS_EMBED_INTERP_PRESETS:
            return dict(POS_EMBED_INTERP_PRESETS[spec])
        if spec in _MODES:
            return dict(interpolation=spec, antialias=False)
        raise ValueError(
            f"pos_embed_interp '{spec}' is neither a preset "
            f'{sorted(POS_EMBED_INTERP_PRESETS)} nor an F.interpolate mode '
            f'{list(_MODES)}')
    if isinstance(spec, Mapping):
        unknown = set(spec) - {'mode', 'antialias'}
        if unknown or 'mode' not in spec:
            raise ValueError('pos_embed_interp dict takes mode= and '
                             f'optionally antialias=, got {dict(spec)}')
        if spec['mode'] not in _MODES:
            raise ValueError('pos_embed_interp dict mode must be an '
                             f'F.interpolate mode {list(_MODES)}, got '
                             f"'{spec['mode']}'")
        args = dict(interpolation=spec['mode'])
        args['antialias'] = bool(spec.get('antialias', False))
        return args
    raise TypeError('pos_embed_interp must be a str or a dict, got '
                    f'{type(spec).__name__}')


def resample_pos_embed(pos_embed: torch.Tensor,
                       new_grid: Tuple[int, int],
                       old_grid: Tuple[int, int],
                       num_prefix_tokens: int = 1,
                       interpolation: str = 'bicubic',
                       antialias: bool = True) -> torch.Tensor:
    """Resize an absolute position embedding from one patch grid to another.

    The prefix tokens' embeddings (class/register tokens) are kept as they
    are; the spatial part is reshaped to its grid, interpolated, and
    flattened back.  Interpolation runs in float32 (bicubic in half
    precision is inaccurate and unsupported on some devices) and the result
    has the input's dtype.

    Args:
        pos_embed (Tensor): ``(num_prefix_tokens + gh * gw, C)`` (open_clip)
            or ``(1, num_prefix_tokens + gh * gw, C)`` (timm).
        new_grid (tuple[int, int]): target ``(h, w)`` in patches.
        old_grid (tuple[int, int]): ``(gh, gw)`` the embedding was made for.
        num_prefix_tokens (int): leading non-spatial tokens. Default: 1.
        interpolation (str): ``F.interpolate`` mode. Default: ``'bicubic'``.
        antialias (bool): anti-alias when shrinking. Default: True (these
            two defaults are open_clip's and timm's; see
            :func:`pos_embed_interp_args` for other upstreams).

    Returns:
        Tensor: same rank as ``pos_embed``, with ``num_prefix_tokens + h * w``
        tokens.
    """
    # Symbolic sizes (torch.export with dynamic H/W) stay symbolic: int()
    # would fix the exported program to the example's grid.
    new_grid = tuple(s if isinstance(s, torch.SymInt) else int(s)
                     for s in new_grid)
    old_grid = tuple(int(s) for s in old_grid)
    original = pos_embed
    squeeze = pos_embed.dim() == 2
    if squeeze:
        pos_embed = pos_embed.unsqueeze(0)
    if pos_embed.dim() != 3:
        raise ValueError('pos_embed must have shape (N, C) or (1, N, C), '
                         f'got {tuple(pos_embed.shape)}')
    num_spatial = pos_embed.shape[1] - num_prefix_tokens
    if num_spatial != old_grid[0] * old_grid[1]:
        raise ValueError(
            f'pos_embed has {num_spatial} spatial tokens '
            f'({pos_embed.shape[1]} - {num_prefix_tokens} prefix) but the '
            f'source grid {old_grid[0]}x{old_grid[1]} needs '
            f'{old_grid[0] * old_grid[1]}')
    if not any(isinstance(s, torch.SymInt) for s in new_grid) and \
            new_grid == old_grid:
        return original  # (traced with symbolic sizes: interpolating to
        # the same size is the identity, and no size is baked in)

    prefix = pos_embed[:, :num_prefix_tokens]
    spatial = pos_embed[:, num_prefix_tokens:]
    dim = spatial.shape[-1]
    orig_dtype = spatial.dtype
    spatial = spatial.reshape(1, old_grid[0], old_grid[1], dim)
    spatial = spatial.permute(0, 3, 1, 2).float()
    # antialias only matters (and is only supported) for bilinear/bicubic
    # downsampling; F.interpolate ignores it when enlarging.
    use_aa = antialias and interpolation in ('bilinear', 'bicubic')
    kwargs = dict(align_corners=False) if interpolation in (
        'bilinear', 'bicubic') else {}
    spatial = F.interpolate(
        spatial, size=new_grid, mode=interpolation, antialias=use_aa,
        **kwargs)
    spatial = spatial.permute(0, 2, 3, 1).reshape(1, -1, dim).to(orig_dtype)
    out = torch.cat([prefix, spatial], dim=1)
    return out.squeeze(0) if squeeze else out
