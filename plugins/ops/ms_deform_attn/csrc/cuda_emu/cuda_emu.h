// CPU emulation of the CUDA built-ins that cuda/ms_deform_attn_cuda.cu uses,
// so that g++ compiles that very file (forced in with `-include cuda_emu.h`,
// see plugins/ops/ms_deform_attn/cuda_emu.py) and its kernels run on CPU
// tensors, under AddressSanitizer and UBSan when asked.
//
// What is emulated, and how faithfully:
// * a launch (MSDA_LAUNCH) checks the limits a GPU enforces (1..1024 threads
//   per block, 1..2^31-1 blocks) and runs the blocks in a shuffled order;
// * a warp is 32 lanes, each a ucontext fiber; a lane runs until it reaches
//   __shfl_xor_sync, and the exchange happens only once all 32 lanes have
//   reached the same shuffle (same source line) with a full mask.  A lane
//   that exits or waits at another shuffle, a partial mask or a partial warp
//   is reported as an error of the launch (a C++ exception -> Python
//   RuntimeError), as is a read from a lane that did not take part;
// * atomics are std::atomic_ref operations; __ldg is a plain load;
// * streams, devices and guards are placeholders: kernels run synchronously
//   at their launch on the calling thread, on CPU memory.
// Not emulated: timing, the GPU memory model and races between warps (lanes
// of different warps never run at the same time), shared memory and
// __syncthreads (the kernels use neither), __launch_bounds__ (ignored).
#pragma once

#include <c10/core/Device.h>
#include <c10/util/Exception.h>
#include <dlfcn.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <numeric>
#include <random>
#include <source_location>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

// ---- keywords ---------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
using std::isfinite;  // device code calls it unqualified

