// Bilinear sampling coefficients of one sampling point, shared by the CPU
// and CUDA kernels (host and device).
//
// A point with normalised location (lx, ly) on a level of size (H, W) is
// sampled at pixel (x, y) = (lx * W - 0.5, ly * H - 0.5) (grid_sample with
// align_corners=False) with zeros outside the map.  Its four neighbours are
// c = 0: (y0, x0), 1: (y0, x0+1), 2: (y0+1, x0), 3: (y0+1, x0+1); a corner
// outside the map gets weight 0 and valid = false.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MSDA_HOST_DEVICE __host__ __device__ __forceinline__
#define MSDA_UNROLL _Pragma("unroll")
#else
#define MSDA_HOST_DEVICE inline __attribute__((always_inline))
#define MSDA_UNROLL
#endif

namespace plugins::msda {

template <typename acc_t>
struct Bilinear {
  int32_t offset[4];  // h * W + w of each corner within its level
  acc_t w[4];         // interpolation weights
  acc_t dwdx[4];      // d w / d x (pixel units)
  acc_t dwdy[4];      // d w / d y
  bool valid[4];
};

// Fills `b` and returns whether any corner lies inside the map.  NaN
// locations fail the range test and sample zeros, like grid_sample.
template <typename acc_t>
MSDA_HOST_DEVICE bool bilinear_coefficients(acc_t loc_x, acc_t loc_y,
                                            int32_t H, int32_t W,
                                            Bilinear<acc_t>& b) {
  const acc_t x = loc_x * static_cast<acc_t>(W) - acc_t(0.5);
  const acc_t y = loc_y * static_cast<acc_t>(H) - acc_t(0.5);
  if (!(x > acc_t(-1) && y > acc_t(-1) && x < static_cast<acc_t>(W) &&
        y < static_cast<acc_t>(H))) {
    return false;
  }
  const acc_t xf = std::floor(x);
  const acc_t yf = std::floor(y);
  const int32_t x0 = static_cast<int32_t>(xf);
  const int32_t y0 = static_cast<int32_t>(yf);
  const acc_t lx = x - xf, ly = y - yf;
  const acc_t hx = acc_t(1) - lx, hy = acc_t(1) - ly;
  const bool in_x0 = x0 >= 0, in_x1 = x0 + 1 < W;
  const bool in_y0 = y0 >= 0, in_y1 = y0 + 1 < H;
  b.valid[0] = in_y0 && in_x0;
  b.valid[1] = in_y0 && in_x1;
  b.valid[2] = in_y1 && in_x0;
  b.valid[3] = in_y1 && in_x1;
  // Offsets of the corners inside the map only: y0 * W + x0 + W of a
  // corner below the last row is H * W + x0, past 2^31 - 1 (signed
  // overflow) when H * W is close to it, which level_size_ok allows.
  const int32_t row0 = y0 * W;  // -1 <= y0 <= H - 1: within int32
  b.offset[0] = b.valid[0] ? row0 + x0 : 0;
  b.offset[1] = b.valid[1] ? row0 + x0 + 1 : 0;
  b.offset[2] = b.valid[2] ? row0 + W + x0 : 0;
  b.offset[3] = b.valid[3] ? row0 + W + x0 + 1 : 0;
  b.w[0] = hy * hx;
  b.w[1] = hy * lx;
  b.w[2] = ly * hx;
  b.w[3] = ly * lx;
  b.dwdx[0] = -hy;
  b.dwdx[1] = hy;
  b.dwdx[2] = -ly;
  b.dwdx[3] = ly;
  b.dwdy[0] = -hx;
  b.dwdy[1] = -lx;
  b.dwdy[2] = hx;
  b.dwdy[3] = lx;
  MSDA_UNROLL
  for (int c = 0; c < 4; ++c) {
    if (!b.valid[c]) {
      b.w[c] = b.dwdx[c] = b.dwdy[c] = acc_t(0);
    }
  }
  return true;
}

}  // namespace plugins::msda
