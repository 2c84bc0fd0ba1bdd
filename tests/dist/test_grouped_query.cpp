// Grouped-query attention at TP 2, against the same layer unsharded (one seed gives one global
// model at every TP size): several kv groups per rank (heads 8, kv 4), one group per rank (8, 2)
// and key/value heads replicated on both ranks (4, 1; 8, 1). Output, input gradient and every
// parameter gradient shard, with rotary positions and biases.
#include <gtest/gtest.h>

#include <numeric>
#include <string>

#include "common/test_util.hpp"
#include "dist/dist_env.hpp"
#include "weft/attention.hpp"

namespace weft::testing {
namespace {

constexpr int64_t kSeq = 6, kBatch = 2, kTokens = kSeq * kBatch, kHidden = 32;

struct GqaCase {
  int64_t heads, kv_heads;
};

ParallelAttentionConfig config_of(GqaCase c) {
  ParallelAttentionConfig cfg;
  cfg.hidden = kHidden;
  cfg.heads = c.heads;
  cfg.kv_heads = c.kv_heads;
  cfg.rotary = true;
  cfg.bias = true;
  cfg.seed = 17;
  cfg.init_std = 0.3f;  // attention far from uniform, so that a wrong key or value shows
  cfg.output_init_std = 0.3f;
  return cfg;
}

// The global rows of the unsharded QKV weight (Megatron's grouped layout: per kv group its query
// heads, its key, its value) that each QKV parameter of TP rank r holds, in the layer's order.
std::vector<std::vector<int64_t>> qkv_rows(GqaCase c, int tp, int r) {
  const int64_t d = kHidden / c.heads, qpg = c.heads / c.kv_heads;
  auto span = [](int64_t begin, int64_t n) {
    std::vector<int64_t> v(static_cast<size_t>(n));
    std::iota(v.begin(), v.end(), begin);
    return v;
  };
  if (c.kv_heads % tp == 0) {  // whole groups: an even row block
    const int64_t n = (c.heads + 2 * c.kv_heads) * d / tp;
    return {span(n * r, n)};
  }
  const int64_t per_rank = c.heads / tp, group = r / (tp / c.kv_heads);
  std::vector<int64_t> q;
  for (int64_t h = per_rank * r; h < per_rank * (r + 1); ++h) {
    const std::vector<int64_t> head = span(((h / qpg) * (qpg + 2) + h % qpg) * d, d);
    q.insert(q.end(), head.begin(), head.end());
  }
  return {q, span((group * (qpg + 2) + qpg) * d, 2 * d)};
}

std::vector<double> pick_rows(const std::vector<double>& m, int64_t cols,
                              const std::vector<int64_t>& rows) {
  std::vector<double> out;
  for (int64_t r : rows) out.insert(out.end(), m.begin() + r * cols, m.begin() + (r + 1) * cols);
  return out;
}

TEST(GroupedQueryAttention, TpTwoEqualsTheUnshardedLayer) {
  if (world().size() % 2 != 0) GTEST_SKIP() << "needs an even number of ranks";
  auto cpu = make_cpu_backend();
  auto self = make_self_communicator();
  ParallelGrid grid(world(), 2);
  const int r = grid.tp_rank();
  const Tensor x = random_tensor(*cpu, Shape({kTokens, kHidden}), DType::kF32, 3);
  const Tensor dy = random_tensor(*cpu, Shape({kTokens, kHidden}), DType::kF32, 4);
  for (GqaCase c : {GqaCase{8, 4}, GqaCase{8, 2}, GqaCase{4, 1}, GqaCase{8, 1}}) {
    SCOPED_TRACE("heads=" + std::to_string(c.heads) + " kv_heads=" + std::to_string(c.kv_heads));
    ParallelAttention ref(ParallelContext{*cpu, *self}, config_of(c));
    ParallelAttention layer(ParallelContext{*cpu, grid.tp()}, config_of(c));
    EXPECT_EQ(layer.local_kv_heads(), c.kv_heads % 2 == 0 ? c.kv_heads / 2 : 1);

    ParallelAttention::Saved ref_saved, saved;
    const std::vector<double> y_ref = to_host(*cpu, ref.forward(x, kSeq, kBatch, ref_saved));
    EXPECT_LE(max_rel_error(to_host(*cpu, layer.forward(x, kSeq, kBatch, saved)), y_ref), 1e-5)
        << "output";
    const std::vector<double> dx_ref = to_host(*cpu, ref.backward(dy, ref_saved));
    EXPECT_LE(max_rel_error(to_host(*cpu, layer.backward(dy, saved)), dx_ref), 1e-5)
        << "input grad";

    // Reference parameters: qkv weight, qkv bias, proj weight, proj bias.
    const std::vector<Parameter*> rp = ref.parameters(), lp = layer.parameters();
    ASSERT_EQ(rp.size(), 4u);
    const std::vector<double> dw_qkv = to_host(*cpu, rp[0]->grad),
                              db_qkv = to_host(*cpu, rp[1]->grad);
    const auto rows = qkv_rows(c, 2, r);
    ASSERT_EQ(lp.size(), 2 * rows.size() + 2);
    for (size_t i = 0; i < rows.size(); ++i) {
      EXPECT_LE(max_rel_error(to_host(*cpu, lp[2 * i]->grad), pick_rows(dw_qkv, kHidden, rows[i])),
                1e-5)
          << lp[2 * i]->name;
      EXPECT_LE(max_rel_error(to_host(*cpu, lp[2 * i + 1]->grad), pick_rows(db_qkv, 1, rows[i])),
                1e-5)
          << lp[2 * i + 1]->name;
    }
    const int64_t k = c.heads * (kHidden / c.heads) / 2;
    EXPECT_LE(max_rel_error(to_host(*cpu, lp[lp.size() - 2]->grad),
                            column_block(to_host(*cpu, rp[2]->grad), kHidden, 2 * k, k * r, k)),
              1e-5)
        << "proj weight";
    EXPECT_LE(max_rel_error(to_host(*cpu, lp.back()->grad), to_host(*cpu, rp[3]->grad)), 1e-5)
        << "proj bias";
  }
}

}  // namespace
}  // namespace weft::testing
