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
  tokens (and trailing extra tokens, e.g. VPT's prompts); the spatial tokens
  are zero-padded to a window multiple and cut into ``(B * nW, w_h * w_w,
  C)`` windows; every window gets a copy of the prefix tokens in front (and
  of the extra tokens behind), so a block sees ``[prefix, window, extra]``;
* after the block, windows are put back, the padding is cropped, and each
  prefix/extra token's output is the mean of its copies over the windows;
* a grid side no longer than the window is not split (the window is cut to
  that side, no padding): a window covering the grid is exactly global
  attention.

Padded positions are zero tokens that the window's queries attend to (as in
ViTDet, which pads after the block's first norm; here the block's own norm
sees the zeros).

The tower's block loop (:meth:`plugins.models.vit_tower.ViTTower.block_caller`)
knows, per block index, whether that block is windowed and partitions around
it (and around CLIP Surgery's branch of the same block), inside gradient
checkpointing.  :func:`attention_bytes` estimates what one attention map
costs, so a tower can refuse an input before allocating it.

Host-free: torch only.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

Grid = Tuple[int, int]
#: ``(batch, num_prefix, grid, window, padded grid, num_extra)`` of a
#: partition.
WindowLayout = Tuple[int, int, Grid, Grid, Grid, int]


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
    """Default global blocks of a windowed tower: one in three, at most
    ViTDet's four, each the last block of an equal segment of the tower.

    12 blocks: 2, 5, 8, 11 (ViTDet's ViT-B); 24: 5, 11, 17, 23; 32: 7, 15,
    23, 31; smaller towers keep the same share (6 blocks: 2, 5; 4 blocks:
    1, 3; 3 or fewer: the last block), so windowing still saves memory in
    them.
    """
    depth = int(depth)
    if depth < 1:
        return ()
    n = min(4, -(-depth // 3))
    return tuple(sorted({max(0, round((k + 1) * depth / n) - 1)
                         for k in range(n)}))


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
                     window_size: int, num_extra: int = 0
                     ) -> Tuple[torch.Tensor, WindowLayout]:
    """Tokens -> windows, each with a copy of the prefix tokens in front
    (and of the extra tokens behind).

    Args:
        x (Tensor): ``(B, P + gh * gw + E, C)``, prefix tokens first,
            spatial tokens row-major, then ``E`` extra tokens (VPT's prompts).
        grid (tuple[int, int]): ``(gh, gw)``.
        num_prefix (int): ``P``.
        window_size (int): window side ``w`` in patches; a grid side
            ``<= w`` is not split.
        num_extra (int): ``E``. Default: 0.

    Returns:
        tuple: windows ``(B * nW, P + wh * ww + E, C)`` (windows row-major
        per image) and the layout for :func:`window_unpartition`.
    """
    b, t, c = x.shape
    gh, gw = int(grid[0]), int(grid[1])
    if t != num_prefix + gh * gw + num_extra:
        raise ValueError(f'window_partition: {t} tokens do not match '
                         f'{num_prefix} prefix tokens + a {gh}x{gw} grid + '
                         f'{num_extra} extra tokens')
    wh, ww = min(window_size, gh), min(window_size, gw)
    ph, pw = -(-gh // wh) * wh, -(-gw // ww) * ww
    end = num_prefix + gh * gw
    spatial = x[:, num_prefix:end].reshape(b, gh, gw, c)
    if (ph, pw) != (gh, gw):
        spatial = F.pad(spatial, (0, 0, 0, pw - gw, 0, ph - gh))
    nh, nw = ph // wh, pw // ww
    windows = spatial.reshape(b, nh, wh, nw, ww, c).permute(0, 1, 3, 2, 4, 5)
    windows = windows.reshape(b * nh * nw, wh * ww, c)

    def copies(tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        return tokens.unsqueeze(1).expand(b, nh * nw, n, c).reshape(
            b * nh * nw, n, c)

    parts = [windows]
    if num_prefix:
        parts.insert(0, copies(x[:, :num_prefix]))
    if num_extra:
        parts.append(copies(x[:, end:]))
    if len(parts) > 1:
        windows = torch.cat(parts, dim=1)
    return windows, (b, num_prefix, (gh, gw), (wh, ww), (ph, pw), num_extra)


def window_unpartition(windows: torch.Tensor,
                       layout: WindowLayout) -> torch.Tensor:
    """Inverse of :func:`window_partition`: crop the padding, prefix and
    extra tokens averaged over the windows.

    Args:
        windows (Tensor): ``(B * nW, P + wh * ww + E, C)``.
        layout: from :func:`window_partition`.

    Returns:
        Tensor: ``(B, P + gh * gw + E, C)``.
    """
    b, num_prefix, (gh, gw), (wh, ww), (ph, pw), num_extra = layout
    nh, nw = ph // wh, pw // ww
    c = windows.shape[-1]
    end = num_prefix + wh * ww
    spatial = windows[:, num_prefix:end].reshape(b, nh, nw, wh, ww, c)
    spatial = spatial.permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, c)
    spatial = spatial[:, :gh, :gw].reshape(b, gh * gw, c)

    def mean(tokens: torch.Tensor) -> torch.Tensor:
        return tokens.reshape(b, nh * nw, tokens.shape[1], c).mean(dim=1)

    parts = [spatial]
    if num_prefix:
        parts.insert(0, mean(windows[:, :num_prefix]))
    if num_extra:
        parts.append(mean(windows[:, end:]))
    return torch.cat(parts, dim=1) if len(parts) > 1 else spatial


def attention_bytes(batch: int, heads: int, tokens: int,
                    element_size: int) -> int:
    """Bytes of one ``(batch, heads, tokens, tokens)`` attention map, the
    tensor an unfused (math) attention kernel materialises."""
    return int(batch) * int(heads) * int(tokens) ** 2 * int(element_size)


def windowed_tokens(grid: Grid, window_size: int) -> Tuple[int, int]:
    """``(windows per image, tokens per window)`` of a ``(gh, gw)`` grid
    (prefix tokens not counted), as :func:`window_partition` cuts it."""
    gh, gw = int(grid[0]), int(grid[1])
    wh, ww = min(window_size, gh), min(window_size, gw)
    return -(-gh // wh) * -(-gw // ww), wh * ww
