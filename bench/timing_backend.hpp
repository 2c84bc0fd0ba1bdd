// TimingBackend: a weft::Backend that forwards every call to a wrapped backend and measures the
// wall time spent inside gemm() and inside the fused attention (forward and backward), so that a
// benchmark can split a layer's time exactly into GEMM, attention and everything else.
//
// On a device with asynchronous streams (CUDA) each gemm() is bracketed by stream
// synchronizations: the host first waits for the work queued before the GEMM (which is not
// GEMM time), then for the GEMM itself, and the time between the two waits is the GEMM's. The
// synchronizations take away the overlap of kernel launches with execution, so on CUDA time the
// whole step with timing off (set_timing(false): pure forwarding, no synchronization) when what
// matters is throughput. On the CPU every op completes before it returns and timing costs two
// clock reads per GEMM.
//
//   auto cpu = weft::make_cpu_backend();
//   weft::bench::TimingBackend timed(*cpu);
//   weft::TransformerLayer layer(weft::ParallelContext{timed, *tp}, config, 0);
//   ... timed.reset(); step(); timed.gemm_seconds(), timed.gemm_calls(), timed.gemm_flops()
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "weft/backend.hpp"

namespace weft::bench {

class TimingBackend final : public Backend {
 public:
  explicit TimingBackend(Backend& inner) : inner_(inner) {}

  Backend& inner() { return inner_; }
  // On: gemm() is timed (and, on a GPU, synchronized). Off: every call is a plain forward.
  void set_timing(bool on) { timing_ = on; }
  bool timing() const { return timing_; }
  void reset() {
    gemm_seconds_ = 0.0;
    gemm_flops_ = 0.0;
    gemm_calls_ = 0;
    attention_seconds_ = 0.0;
    attention_flops_ = 0.0;
  }
  // Since the last reset(): wall time inside gemm() (only while timing is on), and the calls and
  // FLOPs (2 m n k each) of every gemm().
  double gemm_seconds() const { return gemm_seconds_; }
  double gemm_flops() const { return gemm_flops_; }
  int64_t gemm_calls() const { return gemm_calls_; }
  // The same for attention() and attention_backward(), counting the causal products a model
  // counts (recomputation in backward excluded): QK^T and PV forward, 2 b h s^2 d FLOPs; dV, dP,
  // dQ and dK backward, 4 b h s^2 d.
  double attention_seconds() const { return attention_seconds_; }
  double attention_flops() const { return attention_flops_; }

  // 2 m n k of C = op(A) op(B), op(A) m x k (stored k x m when transpose_a), C m x n.
  static double flops(const GemmArgs& args) {
    const int64_t k = args.transpose_a ? args.a.shape.rows() : args.a.shape.cols();
    return 2.0 * static_cast<double>(args.c.shape.rows()) *
           static_cast<double>(args.c.shape.cols()) * static_cast<double>(k);
  }

  Device device() const override { return inner_.device(); }
  std::string name() const override { return inner_.name(); }

  void* allocate(size_t bytes) override { return inner_.allocate(bytes); }
  void deallocate(void* ptr) noexcept override { inner_.deallocate(ptr); }

  Stream& stream() override { return inner_.stream(); }
  void set_stream(Stream& stream) override { inner_.set_stream(stream); }
  std::unique_ptr<Stream> create_stream(StreamPriority priority) override {
    return inner_.create_stream(priority);
  }
  std::unique_ptr<Event> create_event() override { return inner_.create_event(); }

 private:
  void do_copy(TensorView dst, TensorView src) override { inner_.copy(dst, src); }
  void do_copy_columns(TensorView dst, int64_t dst_col, TensorView src, int64_t src_col,
                       int64_t cols) override {
    inner_.copy_columns(dst, dst_col, src, src_col, cols);
  }
  void do_convert(TensorView dst, TensorView src) override { inner_.convert(dst, src); }
  void do_fill(TensorView dst, float value) override { inner_.fill(dst, value); }
  void do_fill_random(TensorView dst, const RandomFill& spec) override {
    inner_.fill_random(dst, spec);
  }

  void do_gemm(const GemmArgs& args) override {
    ++gemm_calls_;
    gemm_flops_ += flops(args);
    if (!timing_) {
      inner_.gemm(args);
      return;
    }
    gemm_seconds_ += timed([&] { inner_.gemm(args); });
  }

  void do_add(TensorView out, TensorView a, TensorView b) override { inner_.add(out, a, b); }
  void do_add_bias(TensorView out, TensorView in, TensorView bias) override {
    inner_.add_bias(out, in, bias);
  }
  void do_gelu(TensorView out, TensorView in) override { inner_.gelu(out, in); }
  void do_gelu_backward(TensorView grad_in, TensorView grad_out, TensorView input) override {
    inner_.gelu_backward(grad_in, grad_out, input);
  }
  void do_scale(TensorView out, TensorView in, float alpha) override {
    inner_.scale(out, in, alpha);
  }
  void do_sum_squares(TensorView out, TensorView in) override { inner_.sum_squares(out, in); }

