// The GPT building blocks against the unsharded computation in double, at every TP size the world
// allows, in f32 and bf16: VocabParallelEmbedding with its tied LM head, the vocab-parallel
// cross-entropy, ParallelAttention (multi-head, grouped-query incl. replicated kv, rotary, the KV
// cache), TP-invariant initialization, and bad input rejected on every rank.
//
// Every rank builds the global inputs and weights from one seed, computes the reference itself and
// checks its own shard. Gradients start from random values, so a backward that overwrites instead
// of accumulating fails.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>

#include "common/test_util.hpp"
#include "dist/tp_fixture.hpp"
#include "weft/attention.hpp"
#include "weft/embedding.hpp"

namespace weft::testing {
namespace {

// Rows `rows` (in that order) of a row-major matrix with `cols` columns.
std::vector<double> gather_rows(const std::vector<double>& m, int64_t cols,
                                const std::vector<int64_t>& rows) {
  std::vector<double> out;
  out.reserve(rows.size() * static_cast<size_t>(cols));
  for (int64_t r : rows) out.insert(out.end(), m.begin() + r * cols, m.begin() + (r + 1) * cols);
  return out;
}

std::vector<int64_t> iota(int64_t begin, int64_t count) {
  std::vector<int64_t> v(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) v[i] = begin + i;
  return v;
}

// A tensor of `backend` holding `values` in `dtype`.
Tensor from_values(Backend& backend, const Shape& shape, DType dtype,
                   const std::vector<double>& values) {
  return from_host(backend, shape, dtype, [&](int64_t i) { return values[i]; });
}

// Deterministic ids in [0, vocab) with both ends and a repeat (embedding backward must add up).
std::vector<int32_t> make_ids(int64_t tokens, int64_t vocab, uint32_t salt) {
  std::vector<int32_t> ids(static_cast<size_t>(tokens));
  for (int64_t t = 0; t < tokens; ++t) {
    ids[t] = static_cast<int32_t>((t * 7919 + salt * 104729 + 13) % vocab);
  }
  ids[0] = 0;
  ids[1] = static_cast<int32_t>(vocab - 1);
  ids[3] = ids[2];
  return ids;
}

class GptBlocksTest : public TpDtypeTest {
 protected:
  std::vector<double> rnd(std::vector<double> v) const { return rounded(std::move(v), dtype()); }

