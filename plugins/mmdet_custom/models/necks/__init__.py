"""mmdet necks (registered on import)."""
from .deformable_cross_attention import DeformableCrossAttentionNeck

__all__ = ['DeformableCrossAttentionNeck']
