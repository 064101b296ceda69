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

// Hot loops are compiled for AVX-512 and AVX2+FMA as well as the baseline;
// the loader picks the best clone for the running CPU (GCC ifunc).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MSDA_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MSDA_CPU_CLONES
#endif
// Helpers must be inlined into each clone to be compiled for its ISA.
#if defined(__GNUC__)
#define MSDA_INLINE inline __attribute__((always_inline))
#else
#define MSDA_INLINE inline
#endif

// Raw pointers and sizes of one call (inputs contiguous).
template <typename scalar_t>
struct Problem {
  const scalar_t* value;      // (N, S, M, D)
  const scalar_t* locations;  // (N, Lq, M, L, P, 2)
  const scalar_t* weights;    // (N, Lq, M, L, P)
  const int32_t* H;           // (L,)
  const int32_t* W;           // (L,)
  const int64_t* start;       // (L,)
  Sizes s;
};

// Level geometry read once from the (tiny) int64 tensors.
struct Levels {
  std::vector<int32_t> H, W;
  std::vector<int64_t> start;

  Levels(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
         int64_t L) {
    const auto shapes = spatial_shapes.contiguous();
    const auto starts = level_start_index.contiguous();
    const int64_t* hw = shapes.const_data_ptr<int64_t>();
    const int64_t* st = starts.const_data_ptr<int64_t>();
    for (int64_t l = 0; l < L; ++l) {
      H.push_back(static_cast<int32_t>(hw[2 * l]));
      W.push_back(static_cast<int32_t>(hw[2 * l + 1]));
      start.push_back(st[l]);
    }
  }
};

template <typename scalar_t>
Problem<scalar_t> make_problem(const at::Tensor& value,
                               const at::Tensor& locations,
                               const at::Tensor& weights, const Levels& lv,
                               const Sizes& s) {
  return {value.const_data_ptr<scalar_t>(),
          locations.const_data_ptr<scalar_t>(),
          weights.const_data_ptr<scalar_t>(),
          lv.H.data(),
          lv.W.data(),
          lv.start.data(),
          s};
}

// One sampling point of one (batch, query, head), ready to apply.
template <typename acc_t>
struct Point {
  Bilinear<acc_t> b;
  int64_t level_start;  // first position of its level in S
  acc_t a;              // attention weight
  int32_t H, W;
  bool inside;     // any corner inside the map
  bool all_valid;  // all four corners inside (the common, fast case)
};

// Coefficients of the L * P points of output row i = (n * Lq + q) * M + m.
template <typename scalar_t, typename acc_t>
MSDA_INLINE void plan_points(const Problem<scalar_t>& pb, int64_t i,
                        Point<acc_t>* pts) {
  const Sizes& s = pb.s;
  const scalar_t* loc = pb.locations + i * s.L * s.P * 2;
  const scalar_t* attn = pb.weights + i * s.L * s.P;
  for (int64_t l = 0; l < s.L; ++l) {
    for (int64_t p = 0; p < s.P; ++p, loc += 2, ++attn) {
      Point<acc_t>& pt = pts[l * s.P + p];
      pt.inside = bilinear_coefficients<acc_t>(static_cast<acc_t>(loc[0]),
                                               static_cast<acc_t>(loc[1]),
                                               pb.H[l], pb.W[l], pt.b);
      pt.all_valid = pt.inside && pt.b.valid[0] && pt.b.valid[1] &&
                     pt.b.valid[2] && pt.b.valid[3];
      pt.level_start = pb.start[l];
      pt.a = static_cast<acc_t>(*attn);
      pt.H = pb.H[l];
      pt.W = pb.W[l];
    }
  }
}

// Sampling locations are scattered over maps much larger than the caches,
// so the rows of the *next* output row are prefetched while the current
// one is computed (the loads of one point alone cannot hide the latency).
template <typename T>
MSDA_INLINE void prefetch_row(const T* row, int64_t D, bool write) {
  const char* p = reinterpret_cast<const char*>(row);
  const int64_t bytes = D * static_cast<int64_t>(sizeof(T));
  for (int64_t off = 0; off < bytes; off += 64) {
    if (write) {
      __builtin_prefetch(p + off, 1, 3);
    } else {
      __builtin_prefetch(p + off, 0, 3);
    }
  }
}

