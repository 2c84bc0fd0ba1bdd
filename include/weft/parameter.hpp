// Parameter: a weight shard with its gradient and the sharding metadata that says where it sits.
#pragma once

#include <string>
#include <vector>

#include "weft/backend.hpp"
#include "weft/comm.hpp"
#include "weft/tensor.hpp"

namespace weft {

// The sharding metadata is the single source for TP-invariant initialization, resharding
// checkpoints and counting replicated parameters once in a global gradient norm.
struct Parameter {
  std::string name;        // unique within a model: "mlp.fc1.weight"
  Tensor value;            // this rank's shard
  Tensor grad;             // same shape; backward accumulates into it
  Shape global_shape;      // the unsharded tensor
  int partition_dim = -1;  // dimension split across TP ranks; -1 when replicated
  int partition_count = 1;
  int partition_index = 0;
  // How many ranks of the TP group hold this exact tensor: 1 for a plain shard, the TP size for a
  // replicated parameter, tp / kv_heads for key/value heads shared by several ranks. The global
  // gradient norm divides each rank's sum of squares by it, so every value counts once.
  int replica_count = 1;

  bool is_replicated() const { return partition_dim < 0; }
};

// Allocates value and grad (grad zeroed) for the shard of `global_shape` split along
// `partition_dim` (-1: replicated) into `count` parts, of which this rank holds `index`.
Parameter make_parameter(Backend& backend, std::string name, const Shape& global_shape, DType dtype,
                         int partition_dim, int count, int index);

// Fills the shard with its window of the global tensor drawn from `fill` (fill.seed is combined
// with the parameter's name, so distinct parameters draw distinct numbers). Gives the same global
// tensor at every tensor-parallel size.
void init_parameter(Backend& backend, Parameter& param, RandomFill fill);

void zero_grads(Backend& backend, const std::vector<Parameter*>& params);

// L2 norm of the gradients of `params` over the ranks of `groups` (summed over each group in
// turn: TP, then PP), every value counted once: each rank's sum of squares is divided by its
// parameters' replica_count. The squares are summed on the device, with one copy to the host.
float global_grad_norm(Backend& backend, const std::vector<Parameter*>& params,
                       const std::vector<Communicator*>& groups);

}  // namespace weft
