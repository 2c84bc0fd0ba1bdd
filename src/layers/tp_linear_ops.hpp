// The math of column- and row-parallel projections with the communication around them: plain
// (all-reduce), sequence-parallel (all-gather / reduce-scatter of rows), and either one overlapped
// with the GEMMs (overlap.hpp). Shared by the linear layers, the attention's replicated-kv
// projection, SwiGLU's gate and up projections and the tied LM head.
#pragma once

#include <vector>

#include "weft/backend.hpp"
#include "weft/mappings.hpp"

namespace weft {

struct TpCommOptions {
  // The input of a column projection and the output of a row projection are this rank's rows
  // (m / tp of them) instead of all m rows.
  bool sequence_parallel = false;
  // Overlap the communication with the GEMMs (ring exchanges, overlap.hpp).
  bool overlap = false;
};

// One weight applied to the input of a column-parallel projection: out = epilogue(x W^T + bias).
struct ColumnProjection {
  TensorView weight;                    // [n, k], this rank's output features
  TensorView bias;                      // [n] or empty
  Epilogue epilogue = Epilogue::kNone;  // kNone, kBias, kGelu, kBiasGelu
  TensorView out;                       // [m, n]: all rows
  TensorView gelu_input;                // [m, n] or empty
};

// x [m_x, k]: m_x = m / tp rows under sequence parallelism (gathered here), else m. Several
// projections of one input share its gather.
void column_forward(const ParallelContext& ctx, TpCommOptions options, TensorView x,
                    const std::vector<ColumnProjection>& projections);

struct ColumnGradient {
  TensorView grad;         // [m, n]: gradient of the projection's output, all rows
  TensorView weight;       // [n, k]
  TensorView weight_grad;  // [n, k], accumulated (may be f32 for a 16-bit weight)
  TensorView bias_grad;    // [n] of weight_grad's dtype, accumulated; or empty
};

// Backward of column_forward. x is the forward input as saved ([m / tp, k] under sequence
// parallelism: re-gathered here for the weight gradients). Accumulates the weight and bias
// gradients and returns the input gradient: this rank's rows [m / tp, k], reduce-scattered, under
// sequence parallelism; else [m, k], all-reduced.
Tensor column_backward(const ParallelContext& ctx, TpCommOptions options, TensorView x,
                       const std::vector<ColumnGradient>& gradients);

// out = reduce over TP ranks of x W^T, x [m, k_local], W [n, k_local]: this rank's rows
// [m / tp, n] (reduce-scattered) under sequence parallelism, else [m, n] (all-reduced). No bias.
Tensor row_forward(const ParallelContext& ctx, TpCommOptions options, TensorView x,
                   TensorView weight);

// Backward of row_forward: grad is [m / tp, n] under sequence parallelism (gathered here), else
// [m, n]. Returns dX [m, k_local]; accumulates weight_grad and bias_grad (the column sums of the
// whole gradient, all m rows, so the replicated bias gets the same gradient on every rank).
Tensor row_backward(const ParallelContext& ctx, TpCommOptions options, TensorView grad,
                    TensorView x, TensorView weight, TensorView weight_grad, TensorView bias_grad);

}  // namespace weft
