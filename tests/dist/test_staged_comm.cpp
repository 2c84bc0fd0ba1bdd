// The staged communicator (device buffers through host staging and MPI) against plain MPI on the
// same inputs, exactly: over host memory with copies that run only when synchronized (its
// chunking, ordering, groups and pool, at any world size), and on a GPU (skipped without one).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "common/test_util.hpp"
#include "dist/dist_env.hpp"
#include "dist/host_staging_engine.hpp"

namespace weft::testing {
namespace {

// Staging areas: one that holds every buffer below whole, and two that cut them into chunks
// (16 f32 elements; one element per chunk, the smallest possible).
class StagedCommTest : public ::testing::TestWithParam<size_t> {
 protected:
  StagedCommTest()
      : engine_(std::make_shared<DeferredHostEngine>()),
        staged_(make_staged_communicator(host_world().split(0, host_world().rank()), engine_,
                                         GetParam())) {}

  Communicator& mpi() { return host_world(); }
  Stream& stream() { return cpu_->stream(); }

  // Small integers plus rank-dependent offsets: exact in every dtype and in any summation order.
  Tensor filled(int64_t n, DType dtype, const std::function<double(int64_t)>& value) {
    Tensor f32(*cpu_, Shape({n}), DType::kF32), out(*cpu_, Shape({n}), dtype);
    for (int64_t i = 0; i < n; ++i) f32.as<float>()[i] = static_cast<float>(value(i));
    cpu_->convert(out, f32);
    return out;
  }
  Tensor poisoned(int64_t n, DType dtype) {
    Tensor t(*cpu_, Shape({n}), dtype);
    cpu_->fill(t, std::numeric_limits<float>::quiet_NaN());
    return t;
  }
  // Bitwise equality of two host tensors.
  static bool same_bytes(const Tensor& a, const Tensor& b) {
    return a.view().bytes() == b.view().bytes() &&
           std::memcmp(a.data(), b.data(), a.view().bytes()) == 0;
  }

  std::unique_ptr<Backend> cpu_ = make_test_backend();  // the engine WEFT_TEST_BACKEND names
  std::shared_ptr<DeferredHostEngine> engine_;
  std::unique_ptr<Communicator> staged_;
};

TEST_P(StagedCommTest, AllReduceEqualsMpi) {
  const int rank = staged_->rank();
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t n : {1, 37, 100}) {
      Tensor send = filled(n, dtype, [&](int64_t i) { return (rank * 7 + i * 3) % 11 - 5; });
      for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin}) {
        Tensor expected = poisoned(n, dtype), got = poisoned(n, dtype);
        mpi().all_reduce(send, expected, op, host_stream());
        staged_->all_reduce(send, got, op, stream());
        ASSERT_TRUE(same_bytes(got, expected))
            << dtype_name(dtype) << " n " << n << " " << reduce_op_name(op);
      }
      Tensor expected = poisoned(n, dtype);
      mpi().all_reduce(send, expected, ReduceOp::kSum, host_stream());
      staged_->all_reduce(send, send, ReduceOp::kSum, stream());  // in place
      ASSERT_TRUE(same_bytes(send, expected)) << "in place, n " << n;
    }
  }
}

TEST_P(StagedCommTest, AllGatherEqualsMpi) {
  const int rank = staged_->rank(), size = staged_->size();
  for (int64_t n : {1, 23, 70}) {
    Tensor send = filled(n, DType::kF32, [&](int64_t i) { return rank * 1000 + i; });
    Tensor expected = poisoned(n * size, DType::kF32), got = poisoned(n * size, DType::kF32);
    mpi().all_gather(send, expected, host_stream());
    staged_->all_gather(send, got, stream());
    ASSERT_TRUE(same_bytes(got, expected)) << "n " << n;
    // In place: this rank's block already sits at its offset.
    Tensor inplace = poisoned(n * size, DType::kF32);
    const TensorView mine = inplace.view().reshaped(Shape({size, n})).rows(rank, 1);
    cpu_->copy(mine.reshaped(Shape({n})), send);
    staged_->all_gather(mine.reshaped(Shape({n})), inplace, stream());
    ASSERT_TRUE(same_bytes(inplace, expected)) << "in place, n " << n;
  }
}

