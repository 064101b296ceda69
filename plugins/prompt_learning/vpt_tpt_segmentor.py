"""A frozen CLIP with learned visual and text prompts, as a segmentation model.

The user's model (user notes, section 1): BiomedCLIP frozen, VPT-Deep prompts
in the image tower, CoOp context in the text tower, and the cosine similarity
between every projected patch token and every class's text feature as a
semantic map.
"""
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from plugins import models
from plugins.models.vit_tower import (TimmViTTower, attach_tower,
                                      build_vit_tower)
from .preprocess import clip_preprocess_cfg, preprocess_tensor_images
from .random_features import fan_in_init_
from .text_prompt_learner import TextPromptLearner
from .text_towers import build_text_tower, start_token_id
from .visual_prompt_learner import VisualPromptLearner

#: BiomedCLIP: timm ViT-B/16 + PubMedBERT, 512-d joint space.
DEFAULT_MODEL_NAME = models.BIOMEDCLIP_MODEL_NAME

#: Keys of a prompt file written by :meth:`VPTTPTSegmentor.save_all_prompts`.
VISUAL_PROMPTS_KEY = 'visual_prompts'
TEXT_CONTEXT_KEY = 'text_context'


def build_clip(model_name: str = DEFAULT_MODEL_NAME,
               pretrained: Optional[str] = None) -> Tuple[nn.Module, object]:
    """``(model, tokenizer)`` from :mod:`plugins.models`, offline.

    :func:`plugins.models.build_clip_model` chooses the builder from the
    config's content; BERT text towers (BiomedCLIP) take their tokenizer
    from the weights folder's ``vocab.txt``.
    """
    model, _, tokenizer = models.build_clip_model(model_name, pretrained)
    if tokenizer is None:
        raise ValueError(f'{model_name}: no offline tokenizer; pass '
                         'tokenizer= or a weights folder with vocab.txt')
    return model, tokenizer


