// NcclCommunicator: collectives, point-to-point, groups and split over NCCL on the caller's CUDA
// stream; make_nccl_communicator bootstraps it through another communicator (the unique id).
#include "comm/nccl_communicator.hpp"

#include <chrono>
#include <cstring>
#include <exception>
#include <string>
#include <thread>
#include <utility>

#include "backend/cuda_check.hpp"
#include "backend/device_memory.hpp"
#include "weft/error.hpp"
#include "weft/log.hpp"

namespace weft {

namespace {

ncclDataType_t nccl_dtype(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return ncclFloat32;
    case DType::kBF16:
      return ncclBfloat16;
    case DType::kF16:
      return ncclFloat16;
    case DType::kI32:
      return ncclInt32;
  }
  WEFT_ASSERT(false, "unknown dtype ", static_cast<int>(dtype));
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kMax:
      return ncclMax;
    case ReduceOp::kMin:
      return ncclMin;
  }
  WEFT_ASSERT(false, "unknown reduce op ", static_cast<int>(op));
}

size_t count_of(const TensorView& view) { return static_cast<size_t>(view.numel()); }

// NCCL's last error message for `comm`, never null (a null char* must not reach a stream).
const char* last_error(ncclComm_t comm) {
  const char* message = ncclGetLastError(comm);
  return message != nullptr ? message : "";
}

}  // namespace

NcclCommunicator::NcclCommunicator(ncclComm_t comm, int device, std::vector<int> world_ranks)
    : comm_(comm), device_(device) {
  ncclResult_t status = ncclCommUserRank(comm_, &rank_);
  if (status == ncclSuccess) status = ncclCommCount(comm_, &size_);
  if (status != ncclSuccess) {
    ncclCommDestroy(comm_);  // the destructor will not run for a throwing constructor
    WEFT_CHECK_NCCL(status, "querying the rank and size of a new NCCL communicator");
  }
  if (!world_ranks.empty() && static_cast<int>(world_ranks.size()) != size_) {
    ncclCommDestroy(comm_);
    WEFT_ASSERT(false, "NCCL communicator of ", size_, " ranks given ", world_ranks.size(),
                " world ranks");
  }
  set_world_ranks(std::move(world_ranks));
}

// ncclCommDestroy completes the operations queued on the communicator first, so after an error
// it can wait forever: for a peer that failed, or that is itself waiting for this rank. The
// communicator is aborted instead (its kernels stop, nothing waits) while an exception unwinds
// the stack (whatever threw, the ranks may now be out of step) and when NCCL reports an
// asynchronous error, so that a failing rank gets to report its error and end the job.
NcclCommunicator::~NcclCommunicator() {
  release_block_groups();
  try {
    DeviceGuard guard(device_);
    if (!aborted_) {
      ncclResult_t async = ncclSuccess;
      const ncclResult_t queried = ncclCommGetAsyncError(comm_, &async);
      if (std::uncaught_exceptions() > 0) {
        abort_comm("destroyed while an exception unwinds the stack");
      } else if (queried != ncclSuccess || async != ncclSuccess) {
        abort_comm(ncclGetErrorString(queried != ncclSuccess ? queried : async));
      }
    }
    if (!aborted_) {
      const ncclResult_t status = ncclCommDestroy(comm_);
      if (status != ncclSuccess) {
        WEFT_LOG(kError, "ncclCommDestroy: ", ncclGetErrorString(status), " (", last_error(comm_),
                 ")");
      }
    }
    // After the barrier's last all-reduce, in its stream's order.
    if (barrier_buffer_ != nullptr) pool_free(barrier_buffer_, barrier_stream_->get());
  } catch (const std::exception& e) {
    try {
      WEFT_LOG(kError, "NCCL communicator on cuda:", device_, " not destroyed: ", e.what());
    } catch (...) {
    }
  }
}

void NcclCommunicator::abort_comm(const char* why) noexcept {
  if (aborted_.exchange(true)) return;
  try {
    WEFT_LOG(kWarning, "aborting the NCCL communicator (rank ", rank_, " of ", size_,
             " on cuda:", device_, "): ", why);
  } catch (...) {
  }
  const ncclResult_t status = ncclCommAbort(comm_);
  comm_ = nullptr;
  if (status != ncclSuccess) {
    try {
      WEFT_LOG(kError, "ncclCommAbort: ", ncclGetErrorString(status));
    } catch (...) {
    }
  }
}

