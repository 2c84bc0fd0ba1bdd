// Helpers shared by the two parallel linear layers: input checks and the weight-gradient GEMM.
#pragma once

#include "weft/backend.hpp"
#include "weft/error.hpp"
#include "weft/parameter.hpp"

namespace weft {

// input must be [..., features] of `dtype` on the backend's device.
inline void check_activation(const Backend& backend, const TensorView& x, int64_t features,
                             DType dtype, const std::string& layer, const char* what) {
  WEFT_CHECK(x.shape.rank() >= 1 && x.shape.cols() == features, layer, ": ", what, " ",
             x.shape.str(), " must have last dimension ", features);
  WEFT_CHECK(x.dtype == dtype, layer, ": ", what, " dtype ", dtype_name(x.dtype),
             " differs from the layer's dtype ", dtype_name(dtype));
  WEFT_CHECK(x.device == backend.device(), layer, ": ", what, " is on ", x.device.str(),
             " but the layer runs on ", backend.device().str());
}

// weight.grad += grad_output^T input; bias.grad += column sums of grad_output.
inline void accumulate_weight_grads(Backend& backend, const TensorView& grad_output2d,
                                    const TensorView& input2d, Parameter& weight, Parameter* bias) {
  GemmArgs g;
  g.a = grad_output2d;
  g.transpose_a = true;
  g.b = input2d;
  g.c = weight.grad;
  g.beta = 1.0f;
  Tensor bias_grad;
  if (bias != nullptr) {
    bias_grad = Tensor(backend, bias->grad.shape(), bias->grad.dtype());
    g.epilogue = Epilogue::kBiasGrad;
    g.bias_grad = bias_grad;
  }
  backend.gemm(g);
  if (bias != nullptr) backend.add(bias->grad, bias->grad, bias_grad);
}

}  // namespace weft
