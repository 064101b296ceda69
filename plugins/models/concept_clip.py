"""ConceptCLIP (medical concept-enhanced CLIP), built offline.

The layout is upstream's (``JerrryNie/ConceptCLIP``,
``pre_training/src/open_clip``: an open_clip ``CustomTextCLIP`` built with
the concept heads), so the released ``model.safetensors`` loads key for key:

* ``visual``: open_clip ``TimmModel`` around timm
  ``vit_so400m_patch14_siglip_384`` (patch 14, 384 px, 27 x 27 = 729 tokens,
  width 1152, no class token, attention-pool head ``trunk.attn_pool``, no
  extra projection);
* ``text``: open_clip ``HFTextEncoder`` around PubMedBERT (768 wide, no BERT
  pooler), ``mean_pooler`` (masked mean of the last hidden states),
  ``text.proj`` a plain bias-free ``Linear(768, 1152)``
  (``hf_proj_type: linear``), context length 77;
* ``image_proj``: bias-free MLP ``Linear(1152, 1152) -> GELU ->
  Linear(1152, 1152)`` on the image *tokens* (keys ``image_proj.0.weight``,
  ``image_proj.2.weight``);
* ``text_proj``: bias-free MLP ``Linear(768, 1152) -> GELU ->
  Linear(1152, 1152)`` on the text tokens (``text_proj.0.weight``,
  ``text_proj.2.weight``);
* scalars ``logit_scale``, ``logit_bias`` (image-text, SigLIP-style) and
  ``concept_logit_scale``, ``concept_logit_bias`` (token-concept).

The published model is a Hugging Face folder whose loader executes remote
code; here the architecture is built from the shipped open_clip configs
(``model_configs/ConceptCLIP-*.json``), the folder's ``config.json`` is
checked against it where present, and the safetensors are read as data
(:func:`load_concept_clip_weights`).

Scales are stored in log space like open_clip's (``logit_scale.exp()`` is
the multiplier); :meth:`ConceptCLIP.forward` returns them exponentiated, as
the HF model's output dict does.
"""
import logging
import math
import os
from contextlib import nullcontext
from pathlib import Path
from typing import (Callable, Dict, Iterable, Mapping, Optional, Sequence,
                    Tuple, Union)

import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.hf_model import HFTextEncoder
from open_clip.timm_model import TimmModel
from timm.models import build_model_with_cfg, register_model
from timm.models.vision_transformer import VisionTransformer as TimmViT

from plugins.utils import check_state_dict

from .open_clip_factory import (CONCEPT_SECTION, build_preprocess,
                                build_tokenizer, create_model,
                                get_model_config, register_model_configs)
from .concept_clip_weights import (  # noqa: F401 (re-exported)
    CONCEPT_CLIP_WEIGHT_FILE_NAMES, config_differences,
    convert_concept_clip_state_dict, read_concept_clip_weights,
    read_folder_config)
from .biomedclip import tiny_vocab_tokenizer
from .normalization import SIGLIP_MEAN, SIGLIP_STD, resize_and_normalize
from .weights import find_weights_file, folder_of

__all__ = [
    'CONCEPT_CLIP_MODEL_NAME', 'CONCEPT_CLIP_TINY_MODEL_NAME',
    'CONCEPT_CLIP_MEAN', 'CONCEPT_CLIP_STD', 'CONCEPT_CLIP_WEIGHT_FILE_NAMES',
    'ConceptCLIP', 'build_concept_clip',
    'convert_concept_clip_state_dict', 'load_concept_clip_weights',
    'read_concept_clip_weights', 'resolve_config_name', 'CONFIG_ALIASES',
    'concept_mlp', 'check_folder_config', 'read_folder_config'
]

logger = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]

#: Shipped config of the released model (SigLIP so400m/14 at 384 +
#: PubMedBERT, joint width 1152).
CONCEPT_CLIP_MODEL_NAME = 'ConceptCLIP-SO400M-14-384'
#: Same classes, tiny sizes (width 64, 4 blocks, patch 14, 112 px input,
#: 2-layer BERT) for tests and demos.
CONCEPT_CLIP_TINY_MODEL_NAME = 'ConceptCLIP-Tiny-test'
#: ConceptCLIP's image statistics (RGB, [0, 1] scale): SigLIP's.
CONCEPT_CLIP_MEAN, CONCEPT_CLIP_STD = SIGLIP_MEAN, SIGLIP_STD


