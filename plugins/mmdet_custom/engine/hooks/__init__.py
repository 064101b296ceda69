"""Hooks (registered into mmdet's ``HOOKS`` on import)."""
from .ms_deform_attention_hook import MSDeformAttentionHook
from .rng_state_hook import RNGStateHook
from .semseg_visualization_hook import SemSegVisualizationHook

__all__ = ['MSDeformAttentionHook', 'RNGStateHook', 'SemSegVisualizationHook']
