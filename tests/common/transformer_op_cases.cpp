// The transformer-op and copy/cast case table and its test, run on each backend its binary
// instantiates it for. References are double loops over the inputs as stored (rounded to their
// dtype); ops whose result is one rounding of exactly known values (copies, casts, scale, dropout,
// the embedding's token-ordered float sums, maxima) are checked for equality, the rest norm-wise.
#include "common/transformer_op_cases.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <ostream>
#include <random>
#include <utility>

#include "common/test_util.hpp"
#include "weft/rng.hpp"

namespace weft::testing {

namespace {

using Vec = std::vector<double>;

const DType kAllDtypes[] = {DType::kF32, DType::kBF16, DType::kF16};

const char* op_name(TransformerOp op) {
  switch (op) {
    case TransformerOp::kScale:
      return "scale";
    case TransformerOp::kSumSquares:
      return "sum_squares";
    case TransformerOp::kLayerNorm:
      return "layer_norm";
    case TransformerOp::kRmsNorm:
      return "rms_norm";
    case TransformerOp::kAttention:
      return "attention";
    case TransformerOp::kAttentionCache:
      return "attention_with_cache";
    case TransformerOp::kRope:
      return "rope";
    case TransformerOp::kEmbedding:
      return "embedding";
    case TransformerOp::kEmbeddingBackward:
      return "embedding_backward";
    case TransformerOp::kVocabCrossEntropy:
      return "vocab_cross_entropy";
    case TransformerOp::kSwiglu:
      return "swiglu";
    case TransformerOp::kDropout:
      return "dropout";
    case TransformerOp::kAdamW:
      return "adamw";
    case TransformerOp::kCopy:
      return "copy";
    case TransformerOp::kCopyColumns:
      return "copy_columns";
    case TransformerOp::kConvert:
      return "convert";
    case TransformerOp::kFill:
      return "fill";
  }
  return "unknown";
}

bool on_cpu(const Backend& be) { return be.device().is_cpu(); }

double dot(const Vec& a, const Vec& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

Tensor uniform_tensor(Backend& be, const Shape& shape, DType dtype, uint64_t seed, double lo,
                      double hi) {
  Tensor t(be, shape, dtype);
  be.fill_random(t, RandomFill{Distribution::kUniform, seed, 0, lo, hi});
  return t;
}

// Each value rounded to `dtype` through f32, as a kernel's final store rounds.
double round_to(double v, DType dtype) { return rounded({v}, dtype)[0]; }

// ---- norms --------------------------------------------------------------------------------

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

// Forward (outputs, statistics) and backward against the reference; the backward run again gives
// the same bits. f32 tolerances: 1e-5 on the CPU; on CUDA 1e-4 for the LayerNorm output and
// rstd, 1e-5 for the RMSNorm output, 1e-4 for every gradient. 16-bit formats 1e-2.
void check_norm(Backend& be, const TransformerCase& c, uint64_t seed) {
  const bool rms = c.op == TransformerOp::kRmsNorm, cpu = on_cpu(be);
  const DType dt = c.dtype;
  const int64_t rows = c.shape.rows(), cols = c.shape.cols();
  const Shape row_shape({rows}), col_shape({cols});
  // LayerNorm inputs of mean 3.5, so that a one-pass variance would lose digits.
  Tensor in = rms ? random_tensor(be, c.shape, dt, seed, 1.5)
                  : uniform_tensor(be, c.shape, dt, seed, 2.0, 5.0);
  Tensor gamma = random_tensor(be, col_shape, dt, seed + 1);
  Tensor beta = random_tensor(be, col_shape, dt, seed + 2);
  Tensor dy = random_tensor(be, c.shape, dt, seed + 3);
  const float eps = rms ? 1e-6f : 1e-5f;
  const NormRef ref =
      reference_norm(to_host(be, in), to_host(be, gamma), rms ? Vec(cols, 0.0) : to_host(be, beta),
                     to_host(be, dy), rows, cols, eps, rms);
  const double tol = tolerance(dt);
  const double out_tol = cpu || dt != DType::kF32 ? tol : (rms ? 1e-5 : 1e-4);
  const double grad_tol = cpu || dt != DType::kF32 ? tol : 1e-4;

  Tensor out = poisoned(be, c.shape, dt);
  Tensor mean = poisoned(be, row_shape, DType::kF32), rstd = poisoned(be, row_shape, DType::kF32);
  if (rms) {
    be.rms_norm(out, rstd, in, gamma, eps);
  } else {
    be.layer_norm(out, mean, rstd, in, gamma, beta, eps);
    EXPECT_LE(max_rel_error(to_host(be, mean), ref.mean), 1e-5);
  }
  EXPECT_LE(max_rel_error(to_host(be, out), ref.out), out_tol);
  EXPECT_LE(max_rel_error(to_host(be, rstd), ref.rstd), cpu || rms ? 1e-5 : 1e-4);

  std::vector<Vec> first;
  for (int run = 0; run < 3; ++run) {
    Tensor grad_in = poisoned(be, c.shape, dt);
    Tensor grad_gamma = poisoned(be, col_shape, dt), grad_beta = poisoned(be, col_shape, dt);
    if (rms) {
      be.rms_norm_backward(grad_in, grad_gamma, dy, in, gamma, rstd);
    } else {
      be.layer_norm_backward(grad_in, grad_gamma, grad_beta, dy, in, gamma, mean, rstd);
    }
    std::vector<Vec> got = {to_host(be, grad_in), to_host(be, grad_gamma)};
    if (!rms) got.push_back(to_host(be, grad_beta));
    if (run == 0) {
      EXPECT_LE(max_rel_error(got[0], ref.grad_in), grad_tol);
      EXPECT_LE(max_rel_error(got[1], ref.grad_gamma), grad_tol);
      if (!rms) {
        EXPECT_LE(max_rel_error(got[2], ref.grad_beta), grad_tol);
      }
      first = got;
    } else {
      EXPECT_TRUE(got == first) << "run " << run << " differs from the first";
    }
  }
}

// ---- attention ----------------------------------------------------------------------------

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

// The straightforward causal attention in double: each query row's softmax over its keys in full.
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

// Forward and backward against the reference; the backward run again gives the same bits.
// f32: 1e-5 for the output and the log-sum-exp; the gradient 1e-5 on the CPU, 1e-4 on CUDA.
// 16-bit: 1e-2, but the f32 log-sum-exp at 1e-5 on CUDA.
void check_attention(Backend& be, const TransformerCase& c, uint64_t seed) {
  const AttentionShape& s = c.attn;
  const DType dt = c.dtype;
  const bool cpu = on_cpu(be);
  const int64_t tokens = s.seq * s.batch, out_cols = s.heads * s.head_dim;
  Tensor qkv = random_tensor(be, Shape({tokens, s.qkv_cols()}), dt, seed);
  Tensor dout = random_tensor(be, Shape({tokens, out_cols}), dt, seed + 1);
  Tensor out = poisoned(be, Shape({tokens, out_cols}), dt);
  Tensor lse = poisoned(be, Shape({s.batch, s.heads, s.seq}), DType::kF32);
  be.attention(out, lse, qkv, s);
  const AttnRef ref = reference_attention(to_host(be, qkv), to_host(be, dout), s);
  EXPECT_LE(max_rel_error(to_host(be, out), ref.out), tolerance(dt));
  EXPECT_LE(max_rel_error(to_host(be, lse), ref.lse), cpu ? tolerance(dt) : 1e-5);

  Vec first;
  for (int run = 0; run < 2; ++run) {
    Tensor grad_qkv = poisoned(be, Shape({tokens, s.qkv_cols()}), dt);
    be.attention_backward(grad_qkv, dout, qkv, lse, s);
    const Vec got = to_host(be, grad_qkv);
    if (run == 0) {
      EXPECT_LE(max_rel_error(got, ref.grad_qkv), cpu || dt != DType::kF32 ? tolerance(dt) : 1e-4);
      first = got;
    } else {
      EXPECT_TRUE(got == first) << "a second backward differs from the first";
    }
  }
}

// Prefill then steps through the cache give the rows of the backend's own full causal attention:
// within 1e-6 (f32) / 1e-2 (bf16) on the CPU, bit for bit on CUDA (the same kernel attends the
// same keys); the reference within the attention tolerance; the caches hold exactly the keys and
// values of the fed positions. c.offset: the cache's spare positions beyond seq.
void check_attention_cache(Backend& be, const TransformerCase& c, uint64_t seed) {
  const AttentionShape& full = c.attn;
  const DType dt = c.dtype;
  const int64_t S = full.seq, B = full.batch, out_cols = full.heads * full.head_dim;
  const int64_t capacity = S + c.offset;
  Tensor qkv = random_tensor(be, Shape({S * B, full.qkv_cols()}), dt, seed);
  Tensor expected = poisoned(be, Shape({S * B, out_cols}), dt);
  Tensor lse = poisoned(be, Shape({B, full.heads, S}), DType::kF32);
  be.attention(expected, lse, qkv, full);

  const Shape cache_shape({B, full.kv_heads, capacity, full.head_dim});
  Tensor k_cache = poisoned(be, cache_shape, dt), v_cache = poisoned(be, cache_shape, dt);
  Tensor out = poisoned(be, Shape({S * B, out_cols}), dt);
  // Rows of positions [p, p + n) are contiguous: row = position * batch + b.
  int64_t past = 0;
  for (int64_t n : c.feed) {
    AttentionShape step = full;
    step.seq = n;
    be.attention_with_cache(out.view().rows(past * B, n * B), k_cache, v_cache,
                            qkv.view().rows(past * B, n * B), step, past);
    past += n;
  }
  ASSERT_EQ(past, S) << "the case feeds every position once";
  const Vec got = to_host(be, out), own = to_host(be, expected);
  if (on_cpu(be)) {
    EXPECT_LE(max_rel_error(got, own), dt == DType::kF32 ? 1e-6 : 1e-2);
  } else {
    EXPECT_TRUE(got == own) << "the cached path differs from full attention";
  }
  const Vec x = to_host(be, qkv);
  EXPECT_LE(max_rel_error(got, reference_attention(x, {}, full).out), tolerance(dt));

  const Layout L{full.heads, full.kv_heads, full.head_dim};
  const Vec kc = to_host(be, k_cache), vc = to_host(be, v_cache);
  const int64_t qpg = full.heads / full.kv_heads;
  double worst = 0.0;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t g = 0; g < full.kv_heads; ++g) {
      for (int64_t p = 0; p < S; ++p) {
        for (int64_t d = 0; d < full.head_dim; ++d) {
          const int64_t at = ((b * full.kv_heads + g) * capacity + p) * full.head_dim + d;
          const int64_t row = (p * B + b) * L.cols();
          worst = std::max(worst, std::abs(kc[at] - x[row + L.k(g * qpg) + d]));
          worst = std::max(worst, std::abs(vc[at] - x[row + L.v(g * qpg) + d]));
        }
      }
    }
  }
  EXPECT_EQ(worst, 0.0);
}

// ---- rotary embedding ---------------------------------------------------------------------

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

// Queries and keys rotated as the reference does (1e-5 / 1e-2), values untouched bit for bit,
// the inverse restoring the input (1e-5 / 1e-2).
void check_rope(Backend& be, const TransformerCase& c, uint64_t seed) {
  const AttentionShape& s = c.attn;
  const DType dt = c.dtype;
  Tensor qkv = random_tensor(be, Shape({s.seq * s.batch, s.qkv_cols()}), dt, seed);
  const Vec x = to_host(be, qkv);
  be.rope(qkv, s, 10000.0f, c.offset, false);
  const Vec got = to_host(be, qkv);
  EXPECT_LE(max_rel_error(got, reference_rope(x, s, 10000.0, c.offset)), tolerance(dt));
  const Layout L{s.heads, s.kv_heads, s.head_dim};
  for (int64_t r = 0; r < s.seq * s.batch; ++r) {
    for (int64_t g = 0; g < s.kv_heads; ++g) {
      for (int64_t d = 0; d < s.head_dim; ++d) {
        const int64_t at = r * L.cols() + L.v(g * (s.heads / s.kv_heads)) + d;
        ASSERT_EQ(got[at], x[at]) << "value element " << at;
      }
    }
  }
  be.rope(qkv, s, 10000.0f, c.offset, true);
  EXPECT_LE(max_rel_error(to_host(be, qkv), x), tolerance(dt));
}

// ---- embedding ----------------------------------------------------------------------------

// Rows in [vocab_start, vocab_start + rows) looked up, every other id a zero row: exactly.
void check_embedding(Backend& be, const TransformerCase& c, uint64_t seed) {
  const int64_t rows = c.shape.rows(), hidden = c.shape.cols();
  const int64_t tokens = static_cast<int64_t>(c.ids.size());
  Tensor table = random_tensor(be, c.shape, c.dtype, seed);
  Tensor ids = ids_tensor(be, c.ids);
  Tensor out = poisoned(be, Shape({tokens, hidden}), c.dtype);
  be.embedding(out, ids, table, c.offset);
  const Vec t = to_host(be, table);
  Vec expected(static_cast<size_t>(tokens * hidden), 0.0);
  for (int64_t i = 0; i < tokens; ++i) {
    const int64_t local = c.ids[i] - c.offset;
    if (local < 0 || local >= rows) continue;
    for (int64_t d = 0; d < hidden; ++d) expected[i * hidden + d] = t[local * hidden + d];
  }
  EXPECT_EQ(to_host(be, out), expected);
}

// Accumulates each in-range token's gradient into its row, twice: equal to float sums in token
// order rounded once (the rule both backends follow, so they agree bit for bit), and within the
// dtype tolerance of the double sums.
void check_embedding_backward(Backend& be, const TransformerCase& c, uint64_t seed) {
  const int64_t rows = c.shape.rows(), hidden = c.shape.cols();
  const int64_t tokens = static_cast<int64_t>(c.ids.size());
  Tensor grad_table = random_tensor(be, c.shape, c.dtype, seed);
  Tensor grad_out = random_tensor(be, Shape({tokens, hidden}), c.dtype, seed + 1);
  Tensor ids = ids_tensor(be, c.ids);
  Vec exact = to_host(be, grad_table), wide = exact;
  const Vec g = to_host(be, grad_out);
  for (int call = 1; call <= 2; ++call) {
    std::vector<std::vector<float>> acc(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r)
      acc[r].assign(exact.begin() + r * hidden, exact.begin() + (r + 1) * hidden);
    for (int64_t t = 0; t < tokens; ++t) {
      const int64_t local = c.ids[t] - c.offset;
      if (local < 0 || local >= rows) continue;
      for (int64_t d = 0; d < hidden; ++d) {
        acc[local][d] += static_cast<float>(g[t * hidden + d]);
        wide[local * hidden + d] += g[t * hidden + d];
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t d = 0; d < hidden; ++d) exact[r * hidden + d] = round_to(acc[r][d], c.dtype);
    }
    be.embedding_backward(grad_table, ids, grad_out, c.offset);
    const Vec got = to_host(be, grad_table);
    EXPECT_EQ(got, exact) << "call " << call;
    EXPECT_LE(max_rel_error(got, wide), tolerance(c.dtype)) << "call " << call;
  }
}

// ---- vocab-parallel cross-entropy pieces --------------------------------------------------

// Each shard's pieces as the vocab-parallel layer runs them (row max, the sum of exponentials
// below the global max and the target logit, the logits' gradient), assembled over the shards:
// maxima and target logits exact (a padding-only shard: -inf and 0), sums 1e-5, the assembled
// loss and the gradients within the dtype tolerance, padding columns' gradients exactly 0.
void check_vocab(Backend& be, const TransformerCase& c, uint64_t seed) {
  const VocabLayout& v = c.vocab;
  const DType dt = c.dtype;
  const int64_t T = v.tokens, W = v.shard * v.shards;
  Vec logits = to_host(be, random_tensor(be, Shape({T, W}), dt, seed, 2.0));
  if (v.large_padding) {
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t j = v.vocab; j < W; ++j) logits[t * W + j] = 40.0 + j;
    }
    logits = rounded(logits, dt);
  }
  std::mt19937 gen(static_cast<uint32_t>(seed));
  std::uniform_int_distribution<int32_t> pick(
      0, static_cast<int32_t>((v.targets_in_padding ? W : v.vocab) - 1));
  std::vector<int32_t> target_ids(static_cast<size_t>(T));
  for (int32_t& id : target_ids) id = pick(gen);
  Tensor targets = ids_tensor(be, target_ids);
  Tensor grad_loss = random_tensor(be, Shape({T}), DType::kF32, seed + 1);
  const Vec gl = to_host(be, grad_loss);
  const double inf = std::numeric_limits<double>::infinity();

  std::vector<Tensor> shard_logits;
  Vec global_max(T, -inf);
  for (int64_t s = 0; s < v.shards; ++s) {
    SCOPED_TRACE("shard " + std::to_string(s));
    const int64_t start = s * v.shard, valid = std::clamp<int64_t>(v.vocab - start, 0, v.shard);
    const Vec block = column_block(logits, T, W, start, v.shard);
    shard_logits.push_back(
        from_host(be, Shape({T, v.shard}), dt, [&](int64_t i) { return block[i]; }));
    Tensor row_max = poisoned(be, Shape({T}), DType::kF32);
    be.vocab_max(row_max, shard_logits[s], start, v.vocab);
    Vec expected(T, -inf);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t j = 0; j < valid; ++j)
        expected[t] = std::max(expected[t], block[t * v.shard + j]);
      global_max[t] = std::max(global_max[t], expected[t]);
    }
    EXPECT_EQ(to_host(be, row_max), expected);
  }
  Tensor gmax = from_host(be, Shape({T}), DType::kF32, [&](int64_t t) { return global_max[t]; });
  Vec total_sum(T, 0.0), total_target(T, 0.0), sum_exp_assembled(T, 0.0), target_assembled(T, 0.0);
  for (int64_t s = 0; s < v.shards; ++s) {
    SCOPED_TRACE("shard " + std::to_string(s));
    const int64_t start = s * v.shard, valid = std::clamp<int64_t>(v.vocab - start, 0, v.shard);
    Tensor sum_exp = poisoned(be, Shape({T}), DType::kF32);
    Tensor target_logit = poisoned(be, Shape({T}), DType::kF32);
    be.vocab_sum_exp_and_target(sum_exp, target_logit, shard_logits[s], gmax, targets, start,
                                v.vocab);
    Vec expected_sum(T, 0.0), expected_target(T, 0.0);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t j = 0; j < valid; ++j) {
        expected_sum[t] += std::exp(logits[t * W + start + j] - global_max[t]);
      }
      const int64_t local = target_ids[t] - start;
      if (local >= 0 && local < valid) expected_target[t] = logits[t * W + target_ids[t]];
      total_sum[t] += expected_sum[t];
      total_target[t] += expected_target[t];
    }
    const Vec got_sum = to_host(be, sum_exp), got_target = to_host(be, target_logit);
    if (valid == 0) {
      EXPECT_EQ(got_sum, expected_sum);  // all zero
    } else {
      EXPECT_LE(max_rel_error(got_sum, expected_sum), 1e-5);
    }
    EXPECT_EQ(got_target, expected_target);
    for (int64_t t = 0; t < T; ++t) {
      sum_exp_assembled[t] += got_sum[t];
      target_assembled[t] += got_target[t];
    }
  }
  if (!v.targets_in_padding) {
    Vec loss(T), expected_loss(T);
    for (int64_t t = 0; t < T; ++t) {
      loss[t] = std::log(sum_exp_assembled[t]) + global_max[t] - target_assembled[t];
      expected_loss[t] = std::log(total_sum[t]) + global_max[t] - total_target[t];
    }
    EXPECT_LE(max_rel_error(loss, expected_loss), tolerance(dt));
  }

  Tensor sum_exp =
      from_host(be, Shape({T}), DType::kF32, [&](int64_t t) { return sum_exp_assembled[t]; });
  for (int64_t s = 0; s < v.shards; ++s) {
    SCOPED_TRACE("shard " + std::to_string(s));
    const int64_t start = s * v.shard, valid = std::clamp<int64_t>(v.vocab - start, 0, v.shard);
    Tensor grad = poisoned(be, Shape({T, v.shard}), dt);
    be.vocab_cross_entropy_backward(grad, shard_logits[s], gmax, sum_exp, targets, grad_loss, start,
                                    v.vocab);
    Vec expected(static_cast<size_t>(T * v.shard), 0.0);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t j = 0; j < valid; ++j) {
        const double p = std::exp(logits[t * W + start + j] - global_max[t]) / total_sum[t];
        expected[t * v.shard + j] = (p - (target_ids[t] == start + j ? 1.0 : 0.0)) * gl[t];
      }
    }
    const Vec got = to_host(be, grad);
    if (valid == 0) {
      EXPECT_EQ(got, expected);  // all zero
      continue;
    }
    EXPECT_LE(max_rel_error(got, expected), tolerance(dt));
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t j = valid; j < v.shard; ++j) {
        ASSERT_EQ(got[t * v.shard + j], 0.0) << "token " << t << " padding column " << j;
      }
    }
  }
}

