// Optimizer-state restore: after load_checkpoint, every f32 master weight and both Adam moments of
// every parameter shard equal those saved, tensor by tensor and bit for bit, at TP = world. And the
// checkpoint root: step directories, the latest pointer, retention, and what a crash leaves.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>

#include "common/temp_dir.hpp"
#include "common/test_util.hpp"
#include "dist/dist_env.hpp"
#include "weft/checkpoint_store.hpp"
#include "weft/gpt.hpp"
#include "weft/gpt_checkpoint.hpp"
#include "weft/optimizer.hpp"

namespace weft::testing {
namespace {

constexpr int64_t kSeq = 8, kBatch = 2;

GPTConfig tiny_config(const std::string& preset, uint64_t seed) {
  GPTConfig c = GPTConfig::preset(preset);
  c.vocab_size = 256;
  c.max_seq = kSeq;
  c.layers = 2;
  c.hidden = 32;
  c.heads = 4;
  c.vocab_pad_multiple = 8;
  c.seed = seed;
  return c;
}

// A directory that rank 0 makes and removes, its name broadcast to every rank.
struct SharedDir {
  SharedDir() {
    if (world().rank() == 0) made = std::make_unique<TempDir>("weft-optimizer-state");
    std::vector<char> name(256, 0);
    if (made) {
      const std::string p = made->path();
      std::copy(p.begin(), p.end(), name.begin());
    }
    world().broadcast(TensorView{name.data(), Shape({64}), DType::kF32, Device::cpu()}, 0,
                      host_stream());
    path = std::string(name.data());
  }
  ~SharedDir() { world().barrier(); }  // nobody reads it any more when rank 0 removes it
  std::unique_ptr<TempDir> made;
  std::string path;
};

// A model and its optimizer after `steps` AdamW steps on random gradients (never zero moments).
struct Trained {
  Trained(Backend& backend, Communicator& tp, GPTConfig config, int steps)
      : config(finalized(config, tp.size())),
        model(ParallelContext{backend, tp}, this->config),
        optimizer(backend, model.parameters(), AdamWConfig{}) {
    uint64_t seed = 1000 + config.seed;
    for (int s = 0; s < steps; ++s) {
      for (Parameter* p : model.parameters()) {
        const Tensor g = random_tensor(backend, p->grad.shape(), DType::kF32, seed++, 0.1);
        backend.copy(p->grad, g);
      }
      optimizer.step(1e-3f, 1.0f);
    }
  }
  static GPTConfig finalized(GPTConfig c, int tp) {
    c.finalize(tp);
    return c;
  }
  GPTConfig config;
  GPTModel model;
  AdamW optimizer;
};

class OptimizerStateTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::unique_ptr<Backend> cpu_ = make_cpu_backend();
};

TEST_P(OptimizerStateTest, LoadRestoresMasterWeightsAndMomentsTensorByTensor) {
  ParallelGrid grid(world(), world().size());
  SharedDir dir;
  Trained saved(*cpu_, grid.tp(), tiny_config(GetParam(), 11), 3);
  CheckpointInfo info{saved.config, grid.tp_size(), 1, 3, 0, 0, "{}"};
  save_checkpoint(dir.path, info, saved.model.parameters(), &saved.optimizer, grid, *cpu_);

  // Another seed and other steps: every tensor differs before the load.
  Trained loaded(*cpu_, grid.tp(), tiny_config(GetParam(), 12), 1);
  load_checkpoint(dir.path, loaded.model.parameters(), &loaded.optimizer, grid, *cpu_);
  EXPECT_EQ(loaded.optimizer.steps_taken(), 3);

  const auto& a = saved.optimizer.state();
  const auto& b = loaded.optimizer.state();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const std::string& name = a[i].param->name;
    ASSERT_EQ(b[i].param->name, name);
    const std::vector<double> m = to_host(*cpu_, a[i].m), v = to_host(*cpu_, a[i].v);
    EXPECT_TRUE(std::any_of(m.begin(), m.end(), [](double x) { return x != 0.0; }))
        << name << ": the saved moments must not be zero";
    EXPECT_EQ(to_host(*cpu_, b[i].master), to_host(*cpu_, a[i].master)) << name << " master";
    EXPECT_EQ(to_host(*cpu_, b[i].m), m) << name << " exp_avg";
    EXPECT_EQ(to_host(*cpu_, b[i].v), v) << name << " exp_avg_sq";
    EXPECT_EQ(to_host(*cpu_, b[i].param->value), to_host(*cpu_, a[i].param->value)) << name;
  }
}

// Every parameter of `model` equals `expected`'s, bit for bit.
void expect_same_weights(Backend& backend, Trained& model, Trained& expected) {
  const std::vector<Parameter*> a = model.model.parameters(), b = expected.model.parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(to_host(backend, a[i]->value), to_host(backend, b[i]->value)) << a[i]->name;
  }
}

CheckpointInfo info_at(const Trained& t, const ParallelGrid& grid, int64_t step) {
  return CheckpointInfo{t.config, grid.tp_size(), 1, step, 0, 0, "{}"};
}

