// CudaBackend's transformer ops against the CPU backend on random inputs: scale, sum_squares,
// layer/RMS norm (+backward), causal attention (+backward; MHA, GQA, MQA, bf16), the KV-cache path
// against full attention, rotary embeddings, embedding (+backward), the vocab-parallel
// cross-entropy pieces with padded vocabularies, SwiGLU (+backward), dropout (masks bit-identical
// to the CPU's), AdamW; run-to-run determinism of the reductions; limits and bad calls.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.hpp"
#include "weft/error.hpp"

namespace weft::test {
namespace {

const DType kDtypes[] = {DType::kF32, DType::kBF16, DType::kF16};

class CudaTransformerOpsTest : public CudaTest {
 protected:
  // Uniform in [lo, hi), for inputs that must keep a sign (second moments) or a range.
  Tensor uniform_host(const Shape& shape, DType dtype, uint64_t seed, double lo, double hi) {
    Tensor t(cpu(), shape, dtype);
    RandomFill spec;
    spec.distribution = Distribution::kUniform;
    spec.seed = seed;
    spec.a = lo;
    spec.b = hi;
    cpu().fill_random(t, spec);
    return t;
  }
  // i32 ids drawn uniformly from [lo, hi).
  Tensor ids_host(int64_t n, int32_t lo, int32_t hi, uint32_t seed) {
    Tensor t(cpu(), {n}, DType::kI32);
    std::mt19937 gen(seed);
    std::uniform_int_distribution<int32_t> pick(lo, hi - 1);
    for (int64_t i = 0; i < n; ++i) t.as<int32_t>()[i] = pick(gen);
    return t;
  }
  Tensor host_like(const Tensor& t) { return Tensor(cpu(), t.shape(), t.dtype()); }
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

AttentionShape make_shape(int64_t seq, int64_t batch, int64_t heads, int64_t kv_heads,
                          int64_t head_dim, float scale = 0.0f) {
  AttentionShape s;
  s.seq = seq;
  s.batch = batch;
  s.heads = heads;
  s.kv_heads = kv_heads;
  s.head_dim = head_dim;
  s.scale = scale;
  return s;
}

// Multi-head, grouped-query (4 query heads per group), multi-query with a head_dim that is not a
// multiple of the warp size, and an explicit scale.
const AttentionShape kAttentionShapes[] = {make_shape(13, 3, 4, 4, 16), make_shape(37, 2, 8, 2, 64),
                                           make_shape(21, 2, 6, 1, 40),
                                           make_shape(70, 1, 2, 1, 128, 0.05f)};

// ---- scale, sum_squares ----

TEST_F(CudaTransformerOpsTest, ScaleMatchesCpu) {
  for (DType dtype : kDtypes) {
    SCOPED_TRACE(dtype_name(dtype));
    Tensor in_host = random_host({31, 67}, dtype, 101);
    Tensor in = to_device(in_host);
    Tensor out = poisoned_device({31, 67}, dtype);
    cuda().scale(out, in, -0.375f);
    Tensor expected = host_like(in_host);
    cpu().scale(expected, in_host, -0.375f);
    EXPECT_TRUE(same_bits(out, expected));  // one rounded multiply on both sides
    cuda().scale(in, in, -0.375f);          // in place
    EXPECT_TRUE(same_bits(in, expected));
  }
}

TEST_F(CudaTransformerOpsTest, SumSquaresMatchesCpuAndIsDeterministic) {
  for (DType dtype : kDtypes) {
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{4099}, int64_t{1000003}}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " n " + std::to_string(n));
      Tensor in_host = random_host({n}, dtype, 102);
      Tensor in = to_device(in_host);
      Tensor out = poisoned_device({1}, DType::kF32);
      cuda().sum_squares(out, in);
      Tensor expected(cpu(), {1}, DType::kF32);
      cpu().sum_squares(expected, in_host);
      EXPECT_TRUE(close(out, expected, 1e-5));
      Tensor again = poisoned_device({1}, DType::kF32);
      cuda().sum_squares(again, in);
      EXPECT_TRUE(same_bits(again, out));
    }
  }
}

// ---- norms ----

// Rows spanning several chunks of the parameter-gradient reduction, columns not a multiple of 32.
const Shape kNormShapes[] = {Shape{3, 5, 96}, Shape{301, 203}, Shape{2, 1029}};

