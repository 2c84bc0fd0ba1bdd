// bench_gpt_layer: one TransformerLayer forward + backward per iteration, in tokens/s, achieved
// FLOP/s and the share of the time spent in GEMMs.
//
// What it measures: TransformerLayer::forward then TransformerLayer::backward (parameter
// gradients accumulate, as in gradient accumulation; dropout off) of both presets, "gpt2"
// (LayerNorm, GeLU, biases, multi-head) and "llama" (RMSNorm, rotary, SwiGLU, grouped-query
// attention with kv_heads = heads / 2, no biases), at these sizes (tokens = seq * batch):
//   cpu:  f32 and bf16, small:  hidden 512, 8 heads (llama: 4 kv heads), seq 256, batch 2
//                       long:   gpt2 only, hidden 512, 8 heads, seq 512 and 1024, batch 1
//                       tiny:   gpt2 f32 only, seq 128, batch 2, hidden 192 (12 heads) and
//                               320 (10 heads)
//   cuda: bf16, medium: hidden 2048, 16 heads, seq 2048, batch 1
//               large:  hidden 4096, 32 heads, seq 2048, batch 1
// The CUDA cases are registered only in a CUDA build with a visible GPU (on every rank).
//
// Ranks: run alone, the layer has tensor-parallel size 1 and the self communicator
// (weft::make_self_communicator()). Under `mpirun -np N` the N ranks form one TP group of size N:
// the MPI world communicator for the CPU backend, NCCL for the CUDA one (when every rank of a
// node has a GPU of its own; otherwise the CUDA cases are skipped). Iteration counts are fixed,
// after one warm-up step: cpu 10, cuda 20 (Google Benchmark's adaptive count would differ
// between ranks and hang the collectives); every iteration starts after a barrier and its time
// is the slowest rank's (MPI_MAX). Rank 0 alone prints and writes JSON. --layer_iterations=N
// overrides the counts (all ranks alike). On a shared machine run --layer_rounds=3 (as
// scripts/bench does): the whole list runs three times in turn, each result appears once per
// round (counter `round`), and the summary takes the best round. --benchmark_repetitions works
// too, but repeats one case back to back.
//
// Counters (per benchmark; hidden, heads, seq, batch, tp and tokens describe the case):
//   tokens_per_s      seq * batch / time of one step (forward + backward + synchronize)
//   GFLOP/s           layer FLOPs per token * tokens / time: the achieved FLOP/s of the whole TP
//                     group (divide by the TP size for one device). The FLOP count is the layer's
//                     share of GPTConfig::flops_per_token (training: forward + backward):
//                       6 * (layer matmul params) + 6 * heads * head_dim * seq       per token,
//                     matmul params = hidden * (heads + 2 kv_heads) * head_dim    (QKV)
//                                   + heads * head_dim * hidden                    (output proj)
//                                   + (2 for GeLU, 3 for SwiGLU) * hidden * ffn_hidden,
//                     i.e. 2 FLOPs per multiply-add, x3 for forward + backward (data and weight
//                     gradients), and causal attention's QK^T and PV at seq/2 keys on average.
//                     Biases, norms, softmax and elementwise ops are not counted (as Megatron).
//   gemm_share_pct    100 * wall time inside Backend::gemm / step time (mean over ranks), timed
//                     by TimingBackend (bench/timing_backend.hpp). The rest is attention (a
//                     fused op, not a GEMM here), norms, elementwise ops, allocation and TP
//                     communication. On CUDA each timed GEMM is bracketed by stream syncs, which
//                     would slow the step; so tokens/s and GFLOP/s come from untimed iterations
//                     and the share from as many timed ones run after them.
//   gemm_GFLOP/s      2 m n k of the rank's GEMMs / time inside them: how fast the GEMMs ran
//                     within the layer (compare bench_gemm), mean over ranks.
//   gemm_calls        GEMMs per step and rank.
//   gemm_flops_pct    100 * GEMM FLOPs (all ranks) / the layer FLOPs above: the counted work
//                     the GEMMs do; the attention core, which is not a GEMM, is the remainder.
//   attn_share_pct    100 * wall time inside Backend::attention + attention_backward / step time.
//   attn_ms           that time per step in milliseconds (forward + backward), mean over ranks.
//   attn_GFLOP/s      the attention core's counted FLOPs (6 b h s^2 d: QK^T and PV forward, four
//                     products backward, causal; the backward's recomputation not counted) / the
//                     time inside it, mean over ranks.
//   attn_vs_gemm_pct  100 * attn_GFLOP/s / gemm_GFLOP/s: the fused attention's rate as a share of
//                     the same layer's GEMM rate at the same dtype.
// After the run rank 0 prints a summary table (best of rounds or repetitions for throughput,
// median GEMM share).
//
// Run (or scripts/bench OUT_DIR, which also builds; as root mpirun also needs
// OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 in the environment):
//   build/bin/bench_gpt_layer --benchmark_out=layer.json --benchmark_out_format=json
//   OMP_NUM_THREADS=1 mpirun -np 2 -x OMP_NUM_THREADS build/bin/bench_gpt_layer
//       --benchmark_out=layer_tp2.json --benchmark_out_format=json      (one command line)
//   build/bin/bench_gpt_layer --benchmark_filter='cpu/llama/'    (a subset)
#include <benchmark/benchmark.h>
#include <mpi.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "bench_mpi.hpp"
#include "timing_backend.hpp"
#include "weft/backend.hpp"
#include "weft/comm.hpp"
#include "weft/config.hpp"
#include "weft/dropout.hpp"
#include "weft/error.hpp"
#include "weft/gpt.hpp"
#include "weft/mappings.hpp"
#include "weft/runtime.hpp"
#include "weft/tensor.hpp"

