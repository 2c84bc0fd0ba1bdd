// Data parallelism at dp = 2 (tp 1 x dp 2 on 2 ranks; tp 2 x dp 2 and pp 2 x dp 2 on 4): each
// data-parallel rank trains on its own part of the global batch; after average_gradients every
// gradient shard equals the unsharded model's on the whole batch, and 20 optimizer steps give the
// unsharded (dp = 1) loss curve of the same global batch.
#include <gtest/gtest.h>

#include <sstream>
#include <string>

#include "common/test_util.hpp"
#include "dist/dist_env.hpp"
#include "weft/gpt.hpp"
#include "weft/optimizer.hpp"
#include "weft/pipeline.hpp"

namespace weft::testing {
namespace {

// kBatch sequences per data-parallel rank and micro-batch; kMicro micro-batches per step.
constexpr int64_t kSeq = 8, kBatch = 2, kMicro = 2;

GPTConfig tiny_config(const std::string& preset) {
  GPTConfig c = GPTConfig::preset(preset);
  c.vocab_size = 256;
  c.max_seq = kSeq;
  c.layers = 2;
  c.hidden = 32;
  c.heads = 4;
  c.vocab_pad_multiple = 8;
  c.seed = 99;
  return c;
}

// Sequences [first, first + count) of one text, as a batch of `count`, rows (position, batch).
void fill_sequences(int64_t first, int64_t count, int32_t* ids, int32_t* targets) {
  static const std::string text =
      "It was the best of times, it was the worst of times, it was the age of wisdom, it was the "
      "age of foolishness, it was the epoch of belief, it was the epoch of incredulity.";
  const int64_t span = static_cast<int64_t>(text.size()) - kSeq - 1;
  for (int64_t b = 0; b < count; ++b) {
    const int64_t start = ((first + b) * 29) % span;
    for (int64_t s = 0; s < kSeq; ++s) {
      ids[s * count + b] = static_cast<unsigned char>(text[static_cast<size_t>(start + s)]);
      targets[s * count + b] = static_cast<unsigned char>(text[static_cast<size_t>(start + s + 1)]);
    }
  }
}

// Global micro-batch (step, mb) holds dp x kBatch sequences; data-parallel rank d trains on the
// d-th block of kBatch of them.
int64_t first_sequence(int64_t step, int64_t mb, int dp, int dp_rank) {
  return ((step * kMicro + mb) * dp + dp_rank) * kBatch;
}

// The unsharded model over a world of one, trained on whole global micro-batches.
struct Reference {
  Reference(Backend& backend, GPTConfig config, int dp)
      : self(make_self_communicator()),
        ctx{backend, *self},
        model(ctx, finalized(config)),
        rng(config.seed, 0),
        dp(dp),
        ids(backend, Shape({kSeq * kBatch * dp}), DType::kI32),
        targets(backend, Shape({kSeq * kBatch * dp}), DType::kI32) {}

  static GPTConfig finalized(GPTConfig c) {
    c.finalize(1);
    return c;
  }

  // Gradients of the mean over micro-batches of each whole micro-batch's mean token loss.
  float accumulate(int64_t step) {
    zero_grads(ctx.backend, model.parameters());
    double loss = 0.0;
    for (int64_t mb = 0; mb < kMicro; ++mb) {
      fill_sequences(first_sequence(step, mb, dp, 0), kBatch * dp, ids.as<int32_t>(),
                     targets.as<int32_t>());
      GPTModel::Saved saved;
      loss += model.forward(ids, targets, kSeq, kBatch * dp, rng, saved);
      model.backward(saved, 1.0f / static_cast<float>(kMicro));
    }
    return static_cast<float>(loss / static_cast<double>(kMicro));
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
  int dp;
  Tensor ids, targets;
};

// This rank's window of the unsharded tensor `global` that `shard` describes.
std::vector<double> reference_shard(Backend& backend, const Parameter& shard, TensorView global) {
  std::vector<double> full = to_host(backend, global);
  if (shard.is_replicated()) return full;
  const Shape& g = shard.global_shape;
  const Shape& local = shard.value.shape();
  if (shard.partition_dim == g.rank() - 1) {
    return column_block(full, g.rows(), g.cols(), local.cols() * shard.partition_index,
                        local.cols());
  }
  const auto begin = static_cast<std::ptrdiff_t>(local.numel() * shard.partition_index);
  return std::vector<double>(full.begin() + begin, full.begin() + begin + local.numel());
}

struct Layout {
  int tp, pp;
};

// (tp, pp) with dp = 2: (1, 1) on 2 ranks, (2, 1) and (1, 2) on 4; none on 1 rank.
std::vector<Layout> layouts() {
  switch (world().size()) {
    case 2:
      return {{1, 1}};
    case 4:
      return {{2, 1}, {1, 2}};
    default:
      return {};
  }
}

std::string describe(const std::string& preset, Layout l) {
  std::ostringstream os;
  os << preset << " tp=" << l.tp << " pp=" << l.pp << " dp=" << world().size() / (l.tp * l.pp);
  return os.str();
}

// This rank's model at (tp, pp) over the grid, fed its data-parallel rank's sequences.
struct DataParallelRun {
  DataParallelRun(Backend& backend, Layout layout, const GPTConfig& config)
      : backend(backend),
        grid(world(), layout.tp, layout.pp),
        model(ParallelContext{backend, grid.tp()}, grid.pp(), config, ScheduleKind::k1F1B),
        rng(config.seed, grid.tp_rank()) {}

