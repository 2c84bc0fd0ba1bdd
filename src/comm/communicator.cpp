// Communicator's public entry points: argument checks shared by every implementation.
#include "weft/comm.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "comm/op_tracker.hpp"
#include "weft/error.hpp"
#include "weft/log.hpp"

namespace weft {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kMax:
      return "max";
    case ReduceOp::kMin:
      return "min";
  }
  return "unknown";
}

float all_reduce_scalar(Communicator& comm, Backend& backend, float value, ReduceOp op) {
  TensorView host{&value, Shape({1}), DType::kF32, Device::cpu()};
  if (comm.buffer_device() == DeviceKind::kCpu) {
    comm.all_reduce(host, host, op, host_stream());
    return value;
  }
  Tensor staged(backend, Shape({1}), DType::kF32);
  backend.copy(staged, host);
  comm.all_reduce(staged, staged, op, backend.stream());
  backend.copy(host, staged);
  return value;
}

void all_gather_host(Communicator& comm, Backend* staging, TensorView send, TensorView recv) {
  WEFT_CHECK(send.device.is_cpu() && recv.device.is_cpu(), "all_gather_host: host buffers only");
  if (comm.buffer_device() == DeviceKind::kCpu) {
    comm.all_gather(send, recv, host_stream());
    return;
  }
  WEFT_CHECK(staging != nullptr, "all_gather_host: the ", comm.name(),
             " communicator moves device buffers; a backend must stage them");
  Tensor staged_send(*staging, send.shape, send.dtype),
      staged_recv(*staging, recv.shape, recv.dtype);
  staging->copy(staged_send, send);
  comm.all_gather(staged_send, staged_recv, staging->stream());
  staging->copy(recv, staged_recv);
  staging->synchronize();
}

void run_agreed(Communicator& comm, Backend& backend, const std::function<void()>& local) {
  if (comm.size() == 1) return local();
  int code = -1;
  std::string message;
  try {
    local();
  } catch (const Error& e) {
    code = static_cast<int>(e.code());
    message = e.message();
  } catch (const std::exception& e) {
    code = static_cast<int>(ErrorCode::kInternal);
    message = e.what();
  }
  // Ranks are exact in a float up to 2^24.
  const int size = comm.size();
  const int failed = static_cast<int>(all_reduce_scalar(
      comm, backend, static_cast<float>(code < 0 ? size : comm.rank()), ReduceOp::kMin));
  if (failed >= size) return;
  const bool root = comm.rank() == failed;
  if (root) message.resize(std::min<size_t>(message.size(), 4096));
  const int agreed_code = static_cast<int>(
      all_reduce_scalar(comm, backend, root ? static_cast<float>(code) : 0.0f, ReduceOp::kMax));
  const int64_t length = static_cast<int64_t>(all_reduce_scalar(
      comm, backend, root ? static_cast<float>(message.size()) : 0.0f, ReduceOp::kMax));
  // The message travels as the bytes of f32 elements (broadcast moves any bytes unchanged).
  std::vector<float> words(static_cast<size_t>((length + 3) / 4) + 1, 0.0f);
  if (root) std::memcpy(words.data(), message.data(), message.size());
  TensorView host{words.data(), Shape({static_cast<int64_t>(words.size())}), DType::kF32,
                  Device::cpu()};
  if (comm.buffer_device() == DeviceKind::kCpu) {
    comm.broadcast(host, failed, host_stream());
  } else {
    Tensor staged(backend, host.shape, DType::kF32);
    backend.copy(staged, host);
    comm.broadcast(staged, failed, backend.stream());
    backend.copy(host, staged);
  }
  const std::string text(reinterpret_cast<const char*>(words.data()), static_cast<size_t>(length));
  detail::throw_error(static_cast<ErrorCode>(agreed_code),
                      detail::concat("rank ", failed, ": ", text), "run_agreed", __FILE__,
                      __LINE__);
}