TEST_F(CudaTransformerOpsTest, LayerNormMatchesCpu) {
  for (DType dtype : kDtypes) {
    for (const Shape& shape : kNormShapes) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " " + shape.str());
      const int64_t rows = shape.rows(), cols = shape.cols();
      // An offset mean, so that a one-pass variance would lose digits.
      Tensor in_host = uniform_host(shape, dtype, 111, 2.0, 5.0);
      Tensor gamma_host = random_host({cols}, dtype, 112);
      Tensor beta_host = random_host({cols}, dtype, 113);
      Tensor in = to_device(in_host), gamma = to_device(gamma_host), beta = to_device(beta_host);
      Tensor out = poisoned_device(shape, dtype);
      Tensor mean = poisoned_device({rows}, DType::kF32);
      Tensor rstd = poisoned_device({rows}, DType::kF32);
      cuda().layer_norm(out, mean, rstd, in, gamma, beta, 1e-5f);
      Tensor out_cpu = host_like(in_host);
      Tensor mean_cpu(cpu(), {rows}, DType::kF32), rstd_cpu(cpu(), {rows}, DType::kF32);
      cpu().layer_norm(out_cpu, mean_cpu, rstd_cpu, in_host, gamma_host, beta_host, 1e-5f);
      EXPECT_TRUE(close(mean, mean_cpu, 1e-5));
      EXPECT_TRUE(close(rstd, rstd_cpu, 1e-4));
      EXPECT_TRUE(close(out, out_cpu, dtype_rtol(dtype, 1e-4)));
    }
  }
}

TEST_F(CudaTransformerOpsTest, LayerNormBackwardMatchesCpuAndIsDeterministic) {
  for (DType dtype : kDtypes) {
    for (const Shape& shape : kNormShapes) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " " + shape.str());
      const int64_t rows = shape.rows(), cols = shape.cols();
      Tensor in_host = random_host(shape, dtype, 121);
      Tensor gamma_host = random_host({cols}, dtype, 122);
      Tensor beta_host = random_host({cols}, dtype, 123);
      Tensor grad_out_host = random_host(shape, dtype, 124);
      // Statistics from the CPU forward, shared by both backwards.
      Tensor out_cpu = host_like(in_host);
      Tensor mean_host(cpu(), {rows}, DType::kF32), rstd_host(cpu(), {rows}, DType::kF32);
      cpu().layer_norm(out_cpu, mean_host, rstd_host, in_host, gamma_host, beta_host, 1e-5f);

      Tensor in = to_device(in_host), gamma = to_device(gamma_host);
      Tensor grad_out = to_device(grad_out_host);
      Tensor mean = to_device(mean_host), rstd = to_device(rstd_host);
      Tensor grad_in = poisoned_device(shape, dtype);
      Tensor grad_gamma = poisoned_device({cols}, dtype);
      Tensor grad_beta = poisoned_device({cols}, dtype);
      cuda().layer_norm_backward(grad_in, grad_gamma, grad_beta, grad_out, in, gamma, mean, rstd);

      Tensor grad_in_cpu = host_like(in_host);
      Tensor grad_gamma_cpu = host_like(gamma_host), grad_beta_cpu = host_like(gamma_host);
      cpu().layer_norm_backward(grad_in_cpu, grad_gamma_cpu, grad_beta_cpu, grad_out_host, in_host,
                                gamma_host, mean_host, rstd_host);
      EXPECT_TRUE(close(grad_in, grad_in_cpu, dtype_rtol(dtype, 1e-4)));
      EXPECT_TRUE(close(grad_gamma, grad_gamma_cpu, dtype_rtol(dtype, 1e-4)));
      EXPECT_TRUE(close(grad_beta, grad_beta_cpu, dtype_rtol(dtype, 1e-4)));

      Tensor grad_in2 = poisoned_device(shape, dtype);
      Tensor grad_gamma2 = poisoned_device({cols}, dtype);
      Tensor grad_beta2 = poisoned_device({cols}, dtype);
      cuda().layer_norm_backward(grad_in2, grad_gamma2, grad_beta2, grad_out, in, gamma, mean,
                                 rstd);
      EXPECT_TRUE(same_bits(grad_in2, grad_in));
      EXPECT_TRUE(same_bits(grad_gamma2, grad_gamma));
      EXPECT_TRUE(same_bits(grad_beta2, grad_beta));
    }
  }
}