namespace cuda_emu {

struct uint3 {
  unsigned int x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
};

// The built-in variables of the lane that runs now (fibers share one OS
// thread, so the scheduler sets this before each switch).
struct LaneVars {
  uint3 threadIdx, blockIdx;
  dim3 blockDim, gridDim;
};
inline thread_local LaneVars* g_vars = nullptr;

// One launch's record, for "which kernel instantiations ran" (the Python
// side maps the offsets to symbol names with `nm`).
inline std::mutex g_log_mutex;
inline std::vector<std::string> g_launch_log;

// ---- warps of fibers --------------------------------------------------
constexpr int kWarp = 32;
// The kernels' frames are small (a few KiB under ASan).  Keep the stacks
// small too: ASan's swapcontext interceptor clears the shadow of the whole
// target stack at every switch (with syscalls above 64 KiB of shadow).
constexpr size_t kStack = 64 * 1024;

struct Lane {
  enum State { kReady, kAtShuffle, kDone };
  ucontext_t ctx;
  LaneVars vars;
  State state = kReady;
  void* fake_stack = nullptr;  // ASan's fake stack while switched out
  // The pending shuffle.
  unsigned int line = 0, mask = 0;
  const char* file = "";
  int lane_mask = 0, width = 0, size = 0;
  unsigned long long bits = 0, result = 0;
};

struct Warp {
  Lane lanes[kWarp];
  int n = 0;
  ucontext_t scheduler;
  const void* sched_stack = nullptr;  // the scheduler's stack, for ASan
  size_t sched_size = 0;
  const std::function<void()>* body = nullptr;
  char* stacks = nullptr;  // kWarp stacks of kStack bytes
};

// The lanes' stacks: mapped once per OS thread and reused by every launch
// (allocating 32 stacks per launch costs more than the small kernels).
inline char* lane_stacks() {
  static thread_local char* stacks = nullptr;
  if (stacks == nullptr) {
    void* p = mmap(nullptr, kWarp * kStack, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    TORCH_CHECK(p != MAP_FAILED, "cuda_emu: cannot map the lanes' stacks");
    stacks = static_cast<char*>(p);
  }
  return stacks;
}
inline thread_local Warp* g_warp = nullptr;
inline thread_local int g_lane = 0;

inline void switch_to_scheduler(Lane& lane, bool dying) {
  Warp& w = *g_warp;
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(dying ? nullptr : &lane.fake_stack,
                                 w.sched_stack, w.sched_size);
#endif
  if (dying) {
    setcontext(&w.scheduler);
  }
  swapcontext(&lane.ctx, &w.scheduler);
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(lane.fake_stack, nullptr, nullptr);
#endif
}

inline void lane_entry() {
  Warp& w = *g_warp;
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(nullptr, &w.sched_stack, &w.sched_size);
#endif
  (*w.body)();
  Lane& lane = w.lanes[g_lane];
  lane.state = Lane::kDone;
  switch_to_scheduler(lane, /*dying=*/true);
}

inline void resume(Warp& w, int i) {
  g_lane = i;
  g_vars = &w.lanes[i].vars;
  void* fake = nullptr;
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(&fake, w.stacks + i * kStack, kStack);
#endif
  swapcontext(&w.scheduler, &w.lanes[i].ctx);
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

inline std::string lane_list(const Warp& w, Lane::State s) {
  std::string out;
  for (int i = 0; i < w.n; ++i) {
    if (w.lanes[i].state == s) out += (out.empty() ? "" : ",") + std::to_string(i);
  }
  return out;
}

// Runs the lanes of one warp to the end; returns "" or what went wrong.
inline std::string run_warp(Warp& w, std::mt19937_64& rng) {
  int order[kWarp];
  std::iota(order, order + w.n, 0);
  for (;;) {
    std::shuffle(order, order + w.n, rng);
    for (int k = 0; k < w.n; ++k) {
      if (w.lanes[order[k]].state == Lane::kReady) resume(w, order[k]);
    }
    int done = 0;
    for (int i = 0; i < w.n; ++i) done += w.lanes[i].state == Lane::kDone;
    if (done == w.n) return "";
    int waiting = 0;
    while (w.lanes[waiting].state != Lane::kAtShuffle) ++waiting;
    const Lane& first = w.lanes[waiting];
    std::ostringstream where;
    where << "__shfl_xor_sync at " << first.file << ":" << first.line;
    if (done > 0) {
      return "lanes " + lane_list(w, Lane::kDone) +
             " exited without taking part in the full-mask " + where.str() +
             " that lanes " + lane_list(w, Lane::kAtShuffle) + " wait at";
    }
    if (w.n != kWarp) {
      return "a full-mask " + where.str() + " in a partial warp of " +
             std::to_string(w.n) + " lanes";
    }
    for (int i = 0; i < w.n; ++i) {
      const Lane& l = w.lanes[i];
      if (l.line != first.line || std::strcmp(l.file, first.file) != 0) {
        std::ostringstream msg;
        msg << "divergent shuffles: lane " << i << " is at __shfl_xor_sync "
            << l.file << ":" << l.line << " while another lane is at " << where.str();
        return msg.str();
      }
      if (l.mask != 0xffffffffu || l.width != kWarp || l.size != first.size) {
        std::ostringstream msg;
        msg << "lane " << i << " calls " << where.str() << " with mask 0x"
            << std::hex << l.mask << std::dec << ", width " << l.width
            << ", a " << l.size << "-byte value (the emulator supports full "
            << "masks and width 32 only; all lanes must agree)";
        return msg.str();
      }
    }
    for (int i = 0; i < w.n; ++i) {
      const int src = i ^ w.lanes[i].lane_mask;
      if (src < 0 || src >= w.n) {
        return "lane " + std::to_string(i) + " reads lane " + std::to_string(src) +
               ", which did not take part in " + where.str();
      }
      w.lanes[i].result = w.lanes[src].bits;
    }
    for (int i = 0; i < w.n; ++i) w.lanes[i].state = Lane::kReady;
  }
}

// How a failed launch is reported (also used for configuration errors).
[[noreturn]] inline void launch_error(const char* kernel, const std::string& what) {
  TORCH_CHECK(false, "cuda_emu: launch of ", kernel, ": ", what);
}

inline uint64_t next_seed() {
  static std::atomic<uint64_t> counter{0};
  const char* env = std::getenv("CUDA_EMU_SEED");
  const uint64_t base = env ? std::strtoull(env, nullptr, 10) : 0x5eed;
  return base * 0x9e3779b97f4a7c15ull + counter.fetch_add(1);
}

// Runs `body` as a grid of `grid` blocks of `block` threads (x only).
inline void run_grid(int64_t grid, int64_t block, const char* kernel,
                     const void* address, const std::function<void()>& body) {
  if (block < 1 || block > 1024) {
    launch_error(kernel, "invalid configuration: " + std::to_string(block) +
                             " threads per block (a GPU allows 1 to 1024)");
  }
  if (grid < 1 || grid > (int64_t{1} << 31) - 1) {
    launch_error(kernel, "invalid configuration: " + std::to_string(grid) +
                             " blocks (a GPU allows 1 to 2^31 - 1)");
  }
  if (grid * block > (int64_t{1} << 26)) {
    launch_error(kernel, std::to_string(grid * block) +
                             " threads: too many for the emulator (2^26 at most)");
  }
  {
    Dl_info info{};
    std::ostringstream rec;
    if (dladdr(address, &info) != 0 && info.dli_fbase != nullptr) {
      rec << "0x" << std::hex
          << (reinterpret_cast<uintptr_t>(address) -
              reinterpret_cast<uintptr_t>(info.dli_fbase));
    } else {
      rec << kernel;
    }
    std::lock_guard<std::mutex> lock(g_log_mutex);
    g_launch_log.push_back(rec.str());
  }
  std::mt19937_64 rng(next_seed());
  std::vector<int64_t> blocks(grid);
  std::iota(blocks.begin(), blocks.end(), int64_t{0});
  std::shuffle(blocks.begin(), blocks.end(), rng);
  Warp warp;
  warp.body = &body;
  warp.stacks = lane_stacks();
  Warp* const outer = g_warp;  // (launches never nest, but stay safe)
  g_warp = &warp;
  std::string error;
  for (const int64_t b : blocks) {
    for (int64_t first = 0; first < block && error.empty(); first += kWarp) {
      warp.n = static_cast<int>(std::min<int64_t>(kWarp, block - first));
      for (int i = 0; i < warp.n; ++i) {
        Lane& lane = warp.lanes[i];
        lane.state = Lane::kReady;
        lane.vars.threadIdx = {static_cast<unsigned>(first + i), 0, 0};
        lane.vars.blockIdx = {static_cast<unsigned>(b), 0, 0};
        lane.vars.blockDim = {static_cast<unsigned>(block), 1, 1};
        lane.vars.gridDim = {static_cast<unsigned>(grid), 1, 1};
        getcontext(&lane.ctx);
        lane.ctx.uc_stack.ss_sp = warp.stacks + i * kStack;
        lane.ctx.uc_stack.ss_size = kStack;
        lane.ctx.uc_link = nullptr;
        makecontext(&lane.ctx, lane_entry, 0);
      }
      error = run_warp(warp, rng);
      if (!error.empty()) {
        std::ostringstream where;
        where << " (block " << b << ", warp " << first / kWarp << ")";
        error += where.str();
      }
    }
    if (!error.empty()) break;
  }
#if defined(__SANITIZE_ADDRESS__)
  // Lanes abandoned at a failed shuffle leave their frames poisoned.
  if (!error.empty()) ASAN_UNPOISON_MEMORY_REGION(warp.stacks, kWarp * kStack);
#endif
  g_warp = outer;
  g_vars = nullptr;
  if (!error.empty()) launch_error(kernel, error);
}

// kernel<<<grid, block, 0, stream>>>(args...) as
// Launch{kernel, grid, block, name}(args...): the arguments are converted
// to the kernel's parameter types and copied once, as CUDA does.
template <typename... P>
struct Launch {
  void (*kernel)(P...);
  int64_t grid, block;
  const char* name;
  template <typename... A>
  void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "wrong number of kernel arguments");
    const std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
    auto* k = kernel;
    run_grid(grid, block, name, reinterpret_cast<const void*>(k),
             [&params, k] { std::apply(k, params); });
  }
};
template <typename... P>
Launch<P...> launch(void (*kernel)(P...), int64_t grid, int64_t block,
                    const char* name) {
  return Launch<P...>{kernel, grid, block, name};
}

}  // namespace cuda_emu

