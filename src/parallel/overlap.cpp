// Ring all-gather / reduce-scatter of row blocks with compute overlapped, and the fused
// all-gather + GEMM and GEMM + reduce-scatter built on them.
#include "weft/overlap.hpp"

#include <algorithm>

#include "weft/error.hpp"
#include "weft/partition.hpp"

namespace weft {

namespace {

// Rows of a host-progressed GEMM piece: small enough that a rendezvous transfer starts early in
// the step, large enough that the pieces still run at full GEMM speed.
constexpr int64_t kMinPieceRows = 32;
constexpr int64_t kMaxPieces = 4;

TensorView as_2d(const TensorView& v) {
  return v.shape.rank() == 2 ? v : v.reshaped(Shape({v.shape.rows(), v.shape.cols()}));
}

// Elements [begin, begin + count) of a vector.
TensorView elements(const TensorView& v, int64_t begin, int64_t count) {
  TensorView e = v;
  e.data = static_cast<char*>(v.data) + static_cast<size_t>(begin) * dtype_size(v.dtype);
  e.shape = Shape({count});
  return e;
}

struct Ring {
  int tp, rank, next, prev;
  explicit Ring(const Communicator& comm)
      : tp(comm.size()),
        rank(comm.rank()),
        next((comm.rank() + 1) % comm.size()),
        prev((comm.rank() + comm.size() - 1) % comm.size()) {}
};

// One ring step's transfer: send `out` to the next rank, receive `in` from the previous one.
std::unique_ptr<PendingGroup> start_exchange(const ParallelContext& ctx, const Ring& ring,
                                             TensorView out, TensorView in) {
  Stream& stream = ctx.backend.stream();
  ctx.tp.group_start();
  ctx.tp.send(out, ring.next, stream);
  ctx.tp.recv(in, ring.prev, stream);
  return ctx.tp.group_end_async();
}

bool host_progress(const Communicator& comm) { return comm.buffer_device() == DeviceKind::kCpu; }

}  // namespace

void OverlapProgress::gemm(const GemmArgs& args) const {
  const int64_t m = args.c.shape.rows();
  const int64_t pieces = std::min(kMaxPieces, m / kMinPieceRows);
  if (pending_ == nullptr || !host_progress_ || args.transpose_a || pieces < 2) {
    backend_.gemm(args);
    poll();
    return;
  }
  // Row pieces of op(A) = A, C (and the row-indexed epilogue operands).
  const int64_t step = (m + pieces - 1) / pieces;
  const TensorView a = as_2d(args.a), c = as_2d(args.c);
  for (int64_t r0 = 0; r0 < m; r0 += step) {
    // Once the transfer is complete, the rest is one GEMM.
    const int64_t count = pending_->test() ? m - r0 : std::min(step, m - r0);
    GemmArgs piece = args;
    piece.a = a.rows(r0, count);
    piece.c = c.rows(r0, count);
    if (args.gelu_input.data != nullptr) piece.gelu_input = as_2d(args.gelu_input).rows(r0, count);
    if (args.epilogue == Epilogue::kBiasGrad) piece.bias_grad = elements(args.bias_grad, r0, count);
    backend_.gemm(piece);
    if (count == m - r0) break;
  }
  poll();
}

void OverlapProgress::poll() const {
  if (pending_ != nullptr) pending_->test();
}

void ring_all_gather_rows(const ParallelContext& ctx, TensorView local,
                          const RowBlockConsumer& consume, TensorView gathered) {
  const Ring ring(ctx.tp);
  const TensorView own = as_2d(local);
  const int64_t rows = own.shape.rows(), cols = own.shape.cols();
  TensorView full;
  if (gathered.data != nullptr) {
    full = as_2d(gathered);
    WEFT_CHECK(full.shape == Shape({rows * ring.tp, cols}) && full.dtype == own.dtype &&
                   full.device == own.device,
               "ring_all_gather_rows: gathered ", gathered.str(), " must be ",
               dtype_name(own.dtype), "[", rows * ring.tp, ", ", cols, "] on ", own.device.str());
    const TensorView mine = full.rows(ring.rank * rows, rows);
    if (mine.data != own.data) ctx.backend.copy(mine, own);
  }
  Tensor scratch[2];
  if (full.data == nullptr && ring.tp > 1) {
    for (Tensor& t : scratch) t = Tensor(ctx.backend, Shape({rows, cols}), own.dtype);
  }
  // Step s holds block rank - s: in `gathered`, or (own block, then alternating scratch buffers).
  auto block_of = [&](int s) { return (ring.rank - s + ring.tp) % ring.tp; };
  auto held = [&](int s) -> TensorView {
    if (full.data != nullptr) return full.rows(block_of(s) * rows, rows);
    return s == 0 ? own : scratch[(s - 1) % 2].view();
  };
  const bool host = host_progress(ctx.tp);
  for (int s = 0; s < ring.tp; ++s) {
    const TensorView current = held(s);
    std::unique_ptr<PendingGroup> pending;
    // The next block travels while this one is consumed. (The buffer it lands in was last read
    // by the consume() of step s - 1, which the communicator orders before the transfer.)
    if (s + 1 < ring.tp) pending = start_exchange(ctx, ring, current, held(s + 1));
    consume(block_of(s), current, OverlapProgress(ctx.backend, pending.get(), host));
    if (pending) pending->wait();
  }
}

void ring_reduce_scatter_rows(const ParallelContext& ctx, TensorView out,
                              const RowBlockProducer& produce, TensorView workspace) {
  const Ring ring(ctx.tp);
  const TensorView mine = as_2d(out);
  const bool host = host_progress(ctx.tp);
  if (ring.tp == 1) {
    produce(0, mine, OverlapProgress(ctx.backend, nullptr, host));
    return;
  }
  const int64_t rows = mine.shape.rows(), cols = mine.shape.cols();
  Tensor owned;
  if (workspace.data == nullptr) {
    owned = Tensor(ctx.backend, Shape({3 * rows, cols}), mine.dtype);
    workspace = owned;
  }
  WEFT_CHECK(workspace.numel() == 3 * rows * cols && workspace.dtype == mine.dtype &&
                 workspace.device == mine.device,
             "ring_reduce_scatter_rows: workspace ", workspace.str(), " must hold 3 blocks of ",
             mine.str());
  const TensorView blocks = workspace.reshaped(Shape({3 * rows, cols}));
  const TensorView partial[2] = {blocks.rows(0, rows), blocks.rows(rows, rows)};
  const TensorView incoming = blocks.rows(2 * rows, rows);
  for (int s = 0; s < ring.tp; ++s) {
    // Step s works on block rank - s - 1, so the last step's is this rank's own.
    const int block = (ring.rank - s - 1 + 2 * ring.tp) % ring.tp;
    const TensorView dest = s + 1 == ring.tp ? mine : partial[s % 2];
    std::unique_ptr<PendingGroup> pending;
    // The previous step's sum goes on to the next rank (which adds its partial for that block)
    // while this step's partial is computed.
    if (s > 0) pending = start_exchange(ctx, ring, partial[(s - 1) % 2], incoming);
    produce(block, dest, OverlapProgress(ctx.backend, pending.get(), host));
    if (pending) {
      pending->wait();
      ctx.backend.add(dest, dest, incoming);
    }
  }
}

void all_gather_gemm(const ParallelContext& ctx, const GemmArgs& gemm, TensorView gathered) {
  WEFT_CHECK(!gemm.transpose_a && gemm.epilogue != Epilogue::kBiasGrad,
             "all_gather_gemm: A must not be transposed (its rows are gathered), and the epilogue "
             "must be row-wise (not kBiasGrad)");
  const TensorView c = as_2d(gemm.c);
  const int64_t block_rows = gemm.a.shape.rows();
  WEFT_CHECK(c.shape.rows() == block_rows * ctx.tp.size(), "all_gather_gemm: C ", gemm.c.str(),
             " must have tp (", ctx.tp.size(), ") x A's ", block_rows, " rows");
  const bool gelu_input = gemm.gelu_input.data != nullptr;
  ring_all_gather_rows(
      ctx, gemm.a,
      [&](int block, TensorView rows, const OverlapProgress& progress) {
        GemmArgs g = gemm;
        g.a = rows;
        g.c = c.rows(block * block_rows, block_rows);
        if (gelu_input) g.gelu_input = as_2d(gemm.gelu_input).rows(block * block_rows, block_rows);
        progress.gemm(g);
      },
      gathered);
}

void gemm_reduce_scatter(const ParallelContext& ctx, const GemmArgs& gemm, TensorView workspace) {
  WEFT_CHECK(!gemm.transpose_a && gemm.epilogue == Epilogue::kNone && gemm.beta == 0.0f,
             "gemm_reduce_scatter: A must not be transposed (its rows are scattered), with no "
             "epilogue and beta 0 (add a bias after the reduction)");
  const TensorView a = as_2d(gemm.a);
  const int64_t block_rows = divide_exact(
      a.shape.rows(), ctx.tp.size(), "gemm_reduce_scatter: rows of A", "the tensor-parallel size");
  WEFT_CHECK(gemm.c.shape.rows() == block_rows, "gemm_reduce_scatter: C ", gemm.c.str(),
             " must have A's rows / tp = ", block_rows, " rows");
  ring_reduce_scatter_rows(
      ctx, gemm.c,
      [&](int block, TensorView partial, const OverlapProgress& progress) {
        GemmArgs g = gemm;
        g.a = a.rows(block * block_rows, block_rows);
        g.c = partial;
        progress.gemm(g);
      },
      workspace);
}

}  // namespace weft
