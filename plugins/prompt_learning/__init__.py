"""Prompt learning on frozen CLIP models: VPT-Deep visual prompts, CoOp text
context and the patch-text similarity segmentor built from them.

Host-free: torch, open_clip, timm and transformers only (the mmengine wrapper
for ``tools/train.py`` lives in :mod:`plugins.mmdet_custom.models.segmentors`).
"""
from .preprocess import (clip_preprocess_cfg, detect_value_range,
                         preprocess_tensor_images)
from .text_prompt_learner import TextPromptLearner
from .text_towers import (CONTEXT_TOKEN_ID, HFTextTower, OpenCLIPTextTower,
                          build_text_tower)
from .visual_prompt_learner import VisualPromptLearner
from .vpt_tpt_segmentor import VPTTPTSegmentor

__all__ = [
    'clip_preprocess_cfg', 'detect_value_range', 'preprocess_tensor_images',
    'TextPromptLearner', 'VisualPromptLearner', 'VPTTPTSegmentor',
    'CONTEXT_TOKEN_ID', 'HFTextTower', 'OpenCLIPTextTower', 'build_text_tower'
]
