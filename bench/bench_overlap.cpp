// bench_overlap: the fused all-gather + GEMM and GEMM + reduce-scatter of weft/overlap.hpp (ring
// exchanges overlapping the GEMM) against the plain collective and GEMM one after the other.
//
// What it measures, at TP = the number of ranks (one TP group of all ranks), per shape:
//   AG+GEMM   C [M, N/tp] = all_gather_rows(A [M/tp, K]) W^T, W [N/tp, K]   (column layer, SP)
//   GEMM+RS   C [M/tp, N] = reduce_scatter_rows(A [M, K/tp] W^T), W [N, K/tp] (row layer, SP)
// and four variants of each:
//   plain     the collective, then the GEMM (AG+GEMM); the GEMM, then the collective (GEMM+RS)
//   fused     all_gather_gemm / gemm_reduce_scatter (preallocated buffers, as a layer would hold)
//   comm      the collective alone
//   gemm      the GEMM alone
// and, in the summary table, the share of the communication the fused op hides:
//   hidden = (t_plain - t_fused) / t_comm      (1: all of it; <= 0: none, or fused is slower)
// Shapes:
//   cpu  f32  mlp-h1k     M 2048, K 1024, N 4096   (a hidden-1024 MLP over 2048 tokens: fc1 for
//                                                   AG+GEMM; fc2, K and N swapped, for GEMM+RS)
//             narrow      M 4096, K 2048, N 128*tp (a narrow GEMM: the collective is a large share)
//   cuda bf16 flux        M 4096, K 12288, N 49152 (Flux's shape: GPT-3 175B's fc1; fc2 with K
//                                                   and N swapped for GEMM+RS)
// The CUDA case is registered in a CUDA build when every rank of a node has a GPU of its own (then
// NCCL carries the ring; MPI on host memory otherwise). Each iteration starts after a barrier and
// its time is the slowest rank's (MPI_MAX) after a stream synchronize; iteration counts are fixed
// (Google Benchmark's adaptive count would differ between ranks and hang the collectives). Rank 0
// alone prints and writes JSON.
//
// On the CPU the ring's transfers are memory copies made by the ranks' own cores (MPI's shared
// memory transport: the receiver copies, inside the MPI calls the fused op makes between GEMM
// pieces), so nothing runs beside the GEMM and little can be hidden; the figure that matters is
// the GPU's, where NCCL's copy engine / SM kernels run on their own stream.
//
// Run (as root mpirun also needs OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1):
//   OMP_NUM_THREADS=1 mpirun -np 2 -x OMP_NUM_THREADS build/bin/bench_overlap
//       --benchmark_out=overlap.json --benchmark_out_format=json       (one command line)
#include <benchmark/benchmark.h>
#include <mpi.h>

#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "bench_mpi.hpp"
#include "weft/backend.hpp"
#include "weft/comm.hpp"
#include "weft/config.hpp"
#include "weft/overlap.hpp"
#include "weft/runtime.hpp"
#include "weft/tensor.hpp"

