// The pipeline executor's parts: the activation store (what each in-flight micro-batch holds, with
// the hold/release accounting), the round tracker (p2p rounds posted, polled and awaited) and the
// step observer (statistics and trace, timing only when asked for).
#pragma once

#include <algorithm>
#include <chrono>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "weft/comm.hpp"
#include "weft/error.hpp"
#include "weft/log.hpp"
#include "weft/pipeline.hpp"

namespace weft::pipeline_detail {

using Clock = std::chrono::steady_clock;

inline double millis(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

// Statistics and trace of one step. Counting is free; times need a backend synchronize around
// each action (so that GPU work is inside its interval), which serialises communication with
// compute: they are taken only when `timed` (stats asked for, or a trace).
class StepObserver {
 public:
  StepObserver(Backend& backend, PipelineStats& stats, PipelineTrace* trace, bool timed)
      : backend_(backend), stats_(stats), trace_(trace), timed_(timed || trace != nullptr) {}

  // Runs fn as one action; `ms` receives its time when timed. Returns the time (0 untimed).
  template <typename Fn>
  double action(double PipelineStats::*ms, const std::string& category, const std::string& name,
                const std::string& detail, Fn&& fn) {
    if (!timed_) {
      fn();
      return 0.0;
    }
    backend_.synchronize();
    const Clock::time_point start = Clock::now();
    fn();
    backend_.synchronize();
    const Clock::time_point end = Clock::now();
    stats_.*ms += millis(end - start);
    if (trace_ != nullptr) trace_->record(name, category, detail, start, end);
    return millis(end - start);
  }
  // Keeps a timed compute action for replay_pipeline_step_ms.
  void computed(PipelineStats::TimedCompute::Kind kind, int microbatch, int chunk, double ms) {
    if (timed_) stats_.computes.push_back({kind, microbatch, chunk, ms});
  }
  bool tracing() const { return trace_ != nullptr; }

 private:
  Backend& backend_;
  PipelineStats& stats_;
  PipelineTrace* trace_;
  bool timed_;
};

// What this rank holds for the micro-batches in flight: stage inputs and output gradients by
// [chunk][micro-batch], each forward's saved state until its backward, data waiting for its
// communication round, and the loader's data. Counts held inputs (from their receive, or the first
// stage's forward, until the backward) and held states with their bytes, and keeps the peaks.
class ActivationStore {
 public:
  ActivationStore(int chunks, PipelineStats& stats)
      : inputs_(static_cast<size_t>(chunks)),
        grads_(static_cast<size_t>(chunks)),
        states_(static_cast<size_t>(chunks)),
        stats_(stats) {}

  std::map<int, Tensor>& inputs(int chunk) { return inputs_[static_cast<size_t>(chunk)]; }
  std::map<int, Tensor>& grads(int chunk) { return grads_[static_cast<size_t>(chunk)]; }
  bool has(bool gradient, int chunk, int mb) {
    return (gradient ? grads(chunk) : inputs(chunk)).count(mb) > 0;
  }
  void put(bool gradient, int chunk, int mb, Tensor data) {
    (gradient ? grads(chunk) : inputs(chunk))[mb] = std::move(data);
  }

  // A micro-batch's input is held by this rank (bytes: its activation, or the token ids).
  void hold(int64_t bytes) {
    ++held_;
    held_bytes_ += bytes;
    stats_.peak_stored_inputs = std::max(stats_.peak_stored_inputs, held_);
    stats_.peak_stored_bytes = std::max(stats_.peak_stored_bytes, held_bytes_);
  }
  void release(int64_t bytes) {
    --held_;
    held_bytes_ -= bytes;
  }

  // The saved state of F(mb) on `chunk`, from its forward to its backward.
  Stage::State& new_state(int chunk, int mb, std::unique_ptr<Stage::State> state) {
    auto& slot = states_[static_cast<size_t>(chunk)][mb];
    slot = std::move(state);
    ++states_held_;
    stats_.peak_saved_states = std::max(stats_.peak_saved_states, states_held_);
    return *slot;
  }
  Stage::State& state(int chunk, int mb) {
    auto& map = states_[static_cast<size_t>(chunk)];
    auto it = map.find(mb);
    WEFT_ASSERT(it != map.end(), "pipeline: no saved state of mb", mb, " c", chunk);
    return *it->second;
  }
  // After a forward or a recomputation: the bytes every held state keeps now.
  void measure_states() {
    int64_t bytes = 0;
    for (const auto& chunk : states_) {
      for (const auto& entry : chunk) bytes += entry.second->bytes();
    }
    stats_.peak_saved_bytes = std::max(stats_.peak_saved_bytes, bytes);
  }
  void drop_state(int chunk, int mb) {
    states_[static_cast<size_t>(chunk)].erase(mb);
    --states_held_;
  }

  // Outgoing data until its round: (gradient?, mb, producing chunk).
  std::map<std::tuple<int, int, int>, Tensor>& outbox() { return outbox_; }

  bool empty() const { return outbox_.empty() && held_ == 0 && states_held_ == 0; }

 private:
  std::vector<std::map<int, Tensor>> inputs_, grads_;
  std::vector<std::map<int, std::unique_ptr<Stage::State>>> states_;
  std::map<std::tuple<int, int, int>, Tensor> outbox_;
  PipelineStats& stats_;
  int64_t held_ = 0, held_bytes_ = 0, states_held_ = 0;
};

// Posted communication rounds, completed lazily: a round's group is waited for when a compute
// needs one of its receives, or at the end of the step. A compute at tick t only ever waits for
// rounds before t, which keeps any valid schedule deadlock-free (pipeline.hpp).
class RoundTracker {
 public:
  struct Round {
    std::unique_ptr<PendingGroup> group;
    std::vector<Tensor> sent;  // kept unchanged until the group completes
    std::vector<std::tuple<bool, int, int, Tensor>> received;  // gradient?, chunk, mb, buffer
    std::string name, detail;
  };

  RoundTracker(ActivationStore& store, StepObserver& observer, Communicator& comm)
      : store_(store), observer_(observer), comm_(comm) {}
  ~RoundTracker() {
    // Only after an error (a finished step completes every round). Destroying a pending group
    // would wait for its peers, who may never post their side: each round is cancelled instead
    // (receives no peer matched) or given a short grace to complete (a peer that failed too, or
    // waits in its own transfers, progresses them), and then freed with its buffers.
    if (in_flight_.empty()) return;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    size_t stuck = 0;
    for (Round& r : in_flight_) {
      const double left =
          std::chrono::duration<double>(deadline - std::chrono::steady_clock::now()).count();
      if (r.group->cancel(std::max(left, 0.0))) continue;
      // Still in flight: the transfer may read or write these buffers later.
      ++stuck;
      new std::vector<Tensor>(std::move(r.sent));
      for (auto& received : r.received) new Tensor(std::move(std::get<3>(received)));
    }
    // The peers may have sent what this rank never received: a later step on this communicator
    // could match those stale messages. It is aborted, so that later operations fail at once.
    comm_.abort();
    if (stuck > 0) {
      WEFT_LOG(kError, "pipeline: ", stuck, " of ", in_flight_.size(),
               " in-flight transfer rounds did not finish after an error; their buffers stay "
               "allocated and ",
               comm_.describe(), " is aborted");
    }
  }

  void post(Round round) { in_flight_.push_back(std::move(round)); }

  // MPI moves data only inside MPI calls: test every round, delivering the completed ones.
  void poll() {
    for (auto it = in_flight_.begin(); it != in_flight_.end();) {
      const auto next = std::next(it);
      if (it->group->test()) retire(it);
      it = next;
    }
  }

  // The input (or output gradient) of (chunk, mb) is in the store once this returns.
  void await(bool gradient, int chunk, int mb) {
    if (store_.has(gradient, chunk, mb)) return;
    for (auto it = in_flight_.begin(); it != in_flight_.end(); ++it) {
      for (const auto& r : it->received) {
        if (std::get<0>(r) == gradient && std::get<1>(r) == chunk && std::get<2>(r) == mb) {
          complete(it);
          return;
        }
      }
    }
    WEFT_ASSERT(false, "pipeline: the ", gradient ? "gradient" : "input", " of mb", mb, " c", chunk,
                " was never received");
  }

  void complete_all() {
    while (!in_flight_.empty()) complete(in_flight_.begin());
  }

 private:
  void retire(std::list<Round>::iterator it) {
    for (auto& [gradient, chunk, mb, data] : it->received) {
      store_.put(gradient, chunk, mb, std::move(data));
    }
    in_flight_.erase(it);
  }
  void complete(std::list<Round>::iterator it) {
    observer_.action(&PipelineStats::comm_ms, "comm", "wait " + it->name, it->detail,
                     [&] { it->group->wait(); });
    retire(it);
  }

  ActivationStore& store_;
  StepObserver& observer_;
  Communicator& comm_;
  std::list<Round> in_flight_;
};

}  // namespace weft::pipeline_detail
