// Unit tests of the layout planner (weft/plan.hpp): FLOPs of a hand-computed config, collective
// times against the alpha-beta formula, activation bytes against activation_memory's measured
// ones, Narayanan et al. 2021 Table 1 rows within 15%, calibration from benchmark JSON (the GEMM
// curve and table, the attention curve, the link), shared nodes with more ranks than cores, and
// bad input named clearly.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <string>

#include "common/temp_dir.hpp"
#include "weft/error.hpp"
#include "weft/plan.hpp"

namespace weft::plan {
namespace {

// Expects `statement` to throw weft::Error whose message contains every fragment.
#define EXPECT_ERROR_WITH(statement, ...)                                  \
  do {                                                                     \
    try {                                                                  \
      statement;                                                           \
      ADD_FAILURE() << #statement " did not throw";                        \
    } catch (const weft::Error& e) {                                       \
      for (const char* fragment : {__VA_ARGS__}) {                         \
        EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) \
            << "message '" << e.what() << "' lacks '" << fragment << "'";  \
      }                                                                    \
    }                                                                      \
  } while (0)

// 2 layers, h 64, s 32, V 256, B 4, by hand per sequence and layer forward:
//   QKV 2*32*64*192 = 786432, proj 2*32*64*64 = 262144, fc1 = fc2 = 2*32*64*256 = 1048576,
//   scores + weighted sum 2*2*32*32*64 = 262144: 3407872 per layer; head 2*32*64*256 = 1048576.
// Training (3 passes): (2*3407872 + 1048576) * 3 * 4 = 94371840.
// Full recomputation (layers 4 passes): (2*3407872*4 + 1048576*3) * 4 = 121634816.
// Selective (the attention core once more): 94371840 + 2*262144*4 = 96468992.
TEST(Plan, FlopsOfAHandComputedConfig) {
  const ModelShape m = ModelShape::gpt(2, 64, 4, 32, 256);
  EXPECT_DOUBLE_EQ(narayanan_flops_per_step(m, 4, false), 94371840.0);
  EXPECT_DOUBLE_EQ(narayanan_flops_per_step(m, 4, true), 121634816.0);
  EXPECT_DOUBLE_EQ(model_flops_per_step(m, 4, Recompute::kNone), 94371840.0);
  EXPECT_DOUBLE_EQ(model_flops_per_step(m, 4, Recompute::kFull), 121634816.0);
  EXPECT_DOUBLE_EQ(model_flops_per_step(m, 4, Recompute::kSelective), 96468992.0);
  // Grouped-query SwiGLU: QKV 2*32*64*(4+2*2)*16 = 524288, fc1 2*32*64*2*160 = 1310720,
  // fc2 2*32*64*160 = 655360, proj and attention as above: 3014656 per layer.
  ModelShape llama = m;
  llama.kv_heads = 2;
  llama.gated_mlp = true;
  llama.ffn_hidden = 160;
  EXPECT_DOUBLE_EQ(model_flops_per_step(llama, 4, Recompute::kNone),
                   (2 * 3014656.0 + 1048576.0) * 3 * 4);
}

TEST(Plan, CollectiveTimesFollowAlphaBeta) {
  const Link link{100, 5};  // 100 GB/s bus bandwidth, 5 us per ring step
  // all-reduce of 1 MB over 4: 2*3 steps * 5 us + 2*3/4 * 1e6 B / 1e11 B/s = 30 us + 15 us.
  EXPECT_NEAR(collective_time_s(Collective::kAllReduce, 1e6, 4, link), 45e-6, 1e-12);
  // all-gather of 8 MB over 8: 7 * 5 us + 7/8 * 8e6 / 1e11 = 35 us + 70 us.
  EXPECT_NEAR(collective_time_s(Collective::kAllGather, 8e6, 8, link), 105e-6, 1e-12);
  EXPECT_NEAR(collective_time_s(Collective::kReduceScatter, 8e6, 8, link), 105e-6, 1e-12);
  EXPECT_NEAR(collective_time_s(Collective::kSendRecv, 1e6, 2, link), 15e-6, 1e-12);
  EXPECT_EQ(collective_time_s(Collective::kAllReduce, 1e6, 1, link), 0.0);
  EXPECT_ERROR_WITH(collective_time_s(Collective::kAllReduce, -1, 2, link), "bytes (-1)");
}

// bench/activation_memory measures a gpt2 TransformerLayer's saved bytes (bf16; s 1024, b 1,
// h 1024, a 16) at tp 1, 2, 4 and checks them against its closed form exactly; these are those
// bytes (20 -> 16 MiB at TP 2 with SP, 14 -> 8 MiB at TP 4).
TEST(Plan, ActivationBytesEqualActivationMemorysMeasuredBytes) {
  const ModelShape m = ModelShape::gpt(1, 1024, 16, 1024, 256);
  const double tp_alone[] = {33636352, 21020672, 14712832};
  const double with_sp[] = {33636352, 16818176, 8409088};
  for (int i = 0; i < 3; ++i) {
    const int64_t t = int64_t{1} << i;
    EXPECT_DOUBLE_EQ(layer_activation_bytes(m, 1, t, false, Recompute::kNone), tp_alone[i]) << t;
    if (t > 1) {
      EXPECT_DOUBLE_EQ(layer_activation_bytes(m, 1, t, true, Recompute::kNone), with_sp[i]) << t;
    }
    // Selective recomputation drops the attention output (2 s b h / t); full keeps the input.
    EXPECT_DOUBLE_EQ(layer_activation_bytes(m, 1, t, false, Recompute::kSelective),
                     tp_alone[i] - 2.0 * 1024 * 1024 / static_cast<double>(t));
    EXPECT_DOUBLE_EQ(layer_activation_bytes(m, 1, t, true, Recompute::kFull),
                     2.0 * 1024 * 1024 / static_cast<double>(t));
  }
  // Linear in the micro-batch.
  EXPECT_DOUBLE_EQ(layer_activation_bytes(m, 3, 2, true, Recompute::kNone), 3 * with_sp[1]);
}

// The best prediction among a row's own (tp, pp), Megatron 2021's settings: full recomputation,
// no sequence parallelism (2022), no TP comm overlap; micro-batch and interleaving, which Table 1
// does not list, the planner's choice.
Prediction best_for_row(const Training& t, const Cluster& c, int64_t tp, int64_t pp) {
  Prediction best;
  best.step_time_s = -1;
  for (const Prediction& p : search(t, c)) {
    const Layout& l = p.layout;
    if (!p.fits || l.tp != tp || l.pp != pp || l.sequence_parallel || l.tp_comm_overlap ||
        l.recompute != Recompute::kFull) {
      continue;
    }
    if (best.step_time_s < 0 || p.step_time_s < best.step_time_s) best = p;
  }
  return best;
}

// Narayanan et al. 2021, Table 1 (A100 80GB DGX, seq 2048, vocab 51200, mixed precision): the
// same built-in cluster and curve for every row, nothing fitted per row.
TEST(Plan, NarayananTable1RowsWithin15Percent) {
  const Cluster a100 = builtin_cluster("a100-80g-dgx");
  struct Row {
    int64_t heads, hidden, layers, tp, pp, gpus, batch;
    double published;
  };
  const Row rows[] = {{24, 2304, 24, 1, 1, 32, 512, 137},       // 1.7B
                      {48, 6144, 40, 8, 1, 256, 1024, 135},     // 18.4B
                      {96, 12288, 80, 8, 8, 1536, 2304, 148}};  // 145.6B
  for (const Row& r : rows) {
    Training t;
    t.model = ModelShape::gpt(r.layers, r.hidden, r.heads, 2048, 51200);
    t.global_batch = r.batch;
    t.gpus = r.gpus;
    const Prediction p = best_for_row(t, a100, r.tp, r.pp);
    ASSERT_GT(p.step_time_s, 0) << "no fitting layout for hidden " << r.hidden;
    EXPECT_NEAR(p.tflops_per_gpu / r.published, 1.0, 0.15)
        << "hidden " << r.hidden << ": " << layout_name(p.layout) << " predicts "
        << p.tflops_per_gpu << " TFLOP/s per GPU, published " << r.published;
    // Megatron counts the recomputation: TFLOP/s per GPU is the 96 B s l h^2 formula's.
    EXPECT_NEAR(p.tflops_per_gpu,
                narayanan_flops_per_step(t.model, r.batch, true) / p.step_time_s / r.gpus / 1e12,
                1e-9 * p.tflops_per_gpu);
  }
}

TEST(Plan, SearchRanksFittingLayoutsFirstAndExplainsTheRest) {
  Training t;
  t.model = ModelShape::gpt(80, 12288, 96, 2048, 51200);  // 145.6B
  t.global_batch = 64;
  t.gpus = 64;
  const std::vector<Prediction> all = search(t, builtin_cluster("a100-80g-dgx"));
  ASSERT_FALSE(all.empty());
  ASSERT_TRUE(all.front().fits);
  bool seen_reject = false;
  for (size_t i = 0; i < all.size(); ++i) {
    const Layout& l = all[i].layout;
    EXPECT_EQ(l.tp * l.pp * l.dp, 64);
    if (!all[i].fits) {
      seen_reject = true;
      EXPECT_NE(all[i].reason.find("GiB per device"), std::string::npos) << all[i].reason;
    } else {
      EXPECT_FALSE(seen_reject) << "a fitting layout after a rejected one";
      if (i > 0) {
        EXPECT_GE(all[i].step_time_s, all[i - 1].step_time_s);
      }
    }
  }
  EXPECT_TRUE(seen_reject);  // tp 1 pp 1 cannot hold 145.6B parameters
  // The model alone (18 bytes per parameter) does not fit on one 80 GiB device.
  const Prediction one = predict(t, builtin_cluster("a100-80g-dgx"), Layout{1, 1, 64});
  EXPECT_FALSE(one.fits);
  EXPECT_GT(one.memory.parameters + one.memory.gradients + one.memory.optimizer, 18 * 145e9);
}

TEST(Plan, PipelineBubbleFollowsTheSchedule) {
  Training t;
  t.model = ModelShape::gpt(16, 1024, 16, 1024, 51200);
  t.global_batch = 32;
  t.gpus = 4;
  const Cluster c = builtin_cluster("h100-80g-dgx");
  const Prediction plain = predict(t, c, Layout{1, 4, 1, 1, 1});
  const Prediction interleaved = predict(t, c, Layout{1, 4, 1, 1, 2});
  EXPECT_DOUBLE_EQ(plain.bubble_fraction, 3.0 / 32);        // (p - 1) / m
  EXPECT_DOUBLE_EQ(interleaved.bubble_fraction, 3.0 / 64);  // (p - 1) / (m v)
  EXPECT_LT(interleaved.time.bubble, plain.time.bubble);
  EXPECT_GT(interleaved.time.pp_comm, plain.time.pp_comm);  // v times the p2p
}

TEST(Plan, ClusterFilesRoundTripAndBadOnesAreNamed) {
  const Cluster h100 = builtin_cluster("h100-80g-dgx");
  const Cluster back = cluster_from_json(cluster_to_json(h100), "round trip");
  EXPECT_EQ(back.peak_tflops_bf16, h100.peak_tflops_bf16);
  EXPECT_EQ(back.intra_node.bandwidth_gbps, h100.intra_node.bandwidth_gbps);
  EXPECT_EQ(back.devices_per_node, h100.devices_per_node);

  EXPECT_ERROR_WITH(builtin_cluster("b200"), "unknown cluster 'b200'", "a100-80g-dgx");
  EXPECT_ERROR_WITH(load_cluster_file("/nonexistent/cluster.json"), "/nonexistent/cluster.json");
  EXPECT_ERROR_WITH(cluster_from_json("{", "f.json"), "f.json", "not valid JSON");
  std::string text = cluster_to_json(h100);
  const std::string without =
      std::string(text).replace(text.find("\"memory_gib\""), 12, "\"memory_gb_x\"");
  EXPECT_ERROR_WITH(cluster_from_json(without, "f.json"), "missing field 'memory_gib'");
  const size_t at = text.find("\"peak_tflops_bf16\": ") + 20;
  const std::string negative = text.substr(0, at) + "-1" + text.substr(text.find(',', at));
  EXPECT_ERROR_WITH(cluster_from_json(negative, "f.json"), "peak_tflops_bf16", "-1",
                    "must not be negative");
  Cluster zero = h100;
  zero.devices_per_node = 0;
  EXPECT_ERROR_WITH(zero.check(), "devices_per_node (0) must be positive");
}

TEST(Plan, SizesThatDoNotDivideAreNamed) {
  Training t;
  t.model = ModelShape::gpt(24, 2304, 24, 2048, 51200);
  t.global_batch = 512;
  t.gpus = 8;
  const Cluster c = builtin_cluster("a100-80g-dgx");
  EXPECT_ERROR_WITH(predict(t, c, Layout{5, 1, 1}), "tp x pp x dp (5)", "GPU count (8)");
  t.gpus = 10;
  EXPECT_ERROR_WITH(predict(t, c, Layout{5, 2, 1}), "heads (24)", "tp (5)");
  t.gpus = 5;
  EXPECT_ERROR_WITH(predict(t, c, Layout{1, 5, 1}), "layers (24)", "pp x virtual stages (5)");
  t.gpus = 8;
  EXPECT_ERROR_WITH(predict(t, c, Layout{1, 1, 8, 3}), "global batch (512)",
                    "dp x micro-batch (24)");
  EXPECT_ERROR_WITH(predict(t, c, Layout{1, 2, 4, 1, 5}), "layers (24)", "(10)");
  t.model.heads = 0;
  EXPECT_ERROR_WITH(predict(t, c, Layout{1, 1, 8}), "--heads (0) must be positive");
  t.model = ModelShape::gpt(24, 2304, 24, 2048, 51200);
  t.global_batch = -4;
  EXPECT_ERROR_WITH(search(t, c), "--global-batch (-4) must be positive");
}

// Benchmark JSON made from known rates and an exact alpha-beta link: calibration recovers them.
TEST(Plan, CalibrationRecoversPeakCurveAndLink) {
  weft::testing::TempDir dir("weft-plan");
  {
    std::ofstream gemm(dir.file("bench_gemm.json"));
    gemm << R"({"context": {}, "benchmarks": [)";
    // Rates 160 GFLOP/s * d / (d + 128) (f32), d the smallest dimension (h here); bf16 400.
    const std::pair<int, const char*> shapes[] = {
        {256, "qkv_fwd"}, {512, "qkv_fwd"}, {1024, "fc1_fwd"}, {2048, "fc1_fwd"}};
    bool first = true;
    for (const auto& [h, op] : shapes) {
      for (double scale : {1.0, 0.7}) {  // a slower repetition: the best one counts
        const double rate = scale * 160 * h / (h + 128.0);
        gemm << (first ? "" : ",") << R"({"name": "BM_GemmCpu/weft/f32/T2048_h)" << h << R"(_tp1/)"
             << op << R"(", "run_type": "iteration", "GFLOP/s": )" << rate << "}";
        first = false;
      }
    }
    gemm << R"(, {"name": "BM_GemmCpu/weft/bf16/T2048_h2048_tp1/fc1_fwd/real_time", "GFLOP/s": )"
         << 400 * 2048 / 2176.0 << "}";
    gemm << R"(, {"name": "BM_GemmCpu/weft/f32/T2048_h64_tp1/fc1_fwd", "run_type": "aggregate",)"
         << R"( "GFLOP/s": 1}]})";
  }
  {
    std::ofstream coll(dir.file("bench_collectives.json"));
    coll << R"({"context": {"ranks": "2"}, "benchmarks": [)";
    const Link truth{5, 20};  // 5 GB/s, 20 us
    bool first = true;
    for (double bytes : {16384.0, 262144.0, 4194304.0}) {
      const double us = collective_time_s(Collective::kAllReduce, bytes, 2, truth) * 1e6;
      coll << (first ? "" : ",") << R"({"name": "BM_AllReduce/mpi/f32/x", "size": )" << bytes
           << R"(, "real_time": )" << us << R"(, "time_unit": "us"})";
      first = false;
    }
    coll << "]}";
  }
  const Cluster c =
      calibrate_cluster(dir.file("bench_gemm.json"), dir.file("bench_collectives.json"), 10, 16);
  EXPECT_NEAR(c.peak_tflops_f32, 0.16, 1e-9);  // the curve's asymptote
  EXPECT_NEAR(c.gemm_half_dim, 128, 1e-9);
  EXPECT_EQ(c.gemm_efficiency_max, 1);
  // The JSON holds 6 significant digits.
  EXPECT_NEAR(c.peak_tflops_bf16, 0.4, 1e-5);
  EXPECT_NEAR(c.intra_node.bandwidth_gbps, 5, 1e-4);
  EXPECT_NEAR(c.intra_node.latency_us, 20, 1e-3);
  EXPECT_TRUE(c.shared_node);
  EXPECT_ERROR_WITH(
      calibrate_cluster(dir.file("missing.json"), dir.file("bench_collectives.json"), 10, 16),
      "missing.json");
}

