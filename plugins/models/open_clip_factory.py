"""open_clip models built offline from configs shipped with this package.

``plugins/models/model_configs/*.json`` are open_clip model configs (the
same format as open_clip's own ``model_configs``); they are registered with
``open_clip.add_model_config`` when :mod:`plugins.models` is imported, so
``open_clip.create_model(name)`` knows them too.  Text towers built by
transformers (``hf_model_name``) name a folder under ``model_configs/hf/``
holding a ``config.json``; it is resolved to that local path, so nothing is
fetched from a hub.  Weights only ever come from local files.

The activation is part of the architecture, as in open_clip: OpenAI's
weights need QuickGELU, chosen by the config name (``ViT-B-16-quickgelu``)
or ``quick_gelu=True``, and a weights file whose layout says otherwise is
refused (:func:`plugins.models.weights.check_activation`).
"""
import difflib
import logging
import os
from contextlib import contextmanager, nullcontext
from copy import deepcopy
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

import open_clip
import torch
import torch.nn as nn
from open_clip.transform import PreprocessCfg, image_transform_v2

from .tokenizer import LocalBertTokenizer
from .weights import folder_of, load_open_clip_weights

logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / 'model_configs'
HF_CONFIG_DIR = MODEL_CONFIG_DIR / 'hf'

_registered = False

#: Config section of ConceptCLIP's concept heads (``proj_type``: ``'mlp'``;
#: optional ``init_logit_scale``/``init_logit_bias`` of the concept scores).
#: A config carrying it is built as :class:`plugins.models.concept_clip.
#: ConceptCLIP` by :func:`plugins.models.builder.build_clip_model`, whatever
#: its name.
CONCEPT_SECTION = 'concept_cfg'

#: Top-level config sections naming a model built here *around* open_clip's
#: (as open_clip's own ``multimodal_cfg`` names CoCa).  open_clip's model
#: classes take no such argument, so :func:`create_model` hides them while
#: open_clip builds (:func:`_open_clip_view`).
EXTENSION_SECTIONS = (CONCEPT_SECTION, )


def register_model_configs() -> None:
    """Add the shipped configs to open_clip's registry (idempotent)."""
    global _registered
    if not _registered:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


def list_shipped_models() -> List[str]:
    """Names of the model configs this package ships."""
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob('*.json'))


def resolve_hf_model_name(name: str) -> str:
    """Local folder for a text tower's ``hf_model_name``.

    A folder name under ``model_configs/hf/`` or an existing folder path.

    Raises:
        FileNotFoundError: the name is neither (it would need a hub).
    """
    shipped = HF_CONFIG_DIR / name
    if shipped.is_dir():
        return str(shipped)
    if Path(name).is_dir():
        return str(Path(name).resolve())
    raise FileNotFoundError(
        f"text tower config '{name}' is not a local folder; models are built "
        'offline, so hf_model_name must name a folder in '
        f'{HF_CONFIG_DIR} ({sorted(p.name for p in HF_CONFIG_DIR.iterdir())})'
        ' or a path to a folder with a config.json')


def get_model_config(model_name: str) -> dict:
    """The open_clip config of ``model_name`` (a copy), text tower resolved.

    Raises:
        KeyError: unknown name (the message suggests close names).
    """
    register_model_configs()
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        names = open_clip.list_models()
        close = difflib.get_close_matches(model_name, names, n=5)
        raise KeyError(
            f"unknown open_clip model '{model_name}'; close "
            f'names: {close}; shipped here: {list_shipped_models()}')
    cfg = deepcopy(cfg)
    text_cfg = cfg.get('text_cfg', {})
    if text_cfg.get('hf_model_name'):
        text_cfg['hf_model_name'] = resolve_hf_model_name(
            text_cfg['hf_model_name'])
        text_cfg['hf_model_pretrained'] = False
    return cfg


def normalization_stats(
    model_name: str,
    pretrained_tag: Optional[str] = None
) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """``(mean, std)`` (RGB, [0, 1]) the weights of ``model_name`` expect.

    From open_clip's table of pretrained releases: the named
    ``pretrained_tag``'s, else the one all releases of the name share, else
    (releases disagree, e.g. ``ViT-L-14``'s ``laion2b_s32b_b82k``) open_clip's
    default, the OpenAI CLIP statistics, with a log message.
    """
    from open_clip.pretrained import get_pretrained_cfg
    default = PreprocessCfg()
    tags = [pretrained_tag] if pretrained_tag else \
        open_clip.list_pretrained_tags_by_model(model_name)
    stats = {}
    for tag in tags:
        cfg = get_pretrained_cfg(model_name, tag)
        if not cfg and pretrained_tag:
            raise KeyError(
                f"'{model_name}' has no pretrained tag "
                f"'{pretrained_tag}' (known: "
                f'{open_clip.list_pretrained_tags_by_model(model_name)})')
        stats.setdefault((tuple(cfg.get(
            'mean', default.mean)), tuple(cfg.get('std', default.std))),
                         []).append(tag)
    if len(stats) == 1:
        return next(iter(stats))
    if len(stats) > 1:
        logger.info(f'{model_name}: pretrained releases use different '
                    f'normalisation ({list(stats.values())}); using the '
                    'OpenAI statistics unless a pretrained_tag is given')
    return tuple(default.mean), tuple(default.std)


