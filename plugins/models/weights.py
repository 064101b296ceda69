"""Weight-format readers: any supported CLIP file -> open_clip's key layout.

Supported inputs (all read by :func:`plugins.utils.safe_load`, no code is
executed):

* open_clip ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin``
  (also training checkpoints ``{'state_dict': ...}``, DDP ``module.``);
* OpenAI CLIP TorchScript archives (``ViT-B-32.pt`` ...) and OpenAI state
  dicts: same key names as open_clip's ``CLIP`` plus three metadata entries;
  converted with open_clip's own helpers for models with a custom text tower.
  OpenAI's models were trained with QuickGELU, so a model that loads such
  weights is switched to QuickGELU (:func:`match_openai_activation`),
  whatever its config name says;
* older open_clip text-tower layouts, and checkpoints from transformers
  releases that still saved ``position_ids``.

:func:`load_open_clip_weights` then checks every key strictly.
"""
import logging
import os
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
from open_clip.convert import convert_state_dict
from open_clip.model import convert_to_custom_text_state_dict
from open_clip.transformer import (CustomResidualAttentionBlock, QuickGELU,
                                   ResidualAttentionBlock)

from plugins.utils import (CheckpointError, check_state_dict,
                           non_regular_kind, safe_load)

logger = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]

#: 0-dim entries OpenAI's archives carry next to the weights.
OPENAI_METADATA_KEYS = ('input_resolution', 'context_length', 'vocab_size')

#: File names looked for in a model folder, best first (open_clip's order).
WEIGHT_FILE_NAMES = ('open_clip_model.safetensors',
                     'open_clip_pytorch_model.safetensors',
                     'open_clip_pytorch_model.bin',
                     'open_clip_pytorch_model.pth', 'model.safetensors',
                     'pytorch_model.bin', 'model.pt')


def find_weights_file(path: Union[str, os.PathLike],
                      names: Sequence[str] = WEIGHT_FILE_NAMES) -> Path:
    """``path`` if it is a file, else the best-named weights file inside.

    Raises:
        FileNotFoundError: naming the path and the file names looked for.
        CheckpointError: ``path`` exists but is a FIFO, socket, device or
            dangling symbolic link (naming what it is).
    """
    path = Path(path)
    kind = non_regular_kind(path)
    if kind is not None:
        raise CheckpointError(
            f'{path} is {kind}, not a weights file or a model folder')
    if path.is_file():
        return path
    if path.is_dir():
        for name in names:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(
            f'no weights file in {path} (looked for {list(names)})')
    raise FileNotFoundError(f'weights file or folder not found: {path}')


def is_openai_state_dict(state: Mapping[str, torch.Tensor]) -> bool:
    """True for the layout of OpenAI's CLIP checkpoints.

    The key names of OpenAI's ``CLIP`` are open_clip's (``visual.proj``,
    ``visual.class_embedding``, ``text_projection`` ...), so only the 0-dim
    metadata tensors OpenAI's model carries (:data:`OPENAI_METADATA_KEYS`;
    open_clip's ``build_model_from_openai_state_dict`` and ``load_state_dict``
    drop them, OpenAI's own ``clip.build_model`` too) tell an OpenAI file
    apart.  They must sit next to an OpenAI image tower: ``visual.conv1.weight``
    (ViT; open_clip tells ViT from ResNet by ``visual.proj``) or
    ``visual.layer1.0.conv1.weight`` (ModifiedResNet).
    """
    has_meta = any(
        isinstance(state.get(k), torch.Tensor) and state[k].dim() == 0
        for k in OPENAI_METADATA_KEYS)
    return has_meta and ('visual.conv1.weight' in state
                         or 'visual.layer1.0.conv1.weight' in state)


def uses_quick_gelu(model: nn.Module) -> bool:
    return any(isinstance(m, QuickGELU) for m in model.modules())


