// Unit tests of the world-of-one communicator, a ParallelGrid over it, the TP mappings at TP = 1,
// and the shard arithmetic (divide_exact, Partition).
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "unit/unit_util.hpp"
#include "weft/weft.hpp"

namespace weft {
namespace {

using testing::poisoned;
using testing::random_tensor;
using testing::to_host;

std::vector<uint8_t> bytes_of(const TensorView& v) {
  const auto* p = static_cast<const uint8_t*>(v.data);
  return std::vector<uint8_t>(p, p + v.bytes());
}

class SelfCommTest : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> backend_ = make_cpu_backend();
  std::unique_ptr<Communicator> comm_ = make_self_communicator();
  Stream& stream_ = host_stream();
};

TEST_F(SelfCommTest, Identity) {
  EXPECT_EQ(comm_->rank(), 0);
  EXPECT_EQ(comm_->size(), 1);
  EXPECT_EQ(comm_->name(), "self");
  EXPECT_EQ(comm_->buffer_device(), DeviceKind::kCpu);
  comm_->barrier();
}

TEST_F(SelfCommTest, AllReduceCopiesForEveryOpAndDtype) {
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin}) {
      Tensor send = random_tensor(*backend_, Shape({5, 7}), dtype, 1);
      Tensor recv = poisoned(*backend_, Shape({5, 7}), dtype);
      comm_->all_reduce(send, recv, op, stream_);
      EXPECT_EQ(bytes_of(recv), bytes_of(send)) << dtype_name(dtype) << " " << reduce_op_name(op);
      // In place: the buffer is its own reduction.
      const auto before = bytes_of(send);
      comm_->all_reduce(send, send, op, stream_);
      EXPECT_EQ(bytes_of(send), before);
    }
  }
  // Only the element count has to match, not the shape.
  Tensor send = random_tensor(*backend_, Shape({6, 2}), DType::kF32, 2);
  Tensor recv = poisoned(*backend_, Shape({12}), DType::kF32);
  comm_->all_reduce(send, recv, ReduceOp::kSum, stream_);
  EXPECT_EQ(bytes_of(recv), bytes_of(send));
}

TEST_F(SelfCommTest, AllGatherReduceScatterAndBroadcast) {
  Tensor send = random_tensor(*backend_, Shape({3, 4}), DType::kBF16, 3);
  Tensor recv = poisoned(*backend_, Shape({3, 4}), DType::kBF16);
  comm_->all_gather(send, recv, stream_);
  EXPECT_EQ(bytes_of(recv), bytes_of(send));
  Tensor scattered = poisoned(*backend_, Shape({12}), DType::kBF16);
  comm_->reduce_scatter(send, scattered, ReduceOp::kSum, stream_);
  EXPECT_EQ(bytes_of(scattered), bytes_of(send));
  const auto before = bytes_of(send);
  comm_->broadcast(send, 0, stream_);
  EXPECT_EQ(bytes_of(send), before);
}

TEST_F(SelfCommTest, CollectiveArgumentErrorsNameTheBuffers) {
  Tensor send = random_tensor(*backend_, Shape({3, 4}), DType::kF32, 4);
  Tensor wrong_size = poisoned(*backend_, Shape({3, 5}), DType::kF32);
  Tensor wrong_dtype = poisoned(*backend_, Shape({3, 4}), DType::kF16);
  EXPECT_WEFT_ERROR(comm_->all_reduce(send, wrong_size, ReduceOp::kSum, stream_), "all_reduce",
                    "f32[3, 4]", "f32[3, 5]");
  EXPECT_WEFT_ERROR(comm_->all_reduce(send, wrong_dtype, ReduceOp::kSum, stream_), "all_reduce",
                    "f16[3, 4]");
  EXPECT_WEFT_ERROR(comm_->all_gather(send, wrong_size, stream_), "all_gather", "f32[3, 5]");
  EXPECT_WEFT_ERROR(comm_->all_gather(send, wrong_dtype, stream_), "all_gather", "f16");
  EXPECT_WEFT_ERROR(comm_->reduce_scatter(send, wrong_size, ReduceOp::kMax, stream_),
                    "reduce_scatter", "f32[3, 4]");
  EXPECT_WEFT_ERROR(comm_->broadcast(send, 1, stream_), "broadcast", "1", "size 1");
  EXPECT_WEFT_ERROR(comm_->broadcast(send, -1, stream_), "broadcast", "-1");
  TensorView on_gpu = send;
  on_gpu.device = Device::cuda(0);
  EXPECT_WEFT_ERROR(comm_->all_reduce(on_gpu, on_gpu, ReduceOp::kSum, stream_), "cuda:0", "host");
  TensorView no_data = send;
  no_data.data = nullptr;
  EXPECT_WEFT_ERROR(comm_->broadcast(no_data, 0, stream_), "no data");
}

