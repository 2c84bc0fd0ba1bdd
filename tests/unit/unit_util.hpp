// Helpers for the unit tests: substring and weft::Error expectations, host <-> tensor transfers.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "common/test_util.hpp"
#include "weft/weft.hpp"

namespace weft::testing {

inline ::testing::AssertionResult assert_contains(const char* text_expr, const char* part_expr,
                                                  const std::string& text,
                                                  const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << text_expr << " does not contain " << part_expr
                                       << "\n  text: " << text << "\n  part: " << part;
}

// Values into a new tensor of `dtype` (rounded by the backend's own conversion).
inline Tensor from_host(Backend& backend, const Shape& shape, DType dtype,
                        const std::vector<double>& values) {
  Tensor t(backend, shape, dtype);
  for (size_t i = 0; i < values.size(); ++i) {
    const float v = static_cast<float>(values[i]);
    switch (dtype) {
      case DType::kF32:
        t.as<float>()[i] = v;
        break;
      case DType::kBF16:
        t.as<bf16_t>()[i] = float_to_bf16(v);
        break;
      case DType::kF16:
        t.as<f16_t>()[i] = float_to_f16(v);
        break;
      case DType::kI32:
        t.as<int32_t>()[i] = static_cast<int32_t>(v);
        break;
    }
  }
  return t;
}

}  // namespace weft::testing

#define EXPECT_CONTAINS(text, part) \
  EXPECT_PRED_FORMAT2(::weft::testing::assert_contains, text, part)

// `statement` must throw weft::Error whose what() contains every one of the following strings.
#define EXPECT_WEFT_ERROR(statement, ...)                                           \
  do {                                                                              \
    bool weft_thrown_ = false;                                                      \
    try {                                                                           \
      statement;                                                                    \
    } catch (const ::weft::Error& weft_error_) {                                    \
      weft_thrown_ = true;                                                          \
      for (const std::string& weft_part_ : std::vector<std::string>{__VA_ARGS__}) { \
        EXPECT_CONTAINS(weft_error_.what(), weft_part_);                            \
      }                                                                             \
    }                                                                               \
    EXPECT_TRUE(weft_thrown_) << "expected weft::Error from: " #statement;          \
  } while (0)
