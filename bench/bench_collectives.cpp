// bench_collectives: weft's collectives over a size sweep, in nccl-tests' terms.
//
// What it measures: all_reduce (sum; f32 and bf16), all_gather and reduce_scatter (sum, f32),
// out of place, through make_mpi_world_communicator() on host buffers and, in a CUDA build with a
// GPU on every rank, through the communicator make_runtime("cuda") picks on device buffers (NCCL,
// or mpi-staged when ranks share a GPU).
// Sizes run from 16 KiB to 64 MiB in powers of 4. As in nccl-tests, `size` is the full buffer
// per rank for all_reduce, the gathered output for all_gather and the send input for
// reduce_scatter, and
//   algbw = size / time,   busbw = algbw * 2(n-1)/n (all_reduce), algbw * (n-1)/n (the others).
// Each iteration starts after a barrier and its time is the slowest rank's (MPI_MAX), so the
// figure is what a synchronous step of the model would see. Iteration counts are fixed (scaled
// by size): Google Benchmark's adaptive count would differ between ranks and hang the
// collectives. Rank 0 alone prints and writes JSON, and ends with busbw and time tables.
//
// Run (or scripts/bench OUT_DIR, which also builds; as root mpirun also needs
// OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 in the environment):
//   mpirun -np 2 build/bin/bench_collectives --benchmark_out=coll.json --benchmark_out_format=json
#include <benchmark/benchmark.h>
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <functional>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "bench_mpi.hpp"
#include "weft/backend.hpp"
#include "weft/comm.hpp"
#include "weft/config.hpp"
#include "weft/runtime.hpp"
#include "weft/tensor.hpp"

#if WEFT_HAVE_CUDA
#include <nccl.h>
#endif

namespace {

using weft::Backend;
using weft::Communicator;
using weft::DType;
using weft::Shape;
using weft::Tensor;

enum class Collective { kAllReduce, kAllGather, kReduceScatter };

const char* family_name(Collective c) {
  switch (c) {
    case Collective::kAllReduce:
      return "BM_AllReduce";
    case Collective::kAllGather:
      return "BM_AllGather";
    case Collective::kReduceScatter:
      return "BM_ReduceScatter";
  }
  return "";
}

// nccl-tests' bus bandwidth factor: the fraction of the data each rank must send over its link.
double bus_factor(Collective c, int n) {
  if (c == Collective::kAllReduce) return 2.0 * (n - 1) / n;
  return static_cast<double>(n - 1) / n;
}

// A communicator with the backend that owns its buffers (host for MPI, a GPU for NCCL).
struct Transport {
  std::string name;
  Communicator* comm;
  Backend* backend;
};

constexpr int kWarmupIterations = 3;

void bm_collective(benchmark::State& state, const Transport& t, Collective c, DType dtype,
                   int64_t size_bytes) {
  Communicator& comm = *t.comm;
  Backend& backend = *t.backend;
  const int n = comm.size();
  const int64_t esize = static_cast<int64_t>(weft::dtype_size(dtype));
  int64_t count = size_bytes / esize;  // elements of the larger side
  count -= count % n;
  const int64_t send_count = c == Collective::kAllGather ? count / n : count;
  const int64_t recv_count = c == Collective::kReduceScatter ? count / n : count;
  Tensor send(backend, Shape{send_count}, dtype);
  Tensor recv(backend, Shape{recv_count}, dtype);
  weft::bench::fill_input(backend, send, 1 + comm.rank());
  weft::Stream& stream = backend.stream();
  const std::function<void()> run = [&] {
    switch (c) {
      case Collective::kAllReduce:
        comm.all_reduce(send, recv, weft::ReduceOp::kSum, stream);
        break;
      case Collective::kAllGather:
        comm.all_gather(send, recv, stream);
        break;
      case Collective::kReduceScatter:
        comm.reduce_scatter(send, recv, weft::ReduceOp::kSum, stream);
        break;
    }
    stream.synchronize();
  };
  for (int i = 0; i < kWarmupIterations; ++i) run();

  double total = 0.0;
  for (auto _ : state) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double start = MPI_Wtime();
    run();
    const double mine = MPI_Wtime() - start;
    double slowest = 0.0;
    MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    state.SetIterationTime(slowest);
    total += slowest;
  }
  const double bytes = static_cast<double>(count * esize);
  const double algbw = bytes / (total / static_cast<double>(state.iterations())) * 1e-9;
  state.counters["size"] =
      benchmark::Counter(bytes, benchmark::Counter::kDefaults, benchmark::Counter::kIs1024);
  state.counters["algbw_GBps"] = algbw;
  state.counters["busbw_GBps"] = algbw * bus_factor(c, n);
}

// Enough iterations to move about 1 GiB, at least 10 and at most 1000.
int64_t iterations_for(int64_t size_bytes) {
  return std::clamp<int64_t>((int64_t{1} << 30) / size_bytes, 10, 1000);
}

