"""BiomedCLIP's image tower (an open_clip ``TimmModel`` around a timm ViT)
as a backbone."""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmdet.registry import MODELS
from open_clip.timm_model import TimmModel
from timm.models.vision_transformer import VisionTransformer as TimmViT

from plugins.models import BIOMEDCLIP_MODEL_NAME, create_model

from .base import CLIPBackboneBase, Grid
from .open_clip import preprocess_stats, visual_state_dict


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
        >>> from plugins.backbones import BiomedCLIPBackbone
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
        super().__init__(pretrained=pretrained, **kwargs)
        self.model_name = model_name
        clip = create_model(model_name, vision_only=True)
        visual = clip.visual
        if not (isinstance(visual, TimmModel)
                and isinstance(visual.trunk, TimmViT)):
            raise TypeError(
                f"BiomedCLIPBackbone needs a timm ViT image tower; "
                f"'{model_name}' has {type(visual).__name__} (open_clip "
                'ViTs: use OpenCLIPBackbone)')
        trunk = visual.trunk
        if kwargs.get('with_proj') and not _linears(visual.head):
            raise ValueError(
                f"'{model_name}' has no per-token projection (its joint "
                'space comes from a pooling head); use with_proj=False')
        if not isinstance(trunk.patch_drop, nn.Identity):
            trunk.patch_drop = nn.Identity()  # keeps the spatial map whole
        self.visual = visual
        default_mean, default_std = preprocess_stats(clip)
        self.mean = tuple(mean or default_mean)
        self.std = tuple(std or default_std)
        del clip
        self._init_backbone()

    @property
    def trunk(self) -> TimmViT:
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
    def embed_dims(self) -> int:
        return self.trunk.embed_dim

    @property
    def proj_dims(self) -> int:
        return _out_features(self.visual.head, self.embed_dims)

    @property
    def num_prefix_tokens(self) -> int:
        return self.trunk.num_prefix_tokens

    def pos_embed_source(self) -> Optional[Tuple[torch.Tensor, int, Grid]]:
        t = self.trunk
        if t.pos_embed is None:
            return None
        n_prefix = 0 if t.no_embed_class else t.num_prefix_tokens
        return t.pos_embed, n_prefix, tuple(t.patch_embed.grid_size)

    def embed_tokens(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        t = self.trunk
        # the conv of timm's PatchEmbed, without its fixed-size check
        x = t.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = t.patch_embed.norm(x)
        prefix = [
            tok.expand(x.shape[0], -1, -1)
            for tok in (t.cls_token, t.reg_token) if tok is not None
        ]
        pos = self.get_pos_embed(grid)
        if pos is not None and t.no_embed_class:
            x = x + pos.to(x.dtype)
        x = torch.cat(prefix + [x], dim=1) if prefix else x
        if pos is not None and not t.no_embed_class:
            x = x + pos.to(x.dtype)
        x = t.pos_drop(x)
        x = t.patch_drop(x)
        return t.norm_pre(x)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk.norm(x)

    def unused_modules(self) -> List[nn.Module]:
        # timm's pooling / classifier head (e.g. SigLIP's attention pool)
        t = self.trunk
        return [
            m for m in (getattr(t, 'attn_pool', None), t.fc_norm, t.head)
            if m is not None
        ]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual.head(x)

    def final_norm_modules(self) -> List[nn.Module]:
        return [self.trunk.norm]

    def proj_modules(self) -> List[nn.Module]:
        return [self.visual.head]

    def convert_pretrained(
            self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return visual_state_dict(state)


def _linears(head: nn.Module) -> List[nn.Linear]:
    return [m for m in head.modules() if isinstance(m, nn.Linear)]


def _out_features(head: nn.Module, default: int) -> int:
    linears = _linears(head)
    return linears[-1].out_features if linears else default