class VPTTPTSegmentor(nn.Module):
    """BiomedCLIP (or any open_clip ViT model) + VPT-Deep + CoOp, segmenting.

    Every CLIP weight is frozen (and kept in eval mode); only
    ``visual_prompt_learner.prompts`` ``(layers, num_visual_prompts, width)``
    and ``text_prompt_learner.context`` ``(num_text_prompts, text_width)``
    train.  At the defaults (BiomedCLIP, 4 + 4 prompts) that is
    36,864 + 3,072 = 39,936 parameters.

    ``model(images, class_names)`` preprocesses the images
    (:func:`preprocess_tensor_images`: any of [0, 1], [-1, 1], [0, 255],
    1 or 3 channels, any size -> the tower's input size and statistics), runs
    the prompted image tower, projects every patch token into the joint space,
    encodes one prompt per class and returns their cosine similarities.

    Args:
        clip_model (nn.Module, optional): an open_clip model to prompt
            (``CustomTextCLIP`` with a BERT ``HFTextEncoder`` such as
            BiomedCLIP, or ``CLIP`` with open_clip's text transformer such as
            ``ViT-B-16``). Built from ``model_name`` when None.
        tokenizer (callable, optional): ``tokenizer(list[str]) -> (K, L)``
            ids; required with ``clip_model``.
        model_name (str): open_clip config to build when ``clip_model`` is
            None: BiomedCLIP (default), ``'BiomedCLIP-Tiny-test'``,
            ``'ViT-B-16'`` ... (see :func:`build_clip`).
        pretrained (str, optional): local weights for ``model_name`` (the
            downloaded BiomedCLIP folder, ``open_clip_pytorch_model.bin``,
            ``.safetensors``); random weights when None.
        random_init (str, optional): ``'fan_in'`` re-draws the random CLIP
            weights so frozen features carry signal (see
            :func:`~plugins.prompt_learning.random_features.fan_in_init_`);
            for demos/tests without weights. Defaults to None (keep
            open_clip's own initialisation).
        num_visual_prompts (int): prompts per block. Defaults to 4.
        num_text_prompts (int): CoOp context vectors. Defaults to 4.
        deep_visual_prompts (bool): VPT-Deep (True) or VPT-Shallow.
        visual_prompt_dropout (float): dropout on visual prompts.
        text_context_init_std (float): init std of the context vectors.
        preprocess_cfg (dict, optional): ``size``/``mean``/``std``/
            ``interpolation`` overrides; defaults come from the model.

    Shapes:
        images: ``(B, C, H, W)`` with ``C`` in {1, 3}, or a list of images.
        returns a dict with

        - ``H_semantic_maps``: ``(B, K, N)`` cosine similarity of each patch
          with each class (``N = h * w`` patches, 196 at 224 with patch 16)
        - ``patch_features``: ``(B, N, D)`` projected patch tokens (D = 512)
        - ``text_features``: ``(K, D)`` projected class prompts
        - ``grid_size``: ``(h, w)`` patch grid of the maps

    Example:
        >>> model = VPTTPTSegmentor()  # BiomedCLIP architecture, random
        >>> out = model(torch.rand(2, 3, 224, 224), ['prostate', 'background'])
        >>> out['H_semantic_maps'].shape, out['patch_features'].shape
        (torch.Size([2, 2, 196]), torch.Size([2, 196, 512]))
    """

    def __init__(self,
                 clip_model: Optional[nn.Module] = None,
                 tokenizer=None,
                 model_name: str = DEFAULT_MODEL_NAME,
                 pretrained: Optional[str] = None,
                 random_init: Optional[str] = None,
                 num_visual_prompts: int = 4,
                 num_text_prompts: int = 4,
                 deep_visual_prompts: bool = True,
                 visual_prompt_dropout: float = 0.0,
                 text_context_init_std: float = 0.02,
                 preprocess_cfg: Optional[Dict] = None) -> None:
        super().__init__()
        if random_init not in (None, 'fan_in'):
            raise ValueError(f"random_init {random_init!r}: expected None or "
                             "'fan_in'")
        if random_init is not None and pretrained is not None:
            raise ValueError('random_init re-draws the CLIP weights; it '
                             f'cannot be combined with pretrained '
                             f'({pretrained})')
        if clip_model is None:
            clip_model, tokenizer = build_clip(model_name, pretrained)
        elif pretrained is not None:
            raise ValueError('pass either clip_model or pretrained, not both '
                             '(load weights into clip_model yourself)')
        if tokenizer is None:
            raise ValueError('clip_model needs its tokenizer')
        if random_init == 'fan_in':
            fan_in_init_(clip_model)
        self.clip_model = clip_model
        self.clip_model.requires_grad_(False)
        self.clip_model.eval()
        self.tokenizer = tokenizer
        self._start_token_id = start_token_id(tokenizer)
        # clip_model registers the image tower (keys clip_model.visual.*)
        attach_tower(self, build_vit_tower(clip_model,
                                           owner=type(self).__name__),
                     'visual_tower')
        if isinstance(self.visual_tower, TimmViTTower) and \
                not self.visual_tower.has_token_projection:
            raise ValueError(
                'timm towers with an attention-pool head have no per-patch '
                'projection; use timm_pool="" or "avg"')
        self.text_tower = build_text_tower(clip_model)
        self.preprocess_cfg = clip_preprocess_cfg(clip_model)
        self.preprocess_cfg.update(preprocess_cfg or {})

        patch_size = self.preprocess_cfg['size'][0] // \
            self.visual_tower.grid_size[0]
        self.visual_prompt_learner = VisualPromptLearner(
            num_layers=len(self.visual_tower.blocks),
            num_prompts=num_visual_prompts,
            width=self.visual_tower.width,
            deep=deep_visual_prompts,
            patch_size=patch_size,
            dropout=visual_prompt_dropout)
        self.text_prompt_learner = TextPromptLearner(
            num_context=num_text_prompts,
            width=self.text_tower.width,
            init_std=text_context_init_std)
        self._token_cache: Dict[Tuple[str, ...], torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        """Where the model's parameters live."""
        return self.visual_prompt_learner.prompts.device

    @property
    def num_visual_prompts(self) -> int:
        return self.visual_prompt_learner.num_prompts

    @property
    def num_text_prompts(self) -> int:
        return self.text_prompt_learner.num_context

    @property
    def logit_scale(self) -> torch.Tensor:
        """CLIP's learned temperature ``exp(logit_scale)`` (a 0-dim tensor)."""
        return self.clip_model.logit_scale.exp()

    def train(self, mode: bool = True) -> 'VPTTPTSegmentor':
        # The frozen CLIP stays in eval mode: no dropout in BERT, and prompts
        # train against the features they will meet at test time.
        super().train(mode)
        self.clip_model.eval()
        return self

    # ------------------------------------------------------------------ text
    def tokenize(self, class_names: Sequence[str]) -> torch.Tensor:
        """Token ids ``(K, L)`` of the class names (cached per name list)."""
        key = tuple(class_names)
        ids = self._token_cache.get(key)
        if ids is None:
            ids = self.tokenizer(list(key))
            self._token_cache[key] = ids
        return ids.to(self.device)

    def encode_text(self, class_names: Sequence[str]) -> torch.Tensor:
        """Projected prompt features ``(K, D)`` of the classes."""
        return self.text_prompt_learner(
            self.tokenize(class_names), self.text_tower,
            start_token_id=self._start_token_id)

    # ----------------------------------------------------------------- image
    def preprocess(self, images: Union[torch.Tensor, List[torch.Tensor]],
                   value_range: Optional[str] = None) -> torch.Tensor:
        """Images of any range/size/channels -> ``(B, 3, h, w)`` pixels.

        ``value_range`` (``'0-1'``, ``'-1-1'``, ``'0-255'``) skips the
        per-image range detection when the caller knows it.
        """
        cfg = self.preprocess_cfg
        pixels = preprocess_tensor_images(
            images, size=cfg['size'], mean=cfg['mean'], std=cfg['std'],
            interpolation=cfg['interpolation'], value_range=value_range,
            device=self.device)
        return pixels.to(self.visual_prompt_learner.prompts.dtype)

    def encode_image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Prompted tower tokens ``(B, P + N, width)`` after the final norm."""
        return self.visual_prompt_learner(pixels, self.visual_tower)

    def encode_patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """Projected patch features ``(B, N, D)`` of preprocessed pixels."""
        tokens = self.encode_image_tokens(pixels)
        patches = tokens[:, self.visual_tower.num_prefix_tokens:]
        return self.visual_tower.project(patches)

    @staticmethod
    def similarity_maps(patch_features: torch.Tensor,
                        text_features: torch.Tensor) -> torch.Tensor:
        """Cosine similarity ``(B, K, N)`` of ``(B, N, D)`` patches and
        ``(K, D)`` class features."""
        return torch.einsum('bnd,kd->bkn',
                            F.normalize(patch_features, dim=-1),
                            F.normalize(text_features, dim=-1))

    def forward(self, images: Union[torch.Tensor, List[torch.Tensor]],
                class_names: Sequence[str],
                value_range: Optional[str] = None) -> Dict[str, torch.Tensor]:
        if len(class_names) == 0:
            raise ValueError('class_names is empty')
        patch_features = self.encode_patches(
            self.preprocess(images, value_range))
        text_features = self.encode_text(class_names)
        maps = self.similarity_maps(patch_features, text_features)
        return dict(
            H_semantic_maps=maps,
            patch_features=patch_features,
            text_features=text_features,
            grid_size=tuple(self.visual_tower.grid_size))

    # --------------------------------------------------------------- prompts
    def prompt_state(self) -> Dict[str, torch.Tensor]:
        """The learned prompts only, under stable file keys."""
        return {
            VISUAL_PROMPTS_KEY: self.visual_prompt_learner.prompts.detach(),
            TEXT_CONTEXT_KEY: self.text_prompt_learner.context.detach(),
        }

    def save_all_prompts(self, path: str) -> None:
        """Write the prompts (nothing of CLIP) to ``path``.

        ``*.safetensors`` is written with safetensors, anything else with
        ``torch.save`` (a plain tensor dict, loadable with
        ``weights_only=True``).
        """
        state = {k: v.cpu().contiguous() for k, v in
                 self.prompt_state().items()}
        if str(path).endswith('.safetensors'):
            from safetensors.torch import save_file
            save_file(state, str(path), metadata={
                'format': 'pt',
                'num_visual_prompts': str(self.num_visual_prompts),
                'num_text_prompts': str(self.num_text_prompts)})
        else:
            torch.save(state, str(path))

    def load_all_prompts(self, path: str) -> None:
        """Restore prompts written by :meth:`save_all_prompts`.

        Raises:
            KeyError: the file lacks a prompt tensor.
            ValueError: the file's prompt shapes differ from this model's
                (e.g. it was trained with other prompt counts).
        """
        from plugins.utils import safe_load

        state = safe_load(str(path))
        own = self.prompt_state()
        missing = [k for k in own if k not in state]
        if missing:
            raise KeyError(f'{osp.basename(str(path))}: missing {missing}; '
                           f'found {sorted(state)}')
        for key, target in own.items():
            if tuple(state[key].shape) != tuple(target.shape):
                raise ValueError(
                    f'{path}: {key} has shape {tuple(state[key].shape)} but '
                    f'this model expects {tuple(target.shape)} '
                    f'(num_visual_prompts={self.num_visual_prompts}, '
                    f'num_text_prompts={self.num_text_prompts}); build the '
                    'model with the prompt counts the file was trained with')
        with torch.no_grad():
            self.visual_prompt_learner.prompts.copy_(state[VISUAL_PROMPTS_KEY])
            self.text_prompt_learner.context.copy_(state[TEXT_CONTEXT_KEY])