// ---- SwiGLU, dropout, AdamW ---------------------------------------------------------------

// silu(gate) * up and its gradients (1e-5 / 1e-2); the backward in place (gradients over gate
// and up) equal to the out-of-place one.
void check_swiglu(Backend& be, const TransformerCase& c, uint64_t seed) {
  const DType dt = c.dtype;
  Tensor gate = random_tensor(be, c.shape, dt, seed, 2.0),
         up = random_tensor(be, c.shape, dt, seed + 1);
  Tensor dy = random_tensor(be, c.shape, dt, seed + 2);
  const Vec g = to_host(be, gate), u = to_host(be, up), d = to_host(be, dy);
  Vec expected(g.size()), e_gate(g.size()), e_up(g.size());
  for (size_t i = 0; i < g.size(); ++i) {
    const double sg = 1.0 / (1.0 + std::exp(-g[i]));
    expected[i] = g[i] * sg * u[i];
    e_up[i] = d[i] * g[i] * sg;
    e_gate[i] = d[i] * u[i] * (sg + g[i] * sg * (1.0 - sg));
  }
  Tensor out = poisoned(be, c.shape, dt);
  be.swiglu(out, gate, up);
  EXPECT_LE(max_rel_error(to_host(be, out), expected), tolerance(dt));
  Tensor grad_gate = poisoned(be, c.shape, dt), grad_up = poisoned(be, c.shape, dt);
  be.swiglu_backward(grad_gate, grad_up, dy, gate, up);
  const Vec got_gate = to_host(be, grad_gate), got_up = to_host(be, grad_up);
  EXPECT_LE(max_rel_error(got_gate, e_gate), tolerance(dt));
  EXPECT_LE(max_rel_error(got_up, e_up), tolerance(dt));
  be.swiglu_backward(gate, up, dy, gate, up);
  EXPECT_EQ(to_host(be, gate), got_gate);
  EXPECT_EQ(to_host(be, up), got_up);
}

