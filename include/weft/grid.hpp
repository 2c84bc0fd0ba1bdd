// ParallelGrid: the world split into tensor x data x pipeline groups, one communicator per axis.
#pragma once

#include <memory>

#include "weft/comm.hpp"

namespace weft {

// world = tp x dp x pp. Rank order follows Megatron-LM: tensor-parallel rank varies fastest
// (tp_rank = rank % tp, so a TP group is consecutive ranks, i.e. one node's GPUs), then data
// parallel, then pipeline slowest (pp_rank = rank / (tp * dp)).
class ParallelGrid {
 public:
  // Collective over `world`. Throws weft::Error on every rank (before any communication) when
  // tp or pp is not positive or world.size() is not divisible by tp * pp.
  ParallelGrid(Communicator& world, int tp, int pp = 1);

  int world_size() const { return world_size_; }
  int rank() const { return rank_; }
  int tp_size() const { return tp_; }
  int pp_size() const { return pp_; }
  int dp_size() const { return dp_; }
  int tp_rank() const { return rank_ % tp_; }
  int dp_rank() const { return (rank_ / tp_) % dp_; }
  int pp_rank() const { return rank_ / (tp_ * dp_); }
  // The world rank at given coordinates.
  int rank_of(int tp_rank, int dp_rank, int pp_rank) const;

  Communicator& world() const { return *world_; }
  Communicator& tp() const { return *tp_comm_; }
  Communicator& dp() const { return *dp_comm_; }
  Communicator& pp() const { return *pp_comm_; }

 private:
  Communicator* world_;
  int world_size_, rank_, tp_, pp_, dp_;
  std::unique_ptr<Communicator> tp_comm_, dp_comm_, pp_comm_;
};

}  // namespace weft
