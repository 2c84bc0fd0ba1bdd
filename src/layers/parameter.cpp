// Parameter allocation and TP-invariant initialization from the global tensor's random stream.
#include "weft/parameter.hpp"

#include "weft/error.hpp"
#include "weft/partition.hpp"

namespace weft {

Parameter make_parameter(Backend& backend, std::string name, const Shape& global_shape, DType dtype,
                         int partition_dim, int count, int index) {
  Parameter p;
  p.name = std::move(name);
  p.global_shape = global_shape;
  Shape local = global_shape;
  if (partition_dim >= 0) {
    WEFT_CHECK(partition_dim < global_shape.rank(), "parameter ", p.name, ": partition dim ",
               partition_dim, " out of range for ", global_shape.str());
    WEFT_CHECK(partition_dim == 0 || partition_dim == global_shape.rank() - 1, "parameter ", p.name,
               ": only the first or last dimension can be partitioned");
    WEFT_CHECK(index >= 0 && index < count, "parameter ", p.name, ": shard index ", index,
               " outside [0, ", count, ")");
    const std::string what = "parameter " + p.name + " dim " + std::to_string(partition_dim);
    local = global_shape.with_dim(
        partition_dim,
        divide_exact(global_shape[partition_dim], count, what.c_str(), "the tensor-parallel size"));
    p.partition_dim = partition_dim;
    p.partition_count = count;
    p.partition_index = index;
  }
  p.value = Tensor(backend, local, dtype);
  p.grad = Tensor(backend, local, dtype);
  backend.fill(p.grad, 0.0f);
  return p;
}

void init_parameter(Backend& backend, Parameter& param, RandomFill fill) {
  const Shape& global = param.global_shape;
  fill.seed = derive_seed(fill.seed, param.name.c_str());
  fill.global_cols = global.cols();
  fill.row0 = 0;
  fill.col0 = 0;
  if (!param.is_replicated()) {
    const Shape& local = param.value.shape();
    if (param.partition_dim == global.rank() - 1) {
      fill.col0 = local.cols() * param.partition_index;
    } else {  // dimension 0 of a matrix: a block of whole rows
      fill.row0 = local.rows() * param.partition_index;
    }
  }
  backend.fill_random(param.value, fill);
}

void zero_grads(Backend& backend, const std::vector<Parameter*>& params) {
  for (Parameter* p : params) backend.fill(p->grad, 0.0f);
}

}  // namespace weft
