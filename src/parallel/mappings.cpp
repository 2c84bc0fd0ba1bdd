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

namespace {
// Dim 0 of a shape with at least one dimension (a 1D tensor is a column of rows).
Shape with_rows(const Shape& shape, int64_t rows) { return shape.with_dim(0, rows); }
}  // namespace

Tensor gather_rows(const ParallelContext& ctx, TensorView local) {
  WEFT_CHECK(local.shape.rank() >= 1, "gather_rows: ", local.str(), " has no dimension to gather");
  const int tp = ctx.tp.size();
  Tensor full(ctx.backend, with_rows(local.shape, local.shape[0] * tp), local.dtype);
  if (tp == 1) {
    ctx.backend.copy(full, local);
  } else {
    ctx.tp.all_gather(local, full, ctx.backend.stream());
  }
  return full;
}

Tensor reduce_scatter_rows(const ParallelContext& ctx, TensorView full) {
  WEFT_CHECK(full.shape.rank() >= 1, "reduce_scatter_rows: ", full.str(),
             " has no dimension to scatter");
  const int tp = ctx.tp.size();
  const int64_t rows =
      divide_exact(full.shape[0], tp, "rows (dim 0) to reduce-scatter", "the tensor-parallel size");
  Tensor local(ctx.backend, with_rows(full.shape, rows), full.dtype);
  if (tp == 1) {
    ctx.backend.copy(local, full);
  } else {
    ctx.tp.reduce_scatter(full, local, ReduceOp::kSum, ctx.backend.stream());
  }
  return local;
}

Tensor split_rows(const ParallelContext& ctx, TensorView full) {
  WEFT_CHECK(full.shape.rank() >= 1, "split_rows: ", full.str(), " has no dimension to split");
  const int64_t rows = divide_exact(full.shape[0], ctx.tp.size(), "rows (dim 0) to split",
                                    "the tensor-parallel size");
  Tensor local(ctx.backend, with_rows(full.shape, rows), full.dtype);
  const int64_t row_elems = full.numel() / full.shape[0];
  const TensorView flat = full.reshaped(Shape({full.shape[0], row_elems}));
  ctx.backend.copy(local.view().reshaped(Shape({rows, row_elems})),
                   flat.rows(rows * ctx.tp.rank(), rows));
  return local;
}

void check_sequence_parallel_seq(int64_t seq, int tp, const std::string& who) {
  WEFT_CHECK(seq % tp == 0, who, ": sequence parallelism needs the sequence length (seq ", seq,
             ") to be divisible by the tensor-parallel size (tp ", tp,
             "), so that every rank holds whole positions");
}

}  // namespace weft
