// bench_gemm: Backend::gemm against the raw library call at the GEMM shapes of a GPT layer.
//
// What it measures: GFLOP/s (2*m*n*k per call) of weft's GEMM and of the library underneath it,
// called directly at the same shape, layout and dtype, side by side in one run:
//   BM_GemmCpu/weft/...   make_cpu_backend()->gemm        BM_GemmCpu/onednn/...  a oneDNN matmul
//   BM_GemmCuda/weft/...  make_cuda_backend(0)->gemm      BM_GemmCuda/cublaslt/... cublasLtMatmul
// The raw primitive is created once, outside the timed loop; only its execution is timed. The
// CUDA pairs (bf16 in, f32 accumulate, bf16 out; timed with CUDA events) are registered only in a
// CUDA build with a visible GPU. Shapes, at tokens = 2048 (CPU hidden 128 to 2048, and at tokens
// 256 hidden 128 to 1024: a micro-batch of a small model; CUDA hidden 1024, 2048 and, at tokens
// 8192, 8192), for hidden h and tensor-parallel size tp, row-major, C = op(A) op(B):
//   qkv_fwd   [tokens x h]      * [3h/tp x h]^T      (ColumnParallelLinear forward)
//   fc1_fwd   [tokens x h]      * [4h/tp x h]^T
//   fc2_fwd   [tokens x 4h/tp]  * [h x 4h/tp]^T      (RowParallelLinear forward)
//   fc1_dgrad [tokens x 4h/tp]  * [4h/tp x h]        (input gradient of fc1, no transpose)
//   fc1_wgrad [tokens x 4h/tp]^T * [tokens x h]      (weight gradient of fc1, transpose_a)
// The three layouts are the three roles of a linear layer's GEMMs; the layout planner's
// calibration (weft_plan --calibrate) keeps each role's measured rates apart.
// After the run it prints a table of weft / raw per shape; a ratio below about 0.97 is overhead
// in weft worth looking at.
//
// Run (or scripts/bench OUT_DIR, which also builds):
//   build/bin/bench_gemm --benchmark_out=gemm.json --benchmark_out_format=json
//   build/bin/bench_gemm --benchmark_filter='Cpu/.*/bf16/'      (a subset)
#include <benchmark/benchmark.h>
#include <omp.h>

#include <cstdio>
#include <exception>
#include <memory>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "bench_common.hpp"
#include "weft/backend.hpp"
#include "weft/config.hpp"
#include "weft/error.hpp"
#include "weft/tensor.hpp"

#if WEFT_HAVE_CUDA
#include <cublasLt.h>
#include <cuda_runtime.h>
#endif

namespace {

using weft::Backend;
using weft::DType;
using weft::Shape;
using weft::Tensor;

// One GEMM of a transformer layer, in GemmArgs' terms: op(A) is m x k, op(B) is k x n.
struct GemmShape {
  std::string op;
  int64_t m, n, k;
  bool transpose_a, transpose_b;

