// The values a task of the CPU kernel reads: each level of its head read
// in place or from a contiguous per-thread copy (HeadViews, TaskValues).
//
// Included only by ms_deform_attn_cpu.cpp (one translation unit):
// everything here has internal linkage (anonymous namespace), as it had
// when it lived in that file.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "../ms_deform_attn.h"
#include "planning.h"
#include "point_math.h"

namespace plugins::msda {
namespace {

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

}  // namespace
}  // namespace plugins::msda
