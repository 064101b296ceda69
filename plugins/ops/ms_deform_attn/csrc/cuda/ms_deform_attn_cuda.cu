// CUDA kernels of multi-scale deformable attention.
//
// One thread handles C consecutive channels of one (batch, query, head)
// (C * sizeof(scalar_t) = 16 bytes when D and the pointers' alignment
// allow: one vector load per corner).  Each of the G = D / C threads of a
// (batch, query, head) loads its locations and recomputes the bilinear
// coefficients itself (the loads hit the same cache lines); packing C
// channels divides that work by C.  Accumulation is in float (double for
// double inputs).
//
// Backward: grad_value is scattered with atomics into a float buffer
// (FloatSink).  The per-point gradients of locations and weights are
// reduced over the G threads with warp shuffles when G is a power of two
// <= 32, otherwise with atomics.  Float atomics make the result depend on
// their order; under torch.use_deterministic_algorithms(True) every sum
// goes through FixedSink instead: each contribution is rounded to a
// multiple of 2^-k (k chosen on the device from bounds of the inputs, so
// no sum can overflow) and added as a 64-bit integer, which is exact and
// so independent of the order: bit-identical results, run after run.  The
// rounding error is about 2^-62 of the bound of each sum, i.e. some
// 62 - log2(bound / |x|) bits for an element x (few for elements far below
// the bound); one inf or NaN input makes every gradient NaN.  C follows D
// alone in this mode (aligned_for_packs), so the float partial sums, and
// the result, do not depend on where the tensors start.
//
// Mixed precision: locations and weights are coord_t, value's type or
// float32 with a half/bfloat16 value.
//
// Metadata: the levels are not checked on the host (that would need a
// sync); each kernel skips a level that does not pass level_in_bounds
// (levels.h: negative or oversized H/W, or not inside [0, S)) and sets
// g_level_errors.  After its kernels every call launches, on the same
// stream, take_level_errors_kernel, which atomically reads and clears the
// flag into a count in mapped host memory; the next call on the device
// raises when the count grew (no sync), and ms_deform_attn_cuda_level_errors
// does the same after syncing the current stream.  With
// PLUGINS_MSDA_CHECK_LEVELS=1 the CPU checks run on a host copy of the
// metadata before every launch (syncs; raises at the bad call).
//
// Block size 256 with __launch_bounds__, so the kernels launch on every
// architecture (no 1024-thread blocks); any batch size, no im2col step.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/ceil.h>
#include <ATen/ops/clamp.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/exp2.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/log2.h>
#include <ATen/ops/logical_not.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "../bilinear.h"
#include "../levels.h"
#include "../ms_deform_attn.h"
#include "ms_deform_attn_cuda.h"

// Launches are written MSDA_LAUNCH(kernel, blocks, threads, stream)(args):
// the CPU emulation (../cuda_emu/cuda_emu.h, which defines the macro first)
// compiles this same file with g++, which has no <<< >>> syntax.
#ifndef MSDA_LAUNCH
#define MSDA_LAUNCH(kernel, blocks, threads, stream) \
  kernel<<<blocks, threads, 0, stream>>>
#endif

namespace plugins::msda {
namespace {

constexpr int kThreads = 256;

// Set (bit 0) by any kernel that skipped a level failing level_in_bounds.
__device__ unsigned int g_level_errors = 0;
// How many times take_level_errors_kernel found g_level_errors set.
__device__ unsigned int g_level_error_count = 0;

// Moves the flag into a count in pinned host memory mapped into the device:
// one atomic read-and-clear, ordered on the stream it is launched on (after
// the op's kernels there).  The count only grows (atomicMax), so the host
// reads it without a sync and never sees it go back.
__global__ void take_level_errors_kernel(unsigned int* host_count) {
  if (atomicExch(&g_level_errors, 0u) != 0u) {
    atomicMax_system(host_count, atomicAdd(&g_level_error_count, 1u) + 1u);
  }
}

__device__ __forceinline__ bool level_ok(int64_t H, int64_t W, int64_t start,
                                         int64_t S) {
  if (level_in_bounds(H, W, start, S)) return true;
  atomicOr(&g_level_errors, 1u);
  return false;
}

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

// Where the backward adds its sums: float atomics into acc_t buffers.
template <typename acc_t>
struct FloatSink {
  acc_t* value;  // (N, S, M, D)
  acc_t* loc;    // (N, Lq, M, L, P, 2)
  acc_t* attn;   // (N, Lq, M, L, P)