// Element i kept when Philox draw (seed, offset + i) is at least p in the open unit interval,
// then x * (1 / (1 - p)) in f32, rounded once: exactly. The kept fraction within 5 sigma of
// 1 - p; in place equal to out of place.
void check_dropout(Backend& be, const TransformerCase& c, uint64_t seed) {
  const DType dt = c.dtype;
  const float p = c.value;
  const uint64_t mask_seed = 0x5eed0000d20f0ull;                // both 32-bit halves in use
  Tensor in = uniform_tensor(be, c.shape, dt, seed, 1.0, 2.0);  // never 0: zeros are drops
  const Vec x = to_host(be, in);
  const float keep_scale = 1.0f / (1.0f - p);
  const int64_t n = c.shape.numel();
  Vec expected(x.size());
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    const bool keep = bits_to_open_unit(philox_draw(mask_seed, c.offset + i).v[0]) >= p;
    kept += keep;
    expected[i] = keep ? round_to(static_cast<float>(x[i]) * keep_scale, dt) : 0.0;
  }
  Tensor out = poisoned(be, c.shape, dt);
  be.dropout(out, in, p, mask_seed, c.offset);
  EXPECT_EQ(to_host(be, out), expected);
  const double sigma = std::sqrt(p * (1.0 - p) / n);
  EXPECT_NEAR(static_cast<double>(kept) / n, 1.0 - p, 5 * sigma);
  be.dropout(in, in, p, mask_seed, c.offset);
  EXPECT_EQ(to_host(be, in), expected);
}

