// ParallelMLP: Megatron's sharded feed-forward block, h -> ffn (column, GeLU) -> h (row).
#pragma once

#include <vector>

#include "weft/linear.hpp"

namespace weft {

struct ParallelMLPConfig {
  int64_t hidden = 0;
  int64_t ffn_hidden = 0;  // 4 * hidden in GPT-2; divisible by the TP size
  bool bias = true;
  DType dtype = DType::kF32;
  std::string name = "mlp";
  uint64_t seed = 1234;
  float init_std = 0.02f;
};

// One all-reduce forward (after fc2) and one backward (fc1's input gradient); the GeLU runs in
// fc1's GEMM epilogue on each rank's own columns, so the [tokens, ffn] activation is never
// gathered.
class ParallelMLP {
 public:
  ParallelMLP(const ParallelContext& ctx, const ParallelMLPConfig& config);

  Tensor forward(TensorView input);         // [tokens, hidden] -> [tokens, hidden]
  Tensor backward(TensorView grad_output);  // [tokens, hidden] -> [tokens, hidden]

  ColumnParallelLinear& fc1() { return fc1_; }
  RowParallelLinear& fc2() { return fc2_; }
  std::vector<Parameter*> parameters();

 private:
  ColumnParallelLinear fc1_;
  RowParallelLinear fc2_;
  Tensor hidden_;  // fc1's output, fc2's saved input
};

}  // namespace weft
