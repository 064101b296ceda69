"""SurgeryCLIP as an Open-GroundingDino backbone (single scale).

Open-GroundingDino (``longzw1997/Open-GroundingDino``) builds its image
backbone in ``models/GroundingDINO/backbone/backbone.py: build_backbone``
and wraps it in a ``Joiner`` with the position encoding.  A backbone there
takes a ``NestedTensor(images (B, 3, H, W), mask (B, H, W))`` (mask True on
padding) and returns ``{name: NestedTensor(features, mask resized)}``; the
detector reads ``backbone.num_channels`` for its input projections.

:func:`build_surgeryclip_backbone` returns such a module over CLIP
Surgery's image tower (:class:`plugins.models.clip_surgery.
SurgeryCLIPVisual`) and ``[channels]``.  This file needs only torch,
open_clip and :mod:`plugins.models` (no mmdet); it imports nothing from
Open-GroundingDino at import time and uses its ``NestedTensor`` class when
one is importable (a minimal one otherwise).  See
``docs/integrations/open_groundingdino.md``.

``args`` fields read (all but the first two optional):

==================================  ==========================================
``surgeryclip_ckpt``                local OpenAI ``.pt`` / open_clip
                                    ``.safetensors``/``.bin`` (None: random
                                    weights, with a warning)
``train_surgeryclip_backbone``      False (default): frozen, eval mode
``surgeryclip_model_name``          open_clip ViT (default
                                    ``ViT-B-16-quickgelu``, OpenAI's
                                    activation; ``ViT-B-16`` for open_clip
                                    GELU weights; a file whose layout
                                    contradicts it is refused)
``surgeryclip_quick_gelu``          override the name's activation
                                    (True: QuickGELU, OpenAI's weights)
``surgeryclip_surgery_depth``       value-value blocks from the end (6)
``surgeryclip_pos_embed_interp``    position-embedding resampling
                                    (``'clip_surgery'``: bilinear, as CLIP
                                    Surgery; see ``docs/backbones.md``)
``surgeryclip_train_last_n_blocks`` with training on: train only the last n
                                    blocks and ``ln_post``/``proj``
``surgeryclip_with_proj``           True (default): features in CLIP's
                                    joint space (512 for ViT-B/16), as
                                    ``encode_image_with_all_tokens``;
                                    False: width (768)
``surgeryclip_input_norm``          ``'imagenet'`` (default: Open-GroundingDino
                                    normalises with ImageNet statistics; they
                                    are converted to CLIP's inside) or
                                    ``'clip'`` (already CLIP-normalised)
``surgeryclip_window_size``         windowed attention for large inputs
                                    (ViTDet: 14; None: every block global)
``surgeryclip_global_blocks``       with a window size, the blocks that stay
                                    global (default: the last of each
                                    quarter, ViT-B: 2, 5, 8, 11)
``use_checkpoint``                  gradient checkpointing while training
==================================  ==========================================
"""
import importlib
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from plugins.models.normalization import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
                                         preprocess_cfg)

logger = logging.getLogger('plugins.open_groundingdino')

#: Statistics Open-GroundingDino's transforms normalise with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: OpenAI CLIP statistics (the ones CLIP Surgery's ViT was trained with);
#: the backbone itself reads its tower's statistics from the model config.
CLIP_MEAN, CLIP_STD = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
INPUT_NORMS = {'imagenet': (IMAGENET_MEAN, IMAGENET_STD), 'clip': None}

#: The architecture of CLIP Surgery's checkpoint (OpenAI's ``ViT-B-16.pt``,
#: trained with QuickGELU).
DEFAULT_MODEL_NAME = 'ViT-B-16-quickgelu'

#: Where Open-GroundingDino (and IDEA's GroundingDINO) keep NestedTensor.
NESTED_TENSOR_MODULES = ('groundingdino.util.misc', 'util.misc')


