// Unit tests of the core layer: 16-bit conversions, Shape, weft::Error, TensorView, dtype names.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "unit/unit_util.hpp"
#include "weft/weft.hpp"

namespace weft {
namespace {

// --- 16-bit conversions -------------------------------------------------------------------------

bool f16_is_nan(uint16_t bits) { return (bits & 0x7c00u) == 0x7c00u && (bits & 0x03ffu) != 0; }
bool bf16_is_nan(uint16_t bits) { return (bits & 0x7f80u) == 0x7f80u && (bits & 0x007fu) != 0; }

// Round-to-nearest-even into a 16-bit format, computed independently of dtype.hpp: `value(bits)`
// gives the value of the non-negative pattern `bits`, increasing in bits up to `inf_bits`, and
// `inf_proxy` is where the next binade would start (the IEEE rule rounds to infinity exactly
// when the magnitude reaches max_finite + ulp/2, i.e. ties to even against that proxy).
template <typename ValueFn>
uint16_t reference_round(double x, ValueFn value, uint16_t inf_bits, double inf_proxy) {
  const uint16_t sign = std::signbit(x) ? 0x8000u : 0u;
  const double a = std::fabs(x);
  auto magnitude = [&](uint32_t b) { return b == inf_bits ? inf_proxy : value(b); };
  if (a >= inf_proxy) return static_cast<uint16_t>(sign | inf_bits);
  // Largest pattern with magnitude <= a.
  uint32_t lo = 0, hi = inf_bits;  // magnitude(lo) <= a < magnitude(hi)
  while (hi - lo > 1) {
    const uint32_t mid = (lo + hi) / 2;
    if (magnitude(mid) <= a) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  const double below = a - magnitude(lo), above = magnitude(hi) - a;
  uint32_t pick = below < above ? lo : above < below ? hi : ((lo & 1u) == 0 ? lo : hi);
  return static_cast<uint16_t>(sign | pick);
}

double f16_value(uint32_t bits) {
  const uint32_t exponent = (bits >> 10) & 0x1fu, mantissa = bits & 0x3ffu;
  if (exponent == 0) return std::ldexp(static_cast<double>(mantissa), -24);
  return std::ldexp(1.0 + mantissa / 1024.0, static_cast<int>(exponent) - 15);
}
double bf16_value(uint32_t bits) {
  const uint32_t exponent = (bits >> 7) & 0xffu, mantissa = bits & 0x7fu;
  if (exponent == 0) return std::ldexp(static_cast<double>(mantissa), -133);
  return std::ldexp(1.0 + mantissa / 128.0, static_cast<int>(exponent) - 127);
}
uint16_t reference_f16(float x) { return reference_round(x, f16_value, 0x7c00u, 65536.0); }
uint16_t reference_bf16(float x) {
  return reference_round(x, bf16_value, 0x7f80u, std::ldexp(1.0, 128));
}

std::string hex(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

TEST(Bf16, RoundsToNearestEvenOnTies) {
  // 1 + 2^-8 is halfway between 1 (even) and 1 + 2^-7 (odd): stays at 1.
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)).bits, 0x3f80u);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): goes up.
  EXPECT_EQ(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)).bits, 0x3f82u);
  // Just above a tie rounds up, just below rounds down.
  EXPECT_EQ(float_to_bf16(bits_float(0x3f808001u)).bits, 0x3f81u);
  EXPECT_EQ(float_to_bf16(bits_float(0x3f817fffu)).bits, 0x3f81u);
  EXPECT_EQ(float_to_bf16(-1.0f - std::ldexp(1.0f, -8)).bits, 0xbf80u);
}

