// CPU kernels of the plugins:: ops.
//
// The op schemas are defined in Python (registration.py, on `import
// plugins.ops`), so that an exported program or AOTInductor package finds
// `plugins::ms_deform_attn` before this library is loaded; this library
// (_C_cpu) only adds the CPU kernels, _C_cuda the CUDA ones.
#include <torch/library.h>

#include "ms_deform_attn_cpu.h"

TORCH_LIBRARY_IMPL(plugins, CPU, m) {
  m.impl("ms_deform_attn", &plugins::msda::ms_deform_attn_forward_cpu);
  m.impl("ms_deform_attn_backward",
         &plugins::msda::ms_deform_attn_backward_cpu);
}