class NestedTensor:
    """Minimal stand-in for Open-GroundingDino's ``util.misc.NestedTensor``
    (used only when that one is not importable).

    Args:
        tensors (Tensor): ``(B, C, H, W)``.
        mask (Tensor, optional): ``(B, H, W)`` bool, True on padding.
    """

    def __init__(self, tensors: torch.Tensor, mask: Optional[torch.Tensor]):
        self.tensors = tensors
        self.mask = mask

    def decompose(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        return self.tensors, self.mask

    def to(self, device, **kwargs) -> 'NestedTensor':
        mask = None if self.mask is None else self.mask.to(device, **kwargs)
        return NestedTensor(self.tensors.to(device, **kwargs), mask)

    @property
    def device(self) -> torch.device:
        return self.tensors.device

    def __repr__(self) -> str:
        return f'NestedTensor(tensors={tuple(self.tensors.shape)}, mask=' \
            f'{None if self.mask is None else tuple(self.mask.shape)})'


_nested_tensor_cls = None


def nested_tensor_class() -> type:
    """The host's ``NestedTensor`` when importable, else ours (cached)."""
    global _nested_tensor_cls
    if _nested_tensor_cls is None:
        _nested_tensor_cls = NestedTensor
        for name in NESTED_TENSOR_MODULES:
            try:
                cls = getattr(importlib.import_module(name), 'NestedTensor')
            except Exception:  # not installed / another `util` package
                continue
            if isinstance(cls, type):
                _nested_tensor_cls = cls
                break
    return _nested_tensor_cls


class SurgeryCLIPGroundingBackbone(nn.Module):
    """CLIP Surgery image tower with Open-GroundingDino's backbone interface.

    ``forward(NestedTensor(images (B, 3, H, W), mask (B, H, W)))`` returns
    ``{'0': NestedTensor(features (B, C, ceil(H/p), ceil(W/p)), mask)}``,
    the mask resized (nearest) to the feature grid.  Images of any size;
    they are zero-padded to the patch multiple inside.

    Args:
        surgery_visual (SurgeryCLIPVisual): the tower, weights loaded.
        train_backbone (bool): train it (else frozen, eval mode).
            Default: False.
        train_last_n_blocks (int, optional): with ``train_backbone``,
            train only the last ``n`` blocks and the final norm/projection.
        with_proj (bool): project features into CLIP's joint space.
            Default: True.
        input_mean, input_std (Sequence[float], optional): statistics the
            input was normalised with (RGB, [0, 1] scale); converted to
            CLIP's inside. None: the input is CLIP-normalised already.
        use_checkpoint (bool): gradient checkpointing. Default: False.

    Attributes:
        num_channels (list[int]): ``[C]``, for the detector's input
            projection.
    """

    def __init__(self,
                 surgery_visual: nn.Module,
                 train_backbone: bool = False,
                 train_last_n_blocks: Optional[int] = None,
                 with_proj: bool = True,
                 input_mean: Optional[Sequence[float]] = IMAGENET_MEAN,
                 input_std: Optional[Sequence[float]] = IMAGENET_STD,
                 use_checkpoint: bool = False):
        super().__init__()
        self.body = surgery_visual
        visual = surgery_visual.visual
        self.with_proj = bool(with_proj) and visual.proj is not None
        width = visual.conv1.out_channels
        self.num_channels = [visual.proj.shape[1] if self.with_proj else width]
        self.train_backbone = bool(train_backbone)
        surgery_visual.set_grad_checkpointing(use_checkpoint)
        # x_clip = (x * s_in + m_in - m_clip) / s_clip = x * scale + shift
        if input_mean is not None:
            stats = preprocess_cfg(visual)
            m_in = torch.tensor(input_mean).view(1, 3, 1, 1)
            s_in = torch.tensor(input_std).view(1, 3, 1, 1)
            m_clip = torch.tensor(stats['mean']).view(1, 3, 1, 1)
            s_clip = torch.tensor(stats['std']).view(1, 3, 1, 1)
            self.register_buffer('in_scale', s_in / s_clip, persistent=False)
            self.register_buffer(
                'in_shift', (m_in - m_clip) / s_clip, persistent=False)
        else:
            self.in_scale = self.in_shift = None
        self._set_trainable(train_last_n_blocks)

    def _set_trainable(self, train_last_n_blocks: Optional[int]) -> None:
        tower = self.body
        self.train_last_n_blocks = train_last_n_blocks
        if not self.train_backbone:
            tower.set_trainable(frozen=True)
            return
        try:
            tower.set_trainable(False, train_last_n_blocks, self.with_proj,
                                tower.surgery_unused_modules())
        except ValueError as err:
            raise ValueError(f'surgeryclip_{err}') from None

    def train(self, mode: bool = True):
        """Train mode; frozen parts (all, or all but the last
        ``train_last_n_blocks`` blocks) stay in eval mode, as in the mmdet
        backbone."""
        super().train(mode and self.train_backbone)
        if mode and self.train_backbone:
            for m in self.body.frozen_modules(False,
                                              self.train_last_n_blocks):
                m.eval()
        return self

    def forward(self, tensor_list: Any) -> Dict[str, Any]:
        """``NestedTensor`` (or anything with ``.tensors``/``.mask``; a bare
        ``(B, 3, H, W)`` tensor means no padding) -> ``{'0': NestedTensor}``.
        """
        if isinstance(tensor_list, torch.Tensor):
            images, mask = tensor_list, None
        else:
            images, mask = tensor_list.tensors, tensor_list.mask
        if mask is None:
            mask = torch.zeros(
                images.shape[0],
                *images.shape[-2:],
                dtype=torch.bool,
                device=images.device)
        x = images
        if self.in_scale is not None:
            x = x * self.in_scale.to(x.dtype) + self.in_shift.to(x.dtype)
        feats = self.body.forward_map(x, with_proj=self.with_proj)
        # the tower pads images to the patch multiple: pad the mask alike
        # (True = padding) so each cell samples its own patch
        p = self.body.patch_size
        pad_h, pad_w = (-mask.shape[-2]) % p, (-mask.shape[-1]) % p
        if pad_h or pad_w:
            mask = F.pad(mask, (0, pad_w, 0, pad_h), value=True)
        mask = F.interpolate(
            mask[None].float(), size=feats.shape[-2:]).to(torch.bool)[0]
        return {'0': nested_tensor_class()(feats, mask)}


def _say(message: str) -> None:
    """Print once per job (rank 0), where Open-GroundingDino's user looks:
    its ``main.py`` prints and logs to its own ``detr`` logger only."""
    if torch.distributed.is_available() and \
            torch.distributed.is_initialized() and \
            torch.distributed.get_rank() != 0:
        return
    print(message, flush=True)


def _arg(args: Any, name: str, default: Any = None) -> Any:
    value = getattr(args, name, default)
    return default if value is None else value


def build_surgeryclip_backbone(
        args: Any) -> Tuple[SurgeryCLIPGroundingBackbone, List[int]]:
    """Build the SurgeryCLIP backbone from Open-GroundingDino's ``args``.

    Args:
        args: the training config namespace (fields in the module
            docstring; ``surgeryclip_ckpt`` and
            ``train_surgeryclip_backbone`` are the main ones).

    Returns:
        tuple: ``(backbone, num_channels)``, ``num_channels = [C]``
        (512 for ViT-B/16 with the default ``with_proj``).
    """
    from plugins.models import (activation_fix, create_model,
                                load_open_clip_weights)
    from plugins.models.clip_surgery import SurgeryCLIPVisual
    from plugins.models.weights import find_weights_file

    model_name = _arg(args, 'surgeryclip_model_name', DEFAULT_MODEL_NAME)
    quick_gelu = getattr(args, 'surgeryclip_quick_gelu', None)
    ckpt = getattr(args, 'surgeryclip_ckpt', None)
    if ckpt:
        path = find_weights_file(ckpt)
        # the activation is the configuration's (OpenAI's archives need
        # '-quickgelu'); a contradicting file is refused, naming the field
        clip = create_model(model_name, quick_gelu=quick_gelu)
        loaded = load_open_clip_weights(
            clip,
            path,
            strict=True,
            target=model_name,
            fix=activation_fix(
                model_name,
                True,
                name_key='args.surgeryclip_model_name',
                flag_key='args.surgeryclip_quick_gelu'))
        # Open-GroundingDino shows print() and its own logger, not ours
        _say(f'SurgeryCLIP backbone: {model_name}, loaded {len(loaded)} '
             f'tensors from {path} (strict: every key matched)')
    else:
        logger.warning('SurgeryCLIP backbone: args.surgeryclip_ckpt is not '
                       f'set; {model_name} has random weights')
        clip = create_model(
            model_name, vision_only=True, quick_gelu=quick_gelu)
    norm = _arg(args, 'surgeryclip_input_norm', 'imagenet')
    if norm not in INPUT_NORMS:
        raise ValueError(f"surgeryclip_input_norm '{norm}' is not one of "
                         f'{sorted(INPUT_NORMS)}')
    stats = INPUT_NORMS[norm]
    backbone = SurgeryCLIPGroundingBackbone(
        SurgeryCLIPVisual(
            clip.visual,
            surgery_depth=int(_arg(args, 'surgeryclip_surgery_depth', 6)),
            pos_embed_interp=_arg(args, 'surgeryclip_pos_embed_interp',
                                  'clip_surgery'),
            window_size=getattr(args, 'surgeryclip_window_size', None),
            global_blocks=getattr(args, 'surgeryclip_global_blocks', None)),
        train_backbone=bool(_arg(args, 'train_surgeryclip_backbone', False)),
        train_last_n_blocks=getattr(args, 'surgeryclip_train_last_n_blocks',
                                    None),
        with_proj=bool(_arg(args, 'surgeryclip_with_proj', True)),
        input_mean=stats[0] if stats else None,
        input_std=stats[1] if stats else None,
        use_checkpoint=bool(_arg(args, 'use_checkpoint', False)))
    del clip
    return backbone, list(backbone.num_channels)
