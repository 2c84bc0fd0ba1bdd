// Norm: LayerNorm / RMSNorm layers over the backend's normalization ops.
#include "weft/norm.hpp"

#include "weft/error.hpp"

namespace weft {

Norm::Norm(const ParallelContext& ctx, NormConfig config) : Norm(ctx.backend, std::move(config)) {
  tp_ = &ctx.tp;
}

Norm::Norm(Backend& backend, NormConfig config) : backend_(backend), config_(std::move(config)) {
  WEFT_CHECK(config_.hidden > 0, config_.name, ": hidden (", config_.hidden, ") must be positive");
  WEFT_CHECK(config_.eps > 0.0f, config_.name, ": eps (", config_.eps, ") must be positive");
  gamma_ = make_parameter(backend, config_.name + ".weight", Shape({config_.hidden}),
                          config_.dtype, -1, 1, 0);
  gamma_.replica_count = config_.replicas;
  backend.fill(gamma_.value, 1.0f);
  if (config_.kind == NormKind::kLayerNorm) {
    beta_ = make_parameter(backend, config_.name + ".bias", Shape({config_.hidden}), config_.dtype,
                           -1, 1, 0);
    beta_.replica_count = config_.replicas;
    backend.fill(beta_.value, 0.0f);
  }
}

std::vector<TensorView> Norm::Saved::views() const {
  std::vector<TensorView> saved;
  if (input.data != nullptr) saved.push_back(input);
  if (mean.defined()) saved.push_back(mean);
  if (rstd.defined()) saved.push_back(rstd);
  return saved;
}

std::vector<Parameter*> Norm::parameters() {
  if (config_.kind == NormKind::kLayerNorm) return {&gamma_, &beta_};
  return {&gamma_};
}

Tensor Norm::forward(TensorView x) {
  Saved scratch;  // mean and rstd are outputs of the op; dropped here
  return forward(x, scratch);
}

Tensor Norm::forward(TensorView x, Saved& saved) {
  WEFT_CHECK(x.shape.cols() == config_.hidden && x.dtype == config_.dtype, config_.name,
             ": input ", x.str(), " must be [rows, ", config_.hidden, "] of ",
             dtype_name(config_.dtype));
  const int64_t rows = x.shape.rows();
  saved = Saved{};
  saved.input = x;
  Tensor out(backend_, x.shape, x.dtype);
  saved.rstd = Tensor(backend_, Shape({rows}), DType::kF32);
  if (config_.kind == NormKind::kLayerNorm) {
    saved.mean = Tensor(backend_, Shape({rows}), DType::kF32);
    backend_.layer_norm(out, saved.mean, saved.rstd, x, gamma_.value, beta_.value, config_.eps);
  } else {
    backend_.rms_norm(out, saved.rstd, x, gamma_.value, config_.eps);
  }
  return out;
}

Tensor Norm::backward(TensorView grad_output, Saved& saved) {
  WEFT_CHECK(saved.input.data != nullptr, config_.name,
             ": backward called before forward (its saved state is empty)");
  const TensorView input = saved.input;
  WEFT_CHECK(grad_output.shape == input.shape && grad_output.dtype == config_.dtype, config_.name,
             ": grad_output ", grad_output.str(), " must match the input ", input.str());
  WEFT_CHECK(!config_.sequence_parallel || tp_ != nullptr, config_.name,
             ": sequence_parallel needs the Norm(ParallelContext, ...) constructor (the gradient "
             "reduction runs over the TP group)");
  Tensor grad_input(backend_, input.shape, config_.dtype);
  // gamma's gradient in row 0, beta's in row 1, so that one all-reduce sums both.
  const bool layer_norm = config_.kind == NormKind::kLayerNorm;
  const int64_t h = config_.hidden;
  Tensor deltas(backend_, Shape({layer_norm ? 2 : 1, h}), config_.dtype);
  auto delta = [&](int64_t row) { return deltas.view().rows(row, 1).reshaped(Shape({h})); };
  if (layer_norm) {
    backend_.layer_norm_backward(grad_input, delta(0), delta(1), grad_output, input, gamma_.value,
                                 saved.mean, saved.rstd);
  } else {
    backend_.rms_norm_backward(grad_input, delta(0), grad_output, input, gamma_.value, saved.rstd);
  }
  // Each rank saw its own rows only: the gradient is the sum over the TP group.
  if (config_.sequence_parallel && tp_->size() > 1) {
    tp_->all_reduce(deltas, deltas, ReduceOp::kSum, backend_.stream());
  }
  backend_.add(gamma_.grad, gamma_.grad, delta(0));
  if (layer_norm) backend_.add(beta_.grad, beta_.grad, delta(1));
  saved = Saved{};
  return grad_input;
}

}  // namespace weft
