"""Multi-scale deformable attention: compiled CPU/CUDA kernels registered as
``torch.ops.plugins.ms_deform_attn``, a loader that finds or builds them on
first use, and the pure-PyTorch reference."""
from .function import ms_deform_attn
from .locations import sampling_locations
from .reference import ms_deform_attn_reference

__all__ = ['ms_deform_attn', 'ms_deform_attn_reference', 'sampling_locations']