#if WEFT_HAVE_CUDA
#include <cuda_runtime.h>
#include <nccl.h>
#endif

namespace {

using weft::Backend;
using weft::Communicator;
using weft::DType;
using weft::GPTConfig;
using weft::Shape;
using weft::Tensor;
using weft::bench::TimingBackend;

// One benchmarked layer: a preset at one size and dtype on one device.
struct LayerCase {
  std::string device;  // "cpu" or "cuda"
  std::string size;    // "small", "medium", "large"
  std::string preset;  // "gpt2" or "llama"
  DType dtype;
  int64_t hidden, heads, kv_heads;  // kv_heads 0: the preset's default
  int64_t seq, batch;
  int64_t iterations;
  std::string name;  // registered name; set by register_case
};

// Where a case runs: the backend and the TP communicator whose buffers live on its device.
struct Target {
  Backend* backend = nullptr;
  Communicator* tp = nullptr;
};

GPTConfig layer_config(const LayerCase& c, int tp) {
  GPTConfig config = GPTConfig::preset(c.preset);
  config.layers = 1;  // only the residual projections' init scale depends on it
  config.hidden = c.hidden;
  config.heads = c.heads;
  if (c.kv_heads != 0) config.kv_heads = c.kv_heads;
  config.max_seq = c.seq;
  config.dtype = c.dtype;
  config.dropout = 0.0f;
  config.finalize(tp);
  return config;
}

// Training FLOPs per token of one layer (see the header comment). Checked against the library's
// own count: GPTConfig::flops_per_token of a one-layer model less its LM head.
double layer_flops_per_token(const GPTConfig& config, int64_t seq) {
  const int64_t d = config.head_dim();
  const double matmul_params =
      static_cast<double>(config.hidden * (config.heads + 2 * config.kv_heads) * d +
                          config.heads * d * config.hidden) +
      (config.activation == weft::MlpActivation::kGelu ? 2.0 : 3.0) *
          static_cast<double>(config.hidden * config.ffn_hidden);
  const double flops = 6.0 * matmul_params + 6.0 * static_cast<double>(config.heads * d * seq);
  GPTConfig one_layer = config;
  one_layer.layers = 1;
  const double library =
      one_layer.flops_per_token(seq) - 6.0 * static_cast<double>(config.vocab_size * config.hidden);
  WEFT_CHECK(std::abs(flops - library) <= 1e-9 * flops, "bench_gpt_layer: layer FLOPs ", flops,
             " per token differ from GPTConfig::flops_per_token's ", library);
  return flops;
}

double all_reduce_double(double value, MPI_Op op) {
  double result = 0.0;
  MPI_Allreduce(&value, &result, 1, MPI_DOUBLE, op, MPI_COMM_WORLD);
  return result;
}

void bm_layer(benchmark::State& state, const LayerCase& c, const Target& target) {
  TimingBackend timed(*target.backend);
  Communicator& tp = *target.tp;
  const GPTConfig config = layer_config(c, tp.size());
  weft::TransformerLayer layer(weft::ParallelContext{timed, tp}, config, 0);
  const int64_t tokens = c.seq * c.batch;
  // The input and the output gradient are replicated across TP ranks: the same seeds on all.
  Tensor x(timed, Shape{tokens, c.hidden}, c.dtype);
  Tensor grad_y(timed, Shape{tokens, c.hidden}, c.dtype);
  weft::bench::fill_input(timed, x, 1);
  weft::bench::fill_input(timed, grad_y, 2);
  weft::DropoutRng rng(config.seed, tp.rank());
  const std::function<void()> step = [&] {
    weft::TransformerLayer::Saved saved;
    Tensor y = layer.forward(x, c.seq, c.batch, rng, saved);
    Tensor grad_x = layer.backward(grad_y, saved);
    timed.synchronize();
  };
  // A first step: oneDNN primitives, cuBLASLt heuristics and workspaces, first touch of the
  // parameter gradients.
  timed.set_timing(false);
  step();

  // GEMMs are timed in the measured steps on the CPU (two clock reads each), in separate steps
  // on a GPU (the stream syncs around each GEMM would slow the measured ones).
  const bool separate_timing = !timed.device().is_cpu();
  timed.set_timing(!separate_timing);
  double slowest_total = 0.0, own_total = 0.0, gemm_seconds = 0.0, gemm_flops = 0.0;
  double attn_seconds = 0.0, attn_flops = 0.0;
  int64_t gemm_calls = 0;
  const auto timed_step = [&](bool measured) {
    timed.reset();
    MPI_Barrier(MPI_COMM_WORLD);
    const double start = MPI_Wtime();
    step();
    const double mine = MPI_Wtime() - start;
    const double slowest = all_reduce_double(mine, MPI_MAX);
    if (measured) state.SetIterationTime(slowest);
    if (measured) slowest_total += slowest;
    if (timed.timing()) {
      own_total += mine;
      gemm_seconds += timed.gemm_seconds();
      gemm_flops += timed.gemm_flops();
      gemm_calls = timed.gemm_calls();
      attn_seconds += timed.attention_seconds();
      attn_flops += timed.attention_flops();
    }
  };
  for (auto _ : state) timed_step(true);
  if (separate_timing) {  // after the loop: outside the benchmark's time (manual anyway)
    timed.set_timing(true);
    for (int64_t i = 0; i < static_cast<int64_t>(state.iterations()); ++i) timed_step(false);
  }

  const double steps = static_cast<double>(state.iterations());
  const double step_seconds = slowest_total / steps;
  const double flops_per_step = layer_flops_per_token(config, c.seq) * static_cast<double>(tokens);
  const int n = tp.size();
  state.counters["tokens_per_s"] = static_cast<double>(tokens) / step_seconds;
  state.counters["GFLOP/s"] = flops_per_step / step_seconds * 1e-9;
  state.counters["gemm_share_pct"] =
      all_reduce_double(100.0 * gemm_seconds / own_total, MPI_SUM) / n;
  state.counters["gemm_GFLOP/s"] = all_reduce_double(gemm_flops / gemm_seconds * 1e-9, MPI_SUM) / n;
  state.counters["gemm_calls"] = static_cast<double>(gemm_calls);
  state.counters["gemm_flops_pct"] =
      100.0 * all_reduce_double(gemm_flops / steps, MPI_SUM) / flops_per_step;
  const double gemm_rate = gemm_flops / gemm_seconds, attn_rate = attn_flops / attn_seconds;
  state.counters["attn_share_pct"] =
      all_reduce_double(100.0 * attn_seconds / own_total, MPI_SUM) / n;
  state.counters["attn_ms"] = all_reduce_double(1e3 * attn_seconds / steps, MPI_SUM) / n;
  state.counters["attn_GFLOP/s"] = all_reduce_double(attn_rate * 1e-9, MPI_SUM) / n;
  state.counters["attn_vs_gemm_pct"] =
      all_reduce_double(100.0 * attn_rate / gemm_rate, MPI_SUM) / n;
  state.counters["tp"] = n;
  state.counters["tokens"] = static_cast<double>(tokens);
  state.counters["hidden"] = static_cast<double>(c.hidden);
  state.counters["heads"] = static_cast<double>(config.heads);
  state.counters["seq"] = static_cast<double>(c.seq);
  state.counters["batch"] = static_cast<double>(c.batch);
}

std::string case_name(const LayerCase& c, int tp) {
  return "BM_GptLayer/" + c.device + "/" + c.preset + "/" + weft::dtype_name(c.dtype) + "/h" +
         std::to_string(c.hidden) + "_s" + std::to_string(c.seq) + "_b" + std::to_string(c.batch) +
         "_tp" + std::to_string(tp);
}

void register_case(const LayerCase& c, const Target& target, int64_t iterations_override,
                   int round) {
  const int64_t iterations = iterations_override > 0 ? iterations_override : c.iterations;
  benchmark::RegisterBenchmark(c.name.c_str(),
                               [c, target, round](benchmark::State& state) {
                                 // A benchmark that throws is reported as failed; all ranks
                                 // throw alike for a bad size, so none is left waiting.
                                 try {
                                   bm_layer(state, c, target);
                                   state.counters["round"] = round;
                                 } catch (const weft::Error& e) {
                                   state.SkipWithError(e.what());
                                 }
                               })
      ->Iterations(iterations)
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
}

std::vector<LayerCase> cpu_cases() {
  std::vector<LayerCase> cases;
  for (const char* preset : {"gpt2", "llama"}) {
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      const bool llama = std::strcmp(preset, "llama") == 0;
      cases.push_back({"cpu", "small", preset, dtype, 512, 8, llama ? 4 : 0, 256, 2, 10, ""});
    }
  }
  // Tiny layers at head sizes 16 and 32: the layout planner's calibration (scripts/scale) fits
  // its attention rate to them.
  cases.push_back({"cpu", "tiny", "gpt2", DType::kF32, 192, 12, 0, 128, 2, 20, ""});
  cases.push_back({"cpu", "tiny", "gpt2", DType::kF32, 320, 10, 0, 128, 2, 20, ""});
  // Long sequences, where the attention core is most of the step.
  for (int64_t seq : {512, 1024}) {
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      cases.push_back({"cpu", "long", "gpt2", dtype, 512, 8, 0, seq, 1, 10, ""});
    }
  }
  return cases;
}

