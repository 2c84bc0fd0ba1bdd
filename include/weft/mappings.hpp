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
//
// Sequence parallelism (Korthikanti et al. 2022) splits the replicated regions (norms, dropout,
// residuals) along the sequence instead: activations are [seq * batch, hidden] with rows ordered
// (position, batch), so a contiguous block of rows is a block of positions, and TP rank r holds
// rows [r S/t, (r+1) S/t) of the S = seq * batch (seq divisible by t). Its mappings, along dim 0:
//
//   mapping                     forward                        backward
//   gather_rows                 all-gather along dim 0         reduce_scatter_rows
//   reduce_scatter_rows         reduce-scatter along dim 0     gather_rows
//   split_rows                  keep own block of dim 0        gather_rows
#pragma once

#include <string>

#include "weft/backend.hpp"
#include "weft/comm.hpp"

namespace weft {

// What a tensor-parallel layer works with: the local math and its TP group.
struct ParallelContext {
  Backend& backend;
  Communicator& tp;
};

// Per call: whether a forward follows the layer's configured sequence parallelism or runs on all
// rows (KV-cache decoding, where one new position cannot be split across ranks). The parameters
// are the same either way.
enum class SequenceParallel { kAsConfigured, kOff };

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

// All-gather along dim 0: local [r, ...] -> full [r * tp, ...], rank j's block at rows
// [j*r, (j+1)*r). Sequence-parallel region -> full sequence.
Tensor gather_rows(const ParallelContext& ctx, TensorView local);
// Reduce-scatter along dim 0: full [R, ...] partial sums -> this rank's block [R / tp, ...] of the
// sum over TP ranks. Throws when R is not divisible by tp.
Tensor reduce_scatter_rows(const ParallelContext& ctx, TensorView full);
// Own block of dim 0: full [R, ...] -> [R / tp, ...] (a copy). Throws when R is not divisible by
// tp.
Tensor split_rows(const ParallelContext& ctx, TensorView full);

// Sequence parallelism needs whole positions on every rank: throws weft::Error naming `who`, seq
// and tp unless seq is divisible by tp. Every rank checks the same values before communicating,
// so a bad length fails on all of them instead of hanging one in a collective.
void check_sequence_parallel_seq(int64_t seq, int tp, const std::string& who);

}  // namespace weft