#: Suffix of open_clip's QuickGELU variants of a config (``ViT-B-16``).
QUICK_GELU_SUFFIX = '-quickgelu'


def activation_fix(model_name: str,
                   quick_gelu: bool,
                   name_key: str = 'model_name',
                   flag_key: Optional[str] = 'quick_gelu') -> str:
    """What a user sets so that ``model_name`` runs QuickGELU (or GELU):
    the open_clip config of the other activation when one is registered
    (``ViT-B-16`` <-> ``ViT-B-16-quickgelu``), and/or the flag.

    Args:
        model_name (str): the configured name.
        quick_gelu (bool): the activation wanted.
        name_key (str): how the caller's user names the model, e.g.
            ``'model.backbone.model_name'``.
        flag_key (str, optional): the caller's QuickGELU switch, if any.
    """
    base = model_name[:-len(QUICK_GELU_SUFFIX)] \
        if model_name.endswith(QUICK_GELU_SUFFIX) else model_name
    variant = base + QUICK_GELU_SUFFIX if quick_gelu else base
    register_model_configs()
    options = []
    if variant != model_name and \
            open_clip.get_model_config(variant) is not None:
        options.append(f"{name_key}='{variant}'")
    if flag_key:
        options.append(f'{flag_key}={bool(quick_gelu)}')
    return ' or '.join(options) or f'{name_key} (a config with ' \
        f'quick_gelu={bool(quick_gelu)})'


@contextmanager
def _open_clip_view(model_name: str):
    """While open_clip builds ``model_name``, its registry entry without
    :data:`EXTENSION_SECTIONS`: ``open_clip.create_model`` passes every
    top-level key to the model class (``CustomTextCLIP(**cfg)``), which
    rejects unknown ones.  Restored afterwards, so the registry keeps what
    the JSON file says (and :func:`get_model_config` still sees them)."""
    from open_clip import factory  # the registry has no public setter
    entry = factory._MODEL_CONFIGS.get(model_name) or {}
    hidden = {k: entry.pop(k) for k in EXTENSION_SECTIONS if k in entry}
    try:
        yield
    finally:
        entry.update(hidden)


class _DropRandomInitWarning(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded ... initialized
    randomly" warning: :func:`create_model` always builds empty, and its
    callers load (and report) the weights afterwards."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(
            'No pretrained weights loaded for model')


#: Text towers built instead of the real one when only the image tower is
#: wanted (backbones): tiny, never used, so a backbone builds fast.
_STUB_TEXT_CFG = dict(
    context_length=8, vocab_size=8, width=8, heads=1, layers=1)
_STUB_HF_TEXT_CFG = dict(
    hf_model_name=str(HF_CONFIG_DIR / 'BiomedBERT-tiny-test'),
    hf_model_pretrained=False,
    hf_proj_type='linear',
    hf_pooler_type='cls_last_hidden_state_pooler',
    context_length=8)


def create_model(model_name: str,
                 image_size: Optional[Union[int, Tuple[int, int]]] = None,
                 precision: str = 'fp32',
                 device: str = 'cpu',
                 pretrained_tag: Optional[str] = None,
                 vision_only: bool = False,
                 quick_gelu: Optional[bool] = None,
                 **model_kwargs) -> nn.Module:
    """Build an open_clip model with random weights, offline.

    open_clip's "No pretrained weights loaded" warning is not emitted (the
    callers load local weights after building, and say so).

    Args:
        model_name (str): a shipped or open_clip built-in config name.
        image_size (int | tuple, optional): override the config's size.
        precision (str): open_clip precision. Default: ``'fp32'``.
        device (str): Default: ``'cpu'``. ``'meta'`` builds without
            allocating or initialising weights (fast; for inspecting
            architectures and key layouts).
        pretrained_tag (str, optional): open_clip release the weights come
            from (e.g. ``'laion2b_s32b_b82k'``), for its mean/std, see
            :func:`normalization_stats`; no download happens.
        vision_only (bool): build a tiny stub in place of the text tower
            (for callers that keep only ``model.visual``: much faster and
            lighter). Default: False.
        quick_gelu (bool, optional): QuickGELU (OpenAI's weights) or GELU
            in every transformer block. Default: None, the config's
            (``True`` for open_clip's ``*-quickgelu`` configs).
        **model_kwargs: config overrides passed to the model class.

    Returns:
        open_clip ``CLIP`` / ``CustomTextCLIP`` (``model.visual.
        preprocess_cfg`` holds size/mean/std).
    """
    cfg = get_model_config(model_name)
    hf_text = 'hf_model_name' in cfg['text_cfg']
    if vision_only and 'multimodal_cfg' not in cfg:
        model_kwargs.setdefault(
            'text_cfg', dict(_STUB_HF_TEXT_CFG if hf_text else _STUB_TEXT_CFG))
    elif hf_text:
        # the resolved local folder replaces the name in the config
        model_kwargs.setdefault('text_cfg', cfg['text_cfg'])
    if quick_gelu is not None:
        model_kwargs['quick_gelu'] = bool(quick_gelu)
    mean, std = normalization_stats(model_name, pretrained_tag)
    drop = _DropRandomInitWarning()
    root = logging.getLogger()  # open_clip warns through logging.warning
    root.addFilter(drop)
    try:
        with torch.device('meta') if str(device) == 'meta' else \
                nullcontext(), _open_clip_view(model_name):
            return open_clip.create_model(
                model_name,
                pretrained=None,
                precision=precision,
                device=device,
                force_image_size=image_size,
                pretrained_image=False,
                pretrained_text=False,
                force_preprocess_cfg=dict(mean=mean, std=std),
                **model_kwargs)
    finally:
        root.removeFilter(drop)


