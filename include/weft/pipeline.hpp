// Pipeline parallelism: schedules as action lists (GPipe, 1F1B, interleaved 1F1B), the executor
// that runs them over any Stage (stage.hpp), PipelineModel (this rank's chunks of a GPT) and
// PipelineTrace.
//
// Vocabulary. The model is cut into S = p x v *virtual stages* (p = pipeline size, v = virtual
// stages per rank); virtual stage s lives on pipeline rank s % p as that rank's model *chunk*
// s / p (Megatron's interleaving: rank r holds stages r, r + p, r + 2p, ...). A *micro-batch*
// (mb) is one slice of the step's batch; F(mb, s) / B(mb, s) are its forward / backward through
// stage s.
//
// How a schedule runs (deadlock-free by construction). Each rank's compute order (the
// schedule's F/B sequence) is fixed; every rank then runs the same deterministic *global tick
// simulation* over all ranks' orders: each compute action gets the earliest tick after its
// rank's previous action at which its inputs exist (F(mb, s) needs F(mb, s - 1) done at an
// earlier tick; B(mb, s) needs B(mb, s + 1), or F(mb, S - 1) on the last stage). An activation
// or gradient produced at tick t and needed on another rank moves in *communication round* t:
// after its compute of tick t, a rank posts one group_start() ... group_end_async() with exactly
// the sends and receives of round t that involve it, and completes that group when a later
// compute needs one of its receives (or at the end of the step). Every send of round t has its
// receive in round t on the peer, and a compute at tick t only waits for rounds before t, so by
// induction over ticks every rank posts every round: the rounds before t are posted by all
// ranks, so their groups complete, so every compute of tick t runs and round t is posted. Inside
// a round the transfers are posted in one global order, so two messages between the same pair
// of ranks match in order. This holds for any valid compute order, not only the built-in ones.
// (Completing a round only when its data is needed keeps neighbours from running in lockstep:
// a rank whose next compute does not need the peer's output goes on.)
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "weft/comm.hpp"
#include "weft/dropout.hpp"
#include "weft/gpt.hpp"
#include "weft/stage.hpp"

namespace weft {

enum class ScheduleKind { kGPipe, k1F1B, kInterleaved };

// "gpipe", "1f1b" or "interleaved" (case-sensitive); weft::Error naming the accepted names.
ScheduleKind parse_schedule(const std::string& name);
const char* schedule_name(ScheduleKind kind);

struct PipelineAction {
  enum class Kind { kForward, kBackward, kSendActivation, kRecvActivation, kSendGrad, kRecvGrad };
  Kind kind = Kind::kForward;
  int microbatch = 0;
  // This rank's model chunk: the one computing, the producer of a send, the consumer of a recv.
  int chunk = 0;
  int peer = -1;  // pipeline rank on the other side of a transfer; -1 for compute
  // Compute: the tick it runs at (-1 in a bare compute order). Transfer: its communication round,
  // the tick that produced the data.
  int round = -1;

