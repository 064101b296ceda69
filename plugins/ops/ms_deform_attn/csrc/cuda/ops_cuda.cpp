// CUDA kernels of the plugins:: ops (schemas live in _C_cpu), plus two small
// ops: the compiled architectures (for `python -m plugins.ops.info`) and
// the flag of levels the kernels skipped as inconsistent.
#include <torch/library.h>

#include "ms_deform_attn_cuda.h"

TORCH_LIBRARY_FRAGMENT(plugins, m) {
  m.def("ms_deform_attn_cuda_archs() -> int[]",
        &plugins::msda::compiled_cuda_archs);
  m.def("ms_deform_attn_cuda_level_errors(int device) -> int",
        &plugins::msda::take_level_errors);
}

TORCH_LIBRARY_IMPL(plugins, CUDA, m) {
  m.impl("ms_deform_attn", &plugins::msda::ms_deform_attn_forward_cuda);
  m.impl("ms_deform_attn_backward",
         &plugins::msda::ms_deform_attn_backward_cuda);
}