TEST_F(CudaTransformerOpsTest, RmsNormMatchesCpu) {
  for (DType dtype : kDtypes) {
    for (const Shape& shape : kNormShapes) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " " + shape.str());
      const int64_t rows = shape.rows(), cols = shape.cols();
      Tensor in_host = random_host(shape, dtype, 131);
      Tensor gamma_host = random_host({cols}, dtype, 132);
      Tensor in = to_device(in_host), gamma = to_device(gamma_host);
      Tensor out = poisoned_device(shape, dtype);
      Tensor rstd = poisoned_device({rows}, DType::kF32);
      cuda().rms_norm(out, rstd, in, gamma, 1e-6f);
      Tensor out_cpu = host_like(in_host);
      Tensor rstd_cpu(cpu(), {rows}, DType::kF32);
      cpu().rms_norm(out_cpu, rstd_cpu, in_host, gamma_host, 1e-6f);
      EXPECT_TRUE(close(rstd, rstd_cpu, 1e-5));
      EXPECT_TRUE(close(out, out_cpu, dtype_rtol(dtype, 1e-5)));
    }
  }
}

TEST_F(CudaTransformerOpsTest, RmsNormBackwardMatchesCpuAndIsDeterministic) {
  for (DType dtype : kDtypes) {
    for (const Shape& shape : kNormShapes) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " " + shape.str());
      const int64_t rows = shape.rows(), cols = shape.cols();
      Tensor in_host = random_host(shape, dtype, 141);
      Tensor gamma_host = random_host({cols}, dtype, 142);
      Tensor grad_out_host = random_host(shape, dtype, 143);
      Tensor out_cpu = host_like(in_host);
      Tensor rstd_host(cpu(), {rows}, DType::kF32);
      cpu().rms_norm(out_cpu, rstd_host, in_host, gamma_host, 1e-6f);

      Tensor in = to_device(in_host), gamma = to_device(gamma_host);
      Tensor grad_out = to_device(grad_out_host), rstd = to_device(rstd_host);
      Tensor grad_in = poisoned_device(shape, dtype);
      Tensor grad_gamma = poisoned_device({cols}, dtype);
      cuda().rms_norm_backward(grad_in, grad_gamma, grad_out, in, gamma, rstd);

      Tensor grad_in_cpu = host_like(in_host), grad_gamma_cpu = host_like(gamma_host);
      cpu().rms_norm_backward(grad_in_cpu, grad_gamma_cpu, grad_out_host, in_host, gamma_host,
                              rstd_host);
      EXPECT_TRUE(close(grad_in, grad_in_cpu, dtype_rtol(dtype, 1e-4)));
      EXPECT_TRUE(close(grad_gamma, grad_gamma_cpu, dtype_rtol(dtype, 1e-4)));

      Tensor grad_in2 = poisoned_device(shape, dtype);
      Tensor grad_gamma2 = poisoned_device({cols}, dtype);
      cuda().rms_norm_backward(grad_in2, grad_gamma2, grad_out, in, gamma, rstd);
      EXPECT_TRUE(same_bits(grad_in2, grad_in));
      EXPECT_TRUE(same_bits(grad_gamma2, grad_gamma));
    }
  }
}

// ---- attention ----

const DType kAttentionDtypes[] = {DType::kF32, DType::kBF16};

TEST_F(CudaTransformerOpsTest, AttentionMatchesCpu) {
  for (DType dtype : kAttentionDtypes) {
    for (const AttentionShape& s : kAttentionShapes) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " " + shape_label(s));
      const int64_t tokens = s.seq * s.batch, out_cols = s.heads * s.head_dim;
      Tensor qkv_host = random_host({tokens, s.qkv_cols()}, dtype, 151);
      Tensor qkv = to_device(qkv_host);
      Tensor out = poisoned_device({tokens, out_cols}, dtype);
      Tensor lse = poisoned_device({s.batch, s.heads, s.seq}, DType::kF32);
      cuda().attention(out, lse, qkv, s);
      Tensor out_cpu(cpu(), {tokens, out_cols}, dtype);
      Tensor lse_cpu(cpu(), {s.batch, s.heads, s.seq}, DType::kF32);
      cpu().attention(out_cpu, lse_cpu, qkv_host, s);
      EXPECT_TRUE(close(lse, lse_cpu, 1e-5));
      EXPECT_TRUE(close(out, out_cpu, dtype_rtol(dtype, 1e-5)));
    }
  }
}

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