  bool is_compute() const { return kind == Kind::kForward || kind == Kind::kBackward; }
  bool is_send() const { return kind == Kind::kSendActivation || kind == Kind::kSendGrad; }
  bool operator==(const PipelineAction& o) const {
    return kind == o.kind && microbatch == o.microbatch && chunk == o.chunk && peer == o.peer &&
           round == o.round;
  }
};

// "F", "B", "send act", "recv act", "send grad", "recv grad".
const char* action_kind_name(PipelineAction::Kind kind);
// "F mb3 c0", "send act mb3 c0 -> 1 @5" (peer and round where they apply).
std::string to_string(const PipelineAction& action);

// The ordered compute list (kForward/kBackward only) of pipeline rank `rank` out of `stages`:
// - kGPipe: every forward, then every backward (micro-batches in reverse, so that each stage's
//   first backward finds its own saved activations: one recomputation fewer per chunk).
// - k1F1B: warm-up min(p - rank - 1, m) forwards, then one forward one backward, then the
//   remaining backwards: at most p - rank micro-batches in flight.
// - kInterleaved: Megatron's interleaved 1F1B over v chunks; the k-th forward runs chunk
//   (k mod pv) / p on micro-batch (k / pv) p + k mod p, backwards take the chunks in reverse;
//   warm-up (p - rank - 1) x 2 + (v - 1) p forwards (all of them when m = p). Needs m divisible
//   by p (weft::Error naming both); v = 1 is exactly k1F1B (no divisibility needed).
// GPipe and 1F1B take v = 1 only. forward_only: the forwards alone, in the schedule's order.
std::vector<PipelineAction> pipeline_compute_order(ScheduleKind kind, int stages, int rank,
                                                   int microbatches, int virtual_stages = 1,
                                                   bool forward_only = false);

// Every rank's full action list for one step.
struct PipelineSchedule {
  int stages = 1;          // p
  int virtual_stages = 1;  // v (chunks per rank)
  int microbatches = 1;    // m
  bool forward_only = false;
  int ticks = 0;  // compute ticks, which are also the communication rounds
  // [pipeline rank]: in tick order, each tick's compute action (if the rank has one) followed by
  // the transfers of that tick's round that involve the rank, in the round's global order.
  std::vector<std::vector<PipelineAction>> actions;
};

// The global tick simulation over compute[r] (each rank's compute order) and the transfers it
// implies. Checks that every (micro-batch, virtual stage) is computed once forward and, unless no
// rank has any backward, once backward, on its own rank; throws weft::Error "schedule cannot make
// progress" naming each rank's blocked action when the orders deadlock.
PipelineSchedule simulate_pipeline(const std::vector<std::vector<PipelineAction>>& compute,
                                   int stages, int virtual_stages, int microbatches);
// pipeline_compute_order for every rank, then simulate_pipeline.
PipelineSchedule build_pipeline_schedule(ScheduleKind kind, int stages, int microbatches,
                                         int virtual_stages = 1, bool forward_only = false);

// Layers per virtual stage. explicit_counts empty: an even split (weft::Error naming both numbers
// when `layers` is not divisible by virtual_stages). Otherwise one count per virtual stage, each
// >= 0, summing to `layers` (weft::Error naming the sum and the layers).
std::vector<int64_t> split_layers(int64_t layers, int virtual_stages,
                                  const std::vector<int64_t>& explicit_counts);
// The GPTStageLayout of every virtual stage for those counts: stage 0 has the embedding, the last
// the head. weft::Error naming the stage when one would hold no layer, embedding or head.
std::vector<GPTStageLayout> pipeline_stage_layouts(const std::vector<int64_t>& layer_counts);

// The idle fraction of a step in theory: (p - 1) / (m + p - 1), and 1/v of that interleaved
// (Narayanan et al., 2021), with forward and backward of a stage taking equal ticks.
double theoretical_bubble_fraction(ScheduleKind kind, int stages, int64_t microbatches,
                                   int virtual_stages = 1);

// Records this rank's pipeline actions, step after step, for a Chrome/Perfetto timeline and the
// measured bubble. Pass it to PipelineModel::train_step; times are taken after a backend
// synchronize, so they hold for GPU work too (a traced step therefore serialises communication
// with compute).
class PipelineTrace {
 public:
  using Clock = std::chrono::steady_clock;
  struct Event {
    // "F mb3 c0", "B mb3 c0", "R mb3 c0" (recompute), "send act + recv grad" (a round posted),
    // "wait send act + recv grad" (completing it), "allreduce embedding grad", "idle"
    std::string name;
    std::string category;                 // "forward", "backward", "recompute", "comm", "idle"
    std::string detail;                   // transfers: each one with micro-batch, chunk and peer
    double start_us = 0.0, end_us = 0.0;  // since the first traced step began
  };

