// DType (f32, bf16, f16; i32 for token ids) and exact host/device conversions between the
// 16-bit formats and float.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "weft/host_device.hpp"

namespace weft {

// The floating-point types carry activations and weights; kI32 only carries token ids and
// positions (copy, communication, embedding lookups), never arithmetic.
enum class DType { kF32, kBF16, kF16, kI32 };

inline bool is_floating(DType dtype) { return dtype != DType::kI32; }

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);         // "f32", "bf16", "f16"
DType parse_dtype(const std::string& name);  // throws weft::Error naming the accepted spellings

// Storage types: the 16-bit formats are carried as raw bits, so that host code needs no CUDA
// header. Conversions round to nearest even, as cuBLASLt and oneDNN do.
struct bf16_t {
  uint16_t bits;
};
struct f16_t {
  uint16_t bits;
};

WEFT_HOST_DEVICE uint32_t float_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}
WEFT_HOST_DEVICE float bits_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

WEFT_HOST_DEVICE bf16_t float_to_bf16(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu) != 0) {
    return bf16_t{static_cast<uint16_t>((u >> 16) | 0x0040u)};  // keep NaN a (quiet) NaN
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16_t{static_cast<uint16_t>(u >> 16)};
}
WEFT_HOST_DEVICE float bf16_to_float(bf16_t h) {
  return bits_float(static_cast<uint32_t>(h.bits) << 16);
}

WEFT_HOST_DEVICE f16_t float_to_f16(float f) {
  uint32_t u = float_bits(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t abs = u & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or NaN
    return f16_t{static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x0200u : 0u))};
  }
  if (abs >= 0x477ff000u) return f16_t{static_cast<uint16_t>(sign | 0x7c00u)};  // overflow
  if (abs < 0x38800000u) {  // subnormal or zero in f16
    if (abs < 0x33000000u) return f16_t{static_cast<uint16_t>(sign)};
    uint32_t exponent = abs >> 23;
    uint32_t mantissa = (abs & 0x007fffffu) | 0x00800000u;
    uint32_t shift = 126u - exponent;  // 14..24
    uint32_t half = mantissa >> shift;
    uint32_t rest = mantissa & ((1u << shift) - 1u);
    uint32_t halfway = 1u << (shift - 1u);
    if (rest > halfway || (rest == halfway && (half & 1u))) ++half;
    return f16_t{static_cast<uint16_t>(sign | half)};
  }
  uint32_t rounded = abs + 0x0fffu + ((abs >> 13) & 1u);
  return f16_t{static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13))};
}
WEFT_HOST_DEVICE float f16_to_float(f16_t h) {
  uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  uint32_t exponent = (h.bits >> 10) & 0x1fu;
  uint32_t mantissa = h.bits & 0x03ffu;
  if (exponent == 0x1fu) return bits_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {
    // subnormal: value = mantissa * 2^-24
    float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-08f;
    return sign ? -magnitude : magnitude;
  }
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// Uniform access used by templated kernels: load<T>(p) gives float, store<T>(p, v) rounds.
WEFT_HOST_DEVICE float to_float(float v) { return v; }
WEFT_HOST_DEVICE float to_float(bf16_t v) { return bf16_to_float(v); }
WEFT_HOST_DEVICE float to_float(f16_t v) { return f16_to_float(v); }
template <typename T>
WEFT_HOST_DEVICE T from_float(float v);
template <>
WEFT_HOST_DEVICE float from_float<float>(float v) {
  return v;
}
template <>
WEFT_HOST_DEVICE bf16_t from_float<bf16_t>(float v) {
  return float_to_bf16(v);
}
template <>
WEFT_HOST_DEVICE f16_t from_float<f16_t>(float v) {
  return float_to_f16(v);
}

}  // namespace weft