template <typename scalar_t, typename acc_t>
MSDA_INLINE void prefetch_points(const Point<acc_t>* pts, int64_t LP,
                            const scalar_t* value_nm, int64_t MD, int64_t D,
                            const acc_t* gv, int64_t gv_stride) {
  for (int64_t j = 0; j < LP; ++j) {
    if (!pts[j].inside) continue;
    for (int c = 0; c < 4; ++c) {
      if (!pts[j].b.valid[c]) continue;
      const int64_t pos = pts[j].level_start + pts[j].b.offset[c];
      prefetch_row(value_nm + pos * MD, D, false);
      if (gv != nullptr) prefetch_row(gv + pos * gv_stride, D, true);
    }
  }
}

// Sums the kLanes partial sums pairwise (log depth instead of a serial
// chain; the halves are added lane-wise, which vectorises).
template <int kLanes, typename acc_t>
MSDA_INLINE acc_t tree_sum(acc_t* part) {
  for (int half = kLanes / 2; half > 0; half /= 2) {
    for (int k = 0; k < half; ++k) part[k] += part[k + half];
  }
  return part[0];
}

constexpr int kLanes = 16;

// Output rows [begin, end) of (N * Lq * M, D); acc is scratch of D and
// pts of 2 * L * P points.
template <typename scalar_t, typename acc_t>
MSDA_CPU_CLONES void forward_range(const Problem<scalar_t>& pb,
                                   scalar_t* __restrict__ out,
                                   acc_t* __restrict__ acc, Point<acc_t>* pts,
                                   int64_t begin, int64_t end) {
  const Sizes& s = pb.s;
  const int64_t MD = s.M * s.D, LP = s.L * s.P, D = s.D;
  if (begin < end) plan_points(pb, begin, pts);
  for (int64_t i = begin; i < end; ++i) {  // i = (n * Lq + q) * M + m
    Point<acc_t>* cur = pts + ((i - begin) % 2) * LP;
    if (i + 1 < end) {
      Point<acc_t>* next = pts + ((i + 1 - begin) % 2) * LP;
      plan_points(pb, i + 1, next);
      const int64_t m1 = (i + 1) % s.M, n1 = (i + 1) / (s.Lq * s.M);
      prefetch_points<scalar_t, acc_t>(next, LP, pb.value + n1 * s.S * MD + m1 * D,
                                       MD, D, nullptr, 0);
    }
    const int64_t m = i % s.M, n = i / (s.Lq * s.M);
    const scalar_t* value_nm = pb.value + n * s.S * MD + m * D;
    for (int64_t d = 0; d < D; ++d) acc[d] = acc_t(0);
    for (int64_t j = 0; j < LP; ++j) {
      const Point<acc_t>& pt = cur[j];
      if (!pt.inside) continue;
      const scalar_t* level = value_nm + pt.level_start * MD;
      if (pt.all_valid) {
        const scalar_t* __restrict__ r0 = level + pt.b.offset[0] * MD;
        const scalar_t* __restrict__ r1 = level + pt.b.offset[1] * MD;
        const scalar_t* __restrict__ r2 = level + pt.b.offset[2] * MD;
        const scalar_t* __restrict__ r3 = level + pt.b.offset[3] * MD;
        const acc_t c0 = pt.a * pt.b.w[0], c1 = pt.a * pt.b.w[1],
                    c2 = pt.a * pt.b.w[2], c3 = pt.a * pt.b.w[3];
        for (int64_t d = 0; d < D; ++d) {
          acc[d] += c0 * static_cast<acc_t>(r0[d]) +
                    c1 * static_cast<acc_t>(r1[d]) +
                    c2 * static_cast<acc_t>(r2[d]) +
                    c3 * static_cast<acc_t>(r3[d]);
        }
        continue;
      }
      for (int c = 0; c < 4; ++c) {
        if (!pt.b.valid[c]) continue;
        const scalar_t* __restrict__ r = level + pt.b.offset[c] * MD;
        const acc_t k = pt.a * pt.b.w[c];
        for (int64_t d = 0; d < D; ++d) acc[d] += k * static_cast<acc_t>(r[d]);
      }
    }
    scalar_t* o = out + i * D;
    for (int64_t d = 0; d < D; ++d) o[d] = static_cast<scalar_t>(acc[d]);
  }
}

