// Forward of the CPU kernel: the output rows of one head for a range of
// queries (forward_queries), summed per row in a RowSum.
//
// Included only by ms_deform_attn_cpu.cpp (one translation unit):
// everything here has internal linkage (anonymous namespace), as it had
// when it lived in that file.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../ms_deform_attn.h"
#include "common.h"
#include "planning.h"
#include "point_math.h"
#include "simd.h"

namespace plugins::msda {
namespace {

// acc += the value of one point (a times its bilinear sample), any D.
template <typename src_t, typename acc_t>
MSDA_INLINE void accumulate_point(const Point<acc_t>& pt, const Head<src_t>& head,
                                  acc_t* __restrict__ acc, int64_t D) {
  const int64_t stride = head.stride;
  if (pt.state == kInside) {
    const src_t* __restrict__ r0 = head.rows + pt.b.offset[0] * stride;
    const src_t* __restrict__ r1 = head.rows + pt.b.offset[1] * stride;
    const src_t* __restrict__ r2 = head.rows + pt.b.offset[2] * stride;
    const src_t* __restrict__ r3 = head.rows + pt.b.offset[3] * stride;
    const acc_t c0 = pt.a * pt.b.w[0], c1 = pt.a * pt.b.w[1],
                c2 = pt.a * pt.b.w[2], c3 = pt.a * pt.b.w[3];
    int64_t d = 0;
    if constexpr (std::is_same_v<src_t, acc_t> && Simd<acc_t>::kSimd) {
      using V = Simd<acc_t>;
      // Bracketed so only the final add depends on the previous point.
      for (; d + V::kLanes <= D; d += V::kLanes) {
        V::store(acc + d,
                 V::load(acc + d) +
                     ((c0 * V::load(r0 + d) + c1 * V::load(r1 + d)) +
                      (c2 * V::load(r2 + d) + c3 * V::load(r3 + d))));
      }
    }
    for (; d < D; ++d) {
      acc[d] += (c0 * static_cast<acc_t>(r0[d]) +
                 c1 * static_cast<acc_t>(r1[d])) +
                (c2 * static_cast<acc_t>(r2[d]) +
                 c3 * static_cast<acc_t>(r3[d]));
    }
    return;
  }
  for (int c = 0; c < 4; ++c) {
    if (!pt.b.valid[c]) continue;
    const src_t* __restrict__ r = head.rows + pt.b.offset[c] * stride;
    const acc_t k = pt.a * pt.b.w[c];
    for (int64_t d = 0; d < D; ++d) acc[d] += k * static_cast<acc_t>(r[d]);
  }
}

// The running sum of one output row.  Generic form: D channels of acc_t in
// scratch memory, any D and value type.
template <int NV, typename src_t, typename acc_t>
struct RowSum {
  acc_t* __restrict__ acc;
  int64_t D;

  static MSDA_INLINE RowSum make(acc_t* scratch, int64_t D) { return {scratch, D}; }
  MSDA_INLINE void zero() { std::fill(acc, acc + D, acc_t(0)); }
  MSDA_INLINE void add(const Point<acc_t>& pt, const Head<src_t>& head) {
    accumulate_point(pt, head, acc, D);
  }
  template <typename scalar_t>
  MSDA_INLINE void store(scalar_t* __restrict__ o) const {
    for (int64_t d = 0; d < D; ++d) o[d] = static_cast<scalar_t>(acc[d]);
  }
};

// Register form, for D = NV vectors of acc_t (the common 16/32/64 float
// channels): the row lives in NV vector registers across the query's
// points, so consecutive points do not chain through a store and a reload.
template <int NV, typename acc_t>
  requires(NV > 0)
struct RowSum<NV, acc_t, acc_t> : VectorRow<NV, acc_t> {
  using V = Simd<acc_t>;
  using VectorRow<NV, acc_t>::v;

  static MSDA_INLINE RowSum make(acc_t*, int64_t) { return {}; }
  MSDA_INLINE void add(const Point<acc_t>& pt, const Head<acc_t>& head) {
    const int64_t stride = head.stride;
    if (pt.state == kInside) {
      const acc_t* r0 = head.rows + pt.b.offset[0] * stride;
      const acc_t* r1 = head.rows + pt.b.offset[1] * stride;
      const acc_t* r2 = head.rows + pt.b.offset[2] * stride;
      const acc_t* r3 = head.rows + pt.b.offset[3] * stride;
      const acc_t c0 = pt.a * pt.b.w[0], c1 = pt.a * pt.b.w[1],
                  c2 = pt.a * pt.b.w[2], c3 = pt.a * pt.b.w[3];
      for (int j = 0; j < NV; ++j) {
        const int64_t d = j * V::kLanes;
        // Bracketed so only the final add depends on the previous point.
        v[j] += (c0 * V::load(r0 + d) + c1 * V::load(r1 + d)) +
                (c2 * V::load(r2 + d) + c3 * V::load(r3 + d));
      }
      return;
    }
    for (int c = 0; c < 4; ++c) {
      if (!pt.b.valid[c]) continue;
      const acc_t* r = head.rows + pt.b.offset[c] * stride;
      const acc_t k = pt.a * pt.b.w[c];
      for (int j = 0; j < NV; ++j) v[j] += k * V::load(r + j * V::kLanes);
    }
  }
};

// Output rows of head m of batch n for queries [q_begin, q_end), summed
// in a RowSum<NV> (scratch: D values for its generic form); buf: points
// of 2 queries.  (The RowSum is built here, not passed in: the clones of
// this function disagree on how 64-byte vectors are passed.)
template <int NV, typename scalar_t, typename src_t, typename acc_t>
MSDA_CPU_CLONES void forward_queries(const Problem<scalar_t>& pb,
                                     const Head<src_t>* heads, int64_t n,
                                     int64_t m, int64_t q_begin, int64_t q_end,
                                     scalar_t* __restrict__ out,
                                     acc_t* __restrict__ scratch,
                                     PointsBuffer<acc_t>& buf) {
  const Sizes& s = pb.s;
  auto row = RowSum<NV, src_t, acc_t>::make(scratch, s.D);
  const int64_t LP = s.L * s.P, D = s.D;
  walk_queries(
      pb, n, m, q_begin, q_end, buf,
      [&](int64_t later) MSDA_LAMBDA_INLINE {
        prefetch_span(out + later * D, D, true);
      },
      [&](int64_t i, const Points<acc_t>& cur, const Points<acc_t>& next,
          bool has_next) MSDA_LAMBDA_INLINE {
        row.zero();
        for (int64_t j = 0; j < LP; ++j) {
          if (has_next) prefetch_point(pb, next, j, heads[j], D);
          if (cur.state[j] == kOutside) continue;
          row.add(expand_point(pb, cur, i, j), heads[j]);
        }
        row.store(out + i * D);
      });
}

}  // namespace
}  // namespace plugins::msda
