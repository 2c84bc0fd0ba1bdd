// NcclCommunicator: the Communicator over NCCL, with buffers in GPU memory on one device.
#pragma once

#include <nccl.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.hpp"
#include "weft/comm.hpp"

namespace weft {

class NcclCommunicator final : public Communicator {
 public:
  // Takes ownership of `comm`, an initialized communicator on `device`, whose members are
  // `world_ranks` in MPI_COMM_WORLD (empty: unknown).
  NcclCommunicator(ncclComm_t comm, int device, std::vector<int> world_ranks = {});
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "nccl"; }
  DeviceKind buffer_device() const override { return DeviceKind::kCuda; }

  void group_start() override;
  std::unique_ptr<Communicator> split(int color, int key) override;

  // Throws weft::Error when the communicator is no longer usable: NCCL reports an asynchronous
  // error on it (a lost connection, a failed peer; it is aborted first), or it was aborted
  // before. Called before anything is queued and while weft waits on NCCL work.
  void check_health(const char* op);

 protected:
  void do_group_end() override;
  std::unique_ptr<PendingGroup> do_group_end_async() override;
  void do_barrier() override;
  void do_abort() noexcept override;
  void do_all_reduce(TensorView send, TensorView recv, ReduceOp op, Stream& stream) override;
  void do_all_gather(TensorView send, TensorView recv, Stream& stream) override;
  void do_reduce_scatter(TensorView send, TensorView recv, ReduceOp op, Stream& stream) override;
  void do_broadcast(TensorView buffer, int root, Stream& stream) override;
  void do_send(TensorView buffer, int peer, Stream& stream) override;
  void do_recv(TensorView buffer, int peer, Stream& stream) override;

 private:
  // The stream's cudaStream_t, after checking that `views` live on this communicator's device
  // and that the communicator is healthy.
  cudaStream_t prepare(const char* op, Stream& stream, const TensorView& a,
                       const TensorView* b = nullptr);
  // ncclCommAbort, once: NCCL's kernels of this communicator stop instead of waiting for their
  // peers, and its resources are freed without waiting for them. Logs `why`; never throws.
  void abort_comm(const char* why) noexcept;
  // Returns once the work queued on `stream` is done, checking the communicator's health
  // meanwhile, so that an asynchronous NCCL error fails the wait instead of hanging it.
  void wait_polling(cudaStream_t stream, const char* op);
  // Collective: every member's `mine`, in rank order (the world ranks of a split).
  std::vector<int> all_gather_ints(int mine);

  // A send or receive posted inside a group. They are issued at the outermost group end, inside
  // one NCCL group opened there (collectives called inside a weft group run at once), on the
  // caller's stream (group_end) or on comm_stream_ (group_end_async), which is only known then.
  struct P2p {
    bool send;
    TensorView buffer;
    int peer;
    Stream* stream;  // the caller's
    cudaStream_t handle;
  };
  void issue(const P2p& op, cudaStream_t stream);

  ncclComm_t comm_ = nullptr;
  std::atomic<bool> aborted_{false};  // comm_ is gone (set from any thread: abort())
  int device_;
  int group_depth_ = 0;
  std::vector<P2p> posted_;
  // group_end_async(): a high-priority stream of its own, made on first use.
  std::unique_ptr<CudaStream> comm_stream_;
  int rank_ = 0;
  int size_ = 0;
  // barrier(): a private stream and a one-float device buffer (from the pool, in that stream's
  // order, so that freeing it never waits for the device), made on first use.
  std::unique_ptr<CudaStream> barrier_stream_;
  void* barrier_buffer_ = nullptr;
};

}  // namespace weft
