// Argument checks shared by every backend, so that both reject bad calls with the same message.
#pragma once

#include <cstdint>

#include "backend/attention_dims.hpp"
#include "weft/backend.hpp"

namespace weft {

struct GemmDims {
  int64_t m, n, k;
  int64_t lda, ldb, ldc;  // stored column counts of A, B, C
};

// Validates shapes, dtypes, devices and epilogue operands of a GEMM call; returns its dimensions.
GemmDims check_gemm_args(const GemmArgs& args, Device device);

// The view lives on `device` and has data.
void check_on_device(const TensorView& view, Device device, const char* op, const char* what);
void check_same_layout(const TensorView& a, const TensorView& b, const char* op, const char* what_a,
                       const char* what_b);

// Per-op checks beyond placement (each backend checks placement itself: the CUDA backend's
// copies also accept host memory).
void check_copy_columns_args(const TensorView& dst, int64_t dst_col, const TensorView& src,
                             int64_t src_col, int64_t cols);
// Returns the global row length the window is drawn from.
int64_t check_fill_random_args(const TensorView& dst, const RandomFill& spec);
void check_add_args(const TensorView& out, const TensorView& a, const TensorView& b, Device device);
void check_add_bias_args(const TensorView& out, const TensorView& in, const TensorView& bias,
                         Device device);
void check_gelu_args(const TensorView& out, const TensorView& in, Device device);
void check_gelu_backward_args(const TensorView& grad_in, const TensorView& grad_out,
                              const TensorView& input, Device device);
void check_convert_args(const TensorView& dst, const TensorView& src, Device device);

// ---- transformer ops. Each validates shapes, dtypes and placement (check_on_device) of every
// operand, and throws weft::Error naming the offending values. ----
void check_scale_args(const TensorView& out, const TensorView& in, Device device);
void check_sum_squares_args(const TensorView& out, const TensorView& in, Device device);
// in [rows, cols] (leading dims folded); mean, rstd f32 with `rows` elements; gamma, beta (and
// their gradients) `cols` elements of in's dtype; eps >= 0.
void check_layer_norm_args(const TensorView& out, const TensorView& mean, const TensorView& rstd,
                           const TensorView& in, const TensorView& gamma, const TensorView& beta,
                           float eps, Device device);
void check_layer_norm_backward_args(const TensorView& grad_in, const TensorView& grad_gamma,
                                    const TensorView& grad_beta, const TensorView& grad_out,
                                    const TensorView& in, const TensorView& gamma,
                                    const TensorView& mean, const TensorView& rstd, Device device);
void check_rms_norm_args(const TensorView& out, const TensorView& rstd, const TensorView& in,
                         const TensorView& gamma, float eps, Device device);
void check_rms_norm_backward_args(const TensorView& grad_in, const TensorView& grad_gamma,
                                  const TensorView& grad_out, const TensorView& in,
                                  const TensorView& gamma, const TensorView& rstd, Device device);

// Positive counts, heads divisible by kv_heads, a finite scale. `op` prefixes the messages.
AttentionDims check_attention_shape(const AttentionShape& shape, const char* op);
// qkv [tokens, qkv_cols] floating; out [tokens, heads * head_dim] of qkv's dtype; lse f32 with
// batch * heads * seq elements.
AttentionDims check_attention_args(const TensorView& out, const TensorView& lse,
                                   const TensorView& qkv, const AttentionShape& shape,
                                   Device device);
AttentionDims check_attention_backward_args(const TensorView& grad_qkv, const TensorView& grad_out,
                                            const TensorView& qkv, const TensorView& lse,
                                            const AttentionShape& shape, Device device);
// Caches [batch, kv_heads, capacity, head_dim] of qkv's dtype; past >= 0 and past + seq <=
// capacity. The capacity is k_cache.shape[2].
AttentionDims check_attention_with_cache_args(const TensorView& out, const TensorView& k_cache,
                                              const TensorView& v_cache, const TensorView& qkv,
                                              const AttentionShape& shape, int64_t past,
                                              Device device);
// head_dim even, theta > 0, position_offset >= 0.
AttentionDims check_rope_args(const TensorView& qkv, const AttentionShape& shape, float theta,
                              int64_t position_offset, Device device);

// ids i32 (numel = tokens); table [table_rows, hidden] floating; out [tokens, hidden] of table's
// dtype; vocab_start >= 0.
void check_embedding_args(const TensorView& out, const TensorView& ids, const TensorView& table,
                          int64_t vocab_start, Device device);
void check_embedding_backward_args(const TensorView& grad_table, const TensorView& ids,
                                   const TensorView& grad_out, int64_t vocab_start, Device device);

// logits [tokens, v_local] floating; per-row tensors f32 with `tokens` elements; targets i32;
// vocab_start >= 0, vocab_size > 0 (a shard may lie wholly in the padding).
void check_vocab_max_args(const TensorView& row_max, const TensorView& logits, int64_t vocab_start,
                          int64_t vocab_size, Device device);
void check_vocab_sum_exp_and_target_args(const TensorView& sum_exp, const TensorView& target_logit,
                                         const TensorView& logits, const TensorView& row_max,
                                         const TensorView& targets, int64_t vocab_start,
                                         int64_t vocab_size, Device device);
void check_vocab_cross_entropy_backward_args(const TensorView& grad_logits,
                                             const TensorView& logits, const TensorView& row_max,
                                             const TensorView& sum_exp, const TensorView& targets,
                                             const TensorView& grad_loss, int64_t vocab_start,
                                             int64_t vocab_size, Device device);

// All operands share one shape and floating dtype.
void check_swiglu_args(const TensorView& out, const TensorView& gate, const TensorView& up,
                       Device device);
void check_swiglu_backward_args(const TensorView& grad_gate, const TensorView& grad_up,
                                const TensorView& grad_out, const TensorView& gate,
                                const TensorView& up, Device device);
// out and in share shape and dtype; 0 <= probability < 1.
void check_dropout_args(const TensorView& out, const TensorView& in, float probability,
                        Device device);
// master, m, v f32 of one shape; grad floating with as many elements; step >= 1, betas in
// [0, 1), eps >= 0, lr >= 0, weight_decay >= 0, grad_scale finite.
void check_adamw_args(const TensorView& master, const TensorView& m, const TensorView& v,
                      const TensorView& grad, const AdamWStep& step, Device device);

// WEFT_POISON_ALLOCATIONS=1: backends fill new memory with 0xFF bytes (NaN in every dtype), so an
// op that leaves part of its output unwritten fails any comparison. The tests set it.
bool poison_allocations();

}  // namespace weft
