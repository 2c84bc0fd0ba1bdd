// Helpers for the CPU backend's vectorised loops: the AVX2 function clones and an exp the
// compiler can vectorise (files using them are compiled with -fno-trapping-math, without which
// GCC keeps the compare-selects below as branches and vectorises nothing: src/CMakeLists.txt).
#pragma once

#include <cstdint>
#include <cstring>

// The library is built for the baseline x86-64; the hot loops are compiled twice, for AVX2 + FMA
// and for the baseline, and picked at load time. A loop compiled both ways gives results that
// may differ in the last bits between CPUs (lane count, FMA), never between runs or thread
// counts on one machine.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define WEFT_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define WEFT_SIMD_CLONES
#endif

namespace weft {

// exp(x) for x <= 0 (larger x are not passed): 2^k e^r with k = round(x / ln 2), |r| <= ln2 / 2,
// e^r by its degree-6 Taylor-like polynomial (Cephes' expf coefficients); relative error about
// 2e-7. Below -87 it returns exp(-87) (about 1.6e-38) rather than a denormal or zero. Written
// without calls or branches so the loops around it vectorize; NaN stays NaN.
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float k = (x * 1.44269504f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = x - k * 0.693359375f + k * 2.12194440e-4f;      // x - k ln2, two parts
  float q = 1.9875691500e-4f;
  q = q * r + 1.3981999507e-3f;
  q = q * r + 8.3334519073e-3f;
  q = q * r + 4.1665795894e-2f;
  q = q * r + 1.6666665459e-1f;
  q = q * r + 5.0000001201e-1f;
  q = q * r * r + r + 1.0f;
  // k is in [-126, 0] for every x passed; the clamp only turns a NaN's k (whose conversion to an
  // integer is undefined) into -126, and q keeps the NaN.
  const float k_defined = k >= -126.0f ? k : -126.0f;
  const int32_t bits = (static_cast<int32_t>(k_defined) + 127) << 23;
  float two_k;
  std::memcpy(&two_k, &bits, sizeof two_k);
  return q * two_k;
}

// sigmoid(x) = 1 / (1 + e^-x), through exp of -|x| only, so it vectorizes and never overflows.
inline float sigmoid_simd(float x) {
  const float e = exp_nonpositive(x < 0.0f ? x : -x);
  const float inv = 1.0f / (1.0f + e);
  return x < 0.0f ? e * inv : inv;
}

}  // namespace weft