  Shape a_shape() const { return transpose_a ? Shape{k, m} : Shape{m, k}; }
  Shape b_shape() const { return transpose_b ? Shape{n, k} : Shape{k, n}; }
  double flops() const { return 2.0 * static_cast<double>(m) * static_cast<double>(n) * k; }
};

// Megatron's local GEMMs for one layer at tensor-parallel size tp (weights are [out x in]).
std::vector<GemmShape> layer_gemms(int64_t tokens, int64_t h, int64_t tp) {
  return {
      {"qkv_fwd", tokens, 3 * h / tp, h, false, true},
      {"fc1_fwd", tokens, 4 * h / tp, h, false, true},
      {"fc2_fwd", tokens, h, 4 * h / tp, false, true},
      {"fc1_dgrad", tokens, h, 4 * h / tp, false, false},  // dX1 = dY1 W1
      {"fc1_wgrad", 4 * h / tp, h, tokens, true, false},  // dW1 = dY1^T X
  };
}

// A, B (random) and C of one shape, allocated by the backend that runs the GEMM.
struct Operands {
  Tensor a, b, c;
  Operands(Backend& backend, const GemmShape& s, DType dtype)
      : a(backend, s.a_shape(), dtype),
        b(backend, s.b_shape(), dtype),
        c(backend, Shape{s.m, s.n}, dtype) {
    weft::bench::fill_input(backend, a, 1);
    weft::bench::fill_input(backend, b, 2);
  }
  weft::GemmArgs args(const GemmShape& s) const {
    weft::GemmArgs args;
    args.a = a;
    args.b = b;
    args.c = c;
    args.transpose_a = s.transpose_a;
    args.transpose_b = s.transpose_b;
    return args;
  }
};

void set_flops(benchmark::State& state, const GemmShape& s) {
  state.counters["GFLOP/s"] =
      benchmark::Counter(s.flops() * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  // The shape, for readers of the JSON (the planner's calibration keys its GEMM table by it).
  state.counters["m"] = static_cast<double>(s.m);
  state.counters["n"] = static_cast<double>(s.n);
  state.counters["k"] = static_cast<double>(s.k);
}

// A benchmark that throws (an unsupported dtype, a failed allocation) is reported as failed and
// the others still run.
template <typename Fn>
auto guarded(Fn fn) {
  return [fn](benchmark::State& state) {
    try {
      fn(state);
    } catch (const std::exception& e) {
      state.SkipWithError(e.what());
    }
  };
}

void bm_weft_cpu(benchmark::State& state, Backend& backend, const GemmShape& s, DType dtype) {
  Operands x(backend, s, dtype);
  const weft::GemmArgs args = x.args(s);
  backend.gemm(args);  // first call: primitive creation, first touch of C
  for (auto _ : state) {
    backend.gemm(args);
    backend.synchronize();
  }
  set_flops(state, s);
}

// The oneDNN matmul that weft's CPU GEMM should cost the same as: plain row-major layouts
// (transposes as strides), no attributes, created once.
void bm_onednn(benchmark::State& state, Backend& backend, const GemmShape& s, DType dtype) {
  WEFT_CHECK(dtype == DType::kF32 || dtype == DType::kBF16, "oneDNN baseline: f32 or bf16 only");
  Operands x(backend, s, dtype);
  using dims = dnnl::memory::dims;
  const auto dt =
      dtype == DType::kF32 ? dnnl::memory::data_type::f32 : dnnl::memory::data_type::bf16;
  const dnnl::memory::desc a_md({s.m, s.k}, dt, s.transpose_a ? dims{1, s.m} : dims{s.k, 1});
  const dnnl::memory::desc b_md({s.k, s.n}, dt, s.transpose_b ? dims{1, s.k} : dims{s.n, 1});
  const dnnl::memory::desc c_md({s.m, s.n}, dt, dims{s.n, 1});
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), engine);
  const dnnl::matmul matmul(pd);
  const std::unordered_map<int, dnnl::memory> args{
      {DNNL_ARG_SRC, dnnl::memory(a_md, engine, x.a.data())},
      {DNNL_ARG_WEIGHTS, dnnl::memory(b_md, engine, x.b.data())},
      {DNNL_ARG_DST, dnnl::memory(c_md, engine, x.c.data())}};
  matmul.execute(stream, args);
  stream.wait();
  for (auto _ : state) {
    matmul.execute(stream, args);
    stream.wait();
  }
  set_flops(state, s);
}

#if WEFT_HAVE_CUDA

std::string cublas_status_text(cublasStatus_t status) {
  return "cuBLAS status " + std::to_string(static_cast<int>(status));
}
#define BENCH_CHECK_CUDA(expr) \
  WEFT_CHECK_GEN(::weft::ErrorCode::kCuda, (expr), cudaSuccess, cudaGetErrorString, "bench_gemm")
