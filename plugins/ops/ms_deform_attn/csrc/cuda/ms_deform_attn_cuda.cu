// CUDA kernels of multi-scale deformable attention.
//
// One thread handles C consecutive channels of one (batch, query, head)
// (C * sizeof(scalar_t) = 16 bytes when D allows: one vector load per
// corner), so the G = D / C threads of a (batch, query, head) share its
// locations and bilinear coefficients through the L1 cache instead of each
// thread recomputing them for a single channel.  Accumulation is in float
// (double for double inputs).
//
// Backward: grad_value is scattered with atomics into a float buffer (and
// is therefore not bitwise deterministic: declared through
// alertNotDeterministic).  The per-point gradients of locations and
// weights are reduced over the G threads with warp shuffles when G is a
// power of two <= 32, otherwise with atomics.
//
// Block size 256 with __launch_bounds__, so the kernels launch on every
// architecture (no 1024-thread blocks); any batch size, no im2col step.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <vector>

#include "../bilinear.h"
#include "../ms_deform_attn.h"
#include "ms_deform_attn_cuda.h"

namespace plugins::msda {
namespace {

constexpr int kThreads = 256;

// C values of one thread, loaded/stored as one vector access.
template <typename T, int C>
struct alignas(sizeof(T) * C) Pack {
  T v[C];
};

template <typename scalar_t, typename acc_t, int C>
__device__ __forceinline__ void load_pack(const scalar_t* p, acc_t* out) {
  const Pack<scalar_t, C> x = *reinterpret_cast<const Pack<scalar_t, C>*>(p);
#pragma unroll
  for (int k = 0; k < C; ++k) out[k] = static_cast<acc_t>(x.v[k]);
}

template <typename scalar_t, typename acc_t, int C>
__device__ __forceinline__ void store_pack(scalar_t* p, const acc_t* in) {
  Pack<scalar_t, C> x;
#pragma unroll
  for (int k = 0; k < C; ++k) x.v[k] = static_cast<scalar_t>(in[k]);
  *reinterpret_cast<Pack<scalar_t, C>*>(p) = x;
}

struct Geometry {
  int64_t N, S, Lq;
  int32_t M, D, L, P, G;  // G = D / C threads per (batch, query, head)
};

template <typename scalar_t, typename acc_t, int C>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ value,
                   const int64_t* __restrict__ shapes,
                   const int64_t* __restrict__ starts,
                   const scalar_t* __restrict__ locations,
                   const scalar_t* __restrict__ weights,
                   scalar_t* __restrict__ output, const Geometry geo) {
  const int64_t total = geo.N * geo.Lq * geo.M * geo.G;
  const int64_t MD = static_cast<int64_t>(geo.M) * geo.D;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       t < total; t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t g = static_cast<int32_t>(t % geo.G);
    const int64_t i = t / geo.G;  // (n * Lq + q) * M + m
    const int32_t m = static_cast<int32_t>(i % geo.M);
    const int64_t n = i / (geo.Lq * geo.M);
    const scalar_t* value_nm = value + n * geo.S * MD + m * geo.D + g * C;
    const scalar_t* loc = locations + i * geo.L * geo.P * 2;
    const scalar_t* attn = weights + i * geo.L * geo.P;
    acc_t acc[C];
#pragma unroll
    for (int k = 0; k < C; ++k) acc[k] = acc_t(0);
    Bilinear<acc_t> b;
    for (int32_t l = 0; l < geo.L; ++l) {
      const int32_t H = static_cast<int32_t>(__ldg(shapes + 2 * l));
      const int32_t W = static_cast<int32_t>(__ldg(shapes + 2 * l + 1));
      const scalar_t* level = value_nm + __ldg(starts + l) * MD;
      for (int32_t p = 0; p < geo.P; ++p, loc += 2, ++attn) {
        if (!bilinear_coefficients<acc_t>(static_cast<acc_t>(loc[0]),
                                          static_cast<acc_t>(loc[1]), H, W, b)) {
          continue;
        }
        const acc_t a = static_cast<acc_t>(*attn);
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          if (!b.valid[c]) continue;
          acc_t v[C];
          load_pack<scalar_t, acc_t, C>(level + b.offset[c] * MD, v);
          const acc_t k = a * b.w[c];
#pragma unroll
          for (int j = 0; j < C; ++j) acc[j] += k * v[j];
        }
      }
    }
    store_pack<scalar_t, acc_t, C>(output + i * geo.D + g * C, acc);
  }
}