#: timm name of ConceptCLIP's test trunk (used by ``ConceptCLIP-Tiny-test``).
CONCEPT_CLIP_TINY_TIMM_NAME = 'vit_conceptclip_test_patch14_112'


@register_model
def vit_conceptclip_test_patch14_112(pretrained: bool = False,
                                     **kwargs) -> TimmViT:
    """SigLIP-style timm ViT at test size: the so400m layout (patch 14, no
    class token, attention-pool head, mlp ratio 3.7362) at width 64, 4
    blocks, 2 heads, 112 px (8 x 8 patches).  Random weights only."""
    if pretrained:
        raise ValueError(
            f'{CONCEPT_CLIP_TINY_TIMM_NAME} has no pretrained weights')
    if kwargs.get('pretrained_cfg') is None:
        kwargs['pretrained_cfg'] = dict(
            architecture=CONCEPT_CLIP_TINY_TIMM_NAME,
            input_size=(3, 112, 112),
            interpolation='bicubic',
            mean=CONCEPT_CLIP_MEAN,  # SigLIP's
            std=CONCEPT_CLIP_STD,
            num_classes=0)
    model_args = dict(
        img_size=112,
        patch_size=14,
        embed_dim=64,
        depth=4,
        num_heads=2,
        mlp_ratio=3.7362,
        class_token=False,
        global_pool='map')
    return build_model_with_cfg(TimmViT, CONCEPT_CLIP_TINY_TIMM_NAME, False,
                                **dict(model_args, **kwargs))


#: Shown when a checkpoint does not match.
KEY_RULES_HINT = (
    'the file may use other module names than this build of ConceptCLIP; '
    'pass key_rules=[(regex, replacement), ...] to rename them (e.g. '
    "[(r'^vision_model\\.', 'visual.trunk.')]) and compare with "
    'ConceptCLIP(...).state_dict().keys()')

#: Short names accepted for the shipped configs.
CONFIG_ALIASES = {'ConceptCLIP': CONCEPT_CLIP_MODEL_NAME}


def resolve_config_name(config: Union[str, os.PathLike]) -> str:
    """A model config name for ``config``: a registered name as is (or an
    alias of :data:`CONFIG_ALIASES`, e.g. ``'ConceptCLIP'``), or a JSON file
    (open_clip config format) registered under its stem."""
    register_model_configs()
    if str(config) in CONFIG_ALIASES:
        return CONFIG_ALIASES[str(config)]
    path = Path(config)
    if path.suffix == '.json' and path.is_file():
        open_clip.add_model_config(path)
        return path.stem
    return str(config)


def concept_mlp(in_features: int, out_features: int) -> nn.Sequential:
    """ConceptCLIP's token head: bias-free ``Linear(in, out) -> GELU ->
    Linear(out, out)`` (state-dict keys ``0.weight``, ``2.weight``)."""
    return nn.Sequential(
        nn.Linear(in_features, out_features, bias=False), nn.GELU(),
        nn.Linear(out_features, out_features, bias=False))


