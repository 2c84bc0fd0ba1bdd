// Column- and row-parallel projections: GEMMs with their plain, sequence-parallel or overlapped
// communication.
#include "layers/tp_linear_ops.hpp"

#include "weft/error.hpp"
#include "weft/overlap.hpp"
#include "weft/partition.hpp"

namespace weft {

namespace {

TensorView as_2d(const TensorView& v) {
  return v.shape.rank() == 2 ? v : v.reshaped(Shape({v.shape.rows(), v.shape.cols()}));
}

// At TP 1 every mapping is the identity: take the plain path, with no copies.
TpCommOptions effective(const ParallelContext& ctx, TpCommOptions options) {
  return ctx.tp.size() == 1 ? TpCommOptions{} : options;
}

// Runs a GEMM through `progress` (pieces between transfer progress) or directly.
void run_gemm(Backend& backend, const OverlapProgress* progress, const GemmArgs& g) {
  if (progress != nullptr) {
    progress->gemm(g);
  } else {
    backend.gemm(g);
  }
}

// out rows [row0, row0 + rows) of a projection from `x_rows`.
void project_rows(Backend& backend, const OverlapProgress* progress, const ColumnProjection& p,
                  TensorView x_rows, int64_t row0) {
  const int64_t rows = x_rows.shape.rows();
  GemmArgs g;
  g.a = x_rows;
  g.b = p.weight;
  g.transpose_b = true;
  g.c = as_2d(p.out).rows(row0, rows);
  g.epilogue = p.epilogue;
  g.bias = p.bias;
  if (p.gelu_input.data != nullptr) g.gelu_input = as_2d(p.gelu_input).rows(row0, rows);
  run_gemm(backend, progress, g);
}

// weight_grad += grad^T x; bias_grad += column sums of grad (rows of one block or all rows).
void accumulate_weight_grads(Backend& backend, const OverlapProgress* progress, TensorView grad,
                             TensorView x, TensorView weight_grad, TensorView bias_grad) {
  GemmArgs g;
  g.a = grad;
  g.transpose_a = true;
  g.b = x;
  g.c = weight_grad;
  g.beta = 1.0f;
  Tensor bias_delta;
  if (bias_grad.data != nullptr) {
    bias_delta = Tensor(backend, bias_grad.shape, bias_grad.dtype);
    g.epilogue = Epilogue::kBiasGrad;
    g.bias_grad = bias_delta;
  }
  run_gemm(backend, progress, g);
  if (bias_grad.data != nullptr) backend.add(bias_grad, bias_grad, bias_delta);
}

// dst [rows, k] = sum over the projections of grad_i[row0 : row0 + rows] W_i.
void input_grad_rows(Backend& backend, const OverlapProgress* progress,
                     const std::vector<ColumnGradient>& gradients, TensorView dst, int64_t row0) {
  const int64_t rows = dst.shape.rows();
  for (size_t i = 0; i < gradients.size(); ++i) {
    GemmArgs g;
    g.a = as_2d(gradients[i].grad).rows(row0, rows);
    g.b = gradients[i].weight;
    g.c = dst;
    g.beta = i == 0 ? 0.0f : 1.0f;
    run_gemm(backend, progress, g);
  }
}

}  // namespace

void column_forward(const ParallelContext& ctx, TpCommOptions options, TensorView x,
                    const std::vector<ColumnProjection>& projections) {
  options = effective(ctx, options);
  Backend& backend = ctx.backend;
  const TensorView x2d = as_2d(x);
  if (!options.sequence_parallel) {
    for (const ColumnProjection& p : projections) project_rows(backend, nullptr, p, x2d, 0);
    return;
  }
  if (!options.overlap) {
    const Tensor full = gather_rows(ctx, x2d);
    for (const ColumnProjection& p : projections) project_rows(backend, nullptr, p, full, 0);
    return;
  }
  const int64_t block_rows = x2d.shape.rows();
  if (projections.size() == 1) {
    const ColumnProjection& p = projections.front();
    GemmArgs g;
    g.a = x2d;
    g.b = p.weight;
    g.transpose_b = true;
    g.c = p.out;
    g.epilogue = p.epilogue;
    g.bias = p.bias;
    g.gelu_input = p.gelu_input;
    all_gather_gemm(ctx, g);
    return;
  }
  ring_all_gather_rows(ctx, x2d, [&](int block, TensorView rows, const OverlapProgress& progress) {
    for (const ColumnProjection& p : projections) {
      project_rows(backend, &progress, p, rows, block * block_rows);
    }
  });
}

Tensor column_backward(const ParallelContext& ctx, TpCommOptions options, TensorView x,
                       const std::vector<ColumnGradient>& gradients) {
  WEFT_ASSERT(!gradients.empty(), "column_backward without gradients");
  options = effective(ctx, options);
  Backend& backend = ctx.backend;
  const int tp = ctx.tp.size(), rank = ctx.tp.rank();
  const TensorView x2d = as_2d(x);
  const int64_t m = gradients.front().grad.shape.rows(), k = x2d.shape.cols();
  auto weight_grads = [&](const OverlapProgress* progress, TensorView x_rows, int64_t row0) {
    for (const ColumnGradient& g : gradients) {
      accumulate_weight_grads(backend, progress, as_2d(g.grad).rows(row0, x_rows.shape.rows()),
                              x_rows, g.weight_grad, g.bias_grad);
    }
  };

  if (options.sequence_parallel) {
    const int64_t block_rows = x2d.shape.rows();
    WEFT_CHECK(m == block_rows * tp, "column_backward: gradient has ", m,
               " rows, the sequence-parallel input ", block_rows, " x tp ", tp);
    if (!options.overlap) {
      // The input was kept as this rank's rows only: gather it again for the weight gradients.
      const Tensor x_full = gather_rows(ctx, x2d);
      Tensor full(backend, Shape({m, k}), x2d.dtype);
      input_grad_rows(backend, nullptr, gradients, full, 0);
      weight_grads(nullptr, x_full, 0);
      return reduce_scatter_rows(ctx, full);
    }
    // The input's blocks travel while the weight gradient of the block at hand is computed; then
    // the input gradient's partial blocks travel while the next block's partial is computed.
    Tensor grad_input(backend, Shape({block_rows, k}), x2d.dtype);
    ring_all_gather_rows(ctx, x2d,
                         [&](int block, TensorView rows, const OverlapProgress& progress) {
                           weight_grads(&progress, rows, block * block_rows);
                         });
    ring_reduce_scatter_rows(
        ctx, grad_input, [&](int block, TensorView partial, const OverlapProgress& progress) {
          input_grad_rows(backend, &progress, gradients, partial, block * block_rows);
        });
    return grad_input;
  }

  WEFT_CHECK(x2d.shape.rows() == m, "column_backward: gradient has ", m, " rows, the input ",
             x2d.shape.rows());
  Tensor grad_input(backend, Shape({m, k}), x2d.dtype);
  if (!options.overlap || m % tp != 0) {
    input_grad_rows(backend, nullptr, gradients, grad_input, 0);
    weight_grads(nullptr, x2d, 0);
    copy_to_tp_region_backward(ctx, grad_input);
    return grad_input;
  }
  // The all-reduce as a ring reduce-scatter overlapping the input-gradient GEMM, then a ring
  // all-gather overlapping the weight-gradient GEMM (by blocks of rows).
  const int64_t block_rows = m / tp;
  const TensorView own = grad_input.view().rows(rank * block_rows, block_rows);
  ring_reduce_scatter_rows(
      ctx, own, [&](int block, TensorView partial, const OverlapProgress& progress) {
        input_grad_rows(backend, &progress, gradients, partial, block * block_rows);
      });
  ring_all_gather_rows(
      ctx, own,
      [&](int block, TensorView, const OverlapProgress& progress) {
        weight_grads(&progress, x2d.rows(block * block_rows, block_rows), block * block_rows);
      },
      grad_input);
  return grad_input;
}

Tensor row_forward(const ParallelContext& ctx, TpCommOptions options, TensorView x,
                   TensorView weight) {
  options = effective(ctx, options);
  Backend& backend = ctx.backend;
  const int tp = ctx.tp.size(), rank = ctx.tp.rank();
  const TensorView x2d = as_2d(x);
  const int64_t m = x2d.shape.rows(), n = weight.shape.rows();
  GemmArgs g;
  g.a = x2d;
  g.b = weight;
  g.transpose_b = true;
  if (options.sequence_parallel) {
    if (options.overlap) {
      const int64_t block_rows =
          divide_exact(m, tp, "rows of the row-parallel output", "the tensor-parallel size");
      Tensor out(backend, Shape({block_rows, n}), x2d.dtype);
      g.c = out;
      gemm_reduce_scatter(ctx, g);
      return out;
    }
    Tensor partial(backend, Shape({m, n}), x2d.dtype);
    g.c = partial;
    backend.gemm(g);
    return reduce_scatter_rows(ctx, partial);
  }
  Tensor out(backend, Shape({m, n}), x2d.dtype);
  if (options.overlap && m % tp == 0) {
    // The all-reduce as a reduce-scatter overlapping the GEMM, then an all-gather (in place).
    const int64_t block_rows = m / tp;
    g.c = out.view().rows(rank * block_rows, block_rows);
    gemm_reduce_scatter(ctx, g);
    ctx.tp.all_gather(g.c, out, backend.stream());
    return out;
  }
  g.c = out;
  backend.gemm(g);
  reduce_from_tp_region_forward(ctx, out);
  return out;
}

Tensor row_backward(const ParallelContext& ctx, TpCommOptions options, TensorView grad,
                    TensorView x, TensorView weight, TensorView weight_grad, TensorView bias_grad) {
  options = effective(ctx, options);
  Backend& backend = ctx.backend;
  const TensorView grad2d = as_2d(grad), x2d = as_2d(x);
  const int64_t m = x2d.shape.rows(), k_local = weight.shape.cols();
  WEFT_CHECK(grad2d.shape.rows() * (options.sequence_parallel ? ctx.tp.size() : 1) == m,
             "row_backward: gradient ", grad.str(), " does not match the input's ", m, " rows",
             options.sequence_parallel ? " (this rank's block under sequence parallelism)" : "");
  Tensor grad_input(backend, Shape({m, k_local}), x2d.dtype);
  auto block = [&](const OverlapProgress* progress, TensorView grad_rows, int64_t row0,
                   TensorView bias_target) {
    GemmArgs g;  // this rank's input features of these rows: complete, no reduction
    g.a = grad_rows;
    g.b = weight;
    g.c = grad_input.view().rows(row0, grad_rows.shape.rows());
    run_gemm(backend, progress, g);
    accumulate_weight_grads(backend, progress, grad_rows, x2d.rows(row0, grad_rows.shape.rows()),
                            weight_grad, bias_target);
  };
  if (!options.sequence_parallel) {
    block(nullptr, grad2d, 0, bias_grad);
  } else if (!options.overlap) {
    block(nullptr, gather_rows(ctx, grad2d), 0, bias_grad);
  } else {
    // The replicated bias must get the same gradient, bit for bit, on every rank; but the ring
    // brings the blocks in a different order to each. So each block's column sums go to a row of
    // their own, added up in block order at the end.
    const int64_t block_rows = grad2d.shape.rows();
    Tensor block_bias;
    if (bias_grad.data != nullptr) {
      block_bias = Tensor(backend, Shape({ctx.tp.size(), bias_grad.numel()}), bias_grad.dtype);
      backend.fill(block_bias, 0.0f);
    }
    auto bias_row = [&](int j) {
      return block_bias.defined() ? block_bias.view().rows(j, 1).reshaped(bias_grad.shape)
                                  : TensorView{};
    };
    ring_all_gather_rows(ctx, grad2d, [&](int j, TensorView rows, const OverlapProgress& progress) {
      block(&progress, rows, j * block_rows, bias_row(j));
    });
    for (int j = 0; block_bias.defined() && j < ctx.tp.size(); ++j) {
      backend.add(bias_grad, bias_grad, bias_row(j));
    }
  }
  return grad_input;
}

}  // namespace weft
