// Backend: where local math happens. Memory, streams and events, GEMM with epilogues, and the
// elementwise ops the layers need. Sharding logic never lives here: a backend sees one rank.
#pragma once

#include <memory>
#include <string>

#include "weft/rng.hpp"
#include "weft/tensor.hpp"

namespace weft {

// An ordered queue of work on one device. On the CPU every op completes before it returns, so a
// CPU stream only exists to keep one code path for both backends.
class Stream {
 public:
  virtual ~Stream() = default;
  virtual void synchronize() = 0;
  // The backend's native handle (cudaStream_t on CUDA, nullptr on the CPU), for communicators.
  virtual void* native_handle() const = 0;
};

// A point in a stream that another stream, or the host, can wait for.
class Event {
 public:
  virtual ~Event() = default;
  virtual void record(Stream& stream) = 0;
  virtual void wait(Stream& stream) = 0;  // `stream` waits until the recorded point is reached
  virtual void synchronize() = 0;         // the host waits
};

enum class StreamPriority { kNormal, kHigh };

// The stream of host work: everything on it has completed when the call returns. For host-memory
// communication outside any backend (bootstrap, metadata).
Stream& host_stream();

enum class Epilogue {
  kNone,
  kBias,      // c += bias (broadcast over rows)
  kGelu,      // c = gelu(c)
  kBiasGelu,  // c = gelu(c + bias)
  kBiasGrad,  // c as kNone; also bias_grad = sum of op(a) over its reduction dimension (length m)
};

// C = epilogue(alpha * op(A) op(B) + beta * C), all matrices row-major 2D.
//   op(A): m x k, op(B): k x n, C: m x n. A transposed operand is stored as its transpose
//   (transpose_a: A is stored k x m). Leading dimensions are the stored column counts.
// Dtypes: A and B share one of f32/bf16/f16; C is that dtype or f32; accumulation is always f32.
// bias, gelu_input and bias_grad have C's dtype. The GeLU is the tanh approximation (GPT-2,
// Megatron, cuBLASLt).
struct GemmArgs {
  TensorView a;
  TensorView b;
  TensorView c;
  bool transpose_a = false;
  bool transpose_b = false;
  float alpha = 1.0f;
  float beta = 0.0f;
  Epilogue epilogue = Epilogue::kNone;
  TensorView bias;          // kBias, kBiasGelu: n elements
  TensorView gelu_input;    // kGelu, kBiasGelu: optional m x n, receives the GeLU's input
  TensorView bias_grad;     // kBiasGrad: m elements
  bool allow_tf32 = false;  // f32 GEMMs on CUDA may use TF32 tensor cores (ignored on the CPU)
};

// Shape of a causal self-attention over activations whose rows are ordered (position, batch):
// row = s * batch + b, as in Megatron's [seq, batch, hidden] layout. The fused QKV activation has
// kv_heads groups of columns, each holding its heads / kv_heads query heads, then its key head,
// then its value head, head_dim columns each (Megatron's grouped layout, so an even split of the
// columns gives each tensor-parallel rank whole groups). All counts are local to the rank.
struct AttentionShape {
  int64_t seq = 0;
  int64_t batch = 0;
  int64_t heads = 0;     // query heads
  int64_t kv_heads = 0;  // key/value heads (grouped-query attention when fewer than heads)
  int64_t head_dim = 0;
  float scale = 0.0f;    // applied to q.k; 0 means 1/sqrt(head_dim)

  int64_t qkv_cols() const { return kv_heads * (heads / kv_heads + 2) * head_dim; }
};

// One AdamW update (decoupled weight decay, bias-corrected moments), Loshchilov & Hutter.
struct AdamWStep {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  int64_t step = 1;         // 1-based, for the bias correction
  float grad_scale = 1.0f;  // multiplies the gradient first (gradient clipping, averaging)
};

// Memory (Allocator: device, allocate, deallocate; alignment at least 256 bytes on CUDA and 64 on
// the CPU), streams and the local math.
//
// Every op is a checked entry point (as Communicator's are): it validates its arguments (shapes,
// dtypes, placement on this backend's device, parameter ranges), throws weft::Error naming the
// offending value before any work is queued, and then calls the backend's protected do_<op> with
// the same arguments. A backend implements only the do_<op>, on arguments already checked.
class Backend : public Allocator {
 public:
  virtual std::string name() const = 0;  // "cpu (oneDNN 2.6.3)", "cuda:0 (NVIDIA H100 ...)"