// adamw_steps updates against the formula in double: master weights and both moments within
// 1e-5 on the CPU, 1e-6 on CUDA.
void check_adamw(Backend& be, const TransformerCase& c, uint64_t seed) {
  const Shape& shape = c.shape;
  Tensor master = random_tensor(be, shape, DType::kF32, seed);
  Tensor m = random_tensor(be, shape, DType::kF32, seed + 1, 0.3);
  Tensor v = uniform_tensor(be, shape, DType::kF32, seed + 2, 0.001, 1.0);  // non-negative
  Vec w = to_host(be, master), mm = to_host(be, m), vv = to_host(be, v);
  AdamWStep step = c.adamw;
  for (int64_t k = 0; k < c.adamw_steps; ++k, ++step.step) {
    Tensor grad = random_tensor(be, shape, c.dtype, seed + 10 + k);
    const Vec gh = to_host(be, grad);
    be.adamw(master, m, v, grad, step);
    const double b1 = step.beta1, b2 = step.beta2;
    const double t = static_cast<double>(step.step);
    for (size_t i = 0; i < w.size(); ++i) {
      const double gi = gh[i] * step.grad_scale;
      mm[i] = b1 * mm[i] + (1 - b1) * gi;
      vv[i] = b2 * vv[i] + (1 - b2) * gi * gi;
      const double mhat = mm[i] / (1 - std::pow(b1, t)), vhat = vv[i] / (1 - std::pow(b2, t));
      w[i] -= step.lr * (mhat / (std::sqrt(vhat) + step.eps) + step.weight_decay * w[i]);
    }
  }
  const double tol = on_cpu(be) ? 1e-5 : 1e-6;
  EXPECT_LE(max_rel_error(to_host(be, master), w), tol);
  EXPECT_LE(max_rel_error(to_host(be, m), mm), tol);
  EXPECT_LE(max_rel_error(to_host(be, v), vv), tol);
}