TEST(Bf16, EveryTieAndItsNeighboursRoundLikeTheReference) {
  // For each pair of adjacent finite bf16 values (both signs): the exact midpoint, and one float
  // ulp either side of it.
  int checked = 0;
  for (uint32_t b = 0; b < 0x7f80u; ++b) {
    for (uint32_t sign : {0u, 0x80000000u}) {
      const uint32_t mid = sign | (b << 16) | 0x8000u;
      for (uint32_t u : {mid - 1, mid, mid + 1}) {
        const float x = bits_float(u);
        ASSERT_EQ(float_to_bf16(x).bits, reference_bf16(x)) << "float " << hex(u) << " = " << x;
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 190000);
}

TEST(Bf16, RandomFloatsRoundLikeTheReference) {
  std::mt19937 gen(7);
  for (int i = 0; i < 1 << 20; ++i) {
    const uint32_t u = gen();
    const float x = bits_float(u);
    if (std::isnan(x)) continue;
    ASSERT_EQ(float_to_bf16(x).bits, reference_bf16(x)) << "float " << hex(u) << " = " << x;
  }
}

TEST(Bf16, SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(float_to_bf16(inf).bits, 0x7f80u);
  EXPECT_EQ(float_to_bf16(-inf).bits, 0xff80u);
  EXPECT_EQ(float_to_bf16(0.0f).bits, 0x0000u);
  EXPECT_EQ(float_to_bf16(-0.0f).bits, 0x8000u);
  // The largest float lies past max bf16 + ulp/2: infinity under round-to-nearest-even.
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::max()).bits, 0x7f80u);
  EXPECT_EQ(float_to_bf16(bits_float(0x7f7f7fffu)).bits, 0x7f7fu);
  // NaN stays NaN, whatever its payload (a payload only in the low 16 bits must not become inf).
  for (uint32_t u :
       {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7f80ffffu, 0xffffffffu, 0x7fbfffffu}) {
    const uint16_t h = float_to_bf16(bits_float(u)).bits;
    EXPECT_TRUE(bf16_is_nan(h)) << hex(u) << " -> " << hex(h);
    EXPECT_TRUE(std::isnan(bf16_to_float(bf16_t{h})));
  }
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::nanf("")))));
  // Subnormal floats are representable in bf16 (same exponent range).
  EXPECT_EQ(float_to_bf16(bits_float(0x00010000u)).bits, 0x0001u);
  EXPECT_EQ(bf16_to_float(bf16_t{0x0001u}), bits_float(0x00010000u));
}

TEST(Bf16, ExhaustiveRoundTripThroughFloat) {
  for (uint32_t bits = 0; bits <= 0xffffu; ++bits) {
    const bf16_t h{static_cast<uint16_t>(bits)};
    const float f = bf16_to_float(h);
    if (bf16_is_nan(h.bits)) {
      EXPECT_TRUE(std::isnan(f)) << hex(bits);
      EXPECT_TRUE(bf16_is_nan(float_to_bf16(f).bits)) << hex(bits);
      continue;
    }
    ASSERT_EQ(float_to_bf16(f).bits, bits) << "bf16 " << hex(bits) << " -> " << f;
    const double expected = (bits & 0x8000u ? -1.0 : 1.0) * bf16_value(bits & 0x7fffu);
    if ((bits & 0x7fffu) == 0x7f80u) {
      ASSERT_TRUE(std::isinf(f));
    } else {
      ASSERT_EQ(static_cast<double>(f), expected) << hex(bits);
    }
  }
}

TEST(F16, RoundsToNearestEvenOnTies) {
  // 1 + 2^-11 is halfway between 1 (even) and 1 + 2^-10 (odd).
  EXPECT_EQ(float_to_f16(1.0f + std::ldexp(1.0f, -11)).bits, 0x3c00u);
  // 1 + 3 * 2^-11 is halfway between 1 + 2^-10 (odd) and 1 + 2^-9 (even).
  EXPECT_EQ(float_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)).bits, 0x3c02u);
  EXPECT_EQ(float_to_f16(std::nextafter(1.0f + std::ldexp(1.0f, -11), 2.0f)).bits, 0x3c01u);
  EXPECT_EQ(float_to_f16(-1.0f - 3 * std::ldexp(1.0f, -11)).bits, 0xbc02u);
  EXPECT_EQ(float_to_f16(0.1f).bits, 0x2e66u);
}

