// Unit tests of CpuBackend's transformer ops: each against a naive double-precision reference
// written here, each backward against central differences of its forward, plus the properties
// (KV cache equals full attention, rope's inverse is its transpose, dropout masks, padded vocab).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "unit/unit_util.hpp"
#include "weft/weft.hpp"

namespace weft {
namespace {

using testing::from_host;
using testing::max_rel_error;
using testing::poisoned;
using testing::random_tensor;
using testing::to_host;
using testing::tolerance;

using Vec = std::vector<double>;

const DType kDtypes[] = {DType::kF32, DType::kBF16, DType::kF16};
// Central differences of an f32 forward: h = 1e-2 keeps rounding noise near 1e-4 of the slope.
constexpr double kStep = 1e-2;
constexpr double kFdTolerance = 2e-3;

std::unique_ptr<Backend> cpu() { return make_cpu_backend(); }

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

// ---- scale, sum_squares -------------------------------------------------------------------------

TEST(TransformerScale, ScalesOutOfPlaceAndInPlace) {
  auto be = cpu();
  for (DType dt : kDtypes) {
    SCOPED_TRACE(dtype_name(dt));
    Tensor in = random_tensor(*be, Shape({7, 13}), dt, 11);
    Tensor out = poisoned(*be, Shape({7, 13}), dt);
    const Vec x = to_host(*be, in);
    be->scale(out, in, -0.375f);
    Vec expected(x.size());
    for (size_t i = 0; i < x.size(); ++i) expected[i] = -0.375 * x[i];
    EXPECT_LE(max_rel_error(to_host(*be, out), expected), tolerance(dt));
    be->scale(in, in, -0.375f);
    EXPECT_LE(max_rel_error(to_host(*be, in), expected), tolerance(dt));
  }
}

TEST(TransformerScale, SumSquaresOverManyChunks) {
  auto be = cpu();
  for (DType dt : kDtypes) {
    SCOPED_TRACE(dtype_name(dt));
    Tensor in = random_tensor(*be, Shape({301, 177}), dt, 12);
    Tensor out = poisoned(*be, Shape({1}), DType::kF32);
    be->sum_squares(out, in);
    const Vec x = to_host(*be, in);
    EXPECT_LE(max_rel_error(to_host(*be, out), {dot(x, x)}), 1e-5);
  }
}

// ---- layer norm, RMS norm ------------------------------------------------------------------

struct NormRef {
  Vec out, mean, rstd, grad_in, grad_gamma, grad_beta;
};

// rms = true: RMSNorm (no mean, no beta).
NormRef reference_norm(const Vec& x, const Vec& gamma, const Vec& beta, const Vec& dy, int64_t rows,
                       int64_t cols, double eps, bool rms) {
  NormRef r;
  r.out.resize(x.size());
  r.grad_in.resize(x.size());
  r.grad_gamma.assign(cols, 0.0);
  r.grad_beta.assign(cols, 0.0);
  for (int64_t i = 0; i < rows; ++i) {
    const double* xr = &x[i * cols];
    double mu = 0.0;
    if (!rms) {
      for (int64_t c = 0; c < cols; ++c) mu += xr[c];
      mu /= cols;
    }
    double var = 0.0;
    for (int64_t c = 0; c < cols; ++c) var += (xr[c] - mu) * (xr[c] - mu);
    var /= cols;
    const double rs = 1.0 / std::sqrt(var + eps);
    r.mean.push_back(mu);
    r.rstd.push_back(rs);
    double mean_dxhat = 0.0, mean_dxhat_xhat = 0.0;
    for (int64_t c = 0; c < cols; ++c) {
      const double xhat = (xr[c] - mu) * rs;
      r.out[i * cols + c] = xhat * gamma[c] + (rms ? 0.0 : beta[c]);
      const double dxhat = dy[i * cols + c] * gamma[c];
      mean_dxhat += dxhat / cols;
      mean_dxhat_xhat += dxhat * xhat / cols;
      r.grad_gamma[c] += dy[i * cols + c] * xhat;
      r.grad_beta[c] += dy[i * cols + c];
    }
    for (int64_t c = 0; c < cols; ++c) {
      const double xhat = (xr[c] - mu) * rs;
      const double dxhat = dy[i * cols + c] * gamma[c];
      r.grad_in[i * cols + c] = rs * (dxhat - (rms ? 0.0 : mean_dxhat) - xhat * mean_dxhat_xhat);
    }
  }
  return r;
}

TEST(TransformerNorm, LayerNormForwardAndBackwardMatchReference) {
  auto be = cpu();
  const int64_t rows = 37, cols = 150;  // more than two column blocks of the gamma reduction
  for (DType dt : kDtypes) {
    SCOPED_TRACE(dtype_name(dt));
    Tensor in = random_tensor(*be, Shape({rows, cols}), dt, 21, 2.0);
    Tensor shift = random_tensor(*be, Shape({cols}), dt, 22, 0.5);  // rows with nonzero means
    be->add_bias(in, in, shift);
    Tensor gamma = random_tensor(*be, Shape({cols}), dt, 23);
    Tensor beta = random_tensor(*be, Shape({cols}), dt, 24);
    Tensor dy = random_tensor(*be, Shape({rows, cols}), dt, 25);
    Tensor out = poisoned(*be, Shape({rows, cols}), dt);
    Tensor mean = poisoned(*be, Shape({rows}), DType::kF32);
    Tensor rstd = poisoned(*be, Shape({rows}), DType::kF32);
    const float eps = 1e-5f;
    be->layer_norm(out, mean, rstd, in, gamma, beta, eps);
    const NormRef ref = reference_norm(to_host(*be, in), to_host(*be, gamma), to_host(*be, beta),
                                       to_host(*be, dy), rows, cols, eps, false);
    EXPECT_LE(max_rel_error(to_host(*be, out), ref.out), tolerance(dt));
    EXPECT_LE(max_rel_error(to_host(*be, mean), ref.mean), 1e-5);
    EXPECT_LE(max_rel_error(to_host(*be, rstd), ref.rstd), 1e-5);

    Tensor grad_in = poisoned(*be, Shape({rows, cols}), dt);
    Tensor grad_gamma = poisoned(*be, Shape({cols}), dt);
    Tensor grad_beta = poisoned(*be, Shape({cols}), dt);
    be->layer_norm_backward(grad_in, grad_gamma, grad_beta, dy, in, gamma, mean, rstd);
    EXPECT_LE(max_rel_error(to_host(*be, grad_in), ref.grad_in), tolerance(dt));
    EXPECT_LE(max_rel_error(to_host(*be, grad_gamma), ref.grad_gamma), tolerance(dt));
    EXPECT_LE(max_rel_error(to_host(*be, grad_beta), ref.grad_beta), tolerance(dt));
  }
}

TEST(TransformerNorm, RmsNormForwardAndBackwardMatchReference) {
  auto be = cpu();
  const int64_t rows = 29, cols = 133;
  for (DType dt : kDtypes) {
    SCOPED_TRACE(dtype_name(dt));
    Tensor in = random_tensor(*be, Shape({rows, cols}), dt, 31, 1.5);
    Tensor gamma = random_tensor(*be, Shape({cols}), dt, 32);
    Tensor dy = random_tensor(*be, Shape({rows, cols}), dt, 33);
    Tensor out = poisoned(*be, Shape({rows, cols}), dt);
    Tensor rstd = poisoned(*be, Shape({rows}), DType::kF32);
    const float eps = 1e-6f;
    be->rms_norm(out, rstd, in, gamma, eps);
    const Vec none(cols, 0.0);
    const NormRef ref = reference_norm(to_host(*be, in), to_host(*be, gamma), none,
                                       to_host(*be, dy), rows, cols, eps, true);
    EXPECT_LE(max_rel_error(to_host(*be, out), ref.out), tolerance(dt));
    EXPECT_LE(max_rel_error(to_host(*be, rstd), ref.rstd), 1e-5);

    Tensor grad_in = poisoned(*be, Shape({rows, cols}), dt);
    Tensor grad_gamma = poisoned(*be, Shape({cols}), dt);
    be->rms_norm_backward(grad_in, grad_gamma, dy, in, gamma, rstd);
    EXPECT_LE(max_rel_error(to_host(*be, grad_in), ref.grad_in), tolerance(dt));
    EXPECT_LE(max_rel_error(to_host(*be, grad_gamma), ref.grad_gamma), tolerance(dt));
  }
}

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

TEST(TransformerNorm, ParameterGradientsAreBitIdenticalAcrossRuns) {
  auto be = cpu();
  const int64_t rows = 300, cols = 200;
  Tensor in = random_tensor(*be, Shape({rows, cols}), DType::kF32, 51);
  Tensor gamma = random_tensor(*be, Shape({cols}), DType::kF32, 52);
  Tensor beta = random_tensor(*be, Shape({cols}), DType::kF32, 53);
  Tensor dy = random_tensor(*be, Shape({rows, cols}), DType::kF32, 54);
  Tensor out(*be, Shape({rows, cols}), DType::kF32), gin(*be, Shape({rows, cols}), DType::kF32);
  Tensor mean(*be, Shape({rows}), DType::kF32), rstd(*be, Shape({rows}), DType::kF32);
  Tensor gg(*be, Shape({cols}), DType::kF32), gb(*be, Shape({cols}), DType::kF32);
  be->layer_norm(out, mean, rstd, in, gamma, beta, 1e-5f);
  be->layer_norm_backward(gin, gg, gb, dy, in, gamma, mean, rstd);
  const Vec first = to_host(*be, gg);
  for (int run = 0; run < 3; ++run) {
    be->fill(gg, NAN);
    be->layer_norm_backward(gin, gg, gb, dy, in, gamma, mean, rstd);
    EXPECT_EQ(to_host(*be, gg), first);
  }
}

// ---- attention ------------------------------------------------------------------------------

// Megatron's grouped layout, written out independently of the backend's helpers.
struct Layout {
  int64_t heads, kv_heads, d;
  int64_t group_width() const { return (heads / kv_heads + 2) * d; }
  int64_t cols() const { return kv_heads * group_width(); }
  int64_t q(int64_t h) const {
    const int64_t qpg = heads / kv_heads;
    return (h / qpg) * group_width() + (h % qpg) * d;
  }
  int64_t k(int64_t h) const {  // the key head that query head h reads
    return (h / (heads / kv_heads)) * group_width() + (heads / kv_heads) * d;
  }
  int64_t v(int64_t h) const { return k(h) + d; }
};

struct AttnRef {
  Vec out, lse, grad_qkv;
};

// The straightforward attention in double: each query row's softmax over its keys in full.
AttnRef reference_attention(const Vec& qkv, const Vec& dout, const AttentionShape& s) {
  const Layout L{s.heads, s.kv_heads, s.head_dim};
  const int64_t S = s.seq, B = s.batch, H = s.heads, D = s.head_dim, C = L.cols();
  const double scale = s.scale != 0.0f ? s.scale : 1.0 / std::sqrt(static_cast<double>(D));
  AttnRef r;
  r.out.assign(S * B * H * D, 0.0);
  r.lse.assign(B * H * S, 0.0);
  r.grad_qkv.assign(S * B * C, 0.0);
  auto x = [&](int64_t pos, int64_t b, int64_t col) { return &qkv[(pos * B + b) * C + col]; };
  auto dot_d = [&](const double* a, const double* b) {
    double sc = 0.0;
    for (int64_t c = 0; c < D; ++c) sc += a[c] * b[c];
    return sc;
  };
  Vec p(S), dp(S);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < S; ++i) {
        const double* qi = x(i, b, L.q(h));
        double mx = -1e300;
        for (int64_t j = 0; j <= i; ++j) {
          p[j] = scale * dot_d(qi, x(j, b, L.k(h)));
          mx = std::max(mx, p[j]);
        }
        double sum = 0.0;
        for (int64_t j = 0; j <= i; ++j) sum += (p[j] = std::exp(p[j] - mx));
        r.lse[(b * H + h) * S + i] = mx + std::log(sum);
        double* o = &r.out[(i * B + b) * H * D + h * D];
        for (int64_t j = 0; j <= i; ++j) {
          p[j] /= sum;
          const double* vj = x(j, b, L.v(h));
          for (int64_t c = 0; c < D; ++c) o[c] += p[j] * vj[c];
        }
        if (dout.empty()) continue;
        // dP_j = dout_i . v_j; dS_j = P_j (dP_j - sum_k P_k dP_k).
        const double* go = &dout[(i * B + b) * H * D + h * D];
        double pdp = 0.0;
        for (int64_t j = 0; j <= i; ++j) {
          dp[j] = dot_d(go, x(j, b, L.v(h)));
          pdp += p[j] * dp[j];
        }
        double* gq = &r.grad_qkv[(i * B + b) * C + L.q(h)];
        for (int64_t j = 0; j <= i; ++j) {
          const double ds = p[j] * (dp[j] - pdp) * scale;
          const double* kj = x(j, b, L.k(h));
          double* gk = &r.grad_qkv[(j * B + b) * C + L.k(h)];
          double* gv = &r.grad_qkv[(j * B + b) * C + L.v(h)];
          for (int64_t c = 0; c < D; ++c) {
            gq[c] += ds * kj[c];
            gk[c] += ds * qi[c];
            gv[c] += p[j] * go[c];
          }
        }
      }
    }
  }
  return r;
}

