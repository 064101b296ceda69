"""CLIP Surgery's image encoder (value-value path in the last blocks) as a
backbone."""
from typing import List

import torch.nn as nn
from mmdet.registry import MODELS
from open_clip.transformer import VisionTransformer

from plugins.models.clip_surgery import SurgeryCLIPVisual

from .open_clip import OpenCLIPBackbone


@MODELS.register_module()
class SurgeryCLIPBackbone(OpenCLIPBackbone):
    """CLIP Surgery (Li et al. 2023) over an OpenAI/OpenCLIP ViT as a
    single-scale backbone.

    The first ``depth - surgery_depth`` blocks run as in CLIP.  From there
    the original path continues unchanged while a surgery path accumulates,
    per block, a value-value self-attention (``softmax(v v^T * scale) v``
    with the block's own qkv weights on ``ln_1`` of the original path's
    input, then the block's output projection, no FFN); see
    :mod:`plugins.models.clip_surgery` (the backbone's tower is that
    module's :class:`SurgeryCLIPVisual`).  Maps are the surgery path's patch
    tokens after ``ln_post`` (and ``proj`` with ``with_proj=True``);
    ``out_indices`` before the first surgery block give the original
    path's tokens.  With ``surgery_depth=0`` it is
    :class:`OpenCLIPBackbone`.

    With ``window_size`` (windowed attention, see
    :class:`CLIPBackboneBase`) a windowed block's value-value branch runs on
    the same windows as the block.

    The original path of the last surgery block is not computed (it only
    feeds the class token, which a map drops), so that block's FFN
    (``ln_2``, ``mlp``) is unused and kept frozen (DDP-safe).

    Output: ``(B, C, ceil(H/p), ceil(W/p))``; ViT-B/16: ``C`` = 768
    (512 with ``with_proj=True``), ``p`` = 16.  Normalisation: OpenAI CLIP
    mean/std.  As in CLIP Surgery, OpenAI weights run with QuickGELU (the
    default ``'ViT-B-16-quickgelu'``; an OpenAI file loaded into a GELU
    model fails, naming the key to set) and the position embedding is
    resampled bilinearly (``pos_embed_interp='clip_surgery'``).

    Args:
        model_name (str): open_clip ViT. OpenAI's ``ViT-B-16.pt`` (CLIP
            Surgery's checkpoint) needs ``'ViT-B-16-quickgelu'``; open_clip
            GELU releases (LAION) ``'ViT-B-16'``. Default:
            ``'ViT-B-16-quickgelu'``.
        surgery_depth (int): blocks, counted from the end, with the
            value-value path (0 to the number of blocks). Default: 6.
        **kwargs: ``pretrained`` (local open_clip ``.safetensors``/``.bin``
            or OpenAI ``.pt``), ``quick_gelu``, ``pretrained_tag``,
            ``mean``, ``std`` of
            :class:`OpenCLIPBackbone` and the options of
            :class:`CLIPBackboneBase` (``pos_embed_interp`` defaults to
            ``'clip_surgery'``: bilinear, ``align_corners=False``, no
            anti-aliasing).

    Example:
        >>> import torch
        >>> from plugins.mmdet_custom.models.backbones import SurgeryCLIPBackbone
        >>> m = SurgeryCLIPBackbone('ViT-Tiny-16-test', surgery_depth=2)
        >>> [tuple(o.shape) for o in m.eval()(torch.rand(2, 3, 320, 480))]
        [(2, 64, 20, 30)]
    """

    default_pos_embed_interp = 'clip_surgery'

    def __init__(self,
                 model_name: str = 'ViT-B-16-quickgelu',
                 surgery_depth: int = 6,
                 **kwargs):
        # read by make_tower while OpenCLIPBackbone builds the tower; a
        # plain attribute may precede nn.Module.__init__
        self.surgery_depth = int(surgery_depth)
        super().__init__(model_name=model_name, **kwargs)

    def make_tower(self, visual: VisionTransformer) -> SurgeryCLIPVisual:
        """CLIP Surgery's tower (the one the Open-GroundingDino adapter
        holds too), checking ``surgery_depth`` against the blocks."""
        return SurgeryCLIPVisual(
            visual, self.surgery_depth, owner=type(self).__name__,
            check_finite=True)

    @property
    def surgery_start(self) -> int:
        """Index of the first surgery block."""
        return self.tower.surgery_start

    def unused_modules(self) -> List[nn.Module]:
        return self.tower.surgery_unused_modules(max(self.out_indices))