TEST(F16, SubnormalsAndUnderflow) {
  const float min_sub = std::ldexp(1.0f, -24);  // f16 0x0001
  EXPECT_EQ(float_to_f16(min_sub).bits, 0x0001u);
  EXPECT_EQ(f16_to_float(f16_t{0x0001u}), min_sub);
  EXPECT_EQ(f16_to_float(f16_t{0x03ffu}), 1023 * min_sub);         // largest subnormal
  EXPECT_EQ(f16_to_float(f16_t{0x0400u}), std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_EQ(f16_to_float(f16_t{0x8001u}), -min_sub);
  // Half of the smallest subnormal is a tie between 0 (even) and 0x0001: goes to zero, keeping
  // the sign; anything above it goes to 0x0001.
  EXPECT_EQ(float_to_f16(min_sub / 2).bits, 0x0000u);
  EXPECT_EQ(float_to_f16(-min_sub / 2).bits, 0x8000u);
  EXPECT_EQ(float_to_f16(std::nextafter(min_sub / 2, 1.0f)).bits, 0x0001u);
  EXPECT_EQ(float_to_f16(min_sub / 4).bits, 0x0000u);
  EXPECT_EQ(float_to_f16(1e-30f).bits, 0x0000u);
  // 1.5 and 2.5 subnormal ulps: ties to even (2 and 2).
  EXPECT_EQ(float_to_f16(1.5f * min_sub).bits, 0x0002u);
  EXPECT_EQ(float_to_f16(2.5f * min_sub).bits, 0x0002u);
  EXPECT_EQ(float_to_f16(3.5f * min_sub).bits, 0x0004u);
  // Rounding up out of the subnormal range gives the smallest normal.
  EXPECT_EQ(float_to_f16(1023.5f * min_sub).bits, 0x0400u);
  EXPECT_EQ(float_to_f16(1023.4f * min_sub).bits, 0x03ffu);
  // A float subnormal is far below f16's range.
  EXPECT_EQ(float_to_f16(bits_float(0x00000001u)).bits, 0x0000u);
}

TEST(F16, OverflowAndSpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(float_to_f16(65504.0f).bits, 0x7bffu);  // max finite
  EXPECT_EQ(f16_to_float(f16_t{0x7bffu}), 65504.0f);
  EXPECT_EQ(float_to_f16(std::nextafter(65520.0f, 0.0f)).bits, 0x7bffu);
  EXPECT_EQ(float_to_f16(65520.0f).bits, 0x7c00u);  // max + ulp/2 ties away to infinity (even)
  EXPECT_EQ(float_to_f16(-65520.0f).bits, 0xfc00u);
  EXPECT_EQ(float_to_f16(1e6f).bits, 0x7c00u);
  EXPECT_EQ(float_to_f16(-1e30f).bits, 0xfc00u);
  EXPECT_EQ(float_to_f16(std::numeric_limits<float>::max()).bits, 0x7c00u);
  EXPECT_EQ(float_to_f16(inf).bits, 0x7c00u);
  EXPECT_EQ(float_to_f16(-inf).bits, 0xfc00u);
  EXPECT_EQ(f16_to_float(f16_t{0x7c00u}), inf);
  EXPECT_EQ(f16_to_float(f16_t{0xfc00u}), -inf);
  EXPECT_EQ(float_to_f16(0.0f).bits, 0x0000u);
  EXPECT_EQ(float_to_f16(-0.0f).bits, 0x8000u);
  for (uint32_t u : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7f801fffu, 0xffffffffu}) {
    const uint16_t h = float_to_f16(bits_float(u)).bits;
    EXPECT_TRUE(f16_is_nan(h)) << hex(u) << " -> " << hex(h);
  }
  EXPECT_TRUE(std::isnan(f16_to_float(f16_t{0x7e00u})));
  EXPECT_TRUE(std::isnan(f16_to_float(f16_t{0xfc01u})));
}