  // Called by the executor. begin_step is collective over `pp` on the first step (a barrier,
  // so that every rank's clock starts at the same moment).
  void begin_step(Communicator& pp, Backend& backend);
  void record(std::string name, std::string category, std::string detail, Clock::time_point start,
              Clock::time_point end);
  // Closes the step: the gaps between its events become "idle" events.
  void end_step(Clock::time_point end);

  const std::vector<Event>& events() const { return events_; }
  int steps() const { return steps_; }
  double step_time_us() const { return step_us_; }  // summed over the recorded steps
  double compute_time_us() const;                   // forward, backward and recompute
  // This rank's share of step time not spent computing (waiting in communication, or with
  // nothing to do): 1 - compute / step time, over the recorded steps.
  double measured_bubble_fraction() const;
  void clear();

  // Collective over `pp`: gathers every rank's events on pp rank 0 (sizes, then padded buffers,
  // staged through the backend of the traced steps when the communicator moves GPU buffers),
  // which writes Chrome trace JSON to `path` (atomically): one track per pipeline rank. With TP
  // or DP every pipeline group's rank 0 writes, so give each group its own path.
  void write_chrome_trace(const std::string& path, Communicator& pp);

 private:
  std::vector<Event> events_;
  size_t step_first_event_ = 0;
  Clock::time_point epoch_{}, step_start_{};
  bool started_ = false;
  int steps_ = 0;
  double step_us_ = 0.0;
  Backend* backend_ = nullptr;
};

// This rank's figures for the last step of a pipeline. Counts always; the per-action times only
// when timing was asked for (PipelineModel::set_timing, or a trace), since taking them means a
// backend synchronize around every action.
struct PipelineStats {
  double step_ms = 0.0;
  // comm: posting rounds, waiting for them, the tied-embedding and loss all-reduces.
  double forward_ms = 0.0, backward_ms = 0.0, recompute_ms = 0.0, comm_ms = 0.0;
  int64_t forwards = 0, backwards = 0, recomputes = 0;
  // Peak activation memory: micro-batch stage inputs held at once (from the posting of their
  // receive, or the first stage's forward, until that micro-batch's backward), over all chunks,
  // and their bytes. 1F1B holds at most p, GPipe m.
  int64_t peak_stored_inputs = 0;
  int64_t peak_stored_bytes = 0;
  // Forward states (what each forward keeps for its backward) held at once, and the most bytes
  // they held together: 1F1B at most p, GPipe m; the bytes depend on the recompute policy.
  int64_t peak_saved_states = 0;
  int64_t peak_saved_bytes = 0;
  bool timed = false;  // the times above were measured

  // This rank's compute actions in the order run, with their times (only when timed): what
  // replay_pipeline_step_ms replays.
  struct TimedCompute {
    enum class Kind { kForward, kRecompute, kBackward };
    Kind kind = Kind::kForward;
    int microbatch = 0, chunk = 0;
    double ms = 0.0;
  };
  std::vector<TimedCompute> computes;

  // 1 - (forward + backward + recompute) / step (0 when not timed).
  double bubble_fraction() const;
};

// The step time (ms) of ranks running computes[r] (rank r's compute actions, in their order and
// times) if communication and bookkeeping took no time: each action starts once its rank is free
// and its input is done, F(mb, s) after F(mb, s - 1) and B(mb, s) after B(mb, s + 1), where
// virtual stage s = chunk x p + r of p = computes.size() ranks with virtual_stages chunks each.
// Set beside a measured step it splits the bubble: measured - replayed is the runtime's own
// overhead (transfers, waits, bookkeeping); replayed against theoretical_bubble_fraction is the
// cost of stages that took unequal times. weft::Error when the orders deadlock.
double replay_pipeline_step_ms(
    const std::vector<std::vector<PipelineStats::TimedCompute>>& computes, int virtual_stages);

// Fills micro-batch `microbatch`'s data: the first stage's input (token ids for a GPT) and the
// last stage's targets, of the stages' input_spec / target_spec, on the backend's device (on a
// rank without the first stage `input` is scratch of the targets' spec, never read). Called only
// on ranks holding the first or last virtual stage, once per micro-batch per step, in schedule
// order; it must depend on the index alone (the same on every TP rank).
using PipelineLoader =
    std::function<void(int64_t microbatch, TensorView input, TensorView targets)>;

// Runs schedules over this rank's chunks: chunk c is virtual stage c x p + rank (p = pp.size()),
// v = chunks.size() of them. Knows the stages only through the Stage interface.
class PipelineExecutor {
 public:
  // Collective over `pp` (splits off the group of the first and last stage, for the shared
  // parameters). The stages must outlive the executor.
  PipelineExecutor(Backend& backend, Communicator& pp, std::vector<Stage*> chunks);
  ~PipelineExecutor();
  PipelineExecutor(const PipelineExecutor&) = delete;
  PipelineExecutor& operator=(const PipelineExecutor&) = delete;

