// StagedCommunicator: a host communicator (MPI, self) made to move device buffers by staging them
// through host memory, so that several ranks can share one GPU (NCCL refuses that).
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "weft/comm.hpp"

namespace weft {

// Copies between a communicator's buffers (in `device()` memory) and host staging memory, queued
// on the caller's stream after the work already there: the copy engine behind StagedCommunicator.
// CUDA: pinned memory and cudaMemcpyAsync; the distributed tests also run it over host memory.
class StagingEngine {
 public:
  virtual ~StagingEngine() = default;
  virtual Device device() const = 0;
  // Host memory for staging (pinned on CUDA), at least `bytes` long.
  virtual void* allocate_host(size_t bytes) = 0;
  virtual void free_host(void* ptr) noexcept = 0;
  virtual void to_host(void* host, const void* device, size_t bytes, Stream& stream) = 0;
  virtual void to_device(void* device, const void* host, size_t bytes, Stream& stream) = 0;
  // The host waits for everything queued on `stream` (the copies above included).
  virtual void synchronize(Stream& stream) = 0;
  // The host waits for all work queued on the device (barrier()).
  virtual void synchronize_device() = 0;
};

// Host blocks of an engine, kept for reuse once released (a pinned allocation costs far more
// than a copy). Shared by a communicator, its splits and their pending groups.
class StagingPool {
 public:
  explicit StagingPool(std::shared_ptr<StagingEngine> engine) : engine_(std::move(engine)) {}
  ~StagingPool();
  StagingPool(const StagingPool&) = delete;
  StagingPool& operator=(const StagingPool&) = delete;

  // A block of at least `bytes`, handed back to the pool when destroyed.
  class Block {
   public:
    Block() = default;
    Block(std::shared_ptr<StagingPool> pool, void* data, size_t bytes)
        : pool_(std::move(pool)), data_(data), bytes_(bytes) {}
    Block(Block&& other) noexcept { *this = std::move(other); }
    Block& operator=(Block&& other) noexcept;
    ~Block() { release(); }
    char* data() const { return static_cast<char*>(data_); }

   private:
    void release() noexcept;
    std::shared_ptr<StagingPool> pool_;
    void* data_ = nullptr;
    size_t bytes_ = 0;
  };

  static Block acquire(const std::shared_ptr<StagingPool>& pool, size_t bytes);
  StagingEngine& engine() const { return *engine_; }

 private:
  struct Free {
    void* data;
    size_t bytes;
  };
  std::shared_ptr<StagingEngine> engine_;
  std::vector<Free> free_;
};

// Every Communicator operation on device buffers: device -> host copy on the caller's stream
// (ordered after the producer), the host communicator's operation on the copy, host -> device copy
// back. Collectives and p2p outside a group go through a bounded staging area of `staging_bytes`,
// chunk by chunk (every rank chunks alike, since sizes match); the transfers of a group are posted
// together, so each gets a staging block of its own. Every call returns with its device writes
// complete, as MPI's do; a group's at its end, or at PendingGroup::test()/wait() when asynchronous.
class StagedCommunicator final : public Communicator {
 public:
  static constexpr size_t kDefaultStagingBytes = size_t{4} << 20;

  StagedCommunicator(std::unique_ptr<Communicator> host, std::shared_ptr<StagingPool> pool,
                     size_t staging_bytes);
  // Block groups (split from this one) go before the host communicator they wrap a split of.
  ~StagedCommunicator() override { release_block_groups(); }

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  std::string name() const override { return host_->name() + "-staged"; }
  std::string describe() const override { return host_->describe() + ", staged"; }
  DeviceKind buffer_device() const override { return engine().device().kind; }

  void group_start() override;
  std::unique_ptr<Communicator> split(int color, int key) override;

  // A received block waiting for its copy to the device.
  struct StagedRecv {
    StagingPool::Block block;
    void* device;
    size_t bytes;
    Stream* stream;
  };

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
  StagingEngine& engine() const { return pool_->engine(); }
  void check_device(const TensorView& view, const char* what) const;
  // Elements per chunk when the staging area holds `slots` chunks of `element_bytes` elements.
  int64_t chunk_elements(size_t element_bytes, int slots) const;

  std::unique_ptr<Communicator> host_;
  std::shared_ptr<StagingPool> pool_;
  size_t staging_bytes_;
  int group_depth_ = 0;
  std::vector<StagingPool::Block> group_sends_;  // kept until the group's transfers complete
  std::vector<StagedRecv> group_recvs_;
};

// Copies each received block to its device buffer and waits for the copies (their blocks are
// then free to reuse).
void finish_staged_recvs(StagingEngine& engine, std::vector<StagedCommunicator::StagedRecv>& recvs);

// A staged communicator over `host` (which it owns) with `engine`'s device buffers.
std::unique_ptr<Communicator> make_staged_communicator(
    std::unique_ptr<Communicator> host, std::shared_ptr<StagingEngine> engine,
    size_t staging_bytes = StagedCommunicator::kDefaultStagingBytes);

}  // namespace weft
