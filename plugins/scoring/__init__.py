"""Zero-shot scoring of candidate regions (host-free: no mmdet imports).

Crop each region, apply its mask by a strategy (``gray``, ``raw``,
``soft``), score it against positive and negative prompts with a CLIP-family
model, and turn the summed probabilities into a score multiplier.
"""
from .builder import build_region_scorer
from .head import head_type, logit_params, prompt_probs
from .masking import (GRAY, INSIDE_GAIN, STRATEGIES, apply_strategy, crop_box,
                      mask_gray, mask_raw, mask_soft)
from .multiplier import MultiplierRule, semantic_multiplier
from .prompts import SHIPPED_PROMPTS, load_prompts, read_prompt_file
from .region_scorer import RECORD_FIELDS, RegionScorer, load_image
from .regions import decode_mask, to_xyxy

__all__ = [
    'build_region_scorer', 'head_type', 'logit_params', 'prompt_probs', 'GRAY',
    'INSIDE_GAIN', 'STRATEGIES', 'apply_strategy', 'crop_box', 'mask_gray',
    'mask_raw', 'mask_soft', 'MultiplierRule', 'semantic_multiplier',
    'SHIPPED_PROMPTS', 'load_prompts', 'read_prompt_file', 'RECORD_FIELDS',
    'RegionScorer', 'load_image', 'decode_mask', 'to_xyxy'
]
