// Fused all-gather + GEMM and GEMM + reduce-scatter that overlap the communication with the
// computation, and the ring exchanges they are made of.
//
// The decomposition of Wang et al. (ASPLOS 2023) as in Flux and TransformerEngine's ring-exchange
// overlap, written only with send/recv through the Communicator: no NVLink, peer memory or
// special kernels, so it works across nodes and on any backend. A row-sharded operand (a
// sequence-parallel activation: rank r holds row block r of [m, ...], m = tp * block) travels
// around the TP ring, one block per step (send to rank + 1, receive from rank - 1, one group per
// step started with Communicator::group_end_async), while each rank multiplies the block it
// already holds. On a GPU the transfers run on the communicator's stream next to the GEMMs; with
// MPI (host memory) they advance inside the MPI calls that OverlapProgress makes between pieces
// of the GEMMs.
//
// Shapes are 2D row-major (leading dimensions folded into rows). "Block j" is rows
// [j * m/tp, (j+1) * m/tp) of a full [m, ...] tensor. All ranks of ctx.tp call these together.
#pragma once

#include <functional>
#include <memory>

#include "weft/comm.hpp"
#include "weft/mappings.hpp"

namespace weft {

// What the compute of a ring step uses to keep the step's transfer moving. gemm() runs a GEMM;
// when the transfer needs the host to progress it (MPI), the GEMM is split into row pieces with
// PendingGroup::test() between them, so that a rendezvous transfer starts while the GEMM runs
// rather than at the step's end. Without a transfer in flight, or with NCCL, it is one GEMM.
class OverlapProgress {
 public:
  OverlapProgress(Backend& backend, PendingGroup* pending, bool host_progress)
      : backend_(backend), pending_(pending), host_progress_(host_progress) {}

  void gemm(const GemmArgs& args) const;
  void poll() const;  // PendingGroup::test() of the step's transfer, when there is one

 private:
  Backend& backend_;
  PendingGroup* pending_;
  bool host_progress_;
};

// consume(block, rows, progress): `rows` [m/tp, cols] holds block `block` of the gathered tensor.
using RowBlockConsumer =
    std::function<void(int block, TensorView rows, const OverlapProgress& progress)>;
// produce(block, partial, progress): writes this rank's partial result for block `block` into
// `partial` [m/tp, cols] (overwriting it).
using RowBlockProducer =
    std::function<void(int block, TensorView partial, const OverlapProgress& progress)>;

// Ring all-gather of row blocks: `local` (this rank's block) travels around the ring while
// consume() runs on each block as it arrives: this rank's own first, then rank - 1, rank - 2, ...
// Block j's transfer overlaps the previous block's consume(). `gathered` [m, cols], when given,
// receives all blocks (and `rows` are views of it); otherwise `rows` point into scratch buffers
// valid during the call only (two blocks of memory instead of tp; pass `gathered` to avoid
// allocating them). `local` may be gathered's own block.
void ring_all_gather_rows(const ParallelContext& ctx, TensorView local,
                          const RowBlockConsumer& consume, TensorView gathered = {});

// Ring reduce-scatter of row blocks: each rank produces its partial result for every block, one
// per step, ending with its own; the partial sums travel and accumulate around the ring (block j
// starts on rank j + 1 and ends on rank j), each transfer overlapping the next block's produce().
// On return `out` [m/tp, cols] holds this rank's block summed over the TP ranks. `workspace`, when
// given, is 3 blocks of out's dtype ([3 * m/tp, cols]) used instead of allocating them (device
// allocation can synchronize the device: pass one in a hot loop).
void ring_reduce_scatter_rows(const ParallelContext& ctx, TensorView out,
                              const RowBlockProducer& produce, TensorView workspace = {});

// C = epilogue(gather_rows(A) op(B)). gemm.a is this rank's row block [m/tp, k] (not transposed);
// gemm.c, and gemm.gelu_input when set, are the full [m, n]: the block from rank j lands in rows
// of block j. Epilogues kNone, kBias, kGelu, kBiasGelu (row-wise, so exact per block); beta is
// allowed. `gathered` [m, k], when given, receives gather_rows(A). The same result as all_gather
// then gemm.
void all_gather_gemm(const ParallelContext& ctx, const GemmArgs& gemm, TensorView gathered = {});

// C = reduce_scatter_rows(A op(B)). gemm.a is [m, k] (not transposed: its rows are the blocks),
// gemm.c is this rank's block [m/tp, n]. Epilogue kNone and beta 0 (a bias goes after the
// reduction). The same result as gemm then reduce_scatter, up to the order of the sum.
// `workspace` as in ring_reduce_scatter_rows.
void gemm_reduce_scatter(const ParallelContext& ctx, const GemmArgs& gemm,
                         TensorView workspace = {});

}  // namespace weft
