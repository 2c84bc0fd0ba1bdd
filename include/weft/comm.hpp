// Communicator: collectives and point-to-point over a group of ranks. Moves bytes, no math
// beyond the reduction. Implementations: MPI (host buffers), NCCL (GPU buffers), MPI staged
// through pinned host memory (GPU buffers, ranks may share a GPU), self (one rank).
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "weft/backend.hpp"
#include "weft/tensor.hpp"

namespace weft {

enum class ReduceOp { kSum, kMax, kMin };

// The sends and receives of a group that group_end_async() started: they proceed while the caller
// computes. Until wait() returns, the send buffers must stay unchanged and the receive buffers
// must not be read; the communicator and (NCCL) the stream passed to send/recv must outlive it.
class PendingGroup {
 public:
  // An unwaited group is completed here as wait() completes it (errors are logged, never
  // thrown), so that its buffers may be freed right after, also while an exception unwinds. MPI
  // blocks until the transfers are done (the peers posted theirs: a ring step's partners did
  // before their own compute); NCCL orders the stream passed to send/recv after them.
  virtual ~PendingGroup() = default;
  // Advances the transfers without blocking and says whether they are complete. MPI moves data
  // only inside MPI calls (a rendezvous transfer of a large message stalls until the receiver
  // calls into MPI), so overlapped code calls this between its chunks of compute.
  virtual bool test() = 0;
  // MPI, self: the transfers are complete on return (staged: and copied to the device). NCCL:
  // work queued afterwards on the stream passed to send/recv runs after them (the host does not
  // block).
  virtual void wait() = 0;
  // Gives the transfers up after an error: what can be cancelled is (MPI: receives that no peer
  // matched yet), the rest gets until `seconds` from now to complete. True when nothing is left in
  // flight: the buffers may be freed. False when a transfer is still pending (a peer that never
  // posts its side): destroying the group then does not wait for it, and the caller must keep
  // the buffers allocated (the transfer may still read or write them) and abort the
  // communicator. Never throws. The default polls test().
  virtual bool cancel(double seconds) noexcept;
};

// Collectives are called by every rank of the group in the same order with matching shapes and
// dtypes; arguments are checked before anything is sent, so a bad call throws weft::Error on the
// rank that made it instead of hanging or corrupting the peers. Work is queued on `stream`
// (NCCL) or completes before return (MPI, staged, self).
class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;  // "mpi", "nccl", "mpi-staged", "self"
  // The device kind whose memory this communicator's buffers must live in.
  virtual DeviceKind buffer_device() const = 0;

  // recv = reduction over ranks of send. In place when send.data == recv.data.
  void all_reduce(TensorView send, TensorView recv, ReduceOp op, Stream& stream);
  // recv (size * send.numel elements) = the ranks' send buffers concatenated in rank order.
  void all_gather(TensorView send, TensorView recv, Stream& stream);
  // send holds size blocks of recv.numel elements; rank r receives the reduction of block r.
  void reduce_scatter(TensorView send, TensorView recv, ReduceOp op, Stream& stream);
  // buffer on `root` is copied to buffer on every rank.
  void broadcast(TensorView buffer, int root, Stream& stream);
  // Point-to-point. Inside group_start()/group_end() sends and receives are posted together and
  // complete at group_end(), so any exchange pattern is deadlock-free; outside a group each call
  // completes before return (send may block until the matching recv is posted).
  void send(TensorView buffer, int peer, Stream& stream);
  void recv(TensorView buffer, int peer, Stream& stream);
  virtual void group_start() = 0;
  void group_end();
  // Ends the outermost group like group_end(), but returns once the transfers have started: they
  // complete at PendingGroup::wait(). Each group is one step of a ring exchange that overlaps a
  // GEMM (overlap.hpp). The sends and receives of the group must all use one stream (NCCL runs
  // them on its own communication stream, ordered after the work queued on that stream so far).
  // The default ends the group synchronously and returns a completed one.
  std::unique_ptr<PendingGroup> group_end_async();

  // Collective: ranks passing the same color form a new communicator, ordered by key (then by
  // rank in this one). Like MPI_Comm_split and ncclCommSplit.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
  // The communicator of this rank's block of `ranks_per_block` consecutive ranks (block b holds
  // ranks [b * ranks_per_block, (b + 1) * ranks_per_block), in rank order), made by split() on
  // the first call with that size and shared by every later one, so that layers grouping ranks
  // alike (replicated KV heads) share one communicator instead of one each. Owned by this
  // communicator. Collective like split(): every rank calls it with the same sizes in the same
  // order. ranks_per_block must divide size().
  Communicator& block_group(int ranks_per_block);
  // Collective: returns when every rank has called it (host-side; completes queued work first).
  void barrier();

