// Which levels the kernels may read, shared by the CPU checks (on the
// host) and the CUDA kernels (on the device, without a host sync).
#pragma once

#include <cstdint>

#include "bilinear.h"

namespace plugins::msda {

// H and W narrow to int32 and H * W positions fit 32-bit offsets within
// a level.  Never overflows (each factor is checked first).
MSDA_HOST_DEVICE bool level_size_ok(int64_t H, int64_t W) {
  constexpr int64_t kMax = (int64_t{1} << 31) - 1;
  return H >= 0 && W >= 0 && H <= kMax && W <= kMax && H * W <= kMax;
}

// Level (H, W) starting at position `start` lies inside [0, S): what the
// CUDA kernels check per level before reading or writing any of it.
MSDA_HOST_DEVICE bool level_in_bounds(int64_t H, int64_t W, int64_t start,
                                      int64_t S) {
  return level_size_ok(H, W) && start >= 0 && start <= S - H * W;
}

}  // namespace plugins::msda
