// CudaBackend (one GPU: cudaMalloc memory, streams, events, cuBLASLt GEMM, kernels/ ops) and the
// RAII pieces it is made of: DeviceGuard, CudaStream, CudaEvent.
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
// on it (allocated on first use): GEMMs on two streams may run at once, and one shared workspace
// would be overwritten by both.
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

 private:
  // Host memory or this device, for the two copy ops.
  void check_copy_side(const TensorView& view, const char* op, const char* what) const;

  int device_;
  std::string name_;
  std::unique_ptr<CublasLtMatmul> matmul_;
  std::unique_ptr<CudaStream> default_stream_;
  CudaStream* current_ = nullptr;
};

}  // namespace weft
