// bench_pipeline: pipeline-parallel training steps of a small GPT, per schedule and micro-batch
// count, in tokens/s with the measured bubble beside the theory.
//
// What it measures: PipelineModel::train_step (forward, backward, recomputation, p2p and the tied
// embedding sum; no optimizer) at pp = the number of ranks and tp = 1, for GPipe, 1F1B and
// interleaved 1F1B (v = 2) with m in {p, 2p, 4p, 8p} micro-batches, each with no activation
// recomputation (--recompute none) and with full recomputation (1F1B also selective). The baseline
// beside it is the same model unpipelined on one rank (rank 0; the others wait), running the same
// micro-batches. Each iteration starts after a barrier and its time is the slowest rank's
// (MPI_MAX); iteration counts are fixed (Google Benchmark's adaptive count would differ between
// ranks and hang).
//   tokens/s = m x seq x micro-batch / step time
//   bubble   = 1 - compute / step time on each rank (compute: forward, backward, recompute),
//              averaged over the pipeline ranks ("bubble_max": the worst rank)
//   free comm = the same with each step replayed from every rank's measured compute times as if
//              communication and bookkeeping took no time (replay_pipeline_step_ms): bubble -
//              free comm is the runtime's overhead, free comm - theory the cost of stages that
//              ran at unequal speeds (uneven work, or cores of unequal speed)
//   theory   = (p - 1) / (m + p - 1), / v for interleaved
//   recompute = share of step time spent recomputing forwards (full activation recomputation)
//   held     = the most bytes of saved forward state one rank held at once (MiB, worst rank)
// Model: gpt2 preset, 8 layers, hidden 128, 4 heads, vocab 256, seq 64, micro-batch 4, f32, CPU.
// Rank 0 alone prints and writes JSON, and ends with a table.
//
//   OMP_NUM_THREADS=1 mpirun -np 2 build/bin/bench_pipeline --benchmark_out=pp.json
//       --benchmark_out_format=json
// (as root mpirun also needs OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; more ranks
// than cores need --oversubscribe, and then the timings measure the oversubscription too.)
#include <benchmark/benchmark.h>
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "weft/config.hpp"
#include "weft/grid.hpp"
#include "weft/pipeline.hpp"