// A shared node (CPU ranks) with one measured rate per GEMM role.
Cluster table_cluster(double weight_gradient_tflops) {
  Cluster c;
  c.name = "table";
  c.peak_tflops_bf16 = c.peak_tflops_f32 = 0.2;
  c.gemm_efficiency_max = 1;
  c.gemm_half_dim = 16;
  c.memory_gib = 16;
  c.memory_bandwidth_gbps = 10;
  c.devices_per_node = 1024;
  c.intra_node = c.inter_node = {5, 10};
  c.shared_node = true;
  c.gemm_table = {{GemmRole::kForward, false, 256, 768, 256, 0.1},
                  {GemmRole::kBackwardData, false, 256, 256, 768, 0.1},
                  {GemmRole::kBackwardWeight, false, 768, 256, 256, weight_gradient_tflops}};
  return c;
}

// An f32 run of a small GPT (hidden 128, 4 heads, seq 64, vocab 256) on `gpus` ranks.
Training small_f32_run(int64_t layers, int64_t gpus) {
  Training t;
  t.model = ModelShape::gpt(layers, 128, 4, 64, 256);
  t.global_batch = 8;
  t.gpus = gpus;
  t.bf16 = false;
  return t;
}

TEST(Plan, GemmTableRolesPriceTheirOwnGemms) {
  const Training t = small_f32_run(2, 1);
  const Layout l{1, 1, 1, 2, 1, false, false, Recompute::kNone};
  // Every GEMM takes its role's one measured rate: forward F at 0.1, data gradient F at 0.1,
  // weight gradient F at 0.05 TFLOP/s: 4 F / 0.1 against 3 F / 0.1 when all run at 0.1.
  const double slow = predict(t, table_cluster(0.05), l).time.gemm;
  const double even = predict(t, table_cluster(0.1), l).time.gemm;
  EXPECT_NEAR(slow / even, 4.0 / 3.0, 1e-12);
  // The layers' GEMM FLOPs (the head is priced apart): 2 layers, 4 micro-batches of 128 tokens.
  const double f = 2.0 * 128 * (384 + 128 + 512 + 512) * 128;
  EXPECT_NEAR(even, 2 * 4 * 3 * f / 0.1e12, 1e-9 * even);
  // The table and the attention curve survive a cluster file.
  Cluster c = table_cluster(0.05);
  c.attention_efficiency_max = 0.3;
  c.attention_half_dim = 8;
  const Cluster back = cluster_from_json(cluster_to_json(c), "round trip");
  ASSERT_EQ(back.gemm_table.size(), 3u);
  EXPECT_EQ(back.gemm_table[2].role, GemmRole::kBackwardWeight);
  EXPECT_EQ(back.gemm_table[2].tflops, 0.05);
  EXPECT_EQ(back.attention_half_dim, 8);
  EXPECT_EQ(predict(t, back, l).step_time_s, predict(t, c, l).step_time_s);
  std::string text = cluster_to_json(c);
  const std::string bad_role = std::string(text).replace(text.find("backward_weight"), 15, "sideways");
  EXPECT_ERROR_WITH(cluster_from_json(bad_role, "f.json"), "f.json", "role 'sideways'");
  c.gemm_table[1].k = 0;
  EXPECT_ERROR_WITH(c.check(), "gemm_table[1]", "k 0");
}

