// CommWatchdog: ends a job whose rank has waited in one communicator operation too long, as
// PyTorch's ProcessGroupNCCL watchdog does, instead of letting every rank hang forever.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace weft {

// Opt-in: a program that wants its collectives bounded in time creates one. A thread of its own
// looks, every `poll_s` seconds, at the communicator operation (collective, p2p, group end,
// barrier, pending-group wait) each thread of this process is blocked in; when one has lasted
// longer than `timeout_s`, it calls `on_timeout` with a message naming the operation, the group
// (its ranks) and how long it waited, then abort() on that operation's communicator (NCCL: the
// operation fails with weft::Error). The library never ends the process: a blocked MPI call
// cannot be interrupted, so a program on MPI ends the job in `on_timeout` (gpt_train:
// MpiRuntime::abort). It fires once.
class CommWatchdog {
 public:
  // on_timeout: receives the message (default: prints it to standard error).
  explicit CommWatchdog(double timeout_s, std::function<void(const std::string&)> on_timeout = {},
                        double poll_s = 0.1);
  ~CommWatchdog();  // stops the thread
  CommWatchdog(const CommWatchdog&) = delete;
  CommWatchdog& operator=(const CommWatchdog&) = delete;

  double timeout_s() const { return timeout_s_; }
  bool fired() const { return fired_.load(); }

 private:
  void watch();

  double timeout_s_, poll_s_;
  std::function<void(const std::string&)> on_timeout_;
  std::atomic<bool> fired_{false};
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace weft
