// PipelineModel at TP x PP against one unsharded GPTModel: gradients of every parameter shard
// under each recompute policy, the loss curve of 20 optimizer steps, dropout, evaluation,
// activation memory and recomputation counts, the Chrome trace, a pipeline of custom (non-GPT)
// stages, and bad layouts rejected on every rank without a hang.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>

#include "common/gpt_fixtures.hpp"
#include "common/temp_dir.hpp"
#include "common/test_util.hpp"
#include "dist/gpt_reference.hpp"
#include "weft/gpt.hpp"
#include "weft/optimizer.hpp"
#include "weft/pipeline.hpp"

namespace weft::testing {
namespace {

constexpr int64_t kSeq = 8, kBatch = 2;

// Micro-batch `index` into `backend`'s ids and targets (written on the host, then copied).
void fill_batch(Backend& backend, int64_t index, TensorView ids, TensorView targets) {
  std::vector<int32_t> ids_host(static_cast<size_t>(ids.numel())), targets_host(ids_host.size());
  fill_text_sequences(index * kBatch, kBatch, kSeq, ids_host.data(), targets_host.data());
  backend.copy(ids, TensorView{ids_host.data(), ids.shape, DType::kI32, Device::cpu()});
  backend.copy(targets, TensorView{targets_host.data(), targets.shape, DType::kI32, Device::cpu()});
}

PipelineModel::BatchLoader loader_for_step(Backend& backend, int64_t step, int64_t microbatches) {
  return [&backend, step, microbatches](int64_t mb, TensorView ids, TensorView targets) {
    fill_batch(backend, step * microbatches + mb, ids, targets);
  };
}

// The unsharded model's gradients for `step` of `microbatches` micro-batches; returns its loss.
float reference_step(ReferenceGpt& ref, int64_t step, int64_t microbatches) {
  return ref.accumulate(microbatches,
                        [&ref, step, microbatches](int64_t mb, Tensor& ids, Tensor& targets) {
                          fill_batch(ref.ctx.backend, step * microbatches + mb, ids, targets);
                        });
}

struct Combo {
  int tp, pp;
};

// (tp, pp) layouts this world can run: (1,2), (2,2), (1,4) where they divide it; (1,1) alone.
std::vector<Combo> combos() {
  const int n = world().size();
  std::vector<Combo> out;
  if (n == 1) out.push_back({1, 1});
  for (Combo c : {Combo{1, 2}, Combo{2, 2}, Combo{1, 4}}) {
    if (n % (c.tp * c.pp) == 0) out.push_back(c);
  }
  return out;
}

struct ScheduleCase {
  ScheduleKind kind;
  int virtual_stages;
};
const ScheduleCase kSchedules[] = {
    {ScheduleKind::kGPipe, 1}, {ScheduleKind::k1F1B, 1}, {ScheduleKind::kInterleaved, 2}};

// Layers and explicit counts for a run over pp x v virtual stages: 4 layers split evenly, or 6
// over 8 stages with a first stage of the embedding alone and a last of the head alone.
std::pair<int64_t, std::vector<int64_t>> layers_for(int pp, int v) {
  if (pp * v <= 4) return {4, {}};
  std::vector<int64_t> counts(static_cast<size_t>(pp * v), 1);
  counts.front() = counts.back() = 0;
  return {pp * v - 2, counts};
}

// What a case changes in the tiny model beyond preset and layers.
struct Options {
  float dropout = 0.0f;
  bool sequence_parallel = false, tp_comm_overlap = false;
  Recompute recompute = Recompute::kFull;
};

std::string describe(const std::string& preset, Combo c, ScheduleCase s, Options o) {
  std::ostringstream os;
  os << preset << " tp=" << c.tp << " pp=" << c.pp << " " << schedule_name(s.kind)
     << " v=" << s.virtual_stages;
  if (o.dropout > 0) os << " dropout=" << o.dropout;
  if (o.sequence_parallel) os << " sequence-parallel";
  if (o.tp_comm_overlap) os << " overlap";
  os << " recompute " << recompute_name(o.recompute);
  return os.str();
}

// Runs one step at (tp, pp) with a schedule and compares loss, every gradient shard, the dropout
// counters and the activation bookkeeping with the reference.
void check_gradients(Backend& cpu, const std::string& preset, Combo combo, ScheduleCase sc,
                     Options options = {}) {
  SCOPED_TRACE(describe(preset, combo, sc, options));
  ParallelGrid grid(world(), combo.tp, combo.pp);
  const auto [layers, counts] = layers_for(combo.pp, sc.virtual_stages);
  GPTConfig config = tiny_gpt_config(preset, kSeq, layers);
  config.dropout = options.dropout;
  config.sequence_parallel = options.sequence_parallel;
  config.tp_comm_overlap = options.tp_comm_overlap;
  config.recompute = options.recompute;
  const int64_t m = sc.kind == ScheduleKind::kInterleaved ? 4 : 3;

  ReferenceGpt ref(cpu, make_test_self(), config, kBatch);
  const float ref_loss = reference_step(ref, 0, m);

  PipelineModel model(ParallelContext{cpu, grid.tp()}, grid.pp(), config, sc.kind,
                      sc.virtual_stages, counts);
  DropoutRng rng(config.seed, grid.tp_rank());
  const float loss = model.train_step(loader_for_step(cpu, 0, m), m, kSeq, kBatch, 1.0f, rng);
  EXPECT_NEAR(loss, ref_loss, 1e-5 * std::abs(ref_loss));
  EXPECT_EQ(rng.replicated_offset(), ref.rng.replicated_offset())
      << "the dropout counters advance as one model's";

  int compared = 0;
  for (Parameter* p : model.parameters()) {
    Parameter* r = ref.find(p->name);
    ASSERT_NE(r, nullptr) << p->name << " has no reference";
    ASSERT_EQ(p->global_shape, r->global_shape) << p->name;
    const double err = max_rel_error(to_host(cpu, p->grad), reference_shard(cpu, *p, r->grad));
    EXPECT_LE(err, 1e-4) << p->name << " (shard " << p->partition_index << " of "
                         << p->partition_count << ")";
    ++compared;
  }
  EXPECT_GT(compared, 0);

  // Activation memory and recomputation (v = 1): GPipe holds all m micro-batches' inputs and
  // saved states; 1F1B at most p, p on the first stage. Full recomputation re-runs every forward
  // but the one right before its backward: all but one per stage under GPipe, none on 1F1B's
  // last stage; the other policies never re-run a forward.
  const PipelineStats& st = model.stats();
  const int p = combo.pp, rank = grid.pp().rank();
  const bool full = options.recompute == Recompute::kFull;
  EXPECT_EQ(st.forwards, m * sc.virtual_stages);
  EXPECT_EQ(st.backwards, m * sc.virtual_stages);
  if (!full) EXPECT_EQ(st.recomputes, 0);
  if (sc.kind == ScheduleKind::kGPipe) {
    EXPECT_EQ(st.peak_stored_inputs, m);
    EXPECT_EQ(st.peak_saved_states, m);
    if (full) EXPECT_EQ(st.recomputes, m - 1);
  } else if (sc.kind == ScheduleKind::k1F1B) {
    EXPECT_LE(st.peak_stored_inputs, p);
    EXPECT_LE(st.peak_saved_states, p);
    if (rank == 0) EXPECT_EQ(st.peak_stored_inputs, std::min<int64_t>(p, m));
    if (rank == 0) EXPECT_EQ(st.peak_saved_states, std::min<int64_t>(p, m));
    if (rank == p - 1 && full) EXPECT_EQ(st.recomputes, 0);
  }
  EXPECT_GT(st.peak_stored_bytes, 0);
  EXPECT_GT(st.peak_saved_bytes, 0);
  EXPECT_GT(st.step_ms, 0.0);
}

class PipelineGradientTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::unique_ptr<Backend> cpu_ = make_test_backend();  // the engine WEFT_TEST_BACKEND names
};

TEST_P(PipelineGradientTest, EveryShardEqualsTheUnshardedModel) {
  for (Combo combo : combos()) {
    for (ScheduleCase sc : kSchedules) {
      // Every policy on gpt2; llama (grouped-query, rotary) where its attention core differs:
      // kept whole (full recomputation re-runs it) or recomputed (selective).
      for (Recompute recompute : {Recompute::kFull, Recompute::kNone, Recompute::kSelective}) {
        if (GetParam() == "llama" && recompute == Recompute::kNone) continue;
        check_gradients(*cpu_, GetParam(), combo, sc, {0.0f, false, false, recompute});
      }
    }
  }
}

// What the policies keep: the same counts of in-flight micro-batches, fewer bytes each as less
// is kept (counts and bytes, not times).
TEST(Pipeline, RecomputePoliciesKeepLessActivationMemory) {
  auto cpu = make_cpu_backend();
  const Combo combo = combos().back();
  ParallelGrid grid(world(), combo.tp, combo.pp);
  std::map<Recompute, PipelineStats> stats;
  for (Recompute recompute : {Recompute::kNone, Recompute::kSelective, Recompute::kFull}) {
    GPTConfig config = tiny_gpt_config("gpt2", kSeq, 4);
    config.recompute = recompute;
    PipelineModel model(ParallelContext{*cpu, grid.tp()}, grid.pp(), config, ScheduleKind::kGPipe);
    DropoutRng rng(1, 0);
    model.train_step(loader_for_step(*cpu, 0, 4), 4, kSeq, kBatch, 1.0f, rng);
    stats[recompute] = model.stats();
    EXPECT_EQ(stats[recompute].peak_saved_states, 4);
  }
  EXPECT_LT(stats[Recompute::kSelective].peak_saved_bytes,
            stats[Recompute::kNone].peak_saved_bytes);
  EXPECT_LT(stats[Recompute::kFull].peak_saved_bytes,
            stats[Recompute::kSelective].peak_saved_bytes);
  EXPECT_EQ(stats[Recompute::kNone].recomputes, 0);
  EXPECT_EQ(stats[Recompute::kFull].recomputes, 3);
}

INSTANTIATE_TEST_SUITE_P(Presets, PipelineGradientTest, ::testing::Values("gpt2", "llama"),
                         [](const auto& info) { return info.param; });

TEST(Pipeline, DropoutMasksMatchTheUnshardedModelAfterRecomputation) {
  auto cpu = make_test_backend();
  const Combo combo = combos().back();
  // 1F1B recomputes on every stage but the last: the masks must be drawn again identically.
  check_gradients(*cpu, "gpt2", combo, {ScheduleKind::k1F1B, 1}, {0.1f});
  check_gradients(*cpu, "gpt2", combo, {ScheduleKind::kInterleaved, 2}, {0.1f});
  // Without recomputation each micro-batch's saved masks (their draws) are its own.
  check_gradients(*cpu, "gpt2", combo, {ScheduleKind::k1F1B, 1},
                  {0.1f, false, false, Recompute::kNone});
}

// Stage boundaries carry this rank's seq / tp rows under sequence parallelism.
TEST(Pipeline, SequenceParallelAndOverlappedStagesEqualTheUnshardedModel) {
  auto cpu = make_test_backend();
  for (Combo combo : combos()) {
    if (combo.tp == 1 && world().size() > 1) continue;  // nothing to shard
    check_gradients(*cpu, "llama", combo, {ScheduleKind::k1F1B, 1}, {0.1f, true, false});
    check_gradients(*cpu, "gpt2", combo, {ScheduleKind::kInterleaved, 2}, {0.0f, true, true});
  }
}

TEST(Pipeline, EvaluateEqualsTheUnshardedForward) {
  auto cpu = make_test_backend();
  const Combo combo = combos().back();
  ParallelGrid grid(world(), combo.tp, combo.pp);
  const auto [layers, counts] = layers_for(combo.pp, 2);
  GPTConfig config = tiny_gpt_config("llama", kSeq, layers);
  config.dropout = 0.1f;  // evaluation turns it off
  ReferenceGpt ref(*cpu, make_test_self(), config, kBatch);
  ref.model.set_training(false);
  double expected = 0.0;
  for (int64_t mb = 0; mb < 4; ++mb) {
    fill_batch(*cpu, mb, ref.ids, ref.targets);
    expected += ref.model.forward(ref.ids, ref.targets, kSeq, kBatch, ref.rng) / 4.0;
  }
  PipelineModel model(ParallelContext{*cpu, grid.tp()}, grid.pp(), config,
                      ScheduleKind::kInterleaved, 2, counts);
  const float loss = model.evaluate(loader_for_step(*cpu, 0, 4), 4, kSeq, kBatch);
  EXPECT_NEAR(loss, expected, 1e-5 * expected);
}

// 20 optimizer steps (AdamW, clipping at norm 1, cosine LR) at tp=2 pp=2 on 4 ranks (the largest
// of (1,1), (1,2), (2,2) the world allows) with each schedule give the tp=1 pp=1 loss curve.
TEST(Pipeline, LossCurveEqualsTheUnshardedCurve) {
  auto cpu = make_test_backend();
  const int n = world().size();
  const int tp = n >= 4 ? 2 : 1, pp = n >= 2 ? 2 : 1;
  constexpr int64_t kSteps = 20, kMicro = 4;
  const GPTConfig config = tiny_gpt_config("gpt2", kSeq, 4);
  auto lr = [](int64_t step) { return cosine_lr(step + 1, 2, kSteps, 3e-3f, 3e-4f); };

  ReferenceGpt ref(*cpu, make_test_self(), config, kBatch);
  AdamW ref_opt(*cpu, ref.model.parameters(), AdamWConfig{});
  std::vector<float> expected;
  for (int64_t s = 0; s < kSteps; ++s) {
    expected.push_back(reference_step(ref, s, kMicro));
    ref_opt.step(lr(s), clip_coefficient(ref_opt.grad_norm(*ref.self), 1.0f));
  }
  ASSERT_LT(expected.back(), expected.front()) << "the loss must fall";

  ParallelGrid grid(world(), tp, pp);
  for (ScheduleCase sc : kSchedules) {
    SCOPED_TRACE(describe("gpt2", {tp, pp}, sc, {}));
    PipelineModel model(ParallelContext{*cpu, grid.tp()}, grid.pp(), config, sc.kind,
                        sc.virtual_stages);
    AdamW opt(*cpu, model.parameters(), AdamWConfig{});
    DropoutRng rng(config.seed, grid.tp_rank());
    for (int64_t s = 0; s < kSteps; ++s) {
      const float loss =
          model.train_step(loader_for_step(*cpu, s, kMicro), kMicro, kSeq, kBatch, 1.0f, rng);
      average_gradients(*cpu, grid.dp(), model.parameters());
      opt.step(lr(s), clip_coefficient(model.grad_norm(), 1.0f));
      EXPECT_NEAR(loss, expected[static_cast<size_t>(s)],
                  1e-4 * std::abs(expected[static_cast<size_t>(s)]))
          << "step " << s;
    }
    // Both copies of the tied table (and every other shard) still equal the reference weights
    // (AdamW's normalized steps magnify rounding in small gradients: 1e-3).
    for (Parameter* p : model.parameters()) {
      Parameter* r = ref.find(p->name);
      ASSERT_NE(r, nullptr) << p->name;
      EXPECT_LE(max_rel_error(to_host(*cpu, p->value), reference_shard(*cpu, *p, r->value)), 1e-3)
          << p->name;
    }
  }
}

TEST(Pipeline, ChromeTraceHasATrackPerRankAndTheBubbleIsMeasured) {
  auto cpu = make_test_backend();
  const int pp = world().size() >= 2 ? 2 : 1;
  ParallelGrid grid(world(), 1, pp);
  PipelineModel model(ParallelContext{*cpu, grid.tp()}, grid.pp(), tiny_gpt_config("gpt2", kSeq, 4),
                      ScheduleKind::k1F1B);
  DropoutRng rng(1, 0);
  PipelineTrace trace;
  for (int64_t s = 0; s < 2; ++s)
    model.train_step(loader_for_step(*cpu, s, 4), 4, kSeq, kBatch, 1.0f, rng, &trace);
  EXPECT_EQ(trace.steps(), 2);
  const double bubble = trace.measured_bubble_fraction();
  EXPECT_GE(bubble, 0.0);
  EXPECT_LT(bubble, 1.0);
  EXPECT_GT(trace.compute_time_us(), 0.0);
  // The replay with free communication keeps each rank's compute and its dependencies, so it
  // takes at least this rank's compute and at most the measured step (of the earliest rank).
  const PipelineStats& stats = model.stats();
  EXPECT_EQ(stats.computes.size(),
            static_cast<size_t>(stats.forwards + stats.backwards + stats.recomputes));
  double compute_ms = 0.0;
  for (const PipelineStats::TimedCompute& t : stats.computes) compute_ms += t.ms;
  const double replayed = model.replayed_step_ms();
  const float longest_step =
      all_reduce_scalar(grid.pp(), *cpu, static_cast<float>(stats.step_ms), ReduceOp::kMax);
  EXPECT_GE(replayed, compute_ms * (1 - 1e-5));
  EXPECT_LE(replayed, longest_step * (1 + 1e-5));

  const TempDir dir("weft-trace");
  // One file per pipeline group (each group's pp rank 0 writes).
  const std::string path = dir.file("trace." + std::to_string(grid.dp_rank()) + ".json");
  trace.write_chrome_trace(path, grid.pp());
  if (grid.pp().rank() == 0) {
    std::ifstream in(path);
    std::stringstream content;
    content << in.rdbuf();
    const std::string json = content.str();
    for (const char* needle : {"\"traceEvents\"", "thread_name", "\"F mb0 c0\"", "\"B mb3 c0\"",
                               "\"idle\"", "\"ph\":\"X\""}) {
      EXPECT_NE(json.find(needle), std::string::npos) << needle;
    }
    for (int r = 0; r < pp; ++r) {
      EXPECT_NE(json.find("pp rank " + std::to_string(r)), std::string::npos) << r;
    }
    if (pp > 1) {
      EXPECT_NE(json.find("send act"), std::string::npos);
      EXPECT_NE(json.find("recv grad"), std::string::npos);
    }
    std::remove(path.c_str());
  }
  world().barrier();
}

// A pipeline stage that is not a GPT: `count` ParallelMLPs (global indices first..), the last
// stage ending in the loss mean((y - targets)^2) / 2. What the executor needs, and no more.
class MlpStackStage : public Stage {
 public:
  struct State : Stage::State {
    std::vector<ParallelMLP::Saved> mlps;
    std::vector<Tensor> activations;  // the outputs that later MLPs take as input
    Tensor output;
    TensorView targets;
    int64_t bytes() const override {
      std::vector<TensorView> views;
      for (const auto& m : mlps) {
        for (const TensorView& v : m.views()) views.push_back(v);
      }
      return distinct_bytes(views);
    }
  };