namespace {

using weft::ScheduleKind;

constexpr int64_t kSeq = 64, kMicroBatch = 4;
constexpr int kWarmupSteps = 1, kIterations = 3, kRepetitions = 3;  // the table: medians

weft::GPTConfig bench_config() {
  weft::GPTConfig c = weft::GPTConfig::preset("gpt2");
  c.vocab_size = 256;
  c.max_seq = kSeq;
  c.layers = 8;
  c.hidden = 128;
  c.heads = 4;
  c.vocab_pad_multiple = 8;
  c.seed = 7;
  return c;
}

// Random-looking token ids (never all equal), the same on every rank for one micro-batch.
void fill_tokens(int64_t microbatch, weft::TensorView ids, weft::TensorView targets) {
  uint64_t state = static_cast<uint64_t>(microbatch) * 0x9E3779B97F4A7C15ull + 1;
  for (int64_t i = 0; i < ids.numel(); ++i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    ids.as<int32_t>()[i] = static_cast<int32_t>((state >> 33) % 256);
    targets.as<int32_t>()[i] = static_cast<int32_t>((state >> 45) % 256);
  }
}

struct Env {
  weft::Communicator* world;
  weft::Backend* backend;
  weft::ParallelGrid* grid;
};

double slowest(double mine) {
  double out = 0.0;
  MPI_Allreduce(&mine, &out, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return out;
}

void bm_pipeline(benchmark::State& state, const Env& env, ScheduleKind kind, int v,
                 weft::Recompute policy, int64_t m) {
  weft::GPTConfig config = bench_config();
  config.recompute = policy;
  weft::PipelineModel model(weft::ParallelContext{*env.backend, env.grid->tp()}, env.grid->pp(),
                            config, kind, v);
  model.set_timing(true);  // the bubble needs each action's time
  weft::DropoutRng rng(7, 0);
  for (int i = 0; i < kWarmupSteps; ++i) {
    model.train_step(fill_tokens, m, kSeq, kMicroBatch, 1.0f, rng);
  }
  double total = 0.0, step_ms = 0.0, compute_ms = 0.0, recompute_ms = 0.0, held = 0.0;
  double replayed_ms = 0.0;
  for (auto _ : state) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double start = MPI_Wtime();
    model.train_step(fill_tokens, m, kSeq, kMicroBatch, 1.0f, rng);
    const double time = slowest(MPI_Wtime() - start);
    state.SetIterationTime(time);
    total += time;
    const weft::PipelineStats& s = model.stats();
    step_ms += s.step_ms;
    compute_ms += s.forward_ms + s.backward_ms + s.recompute_ms;
    recompute_ms += s.recompute_ms;
    held = std::max(held, static_cast<double>(s.peak_saved_bytes));
    replayed_ms += model.replayed_step_ms();  // collective, after the timed step
  }
  const int p = env.grid->pp_size();
  double bubble = 1.0 - compute_ms / step_ms, bubble_sum = 0.0, bubble_max = 0.0;
  double recompute = recompute_ms / step_ms, recompute_sum = 0.0;
  MPI_Allreduce(&bubble, &bubble_sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  MPI_Allreduce(&bubble, &bubble_max, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  double free_comm = 1.0 - compute_ms / replayed_ms, free_comm_sum = 0.0;
  MPI_Allreduce(&free_comm, &free_comm_sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  MPI_Allreduce(&recompute, &recompute_sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  double held_max = 0.0;
  MPI_Allreduce(&held, &held_max, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  const int ranks = env.world->size();
  const double tokens = static_cast<double>(m * kSeq * kMicroBatch);
  state.counters["tokens_per_s"] = tokens / (total / static_cast<double>(state.iterations()));
  state.counters["bubble"] = bubble_sum / ranks;
  state.counters["bubble_max"] = bubble_max;
  state.counters["bubble_free_comm"] = free_comm_sum / ranks;
  state.counters["theory"] = weft::theoretical_bubble_fraction(kind, p, m, v);
  state.counters["recompute"] = recompute_sum / ranks;
  state.counters["held_mib"] = held_max / (1 << 20);
  state.counters["microbatches"] = static_cast<double>(m);
}

// The same model and micro-batches, unpipelined on rank 0.
void bm_single_rank(benchmark::State& state, const Env& env, int64_t m) {
  std::unique_ptr<weft::Communicator> self = weft::make_self_communicator();
  const bool mine = env.world->rank() == 0;
  weft::GPTConfig config = bench_config();
  config.finalize(1);
  std::unique_ptr<weft::GPTModel> model;
  if (mine)
    model = std::make_unique<weft::GPTModel>(weft::ParallelContext{*env.backend, *self}, config);
  weft::Tensor ids(*env.backend, weft::Shape({kSeq * kMicroBatch}), weft::DType::kI32);
  weft::Tensor targets(*env.backend, weft::Shape({kSeq * kMicroBatch}), weft::DType::kI32);
  weft::DropoutRng rng(7, 0);
  auto step = [&] {
    if (!mine) return;
    weft::zero_grads(*env.backend, model->parameters());
    for (int64_t mb = 0; mb < m; ++mb) {
      fill_tokens(mb, ids, targets);
      weft::GPTModel::Saved saved;
      model->forward(ids, targets, kSeq, kMicroBatch, rng, saved);
      model->backward(saved, 1.0f / static_cast<float>(m));
    }
  };
  for (int i = 0; i < kWarmupSteps; ++i) step();
  double total = 0.0;
  for (auto _ : state) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double start = MPI_Wtime();
    step();
    const double time = slowest(MPI_Wtime() - start);
    state.SetIterationTime(time);
    total += time;
  }
  state.counters["tokens_per_s"] = static_cast<double>(m * kSeq * kMicroBatch) /
                                   (total / static_cast<double>(state.iterations()));
  state.counters["microbatches"] = static_cast<double>(m);
}

struct Series {
  std::string label;
  std::string stem;  // benchmark name before "m<m>"
  ScheduleKind kind;
  int v;
  weft::Recompute recompute;
  bool pipelined;
};

void print_table(const weft::bench::CollectingReporter& reporter, const std::vector<Series>& series,
                 const std::vector<int64_t>& ms, int p) {
  std::printf("\npipeline, pp=%d tp=1, gpt2 8 layers hidden 128 seq %lld micro-batch %lld, f32\n",
              p, static_cast<long long>(kSeq), static_cast<long long>(kMicroBatch));
  std::printf("%-24s %4s %12s %10s %10s %10s %10s %10s %10s %9s\n", "schedule", "m", "tokens/s",
              "vs 1 rank", "bubble", "worst", "free comm", "theory", "recompute", "held MiB");
  for (int64_t m : ms) {
    const std::string base_name = "BM_SingleRank/m" + std::to_string(m);
    const double base = reporter.median(base_name, "tokens_per_s");
    for (const Series& s : series) {
      const std::string name = s.stem + "m" + std::to_string(m);
      const double tps = reporter.median(name, "tokens_per_s");
      if (tps < 0) continue;  // filtered out
      std::printf("%-24s %4lld %12.0f", s.label.c_str(), static_cast<long long>(m), tps);
      if (base > 0) {
        std::printf(" %9.2fx", tps / base);
      } else {
        std::printf(" %10s", "-");
      }
      if (s.pipelined) {
        std::printf(" %10.3f %10.3f %10.3f %10.3f %10.3f %9.2f\n", reporter.median(name, "bubble"),
                    reporter.median(name, "bubble_max"), reporter.median(name, "bubble_free_comm"),
                    reporter.median(name, "theory"), reporter.median(name, "recompute"),
                    reporter.median(name, "held_mib"));
      } else {
        std::printf(" %10s %10s %10s %10s %10s %9s\n", "-", "-", "-", "-", "-", "-");
      }
    }
  }
}

int run(int argc, char** argv) {
  std::unique_ptr<weft::Communicator> world = weft::make_mpi_world_communicator();
  const int rank = world->rank();
  if (rank != 0) weft::bench::drop_output_flags(&argc, argv);
  benchmark::Initialize(&argc, argv);
  weft::bench::refuse_unrecognized_arguments("bench_pipeline", argc, argv);

  std::unique_ptr<weft::Backend> cpu = weft::make_cpu_backend();
  weft::ParallelGrid grid(*world, 1, world->size());
  const Env env{world.get(), cpu.get(), &grid};
  const int p = grid.pp_size();
  benchmark::AddCustomContext("weft_version", WEFT_VERSION_STRING);
  benchmark::AddCustomContext("ranks", std::to_string(world->size()));
  benchmark::AddCustomContext("backend", cpu->name());

  using weft::Recompute;
  std::vector<Series> series{
      {"1 rank", "BM_SingleRank/", ScheduleKind::k1F1B, 1, Recompute::kNone, false}};
  for (auto [kind, v] : {std::pair{ScheduleKind::kGPipe, 1}, std::pair{ScheduleKind::k1F1B, 1},
                         std::pair{ScheduleKind::kInterleaved, 2}}) {
    for (Recompute r : {Recompute::kNone, Recompute::kSelective, Recompute::kFull}) {
      if (r == Recompute::kSelective && kind != ScheduleKind::k1F1B) continue;
      const std::string schedule = weft::schedule_name(kind);
      const std::string label = (v > 1 ? schedule + ":" + std::to_string(v) : schedule) +
                                " recompute " + weft::recompute_name(r);
      series.push_back({label,
                        "BM_Pipeline/" + schedule + "/v" + std::to_string(v) + "/" +
                            weft::recompute_name(r) + "/",
                        kind, v, r, true});
    }
  }
  std::vector<int64_t> ms;
  for (int k : {1, 2, 4, 8}) ms.push_back(static_cast<int64_t>(k) * p);
  for (int64_t m : ms) {
    for (const Series& s : series) {
      const std::string name = s.stem + "m" + std::to_string(m);
      benchmark::internal::Benchmark* b;
      if (s.pipelined) {
        b = benchmark::RegisterBenchmark(name.c_str(), [env, s, m](benchmark::State& st) {
          bm_pipeline(st, env, s.kind, s.v, s.recompute, m);
        });
      } else {
        b = benchmark::RegisterBenchmark(
            name.c_str(), [env, m](benchmark::State& st) { bm_single_rank(st, env, m); });
      }
      b->Iterations(kIterations)
          ->Repetitions(kRepetitions)
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond);
    }
  }

  weft::bench::run_benchmarks_on_all_ranks(rank, [&](weft::bench::CollectingReporter& reporter) {
    print_table(reporter, series, ms, p);
  });
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return weft::bench::mpi_benchmark_main("bench_pipeline", argc, argv, run);
}
