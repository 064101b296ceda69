// 64-byte vectors for the CPU kernels' channel loops.
//
// GCC/Clang vector extensions: one AVX-512 register, two AVX2 or four SSE
// registers, depending on the target clone the code is inlined into (see
// MSDA_CPU_CLONES), with no intrinsics and no ISA-specific source.  Other
// compilers take the scalar loops (kSimd = false).
#pragma once

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
};
#else
template <typename T>
struct Simd {
  static constexpr bool kSimd = false;
  static constexpr int kLanes = 1;
};
#endif

}  // namespace plugins::msda
