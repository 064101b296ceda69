"""BiomedCLIP (``microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``)
built offline: shipped open_clip config + shipped PubMedBERT config, weights
and vocabulary from the user's local folder."""
import logging
import os
from typing import Callable, Optional, Tuple, Union

import torch.nn as nn

from .open_clip_factory import HF_CONFIG_DIR

logger = logging.getLogger(__name__)

#: open_clip config name of BiomedCLIP (timm ViT-B/16 + PubMedBERT, 512-d).
BIOMEDCLIP_MODEL_NAME = 'BiomedCLIP-PubMedBERT_256-vit_base_patch16_224'
#: Same classes, tiny sizes (timm ``test_vit`` trunk + 2-layer BERT).
BIOMEDCLIP_TINY_MODEL_NAME = 'BiomedCLIP-Tiny-test'
#: Tiny WordPiece vocabulary shipped for tests (PubMedBERT's special ids).
TEST_VOCAB = HF_CONFIG_DIR / 'BiomedBERT-tiny-test' / 'vocab.txt'


def build_biomedclip(
        path: Optional[Union[str, os.PathLike]] = None,
        *,
        model_name: str = BIOMEDCLIP_MODEL_NAME,
        tokenizer: Optional[Union[str, os.PathLike]] = None,
        precision: str = 'fp32',
        device: str = 'cpu',
        strict: bool = True) -> Tuple[nn.Module, Callable, Optional[Callable]]:
    """Build BiomedCLIP; returns ``(model, preprocess, tokenizer)``.

    The model is open_clip's ``CustomTextCLIP``: ``model.visual`` a
    ``TimmModel`` (trunk ``vit_base_patch16_224``, ``head.proj`` 768->512),
    ``model.text`` an ``HFTextEncoder`` (BERT, CLS pooling of the last
    hidden state, ``proj`` = ``Sequential(Linear(768, 640), GELU,
    Linear(640, 512))``), context length 256.  Normalisation: OpenAI CLIP
    mean/std.

    Args:
        path (str, optional): the downloaded BiomedCLIP folder (with
            ``open_clip_pytorch_model.bin`` and ``vocab.txt``) or a weights
            file.  None: random weights.
        model_name (str): config; :data:`BIOMEDCLIP_TINY_MODEL_NAME` for
            tests. Default: :data:`BIOMEDCLIP_MODEL_NAME`.
        tokenizer (str, optional): ``vocab.txt`` or folder; default: the
            one in ``path``, else the model's shipped text folder, else the
            tiny test vocabulary (with a warning).
        precision, device, strict: see
            :func:`plugins.models.build_open_clip`.

    Returns:
        tuple: ``(model (eval mode), preprocess, tokenizer)``; the
        tokenizer maps texts to ``LongTensor (N, 256)`` (``[CLS]`` id 2,
        ``[SEP]`` id 3, ``[PAD]`` id 0 with PubMedBERT's vocabulary).
    """
    # the one builder (late import: it imports this module's fallback)
    from .builder import build_clip_model
    return build_clip_model(
        model_name,
        path,
        tokenizer=tokenizer,
        precision=precision,
        device=device,
        strict=strict)


def tiny_vocab_tokenizer(model_name: str, folder_name: str) -> Callable:
    """The tokenizer of ``model_name`` over the shipped tiny test
    vocabulary (:data:`TEST_VOCAB`), with a warning: the fallback when no
    ``vocab.txt`` was given or found for a BERT text tower.

    Args:
        model_name (str): open_clip config name.
        folder_name (str): what the user should pass instead (e.g.
            ``'BiomedCLIP'``: "pass the BiomedCLIP folder").
    """
    from .open_clip_factory import build_tokenizer
    logger.warning(
        f'{model_name}: no vocab.txt given or found; using the tiny test '
        f'vocabulary {TEST_VOCAB}. Pass the {folder_name} folder (or '
        'tokenizer=<vocab.txt>) for the real tokenizer.')
    return build_tokenizer(model_name, TEST_VOCAB)
