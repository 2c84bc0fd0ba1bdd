// CudaBackend (one GPU: stream-ordered pool memory, streams, events, cuBLASLt GEMM, kernels/ ops)
// and the RAII pieces it is made of: DeviceGuard, CudaStream, CudaEvent.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <memory>
#include <string>

#include "backend/cuda/cublaslt_matmul.hpp"
#include "weft/backend.hpp"

namespace weft {

// Makes `device` current for its lifetime and restores the previous device afterwards, so that
// weft never changes the host program's current device behind its back.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
  int device_;
};

// A cudaStream_t on one device. Each stream also owns the cuBLASLt workspace of the GEMMs queued
// on it (allocated on first use, in stream order from the device's pool): GEMMs on two streams may
// run at once, and one shared workspace would be overwritten by both.
class CudaStream final : public Stream {
 public:
  CudaStream(int device, StreamPriority priority);
  ~CudaStream() override;
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;

  void synchronize() override;
  void* native_handle() const override { return stream_; }
  cudaStream_t get() const { return stream_; }
  int device() const { return device_; }
  // The workspace, `bytes` long; the device must be current.
  void* workspace(size_t bytes);

 private:
  int device_;
  cudaStream_t stream_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
};

class CudaEvent final : public Event {
 public:
  explicit CudaEvent(int device);
  ~CudaEvent() override;
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;

  void record(Stream& stream) override;
  void wait(Stream& stream) override;
  void synchronize() override;

 private:
  int device_;
  cudaEvent_t event_ = nullptr;
};

// The CudaStream behind a weft Stream; throws weft::Error naming `op` when it is not one.
CudaStream& as_cuda_stream(Stream& stream, const char* op);

class CudaBackend final : public Backend {
 public:
  static constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // cuBLASLt workspace per stream

  explicit CudaBackend(int device);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  Device device() const override { return Device::cuda(device_); }
  std::string name() const override { return name_; }

  void* allocate(size_t bytes) override;
  void deallocate(void* ptr) noexcept override;

  Stream& stream() override { return *current_; }
  void set_stream(Stream& stream) override;
  std::unique_ptr<Stream> create_stream(StreamPriority priority) override;
  std::unique_ptr<Event> create_event() override;

 private:
  // Backend's ops, on arguments its entry points have checked.
  void do_copy(TensorView dst, TensorView src) override;
  void do_copy_columns(TensorView dst, int64_t dst_col, TensorView src, int64_t src_col,
                       int64_t cols) override;
  void do_convert(TensorView dst, TensorView src) override;
  void do_fill(TensorView dst, float value) override;
  void do_fill_random(TensorView dst, const RandomFill& spec) override;

  void do_gemm(const GemmArgs& args) override;

  void do_add(TensorView out, TensorView a, TensorView b) override;
  void do_add_bias(TensorView out, TensorView in, TensorView bias) override;
  void do_gelu(TensorView out, TensorView in) override;
  void do_gelu_backward(TensorView grad_in, TensorView grad_out, TensorView input) override;

  // Transformer ops: cuda_transformer_ops.cpp.
  void do_scale(TensorView out, TensorView in, float alpha) override;
  void do_sum_squares(TensorView out, TensorView in) override;
  void do_layer_norm(TensorView out, TensorView mean, TensorView rstd, TensorView in,
                     TensorView gamma, TensorView beta, float eps) override;
  void do_layer_norm_backward(TensorView grad_in, TensorView grad_gamma, TensorView grad_beta,
                              TensorView grad_out, TensorView in, TensorView gamma, TensorView mean,
                              TensorView rstd) override;
  void do_rms_norm(TensorView out, TensorView rstd, TensorView in, TensorView gamma,
                   float eps) override;
  void do_rms_norm_backward(TensorView grad_in, TensorView grad_gamma, TensorView grad_out,
                            TensorView in, TensorView gamma, TensorView rstd) override;
  void do_attention(TensorView out, TensorView lse, TensorView qkv,
                    const AttentionShape& shape) override;
  void do_attention_backward(TensorView grad_qkv, TensorView grad_out, TensorView qkv,
                             TensorView lse, const AttentionShape& shape) override;
  void do_attention_with_cache(TensorView out, TensorView k_cache, TensorView v_cache,
                               TensorView qkv, const AttentionShape& shape, int64_t past) override;
  void do_rope(TensorView qkv, const AttentionShape& shape, float theta, int64_t position_offset,
               bool inverse) override;
  void do_embedding(TensorView out, TensorView ids, TensorView table, int64_t vocab_start) override;
  void do_embedding_backward(TensorView grad_table, TensorView ids, TensorView grad_out,
                             int64_t vocab_start) override;
  void do_vocab_max(TensorView row_max, TensorView logits, int64_t vocab_start,
                    int64_t vocab_size) override;
  void do_vocab_sum_exp_and_target(TensorView sum_exp, TensorView target_logit, TensorView logits,
                                   TensorView row_max, TensorView targets, int64_t vocab_start,
                                   int64_t vocab_size) override;
  void do_vocab_cross_entropy_backward(TensorView grad_logits, TensorView logits,
                                       TensorView row_max, TensorView sum_exp, TensorView targets,
                                       TensorView grad_loss, int64_t vocab_start,
                                       int64_t vocab_size) override;
  void do_swiglu(TensorView out, TensorView gate, TensorView up) override;
  void do_swiglu_backward(TensorView grad_gate, TensorView grad_up, TensorView grad_out,
                          TensorView gate, TensorView up) override;
  void do_dropout(TensorView out, TensorView in, float probability, uint64_t seed,
                  uint64_t offset) override;
  void do_adamw(TensorView master, TensorView m, TensorView v, TensorView grad,
                const AdamWStep& step) override;

  int device_;
  std::string name_;
  // Memory comes from the device's pool (device_memory.hpp), allocated and freed in the order of
  // the current stream: never a device-wide synchronization. Memory a kernel on another stream
  // still uses must be ordered before the current stream before its Tensor is released
  // (PendingGroup::wait() and Event::wait() do that).
  std::unique_ptr<CublasLtMatmul> matmul_;
  std::unique_ptr<CudaStream> default_stream_;
  CudaStream* current_ = nullptr;
};

}  // namespace weft