#define MSDA_LAUNCH(kernel, blocks, threads, stream) \
  ((void)(stream), ::cuda_emu::launch(kernel, blocks, threads, #kernel))

#define threadIdx (::cuda_emu::g_vars->threadIdx)
#define blockIdx (::cuda_emu::g_vars->blockIdx)
#define blockDim (::cuda_emu::g_vars->blockDim)
#define gridDim (::cuda_emu::g_vars->gridDim)

// ---- warp shuffle -------------------------------------------------------
template <typename T>
T __shfl_xor_sync(unsigned int mask, T var, int lane_mask, int width = 32,
                  std::source_location at = std::source_location::current()) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8);
  cuda_emu::Warp& w = *cuda_emu::g_warp;
  cuda_emu::Lane& lane = w.lanes[cuda_emu::g_lane];
  lane.state = cuda_emu::Lane::kAtShuffle;
  lane.mask = mask;
  lane.lane_mask = lane_mask;
  lane.width = width;
  lane.size = sizeof(T);
  lane.file = at.file_name();
  lane.line = at.line();
  lane.bits = 0;
  std::memcpy(&lane.bits, &var, sizeof(T));
  cuda_emu::switch_to_scheduler(lane, /*dying=*/false);
  T out;
  std::memcpy(&out, &lane.result, sizeof(T));
  return out;
}

