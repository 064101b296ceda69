// CPU kernels of multi-scale deformable attention.
//
// Forward: one task per (batch, query, head); the bilinear coefficients of
// each sampling point are computed once and applied to all D channels of
// the four neighbouring value rows (contiguous, so the channel loop
// vectorises).
//
// Backward: one task per (batch, head[, query chunk]).  A task owns its own
// float accumulator for grad_value, so there are no atomics, the result is
// deterministic, and half/bfloat16 gradients accumulate in float32.  Query
// chunks (each with its own accumulator, summed at the end) are used only
// when batch * heads is too small to keep every thread busy.
#include "ms_deform_attn_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <vector>

#include "../bilinear.h"
#include "../ms_deform_attn.h"

namespace plugins::msda {
namespace {

// Level geometry read once from the (tiny) int64 tensors.
struct Levels {
  std::vector<int32_t> H, W;
  std::vector<int64_t> start;
};

Levels read_levels(const at::Tensor& spatial_shapes,
                   const at::Tensor& level_start_index, int64_t L) {
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();
  Levels lv;
  for (int64_t l = 0; l < L; ++l) {
    lv.H.push_back(static_cast<int32_t>(shapes.data_ptr<int64_t>()[2 * l]));
    lv.W.push_back(static_cast<int32_t>(shapes.data_ptr<int64_t>()[2 * l + 1]));
    lv.start.push_back(starts.data_ptr<int64_t>()[l]);
  }
  return lv;
}

// acc[d] += sum over valid corners of coef[c] * rows[c][d]
template <typename scalar_t, typename acc_t>
inline void gather_corners(const scalar_t* const* rows, const acc_t* coef,
                           const bool* valid, int64_t D,
                           acc_t* __restrict__ acc) {
  if (valid[0] && valid[1] && valid[2] && valid[3]) {
    const scalar_t* __restrict__ r0 = rows[0];
    const scalar_t* __restrict__ r1 = rows[1];
    const scalar_t* __restrict__ r2 = rows[2];
    const scalar_t* __restrict__ r3 = rows[3];
    const acc_t c0 = coef[0], c1 = coef[1], c2 = coef[2], c3 = coef[3];
    for (int64_t d = 0; d < D; ++d) {
      acc[d] += c0 * static_cast<acc_t>(r0[d]) + c1 * static_cast<acc_t>(r1[d]) +
                c2 * static_cast<acc_t>(r2[d]) + c3 * static_cast<acc_t>(r3[d]);
    }
    return;
  }
  for (int c = 0; c < 4; ++c) {
    if (!valid[c]) continue;
    const scalar_t* __restrict__ r = rows[c];
    const acc_t k = coef[c];
    for (int64_t d = 0; d < D; ++d) acc[d] += k * static_cast<acc_t>(r[d]);
  }
}

// sum_d a[d] * b[d] with independent partial sums, so the loop vectorises
// without -ffast-math (a single running sum is a serial dependency chain).
template <typename scalar_t, typename acc_t>
inline acc_t dot_product(const acc_t* __restrict__ a,
                         const scalar_t* __restrict__ b, int64_t D) {
  constexpr int kLanes = 16;
  acc_t part[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      part[k] += a[d + k] * static_cast<acc_t>(b[d + k]);
    }
  }
  acc_t sum = 0;
  for (; d < D; ++d) sum += a[d] * static_cast<acc_t>(b[d]);
  for (int k = 0; k < kLanes; ++k) sum += part[k];
  return sum;
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& value, const Levels& lv,
                    const at::Tensor& locations, const at::Tensor& weights,
                    at::Tensor& output, const Sizes& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* value_p = value.const_data_ptr<scalar_t>();
  const scalar_t* loc_p = locations.const_data_ptr<scalar_t>();
  const scalar_t* attn_p = weights.const_data_ptr<scalar_t>();
  scalar_t* out_p = output.mutable_data_ptr<scalar_t>();
  const int64_t MD = s.M * s.D, LP = s.L * s.P;
  const int64_t tasks = s.N * s.Lq * s.M;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, LP * s.D));
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(s.D);
    Bilinear<acc_t> b;
    for (int64_t i = begin; i < end; ++i) {  // i = (n * Lq + q) * M + m
      const int64_t m = i % s.M;
      const int64_t n = i / (s.Lq * s.M);
      std::fill(acc.begin(), acc.end(), acc_t(0));
      const scalar_t* loc = loc_p + i * LP * 2;
      const scalar_t* attn = attn_p + i * LP;
      for (int64_t l = 0; l < s.L; ++l) {
        const scalar_t* level = value_p + (n * s.S + lv.start[l]) * MD + m * s.D;
        for (int64_t p = 0; p < s.P; ++p, loc += 2, ++attn) {
          if (!bilinear_coefficients<acc_t>(static_cast<acc_t>(loc[0]),
                                            static_cast<acc_t>(loc[1]),
                                            lv.H[l], lv.W[l], b)) {
            continue;
          }
          const acc_t a = static_cast<acc_t>(*attn);
          const scalar_t* rows[4];
          acc_t coef[4];
          for (int c = 0; c < 4; ++c) {
            rows[c] = level + b.offset[c] * MD;
            coef[c] = a * b.w[c];
          }
          gather_corners(rows, coef, b.valid, s.D, acc.data());
        }
      }
      scalar_t* out = out_p + i * s.D;
      for (int64_t d = 0; d < s.D; ++d) out[d] = static_cast<scalar_t>(acc[d]);
    }
  });
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& grad_output, const at::Tensor& value,
                     const Levels& lv, const at::Tensor& locations,
                     const at::Tensor& weights, at::Tensor& grad_value_acc,
                     int64_t chunks, at::Tensor& grad_locations,
                     at::Tensor& grad_weights, const Sizes& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* go_p = grad_output.const_data_ptr<scalar_t>();
  const scalar_t* value_p = value.const_data_ptr<scalar_t>();
  const scalar_t* loc_p = locations.const_data_ptr<scalar_t>();
  const scalar_t* attn_p = weights.const_data_ptr<scalar_t>();
  acc_t* gv_p = grad_value_acc.mutable_data_ptr<acc_t>();
  scalar_t* gloc_p = grad_locations.mutable_data_ptr<scalar_t>();
  scalar_t* gattn_p = grad_weights.mutable_data_ptr<scalar_t>();
  const int64_t MD = s.M * s.D, LP = s.L * s.P, D = s.D;
  const int64_t per_chunk = (s.Lq + chunks - 1) / chunks;
  // task = (n * M + m) * chunks + chunk: its accumulator is the (S, D) slab
  // grad_value_acc[n, m, chunk].
  at::parallel_for(0, s.N * s.M * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> go(D);
    Bilinear<acc_t> b;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t chunk = task % chunks;
      const int64_t nm = task / chunks;
      const int64_t m = nm % s.M, n = nm / s.M;
      acc_t* gv_task = gv_p + task * s.S * D;
      const int64_t q_end = std::min(s.Lq, (chunk + 1) * per_chunk);
      for (int64_t q = chunk * per_chunk; q < q_end; ++q) {
        const int64_t i = (n * s.Lq + q) * s.M + m;
        const scalar_t* go_row = go_p + i * D;
        for (int64_t d = 0; d < D; ++d) go[d] = static_cast<acc_t>(go_row[d]);
        const scalar_t* loc = loc_p + i * LP * 2;
        const scalar_t* attn = attn_p + i * LP;
        scalar_t* gloc = gloc_p + i * LP * 2;
        scalar_t* gattn = gattn_p + i * LP;
        for (int64_t l = 0; l < s.L; ++l) {
          const scalar_t* level = value_p + (n * s.S + lv.start[l]) * MD + m * D;
          acc_t* gv_level = gv_task + lv.start[l] * D;
          for (int64_t p = 0; p < s.P;
               ++p, loc += 2, ++attn, gloc += 2, ++gattn) {
            if (!bilinear_coefficients<acc_t>(static_cast<acc_t>(loc[0]),
                                              static_cast<acc_t>(loc[1]),
                                              lv.H[l], lv.W[l], b)) {
              gloc[0] = gloc[1] = *gattn = scalar_t(0);
              continue;
            }
            const acc_t a = static_cast<acc_t>(*attn);
            acc_t g_attn = 0, g_x = 0, g_y = 0;
            for (int c = 0; c < 4; ++c) {
              if (!b.valid[c]) continue;
              // <grad_out, value corner> drives all three gradients.
              const acc_t dot = dot_product(go.data(), level + b.offset[c] * MD, D);
              g_attn += b.w[c] * dot;
              g_x += b.dwdx[c] * dot;
              g_y += b.dwdy[c] * dot;
              acc_t* __restrict__ gv_row = gv_level + b.offset[c] * D;
              const acc_t k = a * b.w[c];
              for (int64_t d = 0; d < D; ++d) gv_row[d] += k * go[d];
            }
            *gattn = static_cast<scalar_t>(g_attn);
            gloc[0] = static_cast<scalar_t>(a * g_x * static_cast<acc_t>(lv.W[l]));
            gloc[1] = static_cast<scalar_t>(a * g_y * static_cast<acc_t>(lv.H[l]));
          }
        }
      }
    }
  });
}

}  // namespace

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value,
                                      const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index,
                                      const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights) {
  const Sizes s = check_inputs(value, spatial_shapes, level_start_index,
                               sampling_locations, attention_weights);
  check_levels_cpu(spatial_shapes, level_start_index, s);
  auto output = at::empty({s.N, s.Lq, s.M * s.D}, value.options());
  if (output.numel() == 0) return output;
  const Levels lv = read_levels(spatial_shapes, level_start_index, s.L);
  const auto v = value.contiguous();
  const auto loc = sampling_locations.contiguous();
  const auto attn = attention_weights.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_cpu", [&] {
        forward_kernel<scalar_t>(v, lv, loc, attn, output, s);
      });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& value,
    const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  const Sizes s = check_inputs(value, spatial_shapes, level_start_index,
                               sampling_locations, attention_weights);
  check_levels_cpu(spatial_shapes, level_start_index, s);
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef({s.N, s.Lq, s.M * s.D}),
              "ms_deform_attn_backward: grad_output must be (N, Lq, M*D) = (",
              s.N, ", ", s.Lq, ", ", s.M * s.D, "), got ", grad_output.sizes());
  auto grad_locations = at::empty_like(sampling_locations,
                                       at::MemoryFormat::Contiguous);
  auto grad_weights = at::empty_like(attention_weights,
                                     at::MemoryFormat::Contiguous);
  auto grad_value = at::empty({s.N, s.S, s.M, s.D}, value.options());
  if (s.N * s.Lq * s.M == 0 || s.S * s.D == 0) {
    grad_value.zero_();
    grad_locations.zero_();
    grad_weights.zero_();
    return std::make_tuple(grad_value, grad_locations, grad_weights);
  }
  const Levels lv = read_levels(spatial_shapes, level_start_index, s.L);
  // Split queries only when (batch, head) tasks cannot fill the threads.
  const int64_t threads = at::get_num_threads();
  const int64_t nm = s.N * s.M;
  const int64_t chunks =
      nm >= 4 * threads ? 1
                        : std::min<int64_t>(s.Lq, (4 * threads + nm - 1) / nm);
  const auto acc_type = at::toOpMathType(value.scalar_type());
  auto grad_value_acc = at::zeros({s.N, s.M, chunks, s.S, s.D},
                                  value.options().dtype(acc_type));
  const auto go = grad_output.contiguous();
  const auto v = value.contiguous();
  const auto loc = sampling_locations.contiguous();
  const auto attn = attention_weights.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(),
      "ms_deform_attn_backward_cpu", [&] {
        backward_kernel<scalar_t>(go, v, lv, loc, attn, grad_value_acc, chunks,
                                  grad_locations, grad_weights, s);
      });
  // (N, M, chunks, S, D) -> (N, S, M, D), summing the query chunks.
  auto summed = chunks == 1 ? grad_value_acc.select(2, 0)
                            : grad_value_acc.sum(2);
  grad_value.copy_(summed.permute({0, 2, 1, 3}));
  return std::make_tuple(grad_value, grad_locations, grad_weights);
}

}  // namespace plugins::msda