  void do_layer_norm(TensorView out, TensorView mean, TensorView rstd, TensorView in,
                     TensorView gamma, TensorView beta, float eps) override {
    inner_.layer_norm(out, mean, rstd, in, gamma, beta, eps);
  }
  void do_layer_norm_backward(TensorView grad_in, TensorView grad_gamma, TensorView grad_beta,
                              TensorView grad_out, TensorView in, TensorView gamma, TensorView mean,
                              TensorView rstd) override {
    inner_.layer_norm_backward(grad_in, grad_gamma, grad_beta, grad_out, in, gamma, mean, rstd);
  }
  void do_rms_norm(TensorView out, TensorView rstd, TensorView in, TensorView gamma,
                   float eps) override {
    inner_.rms_norm(out, rstd, in, gamma, eps);
  }
  void do_rms_norm_backward(TensorView grad_in, TensorView grad_gamma, TensorView grad_out,
                            TensorView in, TensorView gamma, TensorView rstd) override {
    inner_.rms_norm_backward(grad_in, grad_gamma, grad_out, in, gamma, rstd);
  }

  void do_attention(TensorView out, TensorView lse, TensorView qkv,
                    const AttentionShape& shape) override {
    attention_flops_ += 2.0 * causal_products(shape);
    if (!timing_) {
      inner_.attention(out, lse, qkv, shape);
      return;
    }
    attention_seconds_ += timed([&] { inner_.attention(out, lse, qkv, shape); });
  }
  void do_attention_backward(TensorView grad_qkv, TensorView grad_out, TensorView qkv,
                             TensorView lse, const AttentionShape& shape) override {
    attention_flops_ += 4.0 * causal_products(shape);
    if (!timing_) {
      inner_.attention_backward(grad_qkv, grad_out, qkv, lse, shape);
      return;
    }
    attention_seconds_ +=
        timed([&] { inner_.attention_backward(grad_qkv, grad_out, qkv, lse, shape); });
  }
  void do_attention_with_cache(TensorView out, TensorView k_cache, TensorView v_cache,
                               TensorView qkv, const AttentionShape& shape, int64_t past) override {
    inner_.attention_with_cache(out, k_cache, v_cache, qkv, shape, past);
  }
  void do_rope(TensorView qkv, const AttentionShape& shape, float theta, int64_t position_offset,
               bool inverse) override {
    inner_.rope(qkv, shape, theta, position_offset, inverse);
  }

  void do_embedding(TensorView out, TensorView ids, TensorView table,
                    int64_t vocab_start) override {
    inner_.embedding(out, ids, table, vocab_start);
  }
  void do_embedding_backward(TensorView grad_table, TensorView ids, TensorView grad_out,
                             int64_t vocab_start) override {
    inner_.embedding_backward(grad_table, ids, grad_out, vocab_start);
  }

  void do_vocab_max(TensorView row_max, TensorView logits, int64_t vocab_start,
                    int64_t vocab_size) override {
    inner_.vocab_max(row_max, logits, vocab_start, vocab_size);
  }
  void do_vocab_sum_exp_and_target(TensorView sum_exp, TensorView target_logit, TensorView logits,
                                   TensorView row_max, TensorView targets, int64_t vocab_start,
                                   int64_t vocab_size) override {
    inner_.vocab_sum_exp_and_target(sum_exp, target_logit, logits, row_max, targets, vocab_start,
                                    vocab_size);
  }
  void do_vocab_cross_entropy_backward(TensorView grad_logits, TensorView logits,
                                       TensorView row_max, TensorView sum_exp, TensorView targets,
                                       TensorView grad_loss, int64_t vocab_start,
                                       int64_t vocab_size) override {
    inner_.vocab_cross_entropy_backward(grad_logits, logits, row_max, sum_exp, targets, grad_loss,
                                        vocab_start, vocab_size);
  }

  void do_swiglu(TensorView out, TensorView gate, TensorView up) override {
    inner_.swiglu(out, gate, up);
  }
  void do_swiglu_backward(TensorView grad_gate, TensorView grad_up, TensorView grad_out,
                          TensorView gate, TensorView up) override {
    inner_.swiglu_backward(grad_gate, grad_up, grad_out, gate, up);
  }
  void do_dropout(TensorView out, TensorView in, float probability, uint64_t seed,
                  uint64_t offset) override {
    inner_.dropout(out, in, probability, seed, offset);
  }
  void do_adamw(TensorView master, TensorView m, TensorView v, TensorView grad,
                const AdamWStep& step) override {
    inner_.adamw(master, m, v, grad, step);
  }

  // b h s^2 d: the FLOPs of one causal product (s^2 / 2 of the s^2 d multiply-adds, 2 FLOPs each).
  static double causal_products(const AttentionShape& s) {
    return static_cast<double>(s.batch * s.heads * s.head_dim) * static_cast<double>(s.seq) *
           static_cast<double>(s.seq);
  }
  // Seconds that fn took; on an asynchronous device the queued work is waited for before and after.
  template <typename Fn>
  double timed(Fn&& fn) {
    const bool async = !inner_.device().is_cpu();
    if (async) inner_.synchronize();
    const auto start = std::chrono::steady_clock::now();
    fn();
    if (async) inner_.synchronize();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }

  Backend& inner_;
  bool timing_ = true;
  double gemm_seconds_ = 0.0;
  double gemm_flops_ = 0.0;
  int64_t gemm_calls_ = 0;
  double attention_seconds_ = 0.0;
  double attention_flops_ = 0.0;
};

}  // namespace weft::bench
