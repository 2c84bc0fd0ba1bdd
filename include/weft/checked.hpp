// Checked integer arithmetic for sizes: an overflow is a weft::Error naming the operands, never a
// wrapped value that later allocates a few bytes and writes far past them.
#pragma once

#include <cstdint>
#include <limits>

#include "weft/error.hpp"

namespace weft {

// a * b, or weft::Error (kInvalidArgument) "<what>: a x b overflows int64".
inline int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t out = 0;
  if (__builtin_mul_overflow(a, b, &out)) {
    WEFT_THROW(ErrorCode::kInvalidArgument, what, ": ", a, " x ", b, " overflows int64");
  }
  return out;
}

// a + b, or weft::Error (kInvalidArgument) "<what>: a + b overflows int64".
inline int64_t checked_add(int64_t a, int64_t b, const char* what) {
  int64_t out = 0;
  if (__builtin_add_overflow(a, b, &out)) {
    WEFT_THROW(ErrorCode::kInvalidArgument, what, ": ", a, " + ", b, " overflows int64");
  }
  return out;
}

// `value` as the narrower integer type To, or weft::Error naming it and To's range: never a
// silent truncation (4294967298 as an int is 2).
template <typename To>
To checked_narrow(int64_t value, const char* what) {
  static_assert(sizeof(To) < sizeof(int64_t), "checked_narrow is for types narrower than int64");
  constexpr int64_t lo = std::numeric_limits<To>::min(), hi = std::numeric_limits<To>::max();
  if (value < lo || value > hi) {
    WEFT_THROW(ErrorCode::kInvalidArgument, what, " (", value, ") is outside [", lo, ", ", hi, "]");
  }
  return static_cast<To>(value);
}

}  // namespace weft
