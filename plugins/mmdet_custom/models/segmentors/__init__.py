"""Semantic segmentors (registered into mmdet's ``MODELS`` on import)."""
from .vpt_tpt_semantic_segmentor import VPTTPTSemanticSegmentor

__all__ = ['VPTTPTSemanticSegmentor']
