// CUDA entry points of the multi-scale deformable attention op.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>
#include <vector>

namespace plugins::msda {

// Same contract as the CPU kernels (ms_deform_attn_cpu.h).
at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value,
                                       const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index,
                                       const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights);

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& value,
    const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights);

// 1 if kernels on `device` skipped a level failing level_in_bounds
// (levels.h) since the last report, i.e. some call got inconsistent
// spatial_shapes / level_start_index; then reported (0 until the next).
// Reads and clears the device flag on the current stream, then syncs that
// stream.  (Without this call, the next op call on the device raises.)
int64_t take_level_errors(int64_t device);

// The compute capabilities this library was compiled for (e.g. {800, 900}).
std::vector<int64_t> compiled_cuda_archs();

}  // namespace plugins::msda
