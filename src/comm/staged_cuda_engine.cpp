// The CUDA staging engine (pinned host memory, cudaMemcpyAsync on the caller's stream) and
// make_staged_communicator for GPU buffers.
#include <cuda_runtime.h>

#include "backend/cuda/cuda_backend.hpp"
#include "backend/cuda_check.hpp"
#include "comm/staged_communicator.hpp"
#include "weft/log.hpp"

namespace weft {

namespace {

class CudaStagingEngine final : public StagingEngine {
 public:
  explicit CudaStagingEngine(int device) : device_(device) {}

  Device device() const override { return Device::cuda(device_); }

  void* allocate_host(size_t bytes) override {
    DeviceGuard guard(device_);
    void* ptr = nullptr;
    WEFT_CHECK_CUDA(cudaMallocHost(&ptr, bytes), "pinned staging buffer of ", bytes, " bytes");
    return ptr;
  }

  void free_host(void* ptr) noexcept override {
    const cudaError_t status = cudaFreeHost(ptr);
    if (status != cudaSuccess) {
      try {
        WEFT_LOG(kError, "cudaFreeHost: ", cudaGetErrorString(status));
      } catch (...) {
      }
    }
  }

  void to_host(void* host, const void* device, size_t bytes, Stream& stream) override {
    DeviceGuard guard(device_);
    WEFT_CHECK_CUDA(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, handle(stream)),
                    "staging ", bytes, " bytes to the host");
  }

  void to_device(void* device, const void* host, size_t bytes, Stream& stream) override {
    DeviceGuard guard(device_);
    WEFT_CHECK_CUDA(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, handle(stream)),
                    "staging ", bytes, " bytes to cuda:", device_);
  }

  void synchronize(Stream& stream) override {
    DeviceGuard guard(device_);
    WEFT_CHECK_CUDA(cudaStreamSynchronize(handle(stream)), "waiting for staging copies");
  }

  void synchronize_device() override {
    DeviceGuard guard(device_);
    WEFT_CHECK_CUDA(cudaDeviceSynchronize(), "barrier: completing queued work");
  }

 private:
  // A null handle is the host stream: the copy would run on the legacy default stream, unordered
  // with the producer on weft's non-blocking streams.
  cudaStream_t handle(Stream& stream) const {
    auto handle = static_cast<cudaStream_t>(stream.native_handle());
    WEFT_CHECK(handle != nullptr,
               "staged communicator: the stream has no CUDA handle (pass a stream of the CUDA "
               "backend)");
    return handle;
  }

  int device_;
};

}  // namespace

std::unique_ptr<Communicator> make_staged_communicator(Communicator& host, int device,
                                                       size_t staging_bytes) {
  const int count = cuda_device_count();
  WEFT_CHECK(device >= 0 && device < count, "staged communicator on cuda:", device,
             " requested, but ", count, " CUDA device(s) are visible");
  WEFT_CHECK(host.buffer_device() == DeviceKind::kCpu, "make_staged_communicator: ", host.name(),
             " must move host buffers");
  // A private copy of the host group (collective), so that the staged one owns what it uses.
  return make_staged_communicator(
      host.split(0, host.rank()), std::make_shared<CudaStagingEngine>(device),
      staging_bytes == 0 ? StagedCommunicator::kDefaultStagingBytes : staging_bytes);
}

}  // namespace weft
