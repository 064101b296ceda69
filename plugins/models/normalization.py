"""The input statistics of each model, and the one resize + normalise.

open_clip's factory stores a built model's image size, mean, std and
interpolation on ``model.visual.preprocess_cfg`` (from the model config or
the pretrained release); :func:`preprocess_cfg` reads them, falling back to
open_clip's own defaults (the OpenAI CLIP statistics) for a tower built some
other way.  The mmdet backbones, prompt learning, region scoring and the
Open-GroundingDino adapter take their mean/std from :func:`preprocess_cfg`
(ConceptCLIP's are not in open_clip's table of releases: it sets
:data:`SIGLIP_MEAN` / :data:`SIGLIP_STD` on its tower's
``preprocess_cfg`` itself); the configs' 0-255 ``DetDataPreprocessor``
numbers are these times 255 (tests check both, CLIP's and ConceptCLIP's).
:func:`resize_and_normalize` turns ``[0, 1]`` images into model input for
ConceptCLIP and prompt learning.
"""
from typing import Dict, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.constants import (INCEPTION_MEAN, INCEPTION_STD,
                                 OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)

#: OpenAI CLIP statistics (RGB, [0, 1] scale); open_clip's default.
OPENAI_CLIP_MEAN = tuple(OPENAI_DATASET_MEAN)
OPENAI_CLIP_STD = tuple(OPENAI_DATASET_STD)
#: SigLIP's statistics (mean = std = 0.5; ConceptCLIP's).
SIGLIP_MEAN = tuple(INCEPTION_MEAN)
SIGLIP_STD = tuple(INCEPTION_STD)


def resize_and_normalize(pixels: torch.Tensor,
                         size: Union[int, Tuple[int, int]],
                         mean: Sequence[float],
                         std: Sequence[float],
                         interpolation: str = 'bicubic',
                         clamp: bool = False) -> torch.Tensor:
    """``[0, 1]`` images -> model input: resize (squashed, anti-aliased,
    skipped at the target size), then ``(x - mean) / std``.

    Args:
        pixels (Tensor): ``(B, 3, H, W)`` float in ``[0, 1]``.
        size (int | tuple[int, int]): output ``(h, w)``.
        mean, std (Sequence[float]): per channel, ``[0, 1]`` units.
        interpolation (str): ``'bicubic'`` (default) or ``'bilinear'``.
        clamp (bool): clamp the resized image to ``[0, 1]`` (bicubic
            overshoot), as PIL-based transforms do. Default: False.

    Returns:
        Tensor: ``(B, 3, h, w)``.
    """
    if isinstance(size, int):
        size = (size, size)
    if tuple(pixels.shape[-2:]) != tuple(size):
        pixels = F.interpolate(pixels, size=tuple(size), mode=interpolation,
                               align_corners=False, antialias=True)
        if clamp:
            pixels = pixels.clamp_(0, 1)
    mean_t = pixels.new_tensor(mean).view(1, 3, 1, 1)
    std_t = pixels.new_tensor(std).view(1, 3, 1, 1)
    return (pixels - mean_t) / std_t


def preprocess_cfg(model: nn.Module) -> Dict:
    """Image size, mean, std and interpolation of an open_clip model.

    Args:
        model (nn.Module): an open_clip model or its image tower.

    Returns:
        dict: ``size`` (h, w), ``mean`` (3,), ``std`` (3,) (RGB, [0, 1]
        scale), ``interpolation``.
    """
    from open_clip.transform import PreprocessCfg

    visual = getattr(model, 'visual', model)
    defaults = PreprocessCfg()
    cfg = dict(getattr(visual, 'preprocess_cfg', None) or {})
    size = cfg.get('size', getattr(visual, 'image_size', defaults.size))
    if isinstance(size, int):
        size = (size, size)
    return dict(
        size=tuple(int(s) for s in size),
        mean=tuple(cfg.get('mean', getattr(visual, 'image_mean', None)
                           or defaults.mean)),
        std=tuple(cfg.get('std', getattr(visual, 'image_std', None)
                          or defaults.std)),
        interpolation=cfg.get('interpolation', defaults.interpolation))
