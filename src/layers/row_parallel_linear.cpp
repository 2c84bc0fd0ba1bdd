// RowParallelLinear: input features split across TP ranks, partial outputs all-reduced.
#include "layers/linear_common.hpp"
#include "layers/tp_linear_ops.hpp"
#include "weft/linear.hpp"
#include "weft/partition.hpp"

namespace weft {

RowParallelLinear::RowParallelLinear(const ParallelContext& ctx, RowParallelLinearConfig config)
    : ctx_(ctx), config_(std::move(config)) {
  const auto& c = config_;
  WEFT_CHECK(c.in_features > 0 && c.out_features > 0, c.name, ": in_features (", c.in_features,
             ") and out_features (", c.out_features, ") must be positive");
  const int tp = ctx.tp.size(), rank = ctx.tp.rank();
  divide_exact(c.in_features, tp, (c.name + ": in_features").c_str(), "the tensor-parallel size");
  weight_ = make_parameter(ctx.backend, c.name + ".weight", Shape({c.out_features, c.in_features}),
                           c.dtype, /*partition_dim=*/1, tp, rank);
  init_parameter(ctx.backend, weight_,
                 RandomFill{Distribution::kNormal, c.seed, 0, 0.0, c.init_std});
  if (c.bias) {
    // Replicated: added once after the reduction, so every rank holds the whole bias.
    bias_ = make_parameter(ctx.backend, c.name + ".bias", Shape({c.out_features}), c.dtype,
                           /*partition_dim=*/-1, 1, 0);
    bias_.replica_count = tp;
    ctx.backend.fill(bias_.value, 0.0f);
  }
}

std::vector<Parameter*> RowParallelLinear::parameters() {
  std::vector<Parameter*> params{&weight_};
  if (config_.bias) params.push_back(&bias_);
  return params;
}

std::vector<TensorView> RowParallelLinear::Saved::views() const {
  std::vector<TensorView> saved;
  if (input.data != nullptr) saved.push_back(input);
  return saved;
}

Tensor RowParallelLinear::forward(TensorView input, Saved& saved) {
  saved = Saved{};
  return run_forward(input, config_.sequence_parallel, &saved);
}

Tensor RowParallelLinear::forward(TensorView input, SequenceParallel mode) {
  return run_forward(input, mode == SequenceParallel::kAsConfigured && config_.sequence_parallel,
                     nullptr);
}

Tensor RowParallelLinear::run_forward(TensorView input, bool sp, Saved* saved) {
  const int64_t k_local = local_in_features();
  check_activation(ctx_.backend, input, config_.input_is_parallel ? k_local : config_.in_features,
                   config_.dtype, config_.name, "input");
  const int tp = ctx_.tp.size();
  const int64_t rows = input.shape.rows();
  if (sp) {
    WEFT_CHECK(input.shape.rank() >= 2 && input.shape[0] % tp == 0, config_.name,
               ": a sequence-parallel output splits dim 0 of the input ", input.str(),
               " across the tensor-parallel size (", tp, "): it must be divisible");
  }
  TensorView x = input.reshaped(Shape({rows, input.shape.cols()}));
  Tensor scattered;
  if (!config_.input_is_parallel) {
    scattered = split_last_dim(ctx_, x);
    x = scattered;
  }

  Tensor out = row_forward(ctx_, {sp, config_.tp_comm_overlap}, x, weight_.value);
  const TensorView out2d = out;
  if (config_.bias && !config_.skip_bias_add) ctx_.backend.add_bias(out2d, out2d, bias_.value);
  Shape out_shape = input.shape.with_dim(-1, config_.out_features);
  if (sp) out_shape = out_shape.with_dim(0, input.shape[0] / tp);
  out.reshape(out_shape);
  if (saved != nullptr) {
    saved->input = x;  // the moved tensor keeps its storage: the view stays valid
    saved->scattered_input = std::move(scattered);
    saved->sequence_parallel = sp;
  }
  return out;
}

Tensor RowParallelLinear::backward(TensorView grad_output, Saved& saved) {
  WEFT_CHECK(saved.input.data != nullptr, config_.name,
             ": backward called before forward (its saved state is empty)");
  const bool sp = saved.sequence_parallel;
  const int64_t rows = saved.input.shape.rows() / (sp ? ctx_.tp.size() : 1);
  check_activation(ctx_.backend, grad_output, config_.out_features, config_.dtype, config_.name,
                   "grad_output");
  WEFT_CHECK(grad_output.shape.rows() == rows, config_.name, ": grad_output ",
             grad_output.shape.str(), " has ", grad_output.shape.rows(), " rows, forward had ",
             rows);
  const TensorView grad = grad_output.reshaped(Shape({rows, config_.out_features}));
  Tensor grad_input =
      row_backward(ctx_, {sp, config_.tp_comm_overlap}, grad, saved.input, weight_.value,
                   weight_.grad, config_.bias ? bias_.grad.view() : TensorView{});
  Tensor result =
      config_.input_is_parallel ? std::move(grad_input) : gather_last_dim(ctx_, grad_input);
  Shape shape = grad_output.shape.with_dim(-1, result.shape().cols());
  if (sp) shape = shape.with_dim(0, grad_output.shape[0] * ctx_.tp.size());
  result.reshape(shape);
  saved = Saved{};
  return result;
}

}  // namespace weft