TEST(F16, EveryTieAndItsNeighboursRoundLikeTheReference) {
  // Midpoints of adjacent f16 values need 12 significant bits: exact in float.
  for (uint32_t b = 0; b < 0x7c00u; ++b) {
    const double mid = (f16_value(b) + (b + 1 == 0x7c00u ? 65536.0 : f16_value(b + 1))) / 2;
    for (float sign : {1.0f, -1.0f}) {
      const float x = sign * static_cast<float>(mid);
      ASSERT_EQ(static_cast<double>(std::fabs(x)), mid);
      for (float y : {std::nextafter(x, -INFINITY), x, std::nextafter(x, INFINITY)}) {
        ASSERT_EQ(float_to_f16(y).bits, reference_f16(y))
            << "float " << hex(float_bits(y)) << " = " << y;
      }
    }
  }
}

TEST(F16, RandomFloatsRoundLikeTheReference) {
  std::mt19937 gen(11);
  for (int i = 0; i < 1 << 20; ++i) {
    // Exponents around f16's range (2^-27 .. 2^18), so that most draws land in it.
    uint32_t u = gen();
    u = (u & 0x807fffffu) | ((100u + (u >> 23) % 46u) << 23);
    if (i % 8 == 0) u = gen();  // and some from all of float
    const float x = bits_float(u);
    if (std::isnan(x)) continue;
    ASSERT_EQ(float_to_f16(x).bits, reference_f16(x)) << "float " << hex(u) << " = " << x;
  }
}

TEST(F16, ExhaustiveRoundTripThroughFloat) {
  for (uint32_t bits = 0; bits <= 0xffffu; ++bits) {
    const f16_t h{static_cast<uint16_t>(bits)};
    const float f = f16_to_float(h);
    if (f16_is_nan(h.bits)) {
      EXPECT_TRUE(std::isnan(f)) << hex(bits);
      EXPECT_TRUE(f16_is_nan(float_to_f16(f).bits)) << hex(bits);
      continue;
    }
    ASSERT_EQ(float_to_f16(f).bits, bits) << "f16 " << hex(bits) << " -> " << f;
    const double expected = (bits & 0x8000u ? -1.0 : 1.0) * f16_value(bits & 0x7fffu);
    if ((bits & 0x7fffu) == 0x7c00u) {
      ASSERT_TRUE(std::isinf(f));
    } else {
      ASSERT_EQ(static_cast<double>(f), expected) << hex(bits);
    }
  }
}

TEST(DType, NamesSizesAndParsing) {
  EXPECT_EQ(dtype_size(DType::kF32), 4u);
  EXPECT_EQ(dtype_size(DType::kBF16), 2u);
  EXPECT_EQ(dtype_size(DType::kF16), 2u);
  for (DType d : {DType::kF32, DType::kBF16, DType::kF16}) EXPECT_EQ(parse_dtype(dtype_name(d)), d);
  EXPECT_EQ(parse_dtype("float32"), DType::kF32);
  EXPECT_EQ(parse_dtype("fp32"), DType::kF32);
  EXPECT_EQ(parse_dtype("bfloat16"), DType::kBF16);
  EXPECT_EQ(parse_dtype("float16"), DType::kF16);
  EXPECT_EQ(parse_dtype("fp16"), DType::kF16);
}

TEST(DType, ParseErrorNamesTheBadStringAndTheChoices) {
  try {
    parse_dtype("f64x");
    FAIL() << "parse_dtype accepted f64x";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_CONTAINS(std::string(e.what()), "f64x");
    EXPECT_CONTAINS(e.message(), "f32");
    EXPECT_CONTAINS(e.message(), "bf16");
    EXPECT_CONTAINS(e.message(), "f16");
  }
  EXPECT_THROW(parse_dtype(""), Error);
  EXPECT_THROW(parse_dtype("F32"), Error);
}

