// ColumnParallelLinear: output features split across TP ranks.
#include "layers/linear_common.hpp"
#include "weft/linear.hpp"
#include "weft/partition.hpp"

namespace weft {

ColumnParallelLinear::ColumnParallelLinear(const ParallelContext& ctx,
                                           ColumnParallelLinearConfig config)
    : ctx_(ctx), config_(std::move(config)) {
  const auto& c = config_;
  WEFT_CHECK(c.in_features > 0 && c.out_features > 0, c.name, ": in_features (", c.in_features,
             ") and out_features (", c.out_features, ") must be positive");
  WEFT_CHECK(c.activation == Activation::kNone || (!c.gather_output && !c.skip_bias_add), c.name,
             ": a fused activation needs gather_output=false and skip_bias_add=false");
  const int tp = ctx.tp.size(), rank = ctx.tp.rank();
  divide_exact(c.out_features, tp, (c.name + ": out_features").c_str(), "the tensor-parallel size");
  weight_ = make_parameter(ctx.backend, c.name + ".weight", Shape({c.out_features, c.in_features}),
                           c.dtype, /*partition_dim=*/0, tp, rank);
  init_parameter(ctx.backend, weight_,
                 RandomFill{Distribution::kNormal, c.seed, 0, 0.0, c.init_std});
  if (c.bias) {
    bias_ = make_parameter(ctx.backend, c.name + ".bias", Shape({c.out_features}), c.dtype,
                           /*partition_dim=*/0, tp, rank);
    ctx.backend.fill(bias_.value, 0.0f);
  }
}

std::vector<Parameter*> ColumnParallelLinear::parameters() {
  std::vector<Parameter*> params{&weight_};
  if (config_.bias) params.push_back(&bias_);
  return params;
}

Tensor ColumnParallelLinear::forward(TensorView input) {
  check_activation(ctx_.backend, input, config_.in_features, config_.dtype, config_.name, "input");
  const int64_t rows = input.shape.rows(), n_local = local_out_features();
  const TensorView x = input.reshaped(Shape({rows, config_.in_features}));
  saved_input_ = input;

  Tensor out(ctx_.backend, input.shape.with_dim(-1, n_local), config_.dtype);
  GemmArgs g;
  g.a = x;
  g.b = weight_.value;
  g.transpose_b = true;
  g.c = out.view().reshaped(Shape({rows, n_local}));
  const bool add_bias = config_.bias && !config_.skip_bias_add;
  if (add_bias) g.bias = bias_.value;
  if (config_.activation == Activation::kGelu) {
    saved_preactivation_ = Tensor(ctx_.backend, Shape({rows, n_local}), config_.dtype);
    g.gelu_input = saved_preactivation_;
    g.epilogue = add_bias ? Epilogue::kBiasGelu : Epilogue::kGelu;
  } else {
    g.epilogue = add_bias ? Epilogue::kBias : Epilogue::kNone;
  }
  ctx_.backend.gemm(g);
  if (!config_.gather_output) return out;
  return gather_last_dim(ctx_, out);
}

Tensor ColumnParallelLinear::backward(TensorView grad_output) {
  WEFT_CHECK(saved_input_.data != nullptr, config_.name, ": backward called before forward");
  const int64_t rows = saved_input_.shape.rows(), n_local = local_out_features();
  check_activation(ctx_.backend, grad_output,
                   config_.gather_output ? config_.out_features : n_local, config_.dtype,
                   config_.name, "grad_output");
  WEFT_CHECK(grad_output.shape.rows() == rows, config_.name, ": grad_output ",
             grad_output.shape.str(), " has ", grad_output.shape.rows(), " rows, forward had ",
             rows);

  Tensor own_columns;  // gather_output's backward: keep this rank's slice
  TensorView grad = grad_output.reshaped(Shape({rows, grad_output.shape.cols()}));
  if (config_.gather_output) {
    own_columns = split_last_dim(ctx_, grad);
    grad = own_columns;
  }
  Tensor grad_preactivation;
  if (config_.activation == Activation::kGelu) {
    grad_preactivation = Tensor(ctx_.backend, Shape({rows, n_local}), config_.dtype);
    ctx_.backend.gelu_backward(grad_preactivation, grad, saved_preactivation_);
    grad = grad_preactivation;
  }

  const TensorView x = saved_input_.reshaped(Shape({rows, config_.in_features}));
  Tensor grad_input(ctx_.backend, saved_input_.shape, config_.dtype);
  GemmArgs g;  // grad_input = grad W (the local partial sum over this rank's output features)
  g.a = grad;
  g.b = weight_.value;
  g.c = grad_input.view().reshaped(Shape({rows, config_.in_features}));
  ctx_.backend.gemm(g);
  accumulate_weight_grads(ctx_.backend, grad, x, weight_, bias());
  copy_to_tp_region_backward(ctx_, grad_input);
  return grad_input;
}

}  // namespace weft