  static constexpr int64_t kHidden = 16;

  MlpStackStage(const ParallelContext& ctx, int first, int count, bool last)
      : ctx_(ctx), last_(last) {
    for (int k = first; k < first + count; ++k) {
      ParallelMLPConfig config;
      config.hidden = kHidden;
      config.ffn_hidden = 2 * kHidden;
      config.init_std = config.output_init_std = 0.3f;
      config.name = "mlps." + std::to_string(k);
      mlps_.push_back(std::make_unique<ParallelMLP>(ctx, config));
    }
  }

  TensorSpec input_spec(int64_t seq, int64_t batch) const override {
    return {Shape({seq * batch, kHidden}), DType::kF32};
  }
  TensorSpec target_spec(int64_t seq, int64_t batch) const override {
    return input_spec(seq, batch);
  }
  TensorSpec output_spec(int64_t seq, int64_t batch) const override {
    return input_spec(seq, batch);
  }
  std::unique_ptr<Stage::State> new_state() const override { return std::make_unique<State>(); }

  Tensor forward(TensorView input, TensorView targets, int64_t, int64_t, DropoutRng&,
                 Stage::State* state, float* loss) override {
    State* st = state ? &dynamic_cast<State&>(*state) : nullptr;
    if (st) st->mlps.resize(mlps_.size());
    Tensor current;
    TensorView x = input;
    for (size_t k = 0; k < mlps_.size(); ++k) {
      Tensor y = st ? mlps_[k]->forward(x, st->mlps[k]) : mlps_[k]->forward(x);
      if (st && current.defined()) st->activations.push_back(std::move(current));
      current = std::move(y);
      x = current;
    }
    if (!last_) return current;
    const std::vector<double> y = to_host(ctx_.backend, current),
                              t = to_host(ctx_.backend, targets);
    double sum = 0.0;
    for (size_t i = 0; i < y.size(); ++i) sum += 0.5 * (y[i] - t[i]) * (y[i] - t[i]);
    *loss = static_cast<float>(sum / static_cast<double>(y.size()));
    if (st) {
      st->output = std::move(current);
      st->targets = targets;
    }
    return Tensor();
  }

