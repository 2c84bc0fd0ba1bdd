// ParallelConfig: the settings every parallel layer shares (Megatron's ModelParallelConfig).
#pragma once

#include <cstdint>

#include "weft/dtype.hpp"

namespace weft {

// The layer configurations derive from it, so a model passes it down whole (one assignment)
// instead of copying its fields one by one into every sub-layer.
struct ParallelConfig {
  DType dtype = DType::kF32;  // parameters and activations
  uint64_t seed = 1234;       // initialization: weights ~ N(0, init_std), drawn per global index
  float init_std = 0.02f;
  // Sequence parallelism (Korthikanti et al. 2022): the replicated activations (norms, dropout,
  // residuals) are split along the sequence across the TP ranks; see linear.hpp.
  bool sequence_parallel = false;
  // Overlap the tensor-parallel communication with the GEMMs (overlap.hpp).
  bool tp_comm_overlap = false;

  ParallelConfig& parallel() { return *this; }
  const ParallelConfig& parallel() const { return *this; }
};

}  // namespace weft
