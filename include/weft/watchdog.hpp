// CommWatchdog: ends a job whose rank has waited in one communicator operation too long, naming
// the ranks that did not arrive, as PyTorch's ProcessGroupNCCL watchdog does, instead of letting
// every rank hang forever.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace weft {

class Communicator;

// Opt-in: a program that wants its collectives bounded in time creates one on every rank. A
// thread of its own looks, every `poll_s` seconds, at the communicator operation (collective, p2p,
// group end, barrier, pending-group wait) each thread of this process is blocked in; when one has
// lasted longer than `timeout_s`, it calls `on_timeout` with a message naming the operation and
// its number on the group (collectives count per group, sends and receives per peer), the group
// (its ranks), how long it waited, and which ranks of the group arrived and which did not, with
// what each of those is doing instead; then abort() on that operation's communicator (NCCL: the
// operation fails with weft::Error). The library never ends the process: a blocked MPI call
// cannot be interrupted, so a program on MPI ends the job in `on_timeout` (gpt_train:
// MpiRuntime::abort). It fires once.
//
// To learn what the other ranks are doing, the watchdogs talk over a private copy of the MPI
// world: each answers, every poll and without ever blocking, its peers' questions ("how far are
// you in group G, and what are you in now?"); the one that fires asks the members of its group
// and waits for their answers at most max(2 s, 4 polls): a rank that does not answer by then
// (exited, stopped, unreachable) is named as such. This needs MPI_THREAD_MULTIPLE (MpiRuntime asks
// for it); without it the message says that which ranks did not arrive is unknown.
class CommWatchdog {
 public:
  // Collective over `host_world`, the MPI world (make_mpi_world_communicator) or a world of one
  // rank (then there is no peer to ask). on_timeout: receives the message (default: prints it to
  // standard error).
  CommWatchdog(Communicator& host_world, double timeout_s,
               std::function<void(const std::string&)> on_timeout = {}, double poll_s = 0.1);
  // Watches this process alone: the message does not say which ranks did not arrive.
  explicit CommWatchdog(double timeout_s, std::function<void(const std::string&)> on_timeout = {},
                        double poll_s = 0.1);
  ~CommWatchdog();  // stops the thread
  CommWatchdog(const CommWatchdog&) = delete;
  CommWatchdog& operator=(const CommWatchdog&) = delete;

  double timeout_s() const { return timeout_s_; }
  bool fired() const { return fired_.load(); }

 private:
  struct Channel;  // the MPI side channel (keeps mpi.h out of this header)
  struct Blocked;  // the operation that waited too long

  void watch();
  // Fires when an operation has waited past the timeout.
  void check();
  // What the group's other ranks are doing, for the message.
  std::string arrivals(const Blocked& blocked);

  double timeout_s_, poll_s_;
  std::function<void(const std::string&)> on_timeout_;
  std::unique_ptr<Channel> channel_;
  std::string no_channel_;  // why peers cannot be asked (when channel_ is null)
  std::atomic<bool> fired_{false};
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace weft
