// TpDtypeTest: the fixture of the layer tests parameterized by (tensor-parallel size, dtype), and
// the host-side arithmetic their double-precision references share.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "common/test_util.hpp"
#include "dist/dist_env.hpp"

namespace weft::testing {

// A global tensor on every rank: the values the layer sees (rounded to its dtype) in double.
struct Global {
  Tensor tensor;
  std::vector<double> values;
};

inline std::vector<double> add(std::vector<double> a, const std::vector<double>& b) {
  for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
  return a;
}

inline std::vector<double> column_sums(const std::vector<double>& m, int64_t rows, int64_t cols) {
  std::vector<double> s(static_cast<size_t>(cols), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) s[c] += m[r * cols + c];
  }
  return s;
}

// A grid of tensor-parallel size tp() over the world (skipped where tp does not divide it), on the
// engine WEFT_TEST_BACKEND names.
class TpDtypeTest : public ::testing::TestWithParam<std::tuple<int, DType>> {
 protected:
  void SetUp() override {
    if (world().size() % tp() != 0) GTEST_SKIP() << "world size not divisible by tp";
    grid_ = std::make_unique<ParallelGrid>(world(), tp());
  }
  int tp() const { return std::get<0>(GetParam()); }
  DType dtype() const { return std::get<1>(GetParam()); }
  int tp_rank() const { return grid_->tp_rank(); }
  ParallelContext ctx() { return ParallelContext{*cpu_, grid_->tp()}; }
  double tol() const { return tolerance(dtype()); }

  Global global(const Shape& shape, uint64_t seed, double std = 1.0) {
    Global g{random_tensor(*cpu_, shape, dtype(), seed, std), {}};
    g.values = to_host(*cpu_, g.tensor);
    return g;
  }
  // Sets a parameter's grad to random values and returns them (what backward must add to).
  std::vector<double> randomize_grad(Parameter& p, uint64_t seed) {
    cpu_->fill_random(p.grad, RandomFill{Distribution::kNormal, seed, 0, 0.0, 0.5});
    return to_host(*cpu_, p.grad);
  }
  // Norm-wise relative error within tol (the dtype's tolerance when negative).
  void expect_close(TensorView actual, const std::vector<double>& expected, const std::string& what,
                    double tol = -1.0) {
    const double err = max_rel_error(to_host(*cpu_, actual), expected);
    EXPECT_LE(err, tol < 0 ? this->tol() : tol)
        << what << " on tp rank " << tp_rank() << " of " << tp();
  }

  std::unique_ptr<Backend> cpu_ = make_test_backend();  // the engine WEFT_TEST_BACKEND names
  std::unique_ptr<ParallelGrid> grid_;
};

// The parameters the layer tests run at: every TP size a world of up to 4 ranks allows, f32 and
// bf16.
#define WEFT_TP_SIZES_AND_DTYPES                 \
  ::testing::Combine(::testing::Values(1, 2, 4), \
                     ::testing::Values(::weft::DType::kF32, ::weft::DType::kBF16))

// "tp2_bf16": the test-name suffix of a (tp, dtype) parameter.
inline std::string tp_dtype_name(const ::testing::TestParamInfo<std::tuple<int, DType>>& info) {
  return "tp" + std::to_string(std::get<0>(info.param)) + "_" + dtype_name(std::get<1>(info.param));
}

}  // namespace weft::testing