TEST_P(OptimizerStateTest, CheckpointRootKeepsTheNewestStepsAndLoadsTheLatest) {
  ParallelGrid grid(world(), world().size());
  SharedDir dir;
  const std::string root = dir.path + "/run";
  prepare_checkpoint_root(root, grid.world(), *cpu_);
  std::vector<std::unique_ptr<Trained>> saved;
  for (int step = 1; step <= 3; ++step) {
    saved.push_back(
        std::make_unique<Trained>(*cpu_, grid.tp(), tiny_config(GetParam(), 20 + step), step));
    const std::string written = save_checkpoint_step(
        root, info_at(*saved.back(), grid, step), saved.back()->model.parameters(),
        &saved.back()->optimizer, grid, *cpu_, /*keep_last=*/2);
    EXPECT_EQ(written, root + "/step-0000000" + std::to_string(step));
  }
  EXPECT_EQ(list_checkpoint_steps(root),
            (std::vector<std::string>{"step-00000002", "step-00000003"}));
  EXPECT_EQ(resolve_checkpoint(root), root + "/step-00000003");
  EXPECT_EQ(read_checkpoint_info(root).step, 3);
  Trained loaded(*cpu_, grid.tp(), tiny_config(GetParam(), 99), 1);
  load_checkpoint(root, loaded.model.parameters(), &loaded.optimizer, grid, *cpu_);
  expect_same_weights(*cpu_, loaded, *saved.back());
  EXPECT_EQ(loaded.optimizer.steps_taken(), 3);
}

// A crash during a save leaves a .partial directory (shards, no manifest) and temporaries: the
// root still loads the previous step, and the next run's prepare removes the debris.
TEST_P(OptimizerStateTest, InterruptedSaveLeavesThePreviousCheckpointLoadable) {
  ParallelGrid grid(world(), world().size());
  SharedDir dir;
  const std::string root = dir.path + "/run";
  prepare_checkpoint_root(root, grid.world(), *cpu_);
  Trained first(*cpu_, grid.tp(), tiny_config(GetParam(), 31), 1);
  save_checkpoint_step(root, info_at(first, grid, 1), first.model.parameters(), &first.optimizer,
                       grid, *cpu_, 0);
  namespace fs = std::filesystem;
  if (world().rank() == 0) {  // what a kill -9 in the middle of the next save leaves
    fs::create_directories(root + "/step-00000002.partial");
    fs::copy_file(root + "/step-00000001/tp0_pp0.safetensors",
                  root + "/step-00000002.partial/tp0_pp0.safetensors");
    std::ofstream(root + "/latest.tmp.12345") << "step-00000002\n";
  }
  world().barrier();
  EXPECT_EQ(resolve_checkpoint(root), root + "/step-00000001");
  Trained loaded(*cpu_, grid.tp(), tiny_config(GetParam(), 98), 1);
  load_checkpoint(root, loaded.model.parameters(), nullptr, grid, *cpu_);
  expect_same_weights(*cpu_, loaded, first);

  prepare_checkpoint_root(root, grid.world(), *cpu_);
  EXPECT_FALSE(fs::exists(root + "/step-00000002.partial"));
  EXPECT_FALSE(fs::exists(root + "/latest.tmp.12345"));
  EXPECT_TRUE(fs::exists(root + "/step-00000001/manifest.json"));
}

// Saving a step that is already there (a resume that saves before training further) never
// replaces the directory `latest` names: the new save takes the next generation.
TEST_P(OptimizerStateTest, SavingAStepAgainTakesANewGeneration) {
  ParallelGrid grid(world(), world().size());
  SharedDir dir;
  const std::string root = dir.path + "/run";
  Trained a(*cpu_, grid.tp(), tiny_config(GetParam(), 41), 1);
  Trained b(*cpu_, grid.tp(), tiny_config(GetParam(), 42), 1);
  save_checkpoint_step(root, info_at(a, grid, 5), a.model.parameters(), nullptr, grid, *cpu_, 0);
  const std::string second = save_checkpoint_step(root, info_at(b, grid, 5), b.model.parameters(),
                                                  nullptr, grid, *cpu_, 0);
  EXPECT_EQ(second, root + "/step-00000005-2");
  EXPECT_EQ(resolve_checkpoint(root), second);
  Trained loaded(*cpu_, grid.tp(), tiny_config(GetParam(), 97), 1);
  load_checkpoint(root, loaded.model.parameters(), nullptr, grid, *cpu_);
  expect_same_weights(*cpu_, loaded, b);
}

TEST_P(OptimizerStateTest, UnwritableCheckpointRootFailsOnEveryRankBeforeWork) {
  ParallelGrid grid(world(), world().size());
  expect_error_on_every_rank(
      [&] { prepare_checkpoint_root("/proc/weft-no-such-dir", grid.world(), *cpu_); },
      {"/proc/weft-no-such-dir"});
  SharedDir dir;
  expect_error_on_every_rank([&] { resolve_checkpoint(dir.path); },
                             {dir.path, "neither a checkpoint", "latest"});
}

INSTANTIATE_TEST_SUITE_P(Presets, OptimizerStateTest, ::testing::Values("gpt2", "llama"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace weft::testing
