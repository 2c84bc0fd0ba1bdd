// weft_plan: the layout planner. Ranks every (tp, pp, dp, micro-batch, virtual stages, sequence
// parallelism, recomputation, TP comm overlap) that fits a GPT run on a cluster by predicted step
// time, or evaluates one layout; no GPU or MPI needed.
//
//   weft_plan --cluster a100-80g-dgx --layers 80 --hidden 12288 --heads 96 --seq-len 2048
//             --vocab 51200 --global-batch 2304 --gpus 1536
//   weft_plan --cluster this-machine --calibrate bench-out --save-cluster me.json ...
//   weft_plan --cluster me.json --tp 2 --pp 2 --micro-batch 4 --recompute full --json ...
//
// Bad input (unknown cluster, malformed cluster file, sizes that do not divide, a model that fits
// no layout) prints why and exits with status 2.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/flags.hpp"
#include "common/plan_util.hpp"
#include "weft/gpt_checkpoint.hpp"
#include "weft/plan.hpp"

namespace {

namespace plan = weft::plan;

struct Args {
  std::string preset = "gpt2", cluster = "a100-80g-dgx", calibrate, save_cluster, checkpoint;
  std::string dtype = "bf16", recompute;
  int64_t layers = 24, hidden = 2304, heads = 24, kv_heads = 0, ffn_hidden = 0, seq_len = 2048;
  int64_t vocab = 51200, global_batch = 512, gpus = 8, top = 10;
  int64_t tp = 0, pp = 0, micro_batch = 0, virtual_stages = 0;
  bool sequence_parallel = false, tp_comm_overlap = false, json = false,
       overlap_grad_reduce = false;
};

weft::examples::Flags make_flags(Args& a) {
  weft::examples::Flags f("weft_plan",
                          "Predict step time, throughput and memory of GPT training layouts on a "
                          "cluster; rank those that fit.");
  f.add("preset", &a.preset, "gpt2 or llama (norm, MLP, positions, kv heads as gpt_train's)");
  f.add("layers", &a.layers, "transformer layers", 1, 1 << 20);
  f.add("hidden", &a.hidden, "hidden size", 1, 1 << 20);
  f.add("heads", &a.heads, "attention heads", 1, 1 << 16);
  f.add("kv-heads", &a.kv_heads, "key/value heads (0: preset default)", 0, 1 << 16);
  f.add("ffn-hidden", &a.ffn_hidden, "MLP hidden size (0: preset default)", 0, 1 << 24);
  f.add("seq-len", &a.seq_len, "sequence length", 1, 1 << 24);
  f.add("vocab", &a.vocab, "vocabulary size", 1, 1 << 24);
  f.add("checkpoint", &a.checkpoint, "take the model from this gpt_train checkpoint instead");
  f.add("global-batch", &a.global_batch, "sequences per optimizer step", 1, 1 << 30);
  f.add("gpus", &a.gpus, "devices (ranks) in the run", 1, 1 << 24);
  f.add("dtype", &a.dtype, "bf16 (16-bit compute, f32 master weights) or f32");
  f.add("cluster", &a.cluster,
        "a100-80g-dgx, h100-80g-dgx, v100-32g-dgx2, this-machine (needs --calibrate), or a "
        "cluster JSON file");
  f.add("calibrate", &a.calibrate,
        "directory with bench_gemm.json, bench_collectives.json and (optional) "
        "bench_gpt_layer.json measured here (this-machine; scripts/scale writes them)");
  f.add("save-cluster", &a.save_cluster, "write the cluster (e.g. the calibrated one) as JSON");
  f.add("tp", &a.tp, "evaluate one layout: tensor-parallel size (with --pp; 0: search)", 0, 1 << 16);
  f.add("pp", &a.pp, "evaluate one layout: pipeline stages (with --tp; 0: search)", 0, 1 << 16);
  f.add("micro-batch", &a.micro_batch, "sequences per micro-batch (0: search / 1 with --tp)", 0,
        1 << 20);
  f.add("virtual-stages", &a.virtual_stages,
        "model chunks per pipeline rank (interleaved; 0: search / 1 with --tp)", 0, 1024);
  f.add("recompute", &a.recompute, "none, selective or full (empty: search / none with --tp)");
  f.add("sequence-parallel", &a.sequence_parallel, "with --tp: sequence parallelism");
  f.add("tp-comm-overlap", &a.tp_comm_overlap, "with --tp: overlap TP communication with GEMMs");
  f.add("overlap-grad-reduce", &a.overlap_grad_reduce,
        "assume the DP all-reduce overlaps the last backward");
  f.add("top", &a.top, "layouts to print (ranked; 0: all)", 0, 1 << 20);
  f.add("json", &a.json, "print one JSON object per layout instead of a table");
  return f;
}

plan::Cluster load_cluster(const Args& a) {
  if (a.cluster == "this-machine") {
    WEFT_CHECK(!a.calibrate.empty(),
               "--cluster this-machine needs --calibrate DIR (bench_gemm.json and "
               "bench_collectives.json from scripts/scale or scripts/bench), or a saved cluster "
               "file");
    // bench_gpt_layer.json (scripts/scale): the tiny layers' attention, for its curve.
    const std::string layer_bench = a.calibrate + "/bench_gpt_layer.json";
    const std::vector<plan::AttentionSample> attention =
        std::filesystem::exists(layer_bench) ? plan::load_attention_samples(layer_bench)
                                             : std::vector<plan::AttentionSample>{};
    return plan::calibrate_cluster(
        a.calibrate + "/bench_gemm.json", a.calibrate + "/bench_collectives.json",
        weft::examples::measure_copy_bandwidth_gbps(), weft::examples::memory_total_gib(), attention);
  }
  if (a.cluster.find(".json") != std::string::npos) return plan::load_cluster_file(a.cluster);
  return plan::builtin_cluster(a.cluster);
}

plan::ModelShape load_model(const Args& a) {
  weft::GPTConfig config;
  int64_t seq = a.seq_len;
  if (!a.checkpoint.empty()) {
    config = weft::read_checkpoint_info(a.checkpoint).config;
    seq = config.max_seq;
  } else {
    config = weft::GPTConfig::preset(a.preset);
    config.layers = a.layers;
    config.hidden = a.hidden;
    config.heads = a.heads;
    config.max_seq = a.seq_len;
    config.vocab_size = a.vocab;
    if (a.kv_heads != 0) config.kv_heads = a.kv_heads;
    if (a.ffn_hidden != 0) config.ffn_hidden = a.ffn_hidden;
  }
  config.finalize(1);
  return weft::examples::shape_of(config, seq);
}

void print_table(const std::vector<plan::Prediction>& ps, size_t top) {
  std::printf("%4s %-42s %9s %11s %8s %6s %9s  %s\n", "rank", "layout", "step s", "tokens/s",
              "TFLOP/s", "MFU", "GiB/GPU", "time: gemm attn elem tp pp bubble dp opt (s)");
  size_t shown = 0;
  for (size_t i = 0; i < ps.size() && (top == 0 || shown < top); ++i) {
    const plan::Prediction& p = ps[i];
    if (!p.fits) break;
    const plan::StepTime& t = p.time;
    std::printf(
        "%4zu %-42s %9.4g %11.4g %8.4g %5.1f%% %9.3g  %.3g %.3g %.3g %.3g %.3g %.3g %.3g %.3g\n",
        i + 1, plan::layout_name(p.layout).c_str(), p.step_time_s, p.tokens_per_s, p.tflops_per_gpu,
        100 * p.mfu, p.memory.total() / 1073741824.0, t.gemm, t.attention, t.elementwise, t.tp_comm,
        t.pp_comm, t.bubble, t.dp_comm, t.optimizer);
    ++shown;
  }
}

int run(const Args& a) {
  WEFT_CHECK(a.dtype == "bf16" || a.dtype == "f32", "--dtype must be bf16 or f32, got '", a.dtype,
             "'");
  const plan::Cluster cluster = load_cluster(a);
  if (!a.save_cluster.empty()) {
    std::ofstream out(a.save_cluster);
    WEFT_CHECK(out.good(), "cannot write --save-cluster file '", a.save_cluster, "'");
    out << plan::cluster_to_json(cluster) << "\n";
  }
  plan::Training t;
  t.model = load_model(a);
  t.global_batch = a.global_batch;
  t.gpus = a.gpus;
  t.bf16 = a.dtype == "bf16";
  t.overlap_grad_reduce = a.overlap_grad_reduce;
  t.check();
  if (!a.json) {
    std::printf(
        "cluster %s: %s\nmodel: %lld layers, hidden %lld, heads %lld (kv %lld), ffn %lld, "
        "seq %lld, vocab %lld, %.3g parameters; global batch %lld on %lld devices, %s\n",
        cluster.name.c_str(), cluster.description.c_str(), static_cast<long long>(t.model.layers),
        static_cast<long long>(t.model.hidden), static_cast<long long>(t.model.heads),
        static_cast<long long>(t.model.kv_heads), static_cast<long long>(t.model.ffn_hidden),
        static_cast<long long>(t.model.seq_len), static_cast<long long>(t.model.vocab),
        t.model.parameter_count(), static_cast<long long>(t.global_batch),
        static_cast<long long>(t.gpus), a.dtype.c_str());
  }

  std::vector<plan::Prediction> ps;
  if (a.tp > 0 || a.pp > 0) {  // one layout
    WEFT_CHECK(a.tp > 0 && a.pp > 0, "--tp and --pp go together (got tp ", a.tp, ", pp ", a.pp,
               ")");
    WEFT_CHECK(a.gpus % (a.tp * a.pp) == 0, "--gpus (", a.gpus, ") must be divisible by tp x pp (",
               a.tp * a.pp, ")");
    plan::Layout l{
        a.tp,
        a.pp,
        a.gpus / (a.tp * a.pp),
        a.micro_batch > 0 ? a.micro_batch : 1,
        a.virtual_stages > 0 ? a.virtual_stages : 1,
        a.sequence_parallel,
        a.tp_comm_overlap,
        a.recompute.empty() ? plan::Recompute::kNone : plan::parse_recompute(a.recompute)};
    ps.push_back(plan::predict(t, cluster, l));
  } else {
    const bool fixed_recompute = !a.recompute.empty();
    const plan::Recompute r =
        fixed_recompute ? plan::parse_recompute(a.recompute) : plan::Recompute::kNone;
    for (plan::Prediction& p : plan::search(t, cluster)) {
      const plan::Layout& l = p.layout;
      if ((fixed_recompute && l.recompute != r) ||
          (a.micro_batch > 0 && l.micro_batch != a.micro_batch) ||
          (a.virtual_stages > 0 && l.virtual_stages != a.virtual_stages)) {
        continue;
      }
      ps.push_back(std::move(p));
    }
  }
  if (a.json) {
    for (size_t i = 0; i < ps.size() && (a.top == 0 || i < static_cast<size_t>(a.top)); ++i) {
      std::printf("%s\n", plan::prediction_json(ps[i]).c_str());
    }
  } else {
    print_table(ps, static_cast<size_t>(a.top));
  }
  if (ps.empty() || !ps.front().fits) {
    std::fprintf(
        stderr, "weft_plan: no layout fits: the smallest, %s, %s (a device holds %.3g GiB)\n",
        ps.empty() ? "-" : plan::layout_name(ps.front().layout).c_str(),
        ps.empty() ? "none matches the flags" : ps.front().reason.c_str(), cluster.memory_gib);
    return 2;
  }
  if (!a.json) {
    size_t rejected = 0;
    for (const plan::Prediction& p : ps) rejected += p.fits ? 0 : 1;
    std::printf("%zu layouts fit, %zu do not", ps.size() - rejected, rejected);
    for (const plan::Prediction& p : ps) {
      if (!p.fits) {
        std::printf("; the smallest that does not, %s, %s", plan::layout_name(p.layout).c_str(),
                    p.reason.c_str());
        break;
      }
    }
    std::printf("\n");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Args args;
    weft::examples::Flags flags = make_flags(args);
    if (!flags.parse(argc, argv)) {
      std::printf("%s", flags.usage().c_str());
      return 0;
    }
    return run(args);
  } catch (const std::exception& e) {  // bad flags, cluster files, sizes: all the user's input
    std::fprintf(stderr, "weft_plan: %s\n", e.what());
    return 2;
  }
}