  Tensor backward(TensorView grad_output, float loss_scale, Stage::State& state) override {
    State& st = dynamic_cast<State&>(state);
    Tensor grad;
    TensorView upstream = grad_output;
    if (last_) {
      const std::vector<double> y = to_host(ctx_.backend, st.output),
                                t = to_host(ctx_.backend, st.targets);
      std::vector<float> g(y.size());
      for (size_t i = 0; i < y.size(); ++i) {
        g[i] = static_cast<float>((y[i] - t[i]) * loss_scale / static_cast<double>(y.size()));
      }
      grad = Tensor(ctx_.backend, st.output.shape(), DType::kF32);
      ctx_.backend.copy(grad, TensorView{g.data(), grad.shape(), DType::kF32, Device::cpu()});
      upstream = grad;
    }
    for (size_t k = mlps_.size(); k-- > 0;) {
      grad = mlps_[k]->backward(upstream, st.mlps[k]);
      upstream = grad;
    }
    return grad;
  }

  std::vector<Parameter*> parameters() override {
    std::vector<Parameter*> params;
    for (auto& m : mlps_) {
      for (Parameter* p : m->parameters()) params.push_back(p);
    }
    return params;
  }

 private:
  ParallelContext ctx_;
  bool last_;
  std::vector<std::unique_ptr<ParallelMLP>> mlps_;
};

// Two stages of two MLPs each (TP over the rest of the world) against the four MLPs unsharded
// on every rank: loss and every gradient shard, with GPipe and 1F1B.
TEST(Pipeline, ACustomStagePipelineEqualsTheUnshardedComputation) {
  if (world().size() % 2 != 0) GTEST_SKIP() << "needs two pipeline stages";
  auto cpu = make_cpu_backend();
  ParallelGrid grid(world(), world().size() / 2, 2);
  constexpr int64_t kMicro = 4;
  auto load = [&](int64_t mb, TensorView input, TensorView targets) {
    cpu->fill_random(input, RandomFill{Distribution::kNormal, 100 + static_cast<uint64_t>(mb)});
    cpu->fill_random(targets, RandomFill{Distribution::kNormal, 200 + static_cast<uint64_t>(mb)});
  };

  auto self = make_self_communicator();
  MlpStackStage whole(ParallelContext{*cpu, *self}, 0, 4, true);
  zero_grads(*cpu, whole.parameters());
  double expected = 0.0;
  DropoutRng unused(0, 0);
  for (int64_t mb = 0; mb < kMicro; ++mb) {
    Tensor x(*cpu, Shape({kSeq * kBatch, MlpStackStage::kHidden}), DType::kF32);
    Tensor t(*cpu, x.shape(), DType::kF32);
    load(mb, x, t);
    MlpStackStage::State state;
    float loss = 0.0f;
    whole.forward(x, t, kSeq, kBatch, unused, &state, &loss);
    whole.backward(TensorView{}, 1.0f / kMicro, state);
    expected += loss / kMicro;
  }

  const int stage = grid.pp().rank();
  MlpStackStage mine(ParallelContext{*cpu, grid.tp()}, 2 * stage, 2, stage == 1);
  PipelineExecutor executor(*cpu, grid.pp(), {&mine});
  for (ScheduleKind kind : {ScheduleKind::kGPipe, ScheduleKind::k1F1B}) {
    SCOPED_TRACE(schedule_name(kind));
    zero_grads(*cpu, mine.parameters());
    const float loss = executor.run(build_pipeline_schedule(kind, 2, kMicro), load, kSeq, kBatch,
                                    1.0f, unused, /*timed=*/false);
    EXPECT_NEAR(loss, expected, 1e-5 * expected);
    for (Parameter* p : mine.parameters()) {
      Parameter* r = nullptr;
      for (Parameter* q : whole.parameters()) {
        if (q->name == p->name) r = q;
      }
      ASSERT_NE(r, nullptr) << p->name;
      EXPECT_LE(max_rel_error(to_host(*cpu, p->grad), reference_shard(*cpu, *p, r->grad)), 1e-5)
          << p->name;
    }
    const PipelineStats& st = executor.stats();
    EXPECT_EQ(st.peak_saved_states, kind == ScheduleKind::kGPipe ? kMicro : 2 - stage);
    EXPECT_FALSE(st.timed);
  }
}

// MlpStackStage that throws at its `fail_at`-th forward or backward call (counting from 1).
class FailingStage : public MlpStackStage {
 public:
  FailingStage(const ParallelContext& ctx, int first, int count, bool last, bool in_backward,
               int fail_at)
      : MlpStackStage(ctx, first, count, last), in_backward_(in_backward), fail_at_(fail_at) {}
  Tensor forward(TensorView input, TensorView targets, int64_t seq, int64_t batch, DropoutRng& rng,
                 Stage::State* state, float* loss) override {
    if (!in_backward_ && ++calls_ == fail_at_)
      WEFT_THROW(ErrorCode::kInternal, "injected: forward");
    return MlpStackStage::forward(input, targets, seq, batch, rng, state, loss);
  }
  Tensor backward(TensorView grad_output, float loss_scale, Stage::State& state) override {
    if (in_backward_ && ++calls_ == fail_at_)
      WEFT_THROW(ErrorCode::kInternal, "injected: backward");
    return MlpStackStage::backward(grad_output, loss_scale, state);
  }

