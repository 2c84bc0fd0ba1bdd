// NcclCommunicator: the Communicator over NCCL, with buffers in GPU memory on one device.
#pragma once

#include <nccl.h>

#include <memory>
#include <string>

#include "backend/cuda/cuda_backend.hpp"
#include "weft/comm.hpp"

namespace weft {

class NcclCommunicator final : public Communicator {
 public:
  // Takes ownership of `comm`, an initialized communicator on `device`.
  NcclCommunicator(ncclComm_t comm, int device);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "nccl"; }
  DeviceKind buffer_device() const override { return DeviceKind::kCuda; }

  void group_start() override;
  void group_end() override;
  std::unique_ptr<Communicator> split(int color, int key) override;
  void barrier() override;

 protected:
  void do_all_reduce(TensorView send, TensorView recv, ReduceOp op, Stream& stream) override;
  void do_all_gather(TensorView send, TensorView recv, Stream& stream) override;
  void do_reduce_scatter(TensorView send, TensorView recv, ReduceOp op, Stream& stream) override;
  void do_broadcast(TensorView buffer, int root, Stream& stream) override;
  void do_send(TensorView buffer, int peer, Stream& stream) override;
  void do_recv(TensorView buffer, int peer, Stream& stream) override;

 private:
  // The stream's cudaStream_t, after checking that `views` live on this communicator's device.
  cudaStream_t prepare(const char* op, Stream& stream, const TensorView& a,
                       const TensorView* b = nullptr) const;

  ncclComm_t comm_ = nullptr;
  int device_;
  int rank_ = 0;
  int size_ = 0;
  // cudaFree on the buffer's device; logs, never throws.
  struct DeviceFree {
    int device;
    void operator()(void* ptr) const noexcept;
  };
  // barrier(): a private stream and a one-float device buffer, made on first use.
  std::unique_ptr<CudaStream> barrier_stream_;
  std::unique_ptr<void, DeviceFree> barrier_buffer_;
};

}  // namespace weft