[[maybe_unused]] std::vector<LayerCase> cuda_cases() {
  std::vector<LayerCase> cases;
  for (const char* preset : {"gpt2", "llama"}) {
    cases.push_back({"cuda", "medium", preset, DType::kBF16, 2048, 16, 0, 2048, 1, 20, ""});
    cases.push_back({"cuda", "large", preset, DType::kBF16, 4096, 32, 0, 2048, 1, 20, ""});
  }
  return cases;
}

void print_summary(const weft::bench::CollectingReporter& reporter,
                   const std::vector<LayerCase>& cases, int tp) {
  std::printf(
      "\nTransformerLayer forward + backward, tp %d (throughput: best of rounds or "
      "repetitions; GEMM and attention columns: median)\n",
      tp);
  std::printf("%-5s %-6s %-6s %-5s %6s %5s %5s %4s %12s %10s %10s %10s %8s %8s %10s %11s\n", "dev",
              "size", "preset", "dtype", "hidden", "seq", "batch", "reps", "tokens/s", "GFLOP/s",
              "GEMM %", "GEMM GF/s", "attn %", "attn ms", "attn GF/s", "attn/GEMM %");
  for (const LayerCase& c : cases) {
    const double tokens = reporter.max(c.name, "tokens_per_s");
    if (tokens < 0) continue;  // filtered out or failed
    std::printf(
        "%-5s %-6s %-6s %-5s %6lld %5lld %5lld %4zu %12.0f %10.1f %10.1f %10.1f %8.1f %8.2f %10.1f "
        "%11.1f\n",
        c.device.c_str(), c.size.c_str(), c.preset.c_str(), weft::dtype_name(c.dtype),
        static_cast<long long>(c.hidden), static_cast<long long>(c.seq),
        static_cast<long long>(c.batch), reporter.values(c.name, "tokens_per_s").size(), tokens,
        reporter.max(c.name, "GFLOP/s"), reporter.median(c.name, "gemm_share_pct"),
        reporter.median(c.name, "gemm_GFLOP/s"), reporter.median(c.name, "attn_share_pct"),
        reporter.median(c.name, "attn_ms"), reporter.median(c.name, "attn_GFLOP/s"),
        reporter.median(c.name, "attn_vs_gemm_pct"));
  }
}