AttentionShape attn_shape(int64_t seq, int64_t batch, int64_t heads, int64_t kv_heads, int64_t d,
                          float scale = 0.0f) {
  AttentionShape s;
  s.seq = seq;
  s.batch = batch;
  s.heads = heads;
  s.kv_heads = kv_heads;
  s.head_dim = d;
  s.scale = scale;
  return s;
}

const AttentionShape kAttentionCases[] = {
    attn_shape(9, 3, 4, 2, 8),         // grouped-query
    attn_shape(7, 2, 3, 3, 16, 0.3f),  // multi-head, explicit scale
    attn_shape(6, 2, 4, 1, 8),         // multi-query
    attn_shape(1, 4, 2, 2, 4),         // one position
    attn_shape(300, 2, 4, 2, 16),      // several tiles, partial last tiles (odd length)
};

// The tiled kernels against the reference at lengths of many tiles (and partial tiles).
const AttentionShape kLongAttentionCases[] = {
    attn_shape(1027, 1, 2, 1, 16),  // odd length, multi-query
    attn_shape(4096, 1, 1, 1, 8),   // 32 x 32 key and query tiles
};

void expect_attention_matches_reference(Backend& be, const AttentionShape& s, DType dt) {
  SCOPED_TRACE(::testing::Message() << dtype_name(dt) << " seq " << s.seq << " batch " << s.batch
                                    << " heads " << s.heads << "/" << s.kv_heads << " d "
                                    << s.head_dim);
  const int64_t tokens = s.seq * s.batch;
  Tensor qkv = random_tensor(be, Shape({tokens, s.qkv_cols()}), dt, 61);
  Tensor dout = random_tensor(be, Shape({tokens, s.heads * s.head_dim}), dt, 62);
  Tensor out = poisoned(be, Shape({tokens, s.heads * s.head_dim}), dt);
  Tensor lse = poisoned(be, Shape({s.batch, s.heads, s.seq}), DType::kF32);
  be.attention(out, lse, qkv, s);
  const AttnRef ref = reference_attention(to_host(be, qkv), to_host(be, dout), s);
  EXPECT_LE(max_rel_error(to_host(be, out), ref.out), tolerance(dt));
  EXPECT_LE(max_rel_error(to_host(be, lse), ref.lse), tolerance(dt));

  Tensor grad_qkv = poisoned(be, Shape({tokens, s.qkv_cols()}), dt);
  be.attention_backward(grad_qkv, dout, qkv, lse, s);
  EXPECT_LE(max_rel_error(to_host(be, grad_qkv), ref.grad_qkv), tolerance(dt));
}