TEST_F(CudaTransformerOpsTest, AttentionBackwardMatchesCpuAndIsDeterministic) {
  for (DType dtype : kAttentionDtypes) {
    for (const AttentionShape& s : kAttentionShapes) {
      expect_attention_backward_matches_cpu(s, dtype);
    }
  }
}

// Beyond the 8192 keys the first kernels held in shared memory: the key tiles stream, so any
// length runs, and agrees with the CPU's tiled kernels.
TEST_F(CudaTransformerOpsTest, AttentionBeyondEightThousandKeysMatchesCpu) {
  for (DType dtype : kAttentionDtypes) {
    expect_attention_backward_matches_cpu(make_shape(8500, 1, 2, 1, 64), dtype);
  }
}

// Prefill then decode steps through the cache give the rows of full causal attention: bit for bit
// on the GPU (the same kernel attends the same keys), and close to the CPU's cache path.
TEST_F(CudaTransformerOpsTest, AttentionWithCacheMatchesFullAttention) {
  for (DType dtype : kAttentionDtypes) {
    SCOPED_TRACE(dtype_name(dtype));
    const AttentionShape full = make_shape(11, 2, 4, 2, 32);
    const int64_t B = full.batch, out_cols = full.heads * full.head_dim, capacity = 16;
    const int64_t tokens = full.seq * B;
    Tensor qkv_host = random_host({tokens, full.qkv_cols()}, dtype, 171);
    Tensor qkv = to_device(qkv_host);
    Tensor out_full = poisoned_device({tokens, out_cols}, dtype);
    Tensor lse = poisoned_device({B, full.heads, full.seq}, DType::kF32);
    cuda().attention(out_full, lse, qkv, full);

    const Shape cache_shape{B, full.kv_heads, capacity, full.head_dim};
    Tensor k_cache = poisoned_device(cache_shape, dtype);  // NaN past the stored positions
    Tensor v_cache = poisoned_device(cache_shape, dtype);
    Tensor k_cache_cpu(cpu(), cache_shape, dtype), v_cache_cpu(cpu(), cache_shape, dtype);
    cpu().fill(k_cache_cpu, NAN);
    cpu().fill(v_cache_cpu, NAN);
    int64_t past = 0;
    for (int64_t step : {6, 1, 1, 3}) {
      SCOPED_TRACE("past " + std::to_string(past) + " seq " + std::to_string(step));
      AttentionShape s = full;
      s.seq = step;
      const TensorView qkv_step = qkv.view().rows(past * B, step * B);
      Tensor out = poisoned_device({step * B, out_cols}, dtype);
      cuda().attention_with_cache(out, k_cache, v_cache, qkv_step, s, past);
      EXPECT_TRUE(same_bits(out, out_full.view().rows(past * B, step * B)));

      Tensor out_cpu(cpu(), {step * B, out_cols}, dtype);
      cpu().attention_with_cache(out_cpu, k_cache_cpu, v_cache_cpu,
                                 qkv_host.view().rows(past * B, step * B), s, past);
      EXPECT_TRUE(close(out, out_cpu, dtype_rtol(dtype, 1e-5)));
      past += step;
    }
    // The stored positions hold the keys and values, as on the CPU.
    const std::vector<unsigned char> k = bytes_of(k_cache), k_cpu = bytes_of(k_cache_cpu);
    const std::vector<unsigned char> v = bytes_of(v_cache), v_cpu = bytes_of(v_cache_cpu);
    const size_t row_bytes = static_cast<size_t>(full.head_dim) * dtype_size(dtype);
    for (int64_t bg = 0; bg < B * full.kv_heads; ++bg) {
      const size_t begin = static_cast<size_t>(bg * capacity) * row_bytes;
      const size_t end = begin + static_cast<size_t>(past) * row_bytes;
      EXPECT_TRUE(std::equal(k.begin() + begin, k.begin() + end, k_cpu.begin() + begin));
      EXPECT_TRUE(std::equal(v.begin() + begin, v.begin() + end, v_cpu.begin() + begin));
    }
  }
}