// ---- atomics and loads ----------------------------------------------------
template <typename T>
T atomicAdd(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_add(v);
}
inline unsigned int atomicOr(unsigned int* p, unsigned int v) {
  return std::atomic_ref<unsigned int>(*p).fetch_or(v);
}
inline unsigned int atomicExch(unsigned int* p, unsigned int v) {
  return std::atomic_ref<unsigned int>(*p).exchange(v);
}
inline unsigned int atomicMax_system(unsigned int* p, unsigned int v) {
  std::atomic_ref<unsigned int> a(*p);
  unsigned int old = a.load();
  while (old < v && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
template <typename T>
T __ldg(const T* p) {
  return *p;
}
// cvt.rni.s64.f64: round to nearest even, saturating, NaN -> 0.
inline long long __double2ll_rn(double x) {
  if (std::isnan(x)) return 0;
  if (x >= 9223372036854775807.0) return INT64_MAX;
  if (x <= -9223372036854775808.0) return INT64_MIN;
  return std::llrint(x);
}

// ---- planted bugs -----------------------------------------------------
// The planted-bug tests (tests/test_ops/test_cuda_emu.py) edit a temporary
// copy of the .cu so that a bug is on when CUDA_EMU_PLANT names it (one
// build serves every planted bug).  The real kernel never calls this.
inline bool cuda_emu_planted(const char* name) {
  const char* env = std::getenv("CUDA_EMU_PLANT");
  return env != nullptr && std::strcmp(env, name) == 0;
}

// ---- runtime API ------------------------------------------------------
struct CUstream_st;
using cudaStream_t = CUstream_st*;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
constexpr unsigned int cudaHostAllocMapped = 2;
inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : "invalid argument";
}
template <typename T>
cudaError_t cudaMemcpyFromSymbol(void* dst, const T& symbol, size_t count) {
  if (count > sizeof(T)) return cudaErrorInvalidValue;
  std::memcpy(dst, &symbol, count);
  return cudaSuccess;
}
template <typename T>
cudaError_t cudaMemcpyToSymbol(T& symbol, const void* src, size_t count) {
  if (count > sizeof(T)) return cudaErrorInvalidValue;
  std::memcpy(&symbol, src, count);
  return cudaSuccess;
}
inline cudaError_t cudaHostAlloc(void** p, size_t size, unsigned int) {
  *p = std::calloc(1, size);
  return *p ? cudaSuccess : cudaErrorInvalidValue;
}
template <typename T>
cudaError_t cudaHostGetDevicePointer(T** dev, T* host, unsigned int) {
  *dev = host;  // one address space
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

#define C10_CUDA_CHECK(expr)                                               \
  do {                                                                     \
    const cudaError_t err_ = (expr);                                       \
    TORCH_CHECK(err_ == cudaSuccess, "CUDA error: ", cudaGetErrorString(err_)); \
  } while (0)
// Launch errors throw at the launch itself.
#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)

namespace c10::cuda {
// The emulated device is the CPU: the op gets CPU tensors.
struct CUDAGuard {
  explicit CUDAGuard(c10::Device device) {
    TORCH_CHECK(device.is_cpu(), "cuda_emu: tensors must be on the CPU, got ", device);
  }
  explicit CUDAGuard(c10::DeviceIndex) {}
};
struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
  operator cudaStream_t() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }
}  // namespace c10::cuda