  // One step's gradients, averaged over data-parallel ranks; returns this rank's own loss.
  float gradients(int64_t step) {
    const int dp = grid.dp_size(), dp_rank = grid.dp_rank();
    auto load = [step, dp, dp_rank](int64_t mb, TensorView ids, TensorView targets) {
      fill_sequences(first_sequence(step, mb, dp, dp_rank), kBatch, ids.as<int32_t>(),
                     targets.as<int32_t>());
    };
    const float loss = model.train_step(load, kMicro, kSeq, kBatch, 1.0f, rng);
    average_gradients(backend, grid.dp(), model.parameters());
    return loss;
  }

  Backend& backend;
  ParallelGrid grid;
  PipelineModel model;
  DropoutRng rng;
};

class DataParallelTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (layouts().empty()) GTEST_SKIP() << "data parallelism needs 2 or 4 ranks";
  }
  std::unique_ptr<Backend> cpu_ = make_cpu_backend();
};

TEST_P(DataParallelTest, AveragedGradientsEqualTheUnshardedModelOnTheWholeBatch) {
  for (Layout layout : layouts()) {
    SCOPED_TRACE(describe(GetParam(), layout));
    const GPTConfig config = tiny_config(GetParam());
    DataParallelRun run(*cpu_, layout, config);
    ASSERT_EQ(run.grid.dp_size(), 2);
    Reference ref(*cpu_, config, run.grid.dp_size());
    const float ref_loss = ref.accumulate(0);

    const float loss = run.gradients(0);
    // Each data-parallel rank saw different data, so the losses differ; their mean is the whole
    // batch's.
    const float hi = all_reduce_scalar(run.grid.dp(), *cpu_, loss, ReduceOp::kMax);
    const float lo = all_reduce_scalar(run.grid.dp(), *cpu_, loss, ReduceOp::kMin);
    EXPECT_GT(hi - lo, 1e-5f * std::abs(ref_loss)) << "every data-parallel rank has its own data";
    const float mean = all_reduce_scalar(run.grid.dp(), *cpu_, loss, ReduceOp::kSum) / 2.0f;
    EXPECT_NEAR(mean, ref_loss, 1e-5 * std::abs(ref_loss));

    int compared = 0;
    for (Parameter* p : run.model.parameters()) {
      Parameter* r = ref.find(p->name);
      ASSERT_NE(r, nullptr) << p->name << " has no reference";
      ASSERT_EQ(p->global_shape, r->global_shape) << p->name;
      EXPECT_LE(max_rel_error(to_host(*cpu_, p->grad), reference_shard(*cpu_, *p, r->grad)), 1e-4)
          << p->name << " (shard " << p->partition_index << " of " << p->partition_count << ")";
      ++compared;
    }
    EXPECT_GT(compared, 0);
  }
}

// AdamW with clipping at norm 1 and the cosine schedule, as gpt_train runs it (one preset: the
// curve costs seconds; the gradients above cover both).
TEST(DataParallel, LossCurveEqualsTheUnshardedCurveOfTheSameGlobalBatch) {
  if (layouts().empty()) GTEST_SKIP() << "data parallelism needs 2 or 4 ranks";
  auto cpu = make_cpu_backend();
  constexpr int64_t kSteps = 20;
  auto lr = [](int64_t step) { return cosine_lr(step + 1, 2, kSteps, 3e-3f, 3e-4f); };
  const GPTConfig config = tiny_config("gpt2");
  for (Layout layout : layouts()) {
    SCOPED_TRACE(describe("gpt2", layout));
    DataParallelRun run(*cpu, layout, config);
    Reference ref(*cpu, config, run.grid.dp_size());
    AdamW ref_opt(*cpu, ref.model.parameters(), AdamWConfig{});
    AdamW opt(*cpu, run.model.parameters(), AdamWConfig{});
    std::vector<float> expected, actual;
    for (int64_t s = 0; s < kSteps; ++s) {
      expected.push_back(ref.accumulate(s));
      ref_opt.step(lr(s), clip_coefficient(ref_opt.grad_norm(*ref.self), 1.0f));

      const float loss = run.gradients(s);
      actual.push_back(all_reduce_scalar(run.grid.dp(), *cpu, loss, ReduceOp::kSum) /
                       static_cast<float>(run.grid.dp_size()));
      opt.step(lr(s), clip_coefficient(run.model.grad_norm(), 1.0f));
    }
    ASSERT_LT(expected.back(), expected.front()) << "the loss must fall";
    for (int64_t s = 0; s < kSteps; ++s) {
      EXPECT_NEAR(actual[static_cast<size_t>(s)], expected[static_cast<size_t>(s)],
                  1e-4 * std::abs(expected[static_cast<size_t>(s)]))
          << "step " << s;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Presets, DataParallelTest, ::testing::Values("gpt2", "llama"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace weft::testing
