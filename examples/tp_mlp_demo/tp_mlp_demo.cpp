// tp_mlp_demo: a Megatron-style MLP sharded over the ranks mpirun started, forward and backward,
// checked against the same MLP unsharded (TP=1) on every rank, with timings.
//
//   mpirun -np 2 build/bin/tp_mlp_demo [--tokens 512 --hidden 1024 --dtype f32 --backend cpu]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <vector>

#include "common/flags.hpp"
#include "common/launch.hpp"
#include "weft/weft.hpp"

namespace {

using weft::Tensor;
using weft::TensorView;

std::vector<double> to_host(weft::Backend& backend, TensorView v) {
  auto cpu = weft::make_cpu_backend();
  Tensor host(*cpu, v.shape, v.dtype), wide(*cpu, v.shape, weft::DType::kF32);
  backend.copy(host, v);
  cpu->convert(wide, host);
  return std::vector<double>(wide.as<float>(), wide.as<float>() + wide.numel());
}

// The part of a full (TP=1) parameter that `shard` holds, per its sharding metadata.
std::vector<double> shard_of(const std::vector<double>& full, const weft::Parameter& shard) {
  if (shard.is_replicated()) return full;
  const weft::Shape& local = shard.value.shape();
  const int64_t cols = shard.global_shape.cols();
  std::vector<double> out;
  for (int64_t r = 0; r < local.rows(); ++r) {
    for (int64_t c = 0; c < local.cols(); ++c) {
      const bool by_rows = shard.partition_dim == 0 && shard.global_shape.rank() == 2;
      const int64_t gr = by_rows ? r + local.rows() * shard.partition_index : r;
      const int64_t gc = by_rows ? c : c + local.cols() * shard.partition_index;
      out.push_back(full[gr * cols + gc]);
    }
  }
  return out;
}

double max_rel_error(const std::vector<double>& actual, const std::vector<double>& expected) {
  double diff = 0, ref = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    if (!(actual[i] == actual[i])) return INFINITY;  // NaN
    diff = std::max(diff, std::abs(actual[i] - expected[i]));
    ref = std::max(ref, std::abs(expected[i]));
  }
  return ref > 0 ? diff / ref : INFINITY;
}

double max_over_ranks(weft::Communicator& world, double value) {
  float local = static_cast<float>(value), global = 0;
  world.all_reduce(TensorView{&local, weft::Shape({1}), weft::DType::kF32, weft::Device::cpu()},
                   TensorView{&global, weft::Shape({1}), weft::DType::kF32, weft::Device::cpu()},
                   weft::ReduceOp::kMax, weft::host_stream());
  return global;
}

