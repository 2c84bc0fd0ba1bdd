// CudaBackend::gemm (cuBLASLt): the table of GEMM cases (every transpose combination, dtype pair,
// epilogue, alpha and beta, odd and aligned sizes) against the double reference; against the CPU
// backend: unaligned views, TF32, repeated calls, and bad arguments.
#include <gtest/gtest.h>

#include <cmath>
#include <ostream>
#include <string>
#include <vector>

#include "backend/cuda/cublaslt_matmul.hpp"
#include "common/gemm_op_cases.hpp"
#include "cuda_test_util.hpp"
#include "weft/error.hpp"

namespace weft::test {
namespace {

// The heuristic's answer decides the plan, no GPU needed: a fused epilogue without an algorithm
// runs unfused whatever status the heuristic gave (NOT_SUPPORTED, INVALID_VALUE, ...); only the
// plain GEMM without one is an error.
TEST(CudaGemmHeuristic, AnyFailureForAFusedEpilogueFallsBackToUnfused) {
  const cublasStatus_t ok = CUBLAS_STATUS_SUCCESS;
  EXPECT_EQ(heuristic_outcome(ok, 1, ok, true), HeuristicOutcome::kUseAlgorithm);
  EXPECT_EQ(heuristic_outcome(ok, 1, ok, false), HeuristicOutcome::kUseAlgorithm);
  for (cublasStatus_t failure :
       {CUBLAS_STATUS_NOT_SUPPORTED, CUBLAS_STATUS_INVALID_VALUE, CUBLAS_STATUS_ARCH_MISMATCH,
        CUBLAS_STATUS_INTERNAL_ERROR, CUBLAS_STATUS_ALLOC_FAILED}) {
    SCOPED_TRACE(cublasLtGetStatusString(failure));
    EXPECT_EQ(heuristic_outcome(failure, 0, ok, true), HeuristicOutcome::kRunUnfused);
    EXPECT_EQ(heuristic_outcome(ok, 1, failure, true), HeuristicOutcome::kRunUnfused);
    EXPECT_EQ(heuristic_outcome(failure, 0, ok, false), HeuristicOutcome::kFail);
    EXPECT_EQ(heuristic_outcome(ok, 1, failure, false), HeuristicOutcome::kFail);
  }
  EXPECT_EQ(heuristic_outcome(ok, 0, ok, true), HeuristicOutcome::kRunUnfused);  // no result
  EXPECT_EQ(heuristic_outcome(ok, 0, ok, false), HeuristicOutcome::kFail);
}

const char* epilogue_label(Epilogue e) {
  switch (e) {
    case Epilogue::kNone:
      return "none";
    case Epilogue::kBias:
      return "bias";
    case Epilogue::kGelu:
      return "gelu";
    case Epilogue::kBiasGelu:
      return "biasgelu";
    case Epilogue::kBiasGrad:
      return "biasgrad";
  }
  return "unknown";
}

// The table of GEMM cases every backend runs against the double reference
// (common/gemm_op_cases.cpp).
using testing::GemmOpTest;
WEFT_INSTANTIATE_GEMM_CASES(CudaGemmTest, "cuda");

class CudaGemmMiscTest : public CudaTest {};

// Views that start one row into a buffer are only 4- or 2-byte aligned at odd sizes: cuBLASLt
// must be told (its heuristic assumes 256 bytes by default).
TEST_F(CudaGemmMiscTest, UnalignedViews) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (Epilogue epilogue : {Epilogue::kNone, Epilogue::kBias, Epilogue::kBiasGrad}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " " + epilogue_label(epilogue));
      const int64_t m = 37, n = 53, k = 29;
      Tensor a_host = random_host({m + 1, k}, dtype, 201);
      Tensor b_host = random_host({k + 1, n}, dtype, 202);
      // 2D so that rows() can offset them too (a one-element offset: 4 or 2 bytes).
      Tensor bias_host = random_host({n + 1, 1}, dtype, 203);
      Tensor a = to_device(a_host);
      Tensor b = to_device(b_host);
      Tensor bias = to_device(bias_host);
      Tensor c = poisoned_device({m + 1, n}, dtype);
      Tensor bias_grad = poisoned_device({m + 1, 1}, dtype);
      Tensor c_host(cpu(), {m, n}, dtype);
      Tensor bias_grad_host(cpu(), {m, 1}, dtype);