TEST_P(StagedCommTest, ReduceScatterEqualsMpi) {
  const int rank = staged_->rank(), size = staged_->size();
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t n : {1, 19, 40}) {
      Tensor send =
          filled(n * size, dtype, [&](int64_t i) { return (rank + 3 * (i / n) + i % 5) % 9; });
      Tensor expected = poisoned(n, dtype), got = poisoned(n, dtype);
      mpi().reduce_scatter(send, expected, ReduceOp::kSum, host_stream());
      staged_->reduce_scatter(send, got, ReduceOp::kSum, stream());
      ASSERT_TRUE(same_bytes(got, expected)) << dtype_name(dtype) << " n " << n;
    }
  }
  // Overlapping buffers would read what an earlier chunk wrote: rejected on every rank.
  Tensor both = filled(4 * size, DType::kF32, [](int64_t i) { return i; });
  const TensorView send =
      both.view().reshaped(Shape({size, 4})).rows(0, size).reshaped(Shape({4 * size}));
  const TensorView recv =
      both.view().reshaped(Shape({size, 4})).rows(size - 1, 1).reshaped(Shape({4}));
  EXPECT_THROW(staged_->reduce_scatter(send, recv, ReduceOp::kSum, stream()), Error);
}

TEST_P(StagedCommTest, BroadcastFromEveryRoot) {
  const int rank = staged_->rank();
  for (int root = 0; root < staged_->size(); ++root) {
    Tensor buffer = rank == root
                        ? filled(45, DType::kF32, [&](int64_t i) { return root * 100 + i; })
                        : poisoned(45, DType::kF32);
    staged_->broadcast(buffer, root, stream());
    const auto r = to_host(*cpu_, buffer);
    for (int64_t i = 0; i < 45; ++i) ASSERT_EQ(r[i], root * 100 + i) << "root " << root;
  }
}

TEST_P(StagedCommTest, GroupsSyncAndAsyncDeliverTheRing) {
  const int rank = staged_->rank(), size = staged_->size();
  const int next = (rank + 1) % size, prev = (rank + size - 1) % size;
  for (bool async : {false, true}) {
    Tensor send1 = filled(33, DType::kF32, [&](int64_t i) { return 10 * rank + i; });
    Tensor send2 = filled(5, DType::kBF16, [&](int64_t i) { return rank - i; });
    Tensor recv1 = poisoned(33, DType::kF32), recv2 = poisoned(5, DType::kBF16);
    staged_->group_start();
    staged_->send(send1, next, stream());
    staged_->recv(recv1, prev, stream());
    staged_->group_start();  // nested: completes with the outermost
    staged_->send(send2, prev, stream());
    staged_->recv(recv2, next, stream());
    staged_->group_end();
    if (async) {
      std::unique_ptr<PendingGroup> pending = staged_->group_end_async();
      // Written only once the group is complete (test() or wait()), never before.
      if (!pending->test()) {
        EXPECT_TRUE(std::isnan(to_host(*cpu_, recv1)[0]));
      }
      pending->wait();
      EXPECT_TRUE(pending->test());
    } else {
      staged_->group_end();
    }
    const auto r1 = to_host(*cpu_, recv1), r2 = to_host(*cpu_, recv2);
    for (int64_t i = 0; i < 33; ++i) ASSERT_EQ(r1[i], 10 * prev + i) << "async " << async;
    for (int64_t i = 0; i < 5; ++i) ASSERT_EQ(r2[i], next - i) << "async " << async;
  }
}

TEST_P(StagedCommTest, SendRecvOutsideAGroupInChunks) {
  const int rank = staged_->rank(), size = staged_->size();
  if (size == 1) GTEST_SKIP() << "needs a peer";
  // Rank 0 sends to every other rank in turn; each chunk of the blocking send meets its recv.
  Tensor buffer = rank == 0 ? filled(57, DType::kF32, [](int64_t i) { return 2 * i + 1; })
                            : poisoned(57, DType::kF32);
  for (int peer = 1; peer < size; ++peer) {
    if (rank == 0) staged_->send(buffer, peer, stream());
    if (rank == peer) staged_->recv(buffer, 0, stream());
  }
  const auto r = to_host(*cpu_, buffer);
  for (int64_t i = 0; i < 57; ++i) ASSERT_EQ(r[i], 2 * i + 1);
}

