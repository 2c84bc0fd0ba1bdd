// LayerNorm and RMSNorm over the hidden dimension, with replicated parameters.
#pragma once

#include <string>
#include <vector>

#include "weft/backend.hpp"
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
};

// gamma starts at 1 and beta at 0. Runs on whatever the input rows are; no communication.
class Norm {
 public:
  Norm(Backend& backend, NormConfig config);

  Tensor forward(TensorView x);             // [rows, hidden] -> [rows, hidden]
  Tensor backward(TensorView grad_output);  // accumulates the parameter gradients

  const NormConfig& config() const { return config_; }
  std::vector<Parameter*> parameters();

 private:
  Backend& backend_;
  NormConfig config_;
  Parameter gamma_, beta_;  // beta only for LayerNorm
  TensorView saved_input_;
  Tensor mean_, rstd_;
};

}  // namespace weft
