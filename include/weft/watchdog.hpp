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

// Opt-in: a program that wants its collectives bounded in time creates one (the library never
// ends a process on its own). A thread of its own looks, every `poll_s` seconds, at the
// communicator operation (collective, p2p, group end, barrier, pending-group wait) each thread of
// this process is blocked in; when one has lasted longer than `timeout_s`, it calls `report` with
// a message naming the operation, the group (its ranks) and how long it waited, then calls
// abort() on that operation's communicator: MPI ends the whole job, NCCL fails the operation so
// that the program's error handling ends it. It fires once.
class CommWatchdog {
 public:
  // report: where the message goes (default: standard error).
  explicit CommWatchdog(double timeout_s, std::function<void(const std::string&)> report = {},
                        double poll_s = 0.1);
  ~CommWatchdog();  // stops the thread
  CommWatchdog(const CommWatchdog&) = delete;
  CommWatchdog& operator=(const CommWatchdog&) = delete;

  double timeout_s() const { return timeout_s_; }
  bool fired() const { return fired_.load(); }

 private:
  void watch();

  double timeout_s_, poll_s_;
  std::function<void(const std::string&)> report_;
  std::atomic<bool> fired_{false};
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace weft
