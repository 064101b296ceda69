"""mmdet drop-in deformable attention on ``plugins.ops`` kernels.

``MSDeformAttention`` is registered into mmdet's ``MODELS`` on import;
``convert_ms_deform_attention`` swaps it into a built model (the
``MSDeformAttentionHook`` in ``engine/hooks`` calls it for a runner).
"""
from .convert_ms_deform_attention import convert_ms_deform_attention
from .ms_deform_attention import MSDeformAttention

__all__ = ['MSDeformAttention', 'convert_ms_deform_attention']
