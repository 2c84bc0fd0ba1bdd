// Bad input is rejected on every rank with a weft::Error that names the values, and no rank is
// left waiting in a collective afterwards.
#include <gtest/gtest.h>

#include "common/test_util.hpp"
#include "dist/dist_env.hpp"

namespace weft::testing {
namespace {

TEST(Errors, WorldNotDivisibleByTpTimesPp) {
  const int n = world().size();
  expect_error_on_every_rank([&] { ParallelGrid grid(world(), n + 1); },
                             {"(" + std::to_string(n) + ")", "(" + std::to_string(n + 1) + ")"});
  expect_error_on_every_rank([&] { ParallelGrid grid(world(), 2, 3); },
                             {"world size (" + std::to_string(n) + ")", "(2)", "(3)", "= 6"});
  expect_error_on_every_rank([&] { ParallelGrid grid(world(), 0); }, {"positive", "0"});
}

TEST(Errors, OutputFeaturesNotDivisibleByTp) {
  auto cpu = make_test_backend();
  const int tp = world().size();
  if (tp == 1) GTEST_SKIP() << "every size divides by 1";
  ParallelGrid grid(world(), tp);
  ParallelContext ctx{*cpu, grid.tp()};
  ColumnParallelLinearConfig column;
  column.in_features = 8;
  column.out_features = 4 * tp + 1;
  expect_error_on_every_rank([&] { ColumnParallelLinear layer(ctx, column); },
                             {"out_features (" + std::to_string(4 * tp + 1) + ")",
                              "tensor-parallel size (" + std::to_string(tp) + ")"});
  RowParallelLinearConfig row;
  row.in_features = 4 * tp + 1;
  row.out_features = 8;
  expect_error_on_every_rank([&] { RowParallelLinear layer(ctx, row); },
                             {"in_features (" + std::to_string(4 * tp + 1) + ")"});
  ParallelMLPConfig mlp;
  mlp.hidden = 8;
  mlp.ffn_hidden = 4 * tp + 1;
  expect_error_on_every_rank([&] { ParallelMLP layer(ctx, mlp); },
                             {"(" + std::to_string(4 * tp + 1) + ")"});
}

TEST(Errors, WrongInputShapeAndDtype) {
  auto cpu = make_test_backend();
  ParallelGrid grid(world(), world().size());
  ParallelContext ctx{*cpu, grid.tp()};
  ColumnParallelLinearConfig config;
  config.in_features = 8;
  config.out_features = 8 * world().size();
  ColumnParallelLinear layer(ctx, config);

  Tensor wrong_width = random_tensor(*cpu, Shape({5, 7}), DType::kF32, 1);
  expect_error_on_every_rank([&] { layer.forward(wrong_width); }, {"[5, 7]", "8"});
  Tensor wrong_dtype = random_tensor(*cpu, Shape({5, 8}), DType::kBF16, 2);
  expect_error_on_every_rank([&] { layer.forward(wrong_dtype); }, {"bf16", "f32"});
  ColumnParallelLinear fresh(ctx, config);
  Tensor grad = random_tensor(*cpu, Shape({5, 8}), DType::kF32, 3);
  ColumnParallelLinear::Saved empty;
  expect_error_on_every_rank([&] { fresh.backward(grad, empty); },
                             {"backward called before forward"});

  Tensor x = random_tensor(*cpu, Shape({5, 8}), DType::kF32, 4);
  ColumnParallelLinear::Saved saved;
  Tensor y = layer.forward(x, saved);
  Tensor wrong_rows = random_tensor(*cpu, Shape({6, y.shape().cols()}), DType::kF32, 5);
  expect_error_on_every_rank([&] { layer.backward(wrong_rows, saved); }, {"6 rows", "5"});
  // A backward consumes its saved state: a second one has nothing to work from.
  Tensor right_rows = random_tensor(*cpu, Shape({5, y.shape().cols()}), DType::kF32, 6);
  layer.backward(right_rows, saved);
  expect_error_on_every_rank([&] { layer.backward(right_rows, saved); },
                             {"backward called before forward"});
}

TEST(Errors, FusedActivationWithGatherOutputIsRejected) {
  auto cpu = make_test_backend();
  auto self = make_test_self();
  ColumnParallelLinearConfig config;
  config.in_features = 4;
  config.out_features = 4;
  config.gather_output = true;
  config.activation = Activation::kGelu;
  expect_error_on_every_rank(
      [&] {
        ColumnParallelLinear layer(ParallelContext{*cpu, *self}, config);
      },
      {"gather_output=false"});
}

}  // namespace
}  // namespace weft::testing
