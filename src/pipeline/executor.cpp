// PipelineExecutor: runs a schedule's action list over this rank's Stage chunks, with p2p rounds,
// per-micro-batch saved states and the shared-parameter gradient sum.
#include <algorithm>

#include "pipeline/executor_parts.hpp"
#include "weft/error.hpp"
#include "weft/pipeline.hpp"

namespace weft {

using pipeline_detail::ActivationStore;
using pipeline_detail::Clock;
using pipeline_detail::millis;
using pipeline_detail::RoundTracker;
using pipeline_detail::StepObserver;
using Computed = PipelineStats::TimedCompute::Kind;

double PipelineStats::bubble_fraction() const {
  if (!timed || step_ms <= 0.0) return 0.0;
  return std::max(0.0, 1.0 - (forward_ms + backward_ms + recompute_ms) / step_ms);
}

PipelineExecutor::PipelineExecutor(Backend& backend, Communicator& pp, std::vector<Stage*> chunks)
    : backend_(backend), pp_(pp), chunks_(std::move(chunks)), stages_(pp.size()), rank_(pp.rank()) {
  WEFT_CHECK(!chunks_.empty(), "PipelineExecutor: a rank needs at least one stage");
  WEFT_CHECK(stages_ == 1 || pp.buffer_device() == backend.device().kind,
             "PipelineExecutor: ", pp.name(), " communicator moves ",
             pp.buffer_device() == DeviceKind::kCpu ? "host" : "GPU", " buffers but the backend (",
             backend.name(), ") computes elsewhere");
  if (stages_ > 1) ends_ = pp.split(rank_ == 0 || rank_ == stages_ - 1 ? 0 : 1, rank_);
}

PipelineExecutor::~PipelineExecutor() = default;

std::vector<int64_t> PipelineExecutor::gather_dropout_draws() {
  const int v = static_cast<int>(chunks_.size());
  std::vector<int32_t> mine(static_cast<size_t>(v));
  for (int c = 0; c < v; ++c) {
    const int64_t draws = chunks_[static_cast<size_t>(c)]->dropout_draws_per_token();
    WEFT_CHECK(draws >= 0 && draws <= INT32_MAX, "PipelineExecutor: stage ", virtual_stage(c),
               " draws ", draws, " dropout elements per token (at most 2^31 - 1)");
    mine[static_cast<size_t>(c)] = static_cast<int32_t>(draws);
  }
  std::vector<int32_t> all(static_cast<size_t>(v * stages_));
  if (stages_ > 1) {
    all_gather_host(pp_, &backend_, TensorView{mine.data(), Shape({v}), DType::kI32, Device::cpu()},
                    TensorView{all.data(), Shape({v * stages_}), DType::kI32, Device::cpu()});
  } else {
    all = mine;
  }
  // all[r * v + c] is rank r's chunk c, virtual stage c * p + r.
  std::vector<int64_t> by_stage(static_cast<size_t>(v * stages_));
  for (int r = 0; r < stages_; ++r) {
    for (int c = 0; c < v; ++c) by_stage[static_cast<size_t>(c * stages_ + r)] = all[r * v + c];
  }
  return by_stage;
}

double PipelineExecutor::replayed_step_ms() {
  WEFT_CHECK(stats_.timed, "PipelineExecutor: replayed_step_ms needs a timed step (",
             "PipelineModel::set_timing or a trace)");
  // Each compute travels as four f32: kind, micro-batch, chunk, ms (indices are exact in f32
  // up to 2^24), padded to the longest rank's list.
  const auto count = static_cast<int32_t>(stats_.computes.size());
  std::vector<int32_t> counts(static_cast<size_t>(stages_));
  all_gather_host(pp_, &backend_,
                  TensorView{const_cast<int32_t*>(&count), Shape({1}), DType::kI32, Device::cpu()},
                  TensorView{counts.data(), Shape({stages_}), DType::kI32, Device::cpu()});
  const int64_t longest = *std::max_element(counts.begin(), counts.end());
  std::vector<float> mine(static_cast<size_t>(4 * longest), 0.0f);
  for (size_t i = 0; i < stats_.computes.size(); ++i) {
    const PipelineStats::TimedCompute& t = stats_.computes[i];
    mine[4 * i] = static_cast<float>(t.kind);
    mine[4 * i + 1] = static_cast<float>(t.microbatch);
    mine[4 * i + 2] = static_cast<float>(t.chunk);
    mine[4 * i + 3] = static_cast<float>(t.ms);
  }
  std::vector<float> all(mine.size() * static_cast<size_t>(stages_));
  all_gather_host(
      pp_, &backend_, TensorView{mine.data(), Shape({4 * longest}), DType::kF32, Device::cpu()},
      TensorView{all.data(), Shape({4 * longest * stages_}), DType::kF32, Device::cpu()});
  std::vector<std::vector<PipelineStats::TimedCompute>> computes(static_cast<size_t>(stages_));
  for (int r = 0; r < stages_; ++r) {
    const float* f = all.data() + static_cast<size_t>(4 * longest * r);
    for (int32_t i = 0; i < counts[static_cast<size_t>(r)]; ++i, f += 4) {
      computes[static_cast<size_t>(r)].push_back({static_cast<Computed>(static_cast<int>(f[0])),
                                                  static_cast<int>(f[1]), static_cast<int>(f[2]),
                                                  static_cast<double>(f[3])});
    }
  }
  return replay_pipeline_step_ms(computes, static_cast<int>(chunks_.size()));
}

void PipelineExecutor::sum_shared_gradients() {
  // The first and the last stage hold copies of the same parameters (a tied embedding): each
  // copy gets the sum of both gradients, so that the copies stay equal under the optimizer.
  const int S = stages_ * static_cast<int>(chunks_.size());
  if (S == 1) return;
  if (stages_ == 1) {
    const std::vector<Parameter*> first = chunks_.front()->shared_parameters();
    const std::vector<Parameter*> last = chunks_.back()->shared_parameters();
    WEFT_CHECK(first.size() == last.size(), "pipeline: the first stage shares ", first.size(),
               " parameters, the last ", last.size());
    for (size_t i = 0; i < first.size(); ++i) {
      backend_.add(first[i]->grad, first[i]->grad, last[i]->grad);
      backend_.copy(last[i]->grad, first[i]->grad);
    }
    return;
  }
  if (rank_ != 0 && rank_ != stages_ - 1) return;
  Stage& stage = rank_ == 0 ? *chunks_.front() : *chunks_.back();
  for (Parameter* p : stage.shared_parameters()) {
    ends_->all_reduce(p->grad, p->grad, ReduceOp::kSum, backend_.stream());
  }
}

float PipelineExecutor::run(const PipelineSchedule& schedule, const PipelineLoader& load,
                            int64_t seq, int64_t batch, float loss_scale, DropoutRng& rng,
                            bool timed, PipelineTrace* trace) {
  using K = PipelineAction::Kind;
  const int p = stages_, v = static_cast<int>(chunks_.size()), S = p * v, m = schedule.microbatches;
  WEFT_CHECK(schedule.stages == p && schedule.virtual_stages == v, "PipelineExecutor: a schedule ",
             "for ", schedule.stages, " x ", schedule.virtual_stages, " stages, the executor has ",
             p, " x ", v);
  const bool with_backward = !schedule.forward_only;
  const int64_t tokens = seq * batch;

  stats_ = PipelineStats{};
  stats_.timed = timed || trace != nullptr;
  if (trace) trace->begin_step(pp_, backend_);
  StepObserver observer(backend_, stats_, trace, timed);
  ActivationStore store(v, stats_);
  RoundTracker rounds(store, observer, pp_);
  if (stats_.timed) backend_.synchronize();
  const Clock::time_point step_start = Clock::now();

  // Dropout: F(mb, s) draws from where one model running the micro-batches in order would be,
  // so the masks depend neither on the schedule nor on the pipeline size.
  const std::vector<int64_t> draws = gather_dropout_draws();
  std::vector<uint64_t> before(static_cast<size_t>(S) + 1, 0);  // draws of the stages before s
  for (int s = 0; s < S; ++s) {
    before[static_cast<size_t>(s) + 1] =
        before[static_cast<size_t>(s)] +
        static_cast<uint64_t>(draws[static_cast<size_t>(s)] * tokens);
  }
  const uint64_t per_microbatch = before[static_cast<size_t>(S)];
  const uint64_t base_replicated = rng.replicated_offset(), base_sharded = rng.sharded_offset();
  auto rng_for = [&](int mb, int s) {
    DropoutRng r = rng;
    r.set_offsets(base_replicated + static_cast<uint64_t>(mb) * per_microbatch +
                      before[static_cast<size_t>(s)],
                  base_sharded);
    return r;
  };

  // The loader's data of in-flight micro-batches, on ranks with the first or last stage.
  struct Data {
    Tensor input, targets;
    int users = 0;  // chunks of this rank still to finish the micro-batch
  };
  std::map<int, Data> data;
  int data_users = 0;
  for (int c = 0; c < v; ++c) {
    const int s = virtual_stage(c);
    if (s == 0 || s == S - 1) ++data_users;
  }
  const Stage::TensorSpec targets_spec = chunks_.back()->target_spec(seq, batch);
  // Only the first stage reads the loader's input: elsewhere it is scratch of the targets' spec.
  const Stage::TensorSpec first_input =
      rank_ == 0 ? chunks_.front()->input_spec(seq, batch) : targets_spec;
  auto data_for = [&](int mb) -> Data& {
    auto it = data.find(mb);
    if (it != data.end()) return it->second;
    Data d{Tensor(backend_, first_input.shape, first_input.dtype),
           Tensor(backend_, targets_spec.shape, targets_spec.dtype), data_users};
    load(mb, d.input, d.targets);
    return data.emplace(mb, std::move(d)).first->second;
  };
  auto data_done = [&](int mb) {
    auto it = data.find(mb);
    WEFT_ASSERT(it != data.end(), "pipeline: data of mb", mb, " missing");
    if (--it->second.users == 0) data.erase(it);
  };
  auto input_bytes = [&](int c) {
    const Stage::TensorSpec spec = chunks_[static_cast<size_t>(c)]->input_spec(seq, batch);
    return spec.shape.numel() * static_cast<int64_t>(dtype_size(spec.dtype));
  };

  // Hands data for virtual stage `to` over locally, or leaves it for its round.
  auto route = [&](Tensor out, int to, int mb, int from_chunk, bool gradient) {
    if (to % p == rank_) {
      store.put(gradient, to / p, mb, std::move(out));
      if (!gradient) store.hold(input_bytes(to / p));
    } else {
      store.outbox()[{gradient ? 1 : 0, mb, from_chunk}] = std::move(out);
    }
  };
  // Whether this rank's next compute on chunk c after position i is B(mb).
  const std::vector<PipelineAction>& actions = schedule.actions[static_cast<size_t>(rank_)];
  auto backward_next = [&](size_t i, int c, int mb) {
    for (size_t j = i + 1; j < actions.size(); ++j) {
      const PipelineAction& a = actions[j];
      if (a.is_compute() && a.chunk == c) return a.kind == K::kBackward && a.microbatch == mb;
    }
    return false;
  };
  auto label = [](const char* what, int mb, int c) {
    return std::string(what) + " mb" + std::to_string(mb) + " c" + std::to_string(c);
  };

  double loss_sum = 0.0;
  const float grad_scale = loss_scale / static_cast<float>(m);
  for (size_t i = 0; i < actions.size();) {
    const PipelineAction& a = actions[i];
    const int mb = a.microbatch, c = a.chunk, s = virtual_stage(a.chunk);
    Stage& stage = *chunks_[static_cast<size_t>(std::max(c, 0))];
    if (a.is_compute()) rounds.poll();
    if (a.kind == K::kForward) {
      TensorView input, targets;
      if (s > 0) {
        rounds.await(false, c, mb);
        input = store.inputs(c).at(mb);
      }
      if (s == 0 || s == S - 1) {  // the loader's time is not the forward's
        Data& d = data_for(mb);
        if (s == 0) input = d.input;
        if (s == S - 1) targets = d.targets;
      }
      Stage::State* state = nullptr;
      if (with_backward) {
        std::unique_ptr<Stage::State> fresh = stage.new_state();
        fresh->backward_next = backward_next(i, c, mb);
        state = &store.new_state(c, mb, std::move(fresh));
      }
      DropoutRng r = rng_for(mb, s);
      Tensor out;
      float loss = 0.0f;
      observer.computed(
          Computed::kForward, mb, c,
          observer.action(&PipelineStats::forward_ms, "forward", label("F", mb, c), "", [&] {
            out = stage.forward(input, targets, seq, batch, r, state, &loss);
          }));
      ++stats_.forwards;
      WEFT_ASSERT(r.replicated_offset() - rng_for(mb, s).replicated_offset() ==
                          before[static_cast<size_t>(s) + 1] - before[static_cast<size_t>(s)] &&
                      r.sharded_offset() == base_sharded,
                  "pipeline: virtual stage ", s, " drew other dropout elements than its ",
                  draws[static_cast<size_t>(s)], " per token");
      if (with_backward) {
        store.measure_states();
        if (s == 0) store.hold(first_input.shape.numel() * dtype_size(first_input.dtype));
      }
      if (s == S - 1) {
        loss_sum += loss;
      } else {
        route(std::move(out), s + 1, mb, c, false);
      }
      if (!with_backward) {  // forward only: the input is done with
        if (s > 0) {
          store.inputs(c).erase(mb);
          store.release(input_bytes(c));
        }
        if (s == 0 || s == S - 1) data_done(mb);
      }
      ++i;
    } else if (a.kind == K::kBackward) {
      Stage::State& state = store.state(c, mb);
      if (state.needs_recompute()) {
        observer.computed(Computed::kRecompute, mb, c,
                          observer.action(&PipelineStats::recompute_ms, "recompute",
                                          label("R", mb, c), "", [&] { stage.recompute(state); }));
        ++stats_.recomputes;
        store.measure_states();
      }
      TensorView grad_output;
      if (s < S - 1) {
        rounds.await(true, c, mb);
        grad_output = store.grads(c).at(mb);
      }
      Tensor grad_input;
      observer.computed(
          Computed::kBackward, mb, c,
          observer.action(&PipelineStats::backward_ms, "backward", label("B", mb, c), "",
                          [&] { grad_input = stage.backward(grad_output, grad_scale, state); }));
      ++stats_.backwards;
      store.drop_state(c, mb);
      store.grads(c).erase(mb);
      if (s > 0) {
        store.inputs(c).erase(mb);
        store.release(input_bytes(c));
        route(std::move(grad_input), s - 1, mb, c, true);
      } else {
        store.release(first_input.shape.numel() * dtype_size(first_input.dtype));
      }
      if (s == 0 || s == S - 1) data_done(mb);
      ++i;
    } else {
      // One communication round: every transfer of a.round that involves this rank, posted in
      // one group and completed when its data is needed.
      size_t j = i;
      while (j < actions.size() && !actions[j].is_compute() && actions[j].round == a.round) ++j;
      RoundTracker::Round round;
      if (observer.tracing()) {
        for (size_t k = i; k < j; ++k) {
          const std::string kind = action_kind_name(actions[k].kind);
          if (round.name.find(kind) == std::string::npos) {
            round.name += (round.name.empty() ? "" : " + ") + kind;
          }
          round.detail += (round.detail.empty() ? "" : "; ") + to_string(actions[k]);
        }
      }
      observer.action(&PipelineStats::comm_ms, "comm", round.name, round.detail, [&] {
        pp_.group_start();
        for (size_t k = i; k < j; ++k) {
          const PipelineAction& t = actions[k];
          const bool gradient = t.kind == K::kSendGrad || t.kind == K::kRecvGrad;
          if (t.is_send()) {
            auto it = store.outbox().find({gradient ? 1 : 0, t.microbatch, t.chunk});
            WEFT_ASSERT(it != store.outbox().end(), "pipeline: nothing to ", to_string(t));
            pp_.send(it->second, t.peer, backend_.stream());
            round.sent.push_back(std::move(it->second));  // same storage: the view stays valid
            store.outbox().erase(it);
          } else {
            // An activation for the consumer chunk's input; a gradient of its output.
            const Stage& consumer = *chunks_[static_cast<size_t>(t.chunk)];
            const Stage::TensorSpec spec =
                gradient ? consumer.output_spec(seq, batch) : consumer.input_spec(seq, batch);
            Tensor buffer(backend_, spec.shape, spec.dtype);
            if (!gradient) store.hold(input_bytes(t.chunk));
            pp_.recv(buffer, t.peer, backend_.stream());
            round.received.emplace_back(gradient, t.chunk, t.microbatch, std::move(buffer));
          }
        }
        round.group = pp_.group_end_async();
      });
      rounds.post(std::move(round));
      i = j;
    }
  }
  rounds.complete_all();
  WEFT_ASSERT(store.empty() && data.empty(), "pipeline: the step ended with data in flight");

  if (with_backward && S > 1 && (p == 1 || rank_ == 0 || rank_ == p - 1)) {
    observer.action(&PipelineStats::comm_ms, "comm", "allreduce shared grads", "",
                    [&] { sum_shared_gradients(); });
  }

  // The loss lives on the last stage; the others add zero.
  const bool last = rank_ == p - 1;
  const float local_loss = last ? static_cast<float>(loss_sum / m) : 0.0f;
  const Clock::time_point loss_start = Clock::now();
  const float loss =
      p > 1 ? all_reduce_scalar(pp_, backend_, local_loss, ReduceOp::kSum) : local_loss;
  const Clock::time_point step_end = Clock::now();  // all_reduce_scalar waits for the result
  if (trace && p > 1) trace->record("allreduce loss", "comm", "", loss_start, step_end);
  if (stats_.timed) stats_.comm_ms += millis(step_end - loss_start);
  stats_.step_ms = millis(step_end - step_start);
  if (trace) trace->end_step(step_end);
  rng.set_offsets(base_replicated + static_cast<uint64_t>(m) * per_microbatch, base_sharded);
  return loss;
}

}  // namespace weft