// kWarpReduce: G is a power of two <= 32, so the G threads of a (batch,
// query, head) sit in one warp and reduce with shuffles; otherwise each
// thread adds its partial sums atomically.
template <typename scalar_t, typename acc_t, int C, bool kWarpReduce>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ grad_output,
                    const scalar_t* __restrict__ value,
                    const int64_t* __restrict__ shapes,
                    const int64_t* __restrict__ starts,
                    const scalar_t* __restrict__ locations,
                    const scalar_t* __restrict__ weights,
                    acc_t* __restrict__ grad_value,
                    acc_t* __restrict__ grad_locations,
                    acc_t* __restrict__ grad_weights, const Geometry geo) {
  const int64_t total = geo.N * geo.Lq * geo.M * geo.G;
  const int64_t MD = static_cast<int64_t>(geo.M) * geo.D;
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  // Threads past the end stay alive (with nothing to add) so that every
  // lane of a warp takes part in the shuffles.
  const bool active = t < total;
  const int64_t ts = active ? t : 0;
  const int32_t g = static_cast<int32_t>(ts % geo.G);
  const int64_t i = ts / geo.G;
  const int32_t m = static_cast<int32_t>(i % geo.M);
  const int64_t n = i / (geo.Lq * geo.M);
  const int64_t channel = m * static_cast<int64_t>(geo.D) + g * C;
  const scalar_t* value_nm = value + n * geo.S * MD + channel;
  acc_t* grad_value_nm = grad_value + n * geo.S * MD + channel;
  const scalar_t* loc = locations + i * geo.L * geo.P * 2;
  const scalar_t* attn = weights + i * geo.L * geo.P;
  acc_t* gloc = grad_locations + i * geo.L * geo.P * 2;
  acc_t* gattn = grad_weights + i * geo.L * geo.P;
  acc_t go[C];
  if (active) {
    load_pack<scalar_t, acc_t, C>(grad_output + i * geo.D + g * C, go);
  } else {
#pragma unroll
    for (int k = 0; k < C; ++k) go[k] = acc_t(0);
  }
  Bilinear<acc_t> b;
  for (int32_t l = 0; l < geo.L; ++l) {
    const int32_t H = static_cast<int32_t>(__ldg(shapes + 2 * l));
    const int32_t W = static_cast<int32_t>(__ldg(shapes + 2 * l + 1));
    const int64_t start = __ldg(starts + l) * MD;
    for (int32_t p = 0; p < geo.P; ++p) {
      const int32_t j = l * geo.P + p;
      acc_t g_attn = 0, g_x = 0, g_y = 0, a = 0;
      if (active &&
          bilinear_coefficients<acc_t>(static_cast<acc_t>(loc[2 * j]),
                                       static_cast<acc_t>(loc[2 * j + 1]), H, W,
                                       b)) {
        a = static_cast<acc_t>(attn[j]);
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          if (!b.valid[c]) continue;
          const int64_t row = start + b.offset[c] * MD;
          acc_t v[C];
          load_pack<scalar_t, acc_t, C>(value_nm + row, v);
          acc_t dot = 0;
          const acc_t k = a * b.w[c];
#pragma unroll
          for (int q = 0; q < C; ++q) {
            dot += go[q] * v[q];
            atomicAdd(grad_value_nm + row + q, k * go[q]);
          }
          g_attn += b.w[c] * dot;
          g_x += b.dwdx[c] * dot;
          g_y += b.dwdy[c] * dot;
        }
      }
      // x = loc_x * W - 0.5, so d/dloc_x = W * d/dx (and H for y).
      g_x *= a * static_cast<acc_t>(W);
      g_y *= a * static_cast<acc_t>(H);
      if constexpr (kWarpReduce) {
        for (int offset = geo.G / 2; offset > 0; offset /= 2) {
          g_attn += __shfl_xor_sync(0xffffffffu, g_attn, offset);
          g_x += __shfl_xor_sync(0xffffffffu, g_x, offset);
          g_y += __shfl_xor_sync(0xffffffffu, g_y, offset);
        }
        if (active && g == 0) {
          gattn[j] = g_attn;
          gloc[2 * j] = g_x;
          gloc[2 * j + 1] = g_y;
        }
      } else if (active) {
        atomicAdd(gattn + j, g_attn);
        atomicAdd(gloc + 2 * j, g_x);
        atomicAdd(gloc + 2 * j + 1, g_y);
      }
    }
  }
}

