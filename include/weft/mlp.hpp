// ParallelMLP: Megatron's sharded feed-forward block, h -> ffn (column, GeLU or SwiGLU) -> h (row).
#pragma once

#include <memory>
#include <vector>

#include "weft/linear.hpp"

namespace weft {

enum class MlpActivation {
  kGelu,    // GPT-2: gelu(x W1^T + b1) W2^T + b2
  kSwiGLU,  // LLaMA: (silu(x Wg^T) * (x Wu^T)) W2^T
};

// sequence_parallel: input and output are this rank's rows (linear.hpp); SwiGLU's gate and up
// share one gather. tp_comm_overlap: the layers' communication overlaps their GEMMs.
struct ParallelMLPConfig : ParallelConfig {
  int64_t hidden = 0;
  MlpActivation activation = MlpActivation::kGelu;
  int64_t ffn_hidden = 0;  // 4 * hidden in GPT-2; divisible by the TP size
  bool bias = true;
  std::string name = "mlp";
  float output_init_std = 0.02f;  // fc2; GPT-2 scales it by 1/sqrt(2 * layers)
};

// One all-reduce forward (after fc2) and one backward per column layer; the activation runs on
// each rank's own columns (GeLU inside fc1's GEMM epilogue), so the [tokens, ffn] activation is
// never gathered. SwiGLU uses two column layers, gate (fc1) and up, so that each rank's shard
// holds matching gate and up columns.
class ParallelMLP {
 public:
  // What one forward keeps for its backward.
  struct Saved {
    ColumnParallelLinear::Saved fc1;  // GeLU
    TensorView input;                 // SwiGLU: the gate and up projections' input
    Tensor gate, up;                  // SwiGLU: the activation's inputs
    Tensor hidden;                    // fc2's input
    RowParallelLinear::Saved fc2;
    bool sequence_parallel = false;
    std::vector<TensorView> views() const;
    int64_t bytes() const { return distinct_bytes(views()); }
  };

  ParallelMLP(const ParallelContext& ctx, const ParallelMLPConfig& config);

  // [tokens, hidden] -> [tokens, hidden]; sequence parallel: this rank's rows in and out.
  Tensor forward(TensorView input, Saved& saved);
  Tensor forward(TensorView input, SequenceParallel mode = SequenceParallel::kAsConfigured);
  Tensor backward(TensorView grad_output, Saved& saved);  // consumes `saved`

  ColumnParallelLinear& fc1() { return fc1_; }
  ColumnParallelLinear* up() { return up_.get(); }  // SwiGLU only
  RowParallelLinear& fc2() { return fc2_; }
  std::vector<Parameter*> parameters();

 private:
  Tensor run_forward(TensorView input, bool sequence_parallel, Saved* saved);

  ParallelContext ctx_;
  MlpActivation activation_;
  ColumnParallelLinear fc1_;
  std::unique_ptr<ColumnParallelLinear> up_;
  RowParallelLinear fc2_;
};

}  // namespace weft
