"""Reading ConceptCLIP's released weights as data.

The published model is a Hugging Face folder (``config.json``,
``model.safetensors`` or a sharded ``model.safetensors.index.json``, or
``pytorch_model.bin``) whose own loader executes remote code.  Here the
files are only read: :func:`read_concept_clip_weights` gives a flat state
dict (every file through :func:`plugins.utils.safe_load`),
:func:`convert_concept_clip_state_dict` maps it onto the model's keys, and
:func:`read_folder_config` / :func:`config_differences` compare the folder's
``config.json`` with the config the model is built from.  Loading into the
model is :func:`plugins.models.concept_clip.load_concept_clip_weights`.
"""
import os
from typing import Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch

from plugins.utils import (read_json_object, rename_keys, safe_load,
                           safe_load_sharded, strip_prefix)

from .weights import find_weights_file, folder_of

StateDict = Dict[str, torch.Tensor]

#: File names looked for in a model folder, best first: the HF export
#: (single or sharded), then open_clip-style names.
CONCEPT_CLIP_WEIGHT_FILE_NAMES = ('model.safetensors',
                                  'model.safetensors.index.json',
                                  'pytorch_model.bin',
                                  'pytorch_model.bin.index.json',
                                  'open_clip_model.safetensors',
                                  'open_clip_pytorch_model.bin')
#: Module prefixes a wrapper may put in front of every key (stripped when
#: *all* keys carry one).
WRAPPER_PREFIXES = ('module.', 'model.', 'conceptclip.', 'clip.')

#: Fields of an open_clip model config that decide the layout, with
#: open_clip's defaults (``CLIPVisionCfg`` / ``CLIPTextCfg``) for a config
#: that leaves them out.  A folder's ``config.json`` is compared on these.
ARCHITECTURE_FIELDS = {
    'embed_dim': None,
    'vision_cfg.timm_model_name': None,
    'vision_cfg.image_size': 224,
    'vision_cfg.timm_pool': 'avg',
    'vision_cfg.timm_proj': 'linear',
    'text_cfg.context_length': 77,
    'text_cfg.hf_proj_type': 'mlp',
    'text_cfg.hf_pooler_type': 'mean_pooler',
}


def read_folder_config(path: Union[str, os.PathLike]) -> Optional[dict]:
    """The model description in a ConceptCLIP folder's ``config.json``.

    Args:
        path: the HF folder, or a weights file inside it.

    Returns:
        dict or None: None without a ``config.json``; else the part that
        holds open_clip model fields (``embed_dim``, ``vision_cfg``,
        ``text_cfg``): the top level or the first nested dict with them
        (an HF config may wrap the open_clip config), ``{}`` when there are
        none (only HF bookkeeping such as ``architectures``).

    Raises:
        ValueError: the file is not a JSON object (naming the file).
    """
    file = folder_of(path) / 'config.json'
    if not file.is_file():
        return None
    data = read_json_object(file)
    keys = ('embed_dim', 'vision_cfg', 'text_cfg')
    for part in [data] + [v for v in data.values() if isinstance(v, dict)]:
        if any(k in part for k in keys):
            return part
    return {}


_MISSING = object()


def _field(cfg: Mapping, dotted: str, default):
    head, _, tail = dotted.partition('.')
    if tail:
        return _field(cfg.get(head) or {}, tail, default)
    return cfg.get(head, default)


def _size(value):
    """An image size as ``(H, W)`` (open_clip allows an int)."""
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value, value)


def config_differences(folder_cfg: Mapping, ours: Mapping) -> List[str]:
    """The :data:`ARCHITECTURE_FIELDS` a folder's config states with other
    values than ``ours`` (image size compared as ``(H, W)``), as
    ``'field = theirs there, mine here'`` lines."""
    diffs = []
    for dotted, default in ARCHITECTURE_FIELDS.items():
        theirs = _field(folder_cfg, dotted, _MISSING)
        if theirs is _MISSING:
            continue
        mine = _field(ours, dotted, default)
        if dotted == 'vision_cfg.image_size':
            theirs, mine = _size(theirs), _size(mine)
        if theirs != mine:
            diffs.append(f'{dotted} = {theirs!r} there, {mine!r} here')
    return diffs


def read_concept_clip_weights(path: Union[str, os.PathLike]) -> StateDict:
    """Read a ConceptCLIP weights file or HF folder as a flat state dict.

    A folder: the first of :data:`CONCEPT_CLIP_WEIGHT_FILE_NAMES` present;
    a sharded export (``*.index.json``) is read shard by shard.  Every file
    is read by :func:`plugins.utils.safe_load` (no code executed).
    """
    path = find_weights_file(path, CONCEPT_CLIP_WEIGHT_FILE_NAMES)
    if path.name.endswith('.index.json'):
        return safe_load_sharded(path)
    return safe_load(path)


def convert_concept_clip_state_dict(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    key_rules: Iterable[Tuple[str, str]] = ()
) -> StateDict:
    """Map a loaded ConceptCLIP checkpoint onto ``expected``'s keys.

    Strips a wrapper prefix carried by every key
    (:data:`WRAPPER_PREFIXES`), applies ``key_rules`` (``(regex,
    replacement)``, in order), drops buffers the model rebuilds (BERT's
    ``position_ids``) and an unused BERT pooler, and reshapes 1-element
    logit scales/biases to the model's shape.  Unknown keys stay, for the
    strict check to report.
    """
    state = dict(state)
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if state and all(k.startswith(prefix) for k in state) and \
                    not any(k.startswith(prefix) for k in expected):
                state = strip_prefix(state, prefix)
                stripped = True
    key_rules = list(key_rules)
    if key_rules:
        state = rename_keys(state, key_rules)
    for key in list(state):
        if key in expected:
            continue
        if key.endswith('embeddings.position_ids') or \
                key.startswith('text.transformer.pooler.'):
            del state[key]
    for key in ('logit_scale', 'logit_bias', 'concept_logit_scale',
                'concept_logit_bias'):
        if key in state and key in expected and \
                state[key].numel() == expected[key].numel() == 1:
            state[key] = state[key].reshape(expected[key].shape)
    return state