TEST(Plan, AttentionCurveIsFittedToMeasuredTimes) {
  // Times made from efficiency 0.4 d / (d + 24) of a 0.2 TFLOP/s peak, in the model's FLOPs
  // (forward + backward 12 b s^2 h).
  Cluster c = table_cluster(0.1);
  std::vector<AttentionSample> samples;
  for (const auto& [hidden, heads] : {std::pair{192, 12}, {320, 10}, {512, 8}}) {
    const double d = static_cast<double>(hidden / heads);
    const double flops = 12.0 * 2 * 128 * 128 * hidden;
    samples.push_back({hidden, heads, 128, 2, flops / (0.2e12 * 0.4 * d / (d + 24))});
  }
  fit_attention(c, samples);
  EXPECT_NEAR(c.attention_efficiency_max, 0.4, 1e-9);
  EXPECT_NEAR(c.attention_half_dim, 24, 1e-9);
  samples[0].heads = 7;
  EXPECT_ERROR_WITH(fit_attention(c, samples), "heads dividing hidden", "heads 7");
}

TEST(Plan, RanksBeyondTheCoresLendTheirBubble) {
  const Training t = small_f32_run(8, 4);
  const Layout l{1, 4, 1, 1, 1, false, false, Recompute::kNone};
  Cluster own_cores = table_cluster(0.1), two_cores = own_cores;
  two_cores.devices_per_node = 2;
  const Prediction a = predict(t, own_cores, l), b = predict(t, two_cores, l);
  // A rank per core: the 1F1B bubble, (p - 1) / m micro-batch slots, is idle.
  const double busy = a.step_time_s - a.time.bubble;
  EXPECT_DOUBLE_EQ(a.bubble_fraction, 3.0 / 8.0);
  EXPECT_GT(a.time.bubble, 0.25 * busy);
  // 4 ranks on 2 cores: the step is the busy time or the whole critical path at a core per
  // rank, whichever is longer: max(busy, (busy + bubble) x 2 / 4).
  EXPECT_NEAR(b.step_time_s, std::max(busy, a.step_time_s * 2 / 4), 1e-12 * busy);
  EXPECT_LT(b.time.bubble, a.time.bubble);
}

}  // namespace
}  // namespace weft::plan
