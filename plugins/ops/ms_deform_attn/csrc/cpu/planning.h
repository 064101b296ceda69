// Planning of one call of the CPU kernel: how it is split over threads
// (Plan), its raw pointers and sizes (Problem) with the level geometry
// per point (Levels), and the rows of one head (Head).
//
// Included only by ms_deform_attn_cpu.cpp (one translation unit):
// everything here has internal linkage (anonymous namespace), as it had
// when it lived in that file.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../ms_deform_attn.h"

namespace plugins::msda {
namespace {

// Backward query chunks accumulate in slabs of S * D acc_t per (batch,
// head) each: they may take max(4 grad_values, this) bytes, so the scratch
// memory does not grow with the thread count.
constexpr int64_t kChunkSlabBytes = int64_t{64} << 20;

// A backward task accumulates its head's grad_value rows in a contiguous
// per-thread slab (cache resident, written out once) when it writes at
// least this many corner rows per row of the head, and in place in
// grad_value otherwise (zeroed first: a slab costs a zeroing, a read and a
// write of every row, paid back only by rows written often).  With 16
// (batch, head) tasks on 2 threads: the decoder shape (3.5 writes per row)
// is faster with the slab; the projector shape (0.75) was as fast in place
// with the tasks zeroing their rows, and faster on calloc's zero pages
// (see zeroed_grad_value), without the per-thread slab of S * D floats.
constexpr int64_t kSlabWritesPerRow = 2;
// ... and with fewer (batch, head) pairs than 4 per thread, where the
// alternative is query chunks, each with a slab to zero and to sum at the
// end: 2 to 6 pairs on 2 threads ran 2-5x faster in place at 0.75 and 3.5
// writes per row; the encoder shape (64 per row) was 10 % faster chunked.
constexpr int64_t kChunkWritesPerRow = 8;

// How a call is split over threads.
struct Plan {
  int64_t chunks;     // query chunks per (batch, head)
  int64_t per_chunk;  // queries per chunk
  bool slab;          // copy each head's values into a contiguous slab
  bool direct;        // backward: accumulate into grad_value in place

  // grad_in_place: grad_value has the accumulation type (float32/64).
  Plan(const Sizes& s, bool forward, bool grad_in_place = false) {
    const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
    const int64_t heads = s.N * s.M;
    chunks = heads >= 4 * threads
                 ? 1
                 : std::min<int64_t>(std::max<int64_t>(s.Lq, 1),
                                     (4 * threads + heads - 1) / heads);
    // In place, a task owns a whole (batch, head) (no two write the same
    // grad_value element): no query chunks, so the heads must spread
    // evenly enough (the busiest thread at most 1.25x the mean, as with
    // 4 or more heads per thread).
    const int64_t per_thread = (heads + threads - 1) / threads;
    const bool balanced = 5 * heads >= 4 * threads * per_thread;
    const int64_t writes = s.Lq * s.L * s.P * 4;  // corner rows per head
    direct = !forward && grad_in_place && balanced &&
             writes < (chunks == 1 ? kSlabWritesPerRow : kChunkWritesPerRow) *
                          s.S;
    if (direct) chunks = 1;
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

// Where the backward accumulates grad_value of the head it works on: rows
// of D channels, `stride` apart (a per-thread slab, or grad_value itself).
template <typename acc_t>
struct GradRows {
  acc_t* rows;
  int64_t stride;
  bool prefetch;  // rows in grad_value (not in a cache-resident slab)
};

}  // namespace
}  // namespace plugins::msda
