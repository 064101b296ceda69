// Shared by the chapters of the CPU kernel: target clones and forced
// inlining of the hot loops, the partial sums of the channel reductions,
// and rows of D channels held in vector registers.
//
// Included only by ms_deform_attn_cpu.cpp (one translation unit):
// everything here has internal linkage (anonymous namespace), as it had
// when it lived in that file.
#pragma once

#include <cstdint>
#include <type_traits>

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
#define MSDA_LAMBDA_INLINE __attribute__((always_inline))
#else
#define MSDA_INLINE inline
#define MSDA_LAMBDA_INLINE
#endif

constexpr int kLanes = 16;  // partial sums of the channel reductions

// Sums the kLanes partial sums pairwise (log depth instead of a serial
// chain; the halves are added lane-wise, which vectorises).
template <typename acc_t>
MSDA_INLINE acc_t tree_sum(acc_t* part) {
  for (int half = kLanes / 2; half > 0; half /= 2) {
    for (int k = 0; k < half; ++k) part[k] += part[k + half];
  }
  return part[0];
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

}  // namespace
}  // namespace plugins::msda
