// Argument checks shared by every backend, so that both reject bad calls with the same message.
#pragma once

#include <cstdint>

#include "weft/backend.hpp"

namespace weft {

struct GemmDims {
  int64_t m, n, k;
  int64_t lda, ldb, ldc;  // stored column counts of A, B, C
};

// Validates shapes, dtypes, devices and epilogue operands of a GEMM call; returns its dimensions.
GemmDims check_gemm_args(const GemmArgs& args, Device device);

// The view lives on `device` and has data.
void check_on_device(const TensorView& view, Device device, const char* op, const char* what);
void check_same_layout(const TensorView& a, const TensorView& b, const char* op, const char* what_a,
                       const char* what_b);

}  // namespace weft
