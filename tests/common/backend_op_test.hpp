// BackendOpTest: the fixture of the op-case tables that run on every backend (cpu always, cuda when
// a GPU is visible) against a double-precision host reference, as ggml's test-backend-ops does.
// Each binary instantiates a table for its backend: the unit tests for "cpu", test_cuda for "cuda".
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <tuple>

#include "common/test_util.hpp"
#include "weft/backend.hpp"

namespace weft::testing {

// Parameterized by (backend spec, case).
template <typename Case>
class BackendOpTest : public ::testing::TestWithParam<std::tuple<std::string, Case>> {
 protected:
  void SetUp() override {
    if (spec() != "cpu") WEFT_SKIP_WITHOUT_GPU();
    backend_ = make_backend(spec());
  }
  const std::string& spec() const { return std::get<0>(this->GetParam()); }
  const Case& op_case() const { return std::get<1>(this->GetParam()); }
  Backend& backend() { return *backend_; }

 private:
  std::unique_ptr<Backend> backend_;
};

}  // namespace weft::testing

// Runs the case table cases() of Test on the backend `spec` ("cpu", "cuda"): tests named
// <prefix>/<Test>.<test>/<name(case)>.
#define WEFT_INSTANTIATE_OP_CASES(prefix, Test, spec, cases, name)                            \
  INSTANTIATE_TEST_SUITE_P(                                                                   \
      prefix, Test,                                                                           \
      ::testing::Combine(::testing::Values(std::string(spec)), ::testing::ValuesIn(cases())), \
      [](const auto& info) { return name(std::get<1>(info.param)); })