TEST(TransformerAttention, ForwardAndBackwardMatchReference) {
  auto be = cpu();
  for (const AttentionShape& s : kAttentionCases) {
    for (DType dt : kDtypes) expect_attention_matches_reference(*be, s, dt);
  }
}

TEST(TransformerAttention, LongSequencesMatchReference) {
  auto be = cpu();
  for (const AttentionShape& s : kLongAttentionCases) {
    for (DType dt : {DType::kF32, DType::kBF16}) expect_attention_matches_reference(*be, s, dt);
  }
}

// Every sum runs in an order fixed by the shapes: one thread and two give the same bits.
TEST(TransformerAttention, ResultsDoNotDependOnTheThreadCount) {
  auto be = cpu();
  const AttentionShape s = attn_shape(300, 2, 4, 2, 16);
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
  for (const AttentionShape& s : {attn_shape(5, 2, 4, 2, 4), attn_shape(4, 2, 3, 3, 4, 0.7f)}) {
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

TEST(TransformerAttention, CachedPrefillThenSingleStepsEqualFullAttention) {
  auto be = cpu();
  for (const AttentionShape& full : {attn_shape(7, 2, 4, 2, 8), attn_shape(6, 3, 2, 2, 4)}) {
    for (DType dt : {DType::kF32, DType::kBF16}) {
      SCOPED_TRACE(::testing::Message()
                   << dtype_name(dt) << " heads " << full.heads << "/" << full.kv_heads);
      const int64_t S = full.seq, B = full.batch, out_cols = full.heads * full.head_dim;
      const int64_t capacity = S + 2;
      Tensor qkv = random_tensor(*be, Shape({S * B, full.qkv_cols()}), dt, 81);
      Tensor expected = poisoned(*be, Shape({S * B, out_cols}), dt);
      Tensor lse = poisoned(*be, Shape({B, full.heads, S}), DType::kF32);
      be->attention(expected, lse, qkv, full);

      const Shape cache_shape({B, full.kv_heads, capacity, full.head_dim});
      Tensor k_cache = poisoned(*be, cache_shape, dt), v_cache = poisoned(*be, cache_shape, dt);
      Tensor out = poisoned(*be, Shape({S * B, out_cols}), dt);
      // Rows of positions [p, p + n) are contiguous: row = position * batch + b.
      const int64_t prefill = 3;
      int64_t past = 0;
      while (past < S) {
        const int64_t n = past == 0 ? prefill : 1;
        AttentionShape step = full;
        step.seq = n;
        be->attention_with_cache(out.view().rows(past * B, n * B), k_cache, v_cache,
                                 qkv.view().rows(past * B, n * B), step, past);
        past += n;
      }
      EXPECT_LE(max_rel_error(to_host(*be, out), to_host(*be, expected)),
                dt == DType::kF32 ? 1e-6 : 1e-2);

      // The caches hold exactly the keys and values of qkv at the fed positions.
      const Layout L{full.heads, full.kv_heads, full.head_dim};
      const Vec x = to_host(*be, qkv), kc = to_host(*be, k_cache), vc = to_host(*be, v_cache);
      const int64_t qpg = full.heads / full.kv_heads;
      double worst = 0.0;
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t g = 0; g < full.kv_heads; ++g) {
          for (int64_t p = 0; p < S; ++p) {
            for (int64_t c = 0; c < full.head_dim; ++c) {
              const int64_t at = ((b * full.kv_heads + g) * capacity + p) * full.head_dim + c;
              const int64_t row = (p * B + b) * L.cols();
              worst = std::max(worst, std::abs(kc[at] - x[row + L.k(g * qpg) + c]));
              worst = std::max(worst, std::abs(vc[at] - x[row + L.v(g * qpg) + c]));
            }
          }
        }
      }
      EXPECT_EQ(worst, 0.0);
    }
  }
}