// --- Shape --------------------------------------------------------------------------------------

TEST(ShapeTest, NumelRowsColsAndStr) {
  const Shape s{2, 3, 4};
  EXPECT_EQ(s.rank(), 3);
  EXPECT_EQ(s.numel(), 24);
  EXPECT_EQ(s.rows(), 6);
  EXPECT_EQ(s.cols(), 4);
  EXPECT_EQ(s.str(), "[2, 3, 4]");
  EXPECT_EQ(Shape({5}).rows(), 1);
  EXPECT_EQ(Shape({5}).cols(), 5);
  EXPECT_EQ(Shape({3, 0}).numel(), 0);
  EXPECT_EQ(Shape({3, 0}).rows(), 0);
  EXPECT_EQ(Shape({0, 7}).rows(), 0);
  const Shape scalar;
  EXPECT_EQ(scalar.rank(), 0);
  EXPECT_EQ(scalar.numel(), 1);
  EXPECT_EQ(scalar.str(), "[]");
  EXPECT_EQ(Shape(std::vector<int64_t>{4, 8}), Shape({4, 8}));
  EXPECT_NE(Shape({4, 8}), Shape({8, 4}));
  EXPECT_NE(Shape({4, 8}), Shape({4, 8, 1}));
}

TEST(ShapeTest, NegativeIndexingCountsFromTheEnd) {
  const Shape s{2, 3, 5};
  EXPECT_EQ(s.dim(-1), 5);
  EXPECT_EQ(s.dim(-2), 3);
  EXPECT_EQ(s.dim(-3), 2);
  EXPECT_EQ(s[0], 2);
  EXPECT_EQ(s[-1], 5);
}

TEST(ShapeTest, WithDimReplacesOneDimension) {
  const Shape s{2, 3, 5};
  EXPECT_EQ(s.with_dim(-1, 7), Shape({2, 3, 7}));
  EXPECT_EQ(s.with_dim(0, 9), Shape({9, 3, 5}));
  EXPECT_EQ(s.with_dim(-2, 0), Shape({2, 0, 5}));
  EXPECT_EQ(s, Shape({2, 3, 5}));  // the original is unchanged
}

TEST(ShapeTest, ErrorsNameTheIndexAndTheShape) {
  const Shape s{2, 3};
  for (int bad : {2, -3, 100}) {
    try {
      s.dim(bad);
      FAIL() << "dim(" << bad << ") accepted";
    } catch (const Error& e) {
      EXPECT_CONTAINS(e.message(), std::to_string(bad));
      EXPECT_CONTAINS(e.message(), "[2, 3]");
    }
  }
  EXPECT_THROW(s.with_dim(2, 1), Error);
  EXPECT_THROW(s.with_dim(-3, 1), Error);
  try {
    s.with_dim(1, -4);
    FAIL() << "negative size accepted";
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.message(), "-4");
  }
  try {
    Shape({4, -1, 2});
    FAIL() << "negative dimension accepted";
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.message(), "-1");
  }
  EXPECT_THROW(Shape().dim(0), Error);
}

// --- weft::Error --------------------------------------------------------------------------------

// Restores the process-wide error rank, so that tests do not leak it into each other.
class ErrorRankGuard {
 public:
  ErrorRankGuard() : saved_(error_rank()) {}
  ~ErrorRankGuard() { set_error_rank(saved_); }

 private:
  int saved_;
};

int g_answer = 41;  // not a constant, so the compiler cannot fold the check away