TEST_F(CudaTransformerOpsTest, RopeMatchesCpuAndInverts) {
  for (DType dtype : kAttentionDtypes) {
    for (int64_t offset : {int64_t{0}, int64_t{3}, int64_t{100000}}) {
      for (const AttentionShape& s : {make_shape(9, 3, 8, 2, 64), make_shape(5, 2, 3, 3, 6)}) {
        SCOPED_TRACE(std::string(dtype_name(dtype)) + " offset " + std::to_string(offset) + " " +
                     shape_label(s));
        const int64_t tokens = s.seq * s.batch;
        Tensor qkv_host = random_host({tokens, s.qkv_cols()}, dtype, 181);
        Tensor qkv = to_device(qkv_host);
        Tensor original = to_device(qkv_host);
        cuda().rope(qkv, s, 10000.0f, offset, false);
        Tensor expected(cpu(), qkv_host.shape(), dtype);
        cpu().copy(expected, qkv_host);
        cpu().rope(expected, s, 10000.0f, offset, false);
        EXPECT_TRUE(close(qkv, expected, dtype_rtol(dtype, 1e-5)));
        // Value heads are not rotated.
        const int64_t q_per_group = s.heads / s.kv_heads;
        for (int64_t g = 0; g < s.kv_heads; ++g) {
          const int64_t v_col = (g * (q_per_group + 2) + q_per_group + 1) * s.head_dim;
          Tensor got = poisoned_device({tokens, s.head_dim}, dtype);
          Tensor want = poisoned_device({tokens, s.head_dim}, dtype);
          cuda().copy_columns(got, 0, qkv, v_col, s.head_dim);
          cuda().copy_columns(want, 0, original, v_col, s.head_dim);
          EXPECT_TRUE(same_bits(got, want));
        }
        cuda().rope(qkv, s, 10000.0f, offset, true);
        EXPECT_TRUE(close(qkv, original, dtype_rtol(dtype, 1e-5)));
      }
    }
  }
}

// ---- embedding ----

TEST_F(CudaTransformerOpsTest, EmbeddingMatchesCpuBitwise) {
  for (DType dtype : kDtypes) {
    SCOPED_TRACE(dtype_name(dtype));
    // This shard holds entries [100, 150); ids outside give zero rows.
    Tensor table_host = random_host({50, 72}, dtype, 191);
    Tensor ids_h = ids_host(97, 0, 250, 192);
    Tensor table = to_device(table_host), ids = to_device(ids_h);
    Tensor out = poisoned_device({97, 72}, dtype);
    cuda().embedding(out, ids, table, 100);
    Tensor expected(cpu(), {97, 72}, dtype);
    cpu().embedding(expected, ids_h, table_host, 100);
    EXPECT_TRUE(same_bits(out, expected));
  }
}

TEST_F(CudaTransformerOpsTest, EmbeddingBackwardMatchesCpuBitwise) {
  // Float accumulation in token order, rounded once, on both backends: equal bits, also in bf16.
  for (DType dtype : kDtypes) {
    SCOPED_TRACE(dtype_name(dtype));
    const int64_t tokens = 611, rows = 40, hidden = 300;
    Tensor grad_table_host = random_host({rows, hidden}, dtype, 201);  // accumulated into
    Tensor grad_out_host = random_host({tokens, hidden}, dtype, 202);
    // Entries [90, 130) are this shard's; ids from [70, 150) repeat many times and miss sometimes.
    Tensor ids_h = ids_host(tokens, 70, 150, 203);
    Tensor grad_table = to_device(grad_table_host);
    Tensor ids = to_device(ids_h), grad_out = to_device(grad_out_host);
    cuda().embedding_backward(grad_table, ids, grad_out, 90);
    cpu().embedding_backward(grad_table_host, ids_h, grad_out_host, 90);
    EXPECT_TRUE(same_bits(grad_table, grad_table_host));
    // Again: accumulates on top, identically.
    cuda().embedding_backward(grad_table, ids, grad_out, 90);
    cpu().embedding_backward(grad_table_host, ids_h, grad_out_host, 90);
    EXPECT_TRUE(same_bits(grad_table, grad_table_host));
  }
}

