"""One builder for every CLIP-family config, chosen by what the config holds.

open_clip's factory picks the model class from a config's content, never
from its name (open_clip 3.3.0, ``factory.create_model``:
``timm_model_name`` in ``vision_cfg`` makes a timm image tower,
``hf_model_name`` in ``text_cfg`` or ``custom_text`` a ``CustomTextCLIP``,
a ``multimodal_cfg`` section a ``CoCa``).  :func:`build_clip_model` does the
same one level up, so a renamed or user-written config builds as what it
describes:

* a ``concept_cfg`` section (:data:`~plugins.models.open_clip_factory.
  CONCEPT_SECTION`): :func:`plugins.models.concept_clip.build_concept_clip`;
* anything else: :func:`plugins.models.open_clip_factory.build_open_clip`;
* a BERT text tower (``hf_model_name`` or ``hf_tokenizer_name`` in
  ``text_cfg``, e.g. BiomedCLIP) without a local ``vocab.txt``: the shipped
  tiny test vocabulary, with a warning
  (:func:`plugins.models.biomedclip.tiny_vocab_tokenizer`).
"""
import os
from typing import Callable, Optional, Tuple, Union

import torch.nn as nn

from .biomedclip import tiny_vocab_tokenizer
from .concept_clip import build_concept_clip, resolve_config_name
from .open_clip_factory import (CONCEPT_SECTION, build_open_clip,
                                get_model_config)


def has_bert_text_tower(cfg: dict) -> bool:
    """Whether an open_clip config's text tower is a transformers (BERT)
    model, whose tokenizer needs a ``vocab.txt``."""
    text_cfg = cfg.get('text_cfg', {})
    return bool(
        text_cfg.get('hf_model_name') or text_cfg.get('hf_tokenizer_name'))


def build_clip_model(
    model_name: Union[str, os.PathLike],
    weights: Optional[Union[str, os.PathLike]] = None,
    *,
    tokenizer: Optional[Union[str, os.PathLike]] = None,
    precision: str = 'fp32',
    device: str = 'cpu',
    strict: bool = True,
    pretrained_tag: Optional[str] = None
) -> Tuple[nn.Module, Callable, Optional[Callable]]:
    """Build any shipped or registered CLIP-family model offline.

    Args:
        model_name (str): a registered config name (shipped, open_clip
            built-in, or an alias such as ``'ConceptCLIP'``) or an open_clip
            format JSON file.
        weights (str, optional): local weights file or folder (see the
            chosen builder). None: random weights.
        tokenizer (str, optional): ``vocab.txt`` or a folder with one, for
            BERT text towers; default: the weights folder's.
        precision (str): open_clip precision (open_clip models only; a
            ConceptCLIP config builds in float32). Default: ``'fp32'``.
        device (str): Default: ``'cpu'``.
        strict (bool): every key must match. Default: True.
        pretrained_tag (str, optional): open_clip release of the weights,
            for its normalisation statistics (open_clip models only; a
            ConceptCLIP config fixes its own).

    Returns:
        tuple: ``(model, preprocess, tokenizer)``, the model in eval mode;
        ``tokenizer`` is None only for a non-BERT text tower whose
        vocabulary is not available offline.

    Raises:
        KeyError: no config of that name (the message lists close names and
            the shipped ones).
        ValueError: ``pretrained_tag`` or a ``precision`` other than
            ``'fp32'`` with a ConceptCLIP config.
    """
    name = resolve_config_name(model_name)
    cfg = get_model_config(name)
    if CONCEPT_SECTION in cfg:
        if pretrained_tag is not None:
            raise ValueError(
                f"'{name}' is a ConceptCLIP config ({CONCEPT_SECTION}); its "
                f"statistics are fixed, pretrained_tag='{pretrained_tag}' "
                'does not apply')
        if precision != 'fp32':
            raise ValueError(
                f"'{name}' is a ConceptCLIP config ({CONCEPT_SECTION}), "
                f"built in float32; precision='{precision}' is not supported")
        model, preprocess, tok = build_concept_clip(
            weights,
            config=name,
            tokenizer=tokenizer,
            device=device,
            strict=strict)
    else:
        model, preprocess, tok = build_open_clip(
            name,
            weights,
            tokenizer=tokenizer,
            precision=precision,
            device=device,
            strict=strict,
            pretrained_tag=pretrained_tag)
    if tok is None and has_bert_text_tower(cfg):
        tok = tiny_vocab_tokenizer(name, 'weights')
    return model, preprocess, tok
