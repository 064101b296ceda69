"""The input statistics of each model, read in one place.

open_clip's factory stores a built model's image size, mean, std and
interpolation on ``model.visual.preprocess_cfg`` (from the model config or
the pretrained release); :func:`preprocess_cfg` reads them, falling back to
open_clip's own defaults (the OpenAI CLIP statistics) for a tower built some
other way.  Backbones, prompt learning, scoring and the Open-GroundingDino
adapter all take their mean/std from here.
"""
from typing import Dict

import torch.nn as nn
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

#: OpenAI CLIP statistics (RGB, [0, 1] scale); open_clip's default.
OPENAI_CLIP_MEAN = tuple(OPENAI_DATASET_MEAN)
OPENAI_CLIP_STD = tuple(OPENAI_DATASET_STD)


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
