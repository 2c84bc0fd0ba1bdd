// PipelineModel: this rank's GPT chunks and the executor that runs a schedule's action list over
// the pipeline communicator, with activation recomputation and the tied-embedding gradient sum.
#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <list>
#include <map>
#include <tuple>

#include "weft/error.hpp"
#include "weft/mappings.hpp"
#include "weft/parameter.hpp"
#include "weft/pipeline.hpp"

namespace weft {

namespace {

using Clock = std::chrono::steady_clock;

double millis(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

}  // namespace

double PipelineStats::bubble_fraction() const {
  if (step_ms <= 0.0) return 0.0;
  return std::max(0.0, 1.0 - (forward_ms + backward_ms + recompute_ms) / step_ms);
}

PipelineModel::PipelineModel(const ParallelContext& tp_ctx, Communicator& pp,
                             const GPTConfig& config, ScheduleKind kind, int virtual_stages,
                             const std::vector<int64_t>& layer_counts)
    : ctx_(tp_ctx),
      pp_(pp),
      config_(config),
      kind_(kind),
      stages_(pp.size()),
      virtual_stages_(virtual_stages),
      rank_(pp.rank()) {
  // Everything below up to the split depends only on arguments every rank shares, so a bad
  // layout throws on every rank before any communication.
  config_.finalize(ctx_.tp.size());
  WEFT_CHECK(virtual_stages_ >= 1, "PipelineModel: virtual stages per rank (", virtual_stages_,
             ") must be positive");
  WEFT_CHECK(kind_ == ScheduleKind::kInterleaved || virtual_stages_ == 1, "PipelineModel: the ",
             schedule_name(kind_), " schedule runs one model chunk per rank, got ", virtual_stages_,
             " virtual stages (use the interleaved schedule)");
  layer_counts_ = split_layers(config_.layers, stages_ * virtual_stages_, layer_counts);
  const std::vector<GPTStageLayout> layouts = pipeline_stage_layouts(layer_counts_);
  for (const GPTStageLayout& layout : layouts) first_layers_.push_back(layout.first_layer);
  WEFT_CHECK(stages_ == 1 || pp.buffer_device() == ctx_.backend.device().kind,
             "PipelineModel: ", pp.name(), " communicator moves ",
             pp.buffer_device() == DeviceKind::kCpu ? "host" : "GPU", " buffers but the backend (",
             ctx_.backend.name(), ") computes elsewhere");
  if (stages_ > 1) tied_ = pp.split(rank_ == 0 || rank_ == stages_ - 1 ? 0 : 1, rank_);
  for (int c = 0; c < virtual_stages_; ++c) {
    chunks_.push_back(
        std::make_unique<GPTModel>(ctx_, config_, layouts[static_cast<size_t>(virtual_stage(c))]));
  }
}

PipelineModel::~PipelineModel() = default;

std::vector<Parameter*> PipelineModel::parameters() {
  std::vector<Parameter*> params;
  for (auto& chunk : chunks_) {
    for (Parameter* p : chunk->parameters()) params.push_back(p);
  }
  return params;
}

void PipelineModel::set_training(bool training) {
  training_ = training;
  for (auto& chunk : chunks_) chunk->set_training(training);
}

float PipelineModel::grad_norm() {
  Backend& backend = ctx_.backend;
  // The last stage's copy of the tied table carries the same gradient as the first stage's.
  Parameter* duplicate = stages_ * virtual_stages_ > 1 && has_last_stage()
                             ? chunks_.back()->word_embeddings()
                             : nullptr;
  std::vector<Parameter*> params;
  for (Parameter* p : parameters()) {
    if (p != duplicate) params.push_back(p);
  }
  return global_grad_norm(backend, params, {&ctx_.tp, &pp_});
}

const PipelineSchedule& PipelineModel::schedule_for(int64_t microbatches, bool forward_only) {
  for (const PipelineSchedule& s : schedules_) {
    if (s.microbatches == microbatches && s.forward_only == forward_only) return s;
  }
  schedules_.push_back(build_pipeline_schedule(kind_, stages_, static_cast<int>(microbatches),
                                               virtual_stages_, forward_only));
  return schedules_.back();
}

namespace {
// Checked on every rank before any communication: a stage that threw mid-step would leave its
// neighbours waiting.
void check_step_args(const GPTConfig& config, int tp, int64_t microbatches, int64_t seq,
                     int64_t batch) {
  WEFT_CHECK(microbatches >= 1 && microbatches <= INT_MAX, "PipelineModel: micro-batches (",
             microbatches, ") must be positive");
  WEFT_CHECK(seq > 0 && batch > 0, "PipelineModel: seq (", seq, ") and batch (", batch,
             ") must be positive");
  WEFT_CHECK(seq <= config.max_seq, "PipelineModel: sequence length (", seq,
             ") exceeds the model's maximum (", config.max_seq, ")");
  if (config.sequence_parallel) check_sequence_parallel_seq(seq, tp, "PipelineModel");
}
}  // namespace

float PipelineModel::train_step(const BatchLoader& load, int64_t microbatches, int64_t seq,
                                int64_t batch, float loss_scale, DropoutRng& rng,
                                PipelineTrace* trace) {
  check_step_args(config_, ctx_.tp.size(), microbatches, seq, batch);
  WEFT_CHECK(static_cast<bool>(load), "PipelineModel: train_step needs a batch loader");
  const PipelineSchedule& schedule = schedule_for(microbatches, false);
  zero_grads(ctx_.backend, parameters());
  return run(schedule, load, seq, batch, loss_scale, rng, trace);
}

float PipelineModel::evaluate(const BatchLoader& load, int64_t microbatches, int64_t seq,
                              int64_t batch) {
  check_step_args(config_, ctx_.tp.size(), microbatches, seq, batch);
  WEFT_CHECK(static_cast<bool>(load), "PipelineModel: evaluate needs a batch loader");
  const PipelineSchedule& schedule = schedule_for(microbatches, true);
  const bool was_training = training_;
  set_training(false);  // no dropout: the rng below is never drawn from
  DropoutRng unused(0, 0);
  float loss = 0.0f;
  try {
    loss = run(schedule, load, seq, batch, 1.0f, unused, nullptr);
  } catch (...) {
    set_training(was_training);
    throw;
  }
  set_training(was_training);
  return loss;
}

float PipelineModel::run(const PipelineSchedule& schedule, const BatchLoader& load, int64_t seq,
                         int64_t batch, float loss_scale, DropoutRng& rng, PipelineTrace* trace) {
  using K = PipelineAction::Kind;
  Backend& backend = ctx_.backend;
  const int p = stages_, v = virtual_stages_, S = p * v, m = schedule.microbatches;
  const bool with_backward = !schedule.forward_only;
  const int64_t tokens = seq * batch;
  // Under sequence parallelism a stage boundary carries this rank's seq / tp positions.
  const int64_t rows = config_.sequence_parallel ? tokens / ctx_.tp.size() : tokens;
  const Shape activation_shape({rows, config_.hidden});
  const int64_t activation_bytes =
      rows * config_.hidden * static_cast<int64_t>(dtype_size(config_.dtype));
  const int64_t ids_bytes = tokens * static_cast<int64_t>(dtype_size(DType::kI32));

  stats_ = PipelineStats{};
  if (trace) trace->begin_step(pp_, backend);
  backend.synchronize();
  const Clock::time_point step_start = Clock::now();

  // Dropout: F(mb, s) draws from where one GPTModel running the micro-batches in order would be
  // (the embedding draws tokens x hidden, each layer twice that, whatever the TP size and
  // sequence parallelism), so the masks do not depend on the schedule or the pipeline size.
  const bool dropout = training_ && config_.dropout > 0.0f;
  const uint64_t unit = dropout ? static_cast<uint64_t>(tokens * config_.hidden) : 0;
  const uint64_t per_microbatch = unit * static_cast<uint64_t>(1 + 2 * config_.layers);
  const uint64_t base_replicated = rng.replicated_offset(), base_sharded = rng.sharded_offset();
  auto stage_draws = [&](int s) {
    return unit * static_cast<uint64_t>((s == 0 ? 1 : 0) + 2 * layer_counts_[s]);
  };
  auto rng_for = [&](int mb, int s) {
    DropoutRng r = rng;
    const uint64_t before = s == 0 ? 0 : unit * static_cast<uint64_t>(1 + 2 * first_layers_[s]);
    r.set_offsets(base_replicated + static_cast<uint64_t>(mb) * per_microbatch + before,
                  base_sharded);
    return r;
  };

  // Token ids and targets of in-flight micro-batches, on ranks with the first or last stage.
  struct Tokens {
    Tensor ids, targets;
    int users = 0;  // chunks of this rank still to finish the micro-batch
  };
  std::map<int, Tokens> token_store;
  int token_users = 0;
  for (int c = 0; c < v; ++c) {
    const int s = virtual_stage(c);
    if (s == 0 || s == S - 1) ++token_users;
  }
  auto tokens_for = [&](int mb) -> Tokens& {
    auto it = token_store.find(mb);
    if (it != token_store.end()) return it->second;
    Tokens t{Tensor(backend, Shape({tokens}), DType::kI32),
             Tensor(backend, Shape({tokens}), DType::kI32), token_users};
    load(mb, t.ids, t.targets);
    return token_store.emplace(mb, std::move(t)).first->second;
  };
  auto tokens_done = [&](int mb) {
    auto it = token_store.find(mb);
    WEFT_ASSERT(it != token_store.end(), "pipeline: tokens of mb", mb, " missing");
    if (--it->second.users == 0) token_store.erase(it);
  };

  // Stage inputs and output gradients by [chunk][micro-batch]; outgoing data until its round.
  std::vector<std::map<int, Tensor>> inputs(static_cast<size_t>(v)), grads(static_cast<size_t>(v));
  std::map<std::tuple<int, int, int>, Tensor> outbox;  // (gradient?, mb, producing chunk)
  std::vector<int> last_forward(static_cast<size_t>(v), -1);
  int64_t held = 0, held_bytes = 0;
  auto hold = [&](int64_t bytes) {
    ++held;
    held_bytes += bytes;
    stats_.peak_stored_inputs = std::max(stats_.peak_stored_inputs, held);
    stats_.peak_stored_bytes = std::max(stats_.peak_stored_bytes, held_bytes);
  };
  auto release = [&](int64_t bytes) {
    --held;
    held_bytes -= bytes;
  };
  // Hands data for virtual stage `to` over locally, or leaves it for its round.
  auto route = [&](Tensor data, int to, int mb, int from_chunk, bool gradient) {
    if (to % p == rank_) {
      (gradient ? grads : inputs)[static_cast<size_t>(to / p)][mb] = std::move(data);
      if (!gradient) hold(activation_bytes);
    } else {
      outbox[{gradient ? 1 : 0, mb, from_chunk}] = std::move(data);
    }
  };

  auto stage_forward = [&](int mb, int c) {
    const int s = virtual_stage(c);
    TensorView input, targets;
    if (s == 0 || s == S - 1) {
      Tokens& t = tokens_for(mb);
      if (s == 0) input = t.ids;
      if (s == S - 1) targets = t.targets;
    }
    if (s > 0) {
      auto it = inputs[static_cast<size_t>(c)].find(mb);
      WEFT_ASSERT(it != inputs[static_cast<size_t>(c)].end(), "pipeline: input of F mb", mb, " c",
                  c, " has not arrived");
      input = it->second;
    }
    DropoutRng r = rng_for(mb, s);
    const uint64_t start = r.replicated_offset();
    Tensor out = chunks_[static_cast<size_t>(c)]->forward_stage(input, targets, seq, batch, r);
    WEFT_ASSERT(
        r.replicated_offset() - start == stage_draws(s) && r.sharded_offset() == base_sharded,
        "pipeline: virtual stage ", s, " drew ", r.replicated_offset() - start,
        " replicated dropout elements, expected ", stage_draws(s),
        " (the layers' dropout draws changed; update PipelineModel's offsets)");
    last_forward[static_cast<size_t>(c)] = mb;
    return out;
  };

  auto timed = [&](auto&& fn) {
    backend.synchronize();
    const Clock::time_point start = Clock::now();
    fn();
    backend.synchronize();
    return std::make_pair(start, Clock::now());
  };
  auto label = [](const char* what, int mb, int c) {
    return std::string(what) + " mb" + std::to_string(mb) + " c" + std::to_string(c);
  };

  // Posted communication rounds, completed lazily: a round's group is waited for when a compute
  // needs one of its receives, or at the end of the step. A compute at tick t only ever waits for
  // rounds before t, which keeps any valid schedule deadlock-free (pipeline.hpp).
  struct Round {
    std::unique_ptr<PendingGroup> group;
    std::vector<Tensor> sent;  // kept unchanged until the group completes
    std::vector<std::tuple<bool, int, int, Tensor>> received;  // gradient?, chunk, mb, buffer
    std::string name, detail;
  };
  std::list<Round> in_flight;
  auto retire = [&](std::list<Round>::iterator it) {
    for (auto& [gradient, chunk, mb, data] : it->received) {
      (gradient ? grads : inputs)[static_cast<size_t>(chunk)][mb] = std::move(data);
    }
    in_flight.erase(it);
  };
  auto complete = [&](std::list<Round>::iterator it) {
    const auto [start, end] = timed([&] { it->group->wait(); });
    stats_.comm_ms += millis(end - start);
    if (trace) trace->record("wait " + it->name, "comm", it->detail, start, end);
    retire(it);
  };
  auto poll = [&] {  // MPI moves data only inside MPI calls
    for (auto it = in_flight.begin(); it != in_flight.end();) {
      const auto next = std::next(it);
      if (it->group->test()) retire(it);
      it = next;
    }
  };
  // The input (or output gradient) of (chunk, mb) is here once this returns.
  auto await_data = [&](bool gradient, int chunk, int mb) {
    if ((gradient ? grads : inputs)[static_cast<size_t>(chunk)].count(mb)) return;
    for (auto it = in_flight.begin(); it != in_flight.end(); ++it) {
      for (const auto& r : it->received) {
        if (std::get<0>(r) == gradient && std::get<1>(r) == chunk && std::get<2>(r) == mb) {
          complete(it);
          return;
        }
      }
    }
    WEFT_ASSERT(false, "pipeline: the ", gradient ? "gradient" : "input", " of mb", mb, " c", chunk,
                " was never received");
  };

  double loss_sum = 0.0;
  const float grad_scale = loss_scale / static_cast<float>(m);
  const std::vector<PipelineAction>& actions = schedule.actions[static_cast<size_t>(rank_)];
  try {
    for (size_t i = 0; i < actions.size();) {
      const PipelineAction& a = actions[i];
      const int mb = a.microbatch, c = a.chunk, s = virtual_stage(a.chunk);
      if (a.is_compute()) poll();
      if (a.kind == K::kForward) {
        if (s > 0) await_data(false, c, mb);
        if (s == 0 || s == S - 1) tokens_for(mb);  // the loader's time is not the forward's
        Tensor out;
        const auto [start, end] = timed([&] { out = stage_forward(mb, c); });
        stats_.forward_ms += millis(end - start);
        ++stats_.forwards;
        if (trace) trace->record(label("F", mb, c), "forward", "", start, end);
        if (s == 0 && with_backward) hold(ids_bytes);
        if (s == S - 1) {
          loss_sum += chunks_[static_cast<size_t>(c)]->last_loss();
        } else {
          route(std::move(out), s + 1, mb, c, false);
        }
        if (!with_backward) {  // forward only: the input is done with
          if (s > 0) {
            inputs[static_cast<size_t>(c)].erase(mb);
            release(activation_bytes);
          }
          if (s == 0 || s == S - 1) tokens_done(mb);
        }
        ++i;
      } else if (a.kind == K::kBackward) {
        if (last_forward[static_cast<size_t>(c)] != mb) {
          // Full recomputation: this chunk's saved activations belong to another micro-batch.
          const auto [start, end] = timed([&] { stage_forward(mb, c); });
          stats_.recompute_ms += millis(end - start);
          ++stats_.recomputes;
          if (trace) trace->record(label("R", mb, c), "recompute", "", start, end);
        }
        if (s < S - 1) await_data(true, c, mb);
        Tensor grad_input;
        const auto [start, end] = timed([&] {
          TensorView grad_output;
          if (s < S - 1) grad_output = grads[static_cast<size_t>(c)].at(mb);
          grad_input = chunks_[static_cast<size_t>(c)]->backward_stage(grad_output, grad_scale);
        });
        stats_.backward_ms += millis(end - start);
        ++stats_.backwards;
        if (trace) trace->record(label("B", mb, c), "backward", "", start, end);
        last_forward[static_cast<size_t>(c)] = -1;  // backward consumed the saved activations
        grads[static_cast<size_t>(c)].erase(mb);
        if (s > 0) {
          inputs[static_cast<size_t>(c)].erase(mb);
          release(activation_bytes);
          route(std::move(grad_input), s - 1, mb, c, true);
        } else {
          release(ids_bytes);
        }
        if (s == 0 || s == S - 1) tokens_done(mb);
        ++i;
      } else {
        // One communication round: every transfer of a.round that involves this rank, posted in
        // one group and completed when its data is needed.
        size_t j = i;
        while (j < actions.size() && !actions[j].is_compute() && actions[j].round == a.round) ++j;
        Round round;
        const auto [start, end] = timed([&] {
          pp_.group_start();
          for (size_t k = i; k < j; ++k) {
            const PipelineAction& t = actions[k];
            const bool gradient = t.kind == K::kSendGrad || t.kind == K::kRecvGrad;
            if (t.is_send()) {
              auto it = outbox.find({gradient ? 1 : 0, t.microbatch, t.chunk});
              WEFT_ASSERT(it != outbox.end(), "pipeline: nothing to ", to_string(t));
              pp_.send(it->second, t.peer, backend.stream());
              round.sent.push_back(std::move(it->second));  // same storage: the view stays valid
              outbox.erase(it);
            } else {
              Tensor buffer(backend, activation_shape, config_.dtype);
              pp_.recv(buffer, t.peer, backend.stream());
              if (!gradient) hold(activation_bytes);
              round.received.emplace_back(gradient, t.chunk, t.microbatch, std::move(buffer));
            }
          }
          round.group = pp_.group_end_async();
        });
        stats_.comm_ms += millis(end - start);
        if (trace) {
          for (size_t k = i; k < j; ++k) {
            const std::string kind = action_kind_name(actions[k].kind);
            if (round.name.find(kind) == std::string::npos) {
              round.name += (round.name.empty() ? "" : " + ") + kind;
            }
            round.detail += (round.detail.empty() ? "" : "; ") + to_string(actions[k]);
          }
          trace->record(round.name, "comm", round.detail, start, end);
        }
        in_flight.push_back(std::move(round));
        i = j;
      }
    }
    while (!in_flight.empty()) complete(in_flight.begin());
  } catch (...) {
    // A pending group would wait for its peers when destroyed: leave the groups and their
    // buffers to the process, so that the error reaches the caller (who ends the job).
    auto* abandoned = new std::list<Round>(std::move(in_flight));
    for (Round& r : *abandoned) (void)r.group.release();
    throw;
  }
  WEFT_ASSERT(outbox.empty() && token_store.empty() && held == 0,
              "pipeline: the step ended with data in flight");

  if (with_backward && S > 1) {
    // The tied word embedding: first stage's table and the last stage's copy get the sum of both
    // gradients, so that they stay equal under the optimizer.
    const auto [start, end] = timed([&] {
      if (p > 1) {
        if (rank_ == 0 || rank_ == p - 1) {
          Parameter* table = (rank_ == 0 ? chunks_.front() : chunks_.back())->word_embeddings();
          tied_->all_reduce(table->grad, table->grad, ReduceOp::kSum, backend.stream());
        }
      } else {
        Parameter* first = chunks_.front()->word_embeddings();
        Parameter* last = chunks_.back()->word_embeddings();
        backend.add(first->grad, first->grad, last->grad);
        backend.copy(last->grad, first->grad);
      }
    });
    stats_.comm_ms += millis(end - start);
    if (trace && (p == 1 || rank_ == 0 || rank_ == p - 1)) {
      trace->record("allreduce embedding grad", "comm", "", start, end);
    }
  }

  // The loss lives on the last stage; the others add zero.
  const float local_loss = has_last_stage() ? static_cast<float>(loss_sum / m) : 0.0f;
  const Clock::time_point loss_start = Clock::now();
  const float loss =
      p > 1 ? all_reduce_scalar(pp_, backend, local_loss, ReduceOp::kSum) : local_loss;
  backend.synchronize();
  const Clock::time_point step_end = Clock::now();
  if (trace && p > 1) trace->record("allreduce loss", "comm", "", loss_start, step_end);
  stats_.comm_ms += millis(step_end - loss_start);
  stats_.step_ms = millis(step_end - step_start);
  if (trace) trace->end_step(step_end);
  rng.set_offsets(base_replicated + static_cast<uint64_t>(m) * per_microbatch, base_sharded);
  return loss;
}

}  // namespace weft
