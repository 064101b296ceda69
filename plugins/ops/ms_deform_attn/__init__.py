"""Multi-scale deformable attention: compiled CPU/CUDA kernels registered as
``torch.ops.plugins.ms_deform_attn``, a loader that finds or builds them on
first use, the pure-PyTorch reference, and the op's export forms (a gather
implementation for ONNX, the loader of AOTInductor packages)."""
from .export import aoti_load_package, export_decompositions
from .function import ms_deform_attn
from .gather import ms_deform_attn_gather
from .locations import sampling_locations
from .reference import ms_deform_attn_reference

__all__ = ['aoti_load_package', 'export_decompositions', 'ms_deform_attn',
           'ms_deform_attn_gather', 'ms_deform_attn_reference',
           'sampling_locations']
