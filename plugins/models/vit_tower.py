"""One ViT image tower module for every CLIP-family tower, speaking timm's
language.

:class:`OpenCLIPViTTower` (open_clip's ``VisionTransformer``: OpenAI CLIP,
LAION OpenCLIP) and :class:`TimmViTTower` (open_clip's ``TimmModel`` around
a timm ``VisionTransformer`` trunk: BiomedCLIP, SigLIP-style towers such as
ConceptCLIP's) are ``nn.Module`` s holding the image tower as ``visual``
(and an external token projection as ``projection``), so numerics and
weights stay the tower's own.  Every user of an image tower in this package
(the mmdet backbones, CLIP Surgery and the Open-GroundingDino adapter,
visual prompt tuning) runs it through them:

* :meth:`ViTTower.forward_intermediates` ``(x, indices=None, norm=False,
  stop_early=False, output_fmt='NCHW', intermediates_only=False)`` means
  what timm's does (an int takes the last n blocks, ``norm`` applies the
  final norm; a list of maps, or ``(final normed tokens, maps)``) and, at
  the tower's training size, returns exactly what open_clip's and timm's
  own ``forward_intermediates`` return.  Beyond them: any input size
  ``>= patch`` (zero-padded at the bottom/right to the patch multiple, the
  position embedding resampled to the grid and cached,
  :meth:`ViTTower.pos_embed`), ``with_proj`` (maps in the joint image-text
  space) and ``hooks``;
* one block loop, :func:`run_blocks`, with per-block hooks
  (:class:`BlockHook`): CLIP Surgery's dual path
  (:class:`plugins.models.clip_surgery.SurgeryPath`) and VPT's prompts
  (:class:`plugins.prompt_learning.visual_prompt_learner.VisualPromptHook`)
  are hooks, so gradient checkpointing and windowed attention apply to
  them too;
* gradient checkpointing (:meth:`ViTTower.set_grad_checkpointing`, the one
  flag), windowed attention (:meth:`ViTTower.set_window_attention`: each
  block index is windowed or global, see
  :mod:`plugins.models.window_attention`), an attention-memory budget
  checked before anything is allocated (:meth:`ViTTower.check_attention_budget`)
  and input checks (shape, dtype, finite values: :meth:`ViTTower.prepare`);
* patch dropout (a pre-training regulariser that drops tokens) is never
  applied: every output is a full grid;
* :meth:`ViTTower.set_trainable` / :meth:`ViTTower.frozen_modules`: freezing
  and partial unfreezing of the last blocks.

A module that must keep the image tower's own state-dict keys (``visual.*``,
e.g. the mmdet backbones) registers ``visual`` itself and keeps the tower
beside it with :func:`attach_tower`.

Host-free: torch, open_clip and timm only.
"""
import functools
from typing import (Callable, Dict, Iterable, List, Optional, Sequence, Tuple,
                    Union)

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from plugins.models.window_attention import (Grid, attention_bytes,
                                             check_window_size,
                                             resolve_global_blocks,
                                             window_partition,
                                             window_unpartition,
                                             windowed_tokens)
from plugins.utils.pos_embed import (PosEmbedInterp, pos_embed_interp_args,
                                     resample_pos_embed)

__all__ = [
    'Grid', 'BlockCaller', 'BlockHook', 'run_blocks', 'take_indices',
    'ViTTower', 'OpenCLIPViTTower', 'TimmViTTower', 'build_vit_tower',
    'attach_tower', 'head_linears', 'set_requires_grad',
    'DEFAULT_ATTENTION_BUDGET'
]

#: ``call(index, fn, x)`` runs ``fn(x)`` for block ``index`` of the loop,
#: ``fn`` being the block or a function of it (CLIP Surgery's branch); the
#: tower's caller adds windowing and gradient checkpointing around it.
BlockCaller = Callable[[int, Callable[[torch.Tensor], torch.Tensor],
                        torch.Tensor], torch.Tensor]
Trainable = Union[nn.Module, nn.Parameter]

#: Default attention-memory budget: the largest ``(B, heads, T, T)``
#: attention map (bytes) a forward may need, checked before the blocks run.
DEFAULT_ATTENTION_BUDGET = 16 * 2**30


def _plain_call(index: int, fn: Callable[[torch.Tensor], torch.Tensor],
                x: torch.Tensor) -> torch.Tensor:
    return fn(x)


