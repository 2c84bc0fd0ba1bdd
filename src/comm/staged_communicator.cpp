// StagedCommunicator: collectives, point-to-point and groups on device buffers through host
// staging copies and a host communicator; StagingPool, the reusable staging blocks.
#include "comm/staged_communicator.hpp"

#include <algorithm>
#include <utility>

#include "weft/error.hpp"
#include "weft/log.hpp"

namespace weft {

// ---- StagingPool ----

StagingPool::~StagingPool() {
  for (const Free& block : free_) engine_->free_host(block.data);
}

StagingPool::Block& StagingPool::Block::operator=(Block&& other) noexcept {
  if (this != &other) {
    release();
    pool_ = std::move(other.pool_);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void StagingPool::Block::release() noexcept {
  if (data_ == nullptr) return;
  try {
    pool_->free_.push_back(Free{data_, bytes_});
  } catch (...) {
    pool_->engine_->free_host(data_);  // no room to keep it: give it back instead
  }
  data_ = nullptr;
  pool_.reset();
}

StagingPool::Block StagingPool::acquire(const std::shared_ptr<StagingPool>& pool, size_t bytes) {
  bytes = std::max<size_t>(bytes, 1);
  // The smallest free block that fits, so that a large one stays for large requests.
  auto& free = pool->free_;
  auto best = free.end();
  for (auto it = free.begin(); it != free.end(); ++it) {
    if (it->bytes >= bytes && (best == free.end() || it->bytes < best->bytes)) best = it;
  }
  if (best != free.end()) {
    const Free found = *best;
    free.erase(best);
    return Block(pool, found.data, found.bytes);
  }
  return Block(pool, pool->engine_->allocate_host(bytes), bytes);
}

// ---- StagedCommunicator ----

namespace {

char* at(const TensorView& view, int64_t element) {
  return static_cast<char*>(view.data) + static_cast<size_t>(element) * dtype_size(view.dtype);
}

TensorView host_view(void* data, int64_t count, DType dtype) {
  return TensorView{data, Shape({count}), dtype, Device::cpu()};
}

// An asynchronously ended group: the host communicator's pending group, and the staging blocks
// its transfers use until they complete.
class StagedPendingGroup final : public PendingGroup {
 public:
  StagedPendingGroup(std::shared_ptr<StagingPool> pool, std::unique_ptr<PendingGroup> host,
                     std::vector<StagingPool::Block> sends,
                     std::vector<StagedCommunicator::StagedRecv> recvs)
      : pool_(std::move(pool)),
        sends_(std::move(sends)),
        recvs_(std::move(recvs)),
        host_(std::move(host)) {}

  // Completes an unwaited group as wait() does (PendingGroup's contract): the copies back to the
  // device are queued on the receives' streams, so a buffer freed after this (stream-ordered) is
  // written first.
  ~StagedPendingGroup() override {
    if (abandoned_) {
      // The host transfers may still use the staging blocks (cancel() gave up on them): they stay
      // allocated rather than go back to the pool.
      WEFT_LOG(kError, "abandoning a staged group whose transfers did not finish: its ",
               sends_.size() + recvs_.size(), " staging blocks stay allocated");
      new std::vector<StagingPool::Block>(std::move(sends_));
      new std::vector<StagedCommunicator::StagedRecv>(std::move(recvs_));
      return;
    }
    try {
      wait();
    } catch (const std::exception& e) {
      WEFT_LOG(kError, "completing an unwaited staged group: ", e.what());
    }
  }

  bool test() override {
    if (done_) return true;
    if (!host_->test()) return false;
    finish();
    return true;
  }

  void wait() override {
    if (done_) return;
    host_->wait();
    finish();
  }

  bool cancel(double seconds) noexcept override {
    if (done_) return true;
    if (host_->cancel(seconds)) {
      done_ = true;  // given up: nothing is copied back
      recvs_.clear();
      sends_.clear();
      return true;
    }
    abandoned_ = true;
    return false;
  }

 private:
  void finish() {
    done_ = true;  // a failed copy is not retried
    finish_staged_recvs(pool_->engine(), recvs_);
    sends_.clear();
  }

  std::shared_ptr<StagingPool> pool_;
  std::vector<StagingPool::Block> sends_;
  std::vector<StagedCommunicator::StagedRecv> recvs_;
  std::unique_ptr<PendingGroup> host_;
  bool done_ = false;
  bool abandoned_ = false;
};

}  // namespace

void finish_staged_recvs(StagingEngine& engine,
                         std::vector<StagedCommunicator::StagedRecv>& recvs) {
  std::vector<Stream*> streams;
  for (const auto& r : recvs) {
    engine.to_device(r.device, r.block.data(), r.bytes, *r.stream);
    if (std::find(streams.begin(), streams.end(), r.stream) == streams.end()) {
      streams.push_back(r.stream);
    }
  }
  for (Stream* s : streams) engine.synchronize(*s);
  recvs.clear();
}

StagedCommunicator::StagedCommunicator(std::unique_ptr<Communicator> host,
                                       std::shared_ptr<StagingPool> pool, size_t staging_bytes)
    : host_(std::move(host)), pool_(std::move(pool)), staging_bytes_(staging_bytes) {
  WEFT_CHECK(host_ != nullptr && host_->buffer_device() == DeviceKind::kCpu,
             "staged communicator: the communicator underneath must move host buffers");
  WEFT_CHECK(staging_bytes_ > 0, "staged communicator: staging area of 0 bytes");
  set_world_ranks(host_->world_ranks());
}

void StagedCommunicator::check_device(const TensorView& view, const char* what) const {
  WEFT_CHECK(view.device == engine().device(), name(), " communicator: ", what, " ", view.str(),
             " is not on ", engine().device().str(), ", this communicator's device");
}

int64_t StagedCommunicator::chunk_elements(size_t element_bytes, int slots) const {
  return std::max<int64_t>(
      1, static_cast<int64_t>(staging_bytes_ / (element_bytes * static_cast<size_t>(slots))));
}

void StagedCommunicator::do_all_reduce(TensorView send, TensorView recv, ReduceOp op,
                                       Stream& stream) {
  check_device(send, "all_reduce send buffer");
  check_device(recv, "all_reduce recv buffer");
  const size_t elem = dtype_size(recv.dtype);
  const int64_t n = recv.numel(), chunk = chunk_elements(elem, 1);
  StagingPool::Block area =
      StagingPool::acquire(pool_, static_cast<size_t>(std::min(n, chunk)) * elem);
  for (int64_t off = 0; off < n; off += chunk) {
    const int64_t count = std::min(chunk, n - off);
    const size_t bytes = static_cast<size_t>(count) * elem;
    engine().to_host(area.data(), at(send, off), bytes, stream);
    engine().synchronize(stream);
    const TensorView staged = host_view(area.data(), count, recv.dtype);
    host_->all_reduce(staged, staged, op, host_stream());
    engine().to_device(at(recv, off), area.data(), bytes, stream);
    engine().synchronize(stream);  // before the next chunk overwrites the area
  }
}

void StagedCommunicator::do_all_gather(TensorView send, TensorView recv, Stream& stream) {
  check_device(send, "all_gather send buffer");
  check_device(recv, "all_gather recv buffer");
  const size_t elem = dtype_size(send.dtype);
  const int p = size(), me = rank();
  const int64_t n = send.numel(), chunk = chunk_elements(elem, p);
  StagingPool::Block area =
      StagingPool::acquire(pool_, static_cast<size_t>(std::min(n, chunk)) * p * elem);
  for (int64_t off = 0; off < n; off += chunk) {
    const int64_t count = std::min(chunk, n - off);
    const size_t bytes = static_cast<size_t>(count) * elem;
    // The area holds the chunk of every rank in rank order; this rank's is gathered in place.
    char* mine = area.data() + bytes * me;
    engine().to_host(mine, at(send, off), bytes, stream);
    engine().synchronize(stream);
    host_->all_gather(host_view(mine, count, send.dtype),
                      host_view(area.data(), count * p, send.dtype), host_stream());
    for (int r = 0; r < p; ++r) {
      engine().to_device(at(recv, r * n + off), area.data() + bytes * r, bytes, stream);
    }
    engine().synchronize(stream);
  }
}

void StagedCommunicator::do_reduce_scatter(TensorView send, TensorView recv, ReduceOp op,
                                           Stream& stream) {
  check_device(send, "reduce_scatter send buffer");
  check_device(recv, "reduce_scatter recv buffer");
  // A later chunk would read what an earlier one wrote.
  const char *s0 = at(send, 0), *s1 = at(send, send.numel());
  const char *r0 = at(recv, 0), *r1 = at(recv, recv.numel());
  WEFT_CHECK(r1 <= s0 || s1 <= r0 || recv.numel() == 0, name(), " reduce_scatter: recv ",
             recv.str(), " overlaps send ", send.str(), "; they must be distinct buffers");
  const size_t elem = dtype_size(recv.dtype);
  const int p = size();
  const int64_t n = recv.numel(), chunk = chunk_elements(elem, p + 1);
  StagingPool::Block area =
      StagingPool::acquire(pool_, static_cast<size_t>(std::min(n, chunk)) * (p + 1) * elem);
  for (int64_t off = 0; off < n; off += chunk) {
    const int64_t count = std::min(chunk, n - off);
    const size_t bytes = static_cast<size_t>(count) * elem;
    // Slots 0..p-1: the chunk of each rank's block; slot p: this rank's reduced chunk.
    for (int r = 0; r < p; ++r) {
      engine().to_host(area.data() + bytes * r, at(send, r * n + off), bytes, stream);
    }
    engine().synchronize(stream);
    char* reduced = area.data() + bytes * p;
    host_->reduce_scatter(host_view(area.data(), count * p, recv.dtype),
                          host_view(reduced, count, recv.dtype), op, host_stream());
    engine().to_device(at(recv, off), reduced, bytes, stream);
    engine().synchronize(stream);
  }
}

void StagedCommunicator::do_broadcast(TensorView buffer, int root, Stream& stream) {
  check_device(buffer, "broadcast buffer");
  const size_t elem = dtype_size(buffer.dtype);
  const int64_t n = buffer.numel(), chunk = chunk_elements(elem, 1);
  StagingPool::Block area =
      StagingPool::acquire(pool_, static_cast<size_t>(std::min(n, chunk)) * elem);
  for (int64_t off = 0; off < n; off += chunk) {
    const int64_t count = std::min(chunk, n - off);
    const size_t bytes = static_cast<size_t>(count) * elem;
    if (rank() == root) {
      engine().to_host(area.data(), at(buffer, off), bytes, stream);
      engine().synchronize(stream);
    }
    host_->broadcast(host_view(area.data(), count, buffer.dtype), root, host_stream());
    if (rank() != root) {
      engine().to_device(at(buffer, off), area.data(), bytes, stream);
      engine().synchronize(stream);
    }
  }
}

void StagedCommunicator::do_send(TensorView buffer, int peer, Stream& stream) {
  check_device(buffer, "send buffer");
  const size_t elem = dtype_size(buffer.dtype);
  const int64_t n = buffer.numel();
  if (group_depth_ > 0) {
    StagingPool::Block block = StagingPool::acquire(pool_, buffer.bytes());
    engine().to_host(block.data(), buffer.data, buffer.bytes(), stream);
    engine().synchronize(stream);
    host_->send(host_view(block.data(), n, buffer.dtype), peer, host_stream());
    group_sends_.push_back(std::move(block));
    return;
  }
  // Outside a group each chunk is sent before the next; the receiver chunks alike.
  const int64_t chunk = chunk_elements(elem, 1);
  StagingPool::Block area =
      StagingPool::acquire(pool_, static_cast<size_t>(std::min(n, chunk)) * elem);
  for (int64_t off = 0; off < n; off += chunk) {
    const int64_t count = std::min(chunk, n - off);
    engine().to_host(area.data(), at(buffer, off), static_cast<size_t>(count) * elem, stream);
    engine().synchronize(stream);
    host_->send(host_view(area.data(), count, buffer.dtype), peer, host_stream());
  }
}

void StagedCommunicator::do_recv(TensorView buffer, int peer, Stream& stream) {
  check_device(buffer, "recv buffer");
  const size_t elem = dtype_size(buffer.dtype);
  const int64_t n = buffer.numel();
  if (group_depth_ > 0) {
    StagingPool::Block block = StagingPool::acquire(pool_, buffer.bytes());
    host_->recv(host_view(block.data(), n, buffer.dtype), peer, host_stream());
    group_recvs_.push_back(StagedRecv{std::move(block), buffer.data, buffer.bytes(), &stream});
    return;
  }
  const int64_t chunk = chunk_elements(elem, 1);
  StagingPool::Block area =
      StagingPool::acquire(pool_, static_cast<size_t>(std::min(n, chunk)) * elem);
  for (int64_t off = 0; off < n; off += chunk) {
    const int64_t count = std::min(chunk, n - off);
    host_->recv(host_view(area.data(), count, buffer.dtype), peer, host_stream());
    engine().to_device(at(buffer, off), area.data(), static_cast<size_t>(count) * elem, stream);
    engine().synchronize(stream);
  }
}

void StagedCommunicator::group_start() {
  host_->group_start();
  ++group_depth_;
}

void StagedCommunicator::do_group_end() {
  WEFT_CHECK(group_depth_ > 0, "group_end without a matching group_start");
  std::vector<StagingPool::Block> sends;
  std::vector<StagedRecv> recvs;
  if (--group_depth_ == 0) {
    // Taken out first, so that a failed group leaves nothing behind for the next one.
    sends.swap(group_sends_);
    recvs.swap(group_recvs_);
  }
  host_->group_end();
  finish_staged_recvs(engine(), recvs);
}

std::unique_ptr<PendingGroup> StagedCommunicator::do_group_end_async() {
  WEFT_CHECK(group_depth_ == 1, group_depth_ == 0 ? "group_end_async without a group_start"
                                                  : "group_end_async must end the outermost group");
  group_depth_ = 0;
  std::vector<StagingPool::Block> sends;
  std::vector<StagedRecv> recvs;
  sends.swap(group_sends_);
  recvs.swap(group_recvs_);
  std::unique_ptr<PendingGroup> host = host_->group_end_async();
  return std::make_unique<StagedPendingGroup>(pool_, std::move(host), std::move(sends),
                                              std::move(recvs));
}

std::unique_ptr<Communicator> StagedCommunicator::split(int color, int key) {
  return std::make_unique<StagedCommunicator>(host_->split(color, key), pool_, staging_bytes_);
}

void StagedCommunicator::do_abort() noexcept { host_->abort(); }

void StagedCommunicator::do_barrier() {
  engine().synchronize_device();  // queued work completes first, as the contract says
  host_->barrier();
}

std::unique_ptr<Communicator> make_staged_communicator(std::unique_ptr<Communicator> host,
                                                       std::shared_ptr<StagingEngine> engine,
                                                       size_t staging_bytes) {
  WEFT_CHECK(engine != nullptr, "make_staged_communicator: no staging engine");
  auto pool = std::make_shared<StagingPool>(std::move(engine));
  return std::make_unique<StagedCommunicator>(std::move(host), std::move(pool), staging_bytes);
}

}  // namespace weft
