// AdamW's choice of decayed parameters: weight decay on matrices (token and position tables,
// QKV, projections, MLP) and never on one-dimensional parameters (biases, norm weights), as
// Megatron-LM does; pinned by name on whole GPTs of both presets.
#include <gtest/gtest.h>

#include <string>

#include "common/gpt_fixtures.hpp"
#include "unit/unit_util.hpp"
#include "weft/gpt.hpp"
#include "weft/optimizer.hpp"

namespace weft::testing {
namespace {

GPTConfig tiny_config(const std::string& preset) {
  GPTConfig c = tiny_gpt_config(preset, 8, 2, 7);
  c.vocab_size = 64;
  c.hidden = 16;
  c.finalize(1);
  return c;
}

// The rule written out by name, independent of how AdamW decides: biases and norm parameters are
// not decayed, every other parameter is.
bool should_decay(const std::string& name) {
  const bool bias = name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
  return !bias && name.find("norm") == std::string::npos;
}

class AdamWDecay : public ::testing::TestWithParam<std::string> {};

// Two identical models get the same random gradients and one AdamW step each, without and with
// weight decay. Decoupled decay changes a decayed parameter by exactly -lr * wd * w (w its value
// before the step) and leaves the others bit for bit as without it.
TEST_P(AdamWDecay, OnlyMatricesAreDecayed) {
  auto cpu = make_cpu_backend();
  auto self = make_self_communicator();
  const ParallelContext ctx{*cpu, *self};
  const GPTConfig config = tiny_config(GetParam());
  GPTModel plain(ctx, config), decayed(ctx, config);
  const std::vector<Parameter*> a = plain.parameters(), b = decayed.parameters();
  ASSERT_EQ(a.size(), b.size());
  std::vector<std::vector<double>> before;
  uint64_t seed = 100;
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i]->name, b[i]->name);
    before.push_back(to_host(*cpu, a[i]->value));
    ASSERT_EQ(before.back(), to_host(*cpu, b[i]->value)) << a[i]->name;
    const Tensor grad = random_tensor(*cpu, a[i]->grad.shape(), DType::kF32, seed++);
    cpu->copy(a[i]->grad, grad);
    cpu->copy(b[i]->grad, grad);
  }
  constexpr float kLr = 0.01f, kDecay = 0.5f;
  AdamW without(*cpu, a, AdamWConfig{0.9f, 0.95f, 1e-8f, 0.0f});
  AdamW with(*cpu, b, AdamWConfig{0.9f, 0.95f, 1e-8f, kDecay});
  without.step(kLr, 1.0f);
  with.step(kLr, 1.0f);

  int matrices = 0, vectors = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const std::string& name = a[i]->name;
    const std::vector<double> base = to_host(*cpu, a[i]->value), got = to_host(*cpu, b[i]->value);
    if (should_decay(name)) {
      ++matrices;
      EXPECT_GE(a[i]->global_shape.rank(), 2) << name;
      std::vector<double> expected = base;
      for (size_t k = 0; k < expected.size(); ++k) expected[k] -= kLr * kDecay * before[i][k];
      // The decay term is about 5e-3 of w: an undecayed parameter misses it entirely.
      EXPECT_LE(max_rel_error(got, expected), 1e-5) << name << " must be decayed";
      EXPECT_GT(max_rel_error(got, base), 1e-3) << name << " must be decayed";
    } else {
      ++vectors;
      EXPECT_EQ(a[i]->global_shape.rank(), 1) << name;
      EXPECT_EQ(got, base) << name << " (a bias or norm weight) must not be decayed";
    }
  }
  EXPECT_GT(matrices, 0);
  EXPECT_GT(vectors, 0);  // norm weights on both presets, biases on gpt2
}

INSTANTIATE_TEST_SUITE_P(Presets, AdamWDecay, ::testing::Values("gpt2", "llama"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace weft::testing