// ---- vocab-parallel cross-entropy pieces ----

struct VocabCase {
  int64_t vocab_start, vocab_size;  // v_local = 100 columns per shard
};

TEST_F(CudaTransformerOpsTest, VocabCrossEntropyPiecesMatchCpu) {
  // A full shard, a shard whose last 40 columns are padding, and a large vocabulary.
  const VocabCase cases[] = {{0, 500}, {200, 260}, {300, 1000}};
  for (DType dtype : kDtypes) {
    for (const VocabCase& vc : cases) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " vocab_start " +
                   std::to_string(vc.vocab_start) + " vocab_size " + std::to_string(vc.vocab_size));
      const int64_t tokens = 33, v_local = 100;
      Tensor logits_host = random_host({tokens, v_local}, dtype, 211);
      // Targets in this shard, in other shards, and pointing at padding columns.
      Tensor targets_h = ids_host(tokens, static_cast<int32_t>(vc.vocab_start) - 20,
                                  static_cast<int32_t>(vc.vocab_start + v_local) + 20, 212);
      for (int64_t t = 0; t < tokens; ++t) {
        targets_h.as<int32_t>()[t] = std::max<int32_t>(0, targets_h.as<int32_t>()[t]);
      }
      Tensor grad_loss_host = random_host({tokens}, DType::kF32, 213);
      Tensor logits = to_device(logits_host), targets = to_device(targets_h);
      Tensor grad_loss = to_device(grad_loss_host);

      Tensor row_max = poisoned_device({tokens}, DType::kF32);
      cuda().vocab_max(row_max, logits, vc.vocab_start, vc.vocab_size);
      Tensor row_max_cpu(cpu(), {tokens}, DType::kF32);
      cpu().vocab_max(row_max_cpu, logits_host, vc.vocab_start, vc.vocab_size);
      EXPECT_TRUE(same_bits(row_max, row_max_cpu));  // a max is exact

      Tensor sum_exp = poisoned_device({tokens}, DType::kF32);
      Tensor target_logit = poisoned_device({tokens}, DType::kF32);
      cuda().vocab_sum_exp_and_target(sum_exp, target_logit, logits, row_max, targets,
                                      vc.vocab_start, vc.vocab_size);
      Tensor sum_exp_cpu(cpu(), {tokens}, DType::kF32);
      Tensor target_logit_cpu(cpu(), {tokens}, DType::kF32);
      cpu().vocab_sum_exp_and_target(sum_exp_cpu, target_logit_cpu, logits_host, row_max_cpu,
                                     targets_h, vc.vocab_start, vc.vocab_size);
      EXPECT_TRUE(close(sum_exp, sum_exp_cpu, 1e-5));
      EXPECT_TRUE(same_bits(target_logit, target_logit_cpu));

      Tensor grad_logits = poisoned_device({tokens, v_local}, dtype);
      cuda().vocab_cross_entropy_backward(grad_logits, logits, row_max, sum_exp, targets, grad_loss,
                                          vc.vocab_start, vc.vocab_size);
      Tensor grad_logits_cpu(cpu(), {tokens, v_local}, dtype);
      cpu().vocab_cross_entropy_backward(grad_logits_cpu, logits_host, row_max_cpu, sum_exp_cpu,
                                         targets_h, grad_loss_host, vc.vocab_start, vc.vocab_size);
      EXPECT_TRUE(close(grad_logits, grad_logits_cpu, dtype_rtol(dtype, 1e-5)));
      // Padding columns get exactly 0.
      const std::vector<float> g = floats_of(grad_logits);
      const int64_t valid = std::min<int64_t>(v_local, vc.vocab_size - vc.vocab_start);
      for (int64_t t = 0; t < tokens; ++t) {
        for (int64_t j = valid; j < v_local; ++j) {
          ASSERT_EQ(g[static_cast<size_t>(t * v_local + j)], 0.0f) << "token " << t << " col " << j;
        }
      }
    }
  }
}

