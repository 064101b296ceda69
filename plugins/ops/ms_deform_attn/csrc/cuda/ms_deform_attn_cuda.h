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

// The compute capabilities this library was compiled for (e.g. {800, 900}).
std::vector<int64_t> compiled_cuda_archs();

}  // namespace plugins::msda