// Gradients of one point whose four corners are all inside the map: one
// pass over the channels computes <go, sum_c coef_c * v_c> for the three
// coefficient sets (w, dw/dx, dw/dy) and scatters a * w_c * go into the
// four grad_value rows.  Returns (d/da, d/dx, d/dy) in g.
template <typename scalar_t, typename acc_t>
MSDA_INLINE void backward_point_inside(const Point<acc_t>& pt,
                                  const scalar_t* level, int64_t MD,
                                  acc_t* gv_level, int64_t gv_stride,
                                  const acc_t* __restrict__ go, int64_t D,
                                  acc_t* g) {
  const scalar_t* __restrict__ r0 = level + pt.b.offset[0] * MD;
  const scalar_t* __restrict__ r1 = level + pt.b.offset[1] * MD;
  const scalar_t* __restrict__ r2 = level + pt.b.offset[2] * MD;
  const scalar_t* __restrict__ r3 = level + pt.b.offset[3] * MD;
  acc_t* __restrict__ g0 = gv_level + pt.b.offset[0] * gv_stride;
  acc_t* __restrict__ g1 = gv_level + pt.b.offset[1] * gv_stride;
  acc_t* __restrict__ g2 = gv_level + pt.b.offset[2] * gv_stride;
  acc_t* __restrict__ g3 = gv_level + pt.b.offset[3] * gv_stride;
  // Coefficients in locals: the compiler cannot prove the grad_value
  // stores leave `pt` unchanged and would reload them every channel.
  const acc_t w0 = pt.b.w[0], w1 = pt.b.w[1], w2 = pt.b.w[2], w3 = pt.b.w[3];
  const acc_t x0 = pt.b.dwdx[0], x1 = pt.b.dwdx[1], x2 = pt.b.dwdx[2],
              x3 = pt.b.dwdx[3];
  const acc_t y0 = pt.b.dwdy[0], y1 = pt.b.dwdy[1], y2 = pt.b.dwdy[2],
              y3 = pt.b.dwdy[3];
  const acc_t k0 = pt.a * w0, k1 = pt.a * w1, k2 = pt.a * w2, k3 = pt.a * w3;
  acc_t pa[kLanes] = {}, px[kLanes] = {}, py[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes) {
    // The four value rows, four grad rows and go never overlap.
#pragma GCC ivdep
    for (int k = 0; k < kLanes; ++k) {
      const acc_t gk = go[d + k];
      const acc_t v0 = static_cast<acc_t>(r0[d + k]);
      const acc_t v1 = static_cast<acc_t>(r1[d + k]);
      const acc_t v2 = static_cast<acc_t>(r2[d + k]);
      const acc_t v3 = static_cast<acc_t>(r3[d + k]);
      pa[k] += gk * (w0 * v0 + w1 * v1 + w2 * v2 + w3 * v3);
      px[k] += gk * (x0 * v0 + x1 * v1 + x2 * v2 + x3 * v3);
      py[k] += gk * (y0 * v0 + y1 * v1 + y2 * v2 + y3 * v3);
      g0[d + k] += k0 * gk;
      g1[d + k] += k1 * gk;
      g2[d + k] += k2 * gk;
      g3[d + k] += k3 * gk;
    }
  }
  acc_t ta = 0, tx = 0, ty = 0;
  for (; d < D; ++d) {
    const acc_t gk = go[d];
    const acc_t v0 = static_cast<acc_t>(r0[d]);
    const acc_t v1 = static_cast<acc_t>(r1[d]);
    const acc_t v2 = static_cast<acc_t>(r2[d]);
    const acc_t v3 = static_cast<acc_t>(r3[d]);
    ta += gk * (w0 * v0 + w1 * v1 + w2 * v2 + w3 * v3);
    tx += gk * (x0 * v0 + x1 * v1 + x2 * v2 + x3 * v3);
    ty += gk * (y0 * v0 + y1 * v1 + y2 * v2 + y3 * v3);
    g0[d] += k0 * gk;
    g1[d] += k1 * gk;
    g2[d] += k2 * gk;
    g3[d] += k3 * gk;
  }
  g[0] = tree_sum<kLanes>(pa) + ta;
  g[1] = tree_sum<kLanes>(px) + tx;
  g[2] = tree_sum<kLanes>(py) + ty;
}

