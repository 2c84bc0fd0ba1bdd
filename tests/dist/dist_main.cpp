// main() for the distributed tests: MPI up, the engine WEFT_TEST_BACKEND names, run every test on
// every rank, agree on the verdict.
//
// Only rank 0 prints the usual GoogleTest output. With the cuda engine and no GPU every test is
// skipped, or fails under WEFT_REQUIRE_GPU=1. A failed assertion on any rank ends the whole
// job at once (fail fast): the rank prints it, prefixed with the rank and the test, and calls
// MPI_Abort, instead of leaving its peers waiting in the test's next collective until ctest's
// timeout. The exit code is non-zero on every rank if any rank failed.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "common/test_util.hpp"
#include "dist/dist_env.hpp"
#include "dist/host_staging_engine.hpp"

namespace weft::testing {
namespace {
std::unique_ptr<Communicator> g_host_world;
std::string g_engine = "cpu";
Runtime g_runtime;

// Prints a failed assertion with its rank and test, then ends every rank of the job. A failure
// on one rank often means that rank leaves the test early (ASSERT_*, an exception) while its
// peers wait in a collective forever; and a failure on every rank would fail the run anyway.
class FailFast : public ::testing::EmptyTestEventListener {
 public:
  explicit FailFast(int rank) : rank_(rank) {}
  // Kept here: UnitTest::current_test_info() would wait for the lock that GoogleTest holds while
  // it reports a result.
  void OnTestStart(const ::testing::TestInfo& test) override {
    test_ = std::string(test.test_suite_name()) + "." + test.name();
  }
  void OnTestEnd(const ::testing::TestInfo&) override { test_ = "(outside a test)"; }
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fflush(stdout);
    std::fprintf(stderr, "[rank %d] %s: %s:%d: Failure\n%s\n", rank_, test_.c_str(),
                 result.file_name() ? result.file_name() : "?", result.line_number(),
                 result.summary());
    std::fprintf(stderr, "[rank %d] failed: aborting every rank (fail fast)\n", rank_);
    std::fflush(stderr);
    weft::MpiRuntime::abort(1);
  }

 private:
  int rank_;
  std::string test_ = "(outside a test)";
};

// Skips every test (or fails them all under WEFT_REQUIRE_GPU=1) when the engine has no device.
class EngineEnvironment : public ::testing::Environment {
 public:
  explicit EngineEnvironment(bool available) : available_(available) {}
  void SetUp() override {
    if (available_) return;
    if (gpu_required()) FAIL() << "WEFT_REQUIRE_GPU=1 but no GPU is visible on every rank";
    GTEST_SKIP() << "no GPU visible for WEFT_TEST_BACKEND=cuda (set WEFT_REQUIRE_GPU=1 to make "
                    "this a failure)";
  }

 private:
  bool available_;
};
}  // namespace

Communicator& world() { return *g_runtime.world; }
Communicator& host_world() { return *g_host_world; }

std::unique_ptr<Backend> make_test_backend() {
  const Device device = g_runtime.backend->device();
  return device.is_cpu() ? make_cpu_backend() : make_cuda_backend(device.index);
}

std::unique_ptr<Communicator> make_test_self() { return g_runtime.make_self(); }

std::vector<int> tp_sizes() {
  std::vector<int> sizes;
  for (int tp : {1, 2, 4}) {
    if (world().size() % tp == 0) sizes.push_back(tp);
  }
  return sizes;
}

}  // namespace weft::testing

int main(int argc, char** argv) {
  namespace wt = weft::testing;
  weft::MpiRuntime mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int failed = 1;
  try {
    wt::g_host_world = weft::make_mpi_world_communicator();
    const int rank = wt::g_host_world->rank();
    if (const char* engine = std::getenv("WEFT_TEST_BACKEND"); engine != nullptr && *engine) {
      wt::g_engine = engine;
    }
    // Every rank reads the same environment, so every rank stops here alike.
    if (wt::g_engine != "cpu" && wt::g_engine != "cuda" && wt::g_engine != "cpu-staged") {
      if (rank == 0) {
        std::fprintf(stderr, "WEFT_TEST_BACKEND must be cpu, cuda or cpu-staged, got '%s'\n",
                     wt::g_engine.c_str());
      }
      return 2;
    }
    const bool available = wt::g_engine != "cuda" || weft::cuda_on_every_rank(*wt::g_host_world);
    if (wt::g_engine == "cpu-staged") {
      // The CPU engine with its world through the staged communicator, over host memory with
      // deferred copies and 1 KiB chunks: the GPU path's staging logic under every test.
      wt::g_runtime = weft::make_runtime("cpu", *wt::g_host_world);
      wt::g_runtime.world = weft::make_staged_communicator(
          wt::g_host_world->split(0, rank), std::make_shared<wt::DeferredHostEngine>(), 1024);
      wt::g_runtime.description = "cpu + mpi-staged (host memory, deferred copies, 1 KiB chunks)";
      if (rank == 0) std::printf("dist tests on %s\n", wt::g_runtime.description.c_str());
    } else if (available) {
      wt::g_runtime = weft::make_runtime(wt::g_engine, *wt::g_host_world);
      if (rank == 0) std::printf("dist tests on %s\n", wt::g_runtime.description.c_str());
    }
    if (!available && rank == 0) {
      std::printf("dist tests: no GPU visible for WEFT_TEST_BACKEND=cuda%s\n",
                  wt::gpu_required() ? ", required by WEFT_REQUIRE_GPU=1" : ": skipped");
    }
    ::testing::AddGlobalTestEnvironment(new wt::EngineEnvironment(available));
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    if (rank != 0) delete listeners.Release(listeners.default_result_printer());
    // After rank 0's printer, so that its usual failure report comes out first.
    listeners.Append(new weft::testing::FailFast(rank));
    failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
    // Every rank learns whether any rank failed.
    float local = static_cast<float>(failed), any = 0.0f;
    weft::TensorView send{&local, weft::Shape({1}), weft::DType::kF32, weft::Device::cpu()};
    weft::TensorView recv{&any, weft::Shape({1}), weft::DType::kF32, weft::Device::cpu()};
    wt::g_host_world->all_reduce(send, recv, weft::ReduceOp::kMax, weft::host_stream());
    failed = any > 0.0f ? 1 : 0;
    if (rank == 0) {
      std::printf("dist tests on %d ranks: %s\n", wt::g_host_world->size(),
                  failed ? "FAILED on at least one rank" : "passed on every rank");
    }
    wt::g_runtime.world.reset();  // communicators before the backend
    wt::g_runtime.backend.reset();
    wt::g_host_world.reset();
  } catch (const std::exception& e) {
    // An exception outside a test leaves peers inside a collective: end the whole job.
    std::fprintf(stderr, "fatal: %s\n", e.what());
    weft::MpiRuntime::abort(2);
  }
  return failed;
}
