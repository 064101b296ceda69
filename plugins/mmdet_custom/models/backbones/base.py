"""Shared base of the single-scale CLIP-family backbones.

A CLIP image tower as a detector backbone needs the same plumbing whatever
the tower: arbitrary input sizes (pad to the patch multiple, resample the
position embedding), several output blocks, freezing or partial unfreezing,
gradient checkpointing, loading local weights safely, and the right
normalisation statistics.  The host-free tower module
(:mod:`plugins.models.vit_tower`) runs the tower (its
``forward_intermediates``); :class:`CLIPBackboneBase` is the thin mmdet
module around it: it registers the image tower as ``visual`` (so state-dict
keys are the tower's own), loads weights and applies the freezing options.

The weight lifecycle is mmdet's (``mmdet/models/backbones/swin.py``):
``__init__`` builds the architecture only (the activation included, from
the config); :meth:`CLIPBackboneBase.init_weights` loads the pretrained
file, which the runner calls for training and never for testing, so a
trained checkpoint and the config are all ``tools/test.py`` needs; freezing
is re-applied in ``train()``.  Format conversion lives in module-level
functions (:func:`plugins.mmdet_custom.models.backbones.open_clip.
visual_state_dict`, :func:`plugins.models.concept_clip.
convert_concept_clip_state_dict`).
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.logging import MMLogger
from mmengine.model import BaseModule

from plugins.models.vit_tower import Grid, ViTTower, attach_tower
from plugins.models.weights import (activation_name, check_activation,
                                    find_weights_file, recorded_activation,
                                    weights_layout)
from plugins.utils import check_state_dict, safe_load, select_prefix

StateDict = Dict[str, torch.Tensor]

#: Name of the buffer that records the activation of the tower's blocks, so
#: a trained checkpoint says what it was trained with (``backbone.
#: activation`` in a detector checkpoint).
ACTIVATION_KEY = 'activation'


def encode_activation(name: str) -> torch.Tensor:
    """An activation name as a ``uint8`` tensor (a state-dict entry that
    ``weights_only`` loading, ``.half()`` and ``.to(device)`` leave as is)."""
    return torch.tensor(list(name.encode('ascii')), dtype=torch.uint8)


def decode_activation(code: torch.Tensor) -> str:
    """Inverse of :func:`encode_activation`."""
    return bytes(code.to(torch.uint8).cpu().tolist()).decode('ascii')


class CLIPBackboneBase(BaseModule):
    """Base for ViT image towers of CLIP-family models used as backbones.

    Input ``(B, 3, H, W)`` of any size ``>= patch``; the image is zero-padded
    at the bottom/right to a multiple of the patch size and the position
    embedding is resampled to the resulting grid (cached per grid).  Output:
    a tuple with one map ``(B, C, ceil(H/p), ceil(W/p))`` per entry of
    ``out_indices``.  Each map is the block's tokens after the tower's final
    norm (and projection into the joint image-text space when
    ``with_proj=True``), prefix (class) tokens dropped.

    Normalisation: images must be normalised with :attr:`mean` / :attr:`std`
    (RGB, ``[0, 1]`` scale), the tower's own statistics
    (:func:`plugins.models.normalization.preprocess_cfg`).

    A subclass builds its image tower, wraps it with
    :func:`plugins.models.vit_tower.build_vit_tower` and passes the tower to
    ``super().__init__`` (see ``/docs/backbones.md``); it overrides
    :meth:`convert_pretrained` / :meth:`read_pretrained` for foreign weight
    layouts and :meth:`unused_modules` for parts it never runs; a tower
    that runs differently (CLIP Surgery) is a tower subclass with its own
    block hooks.

    Args:
        tower (ViTTower): the image tower adapter; its ``visual`` is kept as
            ``self.visual`` (and an external projection as
            ``self.image_proj``).
        mean, std (Sequence[float]): the tower's normalisation statistics
            (RGB, [0, 1]).
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
        with_cp (bool): gradient checkpointing of each training block
            (mmdet's key for the tower's one flag,
            :meth:`~plugins.models.vit_tower.ViTTower.set_grad_checkpointing`).
            Default: False.
        window_size (int, optional): windowed attention for large inputs
            (as ViTDet): blocks not in ``global_blocks`` attend within
            non-overlapping ``window_size x window_size`` windows of the
            patch grid (padded to a window multiple, cropped back; prefix
            tokens copied into every window and averaged back), the others
            globally; same weights, no new parameters; works with
            ``with_cp``, ``train_last_n_blocks`` and CLIP Surgery.  A window
            covering the grid is global attention.  ViTDet: 14. Default:
            None (every block global), see
            :mod:`plugins.models.window_attention`.
        global_blocks (Sequence[int], optional): blocks that stay global
            with ``window_size``; negatives count from the end. Default:
            one in three, at most ViTDet's four (12 blocks: 2, 5, 8, 11; 24
            blocks: 5, 11, 17, 23; 4 blocks: 1, 3).  An input whose
            attention would exceed the tower's ``attention_budget`` (16
            GiB) is refused before anything is allocated, naming the
            ``window_size`` / ``global_blocks`` to set.
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
            a detector checkpoint).  Weights load in :meth:`init_weights`
            (the runner calls it before training; testing from a trained
            checkpoint never reads this file).

    The activation of the tower's blocks is recorded in the buffer
    ``activation`` (:data:`ACTIVATION_KEY`), so a trained checkpoint loaded
    into a backbone configured with another activation fails, naming the
    key to set, instead of running silently wrong.
    """

    #: Whether the activation is a configuration choice (open_clip towers:
    #: ``quick_gelu``), so a checkpoint that does not record it is
    #: ambiguous; timm towers fix it in the model config.
    activation_is_configurable = False
    #: Position-embedding resampling of the upstream model (see
    #: :func:`plugins.utils.pos_embed_interp_args`); subclasses override.
    default_pos_embed_interp = 'timm'

    def __init__(self,
                 tower: ViTTower,
                 mean: Sequence[float],
                 std: Sequence[float],
                 out_indices: Union[int, Sequence[int]] = (-1, ),
                 frozen: bool = False,
                 train_last_n_blocks: Optional[int] = None,
                 with_proj: bool = False,
                 with_cp: bool = False,
                 window_size: Optional[int] = None,
                 global_blocks: Optional[Sequence[int]] = None,
                 check_finite: bool = True,
                 pos_embed_interp: Optional[Union[str, dict]] = None,
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[dict] = None):
        name = type(self).__name__
        if pretrained is not None and init_cfg is not None:
            raise ValueError('give either pretrained or init_cfg, not both')
        if pretrained is not None:
            init_cfg = dict(type='Pretrained', checkpoint=str(pretrained))
        if init_cfg is not None and init_cfg.get('type') != 'Pretrained':
            raise ValueError(f'{name} only supports '
                             "init_cfg=dict(type='Pretrained', checkpoint=...)"
                             f', got {init_cfg}')
        super().__init__(init_cfg=init_cfg)
        if frozen and train_last_n_blocks is not None:
            raise ValueError('frozen=True and train_last_n_blocks='
                             f'{train_last_n_blocks} contradict each other')
        if isinstance(out_indices, int):
            out_indices = (out_indices, )
        tower.owner = name
        self.visual = tower.visual
        if tower.projection is not None:
            self.image_proj = tower.projection
        # registered above as visual (and image_proj), so keys stay the
        # tower's own
        attach_tower(self, tower)
        #: RGB mean / std in [0, 1] units the tower was trained with.
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.out_indices = tower.resolve_indices(out_indices)
        tower.check_train_last_n_blocks(train_last_n_blocks)
        self.frozen = bool(frozen)
        self.train_last_n_blocks = train_last_n_blocks
        self.with_proj = bool(with_proj)
        tower.set_grad_checkpointing(with_cp)
        tower.set_window_attention(window_size, global_blocks)
        self.window_size = tower.window_size
        self.global_blocks = tower.global_blocks
        tower.check_finite = bool(check_finite)
        self.pos_embed_interp = self.default_pos_embed_interp \
            if pos_embed_interp is None else pos_embed_interp
        # validated by the tower, so a typo fails at construction
        tower.pos_embed_interp = self.pos_embed_interp
        self.register_buffer(ACTIVATION_KEY,
                             encode_activation(self.block_activation))
        self._apply_freezing()

    # ------------------------------------------------------------------
    # What a subclass may override
    # ------------------------------------------------------------------
    def unused_modules(self) -> List[Union[nn.Module, nn.Parameter]]:
        """Parts of the tower the backbone never runs besides the tower's
        own unused heads; kept for weight loading, always frozen so
        optimisers and DDP ignore them. Default: none."""
        return []

    def activation_fix(self, activation: str) -> Optional[str]:
        """What a config sets so that this backbone runs ``activation``
        (for error messages). Default: None (not configurable)."""
        return None

    def convert_pretrained(self, state_dict: StateDict) -> StateDict:
        """Map a loaded weights file to this module's ``state_dict`` keys.

        Called by :meth:`load_pretrained` before the strict key check;
        subclasses translate foreign layouts (OpenAI, full CLIP models with
        a text tower, HF folders) here.  Default: unchanged.
        """
        return state_dict

    def read_pretrained(self, path: str) -> Tuple[Path, StateDict]:
        """The weights file at ``path`` (a file or a model folder) and its
        state dict. Subclasses read other layouts (e.g. sharded exports)."""
        path = find_weights_file(path)
        return path, safe_load(path)

    # ------------------------------------------------------------------
    # Weights and freezing
    # ------------------------------------------------------------------
    @property
    def block_activation(self) -> str:
        """The activation of the tower's block MLPs (``'quick_gelu'``,
        ``'gelu'``, ``'gelu_tanh'``)."""
        mlp = self.tower.blocks[0].mlp
        act = getattr(mlp, 'gelu', None)  # open_clip's MLP
        if act is None:
            act = getattr(mlp, 'act', None)  # timm's
        return activation_name(act)

    def init_weights(self) -> None:
        """Load the pretrained file of ``init_cfg`` (``pretrained``), if
        any, with a strict key check.

        As in mmdet's backbones, the runner calls this before training and
        never for testing; without a file the upstream initialisation of
        ``__init__`` stays (timm's own ``init_weights`` is not re-run).
        """
        if self.init_cfg is not None:
            self.load_pretrained(
                self.init_cfg['checkpoint'],
                prefix=self.init_cfg.get('prefix'))
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
            plugins.models.weights.ActivationMismatchError: the file's
                layout (OpenAI's: QuickGELU) or recorded activation is not
                this backbone's, naming the key to set.
        """
        path, state = self.read_pretrained(path)
        if prefix:
            state = select_prefix(state, prefix)
        self.check_weights_activation(state, str(path),
                                      recorded=recorded_activation(path))
        state = self.convert_pretrained(state)
        # buffers the module rebuilds itself (non-persistent) are not
        # loaded; the activation record is the configured one (checked)
        expected = self.state_dict()
        expected.pop(ACTIVATION_KEY)
        derived = {n for n, _ in self.named_buffers()} - set(expected)
        state = {k: v for k, v in state.items() if k not in derived}
        check_state_dict(
            expected, state, source=str(path), target=type(self).__name__)
        state[ACTIVATION_KEY] = getattr(self, ACTIVATION_KEY)
        self.load_state_dict(state, strict=True)
        MMLogger.get_current_instance().info(
            f'{type(self).__name__}: loaded {len(state) - 1} tensors from '
            f'{path}')

    def check_weights_activation(self, state: StateDict,
                                 source: str,
                                 recorded: Optional[str] = None) -> None:
        """Refuse weights whose layout or record says another activation
        than this backbone's (see
        :func:`plugins.models.weights.check_activation`); ``recorded``: what
        the file's header records (see
        :func:`plugins.models.weights.recorded_activation`)."""
        if ACTIVATION_KEY in state:
            seen = decode_activation(state.pop(ACTIVATION_KEY))
            layout = (f'a checkpoint of a backbone that ran {seen} '
                      f'(its `{ACTIVATION_KEY}` entry)')
        else:
            layout, seen = weights_layout(state, recorded)
        check_activation(
            self,
            seen,
            layout,
            source=source,
            fix=self.activation_fix(seen) if seen else None,
            configured=self.block_activation)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata,
                              strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Every load_state_dict (mmengine's load_checkpoint for
        # tools/test.py, --resume, load_from) passes here: a recorded
        # activation must be this backbone's; a checkpoint from before the
        # record loads, with a warning where the activation is a choice.
        key = prefix + ACTIVATION_KEY
        if key in state_dict:
            self.check_weights_activation(
                {ACTIVATION_KEY: state_dict[key]}, source=f'checkpoint ({key})')
        elif self.activation_is_configurable:
            self._warn_unrecorded_activation(key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata,
                                      strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if key in missing_keys:
            missing_keys.remove(key)

    def _warn_unrecorded_activation(self, key: str) -> None:
        act = self.block_activation
        other = 'gelu' if act == 'quick_gelu' else 'quick_gelu'
        MMLogger.get_current_instance().warning(
            f'{type(self).__name__}: the checkpoint has no `{key}` entry '
            '(written before backbones recorded their activation); this '
            f'backbone runs {act} as configured. If the checkpoint was '
            f'trained with {other} (a backbone trained from OpenAI weights '
            'such as ViT-B-16.pt ran quick_gelu), set '
            f'{self.activation_fix(other)}.')

    def _apply_freezing(self) -> None:
        self.tower.set_trainable(self.frozen, self.train_last_n_blocks,
                                 self.with_proj, self.unused_modules())

    def train(self, mode: bool = True):
        """Set train mode and re-apply freezing (as mmdet's backbones'
        ``_freeze_stages``); frozen parts stay in eval mode (no dropout,
        drop-path or norm statistic updates)."""
        super().train(mode and not self.frozen)
        self._apply_freezing()
        if mode:
            for m in self.tower.frozen_modules(self.frozen,
                                               self.train_last_n_blocks):
                m.eval()
        return self

    # ------------------------------------------------------------------
    # The tower's parts, by their backbone names
    # ------------------------------------------------------------------
    @property
    def blocks(self) -> Sequence[nn.Module]:
        return self.tower.blocks

    @property
    def num_blocks(self) -> int:
        return len(self.tower.blocks)

    @property
    def patch_size(self) -> int:
        return self.tower.patch_size

    @property
    def embed_dims(self) -> int:
        """Token width (channels when ``with_proj=False``)."""
        return self.tower.width

    @property
    def proj_dims(self) -> int:
        """Joint-space width (channels when ``with_proj=True``)."""
        return self.tower.proj_dims

    @property
    def num_prefix_tokens(self) -> int:
        return self.tower.num_prefix_tokens

    @property
    def out_channels(self) -> int:
        """Channels of every output map."""
        return self.proj_dims if self.with_proj else self.embed_dims

    @property
    def out_strides(self) -> int:
        """Stride of every output map (the patch size)."""
        return self.patch_size

    def prepare_input(self, x: torch.Tensor) -> Tuple[torch.Tensor, Grid]:
        """Validate and pad ``(B, 3, H, W)`` to the patch multiple.

        Returns:
            tuple: the padded image and its grid ``(ceil(H/p), ceil(W/p))``.
        """
        return self.tower.prepare(x)

    def embed_tokens(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        """Tokens for the first block from a padded ``(B, 3, gh*p, gw*p)``
        image: ``(B, num_prefix_tokens + gh * gw, C)``.  ``grid`` (from
        :meth:`prepare_input`) is not read: the image's sides give it."""
        return self.tower.embed(x)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Encode images into feature maps.

        Args:
            x (Tensor): ``(B, 3, H, W)``, normalised with :attr:`mean` /
                :attr:`std`.

        Returns:
            tuple[Tensor]: one ``(B, out_channels, ceil(H/p), ceil(W/p))``
            map per entry of ``out_indices``.
        """
        return tuple(
            self.tower.forward_intermediates(
                x,
                self.out_indices,
                norm=True,
                stop_early=True,
                intermediates_only=True,
                with_proj=self.with_proj))