void NcclCommunicator::check_health(const char* op) {
  if (aborted_) {
    WEFT_THROW(ErrorCode::kNccl, "nccl ", op,
               ": the communicator was aborted after an earlier error");
  }
  ncclResult_t async = ncclSuccess;
  WEFT_CHECK_NCCL(ncclCommGetAsyncError(comm_, &async), "nccl ", op,
                  ": querying asynchronous errors");
  if (async == ncclSuccess) return;
  const std::string message = last_error(comm_);  // before the abort frees the communicator
  abort_comm(ncclGetErrorString(async));
  WEFT_THROW(ErrorCode::kNccl, "nccl ", op, ": asynchronous NCCL error ", ncclGetErrorString(async),
             " (", message, "); the communicator was aborted");
}

void NcclCommunicator::wait_polling(cudaStream_t stream, const char* op) {
  for (;;) {
    const cudaError_t status = cudaStreamQuery(stream);
    if (status == cudaSuccess) return;
    if (status != cudaErrorNotReady) WEFT_CHECK_CUDA(status, "nccl ", op, ": waiting for NCCL");
    check_health(op);
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

std::vector<int> NcclCommunicator::all_gather_ints(int mine) {
  DeviceGuard guard(device_);
  check_health("split");
  CudaStream stream(device_, StreamPriority::kNormal);
  const size_t bytes = sizeof(int) * static_cast<size_t>(size_);
  auto* buffer = static_cast<int*>(pool_allocate(device_, bytes, stream.get(), "split"));
  std::vector<int> all(static_cast<size_t>(size_), -1);
  try {
    WEFT_CHECK_CUDA(
        cudaMemcpyAsync(buffer + rank_, &mine, sizeof(int), cudaMemcpyHostToDevice, stream.get()));
    WEFT_CHECK_NCCL(ncclAllGather(buffer + rank_, buffer, 1, ncclInt32, comm_, stream.get()),
                    "split: gathering the world ranks: ", last_error(comm_));
    WEFT_CHECK_CUDA(
        cudaMemcpyAsync(all.data(), buffer, bytes, cudaMemcpyDeviceToHost, stream.get()));
    wait_polling(stream.get(), "split");
  } catch (...) {
    pool_free(buffer, stream.get());
    throw;
  }
  pool_free(buffer, stream.get());
  return all;
}

cudaStream_t NcclCommunicator::prepare(const char* op, Stream& stream, const TensorView& a,
                                       const TensorView* b) {
  check_health(op);
  WEFT_CHECK(a.device == Device::cuda(device_), "nccl ", op, ": buffer ", a.str(),
             " is not on cuda:", device_, ", this communicator's device");
  if (b != nullptr) {
    WEFT_CHECK(b->device == Device::cuda(device_), "nccl ", op, ": buffer ", b->str(),
               " is not on cuda:", device_, ", this communicator's device");
  }
  auto handle = static_cast<cudaStream_t>(stream.native_handle());
  // A null handle is the host stream: NCCL would silently use the legacy default stream.
  WEFT_CHECK(handle != nullptr, "nccl ", op,
             ": the stream has no CUDA handle (pass a stream of the CUDA backend)");
  return handle;
}

void NcclCommunicator::do_all_reduce(TensorView send, TensorView recv, ReduceOp op,
                                     Stream& stream) {
  cudaStream_t s = prepare("all_reduce", stream, send, &recv);
  DeviceGuard guard(device_);
  WEFT_CHECK_NCCL(ncclAllReduce(send.data, recv.data, count_of(recv), nccl_dtype(recv.dtype),
                                nccl_op(op), comm_, s),
                  "all_reduce of ", recv.str(), ": ", last_error(comm_));
}

void NcclCommunicator::do_all_gather(TensorView send, TensorView recv, Stream& stream) {
  cudaStream_t s = prepare("all_gather", stream, send, &recv);
  DeviceGuard guard(device_);
  WEFT_CHECK_NCCL(
      ncclAllGather(send.data, recv.data, count_of(send), nccl_dtype(send.dtype), comm_, s),
      "all_gather of ", send.str(), ": ", last_error(comm_));
}

void NcclCommunicator::do_reduce_scatter(TensorView send, TensorView recv, ReduceOp op,
                                         Stream& stream) {
  cudaStream_t s = prepare("reduce_scatter", stream, send, &recv);
  DeviceGuard guard(device_);
  WEFT_CHECK_NCCL(ncclReduceScatter(send.data, recv.data, count_of(recv), nccl_dtype(recv.dtype),
                                    nccl_op(op), comm_, s),
                  "reduce_scatter into ", recv.str(), ": ", last_error(comm_));
}

void NcclCommunicator::do_broadcast(TensorView buffer, int root, Stream& stream) {
  cudaStream_t s = prepare("broadcast", stream, buffer);
  DeviceGuard guard(device_);
  WEFT_CHECK_NCCL(ncclBroadcast(buffer.data, buffer.data, count_of(buffer),
                                nccl_dtype(buffer.dtype), root, comm_, s),
                  "broadcast of ", buffer.str(), " from ", root, ": ", last_error(comm_));
}

void NcclCommunicator::do_send(TensorView buffer, int peer, Stream& stream) {
  const P2p op{true, buffer, peer, &stream, prepare("send", stream, buffer)};
  if (group_depth_ > 0) {
    posted_.push_back(op);
  } else {
    issue(op, op.handle);
  }
}

void NcclCommunicator::do_recv(TensorView buffer, int peer, Stream& stream) {
  const P2p op{false, buffer, peer, &stream, prepare("recv", stream, buffer)};
  if (group_depth_ > 0) {
    posted_.push_back(op);
  } else {
    issue(op, op.handle);
  }
}

void NcclCommunicator::issue(const P2p& op, cudaStream_t stream) {
  DeviceGuard guard(device_);
  if (op.send) {
    WEFT_CHECK_NCCL(ncclSend(op.buffer.data, count_of(op.buffer), nccl_dtype(op.buffer.dtype),
                             op.peer, comm_, stream),
                    "send of ", op.buffer.str(), " to ", op.peer, ": ", last_error(comm_));
  } else {
    WEFT_CHECK_NCCL(ncclRecv(op.buffer.data, count_of(op.buffer), nccl_dtype(op.buffer.dtype),
                             op.peer, comm_, stream),
                    "recv of ", op.buffer.str(), " from ", op.peer, ": ", last_error(comm_));
  }
}

namespace {

// One NCCL group around the issue of a weft group's sends and receives. The destructor ends a
// group that end() did not, so a throwing issue() never leaves the thread inside an open NCCL
// group (where every later NCCL call of the thread would be deferred, never launched).
class NcclGroupGuard {
 public:
  NcclGroupGuard() { WEFT_CHECK_NCCL(ncclGroupStart()); }
  ~NcclGroupGuard() {
    if (open_) ncclGroupEnd();  // unwinding: the group's own error is the one reported
  }
  NcclGroupGuard(const NcclGroupGuard&) = delete;
  NcclGroupGuard& operator=(const NcclGroupGuard&) = delete;
  // Launches the group's operations.
  void end(ncclComm_t comm) {
    open_ = false;
    WEFT_CHECK_NCCL(ncclGroupEnd(), last_error(comm));
  }

 private:
  bool open_ = true;
};

}  // namespace

// A weft group only counts its depth and collects the sends and receives: NCCL's group is opened
// at the outermost end, around their issue, so no exception between group_start and group_end
// (a bad buffer, a throwing caller) can leave the thread inside an NCCL group.
void NcclCommunicator::group_start() { ++group_depth_; }

void NcclCommunicator::do_group_end() {
  WEFT_CHECK(group_depth_ > 0, "group_end without a matching group_start");
  if (--group_depth_ > 0) return;
  std::vector<P2p> posted;
  posted.swap(posted_);
  if (posted.empty()) return;
  DeviceGuard guard(device_);
  check_health("group_end");
  NcclGroupGuard group;
  for (const P2p& op : posted) issue(op, op.handle);
  group.end(comm_);
}

namespace {

// group_end_async's transfers, after which `done_` was recorded on the communication stream.
class NcclPendingGroup final : public PendingGroup {
 public:
  NcclPendingGroup(NcclCommunicator& comm, int device, cudaEvent_t done, cudaStream_t compute)
      : comm_(comm), device_(device), done_(done), compute_(compute) {}
  // Completes an unwaited group as wait() would: the compute stream waits for the transfers, so
  // that its later work, and the reuse of the group's buffers once their tensors are freed (the
  // backend frees and reuses memory in that stream's order), follows them. This matters after an
  // exception (overlap.cpp's consume or produce threw): the buffers are freed while NCCL may
  // still write them. The host does not block, so an error cannot hang here.
  ~NcclPendingGroup() override {
    try {
      DeviceGuard guard(device_);
      if (!waited_) {
        const cudaError_t status = cudaStreamWaitEvent(compute_, done_, 0);
        if (status != cudaSuccess) {
          WEFT_LOG(kError, "completing an unwaited NCCL group: ", cudaGetErrorString(status));
        }
      }
      const cudaError_t status = cudaEventDestroy(done_);
      if (status != cudaSuccess) {
        WEFT_LOG(kError, "cudaEventDestroy: ", cudaGetErrorString(status));
      }
    } catch (...) {
      // Destructor path: a failure to select the device or to log is dropped.
    }
  }

  bool test() override {
    if (waited_) return true;
    const cudaError_t status = cudaEventQuery(done_);
    if (status == cudaErrorNotReady) {
      comm_.check_health("test of a pending group");  // fail rather than be polled forever
      return false;
    }
    WEFT_CHECK_CUDA(status, "querying a pending NCCL group");
    return true;
  }
  void wait() override {
    if (waited_) return;
    DeviceGuard guard(device_);
    WEFT_CHECK_CUDA(cudaStreamWaitEvent(compute_, done_, 0),
                    "ordering the compute stream after a pending NCCL group");
    waited_ = true;
  }

 private:
  NcclCommunicator& comm_;
  int device_;
  cudaEvent_t done_;
  cudaStream_t compute_;
  bool waited_ = false;
};

}  // namespace

// The async group runs on comm_stream_, a high-priority stream of this communicator, never on the
// caller's (compute) stream, so that the transfers and the GEMMs the caller queues meanwhile run
// at the same time:
//   1. `ready` is recorded on the compute stream and comm_stream_ waits for it: the transfers
//      start only after everything queued there before (the data to send is written, the buffer
//      to receive into is no longer read);
//   2. the group's sends and receives are issued on comm_stream_ in one NCCL group;
//   3. `done` is recorded on comm_stream_; PendingGroup::wait() makes the compute stream wait for
//      it, so that work queued after wait() sees the received data. The host never blocks.
// This does not rely on CUDA_DEVICE_MAX_CONNECTIONS=1. Megatron-LM sets it because its overlap
// launches the communication kernel just before the GEMM it should hide and needs the GPU to
// start kernels in launch order (one hardware work queue), so that the few-CTA NCCL kernel holds
// its SMs before the GEMM's CTAs fill the GPU. Here correctness comes from the two events alone,
// whatever the order in which the hardware picks up the kernels; and the communication kernel
// gets SMs because its stream has the higher priority (the block scheduler serves pending CTAs of
// higher-priority streams first whenever an SM frees up), not because of when it was launched.
// Several hardware queues (the default) are what this scheme wants: with a single one, the comm
// kernel queued behind its event wait could hold up the compute stream's next kernel in the
// shared queue, a false dependency that would serialize the two again.
std::unique_ptr<PendingGroup> NcclCommunicator::do_group_end_async() {
  WEFT_CHECK(group_depth_ == 1, group_depth_ == 0 ? "group_end_async without a group_start"
                                                  : "group_end_async must end the outermost group");
  DeviceGuard guard(device_);
  group_depth_ = 0;
  std::vector<P2p> posted;
  posted.swap(posted_);
  for (const P2p& op : posted) {
    WEFT_CHECK(op.handle == posted.front().handle,
               "nccl group_end_async: the sends and receives of a group must use one stream");
  }
  if (posted.empty()) return completed_group();
  check_health("group_end_async");
  if (comm_stream_ == nullptr) {
    comm_stream_ = std::make_unique<CudaStream>(device_, StreamPriority::kHigh);
  }
  const cudaStream_t compute = posted.front().handle, comm = comm_stream_->get();
  cudaEvent_t ready = nullptr, done = nullptr;
  WEFT_CHECK_CUDA(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
  const cudaError_t made = cudaEventCreateWithFlags(&done, cudaEventDisableTiming);
  if (made != cudaSuccess) cudaEventDestroy(ready);
  WEFT_CHECK_CUDA(made);
  auto pending = std::make_unique<NcclPendingGroup>(*this, device_, done, compute);  // owns `done`
  // `ready` may be destroyed right after the wait is queued: CUDA keeps it until it completes.
  const cudaError_t ordered = [&] {
    cudaError_t status = cudaEventRecord(ready, compute);
    if (status == cudaSuccess) status = cudaStreamWaitEvent(comm, ready, 0);
    cudaEventDestroy(ready);
    return status;
  }();
  WEFT_CHECK_CUDA(ordered, "ordering the communication stream after the compute stream");
  {
    NcclGroupGuard group;
    for (const P2p& op : posted) issue(op, comm);
    group.end(comm_);
  }
  WEFT_CHECK_CUDA(cudaEventRecord(done, comm));
  return pending;
}

std::unique_ptr<Communicator> NcclCommunicator::split(int color, int key) {
  // A negative color would be NCCL_SPLIT_NOCOLOR, a rank in no group; our API has no such rank.
  WEFT_CHECK(color >= 0, "nccl split: color must be >= 0, got ", color);
  DeviceGuard guard(device_);
  check_health("split");
  ncclComm_t child = nullptr;
  WEFT_CHECK_NCCL(ncclCommSplit(comm_, color, key, &child, nullptr), "split(color ", color,
                  ", key ", key, "): ", last_error(comm_));
  WEFT_ASSERT(child != nullptr, "ncclCommSplit returned no communicator for color ", color);
  auto sub = std::make_unique<NcclCommunicator>(child, device_);
  // The members' world ranks (describe(), the watchdog): each contributes its own. Every member of
  // this communicator knows them or none does (they share its bootstrap).
  if (!world_ranks().empty()) {
    sub->set_world_ranks(sub->all_gather_ints(world_ranks()[static_cast<size_t>(rank_)]));
  }
  return sub;
}

void NcclCommunicator::do_abort() noexcept { abort_comm("Communicator::abort()"); }

void NcclCommunicator::do_barrier() {
  DeviceGuard guard(device_);
  check_health("barrier");
  if (barrier_stream_ == nullptr) {
    barrier_stream_ = std::make_unique<CudaStream>(device_, StreamPriority::kNormal);
    barrier_buffer_ = pool_allocate(device_, sizeof(float), barrier_stream_->get(), "barrier");
    WEFT_CHECK_CUDA(cudaMemsetAsync(barrier_buffer_, 0, sizeof(float), barrier_stream_->get()));
  }
  // Work queued on this device before the barrier completes first, as the contract says. (This
  // wait cannot poll: it covers streams weft does not know. Queued NCCL work that waits for a
  // failed peer holds it until that peer's rank ends the job.)
  WEFT_CHECK_CUDA(cudaDeviceSynchronize(), "barrier: completing queued work");
  WEFT_CHECK_NCCL(ncclAllReduce(barrier_buffer_, barrier_buffer_, 1, ncclFloat32, ncclSum, comm_,
                                barrier_stream_->get()),
                  "barrier: ", last_error(comm_));
  wait_polling(barrier_stream_->get(), "barrier");
}

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, int device) {
  const int count = cuda_device_count();
  WEFT_CHECK(device >= 0 && device < count, "NCCL communicator on cuda:", device,
             " requested, but ", count, " CUDA device(s) are visible");
  WEFT_CHECK(bootstrap.buffer_device() == DeviceKind::kCpu, "make_nccl_communicator: bootstrap ",
             bootstrap.name(), " must take host buffers to carry the NCCL unique id");

  ncclUniqueId id;
  std::memset(&id, 0, sizeof id);
  if (bootstrap.rank() == 0) WEFT_CHECK_NCCL(ncclGetUniqueId(&id), "ncclGetUniqueId");
  // The id is opaque bytes; a broadcast of 32 floats moves its 128 bytes bit for bit.
  static_assert(sizeof(ncclUniqueId) == 32 * sizeof(float), "ncclUniqueId is 128 bytes");
  TensorView id_view;
  id_view.data = &id;
  id_view.shape = Shape{32};
  id_view.dtype = DType::kF32;
  id_view.device = Device::cpu();
  bootstrap.broadcast(id_view, 0, host_stream());

  DeviceGuard guard(device);
  ncclComm_t comm = nullptr;
  WEFT_CHECK_NCCL(ncclCommInitRank(&comm, bootstrap.size(), id, bootstrap.rank()),
                  "ncclCommInitRank (rank ", bootstrap.rank(), " of ", bootstrap.size(),
                  ", cuda:", device, ")");
  // The same ranks in the same order as the bootstrap's.
  return std::make_unique<NcclCommunicator>(comm, device, bootstrap.world_ranks());
}

}  // namespace weft
