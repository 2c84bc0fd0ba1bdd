// ParallelGrid: rank coordinates and one communicator per parallel axis.
#include "weft/grid.hpp"

#include "weft/error.hpp"

namespace weft {

ParallelGrid::ParallelGrid(Communicator& world, int tp, int pp)
    : world_(&world), world_size_(world.size()), rank_(world.rank()), tp_(tp), pp_(pp) {
  // Checked before any communication: every rank sees the same numbers and throws alike.
  WEFT_CHECK(tp > 0, "tensor-parallel size must be positive, got ", tp);
  WEFT_CHECK(pp > 0, "pipeline-parallel size must be positive, got ", pp);
  WEFT_CHECK(world_size_ % (tp * pp) == 0, "world size (", world_size_,
             ") must be divisible by tensor-parallel size (", tp, ") x pipeline-parallel size (",
             pp, ") = ", tp * pp);
  dp_ = world_size_ / (tp * pp);
  // Color = the coordinates that stay fixed inside the group; key = position inside it.
  tp_comm_ = world.split(pp_rank() * dp_ + dp_rank(), tp_rank());
  dp_comm_ = world.split(pp_rank() * tp_ + tp_rank(), dp_rank());
  pp_comm_ = world.split(dp_rank() * tp_ + tp_rank(), pp_rank());
}

int ParallelGrid::rank_of(int tp_rank, int dp_rank, int pp_rank) const {
  WEFT_CHECK(tp_rank >= 0 && tp_rank < tp_ && dp_rank >= 0 && dp_rank < dp_ && pp_rank >= 0 &&
                 pp_rank < pp_,
             "grid coordinates (tp ", tp_rank, ", dp ", dp_rank, ", pp ", pp_rank,
             ") outside the grid tp=", tp_, " dp=", dp_, " pp=", pp_);
  return (pp_rank * dp_ + dp_rank) * tp_ + tp_rank;
}

}  // namespace weft