bool PendingGroup::cancel(double seconds) noexcept {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  try {
    while (!test()) {
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return true;
  } catch (const std::exception& e) {
    WEFT_LOG(kError, "cancelling a pending group: ", e.what());
    return false;
  }
}

namespace {
// A group whose transfers were complete before it was returned.
class CompletedGroup final : public PendingGroup {
 public:
  bool test() override { return true; }
  void wait() override {}
};
}  // namespace

std::unique_ptr<PendingGroup> Communicator::completed_group() {
  return std::make_unique<CompletedGroup>();
}

std::unique_ptr<PendingGroup> Communicator::do_group_end_async() {
  do_group_end();
  return completed_group();
}

namespace {
// A pending group whose wait() the watchdog sees (the transfers' peers may never arrive).
class TrackedGroup final : public PendingGroup {
 public:
  TrackedGroup(std::unique_ptr<PendingGroup> inner, Communicator& comm)
      : inner_(std::move(inner)), comm_(comm) {}
  bool test() override { return inner_->test(); }
  void wait() override {
    detail::OpScope scope(comm_, "wait of an asynchronous send/recv group");
    inner_->wait();
  }
  bool cancel(double seconds) noexcept override { return inner_->cancel(seconds); }

 private:
  std::unique_ptr<PendingGroup> inner_;
  Communicator& comm_;
};
}  // namespace

void Communicator::group_end() {
  check_usable("group_end");
  detail::OpScope scope(*this, "group_end (sends/receives)");
  do_group_end();
}

std::unique_ptr<PendingGroup> Communicator::group_end_async() {
  check_usable("group_end_async");
  return std::make_unique<TrackedGroup>(do_group_end_async(), *this);
}

void Communicator::barrier() {
  check_usable("barrier");
  detail::OpScope scope(*this, "barrier");
  do_barrier();
}

void Communicator::abort() noexcept {
  if (aborted_.exchange(true)) return;
  do_abort();
}

std::string Communicator::describe() const {
  return name() + " group of " + std::to_string(size()) + " ranks (this one is rank " +
         std::to_string(rank()) + ")";
}

void Communicator::check_usable(const char* op) const {
  if (aborted_.load()) {
    WEFT_THROW(ErrorCode::kInternal, name(), " communicator: ", op,
               " after the communicator was aborted");
  }
}

Communicator& Communicator::block_group(int ranks_per_block) {
  WEFT_CHECK(ranks_per_block > 0 && size() % ranks_per_block == 0, name(),
             " communicator: block_group of ", ranks_per_block,
             " ranks must divide the group size ", size());
  // Every rank asks for the same sizes in the same order, so every rank finds or makes the group
  // alike: the split is collective.
  std::unique_ptr<Communicator>& group = block_groups_[ranks_per_block];
  if (group == nullptr) group = split(rank() / ranks_per_block, rank());
  return *group;
}

void Communicator::check_buffer(const TensorView& view, const char* what) const {
  WEFT_CHECK(view.device.kind == buffer_device(), name(), " communicator: ", what, " ", view.str(),
             " is in ", view.device.str(), " memory, but this communicator moves ",
             buffer_device() == DeviceKind::kCpu ? "host" : "GPU", " buffers");
  WEFT_CHECK(view.data != nullptr || view.numel() == 0, name(), " communicator: ", what,
             " has no data");
}

void Communicator::check_peer(int peer, const char* what) const {
  WEFT_CHECK(peer >= 0 && peer < size(), name(), " communicator: ", what, " rank ", peer,
             " is outside the group of size ", size());
}

void Communicator::all_reduce(TensorView send, TensorView recv, ReduceOp op, Stream& stream) {
  check_buffer(send, "all_reduce send buffer");
  check_buffer(recv, "all_reduce recv buffer");
  WEFT_CHECK(send.numel() == recv.numel() && send.dtype == recv.dtype, "all_reduce: send ",
             send.str(), " and recv ", recv.str(), " must have equal element counts and dtypes");
  check_usable("all_reduce");
  detail::OpScope scope(*this, "all_reduce");
  do_all_reduce(send, recv, op, stream);
}

void Communicator::all_gather(TensorView send, TensorView recv, Stream& stream) {
  check_buffer(send, "all_gather send buffer");
  check_buffer(recv, "all_gather recv buffer");
  WEFT_CHECK(send.dtype == recv.dtype, "all_gather: dtypes differ (send ", send.str(), ", recv ",
             recv.str(), ")");
  WEFT_CHECK(recv.numel() == send.numel() * size(), "all_gather: recv ", recv.str(),
             " must hold group size (", size(), ") x send elements (", send.numel(), ")");
  check_usable("all_gather");
  detail::OpScope scope(*this, "all_gather");
  do_all_gather(send, recv, stream);
}

void Communicator::reduce_scatter(TensorView send, TensorView recv, ReduceOp op, Stream& stream) {
  check_buffer(send, "reduce_scatter send buffer");
  check_buffer(recv, "reduce_scatter recv buffer");
  WEFT_CHECK(send.dtype == recv.dtype, "reduce_scatter: dtypes differ (send ", send.str(),
             ", recv ", recv.str(), ")");
  WEFT_CHECK(send.numel() == recv.numel() * size(), "reduce_scatter: send ", send.str(),
             " must hold group size (", size(), ") x recv elements (", recv.numel(), ")");
  check_usable("reduce_scatter");
  detail::OpScope scope(*this, "reduce_scatter");
  do_reduce_scatter(send, recv, op, stream);
}

void Communicator::broadcast(TensorView buffer, int root, Stream& stream) {
  check_buffer(buffer, "broadcast buffer");
  check_peer(root, "broadcast root");
  check_usable("broadcast");
  detail::OpScope scope(*this, "broadcast");
  do_broadcast(buffer, root, stream);
}

void Communicator::send(TensorView buffer, int peer, Stream& stream) {
  check_buffer(buffer, "send buffer");
  check_peer(peer, "send destination");
  check_usable("send");
  detail::OpScope scope(*this, "send");
  do_send(buffer, peer, stream);
}

void Communicator::recv(TensorView buffer, int peer, Stream& stream) {
  check_buffer(buffer, "recv buffer");
  check_peer(peer, "recv source");
  check_usable("recv");
  detail::OpScope scope(*this, "recv");
  do_recv(buffer, peer, stream);
}

}  // namespace weft