// ---- scale, sum of squares ----------------------------------------------------------------

// alpha * x in f32, rounded once: exactly, out of place and in place.
void check_scale(Backend& be, const TransformerCase& c, uint64_t seed) {
  Tensor in = random_tensor(be, c.shape, c.dtype, seed);
  Vec expected = to_host(be, in);
  for (double& e : expected) e = round_to(c.value * static_cast<float>(e), c.dtype);
  Tensor out = poisoned(be, c.shape, c.dtype);
  be.scale(out, in, c.value);
  EXPECT_EQ(to_host(be, out), expected);
  be.scale(in, in, c.value);
  EXPECT_EQ(to_host(be, in), expected);
}

// Within 1e-5 of the double sum; a second call gives the same bits.
void check_sum_squares(Backend& be, const TransformerCase& c, uint64_t seed) {
  Tensor in = random_tensor(be, c.shape, c.dtype, seed);
  const Vec x = to_host(be, in);
  Tensor out = poisoned(be, Shape({1}), DType::kF32);
  be.sum_squares(out, in);
  const Vec first = to_host(be, out);
  EXPECT_LE(max_rel_error(first, {dot(x, x)}), 1e-5);
  Tensor again = poisoned(be, Shape({1}), DType::kF32);
  be.sum_squares(again, in);
  EXPECT_EQ(to_host(be, again), first);
}