def match_openai_activation(model: nn.Module,
                            state: Mapping[str, torch.Tensor],
                            name: Optional[str] = None,
                            log: Optional[logging.Logger] = None) -> bool:
    """Run ``model`` with QuickGELU when ``state`` is OpenAI's CLIP layout.

    OpenAI trained every CLIP with QuickGELU (``x * sigmoid(1.702 x)``);
    open_clip builds OpenAI checkpoints with ``quick_gelu=True`` whatever
    the name (``build_model_from_openai_state_dict``) and its ``openai``
    release tags say ``quick_gelu=True``.  Here the model already exists
    (built from a config name such as ``'ViT-B-16'``, GELU), so the GELU of
    every open_clip transformer block's MLP (``mlp.gelu``) is replaced by
    QuickGELU in place, logged once at INFO.  The one place every CLIP
    weight loader (:func:`load_open_clip_weights`, the mmdet backbones)
    decides the activation.

    Args:
        model (nn.Module): an open_clip model or tower (or a module holding
            one).
        state (Mapping): the loaded checkpoint (before conversion).
        name (str, optional): what is loaded, for the log line.
        log (logging.Logger, optional): Default: this module's logger.

    Returns:
        bool: True for OpenAI weights (the model then runs QuickGELU).
    """
    if not is_openai_state_dict(state):
        return False
    switched = 0
    for block in model.modules():
        if isinstance(block, (ResidualAttentionBlock,
                              CustomResidualAttentionBlock)):
            act = getattr(block.mlp, 'gelu', None)
            if isinstance(act, nn.GELU):
                block.mlp.gelu = QuickGELU()
                switched += 1
    if switched:
        (log or logger).info(
            f'{name or type(model).__name__}: OpenAI CLIP weights (trained '
            f'with QuickGELU): {switched} transformer blocks switched from '
            'GELU to QuickGELU')
    return True


def convert_to_open_clip(state: Mapping[str, torch.Tensor],
                         model: nn.Module) -> StateDict:
    """Map a loaded CLIP checkpoint onto ``model``'s state-dict keys.

    Uses open_clip's own converters (``convert_state_dict`` for third-party
    layouts, ``convert_to_custom_text_state_dict`` for the old text-tower
    layout) and adjusts the small known differences; keys it does not know
    are left for the strict check to report.

    Args:
        state: flat state dict (see :func:`plugins.utils.safe_load`).
        model: an open_clip ``CLIP`` / ``CustomTextCLIP``.
    """
    state = dict(state)
    if is_openai_state_dict(state):
        # the activation is chosen by match_openai_activation (the loaders)
        for key in OPENAI_METADATA_KEYS:
            state.pop(key, None)
    state = convert_state_dict(model, state)
    if 'positional_embedding' in state and not hasattr(model,
                                                       'positional_embedding'):
        state = convert_to_custom_text_state_dict(state)
    expected = model.state_dict()
    for key in ('logit_scale', 'logit_bias'):
        if key in state and key in expected and \
                state[key].shape != expected[key].shape and \
                state[key].numel() == expected[key].numel():
            state[key] = state[key].reshape(expected[key].shape)
    # Derived buffers the model does not persist (attention masks, BERT's
    # position_ids) appear in TorchScript archives and in files from older
    # transformers releases; the model rebuilds them.  An HF pooler the
    # model does not build is unused by design (CLS-token pooling).
    derived = {n for n, _ in model.named_buffers()} - set(expected)
    for key in [k for k in state if k not in expected]:
        if key in derived or key.endswith('embeddings.position_ids') or \
                '.transformer.pooler.' in key:
            del state[key]
    return state


def load_open_clip_weights(model: nn.Module,
                           source: Union[str, os.PathLike, Mapping],
                           strict: bool = True,
                           target: Optional[str] = None) -> StateDict:
    """Load weights into an open_clip model, checking every key.

    OpenAI-layout weights switch the model to QuickGELU
    (:func:`match_openai_activation`).

    Args:
        model: open_clip ``CLIP`` / ``CustomTextCLIP``.
        source: a weights file, a model folder (see
            :func:`find_weights_file`) or an already loaded state dict.
        strict (bool): raise :class:`plugins.utils.StateDictMismatchError`
            (listing missing/unexpected keys and shape mismatches) unless
            the converted checkpoint matches exactly. Default: True.
        target (str, optional): model name for error messages.

    Returns:
        dict: the converted state dict that was loaded.
    """
    name: Optional[str] = None
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        path = find_weights_file(source)
        name = str(path)
        state = safe_load(path)
    match_openai_activation(model, state, name=target or name)
    state = convert_to_open_clip(state, model)
    if strict:
        check_state_dict(
            model.state_dict(),
            state,
            source=name,
            target=target or type(model).__name__)
    model.load_state_dict(state, strict=strict)
    return state
