// 64-byte vectors for the CPU kernels' channel loops.
//
// GCC/Clang vector extensions: one AVX-512 register, two AVX2 or four SSE
// registers, depending on the target clone the code is inlined into (see
// MSDA_CPU_CLONES), with no intrinsics and no ISA-specific source.  Other
// compilers take the scalar loops (kSimd = false).
#pragma once

#include <cstdint>
#include <cstring>

namespace plugins::msda {

#if defined(__GNUC__)
#define MSDA_SIMD_INLINE inline __attribute__((always_inline))

template <typename T>
struct Simd {
  static constexpr bool kSimd = true;
  static constexpr int kLanes = 64 / sizeof(T);
  typedef T vec __attribute__((vector_size(64)));
  typedef T half __attribute__((vector_size(32)));
  typedef T quarter __attribute__((vector_size(16)));

  static MSDA_SIMD_INLINE vec load(const T* p) {
    vec v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static MSDA_SIMD_INLINE void store(T* p, vec v) {
    std::memcpy(p, &v, sizeof(v));
  }
  static MSDA_SIMD_INLINE vec zero() { return vec{}; }
  // Sum of the lanes: halve the width twice, then add the last few.
  static MSDA_SIMD_INLINE T sum(vec v) {
    half a, b;
    std::memcpy(&a, &v, sizeof(a));
    std::memcpy(&b, reinterpret_cast<const char*>(&v) + sizeof(a), sizeof(b));
    a += b;
    quarter c, d;
    std::memcpy(&c, &a, sizeof(c));
    std::memcpy(&d, reinterpret_cast<const char*>(&a) + sizeof(c), sizeof(d));
    c += d;
    T r = 0;
    for (int i = 0; i < static_cast<int>(sizeof(c) / sizeof(T)); ++i) r += c[i];
    return r;
  }
  // The lane sums of four vectors at once (out[k] = sum(v_k)): halves are
  // added pairwise across the vectors, so the four reductions share their
  // shuffles instead of running one after the other.
  static MSDA_SIMD_INLINE void sum4(vec v0, vec v1, vec v2, vec v3, T* out) {
    if constexpr (sizeof(T) == 4) {
      typedef int32_t hidx __attribute__((vector_size(32)));
      half a0 = lo(v0) + hi(v0), a1 = lo(v1) + hi(v1);
      half a2 = lo(v2) + hi(v2), a3 = lo(v3) + hi(v3);
      // lanes 0-3: a0 folded, 4-7: a1 folded (and a2/a3 likewise)
      const hidx f0 = {0, 1, 2, 3, 8, 9, 10, 11};
      const hidx f1 = {4, 5, 6, 7, 12, 13, 14, 15};
      half b01 = __builtin_shuffle(a0, a1, f0) + __builtin_shuffle(a0, a1, f1);
      half b23 = __builtin_shuffle(a2, a3, f0) + __builtin_shuffle(a2, a3, f1);
      // lanes: (v0 x2, v2 x2, v1 x2, v3 x2)
      const hidx g0 = {0, 1, 8, 9, 4, 5, 12, 13};
      const hidx g1 = {2, 3, 10, 11, 6, 7, 14, 15};
      half c = __builtin_shuffle(b01, b23, g0) + __builtin_shuffle(b01, b23, g1);
      out[0] = c[0] + c[1];
      out[2] = c[2] + c[3];
      out[1] = c[4] + c[5];
      out[3] = c[6] + c[7];
    } else {
      out[0] = sum(v0);
      out[1] = sum(v1);
      out[2] = sum(v2);
      out[3] = sum(v3);
    }
  }

 private:
  static MSDA_SIMD_INLINE half lo(vec v) {
    half h;
    std::memcpy(&h, &v, sizeof(h));
    return h;
  }
  static MSDA_SIMD_INLINE half hi(vec v) {
    half h;
    std::memcpy(&h, reinterpret_cast<const char*>(&v) + sizeof(h), sizeof(h));
    return h;
  }
};
#else
template <typename T>
struct Simd {
  static constexpr bool kSimd = false;
  static constexpr int kLanes = 1;
};
#endif

}  // namespace plugins::msda