  Tensor tensor(const Shape& shape, const std::vector<double>& values) {
    return from_values(*cpu_, shape, dtype(), values);
  }
  void set_value(Parameter& p, const std::vector<double>& values) {
    cpu_->copy(p.value, tensor(p.value.shape(), values));
  }
};

// ---------------------------------------------------------------------------------------------
// Embedding and tied LM head

TEST_P(GptBlocksTest, PaddedVocabSize) {
  EXPECT_EQ(padded_vocab_size(50, 4, 1), 52);
  EXPECT_EQ(padded_vocab_size(50, 4, 2), 56);
  EXPECT_EQ(padded_vocab_size(50, 4, 4), 64);
  EXPECT_EQ(padded_vocab_size(64, 4, 4), 64);
  EXPECT_EQ(padded_vocab_size(50, 128, 1), 128);
  EXPECT_EQ(padded_vocab_size(1, 1, 1), 1);
}

TEST_P(GptBlocksTest, EmbeddingAndTiedLmHeadForwardBackward) {
  constexpr int64_t kVocab = 50, kHidden = 16, kTokens = 10;
  VocabParallelEmbeddingConfig config;
  config.vocab_size = kVocab;
  config.hidden = kHidden;
  config.pad_multiple = 4;
  config.dtype = dtype();
  VocabParallelEmbedding emb(ctx(), config);
  const int64_t padded = padded_vocab_size(kVocab, 4, tp()), v_local = padded / tp(),
                v0 = v_local * tp_rank();
  ASSERT_EQ(emb.padded_vocab(), padded);
  ASSERT_EQ(emb.local_vocab_size(), v_local);
  ASSERT_EQ(emb.vocab_start(), v0);
  EXPECT_EQ(emb.weight().global_shape, Shape({padded, kHidden}));
  EXPECT_EQ(emb.weight().partition_dim, 0);

  Global table = global(Shape({padded, kHidden}), 51);
  set_value(emb.weight(), gather_rows(table.values, kHidden, iota(v0, v_local)));
  const std::vector<double> grad0 = randomize_grad(emb.weight(), 52);
  const std::vector<int32_t> ids = make_ids(kTokens, kVocab, 1);
  Tensor ids_t = ids_tensor(*cpu_, ids);

  // Embedding: y[t] = table[ids[t]] on every rank.
  VocabParallelEmbedding::Saved saved;
  Tensor y = emb.forward(ids_t, saved);
  ASSERT_EQ(y.shape(), Shape({kTokens, kHidden}));
  std::vector<int64_t> id_rows(ids.begin(), ids.end());
  expect_close(y, gather_rows(table.values, kHidden, id_rows), "embedding output");

  Global dy = global(Shape({kTokens, kHidden}), 53);
  emb.backward(dy.tensor, saved);
  std::vector<double> d_table(static_cast<size_t>(padded * kHidden), 0.0);
  for (int64_t t = 0; t < kTokens; ++t) {
    for (int64_t c = 0; c < kHidden; ++c)
      d_table[ids[t] * kHidden + c] += dy.values[t * kHidden + c];
  }

  // Tied LM head: logits = h table^T over the padded vocabulary; this rank's columns.
  Global h = global(Shape({kTokens, kHidden}), 54);
  VocabParallelEmbedding::HeadSaved head_saved;
  Tensor logits = emb.lm_head_forward(h.tensor, head_saved);
  ASSERT_EQ(logits.shape(), Shape({kTokens, v_local}));
  const std::vector<double> logits_full =
      reference_matmul(h.values, table.values, kTokens, padded, kHidden, false, true);
  expect_close(logits, column_block(logits_full, kTokens, padded, v0, v_local), "lm head logits");

  Global d_logits = global(Shape({kTokens, padded}), 55);
  Tensor d_logits_local = tensor(Shape({kTokens, v_local}),
                                 column_block(d_logits.values, kTokens, padded, v0, v_local));
  Tensor dh = emb.lm_head_backward(d_logits_local, head_saved);
  ASSERT_EQ(dh.shape(), Shape({kTokens, kHidden}));
  expect_close(
      dh, reference_matmul(d_logits.values, table.values, kTokens, kHidden, padded, false, false),
      "lm head input grad (all-reduced)");
  d_table = add(d_table,
                reference_matmul(d_logits.values, h.values, padded, kHidden, kTokens, true, false));
  // One gradient for the tied table: the lookup's and the head's contributions, added to grad0.
  expect_close(emb.weight().grad,
               add(grad0, std::vector<double>(d_table.begin() + v0 * kHidden,
                                              d_table.begin() + (v0 + v_local) * kHidden)),
               "table grad");
}

TEST_P(GptBlocksTest, EmbeddingInitIsTheSameGlobalTableAtEveryTpSize) {
  VocabParallelEmbeddingConfig config;
  config.vocab_size = 50;
  config.hidden = 16;
  config.pad_multiple = 4;
  config.dtype = dtype();
  config.seed = 5;
  VocabParallelEmbedding emb(ctx(), config);
  auto self = make_test_self();
  VocabParallelEmbedding ref(ParallelContext{*cpu_, *self}, config);
  // The real rows agree bit for bit; only the padding beyond row 52 exists at tp 4 alone.
  const std::vector<double> full = to_host(*cpu_, ref.weight().value);
  const std::vector<double> mine = to_host(*cpu_, emb.weight().value);
  const int64_t v0 = emb.vocab_start(), rows = std::min<int64_t>(emb.local_vocab_size(), 52 - v0);
  if (rows > 0) {
    EXPECT_EQ(std::vector<double>(mine.begin(), mine.begin() + rows * 16),
              std::vector<double>(full.begin() + v0 * 16, full.begin() + (v0 + rows) * 16));
  }
}

// ---------------------------------------------------------------------------------------------
// Vocab-parallel cross-entropy

TEST_P(GptBlocksTest, CrossEntropyEqualsPlainLogSoftmax) {
  struct Case {
    int64_t vocab, pad_multiple;
  };
  // 50 / 4: a partly padded last shard. 40 / 16: at tp 4 the last shard is all padding.
  for (Case k : {Case{50, 4}, Case{40, 16}, Case{64, 1}}) {
    SCOPED_TRACE(::testing::Message() << "vocab=" << k.vocab << " pad_multiple=" << k.pad_multiple);
    constexpr int64_t kTokens = 7;
    const int64_t padded = padded_vocab_size(k.vocab, k.pad_multiple, tp()),
                  v_local = padded / tp(), v0 = v_local * tp_rank();
    Global logits = global(Shape({kTokens, padded}), 61, 2.0);
    // Padding columns hold large values: they must take no part in the max, sum or gradient.
    std::vector<double> values = logits.values;
    for (int64_t t = 0; t < kTokens; ++t) {
      for (int64_t j = k.vocab; j < padded; ++j) values[t * padded + j] = 30.0 + j;
    }
    values = rnd(values);
    Tensor local_logits =
        tensor(Shape({kTokens, v_local}), column_block(values, kTokens, padded, v0, v_local));
    const std::vector<int32_t> targets = make_ids(kTokens, k.vocab, 2);
    Tensor targets_t = ids_tensor(*cpu_, targets);

    std::vector<double> loss_ref(kTokens), grad_ref(static_cast<size_t>(kTokens * padded), 0.0);
    std::vector<float> grad_loss(kTokens);
    for (int64_t t = 0; t < kTokens; ++t) {
      grad_loss[t] = 0.1f + 0.05f * static_cast<float>(t);
      const double* row = &values[t * padded];
      double m = row[0];
      for (int64_t j = 0; j < k.vocab; ++j) m = std::max(m, row[j]);
      double s = 0.0;
      for (int64_t j = 0; j < k.vocab; ++j) s += std::exp(row[j] - m);
      loss_ref[t] = std::log(s) + m - row[targets[t]];
      for (int64_t j = 0; j < k.vocab; ++j) {
        grad_ref[t * padded + j] =
            (std::exp(row[j] - m) / s - (j == targets[t] ? 1.0 : 0.0)) * grad_loss[t];
      }
    }

    VocabParallelCrossEntropy ce(ctx());
    VocabParallelCrossEntropy::Saved saved;
    const std::vector<float> loss = ce.forward(local_logits, targets_t, v0, k.vocab, saved);
    // The loss is computed in f32 from the logits the kernel sees, whatever their dtype.
    EXPECT_LE(max_rel_error(std::vector<double>(loss.begin(), loss.end()), loss_ref), 1e-5)
        << "loss on tp rank " << tp_rank();
    Tensor grad = ce.backward(grad_loss, saved);
    ASSERT_EQ(grad.shape(), Shape({kTokens, v_local}));
    const std::vector<double> grad_expected = column_block(grad_ref, kTokens, padded, v0, v_local);
    if (v0 >= k.vocab) {  // a shard wholly in the padding: exactly zero
      EXPECT_EQ(to_host(*cpu_, grad), grad_expected) << "padding-only shard's grad";
    } else {
      expect_close(grad, grad_expected, "logits grad");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// ParallelAttention

struct AttnCase {
  int64_t heads, kv_heads;
  bool rotary, bias;
};

std::string describe(const AttnCase& c) {
  return "heads=" + std::to_string(c.heads) + " kv_heads=" + std::to_string(c.kv_heads) +
         " rotary=" + std::to_string(c.rotary) + " bias=" + std::to_string(c.bias);
}

constexpr int64_t kHidden = 16, kSeq = 6, kBatch = 2, kTokens = kSeq * kBatch;
constexpr double kTheta = 10000.0;

// The global attention weights, QKV rows in the grouped layout (per kv group: its query heads,
// its key, its value).
struct AttnDims {
  int64_t heads, kv_heads, d, qpg;
  int64_t qkv_cols() const { return (heads + 2 * kv_heads) * d; }
  int64_t q_col(int64_t h) const { return ((h / qpg) * (qpg + 2) + h % qpg) * d; }
  int64_t k_col(int64_t g) const { return (g * (qpg + 2) + qpg) * d; }
  int64_t v_col(int64_t g) const { return k_col(g) + d; }
};

AttnDims dims_of(const AttnCase& c) {
  return AttnDims{c.heads, c.kv_heads, kHidden / c.heads, c.heads / c.kv_heads};
}

// Global QKV rows that each QKV parameter of tp rank `r` holds (the layer's documented layout):
// kv_heads divisible by tp: one even row block. Otherwise the rank's query heads (heads / tp of its
// group), then a parameter with its group's key and value rows.
std::vector<std::vector<int64_t>> qkv_param_rows(const AttnDims& a, int tp, int r) {
  if (a.kv_heads % tp == 0) {
    const int64_t n = a.qkv_cols() / tp;
    return {iota(n * r, n)};
  }
  const int64_t hpr = a.heads / tp, group = r / (tp / a.kv_heads);
  std::vector<int64_t> q;
  for (int64_t h = hpr * r; h < hpr * (r + 1); ++h) {
    EXPECT_EQ(h / a.qpg, group);
    for (int64_t i = 0; i < a.d; ++i) q.push_back(a.q_col(h) + i);
  }
  return {q, iota(a.k_col(group), 2 * a.d)};
}

// Rotates the q and k heads of a [tokens, qkv_cols] activation (rows (s, b)) in place.
void reference_rope(std::vector<double>& qkv, const AttnDims& a, int64_t seq, int64_t batch,
                    int64_t offset, bool inverse) {
  const int64_t cols = a.qkv_cols(), half = a.d / 2;
  std::vector<int64_t> heads;
  for (int64_t h = 0; h < a.heads; ++h) heads.push_back(a.q_col(h));
  for (int64_t g = 0; g < a.kv_heads; ++g) heads.push_back(a.k_col(g));
  for (int64_t s = 0; s < seq; ++s) {
    for (int64_t b = 0; b < batch; ++b) {
      double* row = &qkv[(s * batch + b) * cols];
      for (int64_t c0 : heads) {
        for (int64_t i = 0; i < half; ++i) {
          const double angle =
              (inverse ? -1.0 : 1.0) * static_cast<double>(offset + s) *
              std::pow(kTheta, -2.0 * static_cast<double>(i) / static_cast<double>(a.d));
          const double x1 = row[c0 + i], x2 = row[c0 + i + half];
          row[c0 + i] = x1 * std::cos(angle) - x2 * std::sin(angle);
          row[c0 + i + half] = x2 * std::cos(angle) + x1 * std::sin(angle);
        }
      }
    }
  }
}

// Causal attention of every query head over its group's key and value: probs [b, h, s, t].
std::vector<double> reference_attention(const std::vector<double>& qkv, const AttnDims& a,
                                        int64_t seq, int64_t batch, std::vector<double>* probs) {
  const int64_t cols = a.qkv_cols(), out_cols = a.heads * a.d;
  const double scale = 1.0 / std::sqrt(static_cast<double>(a.d));
  std::vector<double> out(static_cast<size_t>(seq * batch * out_cols), 0.0);
  probs->assign(static_cast<size_t>(batch * a.heads * seq * seq), 0.0);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < a.heads; ++h) {
      const int64_t g = h / a.qpg;
      for (int64_t s = 0; s < seq; ++s) {
        double* p = &(*probs)[((b * a.heads + h) * seq + s) * seq];
        double m = -1e300;
        for (int64_t t = 0; t <= s; ++t) {
          double dot = 0.0;
          for (int64_t i = 0; i < a.d; ++i) {
            dot += qkv[(s * batch + b) * cols + a.q_col(h) + i] *
                   qkv[(t * batch + b) * cols + a.k_col(g) + i];
          }
          p[t] = dot * scale;
          m = std::max(m, p[t]);
        }
        double sum = 0.0;
        for (int64_t t = 0; t <= s; ++t) sum += (p[t] = std::exp(p[t] - m));
        for (int64_t t = 0; t <= s; ++t) p[t] /= sum;
        for (int64_t i = 0; i < a.d; ++i) {
          double acc = 0.0;
          for (int64_t t = 0; t <= s; ++t)
            acc += p[t] * qkv[(t * batch + b) * cols + a.v_col(g) + i];
          out[(s * batch + b) * out_cols + h * a.d + i] = acc;
        }
      }
    }
  }
  return out;
}

std::vector<double> reference_attention_backward(const std::vector<double>& d_out,
                                                 const std::vector<double>& qkv,
                                                 const std::vector<double>& probs,
                                                 const AttnDims& a, int64_t seq, int64_t batch) {
  const int64_t cols = a.qkv_cols(), out_cols = a.heads * a.d;
  const double scale = 1.0 / std::sqrt(static_cast<double>(a.d));
  std::vector<double> d_qkv(qkv.size(), 0.0);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < a.heads; ++h) {
      const int64_t g = h / a.qpg;
      for (int64_t s = 0; s < seq; ++s) {
        const double* p = &probs[((b * a.heads + h) * seq + s) * seq];
        const double* dout = &d_out[(s * batch + b) * out_cols + h * a.d];
        std::vector<double> dp(static_cast<size_t>(s + 1));
        double dot_pdp = 0.0;
        for (int64_t t = 0; t <= s; ++t) {
          double v = 0.0;
          for (int64_t i = 0; i < a.d; ++i) {
            v += dout[i] * qkv[(t * batch + b) * cols + a.v_col(g) + i];
            d_qkv[(t * batch + b) * cols + a.v_col(g) + i] += p[t] * dout[i];
          }
          dp[t] = v;
          dot_pdp += p[t] * v;
        }
        for (int64_t t = 0; t <= s; ++t) {
          const double ds = p[t] * (dp[t] - dot_pdp) * scale;
          for (int64_t i = 0; i < a.d; ++i) {
            d_qkv[(s * batch + b) * cols + a.q_col(h) + i] +=
                ds * qkv[(t * batch + b) * cols + a.k_col(g) + i];
            d_qkv[(t * batch + b) * cols + a.k_col(g) + i] +=
                ds * qkv[(s * batch + b) * cols + a.q_col(h) + i];
          }
        }
      }
    }
  }
  return d_qkv;
}

// Global weights of one attention layer.
struct AttnWeights {
  Global w_qkv, b_qkv, w_out, b_out;
};

class GptAttention : public GptBlocksTest {
 protected:
  ParallelAttentionConfig config(const AttnCase& c) const {
    ParallelAttentionConfig cfg;
    cfg.hidden = kHidden;
    cfg.heads = c.heads;
    cfg.kv_heads = c.kv_heads;
    cfg.rotary = c.rotary;
    cfg.bias = c.bias;
    cfg.rope_theta = static_cast<float>(kTheta);
    cfg.dtype = dtype();
    return cfg;
  }
  AttnWeights weights(const AttnDims& a, uint64_t seed) {
    return AttnWeights{global(Shape({a.qkv_cols(), kHidden}), seed, 0.3),
                       global(Shape({a.qkv_cols()}), seed + 1, 0.3),
                       global(Shape({kHidden, a.heads * a.d}), seed + 2, 0.3),
                       global(Shape({kHidden}), seed + 3, 0.3)};
  }
  // Loads this rank's parts of the global weights. Parameter order: the QKV weight(s) each
  // followed by its bias, then the output projection's weight and bias.
  void load(ParallelAttention& layer, const AttnDims& a, const AttnCase& c, const AttnWeights& w) {
    const std::vector<Parameter*> params = layer.parameters();
    const auto rows = qkv_param_rows(a, tp(), tp_rank());
    ASSERT_EQ(params.size(), (rows.size() + 1) * (c.bias ? 2 : 1));
    size_t i = 0;
    for (const auto& r : rows) {
      set_value(*params[i++], gather_rows(w.w_qkv.values, kHidden, r));
      if (c.bias) set_value(*params[i++], gather_rows(w.b_qkv.values, 1, r));
    }
    const int64_t k_local = a.heads * a.d / tp();
    set_value(*params[i++],
              column_block(w.w_out.values, kHidden, a.heads * a.d, k_local * tp_rank(), k_local));
    if (c.bias) set_value(*params[i++], w.b_out.values);
  }
};

TEST_P(GptAttention, ForwardBackwardMatchesUnshardedReference) {
  int case_index = 0;
  for (AttnCase c :
       {AttnCase{4, 4, false, true}, AttnCase{4, 4, true, true}, AttnCase{4, 2, false, true},
        AttnCase{4, 2, true, true}, AttnCase{4, 1, true, false}}) {
    // Every other case recomputes the attention core in backward (selective recomputation):
    // the same numbers from a saved state without the attention output.
    const bool recompute_core = case_index++ % 2 == 1;
    SCOPED_TRACE(describe(c) + (recompute_core ? " recompute_core" : ""));
    const AttnDims a = dims_of(c);
    ParallelAttentionConfig cfg = config(c);
    cfg.recompute_core = recompute_core;
    ParallelAttention layer(ctx(), cfg);
    EXPECT_EQ(layer.local_heads(), c.heads / tp());
    EXPECT_EQ(layer.local_kv_heads(), c.kv_heads % tp() == 0 ? c.kv_heads / tp() : 1);
    const AttnWeights w = weights(a, 71);
    load(layer, a, c, w);
    std::vector<std::vector<double>> grad0;
    uint64_t seed = 80;
    for (Parameter* p : layer.parameters()) grad0.push_back(randomize_grad(*p, seed++));
    Global x = global(Shape({kTokens, kHidden}), 76), dy = global(Shape({kTokens, kHidden}), 77);

    // Reference forward, rounding to the layer's dtype wherever it stores an activation.
    const int64_t cols = a.qkv_cols(), ctx_cols = a.heads * a.d;
    std::vector<double> qkv =
        reference_matmul(x.values, w.w_qkv.values, kTokens, cols, kHidden, false, true);
    if (c.bias) {
      for (size_t i = 0; i < qkv.size(); ++i) qkv[i] += w.b_qkv.values[i % cols];
    }
    qkv = rnd(qkv);
    if (c.rotary) {
      reference_rope(qkv, a, kSeq, kBatch, 0, false);
      qkv = rnd(qkv);
    }
    std::vector<double> probs;
    const std::vector<double> context = rnd(reference_attention(qkv, a, kSeq, kBatch, &probs));
    std::vector<double> y =
        reference_matmul(context, w.w_out.values, kTokens, kHidden, ctx_cols, false, true);
    if (c.bias) {
      for (size_t i = 0; i < y.size(); ++i) y[i] += w.b_out.values[i % kHidden];
    }

    ParallelAttention::Saved saved;
    Tensor out = layer.forward(x.tensor, kSeq, kBatch, saved);
    ASSERT_EQ(out.shape(), Shape({kTokens, kHidden}));
    expect_close(out, y, "attention output");
    EXPECT_TRUE(saved.lse.defined());
    EXPECT_EQ(saved.lse.shape(), Shape({kBatch, layer.local_heads(), kSeq}));
    EXPECT_EQ(saved.context.defined(), !recompute_core);

    // Reference backward.
    const std::vector<double> d_context =
        rnd(reference_matmul(dy.values, w.w_out.values, kTokens, ctx_cols, kHidden, false, false));
    std::vector<double> d_qkv =
        rnd(reference_attention_backward(d_context, qkv, probs, a, kSeq, kBatch));
    if (c.rotary) {
      reference_rope(d_qkv, a, kSeq, kBatch, 0, true);
      d_qkv = rnd(d_qkv);
    }
    const std::vector<double> dx =
        reference_matmul(d_qkv, w.w_qkv.values, kTokens, kHidden, cols, false, false);
    const std::vector<double> dw_qkv =
        reference_matmul(d_qkv, x.values, cols, kHidden, kTokens, true, false);
    const std::vector<double> db_qkv = column_sums(d_qkv, kTokens, cols);
    const std::vector<double> dw_out =
        reference_matmul(dy.values, context, kHidden, ctx_cols, kTokens, true, false);

    Tensor grad_x = layer.backward(dy.tensor, saved);
    ASSERT_EQ(grad_x.shape(), Shape({kTokens, kHidden}));
    expect_close(grad_x, dx, "input grad");
    const std::vector<Parameter*> params = layer.parameters();
    size_t i = 0;
    for (const auto& r : qkv_param_rows(a, tp(), tp_rank())) {
      expect_close(params[i]->grad, add(grad0[i], gather_rows(dw_qkv, kHidden, r)),
                   params[i]->name + " grad");
      ++i;
      if (c.bias) {
        expect_close(params[i]->grad, add(grad0[i], gather_rows(db_qkv, 1, r)),
                     params[i]->name + " grad");
        ++i;
      }
    }
    const int64_t k_local = ctx_cols / tp();
    expect_close(
        params[i]->grad,
        add(grad0[i], column_block(dw_out, kHidden, ctx_cols, k_local * tp_rank(), k_local)),
        params[i]->name + " grad");
    ++i;
    if (c.bias) {
      expect_close(params[i]->grad, add(grad0[i], column_sums(dy.values, kTokens, kHidden)),
                   params[i]->name + " grad");
    }
  }
}

TEST_P(GptAttention, InitIsTheSameGlobalTensorAtEveryTpSize) {
  for (AttnCase c :
       {AttnCase{4, 4, false, true}, AttnCase{4, 2, false, true}, AttnCase{4, 1, false, true}}) {
    SCOPED_TRACE(describe(c));
    const AttnDims a = dims_of(c);
    ParallelAttentionConfig cfg = config(c);
    cfg.seed = 99;
    ParallelAttention layer(ctx(), cfg);
    auto self = make_test_self();
    ParallelAttention ref(ParallelContext{*cpu_, *self}, cfg);  // TP=1: one QKV tensor
    const std::vector<Parameter*> params = layer.parameters(), ref_params = ref.parameters();
    ASSERT_EQ(ref_params.size(), 4u);
    const std::vector<double> qkv_full = to_host(*cpu_, ref_params[0]->value);
    const auto rows = qkv_param_rows(a, tp(), tp_rank());
    ASSERT_EQ(params.size(), 2 * (rows.size() + 1));
    for (size_t j = 0; j < rows.size(); ++j) {
      EXPECT_EQ(to_host(*cpu_, params[2 * j]->value), gather_rows(qkv_full, kHidden, rows[j]))
          << params[2 * j]->name;
    }
    const int64_t k_local = a.heads * a.d / tp();
    Parameter& proj = *params[2 * rows.size()];
    EXPECT_EQ(to_host(*cpu_, proj.value),
              column_block(to_host(*cpu_, ref_params[2]->value), kHidden, a.heads * a.d,
                           k_local * tp_rank(), k_local));
    EXPECT_EQ(proj.partition_dim, 1);
    EXPECT_EQ(params.back()->replica_count, tp());  // the output bias: replicated
    if (rows.size() == 2) {  // replicated kv: the key/value parameters say who shares them
      const int ranks_per_group = tp() / static_cast<int>(c.kv_heads);
      for (Parameter* p : {params[2], params[3]}) {
        EXPECT_EQ(p->replica_count, ranks_per_group) << p->name;
        EXPECT_EQ(p->partition_count, c.kv_heads) << p->name;
        EXPECT_EQ(p->partition_index, tp_rank() / ranks_per_group) << p->name;
        EXPECT_EQ(p->global_shape[0], 2 * c.kv_heads * a.d) << p->name;
      }
      EXPECT_EQ(params[0]->replica_count, 1);
      EXPECT_EQ(params[0]->global_shape, Shape({c.heads * a.d, kHidden}));
    } else {
      EXPECT_EQ(params[0]->global_shape, Shape({a.qkv_cols(), kHidden}));
      EXPECT_EQ(params[0]->replica_count, 1);
    }
  }
}

TEST_P(GptAttention, KvCacheGenerationMatchesFullForward) {
  for (AttnCase c :
       {AttnCase{4, 4, true, true}, AttnCase{4, 2, false, true}, AttnCase{4, 2, true, true}}) {
    SCOPED_TRACE(describe(c));
    const AttnDims a = dims_of(c);
    ParallelAttention layer(ctx(), config(c));
    load(layer, a, c, weights(a, 91));
    Global x = global(Shape({kTokens, kHidden}), 96);
    const std::vector<double> y_full = to_host(*cpu_, layer.forward(x.tensor, kSeq, kBatch));

    constexpr int64_t kPrefill = 3;
    ParallelAttention::KVCache cache = layer.new_cache(kBatch, kSeq + 2);
    Tensor y =
        layer.forward_cached(x.tensor.view().rows(0, kPrefill * kBatch), kPrefill, kBatch, cache);
    ASSERT_EQ(y.shape(), Shape({kPrefill * kBatch, kHidden}));
    expect_close(y,
                 std::vector<double>(y_full.begin(), y_full.begin() + kPrefill * kBatch * kHidden),
                 "prefill");
    for (int64_t s = kPrefill; s < kSeq; ++s) {
      Tensor step =
          layer.forward_cached(x.tensor.view().rows(s * kBatch, kBatch), 1, kBatch, cache);
      expect_close(step,
                   std::vector<double>(y_full.begin() + s * kBatch * kHidden,
                                       y_full.begin() + (s + 1) * kBatch * kHidden),
                   "decode step " + std::to_string(s));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(TpAndDType, GptBlocksTest, WEFT_TP_SIZES_AND_DTYPES, tp_dtype_name);
INSTANTIATE_TEST_SUITE_P(TpAndDType, GptAttention, WEFT_TP_SIZES_AND_DTYPES, tp_dtype_name);

// ---------------------------------------------------------------------------------------------
// Bad input: a weft::Error naming the values on every rank, and no rank left in a collective.

class GptBlocksErrors : public ::testing::Test {
 protected:
  void SetUp() override { grid_ = std::make_unique<ParallelGrid>(world(), world().size()); }
  int tp() const { return grid_->tp_size(); }
  ParallelContext ctx() { return ParallelContext{*cpu_, grid_->tp()}; }
  std::unique_ptr<Backend> cpu_ = make_test_backend();  // the engine WEFT_TEST_BACKEND names
  std::unique_ptr<ParallelGrid> grid_;
};

TEST_F(GptBlocksErrors, AttentionConfiguration) {
  ParallelAttentionConfig c;
  c.hidden = 18;
  c.heads = 4;
  expect_error_on_every_rank([&] { ParallelAttention layer(ctx(), c); },
                             {"hidden (18)", "heads (4)"});
  c.hidden = 16;
  c.kv_heads = 3;
  expect_error_on_every_rank([&] { ParallelAttention layer(ctx(), c); },
                             {"heads (4)", "kv_heads (3)"});
  c.kv_heads = -1;
  expect_error_on_every_rank([&] { ParallelAttention layer(ctx(), c); }, {"kv_heads (-1)"});
  c.kv_heads = 0;
  c.hidden = 12;  // head_dim 3
  c.rotary = true;
  expect_error_on_every_rank([&] { ParallelAttention layer(ctx(), c); }, {"even head_dim", "= 3"});
  if (tp() > 1) {
    ParallelAttentionConfig h;
    h.heads = tp() + 1;
    h.hidden = 2 * h.heads;
    expect_error_on_every_rank([&] { ParallelAttention layer(ctx(), h); },
                               {"heads (" + std::to_string(tp() + 1) + ")",
                                "tensor-parallel size (" + std::to_string(tp()) + ")"});
  }
  if (tp() == 4) {  // 6 kv heads on 4 ranks: neither splits evenly nor shares evenly
    ParallelAttentionConfig k;
    k.hidden = 24;
    k.heads = 12;
    k.kv_heads = 6;
    expect_error_on_every_rank([&] { ParallelAttention layer(ctx(), k); },
                               {"kv_heads (6)", "tensor-parallel size (4)"});
  }
}

TEST_F(GptBlocksErrors, AttentionInputs) {
  ParallelAttentionConfig c;
  c.hidden = 16;
  c.heads = 4;
  ParallelAttention layer(ctx(), c);
  Tensor x = random_tensor(*cpu_, Shape({10, 16}), DType::kF32, 1);
  expect_error_on_every_rank([&] { layer.forward(x, 3, 2); }, {"[10, 16]", "= 6"});
  Tensor bf = random_tensor(*cpu_, Shape({6, 16}), DType::kBF16, 2);
  expect_error_on_every_rank([&] { layer.forward(bf, 3, 2); }, {"bf16", "f32"});
  ParallelAttention::Saved empty;
  expect_error_on_every_rank([&] { layer.backward(x, empty); }, {"forward"});
  ParallelAttention::KVCache empty_cache;
  expect_error_on_every_rank([&] { layer.forward_cached(x, 5, 2, empty_cache); }, {"new_cache"});
  ParallelAttention::KVCache cache = layer.new_cache(2, 4);
  expect_error_on_every_rank([&] { layer.forward_cached(x, 5, 2, cache); }, {"capacity (4)"});
  ParallelAttention::KVCache wrong_batch = layer.new_cache(3, 8);
  expect_error_on_every_rank([&] { layer.forward_cached(x, 5, 2, wrong_batch); },
                             {"batch (2)", "cache's batch (3)"});
}

TEST_F(GptBlocksErrors, EmbeddingInputs) {
  VocabParallelEmbeddingConfig c;
  c.vocab_size = 50;
  c.hidden = 8;
  c.pad_multiple = 4;
  VocabParallelEmbedding emb(ctx(), c);
  Tensor out_of_range = ids_tensor(*cpu_, {3, 50, 7});
  expect_error_on_every_rank([&] { emb.forward(out_of_range); }, {"ids[1] = 50", "[0, 50)"});
  Tensor negative = ids_tensor(*cpu_, {-1});
  expect_error_on_every_rank([&] { emb.forward(negative); }, {"ids[0] = -1"});
  Tensor float_ids = random_tensor(*cpu_, Shape({4}), DType::kF32, 3);
  expect_error_on_every_rank([&] { emb.forward(float_ids); }, {"f32", "i32"});
  Tensor h = random_tensor(*cpu_, Shape({4, 9}), DType::kF32, 4);
  expect_error_on_every_rank([&] { emb.lm_head_forward(h); }, {"[4, 9]", "8"});
  c.vocab_size = 0;
  expect_error_on_every_rank([&] { VocabParallelEmbedding bad(ctx(), c); }, {"vocab_size (0)"});

  VocabParallelCrossEntropy ce(ctx());
  const int64_t v_local = padded_vocab_size(50, 4, tp()) / tp();
  Tensor logits = random_tensor(*cpu_, Shape({3, v_local}), DType::kF32, 5);
  Tensor targets = ids_tensor(*cpu_, {1, 2, 60});
  expect_error_on_every_rank([&] { ce.forward(logits, targets, v_local * grid_->tp_rank(), 50); },
                             {"targets[2] = 60", "[0, 50)"});
  Tensor short_targets = ids_tensor(*cpu_, {1, 2});
  expect_error_on_every_rank(
      [&] { ce.forward(logits, short_targets, v_local * grid_->tp_rank(), 50); }, {"3 rows"});
  VocabParallelCrossEntropy::Saved empty;
  expect_error_on_every_rank([&] { ce.backward({1.0f}, empty); },
                             {"backward called before forward"});
}

}  // namespace
}  // namespace weft::testing