// Same for a point on the border: corner by corner, skipping the outside
// ones (never touching their memory).
template <typename scalar_t, typename acc_t>
MSDA_INLINE void backward_point_border(const Point<acc_t>& pt,
                                  const scalar_t* level, int64_t MD,
                                  acc_t* gv_level, int64_t gv_stride,
                                  const acc_t* __restrict__ go, int64_t D,
                                  acc_t* g) {
  g[0] = g[1] = g[2] = acc_t(0);
  for (int c = 0; c < 4; ++c) {
    if (!pt.b.valid[c]) continue;
    const scalar_t* __restrict__ r = level + pt.b.offset[c] * MD;
    acc_t* __restrict__ gr = gv_level + pt.b.offset[c] * gv_stride;
    const acc_t k = pt.a * pt.b.w[c];
    acc_t part[kLanes] = {};
    int64_t d = 0;
    for (; d + kLanes <= D; d += kLanes) {
      for (int j = 0; j < kLanes; ++j) {
        part[j] += go[d + j] * static_cast<acc_t>(r[d + j]);
        gr[d + j] += k * go[d + j];
      }
    }
    acc_t dot = 0;
    for (; d < D; ++d) {
      dot += go[d] * static_cast<acc_t>(r[d]);
      gr[d] += k * go[d];
    }
    dot += tree_sum<kLanes>(part);
    g[0] += pt.b.w[c] * dot;
    g[1] += pt.b.dwdx[c] * dot;
    g[2] += pt.b.dwdy[c] * dot;
  }
}

