// ParallelMLP: column layer(s) with the activation on local columns, then a row layer.
#include "layers/linear_common.hpp"
#include "layers/tp_linear_ops.hpp"
#include "weft/mlp.hpp"

namespace weft {

namespace {
ColumnParallelLinearConfig column_config(const ParallelMLPConfig& c, const std::string& suffix,
                                         Activation activation) {
  ColumnParallelLinearConfig fc;
  fc.parallel() = c.parallel();
  fc.in_features = c.hidden;
  fc.out_features = c.ffn_hidden;
  fc.bias = c.bias;
  fc.activation = activation;
  fc.name = c.name + suffix;
  return fc;
}
RowParallelLinearConfig fc2_config(const ParallelMLPConfig& c) {
  RowParallelLinearConfig fc2;
  fc2.parallel() = c.parallel();
  fc2.in_features = c.ffn_hidden;
  fc2.out_features = c.hidden;
  fc2.bias = c.bias;
  fc2.input_is_parallel = true;
  fc2.name = c.name + ".fc2";
  fc2.init_std = c.output_init_std;
  return fc2;
}
bool is_swiglu(const ParallelMLPConfig& c) { return c.activation == MlpActivation::kSwiGLU; }
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

Tensor ParallelMLP::forward(TensorView input, Saved& saved) {
  saved = Saved{};
  return run_forward(input, fc1_.config().sequence_parallel, &saved);
}

Tensor ParallelMLP::forward(TensorView input, SequenceParallel mode) {
  return run_forward(
      input, mode == SequenceParallel::kAsConfigured && fc1_.config().sequence_parallel, nullptr);
}

Tensor ParallelMLP::run_forward(TensorView input, bool sp, Saved* saved) {
  const SequenceParallel mode = sp ? SequenceParallel::kAsConfigured : SequenceParallel::kOff;
  if (activation_ == MlpActivation::kGelu) {
    if (saved == nullptr) return fc2_.forward(fc1_.forward(input, mode), mode);
    saved->sequence_parallel = sp;
    saved->hidden = fc1_.forward(input, saved->fc1);
    return fc2_.forward(saved->hidden, saved->fc2);
  }
  // SwiGLU: gate (fc1) and up are two column projections of one input, run together so that a
  // sequence-parallel input is gathered once for both.
  const ColumnParallelLinearConfig& c = fc1_.config();
  check_activation(ctx_.backend, input, c.in_features, c.dtype, c.name, "input");
  WEFT_CHECK(!sp || input.shape.rank() >= 2, c.name,
             ": a sequence-parallel input needs a row dimension, got ", input.str());
  const int64_t rows = input.shape.rows() * (sp ? ctx_.tp.size() : 1);
  const int64_t f_local = fc1_.local_out_features();
  Tensor gate(ctx_.backend, Shape({rows, f_local}), c.dtype);
  Tensor up(ctx_.backend, Shape({rows, f_local}), c.dtype);
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
  column_forward(ctx_, {sp, c.tp_comm_overlap},
                 input.reshaped(Shape({input.shape.rows(), c.in_features})),
                 {projection(fc1_, gate), projection(*up_, up)});
  Tensor hidden(ctx_.backend, gate.shape(), gate.dtype());
  ctx_.backend.swiglu(hidden, gate, up);
  Tensor out;
  if (saved == nullptr) {
    out = fc2_.forward(hidden, mode);
  } else {
    out = fc2_.forward(hidden, saved->fc2);
    saved->sequence_parallel = sp;
    saved->input = input;
    saved->gate = std::move(gate);
    saved->up = std::move(up);
    saved->hidden = std::move(hidden);
  }
  out.reshape(input.shape);
  return out;
}

Tensor ParallelMLP::backward(TensorView grad_output, Saved& saved) {
  WEFT_CHECK(saved.hidden.defined(), fc1_.config().name,
             ": backward called before forward (its saved state is empty)");
  Tensor grad_hidden = fc2_.backward(grad_output, saved.fc2);
  if (activation_ == MlpActivation::kGelu) {
    Tensor grad_input = fc1_.backward(grad_hidden, saved.fc1);
    saved = Saved{};
    return grad_input;
  }
  Tensor grad_gate(ctx_.backend, saved.gate.shape(), saved.gate.dtype());
  Tensor grad_up(ctx_.backend, saved.up.shape(), saved.up.dtype());
  ctx_.backend.swiglu_backward(grad_gate, grad_up, grad_hidden, saved.gate, saved.up);
  auto gradient = [](ColumnParallelLinear& layer, const Tensor& grad) {
    ColumnGradient g;
    g.grad = grad;
    g.weight = layer.weight().value;
    g.weight_grad = layer.weight().grad;
    if (layer.bias() != nullptr) g.bias_grad = layer.bias()->grad;
    return g;
  };
  const TensorView input = saved.input;
  Tensor grad_input =
      column_backward(ctx_, {saved.sequence_parallel, fc1_.config().tp_comm_overlap},
                      input.reshaped(Shape({input.shape.rows(), input.shape.cols()})),
                      {gradient(fc1_, grad_gate), gradient(*up_, grad_up)});
  grad_input.reshape(input.shape);
  saved = Saved{};
  return grad_input;
}

std::vector<TensorView> ParallelMLP::Saved::views() const {
  std::vector<TensorView> saved = fc1.views();
  for (const TensorView& v : {input, gate.view(), up.view()}) {
    if (v.data != nullptr) saved.push_back(v);
  }
  for (const TensorView& v : fc2.views()) saved.push_back(v);
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