std::string size_name(int64_t bytes) {
  if (bytes >= (1 << 20)) return std::to_string(bytes >> 20) + "MiB";
  return std::to_string(bytes >> 10) + "KiB";
}

// One column of the summary tables: a collective and dtype through one transport.
struct Series {
  std::string label;      // "mpi all_reduce f32"
  std::string name_stem;  // "BM_AllReduce/mpi/f32/"
};

// The median time (us) and busbw of one benchmark; negative when it did not run.
double table_value(const weft::bench::CollectingReporter& reporter, const std::string& name,
                   bool time) {
  const double busbw = reporter.median(name, "busbw_GBps");
  if (!time || busbw < 0) return busbw;
  return reporter.median(name, "size") / reporter.median(name, "algbw_GBps") * 1e-3;
}

void print_tables(const weft::bench::CollectingReporter& reporter,
                  const std::vector<Series>& series, const std::vector<int64_t>& sizes, int ranks) {
  for (bool time : {false, true}) {
    std::printf("\n%s, %d ranks, out of place\n%10s", time ? "time (us)" : "busbw (GB/s)", ranks,
                "size");
    for (const Series& s : series) std::printf(" %22s", s.label.c_str());
    std::printf("\n");
    for (int64_t size : sizes) {
      const bool ran = std::any_of(series.begin(), series.end(), [&](const Series& s) {
        return table_value(reporter, s.name_stem + size_name(size), false) >= 0;
      });
      if (!ran) continue;  // filtered out
      std::printf("%10s", size_name(size).c_str());
      for (const Series& s : series) {
        const double value = table_value(reporter, s.name_stem + size_name(size), time);
        if (value < 0) {
          std::printf(" %22s", "-");
        } else {
          std::printf(" %22.2f", value);
        }
      }
      std::printf("\n");
    }
  }
}

int run(int argc, char** argv) {
  std::unique_ptr<Communicator> world = weft::make_mpi_world_communicator();
  const int rank = world->rank();
  if (rank != 0) weft::bench::drop_output_flags(&argc, argv);
  benchmark::Initialize(&argc, argv);
  weft::bench::refuse_unrecognized_arguments("bench_collectives", argc, argv);

  std::unique_ptr<Backend> host = weft::make_cpu_backend();
  std::vector<Transport> transports{{"mpi", world.get(), host.get()}};
  benchmark::AddCustomContext("weft_version", WEFT_VERSION_STRING);
  benchmark::AddCustomContext("ranks", std::to_string(world->size()));
  benchmark::AddCustomContext("mpi_library", weft::bench::mpi_library_version());

#if WEFT_HAVE_CUDA
  // The cuda engine's communicator as weft::make_runtime picks it: NCCL when every rank of a node
  // has a GPU of its own, mpi-staged when they share one. Decided by all ranks together, so that
  // they register the same benchmarks.
  weft::Runtime gpu;
  if (weft::cuda_on_every_rank(*world)) {
    gpu = weft::make_runtime("cuda", *world);
    transports.push_back({gpu.world->name(), gpu.world.get(), gpu.backend.get()});
    int version = 0;
    ncclGetVersion(&version);
    benchmark::AddCustomContext("nccl_version", std::to_string(version));
    benchmark::AddCustomContext("gpu", gpu.backend->name());
    benchmark::AddCustomContext("gpu_runtime", gpu.description);
  }
#endif

  std::vector<int64_t> sizes;
  for (int64_t bytes = 16 << 10; bytes <= (64 << 20); bytes *= 4) sizes.push_back(bytes);
  const std::pair<Collective, DType> kinds[] = {{Collective::kAllReduce, DType::kF32},
                                                {Collective::kAllReduce, DType::kBF16},
                                                {Collective::kAllGather, DType::kF32},
                                                {Collective::kReduceScatter, DType::kF32}};
  const char* labels[] = {"all_reduce", "all_reduce", "all_gather", "reduce_scatter"};
  std::vector<Series> series;
  for (const Transport& t : transports) {
    for (size_t i = 0; i < std::size(kinds); ++i) {
      const auto [c, dtype] = kinds[i];
      const std::string stem =
          std::string(family_name(c)) + "/" + t.name + "/" + weft::dtype_name(dtype) + "/";
      series.push_back({t.name + " " + labels[i] + " " + weft::dtype_name(dtype), stem});
      for (int64_t size : sizes) {
        benchmark::RegisterBenchmark((stem + size_name(size)).c_str(),
                                     [t, c = c, dtype = dtype, size](benchmark::State& st) {
                                       bm_collective(st, t, c, dtype, size);
                                     })
            ->Iterations(iterations_for(size))
            ->UseManualTime()
            ->Unit(benchmark::kMicrosecond);
      }
    }
  }

  weft::bench::run_benchmarks_on_all_ranks(rank, [&](weft::bench::CollectingReporter& reporter) {
    print_tables(reporter, series, sizes, world->size());
  });
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return weft::bench::mpi_benchmark_main("bench_collectives", argc, argv, run);
}