// Channels per thread: 16 bytes worth when D and the pointers allow it,
// otherwise one.
template <typename scalar_t>
int channels_per_thread(int64_t D, std::initializer_list<const void*> ptrs) {
  constexpr int kWide = sizeof(scalar_t) >= 16 ? 1 : 16 / sizeof(scalar_t);
  if (D % kWide != 0) return 1;
  for (const void* p : ptrs) {
    if (reinterpret_cast<uintptr_t>(p) % (kWide * sizeof(scalar_t)) != 0) return 1;
  }
  return kWide;
}

template <typename scalar_t>
constexpr int wide_channels() {
  return sizeof(scalar_t) >= 16 ? 1 : 16 / sizeof(scalar_t);
}

int64_t blocks_for(int64_t threads) {
  const int64_t blocks = (threads + kThreads - 1) / kThreads;
  return std::max<int64_t>(1, std::min<int64_t>(blocks, (int64_t{1} << 31) - 1));
}

}  // namespace

at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value,
                                       const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index,
                                       const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights) {
  const Sizes s = check_inputs(value, spatial_shapes, level_start_index,
                               sampling_locations, attention_weights);
  const c10::cuda::CUDAGuard guard(value.device());
  auto output = at::empty({s.N, s.Lq, s.M * s.D}, value.options());
  if (output.numel() == 0) return output;
  if (s.S == 0 || s.L == 0 || s.P == 0) return output.zero_();
  const auto v = value.contiguous();
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();
  const auto loc = sampling_locations.contiguous();
  const auto attn = attention_weights.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        constexpr int kWide = wide_channels<scalar_t>();
        const int C = channels_per_thread<scalar_t>(
            s.D, {v.const_data_ptr(), output.const_data_ptr()});
        const Geometry geo{s.N, s.S, s.Lq, static_cast<int32_t>(s.M),
                           static_cast<int32_t>(s.D), static_cast<int32_t>(s.L),
                           static_cast<int32_t>(s.P),
                           static_cast<int32_t>(s.D / C)};
        const int64_t blocks = blocks_for(s.N * s.Lq * s.M * geo.G);
        auto launch = [&](auto kernel) {
          kernel<<<blocks, kThreads, 0, stream>>>(
              v.const_data_ptr<scalar_t>(), shapes.const_data_ptr<int64_t>(),
              starts.const_data_ptr<int64_t>(), loc.const_data_ptr<scalar_t>(),
              attn.const_data_ptr<scalar_t>(),
              output.mutable_data_ptr<scalar_t>(), geo);
        };
        if (C == kWide) {
          launch(forward_kernel<scalar_t, acc_t, kWide>);
        } else {
          launch(forward_kernel<scalar_t, acc_t, 1>);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& value,
    const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  const Sizes s = check_inputs(value, spatial_shapes, level_start_index,
                               sampling_locations, attention_weights);
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef({s.N, s.Lq, s.M * s.D}),
              "ms_deform_attn_backward: grad_output must be (N, Lq, M*D) = (",
              s.N, ", ", s.Lq, ", ", s.M * s.D, "), got ", grad_output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == value.scalar_type() &&
                  grad_output.device() == value.device(),
              "ms_deform_attn_backward: grad_output (", grad_output.scalar_type(),
              ", ", grad_output.device(), ") must match value (",
              value.scalar_type(), ", ", value.device(), ")");
  at::globalContext().alertNotDeterministic("ms_deform_attn_backward_cuda");
  const c10::cuda::CUDAGuard guard(value.device());
  const auto acc_type = at::toOpMathType(value.scalar_type());
  const auto acc_options = value.options().dtype(acc_type);
  auto grad_value = at::zeros({s.N, s.S, s.M, s.D}, acc_options);
  auto grad_locations = at::zeros({s.N, s.Lq, s.M, s.L, s.P, 2}, acc_options);
  auto grad_weights = at::zeros({s.N, s.Lq, s.M, s.L, s.P}, acc_options);
  if (s.N * s.Lq * s.M * s.L * s.P > 0 && s.S * s.D > 0) {
    const auto go = grad_output.contiguous();
    const auto v = value.contiguous();
    const auto shapes = spatial_shapes.contiguous();
    const auto starts = level_start_index.contiguous();
    const auto loc = sampling_locations.contiguous();
    const auto attn = attention_weights.contiguous();
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, value.scalar_type(),
        "ms_deform_attn_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          constexpr int kWide = wide_channels<scalar_t>();
          const int C = channels_per_thread<scalar_t>(
              s.D, {v.const_data_ptr(), go.const_data_ptr()});
          const int32_t G = static_cast<int32_t>(s.D / C);
          const bool warp_reduce = G <= 32 && (G & (G - 1)) == 0;
          const Geometry geo{s.N, s.S, s.Lq, static_cast<int32_t>(s.M),
                             static_cast<int32_t>(s.D), static_cast<int32_t>(s.L),
                             static_cast<int32_t>(s.P), G};
          const int64_t threads = s.N * s.Lq * s.M * G;
          TORCH_CHECK(threads / kThreads < (int64_t{1} << 31),
                      "ms_deform_attn_backward_cuda: problem too large (",
                      threads, " threads)");
          const int64_t blocks = (threads + kThreads - 1) / kThreads;
          auto launch = [&](auto kernel) {
            kernel<<<blocks, kThreads, 0, stream>>>(
                go.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(),
                shapes.const_data_ptr<int64_t>(), starts.const_data_ptr<int64_t>(),
                loc.const_data_ptr<scalar_t>(), attn.const_data_ptr<scalar_t>(),
                grad_value.mutable_data_ptr<acc_t>(),
                grad_locations.mutable_data_ptr<acc_t>(),
                grad_weights.mutable_data_ptr<acc_t>(), geo);
          };
          if (C == kWide && warp_reduce) {
            launch(backward_kernel<scalar_t, acc_t, kWide, true>);
          } else if (C == kWide) {
            launch(backward_kernel<scalar_t, acc_t, kWide, false>);
          } else if (warp_reduce) {
            launch(backward_kernel<scalar_t, acc_t, 1, true>);
          } else {
            launch(backward_kernel<scalar_t, acc_t, 1, false>);
          }
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
  if (acc_type != value.scalar_type()) {
    return std::make_tuple(grad_value.to(value.scalar_type()),
                           grad_locations.to(value.scalar_type()),
                           grad_weights.to(value.scalar_type()));
  }
  return std::make_tuple(grad_value, grad_locations, grad_weights);
}

std::vector<int64_t> compiled_cuda_archs() {
#if defined(__CUDA_ARCH_LIST__)
  return {__CUDA_ARCH_LIST__};
#else
  return {};
#endif
}

}  // namespace plugins::msda
