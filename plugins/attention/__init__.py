"""mmdet drop-in deformable attention on ``plugins.ops`` kernels.

Importing this package registers ``MSDeformAttention`` (MODELS) and
``MSDeformAttentionHook`` (HOOKS) with mmdet.
"""
from .convert import convert_ms_deform_attention
from .ms_deform_attention import MSDeformAttention
from .ms_deform_attention_hook import MSDeformAttentionHook

__all__ = ['MSDeformAttention', 'MSDeformAttentionHook',
           'convert_ms_deform_attention']