TEST(ErrorTest, CheckCarriesMessageExpressionLocationAndCode) {
  ErrorRankGuard guard;
  set_error_rank(-1);
  int line = 0;
  try {
    line = __LINE__ + 1;
    WEFT_CHECK(g_answer == 42, "the answer was ", g_answer, " instead of ", 42);
    FAIL() << "WEFT_CHECK did not throw";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_CONTAINS(what, "the answer was 41 instead of 42");
    EXPECT_CONTAINS(what, "g_answer == 42");
    EXPECT_CONTAINS(what, "test_core.cpp:" + std::to_string(line));
    EXPECT_CONTAINS(what, error_code_name(ErrorCode::kInvalidArgument));
    EXPECT_EQ(what.find("rank"), std::string::npos) << what;
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_EQ(e.message(), "the answer was 41 instead of 42");
    EXPECT_EQ(e.expression(), "g_answer == 42");
    EXPECT_CONTAINS(std::string(e.file()), "test_core.cpp");
    EXPECT_EQ(e.line(), line);
    EXPECT_EQ(e.rank(), -1);
  }
}

TEST(ErrorTest, IsARuntimeError) {
  EXPECT_THROW(WEFT_CHECK(g_answer < 0, "negative"), std::runtime_error);
  EXPECT_NO_THROW(WEFT_CHECK(g_answer > 0, "positive"));
}

TEST(ErrorTest, RankIsStampedAfterSetErrorRank) {
  ErrorRankGuard guard;
  set_error_rank(3);
  EXPECT_EQ(error_rank(), 3);
  try {
    WEFT_CHECK(g_answer == 0, "bad input on this rank");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.rank(), 3);
    EXPECT_CONTAINS(std::string(e.what()), "rank 3");
    EXPECT_CONTAINS(std::string(e.what()), "bad input on this rank");
  }
}

TEST(ErrorTest, ThrowAndAssertCarryTheirCodes) {
  try {
    WEFT_THROW(ErrorCode::kIo, "cannot open ", "model.safetensors");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
    EXPECT_EQ(e.message(), "cannot open model.safetensors");
    EXPECT_CONTAINS(std::string(e.what()), error_code_name(ErrorCode::kIo));
    EXPECT_EQ(e.expression(), "");
  }
  try {
    WEFT_ASSERT(g_answer == 1, "invariant broken");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInternal);
    EXPECT_CONTAINS(std::string(e.what()), error_code_name(ErrorCode::kInternal));
    EXPECT_CONTAINS(std::string(e.what()), "g_answer == 1");
  }
}

const char* describe_status(int status) { return status == 7 ? "status seven" : "other"; }
int g_status = 7;

TEST(ErrorTest, GenericCheckPrependsTheStatusDescription) {
  try {
    WEFT_CHECK_GEN(ErrorCode::kMpi, g_status, 0, describe_status, "while sending ", 16, " bytes");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kMpi);
    EXPECT_CONTAINS(e.message(), "status seven");
    EXPECT_CONTAINS(e.message(), "while sending 16 bytes");
    EXPECT_EQ(e.expression(), "g_status");
    EXPECT_CONTAINS(std::string(e.what()), error_code_name(ErrorCode::kMpi));
  }
  EXPECT_NO_THROW(WEFT_CHECK_GEN(ErrorCode::kMpi, g_status, 7, describe_status, "ok"));
}

TEST(ErrorTest, EveryCodeHasADistinctName) {
  const ErrorCode codes[] = {ErrorCode::kInvalidArgument,
                             ErrorCode::kCuda,
                             ErrorCode::kCublas,
                             ErrorCode::kNccl,
                             ErrorCode::kMpi,
                             ErrorCode::kDnnl,
                             ErrorCode::kIo,
                             ErrorCode::kInternal};
  for (ErrorCode a : codes) {
    EXPECT_STRNE(error_code_name(a), "");
    for (ErrorCode b : codes) {
      if (a != b) {
        EXPECT_STRNE(error_code_name(a), error_code_name(b));
      }
    }
  }
}

// --- Tensor and TensorView ----------------------------------------------------------------------

