// CPU kernels of multi-scale deformable attention.
//
// Work is split by (batch n, head m): value[n, :, m, :] is the only part of
// value that head reads, and grad_value[n, :, m, :] the only part it
// writes.  Within a task the bilinear coefficients of each sampling point
// are computed once and applied to all D channels of its four corner rows
// (the channel loops vectorise; the hot functions are compiled for
// AVX-512, AVX2+FMA and the baseline, picked at load time).  When D is one
// to four 64-byte vectors (16 to 64 float channels), a query's output row
// (forward) or grad_output row (backward) stays in vector registers for
// all its points; other D go through the same loops with the row in
// scratch memory.
//
// Memory: in value's (S, M, D) layout the rows of one head are M * D apart,
// which maps them onto a fraction of the cache sets.  When each row is read
// often (encoder-like shapes) the task first copies its head into a
// contiguous per-thread slab that stays in L2; otherwise (decoder-like
// shapes) the rows are read in place and the next query's rows are
// prefetched, except those of the small levels that are still read several
// times per row: they are copied out first (HeadViews).  Backward
// accumulates grad_value of its head in a per-thread float slab (cache
// resident, no atomics, deterministic, float32 accumulation for
// half/bfloat16) and writes it out once, so grad_value is never zero-filled
// nor read back.  Queries are split into chunks only when
// batch * heads cannot keep every thread busy; backward chunks then
// accumulate into separate slabs that are summed at the end (at most
// kChunkSlabBytes of them, or 4 times grad_value, whatever the thread
// count).  Locations and weights are read as acc_t (float32 ones with a
// half/bfloat16 value: mixed precision), and their gradients written as
// acc_t, then converted to the inputs' dtypes where these differ.
#include "ms_deform_attn_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#if defined(__SSE2__)
#include <immintrin.h>
#endif
#include <type_traits>
#include <vector>
#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "../bilinear.h"
#include "../ms_deform_attn.h"
#include "simd.h"

namespace plugins::msda {
namespace {

// Hot loops are compiled for AVX-512 and AVX2+FMA as well as the baseline;
// the dynamic loader picks the clone for the running CPU (GCC ifunc).
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

constexpr int kLanes = 16;  // partial sums of the channel reductions

// Backward query chunks accumulate in slabs of S * D acc_t per (batch,
// head) each: they may take max(4 grad_values, this) bytes, so the scratch
// memory does not grow with the thread count.
constexpr int64_t kChunkSlabBytes = int64_t{64} << 20;

// How a call is split over threads.
struct Plan {
  int64_t chunks;     // query chunks per (batch, head)
  int64_t per_chunk;  // queries per chunk
  bool slab;          // copy each head's values into a contiguous slab

  Plan(const Sizes& s, bool forward) {
    const int64_t threads = at::get_num_threads();
    const int64_t heads = s.N * s.M;
    chunks = heads >= 4 * threads
                 ? 1
                 : std::min<int64_t>(std::max<int64_t>(s.Lq, 1),
                                     (4 * threads + heads - 1) / heads);
    if (!forward && chunks > 1) {
      // Backward chunks cost one slab of S * D floats per (batch, head)
      // each (and every thread working on them one head copy, at most as
      // many as the chunks' tasks).
      const int64_t per_chunk_bytes =
          std::max<int64_t>(1, heads * s.S * s.D * int64_t{sizeof(float)});
      const int64_t budget =
          std::max<int64_t>(4, kChunkSlabBytes / per_chunk_bytes);
      chunks = std::min<int64_t>({chunks, std::max<int64_t>(1, threads), budget});
    }
    per_chunk = (s.Lq + chunks - 1) / chunks;
    // Worth it when a value row is read many times (about 4 corners per
    // point): the copy reads every row of the head once.
    slab = per_chunk * s.L * s.P * 4 >= 8 * s.S;
  }
};

// Raw pointers and sizes of one call (inputs contiguous), with the level
// geometry repeated per point (point j of a query is on level j / P), so
// that plan_points is a flat loop over the L * P points.
template <typename scalar_t>
struct Problem {
  using coord_t = at::opmath_type<scalar_t>;
  const scalar_t* value;     // (N, S, M, D)
  const coord_t* locations;  // (N, Lq, M, L, P, 2)
  const coord_t* weights;    // (N, Lq, M, L, P)
  const int32_t* H;           // (L * P,) height of each point's level
  const int32_t* W;           // (L * P,) width
  const int32_t* start;       // (L * P,) first position of the level in S
  Sizes s;
};

// Level geometry read once from the (tiny) int64 tensors, per point.
struct Levels {
  std::vector<int32_t> H, W, start;

