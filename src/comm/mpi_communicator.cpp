// MpiCommunicator and MpiRuntime: MPI collectives on host buffers; 16-bit floats reduce through
// user-defined MPI ops that accumulate in float.
#include "comm/mpi_communicator.hpp"

#include <chrono>
#include <climits>
#include <cstdlib>
#include <thread>

#include "comm/mpi_check.hpp"
#include "weft/log.hpp"

namespace weft {

namespace {

template <typename T, typename Combine>
void reduce_16bit(void* in, void* inout, int* len, Combine combine) {
  const T* a = static_cast<const T*>(in);
  T* b = static_cast<T*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = from_float<T>(combine(to_float(a[i]), to_float(b[i])));
}

float sum_op(float a, float b) { return a + b; }
float max_op(float a, float b) { return a > b ? a : b; }
float min_op(float a, float b) { return a < b ? a : b; }

template <typename T, float (*Combine)(float, float)>
void mpi_user_op(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_16bit<T>(in, inout, len, Combine);
}

// MPI has no bf16 or f16: they travel as uint16 and reduce through these ops, created once.
MPI_Op user_op(DType dtype, ReduceOp op) {
  static MPI_Op ops[2][3];
  static bool created = [] {
    MPI_Op_create(&mpi_user_op<bf16_t, sum_op>, 1, &ops[0][0]);
    MPI_Op_create(&mpi_user_op<bf16_t, max_op>, 1, &ops[0][1]);
    MPI_Op_create(&mpi_user_op<bf16_t, min_op>, 1, &ops[0][2]);
    MPI_Op_create(&mpi_user_op<f16_t, sum_op>, 1, &ops[1][0]);
    MPI_Op_create(&mpi_user_op<f16_t, max_op>, 1, &ops[1][1]);
    MPI_Op_create(&mpi_user_op<f16_t, min_op>, 1, &ops[1][2]);
    return true;
  }();
  (void)created;
  return ops[dtype == DType::kBF16 ? 0 : 1][static_cast<int>(op)];
}

MPI_Datatype mpi_type(DType dtype) {
  switch (dtype) {
    case DType::kF32: return MPI_FLOAT;
    case DType::kI32: return MPI_INT32_T;
    default: return MPI_UINT16_T;  // bf16 and f16 travel as raw 16-bit words
  }
}

MPI_Op mpi_op(DType dtype, ReduceOp op) {
  if (dtype == DType::kBF16 || dtype == DType::kF16) return user_op(dtype, op);
  switch (op) {
    case ReduceOp::kSum:
      return MPI_SUM;
    case ReduceOp::kMax:
      return MPI_MAX;
    case ReduceOp::kMin:
      return MPI_MIN;
  }
  WEFT_THROW(ErrorCode::kInternal, "unknown reduce op");
}

int mpi_count(int64_t numel) {
  WEFT_CHECK(numel <= INT_MAX, "MPI message of ", numel, " elements exceeds INT_MAX");
  return static_cast<int>(numel);
}

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm comm) : comm_(comm) {
  WEFT_CHECK_MPI(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  WEFT_CHECK_MPI(MPI_Comm_rank(comm_, &rank_));
  WEFT_CHECK_MPI(MPI_Comm_size(comm_, &size_));
  // The group's world ranks, once here: describe() and the watchdog use them from its thread.
  MPI_Group group = MPI_GROUP_NULL, world = MPI_GROUP_NULL;
  std::vector<int> mine(static_cast<size_t>(size_)), in_world(mine.size());
  for (int i = 0; i < size_; ++i) mine[static_cast<size_t>(i)] = i;
  WEFT_CHECK_MPI(MPI_Comm_group(comm_, &group));
  WEFT_CHECK_MPI(MPI_Comm_group(MPI_COMM_WORLD, &world));
  WEFT_CHECK_MPI(MPI_Group_translate_ranks(group, size_, mine.data(), world, in_world.data()));
  MPI_Group_free(&group);
  MPI_Group_free(&world);
  set_world_ranks(std::move(in_world));
}

// A blocked MPI call cannot be interrupted, and ending the job is the program's decision (the
// library never ends a process): abort only makes later operations throw.
void MpiCommunicator::do_abort() noexcept {}

MpiCommunicator::~MpiCommunicator() {
  release_block_groups();
  if (!pending_.empty()) {
    WEFT_LOG(kError, "MPI communicator destroyed with ", pending_.size(),
             " point-to-point operations still posted (missing group_end)");
  }
  if (comm_ != MPI_COMM_NULL && !mpi_finalized()) MPI_Comm_free(&comm_);
}

void MpiCommunicator::do_all_reduce(TensorView send, TensorView recv, ReduceOp op, Stream&) {
  const void* src = send.data == recv.data ? MPI_IN_PLACE : send.data;
  WEFT_CHECK_MPI(MPI_Allreduce(src, recv.data, mpi_count(recv.numel()), mpi_type(recv.dtype),
                               mpi_op(recv.dtype, op), comm_),
                 "all_reduce of ", recv.str());
}

void MpiCommunicator::do_all_gather(TensorView send, TensorView recv, Stream&) {
  const size_t block = send.bytes();
  const char* own_block = static_cast<const char*>(recv.data) + block * rank_;
  const void* src = send.data == own_block ? MPI_IN_PLACE : send.data;
  const int count = mpi_count(send.numel());
  WEFT_CHECK_MPI(MPI_Allgather(src, count, mpi_type(send.dtype), recv.data, count,
                               mpi_type(send.dtype), comm_),
                 "all_gather of ", send.str());
}

void MpiCommunicator::do_reduce_scatter(TensorView send, TensorView recv, ReduceOp op, Stream&) {
  WEFT_CHECK(send.data != recv.data, "reduce_scatter: send and recv must be distinct buffers");
  WEFT_CHECK_MPI(MPI_Reduce_scatter_block(send.data, recv.data, mpi_count(recv.numel()),
                                          mpi_type(recv.dtype), mpi_op(recv.dtype, op), comm_),
                 "reduce_scatter to ", recv.str());
}

void MpiCommunicator::do_broadcast(TensorView buffer, int root, Stream&) {
  WEFT_CHECK_MPI(
      MPI_Bcast(buffer.data, mpi_count(buffer.numel()), mpi_type(buffer.dtype), root, comm_),
      "broadcast of ", buffer.str(), " from ", root);
}

void MpiCommunicator::do_send(TensorView buffer, int peer, Stream&) {
  const int count = mpi_count(buffer.numel());
  if (group_depth_ > 0) {
    pending_.emplace_back();
    pending_receives_.push_back(false);
    WEFT_CHECK_MPI(
        MPI_Isend(buffer.data, count, mpi_type(buffer.dtype), peer, 0, comm_, &pending_.back()));
  } else {
    WEFT_CHECK_MPI(MPI_Send(buffer.data, count, mpi_type(buffer.dtype), peer, 0, comm_));
  }
}

void MpiCommunicator::do_recv(TensorView buffer, int peer, Stream&) {
  const int count = mpi_count(buffer.numel());
  if (group_depth_ > 0) {
    pending_.emplace_back();
    pending_receives_.push_back(true);
    WEFT_CHECK_MPI(
        MPI_Irecv(buffer.data, count, mpi_type(buffer.dtype), peer, 0, comm_, &pending_.back()));
  } else {
    WEFT_CHECK_MPI(
        MPI_Recv(buffer.data, count, mpi_type(buffer.dtype), peer, 0, comm_, MPI_STATUS_IGNORE));
  }
}

void MpiCommunicator::group_start() { ++group_depth_; }

void MpiCommunicator::do_group_end() {
  WEFT_CHECK(group_depth_ > 0, "group_end without a matching group_start");
  if (--group_depth_ > 0) return;
  std::vector<MPI_Request> requests;
  requests.swap(pending_);
  pending_receives_.clear();
  WEFT_CHECK_MPI(
      MPI_Waitall(static_cast<int>(requests.size()), requests.data(), MPI_STATUSES_IGNORE),
      "completing a group of ", requests.size(), " sends/receives");
}

namespace {

// The Isend/Irecv requests of an asynchronously ended group.
class MpiPendingGroup final : public PendingGroup {
 public:
  MpiPendingGroup(std::vector<MPI_Request> requests, std::vector<bool> receives)
      : requests_(std::move(requests)), receives_(std::move(receives)) {}
  ~MpiPendingGroup() override {
    if (done_ || mpi_finalized()) return;
    if (abandoned_) {
      // cancel() gave up on these: MPI completes them in the background (the caller keeps the
      // buffers); waiting here could wait forever.
      for (MPI_Request& r : requests_) {
        if (r != MPI_REQUEST_NULL) MPI_Request_free(&r);
      }
      return;
    }
    const int status =
        MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE);
    if (status != MPI_SUCCESS) {
      WEFT_LOG(kError, "completing an abandoned group of ", requests_.size(),
               " sends/receives failed (MPI error ", status, ")");
    }
  }

  bool test() override {
    if (done_) return true;
    int flag = 0;
    WEFT_CHECK_MPI(MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &flag,
                               MPI_STATUSES_IGNORE),
                   "progressing a group of ", requests_.size(), " sends/receives");
    done_ = flag != 0;
    return done_;
  }

  bool cancel(double seconds) noexcept override {
    if (done_ || mpi_finalized()) return true;
    // A receive no peer matched yet is cancelled at once; a matched one, and a send, complete
    // when the peer progresses (MPI-4 deprecates cancelling sends: they are left to finish).
    for (size_t i = 0; i < requests_.size(); ++i) {
      if (receives_[i] && requests_[i] != MPI_REQUEST_NULL) MPI_Cancel(&requests_[i]);
    }
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (true) {
      int flag = 0;
      if (MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &flag,
                      MPI_STATUSES_IGNORE) != MPI_SUCCESS) {
        break;
      }
      if (flag != 0) {
        done_ = true;
        return true;
      }
      if (std::chrono::steady_clock::now() >= deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    abandoned_ = true;
    return false;
  }

  void wait() override {
    if (done_) return;
    done_ = true;  // a failed wait is not retried by the destructor
    WEFT_CHECK_MPI(
        MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE),
        "completing a group of ", requests_.size(), " sends/receives");
  }

 private:
  std::vector<MPI_Request> requests_;
  std::vector<bool> receives_;  // per request: a receive (cancellable) or a send
  bool done_ = false;
  bool abandoned_ = false;
};

}  // namespace

