// MpiCommunicator: host-buffer collectives and point-to-point over an MPI communicator.
#pragma once

#include <mpi.h>

#include <string>
#include <vector>

#include "weft/comm.hpp"

namespace weft {

class MpiCommunicator final : public Communicator {
 public:
  // Takes ownership of `comm` (freed on destruction).
  explicit MpiCommunicator(MPI_Comm comm);
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "mpi"; }
  DeviceKind buffer_device() const override { return DeviceKind::kCpu; }

  void group_start() override;
  std::unique_ptr<Communicator> split(int color, int key) override;

  MPI_Comm native() const { return comm_; }

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
  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
  int group_depth_ = 0;
  std::vector<MPI_Request> pending_;    // p2p posted inside the current group
  std::vector<bool> pending_receives_;  // which of them are receives
};

}  // namespace weft
