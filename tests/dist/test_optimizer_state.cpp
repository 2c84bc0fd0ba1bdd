// Optimizer-state restore: after load_checkpoint, every f32 master weight and both Adam moments of
// every parameter shard equal those saved, tensor by tensor and bit for bit, at TP = world.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "common/gpt_fixtures.hpp"
#include "common/temp_dir.hpp"
#include "common/test_util.hpp"
#include "dist/dist_env.hpp"
#include "weft/gpt.hpp"
#include "weft/gpt_checkpoint.hpp"
#include "weft/optimizer.hpp"

namespace weft::testing {
namespace {

constexpr int64_t kSeq = 8, kBatch = 2;

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
  Trained saved(*cpu_, grid.tp(), tiny_gpt_config(GetParam(), kSeq, 2, 11), 3);
  CheckpointInfo info{saved.config, grid.tp_size(), 1, 3, 0, 0, "{}"};
  save_checkpoint(dir.path, info, saved.model.parameters(), &saved.optimizer, grid, *cpu_);

  // Another seed and other steps: every tensor differs before the load.
  Trained loaded(*cpu_, grid.tp(), tiny_gpt_config(GetParam(), kSeq, 2, 12), 1);
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

INSTANTIATE_TEST_SUITE_P(Presets, OptimizerStateTest, ::testing::Values("gpt2", "llama"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace weft::testing