TEST_F(SelfCommTest, PointToPointPairsCompleteAtGroupEnd) {
  Tensor a = random_tensor(*backend_, Shape({4, 3}), DType::kF32, 5);
  Tensor b = random_tensor(*backend_, Shape({9}), DType::kF16, 6);
  Tensor a_in = poisoned(*backend_, Shape({4, 3}), DType::kF32);
  Tensor b_in = poisoned(*backend_, Shape({9}), DType::kF16);
  comm_->group_start();
  comm_->recv(a_in, 0, stream_);  // a receive may be posted before its send
  comm_->send(a, 0, stream_);
  comm_->send(b, 0, stream_);
  comm_->recv(b_in, 0, stream_);
  comm_->group_end();
  EXPECT_EQ(bytes_of(a_in), bytes_of(a));
  EXPECT_EQ(bytes_of(b_in), bytes_of(b));
}

TEST_F(SelfCommTest, NestedGroupsCompleteAtTheOutermostEnd) {
  Tensor a = random_tensor(*backend_, Shape({8}), DType::kF32, 7);
  Tensor a_in = poisoned(*backend_, Shape({8}), DType::kF32);
  comm_->group_start();
  comm_->group_start();
  comm_->send(a, 0, stream_);
  comm_->recv(a_in, 0, stream_);
  comm_->group_end();
  for (double v : to_host(*backend_, a_in)) EXPECT_TRUE(std::isnan(v));  // not yet
  comm_->group_end();
  EXPECT_EQ(bytes_of(a_in), bytes_of(a));
}

TEST_F(SelfCommTest, AnAsyncGroupIsCompleteWhenDestroyedUnwaited) {
  Tensor a = random_tensor(*backend_, Shape({16}), DType::kF32, 12);
  Tensor a_in = poisoned(*backend_, Shape({16}), DType::kF32);
  comm_->group_start();
  comm_->send(a, 0, stream_);
  comm_->recv(a_in, 0, stream_);
  comm_->group_end_async().reset();  // never waited
  EXPECT_EQ(bytes_of(a_in), bytes_of(a));
}

TEST_F(SelfCommTest, PointToPointOutsideAGroupThrows) {
  Tensor a = random_tensor(*backend_, Shape({8}), DType::kF32, 8);
  EXPECT_WEFT_ERROR(comm_->send(a, 0, stream_), "group_start");
  EXPECT_WEFT_ERROR(comm_->recv(a, 0, stream_), "group_start");
  EXPECT_WEFT_ERROR(comm_->group_end(), "group_end");
}

TEST_F(SelfCommTest, BadPeersAndUnmatchedGroupsThrow) {
  Tensor a = random_tensor(*backend_, Shape({8}), DType::kF32, 9);
  Tensor small = poisoned(*backend_, Shape({4}), DType::kF32);
  comm_->group_start();
  EXPECT_WEFT_ERROR(comm_->send(a, 1, stream_), "send", "1", "size 1");
  EXPECT_WEFT_ERROR(comm_->recv(a, -1, stream_), "recv", "-1");
  comm_->group_end();  // nothing was posted: an empty group is fine

  comm_->group_start();
  comm_->send(a, 0, stream_);
  comm_->recv(small, 0, stream_);
  EXPECT_WEFT_ERROR(comm_->group_end(), "f32[8]", "f32[4]");
}

TEST_F(SelfCommTest, AFailedGroupLeavesNothingBehind) {
  // After a group fails (a send without its receive), the next, well-formed group must work: the
  // failed group's operations may not be matched against later ones.
  Tensor a = random_tensor(*backend_, Shape({8}), DType::kF32, 10);
  comm_->group_start();
  comm_->send(a, 0, stream_);
  EXPECT_WEFT_ERROR(comm_->group_end(), "1 sends", "0 receives");
  Tensor b = random_tensor(*backend_, Shape({5}), DType::kF32, 11);
  Tensor b_in = poisoned(*backend_, Shape({5}), DType::kF32);
  comm_->group_start();
  comm_->send(b, 0, stream_);
  comm_->recv(b_in, 0, stream_);
  EXPECT_NO_THROW(comm_->group_end());
  EXPECT_EQ(bytes_of(b_in), bytes_of(b));
}

TEST_F(SelfCommTest, BlockGroupIsMadeOnceAndShared) {
  Communicator& group = comm_->block_group(1);
  EXPECT_EQ(&comm_->block_group(1), &group);
  EXPECT_EQ(group.size(), 1);
  EXPECT_WEFT_ERROR(comm_->block_group(2), "block_group", "2", "size 1");
  EXPECT_WEFT_ERROR(comm_->block_group(0), "block_group", "0");
}

TEST_F(SelfCommTest, SplitGivesAWorkingWorldOfOne) {
  auto sub = comm_->split(3, 7);
  ASSERT_NE(sub, nullptr);
  EXPECT_EQ(sub->size(), 1);
  EXPECT_EQ(sub->rank(), 0);
  Tensor send = random_tensor(*backend_, Shape({6}), DType::kF32, 12);
  Tensor recv = poisoned(*backend_, Shape({6}), DType::kF32);
  sub->all_reduce(send, recv, ReduceOp::kSum, stream_);
  EXPECT_EQ(bytes_of(recv), bytes_of(send));
  EXPECT_WEFT_ERROR(comm_->split(-1, 0), "color", "-1");
}

