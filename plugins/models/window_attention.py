"""Windowed attention for ViT towers on large inputs (as ViTDet does it).

ViTDet (Li et al. 2022, detectron2 ``modeling/backbone/vit.py``) runs most
blocks of a plain ViT on non-overlapping windows of the patch grid (window
14 for ViT-B, i.e. the 224 px pre-training grid) and a few blocks globally
(ViT-B: blocks 2, 5, 8, 11, the last of each quarter), padding the grid at
the bottom/right to a window multiple and cropping back.  Self-attention
then costs ``O(N * w^2)`` instead of ``O(N^2)`` in the windowed blocks, so
1024-1333 px inputs fit in memory.  Same weights, no new parameters.

Here a whole block runs on the windows (its norms and MLP act per token, so
only its attention sees the difference), which lets windowing wrap any
block, timm's or open_clip's, and CLIP Surgery's value-value branch, from
the outside:

* prefix (class/register) tokens are split from the ``(gh, gw)`` spatial
  tokens; the spatial tokens are zero-padded to a window multiple and cut
  into ``(B * nW, w_h * w_w, C)`` windows; every window gets a copy of the
  prefix tokens in front, so a block sees ``[prefix, window tokens]``;
* after the block, windows are put back, the padding is cropped, and each
  prefix token's output is the mean of its copies over the windows;
* a grid side no longer than the window is not split (the window is cut to
  that side, no padding): a window covering the grid is exactly global
  attention.

Padded positions are zero tokens that the window's queries attend to (as in
ViTDet, which pads after the block's first norm; here the block's own norm
sees the zeros).

:class:`WindowedCall` is a ``call(fn, x)`` hook of
:meth:`plugins.models.vit_tower.ViTTower.forward_blocks` /
:func:`plugins.models.clip_surgery.surgery_forward`, wrapping another hook
(gradient checkpointing), so checkpointing, partial unfreezing and CLIP
Surgery work unchanged.

Host-free: torch only.
"""
import functools
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

Grid = Tuple[int, int]
BlockCaller = Callable[[Callable, torch.Tensor], torch.Tensor]
#: ``(batch, num_prefix, grid, window, padded grid)`` of a partition.
WindowLayout = Tuple[int, int, Grid, Grid, Grid]


def check_window_size(window_size: Optional[int], owner: str = 'tower'
                      ) -> Optional[int]:
    """``window_size`` as an int >= 1, or None (windowing off)."""
    if window_size is None:
        return None
    if isinstance(window_size, bool) or not isinstance(window_size, int):
        raise TypeError(f'{owner}: window_size must be an int (patches per '
                        f'window side) or None, got {window_size!r}')
    if window_size < 1:
        raise ValueError(f'{owner}: window_size must be >= 1 patch, got '
                         f'{window_size}')
    return window_size


def default_global_blocks(depth: int) -> Tuple[int, ...]:
    """ViTDet's global blocks: the last block of each quarter of the tower
    (12 blocks: 2, 5, 8, 11; 24: 5, 11, 17, 23; 32: 7, 15, 23, 31; a tower
    of 4 blocks or fewer has every block global)."""
    return tuple(sorted({max(0, round((k + 1) * depth / 4) - 1)
                         for k in range(4)}))


def resolve_global_blocks(global_blocks: Optional[Sequence[int]],
                          depth: int,
                          owner: str = 'tower') -> Tuple[int, ...]:
    """Global block indices, negatives counted from the end, checked.

    Args:
        global_blocks (Sequence[int], optional): blocks that attend
            globally; None gives :func:`default_global_blocks`; ``()``
            windows every block.
        depth (int): number of blocks.
        owner (str): name for error messages.
    """
    if global_blocks is None:
        return default_global_blocks(depth)
    if isinstance(global_blocks, int):
        global_blocks = (global_blocks, )
    resolved = []
    for i in global_blocks:
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f'{owner}: global_blocks entries must be block '
                            f'indices (int), got {i!r}')
        j = i + depth if i < 0 else i
        if not 0 <= j < depth:
            raise ValueError(f'{owner}: global_blocks entry {i} is out of '
                             f'range for {depth} blocks (use 0..{depth - 1} '
                             f'or -{depth}..-1)')
        if j in resolved:
            raise ValueError(f'{owner}: global_blocks names block {j} twice '
                             f'({tuple(global_blocks)})')
        resolved.append(j)
    return tuple(sorted(resolved))


