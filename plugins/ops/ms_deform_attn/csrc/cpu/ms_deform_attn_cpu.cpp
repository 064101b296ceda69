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
// accumulates grad_value of its head without atomics: in place in
// grad_value (float32/64 values whose rows are written rarely, see Plan;
// grad_value then starts zeroed: fresh pages from calloc, or zeroed by the
// task) or in a per-thread float slab (cache resident, float32
// accumulation for half/bfloat16) written out once.  Either way each
// grad_value element is summed by one task in query order, so the result
// is deterministic and the same in place or through a slab.  Queries are
// split into chunks only when batch * heads cannot keep every thread busy
// (and the backward cannot work in place); backward chunks then
// accumulate into separate slabs that are summed at the end (at most
// kChunkSlabBytes of them, or 4 times grad_value, whatever the thread
// count).  Locations and weights are read as acc_t (float32 ones with a
// half/bfloat16 value: mixed precision), and their gradients written as
// acc_t, then converted to the inputs' dtypes where these differ.
//
// Chapters: common.h (target clones, vector rows), planning.h (Plan,
// Problem, Levels), point_math.h (plan_points, expand_point, prefetches),
// head_views.h (HeadViews, TaskValues), forward.h and backward.h (the
// per-head query loops); this file keeps the threading and the entry
// points.
#include "ms_deform_attn_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>
#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <tuple>
#include <utility>
#include <type_traits>
#include <vector>
#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "../ms_deform_attn.h"
#include "backward.h"
#include "common.h"
#include "forward.h"
#include "head_views.h"
#include "planning.h"
#include "point_math.h"