 private:
  bool in_backward_;
  int fail_at_, calls_ = 0;
};

// A stage that throws in the middle of a 1F1B step at pp 2 (the last stage in its first backward,
// the first stage in its second forward, before it would wait for a gradient that never comes):
// each rank's step unwinds with transfers in flight. They are cancelled or completed and freed, not
// leaked (the sanitizer build's leak check sees them), no rank hangs, the error reaches the
// caller, and the pipeline's communicator is aborted so that no later step matches stale messages.
TEST(PipelineErrors, AStageFailingMidStepUnwindsItsTransfersWithoutAHangOrALeak) {
  if (world().size() % 2 != 0) GTEST_SKIP() << "needs two pipeline stages";
  auto cpu = make_cpu_backend();
  DropoutRng unused(0, 0);
  auto load = [&](int64_t mb, TensorView input, TensorView targets) {
    cpu->fill_random(input, RandomFill{Distribution::kNormal, 100 + static_cast<uint64_t>(mb)});
    cpu->fill_random(targets, RandomFill{Distribution::kNormal, 200 + static_cast<uint64_t>(mb)});
  };
  // 1F1B: the last stage's first backward comes before it needs the second micro-batch (under
  // GPipe the first stage, having failed, would leave it waiting for that one forever).
  {
    const ScheduleKind kind = ScheduleKind::k1F1B;
    ParallelGrid grid(world(), world().size() / 2, 2);
    const int stage = grid.pp().rank();
    FailingStage mine(ParallelContext{*cpu, grid.tp()}, 2 * stage, 2, stage == 1,
                      /*in_backward=*/stage == 1, /*fail_at=*/stage == 1 ? 1 : 2);
    PipelineExecutor executor(*cpu, grid.pp(), {&mine});
    const auto start = std::chrono::steady_clock::now();
    expect_error_on_every_rank(
        [&] {
          executor.run(build_pipeline_schedule(kind, 2, 4), load, kSeq, kBatch, 1.0f, unused,
                       /*timed=*/false);
        },
        {stage == 1 ? "injected: backward" : "injected: forward"});
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_LT(seconds, 30.0) << "the error path must not wait long for its peers";
    // Some rank unwound with rounds in flight (so this path ran): its communicator is aborted,
    // and a later step fails at once naming it.
    float aborted = grid.pp().aborted() ? 1.0f : 0.0f;
    host_world().all_reduce(TensorView{&aborted, Shape({1}), DType::kF32, Device::cpu()},
                            TensorView{&aborted, Shape({1}), DType::kF32, Device::cpu()},
                            ReduceOp::kSum, host_stream());
    EXPECT_GE(aborted, 1.0f);
    if (grid.pp().aborted()) {
      EXPECT_THROW(executor.run(build_pipeline_schedule(kind, 2, 4), load, kSeq, kBatch, 1.0f,
                                unused, false),
                   Error);
    }
    world().barrier();
  }
}

TEST(PipelineErrors, BadLayoutsAreRejectedOnEveryRankWithoutAHang) {
  auto cpu = make_test_backend();
  const int n = world().size();
  expect_error_on_every_rank(
      [&] { ParallelGrid grid(world(), 2, n); },
      {"world size (" + std::to_string(n) + ")", "= " + std::to_string(2 * n)});

  const int pp = std::min(n, 4);
  ParallelGrid grid(world(), 1, pp);
  const ParallelContext ctx{*cpu, grid.tp()};
  const GPTConfig config = tiny_gpt_config("gpt2", kSeq, 4);  // 4 layers
  auto build = [&](ScheduleKind kind, int v, std::vector<int64_t> counts) {
    PipelineModel model(ctx, grid.pp(), config, kind, v, counts);
  };
  // Counts that drop or duplicate a layer.
  std::vector<int64_t> extra(static_cast<size_t>(pp), 1);
  extra.back() += 5 - pp;  // sum 5
  expect_error_on_every_rank([&] { build(ScheduleKind::k1F1B, 1, extra); },
                             {"sum to 5", "has 4 layers"});
  expect_error_on_every_rank(
      [&] {
        build(ScheduleKind::k1F1B, 1, {4, 0, 0, 0, 0});
      },
      {"5 layer counts", std::to_string(pp) + " virtual stages"});
  // 4 layers over 3 x pp virtual stages: no even split.
  expect_error_on_every_rank([&] { build(ScheduleKind::kInterleaved, 3, {}); },
                             {"layers (4)", "virtual stages (" + std::to_string(3 * pp) + ")"});
  expect_error_on_every_rank([&] { build(ScheduleKind::kGPipe, 2, {}); }, {"gpipe", "interleaved"});
  if (pp >= 2) {
    std::vector<int64_t> hollow(static_cast<size_t>(2 * pp), 0);
    hollow.front() = hollow.back() = 2;  // the stages between hold nothing
    expect_error_on_every_rank([&] { build(ScheduleKind::kInterleaved, 2, hollow); },
                               {"virtual stage 1", "no layer, embedding or head"});
    // The interleaved schedule with micro-batches not divisible by the pipeline size.
    PipelineModel model(ctx, grid.pp(), tiny_gpt_config("gpt2", kSeq, 2 * pp),
                        ScheduleKind::kInterleaved, 2);
    DropoutRng rng(1, 0);
    const int64_t m = pp + 1;
    expect_error_on_every_rank(
        [&] { model.train_step(loader_for_step(ctx.backend, 0, m), m, kSeq, kBatch, 1.0f, rng); },
        {"micro-batches (" + std::to_string(m) + ")",
         "pipeline size (" + std::to_string(pp) + ")"});
    // The model still runs afterwards: nothing was left posted.
    const float loss =
        model.train_step(loader_for_step(ctx.backend, 0, pp), pp, kSeq, kBatch, 1.0f, rng);
    EXPECT_GT(loss, 0.0f);
  }
}

}  // namespace
}  // namespace weft::testing
