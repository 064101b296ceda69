// Point math of the CPU kernel: planning the L * P sampling points of a
// query (plan_points), expanding one into its four corners
// (expand_point), and prefetching the rows and inputs of the next queries.
//
// Included only by ms_deform_attn_cpu.cpp (one translation unit):
// everything here has internal linkage (anonymous namespace), as it had
// when it lived in that file.
#pragma once

#include <cstdint>
#include <vector>

#include "../bilinear.h"
#include "common.h"
#include "planning.h"

namespace plugins::msda {
namespace {

// The L * P sampling points of one (batch, query, head), planned as
// structure-of-arrays so that plan_points vectorises across the points.
template <typename acc_t>
struct Points {
  acc_t* lx;       // fractional x of the point within its corner cell
  acc_t* ly;       // fractional y
  int32_t* x0;     // column of the top-left corner
  int32_t* y0;     // row of the top-left corner
  int32_t* base;   // position in S of the top-left corner (maybe outside)
  int32_t* state;  // kOutside, kBorder (some corners outside) or kInside
};
constexpr int32_t kOutside = 0, kBorder = 1, kInside = 2;

// Scratch for the points of `queries` queries.
template <typename acc_t>
struct PointsBuffer {
  std::vector<acc_t> f;
  std::vector<int32_t> i;
  int64_t LP;

