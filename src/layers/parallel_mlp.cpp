// ParallelMLP: column layer(s) with the activation on local columns, then a row layer.
#include "weft/mlp.hpp"

namespace weft {

namespace {
ColumnParallelLinearConfig column_config(const ParallelMLPConfig& c, const std::string& suffix,
                                         Activation activation) {
  ColumnParallelLinearConfig fc;
  fc.in_features = c.hidden;
  fc.out_features = c.ffn_hidden;
  fc.bias = c.bias;
  fc.activation = activation;
  fc.dtype = c.dtype;
  fc.name = c.name + suffix;
  fc.seed = c.seed;
  fc.init_std = c.init_std;
  return fc;
}
RowParallelLinearConfig fc2_config(const ParallelMLPConfig& c) {
  RowParallelLinearConfig fc2;
  fc2.in_features = c.ffn_hidden;
  fc2.out_features = c.hidden;
  fc2.bias = c.bias;
  fc2.input_is_parallel = true;
  fc2.dtype = c.dtype;
  fc2.name = c.name + ".fc2";
  fc2.seed = c.seed;
  fc2.init_std = c.output_init_std;
  return fc2;
}
bool is_swiglu(const ParallelMLPConfig& c) { return c.activation == MlpActivation::kSwiGLU; }
}  // namespace

ParallelMLP::ParallelMLP(const ParallelContext& ctx, const ParallelMLPConfig& config)
    : backend_(ctx.backend),
      activation_(config.activation),
      fc1_(ctx, column_config(config, ".fc1", is_swiglu(config) ? Activation::kNone
                                                                 : Activation::kGelu)),
      fc2_(ctx, fc2_config(config)) {
  if (is_swiglu(config)) {
    up_ = std::make_unique<ColumnParallelLinear>(ctx,
                                                 column_config(config, ".up", Activation::kNone));
  }
}

Tensor ParallelMLP::forward(TensorView input) {
  if (activation_ == MlpActivation::kGelu) {
    hidden_ = fc1_.forward(input);
  } else {
    gate_ = fc1_.forward(input);
    up_out_ = up_->forward(input);
    hidden_ = Tensor(backend_, gate_.shape(), gate_.dtype());
    backend_.swiglu(hidden_, gate_, up_out_);
  }
  return fc2_.forward(hidden_);
}

Tensor ParallelMLP::backward(TensorView grad_output) {
  Tensor grad_hidden = fc2_.backward(grad_output);
  if (activation_ == MlpActivation::kGelu) return fc1_.backward(grad_hidden);
  Tensor grad_gate(backend_, gate_.shape(), gate_.dtype());
  Tensor grad_up(backend_, up_out_.shape(), up_out_.dtype());
  backend_.swiglu_backward(grad_gate, grad_up, grad_hidden, gate_, up_out_);
  Tensor grad_input = fc1_.backward(grad_gate);
  Tensor grad_input_up = up_->backward(grad_up);
  backend_.add(grad_input, grad_input, grad_input_up);
  return grad_input;
}

std::vector<Parameter*> ParallelMLP::parameters() {
  std::vector<Parameter*> params = fc1_.parameters();
  if (up_) {
    for (Parameter* p : up_->parameters()) params.push_back(p);
  }
  for (Parameter* p : fc2_.parameters()) params.push_back(p);
  return params;
}

}  // namespace weft
