// Data parallelism at dp = 2 (tp 1 x dp 2 on 2 ranks; tp 2 x dp 2 and pp 2 x dp 2 on 4): each
// data-parallel rank trains on its own part of the global batch; after average_gradients every
// gradient shard equals the unsharded model's on the whole batch, and 20 optimizer steps give the
// unsharded (dp = 1) loss curve of the same global batch.
#include <gtest/gtest.h>

#include <sstream>
#include <string>

#include "common/gpt_fixtures.hpp"
#include "common/test_util.hpp"
#include "dist/gpt_reference.hpp"
#include "weft/gpt.hpp"
#include "weft/optimizer.hpp"
#include "weft/pipeline.hpp"

namespace weft::testing {
namespace {

// kBatch sequences per data-parallel rank and micro-batch; kMicro micro-batches per step.
constexpr int64_t kSeq = 8, kBatch = 2, kMicro = 2;

// Global micro-batch (step, mb) holds dp x kBatch sequences; data-parallel rank d trains on the
// d-th block of kBatch of them.
int64_t first_sequence(int64_t step, int64_t mb, int dp, int dp_rank) {
  return ((step * kMicro + mb) * dp + dp_rank) * kBatch;
}

// The unsharded model's gradients for `step`, trained on whole global micro-batches of dp x
// kBatch sequences; returns its loss.
float reference_step(ReferenceGpt& ref, int64_t step, int dp) {
  return ref.accumulate(kMicro, [step, dp](int64_t mb, Tensor& ids, Tensor& targets) {
    fill_text_sequences(first_sequence(step, mb, dp, 0), kBatch * dp, kSeq, ids.as<int32_t>(),
                        targets.as<int32_t>());
  });
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
      fill_text_sequences(first_sequence(step, mb, dp, dp_rank), kBatch, kSeq, ids.as<int32_t>(),
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
    const GPTConfig config = tiny_gpt_config(GetParam(), kSeq);
    DataParallelRun run(*cpu_, layout, config);
    ASSERT_EQ(run.grid.dp_size(), 2);
    const int dp = run.grid.dp_size();
    ReferenceGpt ref(*cpu_, make_self_communicator(), config, kBatch * dp);
    const float ref_loss = reference_step(ref, 0, dp);

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
  const GPTConfig config = tiny_gpt_config("gpt2", kSeq);
  for (Layout layout : layouts()) {
    SCOPED_TRACE(describe("gpt2", layout));
    DataParallelRun run(*cpu, layout, config);
    const int dp = run.grid.dp_size();
    ReferenceGpt ref(*cpu, make_self_communicator(), config, kBatch * dp);
    AdamW ref_opt(*cpu, ref.model.parameters(), AdamWConfig{});
    AdamW opt(*cpu, run.model.parameters(), AdamWConfig{});
    std::vector<float> expected, actual;
    for (int64_t s = 0; s < kSteps; ++s) {
      expected.push_back(reference_step(ref, s, dp));
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
