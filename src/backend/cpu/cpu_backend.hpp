// CpuBackend: host memory, oneDNN matmul and OpenMP loops. Every op completes before it returns.
#pragma once

#include <memory>

#include "backend/cpu/host_pool.hpp"
#include "weft/backend.hpp"

namespace weft {

class OneDnn;

class CpuBackend final : public Backend {
 public:
  CpuBackend();
  ~CpuBackend() override;

  Device device() const override { return Device::cpu(); }
  std::string name() const override;

  void* allocate(size_t bytes) override;
  void deallocate(void* ptr) noexcept override;

  Stream& stream() override { return *current_; }
  void set_stream(Stream& stream) override;
  std::unique_ptr<Stream> create_stream(StreamPriority priority) override;
  std::unique_ptr<Event> create_event() override;

  void copy(TensorView dst, TensorView src) override;
  void copy_columns(TensorView dst, int64_t dst_col, TensorView src, int64_t src_col,
                    int64_t cols) override;
  void convert(TensorView dst, TensorView src) override;
  void fill(TensorView dst, float value) override;
  void fill_random(TensorView dst, const RandomFill& spec) override;

  void gemm(const GemmArgs& args) override;

  void add(TensorView out, TensorView a, TensorView b) override;
  void add_bias(TensorView out, TensorView in, TensorView bias) override;
  void gelu(TensorView out, TensorView in) override;
  void gelu_backward(TensorView grad_in, TensorView grad_out, TensorView input) override;

  // Transformer ops: cpu_transformer_ops.cpp.
  void scale(TensorView out, TensorView in, float alpha) override;
  void sum_squares(TensorView out, TensorView in) override;
  void layer_norm(TensorView out, TensorView mean, TensorView rstd, TensorView in, TensorView gamma, TensorView beta, float eps) override;
  void layer_norm_backward(TensorView grad_in, TensorView grad_gamma, TensorView grad_beta, TensorView grad_out, TensorView in, TensorView gamma, TensorView mean, TensorView rstd) override;
  void rms_norm(TensorView out, TensorView rstd, TensorView in, TensorView gamma, float eps) override;
  void rms_norm_backward(TensorView grad_in, TensorView grad_gamma, TensorView grad_out, TensorView in, TensorView gamma, TensorView rstd) override;
  // Attention: cpu_attention.cpp.
  void attention(TensorView out, TensorView lse, TensorView qkv, const AttentionShape& shape) override;
  void attention_backward(TensorView grad_qkv, TensorView grad_out, TensorView qkv, TensorView lse, const AttentionShape& shape) override;
  void attention_with_cache(TensorView out, TensorView k_cache, TensorView v_cache, TensorView qkv, const AttentionShape& shape, int64_t past) override;
  void rope(TensorView qkv, const AttentionShape& shape, float theta, int64_t position_offset, bool inverse) override;
  void embedding(TensorView out, TensorView ids, TensorView table, int64_t vocab_start) override;
  void embedding_backward(TensorView grad_table, TensorView ids, TensorView grad_out, int64_t vocab_start) override;
  void vocab_max(TensorView row_max, TensorView logits, int64_t vocab_start, int64_t vocab_size) override;
  void vocab_sum_exp_and_target(TensorView sum_exp, TensorView target_logit, TensorView logits, TensorView row_max, TensorView targets, int64_t vocab_start, int64_t vocab_size) override;
  void vocab_cross_entropy_backward(TensorView grad_logits, TensorView logits, TensorView row_max, TensorView sum_exp, TensorView targets, TensorView grad_loss, int64_t vocab_start, int64_t vocab_size) override;
  void swiglu(TensorView out, TensorView gate, TensorView up) override;
  void swiglu_backward(TensorView grad_gate, TensorView grad_up, TensorView grad_out, TensorView gate, TensorView up) override;
  void dropout(TensorView out, TensorView in, float probability, uint64_t seed, uint64_t offset) override;
  void adamw(TensorView master, TensorView m, TensorView v, TensorView grad, const AdamWStep& step) override;

 private:
  HostMemoryPool pool_;  // first, so it outlives everything below that holds memory
  std::unique_ptr<Stream> default_stream_;
  Stream* current_;
  std::unique_ptr<OneDnn> onednn_;
};

}  // namespace weft