def window_partition(x: torch.Tensor, grid: Grid, num_prefix: int,
                     window_size: int
                     ) -> Tuple[torch.Tensor, WindowLayout]:
    """Tokens -> windows, each with a copy of the prefix tokens in front.

    Args:
        x (Tensor): ``(B, P + gh * gw, C)``, prefix tokens first, spatial
            tokens row-major.
        grid (tuple[int, int]): ``(gh, gw)``.
        num_prefix (int): ``P``.
        window_size (int): window side ``w`` in patches; a grid side
            ``<= w`` is not split.

    Returns:
        tuple: windows ``(B * nW, P + wh * ww, C)`` (windows row-major per
        image) and the layout for :func:`window_unpartition`.
    """
    b, t, c = x.shape
    gh, gw = int(grid[0]), int(grid[1])
    if t != num_prefix + gh * gw:
        raise ValueError(f'window_partition: {t} tokens do not match '
                         f'{num_prefix} prefix tokens + a {gh}x{gw} grid')
    wh, ww = min(window_size, gh), min(window_size, gw)
    ph, pw = -(-gh // wh) * wh, -(-gw // ww) * ww
    prefix, spatial = x[:, :num_prefix], x[:, num_prefix:]
    spatial = spatial.reshape(b, gh, gw, c)
    if (ph, pw) != (gh, gw):
        spatial = F.pad(spatial, (0, 0, 0, pw - gw, 0, ph - gh))
    nh, nw = ph // wh, pw // ww
    windows = spatial.reshape(b, nh, wh, nw, ww, c).permute(0, 1, 3, 2, 4, 5)
    windows = windows.reshape(b * nh * nw, wh * ww, c)
    if num_prefix:
        copies = prefix.unsqueeze(1).expand(b, nh * nw, num_prefix, c)
        windows = torch.cat(
            [copies.reshape(b * nh * nw, num_prefix, c), windows], dim=1)
    return windows, (b, num_prefix, (gh, gw), (wh, ww), (ph, pw))


def window_unpartition(windows: torch.Tensor,
                       layout: WindowLayout) -> torch.Tensor:
    """Inverse of :func:`window_partition`: crop the padding, prefix tokens
    averaged over the windows.

    Args:
        windows (Tensor): ``(B * nW, P + wh * ww, C)``.
        layout: from :func:`window_partition`.

    Returns:
        Tensor: ``(B, P + gh * gw, C)``.
    """
    b, num_prefix, (gh, gw), (wh, ww), (ph, pw) = layout
    nh, nw = ph // wh, pw // ww
    c = windows.shape[-1]
    spatial = windows[:, num_prefix:].reshape(b, nh, nw, wh, ww, c)
    spatial = spatial.permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, c)
    spatial = spatial[:, :gh, :gw].reshape(b, gh * gw, c)
    if not num_prefix:
        return spatial
    prefix = windows[:, :num_prefix].reshape(b, nh * nw, num_prefix, c)
    return torch.cat([prefix.mean(dim=1), spatial], dim=1)


def _plain_call(fn: Callable, x: torch.Tensor) -> torch.Tensor:
    return fn(x)


def block_of(fn: Callable) -> nn.Module:
    """The block a ``call`` hook is asked to run: the block itself or the
    first argument of a ``functools.partial`` (CLIP Surgery's branch)."""
    if isinstance(fn, nn.Module):
        return fn
    if isinstance(fn, functools.partial) and fn.args and isinstance(
            fn.args[0], nn.Module):
        return fn.args[0]
    raise TypeError('windowed attention: cannot tell which block '
                    f'{fn!r} runs (expected a block or '
                    'functools.partial(fn, block))')


class WindowedCall:
    """A ``call(fn, x)`` hook running non-global blocks on windows.

    Args:
        blocks (Sequence[nn.Module]): the tower's blocks, in order.
        grid (tuple[int, int]): the patch grid ``(gh, gw)`` of ``x``.
        num_prefix (int): prefix (class/register) tokens in front.
        window_size (int): window side in patches.
        global_blocks (Sequence[int]): non-negative indices of the blocks
            that attend globally.
        call (callable, optional): the hook to wrap (e.g. gradient
            checkpointing); gets the windows ``(B * nW, P + wh * ww, C)``
            for windowed blocks. Default: ``fn(x)``.

    ``fn`` is a block or ``functools.partial(branch, block)`` of one of
    ``blocks``; input and output ``(B, P + gh * gw, C)``.
    """

    def __init__(self,
                 blocks: Sequence[nn.Module],
                 grid: Grid,
                 num_prefix: int,
                 window_size: int,
                 global_blocks: Sequence[int],
                 call: Optional[BlockCaller] = None) -> None:
        self.grid = (int(grid[0]), int(grid[1]))
        self.num_prefix = int(num_prefix)
        self.window_size = int(window_size)
        self.call = call or _plain_call
        keep = set(global_blocks)
        self.index = {id(blk): i for i, blk in enumerate(blocks)}
        self.windowed = {
            id(blk)
            for i, blk in enumerate(blocks) if i not in keep
        }

    def __call__(self, fn: Callable, x: torch.Tensor) -> torch.Tensor:
        key = id(block_of(fn))
        if key not in self.index:
            raise ValueError('windowed attention: the block to run is not '
                             'one of the tower blocks it was set up for')
        if key not in self.windowed:
            return self.call(fn, x)
        windows, layout = window_partition(x, self.grid, self.num_prefix,
                                           self.window_size)
        return window_unpartition(self.call(fn, windows), layout)
