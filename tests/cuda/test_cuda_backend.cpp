// CudaBackend: the elementwise-op case table against the double reference (copies, casts and
// fills are in the transformer-op table); against the CPU backend: copies between host and
// device, random fills; streams and events, and the errors bad calls raise.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <thread>
#include <vector>

#include "common/pointwise_op_cases.hpp"
#include "cuda_test_util.hpp"
#include "weft/error.hpp"

namespace weft::test {
namespace {

const DType kDtypes[] = {DType::kF32, DType::kBF16, DType::kF16};

class CudaBackendTest : public CudaTest {};

TEST_F(CudaBackendTest, NameAndDevice) {
  EXPECT_EQ(cuda().device(), Device::cuda(0));
  EXPECT_EQ(cuda().name().rfind("cuda:0", 0), 0u) << cuda().name();
}

TEST_F(CudaBackendTest, AllocationIsAligned) {
  for (size_t bytes : {size_t{1}, size_t{3}, size_t{4096}, size_t{1} << 20}) {
    void* ptr = cuda().allocate(bytes);
    ASSERT_NE(ptr, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(ptr) % 256, 0u);
    cuda().deallocate(ptr);
  }
  cuda().deallocate(nullptr);  // a no-op
}

// A recycled block is poisoned (WEFT_POISON_ALLOCATIONS=1, set for this binary by CMake) on the
// allocating stream: after its previous owner's last write and before its new owner's first. A
// poison on another stream (the legacy default stream does not wait for weft's non-blocking
// streams) could land after the new owner's fill and leave NaN behind.
TEST_F(CudaBackendTest, PoisonIsOrderedOnTheAllocatingStream) {
  auto side = cuda().create_stream(StreamPriority::kNormal);
  Stream& original = cuda().stream();
  cuda().set_stream(*side);
  const Shape shape({2048, 2048});
  for (int round = 0; round < 8; ++round) {
    SCOPED_TRACE(round);
    {
      Tensor previous(cuda(), shape, DType::kF32);
      cuda().fill(previous, 1.0f);  // still running when its block is handed out again
    }
    Tensor fresh(cuda(), shape, DType::kF32);
    cuda().fill(fresh, 2.0f);
    const std::vector<float> values = floats_of(fresh);
    const size_t wrong = static_cast<size_t>(
        std::count_if(values.begin(), values.end(), [](float v) { return v != 2.0f; }));
    EXPECT_EQ(wrong, 0u) << "elements not 2 after the fill";
  }
  cuda().synchronize();
  cuda().set_stream(original);
}

// Holds a stream until *flag is set: a stand-in for a receive that waits for its peer.
void CUDART_CB hold_until_set(void* flag) {
  auto* released = static_cast<std::atomic<bool>*>(flag);
  while (!released->load()) std::this_thread::yield();
}

// Allocation, free (tensors, cuBLASLt workspace, kernel scratch) and the out-of-memory retry
// never wait for other streams: with a stream held busy (as by a pipeline's receive waiting for a
// peer that itself waits for this rank), they all return. cudaMalloc/cudaFree would block until
// the watchdog released the stream.
TEST_F(CudaBackendTest, MemoryNeverWaitsForOtherStreams) {
  // Tensors freed and reused, a GEMM (the stream's cuBLASLt workspace) and sum_squares (kernel
  // scratch) on the current stream; returns sum_squares of 64 x 32 halves.
  auto run_ops = [&] {
    for (int i = 0; i < 4; ++i) {
      Tensor t(cuda(), Shape({1024, 1024}), DType::kF32);
      cuda().fill(t, 1.0f);
    }
    Tensor a = poisoned_device({64, 32}, DType::kF32), c = poisoned_device({64, 64}, DType::kF32);
    cuda().fill(a, 0.5f);
    GemmArgs g;
    g.a = a;
    g.b = a;
    g.transpose_b = true;
    g.c = c;
    cuda().gemm(g);
    Tensor total = poisoned_device({1}, DType::kF32);
    cuda().sum_squares(total, a);
    return total;
  };
  // Kernels, cuBLASLt's plan and the pool made beforehand: lazy loading is not under test.
  EXPECT_EQ(floats_of(run_ops())[0], 0.25f * 64 * 32);

  auto busy = cuda().create_stream(StreamPriority::kNormal);
  std::atomic<bool> released{false}, finished{false}, blocked{false};
  ASSERT_EQ(cudaLaunchHostFunc(static_cast<cudaStream_t>(busy->native_handle()), hold_until_set,
                               &released),
            cudaSuccess);
  std::thread watchdog([&] {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!finished.load() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (!finished.load()) blocked = true;
    released = true;
  });
  Stream& original = cuda().stream();
  auto other = cuda().create_stream(StreamPriority::kNormal);
  cuda().set_stream(*other);  // a new stream: its workspace is allocated while `busy` is held
  Tensor total = run_ops();
  // Far more than any GPU holds: the retry trims the pool and fails cleanly.
  EXPECT_THROW({ Tensor huge(cuda(), Shape({int64_t{1} << 40}), DType::kF32); }, Error);
  finished = true;
  watchdog.join();
  EXPECT_FALSE(blocked.load()) << "an allocation or free waited for the held stream";
  busy->synchronize();
  EXPECT_EQ(floats_of(total)[0], 0.25f * 64 * 32);
  total = Tensor();  // freed on `other`, still current
  cuda().set_stream(original);
}

TEST_F(CudaBackendTest, CopyColumnsBetweenHostAndDevice) {
  Tensor src_host = random_host({7, 10}, DType::kF32, 14);
  Tensor dst = poisoned_device({7, 4}, DType::kF32);
  cuda().copy_columns(dst, 0, src_host, 3, 4);  // host -> device
  Tensor expected(cpu(), {7, 4}, DType::kF32);
  cpu().copy_columns(expected, 0, src_host, 3, 4);
  EXPECT_TRUE(bitwise_equal(bytes_of(dst), bytes_of(expected)));
}

// A window of a larger global matrix, as a tensor-parallel shard would draw it.
RandomFill window_spec(Distribution distribution) {
  RandomFill spec;
  spec.distribution = distribution;
  spec.seed = 0x5eedull;
  spec.offset = 1000;
  spec.a = distribution == Distribution::kUniform ? -0.5 : 0.25;
  spec.b = distribution == Distribution::kUniform ? 1.5 : 2.0;
  spec.global_cols = 300;
  spec.row0 = 7;
  spec.col0 = 150;
  return spec;
}

TEST_F(CudaBackendTest, FillRandomUniformMatchesCpuBitwise) {
  for (DType dtype : kDtypes) {
    SCOPED_TRACE(dtype_name(dtype));
    const RandomFill spec = window_spec(Distribution::kUniform);
    Tensor dst = poisoned_device({64, 150}, dtype);
    cuda().fill_random(dst, spec);
    Tensor expected(cpu(), {64, 150}, dtype);
    cpu().fill_random(expected, spec);
    EXPECT_TRUE(bitwise_equal(bytes_of(dst), bytes_of(expected)));
  }
}

TEST_F(CudaBackendTest, FillRandomNormalMatchesCpuWithinOneUlp) {
  // Box-Muller's log/cos differ in the last bit between CUDA's and glibc's math libraries.
  for (DType dtype : kDtypes) {
    SCOPED_TRACE(dtype_name(dtype));
    const RandomFill spec = window_spec(Distribution::kNormal);
    Tensor dst = poisoned_device({64, 150}, dtype);
    cuda().fill_random(dst, spec);
    Tensor expected(cpu(), {64, 150}, dtype);
    cpu().fill_random(expected, spec);
    EXPECT_TRUE(within_ulps(bytes_of(dst), bytes_of(expected), dtype, 1));
  }
}

TEST_F(CudaBackendTest, FillRandomDefaultGlobalColumns) {
  RandomFill spec;
  spec.seed = 99;
  Tensor dst = poisoned_device({3, 5, 7}, DType::kF32);
  cuda().fill_random(dst, spec);
  Tensor expected(cpu(), {3, 5, 7}, DType::kF32);
  cpu().fill_random(expected, spec);
  EXPECT_TRUE(within_ulps(bytes_of(dst), bytes_of(expected), DType::kF32, 1));
}

// The elementwise ops: the table of cases every backend runs against the double reference
// (common/pointwise_op_cases.cpp).
using testing::PointwiseOpTest;
WEFT_INSTANTIATE_POINTWISE_CASES(CudaBackend, "cuda");

TEST_F(CudaBackendTest, StreamsAndEvents) {
  Tensor a_host = random_host({256, 256}, DType::kF32, 71);
  Tensor a = to_device(a_host);
  Tensor out = poisoned_device({256, 256}, DType::kF32);
  auto high = cuda().create_stream(StreamPriority::kHigh);
  auto normal = cuda().create_stream(StreamPriority::kNormal);
  auto event = cuda().create_event();
  Stream& original = cuda().stream();
  // `out` was poisoned on the original stream: the high-priority stream's write must follow it.
  event->record(original);
  event->wait(*high);

  cuda().set_stream(*high);
  cuda().add(out, a, a);  // out = 2a on the high-priority stream
  event->record(*high);
  event->wait(*normal);
  cuda().set_stream(*normal);
  cuda().add(out, out, a);  // out = 3a, ordered after the first add by the event
  event->record(*normal);
  event->synchronize();
  cuda().set_stream(original);

  Tensor expected(cpu(), {256, 256}, DType::kF32);
  cpu().add(expected, a_host, a_host);
  cpu().add(expected, expected, a_host);
  EXPECT_TRUE(all_close(floats_of(out), floats_of(expected), 1e-6));
}

TEST_F(CudaBackendTest, BadCallsThrow) {
  Tensor a = poisoned_device({4, 8}, DType::kF32);
  Tensor b = poisoned_device({4, 9}, DType::kF32);
  Tensor h = random_host({4, 8}, DType::kF32, 1);
  Tensor bf = poisoned_device({4, 8}, DType::kBF16);
  EXPECT_THROW(cuda().add(a, a, b), Error);   // shape mismatch
  EXPECT_THROW(cuda().add(a, a, bf), Error);  // dtype mismatch
  EXPECT_THROW(cuda().add(a, a, h), Error);   // host operand
  EXPECT_THROW(cuda().gelu(a, b), Error);     // shape mismatch
  EXPECT_THROW(cuda().gelu_backward(a, a, b), Error);
  EXPECT_THROW(cuda().copy(a, b), Error);     // shape mismatch
  EXPECT_THROW(cuda().copy(a, bf), Error);    // dtype mismatch
  EXPECT_THROW(cuda().convert(a, b), Error);  // shape mismatch
  Tensor bias = poisoned_device({7}, DType::kF32);
  EXPECT_THROW(cuda().add_bias(a, a, bias), Error);         // bias length != row length
  EXPECT_THROW(cuda().copy_columns(a, 0, b, 5, 5), Error);  // past the end of src
  EXPECT_THROW(cuda().set_stream(host_stream()), Error);    // not a CUDA stream
  EXPECT_THROW(make_cuda_backend(cuda_device_count()), Error);
  EXPECT_THROW(make_cuda_backend(-1), Error);
}

}  // namespace
}  // namespace weft::test
