// The conjugate mappings: each forward and its backward are dual collectives, exact on
// rank-valued tensors.
#include <gtest/gtest.h>

#include "common/test_util.hpp"
#include "dist/dist_env.hpp"

namespace weft::testing {
namespace {

class MappingTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    if (world().size() % GetParam() != 0) GTEST_SKIP() << "world size not divisible by tp";
    grid_ = std::make_unique<ParallelGrid>(world(), GetParam());
  }
  ParallelContext ctx() { return ParallelContext{*cpu_, grid_->tp()}; }
  int tp() const { return grid_->tp_size(); }
  int tp_rank() const { return grid_->tp_rank(); }

  Tensor from_values(const Shape& shape, std::function<double(int64_t, int64_t)> value) {
    const int64_t cols = shape.cols();
    return from_host(*cpu_, shape, DType::kF32,
                     [&](int64_t i) { return value(i / cols, i % cols); });
  }

  std::unique_ptr<Backend> cpu_ = make_test_backend();  // the engine WEFT_TEST_BACKEND names
  std::unique_ptr<ParallelGrid> grid_;
};

TEST_P(MappingTest, AllReduceHalvesSumOverTheGroup) {
  // copy_to backward and reduce_from forward are the same in-place sum.
  Tensor g =
      from_values(Shape({3, 5}), [&](int64_t r, int64_t c) { return tp_rank() + 1 + r * c; });
  copy_to_tp_region_backward(ctx(), g);
  Tensor x =
      from_values(Shape({3, 5}), [&](int64_t r, int64_t c) { return tp_rank() * 2 + r + c; });
  reduce_from_tp_region_forward(ctx(), x);
  const int t = tp();
  const auto gv = to_host(*cpu_, g), xv = to_host(*cpu_, x);
  for (int64_t r = 0; r < 3; ++r) {
    for (int64_t c = 0; c < 5; ++c) {
      ASSERT_EQ(gv[r * 5 + c], t * (t + 1) / 2 + t * r * c);
      ASSERT_EQ(xv[r * 5 + c], t * (t - 1) + t * (r + c));
    }
  }
}

TEST_P(MappingTest, SplitKeepsOwnColumnsAndGatherRestoresThem) {
  const int64_t rows = 4, local_cols = 3, cols = local_cols * tp();
  Tensor full = from_values(Shape({rows, cols}), [](int64_t r, int64_t c) { return 100 * r + c; });
  Tensor local = split_last_dim(ctx(), full);
  ASSERT_EQ(local.shape(), Shape({rows, local_cols}));
  const auto lv = to_host(*cpu_, local);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < local_cols; ++c) {
      ASSERT_EQ(lv[r * local_cols + c], 100 * r + tp_rank() * local_cols + c);
    }
  }
  Tensor back = gather_last_dim(ctx(), local);  // gather is split's backward, and vice versa
  ASSERT_EQ(back.shape(), full.shape());
  EXPECT_EQ(to_host(*cpu_, back), to_host(*cpu_, full));
}

TEST_P(MappingTest, GatherPlacesRankBlocksSideBySide) {
  // 3D input: leading dimensions are kept and folded into rows.
  Tensor local = from_values(Shape({2, 3, 2}),
                             [&](int64_t r, int64_t c) { return 1000 * tp_rank() + 10 * r + c; });
  Tensor full = gather_last_dim(ctx(), local);
  ASSERT_EQ(full.shape(), Shape({2, 3, 2 * tp()}));
  const auto fv = to_host(*cpu_, full);
  for (int64_t r = 0; r < 6; ++r) {
    for (int64_t c = 0; c < 2 * tp(); ++c) {
      ASSERT_EQ(fv[r * 2 * tp() + c], 1000 * (c / 2) + 10 * r + c % 2);
    }
  }
  Tensor mine = split_last_dim(ctx(), full);
  EXPECT_EQ(to_host(*cpu_, mine), to_host(*cpu_, local));
}

TEST_P(MappingTest, SplitRejectsIndivisibleWidth) {
  if (tp() == 1) GTEST_SKIP() << "every width divides by 1";
  Tensor odd = from_values(Shape({2, 2 * tp() + 1}), [](int64_t r, int64_t c) { return r + c; });
  try {
    split_last_dim(ctx(), odd);
    FAIL() << "expected weft::Error";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("(" + std::to_string(2 * tp() + 1) + ")"), std::string::npos) << what;
    EXPECT_NE(what.find("(" + std::to_string(tp()) + ")"), std::string::npos) << what;
  }
}

INSTANTIATE_TEST_SUITE_P(TP, MappingTest, ::testing::Values(1, 2, 4),
                         [](const auto& info) { return "tp" + std::to_string(info.param); });

}  // namespace
}  // namespace weft::testing