  // Streams and events. Every op below is queued on the current stream.
  virtual Stream& stream() = 0;
  virtual void set_stream(Stream& stream) = 0;
  virtual std::unique_ptr<Stream> create_stream(StreamPriority priority) = 0;
  virtual std::unique_ptr<Event> create_event() = 0;
  void synchronize() { stream().synchronize(); }

  // Copies src to dst (equal shape and dtype). Either side may be host memory (Device::cpu()) or
  // this backend's device; host-side transfers complete before return.
  void copy(TensorView dst, TensorView src);
  // For every row r of the 2D views: dst[r, dst_col : dst_col+cols] = src[r, src_col :
  // src_col+cols]. The building block of split and gather along the last dimension. Either side
  // may be host memory, as for copy.
  void copy_columns(TensorView dst, int64_t dst_col, TensorView src, int64_t src_col, int64_t cols);
  // dst = src converted to dst's dtype (equal shape).
  void convert(TensorView dst, TensorView src);
  void fill(TensorView dst, float value);
  // dst = the window of the global random matrix that `spec` describes (see rng.hpp).
  void fill_random(TensorView dst, const RandomFill& spec);

  // An empty C (m or n zero) is a no-op; an empty inner dimension (k zero) is refused.
  void gemm(const GemmArgs& args);

  // Elementwise; `out` may alias an input. All operands share one dtype.
  void add(TensorView out, TensorView a, TensorView b);           // out = a + b
  void add_bias(TensorView out, TensorView in, TensorView bias);  // out[r,:] = in[r,:] + bias
  void gelu(TensorView out, TensorView in);
  // grad_in = grad_out * gelu'(input)
  void gelu_backward(TensorView grad_in, TensorView grad_out, TensorView input);
  void scale(TensorView out, TensorView in, float alpha);  // out = alpha * in
  // out (f32, one element) = sum of in[i]^2, accumulated in f32: gradient norms.
  void sum_squares(TensorView out, TensorView in);

  // ---- transformer blocks. Rows are tokens, normalization runs over the last dimension. ----
  // Saved statistics (mean, rstd) are f32 with one value per row; gamma/beta have in's dtype.
  // The parameter gradients of the backward ops are written, not accumulated. eps >= 0.
  void layer_norm(TensorView out, TensorView mean, TensorView rstd, TensorView in, TensorView gamma,
                  TensorView beta, float eps);
  void layer_norm_backward(TensorView grad_in, TensorView grad_gamma, TensorView grad_beta,
                           TensorView grad_out, TensorView in, TensorView gamma, TensorView mean,
                           TensorView rstd);
  void rms_norm(TensorView out, TensorView rstd, TensorView in, TensorView gamma, float eps);
  void rms_norm_backward(TensorView grad_in, TensorView grad_gamma, TensorView grad_out,
                         TensorView in, TensorView gamma, TensorView rstd);