def build_tokenizer(
        model_name: str,
        source: Optional[Union[str, os.PathLike]] = None,
        context_length: Optional[int] = None) -> Optional[Callable]:
    """The text tokenizer of ``model_name``, from local files only.

    Args:
        model_name (str): model config name.
        source (str, optional): for BERT text towers, a ``vocab.txt`` or a
            folder containing one (default: the shipped text-tower folder
            when it has a vocabulary).  Ignored for CLIP BPE towers, whose
            vocabulary ships with open_clip.
        context_length (int, optional): default: the config's.

    Returns:
        A callable ``texts -> LongTensor (N, context_length)``, or None
        (with a warning) when no local vocabulary is available.
    """
    text_cfg = get_model_config(model_name)['text_cfg']
    context_length = context_length or text_cfg.get('context_length', 77)
    if text_cfg.get('hf_model_name'):
        source = source or text_cfg['hf_model_name']
        try:
            return LocalBertTokenizer(source, context_length=context_length)
        except FileNotFoundError as err:
            logger.warning(f'{model_name}: no tokenizer ({err})')
            return None
    try:
        return open_clip.get_tokenizer(
            model_name, context_length=context_length)
    except Exception as err:  # e.g. SigLIP tokenizers live on the hub
        logger.warning(f'{model_name}: no offline tokenizer ({err})')
        return None


def build_preprocess(model: nn.Module) -> Callable:
    """open_clip's evaluation transform (PIL image -> normalised tensor)."""
    cfg = getattr(model.visual, 'preprocess_cfg', None) or {}
    return image_transform_v2(PreprocessCfg(**cfg), is_train=False)


def build_open_clip(
    model_name: str,
    pretrained: Optional[Union[str, os.PathLike]] = None,
    *,
    tokenizer: Optional[Union[str, os.PathLike]] = None,
    image_size: Optional[Union[int, Tuple[int, int]]] = None,
    precision: str = 'fp32',
    device: str = 'cpu',
    strict: bool = True,
    pretrained_tag: Optional[str] = None,
    quick_gelu: Optional[bool] = None
) -> Tuple[nn.Module, Callable, Optional[Callable]]:
    """Build an open_clip model offline and load local weights.

    Args:
        model_name (str): e.g. ``'ViT-B-32'``, ``'ViT-B-16-quickgelu'``
            (OpenAI's weights: they need QuickGELU, and an OpenAI file
            loaded into a GELU model is refused, see
            :func:`plugins.models.weights.check_activation`),
            ``'BiomedCLIP-PubMedBERT_256-vit_base_patch16_224'``,
            ``'ViT-Tiny-16-test'``.
        pretrained (str, optional): ``open_clip_model.safetensors``,
            ``open_clip_pytorch_model.bin``, an OpenAI ``.pt`` archive, or a
            folder holding one of them. None: random weights.
        tokenizer (str, optional): vocabulary source for BERT text towers
            (see :func:`build_tokenizer`); default: the folder of
            ``pretrained`` when it has a ``vocab.txt``.
        image_size (int | tuple, optional): override the input size.
        precision (str): Default: ``'fp32'``.
        device (str): Default: ``'cpu'``.
        strict (bool): every key must match. Default: True.
        pretrained_tag (str, optional): open_clip release of the weights,
            for its normalisation statistics (see
            :func:`normalization_stats`).
        quick_gelu (bool, optional): override the config's activation (see
            :func:`create_model`).

    Returns:
        tuple: ``(model, preprocess, tokenizer)``; the model is in eval
        mode; ``tokenizer`` may be None (see :func:`build_tokenizer`).
    """
    model = create_model(
        model_name,
        image_size=image_size,
        precision=precision,
        device=device,
        pretrained_tag=pretrained_tag,
        quick_gelu=quick_gelu)
    if pretrained is not None:
        load_open_clip_weights(
            model,
            pretrained,
            strict=strict,
            target=model_name,
            fix=activation_fix(model_name, True))
        if tokenizer is None and \
                (folder_of(pretrained) / 'vocab.txt').is_file():
            tokenizer = folder_of(pretrained)
    model.eval()
    return model, build_preprocess(model), build_tokenizer(
        model_name, tokenizer)