namespace plugins::msda {
namespace {

// Marks the whole 2 MiB pages inside [data, data + bytes) for transparent
// huge pages, before anything touches them (where the system leaves THP to
// madvise, the common default; ignored where THP is off or absent): one
// page fault per 2 MiB instead of 512.  At the projector shape (a 45 MB
// grad_value on fresh pages each call) the 4 KiB faults took about half of
// the backward's CPU time.  Only whole pages inside the range: the memory
// around it is not ours to change.  They go with the output's memory.
void advise_huge_pages(char* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t first = reinterpret_cast<uintptr_t>(data);
  const uintptr_t begin = (first + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (first + static_cast<uintptr_t>(bytes)) & ~(kHuge - 1);
  if (end > begin) {
    madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
  }
#else
  (void)data;
  (void)bytes;
#endif
}

// Maps the pages of a freshly allocated output before the tasks write it.
// Every task writes its head's D channels at every position, i.e. into
// every page, so on the fresh pages of a large output (which comes
// straight from mmap) all threads would fault on each page, contending in
// the kernel.  Here each thread maps its own range once instead, in one
// madvise(MADV_POPULATE_WRITE) call, huge pages where it can.  Reused heap
// memory is mapped already; populating it again only costs, so a few
// sampled pages decide.  Without MADV_POPULATE_WRITE (not Linux, or a
// kernel before 5.14) the pages fault as they are written.
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
  advise_huge_pages(data, bytes);
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

// Outputs from this size on come straight from the kernel's fresh (zero)
// pages: glibc's malloc maps them with mmap whatever its dynamic threshold
// (which never exceeds 32 MiB on 64-bit).
constexpr int64_t kFreshPagesBytes = int64_t{32} << 20;

// A zero-filled (N, S, M, D) grad_value for the in-place backward.  Large
// ones come from calloc, which (glibc) hands out fresh mmap pages without
// writing them (the kernel zeroes each page at its first touch, in huge
// pages here), so that grad_value is written once, by the tasks, instead
// of zero-filled first: at the projector shape this made forward+backward
// about 20 % faster.  With any other allocator calloc still returns zeros
// (at worst it zero-fills them itself).  The block bypasses torch's
// allocator (its profiler does not see it).  Smaller ones come from
// torch's allocator (often reused heap memory) and are zeroed by the
// tasks (zeroed = false).
std::pair<at::Tensor, bool> zeroed_grad_value(
    const Sizes& s, const at::TensorOptions& options) {
  const int64_t bytes = s.N * s.S * s.M * s.D *
                        static_cast<int64_t>(options.dtype().itemsize());
  if (bytes < kFreshPagesBytes) {
    auto grad_value = at::empty({s.N, s.S, s.M, s.D}, options);
    map_pages(grad_value);
    return {grad_value, false};
  }
  // 64 bytes more, to start grad_value at a cache line as torch would.
  void* base = std::calloc(static_cast<size_t>(bytes) + 64, 1);
  TORCH_CHECK(base, "ms_deform_attn_backward: cannot allocate grad_value (",
              bytes, " bytes)");
  char* data = reinterpret_cast<char*>(
      (reinterpret_cast<uintptr_t>(base) + 63) & ~uintptr_t{63});
  advise_huge_pages(data, bytes);
  // Resizable through torch's allocator, like any CPU tensor.
  return {at::for_blob(data, {s.N, s.S, s.M, s.D})
              .deleter([base](void*) { std::free(base); })
              .options(options)
              .allocator(c10::GetCPUAllocator())
              .resizeable_storage()
              .make_tensor(),
          true};
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
  // grad_value can accumulate in place where it is in acc_t already.
  const Plan plan(s, /*forward=*/false,
                  /*grad_in_place=*/acc_type == value.scalar_type());
  // In place, grad_value starts zeroed (by calloc, or by each task for its
  // head's rows); otherwise every element of it is written by the kernel,
  // as are all of the other two.
  at::Tensor grad_value;
  bool zeroed = false;
  if (plan.direct) {
    std::tie(grad_value, zeroed) = zeroed_grad_value(s, options);
  } else {
    grad_value = at::empty({s.N, s.S, s.M, s.D}, options);
    map_pages(grad_value);
  }
  auto grad_locations =
      at::empty({s.N, s.Lq, s.M, s.L, s.P, 2}, options.dtype(acc_type));
  auto grad_weights =
      at::empty({s.N, s.Lq, s.M, s.L, s.P}, options.dtype(acc_type));
  const Levels lv(spatial_shapes, level_start_index, s);
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
        constexpr bool in_place_ok = std::is_same_v<scalar_t, acc_t>;
        const bool direct = in_place_ok && plan.direct;
        run_tasks(s.N * s.M * plan.chunks, [&](auto next_task) {
          std::vector<acc_t> scratch(s.D);
          PointsBuffer<acc_t> pts(s.L * s.P, 2);
          TaskValues<scalar_t, acc_t> values(pb, plan);
          // Zero once; store_head leaves it zeroed after each head.
          std::vector<acc_t> grad_slab(plan.chunks > 1 || direct ? 0
                                                                 : s.S * s.D);
          for (int64_t task; (task = next_task()) >= 0;) {
            const int64_t nm = task / plan.chunks, chunk = task % plan.chunks;
            const int64_t n = nm / s.M, m = nm % s.M;
            const int64_t q0 = chunk * plan.per_chunk;
            const int64_t q1 = std::min(s.Lq, q0 + plan.per_chunk);
            // Slabs (the chunk's or this thread's) are contiguous and
            // cache resident; grad_value's rows of a head are M * D apart.
            GradRows<acc_t> gv{
                chunk_p ? chunk_p + task * s.S * s.D : grad_slab.data(), s.D,
                /*prefetch=*/false};
            if constexpr (in_place_ok) {
              if (direct) {
                gv = {gvalue + n * s.S * s.M * s.D + m * s.D, s.M * s.D,
                      /*prefetch=*/true};
                if (!zeroed) zero_rows(gv.rows, s.S, s.D, gv.stride);
              }
            }
            values.with_head(n, m, [&](const auto* views) {
              using src_t = typename std::remove_pointer_t<
                  decltype(views)>::value_type;
              with_channel_vectors<src_t, acc_t>(s.D, [&](auto nv) {
                backward_queries<nv()>(pb, views, go_p, n, m, q0, q1, gv, gloc,
                                       gattn, scratch.data(), pts);
              });
            });
            if (!chunk_p && !direct) store_head(gv.rows, s, n, m, gvalue);
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
