// Schemas of the plugins:: ops and their CPU kernels.
//
// This library (_C_cpu) owns the schemas; _C_cuda only adds CUDA kernels.
// Fake kernels and autograd are registered from Python, in the module named
// by set_python_module (torch checks that they live there).
#include <torch/library.h>

#include "ms_deform_attn_cpu.h"

TORCH_LIBRARY(plugins, m) {
  m.set_python_module("plugins.ops.ms_deform_attn.registration");
  m.def(
      "ms_deform_attn(Tensor value, Tensor spatial_shapes, "
      "Tensor level_start_index, Tensor sampling_locations, "
      "Tensor attention_weights) -> Tensor");
  m.def(
      "ms_deform_attn_backward(Tensor grad_output, Tensor value, "
      "Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(plugins, CPU, m) {
  m.impl("ms_deform_attn", &plugins::msda::ms_deform_attn_forward_cpu);
  m.impl("ms_deform_attn_backward",
         &plugins::msda::ms_deform_attn_backward_cpu);
}
