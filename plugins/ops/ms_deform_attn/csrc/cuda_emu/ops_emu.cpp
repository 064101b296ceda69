// Op registrations of the CPU emulation build (cuda_emu.py generates the
// translation unit: `#define MSDA_EMU_NS <namespace>`, then
// `#include "<csrc>/cuda/ms_deform_attn_cuda.cu"`, then this file).  Each
// build registers under a namespace of its own, so a test process can load
// the clean build and planted-bug builds side by side.
#include <torch/library.h>

#include <string>
#include <vector>

namespace {

// Kernels launched since the last call: offsets into this library, which
// cuda_emu.py names with `nm` (or the launch expression where dladdr fails).
std::vector<std::string> take_launch_log() {
  std::lock_guard<std::mutex> lock(cuda_emu::g_log_mutex);
  std::vector<std::string> out;
  out.swap(cuda_emu::g_launch_log);
  return out;
}

}  // namespace

// TORCH_LIBRARY stringifies its argument: expand MSDA_EMU_NS first.
#define MSDA_EMU_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
MSDA_EMU_LIBRARY(MSDA_EMU_NS, m) {
  m.def("forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
        "Tensor sampling_locations, Tensor attention_weights) -> Tensor",
        &plugins::msda::ms_deform_attn_forward_cuda);
  m.def("backward(Tensor grad_output, Tensor value, Tensor spatial_shapes, "
        "Tensor level_start_index, Tensor sampling_locations, "
        "Tensor attention_weights) -> (Tensor, Tensor, Tensor)",
        &plugins::msda::ms_deform_attn_backward_cuda);
  m.def("level_errors(int device) -> int", &plugins::msda::take_level_errors);
  m.def("launches() -> str[]", &take_launch_log);
}
