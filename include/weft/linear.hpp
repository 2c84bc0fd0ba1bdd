// ColumnParallelLinear and RowParallelLinear: Megatron's two ways to shard Y = X W^T + b.
//
// Weights are stored [out_features, in_features] (as in Megatron and PyTorch). Activations are
// 2D [tokens, features]; fold sequence and batch into tokens. A training forward fills the
// caller's `Saved` with what its backward needs (the input is kept as a view: it must stay alive
// and unchanged until backward); backward consumes it, accumulates into the parameters' grad
// tensors and returns the input gradient. The layer itself holds only parameters and
// configuration, so any number of forwards can await their backwards. A forward without `Saved`
// keeps nothing (inference).
//
// sequence_parallel (Korthikanti et al. 2022; mappings.hpp): the replicated side of the layer (the
// column layer's input, the row layer's output) is this rank's block of rows, tokens / tp of them,
// with tokens ordered (position, batch) and dim 0 the one split. The column layer all-gathers its
// input rows before the GEMM and reduce-scatters the input gradient instead of all-reducing it;
// it keeps only its own rows for backward and gathers them again there. The row layer
// reduce-scatters its output instead of all-reducing it (the bias is added after, to the local
// rows) and all-gathers the output gradient in backward.
//
// tp_comm_overlap: the layer's communication overlaps its GEMMs by blocks of rows (overlap.hpp):
// with sequence parallelism the column forward is all_gather_gemm, the row forward
// gemm_reduce_scatter, and both backwards overlap their all-gather / reduce-scatter with the
// weight- and input-gradient GEMMs; without it, an all-reduce (column backward, row forward)
// becomes a ring reduce-scatter overlapping one GEMM then an all-gather (overlapping the weight
// gradient GEMM in the column backward). Results equal the plain path up to the order of sums.
#pragma once

#include <string>
#include <vector>

#include "weft/mappings.hpp"
#include "weft/parallel_config.hpp"
#include "weft/parameter.hpp"

namespace weft {

enum class Activation { kNone, kGelu };

// dtype, seed, init_std (weights ~ N(0, init_std); the bias starts at zero, as in Megatron),
// sequence_parallel and tp_comm_overlap come from ParallelConfig.
struct ColumnParallelLinearConfig : ParallelConfig {
  int64_t in_features = 0;
  int64_t out_features = 0;  // global; divisible by the TP size
  bool bias = true;
  // Return the full [tokens, out_features] on every rank instead of this rank's columns.
  bool gather_output = false;
  // Leave the bias out of the output so the caller can fuse it into what follows.
  bool skip_bias_add = false;
  // Applied to the local output inside the GEMM epilogue (not with gather_output/skip_bias_add).
  Activation activation = Activation::kNone;
  // sequence_parallel: input (and input gradient) are this rank's rows; see above. Not with
  // gather_output.
  std::string name = "column_linear";
};

// W split along out_features (dim 0): each rank computes its output columns from the full input.
// Input is replicated on the TP ranks; the input gradient is all-reduced across them.
class ColumnParallelLinear {
 public:
  // What one forward keeps for its backward.
  struct Saved {
    TensorView input;      // the caller's input (this rank's rows under sequence parallelism)
    Tensor preactivation;  // GeLU input, when activation is kGelu
    bool sequence_parallel = false;
    // The saved tensors (views; the input's among them), and their distinct bytes.
    std::vector<TensorView> views() const;
    int64_t bytes() const { return distinct_bytes(views()); }
  };

  ColumnParallelLinear(const ParallelContext& ctx, ColumnParallelLinearConfig config);

  // input [tokens, in_features] -> [tokens, out_features / tp], or [tokens, out_features] when
  // gather_output. Sequence parallel: input [tokens / tp, ...] (dim 0 split) -> all tokens.
  Tensor forward(TensorView input, Saved& saved);
  Tensor forward(TensorView input, SequenceParallel mode = SequenceParallel::kAsConfigured);
  // grad_output has forward's output shape; returns the input's shape: [tokens, in_features],
  // identical on all TP ranks, or this rank's rows when sequence parallel. Consumes `saved`.
  Tensor backward(TensorView grad_output, Saved& saved);

  const ColumnParallelLinearConfig& config() const { return config_; }
  int64_t local_out_features() const { return weight_.value.shape()[0]; }
  Parameter& weight() { return weight_; }
  Parameter* bias() { return config_.bias ? &bias_ : nullptr; }
  std::vector<Parameter*> parameters();

 private:
  Tensor run_forward(TensorView input, bool sequence_parallel, Saved* saved);

  ParallelContext ctx_;
  ColumnParallelLinearConfig config_;
  Parameter weight_, bias_;
};

struct RowParallelLinearConfig : ParallelConfig {
  int64_t in_features = 0;  // global; divisible by the TP size
  int64_t out_features = 0;
  bool bias = true;
  // The input is already split along its last dimension (the output of a ColumnParallelLinear
  // without gather_output). When false the layer takes the full input and keeps its own slice.
  bool input_is_parallel = true;
  bool skip_bias_add = false;
  // sequence_parallel: output (and output gradient) are this rank's rows; see above.
  std::string name = "row_linear";
};

// W split along in_features (dim 1): each rank multiplies its slice of the input features, then
// the partial outputs are all-reduced. The bias is replicated and added once, after the reduction.
class RowParallelLinear {
 public:
  // What one forward keeps for its backward.
  struct Saved {
    TensorView input;        // [tokens, in_features / tp]: a view of the caller's input, or of
    Tensor scattered_input;  // this rank's slice of it when !input_is_parallel
    bool sequence_parallel = false;
    std::vector<TensorView> views() const;
    int64_t bytes() const { return distinct_bytes(views()); }
  };

  RowParallelLinear(const ParallelContext& ctx, RowParallelLinearConfig config);

  // input [tokens, in_features / tp] (input_is_parallel) or [tokens, in_features]
  // -> [tokens, out_features], identical on all TP ranks; sequence parallel: this rank's rows
  // [tokens / tp, ...] (dim 0 split).
  Tensor forward(TensorView input, Saved& saved);
  Tensor forward(TensorView input, SequenceParallel mode = SequenceParallel::kAsConfigured);
  // grad_output has forward's output shape (identical on all TP ranks, or this rank's rows when
  // sequence parallel) -> grad of forward's input. Consumes `saved`.
  Tensor backward(TensorView grad_output, Saved& saved);

  const RowParallelLinearConfig& config() const { return config_; }
  int64_t local_in_features() const { return weight_.value.shape()[1]; }
  Parameter& weight() { return weight_; }
  Parameter* bias() { return config_.bias ? &bias_ : nullptr; }
  std::vector<Parameter*> parameters();

 private:
  Tensor run_forward(TensorView input, bool sequence_parallel, Saved* saved);

  ParallelContext ctx_;
  RowParallelLinearConfig config_;
  Parameter weight_, bias_;
};

}  // namespace weft