// A shard wholly in the padding: max -inf, no exponentials, zero gradient.
TEST_F(CudaTransformerOpsTest, VocabShardOfPaddingOnly) {
  const int64_t tokens = 5, v_local = 16;
  Tensor logits = to_device(random_host({tokens, v_local}, DType::kF32, 221));
  Tensor targets = to_device(ids_host(tokens, 0, 8, 222));
  Tensor grad_loss = to_device(random_host({tokens}, DType::kF32, 223));
  Tensor row_max = poisoned_device({tokens}, DType::kF32);
  cuda().vocab_max(row_max, logits, 32, 20);
  for (float m : floats_of(row_max)) EXPECT_TRUE(std::isinf(m) && m < 0) << m;
  Tensor sum_exp = poisoned_device({tokens}, DType::kF32);
  Tensor target_logit = poisoned_device({tokens}, DType::kF32);
  cuda().vocab_sum_exp_and_target(sum_exp, target_logit, logits, row_max, targets, 32, 20);
  for (float s : floats_of(sum_exp)) EXPECT_EQ(s, 0.0f);
  for (float t : floats_of(target_logit)) EXPECT_EQ(t, 0.0f);
  Tensor grad_logits = poisoned_device({tokens, v_local}, DType::kF32);
  cuda().vocab_cross_entropy_backward(grad_logits, logits, row_max, sum_exp, targets, grad_loss, 32,
                                      20);
  for (float g : floats_of(grad_logits)) EXPECT_EQ(g, 0.0f);
}

// ---- SwiGLU, dropout, AdamW ----

TEST_F(CudaTransformerOpsTest, SwigluMatchesCpu) {
  for (DType dtype : kDtypes) {
    SCOPED_TRACE(dtype_name(dtype));
    const Shape shape{23, 91};
    Tensor gate_host = random_host(shape, dtype, 231);
    Tensor up_host = random_host(shape, dtype, 232);
    Tensor grad_out_host = random_host(shape, dtype, 233);
    Tensor gate = to_device(gate_host), up = to_device(up_host);
    Tensor grad_out = to_device(grad_out_host);
    Tensor out = poisoned_device(shape, dtype);
    cuda().swiglu(out, gate, up);
    Tensor out_cpu(cpu(), shape, dtype);
    cpu().swiglu(out_cpu, gate_host, up_host);
    EXPECT_TRUE(close(out, out_cpu, dtype_rtol(dtype, 1e-5)));

    Tensor grad_gate = poisoned_device(shape, dtype), grad_up = poisoned_device(shape, dtype);
    cuda().swiglu_backward(grad_gate, grad_up, grad_out, gate, up);
    Tensor grad_gate_cpu(cpu(), shape, dtype), grad_up_cpu(cpu(), shape, dtype);
    cpu().swiglu_backward(grad_gate_cpu, grad_up_cpu, grad_out_host, gate_host, up_host);
    EXPECT_TRUE(close(grad_gate, grad_gate_cpu, dtype_rtol(dtype, 1e-5)));
    EXPECT_TRUE(close(grad_up, grad_up_cpu, dtype_rtol(dtype, 1e-5)));
    // In place: the gradients overwrite gate and up.
    cuda().swiglu_backward(gate, up, grad_out, gate, up);
    EXPECT_TRUE(close(gate, grad_gate_cpu, dtype_rtol(dtype, 1e-5)));
    EXPECT_TRUE(close(up, grad_up_cpu, dtype_rtol(dtype, 1e-5)));
  }
}

TEST_F(CudaTransformerOpsTest, DropoutMatchesCpuBitwise) {
  // The same mask (same Philox draws) and the same rounded multiply: equal bits.
  const uint64_t offset = (uint64_t{1} << 33) + 5;  // counters beyond 32 bits
  for (DType dtype : kDtypes) {
    for (float p : {0.0f, 0.1f, 0.5f, 0.9f}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " p " + std::to_string(p));
      const Shape shape{37, 129};
      Tensor in_host = uniform_host(shape, dtype, 241, 1.0, 2.0);  // never 0: zeros are drops
      Tensor in = to_device(in_host);
      Tensor out = poisoned_device(shape, dtype);
      cuda().dropout(out, in, p, 0xd20f0u, offset);
      Tensor out_cpu(cpu(), shape, dtype);
      cpu().dropout(out_cpu, in_host, p, 0xd20f0u, offset);
      EXPECT_TRUE(same_bits(out, out_cpu));
      int64_t dropped = 0;
      for (float v : floats_of(out)) dropped += v == 0.0f ? 1 : 0;
      const double fraction = static_cast<double>(dropped) / static_cast<double>(shape.numel());
      EXPECT_NEAR(fraction, p, 0.05);
      cuda().dropout(in, in, p, 0xd20f0u, offset);  // in place
      EXPECT_TRUE(same_bits(in, out_cpu));
    }
  }
}

