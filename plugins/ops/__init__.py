"""Compiled ops of ``plugins`` (floor 1: imports torch only).

``ms_deform_attn`` is the multi-scale deformable attention of
Deformable-DETR with our own CPU and CUDA kernels; nothing is compiled or
loaded on import, only when the op first runs.  ``python -m plugins.ops.info``
shows which backend is active, ``python -m plugins.ops.build`` compiles it
ahead of time.  ``aoti_load_package`` loads an AOTInductor package that
calls the op (it loads the op library first; docs/inference.md).
"""
from .ms_deform_attn import (aoti_load_package, ms_deform_attn,
                             ms_deform_attn_gather, ms_deform_attn_reference,
                             sampling_locations)

__all__ = ['aoti_load_package', 'ms_deform_attn', 'ms_deform_attn_gather',
           'ms_deform_attn_reference', 'sampling_locations']
