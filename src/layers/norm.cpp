// Norm: LayerNorm / RMSNorm layers over the backend's normalization ops.
#include "weft/norm.hpp"

#include "weft/error.hpp"

namespace weft {

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

std::vector<Parameter*> Norm::parameters() {
  if (config_.kind == NormKind::kLayerNorm) return {&gamma_, &beta_};
  return {&gamma_};
}

Tensor Norm::forward(TensorView x) {
  WEFT_CHECK(x.shape.cols() == config_.hidden && x.dtype == config_.dtype, config_.name,
             ": input ", x.str(), " must be [rows, ", config_.hidden, "] of ",
             dtype_name(config_.dtype));
  const int64_t rows = x.shape.rows();
  saved_input_ = x;
  Tensor out(backend_, x.shape, x.dtype);
  rstd_ = Tensor(backend_, Shape({rows}), DType::kF32);
  if (config_.kind == NormKind::kLayerNorm) {
    mean_ = Tensor(backend_, Shape({rows}), DType::kF32);
    backend_.layer_norm(out, mean_, rstd_, x, gamma_.value, beta_.value, config_.eps);
  } else {
    backend_.rms_norm(out, rstd_, x, gamma_.value, config_.eps);
  }
  return out;
}

Tensor Norm::backward(TensorView grad_output) {
  WEFT_CHECK(saved_input_.data != nullptr, config_.name, ": backward called before forward");
  WEFT_CHECK(grad_output.shape == saved_input_.shape && grad_output.dtype == config_.dtype,
             config_.name, ": grad_output ", grad_output.str(), " must match the input ",
             saved_input_.str());
  Tensor grad_input(backend_, saved_input_.shape, config_.dtype);
  Tensor grad_gamma(backend_, gamma_.value.shape(), config_.dtype);
  if (config_.kind == NormKind::kLayerNorm) {
    Tensor grad_beta(backend_, beta_.value.shape(), config_.dtype);
    backend_.layer_norm_backward(grad_input, grad_gamma, grad_beta, grad_output, saved_input_,
                                 gamma_.value, mean_, rstd_);
    backend_.add(beta_.grad, beta_.grad, grad_beta);
  } else {
    backend_.rms_norm_backward(grad_input, grad_gamma, grad_output, saved_input_, gamma_.value,
                               rstd_);
  }
  backend_.add(gamma_.grad, gamma_.grad, grad_gamma);
  return grad_input;
}

}  // namespace weft
