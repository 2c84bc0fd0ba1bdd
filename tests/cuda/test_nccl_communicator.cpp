// NcclCommunicator at world size 1 (bootstrapped through the self communicator, so no mpirun):
// every collective returns its input, point-to-point to oneself works inside a group, split works.
#include <gtest/gtest.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_test_util.hpp"
#include "weft/comm.hpp"
#include "weft/error.hpp"

namespace weft::test {
namespace {

const DType kDtypes[] = {DType::kF32, DType::kBF16, DType::kF16};

TEST_F(NcclTest, Identity) {
  EXPECT_EQ(nccl().rank(), 0);
  EXPECT_EQ(nccl().size(), 1);
  EXPECT_EQ(nccl().name(), "nccl");
  EXPECT_EQ(nccl().buffer_device(), DeviceKind::kCuda);
}

TEST_F(NcclTest, CollectivesAtWorldSizeOneReturnTheInput) {
  for (DType dtype : kDtypes) {
    SCOPED_TRACE(dtype_name(dtype));
    Tensor host = random_host({17, 33}, dtype, 601);
    const std::vector<unsigned char> expected = bytes_of(host);
    Tensor send = to_device(host);
    Stream& stream = cuda().stream();

    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin}) {
      SCOPED_TRACE(reduce_op_name(op));
      Tensor recv = poisoned_device({17, 33}, dtype);
      nccl().all_reduce(send, recv, op, stream);
      EXPECT_TRUE(bitwise_equal(bytes_of(recv), expected)) << "all_reduce";

      Tensor scattered = poisoned_device({17, 33}, dtype);
      nccl().reduce_scatter(send, scattered, op, stream);
      EXPECT_TRUE(bitwise_equal(bytes_of(scattered), expected)) << "reduce_scatter";
    }

    Tensor in_place = to_device(host);
    nccl().all_reduce(in_place, in_place, ReduceOp::kSum, stream);
    EXPECT_TRUE(bitwise_equal(bytes_of(in_place), expected)) << "in-place all_reduce";

    Tensor gathered = poisoned_device({17, 33}, dtype);
    nccl().all_gather(send, gathered, stream);
    EXPECT_TRUE(bitwise_equal(bytes_of(gathered), expected)) << "all_gather";

    Tensor broadcast = to_device(host);
    nccl().broadcast(broadcast, 0, stream);
    EXPECT_TRUE(bitwise_equal(bytes_of(broadcast), expected)) << "broadcast";

    Tensor received = poisoned_device({17, 33}, dtype);
    nccl().group_start();
    nccl().send(send, 0, stream);
    nccl().recv(received, 0, stream);
    nccl().group_end();
    EXPECT_TRUE(bitwise_equal(bytes_of(received), expected)) << "send/recv to self";
  }
}

TEST_F(NcclTest, SplitAndBarrier) {
  std::unique_ptr<Communicator> child = nccl().split(0, 0);
  ASSERT_NE(child, nullptr);
  EXPECT_EQ(child->rank(), 0);
  EXPECT_EQ(child->size(), 1);
  EXPECT_EQ(child->name(), "nccl");

  Tensor host = random_host({8, 16}, DType::kF32, 602);
  Tensor send = to_device(host);
  Tensor recv = poisoned_device({8, 16}, DType::kF32);
  child->all_reduce(send, recv, ReduceOp::kSum, cuda().stream());
  EXPECT_TRUE(bitwise_equal(bytes_of(recv), bytes_of(host)));

  child->barrier();
  nccl().barrier();

  Communicator& block = nccl().block_group(1);  // split once, then shared
  EXPECT_EQ(&nccl().block_group(1), &block);
  EXPECT_EQ(block.name(), "nccl");
  Tensor again = poisoned_device({8, 16}, DType::kF32);
  block.all_reduce(send, again, ReduceOp::kSum, cuda().stream());
  EXPECT_TRUE(bitwise_equal(bytes_of(again), bytes_of(host)));
}

// NCCL's own group is opened only around the issue at the outermost end, and closed by a guard
// when that throws: a group that ends in an error, or that an exception abandons before its end,
// leaves the thread outside any NCCL group, so later collectives are launched, not deferred.
TEST_F(NcclTest, AFailedOrAbandonedGroupDoesNotHoldBackLaterCollectives) {
  Tensor host = random_host({64, 32}, DType::kF32, 604);
  const std::vector<unsigned char> expected = bytes_of(host);
  Tensor send = to_device(host);
  auto other = cuda().create_stream(StreamPriority::kNormal);

  Tensor unused = poisoned_device({64, 32}, DType::kF32);
  nccl().group_start();
  nccl().send(send, 0, cuda().stream());
  nccl().recv(unused, 0, *other);
  EXPECT_THROW(nccl().group_end_async(), Error);  // two streams in one async group
  Tensor recv = poisoned_device({64, 32}, DType::kF32);
  nccl().all_reduce(send, recv, ReduceOp::kSum, cuda().stream());
  EXPECT_TRUE(bitwise_equal(bytes_of(recv), expected)) << "after a failed group end";

  // An exception between group_start and group_end: the caller never ends the group.
  auto abandoned = make_nccl_communicator(*bootstrap_, 0);
  abandoned->group_start();
  Tensor on_host = random_host({64, 32}, DType::kF32, 605);
  EXPECT_THROW(abandoned->send(on_host, 0, cuda().stream()), Error);  // a host buffer
  Tensor recv2 = poisoned_device({64, 32}, DType::kF32);
  nccl().all_reduce(send, recv2, ReduceOp::kSum, cuda().stream());
  EXPECT_TRUE(bitwise_equal(bytes_of(recv2), expected)) << "while another group is left open";
}

// A communicator destroyed while an exception unwinds the stack is aborted, not destroyed:
// ncclCommDestroy would first complete its queued operations, which after an error on one rank may
// wait forever for a peer. (A peer that really waits needs two GPUs; here the abort path runs, is
// logged, and leaves the process able to use NCCL.) Without an exception it is destroyed.
TEST_F(NcclTest, ACommunicatorDestroyedDuringUnwindingIsAborted) {
  struct Failure : std::runtime_error {
    Failure() : std::runtime_error("failure") {}
  };
  Tensor host = random_host({32, 16}, DType::kF32, 606);
  const std::vector<unsigned char> expected = bytes_of(host);
  Tensor send = to_device(host);
  Tensor recv = poisoned_device({32, 16}, DType::kF32);

  ::testing::internal::CaptureStderr();
  { make_nccl_communicator(*bootstrap_, 0)->barrier(); }
  std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(log.find("aborting"), std::string::npos) << log;

  ::testing::internal::CaptureStderr();
  try {
    auto doomed = make_nccl_communicator(*bootstrap_, 0);
    doomed->all_reduce(send, recv, ReduceOp::kSum, cuda().stream());
    throw Failure();
  } catch (const Failure&) {
  }
  log = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(log.find("aborting the NCCL communicator"), std::string::npos) << log;
  EXPECT_NE(log.find("exception"), std::string::npos) << log;

  Tensor after = poisoned_device({32, 16}, DType::kF32);
  nccl().all_reduce(send, after, ReduceOp::kSum, cuda().stream());
  EXPECT_TRUE(bitwise_equal(bytes_of(after), expected));
}

TEST_F(NcclTest, HostBuffersAreRejected) {
  Tensor host = random_host({4, 4}, DType::kF32, 603);
  EXPECT_THROW(nccl().all_reduce(host, host, ReduceOp::kSum, cuda().stream()), Error);
}

}  // namespace
}  // namespace weft::test
