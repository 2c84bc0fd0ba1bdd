// make_runtime: the engine names, the communicator choice and its errors, alike on every rank.
#include <gtest/gtest.h>

#include <cstdlib>

#include "common/test_util.hpp"
#include "dist/dist_env.hpp"

namespace weft::testing {
namespace {

TEST(Runtime, CpuIsOneDnnWithAPrivateMpiWorld) {
  Runtime rt = make_runtime("cpu", host_world());
  ASSERT_NE(rt.backend, nullptr);
  EXPECT_TRUE(rt.backend->device().is_cpu());
  EXPECT_EQ(rt.world->name(), "mpi");
  EXPECT_EQ(rt.world->size(), host_world().size());
  EXPECT_EQ(rt.world->rank(), host_world().rank());
  EXPECT_NE(rt.description.find("cpu + mpi"), std::string::npos) << rt.description;
  // The world works, and a self group of the engine too.
  Tensor one = from_host(*rt.backend, Shape({1}), DType::kF32, [](int64_t) { return 1; });
  rt.world->all_reduce(one, one, ReduceOp::kSum, rt.backend->stream());
  EXPECT_EQ(to_host(*rt.backend, one)[0], host_world().size());
  std::unique_ptr<Communicator> self = rt.make_self();
  EXPECT_EQ(self->size(), 1);
  EXPECT_EQ(self->buffer_device(), DeviceKind::kCpu);
  // The node's memory shared by its ranks (the tests run on one node), in whole MiB.
  const int64_t share = host_memory_bytes() / ranks_on_this_node(host_world());
  EXPECT_GT(host_memory_bytes(), int64_t{1} << 30);
  EXPECT_LE(rt.memory_per_rank_bytes, share);
  EXPECT_GT(rt.memory_per_rank_bytes, share - (int64_t{1} << 20));
}

TEST(Runtime, BadNamesAreRejectedOnEveryRank) {
  expect_error_on_every_rank([] { make_runtime("gpu", host_world()); }, {"cpu or cuda", "'gpu'"});
  RuntimeOptions nccl;
  nccl.comm = "nccl";
  expect_error_on_every_rank([&] { make_runtime("cpu", host_world(), nccl); },
                             {"'nccl'", "cpu backend"});
  RuntimeOptions bogus;
  bogus.comm = "bogus";
  expect_error_on_every_rank([&] { make_runtime("cuda", host_world(), bogus); },
                             {"'bogus'", "cuda backend"});
}

// Without a GPU on every rank, every rank stops at the choice with the reason; with one, the
// communicator follows from how many ranks share this node's GPUs (the tests run on one node).
TEST(Runtime, CudaPicksNcclOrTheStagedCommunicator) {
  if (!cuda_on_every_rank(host_world())) {
    expect_error_on_every_rank([] { make_runtime("cuda", host_world()); },
                               {"needs a GPU on every rank"});
    return;
  }
  const bool shared = host_world().size() > cuda_device_count();
  {
    Runtime rt = make_runtime("cuda", host_world());
    EXPECT_EQ(rt.world->name(), shared ? "mpi-staged" : "nccl") << rt.description;
    EXPECT_EQ(rt.backend->device(), Device::cuda(host_world().rank() % cuda_device_count()));
    EXPECT_EQ(rt.make_self()->buffer_device(), DeviceKind::kCuda);
    // The GPU's memory shared by the ranks that use it (local rank r uses GPU r % devices).
    const int devices = cuda_device_count();
    const int64_t gpu = cuda_device_memory_bytes(rt.backend->device().index);
    const int sharing = (host_world().size() - rt.backend->device().index + devices - 1) / devices;
    EXPECT_GT(gpu, int64_t{1} << 30);
    EXPECT_LE(rt.memory_per_rank_bytes, gpu / sharing);
    EXPECT_GT(rt.memory_per_rank_bytes, 0);
  }
  RuntimeOptions staged;
  staged.comm = "mpi-staged";
  EXPECT_EQ(make_runtime("cuda", host_world(), staged).world->name(), "mpi-staged");
  RuntimeOptions nccl;
  nccl.comm = "nccl";
  if (shared) {
    expect_error_on_every_rank([&] { make_runtime("cuda", host_world(), nccl); },
                               {"share a device", "mpi-staged"});
  }
}

}  // namespace
}  // namespace weft::testing
