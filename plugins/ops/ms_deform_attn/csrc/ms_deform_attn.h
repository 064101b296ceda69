// Shared by the CPU and CUDA kernels: problem sizes and input checks of
// the multi-scale deformable attention op (Deformable-DETR contract).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "levels.h"

namespace plugins::msda {

// value (N, S, M, D), sampling_locations (N, Lq, M, L, P, 2),
// attention_weights (N, Lq, M, L, P), spatial_shapes (L, 2),
// level_start_index (L,).
struct Sizes {
  int64_t N, S, M, D, Lq, L, P;
};

// The dtype of sampling_locations and attention_weights may be value's, or
// float32 with a half/bfloat16 value (mixed precision: the points are
// sampled at float32 resolution, the output is in value's dtype).
inline bool coord_dtype_ok(at::ScalarType value, at::ScalarType coord) {
  return coord == value ||
         ((value == at::kHalf || value == at::kBFloat16) && coord == at::kFloat);
}

inline Sizes check_inputs(const at::Tensor& value,
                          const at::Tensor& spatial_shapes,
                          const at::Tensor& level_start_index,
                          const at::Tensor& sampling_locations,
                          const at::Tensor& attention_weights) {
  TORCH_CHECK(value.dim() == 4,
              "ms_deform_attn: value must be (N, S, M, D), got ",
              value.sizes());
  TORCH_CHECK(sampling_locations.dim() == 6 &&
                  sampling_locations.size(5) == 2,
              "ms_deform_attn: sampling_locations must be (N, Lq, M, L, P, 2), "
              "got ",
              sampling_locations.sizes());
  const Sizes s{value.size(0),
                value.size(1),
                value.size(2),
                value.size(3),
                sampling_locations.size(1),
                sampling_locations.size(3),
                sampling_locations.size(4)};
  TORCH_CHECK(sampling_locations.size(0) == s.N &&
                  sampling_locations.size(2) == s.M,
              "ms_deform_attn: sampling_locations ", sampling_locations.sizes(),
              " does not match value (N=", s.N, ", M=", s.M, ")");
  TORCH_CHECK(attention_weights.sizes() ==
                  at::IntArrayRef({s.N, s.Lq, s.M, s.L, s.P}),
              "ms_deform_attn: attention_weights must be (N, Lq, M, L, P) = (",
              s.N, ", ", s.Lq, ", ", s.M, ", ", s.L, ", ", s.P, "), got ",
              attention_weights.sizes());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(0) == s.L &&
                  spatial_shapes.size(1) == 2,
              "ms_deform_attn: spatial_shapes must be (L, 2) = (", s.L,
              ", 2), got ", spatial_shapes.sizes());
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == s.L,
              "ms_deform_attn: level_start_index must be (L,) = (", s.L,
              ",), got ", level_start_index.sizes());
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong &&
                  level_start_index.scalar_type() == at::kLong,
              "ms_deform_attn: spatial_shapes and level_start_index must be "
              "int64, got ",
              spatial_shapes.scalar_type(), " and ",
              level_start_index.scalar_type());
  TORCH_CHECK(at::isFloatingType(value.scalar_type()),
              "ms_deform_attn: value must be floating point, got ",
              value.scalar_type());
  TORCH_CHECK(sampling_locations.scalar_type() ==
                      attention_weights.scalar_type() &&
                  coord_dtype_ok(value.scalar_type(),
                                 sampling_locations.scalar_type()),
              "ms_deform_attn: sampling_locations and attention_weights must "
              "share value's dtype (or be float32 with a float16/bfloat16 "
              "value), got value ",
              value.scalar_type(), ", sampling_locations ",
              sampling_locations.scalar_type(), " and attention_weights ",
              attention_weights.scalar_type());
  const auto device = value.device();
  for (const at::Tensor* t : {&spatial_shapes, &level_start_index,
                              &sampling_locations, &attention_weights}) {
    TORCH_CHECK(t->device() == device,
                "ms_deform_attn: all inputs must be on ", device,
                ", got one on ", t->device());
  }
  return s;
}

// Levels consecutive from 0, sum of H_l * W_l equal to S, each level's
// sizes within level_size_ok (so every level passes level_in_bounds, the
// CUDA kernels' check).  Read on the host: CPU tensors only (the CUDA path
// runs it on a host copy only when PLUGINS_MSDA_CHECK_LEVELS=1).
inline void check_levels_cpu(const at::Tensor& spatial_shapes,
                             const at::Tensor& level_start_index,
                             const Sizes& s) {
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();
  const int64_t* hw = shapes.data_ptr<int64_t>();
  const int64_t* st = starts.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t l = 0; l < s.L; ++l) {
    TORCH_CHECK(hw[2 * l] >= 0 && hw[2 * l + 1] >= 0,
                "ms_deform_attn: spatial_shapes[", l, "] = (", hw[2 * l], ", ",
                hw[2 * l + 1], ") must be non-negative");
    // The kernels index within a level with 32-bit offsets.
    TORCH_CHECK(level_size_ok(hw[2 * l], hw[2 * l + 1]),
                "ms_deform_attn: level ", l, " is ", hw[2 * l], " x ",
                hw[2 * l + 1], ": H, W and H * W must be at most 2^31 - 1");
    TORCH_CHECK(st[l] == total, "ms_deform_attn: level_start_index[", l,
                "] = ", st[l], " but the levels before it hold ", total,
                " positions");
    total += hw[2 * l] * hw[2 * l + 1];
  }
  TORCH_CHECK(total == s.S, "ms_deform_attn: spatial_shapes hold ", total,
              " positions but value has S = ", s.S);
}

}  // namespace plugins::msda
