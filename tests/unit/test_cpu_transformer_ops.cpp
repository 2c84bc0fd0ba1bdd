// Unit tests of CpuBackend's transformer ops beyond the case table every backend runs
// (common/transformer_op_cases.cpp, instantiated below): each backward against central
// differences of its forward, results independent of the thread count, rope's inverse is its
// transpose, the dropout mask's rules, and the argument checks.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "common/transformer_op_cases.hpp"
#include "unit/unit_util.hpp"
#include "weft/weft.hpp"

namespace weft {
namespace {

using testing::attention_shape;
using testing::from_host;
using testing::max_rel_error;
using testing::poisoned;
using testing::random_tensor;
using testing::to_host;
using testing::tolerance;

using Vec = std::vector<double>;

// Central differences of an f32 forward: h = 1e-2 keeps rounding noise near 1e-4 of the slope.
constexpr double kStep = 1e-2;
constexpr double kFdTolerance = 2e-3;

std::unique_ptr<Backend> cpu() { return make_cpu_backend(); }

// The table of transformer-op and copy/cast cases every backend runs against the reference.
using testing::TransformerOpTest;
WEFT_INSTANTIATE_TRANSFORMER_CASES(Cpu, "cpu");

double dot(const Vec& a, const Vec& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// d objective / d x[i] for every element of the f32 tensor x, by central differences.
Vec numeric_gradient(Tensor& x, const std::function<double()>& objective) {
  Vec g(static_cast<size_t>(x.numel()));
  float* p = x.as<float>();
  for (size_t i = 0; i < g.size(); ++i) {
    const float orig = p[i];
    const float up = orig + static_cast<float>(kStep), down = orig - static_cast<float>(kStep);
    p[i] = up;
    const double f_up = objective();
    p[i] = down;
    const double f_down = objective();
    p[i] = orig;
    g[i] = (f_up - f_down) / (static_cast<double>(up) - static_cast<double>(down));
  }
  return g;
}

// ---- layer norm, RMS norm ------------------------------------------------------------------

TEST(TransformerNorm, BackwardsAreTheDerivativesOfTheForwards) {
  auto be = cpu();
  const int64_t rows = 5, cols = 12;
  const DType f32 = DType::kF32;
  Tensor in = random_tensor(*be, Shape({rows, cols}), f32, 41);
  Tensor gamma = random_tensor(*be, Shape({cols}), f32, 42);
  Tensor beta = random_tensor(*be, Shape({cols}), f32, 43);
  Tensor w = random_tensor(*be, Shape({rows, cols}), f32, 44);  // objective = sum w * out
  const Vec wh = to_host(*be, w);
  Tensor out = poisoned(*be, Shape({rows, cols}), f32);
  Tensor mean = poisoned(*be, Shape({rows}), f32), rstd = poisoned(*be, Shape({rows}), f32);
  const float eps = 1e-5f;

  auto ln = [&] {
    be->layer_norm(out, mean, rstd, in, gamma, beta, eps);
    return dot(to_host(*be, out), wh);
  };
  const Vec fd_in = numeric_gradient(in, ln), fd_gamma = numeric_gradient(gamma, ln),
            fd_beta = numeric_gradient(beta, ln);
  ln();
  Tensor grad_in = poisoned(*be, Shape({rows, cols}), f32);
  Tensor grad_gamma = poisoned(*be, Shape({cols}), f32),
         grad_beta = poisoned(*be, Shape({cols}), f32);
  be->layer_norm_backward(grad_in, grad_gamma, grad_beta, w, in, gamma, mean, rstd);
  EXPECT_LE(max_rel_error(to_host(*be, grad_in), fd_in), kFdTolerance);
  EXPECT_LE(max_rel_error(to_host(*be, grad_gamma), fd_gamma), kFdTolerance);
  EXPECT_LE(max_rel_error(to_host(*be, grad_beta), fd_beta), kFdTolerance);

  auto rms = [&] {
    be->rms_norm(out, rstd, in, gamma, eps);
    return dot(to_host(*be, out), wh);
  };
  const Vec fd_rms_in = numeric_gradient(in, rms), fd_rms_gamma = numeric_gradient(gamma, rms);
  rms();
  be->fill(grad_in, NAN);
  be->fill(grad_gamma, NAN);
  be->rms_norm_backward(grad_in, grad_gamma, w, in, gamma, rstd);
  EXPECT_LE(max_rel_error(to_host(*be, grad_in), fd_rms_in), kFdTolerance);
  EXPECT_LE(max_rel_error(to_host(*be, grad_gamma), fd_rms_gamma), kFdTolerance);
}

// ---- attention ------------------------------------------------------------------------------

// Every sum runs in an order fixed by the shapes: one thread and two give the same bits.
TEST(TransformerAttention, ResultsDoNotDependOnTheThreadCount) {
  auto be = cpu();
  const AttentionShape s = attention_shape(300, 2, 4, 2, 16);
  const int64_t tokens = s.seq * s.batch, out_cols = s.heads * s.head_dim;
  Tensor qkv = random_tensor(*be, Shape({tokens, s.qkv_cols()}), DType::kF32, 63);
  Tensor dout = random_tensor(*be, Shape({tokens, out_cols}), DType::kF32, 64);
  std::vector<Vec> results;
  for (int threads : {1, 2}) {
    const int before = omp_get_max_threads();
    omp_set_num_threads(threads);
    Tensor out = poisoned(*be, Shape({tokens, out_cols}), DType::kF32);
    Tensor lse = poisoned(*be, Shape({s.batch, s.heads, s.seq}), DType::kF32);
    Tensor grad_qkv = poisoned(*be, Shape({tokens, s.qkv_cols()}), DType::kF32);
    be->attention(out, lse, qkv, s);
    be->attention_backward(grad_qkv, dout, qkv, lse, s);
    omp_set_num_threads(before);
    Vec all = to_host(*be, out);
    for (const Tensor* t : {&lse, &grad_qkv}) {
      const Vec v = to_host(*be, *t);
      all.insert(all.end(), v.begin(), v.end());
    }
    results.push_back(std::move(all));
  }
  EXPECT_TRUE(results[0] == results[1]);
}

TEST(TransformerAttention, BackwardIsTheDerivativeOfTheForward) {
  auto be = cpu();
  for (const AttentionShape& s :
       {attention_shape(5, 2, 4, 2, 4), attention_shape(4, 2, 3, 3, 4, 0.7f)}) {
    SCOPED_TRACE(::testing::Message() << "heads " << s.heads << "/" << s.kv_heads);
    const int64_t tokens = s.seq * s.batch, out_cols = s.heads * s.head_dim;
    Tensor qkv = random_tensor(*be, Shape({tokens, s.qkv_cols()}), DType::kF32, 71);
    Tensor w = random_tensor(*be, Shape({tokens, out_cols}), DType::kF32, 72);
    Tensor out = poisoned(*be, Shape({tokens, out_cols}), DType::kF32);
    Tensor lse = poisoned(*be, Shape({s.batch, s.heads, s.seq}), DType::kF32);
    const Vec wh = to_host(*be, w);
    const Vec fd = numeric_gradient(qkv, [&] {
      be->attention(out, lse, qkv, s);
      return dot(to_host(*be, out), wh);
    });
    be->attention(out, lse, qkv, s);
    Tensor grad_qkv = poisoned(*be, Shape({tokens, s.qkv_cols()}), DType::kF32);
    be->attention_backward(grad_qkv, w, qkv, lse, s);
    EXPECT_LE(max_rel_error(to_host(*be, grad_qkv), fd), kFdTolerance);
  }
}

// ---- rotary embedding -----------------------------------------------------------------------

TEST(TransformerRope, InverseRestoresTheInputAndIsTheTranspose) {
  auto be = cpu();
  const AttentionShape s = attention_shape(8, 2, 4, 2, 16);
  const Shape shape({s.seq * s.batch, s.qkv_cols()});
  Tensor x = random_tensor(*be, shape, DType::kF32, 101);
  Tensor y = random_tensor(*be, shape, DType::kF32, 102);
  const Vec x0 = to_host(*be, x), y0 = to_host(*be, y);
  be->rope(x, s, 500000.0f, 1000, false);
  const Vec rx = to_host(*be, x);
  be->rope(y, s, 500000.0f, 1000, true);
  // <R x, y> = <x, R^T y>, and R^T is what inverse computes.
  EXPECT_NEAR(dot(rx, y0), dot(x0, to_host(*be, y)), 1e-5 * std::sqrt(dot(x0, x0) * dot(y0, y0)));
  be->rope(x, s, 500000.0f, 1000, true);
  EXPECT_LE(max_rel_error(to_host(*be, x), x0), 1e-6);
}

// ---- vocab-parallel cross-entropy pieces ----------------------------------------------------

// The vocabulary [0, 13) padded to 24 columns and split into three shards of 8: the second holds
// 3 padding columns, the third is padding only. Padding logits are large, so including any of
// them changes every result.
struct VocabSetup {
  static constexpr int64_t kTokens = 6, kVocab = 13, kShard = 8, kShards = 3;
  Vec logits;  // [tokens, 24]
  Vec targets;
  Vec grad_loss;
};

VocabSetup vocab_setup(Backend& be) {
  VocabSetup v;
  Tensor l = random_tensor(be, Shape({v.kTokens, v.kShard * v.kShards}), DType::kF32, 131, 2.0);
  v.logits = to_host(be, l);
  for (int64_t t = 0; t < v.kTokens; ++t) {
    for (int64_t j = v.kVocab; j < v.kShard * v.kShards; ++j) {
      v.logits[t * v.kShard * v.kShards + j] = 40.0 + j;
    }
  }
  v.targets = {3, 12, 0, 9, 7, 8};
  v.grad_loss = {0.3, -0.7, 1.1, 0.45, -0.2, 0.9};
  return v;
}

// The per-shard pieces assembled as the vocab-parallel layer does (max, then sums, over shards).
struct ShardedLoss {
  Vec loss;                          // per token
  Vec global_max, sum_exp;           // reduced over shards
  std::vector<Tensor> shard_logits;  // [tokens, 8] each, in `dtype`
};

ShardedLoss sharded_loss(Backend& be, const VocabSetup& v, DType dt) {
  const int64_t W = v.kShard * v.kShards, T = v.kTokens;
  ShardedLoss r;
  r.global_max.assign(T, -std::numeric_limits<double>::infinity());
  r.sum_exp.assign(T, 0.0);
  Vec target_sum(T, 0.0);
  Tensor targets = from_host(be, Shape({T}), DType::kI32, v.targets);
  for (int64_t s = 0; s < v.kShards; ++s) {
    r.shard_logits.push_back(
        from_host(be, Shape({T, v.kShard}), dt,
                  testing::column_block(v.logits, T, W, s * v.kShard, v.kShard)));
    Tensor row_max = poisoned(be, Shape({T}), DType::kF32);
    be.vocab_max(row_max, r.shard_logits[s], s * v.kShard, v.kVocab);
    const Vec row_max_h = to_host(be, row_max);
    for (int64_t t = 0; t < T; ++t) r.global_max[t] = std::max(r.global_max[t], row_max_h[t]);
  }
  Tensor gmax = from_host(be, Shape({T}), DType::kF32, r.global_max);
  for (int64_t s = 0; s < v.kShards; ++s) {
    Tensor sum_exp = poisoned(be, Shape({T}), DType::kF32);
    Tensor target_logit = poisoned(be, Shape({T}), DType::kF32);
    be.vocab_sum_exp_and_target(sum_exp, target_logit, r.shard_logits[s], gmax, targets,
                                s * v.kShard, v.kVocab);
    const Vec se = to_host(be, sum_exp), tl = to_host(be, target_logit);
    for (int64_t t = 0; t < T; ++t) {
      r.sum_exp[t] += se[t];
      target_sum[t] += tl[t];
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    r.loss.push_back(std::log(r.sum_exp[t]) + r.global_max[t] - target_sum[t]);
  }
  return r;
}

TEST(TransformerVocab, BackwardIsTheDerivativeOfTheAssembledLoss) {
  auto be = cpu();
  VocabSetup v = vocab_setup(*be);
  const int64_t W = v.kShard * v.kShards, T = v.kTokens;
  // Central differences over every logit, padding included (their slope must be 0).
  Vec fd(T * W);
  for (int64_t i = 0; i < T * W; ++i) {
    const double orig = v.logits[i];
    const float up = static_cast<float>(orig + kStep), down = static_cast<float>(orig - kStep);
    v.logits[i] = up;
    const double f_up = dot(sharded_loss(*be, v, DType::kF32).loss, v.grad_loss);
    v.logits[i] = down;
    const double f_down = dot(sharded_loss(*be, v, DType::kF32).loss, v.grad_loss);
    v.logits[i] = orig;
    fd[i] = (f_up - f_down) / (static_cast<double>(up) - static_cast<double>(down));
  }
  ShardedLoss sl = sharded_loss(*be, v, DType::kF32);
  Tensor grad_loss = from_host(*be, Shape({T}), DType::kF32, v.grad_loss);
  Tensor targets = from_host(*be, Shape({T}), DType::kI32, v.targets);
  Tensor gmax = from_host(*be, Shape({T}), DType::kF32, sl.global_max);
  Tensor sum_exp = from_host(*be, Shape({T}), DType::kF32, sl.sum_exp);
  Vec grad(T * W);
  for (int64_t s = 0; s < v.kShards; ++s) {
    Tensor g = poisoned(*be, Shape({T, v.kShard}), DType::kF32);
    be->vocab_cross_entropy_backward(g, sl.shard_logits[s], gmax, sum_exp, targets, grad_loss,
                                     s * v.kShard, v.kVocab);
    const Vec gh = to_host(*be, g);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t j = 0; j < v.kShard; ++j) grad[t * W + s * v.kShard + j] = gh[t * v.kShard + j];
    }
  }
  EXPECT_LE(max_rel_error(grad, fd), kFdTolerance);
}

// ---- SwiGLU ---------------------------------------------------------------------------------

TEST(TransformerSwiglu, BackwardIsTheDerivativeOfTheForward) {
  auto be = cpu();
  const Shape shape({9, 31});
  Tensor gate = random_tensor(*be, shape, DType::kF32, 141, 2.0);
  Tensor up = random_tensor(*be, shape, DType::kF32, 142);
  Tensor dy = random_tensor(*be, shape, DType::kF32, 143);
  Tensor out = poisoned(*be, shape, DType::kF32);
  const Vec d = to_host(*be, dy);
  auto objective = [&] {
    be->swiglu(out, gate, up);
    return dot(to_host(*be, out), d);
  };
  const Vec fd_gate = numeric_gradient(gate, objective), fd_up = numeric_gradient(up, objective);
  Tensor grad_gate = poisoned(*be, shape, DType::kF32), grad_up = poisoned(*be, shape, DType::kF32);
  be->swiglu_backward(grad_gate, grad_up, dy, gate, up);
  EXPECT_LE(max_rel_error(to_host(*be, grad_gate), fd_gate), kFdTolerance);
  EXPECT_LE(max_rel_error(to_host(*be, grad_up), fd_up), kFdTolerance);
}

// ---- dropout --------------------------------------------------------------------------------

TEST(TransformerDropout, SameSeedAndOffsetSameMaskAndTheGradientDropoutIsTheBackward) {
  auto be = cpu();
  const Shape shape({33, 65});
  const float p = 0.25f;
  Tensor in = random_tensor(*be, shape, DType::kF32, 161);
  Tensor grad = random_tensor(*be, shape, DType::kF32, 162);
  Tensor a = poisoned(*be, shape, DType::kF32), b = poisoned(*be, shape, DType::kF32);
  be->dropout(a, in, p, 7, 1000);
  be->dropout(b, in, p, 7, 1000);
  EXPECT_EQ(to_host(*be, a), to_host(*be, b));
  be->dropout(b, in, p, 7, 1001);  // another offset: another mask
  EXPECT_NE(to_host(*be, a), to_host(*be, b));
  be->dropout(b, in, p, 8, 1000);  // another seed: another mask
  EXPECT_NE(to_host(*be, a), to_host(*be, b));

  // Dropout is diagonal and linear: its Jacobian is diag(out / in); the backward applies it to
  // the gradient, which is dropout of the gradient with the same seed and offset (in place here).
  const Vec x = to_host(*be, in), y = to_host(*be, a), g = to_host(*be, grad);
  be->dropout(grad, grad, p, 7, 1000);
  Vec expected(x.size());
  for (size_t i = 0; i < x.size(); ++i) expected[i] = g[i] * (y[i] / x[i]);
  EXPECT_LE(max_rel_error(to_host(*be, grad), expected), 1e-6);

  // A window at offset k is the tail of the whole tensor's dropout at offset 0 (the rows of a
  // sequence-parallel shard, say).
  Tensor whole = poisoned(*be, shape, DType::kF32);
  be->dropout(whole, in, p, 7, 0);
  Tensor tail = poisoned(*be, Shape({13, 65}), DType::kF32);
  be->dropout(tail, in.view().rows(20, 13), p, 7, 20 * 65);
  EXPECT_EQ(to_host(*be, tail), to_host(*be, whole.view().rows(20, 13)));

  be->dropout(b, in, 0.0f, 7, 0);  // p = 0: the identity
  EXPECT_EQ(to_host(*be, b), x);
}

// ---- argument checks ------------------------------------------------------------------------

TEST(TransformerErrors, BadArgumentsThrowNamingTheValues) {
  auto be = cpu();
  const DType f32 = DType::kF32;
  Tensor x(*be, Shape({4, 8}), f32), y(*be, Shape({4, 8}), f32), z(*be, Shape({4, 6}), f32);
  Tensor row4(*be, Shape({4}), f32), col8(*be, Shape({8}), f32);
  Tensor row4_bf16(*be, Shape({4}), DType::kBF16);
  EXPECT_WEFT_ERROR(be->layer_norm(y, row4_bf16, row4, x, col8, col8, 1e-5f), "layer_norm", "mean",
                    "bf16[4]", "f32");
  EXPECT_WEFT_ERROR(be->layer_norm(z, row4, row4, x, col8, col8, 1e-5f), "layer_norm", "[4, 6]",
                    "[4, 8]");
  EXPECT_WEFT_ERROR(be->rms_norm(y, row4, x, row4, 1e-5f), "rms_norm", "gamma", "8 elements");
  EXPECT_WEFT_ERROR(be->rms_norm_backward(y, col8, z, x, col8, row4), "rms_norm_backward",
                    "grad_out");
  EXPECT_WEFT_ERROR(be->sum_squares(row4, x), "sum_squares", "1 elements");
  EXPECT_WEFT_ERROR(be->scale(z, x, 2.0f), "scale", "[4, 6]");
  EXPECT_WEFT_ERROR(be->swiglu(y, x, z), "swiglu", "up");
  EXPECT_WEFT_ERROR(be->dropout(y, x, 1.0f, 1, 0), "dropout", "probability 1");
  EXPECT_WEFT_ERROR(be->dropout(y, x, -0.1f, 1, 0), "probability -0.1");

  AttentionShape s = attention_shape(2, 2, 6, 4, 4);
  Tensor qkv(*be, Shape({4, 48}), f32), out(*be, Shape({4, 24}), f32);
  Tensor lse(*be, Shape({2, 6, 2}), f32);
  EXPECT_WEFT_ERROR(be->attention(out, lse, qkv, s), "heads 6", "kv_heads 4");
  EXPECT_WEFT_ERROR(be->rope(qkv, s, 1e4f, 0, false), "rope", "heads 6", "kv_heads 4");
  s = attention_shape(2, 2, 4, 2, 4);  // qkv_cols = 2 * 4 * 4 = 32
  Tensor qkv32(*be, Shape({4, 32}), f32), out16(*be, Shape({4, 16}), f32);
  Tensor lse16(*be, Shape({2, 4, 2}), f32);
  EXPECT_WEFT_ERROR(be->attention(out16, lse16, qkv, s), "attention", "qkv", "[4, 32]");
  EXPECT_WEFT_ERROR(be->attention(out16, row4, qkv32, s), "lse", "16 elements");
  EXPECT_WEFT_ERROR(be->attention_backward(qkv, out16, qkv32, lse16, s), "attention_backward",
                    "grad_qkv", "[4, 32]");
  Tensor grad32(*be, Shape({4, 32}), f32);
  EXPECT_WEFT_ERROR(be->attention_backward(grad32, out16, qkv32, row4, s), "attention_backward",
                    "lse", "16 elements");
  Tensor cache(*be, Shape({2, 2, 3, 4}), f32);
  EXPECT_WEFT_ERROR(be->attention_with_cache(out16, cache, cache, qkv32, s, 2),
                    "attention_with_cache", "[2, 4)", "capacity 3");
  Tensor bad_cache(*be, Shape({2, 4, 3, 4}), f32);
  EXPECT_WEFT_ERROR(be->attention_with_cache(out16, bad_cache, bad_cache, qkv32, s, 0), "k_cache",
                    "kv_heads 2");
  Tensor qkv24(*be, Shape({4, 24}), f32);
  EXPECT_WEFT_ERROR(be->rope(qkv24, attention_shape(2, 2, 4, 2, 3), 1e4f, 0, false), "head_dim 3",
                    "even");
  EXPECT_WEFT_ERROR(be->rope(qkv32, s, -1.0f, 0, false), "theta -1");

  Tensor ids_f32(*be, Shape({4}), f32), table(*be, Shape({10, 8}), f32);
  Tensor ids = from_host(*be, Shape({4}), DType::kI32, {1, 2, 3, 4});
  EXPECT_WEFT_ERROR(be->embedding(y, ids_f32, table, 0), "embedding", "ids", "i32");
  EXPECT_WEFT_ERROR(be->embedding(z, ids, table, 0), "embedding", "out", "[4, 8]");
  EXPECT_WEFT_ERROR(be->embedding_backward(table, ids, z, 0), "embedding_backward", "grad_out");
  EXPECT_WEFT_ERROR(be->vocab_max(row4_bf16, x, 0, 8), "vocab_max", "row_max", "f32");
  EXPECT_WEFT_ERROR(be->vocab_max(row4, x, 0, 0), "vocab_size 0");
  EXPECT_WEFT_ERROR(be->vocab_sum_exp_and_target(row4, row4, x, row4, row4, 0, 8),
                    "vocab_sum_exp_and_target", "targets", "i32");
  EXPECT_WEFT_ERROR(be->vocab_cross_entropy_backward(z, x, row4, row4, ids, row4, 0, 8),
                    "vocab_cross_entropy_backward", "grad_logits");

  AdamWStep step;
  step.step = 0;
  EXPECT_WEFT_ERROR(be->adamw(x, y, y, y, step), "adamw", "step 0");
  step.step = 1;
  Tensor xb(*be, Shape({4, 8}), DType::kBF16);
  EXPECT_WEFT_ERROR(be->adamw(x, xb, y, y, step), "adamw", "m", "bf16");
  EXPECT_WEFT_ERROR(be->adamw(x, y, y, z, step), "adamw", "grad", "32 elements");
}

}  // namespace
}  // namespace weft