// ---- copy, copy_columns, convert, fill ----------------------------------------------------

// A tensor of the backend holding exactly the host tensor `host`.
Tensor on_backend(Backend& be, const Tensor& host) {
  Tensor t(be, host.shape(), host.dtype());
  be.copy(t, host);
  return t;
}

void check_copy(Backend& be, const TransformerCase& c, uint64_t seed) {
  Tensor src = random_tensor(be, c.shape, c.dtype, seed);
  Tensor dst = poisoned(be, c.shape, c.dtype);
  be.copy(dst, src);
  EXPECT_EQ(to_host(be, dst), to_host(be, src));
}

// The window lands in the middle of dst; every other element of dst keeps its value.
void check_copy_columns(Backend& be, const TransformerCase& c, uint64_t seed) {
  const ColumnWindow& w = c.window;
  Tensor src = random_tensor(be, Shape({w.rows, w.src_cols}), c.dtype, seed);
  Tensor dst = random_tensor(be, Shape({w.rows, w.dst_cols}), c.dtype, seed + 1);
  const Vec before = to_host(be, dst), s = to_host(be, src);
  be.copy_columns(dst, w.dst_col, src, w.src_col, w.width);
  const Vec after = to_host(be, dst);
  for (int64_t r = 0; r < w.rows; ++r) {
    for (int64_t col = 0; col < w.dst_cols; ++col) {
      const bool inside = col >= w.dst_col && col < w.dst_col + w.width;
      const double expected =
          inside ? s[r * w.src_cols + w.src_col + (col - w.dst_col)] : before[r * w.dst_cols + col];
      ASSERT_EQ(after[r * w.dst_cols + col], expected) << "at (" << r << ", " << col << ")";
    }
  }
}

// Round to nearest even, exactly; a wide range meets f16's overflow and subnormals, and an f32
// source holds a subnormal of f16, a value beyond its range and a bf16 tie.
void check_convert(Backend& be, const TransformerCase& c, uint64_t seed) {
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  Tensor src_host =
      random_tensor(*cpu, c.shape, c.dtype, seed, c.dtype == DType::kF16 ? 100.0 : 3e4);
  if (c.dtype == DType::kF32) {
    src_host.as<float>()[0] = 1e-6f;
    src_host.as<float>()[1] = 7e4f;
    src_host.as<float>()[2] = 1.0f + std::ldexp(1.0f, -8);
  }
  Tensor src = on_backend(be, src_host);
  Tensor dst = poisoned(be, c.shape, c.to);
  be.convert(dst, src);
  EXPECT_EQ(to_host(be, dst), rounded(to_host(*cpu, src_host), c.to));
}

// Every element the rounded value; then NaN everywhere.
void check_fill(Backend& be, const TransformerCase& c, uint64_t seed) {
  Tensor t = random_tensor(be, c.shape, c.dtype, seed);
  be.fill(t, c.value);
  EXPECT_EQ(to_host(be, t), Vec(static_cast<size_t>(c.shape.numel()), round_to(c.value, c.dtype)));
  be.fill(t, NAN);
  for (double v : to_host(be, t)) ASSERT_TRUE(std::isnan(v));
}

// ---- the table ----------------------------------------------------------------------------

TransformerCase make(TransformerOp op, DType dtype, std::string label) {
  TransformerCase c;
  c.op = op;
  c.dtype = dtype;
  c.label = std::move(label);
  return c;
}

std::string dims_label(const Shape& s) {
  std::string out;
  for (int64_t d : s.dims()) out += (out.empty() ? "" : "x") + std::to_string(d);
  return out;
}

std::string attn_label(const AttentionShape& s) {
  return "s" + std::to_string(s.seq) + "b" + std::to_string(s.batch) + "h" +
         std::to_string(s.heads) + "kv" + std::to_string(s.kv_heads) + "d" +
         std::to_string(s.head_dim) + (s.scale != 0.0f ? "scaled" : "");
}

std::vector<int32_t> drawn_ids(int64_t n, int32_t lo, int32_t hi, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int32_t> pick(lo, hi - 1);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t& id : ids) id = pick(gen);
  return ids;
}

void add_shaped(std::vector<TransformerCase>& cases, TransformerOp op,
                const std::vector<Shape>& shapes, std::initializer_list<DType> dtypes,
                float value = 0.0f) {
  for (DType dt : dtypes) {
    for (const Shape& s : shapes) {
      TransformerCase c = make(op, dt, dims_label(s));
      c.shape = s;
      c.value = value;
      cases.push_back(c);
    }
  }
}

void add_attention(std::vector<TransformerCase>& cases, TransformerOp op,
                   const std::vector<AttentionShape>& shapes, std::initializer_list<DType> dtypes) {
  for (DType dt : dtypes) {
    for (const AttentionShape& s : shapes) {
      TransformerCase c = make(op, dt, attn_label(s));
      c.attn = s;
      cases.push_back(c);
    }
  }
}

}  // namespace

std::string transformer_case_name(const TransformerCase& c) {
  std::string name = std::string(op_name(c.op)) + "_" + dtype_name(c.dtype);
  if (c.op == TransformerOp::kConvert) name += std::string("_to_") + dtype_name(c.to);
  return name + (c.label.empty() ? "" : "_" + c.label);
}

