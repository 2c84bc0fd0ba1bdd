// Megatron's conjugate mappings between replicated and tensor-parallel regions, as explicit
// forward/backward pairs. Each backward is the dual collective of its forward:
//
//   mapping                     forward                        backward
//   copy_to_tp_region           identity                       all-reduce
//   reduce_from_tp_region       all-reduce                     identity
//   scatter_to_tp_region        keep own slice of last dim     all-gather along last dim
//   gather_from_tp_region       all-gather along last dim      keep own slice of last dim
//
// Identity halves need no function. Inputs are [rows, cols] (leading dims folded into rows);
// "full" means cols = global width, "local" cols = global / tp.
#pragma once

#include "weft/backend.hpp"
#include "weft/comm.hpp"

namespace weft {

// What a tensor-parallel layer works with: the local math and its TP group.
struct ParallelContext {
  Backend& backend;
  Communicator& tp;
};

// copy_to_tp_region backward, in place: sum the gradient over TP ranks.
void copy_to_tp_region_backward(const ParallelContext& ctx, TensorView grad);
// reduce_from_tp_region forward, in place: sum the partial results over TP ranks.
void reduce_from_tp_region_forward(const ParallelContext& ctx, TensorView x);

// Own slice of the last dimension: full [rows, n] -> local [rows, n / tp]. Throws when n is not
// divisible by tp. scatter_to_tp_region forward and gather_from_tp_region backward.
Tensor split_last_dim(const ParallelContext& ctx, TensorView full);
// All-gather along the last dimension: local [rows, c] -> full [rows, c * tp], rank r's columns
// at [r*c, (r+1)*c). gather_from_tp_region forward and scatter_to_tp_region backward.
Tensor gather_last_dim(const ParallelContext& ctx, TensorView local);

}  // namespace weft