TEST_P(StagedCommTest, UnwaitedGroupIsCompleteWhenDestroyed) {
  const int rank = staged_->rank(), size = staged_->size();
  const int next = (rank + 1) % size, prev = (rank + size - 1) % size;
  Tensor send = filled(29, DType::kF32, [&](int64_t i) { return rank + i; });
  Tensor recv = poisoned(29, DType::kF32);
  staged_->group_start();
  staged_->send(send, next, stream());
  staged_->recv(recv, prev, stream());
  staged_->group_end_async().reset();  // completed here, as wait() would
  const auto r = to_host(*cpu_, recv);
  for (int64_t i = 0; i < 29; ++i) ASSERT_EQ(r[i], prev + i);
  // Every rank is still in step: a collective afterwards sees every rank's data.
  Tensor one = filled(1, DType::kF32, [](int64_t) { return 1; }), count = poisoned(1, DType::kF32);
  staged_->all_reduce(one, count, ReduceOp::kSum, stream());
  EXPECT_EQ(to_host(*cpu_, count)[0], size);
}

TEST_P(StagedCommTest, SplitStagesTheSubgroup) {
  const int rank = staged_->rank(), size = staged_->size();
  auto sub = staged_->split(rank % 2, size - rank);
  auto plain = mpi().split(rank % 2, size - rank);
  EXPECT_EQ(sub->name(), "mpi-staged");
  ASSERT_EQ(sub->size(), plain->size());
  ASSERT_EQ(sub->rank(), plain->rank());
  Tensor send = filled(3, DType::kF32, [&](int64_t i) { return rank * 10 + i; });
  Tensor expected = poisoned(3 * sub->size(), DType::kF32),
         got = poisoned(3 * sub->size(), DType::kF32);
  plain->all_gather(send, expected, host_stream());
  sub->all_gather(send, got, stream());
  EXPECT_TRUE(same_bytes(got, expected));
}

TEST_P(StagedCommTest, StagingMemoryIsReused) {
  Tensor a = filled(64, DType::kF32, [](int64_t i) { return i; }), b = poisoned(64, DType::kF32);
  staged_->all_reduce(a, b, ReduceOp::kMax, stream());
  const int after_first = engine_->allocations;
  for (int i = 0; i < 20; ++i) staged_->all_reduce(a, b, ReduceOp::kMax, stream());
  EXPECT_EQ(engine_->allocations, after_first);
}

INSTANTIATE_TEST_SUITE_P(StagingBytes, StagedCommTest, ::testing::Values(size_t{1} << 20, 64, 1),
                         [](const auto& info) { return "area" + std::to_string(info.param); });

// On a GPU: the CUDA staging engine behind make_staged_communicator, with every rank of this
// node on one GPU (rank % GPUs), against MPI on host copies of the same data. The producer of
// each send buffer is a kernel queued on a side stream just before the call, so the staging copy
// must be ordered after it.
class StagedCudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_on_every_rank(host_world())) {
      const char* required = std::getenv("WEFT_REQUIRE_GPU");
      if (required != nullptr && std::string(required) == "1") {
        FAIL() << "WEFT_REQUIRE_GPU=1 but no GPU is visible";
      }
      GTEST_SKIP() << "no CUDA device visible (set WEFT_REQUIRE_GPU=1 to make this a failure)";
    }
    const int device = host_world().rank() % cuda_device_count();
    gpu_ = make_cuda_backend(device);
    side_ = gpu_->create_stream(StreamPriority::kNormal);
    gpu_->set_stream(*side_);
    staged_ = make_staged_communicator(host_world(), device, /*staging_bytes=*/256);
  }
  // On the GPU: the host values, converted to `dtype` by a kernel on the side stream.
  Tensor on_gpu(const Tensor& host_f32, DType dtype) {
    Tensor f32(*gpu_, host_f32.shape(), DType::kF32), out(*gpu_, host_f32.shape(), dtype);
    gpu_->copy(f32, host_f32);
    gpu_->convert(out, f32);
    return out;
  }
  Tensor host_filled(int64_t n, const std::function<double(int64_t)>& value) {
    Tensor t(*cpu_, Shape({n}), DType::kF32);
    for (int64_t i = 0; i < n; ++i) t.as<float>()[i] = static_cast<float>(value(i));
    return t;
  }
  Tensor gpu_poisoned(int64_t n, DType dtype) {
    Tensor t(*gpu_, Shape({n}), dtype);
    gpu_->fill(t, std::numeric_limits<float>::quiet_NaN());
    return t;
  }
  std::vector<double> mpi_result(const Tensor& host_f32, DType dtype,
                                 const std::function<void(TensorView, TensorView)>& op,
                                 int64_t out_n) {
    Tensor in(*cpu_, host_f32.shape(), dtype), out(*cpu_, Shape({out_n}), dtype);
    cpu_->convert(in, host_f32);
    op(in, out);
    return to_host(*cpu_, out);
  }

  // Destroyed in reverse: the communicator, the backend, then the stream it was set to.
  std::unique_ptr<Backend> cpu_ = make_test_backend();  // the engine WEFT_TEST_BACKEND names
  std::unique_ptr<Stream> side_;
  std::unique_ptr<Backend> gpu_;
  std::unique_ptr<Communicator> staged_;
};