// ---- rotary embedding -----------------------------------------------------------------------

Vec reference_rope(Vec x, const AttentionShape& s, double theta, int64_t offset) {
  const Layout L{s.heads, s.kv_heads, s.head_dim};
  const int64_t half = s.head_dim / 2;
  for (int64_t pos = 0; pos < s.seq; ++pos) {
    for (int64_t b = 0; b < s.batch; ++b) {
      double* row = &x[(pos * s.batch + b) * L.cols()];
      std::vector<int64_t> cols;
      for (int64_t h = 0; h < s.heads; ++h) cols.push_back(L.q(h));
      for (int64_t g = 0; g < s.kv_heads; ++g) cols.push_back(L.k(g * (s.heads / s.kv_heads)));
      for (int64_t col : cols) {
        for (int64_t i = 0; i < half; ++i) {
          const double a = (offset + pos) * std::pow(theta, -2.0 * i / s.head_dim);
          const double x1 = row[col + i], x2 = row[col + i + half];
          row[col + i] = x1 * std::cos(a) - x2 * std::sin(a);
          row[col + i + half] = x2 * std::cos(a) + x1 * std::sin(a);
        }
      }
    }
  }
  return x;
}

TEST(TransformerRope, RotatesQueriesAndKeysOnlyLikeTheReference) {
  auto be = cpu();
  for (const AttentionShape& s : {attn_shape(6, 2, 4, 2, 8), attn_shape(5, 3, 2, 2, 6)}) {
    for (DType dt : kDtypes) {
      SCOPED_TRACE(::testing::Message() << dtype_name(dt) << " heads " << s.heads);
      Tensor qkv = random_tensor(*be, Shape({s.seq * s.batch, s.qkv_cols()}), dt, 91);
      const Vec x = to_host(*be, qkv);
      be->rope(qkv, s, 10000.0f, 13, false);
      const Vec expected = reference_rope(x, s, 10000.0, 13);
      const Vec got = to_host(*be, qkv);
      EXPECT_LE(max_rel_error(got, expected), tolerance(dt));
      // Values are untouched, bit for bit.
      const Layout L{s.heads, s.kv_heads, s.head_dim};
      for (int64_t r = 0; r < s.seq * s.batch; ++r) {
        for (int64_t g = 0; g < s.kv_heads; ++g) {
          for (int64_t c = 0; c < s.head_dim; ++c) {
            const int64_t at = r * L.cols() + L.v(g * (s.heads / s.kv_heads)) + c;
            ASSERT_EQ(got[at], x[at]);
          }
        }
      }
    }
  }
}

