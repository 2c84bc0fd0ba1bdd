// The conjugate mappings between replicated and tensor-parallel regions.
#include "weft/mappings.hpp"

#include "weft/error.hpp"
#include "weft/partition.hpp"

namespace weft {

void copy_to_tp_region_backward(const ParallelContext& ctx, TensorView grad) {
  if (ctx.tp.size() == 1) return;
  ctx.tp.all_reduce(grad, grad, ReduceOp::kSum, ctx.backend.stream());
}

void reduce_from_tp_region_forward(const ParallelContext& ctx, TensorView x) {
  if (ctx.tp.size() == 1) return;
  ctx.tp.all_reduce(x, x, ReduceOp::kSum, ctx.backend.stream());
}

Tensor split_last_dim(const ParallelContext& ctx, TensorView full) {
  const int tp = ctx.tp.size();
  const int64_t local_cols =
      divide_exact(full.shape.cols(), tp, "last dimension", "the tensor-parallel size");
  Tensor local(ctx.backend, full.shape.with_dim(-1, local_cols), full.dtype);
  ctx.backend.copy_columns(local, 0, full, local_cols * ctx.tp.rank(), local_cols);
  return local;
}

Tensor gather_last_dim(const ParallelContext& ctx, TensorView local) {
  const int tp = ctx.tp.size();
  const int64_t cols = local.shape.cols();
  Tensor full(ctx.backend, local.shape.with_dim(-1, cols * tp), local.dtype);
  if (tp == 1) {
    ctx.backend.copy(full, local);
    return full;
  }
  // Collectives concatenate along the slowest dimension; regroup rank blocks into columns.
  Tensor stacked(ctx.backend, Shape({tp * local.shape.rows(), cols}), local.dtype);
  ctx.tp.all_gather(local, stacked, ctx.backend.stream());
  const TensorView full2d = full.view().reshaped(Shape({local.shape.rows(), cols * tp}));
  for (int r = 0; r < tp; ++r) {
    ctx.backend.copy_columns(
        full2d, r * cols, stacked.view().rows(r * local.shape.rows(), local.shape.rows()), 0, cols);
  }
  return full;
}

}  // namespace weft