  PointsBuffer(int64_t LP_, int64_t queries)
      : f(2 * LP_ * queries), i(4 * LP_ * queries), LP(LP_) {}
  Points<acc_t> query(int64_t k) {
    acc_t* fp = f.data() + 2 * LP * k;
    int32_t* ip = i.data() + 4 * LP * k;
    return {fp, fp + LP, ip, ip + LP, ip + 2 * LP, ip + 3 * LP};
  }
};

// Plans the L * P points of output row i = (n * Lq + q) * M + m: pixel
// (x, y) = (loc_x * W - 0.5, loc_y * H - 0.5) (grid_sample,
// align_corners=False), zeros outside the map; NaN locations count as
// outside.  Written without branches (integer masks, floor as a corrected
// truncation) so that it vectorises across the points (this needs
// -fno-trapping-math, see build_config.py).
template <typename scalar_t, typename acc_t>
MSDA_INLINE void plan_points(const Problem<scalar_t>& pb, int64_t i,
                             const Points<acc_t>& pts) {
  const int64_t LP = pb.s.L * pb.s.P;
  const auto* __restrict__ loc = pb.locations + i * LP * 2;
  acc_t* __restrict__ lx = pts.lx;
  acc_t* __restrict__ ly = pts.ly;
  int32_t* __restrict__ x0 = pts.x0;
  int32_t* __restrict__ y0 = pts.y0;
  int32_t* __restrict__ base = pts.base;
  int32_t* __restrict__ state = pts.state;
  // The outputs (scratch) never overlap the inputs.
#pragma GCC ivdep
  for (int64_t j = 0; j < LP; ++j) {
    const int32_t W = pb.W[j], H = pb.H[j];
    const acc_t Wf = static_cast<acc_t>(W), Hf = static_cast<acc_t>(H);
    const acc_t x = static_cast<acc_t>(loc[2 * j]) * Wf - acc_t(0.5);
    const acc_t y = static_cast<acc_t>(loc[2 * j + 1]) * Hf - acc_t(0.5);
    const int32_t in = static_cast<int32_t>(x > acc_t(-1)) &
                       static_cast<int32_t>(y > acc_t(-1)) &
                       static_cast<int32_t>(x < Wf) & static_cast<int32_t>(y < Hf);
    // Outside (or NaN) points are clamped so the conversions are defined.
    const acc_t xc = in ? x : acc_t(0);
    const acc_t yc = in ? y : acc_t(0);
    const int32_t tx = static_cast<int32_t>(xc), ty = static_cast<int32_t>(yc);
    const int32_t ix = tx - static_cast<int32_t>(static_cast<acc_t>(tx) > xc);
    const int32_t iy = ty - static_cast<int32_t>(static_cast<acc_t>(ty) > yc);
    lx[j] = xc - static_cast<acc_t>(ix);
    ly[j] = yc - static_cast<acc_t>(iy);
    x0[j] = ix;
    y0[j] = iy;
    base[j] = pb.start[j] + iy * W + ix;
    const int32_t full = static_cast<int32_t>(ix >= 0) &
                         static_cast<int32_t>(iy >= 0) &
                         static_cast<int32_t>(ix + 1 < W) &
                         static_cast<int32_t>(iy + 1 < H);
    state[j] = in + (in & full);  // kOutside, kBorder or kInside
  }
}

// One planned point, expanded into its four corners (the Bilinear of
// ../bilinear.h, with offsets as positions in S): computed in registers
// where it is used, so each consumer only pays for the fields it reads.
template <typename acc_t>
struct Point {
  Bilinear<acc_t> b;
  acc_t a;
  int32_t H, W;
  int32_t state;
};

template <typename scalar_t, typename acc_t>
MSDA_INLINE Point<acc_t> expand_point(const Problem<scalar_t>& pb,
                                      const Points<acc_t>& pts, int64_t i,
                                      int64_t j) {
  Point<acc_t> pt;
  pt.state = pts.state[j];
  pt.a = static_cast<acc_t>(pb.weights[i * pb.s.L * pb.s.P + j]);
  pt.W = pb.W[j];
  pt.H = pb.H[j];
  const acc_t lx = pts.lx[j], ly = pts.ly[j];
  const acc_t hx = acc_t(1) - lx, hy = acc_t(1) - ly;
  pt.b.w[0] = hy * hx;
  pt.b.w[1] = hy * lx;
  pt.b.w[2] = ly * hx;
  pt.b.w[3] = ly * lx;
  pt.b.dwdx[0] = -hy;
  pt.b.dwdx[1] = hy;
  pt.b.dwdx[2] = -ly;
  pt.b.dwdx[3] = ly;
  pt.b.dwdy[0] = -hx;
  pt.b.dwdy[1] = -lx;
  pt.b.dwdy[2] = hx;
  pt.b.dwdy[3] = lx;
  const int32_t base = pts.base[j];
  pt.b.offset[0] = base;
  pt.b.offset[1] = base + 1;
  pt.b.offset[2] = base + pt.W;
  pt.b.offset[3] = base + pt.W + 1;
  const int32_t x0 = pts.x0[j], y0 = pts.y0[j];
  const bool vx0 = x0 >= 0, vx1 = x0 + 1 < pt.W;
  const bool vy0 = y0 >= 0, vy1 = y0 + 1 < pt.H;
  pt.b.valid[0] = vy0 && vx0;
  pt.b.valid[1] = vy0 && vx1;
  pt.b.valid[2] = vy1 && vx0;
  pt.b.valid[3] = vy1 && vx1;
  return pt;
}

// Rows read in place are scattered over maps much larger than the caches,
// so while point j of a query is computed, the rows of point j of the
// *next* query are prefetched (one point's own loads cannot hide the
// latency; prefetching a whole query at once would overflow the miss
// queues).  Prefetches go to L2, not L1: rows of one head are M * D apart,
// so they compete for a few L1 sets and would evict each other before use.
// kWrite: the rows will be written (grad_value rows accumulated in place).
template <bool kWrite, typename scalar_t, typename T, typename acc_t>
MSDA_INLINE void prefetch_corners(const Problem<scalar_t>& pb,
                                  const Points<acc_t>& pts, int64_t j,
                                  const T* rows, int64_t stride, int64_t D) {
  const int32_t state = pts.state[j];
  if (state == kOutside) return;
  const int32_t W = pb.W[j], H = pb.H[j];
  const int32_t x0 = pts.x0[j], y0 = pts.y0[j], base = pts.base[j];
  const int32_t offset[4] = {base, base + 1, base + W, base + W + 1};
  const bool valid[4] = {y0 >= 0 && x0 >= 0, y0 >= 0 && x0 + 1 < W,
                         y0 + 1 < H && x0 >= 0, y0 + 1 < H && x0 + 1 < W};
  const int64_t bytes = D * static_cast<int64_t>(sizeof(T));
  for (int c = 0; c < 4; ++c) {
    if (state == kBorder && !valid[c]) continue;
    const char* row = reinterpret_cast<const char*>(
        rows + static_cast<int64_t>(offset[c]) * stride);
    for (int64_t off = 0; off < bytes; off += 64) {
      __builtin_prefetch(row + off, kWrite ? 1 : 0, 2);
    }
  }
}

// The value rows of point j of a query, where the head reads them in place.
template <typename scalar_t, typename src_t, typename acc_t>
MSDA_INLINE void prefetch_point(const Problem<scalar_t>& pb,
                                const Points<acc_t>& pts, int64_t j,
                                const Head<src_t>& head, int64_t D) {
  if (head.prefetch) {
    prefetch_corners<false>(pb, pts, j, head.rows, head.stride, D);
  }
}

// A task walks the queries of one head, so its rows of locations, weights
// and gradients are M rows apart: prefetch them a few queries ahead.
constexpr int64_t kAhead = 4;

template <typename T>
MSDA_INLINE void prefetch_span(const T* p, int64_t count, bool write) {
  const char* c = reinterpret_cast<const char*>(p);
  const int64_t bytes = count * static_cast<int64_t>(sizeof(T));
  for (int64_t off = 0; off < bytes; off += 64) {
    if (write) {
      __builtin_prefetch(c + off, 1, 2);
    } else {
      __builtin_prefetch(c + off, 0, 2);
    }
  }
}

template <typename scalar_t>
MSDA_INLINE void prefetch_query_inputs(const Problem<scalar_t>& pb, int64_t i) {
  const int64_t LP = pb.s.L * pb.s.P;
  prefetch_span(pb.locations + i * LP * 2, LP * 2, false);
  prefetch_span(pb.weights + i * LP, LP, false);
}

// The query pipeline of a task (forward and backward alike): queries
// [q_begin, q_end) of head m of batch n, each query's points planned one
// query ahead (into the other half of buf), its locations and weights
// prefetched kAhead queries ahead.  Per query, ahead(i + kAhead * M)
// prefetches the caller's own rows and body(i, cur, next, has_next) does
// the work (i: the (n, q, m) row; cur: this query's points; next: the next
// one's, planned, for prefetching its value rows).  Both are lambdas
// marked MSDA_LAMBDA_INLINE, so that they compile inside each target clone.
template <typename scalar_t, typename acc_t, typename Ahead, typename Body>
MSDA_INLINE void walk_queries(const Problem<scalar_t>& pb, int64_t n,
                              int64_t m, int64_t q_begin, int64_t q_end,
                              PointsBuffer<acc_t>& buf, Ahead&& ahead,
                              Body&& body) {
  const Sizes& s = pb.s;
  if (q_begin < q_end) plan_points(pb, (n * s.Lq + q_begin) * s.M + m, buf.query(0));
  for (int64_t q = q_begin; q < q_end; ++q) {
    const int64_t i = (n * s.Lq + q) * s.M + m;
    const Points<acc_t> cur = buf.query((q - q_begin) % 2);
    const Points<acc_t> next = buf.query((q + 1 - q_begin) % 2);
    const bool has_next = q + 1 < q_end;
    if (has_next) plan_points(pb, i + s.M, next);
    if (q + kAhead < q_end) {
      const int64_t later = i + kAhead * s.M;
      prefetch_query_inputs(pb, later);
      ahead(later);
    }
    body(i, cur, next, has_next);
  }
}

}  // namespace
}  // namespace plugins::msda
