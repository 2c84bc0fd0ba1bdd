// Launchers of weft's CUDA kernels (elementwise.cu, random.cu, and the transformer ops of
// transformer.cu, norms.cu, attention.cu, vocab.cu), callable from plain C++.
//
// Every launcher queues its kernel on `stream`, checks the launch with cudaGetLastError and throws
// weft::Error on failure; an empty range launches nothing. Templates are instantiated in the .cu
// files for the storage types float, bf16_t and f16_t (all pairs where two types appear); math
// is always done in float (weft::to_float / weft::from_float), as on the CPU backend.
#pragma once

#include <cstdint>

#include "backend/attention_dims.hpp"
#include "backend/dtype_dispatch.hpp"
#include "weft/backend.hpp"
#include "weft/dtype.hpp"
#include "weft/error.hpp"
#include "weft/rng.hpp"

// cudaStream_t is `CUstream_st*`; declaring the struct keeps CUDA headers out of C++ callers.
struct CUstream_st;

namespace weft {

using CudaStreamHandle = CUstream_st*;

// dst[i] = Dst(src[i]), rounding to nearest even.
template <typename Dst, typename Src>
void launch_convert(Dst* dst, const Src* src, int64_t n, CudaStreamHandle stream);

// dst[i] = T(value).
template <typename T>
void launch_fill(T* dst, float value, int64_t n, CudaStreamHandle stream);

// dst (rows x cols, row-major) = the window of the global random matrix that `spec` describes.
template <typename T>
void launch_fill_random(T* dst, int64_t rows, int64_t cols, const RandomFill& spec,
                        CudaStreamHandle stream);

// out[i] = a[i] + b[i]. `out` may alias an input.
template <typename T>
void launch_add(T* out, const T* a, const T* b, int64_t n, CudaStreamHandle stream);

// out[r, c] = in[r, c] + bias[c] for a rows x cols matrix. `out` may alias `in`.
template <typename T>
void launch_add_bias(T* out, const T* in, const T* bias, int64_t rows, int64_t cols,
                     CudaStreamHandle stream);

// out[i] = gelu(in[i]), the tanh approximation. `out` may alias `in`.
template <typename T>
void launch_gelu(T* out, const T* in, int64_t n, CudaStreamHandle stream);

// grad_in[i] = grad_out[i] * gelu'(input[i]). `grad_in` may alias an input.
template <typename T>
void launch_gelu_backward(T* grad_in, const T* grad_out, const T* input, int64_t n,
                          CudaStreamHandle stream);

// out[r] = sum over c of in[r, c] (rows x cols, row-major); accumulated in float, in a fixed
// order, so repeated runs give identical bits.
template <typename Out, typename In>
void launch_sum_rows(Out* out, const In* in, int64_t rows, int64_t cols, CudaStreamHandle stream);

// out[c] = sum over r of in[r, c] (rows x cols, row-major); float, fixed order as above.
template <typename Out, typename In>
void launch_sum_columns(Out* out, const In* in, int64_t rows, int64_t cols,
                        CudaStreamHandle stream);

// ---- transformer ops (the Backend methods of the same names; see weft/backend.hpp) ----
// Unless said otherwise: activations are rows x cols row-major, statistics are f32, outputs are
// written (not accumulated), and reductions run in a fixed order, so repeated runs give
// identical bits. Launchers that need temporary memory take it from the stream-ordered allocator.

// transformer.cu. out[i] = alpha * in[i]; `out` may alias `in`.
template <typename T>
void launch_scale(T* out, const T* in, float alpha, int64_t n, CudaStreamHandle stream);
// out[0] = sum of in[i]^2 (f32, fixed two-pass order).
template <typename T>
void launch_sum_squares(float* out, const T* in, int64_t n, CudaStreamHandle stream);
// out = silu(gate) * up; the backward writes grad_gate and grad_up. Outputs may alias inputs.
template <typename T>
void launch_swiglu(T* out, const T* gate, const T* up, int64_t n, CudaStreamHandle stream);
template <typename T>
void launch_swiglu_backward(T* grad_gate, T* grad_up, const T* grad_out, const T* gate, const T* up,
                            int64_t n, CudaStreamHandle stream);
// out[i] = keep(seed, offset + i) ? in[i] / (1 - probability) : 0; `out` may alias `in`.
template <typename T>
void launch_dropout(T* out, const T* in, float probability, uint64_t seed, uint64_t offset,
                    int64_t n, CudaStreamHandle stream);
// One AdamW step on f32 master weights and moments.
template <typename T>
void launch_adamw(float* master, float* m, float* v, const T* grad, int64_t n,
                  const AdamWStep& step, CudaStreamHandle stream);

// norms.cu. Layer norm (beta may not be null) and RMS norm over the last dimension; the forward
// writes mean (layer norm only) and rstd per row. The backward writes grad_in and the parameter
// gradients summed over rows; grad_in may alias grad_out.
template <typename T>
void launch_layer_norm(T* out, float* mean, float* rstd, const T* in, const T* gamma, const T* beta,
                       float eps, int64_t rows, int64_t cols, CudaStreamHandle stream);
template <typename T>
void launch_layer_norm_backward(T* grad_in, T* grad_gamma, T* grad_beta, const T* grad_out,
                                const T* in, const T* gamma, const float* mean, const float* rstd,
                                int64_t rows, int64_t cols, CudaStreamHandle stream);
template <typename T>
void launch_rms_norm(T* out, float* rstd, const T* in, const T* gamma, float eps, int64_t rows,
                     int64_t cols, CudaStreamHandle stream);
template <typename T>
void launch_rms_norm_backward(T* grad_in, T* grad_gamma, const T* grad_out, const T* in,
                              const T* gamma, const float* rstd, int64_t rows, int64_t cols,
                              CudaStreamHandle stream);

// attention.cu. Causal attention over Megatron's grouped qkv layout, with `dims` of a checked
// shape (attention_dims): keys stream through shared memory in tiles with an online softmax, so
// seq has no limit; head_dim is limited to kAttentionMaxHeadDim (weft::Error beyond). lse
// [batch, heads, seq] f32 is each query's log-sum-exp, from which the backward recomputes the
// probabilities.
constexpr int64_t kAttentionMaxHeadDim = 1024;
template <typename T>
void launch_attention(T* out, float* lse, const T* qkv, const AttentionDims& dims,
                      CudaStreamHandle stream);
// grad_qkv must not alias qkv.
template <typename T>
void launch_attention_backward(T* grad_qkv, const T* grad_out, const T* qkv, const float* lse,
                               const AttentionDims& dims, CudaStreamHandle stream);
// k_cache, v_cache: [batch, kv_heads, capacity, head_dim].
template <typename T>
void launch_attention_with_cache(T* out, T* k_cache, T* v_cache, const T* qkv,
                                 const AttentionDims& dims, int64_t capacity, int64_t past,
                                 CudaStreamHandle stream);
template <typename T>
void launch_rope(T* qkv, const AttentionDims& dims, float theta, int64_t position_offset,
                 bool inverse, CudaStreamHandle stream);

// vocab.cu. Embedding lookup and its (accumulating) backward over a table of table_rows rows
// starting at vocabulary entry vocab_start; ids out of range give zeros / contribute nothing.
template <typename T>
void launch_embedding(T* out, const int32_t* ids, const T* table, int64_t tokens,
                      int64_t table_rows, int64_t cols, int64_t vocab_start,
                      CudaStreamHandle stream);
template <typename T>
void launch_embedding_backward(T* grad_table, const int32_t* ids, const T* grad_out, int64_t tokens,
                               int64_t table_rows, int64_t cols, int64_t vocab_start,
                               CudaStreamHandle stream);
// Cross-entropy pieces over logits [tokens, v_local]; only the first valid_cols columns are
// vocabulary entries (the rest is padding). Column j is the global entry vocab_start + j.
template <typename T>
void launch_vocab_max(float* row_max, const T* logits, int64_t tokens, int64_t v_local,
                      int64_t valid_cols, CudaStreamHandle stream);
template <typename T>
void launch_vocab_sum_exp_and_target(float* sum_exp, float* target_logit, const T* logits,
                                     const float* row_max, const int32_t* targets, int64_t tokens,
                                     int64_t v_local, int64_t valid_cols, int64_t vocab_start,
                                     CudaStreamHandle stream);
template <typename T>
void launch_vocab_cross_entropy_backward(T* grad_logits, const T* logits, const float* row_max,
                                         const float* sum_exp, const int32_t* targets,
                                         const float* grad_loss, int64_t tokens, int64_t v_local,
                                         int64_t valid_cols, int64_t vocab_start,
                                         CudaStreamHandle stream);

}  // namespace weft