class BlockHook:
    """A per-block hook of :func:`run_blocks` (override what you need).

    Per block the loop runs every hook's :meth:`before_block`, every hook's
    :meth:`branch`, the block (unless a hook's :meth:`skip_block` says
    so), then every hook's :meth:`after_block`.  One hook object serves
    one forward (it may keep state, e.g. CLIP Surgery's second path).
    """

    def before_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Tokens block ``index`` gets (e.g. with prompts appended)."""
        return x

    def branch(self, index: int, x_in: torch.Tensor,
               call: BlockCaller) -> None:
        """Work on block ``index``'s input that runs before the block
        (CLIP Surgery's value-value branch). ``x_in``: the block's input
        (after every hook's :meth:`before_block`); ``call``: runs a function
        of the block the way the block runs.

        Before, not after, the block: autograd runs the backward of the
        most recently created operations first, so this order decides in
        which order the gradients that meet in the block's input and its
        shared weights are summed, and floating-point sums depend on it
        (``tests/test_models/test_clip_surgery.py`` pins it).
        """

    def skip_block(self, index: int, final: bool) -> bool:
        """Whether block ``index`` need not run (its output unused);
        ``final``: it is the last block the loop runs."""
        return False

    def after_block(self, index: int, x_in: torch.Tensor,
                    x_out: Optional[torch.Tensor],
                    call: BlockCaller) -> torch.Tensor:
        """The tokens reported for block ``index`` (the loop carries
        ``x_out`` on). ``x_in``: the block's input; ``call``: runs a
        function of the block the way the block ran."""
        return x_out


def take_indices(depth: int,
                 indices: Optional[Union[int, Sequence[int]]] = None,
                 owner: str = 'tower') -> Tuple[List[int], int]:
    """timm's ``feature_take_indices``: None = every block, an int = the
    last n blocks, a sequence = those blocks (negatives from the end).

    Returns:
        tuple: ``(absolute indices, largest index)``.
    """
    if indices is None:
        indices = depth
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= depth:
            raise ValueError(f'{owner}: indices={indices} (the last n '
                             f'blocks) must be between 1 and {depth}')
        taken = list(range(depth - indices, depth))
    else:
        taken = []
        for i in indices:
            j = int(i) + depth if int(i) < 0 else int(i)
            if not 0 <= j < depth:
                raise ValueError(f'out_indices entry {i} is out of range for '
                                 f'{owner} with {depth} blocks')
            taken.append(j)
        if not taken:
            raise ValueError('out_indices must name at least one block')
    return taken, max(taken)


def run_blocks(blocks: Sequence[nn.Module],
               x: torch.Tensor,
               indices: Sequence[int],
               call: Optional[BlockCaller] = None,
               hooks: Sequence[BlockHook] = (),
               stop_early: bool = True
               ) -> Tuple[Optional[torch.Tensor], List[torch.Tensor]]:
    """The block loop: run ``blocks`` on ``x``, collect the tokens after
    each of ``indices``.

    Args:
        blocks (Sequence[nn.Module]): ``(B, T, C) -> (B, T, C)`` each.
        x (Tensor): ``(B, T, C)`` input of the first block.  Pass it
            without keeping a reference, so it is freed once the first
            block has run (one ``(B, T, C)`` tensor less at the peak).
        indices (Sequence[int]): non-negative block indices.
        call (callable, optional): ``call(index, fn, x)``; default
            ``fn(x)``.
        hooks (Sequence[BlockHook]): per-block hooks, in order.
        stop_early (bool): stop after the last requested block. Default:
            True.

    Returns:
        tuple: ``(x, outs)``: the tokens the loop carried out of its last
        block (None if a hook skipped it) and ``(B, T, C)`` per entry of
        ``indices`` (as the hooks report them).
    """
    call = call or _plain_call
    last = max(indices)
    end = last + 1 if stop_early else len(blocks)
    wanted = set(indices)
    taken: Dict[int, torch.Tensor] = {}
    # plain iteration: slicing an nn.ModuleList builds a new module
    for i, block in enumerate(blocks):
        if i >= end:
            break
        if hooks:
            for hook in hooks:
                x = hook.before_block(i, x)
            x_in = x
            for hook in hooks:
                hook.branch(i, x_in, call)
            final = i == end - 1
            x = None if any(h.skip_block(i, final) for h in hooks) else \
                call(i, block, x)
            out = x
            for hook in hooks:
                out = hook.after_block(i, x_in, out, call)
            del x_in
        else:
            x = call(i, block, x)
            out = x
        if i in wanted:
            taken[i] = out
        del out
    return x, [taken[i] for i in indices]


def attach_tower(owner: nn.Module, tower: 'ViTTower',
                 name: str = 'tower') -> None:
    """Keep ``tower`` as ``owner.<name>`` without registering it.

    For modules that register the image tower themselves (``owner.visual``)
    so their state-dict keys stay ``visual.*``; the tower holds the same
    modules, so ``.to()`` and ``.train()`` of the owner reach them.
    """
    owner.__dict__[name] = tower


def _format_bytes(n: int) -> str:
    return f'{n / 2**30:.1f} GiB' if n >= 2**30 else f'{n / 2**20:.1f} MiB'


class ViTTower(nn.Module):
    """A ViT image tower (see the module docstring).

    Use :func:`build_vit_tower` to get the right family.

    Args:
        visual (nn.Module): the image tower (``model.visual``), registered
            as ``self.visual``.
        pos_embed_interp (str | dict, optional): how the position embedding
            is resampled to other grids: a preset (``'open_clip'``,
            ``'timm'``, ``'clip_surgery'``), an ``F.interpolate`` mode or
            ``dict(mode=..., antialias=...)``, see
            :func:`plugins.utils.pos_embed_interp_args`. Default: the
            family's own upstream (:attr:`default_pos_embed_interp`).
        projection (nn.Module, optional): a token projection into the joint
            space kept outside the image tower (ConceptCLIP's
            ``image_proj``); replaces the tower's own in :meth:`project`.
        owner (str, optional): name used in error messages. Default: the
            tower's class name.
        window_size (int, optional), global_blocks (Sequence[int],
            optional): windowed attention, see :meth:`set_window_attention`.
        check_finite (bool): raise on NaN/Inf input (one device sync per
            forward). Default: True.
        attention_budget (int, optional): bytes the largest attention map
            of a forward may take (see :meth:`check_attention_budget`);
            None: no check. Default: :data:`DEFAULT_ATTENTION_BUDGET`
            (16 GiB).
    """

    #: Position-embedding resampling of the family's upstream.
    default_pos_embed_interp: PosEmbedInterp = 'timm'

    def __init__(self,
                 visual: nn.Module,
                 pos_embed_interp: Optional[PosEmbedInterp] = None,
                 projection: Optional[nn.Module] = None,
                 owner: Optional[str] = None,
                 window_size: Optional[int] = None,
                 global_blocks: Optional[Sequence[int]] = None,
                 check_finite: bool = True,
                 attention_budget: Optional[int] = DEFAULT_ATTENTION_BUDGET
                 ) -> None:
        super().__init__()
        self.visual = visual
        self.projection = projection
        self.owner = owner or type(visual).__name__
        self._pos_cache: Dict[tuple, tuple] = {}
        self.pos_embed_interp = pos_embed_interp
        self.window_size: Optional[int] = None
        self.global_blocks: Tuple[int, ...] = ()
        self.grad_checkpointing = False
        self.check_finite = bool(check_finite)
        self.attention_budget = attention_budget
        self._check_family()
        if window_size is not None or global_blocks is not None:
            self.set_window_attention(window_size, global_blocks)

    def _check_family(self) -> None:
        """Raise if ``visual`` is not a tower of this family."""

    @property
    def pos_embed_interp(self) -> PosEmbedInterp:
        """The resampling spec (see :func:`plugins.utils.pos_embed_interp_args`).
        Setting it validates the spec (a typo fails at once) and empties
        the cache; None means :attr:`default_pos_embed_interp`."""
        return self._interp_spec

    @pos_embed_interp.setter
    def pos_embed_interp(self, spec: Optional[PosEmbedInterp]) -> None:
        spec = self.default_pos_embed_interp if spec is None else spec
        self._interp_args = pos_embed_interp_args(spec)
        self._interp_spec = spec
        self._pos_cache.clear()

    @property
    def roots(self) -> List[nn.Module]:
        """The modules this tower runs: the image tower (and the external
        projection, if any)."""
        return [m for m in (self.visual, self.projection) if m is not None]

    # ------------------------------------------------------------------
    # What a family provides
    # ------------------------------------------------------------------
    @property
    def blocks(self) -> Sequence[nn.Module]:
        """The transformer blocks, in order, each ``(B, T, C) -> (B, T, C)``."""
        raise NotImplementedError

    @property
    def patch_size(self) -> int:
        """Side of the square patch in pixels (the output stride)."""
        raise NotImplementedError

    @property
    def width(self) -> int:
        """Token width ``C``."""
        raise NotImplementedError

    @property
    def num_heads(self) -> int:
        """Attention heads per block."""
        return int(getattr(self.blocks[0].attn, 'num_heads', 1))

    @property
    def proj_dims(self) -> int:
        """Width of the joint image-text space (:meth:`project`)."""
        if self.projection is not None:
            linears = head_linears(self.projection)
            return linears[-1].out_features if linears else self.width
        return self._tower_proj_dims()

    def _tower_proj_dims(self) -> int:
        raise NotImplementedError

    @property
    def num_prefix_tokens(self) -> int:
        """Leading non-spatial (class/register) tokens the blocks see."""
        raise NotImplementedError

    @property
    def grid_size(self) -> Grid:
        """The patch grid the tower was trained at."""
        raise NotImplementedError

    def pos_embed_source(self) -> Optional[Tuple[torch.Tensor, int]]:
        """``(pos_embed, prefix tokens it covers)`` or None (no learned
        absolute position embedding)."""
        raise NotImplementedError

    def _patch_weight(self) -> torch.Tensor:
        """The patch embedding's weight (its dtype is the input's)."""
        raise NotImplementedError

    def _embed_patches(self, patches: torch.Tensor,
                       pos: Optional[torch.Tensor]) -> torch.Tensor:
        """Prefix tokens, position embedding and pre-norm around the
        ``(B, N, C)`` patch tokens."""
        raise NotImplementedError

    def _patch_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch embedding of padded pixels -> ``(B, N, C)``."""
        raise NotImplementedError

    def norm(self, tokens: torch.Tensor) -> torch.Tensor:
        """The tower's final norm on ``(B, T, C)`` tokens."""
        raise NotImplementedError

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """Normed ``(B, T, C)`` tokens into the joint space, ``(B, T, D)``."""
        if self.projection is not None:
            return self.projection(tokens)
        return self._tower_project(tokens)

    def _tower_project(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The image embedding from normed tokens, as ``encode_image``."""
        raise NotImplementedError

    def norm_modules(self) -> List[Trainable]:
        """Parameters of the final norm (train with the last blocks)."""
        raise NotImplementedError

    def proj_modules(self) -> List[Trainable]:
        """Parameters of :meth:`project`."""
        if self.projection is not None:
            return [self.projection]
        return self._tower_proj_modules()

    def _tower_proj_modules(self) -> List[Trainable]:
        raise NotImplementedError

    def unused_modules(self) -> List[Trainable]:
        """Parts a dense (per-token) forward never runs (pooling or
        classifier heads): kept for weight loading, always frozen."""
        return []

    def block_hooks(self, keep_original: bool = False) -> List[BlockHook]:
        """Hooks every forward of this tower runs with (none; CLIP
        Surgery's tower adds its dual path).

        Args:
            keep_original (bool): the caller needs the tokens the loop
                carries out of its last block (hooks must not skip it).
        """
        return []

    # ------------------------------------------------------------------
    # Input
    # ------------------------------------------------------------------
    def check_dtype(self, pixels: torch.Tensor) -> None:
        """Refuse images whose dtype the weights cannot take.

        Raises:
            TypeError: integer images (e.g. uint8: not yet normalised), or
                floating-point images of another dtype than the weights
                (outside ``torch.autocast``, which casts 16/32-bit floats);
                the message names both dtypes.
        """
        weight = self._patch_weight().dtype
        if not pixels.is_floating_point():
            raise TypeError(
                f'{self.owner}: images are {pixels.dtype} and the weights '
                f'{weight}; convert the images to {weight} and normalise '
                "them with the model's mean/std first (e.g. "
                'x.float() / 255, then (x - mean) / std)')
        if pixels.dtype != weight:
            try:
                autocast = torch.is_autocast_enabled(pixels.device.type)
            except TypeError:  # older torch: no device argument
                autocast = torch.is_autocast_enabled()
            # autocast casts 16/32-bit floats for the convolution, not float64
            if not (autocast and pixels.dtype in (
                    torch.float16, torch.bfloat16, torch.float32)):
                raise TypeError(
                    f'{self.owner}: images are {pixels.dtype} but the '
                    f'weights are {weight}; cast the images '
                    f'(images.to({weight})) or the model, or run under '
                    'torch.autocast')

    def prepare(self,
                pixels: torch.Tensor,
                check_finite: Optional[bool] = None
                ) -> Tuple[torch.Tensor, Grid]:
        """Validate ``(B, 3, H, W)`` and pad it to the patch multiple.

        Args:
            pixels (Tensor): normalised images, any ``H, W >= patch``, the
                weights' dtype (:meth:`check_dtype`).
            check_finite (bool, optional): raise on NaN/Inf (one device
                sync). Default: :attr:`check_finite`.

        Returns:
            tuple: the padded images and their grid
            ``(ceil(H/p), ceil(W/p))``.
        """
        name = self.owner
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(
                f'{name} expects images (B, 3, H, W), got shape '
                f'{tuple(pixels.shape)}; convert grayscale/RGBA images to '
                'RGB in the data pipeline')
        self.check_dtype(pixels)
        p = self.patch_size
        h, w = pixels.shape[-2:]
        if h < p or w < p:
            raise ValueError(f'{name}: input {h}x{w} is smaller than one '
                             f'{p}x{p} patch')
        if check_finite is None:
            check_finite = self.check_finite
        # one reduction instead of a full boolean mask: a sum is non-finite
        # iff some element is (image-range values cannot overflow float32)
        if check_finite and not torch.isfinite(
                pixels.sum(dtype=torch.float32)):
            n_nan = int(torch.isnan(pixels).sum())
            n_inf = int(torch.isinf(pixels).sum())
            if n_nan or n_inf:
                raise ValueError(
                    f'{name}: input contains {n_nan} NaN and {n_inf} Inf '
                    f'values (shape {tuple(pixels.shape)})')
            raise ValueError(f'{name}: input values are far outside the '
                             'normalised image range (max |x| = '
                             f'{pixels.abs().max().item():.3g})')
        pad_h, pad_w = (-h) % p, (-w) % p
        if pad_h or pad_w:
            pixels = F.pad(pixels, (0, pad_w, 0, pad_h))
        return pixels, ((h + pad_h) // p, (w + pad_w) // p)

    def check_attention_budget(self,
                               batch: int,
                               grid: Grid,
                               dtype: torch.dtype,
                               extra_tokens: int = 0) -> None:
        """Refuse an input whose largest attention map exceeds
        :attr:`attention_budget`, before anything is allocated.

        The estimate is the ``(B, heads, T, T)`` map an unfused attention
        kernel materialises: ``T`` = all tokens in a global block, one
        window's tokens in a windowed block.

        Args:
            batch (int): ``B``.
            grid (tuple[int, int]): the patch grid.
            dtype (torch.dtype): the tokens' dtype.
            extra_tokens (int): tokens a hook adds (VPT's prompts).

        Raises:
            ValueError: naming the input, the bytes needed, the budget and
                the ``window_size`` / ``global_blocks`` that fit.
        """
        budget = self.attention_budget
        if budget is None or any(isinstance(g, torch.SymInt)
                                 for g in grid[:2]):
            # a symbolic grid (torch.export with dynamic H/W): int() below
            # would pin the exported program to the example's size; the
            # budget guards eager allocations, not a traced program
            return
        es = torch.empty((), dtype=dtype).element_size()
        heads, prefix = self.num_heads, self.num_prefix_tokens
        gh, gw = int(grid[0]), int(grid[1])
        tokens = prefix + gh * gw + extra_tokens
        global_bytes = attention_bytes(batch, heads, tokens, es)
        has_global = self.window_size is None or bool(self.global_blocks)
        need = global_bytes if has_global else 0
        if self.window_size is not None:
            n_win, per_win = windowed_tokens(grid, self.window_size)
            need = max(need, attention_bytes(batch * n_win, heads,
                                             prefix + per_win + extra_tokens,
                                             es))
        if need <= budget:
            return
        p = self.patch_size
        side = int(self.grid_size[0])
        n_win, per_win = windowed_tokens(grid, side)
        fit = attention_bytes(batch * n_win, heads,
                              prefix + per_win + extra_tokens, es)
        where = 'a global block' if has_global else 'a window'
        raise ValueError(
            f'{self.owner}: a {gh * p}x{gw * p} input ({gh}x{gw} patches, '
            f'{tokens} tokens, batch {batch}) needs '
            f'{_format_bytes(need)} for one attention map in {where} '
            f'({batch} x {heads} heads x T^2 x {es} bytes), over the '
            f'attention budget of {_format_bytes(budget)} '
            f'(attention_budget). Set window_size={side} and '
            f'global_blocks=() (every block windowed: {_format_bytes(fit)} '
            'per map), feed smaller images or a smaller batch, or raise '
            'attention_budget')

    def pos_embed(self, grid: Grid) -> Optional[torch.Tensor]:
        """Position embedding for a ``(gh, gw)`` grid, in the source layout.

        Resampled with :func:`plugins.utils.resample_pos_embed` as
        :attr:`pos_embed_interp` says when the grid differs from the training
        grid.  Cached per grid, device and dtype while the source parameter
        is unchanged (its in-place version counter is part of the check, so
        loading weights invalidates it); when the parameter trains and
        autograd is on, it is recomputed so gradients flow.
        """
        source = self.pos_embed_source()
        if source is None:
            return None
        pos, num_prefix = source
        # symbolic sizes (torch.export, dynamic H/W) stay symbolic
        grid = tuple(g if isinstance(g, torch.SymInt) else int(g)
                     for g in grid[:2])
        src_grid = tuple(int(g) for g in self.grid_size)
        if not any(isinstance(g, torch.SymInt) for g in grid) and \
                grid == src_grid:
            return pos
        # torch.compile / torch.export trace fake tensors (no data pointer)
        # and must put the resampling into the graph: no cache then.
        needs_graph = torch.compiler.is_compiling() or (
            torch.is_grad_enabled() and pos.requires_grad)
        key = (grid, pos.device, pos.dtype)
        if not needs_graph:
            stamp = (pos._version, pos.data_ptr())
            hit = self._pos_cache.get(key)
            if hit is not None and hit[0] == stamp:
                return hit[1]
        out = resample_pos_embed(pos, grid, src_grid, num_prefix,
                                 **self._interp_args)
        if not needs_graph:
            out = out.detach()
            self._pos_cache[key] = (stamp, out)
        return out

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Tokens for the first block from pixels whose sides are patch
        multiples (:meth:`prepare` pads others); no patch dropout.

        Args:
            pixels (Tensor): ``(B, 3, gh * p, gw * p)``.

        Returns:
            Tensor: ``(B, num_prefix_tokens + gh * gw, C)``.
        """
        p = self.patch_size
        h, w = pixels.shape[-2:]
        if h % p or w % p:
            raise ValueError(f'{self.owner}: embed() needs sides that are '
                             f'multiples of the patch size {p}, got {h}x{w}'
                             '; call prepare() first')
        patches = self._patch_tokens(pixels)
        return self._embed_patches(patches, self.pos_embed((h // p, w // p)))

    # ------------------------------------------------------------------
    # Blocks: windowing, checkpointing, the loop
    # ------------------------------------------------------------------
    def set_window_attention(self,
                             window_size: Optional[int] = None,
                             global_blocks: Optional[Sequence[int]] = None
                             ) -> None:
        """Turn windowed attention on (or off with ``window_size=None``).

        Args:
            window_size (int, optional): window side in patches (ViTDet:
                14); None: every block attends globally.
            global_blocks (Sequence[int], optional): blocks that stay
                global, negatives counted from the end. Default: one in
                three, at most ViTDet's four (12 blocks: 2, 5, 8, 11; 4
                blocks: 1, 3; see
                :func:`plugins.models.window_attention.default_global_blocks`).

        Raises:
            ValueError: ``window_size < 1``, an index out of range or named
                twice, or ``global_blocks`` without ``window_size``.
        """
        window_size = check_window_size(window_size, self.owner)
        if window_size is None:
            if global_blocks is not None:
                raise ValueError(
                    f'{self.owner}: global_blocks={tuple(global_blocks)} '
                    'needs window_size (None means every block is global)')
            self.window_size, self.global_blocks = None, ()
            return
        self.global_blocks = resolve_global_blocks(
            global_blocks, len(self.blocks), self.owner)
        self.window_size = window_size

    def is_windowed(self, index: int) -> bool:
        """Whether block ``index`` attends within windows."""
        return self.window_size is not None and \
            index not in self.global_blocks

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Gradient checkpointing of every block (and every hook branch,
        e.g. CLIP Surgery's) while autograd is on, as timm and open_clip
        do: activations are recomputed in the backward pass.  Frozen blocks
        in eval mode are checkpointed too (VPT trains prompts through
        them); where nothing before a block needs a gradient, there is no
        backward through it and no recomputation."""
        self.grad_checkpointing = bool(enable)

    def block_caller(self, grid: Optional[Grid] = None) -> BlockCaller:
        """The ``call(index, fn, x)`` every block (and hook branch) runs
        through: windowed attention for the blocks :meth:`is_windowed`
        says, with gradient checkpointing inside.

        Args:
            grid (tuple[int, int], optional): the patch grid of the tokens;
                required when windowed attention is on.
        """
        windowed = self.window_size is not None and \
            len(self.global_blocks) < len(self.blocks)
        checkpointing = self.grad_checkpointing and torch.is_grad_enabled()
        if not (windowed or checkpointing):
            return _plain_call
        if windowed and grid is None:
            raise ValueError(f'{self.owner}: windowed attention needs the '
                             'patch grid; pass grid= to forward_blocks')
        prefix = self.num_prefix_tokens
        spatial = prefix + int(grid[0]) * int(grid[1]) if windowed else 0

        def call(index, fn, x):
            run = fn
            if checkpointing:
                run = functools.partial(checkpoint, fn, use_reentrant=False)
            if windowed and self.is_windowed(index):
                windows, layout = window_partition(
                    x, grid, prefix, self.window_size, x.shape[1] - spatial)
                return window_unpartition(run(windows), layout)
            return run(x)

        return call

    def forward_blocks(self,
                       x: torch.Tensor,
                       out_indices: Sequence[int],
                       grid: Optional[Grid] = None,
                       hooks: Sequence[BlockHook] = (),
                       keep_original: bool = False) -> List[torch.Tensor]:
        """Run the blocks (:func:`run_blocks`, with :meth:`block_hooks` and
        ``hooks``); return the tokens after each of ``out_indices``.

        Stops after the last requested block.

        Args:
            x (Tensor): ``(B, T, C)`` tokens from :meth:`embed`.
            out_indices (Sequence[int]): non-negative block indices.
            grid (tuple[int, int], optional): the patch grid ``(gh, gw)``
                of ``x``; needed with windowed attention.
            hooks (Sequence[BlockHook]): more hooks, after the tower's own.
            keep_original (bool): see :meth:`block_hooks`.

        Returns:
            list[Tensor]: ``(B, T, C)`` per entry of ``out_indices``.
        """
        call = self.block_caller(grid)
        hooks = self.block_hooks(keep_original) + list(hooks)
        # hand the tokens over without a name in this frame, so that the
        # first block's input is freed once that block has run (one
        # (B, T, C) tensor less at the peak: 12 MiB for ViT-B at 800x1344)
        handed = [x]
        del x
        return run_blocks(self.blocks, handed.pop(), out_indices, call,
                          hooks)[1]

    # ------------------------------------------------------------------
    # Outputs
    # ------------------------------------------------------------------
    def _finish(self, tokens: torch.Tensor, grid: Grid, norm: bool,
                with_proj: bool, output_fmt: str) -> torch.Tensor:
        """(Norm, projection,) prefix tokens dropped, NCHW or NLC."""
        x = self.norm(tokens) if norm else tokens
        if with_proj:
            x = self.project(x)
        x = x[:, self.num_prefix_tokens:]
        if output_fmt == 'NLC':
            return x
        b, _, c = x.shape
        return x.reshape(b, grid[0], grid[1], c).permute(0, 3, 1,
                                                         2).contiguous()

    def tokens_to_map(self,
                      tokens: torch.Tensor,
                      grid: Grid,
                      with_proj: bool = False) -> torch.Tensor:
        """Final norm (+ projection), drop prefix tokens, reshape.

        Args:
            tokens (Tensor): ``(B, P + gh * gw, C)``.
            grid (tuple[int, int]): ``(gh, gw)``.
            with_proj (bool): project into the joint space.

        Returns:
            Tensor: ``(B, C or D, gh, gw)``, contiguous.
        """
        return self._finish(tokens, grid, True, with_proj, 'NCHW')

    def take_indices(self, indices: Optional[Union[int, Sequence[int]]] = None
                     ) -> Tuple[List[int], int]:
        """:func:`take_indices` for this tower's depth."""
        return take_indices(len(self.blocks), indices, self.owner)

    def resolve_indices(self, out_indices: Sequence[int]) -> Tuple[int, ...]:
        """Block indices with negative ones counted from the end."""
        return tuple(self.take_indices(list(out_indices))[0])

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, Sequence[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = 'NCHW',
        intermediates_only: bool = False,
        *,
        with_proj: bool = False,
        hooks: Sequence[BlockHook] = ()
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """timm's ``forward_intermediates``, for any input size.

        At the tower's training size the maps equal open_clip's
        ``VisionTransformer.forward_intermediates(...,
        normalize_intermediates=norm)['image_intermediates']`` and timm's
        ``VisionTransformer.forward_intermediates``.

        Args:
            x (Tensor): ``(B, 3, H, W)`` normalised images, ``H, W >=
                patch``; zero-padded at the bottom/right to the patch
                multiple (grid ``(ceil(H/p), ceil(W/p))``).
            indices (int | Sequence[int], optional): an int takes the last
                n blocks, a sequence those blocks (negatives from the end),
                None every block.
            norm (bool): apply the final norm to every map.
            stop_early (bool): stop after the last requested block.
            output_fmt (str): ``'NCHW'`` maps ``(B, C, gh, gw)`` or
                ``'NLC'`` tokens ``(B, gh * gw, C)`` (prefix tokens
                dropped).
            intermediates_only (bool): return only the maps.
            with_proj (bool): maps in the joint image-text space (needs
                ``norm``); not in timm.
            hooks (Sequence[BlockHook]): more block hooks; not in timm.

        Returns:
            list[Tensor] | tuple: the maps, or ``(final, maps)`` with
            ``final`` the last block run's tokens after the final norm,
            ``(B, P + gh * gw, C)`` (timm's ``forward_features``).
        """
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"{self.owner}: output_fmt must be 'NCHW' or "
                             f"'NLC', got {output_fmt!r}")
        if with_proj and not norm:
            raise ValueError(f'{self.owner}: with_proj projects normed '
                             'tokens; pass norm=True')
        taken, _ = self.take_indices(indices)
        pixels, grid = self.prepare(x)
        del x
        self.check_attention_budget(pixels.shape[0], grid, pixels.dtype)
        hooks = self.block_hooks(keep_original=not intermediates_only) + \
            list(hooks)
        final, outs = run_blocks(self.blocks, self.embed(pixels), taken,
                                 self.block_caller(grid), hooks, stop_early)
        maps = [self._finish(t, grid, norm, with_proj, output_fmt)
                for t in outs]
        if intermediates_only:
            return maps
        return self.norm(final), maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> every token after the last block and the
        final norm, ``(B, P + gh * gw, C)``."""
        return self.forward_intermediates(x, 1)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward_features`."""
        return self.forward_features(x)

    # ------------------------------------------------------------------
    # Freezing
    # ------------------------------------------------------------------
    def check_train_last_n_blocks(self, n: Optional[int]) -> None:
        depth = len(self.blocks)
        if n is not None and not 1 <= int(n) <= depth:
            raise ValueError(f'train_last_n_blocks ({n}) must be between 1 '
                             f'and the number of blocks ({depth})')

    def set_trainable(self,
                      frozen: bool = False,
                      train_last_n_blocks: Optional[int] = None,
                      with_proj: bool = False,
                      unused: Iterable[Trainable] = ()) -> None:
        """Set ``requires_grad`` over the tower.

        Args:
            frozen (bool): nothing trains.
            train_last_n_blocks (int, optional): only the last ``n`` blocks,
                the final norm (and the projection with ``with_proj``)
                train.
            with_proj (bool): the projection is used (otherwise frozen).
            unused (Iterable): more parts the caller never runs (frozen).
        """
        if frozen and train_last_n_blocks is not None:
            raise ValueError('frozen=True and train_last_n_blocks='
                             f'{train_last_n_blocks} contradict each other')
        self.check_train_last_n_blocks(train_last_n_blocks)
        for p in self.parameters():
            p.requires_grad = not frozen
        if train_last_n_blocks is not None:
            for p in self.parameters():
                p.requires_grad = False
            trainable = list(self.blocks)[-int(train_last_n_blocks):]
            trainable += self.norm_modules()
            if with_proj:
                trainable += self.proj_modules()
            set_requires_grad(trainable, True)
        # unused in the forward: keep them out of optimisers and DDP
        set_requires_grad(list(self.unused_modules()) + list(unused), False)
        if not with_proj:
            set_requires_grad(self.proj_modules(), False)

    def frozen_modules(self,
                       frozen: bool = False,
                       train_last_n_blocks: Optional[int] = None
                       ) -> List[nn.Module]:
        """Modules to keep in eval mode while training (no dropout,
        drop-path or norm-statistic updates in frozen parts)."""
        if frozen:
            return self.roots
        if train_last_n_blocks is None:
            return []
        trainable = set()
        for m in list(self.blocks)[-int(train_last_n_blocks):] + [
                m for m in self.norm_modules() if isinstance(m, nn.Module)
        ]:
            trainable.update(id(x) for x in m.modules())
        # every module with nothing trainable inside it
        return [
            m for root in self.roots for m in root.modules()
            if not any(id(x) in trainable for x in m.modules())
        ]


class OpenCLIPViTTower(ViTTower):
    """open_clip's own ``VisionTransformer`` (``ViT-B-16``, ``ViT-B-32``,
    OpenAI CLIP ...): ``conv1``, class token, ``positional_embedding``,
    ``ln_pre``, ``transformer.resblocks``, ``ln_post``, ``proj``.

    Args:
        visual (nn.Module): an open_clip ``VisionTransformer``.
        **kwargs: see :class:`ViTTower`.
    """

    default_pos_embed_interp = 'open_clip'

    def _check_family(self) -> None:
        visual = self.visual
        if not (hasattr(visual, 'conv1') and hasattr(visual, 'transformer')):
            raise TypeError(f'{self.owner}: {type(visual).__name__} is not '
                            "an open_clip VisionTransformer (needs conv1 "
                            'and transformer)')
        if getattr(visual, 'attn_pool', None) is not None:
            raise ValueError(f'{self.owner}: open_clip towers with an '
                             'attentional pooler have no per-patch tokens')
        if getattr(visual, 'final_ln_after_pool', False):
            raise ValueError(f'{self.owner}: open_clip towers with '
                             'final_ln_after_pool are not supported')
        if not getattr(visual.transformer, 'batch_first', True):
            raise ValueError(f'{self.owner}: sequence-first transformers '
                             'are not supported')

    @property
    def blocks(self) -> nn.ModuleList:
        return self.visual.transformer.resblocks

    @property
    def patch_size(self) -> int:
        ph, pw = self.visual.patch_size
        if ph != pw:
            raise ValueError(f'non-square patches ({ph}x{pw}) unsupported')
        return ph

    @property
    def width(self) -> int:
        return self.visual.conv1.out_channels

    def _tower_proj_dims(self) -> int:
        proj = self.visual.proj
        return self.width if proj is None else proj.shape[1]

    @property
    def num_prefix_tokens(self) -> int:
        return 1  # the class token

    @property
    def grid_size(self) -> Grid:
        return tuple(self.visual.grid_size)

    def pos_embed_source(self) -> Tuple[torch.Tensor, int]:
        return self.visual.positional_embedding, 1

    def _patch_weight(self) -> torch.Tensor:
        return self.visual.conv1.weight

    def _patch_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual.conv1(pixels).flatten(2).transpose(1, 2)

    def _embed_patches(self, x: torch.Tensor,
                       pos: Optional[torch.Tensor]) -> torch.Tensor:
        v = self.visual
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + pos.to(x.dtype)
        return v.ln_pre(x)

    def norm(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.visual.ln_post(tokens)

    def _tower_project(self, tokens: torch.Tensor) -> torch.Tensor:
        proj = self.visual.proj
        return tokens if proj is None else tokens @ proj

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled, _ = self.visual._global_pool(tokens)
        return self._tower_project(pooled)

    def norm_modules(self) -> List[Trainable]:
        return [self.visual.ln_post]

    def _tower_proj_modules(self) -> List[Trainable]:
        proj = self.visual.proj
        return [] if proj is None else [proj]


class TimmViTTower(ViTTower):
    """open_clip ``TimmModel`` around a timm ``VisionTransformer`` trunk
    (BiomedCLIP's ``vit_base_patch16_224`` with ``timm_proj='linear'``;
    SigLIP-style trunks without a class token): ``patch_embed``, prefix
    tokens, ``pos_embed``, ``norm_pre``, ``blocks``, ``norm``, and the
    open_clip ``head`` as the projection.

    Args:
        visual (nn.Module): an open_clip ``TimmModel``.
        **kwargs: see :class:`ViTTower`.
    """

    def _check_family(self) -> None:
        trunk = getattr(self.visual, 'trunk', None)
        if not (hasattr(trunk, 'blocks') and hasattr(trunk, 'patch_embed')):
            raise TypeError(f'{self.owner}: timm trunk '
                            f'{type(trunk).__name__} is not a '
                            'VisionTransformer (needs patch_embed and blocks)')

    @property
    def trunk(self) -> nn.Module:
        """The timm ``VisionTransformer`` inside ``visual``."""
        return self.visual.trunk

    @property
    def blocks(self) -> nn.Sequential:
        return self.trunk.blocks

    @property
    def patch_size(self) -> int:
        ph, pw = self.trunk.patch_embed.patch_size
        if ph != pw:
            raise ValueError(f'non-square patches ({ph}x{pw}) unsupported')
        return ph

    @property
    def width(self) -> int:
        return self.trunk.embed_dim

    def _tower_proj_dims(self) -> int:
        linears = head_linears(self.visual.head)
        return linears[-1].out_features if linears else self.width

    @property
    def has_token_projection(self) -> bool:
        """Whether :meth:`project` maps tokens (a head of linear layers,
        not a pooling head)."""
        return bool(head_linears(self.visual.head)) and not any(
            name == 'pool' for name, _ in self.visual.head.named_children())

    @property
    def num_prefix_tokens(self) -> int:
        return self.trunk.num_prefix_tokens

    @property
    def grid_size(self) -> Grid:
        return tuple(self.trunk.patch_embed.grid_size)

    def pos_embed_source(self) -> Optional[Tuple[torch.Tensor, int]]:
        t = self.trunk
        if t.pos_embed is None:
            return None
        return t.pos_embed, 0 if t.no_embed_class else t.num_prefix_tokens

    def _patch_weight(self) -> torch.Tensor:
        return self.trunk.patch_embed.proj.weight

    def _patch_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        # the conv of timm's PatchEmbed, without its fixed-size check
        pe = self.trunk.patch_embed
        return pe.norm(pe.proj(pixels).flatten(2).transpose(1, 2))

    def _embed_patches(self, x: torch.Tensor,
                       pos: Optional[torch.Tensor]) -> torch.Tensor:
        # timm's VisionTransformer._pos_embed, for any grid
        t = self.trunk
        prefix = [
            tok.expand(x.shape[0], -1, -1)
            for tok in (t.cls_token, getattr(t, 'reg_token', None))
            if tok is not None
        ]
        if pos is not None and t.no_embed_class:
            x = x + pos.to(x.dtype)
        x = torch.cat(prefix + [x], dim=1) if prefix else x
        if pos is not None and not t.no_embed_class:
            x = x + pos.to(x.dtype)
        x = t.pos_drop(x)
        return t.norm_pre(x)

    def norm(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.trunk.norm(tokens)

    def _tower_project(self, tokens: torch.Tensor) -> torch.Tensor:
        # head = Sequential(drop, proj) acts on the last dim of any shape
        return self.visual.head(tokens)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.visual.head(self.trunk.forward_head(tokens))

    def norm_modules(self) -> List[Trainable]:
        return [self.trunk.norm]

    def _tower_proj_modules(self) -> List[Trainable]:
        return [self.visual.head]

    def unused_modules(self) -> List[Trainable]:
        # timm's pooling / classifier head (e.g. SigLIP's attention pool)
        t = self.trunk
        return [
            m for m in (getattr(t, 'attn_pool', None), t.fc_norm, t.head)
            if m is not None
        ]


def head_linears(head: nn.Module) -> List[nn.Linear]:
    """The ``nn.Linear`` layers of a projection head, in order."""
    return [m for m in head.modules() if isinstance(m, nn.Linear)]


def set_requires_grad(items: Iterable[Trainable], flag: bool) -> None:
    """Set ``requires_grad`` on parameters and on modules' parameters."""
    for item in items:
        if isinstance(item, nn.Parameter):
            item.requires_grad = flag
        elif item is not None:
            for p in item.parameters():
                p.requires_grad = flag


def build_vit_tower(model: nn.Module, **kwargs) -> ViTTower:
    """The tower for ``model.visual`` (or ``model`` itself if it is one).

    Args:
        model (nn.Module): an open_clip model or its image tower.
        **kwargs: see :class:`ViTTower`.

    Returns:
        OpenCLIPViTTower | TimmViTTower
    """
    visual = getattr(model, 'visual', model)
    if hasattr(visual, 'trunk'):
        return TimmViTTower(visual, **kwargs)
    if hasattr(visual, 'conv1') and hasattr(visual, 'transformer'):
        return OpenCLIPViTTower(visual, **kwargs)
    raise TypeError(f'image tower {type(visual).__name__}: expected an '
                    'open_clip VisionTransformer or TimmModel (timm ViT '
                    'trunk)')
