"""LLaVA-Phi side: PSALM-compatible projector builder and weight loading,
and a compact LLaVA-Phi segmentation model (``plugins.llava.model``).

Host-free: importable in a PSALM checkout with only torch, timm and
transformers installed.
"""
from .projector_builder import (SWIN_DIMS, ConvProjector, SwinConvProjector,
                                build_vision_projector)
from .projector_weights import load_projector_weights, strip_projector_prefix

__all__ = [
    'SWIN_DIMS', 'ConvProjector', 'SwinConvProjector', 'build_vision_projector',
    'load_projector_weights', 'strip_projector_prefix'
]
