// The overlap path on CUDA at world size 1 (one GPU): NCCL's asynchronous group (its own
// high-priority stream, ordered by events against the compute stream) and the fused ops of
// overlap.hpp on the CUDA backend, against the CPU backend.
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "cuda_test_util.hpp"
#include "weft/comm.hpp"
#include "weft/overlap.hpp"

namespace weft::test {
namespace {

using OverlapTest = NcclTest;

TEST_F(OverlapTest, NcclAsyncGroupIsOrderedByEventsAroundTheComputeStream) {
  Tensor host = random_host({256, 64}, DType::kF32, 901);
  const std::vector<unsigned char> expected = bytes_of(host);
  Stream& stream = cuda().stream();
  // The send buffer is written by a copy queued just before the group and the receive buffer read
  // by one queued just after wait(): both orders must come from the events alone (no host sync).
  Tensor source = to_device(host);
  Tensor staged = poisoned_device({256, 64}, DType::kF32);
  Tensor received = poisoned_device({256, 64}, DType::kF32);
  Tensor after = poisoned_device({256, 64}, DType::kF32);
  cuda().copy(staged, source);
  nccl().group_start();
  nccl().send(staged, 0, stream);
  nccl().recv(received, 0, stream);
  std::unique_ptr<PendingGroup> pending = nccl().group_end_async();
  pending->wait();
  cuda().copy(after, received);
  EXPECT_TRUE(bitwise_equal(bytes_of(after), expected));
  cuda().synchronize();
  EXPECT_TRUE(pending->test());
  // An empty group ends at once.
  nccl().group_start();
  EXPECT_TRUE(nccl().group_end_async()->test());
}

// A group destroyed without wait() (as when overlap.cpp's consume throws) is completed by its
// destructor: the compute stream is ordered after the transfers, so a copy queued right after
// reads the received data, and the buffers may go back to the cache.
TEST_F(OverlapTest, AnUnwaitedNcclGroupOrdersTheComputeStreamWhenDestroyed) {
  Tensor host = random_host({2048, 2048}, DType::kF32, 905);  // 16 MiB: a transfer that takes time
  const std::vector<unsigned char> expected = bytes_of(host);
  Stream& stream = cuda().stream();
  Tensor staged = to_device(host);
  Tensor received = poisoned_device({2048, 2048}, DType::kF32);
  Tensor after = poisoned_device({2048, 2048}, DType::kF32);
  nccl().group_start();
  nccl().send(staged, 0, stream);
  nccl().recv(received, 0, stream);
  nccl().group_end_async().reset();  // never waited
  cuda().copy(after, received);
  EXPECT_TRUE(bitwise_equal(bytes_of(after), expected));
}

TEST_F(OverlapTest, FusedOpsOnTheGpuEqualTheCpu) {
  auto self = make_self_communicator();
  const ParallelContext gpu{cuda(), nccl()}, host{cpu(), *self};
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(dtype_name(dtype));
    Tensor a = random_host({96, 48}, dtype, 902), w = random_host({40, 48}, dtype, 903);
    Tensor bias = random_host({40}, dtype, 904);
    Tensor da = to_device(a), dw = to_device(w), dbias = to_device(bias);
    GemmArgs g;
    g.transpose_b = true;
    g.epilogue = Epilogue::kBiasGelu;

    Tensor want(cpu(), Shape({96, 40}), dtype);
    g.a = a;
    g.b = w;
    g.bias = bias;
    g.c = want;
    all_gather_gemm(host, g);
    Tensor got = poisoned_device({96, 40}, dtype);
    g.a = da;
    g.b = dw;
    g.bias = dbias;
    g.c = got;
    all_gather_gemm(gpu, g);
    EXPECT_TRUE(all_close(floats_of(got), floats_of(want), dtype_rtol(dtype, 1e-4)))
        << "all_gather_gemm";

    GemmArgs r;
    r.transpose_b = true;
    Tensor want_rs(cpu(), Shape({96, 40}), dtype);
    r.a = a;
    r.b = w;
    r.c = want_rs;
    gemm_reduce_scatter(host, r);
    Tensor got_rs = poisoned_device({96, 40}, dtype);
    r.a = da;
    r.b = dw;
    r.c = got_rs;
    gemm_reduce_scatter(gpu, r);
    EXPECT_TRUE(all_close(floats_of(got_rs), floats_of(want_rs), dtype_rtol(dtype, 1e-4)))
        << "gemm_reduce_scatter";
  }
}

}  // namespace
}  // namespace weft::test
