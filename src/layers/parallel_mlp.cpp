// ParallelMLP: ColumnParallelLinear with fused bias+GeLU, then RowParallelLinear.
#include "weft/mlp.hpp"

namespace weft {

namespace {
ColumnParallelLinearConfig fc1_config(const ParallelMLPConfig& c) {
  ColumnParallelLinearConfig fc1;
  fc1.in_features = c.hidden;
  fc1.out_features = c.ffn_hidden;
  fc1.bias = c.bias;
  fc1.activation = Activation::kGelu;
  fc1.dtype = c.dtype;
  fc1.name = c.name + ".fc1";
  fc1.seed = c.seed;
  fc1.init_std = c.init_std;
  return fc1;
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
  fc2.init_std = c.init_std;
  return fc2;
}
}  // namespace

ParallelMLP::ParallelMLP(const ParallelContext& ctx, const ParallelMLPConfig& config)
    : fc1_(ctx, fc1_config(config)), fc2_(ctx, fc2_config(config)) {}

Tensor ParallelMLP::forward(TensorView input) {
  hidden_ = fc1_.forward(input);
  return fc2_.forward(hidden_);
}

Tensor ParallelMLP::backward(TensorView grad_output) {
  Tensor grad_hidden = fc2_.backward(grad_output);
  return fc1_.backward(grad_hidden);
}

std::vector<Parameter*> ParallelMLP::parameters() {
  std::vector<Parameter*> params = fc1_.parameters();
  for (Parameter* p : fc2_.parameters()) params.push_back(p);
  return params;
}

}  // namespace weft
