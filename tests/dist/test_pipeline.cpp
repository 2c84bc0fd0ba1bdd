// PipelineModel at TP x PP against one unsharded GPTModel: gradients of every parameter shard,
// the loss curve of 20 optimizer steps, dropout, evaluation, activation memory and recomputation
// counts, the Chrome trace, and bad layouts rejected on every rank without a hang.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>

#include "common/temp_dir.hpp"
#include "common/test_util.hpp"
#include "dist/dist_env.hpp"
#include "weft/gpt.hpp"
#include "weft/optimizer.hpp"
#include "weft/pipeline.hpp"

namespace weft::testing {
namespace {

constexpr int64_t kSeq = 8, kBatch = 2;

GPTConfig tiny_config(const std::string& preset, int64_t layers = 4) {
  GPTConfig c = GPTConfig::preset(preset);
  c.vocab_size = 256;
  c.max_seq = kSeq;
  c.layers = layers;
  c.hidden = 32;
  c.heads = 4;
  c.vocab_pad_multiple = 8;
  c.seed = 99;
  return c;
}

// Micro-batch `index`: kBatch windows of an English text, rows ordered (position, batch).
void fill_batch_host(int64_t index, int32_t* ids, int32_t* targets) {
  static const std::string text =
      "It was the best of times, it was the worst of times, it was the age of wisdom, it was the "
      "age of foolishness, it was the epoch of belief, it was the epoch of incredulity.";
  const int64_t span = static_cast<int64_t>(text.size()) - kSeq - 1;
  for (int64_t b = 0; b < kBatch; ++b) {
    const int64_t start = ((index * kBatch + b) * 29) % span;
    for (int64_t s = 0; s < kSeq; ++s) {
      ids[s * kBatch + b] = static_cast<unsigned char>(text[static_cast<size_t>(start + s)]);
      targets[s * kBatch + b] =
          static_cast<unsigned char>(text[static_cast<size_t>(start + s + 1)]);
    }
  }
}

// Micro-batch `index` into `backend`'s ids and targets (written on the host, then copied).
void fill_batch(Backend& backend, int64_t index, TensorView ids, TensorView targets) {
  std::vector<int32_t> ids_host(static_cast<size_t>(ids.numel())), targets_host(ids_host.size());
  fill_batch_host(index, ids_host.data(), targets_host.data());
  backend.copy(ids, TensorView{ids_host.data(), ids.shape, DType::kI32, Device::cpu()});
  backend.copy(targets, TensorView{targets_host.data(), targets.shape, DType::kI32, Device::cpu()});
}

PipelineModel::BatchLoader loader_for_step(Backend& backend, int64_t step, int64_t microbatches) {
  return [&backend, step, microbatches](int64_t mb, TensorView ids, TensorView targets) {
    fill_batch(backend, step * microbatches + mb, ids, targets);
  };
}

GPTConfig finalized(GPTConfig c, int tp) {
  c.finalize(tp);
  return c;
}

// The unsharded model (tp = 1, pp = 1) over a world of one, built from the same seed.
struct Reference {
  Reference(Backend& backend, const GPTConfig& config)
      : self(make_test_self()),
        ctx{backend, *self},
        model(ctx, plain(config)),
        rng(config.seed, 0),
        ids(backend, Shape({kSeq * kBatch}), DType::kI32),
        targets(backend, Shape({kSeq * kBatch}), DType::kI32) {}

  static GPTConfig plain(GPTConfig c) {
    c.sequence_parallel = false;
    c.tp_comm_overlap = false;
    return finalized(c, 1);
  }

  // Gradients of the mean over micro-batches of the mean token loss; returns that loss.
  float accumulate(int64_t step, int64_t microbatches) {
    zero_grads(ctx.backend, model.parameters());
    double loss = 0.0;
    for (int64_t mb = 0; mb < microbatches; ++mb) {
      fill_batch(ctx.backend, step * microbatches + mb, ids, targets);
      loss += model.forward(ids, targets, kSeq, kBatch, rng);
      model.backward(1.0f / static_cast<float>(microbatches));
    }
    return static_cast<float>(loss / static_cast<double>(microbatches));
  }

  Parameter* find(const std::string& name) {
    for (Parameter* p : model.parameters()) {
      if (p->name == name) return p;
    }
    return nullptr;
  }

