"""Tiny test models, and random CLIP models written in the weight formats
users download.

For tests and demos: no real weights can be fetched here, so the loaders
are checked against files written in the same formats from tiny random
models.  Importing this module registers the tiny timm trunks the shipped
``*-Tiny-test`` configs use.
"""
import copy
import os
import warnings
from pathlib import Path
from typing import Union

import torch
import torch.nn as nn
from open_clip.constants import INCEPTION_MEAN, INCEPTION_STD
from timm.models import build_model_with_cfg, register_model
from timm.models.vision_transformer import VisionTransformer as TimmViT

from plugins.utils import save_safetensors

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
            mean=INCEPTION_MEAN,  # SigLIP's, as ConceptCLIP's
            std=INCEPTION_STD,
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
