"""Random CLIP models written in the weight formats users download.

For tests: no real weights can be fetched here, so the loaders are checked
against files written in the same formats from tiny random models (the
tiny model configs themselves are shipped data, registered by
:mod:`plugins.models`).  Production code does not import this module.
"""
import copy
import os
import warnings
from pathlib import Path
from typing import Union

import torch
import torch.nn as nn

from plugins.utils import save_safetensors

#: ``fmt`` values of :func:`save_clip_checkpoint` and their file names.
CHECKPOINT_FORMATS = {
    'safetensors': 'open_clip_model.safetensors',
    'bin': 'open_clip_pytorch_model.bin',
    'openai': 'openai_clip.pt',
}


def write_openai_archive(model: nn.Module,
                         path: Union[str, os.PathLike],
                         image_size: int = None) -> Path:
    """Save an open_clip ``CLIP`` the way OpenAI's CLIP archives are made.

    OpenAI's ``*.pt`` files are ``torch.jit`` traces of their ``CLIP``
    module (parameter names identical to open_clip's ``CLIP``), weights
    mostly in float16, plus 0-dim ``input_resolution``, ``context_length``
    and ``vocab_size`` tensors.  The trace runs ``encode_image`` once on a
    copy of ``model``.
    """
    from open_clip.model import CLIP, convert_weights_to_fp16
    if not isinstance(model, CLIP):
        raise TypeError('OpenAI archives hold a CLIP with the built-in text '
                        f'tower, got {type(model).__name__}')
    m = copy.deepcopy(model).cpu().eval()
    image_size = image_size or m.visual.image_size[0]
    meta = dict(
        input_resolution=image_size,
        context_length=m.positional_embedding.shape[0],
        vocab_size=m.token_embedding.weight.shape[0])
    for key, value in meta.items():
        if hasattr(m, key):
            delattr(m, key)  # plain int attributes in open_clip
        m.register_buffer(key, torch.tensor(value))
    convert_weights_to_fp16(m)
    image = torch.zeros(1, 3, image_size, image_size, dtype=torch.float16)
    path = Path(path)
    with warnings.catch_warnings():
        # torch.jit is deprecated and the trace warns about Python control
        # flow; neither matters for a file that is only ever read as data.
        warnings.simplefilter('ignore')
        traced = torch.jit.trace_module(
            m, {'encode_image': (image, )}, check_trace=False)
        torch.jit.save(traced, str(path))
    return path


def save_clip_checkpoint(model: nn.Module, path: Union[str, os.PathLike],
                         fmt: str) -> Path:
    """Save ``model`` as ``fmt`` (``'safetensors'``, ``'bin'``, ``'openai'``).

    Args:
        path: a file, or a folder (then :data:`CHECKPOINT_FORMATS` gives the
            file name).
    """
    if fmt not in CHECKPOINT_FORMATS:
        raise ValueError(f"unknown format '{fmt}' "
                         f'(choose from {sorted(CHECKPOINT_FORMATS)})')
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FORMATS[fmt]
    if fmt == 'safetensors':
        return save_safetensors(model.state_dict(), path)
    if fmt == 'bin':
        torch.save(model.state_dict(), path)
        return path
    return write_openai_archive(model, path)