  Levels(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
         const Sizes& s) {
    // Positions within a batch element are 32-bit here.
    TORCH_CHECK(s.S < (int64_t{1} << 31), "ms_deform_attn: S = ", s.S,
                " positions per batch element, more than 2^31 - 1");
    const auto shapes = spatial_shapes.contiguous();
    const auto starts = level_start_index.contiguous();
    const int64_t* hw = shapes.const_data_ptr<int64_t>();
    const int64_t* st = starts.const_data_ptr<int64_t>();
    for (int64_t l = 0; l < s.L; ++l) {
      for (int64_t p = 0; p < s.P; ++p) {
        H.push_back(static_cast<int32_t>(hw[2 * l]));
        W.push_back(static_cast<int32_t>(hw[2 * l + 1]));
        start.push_back(static_cast<int32_t>(st[l]));
      }
    }
  }
};

template <typename scalar_t>
Problem<scalar_t> make_problem(const at::Tensor& value,
                               const at::Tensor& locations,
                               const at::Tensor& weights, const Levels& lv,
                               const Sizes& s) {
  using coord_t = typename Problem<scalar_t>::coord_t;
  return {value.const_data_ptr<scalar_t>(),
          locations.const_data_ptr<coord_t>(),
          weights.const_data_ptr<coord_t>(),
          lv.H.data(),
          lv.W.data(),
          lv.start.data(),
          s};
}

// The values of head m of batch n: rows of D channels, `stride` apart.
template <typename src_t>
struct Head {
  using value_type = src_t;
  const src_t* rows;
  int64_t stride;
  bool prefetch;  // rows read in place (not from a cache-resident copy)
};

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
template <typename scalar_t, typename src_t, typename acc_t>
MSDA_INLINE void prefetch_point(const Problem<scalar_t>& pb,
                                const Points<acc_t>& pts, int64_t j,
                                const Head<src_t>& head, int64_t D) {
  const int32_t state = pts.state[j];
  if (state == kOutside || !head.prefetch) return;
  const int32_t W = pb.W[j], H = pb.H[j];
  const int32_t x0 = pts.x0[j], y0 = pts.y0[j], base = pts.base[j];
  const int32_t offset[4] = {base, base + 1, base + W, base + W + 1};
  const bool valid[4] = {y0 >= 0 && x0 >= 0, y0 >= 0 && x0 + 1 < W,
                         y0 + 1 < H && x0 >= 0, y0 + 1 < H && x0 + 1 < W};
  const int64_t bytes = D * static_cast<int64_t>(sizeof(src_t));
  for (int c = 0; c < 4; ++c) {
    if (state == kBorder && !valid[c]) continue;
    const char* row = reinterpret_cast<const char*>(
        head.rows + static_cast<int64_t>(offset[c]) * head.stride);
    for (int64_t off = 0; off < bytes; off += 64) {
      __builtin_prefetch(row + off, 0, 2);
    }
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

// Sums the kLanes partial sums pairwise (log depth instead of a serial
// chain; the halves are added lane-wise, which vectorises).
template <typename acc_t>
MSDA_INLINE acc_t tree_sum(acc_t* part) {
  for (int half = kLanes / 2; half > 0; half /= 2) {
    for (int k = 0; k < half; ++k) part[k] += part[k + half];
  }
  return part[0];
}

// Rows [begin, end) of value[n, :, m, :] into the same rows of a contiguous
// (S, D) buffer of dst_t, prefetching a few rows ahead (the rows are M * D
// apart, a stride the hardware prefetchers lose at every page).
template <typename scalar_t, typename dst_t>
void copy_head_rows(const Problem<scalar_t>& pb, int64_t n, int64_t m,
                    int64_t begin, int64_t end, dst_t* __restrict__ dst) {
  constexpr int64_t kAheadRows = 8;
  const Sizes& s = pb.s;
  const int64_t stride = s.M * s.D;
  const scalar_t* rows = pb.value + n * s.S * stride + m * s.D;
  for (int64_t r = begin; r < end; ++r) {
    if (r + kAheadRows < end) {
      prefetch_span(rows + (r + kAheadRows) * stride, s.D, false);
    }
    const scalar_t* __restrict__ src = rows + r * stride;
    dst_t* __restrict__ row = dst + r * s.D;
    if constexpr (std::is_same_v<scalar_t, dst_t>) {
      std::memcpy(row, src, s.D * sizeof(dst_t));
    } else {
      for (int64_t d = 0; d < s.D; ++d) row[d] = static_cast<dst_t>(src[d]);
    }
  }
}

// A level is copied out of value's layout when a task reads at least this
// many corner rows per row of the level.  Decoder shape, one thread:
// copying its three small levels (4.7 to 75 reads per row) made the forward
// 27 % faster; copying the 64x64 level too (1.2 reads per row) gave back
// most of that.
constexpr int64_t kCopyReadsPerRow = 2;

// Per-point views (point j of a query is on level j / P) of the head a
// task works on: each level either read in place or from a copy in a
// contiguous per-thread buffer of view_t.  In value's (S, M, D) layout the
// rows of one head map to a fraction of the cache sets, where the big
// levels' rows keep evicting those of a small level before it is read
// again; copied, a level stays in L2.  Copied rows keep their positions in
// S (only the copied levels' part of the buffer is written), so the
// points' offsets are the same for both kinds of view.  Levels can only be
// read in place when view_t is value's own type.
template <typename scalar_t, typename view_t>
class HeadViews {
 public:
  // copied: (L,) whether each level is copied; nothing is allocated when
  // none is.
  HeadViews(const Problem<scalar_t>& pb, std::vector<char> copied)
      : pb_(pb), views_(pb.s.L * pb.s.P), copied_(std::move(copied)) {
    if (std::find(copied_.begin(), copied_.end(), 1) != copied_.end()) {
      buffer_.reset(new view_t[pb.s.S * pb.s.D]);
    }
  }

  // The views of head m of batch n (copying its chosen levels, unless the
  // previous task of this thread was on the same head).
  const Head<view_t>* of(int64_t n, int64_t m) {
    const Sizes& s = pb_.s;
    const int64_t nm = n * s.M + m;
    if (nm == head_) return views_.data();
    head_ = nm;
    for (int64_t l = 0; l < s.L; ++l) {
      Head<view_t> view{buffer_.get(), s.D, /*prefetch=*/false};
      if (copied_[l]) {
        const int64_t begin = pb_.start[l * s.P];
        copy_head_rows(pb_, n, m, begin, begin + level_rows(pb_, l),
                       buffer_.get());
      } else if constexpr (std::is_same_v<view_t, scalar_t>) {
        view = {pb_.value + n * s.S * s.M * s.D + m * s.D, s.M * s.D,
                /*prefetch=*/true};
      } else {
        TORCH_INTERNAL_ASSERT(false, "a level read in place must be ",
                              "read in value's own dtype");
      }
      std::fill_n(views_.begin() + l * s.P, s.P, view);
    }
    return views_.data();
  }

  static int64_t level_rows(const Problem<scalar_t>& pb, int64_t l) {
    return static_cast<int64_t>(pb.H[l * pb.s.P]) * pb.W[l * pb.s.P];
  }

 private:
  const Problem<scalar_t>& pb_;
  std::vector<Head<view_t>> views_;  // (L * P,)
  std::vector<char> copied_;         // (L,) level read from the buffer
  std::unique_ptr<view_t[]> buffer_;  // (S, D), copied levels only
  int64_t head_ = -1;                // n * M + m of the current views
};

// The values a task reads.  Encoder-like shapes (plan.slab): every level,
// i.e. the whole head, copied and converted to acc_t.  Otherwise in place,
// except the levels that a task reads at least kCopyReadsPerRow times per
// row, copied in value's dtype.
template <typename scalar_t, typename acc_t>
class TaskValues {
 public:
  TaskValues(const Problem<scalar_t>& pb, const Plan& plan)
      : slab_(pb, std::vector<char>(pb.s.L, plan.slab)),
        in_place_(pb, plan.slab ? std::vector<char>(pb.s.L, 0)
                                : often_read_levels(pb, plan)),
        use_slab_(plan.slab) {}

  // Calls f(views) with the per-point views of head m of batch n, a
  // const Head<acc_t>* or a const Head<scalar_t>*.
  template <typename F>
  void with_head(int64_t n, int64_t m, F&& f) {
    if (use_slab_) {
      f(slab_.of(n, m));
    } else {
      f(in_place_.of(n, m));
    }
  }

 private:
  static std::vector<char> often_read_levels(const Problem<scalar_t>& pb,
                                             const Plan& plan) {
    std::vector<char> copied(pb.s.L, 0);
    for (int64_t l = 0; l < pb.s.L; ++l) {
      const int64_t rows = HeadViews<scalar_t, scalar_t>::level_rows(pb, l);
      // corner rows a task reads on the level, against its rows
      copied[l] = rows > 0 &&
                  plan.per_chunk * pb.s.P * 4 >= kCopyReadsPerRow * rows;
    }
    return copied;
  }

  HeadViews<scalar_t, acc_t> slab_;
  HeadViews<scalar_t, scalar_t> in_place_;
  bool use_slab_;
};

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

// One row of D = NV * kLanes channels held in NV vector registers, with
// loads and stores converting from/to the tensors' dtype.
template <int NV, typename acc_t>
struct VectorRow {
  using V = Simd<acc_t>;
  typename V::vec v[NV];

  MSDA_INLINE void zero() {
    for (int k = 0; k < NV; ++k) v[k] = V::zero();
  }
  template <typename scalar_t>
  MSDA_INLINE void load(const scalar_t* __restrict__ row) {
    for (int k = 0; k < NV; ++k) {
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        v[k] = V::load(row + k * V::kLanes);
      } else {
        for (int l = 0; l < V::kLanes; ++l) {
          v[k][l] = static_cast<acc_t>(row[k * V::kLanes + l]);
        }
      }
    }
  }
  template <typename scalar_t>
  MSDA_INLINE void store(scalar_t* __restrict__ row) const {
    for (int k = 0; k < NV; ++k) {
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        V::store(row + k * V::kLanes, v[k]);
      } else {
        for (int l = 0; l < V::kLanes; ++l) {
          row[k * V::kLanes + l] = static_cast<scalar_t>(v[k][l]);
        }
      }
    }
  }
};

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
  if (q_begin < q_end) plan_points(pb, (n * s.Lq + q_begin) * s.M + m, buf.query(0));
  for (int64_t q = q_begin; q < q_end; ++q) {
    const int64_t i = (n * s.Lq + q) * s.M + m;
    const Points<acc_t> cur = buf.query((q - q_begin) % 2);
    const Points<acc_t> next = buf.query((q + 1 - q_begin) % 2);
    const bool has_next = q + 1 < q_end;
    if (has_next) plan_points(pb, i + s.M, next);
    if (q + kAhead < q_end) {
      prefetch_query_inputs(pb, i + kAhead * s.M);
      prefetch_span(out + (i + kAhead * s.M) * D, D, true);
    }
    row.zero();
    for (int64_t j = 0; j < LP; ++j) {
      if (has_next) prefetch_point(pb, next, j, heads[j], D);
      if (cur.state[j] == kOutside) continue;
      row.add(expand_point(pb, cur, i, j), heads[j]);
    }
    row.store(out + i * D);
  }
}

// Calls f(std::integral_constant<int, NV>) with the form of RowSum and
// PointGrads for D channels of src_t: NV vectors (1 to 4) of float/double
// values in registers, otherwise 0 (the generic form).
template <typename src_t, typename acc_t, typename F>
void with_channel_vectors(int64_t D, F&& f) {
  if constexpr (std::is_same_v<src_t, acc_t> && Simd<acc_t>::kSimd) {
    constexpr int64_t lanes = Simd<acc_t>::kLanes;
    switch (D) {
      case lanes: return f(std::integral_constant<int, 1>{});
      case 2 * lanes: return f(std::integral_constant<int, 2>{});
      case 3 * lanes: return f(std::integral_constant<int, 3>{});
      case 4 * lanes: return f(std::integral_constant<int, 4>{});
      default: break;
    }
  }
  f(std::integral_constant<int, 0>{});
}

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
                                       acc_t* gv_level,
                                       const acc_t* __restrict__ go, int64_t D,
                                       acc_t* g) {
  // level / gv_level: the head's rows; offsets are positions in S.
  const src_t* __restrict__ r0 = level + pt.b.offset[0] * stride;
  const src_t* __restrict__ r1 = level + pt.b.offset[1] * stride;
  const src_t* __restrict__ r2 = level + pt.b.offset[2] * stride;
  const src_t* __restrict__ r3 = level + pt.b.offset[3] * stride;
  acc_t* __restrict__ g0 = gv_level + pt.b.offset[0] * D;
  acc_t* __restrict__ g1 = gv_level + pt.b.offset[1] * D;
  acc_t* __restrict__ g2 = gv_level + pt.b.offset[2] * D;
  acc_t* __restrict__ g3 = gv_level + pt.b.offset[3] * D;
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
                                       acc_t* gv_level,
                                       const acc_t* __restrict__ go, int64_t D,
                                       acc_t* g) {
  g[0] = g[1] = g[2] = acc_t(0);
  for (int c = 0; c < 4; ++c) {
    if (!pt.b.valid[c]) continue;
    const src_t* __restrict__ r = level + pt.b.offset[c] * stride;
    acc_t* __restrict__ gr = gv_level + pt.b.offset[c] * D;
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
                       acc_t* gv, acc_t* g) const {
    if (pt.state == kInside) {
      backward_point_inside(pt, head.rows, head.stride, gv, go, D, g);
    } else {
      backward_point_border(pt, head.rows, head.stride, gv, go, D, g);
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
                       acc_t* gv, acc_t* g) const {
    const int64_t stride = head.stride;
    const int64_t D = NV * V::kLanes;
    if (pt.state == kInside) {
      const acc_t* r0 = head.rows + pt.b.offset[0] * stride;
      const acc_t* r1 = head.rows + pt.b.offset[1] * stride;
      const acc_t* r2 = head.rows + pt.b.offset[2] * stride;
      const acc_t* r3 = head.rows + pt.b.offset[3] * stride;
      acc_t* g0 = gv + pt.b.offset[0] * D;
      acc_t* g1 = gv + pt.b.offset[1] * D;
      acc_t* g2 = gv + pt.b.offset[2] * D;
      acc_t* g3 = gv + pt.b.offset[3] * D;
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
      acc_t* gr = gv + pt.b.offset[c] * D;
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
// grad_value rows of this head accumulate in the (S, D) slab gv.  Points
// go through a PointGrads<NV> (scratch: D values for its generic form);
// buf: points of 2 queries.
template <int NV, typename scalar_t, typename src_t, typename acc_t>
MSDA_CPU_CLONES void backward_queries(
    const Problem<scalar_t>& pb, const Head<src_t>* heads,
    const scalar_t* grad_output, int64_t n, int64_t m, int64_t q_begin,
    int64_t q_end, acc_t* gv, acc_t* grad_locations,
    acc_t* grad_weights, acc_t* __restrict__ scratch,
    PointsBuffer<acc_t>& buf) {
  const Sizes& s = pb.s;
  const int64_t LP = s.L * s.P, D = s.D;
  auto grads = PointGrads<NV, src_t, acc_t>::make(scratch, D);
  if (q_begin < q_end) plan_points(pb, (n * s.Lq + q_begin) * s.M + m, buf.query(0));
  for (int64_t q = q_begin; q < q_end; ++q) {
    const int64_t i = (n * s.Lq + q) * s.M + m;
    const Points<acc_t> cur = buf.query((q - q_begin) % 2);
    const Points<acc_t> next = buf.query((q + 1 - q_begin) % 2);
    const bool has_next = q + 1 < q_end;
    if (has_next) plan_points(pb, i + s.M, next);
    if (q + kAhead < q_end) {
      const int64_t ahead = i + kAhead * s.M;
      prefetch_query_inputs(pb, ahead);
      prefetch_span(grad_output + ahead * D, D, false);
      prefetch_span(grad_locations + ahead * LP * 2, LP * 2, true);
      prefetch_span(grad_weights + ahead * LP, LP, true);
    }
    grads.load(grad_output + i * D);
    acc_t* gloc = grad_locations + i * LP * 2;
    acc_t* gattn = grad_weights + i * LP;
    for (int64_t j = 0; j < LP; ++j) {
      if (has_next) prefetch_point(pb, next, j, heads[j], D);
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

// Maps the pages of a freshly allocated output before the tasks write it.
// Every task writes its head's D channels at every position, i.e. into
// every page, so on the fresh pages of a large output (which comes
// straight from mmap) all threads would fault on each page, contending in
// the kernel.  Here each thread maps its own range once instead, in one
// madvise(MADV_POPULATE_WRITE) call.  Reused heap memory is mapped
// already; populating it again only costs, so a few sampled pages decide.
// Without MADV_POPULATE_WRITE (not Linux, or a kernel before 5.14) the
// pages fault as they are written.
void map_pages(const at::Tensor& fresh) {
#if defined(__linux__) && defined(MADV_POPULATE_WRITE)
  constexpr int64_t kSamples = 8;
  static const int64_t kPage = sysconf(_SC_PAGESIZE);
  const int64_t bytes = fresh.numel() * static_cast<int64_t>(fresh.element_size());
  if (kPage <= 0 || bytes < 64 * kPage) return;  // small: from the heap
  const auto page_of = [](const char* p) {
    return reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(p) &
                                   ~static_cast<uintptr_t>(kPage - 1));
  };
  char* const data = static_cast<char*>(fresh.data_ptr());
  bool all_mapped = true;
  for (int64_t k = 0; k < kSamples && all_mapped; ++k) {
    unsigned char resident = 0;
    char* page = page_of(data + (bytes - 1) * k / (kSamples - 1));
    all_mapped = mincore(page, kPage, &resident) == 0 && (resident & 1);
  }
  if (all_mapped) return;
  const int64_t pages = bytes / kPage;
  at::parallel_for(0, pages, 64, [&](int64_t p0, int64_t p1) {
    // From the start of the page (which may hold other memory too:
    // populating changes no byte) to the end of the range.
    char* page = page_of(data + p0 * kPage);
    char* end = p1 == pages ? data + bytes : data + p1 * kPage;
    madvise(page, static_cast<size_t>(end - page), MADV_POPULATE_WRITE);
  });
#else
  (void)fresh;
#endif
}

// Runs worker(next_task) once on each intra-op thread; next_task() hands
// out the tasks 0 .. total - 1 one at a time, then -1.  Handing them out
// as threads get free (instead of fixed, equal ranges) keeps one thread
// slowed down by the machine from holding up the whole call.  Which
// thread runs a task never changes its result.
template <typename Worker>
void run_tasks(int64_t total, const Worker& worker) {
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(total, at::get_num_threads());
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    worker([&]() -> int64_t {
      const int64_t task = next.fetch_add(1, std::memory_order_relaxed);
      return task < total ? task : -1;
    });
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
  if (s.S == 0 || s.L == 0 || s.P == 0) return output.zero_();
  map_pages(output);
  const Levels lv(spatial_shapes, level_start_index, s);
  const Plan plan(s, /*forward=*/true);
  const auto coord_type = at::toOpMathType(value.scalar_type());
  const auto v = value.contiguous();
  const auto loc = sampling_locations.to(coord_type).contiguous();
  const auto attn = attention_weights.to(coord_type).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto pb = make_problem<scalar_t>(v, loc, attn, lv, s);
        scalar_t* out = output.mutable_data_ptr<scalar_t>();
        run_tasks(s.N * s.M * plan.chunks, [&](auto next_task) {
          std::vector<acc_t> acc(s.D);
          PointsBuffer<acc_t> pts(s.L * s.P, 2);
          TaskValues<scalar_t, acc_t> values(pb, plan);
          for (int64_t task; (task = next_task()) >= 0;) {
            const int64_t nm = task / plan.chunks, chunk = task % plan.chunks;
            const int64_t n = nm / s.M, m = nm % s.M;
            const int64_t q0 = chunk * plan.per_chunk;
            const int64_t q1 = std::min(s.Lq, q0 + plan.per_chunk);
            values.with_head(n, m, [&](const auto* views) {
              using src_t = typename std::remove_pointer_t<
                  decltype(views)>::value_type;
              with_channel_vectors<src_t, acc_t>(s.D, [&](auto nv) {
                forward_queries<nv()>(pb, views, n, m, q0, q1, out,
                                      acc.data(), pts);
              });
            });
          }
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
  const auto options = value.options();
  const auto coord_options = sampling_locations.options();
  if (s.N * s.Lq * s.M * s.L * s.P == 0 || s.S * s.D == 0) {
    return std::make_tuple(
        at::zeros({s.N, s.S, s.M, s.D}, options),
        at::zeros({s.N, s.Lq, s.M, s.L, s.P, 2}, coord_options),
        at::zeros({s.N, s.Lq, s.M, s.L, s.P}, coord_options));
  }
  const auto acc_type = at::toOpMathType(value.scalar_type());
  // Every element of these is written by the kernel.
  auto grad_value = at::empty({s.N, s.S, s.M, s.D}, options);
  map_pages(grad_value);
  auto grad_locations =
      at::empty({s.N, s.Lq, s.M, s.L, s.P, 2}, options.dtype(acc_type));
  auto grad_weights =
      at::empty({s.N, s.Lq, s.M, s.L, s.P}, options.dtype(acc_type));
  const Levels lv(spatial_shapes, level_start_index, s);
  const Plan plan(s, /*forward=*/false);
  // With query chunks, each chunk's slab lives in this buffer until the
  // chunks are summed; otherwise the slabs are per-thread scratch.
  at::Tensor chunk_slabs;
  if (plan.chunks > 1) {
    chunk_slabs = at::zeros({s.N, s.M, plan.chunks, s.S, s.D},
                            options.dtype(acc_type));
  }
  const auto go = grad_output.contiguous();
  const auto v = value.contiguous();
  const auto loc = sampling_locations.to(acc_type).contiguous();
  const auto attn = attention_weights.to(acc_type).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(),
      "ms_deform_attn_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto pb = make_problem<scalar_t>(v, loc, attn, lv, s);
        const scalar_t* go_p = go.const_data_ptr<scalar_t>();
        acc_t* gloc = grad_locations.mutable_data_ptr<acc_t>();
        acc_t* gattn = grad_weights.mutable_data_ptr<acc_t>();
        scalar_t* gvalue = grad_value.mutable_data_ptr<scalar_t>();
        acc_t* chunk_p = plan.chunks > 1 ? chunk_slabs.mutable_data_ptr<acc_t>()
                                         : nullptr;
        run_tasks(s.N * s.M * plan.chunks, [&](auto next_task) {
          std::vector<acc_t> scratch(s.D);
          PointsBuffer<acc_t> pts(s.L * s.P, 2);
          TaskValues<scalar_t, acc_t> values(pb, plan);
          // Zero once; store_head leaves it zeroed after each head.
          std::vector<acc_t> grad_slab(plan.chunks > 1 ? 0 : s.S * s.D);
          for (int64_t task; (task = next_task()) >= 0;) {
            const int64_t nm = task / plan.chunks, chunk = task % plan.chunks;
            const int64_t n = nm / s.M, m = nm % s.M;
            const int64_t q0 = chunk * plan.per_chunk;
            const int64_t q1 = std::min(s.Lq, q0 + plan.per_chunk);
            acc_t* gv = chunk_p ? chunk_p + task * s.S * s.D : grad_slab.data();
            values.with_head(n, m, [&](const auto* views) {
              using src_t = typename std::remove_pointer_t<
                  decltype(views)>::value_type;
              with_channel_vectors<src_t, acc_t>(s.D, [&](auto nv) {
                backward_queries<nv()>(pb, views, go_p, n, m, q0, q1, gv, gloc,
                                       gattn, scratch.data(), pts);
              });
            });
            if (!chunk_p) store_head(gv, s, n, m, gvalue);
          }
        });
      });
  if (plan.chunks > 1) {
    // (N, M, chunks, S, D) -> (N, S, M, D), summing the query chunks.
    grad_value.copy_(chunk_slabs.sum(2).permute({0, 2, 1, 3}));
  }
  // In the inputs' dtypes (no copy where they are acc_t already).
  return std::make_tuple(grad_value,
                         grad_locations.to(sampling_locations.scalar_type()),
                         grad_weights.to(attention_weights.scalar_type()));
}

}  // namespace plugins::msda
