// Parameter allocation and TP-invariant initialization from the global tensor's random stream.
#include "weft/parameter.hpp"

#include <cmath>

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

float global_grad_norm(Backend& backend, const std::vector<Parameter*>& params,
                       const std::vector<Communicator*>& groups) {
  const int64_t n = static_cast<int64_t>(params.size());
  double local = 0.0;
  if (n > 0) {
    Tensor squares(backend, Shape({n, 1}), DType::kF32);
    for (int64_t i = 0; i < n; ++i) {
      backend.sum_squares(squares.view().rows(i, 1), params[static_cast<size_t>(i)]->grad);
    }
    std::vector<float> host(static_cast<size_t>(n));
    backend.copy(TensorView{host.data(), squares.shape(), DType::kF32, Device::cpu()}, squares);
    for (int64_t i = 0; i < n; ++i) {
      local += static_cast<double>(host[static_cast<size_t>(i)]) /
               params[static_cast<size_t>(i)]->replica_count;
    }
  }
  float total = static_cast<float>(local);
  for (Communicator* group : groups) {
    if (group->size() > 1) total = all_reduce_scalar(*group, backend, total, ReduceOp::kSum);
  }
  return std::sqrt(total);
}

}  // namespace weft