TEST(TensorViewTest, RowsIsAContiguousWindowOfTheFoldedMatrix) {
  auto backend = make_cpu_backend();
  Tensor t(*backend, Shape({4, 3, 5}), DType::kF32);  // 12 x 5 as a matrix
  for (int64_t i = 0; i < t.numel(); ++i) t.as<float>()[i] = 0.25f + static_cast<float>(i);
  const TensorView v = t.view().rows(2, 7);
  EXPECT_EQ(v.shape, Shape({7, 5}));
  EXPECT_EQ(v.dtype, DType::kF32);
  EXPECT_EQ(v.device, Device::cpu());
  EXPECT_EQ(v.as<float>(), t.as<float>() + 10);
  EXPECT_EQ(v.as<float>()[0], 10.25f);
  EXPECT_EQ(v.as<float>()[34], 44.25f);
  // The same in a 16-bit dtype: the offset counts elements, not bytes.
  Tensor h(*backend, Shape({6, 4}), DType::kBF16);
  EXPECT_EQ(h.view().rows(3, 2).as<bf16_t>(), h.as<bf16_t>() + 12);
  EXPECT_EQ(t.view().rows(12, 0).numel(), 0);
  EXPECT_EQ(t.view().rows(0, 12).shape, Shape({12, 5}));
}

TEST(TensorViewTest, RowsOutOfRangeThrowsNamingTheView) {
  auto backend = make_cpu_backend();
  Tensor t(*backend, Shape({4, 5}), DType::kF16);
  for (auto [begin, count] : {std::pair<int64_t, int64_t>{3, 2}, {-1, 2}, {0, 5}, {1, -1}}) {
    try {
      t.view().rows(begin, count);
      FAIL() << "rows(" << begin << ", " << count << ") accepted";
    } catch (const Error& e) {
      EXPECT_CONTAINS(e.message(), "f16[4, 5]@cpu");
    }
  }
}

TEST(TensorViewTest, ReshapedSharesMemoryAndChecksNumel) {
  auto backend = make_cpu_backend();
  Tensor t(*backend, Shape({4, 6}), DType::kF32);
  const TensorView r = t.view().reshaped(Shape({2, 3, 4}));
  EXPECT_EQ(r.data, t.data());
  EXPECT_EQ(r.shape, Shape({2, 3, 4}));
  EXPECT_EQ(r.str(), "f32[2, 3, 4]@cpu");
  try {
    t.view().reshaped(Shape({5, 5}));
    FAIL();
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.message(), "[4, 6]");
    EXPECT_CONTAINS(e.message(), "[5, 5]");
  }
  t.reshape(Shape({24}));
  EXPECT_EQ(t.shape(), Shape({24}));
  EXPECT_EQ(t.view().data, r.data);
  EXPECT_THROW(t.reshape(Shape({25})), Error);
}

TEST(TensorTest, OwnsAlignedMemoryAndMoves) {
  auto backend = make_cpu_backend();
  Tensor t(*backend, Shape({3, 7}), DType::kBF16);
  EXPECT_TRUE(t.defined());
  EXPECT_EQ(t.bytes(), 42u);
  EXPECT_EQ(t.numel(), 21);
  EXPECT_EQ(t.dtype(), DType::kBF16);
  EXPECT_EQ(t.device(), Device::cpu());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data()) % 64, 0u);
  void* data = t.data();
  Tensor moved = std::move(t);
  EXPECT_EQ(moved.data(), data);
  EXPECT_TRUE(moved.defined());
  Tensor empty(*backend, Shape({0, 4}), DType::kF32);
  EXPECT_TRUE(empty.defined());
  EXPECT_NE(empty.data(), nullptr);
  EXPECT_FALSE(Tensor().defined());
}

TEST(DeviceTest, Names) {
  EXPECT_EQ(Device::cpu().str(), "cpu");
  EXPECT_EQ(Device::cuda(3).str(), "cuda:3");
  EXPECT_TRUE(Device::cpu().is_cpu());
  EXPECT_FALSE(Device::cuda(0).is_cpu());
  EXPECT_NE(Device::cuda(0), Device::cuda(1));
  EXPECT_NE(Device::cuda(0), Device::cpu());
}

}  // namespace
}  // namespace weft
