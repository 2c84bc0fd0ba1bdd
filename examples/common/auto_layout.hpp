// gpt_train --layout auto: a quick calibration of this machine on the running ranks (GEMM rates,
// all-reduce times, copy bandwidth), then the planner's ranking of the layouts gpt_train can run.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "common/plan_util.hpp"
#include "weft/weft.hpp"

namespace weft::examples {

// Every rank times the same GEMMs at once (so the node's sharing is in the figures) and the node's
// rate is the sum; then all-reduces over the world at two sizes. About a second.
inline plan::Cluster quick_calibration(Communicator& world) {
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  std::vector<plan::GemmRate> rates;
  for (int64_t d : {32, 64, 128, 256, 512}) {
    const int64_t big = 512;
    Tensor a(*cpu, Shape({big, big}), DType::kF32), b(*cpu, Shape({d, big}), DType::kF32);
    Tensor c(*cpu, Shape({big, d}), DType::kF32);
    cpu->fill_random(a, RandomFill{Distribution::kNormal, 1, 0, 0.0, 1.0});
    cpu->fill_random(b, RandomFill{Distribution::kNormal, 2, 0, 0.0, 1.0});
    GemmArgs args;
    args.a = a;
    args.b = b;
    args.c = c;
    args.transpose_b = true;
    cpu->gemm(args);  // warm-up (primitive creation)
    const int reps = static_cast<int>(std::max<int64_t>(2, 4096 / d));
    world.barrier();
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) cpu->gemm(args);
    cpu->synchronize();
    const float s = std::chrono::duration<float>(std::chrono::steady_clock::now() - start).count();
    const double gflops = 2.0 * big * big * static_cast<double>(d) * reps / s / 1e9;
    rates.push_back({false, static_cast<double>(d),
                     all_reduce_scalar(world, *cpu, static_cast<float>(gflops), ReduceOp::kSum)});
  }
  std::vector<plan::CollectiveSample> samples;
  if (world.size() > 1) {
    for (int64_t count : {int64_t{4096}, int64_t{1} << 20}) {
      Tensor x(*cpu, Shape({count}), DType::kF32), y(*cpu, Shape({count}), DType::kF32);
      cpu->fill_random(x, RandomFill{Distribution::kNormal, 3, 0, 0.0, 1.0});
      world.all_reduce(x, y, ReduceOp::kSum, cpu->stream());
      const int reps = 5;
      world.barrier();
      const auto start = std::chrono::steady_clock::now();
      for (int i = 0; i < reps; ++i) world.all_reduce(x, y, ReduceOp::kSum, cpu->stream());
      cpu->synchronize();
      const float s =
          std::chrono::duration<float>(std::chrono::steady_clock::now() - start).count() / reps;
      samples.push_back({plan::Collective::kAllReduce, static_cast<double>(count * 4), world.size(),
                         all_reduce_scalar(world, *cpu, s, ReduceOp::kMax)});
    }
  }
  const double bandwidth = all_reduce_scalar(
      world, *cpu, static_cast<float>(measure_copy_bandwidth_gbps()), ReduceOp::kMin);
  return plan::calibrate_from_samples(rates, samples, bandwidth, memory_total_gib(),
                                      "this machine, quick calibration by gpt_train");
}

// The layouts gpt_train runs (every recompute policy: --recompute takes the chosen one), ranked.
inline std::vector<plan::Prediction> runnable_layouts(const plan::Training& t,
                                                      const plan::Cluster& c) {
  std::vector<plan::Prediction> out;
  for (plan::Prediction& p : plan::search(t, c)) {
    if (p.fits) out.push_back(std::move(p));
  }
  return out;
}

}  // namespace weft::examples