  // Causal softmax attention, FlashAttention-style: qkv [seq*batch, shape.qkv_cols()], out
  // [seq*batch, heads*head_dim], lse [batch, heads, seq] f32: each query's log-sum-exp (natural
  // log) of its scaled scores over the keys it sees. The backward recomputes the probabilities
  // from qkv and lse tile by tile (and each row's sum of P dP from them, in f32: the stored 16-bit
  // out is too coarse for that difference), so the saved state is O(batch * heads * seq) and seq
  // has no limit beyond memory. grad_qkv has qkv's layout, is written and must not alias qkv.
  void attention(TensorView out, TensorView lse, TensorView qkv, const AttentionShape& shape);
  void attention_backward(TensorView grad_qkv, TensorView grad_out, TensorView qkv, TensorView lse,
                          const AttentionShape& shape);
  // Inference with a KV cache: stores the keys and values of qkv (the `shape.seq` positions
  // starting at absolute position `past`) into k_cache/v_cache [batch, kv_heads, capacity,
  // head_dim], then attends each query to every cached position up to its own.
  void attention_with_cache(TensorView out, TensorView k_cache, TensorView v_cache, TensorView qkv,
                            const AttentionShape& shape, int64_t past);
  // Rotary embedding of the query and key heads of qkv, in place: the pair (i, i + head_dim/2)
  // of a head at absolute position p = position_offset + s is rotated by p * theta^(-2i/head_dim)
  // (GPT-NeoX / LLaMA layout). inverse rotates back, which is also the backward.
  void rope(TensorView qkv, const AttentionShape& shape, float theta, int64_t position_offset,
            bool inverse);

  // out[t, :] = table[ids[t] - vocab_start, :] when the id falls in this table's rows, else 0.
  // ids are i32 [tokens].
  void embedding(TensorView out, TensorView ids, TensorView table, int64_t vocab_start);
  // grad_table[ids[t] - vocab_start, :] += grad_out[t, :] for the ids in range (accumulates).
  void embedding_backward(TensorView grad_table, TensorView ids, TensorView grad_out,
                          int64_t vocab_start);

  // Vocab-parallel cross-entropy pieces over local logits [tokens, v_local] whose column j is
  // vocabulary entry vocab_start + j; entries >= vocab_size are padding and take no part.
  // Per-row outputs are f32 [tokens]; targets are i32 [tokens] (global ids).
  void vocab_max(TensorView row_max, TensorView logits, int64_t vocab_start, int64_t vocab_size);
  // sum_exp[t] = sum_j exp(logits[t, j] - row_max[t]); target_logit[t] = logits[t, target -
  // vocab_start] when the target is one of this rank's entries, else 0.
  void vocab_sum_exp_and_target(TensorView sum_exp, TensorView target_logit, TensorView logits,
                                TensorView row_max, TensorView targets, int64_t vocab_start,
                                int64_t vocab_size);
  // grad_logits[t, j] = (exp(logits - row_max) / sum_exp - [j is the target]) * grad_loss[t];
  // padding columns get 0. grad_loss f32 [tokens].
  void vocab_cross_entropy_backward(TensorView grad_logits, TensorView logits, TensorView row_max,
                                    TensorView sum_exp, TensorView targets, TensorView grad_loss,
                                    int64_t vocab_start, int64_t vocab_size);

  // out = silu(gate) * up, and its backward (grad_gate, grad_up written).
  void swiglu(TensorView out, TensorView gate, TensorView up);
  void swiglu_backward(TensorView grad_gate, TensorView grad_up, TensorView grad_out,
                       TensorView gate, TensorView up);
  // out = in * keep / (1 - probability), keep[i] = (uniform(seed, offset + i) >= probability)
  // from the Philox stream: the same call applied to the gradient is the backward.
  void dropout(TensorView out, TensorView in, float probability, uint64_t seed, uint64_t offset);
  // AdamW on f32 master weights with f32 moments m, v; grad has any floating dtype.
  void adamw(TensorView master, TensorView m, TensorView v, TensorView grad, const AdamWStep& step);