#define BENCH_CHECK_CUBLAS(expr)                                                                \
  WEFT_CHECK_GEN(::weft::ErrorCode::kCublas, (expr), CUBLAS_STATUS_SUCCESS, cublas_status_text, \
                 "bench_gemm")

// Times work queued on one stream between start() and stop() by CUDA events: GPU time only.
class EventTimer {
 public:
  explicit EventTimer(cudaStream_t stream) : stream_(stream) {
    BENCH_CHECK_CUDA(cudaEventCreate(&start_));
    BENCH_CHECK_CUDA(cudaEventCreate(&stop_));
  }
  ~EventTimer() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;

  void start() { BENCH_CHECK_CUDA(cudaEventRecord(start_, stream_)); }
  double stop_seconds() {
    BENCH_CHECK_CUDA(cudaEventRecord(stop_, stream_));
    BENCH_CHECK_CUDA(cudaEventSynchronize(stop_));
    float ms = 0.0f;
    BENCH_CHECK_CUDA(cudaEventElapsedTime(&ms, start_, stop_));
    return 1e-3 * ms;
  }

 private:
  cudaStream_t stream_;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

cudaStream_t native_stream(Backend& backend) {
  return static_cast<cudaStream_t>(backend.stream().native_handle());
}

void bm_weft_cuda(benchmark::State& state, Backend& backend, const GemmShape& s, DType dtype) {
  Operands x(backend, s, dtype);
  const weft::GemmArgs args = x.args(s);
  backend.gemm(args);  // first call: handle, heuristic, workspace
  backend.synchronize();
  EventTimer timer(native_stream(backend));
  for (auto _ : state) {
    timer.start();
    backend.gemm(args);
    state.SetIterationTime(timer.stop_seconds());
  }
  set_flops(state, s);
}

// A bare cublasLtMatmul: bf16 A and B, f32 compute, bf16 C, the heuristic's first algorithm and
// a 32 MiB workspace. Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, so B is
// cuBLASLt's first operand; a row-major r x c matrix is column-major c x r with ld = c.
class LtGemm {
 public:
  explicit LtGemm(const GemmShape& s) {
    BENCH_CHECK_CUBLAS(cublasLtCreate(&handle_));
    BENCH_CHECK_CUBLAS(cublasLtMatmulDescCreate(&desc_, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t trans_first = s.transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t trans_second = s.transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    BENCH_CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSA,
                                                      &trans_first, sizeof trans_first));
    BENCH_CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSB,
                                                      &trans_second, sizeof trans_second));
    const Shape b = s.b_shape(), a = s.a_shape();
    BENCH_CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&first_, CUDA_R_16BF, b[1], b[0], b[1]));
    BENCH_CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&second_, CUDA_R_16BF, a[1], a[0], a[1]));
    BENCH_CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&out_, CUDA_R_16BF, s.n, s.m, s.n));
    BENCH_CHECK_CUDA(cudaMalloc(&workspace_, kWorkspaceBytes));
    cublasLtMatmulPreference_t preference = nullptr;
    BENCH_CHECK_CUBLAS(cublasLtMatmulPreferenceCreate(&preference));
    const uint64_t workspace_bytes = kWorkspaceBytes;
    cublasStatus_t status =
        cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                             &workspace_bytes, sizeof workspace_bytes);
    int found = 0;
    if (status == CUBLAS_STATUS_SUCCESS) {
      status = cublasLtMatmulAlgoGetHeuristic(handle_, desc_, first_, second_, out_, out_,
                                              preference, 1, &heuristic_, &found);
    }
    cublasLtMatmulPreferenceDestroy(preference);
    BENCH_CHECK_CUBLAS(status);
    WEFT_CHECK(found > 0, "cuBLASLt has no algorithm for ", s.op, " ", s.m, "x", s.n, "x", s.k);
  }
  ~LtGemm() {
    cudaFree(workspace_);
    cublasLtMatrixLayoutDestroy(out_);
    cublasLtMatrixLayoutDestroy(second_);
    cublasLtMatrixLayoutDestroy(first_);
    cublasLtMatmulDescDestroy(desc_);
    cublasLtDestroy(handle_);
  }
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  void run(const Operands& x, cudaStream_t stream) {
    const float alpha = 1.0f, beta = 0.0f;
    BENCH_CHECK_CUBLAS(cublasLtMatmul(handle_, desc_, &alpha, x.b.data(), first_, x.a.data(),
                                      second_, &beta, x.c.data(), out_, x.c.data(), out_,
                                      &heuristic_.algo, workspace_, kWorkspaceBytes, stream));
  }

 private:
  static constexpr size_t kWorkspaceBytes = size_t{32} << 20;
  cublasLtHandle_t handle_ = nullptr;
  cublasLtMatmulDesc_t desc_ = nullptr;
  cublasLtMatrixLayout_t first_ = nullptr, second_ = nullptr, out_ = nullptr;
  cublasLtMatmulHeuristicResult_t heuristic_{};
  void* workspace_ = nullptr;
};