  // One pass of `schedule` (micro-batches of [seq, batch]). With backwards: accumulates the
  // gradients of loss_scale x (mean over micro-batches of the last stage's loss), then sums the
  // first and last stage's shared_parameters() gradients. Returns the mean loss on every rank.
  // Dropout: F(mb, s) starts at rng's counters + mb x (draws of all stages) + the draws of the
  // stages before s; rng ends advanced by m micro-batches' draws. timed / trace: see
  // PipelineStats. Collective over `pp`.
  float run(const PipelineSchedule& schedule, const PipelineLoader& load, int64_t seq,
            int64_t batch, float loss_scale, DropoutRng& rng, bool timed,
            PipelineTrace* trace = nullptr);

  const PipelineStats& stats() const { return stats_; }
  // replay_pipeline_step_ms over every rank's computes of the last step, which must have been
  // timed; the same value on every rank. Collective over `pp`.
  double replayed_step_ms();
  int stages() const { return stages_; }
  int rank() const { return rank_; }
  int virtual_stage(int chunk) const { return chunk * stages_ + rank_; }

 private:
  // Every virtual stage's dropout draws per token (collective over pp).
  std::vector<int64_t> gather_dropout_draws();
  void sum_shared_gradients();

  Backend& backend_;
  Communicator& pp_;
  std::vector<Stage*> chunks_;
  int stages_, rank_;
  std::unique_ptr<Communicator> ends_;  // pp ranks 0 and p - 1 (first and last stage)
  PipelineStats stats_;
};

// This rank's v chunks of a GPT pipeline over `pp` (each a GPTModel with a GPTStageLayout), and
// the executor of a schedule.
//
//   ParallelGrid grid(world, tp, pp);
//   PipelineModel model(ParallelContext{backend, grid.tp()}, grid.pp(), config,
//                       parse_schedule("1f1b"), /*virtual_stages=*/1);
//   AdamW optimizer(backend, model.parameters(), {...});
//   float loss = model.train_step(load, microbatches, seq, batch, 1.0f, rng);
//   average_gradients(backend, grid.dp(), model.parameters());
//   optimizer.step(lr, clip_coefficient(model.grad_norm(), max_norm));
//
// Activation memory follows config.recompute: each in-flight micro-batch's forward keeps its own
// saved state (GPTModel::Saved), so nothing is recomputed under kNone, only the attention core's
// forward under kSelective; under kFull a chunk keeps each micro-batch's *stage input* and re-runs
// its forward before B(mb) unless that backward comes right after F(mb) (Megatron's
// --recompute-granularity full): with 1F1B nearly every micro-batch on every stage but the last
// (about +1/3 of the compute, forward = 1 and backward = 2 units), with GPipe all but one
// micro-batch per chunk. stats() counts them.
class PipelineModel {
 public:
  // Collective over `pp` (and the TP group of tp_ctx). config is finalized for tp_ctx's TP size
  // here. layer_counts: layers per virtual stage (pp.size() x virtual_stages of them), empty for
  // an even split. Every rank checks the whole layout before any communication, so a bad split
  // throws weft::Error on every rank alike.
  PipelineModel(const ParallelContext& tp_ctx, Communicator& pp, const GPTConfig& config,
                ScheduleKind kind, int virtual_stages = 1,
                const std::vector<int64_t>& layer_counts = {});
  ~PipelineModel();
  PipelineModel(const PipelineModel&) = delete;
  PipelineModel& operator=(const PipelineModel&) = delete;

