// Whole-model properties of GPTModel training: the loss curve does not depend on the TP size,
// a checkpointed run resumes exactly, replicated parameters stay identical across TP ranks,
// gradients match finite differences, the KV cache gives the logits of a full recomputation.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "common/gpt_fixtures.hpp"
#include "common/temp_dir.hpp"
#include "common/test_util.hpp"
#include "dist/dist_env.hpp"
#include "weft/checkpoint.hpp"
#include "weft/data.hpp"
#include "weft/gpt.hpp"
#include "weft/gpt_checkpoint.hpp"
#include "weft/optimizer.hpp"

namespace weft::testing {
namespace {

constexpr int64_t kSeq = 8, kBatch = 2;

// A small English text shared by all ranks (each writes its own copy: no shared file system
// is assumed).
std::string text_file() {
  static const TempDir dir("weft-gpt-test");  // removed when the test binary exits
  static const std::string path = [] {
    std::string text;
    for (int i = 0; i < 20; ++i) {
      text +=
          "It was the best of times, it was the worst of times, it was the age of wisdom, it "
          "was the age of foolishness, it was the epoch of belief, it was the epoch of "
          "incredulity, it was the season of Light, it was the season of Darkness.\n";
    }
    return dir.write("text.txt", text);
  }();
  return path;
}

struct Trainer {
  Trainer(Backend& backend, Communicator& tp, GPTConfig config)
      : backend(backend),
        ctx{backend, tp},
        config(finalized(config, tp.size())),
        model(ctx, this->config),
        optimizer(backend, model.parameters(), AdamWConfig{}),
        rng(this->config.seed, tp.rank()),
        data(text_file()),
        ids(backend, Shape({kSeq * kBatch}), DType::kI32),
        targets(backend, Shape({kSeq * kBatch}), DType::kI32),
        ids_host(static_cast<size_t>(kSeq * kBatch)),
        targets_host(ids_host.size()) {}

  static GPTConfig finalized(GPTConfig c, int tp) {
    c.finalize(tp);
    return c;
  }

  void load_batch(int64_t index) {
    data.batch(false, 7, index, kSeq, kBatch, ids_host.data(), targets_host.data());
    backend.copy(ids, TensorView{ids_host.data(), ids.shape(), DType::kI32, Device::cpu()});
    backend.copy(targets,
                 TensorView{targets_host.data(), targets.shape(), DType::kI32, Device::cpu()});
  }

  // One optimizer step on micro-batch `step`; returns the loss.
  float step(int64_t step) {
    zero_grads(backend, model.parameters());
    load_batch(step);
    GPTModel::Saved saved;
    const float loss = model.forward(ids, targets, kSeq, kBatch, rng, saved);
    model.backward(saved);
    const float norm = optimizer.grad_norm(ctx.tp);
    optimizer.step(cosine_lr(step + 1, 2, 20, 3e-3f, 3e-4f), clip_coefficient(norm, 1.0f));
    return loss;
  }