void bm_cublaslt(benchmark::State& state, Backend& backend, const GemmShape& s) {
  Operands x(backend, s, DType::kBF16);
  const cudaStream_t stream = native_stream(backend);
  LtGemm gemm(s);
  gemm.run(x, stream);
  BENCH_CHECK_CUDA(cudaStreamSynchronize(stream));
  EventTimer timer(stream);
  for (auto _ : state) {
    timer.start();
    gemm.run(x, stream);
    state.SetIterationTime(timer.stop_seconds());
  }
  set_flops(state, s);
}

#endif  // WEFT_HAVE_CUDA

// A weft benchmark and its raw baseline, registered next to each other.
struct Pair {
  std::string family, weft_name, raw_name, key;
  GemmShape shape;
};

std::string shape_key(DType dtype, int64_t tokens, int64_t h, int64_t tp, const GemmShape& s) {
  return std::string(weft::dtype_name(dtype)) + "/T" + std::to_string(tokens) + "_h" +
         std::to_string(h) + "_tp" + std::to_string(tp) + "/" + s.op;
}

// Best of the repetitions (--benchmark_repetitions): on a shared machine the slow runs are the
// ones something else interrupted, so the fastest is the best estimate of each side's speed.
void print_ratio_table(const weft::bench::CollectingReporter& reporter,
                       const std::vector<Pair>& pairs) {
  std::printf("\nGEMM GFLOP/s (best of repetitions): weft against the raw library call\n");
  std::printf("%-11s %-29s %6s %6s %6s %5s %9s %9s %7s\n", "family", "shape", "m", "n", "k", "reps",
              "weft", "raw", "ratio");
  for (const Pair& p : pairs) {
    const std::string weft_name = p.family + "/" + p.weft_name + "/" + p.key;
    const double weft = reporter.max(weft_name, "GFLOP/s");
    const double raw = reporter.max(p.family + "/" + p.raw_name + "/" + p.key, "GFLOP/s");
    if (weft < 0 && raw < 0) continue;  // filtered out
    std::printf("%-11s %-29s %6lld %6lld %6lld %5zu %9.1f %9.1f ", p.family.c_str(), p.key.c_str(),
                static_cast<long long>(p.shape.m), static_cast<long long>(p.shape.n),
                static_cast<long long>(p.shape.k), reporter.values(weft_name, "GFLOP/s").size(),
                weft, raw);
    if (weft > 0 && raw > 0) {
      std::printf("%7.3f\n", weft / raw);
    } else {
      std::printf("%7s\n", "-");
    }
  }
}

