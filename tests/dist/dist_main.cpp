// main() for the distributed tests: MPI up, run every test on every rank, agree on the verdict.
//
// Only rank 0 prints the usual GoogleTest output. A failed assertion on any rank ends the whole
// job at once (fail fast): the rank prints it, prefixed with the rank and the test, and calls
// MPI_Abort, instead of leaving its peers waiting in the test's next collective until ctest's
// timeout. The exit code is non-zero on every rank if any rank failed.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "dist/dist_env.hpp"

namespace weft::testing {
namespace {
std::unique_ptr<Communicator> g_world;

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
}  // namespace

Communicator& world() { return *g_world; }

std::vector<int> tp_sizes() {
  std::vector<int> sizes;
  for (int tp : {1, 2, 4}) {
    if (world().size() % tp == 0) sizes.push_back(tp);
  }
  return sizes;
}

}  // namespace weft::testing

int main(int argc, char** argv) {
  weft::MpiRuntime mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int failed = 1;
  try {
    weft::testing::g_world = weft::make_mpi_world_communicator();
    const int rank = weft::testing::g_world->rank();
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    if (rank != 0) delete listeners.Release(listeners.default_result_printer());
    // After rank 0's printer, so that its usual failure report comes out first.
    listeners.Append(new weft::testing::FailFast(rank));
    failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
    // Every rank learns whether any rank failed.
    float local = static_cast<float>(failed), any = 0.0f;
    weft::TensorView send{&local, weft::Shape({1}), weft::DType::kF32, weft::Device::cpu()};
    weft::TensorView recv{&any, weft::Shape({1}), weft::DType::kF32, weft::Device::cpu()};
    weft::testing::g_world->all_reduce(send, recv, weft::ReduceOp::kMax, weft::host_stream());
    failed = any > 0.0f ? 1 : 0;
    if (rank == 0) {
      std::printf("dist tests on %d ranks: %s\n", weft::testing::g_world->size(),
                  failed ? "FAILED on at least one rank" : "passed on every rank");
    }
    weft::testing::g_world.reset();
  } catch (const std::exception& e) {
    // An exception outside a test leaves peers inside a collective: end the whole job.
    std::fprintf(stderr, "fatal: %s\n", e.what());
    weft::MpiRuntime::abort(2);
  }
  return failed;
}
