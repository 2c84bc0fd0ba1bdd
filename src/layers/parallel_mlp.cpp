// ParallelMLP: column layer(s) with the activation on local columns, then a row layer.
#include "layers/linear_common.hpp"
#include "layers/tp_linear_ops.hpp"
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
  fc.sequence_parallel = c.sequence_parallel;
  fc.tp_comm_overlap = c.tp_comm_overlap;
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
  fc2.sequence_parallel = c.sequence_parallel;
  fc2.tp_comm_overlap = c.tp_comm_overlap;
  return fc2;
}
bool is_swiglu(const ParallelMLPConfig& c) { return c.activation == MlpActivation::kSwiGLU; }
// The communication of SwiGLU's gate and up projections: fc1's (set_sequence_parallel included).
TpCommOptions column_options(const ColumnParallelLinear& fc1) {
  return {fc1.config().sequence_parallel, fc1.config().tp_comm_overlap};
}
}  // namespace

ParallelMLP::ParallelMLP(const ParallelContext& ctx, const ParallelMLPConfig& config)
    : ctx_(ctx),
      activation_(config.activation),
      fc1_(ctx, column_config(config, ".fc1",
                              is_swiglu(config) ? Activation::kNone : Activation::kGelu)),
      fc2_(ctx, fc2_config(config)) {
  if (is_swiglu(config)) {
    up_ = std::make_unique<ColumnParallelLinear>(ctx,
                                                 column_config(config, ".up", Activation::kNone));
  }
}

void ParallelMLP::set_sequence_parallel(bool enabled) {
  fc1_.set_sequence_parallel(enabled);
  if (up_) up_->set_sequence_parallel(enabled);
  fc2_.set_sequence_parallel(enabled);
}

Tensor ParallelMLP::forward(TensorView input) {
  if (activation_ == MlpActivation::kGelu) {
    hidden_ = fc1_.forward(input);
    return fc2_.forward(hidden_);
  }
  // SwiGLU: gate (fc1) and up are two column projections of one input, run together so that a
  // sequence-parallel input is gathered once for both.
  const ColumnParallelLinearConfig& c = fc1_.config();
  check_activation(ctx_.backend, input, c.in_features, c.dtype, c.name, "input");
  const bool sp = c.sequence_parallel;
  WEFT_CHECK(!sp || input.shape.rank() >= 2, c.name,
             ": a sequence-parallel input needs a row dimension, got ", input.str());
  const int64_t rows = input.shape.rows() * (sp ? ctx_.tp.size() : 1);
  const int64_t f_local = fc1_.local_out_features();
  input_ = input;
  gate_ = Tensor(ctx_.backend, Shape({rows, f_local}), c.dtype);
  up_out_ = Tensor(ctx_.backend, Shape({rows, f_local}), c.dtype);
  auto projection = [](ColumnParallelLinear& layer, const Tensor& out) {
    ColumnProjection p;
    p.weight = layer.weight().value;
    if (layer.bias() != nullptr) {
      p.bias = layer.bias()->value;
      p.epilogue = Epilogue::kBias;
    }
    p.out = out;
    return p;
  };
  column_forward(ctx_, column_options(fc1_),
                 input.reshaped(Shape({input.shape.rows(), c.in_features})),
                 {projection(fc1_, gate_), projection(*up_, up_out_)});
  hidden_ = Tensor(ctx_.backend, gate_.shape(), gate_.dtype());
  ctx_.backend.swiglu(hidden_, gate_, up_out_);
  Tensor out = fc2_.forward(hidden_);
  out.reshape(input.shape);
  return out;
}

Tensor ParallelMLP::backward(TensorView grad_output) {
  Tensor grad_hidden = fc2_.backward(grad_output);
  if (activation_ == MlpActivation::kGelu) return fc1_.backward(grad_hidden);
  WEFT_CHECK(input_.data != nullptr, fc1_.config().name, ": backward called before forward");
  Tensor grad_gate(ctx_.backend, gate_.shape(), gate_.dtype());
  Tensor grad_up(ctx_.backend, up_out_.shape(), up_out_.dtype());
  ctx_.backend.swiglu_backward(grad_gate, grad_up, grad_hidden, gate_, up_out_);
  auto gradient = [](ColumnParallelLinear& layer, const Tensor& grad) {
    ColumnGradient g;
    g.grad = grad;
    g.weight = layer.weight().value;
    g.weight_grad = layer.weight().grad;
    if (layer.bias() != nullptr) g.bias_grad = layer.bias()->grad;
    return g;
  };
  Tensor grad_input =
      column_backward(ctx_, column_options(fc1_),
                      input_.reshaped(Shape({input_.shape.rows(), input_.shape.cols()})),
                      {gradient(fc1_, grad_gate), gradient(*up_, grad_up)});
  grad_input.reshape(input_.shape);
  return grad_input;
}

std::vector<TensorView> ParallelMLP::saved_activations() const {
  std::vector<TensorView> saved;
  if (activation_ == MlpActivation::kGelu) {
    saved = fc1_.saved_activations();
  } else {
    for (const TensorView& v : {input_, gate_.view(), up_out_.view()}) {
      if (v.data != nullptr) saved.push_back(v);
    }
  }
  for (const TensorView& v : fc2_.saved_activations()) saved.push_back(v);
  return saved;
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