int run(int argc, char** argv, weft::Communicator& mpi_world) {
  int64_t tokens = 512, hidden = 1024, ffn = 0, tp = 0, iters = 5, seed = 1234;
  std::string dtype_name = "f32";
  weft::examples::EngineFlags engine;
  weft::examples::Flags flags("tp_mlp_demo",
                              "Sharded MLP (column -> GeLU -> row) forward+backward vs unsharded.");
  flags.add("tokens", &tokens, "tokens per batch (sequence x micro-batch)", 1, 1 << 24);
  flags.add("hidden", &hidden, "hidden size h", 1, 1 << 16);
  flags.add("ffn", &ffn, "MLP inner size (0: 4h)", 0, 1 << 18);
  flags.add("tp", &tp, "tensor-parallel size (0: all ranks)", 0, 1 << 16);
  flags.add("iters", &iters, "timed iterations", 1, 1 << 20);
  flags.add("seed", &seed, "seed of weights and data", 0, std::numeric_limits<int64_t>::max());
  flags.add("dtype", &dtype_name, "f32 or bf16");
  engine.add_to(flags);
  if (!flags.parse(argc, argv)) {
    if (mpi_world.rank() == 0) std::printf("%s", flags.usage().c_str());
    return 0;
  }
  if (ffn == 0) ffn = 4 * hidden;
  if (tp == 0) tp = mpi_world.size();
  weft::examples::usage_check(dtype_name == "f32" || dtype_name == "bf16", "tp_mlp_demo",
                              "--dtype must be f32 or bf16, got '", dtype_name, "'");
  weft::examples::usage_check(mpi_world.size() % tp == 0, "tp_mlp_demo", "--tp (", tp,
                              ") must divide the number of ranks (", mpi_world.size(), ")");
  // The activations and the reference's full weights, f32, on every rank.
  const int64_t bytes = 4 * (4 * tokens * hidden + 2 * tokens * ffn + 4 * hidden * ffn);
  weft::examples::usage_check(bytes <= (int64_t{64} << 30), "tp_mlp_demo", "--tokens (", tokens,
                              "), --hidden (", hidden, ") and --ffn (", ffn, ") need ",
                              bytes >> 20, " MiB per rank, more than the 64 GiB this demo allows");

  const weft::Runtime runtime = weft::examples::launch(engine, mpi_world);
  weft::Backend* backend = runtime.backend.get();
  weft::Communicator* world = runtime.world.get();
  const weft::DType dtype = weft::parse_dtype(dtype_name);
  weft::ParallelGrid grid(*world, weft::checked_narrow<int>(tp, "--tp"));
  auto solo = world->split(world->rank(), 0);  // a group of one: the unsharded reference

  weft::ParallelMLPConfig config;
  config.hidden = hidden;
  config.ffn_hidden = ffn;
  config.dtype = dtype;
  config.seed = static_cast<uint64_t>(seed);
  weft::ParallelMLP sharded(weft::ParallelContext{*backend, grid.tp()}, config);
  weft::ParallelMLP reference(weft::ParallelContext{*backend, *solo}, config);
  // Same seed, same names: both hold the same global weights. Give the biases values too.
  for (auto* model : {&sharded, &reference}) {
    for (weft::Parameter* p : model->parameters()) {
      if (p->global_shape.rank() == 1) {
        weft::init_parameter(
            *backend, *p, weft::RandomFill{weft::Distribution::kNormal, config.seed, 0, 0.0, 0.1});
      }
    }
  }

  Tensor x(*backend, weft::Shape({tokens, hidden}), dtype), dy(*backend, x.shape(), dtype);
  backend->fill_random(x, weft::RandomFill{weft::Distribution::kNormal, config.seed + 1});
  backend->fill_random(dy, weft::RandomFill{weft::Distribution::kNormal, config.seed + 2});

  auto time_ms = [&](weft::ParallelMLP& mlp, weft::Communicator& group) {
    weft::ParallelMLP::Saved saved;
    mlp.forward(x, saved);
    mlp.backward(dy, saved);  // warm-up: primitive creation, first-touch of memory
    backend->synchronize();
    group.barrier();
    const auto start = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < iters; ++i) {
      mlp.forward(x, saved);
      mlp.backward(dy, saved);
    }
    backend->synchronize();
    group.barrier();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
               .count() /
           static_cast<double>(iters);
  };
  const double sharded_ms = time_ms(sharded, *world);
  const double reference_ms = time_ms(reference, *world);

  weft::zero_grads(*backend, sharded.parameters());
  weft::zero_grads(*backend, reference.parameters());
  weft::ParallelMLP::Saved saved, saved_ref;
  Tensor y = sharded.forward(x, saved), dx = sharded.backward(dy, saved);
  Tensor y_ref = reference.forward(x, saved_ref), dx_ref = reference.backward(dy, saved_ref);

  const double tol = dtype == weft::DType::kF32 ? 1e-5 : 1e-2;
  struct Row {
    std::string what;
    double error;
  };
  std::vector<Row> rows{
      {"output", max_rel_error(to_host(*backend, y), to_host(*backend, y_ref))},
      {"input grad", max_rel_error(to_host(*backend, dx), to_host(*backend, dx_ref))}};
  const auto params = sharded.parameters(), ref_params = reference.parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    rows.push_back({params[i]->name + " grad",
                    max_rel_error(to_host(*backend, params[i]->grad),
                                  shard_of(to_host(*backend, ref_params[i]->grad), *params[i]))});
  }
  bool ok = true;
  for (Row& r : rows) {
    r.error = max_over_ranks(mpi_world, r.error);
    ok = ok && r.error <= tol;
  }
  if (mpi_world.rank() == 0) {
    const double flops = 3.0 * 2.0 * 2.0 * tokens * hidden * ffn;  // fwd + 2x bwd, two GEMMs
    std::printf("weft %s: sharded MLP on %d ranks (tp=%d, dp=%d), %s, backend %s\n",
                WEFT_VERSION_STRING, mpi_world.size(), grid.tp_size(), grid.dp_size(),
                weft::dtype_name(dtype), backend->name().c_str());
    std::printf("tokens=%lld hidden=%lld ffn=%lld\n\n", static_cast<long long>(tokens),
                static_cast<long long>(hidden), static_cast<long long>(ffn));
    std::printf("%-24s %14s\n", "max relative error", "(vs unsharded)");
    for (const Row& r : rows) std::printf("  %-22s %14.3e\n", r.what.c_str(), r.error);
    std::printf("\n%-24s %10s %12s\n", "forward+backward", "ms/iter", "GFLOP/s/rank");
    std::printf("  %-22s %10.2f %12.1f\n", ("sharded tp=" + std::to_string(tp)).c_str(), sharded_ms,
                flops / tp / (sharded_ms * 1e6));
    std::printf("  %-22s %10.2f %12.1f\n", "unsharded (each rank)", reference_ms,
                flops / (reference_ms * 1e6));
    std::printf("  %-22s %10.2fx\n", "speed-up", reference_ms / sharded_ms);
    std::printf("\n%s: every error %s the %s tolerance %.0e\n", ok ? "PASS" : "FAIL",
                ok ? "within" : "NOT within", weft::dtype_name(dtype), tol);
  }
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) { return weft::examples::run_main("tp_mlp_demo", argc, argv, run); }