struct LayerFlags {
  int64_t iterations = 0;  // --layer_iterations=N in [0, 2^30]: every case's count (0: keep)
  int rounds = 1;          // --layer_rounds=N in [1, 1000]: run the whole list N times
};

// Takes this program's flags out of argv (Google Benchmark rejects flags it does not know).
LayerFlags take_layer_flags(int* argc, char** argv) {
  LayerFlags flags;
  int kept = 1;
  for (int i = 1; i < *argc; ++i) {
    if (std::strncmp(argv[i], "--layer_iterations=", 19) == 0) {
      flags.iterations =
          weft::bench::parse_flag_int("--layer_iterations", argv[i] + 19, 0, int64_t{1} << 30);
    } else if (std::strncmp(argv[i], "--layer_rounds=", 15) == 0) {
      flags.rounds = static_cast<int>(weft::bench::parse_flag_int("--layer_rounds", argv[i] + 15, 1, 1000));
    } else {
      argv[kept++] = argv[i];
    }
  }
  *argc = kept;
  argv[kept] = nullptr;
  return flags;
}

int run(int argc, char** argv) {
  std::unique_ptr<Communicator> world = weft::make_mpi_world_communicator();
  const int rank = world->rank();
  const LayerFlags flags = take_layer_flags(&argc, argv);
  if (rank != 0) weft::bench::drop_output_flags(&argc, argv);
  benchmark::Initialize(&argc, argv);
  weft::bench::refuse_unrecognized_arguments("bench_gpt_layer", argc, argv);

  // One rank: tensor-parallel size 1 with the self communicator. Several: one TP group of all.
  std::unique_ptr<Communicator> self;
  Communicator* host_tp = world.get();
  if (world->size() == 1) {
    self = weft::make_self_communicator();
    host_tp = self.get();
  }
  std::unique_ptr<Backend> cpu = weft::make_cpu_backend();
  std::vector<LayerCase> cases = cpu_cases();
  std::vector<Target> targets(cases.size(), Target{cpu.get(), host_tp});
  benchmark::AddCustomContext("weft_version", WEFT_VERSION_STRING);
  benchmark::AddCustomContext("ranks", std::to_string(world->size()));
  benchmark::AddCustomContext("tp_communicator_cpu", host_tp->name());
  benchmark::AddCustomContext("weft_cpu_backend", cpu->name());
  benchmark::AddCustomContext("omp_threads", std::to_string(omp_get_max_threads()));
  benchmark::AddCustomContext("mpi_library", weft::bench::mpi_library_version());

  weft::Runtime gpu;
#if WEFT_HAVE_CUDA
  // NCCL only (make_runtime picks it when every rank of a node has a GPU of its own; one rank
  // gets a one-rank NCCL group whose collectives are never called at tp 1): layer throughput
  // over the staged communicator would measure the host staging. Decided by all ranks together,
  // so that they register the same benchmarks.
  if (weft::cuda_on_every_rank(*world)) gpu = weft::make_runtime("cuda", *world);
  if (gpu.world != nullptr && gpu.world->name() == "nccl") {
    Communicator* device_tp = gpu.world.get();
    for (const LayerCase& c : cuda_cases()) {
      cases.push_back(c);
      targets.push_back(Target{gpu.backend.get(), device_tp});
    }
    int runtime = 0, nccl_version = 0;
    cudaRuntimeGetVersion(&runtime);
    ncclGetVersion(&nccl_version);
    benchmark::AddCustomContext("weft_cuda_backend", gpu.backend->name());
    benchmark::AddCustomContext("tp_communicator_cuda", device_tp->name());
    benchmark::AddCustomContext("cuda_runtime_version", std::to_string(runtime));
    benchmark::AddCustomContext("nccl_version", std::to_string(nccl_version));
  } else if (rank == 0 && gpu.world != nullptr) {
    std::printf("CUDA cases skipped: the ranks of a node share GPUs; each rank needs its own\n");
  }
#endif

  // Rounds interleave the cases in one fixed order on every rank (Google Benchmark's random
  // interleaving would shuffle differently on each rank), so that a spell of contention on a
  // shared machine hits one repetition of many cases rather than every repetition of one.
  for (size_t i = 0; i < cases.size(); ++i) {
    cases[i].name = case_name(cases[i], targets[i].tp->size());
  }
  for (int round = 0; round < flags.rounds; ++round) {
    for (size_t i = 0; i < cases.size(); ++i) {
      register_case(cases[i], targets[i], flags.iterations, round);
    }
  }

  weft::bench::run_benchmarks_on_all_ranks(rank, [&](weft::bench::CollectingReporter& reporter) {
    print_summary(reporter, cases, world->size());
  });
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return weft::bench::mpi_benchmark_main("bench_gpt_layer", argc, argv, run);
}