 protected:
  // The implementations, called by the op of the same name after its checks passed.
  virtual void do_copy(TensorView dst, TensorView src) = 0;
  virtual void do_copy_columns(TensorView dst, int64_t dst_col, TensorView src, int64_t src_col,
                               int64_t cols) = 0;
  virtual void do_convert(TensorView dst, TensorView src) = 0;
  virtual void do_fill(TensorView dst, float value) = 0;
  virtual void do_fill_random(TensorView dst, const RandomFill& spec) = 0;
  virtual void do_gemm(const GemmArgs& args) = 0;
  virtual void do_add(TensorView out, TensorView a, TensorView b) = 0;
  virtual void do_add_bias(TensorView out, TensorView in, TensorView bias) = 0;
  virtual void do_gelu(TensorView out, TensorView in) = 0;
  virtual void do_gelu_backward(TensorView grad_in, TensorView grad_out, TensorView input) = 0;
  virtual void do_scale(TensorView out, TensorView in, float alpha) = 0;
  virtual void do_sum_squares(TensorView out, TensorView in) = 0;
  virtual void do_layer_norm(TensorView out, TensorView mean, TensorView rstd, TensorView in,
                             TensorView gamma, TensorView beta, float eps) = 0;
  virtual void do_layer_norm_backward(TensorView grad_in, TensorView grad_gamma,
                                      TensorView grad_beta, TensorView grad_out, TensorView in,
                                      TensorView gamma, TensorView mean, TensorView rstd) = 0;
  virtual void do_rms_norm(TensorView out, TensorView rstd, TensorView in, TensorView gamma,
                           float eps) = 0;
  virtual void do_rms_norm_backward(TensorView grad_in, TensorView grad_gamma, TensorView grad_out,
                                    TensorView in, TensorView gamma, TensorView rstd) = 0;
  virtual void do_attention(TensorView out, TensorView lse, TensorView qkv,
                            const AttentionShape& shape) = 0;
  virtual void do_attention_backward(TensorView grad_qkv, TensorView grad_out, TensorView qkv,
                                     TensorView lse, const AttentionShape& shape) = 0;
  virtual void do_attention_with_cache(TensorView out, TensorView k_cache, TensorView v_cache,
                                       TensorView qkv, const AttentionShape& shape,
                                       int64_t past) = 0;
  virtual void do_rope(TensorView qkv, const AttentionShape& shape, float theta,
                       int64_t position_offset, bool inverse) = 0;
  virtual void do_embedding(TensorView out, TensorView ids, TensorView table,
                            int64_t vocab_start) = 0;
  virtual void do_embedding_backward(TensorView grad_table, TensorView ids, TensorView grad_out,
                                     int64_t vocab_start) = 0;
  virtual void do_vocab_max(TensorView row_max, TensorView logits, int64_t vocab_start,
                            int64_t vocab_size) = 0;
  virtual void do_vocab_sum_exp_and_target(TensorView sum_exp, TensorView target_logit,
                                           TensorView logits, TensorView row_max,
                                           TensorView targets, int64_t vocab_start,
                                           int64_t vocab_size) = 0;
  virtual void do_vocab_cross_entropy_backward(TensorView grad_logits, TensorView logits,
                                               TensorView row_max, TensorView sum_exp,
                                               TensorView targets, TensorView grad_loss,
                                               int64_t vocab_start, int64_t vocab_size) = 0;
  virtual void do_swiglu(TensorView out, TensorView gate, TensorView up) = 0;
  virtual void do_swiglu_backward(TensorView grad_gate, TensorView grad_up, TensorView grad_out,
                                  TensorView gate, TensorView up) = 0;
  virtual void do_dropout(TensorView out, TensorView in, float probability, uint64_t seed,
                          uint64_t offset) = 0;
  virtual void do_adamw(TensorView master, TensorView m, TensorView v, TensorView grad,
                        const AdamWStep& step) = 0;
};

std::unique_ptr<Backend> make_cpu_backend();
// Throws weft::Error when weft was built without CUDA or `device` does not exist.
std::unique_ptr<Backend> make_cuda_backend(int device);
// 0 when weft was built without CUDA, or no GPU is visible; never throws.
int cuda_device_count();
// Global memory of CUDA device `device` in bytes; 0 without CUDA or when it cannot be read.
// Never throws.
int64_t cuda_device_memory_bytes(int device);

// Parses "cpu" / "cuda" / "cuda:N" and makes that backend.
std::unique_ptr<Backend> make_backend(const std::string& spec);

}  // namespace weft