  // Ends this communicator's work; callable from any thread, also while another thread is blocked
  // in one of its operations (what CommWatchdog does). NCCL: ncclCommAbort (the operations in
  // flight fail with weft::Error instead of waiting for their peers). MPI and mpi-staged: an MPI
  // call in progress cannot be interrupted, so only later operations fail; a program that must
  // not hang ends the job itself (MpiRuntime::abort). Self: nothing can be waiting. Afterwards
  // every operation throws weft::Error. Never throws; never ends the process.
  void abort() noexcept;
  bool aborted() const { return aborted_.load(); }
  // The group for messages: its kind and its ranks in the MPI world where known, e.g.
  // "mpi group of world ranks {0, 2}". Safe to call from any thread.
  virtual std::string describe() const;

 protected:
  // A group that was complete before it was returned.
  static std::unique_ptr<PendingGroup> completed_group();
  // Destroys the block groups; derived destructors call it first, so that sub-communicators go
  // before the communicator they were split from.
  void release_block_groups() noexcept { block_groups_.clear(); }

  virtual void do_all_reduce(TensorView send, TensorView recv, ReduceOp op, Stream& stream) = 0;
  virtual void do_all_gather(TensorView send, TensorView recv, Stream& stream) = 0;
  virtual void do_reduce_scatter(TensorView send, TensorView recv, ReduceOp op, Stream& stream) = 0;
  virtual void do_broadcast(TensorView buffer, int root, Stream& stream) = 0;
  virtual void do_send(TensorView buffer, int peer, Stream& stream) = 0;
  virtual void do_recv(TensorView buffer, int peer, Stream& stream) = 0;
  virtual void do_group_end() = 0;
  virtual std::unique_ptr<PendingGroup> do_group_end_async();
  virtual void do_barrier() = 0;
  virtual void do_abort() noexcept = 0;

 private:
  void check_buffer(const TensorView& view, const char* what) const;
  void check_peer(int peer, const char* what) const;
  void check_usable(const char* op) const;

  std::atomic<bool> aborted_{false};

  std::map<int, std::unique_ptr<Communicator>> block_groups_;  // by ranks_per_block
};

const char* reduce_op_name(ReduceOp op);

// Reduces one host float over `comm`, staging it through `backend`'s memory when the
// communicator moves device buffers (NCCL): losses, norms, timings.
float all_reduce_scalar(Communicator& comm, Backend& backend, float value, ReduceOp op);
// all_gather of host buffers (small bookkeeping: counts, step statistics), complete on return.
// `staging` moves them through device memory when the communicator moves device buffers (NCCL);
// it may be null for a communicator of host buffers.
void all_gather_host(Communicator& comm, Backend* staging, TensorView send, TensorView recv);

// Runs `local`, work that can fail on some ranks only (file I/O), and makes its outcome collective
// over `comm`: when it throws on any rank, every rank throws a weft::Error with the code and the
// message of the lowest rank that failed, as "rank R: <message>" (the message cut at 4 KiB), so
// that no rank goes on to wait for a peer that gave up. One all_reduce when every rank succeeds;
// on one rank, the exception itself. Staged through `backend` as all_reduce_scalar.
void run_agreed(Communicator& comm, Backend& backend, const std::function<void()>& local);

// Owns MPI for the life of the program: initializes it (unless the host program already did) and
// finalizes it on destruction (only if it initialized it). Stamps the world rank into weft::Error.
class MpiRuntime {
 public:
  MpiRuntime(int* argc, char*** argv);
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  // Ends every rank of the job, for a program that cannot continue on one rank (a failed rank
  // must never leave its peers waiting in a collective forever).
  [[noreturn]] static void abort(int exit_code);

 private:
  bool owns_ = false;
};

// All ranks mpirun started (needs an MpiRuntime). Buffers in host memory.
std::unique_ptr<Communicator> make_mpi_world_communicator();
// A world of one rank: collectives are copies. Host buffers.
std::unique_ptr<Communicator> make_self_communicator();
// An NCCL communicator over the same ranks as `bootstrap` (the unique id is broadcast through it),
// with GPU buffers on `device`. Throws weft::Error when weft was built without CUDA.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, int device);
// A communicator over the same ranks as `host` (collective: it keeps a split of it) that moves GPU
// buffers on `device` by staging them through pinned host memory: each operation copies the
// device buffer to the host on the caller's stream (after the work queued there), runs `host`'s
// operation on the copy and copies the result back; every call returns with its device writes
// complete, like MPI's. Slower than NCCL, but ranks may share a GPU, which NCCL refuses. Large
// buffers travel in chunks of `staging_bytes` (0: 4 MiB). Named "<host>-staged" ("mpi-staged").
// Throws weft::Error when weft was built without CUDA or `device` does not exist.
std::unique_ptr<Communicator> make_staged_communicator(Communicator& host, int device,
                                                       size_t staging_bytes = 0);

}  // namespace weft