// All gradients of head m of batch n for queries [q_begin, q_end).
// grad_value rows of this (n, m) start at gv with stride gv_stride (either
// the output itself or a private accumulator); go is scratch of D and pts
// of 2 * L * P points.
template <typename scalar_t, typename acc_t>
MSDA_CPU_CLONES void backward_range(const Problem<scalar_t>& pb,
                                    const scalar_t* grad_output, int64_t n,
                                    int64_t m, int64_t q_begin, int64_t q_end,
                                    acc_t* gv, int64_t gv_stride,
                                    scalar_t* grad_locations,
                                    scalar_t* grad_weights,
                                    acc_t* __restrict__ go, Point<acc_t>* pts) {
  const Sizes& s = pb.s;
  const int64_t MD = s.M * s.D, LP = s.L * s.P, D = s.D;
  const scalar_t* value_nm = pb.value + n * s.S * MD + m * D;
  if (q_begin < q_end) plan_points(pb, (n * s.Lq + q_begin) * s.M + m, pts);
  for (int64_t q = q_begin; q < q_end; ++q) {
    const int64_t i = (n * s.Lq + q) * s.M + m;
    Point<acc_t>* cur = pts + ((q - q_begin) % 2) * LP;
    if (q + 1 < q_end) {
      Point<acc_t>* next = pts + ((q + 1 - q_begin) % 2) * LP;
      plan_points(pb, i + s.M, next);
      prefetch_points<scalar_t, acc_t>(next, LP, value_nm, MD, D, gv, gv_stride);
    }
    const scalar_t* go_row = grad_output + i * D;
    for (int64_t d = 0; d < D; ++d) go[d] = static_cast<acc_t>(go_row[d]);
    scalar_t* gloc = grad_locations + i * LP * 2;
    scalar_t* gattn = grad_weights + i * LP;
    for (int64_t j = 0; j < LP; ++j) {
      const Point<acc_t>& pt = cur[j];
      acc_t g[3] = {0, 0, 0};
      if (pt.all_valid) {
        backward_point_inside(pt, value_nm + pt.level_start * MD, MD,
                              gv + pt.level_start * gv_stride, gv_stride, go, D,
                              g);
      } else if (pt.inside) {
        backward_point_border(pt, value_nm + pt.level_start * MD, MD,
                              gv + pt.level_start * gv_stride, gv_stride, go, D,
                              g);
      }
      gattn[j] = static_cast<scalar_t>(g[0]);
      // x = loc_x * W - 0.5, so d/dloc_x = W * d/dx (and H for y).
      gloc[2 * j] = static_cast<scalar_t>(pt.a * g[1] * static_cast<acc_t>(pt.W));
      gloc[2 * j + 1] =
          static_cast<scalar_t>(pt.a * g[2] * static_cast<acc_t>(pt.H));
    }
  }
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
  if (s.S == 0 || s.L == 0) return output.zero_();
  const Levels lv(spatial_shapes, level_start_index, s.L);
  const auto v = value.contiguous();
  const auto loc = sampling_locations.contiguous();
  const auto attn = attention_weights.contiguous();
  const int64_t rows = s.N * s.Lq * s.M;
  const int64_t grain =
      std::max<int64_t>(1, 16384 / std::max<int64_t>(1, s.L * s.P * s.D));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto pb = make_problem<scalar_t>(v, loc, attn, lv, s);
        scalar_t* out = output.mutable_data_ptr<scalar_t>();
        at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
          std::vector<acc_t> acc(s.D);
          std::vector<Point<acc_t>> pts(2 * s.L * s.P);
          forward_range<scalar_t, acc_t>(pb, out, acc.data(), pts.data(), begin,
                                         end);
        });
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
  TORCH_CHECK(grad_output.scalar_type() == value.scalar_type(),
              "ms_deform_attn_backward: grad_output dtype ",
              grad_output.scalar_type(), " differs from value dtype ",
              value.scalar_type());
  auto grad_value = at::zeros({s.N, s.S, s.M, s.D}, value.options());
  auto grad_locations = at::zeros({s.N, s.Lq, s.M, s.L, s.P, 2}, value.options());
  auto grad_weights = at::zeros({s.N, s.Lq, s.M, s.L, s.P}, value.options());
  if (s.N * s.Lq * s.M * s.L * s.P == 0 || s.S * s.D == 0) {
    return std::make_tuple(grad_value, grad_locations, grad_weights);
  }
  const Levels lv(spatial_shapes, level_start_index, s.L);
  // One task per (batch, head) owns grad_value[n, :, m, :]; queries are
  // split into chunks (each with a private accumulator) only when the
  // (batch, head) tasks cannot keep the threads busy.
  const int64_t threads = at::get_num_threads();
  const int64_t nm = s.N * s.M;
  const int64_t chunks =
      nm >= 4 * threads ? 1
                        : std::min<int64_t>(s.Lq, (4 * threads + nm - 1) / nm);
  const int64_t per_chunk = (s.Lq + chunks - 1) / chunks;
  const auto acc_type = at::toOpMathType(value.scalar_type());
  // float32/float64 with one chunk accumulate straight into grad_value;
  // otherwise into (N, M, chunks, S, D) in the accumulation type.
  const bool direct = chunks == 1 && acc_type == value.scalar_type();
  at::Tensor acc_buffer;
  if (!direct) {
    acc_buffer = at::zeros({s.N, s.M, chunks, s.S, s.D},
                           value.options().dtype(acc_type));
  }
  const auto go = grad_output.contiguous();
  const auto v = value.contiguous();
  const auto loc = sampling_locations.contiguous();
  const auto attn = attention_weights.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(),
      "ms_deform_attn_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto pb = make_problem<scalar_t>(v, loc, attn, lv, s);
        const scalar_t* go_p = go.const_data_ptr<scalar_t>();
        scalar_t* gloc = grad_locations.mutable_data_ptr<scalar_t>();
        scalar_t* gattn = grad_weights.mutable_data_ptr<scalar_t>();
        acc_t* gv_direct = direct ? reinterpret_cast<acc_t*>(
                                        grad_value.mutable_data_ptr<scalar_t>())
                                  : nullptr;
        acc_t* gv_buffer = direct ? nullptr : acc_buffer.mutable_data_ptr<acc_t>();
        at::parallel_for(0, nm * chunks, 1, [&](int64_t begin, int64_t end) {
          std::vector<acc_t> scratch(s.D);
          std::vector<Point<acc_t>> pts(2 * s.L * s.P);
          for (int64_t task = begin; task < end; ++task) {
            const int64_t chunk = task % chunks;
            const int64_t n = task / chunks / s.M, m = task / chunks % s.M;
            acc_t* gv = direct ? gv_direct + n * s.S * s.M * s.D + m * s.D
                               : gv_buffer + task * s.S * s.D;
            const int64_t gv_stride = direct ? s.M * s.D : s.D;
            backward_range<scalar_t, acc_t>(
                pb, go_p, n, m, chunk * per_chunk,
                std::min(s.Lq, (chunk + 1) * per_chunk), gv, gv_stride, gloc,
                gattn, scratch.data(), pts.data());
          }
        });
      });
  if (!direct) {
    // (N, M, chunks, S, D) -> (N, S, M, D), summing the query chunks.
    auto summed = chunks == 1 ? acc_buffer.select(2, 0) : acc_buffer.sum(2);
    grad_value.copy_(summed.permute({0, 2, 1, 3}));
  }
  return std::make_tuple(grad_value, grad_locations, grad_weights);
}

}  // namespace plugins::msda
