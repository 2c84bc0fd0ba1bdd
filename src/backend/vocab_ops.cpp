// Backend's checked entry points of the vocabulary ops (embedding and the vocab-parallel
// cross-entropy pieces), each with its argument check.
#include "backend/backend_checks.hpp"
#include "weft/error.hpp"

namespace weft {

namespace {

// ids i32 (numel = tokens); table [table_rows, hidden] floating; out [tokens, hidden] of table's
// dtype; vocab_start >= 0.
void check_embedding(const TensorView& out, const TensorView& ids, const TensorView& table,
                     int64_t vocab_start, Device device, const char* op, const char* out_name,
                     const char* table_name) {
  check_on_device(out, device, op, out_name);
  check_on_device(ids, device, op, "ids");
  check_on_device(table, device, op, table_name);
  check_dtype(ids, DType::kI32, op, "ids");
  check_has_rows(table, op, table_name);
  check_floating(table, op, table_name);
  check_matrix(out, ids.numel(), table.shape.cols(), table.dtype, op, out_name);
  WEFT_CHECK(vocab_start >= 0, op, ": vocab_start ", vocab_start, " must be >= 0");
}

// logits [tokens, v_local] floating on `device`; vocab_start >= 0, vocab_size > 0 (a shard may
// lie wholly in the padding). Returns tokens.
int64_t check_logits(const TensorView& logits, int64_t vocab_start, int64_t vocab_size,
                     Device device, const char* op) {
  check_on_device(logits, device, op, "logits");
  check_has_rows(logits, op, "logits");
  check_floating(logits, op, "logits");
  WEFT_CHECK(vocab_start >= 0 && vocab_size > 0, op, ": vocab_start ", vocab_start,
             " must be >= 0 and vocab_size ", vocab_size, " positive");
  return logits.shape.rows();
}

// A per-row tensor: `tokens` elements of `dtype` on `device` (f32 statistics, i32 targets).
void check_row_vector(const TensorView& v, int64_t tokens, DType dtype, Device device,
                      const char* op, const char* what) {
  check_on_device(v, device, op, what);
  check_vector(v, tokens, dtype, op, what);
}

}  // namespace

void Backend::embedding(TensorView out, TensorView ids, TensorView table, int64_t vocab_start) {
  check_embedding(out, ids, table, vocab_start, device(), "embedding", "out", "table");
  do_embedding(out, ids, table, vocab_start);
}

void Backend::embedding_backward(TensorView grad_table, TensorView ids, TensorView grad_out,
                                 int64_t vocab_start) {
  check_embedding(grad_out, ids, grad_table, vocab_start, device(), "embedding_backward",
                  "grad_out", "grad_table");
  do_embedding_backward(grad_table, ids, grad_out, vocab_start);
}

void Backend::vocab_max(TensorView row_max, TensorView logits, int64_t vocab_start,
                        int64_t vocab_size) {
  const char* op = "vocab_max";
  const int64_t tokens = check_logits(logits, vocab_start, vocab_size, device(), op);
  check_row_vector(row_max, tokens, DType::kF32, device(), op, "row_max");
  do_vocab_max(row_max, logits, vocab_start, vocab_size);
}

void Backend::vocab_sum_exp_and_target(TensorView sum_exp, TensorView target_logit,
                                       TensorView logits, TensorView row_max, TensorView targets,
                                       int64_t vocab_start, int64_t vocab_size) {
  const char* op = "vocab_sum_exp_and_target";
  const int64_t tokens = check_logits(logits, vocab_start, vocab_size, device(), op);
  check_row_vector(sum_exp, tokens, DType::kF32, device(), op, "sum_exp");
  check_row_vector(target_logit, tokens, DType::kF32, device(), op, "target_logit");
  check_row_vector(row_max, tokens, DType::kF32, device(), op, "row_max");
  check_row_vector(targets, tokens, DType::kI32, device(), op, "targets");
  do_vocab_sum_exp_and_target(sum_exp, target_logit, logits, row_max, targets, vocab_start,
                              vocab_size);
}

void Backend::vocab_cross_entropy_backward(TensorView grad_logits, TensorView logits,
                                           TensorView row_max, TensorView sum_exp,
                                           TensorView targets, TensorView grad_loss,
                                           int64_t vocab_start, int64_t vocab_size) {
  const char* op = "vocab_cross_entropy_backward";
  const int64_t tokens = check_logits(logits, vocab_start, vocab_size, device(), op);
  check_on_device(grad_logits, device(), op, "grad_logits");
  check_same_layout(grad_logits, logits, op, "grad_logits", "logits");
  check_row_vector(row_max, tokens, DType::kF32, device(), op, "row_max");
  check_row_vector(sum_exp, tokens, DType::kF32, device(), op, "sum_exp");
  check_row_vector(targets, tokens, DType::kI32, device(), op, "targets");
  check_row_vector(grad_loss, tokens, DType::kF32, device(), op, "grad_loss");
  do_vocab_cross_entropy_backward(grad_logits, logits, row_max, sum_exp, targets, grad_loss,
                                  vocab_start, vocab_size);
}

}  // namespace weft