class ConceptCLIP(nn.Module):
    """ConceptCLIP image-text model (host-free), in upstream's layout.

    Attributes:
        visual (open_clip.timm_model.TimmModel): ``trunk`` = timm SigLIP
            ViT, ``head`` = identity (pooling by the trunk's ``attn_pool``).
        text (open_clip.hf_model.HFTextEncoder): BERT (PubMedBERT), masked
            mean pooling of the last hidden state, ``proj`` a bias-free
            linear map to the joint width.
        image_proj (nn.Sequential): image tokens -> joint width,
            ``Linear(width, D) -> GELU -> Linear(D, D)``, no biases.
        text_proj (nn.Sequential): text tokens -> joint width,
            ``Linear(hidden, D) -> GELU -> Linear(D, D)``, no biases.
        logit_scale, logit_bias, concept_logit_scale, concept_logit_bias
            (nn.Parameter): 0-dim scalars; scales in log space.

    Args:
        model_name (str): config name (:data:`CONCEPT_CLIP_MODEL_NAME`,
            :data:`CONCEPT_CLIP_TINY_MODEL_NAME`) or a JSON config path.
        vision_only (bool): build a tiny stub text tower (for image-only
            users such as the backbone). Default: False.
        device (str): ``'cpu'``, ``'cuda'``, or ``'meta'`` (no weights
            allocated; layout inspection). Default: ``'cpu'``.
        init_concept_logit_scale (float, optional): Default: the config's
            ``concept_cfg.init_logit_scale``, else its ``init_logit_scale``
            (open_clip's ``log(1 / 0.07)``), as upstream initialises both
            scales alike.
        init_concept_logit_bias (float, optional): Default: the config's
            ``concept_cfg.init_logit_bias``, else its ``init_logit_bias``
            (-10).

    Example:
        >>> import torch
        >>> from plugins.models.concept_clip import ConceptCLIP
        >>> model = ConceptCLIP('ConceptCLIP-Tiny-test').eval()
        >>> pixels = torch.rand(2, 3, 112, 112)
        >>> img_cls, img_tokens = model.encode_image(pixels)
        >>> img_cls.shape, img_tokens.shape
        (torch.Size([2, 64]), torch.Size([2, 64, 64]))
        >>> model.image_proj(img_tokens).shape   # image_token_features
        torch.Size([2, 64, 64])
    """

    def __init__(self,
                 model_name: str = CONCEPT_CLIP_MODEL_NAME,
                 vision_only: bool = False,
                 device: str = 'cpu',
                 init_concept_logit_scale: Optional[float] = None,
                 init_concept_logit_bias: Optional[float] = None):
        super().__init__()
        self.model_name = resolve_config_name(model_name)
        cfg = get_model_config(self.model_name)
        clip = create_model(
            self.model_name, device=device, vision_only=vision_only)
        visual = clip.visual
        if not (isinstance(visual, TimmModel)
                and isinstance(visual.trunk, TimmViT)):
            raise TypeError(
                f"ConceptCLIP needs a timm ViT image tower; '{model_name}' "
                f'has {type(visual).__name__}')
        if not isinstance(clip.text, HFTextEncoder):
            raise TypeError(
                f"ConceptCLIP needs a BERT text tower (hf_model_name); "
                f"'{model_name}' has {type(clip.text).__name__}")
        self.embed_dim = int(cfg['embed_dim'])
        self.vision_only = bool(vision_only)
        self.visual = visual
        self.text = clip.text
        self.context_length = int(cfg['text_cfg'].get('context_length', 77))
        self.logit_scale = clip.logit_scale
        self.logit_bias = clip.logit_bias
        init_scale = float(cfg.get('init_logit_scale', math.log(1 / 0.07)))
        init_bias = float(cfg.get('init_logit_bias', -10.0))
        # the concept heads' section (what the builder dispatches on);
        # upstream initialises both scales alike, so they default to the
        # image-text ones
        concept_cfg = cfg.get(CONCEPT_SECTION, {})
        proj_type = concept_cfg.get('proj_type', 'mlp')
        if proj_type != 'mlp':
            raise ValueError(
                f"'{self.model_name}': {CONCEPT_SECTION}.proj_type "
                f"'{proj_type}' is not built here (only 'mlp', "
                'see concept_mlp)')
        if init_concept_logit_scale is None:
            init_concept_logit_scale = concept_cfg.get(
                'init_logit_scale', init_scale)
        if init_concept_logit_bias is None:
            init_concept_logit_bias = concept_cfg.get(
                'init_logit_bias', init_bias)
        with torch.device('meta') if str(device) == 'meta' else nullcontext():
            if self.logit_bias is None:  # configs without init_logit_bias
                self.logit_bias = nn.Parameter(torch.full((), init_bias))
            self.image_proj = concept_mlp(visual.trunk.num_features,
                                          self.embed_dim)
            self.text_proj = concept_mlp(self.text.config.hidden_size,
                                         self.embed_dim)
            self.concept_logit_scale = nn.Parameter(
                torch.full((), float(init_concept_logit_scale)))
            self.concept_logit_bias = nn.Parameter(
                torch.full((), float(init_concept_logit_bias)))
        if str(device) not in ('cpu', 'meta'):
            self.to(device)
        # ConceptCLIP was trained on squashed (not cropped) 384 px images
        # with SigLIP statistics; open_clip's default would be OpenAI's.
        visual.preprocess_cfg = dict(
            getattr(visual, 'preprocess_cfg', None) or {},
            size=tuple(visual.image_size),
            mean=CONCEPT_CLIP_MEAN,
            std=CONCEPT_CLIP_STD,
            interpolation='bicubic',
            resize_mode='squash')

    # ------------------------------------------------------------------
    @property
    def trunk(self) -> TimmViT:
        return self.visual.trunk

    @property
    def image_size(self) -> Tuple[int, int]:
        return tuple(self.visual.image_size)

    @property
    def mean(self) -> Tuple[float, float, float]:
        return tuple(self.visual.preprocess_cfg['mean'])

    @property
    def std(self) -> Tuple[float, float, float]:
        return tuple(self.visual.preprocess_cfg['std'])

    def encode_image(
            self,
            pixel_values: torch.Tensor,
            normalize: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """Encode normalised images.

        Args:
            pixel_values (Tensor): ``(B, 3, 384, 384)`` (the config's size),
                normalised with :attr:`mean`/:attr:`std` (see
                :meth:`preprocess_tensor`).
            normalize (bool): L2-normalise the pooled embedding.
                Default: True.

        Returns:
            tuple: ``img_cls (B, embed_dim)`` -- the attention-pooled image
            embedding (SigLIP has no class token; this is ConceptCLIP's
            ``image_features``) -- and ``img_tokens (B, 729, width)``, the
            trunk's patch tokens after its final norm (not normalised;
            ``image_proj(img_tokens)`` are the ``image_token_features``).
        """
        tokens = self.trunk.forward_features(pixel_values)
        pooled = self.visual.head(self.trunk.forward_head(tokens))
        if normalize:
            pooled = F.normalize(pooled, dim=-1)
        return pooled, tokens

    def encode_text(
        self,
        input_ids: torch.Tensor,
        normalize: bool = True,
        attention_mask: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Encode token ids.

        Args:
            input_ids (Tensor): ``(N, L)`` BERT ids (``[CLS] ... [SEP]
                [PAD]...``), e.g. from the tokenizer of
                :func:`build_concept_clip` (``L`` = 77, the context length;
                padding does not change the result).
            normalize (bool): L2-normalise the pooled embedding.
                Default: True.
            attention_mask (Tensor, optional): ``(N, L)``; default: ids
                different from the pad id.

        Returns:
            tuple: ``txt_cls (N, embed_dim)`` (``text.proj`` of the
            pooled last hidden states: open_clip's ``mean_pooler``, the
            mean over the positions where ``attention_mask`` is 1) and
            ``txt_tokens (N, L, hidden)`` (all last hidden states, 768 for
            PubMedBERT; ``text_proj`` maps them to the joint width).
        """
        text = self.text
        if attention_mask is None:
            attention_mask = (input_ids != text.config.pad_token_id).long()
        out = text.transformer(
            input_ids=input_ids, attention_mask=attention_mask)
        pooled = text.proj(text.pooler(out, attention_mask))
        if normalize:
            pooled = F.normalize(pooled, dim=-1)
        return pooled, out.last_hidden_state

    def forward(
        self,
        pixel_values: Optional[torch.Tensor] = None,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None
    ) -> Dict[str, torch.Tensor]:
        """The HF model's output dict.

        Returns:
            dict: ``image_features (B, D)``, ``image_token_features
            (B, 729, D)`` (with images), ``text_features (N, D)``,
            ``text_token_features (N, L, D)`` (with ids), and the
            exponentiated ``logit_scale``, ``logit_bias``,
            ``concept_logit_scale``, ``concept_logit_bias`` (0-dim), so
            ``logit_scale * image_features @ text_features.T + logit_bias``
            are the (sigmoid) logits.
        """
        out = {}
        if pixel_values is not None:
            img, tokens = self.encode_image(pixel_values)
            out['image_features'] = img
            out['image_token_features'] = self.image_proj(tokens)
        if input_ids is not None:
            txt, tokens = self.encode_text(
                input_ids, attention_mask=attention_mask)
            out['text_features'] = txt
            out['text_token_features'] = self.text_proj(tokens)
        out.update(
            logit_scale=self.logit_scale.exp(),
            logit_bias=self.logit_bias,
            concept_logit_scale=self.concept_logit_scale.exp(),
            concept_logit_bias=self.concept_logit_bias)
        return out

    def logits(self,
               image_features: torch.Tensor,
               text_features: torch.Tensor,
               concept: bool = False) -> torch.Tensor:
        """SigLIP-style logits ``scale.exp() * img @ txt.T + bias``
        (``sigmoid`` gives per-pair probabilities).

        Args:
            image_features (Tensor): ``(B, D)`` normalised.
            text_features (Tensor): ``(N, D)`` normalised.
            concept (bool): use the concept scale/bias. Default: False.

        Returns:
            Tensor: ``(B, N)``.
        """
        scale, bias = ((self.concept_logit_scale,
                        self.concept_logit_bias) if concept else
                       (self.logit_scale, self.logit_bias))
        return scale.exp() * image_features @ text_features.t() + bias

    def preprocess_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """Images already in ``[0, 1]`` -> model input (no rescaling).

        Resizes ``(B, 3, H, W)`` (or ``(3, H, W)``) to the model's size the
        way it was trained (bicubic, squashed, anti-aliased) and normalises
        with :attr:`mean`/:attr:`std`.
        """
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError('ConceptCLIP.preprocess_tensor expects images '
                             f'(B, 3, H, W) in [0, 1], got '
                             f'{tuple(images.shape)}')
        return resize_and_normalize(images.float(), self.image_size,
                                    self.mean, self.std, clamp=True)


# ----------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------
def check_folder_config(path: Union[str, os.PathLike],
                        config: Union[str, os.PathLike]) -> Optional[dict]:
    """Check a folder's ``config.json`` against the config ConceptCLIP is
    built from.

    Compares the fields of
    :data:`plugins.models.concept_clip_weights.ARCHITECTURE_FIELDS` that the
    folder's config states (image size counts as ``(H, W)``).

    Args:
        path: the HF folder, or a weights file inside it.
        config: the model config name or JSON (as for :class:`ConceptCLIP`).

    Returns:
        dict or None: what :func:`read_folder_config` found.

    Raises:
        ValueError: a stated field differs, naming each field with both
            values.
    """
    folder_cfg = read_folder_config(path)
    if not folder_cfg:
        if folder_cfg is not None:
            logger.info(f'{folder_of(path)}/config.json holds no open_clip '
                        'model fields; the architecture comes from config '
                        f"'{config}'")
        return folder_cfg
    name = resolve_config_name(config)
    diffs = config_differences(folder_cfg, get_model_config(name))
    if diffs:
        raise ValueError(
            f'{folder_of(path)}/config.json describes another model than '
            f"config '{name}': " + '; '.join(diffs) + '. Pass config=<an '
            'open_clip JSON with those values> (see '
            'plugins/models/model_configs/ConceptCLIP-SO400M-14-384.json).')
    return folder_cfg


def load_concept_clip_weights(
        model: nn.Module,
        source: Union[str, os.PathLike, Mapping[str, torch.Tensor]],
        strict: bool = True,
        key_rules: Iterable[Tuple[str, str]] = (),
        keep_prefixes: Optional[Sequence[str]] = None) -> StateDict:
    """Load ConceptCLIP weights into ``model``, checking every key.

    Args:
        model: a :class:`ConceptCLIP` (or a module holding a part of it
            under the same names, e.g. ``visual.`` and ``image_proj.``).
        source: HF folder, weights file, or a loaded state dict.
        strict (bool): raise
            :class:`plugins.utils.StateDictMismatchError` (missing,
            unexpected and shape-mismatched keys) unless everything
            matches. Default: True.
        key_rules: extra ``(regex, replacement)`` renames.
        keep_prefixes (Sequence[str], optional): keep only checkpoint keys
            under these prefixes (e.g. ``('visual.', 'image_proj.')`` for
            an image-only module); default: all.

    Returns:
        dict: the converted state dict that was loaded.

    Raises:
        FileNotFoundError: ``source`` does not exist or holds no weights
            file (naming the path and the names looked for).
        CheckpointError: an unreadable weights file or a malformed
            ``model.safetensors.index.json`` (naming the file).
        ValueError: the folder's ``config.json`` describes another
            architecture than ``model.model_name`` (see
            :func:`check_folder_config`).
    """
    name = None
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        file = find_weights_file(source, CONCEPT_CLIP_WEIGHT_FILE_NAMES)
        name = str(file)
        if getattr(model, 'model_name', None):
            check_folder_config(file, model.model_name)
        state = read_concept_clip_weights(file)
    expected = model.state_dict()
    state = convert_concept_clip_state_dict(state, expected, key_rules)
    if keep_prefixes is not None:
        state = {
            k: v
            for k, v in state.items() if k.startswith(tuple(keep_prefixes))
        }
    if strict:
        check_state_dict(
            expected,
            state,
            source=name,
            target=type(model).__name__,
            hint=KEY_RULES_HINT)
    model.load_state_dict(state, strict=strict)
    logger.info(f'{type(model).__name__}: loaded {len(state)} tensors from '
                f'{name or "a state dict"}')
    return state


# ----------------------------------------------------------------------
# Builder
# ----------------------------------------------------------------------
def build_concept_clip(
    path: Optional[Union[str, os.PathLike]] = None,
    *,
    config: Union[str, os.PathLike] = CONCEPT_CLIP_MODEL_NAME,
    tokenizer: Optional[Union[str, os.PathLike]] = None,
    device: str = 'cpu',
    strict: bool = True,
    key_rules: Iterable[Tuple[str, str]] = ()
) -> Tuple[ConceptCLIP, Callable, Optional[Callable]]:
    """Build ConceptCLIP offline and load a local HF folder's weights.

    No remote code runs: the architecture comes from ``config`` (checked
    against the folder's ``config.json`` where it states open_clip model
    fields), the folder's safetensors (or ``pytorch_model.bin``) are read as
    data and loaded key by key (upstream's names; a wrapper prefix such as
    ``model.`` on every key is stripped).

    Args:
        path (str, optional): the downloaded HF folder (``model.safetensors``
            or a sharded ``model.safetensors.index.json``; ``vocab.txt``),
            or a weights file. None: random weights.
        config (str): :data:`CONCEPT_CLIP_MODEL_NAME` (default; alias
            ``'ConceptCLIP'``),
            :data:`CONCEPT_CLIP_TINY_MODEL_NAME`, another registered name,
            or an open_clip-format JSON file.
        tokenizer (str, optional): ``vocab.txt`` or a folder with one;
            default: the one in ``path``'s folder, else the shipped text
            config folder, else the tiny test vocabulary (with a warning).
        device (str): Default: ``'cpu'``.
        strict (bool): every key must match. Default: True.
        key_rules: extra ``(regex, replacement)`` key renames, for exports
            that name modules differently.

    Raises:
        FileNotFoundError: ``path`` does not exist or holds no weights file,
            before anything is built.
        ValueError: the folder's ``config.json`` contradicts ``config``.
        plugins.utils.StateDictMismatchError: keys or shapes differ.

    Returns:
        tuple: ``(model, preprocess, tokenizer)`` -- the
        :class:`ConceptCLIP` in eval mode; ``preprocess`` the PIL transform
        (squash-resize to 384, bicubic, mean/std 0.5); ``tokenizer`` maps
        texts to ``LongTensor (N, context_length)`` (None if no vocabulary
        could be found).  :class:`plugins.scoring.RegionScorer` takes it as
        is (the first item of its encoders' tuples).
    """
    if path is not None:
        # fail before the (large) model is built
        path = find_weights_file(path, CONCEPT_CLIP_WEIGHT_FILE_NAMES)
        check_folder_config(path, config)
    model = ConceptCLIP(config)
    if path is not None:
        load_concept_clip_weights(
            model, path, strict=strict, key_rules=key_rules)
        if tokenizer is None and (path.parent / 'vocab.txt').is_file():
            tokenizer = path.parent
    model.to(device).eval()
    tok = build_tokenizer(model.model_name, tokenizer)
    if tok is None:
        tok = tiny_vocab_tokenizer(model.model_name, 'ConceptCLIP')
    return model, build_preprocess(model), tok
