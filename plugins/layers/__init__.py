"""Host-free layers: the deformable cross-attention projector and its parts."""
from .alignment import (DEFAULT_HIDDEN_DIM, DEFAULT_NUM_HEADS,
                        DEFAULT_NUM_POINTS, DeformableCrossAttentionLayer,
                        MultiScaleDeformableCrossAttentionAlignment)
from .ms_deform_cross_attention import (MSDeformCrossAttention,
                                        grid_init_offsets_,
                                        ms_deform_attention_forward)
from .norm import group_norm
from .position_encoding import reference_grid, sine_position_encoding
from .sizes import check_attention_args, check_projector_args, check_size

__all__ = [
    'DEFAULT_HIDDEN_DIM', 'DEFAULT_NUM_HEADS', 'DEFAULT_NUM_POINTS',
    'check_attention_args', 'check_projector_args', 'check_size',
    'DeformableCrossAttentionLayer',
    'MultiScaleDeformableCrossAttentionAlignment', 'MSDeformCrossAttention',
    'grid_init_offsets_', 'group_norm', 'ms_deform_attention_forward', 'reference_grid',
    'sine_position_encoding'
]