TEST_F(CudaTransformerOpsTest, AdamWMatchesCpu) {
  for (DType dtype : kDtypes) {
    for (int64_t step : {int64_t{1}, int64_t{7}}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " step " + std::to_string(step));
      const Shape shape{19, 257};
      Tensor master_host = random_host(shape, DType::kF32, 251);
      Tensor m_host = random_host(shape, DType::kF32, 252);
      Tensor v_host = uniform_host(shape, DType::kF32, 253, 0.001, 1.0);
      Tensor grad_host = random_host(shape, dtype, 254);
      Tensor master = to_device(master_host), m = to_device(m_host), v = to_device(v_host);
      Tensor grad = to_device(grad_host);
      AdamWStep s;
      s.lr = 3e-3f;
      s.weight_decay = 0.1f;
      s.step = step;
      s.grad_scale = 0.5f;
      cuda().adamw(master, m, v, grad, s);
      cpu().adamw(master_host, m_host, v_host, grad_host, s);
      EXPECT_TRUE(close(m, m_host, 1e-6));
      EXPECT_TRUE(close(v, v_host, 1e-6));
      EXPECT_TRUE(close(master, master_host, 1e-6));
    }
  }
}

// ---- limits and bad calls ----

TEST_F(CudaTransformerOpsTest, LimitsAndBadCallsThrow) {
  const DType f32 = DType::kF32;
  // Beyond the 8192 attended positions the first kernel held in shared memory: 8192 cached + 1
  // new runs (keys stream in tiles); only positions past the cache's capacity are an error.
  {
    const AttentionShape s = make_shape(1, 1, 1, 1, 2);
    Tensor qkv = to_device(random_host({1, s.qkv_cols()}, f32, 261));
    Tensor out = poisoned_device({1, 2}, f32);
    Tensor k_cache = poisoned_device({1, 1, 8193, 2}, f32);
    Tensor v_cache = poisoned_device({1, 1, 8193, 2}, f32);
    EXPECT_NO_THROW(cuda().attention_with_cache(out, k_cache, v_cache, qkv, s, 8192));
    EXPECT_THROW(cuda().attention_with_cache(out, k_cache, v_cache, qkv, s, 8193), Error);
  }
  // head_dim beyond the kernel's limit.
  {
    const AttentionShape s = make_shape(1, 1, 1, 1, 1026);
    Tensor qkv = to_device(random_host({1, s.qkv_cols()}, f32, 262));
    Tensor out = poisoned_device({1, 1026}, f32);
    Tensor lse = poisoned_device({1, 1, 1}, f32);
    EXPECT_THROW(cuda().attention(out, lse, qkv, s), Error);
  }
  // grad_qkv aliasing qkv, a wrong lse size, GQA with heads not divisible by kv_heads.
  {
    const AttentionShape s = make_shape(4, 2, 4, 2, 8);
    Tensor qkv = to_device(random_host({8, s.qkv_cols()}, f32, 263));
    Tensor grad_out = to_device(random_host({8, 32}, f32, 264));
    Tensor out = poisoned_device({8, 32}, f32);
    Tensor lse = poisoned_device({2, 4, 4}, f32);
    EXPECT_THROW(cuda().attention_backward(qkv, grad_out, qkv, lse, s), Error);
    Tensor small_lse = poisoned_device({2, 4, 3}, f32);
    EXPECT_THROW(cuda().attention(out, small_lse, qkv, s), Error);
    EXPECT_THROW(cuda().attention(out, lse, qkv, make_shape(4, 2, 3, 2, 8)), Error);
  }
  // Host operands, probability 1, an odd head_dim for rope, a bf16 mean.
  {
    Tensor in = to_device(random_host({4, 8}, f32, 265));
    Tensor host = random_host({4, 8}, f32, 266);
    EXPECT_THROW(cuda().scale(in, host, 2.0f), Error);
    EXPECT_THROW(cuda().dropout(in, in, 1.0f, 1, 0), Error);
    const AttentionShape odd = make_shape(2, 1, 1, 1, 3);
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