      GemmArgs gpu;
      gpu.a = TensorView(a).rows(1, m);
      gpu.b = TensorView(b).rows(1, k);
      gpu.c = TensorView(c).rows(1, m);
      gpu.epilogue = epilogue;
      if (epilogue == Epilogue::kBias) gpu.bias = TensorView(bias).rows(1, n);
      if (epilogue == Epilogue::kBiasGrad) gpu.bias_grad = TensorView(bias_grad).rows(1, m);
      GemmArgs host;
      host.a = TensorView(a_host).rows(1, m);
      host.b = TensorView(b_host).rows(1, k);
      host.c = c_host;
      host.epilogue = epilogue;
      if (epilogue == Epilogue::kBias) host.bias = TensorView(bias_host).rows(1, n);
      if (epilogue == Epilogue::kBiasGrad) host.bias_grad = bias_grad_host;
      cuda().gemm(gpu);
      cpu().gemm(host);
      const double tol = dtype_rtol(dtype, 1e-4);
      EXPECT_TRUE(all_close(floats_of(gpu.c), floats_of(c_host), tol));
      if (epilogue == Epilogue::kBiasGrad) {
        EXPECT_TRUE(all_close(floats_of(gpu.bias_grad), floats_of(bias_grad_host), tol));
      }
    }
  }
}

TEST_F(CudaGemmMiscTest, Tf32IsClose) {
  Tensor a_host = random_host({128, 96}, DType::kF32, 301);
  Tensor b_host = random_host({96, 256}, DType::kF32, 302);
  Tensor a = to_device(a_host);
  Tensor b = to_device(b_host);
  Tensor c = poisoned_device({128, 256}, DType::kF32);
  Tensor c_host(cpu(), {128, 256}, DType::kF32);
  GemmArgs gpu;
  gpu.a = a;
  gpu.b = b;
  gpu.c = c;
  gpu.allow_tf32 = true;
  GemmArgs host = gpu;
  host.a = a_host;
  host.b = b_host;
  host.c = c_host;
  cuda().gemm(gpu);
  cpu().gemm(host);
  // TF32 keeps 10 mantissa bits of each input.
  EXPECT_TRUE(all_close(floats_of(c), floats_of(c_host), 5e-3));
}

TEST_F(CudaGemmMiscTest, RepeatedCallsAreBitIdentical) {
  Tensor a = to_device(random_host({64, 96}, DType::kBF16, 401));
  Tensor b = to_device(random_host({96, 128}, DType::kBF16, 402));
  Tensor bias = to_device(random_host({128}, DType::kBF16, 403));
  Tensor c1 = poisoned_device({64, 128}, DType::kBF16);
  Tensor c2 = poisoned_device({64, 128}, DType::kBF16);
  GemmArgs args;
  args.a = a;
  args.b = b;
  args.bias = bias;
  args.epilogue = Epilogue::kBiasGelu;
  args.c = c1;
  cuda().gemm(args);  // plans and caches
  args.c = c2;
  cuda().gemm(args);  // reuses the cached plan
  EXPECT_TRUE(bitwise_equal(bytes_of(c1), bytes_of(c2)));
}

// As on the CPU backend: an empty C is a no-op, an empty inner dimension is refused.
TEST_F(CudaGemmMiscTest, EmptyProblems) {
  Tensor a = poisoned_device({0, 8}, DType::kF32);
  Tensor b = poisoned_device({8, 4}, DType::kF32);
  Tensor c = poisoned_device({0, 4}, DType::kF32);
  GemmArgs args;
  args.a = a;
  args.b = b;
  args.c = c;
  EXPECT_NO_THROW(cuda().gemm(args));

  Tensor a_k0 = poisoned_device({6, 0}, DType::kF32);
  Tensor b_k0 = poisoned_device({0, 4}, DType::kF32);
  Tensor c_k0 = poisoned_device({6, 4}, DType::kF32);
  args.a = a_k0;
  args.b = b_k0;
  args.c = c_k0;
  EXPECT_THROW(cuda().gemm(args), Error);
}

TEST_F(CudaGemmMiscTest, BadArgumentsThrow) {
  Tensor a = poisoned_device({8, 16}, DType::kF32);
  Tensor b = poisoned_device({12, 4}, DType::kF32);  // inner dimension 12 != 16
  Tensor c = poisoned_device({8, 4}, DType::kF32);
  GemmArgs args;
  args.a = a;
  args.b = b;
  args.c = c;
  EXPECT_THROW(cuda().gemm(args), Error);

  Tensor b_ok = poisoned_device({16, 4}, DType::kF32);
  args.b = b_ok;
  Tensor bias = poisoned_device({5}, DType::kF32);  // n is 4
  args.epilogue = Epilogue::kBias;
  args.bias = bias;
  EXPECT_THROW(cuda().gemm(args), Error);

  args.epilogue = Epilogue::kNone;
  args.bias = TensorView();
  Tensor host_c(cpu(), {8, 4}, DType::kF32);
  args.c = host_c;  // host memory
  EXPECT_THROW(cuda().gemm(args), Error);

  Tensor bf16_b = poisoned_device({16, 4}, DType::kBF16);
  args.c = c;
  args.b = bf16_b;  // A and B dtypes differ
  EXPECT_THROW(cuda().gemm(args), Error);
}

}  // namespace
}  // namespace weft::test
