// The untied output layer (GPTConfig::tie_word_embeddings = false) against the unsharded model:
// loss, every gradient shard and the decoding logits at every TP size and over two pipeline
// stages, with a vocabulary whose padding changes with tp (padding rows never reach a result).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "common/gpt_fixtures.hpp"
#include "common/test_util.hpp"
#include "dist/gpt_reference.hpp"
#include "weft/gpt.hpp"
#include "weft/gpt_checkpoint.hpp"
#include "weft/pipeline.hpp"

namespace weft::testing {
namespace {

constexpr int64_t kSeq = 8, kBatch = 2;

// 260 entries (ids are bytes, so 4 are never seen as inputs): padded to 264 at tp 1, 272 at tp 2,
// 288 at tp 4.
GPTConfig untied_config(const std::string& preset, int64_t layers = 2) {
  GPTConfig c = tiny_gpt_config(preset, kSeq, layers);
  c.vocab_size = 260;
  c.tie_word_embeddings = false;
  return c;
}

void fill_batch(Backend& backend, int64_t index, TensorView ids, TensorView targets) {
  std::vector<int32_t> ids_host(static_cast<size_t>(ids.numel())), targets_host(ids_host.size());
  fill_text_sequences(index * kBatch, kBatch, kSeq, ids_host.data(), targets_host.data());
  backend.copy(ids, TensorView{ids_host.data(), ids.shape, DType::kI32, Device::cpu()});
  backend.copy(targets, TensorView{targets_host.data(), targets.shape, DType::kI32, Device::cpu()});
}

// This rank's shard of p against the reference, by the checkpoint's slice geometry
// (gpt_parameter_slices): the real vocabulary rows only (the padded sizes differ), and the query
// and key/value windows of the grouped QKV when key/value heads are replicated.
void expect_shard_matches(Backend& backend, const GPTConfig& config, const ParallelGrid& grid,
                          const Parameter& p, ReferenceGpt& ref, bool grad) {
  const std::vector<TensorSlice> slices =
      gpt_parameter_slices(config, grid.tp_size(), grid.tp_rank());
  auto it = std::find_if(slices.begin(), slices.end(),
                         [&](const TensorSlice& s) { return s.name == p.name; });
  ASSERT_NE(it, slices.end()) << p.name;
  const TensorSlice& s = *it;
  Parameter* r = ref.find(s.global_name);
  ASSERT_NE(r, nullptr) << s.global_name;
  TensorView mine = grad ? p.grad.view() : p.value.view();
  TensorView theirs = grad ? r->grad.view() : r->value.view();
  std::vector<double> expected;
  if (s.partition_dim < 0) {
    expected = to_host(backend, theirs);
  } else if (s.partition_dim == 0) {
    const int64_t count = s.shape[0];
    if (count == 0) return;        // vocabulary padding only
    if (mine.shape.rank() == 1) {  // a bias: one column
      mine = mine.reshaped(Shape({mine.shape[0], 1}));
      theirs = theirs.reshaped(Shape({theirs.shape[0], 1}));
    }
    mine = mine.rows(0, count);
    expected = to_host(backend, theirs.rows(s.offset, count));
  } else {
    const std::vector<double> full = to_host(backend, theirs);
    expected =
        column_block(full, s.global_shape.rows(), theirs.shape.cols(), s.offset, s.shape.cols());
  }
  const std::vector<double> actual = to_host(backend, mine);
  const std::string what = p.name + (grad ? " grad" : " value") + " (tp rank " +
                           std::to_string(grid.tp_rank()) + " of " +
                           std::to_string(grid.tp_size()) + ")";
  const bool all_zero =
      std::all_of(expected.begin(), expected.end(), [](double x) { return x == 0.0; });
  if (grad && !all_zero) {
    EXPECT_LE(max_rel_error(actual, expected), 1e-4) << what;
  } else {
    // Values: one seed, one model (biases start at zero). Gradients of table rows whose tokens
    // the batch lacks (ASCII text, a shard of higher ids) are zero.
    EXPECT_EQ(actual, expected) << what;
  }
}

class UntiedHeadTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::unique_ptr<Backend> backend_ = make_test_backend();
};

TEST_P(UntiedHeadTest, EveryTpSizeEqualsTheUnshardedModel) {
  const GPTConfig config = untied_config(GetParam());
  ReferenceGpt ref(*backend_, make_test_self(), config, kBatch);
  ASSERT_NE(ref.find("lm_head.weight"), nullptr);
  ASSERT_NE(ref.find("embedding.weight"), nullptr);
  // Its own initialisation: the output layer is not a copy of the table.
  EXPECT_GT(max_rel_error(to_host(*backend_, ref.find("lm_head.weight")->value),
                          to_host(*backend_, ref.find("embedding.weight")->value)),
            0.1);
  EXPECT_TRUE(ref.model.shared_parameters().empty());
  const float ref_loss = ref.accumulate(
      1, [&](int64_t, Tensor& ids, Tensor& targets) { fill_batch(*backend_, 0, ids, targets); });
  ref.model.set_training(false);
  weft::KVCache ref_cache = ref.model.new_cache(kBatch, kSeq);
  const std::vector<float> ref_logits = ref.model.next_token_logits(ref.ids, kSeq, ref_cache);
  ASSERT_EQ(ref_logits.size(), static_cast<size_t>(kBatch * config.vocab_size));

  for (int tp : tp_sizes()) {
    SCOPED_TRACE(GetParam() + " tp=" + std::to_string(tp));
    ParallelGrid grid(world(), tp);
    GPTConfig c = config;
    c.finalize(tp);
    GPTModel model(ParallelContext{*backend_, grid.tp()}, c);
    ASSERT_NE(model.output_layer(), nullptr);
    Tensor ids(*backend_, Shape({kSeq * kBatch}), DType::kI32);
    Tensor targets(*backend_, Shape({kSeq * kBatch}), DType::kI32);
    fill_batch(*backend_, 0, ids, targets);
    zero_grads(*backend_, model.parameters());
    DropoutRng rng(c.seed, grid.tp_rank());
    GPTModel::Saved saved;
    const float loss = model.forward(ids, targets, kSeq, kBatch, rng, saved);
    model.backward(saved);
    EXPECT_NEAR(loss, ref_loss, 1e-5 * std::abs(ref_loss));
    for (Parameter* p : model.parameters()) {
      expect_shard_matches(*backend_, config, grid, *p, ref, false);
      expect_shard_matches(*backend_, config, grid, *p, ref, true);
    }
    model.set_training(false);
    weft::KVCache cache = model.new_cache(kBatch, kSeq);
    const std::vector<float> logits = model.next_token_logits(ids, kSeq, cache);
    EXPECT_LE(max_rel_error(std::vector<double>(logits.begin(), logits.end()),
                            std::vector<double>(ref_logits.begin(), ref_logits.end())),
              1e-5);
    // Not the reference's word alone: the logits are the output layer's. With it zeroed every
    // real entry's logit is 0 (the table is untouched), so the loss is ln(vocab) exactly as the
    // padding never takes part.
    backend_->fill(model.output_layer()->value, 0.0f);
    GPTModel::Saved kept;  // the training forward and the evaluation one
    EXPECT_NEAR(model.forward(ids, targets, kSeq, kBatch, rng, kept),
                std::log(static_cast<float>(c.vocab_size)), 1e-5);
    EXPECT_NEAR(model.forward(ids, targets, kSeq, kBatch, rng),
                std::log(static_cast<float>(c.vocab_size)), 1e-5);
    weft::KVCache zeroed_cache = model.new_cache(kBatch, kSeq);
    for (float l : model.next_token_logits(ids, kSeq, zeroed_cache)) ASSERT_EQ(l, 0.0f);
  }
}

TEST_P(UntiedHeadTest, PipelineStagesEqualTheUnshardedModel) {
  const int n = world().size();
  if (n < 2) GTEST_SKIP() << "two pipeline stages need 2 ranks";
  const GPTConfig config = untied_config(GetParam(), 4);
  constexpr int64_t m = 3;
  ReferenceGpt ref(*backend_, make_test_self(), config, kBatch);
  const float ref_loss = ref.accumulate(m, [&](int64_t mb, Tensor& ids, Tensor& targets) {
    fill_batch(*backend_, mb, ids, targets);
  });
  for (int tp : {1, 2}) {
    if (n % (tp * 2) != 0) continue;
    SCOPED_TRACE(GetParam() + " tp=" + std::to_string(tp) + " pp=2");
    ParallelGrid grid(world(), tp, 2);
    PipelineModel model(ParallelContext{*backend_, grid.tp()}, grid.pp(), config,
                        ScheduleKind::k1F1B);
    DropoutRng rng(config.seed, grid.tp_rank());
    auto load = [&](int64_t mb, TensorView ids, TensorView targets) {
      fill_batch(*backend_, mb, ids, targets);
    };
    const float loss = model.train_step(load, m, kSeq, kBatch, 1.0f, rng);
    EXPECT_NEAR(loss, ref_loss, 1e-5 * std::abs(ref_loss));
    bool has_table = false, has_head = false;
    for (Parameter* p : model.parameters()) {
      has_table |= p->name == "embedding.weight";
      has_head |= p->name == "lm_head.weight";
      expect_shard_matches(*backend_, config, grid, *p, ref, true);
    }
    // The table lives on the first stage only, the output layer on the last only.
    const bool first = grid.pp().rank() == 0;
    EXPECT_EQ(has_table, first);
    EXPECT_EQ(has_head, !first);
    // The grad norm counts each tensor once (no tied copy to skip): the reference's.
    EXPECT_NEAR(model.grad_norm(), global_grad_norm(*backend_, ref.model.parameters(), {}),
                1e-4 * model.grad_norm());
  }
}

INSTANTIATE_TEST_SUITE_P(Presets, UntiedHeadTest, ::testing::Values("gpt2", "llama"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace weft::testing