std::unique_ptr<PendingGroup> MpiCommunicator::do_group_end_async() {
  WEFT_CHECK(group_depth_ == 1, group_depth_ == 0 ? "group_end_async without a group_start"
                                                  : "group_end_async must end the outermost group");
  group_depth_ = 0;
  std::vector<MPI_Request> requests;
  requests.swap(pending_);
  std::vector<bool> receives;
  receives.swap(pending_receives_);
  return std::make_unique<MpiPendingGroup>(std::move(requests), std::move(receives));
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) {
  WEFT_CHECK(color >= 0, "split: color must be non-negative, got ", color);
  MPI_Comm sub = MPI_COMM_NULL;
  WEFT_CHECK_MPI(MPI_Comm_split(comm_, color, key, &sub));
  return std::make_unique<MpiCommunicator>(sub);
}

void MpiCommunicator::do_barrier() { WEFT_CHECK_MPI(MPI_Barrier(comm_)); }

MpiRuntime::MpiRuntime(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    // MULTIPLE: a CommWatchdog's thread talks to its peers' watchdogs while this one is blocked
    // in a collective (it works with less, without naming the ranks that did not arrive).
    int provided = 0;
    WEFT_CHECK_MPI(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
    owns_ = true;
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  set_error_rank(rank);
}

MpiRuntime::~MpiRuntime() {
  if (owns_ && !mpi_finalized()) MPI_Finalize();
}

void MpiRuntime::abort(int exit_code) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized && !mpi_finalized()) MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);
}

std::unique_ptr<Communicator> make_mpi_world_communicator() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  WEFT_CHECK(initialized,
             "make_mpi_world_communicator: MPI is not initialized (create a "
             "weft::MpiRuntime first)");
  // A private copy of the world, so that weft's messages never match the program's own.
  MPI_Comm world = MPI_COMM_NULL;
  WEFT_CHECK_MPI(MPI_Comm_dup(MPI_COMM_WORLD, &world));
  return std::make_unique<MpiCommunicator>(world);
}

}  // namespace weft
