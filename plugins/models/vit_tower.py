"""One way to run a CLIP-family ViT image tower.

Every user of an image tower in this package (the mmdet backbones, the
Open-GroundingDino backbone, CLIP Surgery, visual prompt tuning) needs the
same steps, whatever family the tower comes from:

* :meth:`ViTTower.prepare`: validate ``(B, 3, H, W)`` pixels and zero-pad
  them at the bottom/right to the patch multiple -> pixels and grid;
* :meth:`ViTTower.embed`: patch embedding, prefix (class/register) tokens,
  the position embedding of that grid (resampled from the training grid and
  cached, :meth:`ViTTower.pos_embed`) and pre-norm -> ``(B, P + N, C)``;
* :attr:`ViTTower.blocks`, run by :meth:`ViTTower.forward_blocks` (the
  outputs of chosen blocks, gradient checkpointing through ``call``,
  windowed attention in the non-global blocks when
  :meth:`ViTTower.set_window_attention` turned it on, see
  :mod:`plugins.models.window_attention`);
* :meth:`ViTTower.norm`, :meth:`ViTTower.project` (into the joint
  image-text space), :meth:`ViTTower.pool` (the image embedding, as
  ``encode_image`` gives it) and :meth:`ViTTower.tokens_to_map`;
* :meth:`ViTTower.forward_intermediates`: pixels -> one map per block;
* :meth:`ViTTower.set_trainable` / :meth:`ViTTower.frozen_modules`: freezing
  and partial unfreezing of the last blocks.

Two families are covered, both through their own modules so weights and
numerics stay the tower's: open_clip's ``VisionTransformer`` (OpenAI CLIP,
LAION OpenCLIP) and open_clip's ``TimmModel`` around a timm
``VisionTransformer`` trunk (BiomedCLIP, SigLIP-style towers such as
ConceptCLIP's).  A tower holds references to the image tower's modules and
owns no parameters, so a module that keeps the image tower as ``visual``
keeps its state-dict keys.

Host-free: torch, open_clip and timm only.
"""
from typing import (Callable, Dict, Iterable, List, Optional, Sequence, Tuple,
                    Union)

import torch
import torch.nn as nn
import torch.nn.functional as F

from plugins.models.window_attention import (WindowedCall, check_window_size,
                                             resolve_global_blocks)
from plugins.utils.pos_embed import (PosEmbedInterp, pos_embed_interp_args,
                                     resample_pos_embed)

Grid = Tuple[int, int]
#: ``call(block, x)`` runs ``block(x)``; callers pass a wrapper (e.g.
#: gradient checkpointing) that every block goes through.
BlockCaller = Callable[[nn.Module, torch.Tensor], torch.Tensor]
Trainable = Union[nn.Module, nn.Parameter]