TEST(TransformerRope, InverseRestoresTheInputAndIsTheTranspose) {
  auto be = cpu();
  const AttentionShape s = attn_shape(8, 2, 4, 2, 16);
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

// ---- embedding ------------------------------------------------------------------------------

TEST(TransformerEmbedding, LooksUpRowsInRangeAndZerosTheRest) {
  auto be = cpu();
  const int64_t rows = 10, hidden = 24, vocab_start = 20;
  const Vec ids = {20, 29, 5, 25, 30, 20, 19, 27, -3, 24};  // out of range: 5, 30, 19, -3
  for (DType dt : kDtypes) {
    SCOPED_TRACE(dtype_name(dt));
    Tensor table = random_tensor(*be, Shape({rows, hidden}), dt, 111);
    Tensor id = from_host(*be, Shape({static_cast<int64_t>(ids.size())}), DType::kI32, ids);
    Tensor out = poisoned(*be, Shape({static_cast<int64_t>(ids.size()), hidden}), dt);
    be->embedding(out, id, table, vocab_start);
    const Vec t = to_host(*be, table);
    Vec expected(ids.size() * hidden, 0.0);
    for (size_t i = 0; i < ids.size(); ++i) {
      const int64_t local = static_cast<int64_t>(ids[i]) - vocab_start;
      if (local < 0 || local >= rows) continue;
      for (int64_t c = 0; c < hidden; ++c) expected[i * hidden + c] = t[local * hidden + c];
    }
    EXPECT_EQ(to_host(*be, out), expected);
  }
}

TEST(TransformerEmbedding, BackwardAccumulatesRepeatedIds) {
  auto be = cpu();
  const int64_t rows = 8, hidden = 70, vocab_start = 100;
  const Vec ids = {103, 100, 103, 99, 107, 103, 108, 101, 100, 105, 103, 0};
  const int64_t tokens = static_cast<int64_t>(ids.size());
  for (DType dt : kDtypes) {
    SCOPED_TRACE(dtype_name(dt));
    Tensor grad_table = random_tensor(*be, Shape({rows, hidden}), dt, 121);
    Tensor grad_out = random_tensor(*be, Shape({tokens, hidden}), dt, 122);
    Tensor id = from_host(*be, Shape({tokens}), DType::kI32, ids);
    Vec expected = to_host(*be, grad_table);
    const Vec g = to_host(*be, grad_out);
    for (int64_t t = 0; t < tokens; ++t) {
      const int64_t local = static_cast<int64_t>(ids[t]) - vocab_start;
      if (local < 0 || local >= rows) continue;
      for (int64_t c = 0; c < hidden; ++c) expected[local * hidden + c] += g[t * hidden + c];
    }
    be->embedding_backward(grad_table, id, grad_out, vocab_start);
    EXPECT_LE(max_rel_error(to_host(*be, grad_table), expected), tolerance(dt));
    // Accumulates: a second call adds the same again.
    Vec twice = expected;
    for (int64_t t = 0; t < tokens; ++t) {
      const int64_t local = static_cast<int64_t>(ids[t]) - vocab_start;
      if (local < 0 || local >= rows) continue;
      for (int64_t c = 0; c < hidden; ++c) twice[local * hidden + c] += g[t * hidden + c];
    }
    be->embedding_backward(grad_table, id, grad_out, vocab_start);
    EXPECT_LE(max_rel_error(to_host(*be, grad_table), twice), tolerance(dt));
  }
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

// Plain cross-entropy over the real vocabulary, and its gradient times grad_loss.
void reference_cross_entropy(const VocabSetup& v, Vec& loss, Vec& grad) {
  const int64_t W = v.kShard * v.kShards;
  loss.assign(v.kTokens, 0.0);
  grad.assign(v.kTokens * W, 0.0);
  for (int64_t t = 0; t < v.kTokens; ++t) {
    double mx = -1e300, sum = 0.0;
    for (int64_t j = 0; j < v.kVocab; ++j) mx = std::max(mx, v.logits[t * W + j]);
    for (int64_t j = 0; j < v.kVocab; ++j) sum += std::exp(v.logits[t * W + j] - mx);
    const int64_t tgt = static_cast<int64_t>(v.targets[t]);
    loss[t] = std::log(sum) + mx - v.logits[t * W + tgt];
    for (int64_t j = 0; j < v.kVocab; ++j) {
      grad[t * W + j] =
          (std::exp(v.logits[t * W + j] - mx) / sum - (j == tgt ? 1.0 : 0.0)) * v.grad_loss[t];
    }
  }
}

// The per-shard pieces assembled as the vocab-parallel layer does (max, then sums, over shards).
struct ShardedLoss {
  Vec loss;                            // per token
  std::vector<Vec> row_max_per_shard;  // vocab_max of each shard
  Vec global_max, sum_exp;             // reduced over shards
  std::vector<Tensor> shard_logits;    // [tokens, 8] each, in `dtype`
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
    r.row_max_per_shard.push_back(to_host(be, row_max));
    for (int64_t t = 0; t < T; ++t) {
      r.global_max[t] = std::max(r.global_max[t], r.row_max_per_shard[s][t]);
    }
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

TEST(TransformerVocab, ShardedPiecesWithPaddingGiveThePlainCrossEntropy) {
  auto be = cpu();
  const VocabSetup v = vocab_setup(*be);
  Vec loss, grad;
  reference_cross_entropy(v, loss, grad);
  const int64_t W = v.kShard * v.kShards, T = v.kTokens;
  for (DType dt : kDtypes) {
    SCOPED_TRACE(dtype_name(dt));
    VocabSetup vr = v;
    vr.logits = testing::rounded(v.logits, dt);
    Vec loss_r, grad_r;
    reference_cross_entropy(vr, loss_r, grad_r);
    ShardedLoss sl = sharded_loss(*be, vr, dt);
    EXPECT_LE(max_rel_error(sl.loss, loss_r), dt == DType::kF32 ? 1e-5 : 1e-2);
    // The all-padding shard reports -inf as its maximum, and the max ignores the padding.
    for (int64_t t = 0; t < T; ++t) {
      EXPECT_EQ(sl.row_max_per_shard[2][t], -std::numeric_limits<double>::infinity());
      EXPECT_LT(sl.row_max_per_shard[1][t], 40.0);
    }

    Tensor grad_loss = from_host(*be, Shape({T}), DType::kF32, v.grad_loss);
    Tensor targets = from_host(*be, Shape({T}), DType::kI32, v.targets);
    Tensor gmax = from_host(*be, Shape({T}), DType::kF32, sl.global_max);
    Tensor sum_exp = from_host(*be, Shape({T}), DType::kF32, sl.sum_exp);
    for (int64_t s = 0; s < v.kShards; ++s) {
      Tensor g = poisoned(*be, Shape({T, v.kShard}), dt);
      be->vocab_cross_entropy_backward(g, sl.shard_logits[s], gmax, sum_exp, targets, grad_loss,
                                       s * v.kShard, v.kVocab);
      const Vec expected = testing::column_block(grad_r, T, W, s * v.kShard, v.kShard);
      if (s == 2) {
        EXPECT_EQ(to_host(*be, g), expected);  // all zeros
      } else {
        EXPECT_LE(max_rel_error(to_host(*be, g), expected), tolerance(dt));
      }
    }
  }
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

TEST(TransformerSwiglu, ForwardAndBackwardMatchReferenceAndDifferences) {
  auto be = cpu();
  const Shape shape({9, 31});
  for (DType dt : kDtypes) {
    SCOPED_TRACE(dtype_name(dt));
    Tensor gate = random_tensor(*be, shape, dt, 141, 2.0), up = random_tensor(*be, shape, dt, 142);
    Tensor dy = random_tensor(*be, shape, dt, 143);
    Tensor out = poisoned(*be, shape, dt);
    be->swiglu(out, gate, up);
    const Vec g = to_host(*be, gate), u = to_host(*be, up), d = to_host(*be, dy);
    Vec expected(g.size()), e_gate(g.size()), e_up(g.size());
    for (size_t i = 0; i < g.size(); ++i) {
      const double sg = 1.0 / (1.0 + std::exp(-g[i]));
      expected[i] = g[i] * sg * u[i];
      e_up[i] = d[i] * g[i] * sg;
      e_gate[i] = d[i] * u[i] * (sg + g[i] * sg * (1.0 - sg));
    }
    EXPECT_LE(max_rel_error(to_host(*be, out), expected), tolerance(dt));
    Tensor grad_gate = poisoned(*be, shape, dt), grad_up = poisoned(*be, shape, dt);
    be->swiglu_backward(grad_gate, grad_up, dy, gate, up);
    EXPECT_LE(max_rel_error(to_host(*be, grad_gate), e_gate), tolerance(dt));
    EXPECT_LE(max_rel_error(to_host(*be, grad_up), e_up), tolerance(dt));
    if (dt != DType::kF32) continue;
    auto objective = [&] {
      be->swiglu(out, gate, up);
      return dot(to_host(*be, out), d);
    };
    const Vec fd_gate = numeric_gradient(gate, objective), fd_up = numeric_gradient(up, objective);
    EXPECT_LE(max_rel_error(to_host(*be, grad_gate), fd_gate), kFdTolerance);
    EXPECT_LE(max_rel_error(to_host(*be, grad_up), fd_up), kFdTolerance);
  }
}

// ---- dropout --------------------------------------------------------------------------------

TEST(TransformerDropout, KeepsOneMinusPScaledAndFollowsThePhiloxRule) {
  auto be = cpu();
  const int64_t n = 1 << 16;
  const float p = 0.3f;
  const uint64_t seed = 0x5eed, offset = 12345;
  for (DType dt : kDtypes) {
    SCOPED_TRACE(dtype_name(dt));
    Tensor in = random_tensor(*be, Shape({256, n / 256}), dt, 151);
    Tensor out = poisoned(*be, Shape({256, n / 256}), dt);
    be->dropout(out, in, p, seed, offset);
    const Vec x = to_host(*be, in), y = to_host(*be, out);
    int64_t kept = 0;
    Vec expected(x.size());
    for (int64_t i = 0; i < n; ++i) {
      const bool keep = bits_to_open_unit(philox_draw(seed, offset + i).v[0]) >= p;
      kept += keep;
      expected[i] = keep ? x[i] / (1.0 - p) : 0.0;
    }
    EXPECT_LE(max_rel_error(y, expected), tolerance(dt));
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(y[i] == 0.0, expected[i] == 0.0) << i;
    const double sigma = std::sqrt(p * (1.0 - p) / n);
    EXPECT_NEAR(static_cast<double>(kept) / n, 1.0 - p, 5 * sigma);
  }
}

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

// ---- AdamW ----------------------------------------------------------------------------------

TEST(TransformerAdamW, ThreeStepsMatchTheFormula) {
  auto be = cpu();
  const Shape shape({17, 23});
  for (DType grad_dt : kDtypes) {
    SCOPED_TRACE(dtype_name(grad_dt));
    Tensor master = random_tensor(*be, shape, DType::kF32, 171);
    Tensor m = random_tensor(*be, shape, DType::kF32, 172, 0.1);
    Vec v_h = to_host(*be, random_tensor(*be, shape, DType::kF32, 173, 0.1));
    for (double& e : v_h) e *= e;  // second moments are non-negative
    Tensor v = from_host(*be, shape, DType::kF32, v_h);
    Vec w = to_host(*be, master), mm = to_host(*be, m), vv = v_h;
    AdamWStep step;
    step.lr = 3e-3f;
    step.beta1 = 0.8f;
    step.beta2 = 0.97f;
    step.eps = 1e-6f;
    step.weight_decay = 0.1f;
    step.grad_scale = 0.6f;
    for (int64_t k = 1; k <= 3; ++k) {
      step.step = k;
      Tensor grad = random_tensor(*be, shape, grad_dt, 180 + k);
      const Vec gh = to_host(*be, grad);
      be->adamw(master, m, v, grad, step);
      const double b1 = step.beta1, b2 = step.beta2;
      for (size_t i = 0; i < w.size(); ++i) {
        const double g = gh[i] * step.grad_scale;
        mm[i] = b1 * mm[i] + (1 - b1) * g;
        vv[i] = b2 * vv[i] + (1 - b2) * g * g;
        const double mhat = mm[i] / (1 - std::pow(b1, k)), vhat = vv[i] / (1 - std::pow(b2, k));
        w[i] -= step.lr * (mhat / (std::sqrt(vhat) + step.eps) + step.weight_decay * w[i]);
      }
    }
    EXPECT_LE(max_rel_error(to_host(*be, master), w), 1e-5);
    EXPECT_LE(max_rel_error(to_host(*be, m), mm), 1e-5);
    EXPECT_LE(max_rel_error(to_host(*be, v), vv), 1e-5);
  }
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

  AttentionShape s = attn_shape(2, 2, 6, 4, 4);
  Tensor qkv(*be, Shape({4, 48}), f32), out(*be, Shape({4, 24}), f32);
  Tensor lse(*be, Shape({2, 6, 2}), f32);
  EXPECT_WEFT_ERROR(be->attention(out, lse, qkv, s), "heads 6", "kv_heads 4");
  EXPECT_WEFT_ERROR(be->rope(qkv, s, 1e4f, 0, false), "rope", "heads 6", "kv_heads 4");
  s = attn_shape(2, 2, 4, 2, 4);  // qkv_cols = 2 * 4 * 4 = 32
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
  EXPECT_WEFT_ERROR(be->rope(qkv24, attn_shape(2, 2, 4, 2, 3), 1e4f, 0, false), "head_dim 3",
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
