// Communicator collectives and p2p on the test engine's communicator (MPI; NCCL or staged on a
// GPU), checked exactly on rank-valued buffers.
#include <gtest/gtest.h>

#include "common/test_util.hpp"
#include "dist/dist_env.hpp"

namespace weft::testing {
namespace {

class CommTest : public ::testing::TestWithParam<DType> {
 protected:
  std::unique_ptr<Backend> cpu_ = make_test_backend();  // the engine's (WEFT_TEST_BACKEND)
  Stream& stream() { return cpu_->stream(); }

  // Small integers: exact in every dtype, so every comparison below is exact.
  Tensor filled(int64_t n, std::function<double(int64_t)> value) {
    return from_host(*cpu_, Shape({n}), GetParam(), [&](int64_t i) { return value(i); });
  }
  Tensor poisoned(int64_t n) {
    Tensor t(*cpu_, Shape({n}), GetParam());
    cpu_->fill(t, NAN);
    return t;
  }
};

TEST_P(CommTest, AllReduceSumMaxMin) {
  Communicator& comm = world();
  const int rank = comm.rank(), size = comm.size();
  const int64_t n = 37;
  Tensor send = filled(n, [&](int64_t i) { return rank + 1 + i % 5; });
  Tensor sum = poisoned(n), max = poisoned(n), min = poisoned(n);
  comm.all_reduce(send, sum, ReduceOp::kSum, stream());
  comm.all_reduce(send, max, ReduceOp::kMax, stream());
  comm.all_reduce(send, min, ReduceOp::kMin, stream());
  const auto s = to_host(*cpu_, sum), mx = to_host(*cpu_, max), mn = to_host(*cpu_, min);
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(s[i], size * (size + 1) / 2 + size * (i % 5)) << "element " << i;
    ASSERT_EQ(mx[i], size + i % 5);
    ASSERT_EQ(mn[i], 1 + i % 5);
  }
  // In place.
  comm.all_reduce(send, send, ReduceOp::kSum, stream());
  EXPECT_EQ(to_host(*cpu_, send), s);
}

TEST_P(CommTest, AllGatherConcatenatesInRankOrder) {
  Communicator& comm = world();
  const int rank = comm.rank(), size = comm.size();
  const int64_t n = 11;
  Tensor send = filled(n, [&](int64_t i) { return rank * 16 + i; });
  Tensor recv = poisoned(n * size);
  comm.all_gather(send, recv, stream());
  const auto r = to_host(*cpu_, recv);
  for (int b = 0; b < size; ++b) {
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(r[b * n + i], b * 16 + i) << "block " << b;
  }
  // In place: own block already sits at its offset in recv.
  Tensor inplace = poisoned(n * size);
  cpu_->copy(inplace.view().reshaped(Shape({size, n})).rows(rank, 1).reshaped(Shape({n})), send);
  comm.all_gather(inplace.view().reshaped(Shape({size, n})).rows(rank, 1).reshaped(Shape({n})),
                  inplace, stream());
  EXPECT_EQ(to_host(*cpu_, inplace), r);
}

TEST_P(CommTest, ReduceScatterGivesEachRankItsReducedBlock) {
  Communicator& comm = world();
  const int rank = comm.rank(), size = comm.size();
  const int64_t n = 9;
  Tensor send = filled(n * size, [&](int64_t i) { return rank + 4 * (i / n) + i % 3; });
  Tensor recv = poisoned(n);
  comm.reduce_scatter(send, recv, ReduceOp::kSum, stream());
  const auto r = to_host(*cpu_, recv);
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(r[i], size * (size - 1) / 2 + size * (4 * rank + i % 3)) << "element " << i;
  }
}

TEST_P(CommTest, BroadcastFromLastRank) {
  Communicator& comm = world();
  const int root = comm.size() - 1;
  Tensor buffer = comm.rank() == root ? filled(13, [](int64_t i) { return 3 + i; }) : poisoned(13);
  comm.broadcast(buffer, root, stream());
  const auto r = to_host(*cpu_, buffer);
  for (int64_t i = 0; i < 13; ++i) ASSERT_EQ(r[i], 3 + i);
}

TEST_P(CommTest, RingExchangeInOneGroup) {
  Communicator& comm = world();
  const int rank = comm.rank(), size = comm.size();
  const int next = (rank + 1) % size, prev = (rank + size - 1) % size;
  Tensor send = filled(7, [&](int64_t i) { return 10 * rank + i; });
  Tensor recv = poisoned(7);
  // Everyone sends before anyone receives: only correct because the group posts both together.
  comm.group_start();
  comm.send(send, next, stream());
  comm.recv(recv, prev, stream());
  comm.group_end();
  const auto r = to_host(*cpu_, recv);
  for (int64_t i = 0; i < 7; ++i) ASSERT_EQ(r[i], 10 * prev + i);
}

TEST_P(CommTest, SplitFormsGroupsByColorOrderedByKey) {
  Communicator& comm = world();
  const int rank = comm.rank(), size = comm.size();
  // Reverse order inside each parity group.
  auto sub = comm.split(rank % 2, size - rank);
  const int expected_size = (size + 1 - rank % 2) / 2;
  ASSERT_EQ(sub->size(), expected_size);
  Tensor send = filled(1, [&](int64_t) { return rank; });
  Tensor recv = poisoned(sub->size());
  sub->all_gather(send, recv, stream());
  const auto r = to_host(*cpu_, recv);
  for (int i = 0; i + 1 < sub->size(); ++i) EXPECT_GT(r[i], r[i + 1]);  // descending world rank
  EXPECT_EQ(r[sub->rank()], rank);
}

TEST_P(CommTest, BlockGroupsAreMadeOncePerSizeAndShared) {
  Communicator& comm = world();
  const int rank = comm.rank(), size = comm.size();
  for (int n = 1; n <= size; n *= 2) {
    if (size % n != 0) continue;
    SCOPED_TRACE(n);
    Communicator& group = comm.block_group(n);
    EXPECT_EQ(&comm.block_group(n), &group);  // a second layer asking gets the same one
    EXPECT_EQ(group.size(), n);
    EXPECT_EQ(group.rank(), rank % n);
    const int64_t count = 5;
    Tensor send = filled(count, [&](int64_t i) { return rank + 1 + i; }), sum = poisoned(count);
    group.all_reduce(send, sum, ReduceOp::kSum, stream());
    const int first = rank / n * n;  // ranks first .. first + n - 1 form the block
    const auto s = to_host(*cpu_, sum);
    for (int64_t i = 0; i < count; ++i) ASSERT_EQ(s[i], n * (first + 1 + i) + n * (n - 1) / 2);
  }
  EXPECT_THROW(comm.block_group(0), Error);
  EXPECT_THROW(comm.block_group(size + 1), Error);
}

TEST_P(CommTest, MismatchedBuffersAreRejectedBeforeSending) {
  Communicator& comm = world();
  Tensor a = filled(8, [](int64_t i) { return i + 1; });
  Tensor wrong = poisoned(8 * comm.size() + 1);
  try {
    comm.all_gather(a, wrong, stream());
    FAIL() << "expected weft::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(std::to_string(8 * comm.size() + 1)), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(comm.send(a, comm.size(), stream()), Error);
  EXPECT_THROW(comm.broadcast(a, -1, stream()), Error);
  comm.barrier();  // every rank is still alive and in step
}

INSTANTIATE_TEST_SUITE_P(DTypes, CommTest,
                         ::testing::Values(DType::kF32, DType::kBF16, DType::kF16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

}  // namespace
}  // namespace weft::testing
