// Helpers shared by weft's Google Benchmark binaries: reporters, flag handling, input filling.
#pragma once

#include <benchmark/benchmark.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "weft/backend.hpp"
#include "weft/comm.hpp"
#include "weft/dtype.hpp"
#include "weft/error.hpp"
#include "weft/tensor.hpp"

namespace weft::bench {

// ConsoleReporter colours whatever it writes to, a log file too; colour only a terminal. (Not
// for MPI programs: mpirun hands every rank a pseudo-terminal even when its output is a file.)
inline benchmark::ConsoleReporter::OutputOptions console_options() {
  return isatty(fileno(stdout)) ? benchmark::ConsoleReporter::OO_ColorTabular
                                : benchmark::ConsoleReporter::OO_Tabular;
}

// The console reporter, keeping every run's counters so that main can print a summary table
// (ratios, sweeps) once all benchmarks have run.
class CollectingReporter : public benchmark::ConsoleReporter {
 public:
  explicit CollectingReporter(OutputOptions options = console_options())
      : ConsoleReporter(options) {}

  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
      if (run.error_occurred || run.run_type != Run::RT_Iteration) continue;
      for (const auto& [counter, value] : run.counters) {
        values_[run.run_name.function_name][counter].push_back(value.value);
      }
    }
  }

  // The median, or the largest value, over repetitions of `counter` for the benchmark
  // registered as `name`; negative when it did not run (filtered out, or failed).
  double median(const std::string& name, const std::string& counter) const {
    std::vector<double> v = values(name, counter);
    if (v.empty()) return -1.0;
    std::sort(v.begin(), v.end());
    size_t mid = v.size() / 2;
    return v.size() % 2 ? v[mid] : 0.5 * (v[mid - 1] + v[mid]);
  }
  double max(const std::string& name, const std::string& counter) const {
    std::vector<double> v = values(name, counter);
    return v.empty() ? -1.0 : *std::max_element(v.begin(), v.end());
  }
  std::vector<double> values(const std::string& name, const std::string& counter) const {
    auto by_name = values_.find(name);
    if (by_name == values_.end()) return {};
    auto by_counter = by_name->second.find(counter);
    if (by_counter == by_name->second.end()) return {};
    return by_counter->second;
  }

 private:
  std::map<std::string, std::map<std::string, std::vector<double>>> values_;
};

// For the ranks that must stay silent: rank 0 alone prints and writes JSON.
class NullReporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

// Drops --benchmark_out and --benchmark_out_format from argv: given the flag, Google Benchmark
// opens the file itself on every rank, and all ranks would write the same path.
inline void drop_output_flags(int* argc, char** argv) {
  int kept = 1;
  for (int i = 1; i < *argc; ++i) {
    if (std::strncmp(argv[i], "--benchmark_out=", 16) == 0 ||
        std::strncmp(argv[i], "--benchmark_out_format=", 23) == 0) {
      continue;
    }
    argv[kept++] = argv[i];
  }
  *argc = kept;
  argv[kept] = nullptr;
}

// Fills a benchmark input with uniform values in [-1, 1): random, because GPUs clock higher on
// zeros and the timings would flatter us. Host buffers use a cheap LCG (filling hundreds of MiB
// with Philox would dominate setup); device buffers use the backend's fill_random.
inline void fill_input(Backend& backend, TensorView view, uint64_t seed) {
  if (!view.device.is_cpu()) {
    RandomFill spec;
    spec.distribution = Distribution::kUniform;
    spec.seed = seed;
    spec.a = -1.0;
    spec.b = 1.0;
    backend.fill_random(view.reshaped(Shape{1, view.numel()}), spec);
    backend.synchronize();
    return;
  }
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  const int64_t n = view.numel();
  for (int64_t i = 0; i < n; ++i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    float value = static_cast<float>(static_cast<int64_t>(state >> 40) - (1 << 23)) / (1 << 23);
    switch (view.dtype) {
      case DType::kF32:
        view.as<float>()[i] = value;
        break;
      case DType::kBF16:
        view.as<bf16_t>()[i] = float_to_bf16(value);
        break;
      case DType::kF16:
        view.as<f16_t>()[i] = float_to_f16(value);
        break;
      case DType::kI32:  // token ids: small non-negative integers
        view.as<int32_t>()[i] = static_cast<int32_t>(state >> 57);
        break;
    }
  }
}

// Runs every registered benchmark on every rank (fixed iteration counts, so that the ranks'
// collectives pair up); rank 0 reports and then `summarize` prints its tables from what was
// collected, the other ranks stay silent.
inline void run_benchmarks_on_all_ranks(int rank,
                                        const std::function<void(CollectingReporter&)>& summarize) {
  if (rank == 0) {
    CollectingReporter reporter(benchmark::ConsoleReporter::OO_Tabular);
    benchmark::RunSpecifiedBenchmarks(&reporter);
    summarize(reporter);
  } else {
    NullReporter silent;
    benchmark::RunSpecifiedBenchmarks(&silent);
  }
  benchmark::Shutdown();
}

// A bad command line. Every rank parses the same one and throws this alike, so that every rank
// exits with status 2 and none is left waiting for the others in a collective.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// After benchmark::Initialize, the arguments left in argv are ones it did not recognize: a usage
// error on every rank alike (not only on rank 0, which would leave the others running).
inline void refuse_unrecognized_arguments(const char* program, int argc, char** argv) {
  if (argc <= 1) return;
  std::string list;
  for (int i = 1; i < argc; ++i) list += std::string(" '") + argv[i] + "'";
  throw UsageError(std::string(program) + ": unrecognized argument(s):" + list +
                   " (see --help)");
}

// A non-negative integer flag value in [min, max], or a UsageError naming the flag.
inline int64_t parse_flag_int(const char* flag, const char* text, int64_t min, int64_t max) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text, &end, 10);
  if (*text == '\0' || *end != '\0' || errno != 0 || v < min || v > max) {
    throw UsageError(std::string(flag) + " expects an integer in [" + std::to_string(min) + ", " +
                     std::to_string(max) + "], got '" + text + "'");
  }
  return v;
}

// main() of a benchmark run under mpirun. A usage error (the same on every rank) exits with
// status 2 on every rank after rank 0 prints why; any other exception ends the whole job, since a
// rank that stopped alone would leave the others waiting in a collective forever.
inline int mpi_benchmark_main(const char* name, int argc, char** argv, int (*run)(int, char**)) {
  MpiRuntime mpi(&argc, &argv);
  try {
    return run(argc, argv);
  } catch (const UsageError& e) {
    if (error_rank() <= 0) std::fprintf(stderr, "%s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", name, e.what());
    std::fflush(stderr);
    MpiRuntime::abort(1);
  }
}

}  // namespace weft::bench
