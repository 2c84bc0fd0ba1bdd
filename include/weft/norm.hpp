// LayerNorm and RMSNorm over the hidden dimension, with replicated parameters.
#pragma once

#include <string>
#include <vector>

#include "weft/backend.hpp"
#include "weft/mappings.hpp"
#include "weft/parameter.hpp"

namespace weft {

enum class NormKind { kLayerNorm, kRMSNorm };

struct NormConfig {
  int64_t hidden = 0;
  NormKind kind = NormKind::kLayerNorm;
  float eps = 1e-5f;
  DType dtype = DType::kF32;
  std::string name = "norm";
  // TP ranks holding a copy (Parameter::replica_count). Without sequence parallelism every rank
  // sees the same input, so the copies' gradients agree and need no reduction.
  int replicas = 1;
  // Sequence parallelism: each TP rank normalizes its own rows, so its parameter gradients are
  // partial sums over those rows; backward all-reduces them across TP (Megatron-LM issue 1446: a
  // missing reduction lets the copies drift apart). Needs the ParallelContext constructor.
  bool sequence_parallel = false;
};

// gamma starts at 1 and beta at 0. Runs on whatever the input rows are; no communication in
// forward, and in backward only the sequence-parallel gradient reduction.
class Norm {
 public:
  Norm(Backend& backend, NormConfig config);
  Norm(const ParallelContext& ctx, NormConfig config);

  Tensor forward(TensorView x);             // [rows, hidden] -> [rows, hidden]
  Tensor backward(TensorView grad_output);  // accumulates the parameter gradients

  const NormConfig& config() const { return config_; }
  std::vector<Parameter*> parameters();
  std::vector<TensorView> saved_activations() const;
  int64_t saved_activation_bytes() const { return distinct_bytes(saved_activations()); }

 private:
  Backend& backend_;
  Communicator* tp_ = nullptr;  // the TP group, for the sequence-parallel reduction
  NormConfig config_;
  Parameter gamma_, beta_;  // beta only for LayerNorm
  TensorView saved_input_;
  Tensor mean_, rstd_;
};

}  // namespace weft
