"""Weight-format readers: any supported CLIP file -> open_clip's key layout.

Supported inputs (all read by :func:`plugins.utils.safe_load`, no code is
executed):

* open_clip ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin``
  (also training checkpoints ``{'state_dict': ...}``, DDP ``module.``);
* OpenAI CLIP TorchScript archives (``ViT-B-32.pt`` ...) and OpenAI state
  dicts: same key names as open_clip's ``CLIP`` plus three metadata entries;
  converted with open_clip's own helpers for models with a custom text tower.
  OpenAI's models were trained with QuickGELU, and the activation is part of
  the model's configuration (``ViT-B-16-quickgelu``, ``quick_gelu=True``), as
  in open_clip: loading such a file into a GELU model fails, naming what to
  set (:func:`check_activation`);
* older open_clip text-tower layouts, and checkpoints from transformers
  releases that still saved ``position_ids``.

:func:`load_open_clip_weights` then checks every key strictly.
"""
import logging
import os
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from open_clip.convert import convert_state_dict
from open_clip.model import convert_to_custom_text_state_dict
from open_clip.transformer import (CustomResidualAttentionBlock,
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


def folder_of(path: Union[str, os.PathLike]) -> Path:
    """The folder of a weights file (or the folder itself): where its
    ``vocab.txt`` and ``config.json`` sit."""
    path = Path(path)
    return path if path.is_dir() else path.parent


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



def strip_openai_metadata(
        state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``state`` without OpenAI's 0-dim metadata tensors
    (:data:`OPENAI_METADATA_KEYS`) when it is an OpenAI file
    (:func:`is_openai_state_dict`; check its activation first: the
    metadata is what tells the layout); other state dicts unchanged."""
    if not is_openai_state_dict(state):
        return dict(state)
    return {k: v for k, v in state.items() if k not in OPENAI_METADATA_KEYS}

#: Activation names (open_clip's config key ``quick_gelu`` picks one).
QUICK_GELU = 'quick_gelu'
GELU = 'gelu'


class ActivationMismatchError(ValueError):
    """A weights file's layout says its weights were trained with another
    activation than the model that loads them runs."""


#: Activation classes of open_clip and timm by the names used here.
_ACTIVATION_CLASS_NAMES = {'QuickGELU': QUICK_GELU, 'GELU': GELU,
                           'GELUTanh': 'gelu_tanh'}


def activation_name(act: nn.Module) -> str:
    """``'quick_gelu'``, ``'gelu'``, ``'gelu_tanh'`` (torch's, open_clip's
    or timm's modules), else the class name."""
    if isinstance(act, nn.GELU) and act.approximate != 'none':
        return f'{GELU}_{act.approximate}'
    name = type(act).__name__
    return _ACTIVATION_CLASS_NAMES.get(name, name)


def open_clip_activation(model: nn.Module) -> Optional[str]:
    """The activation of the open_clip transformer blocks in ``model``
    (``mlp.gelu``, GELU or QuickGELU by open_clip's ``quick_gelu``); None
    when ``model`` has no such block (e.g. a timm tower)."""
    names = {
        activation_name(block.mlp.gelu)
        for block in model.modules()
        if isinstance(block, (ResidualAttentionBlock,
                              CustomResidualAttentionBlock))
        and hasattr(block.mlp, 'gelu')
    }
    if len(names) > 1:
        raise ValueError(f'{type(model).__name__} mixes activations '
                         f'{sorted(names)} in its transformer blocks')
    return next(iter(names), None)


#: safetensors header entry in which ``tools/convert_clip_checkpoint.py``
#: records the activation an OpenAI file said (the conversion drops the
#: metadata tensors that said it).
ACTIVATION_METADATA_KEY = 'activation'


def recorded_activation(path: Union[str, os.PathLike]) -> Optional[str]:
    """The activation a ``.safetensors`` file's header records
    (:data:`ACTIVATION_METADATA_KEY`), else None (other formats, or no
    record).  Reads the header only."""
    path = Path(path)
    if path.suffix != '.safetensors' or not path.is_file():
        return None
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework='pt') as f:
            meta = f.metadata() or {}
    except Exception as err:  # a corrupt header: safe_load names it later
        logger.debug(f'{path}: no readable safetensors header ({err})')
        return None
    return meta.get(ACTIVATION_METADATA_KEY)


def weights_layout(state: Mapping[str, torch.Tensor],
                   recorded: Optional[str] = None) -> Tuple[str,
                                                            Optional[str]]:
    """What a checkpoint's layout says: ``(layout, activation)``.

    OpenAI's CLIP layout (:func:`is_openai_state_dict`) says QuickGELU:
    OpenAI trained every CLIP with it (``x * sigmoid(1.702 x)``; open_clip
    builds OpenAI checkpoints with ``quick_gelu=True`` and its ``openai``
    release tags say so).  open_clip's own layout does not say (its GELU
    and QuickGELU releases share every key), so the activation is None,
    unless the file records it (``recorded``, see
    :func:`recorded_activation`: an OpenAI file converted by
    ``tools/convert_clip_checkpoint.py``).
    """
    if is_openai_state_dict(state):
        return ('OpenAI CLIP layout (0-dim ' + '/'.join(OPENAI_METADATA_KEYS)
                + ' entries), trained with QuickGELU'), QUICK_GELU
    if recorded is not None:
        return (f"a converted file recording {recorded} (safetensors "
                f"metadata '{ACTIVATION_METADATA_KEY}')"), recorded
    return 'open_clip layout (activation not recorded)', None


def check_activation(model: nn.Module,
                     seen: Optional[str],
                     layout: str,
                     source: Optional[str] = None,
                     fix: Optional[str] = None,
                     configured: Optional[str] = None) -> None:
    """Raise unless weights trained with ``seen`` fit the model.

    The activation is part of the architecture (open_clip's
    ``ViT-B-16-quickgelu``): it is set where the model is configured and
    never guessed from the weights, so a model rebuilt from its config and
    a trained checkpoint runs the same function.  A weights file whose
    layout says otherwise is refused.

    Args:
        model (nn.Module): the model (or tower) the weights go into.
        seen (str, optional): the activation the layout says (see
            :func:`weights_layout`); None: the layout does not say, nothing
            is checked.
        layout (str): the layout, for the message.
        source (str, optional): the file, for the message.
        fix (str, optional): what to set to configure ``seen``, e.g.
            ``"model_name='ViT-B-16-quickgelu'"``.
        configured (str, optional): the model's activation; default:
            :func:`open_clip_activation` of ``model``.

    Raises:
        ActivationMismatchError: naming the file, the layout seen, the
            model's activation and ``fix``.
    """
    if seen is None:
        return
    if configured is None:
        configured = open_clip_activation(model)
    if configured is None or configured == seen:
        return
    where = source or 'the weights'
    raise ActivationMismatchError(
        f'{where}: {layout}, but {type(model).__name__} is configured with '
        f'{configured}; the activation is part of the architecture and is '
        f'not switched on load. Set {fix or "the activation"} to run '
        f'{seen}.')


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
    # the loaders check the activation first (check_activation)
    state = strip_openai_metadata(state)
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
                           target: Optional[str] = None,
                           fix: Optional[str] = None) -> StateDict:
    """Load weights into an open_clip model, checking every key and the
    activation.

    Args:
        model: open_clip ``CLIP`` / ``CustomTextCLIP``.
        source: a weights file, a model folder (see
            :func:`find_weights_file`) or an already loaded state dict.
        strict (bool): raise :class:`plugins.utils.StateDictMismatchError`
            (listing missing/unexpected keys and shape mismatches) unless
            the converted checkpoint matches exactly. Default: True.
        target (str, optional): model name for error messages.
        fix (str, optional): what the caller's user sets to configure
            QuickGELU, for the activation error (e.g.
            ``"model_name='ViT-B-16-quickgelu'"``).

    Returns:
        dict: the converted state dict that was loaded.

    Raises:
        ActivationMismatchError: an OpenAI-layout file (trained with
            QuickGELU) and a GELU model (see :func:`check_activation`).
    """
    name: Optional[str] = None
    recorded = None
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        path = find_weights_file(source)
        name = str(path)
        state = safe_load(path)
        recorded = recorded_activation(path)
    layout, seen = weights_layout(state, recorded)
    check_activation(model, seen, layout, source=name, fix=fix)
    state = convert_to_open_clip(state, model)
    if strict:
        check_state_dict(
            model.state_dict(),
            state,
            source=name,
            target=target or type(model).__name__)
    model.load_state_dict(state, strict=strict)
    logger.info(f'{target or type(model).__name__}: loaded {len(state)} '
                f'tensors from {name or "a state dict"}')
    return state