  Backend& backend;
  ParallelContext ctx;
  GPTConfig config;
  GPTModel model;
  AdamW optimizer;
  DropoutRng rng;
  TextDataset data;
  Tensor ids, targets;
  std::vector<int32_t> ids_host, targets_host;  // a batch is written here, then copied over
};

class GptTrainingTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::unique_ptr<Backend> cpu_ = make_test_backend();  // the engine WEFT_TEST_BACKEND names
};

TEST_P(GptTrainingTest, LossCurveIsTheSameAtEveryTpSize) {
  std::vector<std::vector<float>> curves;
  for (int tp : tp_sizes()) {
    ParallelGrid grid(world(), tp);
    Trainer t(*cpu_, grid.tp(), tiny_gpt_config(GetParam(), kSeq));
    std::vector<float> losses;
    for (int64_t s = 0; s < 20; ++s) losses.push_back(t.step(s));
    curves.push_back(losses);
  }
  EXPECT_LT(curves[0].back(), curves[0].front()) << "the loss must fall";
  for (size_t i = 1; i < curves.size(); ++i) {
    for (size_t s = 0; s < curves[0].size(); ++s) {
      EXPECT_NEAR(curves[i][s], curves[0][s], 1e-4 * std::abs(curves[0][s]))
          << "tp=" << tp_sizes()[i] << " step " << s;
    }
  }
}

TEST_P(GptTrainingTest, ReplicatedParametersStayIdenticalAcrossTpRanks) {
  ParallelGrid grid(world(), world().size());
  Trainer t(*cpu_, grid.tp(), tiny_gpt_config(GetParam(), kSeq));
  for (int64_t s = 0; s < 3; ++s) t.step(s);
  for (Parameter* p : t.model.parameters()) {
    // Fully replicated ones (norms, row biases, positions); grouped-query key/value replicas are
    // shared by a subset of ranks only.
    if (p->replica_count != grid.tp_size() || grid.tp_size() == 1) continue;
    std::vector<double> mine = to_host(*cpu_, p->value);
    for (double& v : mine) {
      float local = static_cast<float>(v);
      const float hi = all_reduce_scalar(grid.tp(), *cpu_, local, ReduceOp::kMax);
      const float lo = all_reduce_scalar(grid.tp(), *cpu_, local, ReduceOp::kMin);
      ASSERT_EQ(hi, lo) << p->name << " differs across TP ranks";
    }
  }
}

TEST_P(GptTrainingTest, ResumedRunEqualsUninterruptedRun) {
  ParallelGrid grid(world(), world().size());
  GPTConfig config = tiny_gpt_config(GetParam(), kSeq);
  config.dropout = 0.1f;  // the dropout counters must resume too
  std::vector<float> straight;
  {
    Trainer t(*cpu_, grid.tp(), config);
    for (int64_t s = 0; s < 6; ++s) straight.push_back(t.step(s));
  }
  std::unique_ptr<TempDir> made;  // rank 0 makes the directory, every rank uses it
  if (world().rank() == 0) made = std::make_unique<TempDir>("weft-ckpt");
  std::string dir = made ? made->path() : "";
  // Every rank needs the directory name rank 0 made.
  std::vector<char> name(64, 0);
  std::copy(dir.begin(), dir.end(), name.begin());
  host_world().broadcast(TensorView{name.data(), Shape({16}), DType::kF32, Device::cpu()}, 0,
                         host_stream());
  dir = std::string(name.data());
  std::vector<float> resumed;
  {
    Trainer t(*cpu_, grid.tp(), config);
    for (int64_t s = 0; s < 3; ++s) resumed.push_back(t.step(s));
    CheckpointInfo info{
        t.config, grid.tp_size(), 1, 3, t.rng.replicated_offset(), t.rng.sharded_offset(), "{}"};
    save_checkpoint(dir, info, t.model.parameters(), &t.optimizer, grid, *cpu_);
  }
  {
    const CheckpointInfo info = read_checkpoint_info(dir);
    EXPECT_EQ(info.step, 3);
    Trainer t(*cpu_, grid.tp(), info.config);
    load_checkpoint(dir, t.model.parameters(), &t.optimizer, grid, *cpu_);
    t.rng.set_offsets(info.dropout_replicated, info.dropout_sharded);
    for (int64_t s = 3; s < 6; ++s) resumed.push_back(t.step(s));
  }
  EXPECT_EQ(resumed, straight);
  world().barrier();  // nobody reads the checkpoint any more when rank 0 removes it
}

TEST_P(GptTrainingTest, GradientsMatchFiniteDifferences) {
  ParallelGrid grid(world(), world().size());
  GPTConfig config = tiny_gpt_config(GetParam(), kSeq);
  config.layers = 1;
  config.hidden = 16;
  Trainer t(*cpu_, grid.tp(), config);
  t.load_batch(0);
  zero_grads(*cpu_, t.model.parameters());
  GPTModel::Saved saved;
  t.model.forward(t.ids, t.targets, kSeq, kBatch, t.rng, saved);
  t.model.backward(saved, static_cast<float>(kSeq * kBatch));  // gradient of the summed loss
  for (Parameter* p : t.model.parameters()) {
    for (int64_t index : {int64_t{0}, p->value.numel() / 2}) {
      // Every rank nudges its own element `index`: distinct global weights for a shard, one
      // weight for a replicated parameter. The loss changes by the sum of their gradients.
      const TensorView w = element(p->value, index);
      const float original = read_scalar(*cpu_, w), h = 1e-2f;
      write_scalar(*cpu_, w, original + h);
      const double up = t.model.forward(t.ids, t.targets, kSeq, kBatch, t.rng);
      write_scalar(*cpu_, w, original - h);
      const double down = t.model.forward(t.ids, t.targets, kSeq, kBatch, t.rng);
      write_scalar(*cpu_, w, original);
      const double numeric = (up - down) * kSeq * kBatch / (2.0 * h);
      const double analytic = all_reduce_scalar(
          grid.tp(), *cpu_, read_scalar(*cpu_, element(p->grad, index)) / p->replica_count,
          ReduceOp::kSum);
      EXPECT_NEAR(numeric, analytic, 2e-2 * std::max(1.0, std::abs(analytic)))
          << p->name << "[" << index << "]";
    }
  }
}

TEST_P(GptTrainingTest, KvCacheGenerationEqualsFullRecomputation) {
  ParallelGrid grid(world(), world().size());
  Trainer t(*cpu_, grid.tp(), tiny_gpt_config(GetParam(), kSeq));
  for (int64_t s = 0; s < 3; ++s) t.step(s);
  t.model.set_training(false);
  const std::vector<int32_t> prompt{'I', 't', ' ', 'w'};
  auto to_device = [&](const std::vector<int32_t>& host) { return ids_tensor(*cpu_, host); };
  auto argmax = [](const std::vector<float>& v) {
    return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
  };
  // Incremental: the prompt, then one token at a time through the cache.
  std::vector<int32_t> cached = prompt;
  std::vector<std::vector<float>> cached_logits;
  KVCache cache = t.model.new_cache(1, kSeq);
  std::vector<float> logits = t.model.next_token_logits(to_device(prompt), 4, cache);
  while (cache.length < kSeq) {
    cached_logits.push_back(logits);
    cached.push_back(argmax(logits));
    logits = t.model.next_token_logits(to_device({cached.back()}), 1, cache);
  }
  // Full recomputation of the whole prefix at every step.
  std::vector<int32_t> full = prompt;
  for (size_t i = 0; i < cached_logits.size(); ++i) {
    KVCache fresh = t.model.new_cache(1, kSeq);
    const std::vector<float> l =
        t.model.next_token_logits(to_device(full), static_cast<int64_t>(full.size()), fresh);
    std::vector<double> a(l.begin(), l.end()), b(cached_logits[i].begin(), cached_logits[i].end());
    EXPECT_LE(max_rel_error(b, a), 1e-5) << "step " << i;
    full.push_back(argmax(l));
  }
  EXPECT_EQ(full, cached);
}

// The model keeps no decoding state: two sequences, each with its own cache, decoded in turn
// (their prompts of different lengths, then the same tokens) give bit for bit the logits each
// gives decoded alone.
TEST_P(GptTrainingTest, TwoCachesDecodedInTurnEqualEachAlone) {
  ParallelGrid grid(world(), world().size());
  Trainer t(*cpu_, grid.tp(), tiny_gpt_config(GetParam(), kSeq));
  t.step(0);
  t.model.set_training(false);
  const std::vector<int32_t> prompt_a{'I', 't', ' '}, prompt_b{'W', 'e', 'f', 't'};
  const std::vector<int32_t> tokens{'a', 'b', 'c', 'd'};
  auto next = [&](const std::vector<int32_t>& ids, KVCache& cache) {
    return t.model.next_token_logits(ids_tensor(*cpu_, ids), static_cast<int64_t>(ids.size()),
                                     cache);
  };
  auto alone = [&](const std::vector<int32_t>& prompt) {
    KVCache cache = t.model.new_cache(1, kSeq);
    std::vector<std::vector<float>> logits{next(prompt, cache)};
    for (int32_t id : tokens) {
      if (cache.length < kSeq) logits.push_back(next({id}, cache));
    }
    return logits;
  };
  const auto alone_a = alone(prompt_a), alone_b = alone(prompt_b);
  KVCache a = t.model.new_cache(1, kSeq), b = t.model.new_cache(1, kSeq);
  std::vector<std::vector<float>> turn_b{next(prompt_b, b)}, turn_a{next(prompt_a, a)};
  for (int32_t id : tokens) {
    if (b.length < kSeq) turn_b.push_back(next({id}, b));
    if (a.length < kSeq) turn_a.push_back(next({id}, a));
  }
  EXPECT_EQ(turn_a, alone_a);
  EXPECT_EQ(turn_b, alone_b);
  EXPECT_NE(alone_a.back(), alone_b.back());  // the two sequences differ
  EXPECT_EQ(a.length, 7);
  EXPECT_EQ(b.length, kSeq);
}

INSTANTIATE_TEST_SUITE_P(Presets, GptTrainingTest, ::testing::Values("gpt2", "llama"),
                         [](const auto& info) { return info.param; });

TEST(GptDropoutRng, ReplicatedDrawsAgreeAndShardedDrawsDifferAcrossTpRanks) {
  auto cpu = make_test_backend();
  ParallelGrid grid(world(), world().size());
  DropoutRng rng(5, grid.tp_rank());
  const DropoutRng::Draw replicated = rng.replicated(100), sharded = rng.sharded(100);
  auto spread = [&](uint64_t v) {
    const float x = static_cast<float>(v % 1000003);
    return all_reduce_scalar(grid.tp(), *cpu, x, ReduceOp::kMax) -
           all_reduce_scalar(grid.tp(), *cpu, x, ReduceOp::kMin);
  };
  EXPECT_EQ(spread(replicated.seed), 0.0f);
  EXPECT_EQ(spread(replicated.offset), 0.0f);
  if (grid.tp_size() > 1) EXPECT_GT(spread(sharded.seed), 0.0f);
  EXPECT_EQ(rng.replicated(10).offset, 100u);  // counters advance by what was drawn
}

TEST(GptErrors, BadConfigurationsAreRejectedWithTheirValues) {
  const int tp = world().size();
  GPTConfig heads = tiny_gpt_config("gpt2", kSeq);
  heads.heads = 4 * tp + 1;
  heads.hidden = 8 * (4 * tp + 1);
  if (tp > 1) {
    try {
      heads.finalize(tp);
      ADD_FAILURE() << "expected weft::Error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("(" + std::to_string(4 * tp + 1) + ")"),
                std::string::npos)
          << e.what();
    }
  }
  GPTConfig hidden = tiny_gpt_config("gpt2", kSeq);
  hidden.hidden = 30;
  EXPECT_THROW(hidden.finalize(1), Error);
  GPTConfig kv = tiny_gpt_config("llama", kSeq);
  kv.kv_heads = 3;
  EXPECT_THROW(kv.finalize(1), Error);
  EXPECT_THROW(GPTConfig::preset("bert"), Error);

  auto cpu = make_test_backend();
  ParallelGrid grid(world(), tp);
  Trainer t(*cpu, grid.tp(), tiny_gpt_config("gpt2", kSeq));
  Tensor long_ids =
      from_host(*cpu, Shape({(kSeq + 1) * kBatch}), DType::kI32, [](int64_t) { return 65; });
  try {
    t.model.forward(long_ids, long_ids, kSeq + 1, kBatch, t.rng);
    ADD_FAILURE() << "expected weft::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(std::to_string(kSeq + 1)), std::string::npos) << e.what();
  }
  EXPECT_THROW(read_checkpoint_info("/nonexistent/weft-checkpoint"), Error);
  world().barrier();
}

}  // namespace
}  // namespace weft::testing
