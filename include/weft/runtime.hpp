// make_runtime: the one place a program picks its engine, the backend and the communicator its
// layers use (CPU + MPI; or a GPU + NCCL, or MPI staged through host memory when ranks share a
// GPU).
#pragma once

#include <memory>
#include <string>

#include "weft/backend.hpp"
#include "weft/comm.hpp"

namespace weft {

struct RuntimeOptions {
  // The communicator: "auto", "mpi" (cpu), "nccl" or "mpi-staged" (cuda). "auto" on cuda reads the
  // environment variable WEFT_COMM when set, else picks NCCL when every rank of a node has a GPU of
  // its own and "mpi-staged" when ranks share one (NCCL refuses two ranks on one device).
  std::string comm = "auto";
};

struct Runtime {
  std::unique_ptr<Backend> backend;
  // All ranks of the host world, moving buffers in the backend's memory: what the layers use.
  std::unique_ptr<Communicator> world;
  // What was chosen and why, one line, e.g. "cuda:0 + mpi-staged (2 ranks share 1 GPU)".
  std::string description;
  // The memory one rank may plan with: cpu, the node's MemTotal over the ranks on the node; cuda,
  // the GPU's memory over the ranks of the node that use it. The smallest over all ranks, so that
  // every rank decides alike; 0 when unknown.
  int64_t memory_per_rank_bytes = 0;

  // A group of this rank alone that moves buffers in the backend's memory (unsharded references,
  // single-rank runs): the self communicator, staged through host memory on a GPU.
  std::unique_ptr<Communicator> make_self() const;
};

// engine "cpu": oneDNN + MPI. "cuda": GPU (rank on its node) % (visible GPUs), with the
// communicator `options.comm` selects. Collective over `host_world` (host buffers: the MPI world
// or a self communicator); every rank agrees on the choice, and a bad choice (no GPU, NCCL asked
// for ranks that share a GPU, an unknown name) throws weft::Error on every rank. The choice is
// logged at info level on rank 0.
Runtime make_runtime(const std::string& engine, Communicator& host_world,
                     const RuntimeOptions& options = {});

// Collective over `host_world`: whether every rank sees at least one GPU (always false without
// CUDA). For programs that run the cuda engine only where it exists.
bool cuda_on_every_rank(Communicator& host_world);

// Collective over `host_world` (MPI, or a world of one): how many of its ranks run on this rank's
// node (they share its memory).
int ranks_on_this_node(Communicator& host_world);

// This node's memory, MemTotal of /proc/meminfo, in bytes (0 when unreadable).
int64_t host_memory_bytes();

}  // namespace weft
