"""Multi-scale deformable attention: the op ``torch.ops.plugins.ms_deform_attn``
(its schema is registered on import; its compiled CPU/CUDA kernels are found
or built by a loader on first use), the pure-PyTorch reference, and the op's
export forms (a gather implementation for ONNX, the loader of AOTInductor
packages)."""
from . import registration  # noqa: F401  (op schemas: registries only)
from .export import aoti_load_package, export_decompositions
from .function import ms_deform_attn
from .gather import ms_deform_attn_gather
from .locations import sampling_locations
from .reference import ms_deform_attn_reference

__all__ = ['aoti_load_package', 'export_decompositions', 'ms_deform_attn',
           'ms_deform_attn_gather', 'ms_deform_attn_reference',
           'sampling_locations']