  std::unique_ptr<Communicator> self;
  ParallelContext ctx;
  GPTModel model;
  DropoutRng rng;
  Tensor ids, targets;
};

// This rank's window of the reference tensor that `shard` describes (init_parameter's rule).
std::vector<double> reference_shard(Backend& backend, const Parameter& shard, TensorView global) {
  std::vector<double> full = to_host(backend, global);
  if (shard.is_replicated()) return full;
  const Shape& g = shard.global_shape;
  const Shape& local = shard.value.shape();
  if (shard.partition_dim == g.rank() - 1) {
    return column_block(full, g.rows(), g.cols(), local.cols() * shard.partition_index,
                        local.cols());
  }
  const size_t begin = static_cast<size_t>(local.numel() * shard.partition_index);
  return std::vector<double>(full.begin() + static_cast<std::ptrdiff_t>(begin),
                             full.begin() + static_cast<std::ptrdiff_t>(begin + local.numel()));
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
};

std::string describe(const std::string& preset, Combo c, ScheduleCase s, Options o) {
  std::ostringstream os;
  os << preset << " tp=" << c.tp << " pp=" << c.pp << " " << schedule_name(s.kind)
     << " v=" << s.virtual_stages;
  if (o.dropout > 0) os << " dropout=" << o.dropout;
  if (o.sequence_parallel) os << " sequence-parallel";
  if (o.tp_comm_overlap) os << " overlap";
  return os.str();
}

// Runs one step at (tp, pp) with a schedule and compares loss, every gradient shard, the dropout
// counters and the activation bookkeeping with the reference.
void check_gradients(Backend& cpu, const std::string& preset, Combo combo, ScheduleCase sc,
                     Options options = {}) {
  SCOPED_TRACE(describe(preset, combo, sc, options));
  ParallelGrid grid(world(), combo.tp, combo.pp);
  const auto [layers, counts] = layers_for(combo.pp, sc.virtual_stages);
  GPTConfig config = tiny_config(preset, layers);
  config.dropout = options.dropout;
  config.sequence_parallel = options.sequence_parallel;
  config.tp_comm_overlap = options.tp_comm_overlap;
  const int64_t m = sc.kind == ScheduleKind::kInterleaved ? 4 : 3;

  Reference ref(cpu, config);
  const float ref_loss = ref.accumulate(0, m);

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

  // Activation memory and recomputation (v = 1): GPipe holds all m micro-batches and recomputes
  // all but one per stage; 1F1B holds at most p, p on the first stage, and the last stage never
  // recomputes.
  const PipelineStats& st = model.stats();
  const int p = combo.pp, rank = grid.pp().rank();
  EXPECT_EQ(st.forwards, m * sc.virtual_stages);
  EXPECT_EQ(st.backwards, m * sc.virtual_stages);
  if (sc.kind == ScheduleKind::kGPipe) {
    EXPECT_EQ(st.peak_stored_inputs, m);
    EXPECT_EQ(st.recomputes, m - 1);
  } else if (sc.kind == ScheduleKind::k1F1B) {
    EXPECT_LE(st.peak_stored_inputs, p);
    if (rank == 0) EXPECT_EQ(st.peak_stored_inputs, std::min<int64_t>(p, m));
    if (rank == p - 1) EXPECT_EQ(st.recomputes, 0);
  }
  EXPECT_GT(st.peak_stored_bytes, 0);
  EXPECT_GT(st.step_ms, 0.0);
}

class PipelineGradientTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::unique_ptr<Backend> cpu_ = make_test_backend();  // the engine WEFT_TEST_BACKEND names
};

TEST_P(PipelineGradientTest, EveryShardEqualsTheUnshardedModel) {
  for (Combo combo : combos()) {
    for (ScheduleCase sc : kSchedules) check_gradients(*cpu_, GetParam(), combo, sc);
  }
}

INSTANTIATE_TEST_SUITE_P(Presets, PipelineGradientTest, ::testing::Values("gpt2", "llama"),
                         [](const auto& info) { return info.param; });

TEST(Pipeline, DropoutMasksMatchTheUnshardedModelAfterRecomputation) {
  auto cpu = make_test_backend();
  const Combo combo = combos().back();
  // 1F1B recomputes on every stage but the last: the masks must be drawn again identically.
  check_gradients(*cpu, "gpt2", combo, {ScheduleKind::k1F1B, 1}, {0.1f});
  check_gradients(*cpu, "gpt2", combo, {ScheduleKind::kInterleaved, 2}, {0.1f});
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
  GPTConfig config = tiny_config("llama", layers);
  config.dropout = 0.1f;  // evaluation turns it off
  Reference ref(*cpu, config);
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
  const GPTConfig config = tiny_config("gpt2");
  auto lr = [](int64_t step) { return cosine_lr(step + 1, 2, kSteps, 3e-3f, 3e-4f); };

  Reference ref(*cpu, config);
  AdamW ref_opt(*cpu, ref.model.parameters(), AdamWConfig{});
  std::vector<float> expected;
  for (int64_t s = 0; s < kSteps; ++s) {
    expected.push_back(ref.accumulate(s, kMicro));
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
  PipelineModel model(ParallelContext{*cpu, grid.tp()}, grid.pp(), tiny_config("gpt2"),
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

TEST(PipelineErrors, BadLayoutsAreRejectedOnEveryRankWithoutAHang) {
  auto cpu = make_test_backend();
  const int n = world().size();
  expect_error_on_every_rank(
      [&] { ParallelGrid grid(world(), 2, n); },
      {"world size (" + std::to_string(n) + ")", "= " + std::to_string(2 * n)});

  const int pp = std::min(n, 4);
  ParallelGrid grid(world(), 1, pp);
  const ParallelContext ctx{*cpu, grid.tp()};
  const GPTConfig config = tiny_config("gpt2");  // 4 layers
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
    PipelineModel model(ctx, grid.pp(), tiny_config("gpt2", 2 * pp), ScheduleKind::kInterleaved, 2);
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
