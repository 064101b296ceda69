"""Shared base of the single-scale CLIP-family backbones.

A CLIP image tower as a detector backbone needs the same plumbing whatever
the tower: arbitrary input sizes (pad to the patch multiple, resample the
position embedding), several output blocks, freezing or partial unfreezing,
gradient checkpointing, loading local weights safely, and the right
normalisation statistics.  :class:`CLIPBackboneBase` does all of it once; a
subclass only says how to build its tower and how to run its parts.
"""
from abc import ABCMeta, abstractmethod
from typing import (Dict, Iterable, List, Optional, Sequence, Tuple, Union)

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from torch.utils.checkpoint import checkpoint

from plugins.models.weights import find_weights_file
from plugins.utils import (check_state_dict, pos_embed_interp_args,
                           resample_pos_embed, safe_load, select_prefix)

#: OpenAI CLIP statistics (RGB, [0, 1] scale); open_clip's default.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Grid = Tuple[int, int]
StateDict = Dict[str, torch.Tensor]


class CLIPBackboneBase(BaseModule, metaclass=ABCMeta):
    """Base for ViT image towers of CLIP-family models used as backbones.

    Input ``(B, 3, H, W)`` of any size ``>= patch``; the image is zero-padded
    at the bottom/right to a multiple of the patch size and the position
    embedding is resampled to the resulting grid the way the upstream
    model does (``pos_embed_interp``; cached per grid).  Output: a tuple with one map ``(B, C, ceil(H/p), ceil(W/p))`` per
    entry of ``out_indices``.  Each map is the block's tokens after the
    tower's final norm (and projection into the joint image-text space when
    ``with_proj=True``), prefix (class) tokens dropped.

    Normalisation: images must be normalised with :attr:`mean` / :attr:`std`
    (RGB, ``[0, 1]`` scale; class attributes, overridden per instance where
    the model's statistics differ).  :meth:`data_preprocessor_cfg` gives a
    matching mmdet ``DetDataPreprocessor`` config (0-255 scale).

    Subclass contract (see ``/docs/backbones.md``): call
    ``super().__init__(**common_args)`` first, build the tower, then call
    :meth:`_init_backbone` at the end of ``__init__``; implement
    :attr:`blocks`, :attr:`patch_size`, :attr:`embed_dims`,
    :attr:`proj_dims`, :attr:`num_prefix_tokens`, :meth:`pos_embed_source`,
    :meth:`embed_tokens`, :meth:`final_norm`, :meth:`project`,
    :meth:`final_norm_modules`, :meth:`proj_modules`; override
    :meth:`unused_modules`, :meth:`convert_pretrained`, :meth:`run_block`
    or :meth:`forward_blocks` where the tower needs it.

    Args:
        out_indices (int | Sequence[int]): blocks whose output becomes a
            map; negative values count from the end. Default: ``(-1,)``.
        frozen (bool): no parameter trains and the tower stays in eval mode.
            Default: False.
        train_last_n_blocks (int, optional): train only the last ``n``
            blocks and the final norm (and the projection when
            ``with_proj=True``); the rest is frozen and in eval mode.
            Default: None (everything used trains).
        with_proj (bool): project maps into the joint image-text space
            (channels :attr:`proj_dims`) instead of the width
            (:attr:`embed_dims`). Default: False.
        with_cp (bool): gradient checkpointing of each block while training.
            Default: False.
        check_finite (bool): raise on NaN/Inf in the input (one device
            sync per forward). Default: True.
        pos_embed_interp (str | dict, optional): how the position embedding
            is resampled to other grids: ``'open_clip'``, ``'timm'``
            (bicubic, anti-aliased), ``'clip_surgery'`` (bilinear), an
            ``F.interpolate`` mode or ``dict(mode=..., antialias=...)``, see
            :func:`plugins.utils.pos_embed_interp_args`. Default: None, the
            upstream's own (:attr:`default_pos_embed_interp`).
        pretrained (str, optional): local weights file, same as
            ``init_cfg=dict(type='Pretrained', checkpoint=path)``.
        init_cfg (dict, optional): ``dict(type='Pretrained',
            checkpoint=path, prefix='backbone.')`` loads a local file (the
            optional ``prefix`` selects and strips a key prefix, e.g. from
            a detector checkpoint).  Weights load in ``__init__``.
    """

    #: RGB mean in [0, 1] units the tower was trained with.
    mean: Tuple[float, float, float] = OPENAI_CLIP_MEAN
    #: RGB std in [0, 1] units the tower was trained with.
    std: Tuple[float, float, float] = OPENAI_CLIP_STD
    #: Position-embedding resampling of the upstream model (see
    #: :func:`plugins.utils.pos_embed_interp_args`); subclasses override.
    default_pos_embed_interp = 'timm'

    def __init__(self,
                 out_indices: Union[int, Sequence[int]] = (-1, ),
                 frozen: bool = False,
                 train_last_n_blocks: Optional[int] = None,
                 with_proj: bool = False,
                 with_cp: bool = False,
                 check_finite: bool = True,
                 pos_embed_interp: Optional[Union[str, dict]] = None,
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[dict] = None):
        if pretrained is not None and init_cfg is not None:
            raise ValueError('give either pretrained or init_cfg, not both')
        if pretrained is not None:
            init_cfg = dict(type='Pretrained', checkpoint=str(pretrained))
        if init_cfg is not None and init_cfg.get('type') != 'Pretrained':
            raise ValueError(f'{type(self).__name__} only supports '
                             "init_cfg=dict(type='Pretrained', checkpoint=...)"
                             f', got {init_cfg}')
        super().__init__(init_cfg=init_cfg)
        if frozen and train_last_n_blocks is not None:
            raise ValueError('frozen=True and train_last_n_blocks='
                             f'{train_last_n_blocks} contradict each other')
        if isinstance(out_indices, int):
            out_indices = (out_indices, )
        self._requested_out_indices = tuple(int(i) for i in out_indices)
        if not self._requested_out_indices:
            raise ValueError('out_indices must name at least one block')
        self.frozen = bool(frozen)
        self.train_last_n_blocks = train_last_n_blocks
        self.with_proj = bool(with_proj)
        self.with_cp = bool(with_cp)
        self.check_finite = bool(check_finite)
        self.pos_embed_interp = self.default_pos_embed_interp \
            if pos_embed_interp is None else pos_embed_interp
        # validated here, so a typo fails at construction
        self._pos_embed_interp_args = pos_embed_interp_args(
            self.pos_embed_interp)
        self._pos_embed_cache: Dict[tuple, tuple] = {}
        self._backbone_ready = False

    # ------------------------------------------------------------------
    # What a subclass provides
    # ------------------------------------------------------------------
    @property
    @abstractmethod
    def blocks(self) -> Sequence[nn.Module]:
        """The transformer blocks, in order (e.g. an ``nn.ModuleList``)."""

    @property
    @abstractmethod
    def patch_size(self) -> int:
        """Side of the square patch in pixels (the output stride)."""

    @property
    @abstractmethod
    def embed_dims(self) -> int:
        """Token width (channels when ``with_proj=False``)."""

    @property
    @abstractmethod
    def proj_dims(self) -> int:
        """Joint-space width (channels when ``with_proj=True``)."""

    @property
    @abstractmethod
    def num_prefix_tokens(self) -> int:
        """Leading non-spatial tokens (class/register tokens) in the
        sequence the blocks see."""

    @abstractmethod
    def pos_embed_source(self) -> Optional[Tuple[torch.Tensor, int, Grid]]:
        """The learned absolute position embedding to resample.

        Returns:
            ``(pos_embed, num_prefix_in_pos_embed, grid)`` where
            ``pos_embed`` is ``(P + gh * gw, C)`` or ``(1, P + gh * gw, C)``
            and ``grid = (gh, gw)``; or None for a tower without one.
        """

    @abstractmethod
    def embed_tokens(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        """Patch-embed a padded image into the first block's input.

        Use :meth:`get_pos_embed` for the position embedding of ``grid``.

        Args:
            x (Tensor): ``(B, 3, gh * p, gw * p)``.
            grid (tuple[int, int]): ``(gh, gw)``.

        Returns:
            Tensor: ``(B, num_prefix_tokens + gh * gw, C)`` (prefix tokens,
            position embedding and any pre-norm applied).
        """

    @abstractmethod
    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the tower's final norm to ``(B, N, C)`` tokens."""

    @abstractmethod
    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Project normed ``(B, N, C)`` tokens to ``(B, N, proj_dims)``."""

    @abstractmethod
    def final_norm_modules(self) -> List[Union[nn.Module, nn.Parameter]]:
        """Modules/parameters of the final norm (trained with the last
        blocks when ``train_last_n_blocks`` is set)."""

    @abstractmethod
    def proj_modules(self) -> List[Union[nn.Module, nn.Parameter]]:
        """Modules/parameters of the projection (frozen unless
        ``with_proj=True``, since the forward does not use them then)."""

    def unused_modules(self) -> List[Union[nn.Module, nn.Parameter]]:
        """Parts of the tower the backbone never runs (pooling heads,
        classifier heads); kept for weight loading, always frozen so
        optimisers and DDP ignore them. Default: none."""
        return []

    def run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Run one block on ``(B, N, C)`` tokens. Default: ``block(x)``."""
        return block(x)

    def convert_pretrained(self, state_dict: StateDict) -> StateDict:
        """Map a loaded weights file to this module's ``state_dict`` keys.

        Called by :meth:`load_pretrained` before the strict key check;
        subclasses translate foreign layouts (OpenAI, full CLIP models with
        a text tower, HF folders) here.  Default: unchanged.
        """
        return state_dict

    # ------------------------------------------------------------------
    # Set-up
    # ------------------------------------------------------------------
    def _init_backbone(self) -> None:
        """Finish construction; call at the end of a subclass ``__init__``.

        Resolves ``out_indices``, loads the pretrained weights, and applies
        the freezing options.
        """
        depth = len(self.blocks)
        resolved = []
        for i in self._requested_out_indices:
            j = i + depth if i < 0 else i
            if not 0 <= j < depth:
                raise ValueError(f'out_indices entry {i} is out of range for '
                                 f'{type(self).__name__} with {depth} blocks')
            resolved.append(j)
        self.out_indices = tuple(resolved)
        n = self.train_last_n_blocks
        if n is not None and not 1 <= int(n) <= depth:
            raise ValueError(f'train_last_n_blocks ({n}) must be between 1 '
                             f'and the number of blocks ({depth})')
        if self.init_cfg is not None:
            self.load_pretrained(
                self.init_cfg['checkpoint'],
                prefix=self.init_cfg.get('prefix'))
        self._apply_freezing()
        self._backbone_ready = True

    def init_weights(self) -> None:
        """Weights are set in ``__init__`` (upstream init or the pretrained
        file); the runner's call must not re-initialise the tower (timm's
        own ``init_weights`` would)."""
        self._is_init = True

    def load_pretrained(self, path: str, prefix: Optional[str] = None) -> None:
        """Load a local weights file with a strict key check.

        Args:
            path (str): ``.safetensors``, ``.bin``/``.pth`` or an OpenAI
                TorchScript ``.pt`` (read by :func:`plugins.utils.safe_load`),
                or a model folder holding one (e.g.
                ``open_clip_pytorch_model.bin``).
            prefix (str, optional): keep only keys under this prefix and
                strip it (e.g. ``'backbone.'`` of a detector checkpoint).

        Raises:
            plugins.utils.StateDictMismatchError: listing missing and
                unexpected keys, with a hint to
                ``tools/convert_clip_checkpoint.py``.
        """
        path = find_weights_file(path)
        state = safe_load(path)
        if prefix:
            state = select_prefix(state, prefix)
        state = self.convert_pretrained(state)
        # buffers the module rebuilds itself (non-persistent) are not loaded
        expected = self.state_dict()
        derived = {n for n, _ in self.named_buffers()} - set(expected)
        state = {k: v for k, v in state.items() if k not in derived}
        check_state_dict(
            expected, state, source=str(path), target=type(self).__name__)
        self.load_state_dict(state, strict=True)
        self._pos_embed_cache.clear()
        MMLogger.get_current_instance().info(
            f'{type(self).__name__}: loaded {len(state)} tensors from {path}')

    def _apply_freezing(self) -> None:
        for p in self.parameters():
            p.requires_grad = not self.frozen
        if self.train_last_n_blocks is not None:
            for p in self.parameters():
                p.requires_grad = False
            trainable = list(self.blocks[-self.train_last_n_blocks:])
            trainable += self.final_norm_modules()
            if self.with_proj:
                trainable += self.proj_modules()
            _set_requires_grad(trainable, True)
        # unused in the forward: keep them out of optimisers and DDP
        _set_requires_grad(self.unused_modules(), False)
        if not self.with_proj:
            _set_requires_grad(self.proj_modules(), False)

    def _frozen_modules(self) -> List[nn.Module]:
        """Modules kept in eval mode during training."""
        if self.frozen:
            return [self]
        if self.train_last_n_blocks is not None:
            trainable = set()
            for m in list(self.blocks[-self.train_last_n_blocks:]) + [
                    m for m in self.final_norm_modules()
                    if isinstance(m, nn.Module)
            ]:
                trainable.update(id(x) for x in m.modules())
            # every module with nothing trainable inside it
            return [
                m for m in self.modules()
                if not any(id(x) in trainable for x in m.modules())
            ]
        return []

    def train(self, mode: bool = True):
        """Set train mode; frozen parts stay in eval mode (no dropout,
        drop-path or norm statistic updates)."""
        super().train(mode)
        if mode:
            for m in self._frozen_modules():
                m.eval()
        return self

    # ------------------------------------------------------------------
    # Shared helpers
    # ------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def out_channels(self) -> int:
        """Channels of every output map."""
        return self.proj_dims if self.with_proj else self.embed_dims

    @property
    def out_strides(self) -> int:
        """Stride of every output map (the patch size)."""
        return self.patch_size

    def data_preprocessor_cfg(self, **kwargs) -> dict:
        """An mmdet ``DetDataPreprocessor`` config matching this tower:
        its mean/std (0-255 scale), BGR->RGB, padding to the patch size.

        Args:
            **kwargs: more/overriding ``DetDataPreprocessor`` arguments.
        """
        return clip_data_preprocessor(
            self.mean, self.std, pad_size_divisor=self.patch_size, **kwargs)

    def get_pos_embed(self, grid: Grid) -> Optional[torch.Tensor]:
        """Position embedding for a ``(gh, gw)`` grid, in the source layout.

        Resampled (:func:`plugins.utils.resample_pos_embed`, as
        ``pos_embed_interp`` says) when the grid differs from the training
        grid.  Results are cached
        per grid, device and dtype while the source parameter is unchanged
        (its in-place version counter is part of the check); when the
        parameter trains and autograd is on, it is recomputed so gradients
        flow.
        """
        source = self.pos_embed_source()
        if source is None:
            return None
        pos, num_prefix, src_grid = source
        grid = (int(grid[0]), int(grid[1]))
        if grid == tuple(src_grid):
            return pos
        needs_graph = torch.is_grad_enabled() and pos.requires_grad
        key = (grid, pos.device, pos.dtype)
        stamp = (pos._version, pos.data_ptr())
        if not needs_graph:
            hit = self._pos_embed_cache.get(key)
            if hit is not None and hit[0] == stamp:
                return hit[1]
        out = resample_pos_embed(pos, grid, src_grid, num_prefix,
                                 **self._pos_embed_interp_args)
        if not needs_graph:
            out = out.detach()
            self._pos_embed_cache[key] = (stamp, out)
        return out

    def prepare_input(self, x: torch.Tensor) -> Tuple[torch.Tensor, Grid]:
        """Validate and pad ``(B, 3, H, W)`` to the patch multiple.

        Returns:
            tuple: the padded image and its grid ``(ceil(H/p), ceil(W/p))``.
        """
        name = type(self).__name__
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f'{name} expects images (B, 3, H, W), got shape '
                f'{tuple(x.shape)}; convert grayscale/RGBA images to RGB '
                'in the data pipeline')
        p = self.patch_size
        h, w = x.shape[-2:]
        if h < p or w < p:
            raise ValueError(f'{name}: input {h}x{w} is smaller than one '
                             f'{p}x{p} patch')
        # one reduction instead of a full boolean mask: a sum is non-finite
        # iff some element is (image-range values cannot overflow float32)
        if self.check_finite and not torch.isfinite(
                x.sum(dtype=torch.float32)):
            n_nan = int(torch.isnan(x).sum())
            n_inf = int(torch.isinf(x).sum())
            if n_nan or n_inf:
                raise ValueError(
                    f'{name}: input contains {n_nan} NaN and {n_inf} Inf '
                    f'values (shape {tuple(x.shape)})')
            raise ValueError(f'{name}: input values are far outside the '
                             'normalised image range (max |x| = '
                             f'{x.abs().max().item():.3g})')
        pad_h, pad_w = (-h) % p, (-w) % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return x, ((h + pad_h) // p, (w + pad_w) // p)

    def forward_blocks(self, x: torch.Tensor,
                       grid: Grid) -> List[torch.Tensor]:
        """Run the blocks; return the tokens after each of ``out_indices``.

        Stops after the last requested block.  Override for towers whose
        blocks are not a plain chain (e.g. CLIP Surgery's dual path).

        Args:
            x (Tensor): ``(B, N, C)`` tokens from :meth:`embed_tokens`.
            grid (tuple[int, int]): the patch grid.

        Returns:
            list[Tensor]: ``(B, N, C)`` per entry of ``out_indices``.
        """
        last = max(self.out_indices)
        taken = {}
        # plain iteration: slicing an nn.ModuleList builds a new module
        for i, block in enumerate(self.blocks):
            x = self._call_block(block, x)
            if i in self.out_indices:
                taken[i] = x
            if i == last:
                break
        return [taken[i] for i in self.out_indices]

    def _call_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and self.training and torch.is_grad_enabled():
            return checkpoint(self.run_block, block, x, use_reentrant=False)
        return self.run_block(block, x)

    def tokens_to_map(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        """Final norm (+ projection), drop prefix tokens, reshape.

        Args:
            x (Tensor): ``(B, P + gh * gw, C)``.

        Returns:
            Tensor: ``(B, C_out, gh, gw)``.
        """
        x = self.final_norm(x)
        if self.with_proj:
            x = self.project(x)
        x = x[:, self.num_prefix_tokens:]
        b, _, c = x.shape
        return x.reshape(b, grid[0], grid[1], c).permute(0, 3, 1,
                                                         2).contiguous()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Encode images into feature maps.

        Args:
            x (Tensor): ``(B, 3, H, W)``, normalised with :attr:`mean` /
                :attr:`std`.

        Returns:
            tuple[Tensor]: one ``(B, out_channels, ceil(H/p), ceil(W/p))``
            map per entry of ``out_indices``.
        """
        if not self._backbone_ready:
            raise RuntimeError(f'{type(self).__name__}.__init__ must call '
                               'self._init_backbone() after building')
        x, grid = self.prepare_input(x)
        # no local name for the embedded tokens: the blocks' first input is
        # freed as soon as the first block has run (lower peak memory)
        outs = self.forward_blocks(self.embed_tokens(x, grid), grid)
        return tuple(self.tokens_to_map(t, grid) for t in outs)


def clip_data_preprocessor(mean: Sequence[float] = OPENAI_CLIP_MEAN,
                           std: Sequence[float] = OPENAI_CLIP_STD,
                           pad_size_divisor: Optional[int] = None,
                           **kwargs) -> dict:
    """``DetDataPreprocessor`` config for CLIP statistics given in [0, 1].

    mmdet normalises 0-255 pixels, so the statistics are scaled by 255;
    images are loaded BGR by mmcv, CLIP expects RGB.
    """
    cfg = dict(
        type='DetDataPreprocessor',
        mean=[round(m * 255, 4) for m in mean],
        std=[round(s * 255, 4) for s in std],
        bgr_to_rgb=True)
    if pad_size_divisor:
        cfg['pad_size_divisor'] = int(pad_size_divisor)
    cfg.update(kwargs)
    return cfg


def _set_requires_grad(items: Iterable[Union[nn.Module, nn.Parameter]],
                       flag: bool) -> None:
    for item in items:
        if isinstance(item, nn.Parameter):
            item.requires_grad = flag
        elif item is not None:
            for p in item.parameters():
                p.requires_grad = flag
