// LayerNorm and RMSNorm over the hidden dimension, with replicated parameters.
#pragma once

#include <string>
#include <vector>

#include "weft/backend.hpp"
#include "weft/mappings.hpp"
#include "weft/parallel_config.hpp"
#include "weft/parameter.hpp"

namespace weft {

enum class NormKind { kLayerNorm, kRMSNorm };

// From ParallelConfig: dtype, and sequence_parallel: each TP rank normalizes its own rows, so its
// parameter gradients are partial sums over those rows; backward all-reduces them across TP
// (Megatron-LM issue 1446: a missing reduction lets the copies drift apart). Needs the
// ParallelContext constructor. (gamma starts at 1 and beta at 0: seed and init_std are unused.)
struct NormConfig : ParallelConfig {
  int64_t hidden = 0;
  NormKind kind = NormKind::kLayerNorm;
  float eps = 1e-5f;
  std::string name = "norm";
  // TP ranks holding a copy (Parameter::replica_count). Without sequence parallelism every rank
  // sees the same input, so the copies' gradients agree and need no reduction.
  int replicas = 1;
};

// gamma starts at 1 and beta at 0. Runs on whatever the input rows are; no communication in
// forward, and in backward only the sequence-parallel gradient reduction.
class Norm {
 public:
  // What one forward keeps for its backward: the input (a view: keep it alive), mean and rstd.
  struct Saved {
    TensorView input;
    Tensor mean, rstd;  // mean for LayerNorm only
    std::vector<TensorView> views() const;
    int64_t bytes() const { return distinct_bytes(views()); }
  };

  Norm(Backend& backend, NormConfig config);
  Norm(const ParallelContext& ctx, NormConfig config);

  // [rows, hidden] -> [rows, hidden]; without `saved` nothing is kept (inference).
  Tensor forward(TensorView x, Saved& saved);
  Tensor forward(TensorView x);
  // Accumulates the parameter gradients; consumes `saved`.
  Tensor backward(TensorView grad_output, Saved& saved);

  const NormConfig& config() const { return config_; }
  std::vector<Parameter*> parameters();

 private:
  Backend& backend_;
  Communicator* tp_ = nullptr;  // the TP group, for the sequence-parallel reduction
  NormConfig config_;
  Parameter gamma_, beta_;  // beta only for LayerNorm
};

}  // namespace weft
