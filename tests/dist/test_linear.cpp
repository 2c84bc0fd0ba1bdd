// ColumnParallelLinear, RowParallelLinear and ParallelMLP against the unsharded computation in
// double, forward and backward, at every TP size the world allows, in f32 and bf16.
//
// Every rank builds the global inputs and weights from one seed, computes the reference itself
// and checks its own shard. Gradients start from random values, so a backward that overwrites
// instead of accumulating, or writes nothing, fails.
#include <gtest/gtest.h>

#include <tuple>

#include "common/test_util.hpp"
#include "dist/tp_fixture.hpp"

namespace weft::testing {
namespace {

constexpr int64_t kTokens = 12, kIn = 16, kOut = 24;

std::vector<double> add_row_vector(std::vector<double> m, const std::vector<double>& v) {
  for (size_t i = 0; i < m.size(); ++i) m[i] += v[i % v.size()];
  return m;
}

std::vector<double> slice(const std::vector<double>& v, int64_t begin, int64_t count) {
  return std::vector<double>(v.begin() + begin, v.begin() + begin + count);
}

class LinearTest : public TpDtypeTest {
 protected:
  // Row block [begin, begin+count) of a [rows, cols] parameter from the global tensor.
  void load_rows(Parameter& p, const Global& g, int64_t begin, int64_t count) {
    cpu_->copy(p.value, g.tensor.view().rows(begin, count).reshaped(p.value.shape()));
  }
  // Column block of a 2D (or a 1D vector seen as one row) parameter.
  void load_columns(Parameter& p, const Global& g, int64_t begin) {
    const TensorView dst =
        p.value.view().reshaped(Shape({p.value.shape().rows(), p.value.shape().cols()}));
    const TensorView src =
        g.tensor.view().reshaped(Shape({g.tensor.shape().rows(), g.tensor.shape().cols()}));
    cpu_->copy_columns(dst, 0, src, begin, dst.shape.cols());
  }
  Tensor column_block_tensor(const Global& g, int64_t begin, int64_t count) {
    Tensor t(*cpu_, g.tensor.shape().with_dim(-1, count), dtype());
    cpu_->copy_columns(t, 0, g.tensor, begin, count);
    return t;
  }
};

TEST_P(LinearTest, ColumnParallelForwardBackward) {
  struct Options {
    bool gather_output, bias;
    Activation activation;
  };
  for (Options o :
       {Options{false, true, Activation::kNone}, Options{true, true, Activation::kNone},
        Options{false, false, Activation::kNone}, Options{false, true, Activation::kGelu},
        Options{true, false, Activation::kNone}}) {
    SCOPED_TRACE(::testing::Message() << "gather_output=" << o.gather_output << " bias=" << o.bias
                                      << " gelu=" << (o.activation == Activation::kGelu));
    ColumnParallelLinearConfig config;
    config.in_features = kIn;
    config.out_features = kOut;
    config.bias = o.bias;
    config.gather_output = o.gather_output;
    config.activation = o.activation;
    config.dtype = dtype();
    ColumnParallelLinear layer(ctx(), config);
    const int64_t n_local = kOut / tp(), col0 = n_local * tp_rank();
    ASSERT_EQ(layer.local_out_features(), n_local);

    Global w = global(Shape({kOut, kIn}), 11, 0.3), b = global(Shape({kOut}), 12);
    Global x = global(Shape({kTokens, kIn}), 13), dy = global(Shape({kTokens, kOut}), 14);
    load_rows(layer.weight(), w, col0, n_local);
    if (o.bias) load_columns(*layer.bias(), b, col0);
    const std::vector<double> w_grad0 = randomize_grad(layer.weight(), 15);
    const std::vector<double> b_grad0 =
        o.bias ? randomize_grad(*layer.bias(), 16) : std::vector<double>{};

    // Reference: pre = X W^T + b, y = act(pre).
    std::vector<double> pre = reference_matmul(x.values, w.values, kTokens, kOut, kIn, false, true);
    if (o.bias) pre = add_row_vector(pre, b.values);
    std::vector<double> y = pre;
    if (o.activation == Activation::kGelu) {
      for (double& v : y) v = reference_gelu(v);
    }

    ColumnParallelLinear::Saved saved;
    Tensor out = layer.forward(x.tensor, saved);
    if (o.gather_output) {
      ASSERT_EQ(out.shape(), Shape({kTokens, kOut}));
      expect_close(out, y, "gathered output");
    } else {
      ASSERT_EQ(out.shape(), Shape({kTokens, n_local}));
      expect_close(out, column_block(y, kTokens, kOut, col0, n_local), "local output");
    }

    // Backward: d_pre = dY * act'(pre); dX = d_pre W; dW = d_pre^T X; db = colsum(d_pre).
    std::vector<double> d_pre = dy.values;
    if (o.activation == Activation::kGelu) {
      for (size_t i = 0; i < d_pre.size(); ++i) d_pre[i] *= reference_gelu_grad(pre[i]);
    }
    Tensor dy_local;
    if (!o.gather_output) dy_local = column_block_tensor(dy, col0, n_local);
    Tensor dx = layer.backward(o.gather_output ? dy.tensor.view() : dy_local.view(), saved);
    ASSERT_EQ(dx.shape(), Shape({kTokens, kIn}));
    expect_close(dx, reference_matmul(d_pre, w.values, kTokens, kIn, kOut, false, false),
                 "input grad");
    const std::vector<double> dw =
        reference_matmul(d_pre, x.values, kOut, kIn, kTokens, true, false);
    expect_close(layer.weight().grad, add(w_grad0, slice(dw, col0 * kIn, n_local * kIn)),
                 "weight grad");
    if (o.bias) {
      expect_close(layer.bias()->grad,
                   add(b_grad0, slice(column_sums(d_pre, kTokens, kOut), col0, n_local)),
                   "bias grad");
    }
  }
}

TEST_P(LinearTest, RowParallelForwardBackward) {
  struct Options {
    bool input_is_parallel, bias, skip_bias_add;
  };
  for (Options o : {Options{true, true, false}, Options{false, true, false},
                    Options{true, false, false}, Options{true, true, true}}) {
    SCOPED_TRACE(::testing::Message() << "input_is_parallel=" << o.input_is_parallel << " bias="
                                      << o.bias << " skip_bias_add=" << o.skip_bias_add);
    RowParallelLinearConfig config;
    config.in_features = kOut;  // the row layer follows a column layer: wide in, narrow out
    config.out_features = kIn;
    config.bias = o.bias;
    config.input_is_parallel = o.input_is_parallel;
    config.skip_bias_add = o.skip_bias_add;
    config.dtype = dtype();
    RowParallelLinear layer(ctx(), config);
    const int64_t k_local = kOut / tp(), k0 = k_local * tp_rank();
    ASSERT_EQ(layer.local_in_features(), k_local);

    Global w = global(Shape({kIn, kOut}), 21, 0.3), b = global(Shape({kIn}), 22);
    Global x = global(Shape({kTokens, kOut}), 23), dy = global(Shape({kTokens, kIn}), 24);
    load_columns(layer.weight(), w, k0);
    if (o.bias) load_columns(*layer.bias(), b, 0);  // replicated: the whole bias
    const std::vector<double> w_grad0 = randomize_grad(layer.weight(), 25);
    const std::vector<double> b_grad0 =
        o.bias ? randomize_grad(*layer.bias(), 26) : std::vector<double>{};

    std::vector<double> y = reference_matmul(x.values, w.values, kTokens, kIn, kOut, false, true);
    if (o.bias && !o.skip_bias_add) y = add_row_vector(y, b.values);

    Tensor x_local;
    if (o.input_is_parallel) x_local = column_block_tensor(x, k0, k_local);
    RowParallelLinear::Saved saved;
    Tensor out = layer.forward(o.input_is_parallel ? x_local.view() : x.tensor.view(), saved);
    ASSERT_EQ(out.shape(), Shape({kTokens, kIn}));
    expect_close(out, y, "output (after the all-reduce, on every rank)");

    Tensor dx = layer.backward(dy.tensor, saved);
    const std::vector<double> dx_full =
        reference_matmul(dy.values, w.values, kTokens, kOut, kIn, false, false);
    if (o.input_is_parallel) {
      ASSERT_EQ(dx.shape(), Shape({kTokens, k_local}));
      expect_close(dx, column_block(dx_full, kTokens, kOut, k0, k_local), "local input grad");
    } else {
      ASSERT_EQ(dx.shape(), Shape({kTokens, kOut}));
      expect_close(dx, dx_full, "gathered input grad");
    }
    const std::vector<double> dw =
        reference_matmul(dy.values, x.values, kIn, kOut, kTokens, true, false);
    expect_close(layer.weight().grad, add(w_grad0, column_block(dw, kIn, kOut, k0, k_local)),
                 "weight grad");
    // skip_bias_add leaves the addition to the caller, whose output gradient is still dY.
    if (o.bias)
      expect_close(layer.bias()->grad, add(b_grad0, column_sums(dy.values, kTokens, kIn)),
                   "bias grad");
  }
}

TEST_P(LinearTest, MlpForwardBackward) {
  const int64_t hidden = kIn, ffn = kOut;
  ParallelMLPConfig config;
  config.hidden = hidden;
  config.ffn_hidden = ffn;
  config.dtype = dtype();
  ParallelMLP mlp(ctx(), config);
  const int64_t f_local = ffn / tp(), f0 = f_local * tp_rank();

  Global w1 = global(Shape({ffn, hidden}), 31, 0.4), b1 = global(Shape({ffn}), 32, 0.5);
  Global w2 = global(Shape({hidden, ffn}), 33, 0.4), b2 = global(Shape({hidden}), 34, 0.5);
  // 3D activations [seq, batch, hidden]: layers fold the leading dims into tokens.
  Global x = global(Shape({3, kTokens / 3, hidden}), 35),
         dy = global(Shape({3, kTokens / 3, hidden}), 36);
  load_rows(mlp.fc1().weight(), w1, f0, f_local);
  load_columns(*mlp.fc1().bias(), b1, f0);
  load_columns(mlp.fc2().weight(), w2, f0);
  load_columns(*mlp.fc2().bias(), b2, 0);
  std::vector<std::vector<double>> grad0;
  uint64_t seed = 40;
  for (Parameter* p : mlp.parameters()) grad0.push_back(randomize_grad(*p, seed++));

  const std::vector<double> pre = add_row_vector(
      reference_matmul(x.values, w1.values, kTokens, ffn, hidden, false, true), b1.values);
  std::vector<double> h = pre;
  for (double& v : h) v = reference_gelu(v);
  const std::vector<double> y =
      add_row_vector(reference_matmul(h, w2.values, kTokens, hidden, ffn, false, true), b2.values);

  ParallelMLP::Saved saved;
  Tensor out = mlp.forward(x.tensor, saved);
  ASSERT_EQ(out.shape(), x.tensor.shape());
  expect_close(out, y, "mlp output");

  Tensor dx = mlp.backward(dy.tensor, saved);
  ASSERT_EQ(dx.shape(), x.tensor.shape());
  const std::vector<double> dh =
      reference_matmul(dy.values, w2.values, kTokens, ffn, hidden, false, false);
  std::vector<double> d_pre = dh;
  for (size_t i = 0; i < d_pre.size(); ++i) d_pre[i] *= reference_gelu_grad(pre[i]);
  expect_close(dx, reference_matmul(d_pre, w1.values, kTokens, hidden, ffn, false, false),
               "mlp input grad");

  const std::vector<double> dw1 =
      reference_matmul(d_pre, x.values, ffn, hidden, kTokens, true, false);
  const std::vector<double> dw2 = reference_matmul(dy.values, h, hidden, ffn, kTokens, true, false);
  const std::vector<Parameter*> params = mlp.parameters();  // fc1.w, fc1.b, fc2.w, fc2.b
  ASSERT_EQ(params.size(), 4u);
  expect_close(params[0]->grad, add(grad0[0], slice(dw1, f0 * hidden, f_local * hidden)),
               "fc1 weight grad");
  expect_close(params[1]->grad, add(grad0[1], slice(column_sums(d_pre, kTokens, ffn), f0, f_local)),
               "fc1 bias grad");
  expect_close(params[2]->grad, add(grad0[2], column_block(dw2, hidden, ffn, f0, f_local)),
               "fc2 weight grad");
  expect_close(params[3]->grad, add(grad0[3], column_sums(dy.values, kTokens, hidden)),
               "fc2 bias grad");
}

TEST_P(LinearTest, InitializationIsTheSameGlobalTensorAtEveryTpSize) {
  // The shard a layer initializes equals the slice of the weight an unsharded (TP=1) layer with
  // the same seed and name would hold: bit for bit.
  ColumnParallelLinearConfig column;
  column.in_features = kIn;
  column.out_features = kOut;
  column.dtype = dtype();
  column.seed = 77;
  ColumnParallelLinear col_layer(ctx(), column);
  RowParallelLinearConfig row;
  row.in_features = kOut;
  row.out_features = kIn;
  row.dtype = dtype();
  row.seed = 77;
  RowParallelLinear row_layer(ctx(), row);

  auto self = make_test_self();
  ParallelContext unsharded{*cpu_, *self};
  ColumnParallelLinear col_ref(unsharded, column);
  RowParallelLinear row_ref(unsharded, row);

  const int64_t n_local = kOut / tp();
  const std::vector<double> col_full = to_host(*cpu_, col_ref.weight().value);
  EXPECT_EQ(to_host(*cpu_, col_layer.weight().value),
            slice(col_full, n_local * tp_rank() * kIn, n_local * kIn));
  EXPECT_EQ(to_host(*cpu_, row_layer.weight().value),
            column_block(to_host(*cpu_, row_ref.weight().value), kIn, kOut, n_local * tp_rank(),
                         n_local));
  // Distinct layers draw distinct numbers (the name is part of the seed).
  EXPECT_NE(to_host(*cpu_, col_ref.weight().value)[0], to_host(*cpu_, row_ref.weight().value)[0]);
  // Metadata says where the shard sits.
  EXPECT_EQ(col_layer.weight().global_shape, Shape({kOut, kIn}));
  EXPECT_EQ(col_layer.weight().partition_dim, 0);
  EXPECT_EQ(row_layer.weight().partition_dim, 1);
  EXPECT_EQ(row_layer.weight().partition_index, tp_rank());
  EXPECT_TRUE(row_layer.bias()->is_replicated());
}

INSTANTIATE_TEST_SUITE_P(TpAndDType, LinearTest, WEFT_TP_SIZES_AND_DTYPES, tp_dtype_name);

}  // namespace
}  // namespace weft::testing
