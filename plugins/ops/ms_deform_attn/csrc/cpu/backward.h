// Backward of the CPU kernel: the gradients of one head for a range of
// queries (backward_queries), through a PointGrads per point, the zeroing
// of a head's grad_value rows accumulated in place (zero_rows) and the
// write-out of a head's grad_value slab (store_head).
//
// Included only by ms_deform_attn_cpu.cpp (one translation unit):
// everything here has internal linkage (anonymous namespace), as it had
// when it lived in that file.
#pragma once

#include <cstdint>
#include <type_traits>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "../ms_deform_attn.h"
#include "common.h"
#include "planning.h"
#include "point_math.h"
#include "simd.h"

namespace plugins::msda {
namespace {

// The chain rule through corner c of a point: given dot = <go, v_c>,
// adds its share to (d/da, d/dx, d/dy) in g.
template <typename acc_t>
MSDA_INLINE void add_corner_grads(const Point<acc_t>& pt, int c, acc_t dot,
                                  acc_t* g) {
  g[0] += pt.b.w[c] * dot;
  g[1] += pt.b.dwdx[c] * dot;
  g[2] += pt.b.dwdy[c] * dot;
}

// (d/da, d/dx, d/dy) of a point from the dot products of its 4 corners.
template <typename acc_t>
MSDA_INLINE void corner_grads(const Point<acc_t>& pt, const acc_t* dot,
                              acc_t* g) {
  g[0] = g[1] = g[2] = acc_t(0);
  for (int c = 0; c < 4; ++c) add_corner_grads(pt, c, dot[c], g);
}

// Gradients of one point whose four corners are all inside the map: one
// pass over the channels computes <go, sum_c coef_c * v_c> for the three
// coefficient sets (w, dw/dx, dw/dy) and scatters a * w_c * go into the
// four grad rows.  Returns (d/da, d/dx, d/dy) in g.
template <typename src_t, typename acc_t>
MSDA_INLINE void backward_point_inside(const Point<acc_t>& pt,
                                       const src_t* level, int64_t stride,
                                       acc_t* gv_level, int64_t gstride,
                                       const acc_t* __restrict__ go, int64_t D,
                                       acc_t* g) {
  // level / gv_level: the head's rows; offsets are positions in S.
  const src_t* __restrict__ r0 = level + pt.b.offset[0] * stride;
  const src_t* __restrict__ r1 = level + pt.b.offset[1] * stride;
  const src_t* __restrict__ r2 = level + pt.b.offset[2] * stride;
  const src_t* __restrict__ r3 = level + pt.b.offset[3] * stride;
  acc_t* __restrict__ g0 = gv_level + pt.b.offset[0] * gstride;
  acc_t* __restrict__ g1 = gv_level + pt.b.offset[1] * gstride;
  acc_t* __restrict__ g2 = gv_level + pt.b.offset[2] * gstride;
  acc_t* __restrict__ g3 = gv_level + pt.b.offset[3] * gstride;
  // Coefficients in locals: the compiler cannot prove the grad stores
  // leave `pt` unchanged and would reload them every channel.
  const acc_t w0 = pt.b.w[0], w1 = pt.b.w[1], w2 = pt.b.w[2], w3 = pt.b.w[3];
  const acc_t x0 = pt.b.dwdx[0], x1 = pt.b.dwdx[1], x2 = pt.b.dwdx[2],
              x3 = pt.b.dwdx[3];
  const acc_t y0 = pt.b.dwdy[0], y1 = pt.b.dwdy[1], y2 = pt.b.dwdy[2],
              y3 = pt.b.dwdy[3];
  const acc_t k0 = pt.a * w0, k1 = pt.a * w1, k2 = pt.a * w2, k3 = pt.a * w3;
  if constexpr (std::is_same_v<src_t, acc_t> && Simd<acc_t>::kSimd) {
    // <go, v_c> per corner, then the three combinations of the four sums.
    using V = Simd<acc_t>;
    typename V::vec s0 = V::zero(), s1 = V::zero(), s2 = V::zero(),
                    s3 = V::zero();
    int64_t d = 0;
    for (; d + V::kLanes <= D; d += V::kLanes) {
      const auto gk = V::load(go + d);
      s0 += gk * V::load(r0 + d);
      s1 += gk * V::load(r1 + d);
      s2 += gk * V::load(r2 + d);
      s3 += gk * V::load(r3 + d);
      V::store(g0 + d, V::load(g0 + d) + k0 * gk);
      V::store(g1 + d, V::load(g1 + d) + k1 * gk);
      V::store(g2 + d, V::load(g2 + d) + k2 * gk);
      V::store(g3 + d, V::load(g3 + d) + k3 * gk);
    }
    acc_t t[4];
    V::sum4(s0, s1, s2, s3, t);
    acc_t t0 = t[0], t1 = t[1], t2 = t[2], t3 = t[3];
    for (; d < D; ++d) {
      const acc_t gk = go[d];
      t0 += gk * r0[d];
      t1 += gk * r1[d];
      t2 += gk * r2[d];
      t3 += gk * r3[d];
      g0[d] += k0 * gk;
      g1[d] += k1 * gk;
      g2[d] += k2 * gk;
      g3[d] += k3 * gk;
    }
    const acc_t dots[4] = {t0, t1, t2, t3};
    corner_grads(pt, dots, g);
    return;
  }
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
  g[0] = tree_sum(pa) + ta;
  g[1] = tree_sum(px) + tx;
  g[2] = tree_sum(py) + ty;
}

// Same for a point on the border: corner by corner, skipping the outside
// ones (never touching their memory).
template <typename src_t, typename acc_t>
MSDA_INLINE void backward_point_border(const Point<acc_t>& pt,
                                       const src_t* level, int64_t stride,
                                       acc_t* gv_level, int64_t gstride,
                                       const acc_t* __restrict__ go, int64_t D,
                                       acc_t* g) {
  g[0] = g[1] = g[2] = acc_t(0);
  for (int c = 0; c < 4; ++c) {
    if (!pt.b.valid[c]) continue;
    const src_t* __restrict__ r = level + pt.b.offset[c] * stride;
    acc_t* __restrict__ gr = gv_level + pt.b.offset[c] * gstride;
    const acc_t k = pt.a * pt.b.w[c];
    acc_t part[kLanes] = {};
    int64_t d = 0;
    for (; d + kLanes <= D; d += kLanes) {
#pragma GCC ivdep
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
    dot += tree_sum(part);
    add_corner_grads(pt, c, dot, g);
  }
}

// The gradients of one query's points.  Generic form: grad_output's row
// in scratch memory, any D and value type.
template <int NV, typename src_t, typename acc_t>
struct PointGrads {
  acc_t* __restrict__ go;
  int64_t D;

  static MSDA_INLINE PointGrads make(acc_t* scratch, int64_t D) { return {scratch, D}; }
  template <typename scalar_t>
  MSDA_INLINE void load(const scalar_t* __restrict__ row) {
    for (int64_t d = 0; d < D; ++d) go[d] = static_cast<acc_t>(row[d]);
  }
  MSDA_INLINE void add(const Point<acc_t>& pt, const Head<src_t>& head,
                       const GradRows<acc_t>& gv, acc_t* g) const {
    if (pt.state == kInside) {
      backward_point_inside(pt, head.rows, head.stride, gv.rows, gv.stride,
                            go, D, g);
    } else {
      backward_point_border(pt, head.rows, head.stride, gv.rows, gv.stride,
                            go, D, g);
    }
  }
};

// Register form, for D = NV vectors of acc_t: the query's grad_output row
// stays in NV vector registers for all its points.
template <int NV, typename acc_t>
  requires(NV > 0)
struct PointGrads<NV, acc_t, acc_t> : VectorRow<NV, acc_t> {
  using V = Simd<acc_t>;
  using VectorRow<NV, acc_t>::v;  // grad_output's row

  static MSDA_INLINE PointGrads make(acc_t*, int64_t) { return {}; }
  // As backward_point_inside / backward_point_border: <go, v_c> per
  // corner, a * w_c * go into grad row c; (d/da, d/dx, d/dy) into g.
  MSDA_INLINE void add(const Point<acc_t>& pt, const Head<acc_t>& head,
                       const GradRows<acc_t>& gv, acc_t* g) const {
    const int64_t stride = head.stride, gstride = gv.stride;
    const int64_t D = NV * V::kLanes;
    if (pt.state == kInside) {
      const acc_t* r0 = head.rows + pt.b.offset[0] * stride;
      const acc_t* r1 = head.rows + pt.b.offset[1] * stride;
      const acc_t* r2 = head.rows + pt.b.offset[2] * stride;
      const acc_t* r3 = head.rows + pt.b.offset[3] * stride;
      acc_t* g0 = gv.rows + pt.b.offset[0] * gstride;
      acc_t* g1 = gv.rows + pt.b.offset[1] * gstride;
      acc_t* g2 = gv.rows + pt.b.offset[2] * gstride;
      acc_t* g3 = gv.rows + pt.b.offset[3] * gstride;
      const acc_t k0 = pt.a * pt.b.w[0], k1 = pt.a * pt.b.w[1],
                  k2 = pt.a * pt.b.w[2], k3 = pt.a * pt.b.w[3];
      typename V::vec s0 = V::zero(), s1 = V::zero(), s2 = V::zero(),
                      s3 = V::zero();
      for (int j = 0; j < NV; ++j) {
        const int64_t d = j * V::kLanes;
        s0 += v[j] * V::load(r0 + d);
        s1 += v[j] * V::load(r1 + d);
        s2 += v[j] * V::load(r2 + d);
        s3 += v[j] * V::load(r3 + d);
        V::store(g0 + d, V::load(g0 + d) + k0 * v[j]);
        V::store(g1 + d, V::load(g1 + d) + k1 * v[j]);
        V::store(g2 + d, V::load(g2 + d) + k2 * v[j]);
        V::store(g3 + d, V::load(g3 + d) + k3 * v[j]);
      }
      acc_t t[4];
      V::sum4(s0, s1, s2, s3, t);
      corner_grads(pt, t, g);
      return;
    }
    g[0] = g[1] = g[2] = acc_t(0);
    for (int c = 0; c < 4; ++c) {
      if (!pt.b.valid[c]) continue;
      const acc_t* r = head.rows + pt.b.offset[c] * stride;
      acc_t* gr = gv.rows + pt.b.offset[c] * gstride;
      const acc_t k = pt.a * pt.b.w[c];
      typename V::vec sv = V::zero();
      for (int j = 0; j < NV; ++j) {
        const int64_t d = j * V::kLanes;
        sv += v[j] * V::load(r + d);
        V::store(gr + d, V::load(gr + d) + k * v[j]);
      }
      add_corner_grads(pt, c, V::sum(sv), g);
    }
  }
};

// All gradients of head m of batch n for queries [q_begin, q_end); the
// grad_value rows of this head accumulate in gv (an (S, D) slab, or the
// head's rows of grad_value itself, whose rows are then prefetched for the
// next query like the value rows read in place).  Points
// go through a PointGrads<NV> (scratch: D values for its generic form);
// buf: points of 2 queries.
template <int NV, typename scalar_t, typename src_t, typename acc_t>
MSDA_CPU_CLONES void backward_queries(
    const Problem<scalar_t>& pb, const Head<src_t>* heads,
    const scalar_t* grad_output, int64_t n, int64_t m, int64_t q_begin,
    int64_t q_end, const GradRows<acc_t>& gv, acc_t* grad_locations,
    acc_t* grad_weights, acc_t* __restrict__ scratch,
    PointsBuffer<acc_t>& buf) {
  const Sizes& s = pb.s;
  const int64_t LP = s.L * s.P, D = s.D;
  auto grads = PointGrads<NV, src_t, acc_t>::make(scratch, D);
  walk_queries(
      pb, n, m, q_begin, q_end, buf,
      [&](int64_t later) MSDA_LAMBDA_INLINE {
        prefetch_span(grad_output + later * D, D, false);
        prefetch_span(grad_locations + later * LP * 2, LP * 2, true);
        prefetch_span(grad_weights + later * LP, LP, true);
      },
      [&](int64_t i, const Points<acc_t>& cur, const Points<acc_t>& next,
          bool has_next) MSDA_LAMBDA_INLINE {
        grads.load(grad_output + i * D);
        acc_t* gloc = grad_locations + i * LP * 2;
        acc_t* gattn = grad_weights + i * LP;
        for (int64_t j = 0; j < LP; ++j) {
          if (has_next) {
            prefetch_point(pb, next, j, heads[j], D);
            if (gv.prefetch) {
              prefetch_corners<true>(pb, next, j, gv.rows, gv.stride, D);
            }
          }
          acc_t g[3] = {0, 0, 0};
          acc_t a = 0;
          int32_t W = 0, H = 0;
          if (cur.state[j] != kOutside) {
            const Point<acc_t> pt = expand_point(pb, cur, i, j);
            a = pt.a;
            W = pt.W;
            H = pt.H;
            grads.add(pt, heads[j], gv, g);
          }
          gattn[j] = g[0];
          // x = loc_x * W - 0.5, so d/dloc_x = W * d/dx (and H for y).
          gloc[2 * j] = a * g[1] * static_cast<acc_t>(W);
          gloc[2 * j + 1] = a * g[2] * static_cast<acc_t>(H);
        }
      });
}

// Zeroes `count` rows of D channels, `stride` apart: the grad_value rows of
// one head before the backward accumulates into them in place.
template <typename acc_t>
MSDA_CPU_CLONES void zero_rows(acc_t* __restrict__ rows, int64_t count,
                               int64_t D, int64_t stride) {
  for (int64_t r = 0; r < count; ++r, rows += stride) {
    int64_t d = 0;
    if constexpr (Simd<acc_t>::kSimd) {
      using V = Simd<acc_t>;
      for (; d + V::kLanes <= D; d += V::kLanes) V::store(rows + d, V::zero());
    }
    for (; d < D; ++d) rows[d] = acc_t(0);
  }
}

// Writes the (S, D) float slab of head m of batch n into grad_value and
// leaves the slab zeroed for the thread's next head (cheaper than a
// separate memset: the lines are in cache right now).
// grad_value is written once and not read back here, so float rows go out
// with non-temporal stores (no read-for-ownership of lines that are
// overwritten anyway).
template <typename scalar_t, typename acc_t>
void store_head(acc_t* __restrict__ slab, const Sizes& s, int64_t n,
                int64_t m, scalar_t* __restrict__ grad_value) {
  scalar_t* dst = grad_value + n * s.S * s.M * s.D + m * s.D;
  const int64_t stride = s.M * s.D;
#if defined(__SSE2__)
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
    if (s.D % 4 == 0 && reinterpret_cast<uintptr_t>(dst) % 16 == 0) {
      for (int64_t r = 0; r < s.S; ++r, dst += stride, slab += s.D) {
        for (int64_t d = 0; d < s.D; d += 4) {
          _mm_stream_ps(dst + d, _mm_loadu_ps(slab + d));
          _mm_storeu_ps(slab + d, _mm_setzero_ps());
        }
      }
      _mm_sfence();
      return;
    }
  }
#endif
  for (int64_t r = 0; r < s.S; ++r, dst += stride, slab += s.D) {
    for (int64_t d = 0; d < s.D; ++d) {
      dst[d] = static_cast<scalar_t>(slab[d]);
      slab[d] = acc_t(0);
    }
  }
}

}  // namespace
}  // namespace plugins::msda
