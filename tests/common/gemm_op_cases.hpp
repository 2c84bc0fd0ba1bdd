// The table of GEMM cases run on every backend against the double-precision reference: every
// dtype pair, transpose combination and epilogue, alpha and beta, odd sizes (no vectorized kernel
// fits), aligned ones (cuBLASLt's fused epilogues) and a larger one (where cuBLASLt may split K).
#pragma once

#include <string>
#include <vector>

#include "common/backend_op_test.hpp"
#include "weft/backend.hpp"

namespace weft::testing {

struct GemmCase {
  DType in = DType::kF32;
  DType out = DType::kF32;
  bool ta = false, tb = false;
  int64_t m = 37, n = 53, k = 29;
  float alpha = 1.0f, beta = 0.0f;
  Epilogue epilogue = Epilogue::kNone;
  bool save_gelu_input = false;
};

std::vector<GemmCase> gemm_cases();
std::string gemm_case_name(const GemmCase& c);
// gtest prints a failing parameter with this instead of its bytes.
void PrintTo(const GemmCase& c, std::ostream* os);

class GemmOpTest : public BackendOpTest<GemmCase> {};

}  // namespace weft::testing

// Runs the table on the backend `spec` ("cpu", "cuda"), the tests named <prefix>/GemmOpTest.*.
#define WEFT_INSTANTIATE_GEMM_CASES(prefix, spec)                                  \
  WEFT_INSTANTIATE_OP_CASES(prefix, GemmOpTest, spec, ::weft::testing::gemm_cases, \
                            ::weft::testing::gemm_case_name)
