// CudaBackend's transformer ops: the table of cases every backend runs against the reference
// (common/transformer_op_cases.cpp: norms, attention and its KV cache, rotary, embedding, the
// vocab-parallel cross-entropy pieces, SwiGLU, dropout, AdamW, scale, sum of squares, copies and
// casts); against the CPU backend: attention beyond 8192 keys; limits and bad calls.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "common/transformer_op_cases.hpp"
#include "cuda_test_util.hpp"
#include "weft/error.hpp"

namespace weft::test {
namespace {

using testing::attention_shape;

class CudaTransformerOpsTest : public CudaTest {
 protected:
  ::testing::AssertionResult close(const TensorView& got, const TensorView& want, double rtol) {
    return all_close(floats_of(got), floats_of(want), rtol);
  }
  ::testing::AssertionResult same_bits(const TensorView& got, const TensorView& want) {
    return bitwise_equal(bytes_of(got), bytes_of(want));
  }
  void expect_attention_backward_matches_cpu(const AttentionShape& s, DType dtype);
};

std::string shape_label(const AttentionShape& s) {
  return "seq " + std::to_string(s.seq) + " batch " + std::to_string(s.batch) + " heads " +
         std::to_string(s.heads) + " kv_heads " + std::to_string(s.kv_heads) + " head_dim " +
         std::to_string(s.head_dim);
}

// The table of transformer-op and copy/cast cases every backend runs against the reference.
using testing::TransformerOpTest;
WEFT_INSTANTIATE_TRANSFORMER_CASES(CudaTransformerOps, "cuda");

// ---- attention beyond 8192 keys ----

const DType kAttentionDtypes[] = {DType::kF32, DType::kBF16};

// Forward and backward of each backend against the other's, and the CUDA backward run twice gives
// the same bits.
void CudaTransformerOpsTest::expect_attention_backward_matches_cpu(const AttentionShape& s,
                                                                   DType dtype) {
  CudaTransformerOpsTest& t = *this;
  SCOPED_TRACE(std::string(dtype_name(dtype)) + " " + shape_label(s));
  const int64_t tokens = s.seq * s.batch, out_cols = s.heads * s.head_dim;
  const Shape lse_shape{s.batch, s.heads, s.seq};
  Tensor qkv_host = t.random_host({tokens, s.qkv_cols()}, dtype, 161);
  Tensor grad_out_host = t.random_host({tokens, out_cols}, dtype, 162);
  Tensor qkv = t.to_device(qkv_host), grad_out = t.to_device(grad_out_host);
  // Each backend differentiates its own forward.
  Tensor out = t.poisoned_device({tokens, out_cols}, dtype);
  Tensor lse = t.poisoned_device(lse_shape, DType::kF32);
  t.cuda().attention(out, lse, qkv, s);
  Tensor grad_qkv = t.poisoned_device({tokens, s.qkv_cols()}, dtype);
  t.cuda().attention_backward(grad_qkv, grad_out, qkv, lse, s);

  Tensor out_cpu(t.cpu(), {tokens, out_cols}, dtype);
  Tensor lse_cpu(t.cpu(), lse_shape, DType::kF32);
  t.cpu().attention(out_cpu, lse_cpu, qkv_host, s);
  EXPECT_TRUE(t.close(out, out_cpu, dtype_rtol(dtype, 1e-5)));
  EXPECT_TRUE(t.close(lse, lse_cpu, 1e-5));
  Tensor grad_qkv_cpu(t.cpu(), {tokens, s.qkv_cols()}, dtype);
  t.cpu().attention_backward(grad_qkv_cpu, grad_out_host, qkv_host, lse_cpu, s);
  EXPECT_TRUE(t.close(grad_qkv, grad_qkv_cpu, dtype_rtol(dtype, 1e-4)));

  Tensor grad_qkv2 = t.poisoned_device({tokens, s.qkv_cols()}, dtype);
  t.cuda().attention_backward(grad_qkv2, grad_out, qkv, lse, s);
  EXPECT_TRUE(t.same_bits(grad_qkv2, grad_qkv));
}

// Beyond the 8192 keys the first kernels held in shared memory: the key tiles stream, so any
// length runs, and agrees with the CPU's tiled kernels.
TEST_F(CudaTransformerOpsTest, AttentionBeyondEightThousandKeysMatchesCpu) {
  for (DType dtype : kAttentionDtypes) {
    expect_attention_backward_matches_cpu(attention_shape(8500, 1, 2, 1, 64), dtype);
  }
}

struct VocabCase {
  int64_t vocab_start, vocab_size;  // v_local = 100 columns per shard
};

// ---- limits and bad calls ----

TEST_F(CudaTransformerOpsTest, LimitsAndBadCallsThrow) {
  const DType f32 = DType::kF32;
  // Beyond the 8192 attended positions the first kernel held in shared memory: 8192 cached + 1
  // new runs (keys stream in tiles); only positions past the cache's capacity are an error.
  {
    const AttentionShape s = attention_shape(1, 1, 1, 1, 2);
    Tensor qkv = to_device(random_host({1, s.qkv_cols()}, f32, 261));
    Tensor out = poisoned_device({1, 2}, f32);
    Tensor k_cache = poisoned_device({1, 1, 8193, 2}, f32);
    Tensor v_cache = poisoned_device({1, 1, 8193, 2}, f32);
    EXPECT_NO_THROW(cuda().attention_with_cache(out, k_cache, v_cache, qkv, s, 8192));
    EXPECT_THROW(cuda().attention_with_cache(out, k_cache, v_cache, qkv, s, 8193), Error);
  }
  // head_dim beyond the kernel's limit.
  {
    const AttentionShape s = attention_shape(1, 1, 1, 1, 1026);
    Tensor qkv = to_device(random_host({1, s.qkv_cols()}, f32, 262));
    Tensor out = poisoned_device({1, 1026}, f32);
    Tensor lse = poisoned_device({1, 1, 1}, f32);
    EXPECT_THROW(cuda().attention(out, lse, qkv, s), Error);
  }
  // grad_qkv aliasing qkv, a wrong lse size, GQA with heads not divisible by kv_heads.
  {
    const AttentionShape s = attention_shape(4, 2, 4, 2, 8);
    Tensor qkv = to_device(random_host({8, s.qkv_cols()}, f32, 263));
    Tensor grad_out = to_device(random_host({8, 32}, f32, 264));
    Tensor out = poisoned_device({8, 32}, f32);
    Tensor lse = poisoned_device({2, 4, 4}, f32);
    EXPECT_THROW(cuda().attention_backward(qkv, grad_out, qkv, lse, s), Error);
    Tensor small_lse = poisoned_device({2, 4, 3}, f32);
    EXPECT_THROW(cuda().attention(out, small_lse, qkv, s), Error);
    EXPECT_THROW(cuda().attention(out, lse, qkv, attention_shape(4, 2, 3, 2, 8)), Error);
  }
  // Host operands, probability 1, an odd head_dim for rope, a bf16 mean.
  {
    Tensor in = to_device(random_host({4, 8}, f32, 265));
    Tensor host = random_host({4, 8}, f32, 266);
    EXPECT_THROW(cuda().scale(in, host, 2.0f), Error);
    EXPECT_THROW(cuda().dropout(in, in, 1.0f, 1, 0), Error);
    const AttentionShape odd = attention_shape(2, 1, 1, 1, 3);
    Tensor qkv = to_device(random_host({2, odd.qkv_cols()}, f32, 267));
    EXPECT_THROW(cuda().rope(qkv, odd, 10000.0f, 0, false), Error);
    Tensor gamma = to_device(random_host({8}, f32, 268));
    Tensor mean_bf16 = poisoned_device({4}, DType::kBF16);
    Tensor rstd = poisoned_device({4}, f32);
    EXPECT_THROW(cuda().layer_norm(in, mean_bf16, rstd, in, gamma, gamma, 1e-5f), Error);
  }
}

}  // namespace
}  // namespace weft::test