TEST_F(StagedCudaTest, CollectivesEqualMpi) {
  const int rank = staged_->rank(), size = staged_->size();
  const int64_t n = 300;  // several 256-byte chunks
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const Tensor x = host_filled(n * size, [&](int64_t i) { return (rank * 5 + i) % 13 - 6; });
    Tensor sum = gpu_poisoned(n * size, dtype);
    staged_->all_reduce(on_gpu(x, dtype), sum, ReduceOp::kSum, gpu_->stream());
    EXPECT_EQ(to_host(*gpu_, sum), mpi_result(
                                       x, dtype,
                                       [&](TensorView in, TensorView out) {
                                         host_world().all_reduce(in, out, ReduceOp::kSum,
                                                                 host_stream());
                                       },
                                       n * size));
    Tensor gathered = gpu_poisoned(n * size * size, dtype);
    staged_->all_gather(on_gpu(x, dtype), gathered, gpu_->stream());
    EXPECT_EQ(to_host(*gpu_, gathered), mpi_result(
                                            x, dtype,
                                            [&](TensorView in, TensorView out) {
                                              host_world().all_gather(in, out, host_stream());
                                            },
                                            n * size * size));
    Tensor scattered = gpu_poisoned(n, dtype);
    staged_->reduce_scatter(on_gpu(x, dtype), scattered, ReduceOp::kSum, gpu_->stream());
    EXPECT_EQ(to_host(*gpu_, scattered), mpi_result(
                                             x, dtype,
                                             [&](TensorView in, TensorView out) {
                                               host_world().reduce_scatter(in, out, ReduceOp::kSum,
                                                                           host_stream());
                                             },
                                             n));
    Tensor buffer = on_gpu(x, dtype);
    staged_->broadcast(buffer, size - 1, gpu_->stream());
    EXPECT_EQ(to_host(*gpu_, buffer), mpi_result(
                                          x, dtype,
                                          [&](TensorView in, TensorView out) {
                                            host_world().broadcast(in, size - 1, host_stream());
                                            cpu_->copy(out, in);
                                          },
                                          n * size));
  }
}

TEST_F(StagedCudaTest, AsyncRingExchange) {
  const int rank = staged_->rank(), size = staged_->size();
  const int next = (rank + 1) % size, prev = (rank + size - 1) % size;
  const Tensor x = host_filled(500, [&](int64_t i) { return 1000 * rank + i; });
  Tensor send = on_gpu(x, DType::kF32), recv = gpu_poisoned(500, DType::kF32);
  staged_->group_start();
  staged_->send(send, next, gpu_->stream());
  staged_->recv(recv, prev, gpu_->stream());
  std::unique_ptr<PendingGroup> pending = staged_->group_end_async();
  pending->wait();
  const auto r = to_host(*gpu_, recv);
  for (int64_t i = 0; i < 500; ++i) ASSERT_EQ(r[i], 1000 * prev + i);
}

}  // namespace
}  // namespace weft::testing