void PrintTo(const TransformerCase& c, std::ostream* os) { *os << transformer_case_name(c); }

std::vector<TransformerCase> transformer_cases() {
  using Op = TransformerOp;
  const auto all = {DType::kF32, DType::kBF16, DType::kF16};
  const auto f32_bf16 = {DType::kF32, DType::kBF16};
  std::vector<TransformerCase> cases;

  add_shaped(cases, Op::kScale, {Shape({7, 13}), Shape({31, 67})}, all, -0.375f);
  add_shaped(cases, Op::kSumSquares,
             {Shape({1}), Shape({7}), Shape({4099}), Shape({301, 177}), Shape({1000003})}, all);

  // Rows spanning several chunks of the parameter-gradient reduction, columns not a multiple of 32,
  // more than two column blocks of the gamma reduction, leading dimensions folded into rows.
  const std::vector<Shape> norm_shapes = {Shape({3, 5, 96}), Shape({301, 203}), Shape({2, 1029})};
  add_shaped(cases, Op::kLayerNorm, norm_shapes, all);
  add_shaped(cases, Op::kLayerNorm, {Shape({37, 150}), Shape({300, 200})}, all);
  add_shaped(cases, Op::kRmsNorm, norm_shapes, all);
  add_shaped(cases, Op::kRmsNorm, {Shape({29, 133})}, all);

  // Grouped-query, multi-head with an explicit scale, multi-query, one position, several tiles
  // with partial last tiles; head_dim up to 128 (not a multiple of the warp size: 40).
  add_attention(cases, Op::kAttention,
                {attention_shape(9, 3, 4, 2, 8), attention_shape(7, 2, 3, 3, 16, 0.3f),
                 attention_shape(6, 2, 4, 1, 8), attention_shape(1, 4, 2, 2, 4),
                 attention_shape(300, 2, 4, 2, 16), attention_shape(13, 3, 4, 4, 16),
                 attention_shape(37, 2, 8, 2, 64), attention_shape(21, 2, 6, 1, 40),
                 attention_shape(70, 1, 2, 1, 128, 0.05f)},
                all);
  // Many tiles: an odd length with multi-query, and 32 x 32 key and query tiles.
  add_attention(cases, Op::kAttention,
                {attention_shape(1027, 1, 2, 1, 16), attention_shape(4096, 1, 1, 1, 8)}, f32_bf16);

  struct CacheFeed {
    AttentionShape shape;
    std::vector<int64_t> feed;
    int64_t spare;
  };
  for (const CacheFeed& f : {CacheFeed{attention_shape(7, 2, 4, 2, 8), {3, 1, 1, 1, 1}, 2},
                             CacheFeed{attention_shape(6, 3, 2, 2, 4), {3, 1, 1, 1}, 2},
                             CacheFeed{attention_shape(11, 2, 4, 2, 32), {6, 1, 1, 3}, 5}}) {
    for (DType dt : f32_bf16) {
      TransformerCase c = make(Op::kAttentionCache, dt, attn_label(f.shape));
      c.attn = f.shape;
      c.feed = f.feed;
      c.offset = f.spare;
      cases.push_back(c);
    }
  }

  for (int64_t offset : {int64_t{0}, int64_t{3}, int64_t{13}, int64_t{100000}}) {
    for (const AttentionShape& s :
         {attention_shape(6, 2, 4, 2, 8), attention_shape(5, 3, 2, 2, 6),
          attention_shape(9, 3, 8, 2, 64), attention_shape(5, 2, 3, 3, 6)}) {
      for (DType dt : all) {
        TransformerCase c = make(Op::kRope, dt, attn_label(s) + "_at" + std::to_string(offset));
        c.attn = s;
        c.offset = offset;
        cases.push_back(c);
      }
    }
  }

  struct EmbeddingLookup {
    TransformerOp op;
    const char* label;
    Shape table;
    int64_t vocab_start;
    std::vector<int32_t> ids;
  };
  // Forward: ids below, inside and beyond this shard's rows [20, 30), one negative; ids drawn
  // from [0, 250) for the rows [100, 150). Backward: repeated ids, some outside [100, 108); ids
  // from [70, 150) for the rows [90, 130): many repeats, some misses.
  const EmbeddingLookup lookups[] = {
      {Op::kEmbedding, "explicit", Shape({10, 24}), 20, {20, 29, 5, 25, 30, 20, 19, 27, -3, 24}},
      {Op::kEmbedding, "drawn", Shape({50, 72}), 100, drawn_ids(97, 0, 250, 192)},
      {Op::kEmbeddingBackward,
       "explicit",
       Shape({8, 70}),
       100,
       {103, 100, 103, 99, 107, 103, 108, 101, 100, 105, 103, 0}},
      {Op::kEmbeddingBackward, "drawn", Shape({40, 300}), 90, drawn_ids(611, 70, 150, 203)}};
  for (DType dt : all) {
    for (const EmbeddingLookup& l : lookups) {
      TransformerCase c = make(l.op, dt, l.label);
      c.shape = l.table;
      c.offset = l.vocab_start;
      c.ids = l.ids;
      cases.push_back(c);
    }
  }

  // The vocabulary [0, 13) padded to 24 columns in three shards of 8: the second holds 3 padding
  // columns, the third only padding; padding logits large, so that counting any of them changes
  // every result. A shard of 100 columns whose last 40 are padding; a larger vocabulary of full
  // shards; targets in the padding (the pieces' rule only: no loss is defined).
  const std::pair<const char*, VocabLayout> vocabs[] = {
      {"v13_3x8", {6, 8, 3, 13, true, false}},
      {"v260_3x100", {33, 100, 3, 260, false, false}},
      {"v1000_10x100", {33, 100, 10, 1000, false, false}},
      {"v260_3x100_targets_in_padding", {33, 100, 3, 260, false, true}}};
  for (DType dt : all) {
    for (const auto& [label, layout] : vocabs) {
      TransformerCase c = make(Op::kVocabCrossEntropy, dt, label);
      c.vocab = layout;
      cases.push_back(c);
    }
  }

  add_shaped(cases, Op::kSwiglu, {Shape({9, 31}), Shape({23, 91})}, all);

  for (DType dt : all) {
    TransformerCase big = make(Op::kDropout, dt, "256x256_p0p3");
    big.shape = Shape({256, 256});
    big.value = 0.3f;
    big.offset = 12345;
    cases.push_back(big);
    for (float p : {0.0f, 0.1f, 0.5f, 0.9f}) {
      // Counters beyond 32 bits.
      TransformerCase c = make(Op::kDropout, dt, "37x129_p0p" + std::to_string(int(p * 10)));
      c.shape = Shape({37, 129});
      c.value = p;
      c.offset = (int64_t{1} << 33) + 5;
      cases.push_back(c);
    }
  }

  for (DType grad_dtype : all) {
    TransformerCase three = make(Op::kAdamW, grad_dtype, "17x23_3steps");
    three.shape = Shape({17, 23});
    three.adamw.lr = 3e-3f;
    three.adamw.beta1 = 0.8f;
    three.adamw.beta2 = 0.97f;
    three.adamw.eps = 1e-6f;
    three.adamw.weight_decay = 0.1f;
    three.adamw.grad_scale = 0.6f;
    three.adamw_steps = 3;
    cases.push_back(three);
    for (int64_t step : {int64_t{1}, int64_t{7}}) {
      TransformerCase c = make(Op::kAdamW, grad_dtype, "19x257_step" + std::to_string(step));
      c.shape = Shape({19, 257});
      c.adamw.lr = 3e-3f;
      c.adamw.weight_decay = 0.1f;
      c.adamw.step = step;
      c.adamw.grad_scale = 0.5f;
      cases.push_back(c);
    }
  }

  add_shaped(cases, Op::kCopy, {Shape({3, 5}), Shape({37, 53}), Shape({300, 257})}, all);
  for (DType dt : all) {
    // A narrow and a wide (threaded) window into the middle of a wider matrix, and a window
    // from the middle of one matrix into a narrower one.
    for (const ColumnWindow& w :
         {ColumnWindow{7, 5, 212, 1, 6, 3}, ColumnWindow{400, 190, 212, 1, 6, 180},
          ColumnWindow{19, 13, 9, 5, 2, 6}}) {
      TransformerCase c = make(Op::kCopyColumns, dt,
                               std::to_string(w.rows) + "x" + std::to_string(w.src_cols) + "_to_" +
                                   std::to_string(w.dst_cols));
      c.window = w;
      cases.push_back(c);
    }
  }
  for (DType from : all) {
    for (DType to : all) {
      for (const Shape& s : {Shape({4, 9}), Shape({41, 23}), Shape({300, 257})}) {
        TransformerCase c = make(Op::kConvert, from, dims_label(s));
        c.to = to;
        c.shape = s;
        cases.push_back(c);
      }
    }
  }
  for (float value : {0.3f, -1.2345678f}) {
    for (const Shape& s : {Shape({5, 77}), Shape({5, 300})}) {
      for (DType dt : all) {
        TransformerCase c = make(Op::kFill, dt, dims_label(s) + (value > 0 ? "_pos" : "_neg"));
        c.shape = s;
        c.value = value;
        cases.push_back(c);
      }
    }
  }
  return cases;
}

