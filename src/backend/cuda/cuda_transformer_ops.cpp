// CudaBackend's transformer ops: launches the kernels of kernels/transformer*.cu.
#include "backend/backend_checks.hpp"
#include "backend/cuda/cuda_backend.hpp"
#include "weft/error.hpp"

namespace weft {

void CudaBackend::scale(TensorView out, TensorView in, float alpha) {
  (void)out;
  (void)in;
  (void)alpha;
  WEFT_THROW(ErrorCode::kInternal, "scale: not implemented yet on this backend");
}

void CudaBackend::sum_squares(TensorView out, TensorView in) {
  (void)out;
  (void)in;
  WEFT_THROW(ErrorCode::kInternal, "sum_squares: not implemented yet on this backend");
}

void CudaBackend::layer_norm(TensorView out, TensorView mean, TensorView rstd, TensorView in, TensorView gamma, TensorView beta, float eps) {
  (void)out;
  (void)mean;
  (void)rstd;
  (void)in;
  (void)gamma;
  (void)beta;
  (void)eps;
  WEFT_THROW(ErrorCode::kInternal, "layer_norm: not implemented yet on this backend");
}

void CudaBackend::layer_norm_backward(TensorView grad_in, TensorView grad_gamma, TensorView grad_beta, TensorView grad_out, TensorView in, TensorView gamma, TensorView mean, TensorView rstd) {
  (void)grad_in;
  (void)grad_gamma;
  (void)grad_beta;
  (void)grad_out;
  (void)in;
  (void)gamma;
  (void)mean;
  (void)rstd;
  WEFT_THROW(ErrorCode::kInternal, "layer_norm_backward: not implemented yet on this backend");
}

void CudaBackend::rms_norm(TensorView out, TensorView rstd, TensorView in, TensorView gamma, float eps) {
  (void)out;
  (void)rstd;
  (void)in;
  (void)gamma;
  (void)eps;
  WEFT_THROW(ErrorCode::kInternal, "rms_norm: not implemented yet on this backend");
}

void CudaBackend::rms_norm_backward(TensorView grad_in, TensorView grad_gamma, TensorView grad_out, TensorView in, TensorView gamma, TensorView rstd) {
  (void)grad_in;
  (void)grad_gamma;
  (void)grad_out;
  (void)in;
  (void)gamma;
  (void)rstd;
  WEFT_THROW(ErrorCode::kInternal, "rms_norm_backward: not implemented yet on this backend");
}

void CudaBackend::attention(TensorView out, TensorView probs, TensorView qkv, const AttentionShape& shape) {
  (void)out;
  (void)probs;
  (void)qkv;
  (void)shape;
  WEFT_THROW(ErrorCode::kInternal, "attention: not implemented yet on this backend");
}

void CudaBackend::attention_backward(TensorView grad_qkv, TensorView grad_out, TensorView qkv, TensorView probs, const AttentionShape& shape) {
  (void)grad_qkv;
  (void)grad_out;
  (void)qkv;
  (void)probs;
  (void)shape;
  WEFT_THROW(ErrorCode::kInternal, "attention_backward: not implemented yet on this backend");
}

void CudaBackend::attention_with_cache(TensorView out, TensorView k_cache, TensorView v_cache, TensorView qkv, const AttentionShape& shape, int64_t past) {
  (void)out;
  (void)k_cache;
  (void)v_cache;
  (void)qkv;
  (void)shape;
  (void)past;
  WEFT_THROW(ErrorCode::kInternal, "attention_with_cache: not implemented yet on this backend");
}

void CudaBackend::rope(TensorView qkv, const AttentionShape& shape, float theta, int64_t position_offset, bool inverse) {
  (void)qkv;
  (void)shape;
  (void)theta;
  (void)position_offset;
  (void)inverse;
  WEFT_THROW(ErrorCode::kInternal, "rope: not implemented yet on this backend");
}

void CudaBackend::embedding(TensorView out, TensorView ids, TensorView table, int64_t vocab_start) {
  (void)out;
  (void)ids;
  (void)table;
  (void)vocab_start;
  WEFT_THROW(ErrorCode::kInternal, "embedding: not implemented yet on this backend");
}

void CudaBackend::embedding_backward(TensorView grad_table, TensorView ids, TensorView grad_out, int64_t vocab_start) {
  (void)grad_table;
  (void)ids;
  (void)grad_out;
  (void)vocab_start;
  WEFT_THROW(ErrorCode::kInternal, "embedding_backward: not implemented yet on this backend");
}

void CudaBackend::vocab_max(TensorView row_max, TensorView logits, int64_t vocab_start, int64_t vocab_size) {
  (void)row_max;
  (void)logits;
  (void)vocab_start;
  (void)vocab_size;
  WEFT_THROW(ErrorCode::kInternal, "vocab_max: not implemented yet on this backend");
}

void CudaBackend::vocab_sum_exp_and_target(TensorView sum_exp, TensorView target_logit, TensorView logits, TensorView row_max, TensorView targets, int64_t vocab_start, int64_t vocab_size) {
  (void)sum_exp;
  (void)target_logit;
  (void)logits;
  (void)row_max;
  (void)targets;
  (void)vocab_start;
  (void)vocab_size;
  WEFT_THROW(ErrorCode::kInternal, "vocab_sum_exp_and_target: not implemented yet on this backend");
}

void CudaBackend::vocab_cross_entropy_backward(TensorView grad_logits, TensorView logits, TensorView row_max, TensorView sum_exp, TensorView targets, TensorView grad_loss, int64_t vocab_start, int64_t vocab_size) {
  (void)grad_logits;
  (void)logits;
  (void)row_max;
  (void)sum_exp;
  (void)targets;
  (void)grad_loss;
  (void)vocab_start;
  (void)vocab_size;
  WEFT_THROW(ErrorCode::kInternal, "vocab_cross_entropy_backward: not implemented yet on this backend");
}

void CudaBackend::swiglu(TensorView out, TensorView gate, TensorView up) {
  (void)out;
  (void)gate;
  (void)up;
  WEFT_THROW(ErrorCode::kInternal, "swiglu: not implemented yet on this backend");
}

void CudaBackend::swiglu_backward(TensorView grad_gate, TensorView grad_up, TensorView grad_out, TensorView gate, TensorView up) {
  (void)grad_gate;
  (void)grad_up;
  (void)grad_out;
  (void)gate;
  (void)up;
  WEFT_THROW(ErrorCode::kInternal, "swiglu_backward: not implemented yet on this backend");
}

void CudaBackend::dropout(TensorView out, TensorView in, float probability, uint64_t seed, uint64_t offset) {
  (void)out;
  (void)in;
  (void)probability;
  (void)seed;
  (void)offset;
  WEFT_THROW(ErrorCode::kInternal, "dropout: not implemented yet on this backend");
}

void CudaBackend::adamw(TensorView master, TensorView m, TensorView v, TensorView grad, const AdamWStep& step) {
  (void)master;
  (void)m;
  (void)v;
  (void)grad;
  (void)step;
  WEFT_THROW(ErrorCode::kInternal, "adamw: not implemented yet on this backend");
}

}  // namespace weft
