// VocabParallelEmbedding: the token table split by vocabulary rows, and the LM head tied to it.
#include <vector>

#include "layers/linear_common.hpp"
#include "layers/token_ids.hpp"
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

Tensor VocabParallelEmbedding::forward(TensorView ids) {
  check_token_ids(ctx_.backend, ids, config_.vocab_size, config_.name, "ids");
  const int64_t tokens = ids.numel();
  std::vector<int64_t> dims = ids.shape.dims();
  dims.push_back(config_.hidden);
  Tensor out(ctx_.backend, Shape(std::move(dims)), config_.dtype);
  const TensorView out2d = out.view().reshaped(Shape({tokens, config_.hidden}));
  const TensorView ids1d = ids.reshaped(Shape({tokens}));
  ctx_.backend.embedding(out2d, ids1d, weight_.value, vocab_start());
  reduce_from_tp_region_forward(ctx_, out2d);
  saved_ids_ = ids1d;
  return out;
}

void VocabParallelEmbedding::backward(TensorView grad_output) {
  WEFT_CHECK(saved_ids_.data != nullptr, config_.name, ": backward called before forward");
  const int64_t tokens = saved_ids_.numel();
  check_activation(ctx_.backend, grad_output, config_.hidden, config_.dtype, config_.name,
                   "grad_output");
  WEFT_CHECK(grad_output.shape.rows() == tokens, config_.name, ": grad_output ",
             grad_output.shape.str(), " has ", grad_output.shape.rows(), " rows, forward had ",
             tokens, " tokens");
  // reduce_from_tp_region's backward is the identity: the gradient is already replicated.
  ctx_.backend.embedding_backward(weight_.grad, saved_ids_,
                                  grad_output.reshaped(Shape({tokens, config_.hidden})),
                                  vocab_start());
}

Tensor VocabParallelEmbedding::lm_head_forward(TensorView hidden) {
  check_activation(ctx_.backend, hidden, config_.hidden, config_.dtype, config_.name,
                   "lm_head input");
  const int64_t tokens = hidden.shape.rows(), v_local = local_vocab_size();
  saved_hidden_ = hidden.reshaped(Shape({tokens, config_.hidden}));
  // copy_to_tp_region's forward is the identity: the input is replicated.
  Tensor logits(ctx_.backend, hidden.shape.with_dim(-1, v_local), config_.dtype);
  GemmArgs g;
  g.a = saved_hidden_;
  g.b = weight_.value;
  g.transpose_b = true;
  g.c = logits.view().reshaped(Shape({tokens, v_local}));
  ctx_.backend.gemm(g);
  return logits;
}

Tensor VocabParallelEmbedding::lm_head_backward(TensorView grad_logits) {
  WEFT_CHECK(saved_hidden_.data != nullptr, config_.name,
             ": lm_head_backward called before lm_head_forward");
  const int64_t tokens = saved_hidden_.shape.rows(), v_local = local_vocab_size();
  check_activation(ctx_.backend, grad_logits, v_local, config_.dtype, config_.name, "grad_logits");
  WEFT_CHECK(grad_logits.shape.rows() == tokens, config_.name, ": grad_logits ",
             grad_logits.shape.str(), " has ", grad_logits.shape.rows(),
             " rows, lm_head_forward had ", tokens);
  const TensorView grad = grad_logits.reshaped(Shape({tokens, v_local}));

  Tensor grad_hidden(ctx_.backend, grad_logits.shape.with_dim(-1, config_.hidden), config_.dtype);
  const TensorView grad_hidden2d = grad_hidden.view().reshaped(Shape({tokens, config_.hidden}));
  GemmArgs g;  // this rank's vocabulary columns' share of the hidden gradient
  g.a = grad;
  g.b = weight_.value;
  g.c = grad_hidden2d;
  ctx_.backend.gemm(g);
  accumulate_weight_grads(ctx_.backend, grad, saved_hidden_, weight_, /*bias=*/nullptr);
  copy_to_tp_region_backward(ctx_, grad_hidden2d);
  return grad_hidden;
}

}  // namespace weft
