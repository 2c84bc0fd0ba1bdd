// main() for the distributed tests: MPI up, run every test on every rank, agree on the verdict.
//
// Only rank 0 prints the usual GoogleTest output; other ranks print their failures alone,
// prefixed with the rank. The exit code is non-zero on every rank if any rank failed.
#include <gtest/gtest.h>

#include <cstdio>

#include "dist/dist_env.hpp"

namespace weft::testing {
namespace {
std::unique_ptr<Communicator> g_world;

// Prints failed assertions from a rank other than 0 (rank 0 has the default printer).
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (result.failed()) {
      std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_,
                   result.file_name() ? result.file_name() : "?", result.line_number(),
                   result.summary());
    }
  }

 private:
  int rank_;
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
    if (rank != 0) {
      delete listeners.Release(listeners.default_result_printer());
      listeners.Append(new weft::testing::RankFailurePrinter(rank));
    }
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
