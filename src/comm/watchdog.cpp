// CommWatchdog and the per-thread record of the operation each thread is blocked in.
#include "weft/watchdog.hpp"

#include <chrono>
#include <cstdio>
#include <memory>
#include <sstream>
#include <vector>

#include "comm/op_tracker.hpp"
#include "weft/error.hpp"

namespace weft {

namespace {

using Clock = std::chrono::steady_clock;

// One thread's current operation. The watchdog reads it under `mutex`, and calls abort() while
// holding it, so that the communicator cannot be destroyed meanwhile (the operation's scope must
// take the mutex to end).
struct ThreadSlot {
  std::mutex mutex;
  int depth = 0;
  Communicator* comm = nullptr;
  const char* op = nullptr;
  Clock::time_point since;
};

std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
std::vector<std::shared_ptr<ThreadSlot>>& registry() {
  static std::vector<std::shared_ptr<ThreadSlot>> slots;
  return slots;
}

ThreadSlot& this_thread_slot() {
  thread_local std::shared_ptr<ThreadSlot> slot = [] {
    auto s = std::make_shared<ThreadSlot>();
    std::lock_guard<std::mutex> lock(registry_mutex());
    registry().push_back(s);
    return s;
  }();
  return *slot;
}

}  // namespace

namespace detail {

OpScope::OpScope(Communicator& comm, const char* op) {
  ThreadSlot& slot = this_thread_slot();
  std::lock_guard<std::mutex> lock(slot.mutex);
  if (slot.depth++ == 0) {
    slot.comm = &comm;
    slot.op = op;
    slot.since = Clock::now();
  }
}

OpScope::~OpScope() {
  ThreadSlot& slot = this_thread_slot();
  std::lock_guard<std::mutex> lock(slot.mutex);
  if (--slot.depth == 0) {
    slot.comm = nullptr;
    slot.op = nullptr;
  }
}

}  // namespace detail

CommWatchdog::CommWatchdog(double timeout_s, std::function<void(const std::string&)> on_timeout,
                           double poll_s)
    : timeout_s_(timeout_s), poll_s_(poll_s), on_timeout_(std::move(on_timeout)) {
  WEFT_CHECK(timeout_s > 0 && poll_s > 0, "CommWatchdog: timeout (", timeout_s, " s) and poll (",
             poll_s, " s) must be positive");
  if (!on_timeout_) {
    on_timeout_ = [](const std::string& message) {
      std::fprintf(stderr, "%s\n", message.c_str());
      std::fflush(stderr);
    };
  }
  thread_ = std::thread([this] { watch(); });
}

CommWatchdog::~CommWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void CommWatchdog::watch() {
  const auto poll = std::chrono::duration<double>(poll_s_);
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_ && !fired_) {
    wake_.wait_for(lock, poll, [this] { return stop_; });
    if (stop_) break;
    std::vector<std::shared_ptr<ThreadSlot>> slots;
    {
      std::lock_guard<std::mutex> registry_lock(registry_mutex());
      slots = registry();
    }
    for (const std::shared_ptr<ThreadSlot>& slot : slots) {
      std::lock_guard<std::mutex> slot_lock(slot->mutex);
      if (slot->depth == 0 || slot->comm == nullptr) continue;
      const double waited = std::chrono::duration<double>(Clock::now() - slot->since).count();
      if (waited <= timeout_s_) continue;
      std::ostringstream os;
      os.precision(3);
      os << "weft watchdog";
      if (error_rank() >= 0) os << " (rank " << error_rank() << ")";
      os << ": " << slot->op << " on " << slot->comm->describe() << " has waited " << waited
         << " s, longer than the timeout of " << timeout_s_
         << " s (a peer failed, stalled or never called it); aborting the communicator";
      on_timeout_(os.str());
      fired_ = true;
      slot->comm->abort();
      break;
    }
  }
}

}  // namespace weft