namespace {

using weft::Backend;
using weft::Communicator;
using weft::DType;
using weft::Shape;
using weft::Tensor;

enum class Op { kAgGemm, kGemmRs };
enum class Variant { kPlain, kFused, kComm, kGemm };
constexpr Variant kVariants[] = {Variant::kPlain, Variant::kFused, Variant::kComm, Variant::kGemm};

const char* op_name(Op op) { return op == Op::kAgGemm ? "ag_gemm" : "gemm_rs"; }
const char* variant_name(Variant v) {
  switch (v) {
    case Variant::kPlain:
      return "plain";
    case Variant::kFused:
      return "fused";
    case Variant::kComm:
      return "comm";
    case Variant::kGemm:
      return "gemm";
  }
  return "";
}

struct Transport {
  std::string name;  // "mpi", "nccl"
  Communicator* comm;
  Backend* backend;
};

struct Case {
  std::string name;
  int64_t m, k, n;  // global; for GEMM+RS, K and N are those of the row layer (K split)
  DType dtype;
  int iterations;
};

// The buffers of one op at one shape, allocated once per benchmark.
struct Buffers {
  Buffers(Backend& backend, Op op, const Case& c, int tp) {
    if (op == Op::kAgGemm) {
      a = Tensor(backend, Shape({c.m / tp, c.k}), c.dtype);
      gathered = Tensor(backend, Shape({c.m, c.k}), c.dtype);
      w = Tensor(backend, Shape({c.n / tp, c.k}), c.dtype);
      out = Tensor(backend, Shape({c.m, c.n / tp}), c.dtype);
    } else {
      a = Tensor(backend, Shape({c.m, c.k / tp}), c.dtype);
      w = Tensor(backend, Shape({c.n, c.k / tp}), c.dtype);
      partial = Tensor(backend, Shape({c.m, c.n}), c.dtype);
      out = Tensor(backend, Shape({c.m / tp, c.n}), c.dtype);
      workspace = Tensor(backend, Shape({3 * c.m / tp, c.n}), c.dtype);
    }
  }
  Tensor a, gathered, w, out, partial, workspace;
};

// 2 m n k over the GEMM of one rank.
double rank_flops(Op op, const Case& c, int tp) {
  return op == Op::kAgGemm ? 2.0 * c.m * c.k * (c.n / tp) : 2.0 * c.m * (c.k / tp) * c.n;
}

void bm_overlap(benchmark::State& state, const Transport& t, Op op, const Case& c, Variant v) {
  Communicator& comm = *t.comm;
  Backend& backend = *t.backend;
  const int tp = comm.size();
  const weft::ParallelContext ctx{backend, comm};
  Buffers b(backend, op, c, tp);
  weft::bench::fill_input(backend, b.a, 1 + comm.rank());
  weft::bench::fill_input(backend, b.w, 100 + comm.rank());
  weft::Stream& stream = backend.stream();

  weft::GemmArgs g;
  g.b = b.w;
  g.transpose_b = true;
  const std::function<void()> run = [&] {
    if (op == Op::kAgGemm) {
      switch (v) {
        case Variant::kPlain:
          comm.all_gather(b.a, b.gathered, stream);
          g.a = b.gathered;
          g.c = b.out;
          backend.gemm(g);
          break;
        case Variant::kFused:
          g.a = b.a;
          g.c = b.out;
          weft::all_gather_gemm(ctx, g, b.gathered);
          break;
        case Variant::kComm:
          comm.all_gather(b.a, b.gathered, stream);
          break;
        case Variant::kGemm:
          g.a = b.gathered;
          g.c = b.out;
          backend.gemm(g);
          break;
      }
    } else {
      g.a = b.a;
      switch (v) {
        case Variant::kPlain:
          g.c = b.partial;
          backend.gemm(g);
          comm.reduce_scatter(b.partial, b.out, weft::ReduceOp::kSum, stream);
          break;
        case Variant::kFused:
          g.c = b.out;
          weft::gemm_reduce_scatter(ctx, g, b.workspace);
          break;
        case Variant::kComm:
          comm.reduce_scatter(b.partial, b.out, weft::ReduceOp::kSum, stream);
          break;
        case Variant::kGemm:
          g.c = b.partial;
          backend.gemm(g);
          break;
      }
    }
    stream.synchronize();
  };
  for (int i = 0; i < 2; ++i) run();  // warm-up: GEMM plans, NCCL connections, caches

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
  const double seconds = total / static_cast<double>(state.iterations());
  state.counters["ms"] = seconds * 1e3;
  if (v != Variant::kComm) state.counters["TFLOP/s"] = rank_flops(op, c, tp) / seconds * 1e-12;
}

std::string bench_name(const Transport& t, Op op, const Case& c, Variant v) {
  return std::string("BM_Overlap/") + t.name + "/" + op_name(op) + "/" + c.name + "/" +
         variant_name(v);
}

struct Row {
  Transport transport;
  Op op;
  Case shape;
};

void print_table(const weft::bench::CollectingReporter& reporter, const std::vector<Row>& rows,
                 int ranks) {
  std::printf("\noverlap at TP %d (time of one op, slowest rank, median over repetitions)\n",
              ranks);
  std::printf("%-6s %-8s %-8s %-6s %22s %10s %10s %10s %10s %8s %8s\n", "comm", "op", "shape",
              "dtype", "M x K x N", "plain ms", "fused ms", "comm ms", "gemm ms", "hidden",
              "speedup");
  for (const Row& r : rows) {
    double t[4];
    bool ran = true;
    for (Variant v : kVariants) {
      t[static_cast<int>(v)] = reporter.median(bench_name(r.transport, r.op, r.shape, v), "ms");
      ran = ran && t[static_cast<int>(v)] >= 0;
    }
    if (!ran) continue;  // filtered out
    const double plain = t[0], fused = t[1], comm = t[2], gemm = t[3];
    const std::string dims = std::to_string(r.shape.m) + "x" + std::to_string(r.shape.k) + "x" +
                             std::to_string(r.shape.n);
    std::printf("%-6s %-8s %-8s %-6s %22s %10.3f %10.3f %10.3f %10.3f %7.0f%% %8.2f\n",
                r.transport.name.c_str(), op_name(r.op), r.shape.name.c_str(),
                weft::dtype_name(r.shape.dtype), dims.c_str(), plain, fused, comm, gemm,
                100.0 * (plain - fused) / comm, plain / fused);
  }
  std::printf("hidden = (plain - fused) / comm; speedup = plain / fused\n");
}

int run(int argc, char** argv) {
  std::unique_ptr<Communicator> world = weft::make_mpi_world_communicator();
  const int rank = world->rank(), tp = world->size();
  if (rank != 0) weft::bench::drop_output_flags(&argc, argv);
  benchmark::Initialize(&argc, argv);
  weft::bench::refuse_unrecognized_arguments("bench_overlap", argc, argv);

  std::unique_ptr<Backend> host = weft::make_cpu_backend();
  benchmark::AddCustomContext("weft_version", WEFT_VERSION_STRING);
  benchmark::AddCustomContext("ranks", std::to_string(tp));
  benchmark::AddCustomContext("mpi_library", weft::bench::mpi_library_version());
  benchmark::AddCustomContext("cpu_backend", host->name());

  std::vector<Row> rows;
  const Transport mpi{"mpi", world.get(), host.get()};
  for (Op op : {Op::kAgGemm, Op::kGemmRs}) {
    const bool fc1 = op == Op::kAgGemm;
    rows.push_back(
        {mpi, op, Case{"mlp-h1k", 2048, fc1 ? 1024 : 4096, fc1 ? 4096 : 1024, DType::kF32, 10}});
    rows.push_back({mpi, op, Case{"narrow", 4096, 2048, 128 * tp, DType::kF32, 10}});
  }

#if WEFT_HAVE_CUDA
  // NCCL only (make_runtime picks it when every rank of a node has a GPU of its own): the
  // staged communicator has no transfer worth hiding behind a GEMM. Decided by all ranks
  // together, so that they register the same benchmarks.
  weft::Runtime gpu;
  if (weft::cuda_on_every_rank(*world)) gpu = weft::make_runtime("cuda", *world);
  if (gpu.world != nullptr && gpu.world->name() == "nccl") {
    benchmark::AddCustomContext("gpu", gpu.backend->name());
    const Transport cuda{"nccl", gpu.world.get(), gpu.backend.get()};
    rows.push_back({cuda, Op::kAgGemm, Case{"flux", 4096, 12288, 49152, DType::kBF16, 20}});
    rows.push_back({cuda, Op::kGemmRs, Case{"flux", 4096, 49152, 12288, DType::kBF16, 20}});
  } else if (rank == 0 && gpu.world != nullptr) {
    std::printf("CUDA cases skipped: the ranks of a node share GPUs; NCCL needs one per rank\n");
  }
#endif

  for (const Row& r : rows) {
    for (Variant v : kVariants) {
      benchmark::RegisterBenchmark(
          bench_name(r.transport, r.op, r.shape, v).c_str(),
          [r, v](benchmark::State& st) { bm_overlap(st, r.transport, r.op, r.shape, v); })
          ->Iterations(r.shape.iterations)
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond);
    }
  }

  weft::bench::run_benchmarks_on_all_ranks(
      rank, [&](weft::bench::CollectingReporter& reporter) { print_table(reporter, rows, tp); });
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return weft::bench::mpi_benchmark_main("bench_overlap", argc, argv, run);
}