TEST(ReduceOpTest, Names) {
  EXPECT_STREQ(reduce_op_name(ReduceOp::kSum), "sum");
  EXPECT_STREQ(reduce_op_name(ReduceOp::kMax), "max");
  EXPECT_STREQ(reduce_op_name(ReduceOp::kMin), "min");
}

// --- ParallelGrid over a world of one -----------------------------------------------------------

TEST(GridTest, TpOneOverSelfWorks) {
  auto world = make_self_communicator();
  ParallelGrid grid(*world, 1);
  EXPECT_EQ(grid.world_size(), 1);
  EXPECT_EQ(grid.rank(), 0);
  EXPECT_EQ(grid.tp_size(), 1);
  EXPECT_EQ(grid.dp_size(), 1);
  EXPECT_EQ(grid.pp_size(), 1);
  EXPECT_EQ(grid.tp_rank(), 0);
  EXPECT_EQ(grid.dp_rank(), 0);
  EXPECT_EQ(grid.pp_rank(), 0);
  EXPECT_EQ(grid.rank_of(0, 0, 0), 0);
  EXPECT_EQ(&grid.world(), world.get());
  for (Communicator* c : {&grid.tp(), &grid.dp(), &grid.pp()}) {
    EXPECT_EQ(c->size(), 1);
    EXPECT_EQ(c->rank(), 0);
  }
  EXPECT_WEFT_ERROR(grid.rank_of(1, 0, 0), "tp 1", "tp=1");
  EXPECT_WEFT_ERROR(grid.rank_of(0, 0, -1), "pp -1");
}

TEST(GridTest, SizesThatDoNotDivideTheWorldThrowNamingBothNumbers) {
  auto world = make_self_communicator();
  EXPECT_WEFT_ERROR(ParallelGrid(*world, 2), "world size (1)", "tensor-parallel size (2)");
  EXPECT_WEFT_ERROR(ParallelGrid(*world, 1, 3), "world size (1)", "pipeline-parallel size (3)");
  EXPECT_WEFT_ERROR(ParallelGrid(*world, 0), "tensor-parallel", "0");
  EXPECT_WEFT_ERROR(ParallelGrid(*world, 1, -2), "pipeline-parallel", "-2");
}

// --- TP mappings at TP = 1 ----------------------------------------------------------------------

TEST(MappingsTest, AtTpOneEveryMappingIsTheIdentity) {
  auto backend = make_cpu_backend();
  auto tp = make_self_communicator();
  ParallelContext ctx{*backend, *tp};
  Tensor x = random_tensor(*backend, Shape({2, 3, 8}), DType::kBF16, 13);
  const auto before = bytes_of(x);
  copy_to_tp_region_backward(ctx, x);
  reduce_from_tp_region_forward(ctx, x);
  EXPECT_EQ(bytes_of(x), before);
  Tensor split = split_last_dim(ctx, x);
  EXPECT_EQ(split.shape(), x.shape());
  EXPECT_EQ(bytes_of(split), before);
  Tensor gathered = gather_last_dim(ctx, x);
  EXPECT_EQ(gathered.shape(), x.shape());
  EXPECT_EQ(bytes_of(gathered), before);
}

// --- shard arithmetic ---------------------------------------------------------------------------

TEST(PartitionTest, DivideExactDividesOrNamesEverything) {
  EXPECT_EQ(divide_exact(12, 4, "out_features", "the tensor-parallel size"), 3);
  EXPECT_EQ(divide_exact(0, 4, "out_features", "the tensor-parallel size"), 0);
  EXPECT_EQ(divide_exact(7, 1, "out_features", "the tensor-parallel size"), 7);
  try {
    divide_exact(10, 4, "out_features", "the tensor-parallel size");
    FAIL() << "10 / 4 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_EQ(e.message(), "out_features (10) must be divisible by the tensor-parallel size (4)");
  }
  EXPECT_WEFT_ERROR(divide_exact(10, 0, "rows", "the pipeline size"), "the pipeline size", "0");
  EXPECT_WEFT_ERROR(divide_exact(10, -2, "rows", "the pipeline size"), "-2");
}

TEST(PartitionTest, BlocksTileTheDimension) {
  for (int count : {1, 2, 3, 4, 6}) {
    int64_t next = 0;
    for (int index = 0; index < count; ++index) {
      const Partition p{24, count, index};
      EXPECT_EQ(p.local(), 24 / count);
      EXPECT_EQ(p.begin(), next);
      EXPECT_EQ(p.end(), p.begin() + p.local());
      next = p.end();
    }
    EXPECT_EQ(next, 24);
  }
}

}  // namespace
}  // namespace weft
