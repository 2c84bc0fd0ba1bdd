// CpuBackend: host memory, oneDNN matmul and OpenMP loops. Every op completes before it returns.
#pragma once

#include <memory>

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

 private:
  std::unique_ptr<Stream> default_stream_;
  Stream* current_;
  std::unique_ptr<OneDnn> onednn_;
};

}  // namespace weft
