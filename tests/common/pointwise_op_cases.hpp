// The table of elementwise-op cases (add, add_bias, gelu, gelu_backward) run on every backend
// against the double-precision reference, out of place and in place, in every floating dtype.
#pragma once

#include <string>
#include <vector>

#include "common/backend_op_test.hpp"
#include "weft/backend.hpp"

namespace weft::testing {

enum class PointwiseOp { kAdd, kAddBias, kGelu, kGeluBackward };

struct PointwiseCase {
  PointwiseOp op = PointwiseOp::kAdd;
  DType dtype = DType::kF32;
  Shape shape;
  bool uniform = false;  // GeLU inputs uniform in [-2, 3) instead of normal with std 2.5
};

std::vector<PointwiseCase> pointwise_cases();
std::string pointwise_case_name(const PointwiseCase& c);
void PrintTo(const PointwiseCase& c, std::ostream* os);

class PointwiseOpTest : public BackendOpTest<PointwiseCase> {};

}  // namespace weft::testing

// Runs the table on the backend `spec` ("cpu", "cuda"), the tests named <prefix>/PointwiseOpTest.*.
#define WEFT_INSTANTIATE_POINTWISE_CASES(prefix, spec)                                       \
  WEFT_INSTANTIATE_OP_CASES(prefix, PointwiseOpTest, spec, ::weft::testing::pointwise_cases, \
                            ::weft::testing::pointwise_case_name)