TEST_P(TransformerOpTest, MatchesTheReference) {
  const TransformerCase& c = op_case();
  Backend& be = backend();
  const uint64_t seed = std::hash<std::string>()(transformer_case_name(c)) % 100000;
  switch (c.op) {
    case TransformerOp::kScale:
      return check_scale(be, c, seed);
    case TransformerOp::kSumSquares:
      return check_sum_squares(be, c, seed);
    case TransformerOp::kLayerNorm:
    case TransformerOp::kRmsNorm:
      return check_norm(be, c, seed);
    case TransformerOp::kAttention:
      return check_attention(be, c, seed);
    case TransformerOp::kAttentionCache:
      return check_attention_cache(be, c, seed);
    case TransformerOp::kRope:
      return check_rope(be, c, seed);
    case TransformerOp::kEmbedding:
      return check_embedding(be, c, seed);
    case TransformerOp::kEmbeddingBackward:
      return check_embedding_backward(be, c, seed);
    case TransformerOp::kVocabCrossEntropy:
      return check_vocab(be, c, seed);
    case TransformerOp::kSwiglu:
      return check_swiglu(be, c, seed);
    case TransformerOp::kDropout:
      return check_dropout(be, c, seed);
    case TransformerOp::kAdamW:
      return check_adamw(be, c, seed);
    case TransformerOp::kCopy:
      return check_copy(be, c, seed);
    case TransformerOp::kCopyColumns:
      return check_copy_columns(be, c, seed);
    case TransformerOp::kConvert:
      return check_convert(be, c, seed);
    case TransformerOp::kFill:
      return check_fill(be, c, seed);
  }
  FAIL() << "no check for " << transformer_case_name(c);
}

}  // namespace weft::testing