def _plain_call(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return block(x)


class ViTTower:
    """Uniform access to a ViT image tower (see the module docstring).

    Use :func:`build_vit_tower` to get the right family.

    Args:
        visual (nn.Module): the image tower (``model.visual``).
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
    """

    #: Position-embedding resampling of the family's upstream.
    default_pos_embed_interp: PosEmbedInterp = 'timm'

    def __init__(self,
                 visual: nn.Module,
                 pos_embed_interp: Optional[PosEmbedInterp] = None,
                 projection: Optional[nn.Module] = None,
                 owner: Optional[str] = None) -> None:
        self.visual = visual
        self.projection = projection
        self.owner = owner or type(visual).__name__
        self._pos_cache: Dict[tuple, tuple] = {}
        self.pos_embed_interp = pos_embed_interp
        self.window_size: Optional[int] = None
        self.global_blocks: Tuple[int, ...] = ()

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

    def parameters(self) -> Iterable[nn.Parameter]:
        for root in self.roots:
            yield from root.parameters()

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

    # ------------------------------------------------------------------
    # Shared steps
    # ------------------------------------------------------------------
    def prepare(self,
                pixels: torch.Tensor,
                check_finite: bool = True) -> Tuple[torch.Tensor, Grid]:
        """Validate ``(B, 3, H, W)`` and pad it to the patch multiple.

        Args:
            pixels (Tensor): normalised images, any ``H, W >= patch``.
            check_finite (bool): raise on NaN/Inf (one device sync).

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
        p = self.patch_size
        h, w = pixels.shape[-2:]
        if h < p or w < p:
            raise ValueError(f'{name}: input {h}x{w} is smaller than one '
                             f'{p}x{p} patch')
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
        multiples (:meth:`prepare` pads others).

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

    def set_window_attention(self,
                             window_size: Optional[int] = None,
                             global_blocks: Optional[Sequence[int]] = None
                             ) -> None:
        """Turn windowed attention on (or off with ``window_size=None``).

        Args:
            window_size (int, optional): window side in patches (ViTDet:
                14); None: every block attends globally.
            global_blocks (Sequence[int], optional): blocks that stay
                global, negatives counted from the end. Default: ViTDet's,
                the last block of each quarter (12 blocks: 2, 5, 8, 11; see
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

    def block_caller(self, grid: Optional[Grid],
                     call: Optional[BlockCaller] = None) -> BlockCaller:
        """The ``call(fn, x)`` hook the blocks run through: ``call`` (default
        ``fn(x)``), inside windowed attention when it is on.

        Args:
            grid (tuple[int, int], optional): the patch grid of the tokens;
                required when windowed attention is on.
            call (callable, optional): hook to wrap (e.g. checkpointing).
        """
        call = call or _plain_call
        if self.window_size is None:
            return call
        if grid is None:
            raise ValueError(f'{self.owner}: windowed attention needs the '
                             'patch grid; pass grid= to forward_blocks')
        return WindowedCall(self.blocks, grid, self.num_prefix_tokens,
                            self.window_size, self.global_blocks, call)

    def forward_blocks(self,
                       x: torch.Tensor,
                       out_indices: Sequence[int],
                       call: Optional[BlockCaller] = None,
                       grid: Optional[Grid] = None) -> List[torch.Tensor]:
        """Run the blocks; return the tokens after each of ``out_indices``.

        Stops after the last requested block.

        Args:
            x (Tensor): ``(B, T, C)`` tokens from :meth:`embed`.
            out_indices (Sequence[int]): non-negative block indices.
            call (callable, optional): ``call(block, x)``; default
                ``block(x)``.
            grid (tuple[int, int], optional): the patch grid ``(gh, gw)``
                of ``x``; needed with windowed attention
                (:meth:`set_window_attention`).

        Returns:
            list[Tensor]: ``(B, T, C)`` per entry of ``out_indices``.
        """
        call = self.block_caller(grid, call)
        wanted = set(out_indices)
        last = max(out_indices)
        taken = {}
        # plain iteration: slicing an nn.ModuleList builds a new module
        for i, block in enumerate(self.blocks):
            x = call(block, x)
            if i in wanted:
                taken[i] = x
            if i == last:
                break
        return [taken[i] for i in out_indices]

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
        x = self.norm(tokens)
        if with_proj:
            x = self.project(x)
        x = x[:, self.num_prefix_tokens:]
        b, _, c = x.shape
        return x.reshape(b, grid[0], grid[1], c).permute(0, 3, 1,
                                                         2).contiguous()

    def forward_intermediates(self,
                              pixels: torch.Tensor,
                              out_indices: Sequence[int] = (-1, ),
                              with_proj: bool = False,
                              call: Optional[BlockCaller] = None,
                              check_finite: bool = True
                              ) -> List[torch.Tensor]:
        """Pixels of any size -> one ``(B, C, gh, gw)`` map per block.

        Args:
            pixels (Tensor): ``(B, 3, H, W)``, normalised.
            out_indices (Sequence[int]): blocks; negative values count from
                the end.
            with_proj (bool): maps in the joint space.
            call (callable, optional): see :meth:`forward_blocks`.
            check_finite (bool): see :meth:`prepare`.
        """
        indices = self.resolve_indices(out_indices)
        pixels, grid = self.prepare(pixels, check_finite)
        outs = self.forward_blocks(self.embed(pixels), indices, call, grid)
        return [self.tokens_to_map(t, grid, with_proj) for t in outs]

    def resolve_indices(self, out_indices: Sequence[int]) -> Tuple[int, ...]:
        """Block indices with negative ones counted from the end."""
        depth = len(self.blocks)
        resolved = []
        for i in out_indices:
            j = int(i) + depth if int(i) < 0 else int(i)
            if not 0 <= j < depth:
                raise ValueError(f'out_indices entry {i} is out of range for '
                                 f'{self.owner} with {depth} blocks')
            resolved.append(j)
        if not resolved:
            raise ValueError('out_indices must name at least one block')
        return tuple(resolved)

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

    def __init__(self, visual: nn.Module, **kwargs) -> None:
        super().__init__(visual, **kwargs)
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

    def _patch_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual.conv1(pixels).flatten(2).transpose(1, 2)

    def _embed_patches(self, x: torch.Tensor,
                       pos: Optional[torch.Tensor]) -> torch.Tensor:
        v = self.visual
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + pos.to(x.dtype)
        x = v.patch_dropout(x)
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

    def __init__(self, visual: nn.Module, **kwargs) -> None:
        super().__init__(visual, **kwargs)
        trunk = getattr(visual, 'trunk', None)
        if not (hasattr(trunk, 'blocks') and hasattr(trunk, 'patch_embed')):
            raise TypeError(f'{self.owner}: timm trunk '
                            f'{type(trunk).__name__} is not a '
                            'VisionTransformer (needs patch_embed and blocks)')
        self.trunk = trunk

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
        x = t.patch_drop(x)
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
