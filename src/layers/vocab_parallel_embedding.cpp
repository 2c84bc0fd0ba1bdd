// VocabParallelEmbedding: the token table split by vocabulary rows, and the LM head tied to it.
#include <vector>

#include "layers/linear_common.hpp"
#include "layers/token_ids.hpp"
#include "layers/tp_linear_ops.hpp"
#include "weft/embedding.hpp"
#include "weft/error.hpp"
#include "weft/log.hpp"

namespace weft {

int64_t padded_vocab_size(int64_t vocab_size, int64_t pad_multiple, int tp) {
  WEFT_CHECK(vocab_size > 0, "vocab_size (", vocab_size, ") must be positive");
  WEFT_CHECK(pad_multiple > 0, "pad_multiple (", pad_multiple, ") must be positive");
  WEFT_CHECK(tp > 0, "the tensor-parallel size (", tp, ") must be positive");
  const int64_t multiple = pad_multiple * tp;
  return (vocab_size + multiple - 1) / multiple * multiple;
}

VocabParallelEmbedding::VocabParallelEmbedding(const ParallelContext& ctx,
                                               VocabParallelEmbeddingConfig config)
    : ctx_(ctx), config_(std::move(config)) {
  const auto& c = config_;
  WEFT_CHECK(c.vocab_size > 0 && c.hidden > 0, c.name, ": vocab_size (", c.vocab_size,
             ") and hidden (", c.hidden, ") must be positive");
  WEFT_CHECK(c.pad_multiple > 0, c.name, ": pad_multiple (", c.pad_multiple, ") must be positive");
  const int tp = ctx.tp.size(), rank = ctx.tp.rank();
  const int64_t padded = padded_vocab_size(c.vocab_size, c.pad_multiple, tp);
  if (rank == 0) {
    WEFT_LOG(kInfo, c.name, ": vocabulary ", c.vocab_size, " padded to ", padded, " (",
             padded - c.vocab_size, " padding rows) for pad_multiple ", c.pad_multiple,
             " x tensor-parallel size ", tp);
  }
  // Row v of the global table is drawn from the same counters at every TP size (only the padding
  // beyond vocab_size depends on tp), so the real rows are TP-invariant.
  weight_ = make_parameter(ctx.backend, c.name + ".weight", Shape({padded, c.hidden}), c.dtype,
                           /*partition_dim=*/0, tp, rank);
  init_parameter(ctx.backend, weight_,
                 RandomFill{Distribution::kNormal, c.seed, 0, 0.0, c.init_std});
}

Tensor VocabParallelEmbedding::forward(TensorView ids, Saved& saved) {
  saved = Saved{};
  Tensor out = run_forward(ids, config_.sequence_parallel);
  saved.ids = ids.reshaped(Shape({ids.numel()}));
  saved.sequence_parallel = config_.sequence_parallel;
  return out;
}

Tensor VocabParallelEmbedding::forward(TensorView ids, SequenceParallel mode) {
  return run_forward(ids, mode == SequenceParallel::kAsConfigured && config_.sequence_parallel);
}

Tensor VocabParallelEmbedding::run_forward(TensorView ids, bool sp) {
  check_token_ids(ctx_.backend, ids, config_.vocab_size, config_.name, "ids");
  const int tp = ctx_.tp.size();
  const int64_t tokens = ids.numel();
  if (sp) {
    WEFT_CHECK(ids.shape.rank() >= 1 && ids.shape[0] % tp == 0, config_.name,
               ": sequence parallelism splits dim 0 of the ids ", ids.str(),
               " across the tensor-parallel size (", tp, "): it must be divisible");
  }
  std::vector<int64_t> dims = ids.shape.dims();
  dims.push_back(config_.hidden);
  Tensor out(ctx_.backend, Shape(dims), config_.dtype);
  const TensorView out2d = out.view().reshaped(Shape({tokens, config_.hidden}));
  const TensorView ids1d = ids.reshaped(Shape({tokens}));
  ctx_.backend.embedding(out2d, ids1d, weight_.value, vocab_start());
  if (!sp) {
    reduce_from_tp_region_forward(ctx_, out2d);
    return out;
  }
  Tensor local = reduce_scatter_rows(ctx_, out2d);
  dims[0] /= tp;
  local.reshape(Shape(dims));
  return local;
}

void VocabParallelEmbedding::backward(TensorView grad_output, Saved& saved) {
  WEFT_CHECK(saved.ids.data != nullptr, config_.name,
             ": backward called before forward (its saved state is empty)");
  const int64_t tokens = saved.ids.numel();
  const int shards = saved.sequence_parallel ? ctx_.tp.size() : 1;
  check_activation(ctx_.backend, grad_output, config_.hidden, config_.dtype, config_.name,
                   "grad_output");
  WEFT_CHECK(grad_output.shape.rows() * shards == tokens, config_.name, ": grad_output ",
             grad_output.shape.str(), " has ", grad_output.shape.rows(), " rows, forward had ",
             tokens / shards);
  const TensorView grad2d = grad_output.reshaped(Shape({grad_output.shape.rows(), config_.hidden}));
  // reduce_from_tp_region's backward is the identity: the gradient is already replicated.
  // reduce_scatter_rows's is gather_rows.
  Tensor gathered;
  if (saved.sequence_parallel) gathered = gather_rows(ctx_, grad2d);
  ctx_.backend.embedding_backward(weight_.grad, saved.ids,
                                  gathered.defined() ? gathered.view() : grad2d, vocab_start());
  saved = Saved{};
}

std::vector<TensorView> VocabParallelEmbedding::Saved::views() const {
  std::vector<TensorView> saved;
  if (ids.data != nullptr) saved.push_back(ids);
  return saved;
}

std::vector<TensorView> VocabParallelEmbedding::HeadSaved::views() const {
  std::vector<TensorView> saved;
  if (hidden.data != nullptr) saved.push_back(hidden);
  return saved;
}

Tensor VocabParallelEmbedding::lm_head_forward(TensorView hidden, HeadSaved& saved) {
  saved = HeadSaved{};
  Tensor logits = run_lm_head(hidden, config_.sequence_parallel);
  // Only this rank's rows are kept under sequence parallelism; backward gathers them again.
  saved.hidden = hidden.reshaped(Shape({hidden.shape.rows(), config_.hidden}));
  saved.sequence_parallel = config_.sequence_parallel;
  return logits;
}

Tensor VocabParallelEmbedding::lm_head_forward(TensorView hidden, SequenceParallel mode) {
  return run_lm_head(hidden, mode == SequenceParallel::kAsConfigured && config_.sequence_parallel);
}

Tensor VocabParallelEmbedding::run_lm_head(TensorView hidden, bool sp) {
  check_activation(ctx_.backend, hidden, config_.hidden, config_.dtype, config_.name,
                   "lm_head input");
  WEFT_CHECK(!sp || hidden.shape.rank() >= 2, config_.name,
             ": a sequence-parallel lm_head input needs a row dimension, got ", hidden.str());
  const int64_t rows = hidden.shape.rows(), v_local = local_vocab_size();
  const int64_t tokens = rows * (sp ? ctx_.tp.size() : 1);
  // copy_to_tp_region's forward is the identity: the input is replicated (or gathered).
  Shape shape = hidden.shape.with_dim(-1, v_local);
  if (sp) shape = shape.with_dim(0, hidden.shape[0] * ctx_.tp.size());
  Tensor logits(ctx_.backend, shape, config_.dtype);
  ColumnProjection p;
  p.weight = weight_.value;
  p.out = logits.view().reshaped(Shape({tokens, v_local}));
  column_forward(ctx_, {sp, config_.tp_comm_overlap},
                 hidden.reshaped(Shape({rows, config_.hidden})), {p});
  return logits;
}

Tensor VocabParallelEmbedding::lm_head_backward(TensorView grad_logits, HeadSaved& saved) {
  WEFT_CHECK(saved.hidden.data != nullptr, config_.name,
             ": lm_head_backward called before lm_head_forward (its saved state is empty)");
  const bool sp = saved.sequence_parallel;
  const int64_t tokens = saved.hidden.shape.rows() * (sp ? ctx_.tp.size() : 1),
                v_local = local_vocab_size();
  check_activation(ctx_.backend, grad_logits, v_local, config_.dtype, config_.name, "grad_logits");
  WEFT_CHECK(grad_logits.shape.rows() == tokens, config_.name, ": grad_logits ",
             grad_logits.shape.str(), " has ", grad_logits.shape.rows(),
             " rows, lm_head_forward had ", tokens);
  // This rank's vocabulary columns' share of the hidden gradient, summed over TP (all-reduced or
  // reduce-scattered).
  ColumnGradient g;
  g.grad = grad_logits.reshaped(Shape({tokens, v_local}));
  g.weight = weight_.value;
  g.weight_grad = weight_.grad;
  Tensor grad_hidden = column_backward(ctx_, {sp, config_.tp_comm_overlap}, saved.hidden, {g});
  Shape shape = grad_logits.shape.with_dim(-1, config_.hidden);
  if (sp) shape = shape.with_dim(0, grad_logits.shape[0] / ctx_.tp.size());
  grad_hidden.reshape(shape);
  saved = HeadSaved{};
  return grad_hidden;
}

}  // namespace weft
