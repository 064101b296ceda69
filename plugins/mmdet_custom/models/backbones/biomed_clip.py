"""BiomedCLIP's image tower (an open_clip ``TimmModel`` around a timm ViT)
as a backbone."""
from typing import Dict, Optional, Sequence

import torch
from mmdet.registry import MODELS
from open_clip.timm_model import TimmModel
from timm.models.vision_transformer import VisionTransformer as TimmViT

from plugins.models import BIOMEDCLIP_MODEL_NAME, create_model
from plugins.models.normalization import preprocess_cfg
from plugins.models.vit_tower import TimmViTTower

from .base import CLIPBackboneBase
from .open_clip import visual_state_dict


@MODELS.register_module()
class BiomedCLIPBackbone(CLIPBackboneBase):
    """BiomedCLIP's image tower as a single-scale backbone.

    The open_clip model of the shipped config
    ``BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`` is built offline; its
    ``visual`` (open_clip ``TimmModel``: timm ``vit_base_patch16_224``
    ``trunk`` + ``head.proj`` Linear(768, 512)) is kept, the PubMedBERT text
    tower dropped.  Tokens follow timm's path (``patch_embed``, class token,
    ``pos_embed``, ``norm_pre``, ``blocks``, ``norm``); ``with_proj=True``
    applies ``head`` to every token.  Works for any open_clip config whose
    image tower is a timm ViT (e.g. ``ViT-B-16-SigLIP``: no class token,
    its attention-pool head unused and frozen).

    Output: ``(B, 768, ceil(H/16), ceil(W/16))`` (``(B, 512, ...)`` with
    ``with_proj=True``).  Normalisation: OpenAI CLIP mean/std.

    Args:
        model_name (str): open_clip config with a timm ViT tower. Default:
            BiomedCLIP; ``'BiomedCLIP-Tiny-test'`` for tests.
        pretrained (str, optional): ``open_clip_pytorch_model.bin`` of the
            downloaded BiomedCLIP folder (or the folder itself), or a
            ``.safetensors`` conversion of it.
        mean, std (Sequence[float], optional): normalisation overrides.
        **kwargs: see :class:`CLIPBackboneBase` (``pos_embed_interp``
            defaults to ``'timm'``: bicubic, anti-aliased, as timm's
            ``resample_abs_pos_embed``).

    Example:
        >>> import torch
        >>> from plugins.mmdet_custom.models.backbones import BiomedCLIPBackbone
        >>> m = BiomedCLIPBackbone('BiomedCLIP-Tiny-test').eval()
        >>> [tuple(o.shape) for o in m(torch.rand(2, 3, 224, 224))]
        [(2, 64, 14, 14)]
    """

    def __init__(self,
                 model_name: str = BIOMEDCLIP_MODEL_NAME,
                 pretrained: Optional[str] = None,
                 mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None,
                 **kwargs):
        clip = create_model(model_name, vision_only=True)
        visual = clip.visual
        if not (isinstance(visual, TimmModel)
                and isinstance(visual.trunk, TimmViT)):
            raise TypeError(
                f"BiomedCLIPBackbone needs a timm ViT image tower; "
                f"'{model_name}' has {type(visual).__name__} (open_clip "
                'ViTs: use OpenCLIPBackbone)')
        tower = TimmViTTower(visual)
        if kwargs.get('with_proj') and not tower.has_token_projection:
            raise ValueError(
                f"'{model_name}' has no per-token projection (its joint "
                'space comes from a pooling head); use with_proj=False')
        stats = preprocess_cfg(clip)
        del clip
        super().__init__(
            tower,
            mean=mean or stats['mean'],
            std=std or stats['std'],
            pretrained=pretrained,
            **kwargs)
        self.model_name = model_name

    @property
    def trunk(self) -> TimmViT:
        """The timm ``VisionTransformer`` inside the image tower."""
        return self.visual.trunk

    def convert_pretrained(
            self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return visual_state_dict(state)