  // Fills micro-batch `microbatch`'s token ids and targets: i32 [seq * batch], rows ordered
  // (position, batch); see PipelineLoader.
  using BatchLoader = PipelineLoader;

  // One step of `microbatches` micro-batches of [seq, batch] through the schedule. Zeroes the
  // gradients, then accumulates those of loss_scale x (mean over micro-batches of each
  // micro-batch's mean token loss), sums the two tied word-embedding copies' gradients (first and
  // last stage), and returns the mean loss (unscaled; on every rank). Dropout masks are those of
  // one GPTModel running the micro-batches in order from `rng`, which advances as it would: the
  // same losses and gradients at every TP x PP size and schedule. trace: optional recording.
  // Collective over the pipeline group; a weft::Error raised inside a micro-batch's compute (bad
  // token ids) leaves the peers waiting, so end the job then (MpiRuntime::abort).
  float train_step(const BatchLoader& load, int64_t microbatches, int64_t seq, int64_t batch,
                   float loss_scale, DropoutRng& rng, PipelineTrace* trace = nullptr);
  // Forward only, dropout off: the mean loss over the micro-batches (on every rank).
  float evaluate(const BatchLoader& load, int64_t microbatches, int64_t seq, int64_t batch);

  // L2 norm of the whole model's gradients: every value once (replicated TP copies via
  // replica_count, the tied embedding's second copy skipped), summed over TP and pipeline ranks.
  // Collective over both groups.
  float grad_norm();

  // Every chunk's parameters (for the optimizer, zero_grads, DP averaging). The last stage's copy
  // of the tied embedding is included: it gets the same gradient as the first stage's, so the
  // optimizer keeps the copies equal.
  std::vector<Parameter*> parameters();
  void set_training(bool training);

  const PipelineStats& stats() const { return executor_->stats(); }
  // The last (timed) step with free communication: PipelineExecutor::replayed_step_ms.
  double replayed_step_ms() { return executor_->replayed_step_ms(); }
  // Measure per-action times into stats() (a backend synchronize around every action); off by
  // default, so that p2p overlaps compute on a GPU. A trace times its step either way.
  void set_timing(bool timed) { timed_ = timed; }
  ScheduleKind schedule() const { return kind_; }
  const GPTConfig& config() const { return config_; }
  int stages() const { return stages_; }
  int virtual_stages() const { return virtual_stages_; }
  int rank() const { return rank_; }
  const std::vector<int64_t>& layer_counts() const { return layer_counts_; }
  int chunks() const { return virtual_stages_; }
  GPTModel& chunk(int c) { return *chunks_.at(static_cast<size_t>(c)); }
  int virtual_stage(int c) const { return c * stages_ + rank_; }
  PipelineExecutor& executor() { return *executor_; }
  bool has_first_stage() const { return rank_ == 0; }
  bool has_last_stage() const { return rank_ == stages_ - 1; }

 private:
  const PipelineSchedule& schedule_for(int64_t microbatches, bool forward_only);

  ParallelContext ctx_;
  Communicator& pp_;
  GPTConfig config_;
  ScheduleKind kind_;
  int stages_, virtual_stages_, rank_;
  std::vector<int64_t> layer_counts_;
  std::vector<std::unique_ptr<GPTModel>> chunks_;
  std::unique_ptr<PipelineExecutor> executor_;
  std::vector<PipelineSchedule> schedules_;
  bool training_ = true, timed_ = false;
};

}  // namespace weft