std::string onednn_version() {
  const dnnl_version_t* v = dnnl_version();
  return std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
         std::to_string(v->patch) + " (" + v->hash + ")";
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  try {
    std::vector<Pair> pairs;
    std::unique_ptr<Backend> cpu = weft::make_cpu_backend();
    // The small sizes give the layout planner's GEMM rates (weft_plan --calibrate).
    const std::pair<int64_t, int64_t> cpu_sizes[] = {{64, 128},    {64, 256},    {64, 512},
                                                     {256, 128},   {256, 256},   {256, 512},
                                                     {256, 1024},  {2048, 128},  {2048, 256},
                                                     {2048, 512},  {2048, 1024}, {2048, 2048}};
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      for (const auto& [tokens, h] : cpu_sizes) {
        for (int64_t tp : {1, 2}) {
          for (const GemmShape& s : layer_gemms(tokens, h, tp)) {
            Pair p{"BM_GemmCpu", "weft", "onednn", shape_key(dtype, tokens, h, tp, s), s};
            Backend& backend = *cpu;
            benchmark::RegisterBenchmark((p.family + "/weft/" + p.key).c_str(),
                                         guarded([&backend, s, dtype](benchmark::State& st) {
                                           bm_weft_cpu(st, backend, s, dtype);
                                         }))
                ->UseRealTime()
                ->Unit(benchmark::kMillisecond);
            benchmark::RegisterBenchmark((p.family + "/onednn/" + p.key).c_str(),
                                         guarded([&backend, s, dtype](benchmark::State& st) {
                                           bm_onednn(st, backend, s, dtype);
                                         }))
                ->UseRealTime()
                ->Unit(benchmark::kMillisecond);
            pairs.push_back(std::move(p));
          }
        }
      }
    }
    benchmark::AddCustomContext("weft_version", WEFT_VERSION_STRING);
    benchmark::AddCustomContext("weft_cpu_backend", cpu->name());
    benchmark::AddCustomContext("onednn_version", onednn_version());
    benchmark::AddCustomContext("omp_threads", std::to_string(omp_get_max_threads()));

#if WEFT_HAVE_CUDA
    std::unique_ptr<Backend> cuda;
    if (weft::cuda_device_count() > 0) {
      cuda = weft::make_cuda_backend(0);
      Backend& backend = *cuda;
      const std::pair<int64_t, int64_t> sizes[] = {{2048, 1024}, {2048, 2048}, {8192, 8192}};
      for (const auto& [tokens, h] : sizes) {
        for (int64_t tp : {1, 2}) {
          for (const GemmShape& s : layer_gemms(tokens, h, tp)) {
            Pair p{"BM_GemmCuda", "weft", "cublaslt", shape_key(DType::kBF16, tokens, h, tp, s), s};
            benchmark::RegisterBenchmark((p.family + "/weft/" + p.key).c_str(),
                                         guarded([&backend, s](benchmark::State& st) {
                                           bm_weft_cuda(st, backend, s, DType::kBF16);
                                         }))
                ->UseManualTime()
                ->Unit(benchmark::kMicrosecond);
            benchmark::RegisterBenchmark(
                (p.family + "/cublaslt/" + p.key).c_str(),
                guarded([&backend, s](benchmark::State& st) { bm_cublaslt(st, backend, s); }))
                ->UseManualTime()
                ->Unit(benchmark::kMicrosecond);
            pairs.push_back(std::move(p));
          }
        }
      }
      int runtime = 0;
      cudaRuntimeGetVersion(&runtime);
      benchmark::AddCustomContext("weft_cuda_backend", cuda->name());
      benchmark::AddCustomContext("cuda_runtime_version", std::to_string(runtime));
      benchmark::AddCustomContext("cublaslt_version", std::to_string(cublasLtGetVersion()));
    }
#endif

    weft::bench::CollectingReporter reporter;
    benchmark::RunSpecifiedBenchmarks(&reporter);
    print_ratio_table(reporter, pairs);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gemm: %s\n", e.what());
    return 1;
  }
  benchmark::Shutdown();
  return 0;
}