  __device__ __forceinline__ void add_value(int64_t k, acc_t x) const {
    atomicAdd(value + k, x);
  }
  __device__ __forceinline__ void add_loc(int64_t k, acc_t x) const {
    atomicAdd(loc + k, x);
  }
  __device__ __forceinline__ void add_attn(int64_t k, acc_t x) const {
    atomicAdd(attn + k, x);
  }
  __device__ __forceinline__ void set_loc(int64_t k, acc_t x) const { loc[k] = x; }
  __device__ __forceinline__ void set_attn(int64_t k, acc_t x) const { attn[k] = x; }
};

// Deterministic sums: x * scale rounded to a 64-bit integer, added with
// integer atomics (two's complement wraps, so signed sums come out right).
// scales: (3,) doubles on the device for value, loc and attn, powers of
// two with |sum| * scale <= 2^62 (NaN where an input is not finite).
struct FixedSink {
  unsigned long long* value;
  unsigned long long* loc;
  unsigned long long* attn;
  const double* scales;

  static __device__ __forceinline__ unsigned long long fixed(double x,
                                                             double scale) {
    return static_cast<unsigned long long>(__double2ll_rn(x * scale));
  }
  template <typename acc_t>
  __device__ __forceinline__ void add_value(int64_t k, acc_t x) const {
    atomicAdd(value + k, fixed(static_cast<double>(x), scales[0]));
  }
  template <typename acc_t>
  __device__ __forceinline__ void add_loc(int64_t k, acc_t x) const {
    atomicAdd(loc + k, fixed(static_cast<double>(x), scales[1]));
  }
  template <typename acc_t>
  __device__ __forceinline__ void add_attn(int64_t k, acc_t x) const {
    atomicAdd(attn + k, fixed(static_cast<double>(x), scales[2]));
  }
  template <typename acc_t>
  __device__ __forceinline__ void set_loc(int64_t k, acc_t x) const {
    loc[k] = fixed(static_cast<double>(x), scales[1]);
  }
  template <typename acc_t>
  __device__ __forceinline__ void set_attn(int64_t k, acc_t x) const {
    attn[k] = fixed(static_cast<double>(x), scales[2]);
  }
};

// out[k] = fixed[k] / scales[which] in out_t (NaN where the scale is).
template <typename out_t>
__global__ void __launch_bounds__(kThreads)
    from_fixed_kernel(const unsigned long long* __restrict__ fixed,
                      const double* __restrict__ scales, int which,
                      out_t* __restrict__ out, int64_t n) {
  const double scale = scales[which];
  const bool finite = isfinite(scale);
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       k < n; k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double x = finite ? static_cast<double>(static_cast<long long>(fixed[k])) / scale
                            : NAN;
    out[k] = static_cast<out_t>(x);
  }
}

template <typename scalar_t, typename coord_t, typename acc_t, int C>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ value,
                   const int64_t* __restrict__ shapes,
                   const int64_t* __restrict__ starts,
                   const coord_t* __restrict__ locations,
                   const coord_t* __restrict__ weights,
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
    const coord_t* loc = locations + i * geo.L * geo.P * 2;
    const coord_t* attn = weights + i * geo.L * geo.P;
    acc_t acc[C];
#pragma unroll
    for (int k = 0; k < C; ++k) acc[k] = acc_t(0);
    Bilinear<acc_t> b;
    for (int32_t l = 0; l < geo.L; ++l, loc += 2 * geo.P, attn += geo.P) {
      const int64_t H64 = __ldg(shapes + 2 * l), W64 = __ldg(shapes + 2 * l + 1);
      const int64_t start = __ldg(starts + l);
      if (!level_ok(H64, W64, start, geo.S)) continue;  // samples nothing
      const int32_t H = static_cast<int32_t>(H64);
      const int32_t W = static_cast<int32_t>(W64);
      const scalar_t* level = value_nm + start * MD;
      for (int32_t p = 0; p < geo.P; ++p) {
        if (!bilinear_coefficients<acc_t>(static_cast<acc_t>(loc[2 * p]),
                                          static_cast<acc_t>(loc[2 * p + 1]), H,
                                          W, b)) {
          continue;
        }
        const acc_t a = static_cast<acc_t>(attn[p]);
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
template <typename scalar_t, typename coord_t, typename acc_t, int C,
          bool kWarpReduce, typename Sink>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ grad_output,
                    const scalar_t* __restrict__ value,
                    const int64_t* __restrict__ shapes,
                    const int64_t* __restrict__ starts,
                    const coord_t* __restrict__ locations,
                    const coord_t* __restrict__ weights, const Sink sink,
                    const Geometry geo) {
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
  const int64_t grad_value_nm = n * geo.S * MD + channel;  // index in sink.value
  const coord_t* loc = locations + i * geo.L * geo.P * 2;
  const coord_t* attn = weights + i * geo.L * geo.P;
  const int64_t gloc = i * geo.L * geo.P * 2;  // index in sink.loc
  const int64_t gattn = i * geo.L * geo.P;     // index in sink.attn
  acc_t go[C];
  if (active) {
    load_pack<scalar_t, acc_t, C>(grad_output + i * geo.D + g * C, go);
  } else {
#pragma unroll
    for (int k = 0; k < C; ++k) go[k] = acc_t(0);
  }
  Bilinear<acc_t> b;
  for (int32_t l = 0; l < geo.L; ++l) {
    const int64_t H64 = __ldg(shapes + 2 * l), W64 = __ldg(shapes + 2 * l + 1);
    const int64_t level_start = __ldg(starts + l);
    // A bad level reads and writes nothing (its points get zero gradients);
    // the loop still runs so that every lane takes part in the shuffles.
    const bool level_good = level_ok(H64, W64, level_start, geo.S);
    const int32_t H = level_good ? static_cast<int32_t>(H64) : 0;
    const int32_t W = level_good ? static_cast<int32_t>(W64) : 0;
    const int64_t start = level_start * MD;
    for (int32_t p = 0; p < geo.P; ++p) {
      const int32_t j = l * geo.P + p;
      acc_t g_attn = 0, g_x = 0, g_y = 0, a = 0;
      if (active && level_good &&
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
            sink.add_value(grad_value_nm + row + q, k * go[q]);
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
          sink.set_attn(gattn + j, g_attn);
          sink.set_loc(gloc + 2 * j, g_x);
          sink.set_loc(gloc + 2 * j + 1, g_y);
        }
      } else if (active) {
        sink.add_attn(gattn + j, g_attn);
        sink.add_loc(gloc + 2 * j, g_x);
        sink.add_loc(gloc + 2 * j + 1, g_y);
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

// Blocks of a grid-stride launch over `threads` threads.
int64_t blocks_for(int64_t threads) {
  const int64_t blocks = (threads + kThreads - 1) / kThreads;
  return std::max<int64_t>(1, std::min<int64_t>(blocks, (int64_t{1} << 31) - 1));
}

template <typename T>
struct Tag {
  using type = T;
};

// Calls f(Tag<coord_t>{}) with the type of the locations and weights:
// value's own, or float32 with a half/bfloat16 value.
template <typename scalar_t, typename F>
void with_coord_type(at::ScalarType coord, F&& f) {
  if constexpr (std::is_same_v<scalar_t, at::Half> ||
                std::is_same_v<scalar_t, at::BFloat16>) {
    if (coord == at::kFloat) return f(Tag<float>{});
  }
  f(Tag<scalar_t>{});
}

// PLUGINS_MSDA_CHECK_LEVELS=1: check the metadata on the host (a sync)
// with the CPU checks before launching, so a bad level raises with its
// numbers instead of being skipped.
void maybe_check_levels_on_host(const at::Tensor& spatial_shapes,
                                const at::Tensor& level_start_index,
                                const Sizes& s) {
  const char* flag = std::getenv("PLUGINS_MSDA_CHECK_LEVELS");
  if (flag == nullptr || flag[0] == '\0' || flag[0] == '0') return;
  check_levels_cpu(spatial_shapes.cpu(), level_start_index.cpu(), s);
}

// (3,) doubles on the device: the scales of FixedSink for grad_value,
// grad_locations and grad_weights, 2^(62 - ceil(log2(bound))) for bounds
// of the absolute sums (weights w_c of a point sum to at most 1, their
// x/y derivatives to at most 2 in absolute value):
//   grad_value:     Lq * L * P * max|a| * max|go|
//   grad_weights:   D * max|go| * max|v|
//   grad_locations: 2 * D * max|go| * max|v| * max|a| * max(H, W)
// Computed with tensor ops on the device: no sync.  NaN where a bound is
// not finite (an input holds inf or NaN): from_fixed_kernel then writes NaN.
at::Tensor fixed_point_scales(const at::Tensor& go, const at::Tensor& v,
                              const at::Tensor& attn,
                              const at::Tensor& spatial_shapes, const Sizes& s) {
  const auto amax = [](const at::Tensor& t) {
    return t.abs().amax().to(at::kDouble);
  };
  const auto go_max = amax(go), v_max = amax(v), a_max = amax(attn);
  const auto hw_max = spatial_shapes.amax().to(at::kDouble);
  const double points = static_cast<double>(s.Lq * s.L * s.P);
  const double D = static_cast<double>(s.D);
  const auto bounds =
      at::stack({go_max * a_max * points,
                 go_max * v_max * a_max * hw_max * (2.0 * D), go_max * v_max * D});
  auto scales = at::exp2(
      at::clamp(at::ceil(at::log2(bounds)).neg_().add_(62.0), -1000.0, 1000.0));
  return scales.masked_fill_(at::logical_not(at::isfinite(bounds)), NAN);
}

// The channels per thread (channels_per_thread) change the float partial
// sums that FixedSink rounds, so in deterministic mode they must follow D
// alone, not where the tensors happen to start: a contiguous `t` that
// could take 16-byte packs but is misaligned is copied to a fresh (aligned)
// allocation.  Same values, whatever the layout -> bit-identical gradients.
at::Tensor aligned_for_packs(const at::Tensor& t, int64_t D) {
  const int64_t size = t.element_size();
  const int64_t wide = size >= 16 ? 1 : 16 / size;
  const auto address = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  if (D % wide != 0 || address % (wide * size) == 0) return t;
  return t.clone(at::MemoryFormat::Contiguous);
}

// Per device: the count take_level_errors_kernel writes and how much of it
// the host has reported.  The host buffer is allocated at a device's first
// call (so a CUDA-graph capture needs one eager call first, as cuBLAS does).
struct LevelErrors {
  unsigned int* host = nullptr;    // pinned, written by the device
  unsigned int* device = nullptr;  // the same memory, the device's address
  unsigned int reported = 0;
};
std::mutex g_level_errors_mutex;

LevelErrors& level_errors_of(int device) {  // holding g_level_errors_mutex
  static std::unordered_map<int, LevelErrors> all;
  LevelErrors& e = all[device];
  if (e.host == nullptr) {
    void* p = nullptr;
    C10_CUDA_CHECK(cudaHostAlloc(&p, sizeof(unsigned int), cudaHostAllocMapped));
    e.host = static_cast<unsigned int*>(p);
    *e.host = 0;
    C10_CUDA_CHECK(cudaHostGetDevicePointer(&e.device, e.host, 0));
  }
  return e;
}

// Whether the device counted skipped levels the host has not reported yet
// (marks them reported).  Reads host memory: no sync.
bool unreported_level_errors(int device) {
  std::lock_guard<std::mutex> lock(g_level_errors_mutex);
  LevelErrors& e = level_errors_of(device);
  const unsigned int count = std::atomic_ref<unsigned int>(*e.host).load();
  if (count == e.reported) return false;
  e.reported = count;
  return true;
}

// At the start of every call: a bad level of an earlier call on this
// device (its take kernel has run by now, or it is reported at a later
// call) raises here, without a host sync per call.
void raise_earlier_level_errors(const at::Device& device) {
  TORCH_CHECK(!unreported_level_errors(device.index()),
              "ms_deform_attn (", device,
              "): an earlier call got spatial_shapes / level_start_index "
              "that do not fit value (a level over 2^31 - 1 positions or not "
              "inside [0, S)); its kernels skipped those levels (zero output "
              "and gradients there).  The GPU checks levels without a host "
              "sync, so this is reported at a later call; set "
              "PLUGINS_MSDA_CHECK_LEVELS=1 to raise at the bad call itself, "
              "with its numbers.");
}

// After an op's kernels, on their stream.
void enqueue_take_level_errors(const at::Device& device, cudaStream_t stream) {
  unsigned int* target = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_level_errors_mutex);
    target = level_errors_of(device.index()).device;
  }
  MSDA_LAUNCH(take_level_errors_kernel, 1, 1, stream)(target);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename out_t>
void from_fixed(const at::Tensor& fixed, const at::Tensor& scales, int which,
                at::Tensor& out, cudaStream_t stream) {
  const int64_t n = out.numel();
  if (n == 0) return;
  MSDA_LAUNCH(from_fixed_kernel<out_t>, blocks_for(n), kThreads, stream)(
      reinterpret_cast<const unsigned long long*>(fixed.const_data_ptr<int64_t>()),
      scales.const_data_ptr<double>(), which, out.mutable_data_ptr<out_t>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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
  raise_earlier_level_errors(value.device());
  auto output = at::empty({s.N, s.Lq, s.M * s.D}, value.options());
  if (output.numel() == 0) return output;
  if (s.S == 0 || s.L == 0 || s.P == 0) return output.zero_();
  maybe_check_levels_on_host(spatial_shapes, level_start_index, s);
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
        with_coord_type<scalar_t>(loc.scalar_type(), [&](auto tag) {
          using coord_t = typename decltype(tag)::type;
          auto launch = [&](auto kernel) {
            MSDA_LAUNCH(kernel, blocks, kThreads, stream)(
                v.const_data_ptr<scalar_t>(), shapes.const_data_ptr<int64_t>(),
                starts.const_data_ptr<int64_t>(), loc.const_data_ptr<coord_t>(),
                attn.const_data_ptr<coord_t>(),
                output.mutable_data_ptr<scalar_t>(), geo);
          };
          if (C == kWide) {
            launch(forward_kernel<scalar_t, coord_t, acc_t, kWide>);
          } else {
            launch(forward_kernel<scalar_t, coord_t, acc_t, 1>);
          }
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
  enqueue_take_level_errors(value.device(), stream);
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
  const c10::cuda::CUDAGuard guard(value.device());
  raise_earlier_level_errors(value.device());
  // Deterministic sums (FixedSink) when deterministic algorithms are on.
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const auto value_type = value.scalar_type();
  const auto coord_type = sampling_locations.scalar_type();
  const auto acc_type = at::toOpMathType(value_type);
  const auto buffer_options =
      value.options().dtype(deterministic ? at::kLong : acc_type);
  auto grad_value = at::zeros({s.N, s.S, s.M, s.D}, buffer_options);
  auto grad_locations = at::zeros({s.N, s.Lq, s.M, s.L, s.P, 2}, buffer_options);
  auto grad_weights = at::zeros({s.N, s.Lq, s.M, s.L, s.P}, buffer_options);
  at::Tensor scales;
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (s.N * s.Lq * s.M * s.L * s.P > 0 && s.S * s.D > 0) {
    maybe_check_levels_on_host(spatial_shapes, level_start_index, s);
    auto go = grad_output.contiguous();
    auto v = value.contiguous();
    if (deterministic) {
      go = aligned_for_packs(go, s.D);
      v = aligned_for_packs(v, s.D);
    }
    const auto shapes = spatial_shapes.contiguous();
    const auto starts = level_start_index.contiguous();
    const auto loc = sampling_locations.contiguous();
    const auto attn = attention_weights.contiguous();
    if (deterministic) scales = fixed_point_scales(go, v, attn, shapes, s);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, value_type, "ms_deform_attn_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          constexpr int kWide = wide_channels<scalar_t>();
          const int C = channels_per_thread<scalar_t>(
              s.D, {v.const_data_ptr(), go.const_data_ptr()});
          const int32_t G = static_cast<int32_t>(s.D / C);
          const bool warp_reduce = G <= 32 && (G & (G - 1)) == 0;
          const Geometry geo{s.N, s.S, s.Lq, static_cast<int32_t>(s.M),
                             static_cast<int32_t>(s.D), static_cast<int32_t>(s.L),
                             static_cast<int32_t>(s.P), G};
          // One thread per item (no grid-stride loop: the warp shuffles
          // need every lane), so the rounded-up block count must fit.
          const int64_t threads = s.N * s.Lq * s.M * G;
          const int64_t blocks = (threads + kThreads - 1) / kThreads;
          TORCH_CHECK(blocks <= (int64_t{1} << 31) - 1,
                      "ms_deform_attn_backward_cuda: problem too large (",
                      threads, " threads in ", blocks,
                      " blocks, more than 2^31 - 1)");
          with_coord_type<scalar_t>(coord_type, [&](auto tag) {
            using coord_t = typename decltype(tag)::type;
            auto launch = [&](auto sink, auto wide, auto warp) {
              constexpr int kC = decltype(wide)::value ? kWide : 1;
              constexpr bool kWarp = decltype(warp)::value;
              auto* kernel =
                  backward_kernel<scalar_t, coord_t, acc_t, kC, kWarp, decltype(sink)>;
              MSDA_LAUNCH(kernel, blocks, kThreads, stream)(
                      go.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(),
                      shapes.const_data_ptr<int64_t>(),
                      starts.const_data_ptr<int64_t>(),
                      loc.const_data_ptr<coord_t>(), attn.const_data_ptr<coord_t>(),
                      sink, geo);
              C10_CUDA_KERNEL_LAUNCH_CHECK();
            };
            auto with_shape = [&](auto sink) {
              using T = std::true_type;
              using F = std::false_type;
              if (C == kWide && warp_reduce) {
                launch(sink, T{}, T{});
              } else if (C == kWide) {
                launch(sink, T{}, F{});
              } else if (warp_reduce) {
                launch(sink, F{}, T{});
              } else {
                launch(sink, F{}, F{});
              }
            };
            if (deterministic) {
              const auto fixed = [](at::Tensor& t) {
                return reinterpret_cast<unsigned long long*>(
                    t.mutable_data_ptr<int64_t>());
              };
              with_shape(FixedSink{fixed(grad_value), fixed(grad_locations),
                                   fixed(grad_weights),
                                   scales.const_data_ptr<double>()});
            } else {
              with_shape(FloatSink<acc_t>{grad_value.mutable_data_ptr<acc_t>(),
                                          grad_locations.mutable_data_ptr<acc_t>(),
                                          grad_weights.mutable_data_ptr<acc_t>()});
            }
          });
        });
    enqueue_take_level_errors(value.device(), stream);
  }
  if (deterministic) {
    // Integer sums -> the inputs' dtypes (all zeros when nothing ran).
    if (!scales.defined()) {
      scales = at::ones({3}, value.options().dtype(at::kDouble));
    }
    auto out_value = at::empty_like(grad_value, value.options());
    auto out_loc = at::empty_like(grad_locations, sampling_locations.options());
    auto out_attn = at::empty_like(grad_weights, attention_weights.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, value_type, "ms_deform_attn_from_fixed", [&] {
          from_fixed<scalar_t>(grad_value, scales, 0, out_value, stream);
        });
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, coord_type, "ms_deform_attn_from_fixed", [&] {
          from_fixed<scalar_t>(grad_locations, scales, 1, out_loc, stream);
          from_fixed<scalar_t>(grad_weights, scales, 2, out_attn, stream);
        });
    return std::make_tuple(out_value, out_loc, out_attn);
  }
  return std::make_tuple(grad_value.to(value_type), grad_locations.to(coord_type),
                         grad_weights.to(coord_type));
}

int64_t take_level_errors(int64_t device) {
  const auto index = static_cast<c10::DeviceIndex>(device);
  const c10::cuda::CUDAGuard guard(index);
  const auto stream = c10::cuda::getCurrentCUDAStream(index);
  enqueue_take_level_errors(at::Device(at::kCUDA, index), stream);
  C10_CUDA_CHECK(cudaStreamSynchronize(stream));
  return unreported_level_errors(index) ? 1 : 0;
}

std::vector<int64_t> compiled_cuda_archs() {
#if defined(__CUDA_ARCH_LIST__)
  return {__CUDA_ARCH_LIST__};
#else
  return {};
#endif
}

}  // namespace plugins::msda
