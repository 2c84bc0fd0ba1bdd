// ColumnParallelLinear: output features split across TP ranks.
#include "layers/linear_common.hpp"
#include "layers/tp_linear_ops.hpp"
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
  WEFT_CHECK(!(c.sequence_parallel && c.gather_output), c.name,
             ": sequence_parallel and gather_output do not go together (the output of a "
             "sequence-parallel column layer feeds a row layer)");
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

std::vector<TensorView> ColumnParallelLinear::Saved::views() const {
  std::vector<TensorView> saved;
  if (input.data != nullptr) saved.push_back(input);
  if (preactivation.defined()) saved.push_back(preactivation);
  return saved;
}

Tensor ColumnParallelLinear::forward(TensorView input, Saved& saved) {
  saved = Saved{};
  return run_forward(input, config_.sequence_parallel, &saved);
}

Tensor ColumnParallelLinear::forward(TensorView input, SequenceParallel mode) {
  return run_forward(input, mode == SequenceParallel::kAsConfigured && config_.sequence_parallel,
                     nullptr);
}

Tensor ColumnParallelLinear::run_forward(TensorView input, bool sp, Saved* saved) {
  check_activation(ctx_.backend, input, config_.in_features, config_.dtype, config_.name, "input");
  WEFT_CHECK(!sp || input.shape.rank() >= 2, config_.name,
             ": a sequence-parallel input needs a row dimension, got ", input.str());
  const int64_t rows = input.shape.rows() * (sp ? ctx_.tp.size() : 1);
  const int64_t n_local = local_out_features();
  const TensorView x = input.reshaped(Shape({input.shape.rows(), config_.in_features}));

  Shape out_shape = input.shape.with_dim(-1, n_local);
  if (sp) out_shape = out_shape.with_dim(0, input.shape[0] * ctx_.tp.size());
  Tensor out(ctx_.backend, out_shape, config_.dtype);
  ColumnProjection p;
  p.weight = weight_.value;
  p.out = out.view().reshaped(Shape({rows, n_local}));
  const bool add_bias = config_.bias && !config_.skip_bias_add;
  if (add_bias) p.bias = bias_.value;
  if (config_.activation == Activation::kGelu) {
    if (saved != nullptr) {
      saved->preactivation = Tensor(ctx_.backend, Shape({rows, n_local}), config_.dtype);
      p.gelu_input = saved->preactivation;
    }
    p.epilogue = add_bias ? Epilogue::kBiasGelu : Epilogue::kGelu;
  } else {
    p.epilogue = add_bias ? Epilogue::kBias : Epilogue::kNone;
  }
  column_forward(ctx_, {sp, config_.tp_comm_overlap}, x, {p});
  if (saved != nullptr) {
    saved->input = input;  // this rank's rows only, under sequence parallelism
    saved->sequence_parallel = sp;
  }
  if (!config_.gather_output) return out;
  return gather_last_dim(ctx_, out);
}

Tensor ColumnParallelLinear::backward(TensorView grad_output, Saved& saved) {
  WEFT_CHECK(saved.input.data != nullptr, config_.name,
             ": backward called before forward (its saved state is empty)");
  const bool sp = saved.sequence_parallel;
  const TensorView saved_input = saved.input;
  const int64_t rows = saved_input.shape.rows() * (sp ? ctx_.tp.size() : 1);
  const int64_t n_local = local_out_features();
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
    ctx_.backend.gelu_backward(grad_preactivation, grad, saved.preactivation);
    grad = grad_preactivation;
  }

  const TensorView x = saved_input.reshaped(Shape({saved_input.shape.rows(), config_.in_features}));
  ColumnGradient g;
  g.grad = grad;
  g.weight = weight_.value;
  g.weight_grad = weight_.grad;
  if (config_.bias) g.bias_grad = bias_.grad;
  Tensor grad_input = column_backward(ctx_, {sp, config_.tp_comm_overlap}, x, {g});
  grad_input.reshape(saved_input.shape);
  saved = Saved{};
  return grad_input;
}

}  // namespace weft
