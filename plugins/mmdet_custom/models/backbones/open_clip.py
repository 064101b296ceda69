"""open_clip ViT image towers (OpenAI CLIP, LAION OpenCLIP) as backbones."""
from typing import Dict, Optional, Sequence

import torch
from mmdet.registry import MODELS
from open_clip.transformer import VisionTransformer

from plugins.models import activation_fix, create_model
from plugins.models.normalization import preprocess_cfg
from plugins.models.vit_tower import OpenCLIPViTTower
from plugins.models.weights import QUICK_GELU, strip_openai_metadata
from plugins.utils import add_prefix

from .base import CLIPBackboneBase


#: Top-level keys of CLIP-family checkpoints that are not the image tower:
#: open_clip/OpenAI ``CLIP`` text tower, ``CustomTextCLIP`` (``text.``), CoCa
#: decoder, and the contrastive temperature/bias.
NON_VISUAL_PREFIXES = ('text.', 'transformer.', 'token_embedding.',
                       'positional_embedding', 'ln_final.', 'text_projection',
                       'logit_scale', 'logit_bias', 'attn_mask',
                       'text_decoder.')


def visual_state_dict(state: Dict[str, torch.Tensor],
                      prefix: str = 'visual.') -> Dict[str, torch.Tensor]:
    """The image-tower part of a CLIP checkpoint, keys under ``prefix``.

    A full CLIP checkpoint (open_clip or OpenAI layout) keeps its
    ``visual.*`` entries and drops the known non-visual ones
    (:data:`NON_VISUAL_PREFIXES`); any other key is kept so the strict
    check reports it.  A checkpoint with no ``visual.*`` key is taken as a
    bare image-tower state dict and prefixed.
    """
    state = strip_openai_metadata(state)
    if any(k.startswith(prefix) for k in state):
        return {
            k: v
            for k, v in state.items() if not k.startswith(NON_VISUAL_PREFIXES)
        }
    return add_prefix(state, prefix)


@MODELS.register_module()
class OpenCLIPBackbone(CLIPBackboneBase):
    """Image tower of an open_clip ViT as a single-scale backbone.

    Built through open_clip (``open_clip.create_model`` with the shipped or
    built-in config, offline), keeping only ``model.visual`` (a
    ``VisionTransformer``); the text tower is dropped.  Tokens follow the
    upstream path (``conv1``, class token, position embedding, ``ln_pre``,
    ``transformer.resblocks``, ``ln_post``, ``proj``).

    Output: ``(B, C, ceil(H/p), ceil(W/p))`` per ``out_indices`` entry,
    ``C`` = width (768 for ViT-B, 1024 for ViT-L) or the joint-space dim
    with ``with_proj=True`` (512 / 768); ``p`` = 16 (ViT-B-16), 32
    (ViT-B-32), 14 (ViT-L-14).

    The activation is part of the architecture, as in open_clip: OpenAI's
    weights were trained with QuickGELU and need ``model_name=
    'ViT-B-16-quickgelu'`` (or ``quick_gelu=True``); LAION's open_clip
    releases run GELU (``'ViT-B-16'``).  An OpenAI-layout file loaded into
    a GELU backbone fails, naming the file and the key to set.

    Args:
        model_name (str): open_clip architecture, e.g. ``'ViT-B-16'``,
            ``'ViT-B-32'``, ``'ViT-L-14'``, ``'ViT-B-16-quickgelu'``,
            ``'ViT-Tiny-16-test'``. Default: ``'ViT-B-16'``.
        quick_gelu (bool, optional): override the config's activation
            (QuickGELU for OpenAI's weights). Default: None, the config's.
        pretrained (str, optional): local ``open_clip_model.safetensors``,
            ``open_clip_pytorch_model.bin`` or OpenAI ``.pt`` archive (read
            without executing code), loaded by :meth:`init_weights`.
        pretrained_tag (str, optional): the open_clip release the weights
            are (e.g. ``'laion2b_s34b_b79k'``, ``'laion2b_s32b_b82k'``);
            only picks
            the matching mean/std, nothing is downloaded. Default: the
            statistics all releases of ``model_name`` share (OpenAI CLIP's
            for ViT-B-32/B-16; ViT-L-14's ``laion2b_s32b_b82k`` differs).
        mean (Sequence[float], optional): override the normalisation mean
            (RGB, [0, 1]).
        std (Sequence[float], optional): likewise for the std.
        **kwargs: ``out_indices``, ``frozen``, ``train_last_n_blocks``,
            ``with_proj``, ``with_cp``, ``check_finite``,
            ``pos_embed_interp`` (default ``'open_clip'``: bicubic,
            anti-aliased, as open_clip's ``resize_pos_embed``), ``init_cfg``
            of :class:`CLIPBackboneBase`.

    Example:
        >>> import torch
        >>> from plugins.mmdet_custom.models.backbones import OpenCLIPBackbone
        >>> m = OpenCLIPBackbone('ViT-Tiny-16-test').eval()
        >>> [tuple(o.shape) for o in m(torch.rand(2, 3, 320, 480))]
        [(2, 64, 20, 30)]
    """

    default_pos_embed_interp = 'open_clip'
    activation_is_configurable = True

    def __init__(self,
                 model_name: str = 'ViT-B-16',
                 pretrained: Optional[str] = None,
                 pretrained_tag: Optional[str] = None,
                 mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None,
                 quick_gelu: Optional[bool] = None,
                 **kwargs):
        clip = create_model(
            model_name,
            pretrained_tag=pretrained_tag,
            vision_only=True,
            quick_gelu=quick_gelu)
        visual = clip.visual
        if not isinstance(visual, VisionTransformer):
            raise TypeError(
                f"OpenCLIPBackbone needs an open_clip ViT; '{model_name}' has "
                f'a {type(visual).__name__} image tower (timm trunks: use '
                'BiomedCLIPBackbone)')
        if visual.attn_pool is not None:
            raise ValueError(f"'{model_name}' pools with an attentional "
                             'pooler; its tokens are not a feature map')
        if not visual.transformer.batch_first:
            raise ValueError(f"'{model_name}': sequence-first transformers "
                             'are not supported')
        stats = preprocess_cfg(clip)
        del clip  # the text tower is not kept
        # a plain attribute may precede nn.Module.__init__
        self.model_name = model_name
        self.quick_gelu = quick_gelu
        super().__init__(
            self.make_tower(visual),
            mean=mean or stats['mean'],
            std=std or stats['std'],
            pretrained=pretrained,
            **kwargs)

    def make_tower(self, visual: VisionTransformer) -> OpenCLIPViTTower:
        """The tower module over ``visual`` (called before
        ``nn.Module.__init__``: read only plain attributes)."""
        return OpenCLIPViTTower(visual)

    def activation_fix(self, activation: str) -> str:
        """``model.backbone.model_name='ViT-B-16-quickgelu'`` or
        ``model.backbone.quick_gelu=True`` (for error messages)."""
        return activation_fix(
            self.model_name,
            activation == QUICK_GELU,
            name_key='model.backbone.model_name',
            flag_key='model.backbone.quick_gelu')

    def convert_pretrained(
            self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return visual_state_dict(state)
