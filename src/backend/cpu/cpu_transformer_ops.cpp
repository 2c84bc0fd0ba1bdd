// CpuBackend's transformer ops: norms, rotary, embedding, cross-entropy pieces,
// SwiGLU, dropout, AdamW (OpenMP loops, f32 arithmetic, double accumulation in reductions).
// The per-row and per-element loops are functions of one dtype compiled for AVX2 and for the
// baseline (WEFT_SIMD_CLONES), with no dispatch inside; exp runs through a vectorizable
// polynomial (exp_nonpositive, relative error 2e-7) instead of libm's expf.
//
// Every reduction runs in an order fixed by the shapes alone (never by the thread count or the
// schedule), so two runs, or runs at different OMP_NUM_THREADS, give bit-identical results.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "backend/backend_checks.hpp"
#include "backend/cpu/cpu_backend.hpp"
#include "backend/cpu/cpu_simd.hpp"
#include "backend/dtype_dispatch.hpp"
#include "backend/pointwise_math.hpp"
#include "weft/error.hpp"

namespace weft {

namespace {

// Below this many elements of work a loop stays on one thread: the fork costs more.
constexpr int64_t kParallelWork = 32768;
// Column block of the parameter-gradient reductions (one block per task, rows in order).
constexpr int64_t kColumnBlock = 64;
// Chunk of the whole-tensor reductions: fixed, so the summation order is too.
constexpr int64_t kReduceChunk = 16384;

template <typename T>
float ld(const T* p, int64_t i) {
  return to_float(p[i]);
}

// The norms' parameter gradients, [cols] sums over rows [0, rows), reduced column block by column
// block: fn(r, c0, c1, acc, acc_dy) adds row r's terms of columns [c0, c1) into acc[0, c1 - c0)
// (and into acc_dy when the second result, dy_sums, is wanted; else acc_dy is null). The rows are
// visited in order for every column, so the sums do not depend on the thread count.
template <typename Fn>
void reduce_norm_grads(int64_t rows, int64_t cols, std::vector<double>& sums,
                       std::vector<double>* dy_sums, Fn&& fn) {
  sums.assign(static_cast<size_t>(cols), 0.0);
  if (dy_sums != nullptr) dy_sums->assign(static_cast<size_t>(cols), 0.0);
  const int64_t blocks = (cols + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static) if (rows * cols > kParallelWork)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t c0 = blk * kColumnBlock, c1 = std::min(cols, c0 + kColumnBlock);
    double acc[kColumnBlock] = {}, acc_dy[kColumnBlock] = {};
    for (int64_t r = 0; r < rows; ++r) fn(r, c0, c1, acc, dy_sums != nullptr ? acc_dy : nullptr);
    for (int64_t c = c0; c < c1; ++c) {
      sums[c] = acc[c - c0];
      if (dy_sums != nullptr) (*dy_sums)[c] = acc_dy[c - c0];
    }
  }
}

// ---- the vectorised loops (one row or one flat range each) -----------------------------------

// LayerNorm of one row: y = (x - mean) * rstd * g + b; returns mean and rstd.
template <typename T>
WEFT_SIMD_CLONES void layer_norm_row(T* y, const T* x, const T* g, const T* b, int64_t cols,
                                     float eps, float* mean, float* rstd) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t c = 0; c < cols; ++c) s += ld(x, c);
  const double mu = s / cols;
  double ss = 0.0;
#pragma omp simd reduction(+ : ss)
  for (int64_t c = 0; c < cols; ++c) {
    const double d = ld(x, c) - mu;
    ss += d * d;
  }
  const float rs = static_cast<float>(1.0 / std::sqrt(ss / cols + eps));
  const float m = static_cast<float>(mu);
#pragma omp simd
  for (int64_t c = 0; c < cols; ++c)
    y[c] = from_float<T>((ld(x, c) - m) * rs * ld(g, c) + ld(b, c));
  *mean = m;
  *rstd = rs;
}

// dx of one LayerNorm row: rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),
// dxhat = dy * gamma.
template <typename T>
WEFT_SIMD_CLONES void layer_norm_backward_row(T* dx, const T* x, const T* dy, const T* g,
                                              int64_t cols, float mu, float rs) {
  double sum_dxhat = 0.0, sum_dxhat_xhat = 0.0;
#pragma omp simd reduction(+ : sum_dxhat, sum_dxhat_xhat)
  for (int64_t c = 0; c < cols; ++c) {
    const float xhat = (ld(x, c) - mu) * rs;
    const float dxhat = ld(dy, c) * ld(g, c);
    sum_dxhat += dxhat;
    sum_dxhat_xhat += static_cast<double>(dxhat) * xhat;
  }
  const float a = static_cast<float>(sum_dxhat / cols);
  const float b = static_cast<float>(sum_dxhat_xhat / cols);
#pragma omp simd
  for (int64_t c = 0; c < cols; ++c) {
    const float xhat = (ld(x, c) - mu) * rs;
    const float dxhat = ld(dy, c) * ld(g, c);
    dx[c] = from_float<T>(rs * (dxhat - a - xhat * b));
  }
}

// RMSNorm of one row: y = x * rstd * g; returns rstd.
template <typename T>
WEFT_SIMD_CLONES float rms_norm_row(T* y, const T* x, const T* g, int64_t cols, float eps) {
  double ss = 0.0;
#pragma omp simd reduction(+ : ss)
  for (int64_t c = 0; c < cols; ++c) {
    const double v = ld(x, c);
    ss += v * v;
  }
  const float rs = static_cast<float>(1.0 / std::sqrt(ss / cols + eps));
#pragma omp simd
  for (int64_t c = 0; c < cols; ++c) y[c] = from_float<T>(ld(x, c) * rs * ld(g, c));
  return rs;
}

// dx of one RMSNorm row: rstd * (dxhat - xhat * mean(dxhat * xhat)), xhat = x * rstd,
// dxhat = dy * gamma.
template <typename T>
WEFT_SIMD_CLONES void rms_norm_backward_row(T* dx, const T* x, const T* dy, const T* g,
                                            int64_t cols, float rs) {
  double sum_dxhat_xhat = 0.0;
#pragma omp simd reduction(+ : sum_dxhat_xhat)
  for (int64_t c = 0; c < cols; ++c) {
    sum_dxhat_xhat += static_cast<double>(ld(dy, c) * ld(g, c)) * (ld(x, c) * rs);
  }
  const float b = static_cast<float>(sum_dxhat_xhat / cols);
#pragma omp simd
  for (int64_t c = 0; c < cols; ++c) {
    const float xhat = ld(x, c) * rs;
    dx[c] = from_float<T>(rs * (ld(dy, c) * ld(g, c) - xhat * b));
  }
}

// The norms' parameter-gradient terms of one row, columns [0, n): acc[c] += dy[c] * xhat[c] with
// xhat = (x - mu) * rs (mu = 0 for RMSNorm), and, when acc_dy is not null, acc_dy[c] += dy[c].
template <typename T>
WEFT_SIMD_CLONES void add_norm_grad_terms(double* acc, double* acc_dy, const T* dy, const T* x,
                                          int64_t n, float mu, float rs) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    acc[c] += static_cast<double>(ld(dy, c)) * ((ld(x, c) - mu) * rs);
  }
  if (acc_dy != nullptr) {
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) acc_dy[c] += ld(dy, c);
  }
}

template <typename T>
WEFT_SIMD_CLONES float row_max_of(const T* x, int64_t n) {
  float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
  for (int64_t j = 0; j < n; ++j) mx = std::max(mx, ld(x, j));
  return mx;
}

// sum_j exp(x[j] - mx), accumulated in double; x[j] <= mx (mx is the row's max over all shards).
template <typename T>
WEFT_SIMD_CLONES double sum_exp_below(const T* x, int64_t n, float mx) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += exp_nonpositive(ld(x, j) - mx);
  return s;
}

// One row of the cross-entropy gradient: (softmax - onehot(target)) * grad_loss, padding zero.
template <typename T>
WEFT_SIMD_CLONES void cross_entropy_grad_row(T* gr, const T* x, int64_t valid, int64_t v_local,
                                             float mx, float inv_sum, int64_t target, float gl) {
#pragma omp simd
  for (int64_t j = 0; j < valid; ++j) {
    const float p = exp_nonpositive(ld(x, j) - mx) * inv_sum;
    gr[j] = from_float<T>(p * gl);
  }
  if (target >= 0 && target < valid) {
    const float p = exp_nonpositive(ld(x, target) - mx) * inv_sum;
    gr[target] = from_float<T>((p - 1.0f) * gl);
  }
  for (int64_t j = valid; j < v_local; ++j) gr[j] = from_float<T>(0.0f);
}

template <typename T>
WEFT_SIMD_CLONES void swiglu_range(T* o, const T* g, const T* u, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float gate = ld(g, i);
    o[i] = from_float<T>(gate * sigmoid_simd(gate) * ld(u, i));
  }
}

// The gradients may alias the inputs: each element's are computed before either store.
template <typename T>
WEFT_SIMD_CLONES void swiglu_backward_range(T* dg, T* du, const T* dy, const T* g, const T* u,
                                            int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float gate = ld(g, i), up = ld(u, i), grad = ld(dy, i);
    const float s = sigmoid_simd(gate);
    const float gg = grad * up * s * (1.0f + gate * (1.0f - s));
    const float gu = grad * gate * s;
    dg[i] = from_float<T>(gg);
    du[i] = from_float<T>(gu);
  }
}

template <typename T>
WEFT_SIMD_CLONES void adamw_range(float* w, float* m, float* v, const T* grad, int64_t n,
                                  AdamWConstants k) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) adamw_update(&w[i], &m[i], &v[i], ld(grad, i), k);
}

// Flat ranges of the elementwise ops are cut into chunks of this many elements, one per task.
constexpr int64_t kFlatChunk = 4096;

// fn(begin, end) over [0, n) in chunks, threaded when n is large.
template <typename Fn>
void for_chunks(int64_t n, Fn&& fn) {
  const int64_t chunks = (n + kFlatChunk - 1) / kFlatChunk;
#pragma omp parallel for schedule(static) if (n > kParallelWork)
  for (int64_t c = 0; c < chunks; ++c) fn(c * kFlatChunk, std::min(n, (c + 1) * kFlatChunk));
}

// Vocabulary columns of a shard that are real entries (the rest are padding): [0, valid).
int64_t valid_vocab_columns(int64_t v_local, int64_t vocab_start, int64_t vocab_size) {
  return std::clamp<int64_t>(vocab_size - vocab_start, 0, v_local);
}

}  // namespace

void CpuBackend::scale(TensorView out, TensorView in, float alpha) {
  check_scale_args(out, in, device());
  const int64_t n = out.numel();
  dispatch_storage(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x = in.as<T>();
    T* y = out.as<T>();
#pragma omp parallel for schedule(static) if (n > kParallelWork)
    for (int64_t i = 0; i < n; ++i) y[i] = from_float<T>(alpha * ld(x, i));
  });
}

void CpuBackend::sum_squares(TensorView out, TensorView in) {
  check_sum_squares_args(out, in, device());
  const int64_t n = in.numel();
  const int64_t chunks = (n + kReduceChunk - 1) / kReduceChunk;
  std::vector<double> partial(static_cast<size_t>(chunks), 0.0);
  dispatch_storage(in.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x = in.as<T>();
#pragma omp parallel for schedule(static) if (n > kParallelWork)
    for (int64_t c = 0; c < chunks; ++c) {
      double s = 0.0;
      const int64_t end = std::min(n, (c + 1) * kReduceChunk);
#pragma omp simd reduction(+ : s)
      for (int64_t i = c * kReduceChunk; i < end; ++i) {
        const double v = ld(x, i);
        s += v * v;
      }
      partial[c] = s;
    }
  });
  double total = 0.0;
  for (double p : partial) total += p;
  out.as<float>()[0] = static_cast<float>(total);
}

// ---- norms ----------------------------------------------------------------------------------

void CpuBackend::layer_norm(TensorView out, TensorView mean, TensorView rstd, TensorView in,
                            TensorView gamma, TensorView beta, float eps) {
  check_layer_norm_args(out, mean, rstd, in, gamma, beta, eps, device());
  const int64_t rows = in.shape.rows(), cols = in.shape.cols();
  dispatch_storage(in.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T *x = in.as<T>(), *g = gamma.as<T>(), *b = beta.as<T>();
    T* y = out.as<T>();
    float *mu = mean.as<float>(), *rs = rstd.as<float>();
#pragma omp parallel for schedule(static) if (rows * cols > kParallelWork)
    for (int64_t r = 0; r < rows; ++r) {
      layer_norm_row(y + r * cols, x + r * cols, g, b, cols, eps, mu + r, rs + r);
    }
  });
}

void CpuBackend::layer_norm_backward(TensorView grad_in, TensorView grad_gamma,
                                     TensorView grad_beta, TensorView grad_out, TensorView in,
                                     TensorView gamma, TensorView mean, TensorView rstd) {
  check_layer_norm_backward_args(grad_in, grad_gamma, grad_beta, grad_out, in, gamma, mean, rstd,
                                 device());
  const int64_t rows = in.shape.rows(), cols = in.shape.cols();
  const float* mu = mean.as<float>();
  const float* rs = rstd.as<float>();
  dispatch_storage(in.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T *x = in.as<T>(), *dy = grad_out.as<T>(), *g = gamma.as<T>();
    T* dx = grad_in.as<T>();
#pragma omp parallel for schedule(static) if (rows * cols > kParallelWork)
    for (int64_t r = 0; r < rows; ++r) {
      layer_norm_backward_row(dx + r * cols, x + r * cols, dy + r * cols, g, cols, mu[r], rs[r]);
    }
    std::vector<double> dgamma, dbeta;
    reduce_norm_grads(rows, cols, dgamma, &dbeta,
                      [&](int64_t r, int64_t c0, int64_t c1, double* acc, double* acc_dy) {
                        const int64_t at = r * cols + c0;
                        add_norm_grad_terms(acc, acc_dy, dy + at, x + at, c1 - c0, mu[r], rs[r]);
                      });
    for (int64_t c = 0; c < cols; ++c) {
      grad_gamma.as<T>()[c] = from_float<T>(static_cast<float>(dgamma[c]));
      grad_beta.as<T>()[c] = from_float<T>(static_cast<float>(dbeta[c]));
    }
  });
}

void CpuBackend::rms_norm(TensorView out, TensorView rstd, TensorView in, TensorView gamma,
                          float eps) {
  check_rms_norm_args(out, rstd, in, gamma, eps, device());
  const int64_t rows = in.shape.rows(), cols = in.shape.cols();
  dispatch_storage(in.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T *x = in.as<T>(), *g = gamma.as<T>();
    T* y = out.as<T>();
    float* rs = rstd.as<float>();
#pragma omp parallel for schedule(static) if (rows * cols > kParallelWork)
    for (int64_t r = 0; r < rows; ++r)
      rs[r] = rms_norm_row(y + r * cols, x + r * cols, g, cols, eps);
  });
}

void CpuBackend::rms_norm_backward(TensorView grad_in, TensorView grad_gamma, TensorView grad_out,
                                   TensorView in, TensorView gamma, TensorView rstd) {
  check_rms_norm_backward_args(grad_in, grad_gamma, grad_out, in, gamma, rstd, device());
  const int64_t rows = in.shape.rows(), cols = in.shape.cols();
  const float* rs = rstd.as<float>();
  dispatch_storage(in.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T *x = in.as<T>(), *dy = grad_out.as<T>(), *g = gamma.as<T>();
    T* dx = grad_in.as<T>();
#pragma omp parallel for schedule(static) if (rows * cols > kParallelWork)
    for (int64_t r = 0; r < rows; ++r) {
      rms_norm_backward_row(dx + r * cols, x + r * cols, dy + r * cols, g, cols, rs[r]);
    }
    std::vector<double> dgamma;
    reduce_norm_grads(rows, cols, dgamma, nullptr,
                      [&](int64_t r, int64_t c0, int64_t c1, double* acc, double* acc_dy) {
                        const int64_t at = r * cols + c0;
                        add_norm_grad_terms(acc, acc_dy, dy + at, x + at, c1 - c0, 0.0f, rs[r]);
                      });
    for (int64_t c = 0; c < cols; ++c) {
      grad_gamma.as<T>()[c] = from_float<T>(static_cast<float>(dgamma[c]));
    }
  });
}

// ---- rotary embedding ------------------------------------------------------------------------

void CpuBackend::rope(TensorView qkv, const AttentionShape& shape, float theta,
                      int64_t position_offset, bool inverse) {
  const AttentionDims d = check_rope_args(qkv, shape, theta, position_offset, device());
  const int64_t S = d.seq, B = d.batch, half = d.head_dim / 2;
  // Angles in double: positions reach 1e5 and more, where an f32 angle loses the low digits.
  std::vector<float> cos_t(S * half), sin_t(S * half);
  for (int64_t s = 0; s < S; ++s) {
    for (int64_t i = 0; i < half; ++i) {
      const double inv_freq =
          std::pow(static_cast<double>(theta), -2.0 * i / static_cast<double>(d.head_dim));
      const double angle = static_cast<double>(position_offset + s) * inv_freq;
      cos_t[s * half + i] = static_cast<float>(std::cos(angle));
      sin_t[s * half + i] = static_cast<float>(inverse ? -std::sin(angle) : std::sin(angle));
    }
  }
  const int64_t rotated_heads = d.heads + d.kv_heads;
  dispatch_storage(qkv.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* x = qkv.as<T>();
#pragma omp parallel for schedule(static) if (S * B * rotated_heads * d.head_dim > kParallelWork)
    for (int64_t r = 0; r < S * B; ++r) {
      const int64_t s = r / B;
      const float *cs = cos_t.data() + s * half, *sn = sin_t.data() + s * half;
      for (int64_t head = 0; head < rotated_heads; ++head) {
        const int64_t col = head < d.heads ? d.q_col(head) : d.k_col(head - d.heads);
        T* p = x + r * d.qkv_cols + col;
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = ld(p, i), x2 = ld(p, i + half);
          p[i] = from_float<T>(x1 * cs[i] - x2 * sn[i]);
          p[i + half] = from_float<T>(x2 * cs[i] + x1 * sn[i]);
        }
      }
    }
  });
}

// ---- embedding ------------------------------------------------------------------------------

void CpuBackend::embedding(TensorView out, TensorView ids, TensorView table, int64_t vocab_start) {
  check_embedding_args(out, ids, table, vocab_start, device());
  const int64_t tokens = ids.numel(), rows = table.shape.rows(), hidden = table.shape.cols();
  const int32_t* id = ids.as<int32_t>();
  const size_t row_bytes = static_cast<size_t>(hidden) * dtype_size(table.dtype);
  const char* tab = static_cast<const char*>(table.data);
  char* o = static_cast<char*>(out.data);
  // The copy needs no arithmetic; zeros are all-zero bits in every floating dtype.
#pragma omp parallel for schedule(static) if (tokens * hidden > kParallelWork)
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t local = static_cast<int64_t>(id[t]) - vocab_start;
    if (local >= 0 && local < rows) {
      std::memcpy(o + t * row_bytes, tab + local * row_bytes, row_bytes);
    } else {
      std::memset(o + t * row_bytes, 0, row_bytes);
    }
  }
}

void CpuBackend::embedding_backward(TensorView grad_table, TensorView ids, TensorView grad_out,
                                    int64_t vocab_start) {
  check_embedding_backward_args(grad_table, ids, grad_out, vocab_start, device());
  const int64_t tokens = ids.numel(), rows = grad_table.shape.rows();
  const int64_t hidden = grad_table.shape.cols();
  const int32_t* id = ids.as<int32_t>();
  // (table row, token) for the tokens in range, sorted: each table row becomes one task that
  // adds its tokens' gradients in token order. No two tasks touch one row, and the order is fixed.
  std::vector<std::pair<int64_t, int64_t>> hits;
  hits.reserve(static_cast<size_t>(tokens));
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t local = static_cast<int64_t>(id[t]) - vocab_start;
    if (local >= 0 && local < rows) hits.emplace_back(local, t);
  }
  std::sort(hits.begin(), hits.end());
  std::vector<int64_t> starts;
  for (size_t i = 0; i < hits.size(); ++i) {
    if (i == 0 || hits[i].first != hits[i - 1].first) starts.push_back(static_cast<int64_t>(i));
  }
  starts.push_back(static_cast<int64_t>(hits.size()));
  const int64_t groups = static_cast<int64_t>(starts.size()) - 1;
  dispatch_storage(grad_table.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* gt = grad_table.as<T>();
    const T* dy = grad_out.as<T>();
#pragma omp parallel for schedule( \
    dynamic, 16) if (static_cast <int64_t>(hits.size()) * hidden > kParallelWork)
    for (int64_t grp = 0; grp < groups; ++grp) {
      T* row = gt + hits[starts[grp]].first * hidden;
      std::vector<float> acc(hidden);
      for (int64_t c = 0; c < hidden; ++c) acc[c] = ld(row, c);
      for (int64_t i = starts[grp]; i < starts[grp + 1]; ++i) {
        const T* g = dy + hits[i].second * hidden;
        for (int64_t c = 0; c < hidden; ++c) acc[c] += ld(g, c);
      }
      for (int64_t c = 0; c < hidden; ++c) row[c] = from_float<T>(acc[c]);
    }
  });
}

// ---- vocab-parallel cross-entropy pieces ----------------------------------------------------

void CpuBackend::vocab_max(TensorView row_max, TensorView logits, int64_t vocab_start,
                           int64_t vocab_size) {
  check_vocab_max_args(row_max, logits, vocab_start, vocab_size, device());
  const int64_t tokens = logits.shape.rows(), v_local = logits.shape.cols();
  const int64_t valid = valid_vocab_columns(v_local, vocab_start, vocab_size);
  dispatch_storage(logits.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x = logits.as<T>();
#pragma omp parallel for schedule(static) if (tokens * valid > kParallelWork)
    for (int64_t t = 0; t < tokens; ++t) {
      row_max.as<float>()[t] = row_max_of(x + t * v_local, valid);
    }
  });
}

void CpuBackend::vocab_sum_exp_and_target(TensorView sum_exp, TensorView target_logit,
                                          TensorView logits, TensorView row_max, TensorView targets,
                                          int64_t vocab_start, int64_t vocab_size) {
  check_vocab_sum_exp_and_target_args(sum_exp, target_logit, logits, row_max, targets, vocab_start,
                                      vocab_size, device());
  const int64_t tokens = logits.shape.rows(), v_local = logits.shape.cols();
  const int64_t valid = valid_vocab_columns(v_local, vocab_start, vocab_size);
  const float* mx = row_max.as<float>();
  const int32_t* tgt = targets.as<int32_t>();
  dispatch_storage(logits.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x = logits.as<T>();
#pragma omp parallel for schedule(static) if (tokens * valid > kParallelWork)
    for (int64_t t = 0; t < tokens; ++t) {
      const T* xr = x + t * v_local;
      sum_exp.as<float>()[t] = static_cast<float>(sum_exp_below(xr, valid, mx[t]));
      const int64_t local = static_cast<int64_t>(tgt[t]) - vocab_start;
      target_logit.as<float>()[t] = local >= 0 && local < valid ? ld(xr, local) : 0.0f;
    }
  });
}

void CpuBackend::vocab_cross_entropy_backward(TensorView grad_logits, TensorView logits,
                                              TensorView row_max, TensorView sum_exp,
                                              TensorView targets, TensorView grad_loss,
                                              int64_t vocab_start, int64_t vocab_size) {
  check_vocab_cross_entropy_backward_args(grad_logits, logits, row_max, sum_exp, targets, grad_loss,
                                          vocab_start, vocab_size, device());
  const int64_t tokens = logits.shape.rows(), v_local = logits.shape.cols();
  const int64_t valid = valid_vocab_columns(v_local, vocab_start, vocab_size);
  const float *mx = row_max.as<float>(), *se = sum_exp.as<float>(), *gl = grad_loss.as<float>();
  const int32_t* tgt = targets.as<int32_t>();
  dispatch_storage(logits.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x = logits.as<T>();
#pragma omp parallel for schedule(static) if (tokens * v_local > kParallelWork)
    for (int64_t t = 0; t < tokens; ++t) {
      cross_entropy_grad_row(grad_logits.as<T>() + t * v_local, x + t * v_local, valid, v_local,
                             mx[t], 1.0f / se[t], static_cast<int64_t>(tgt[t]) - vocab_start,
                             gl[t]);
    }
  });
}

// ---- SwiGLU, dropout, AdamW -----------------------------------------------------------------

void CpuBackend::swiglu(TensorView out, TensorView gate, TensorView up) {
  check_swiglu_args(out, gate, up, device());
  const int64_t n = out.numel();
  dispatch_storage(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T *g = gate.as<T>(), *u = up.as<T>();
    T* o = out.as<T>();
    for_chunks(n, [&](int64_t i0, int64_t i1) { swiglu_range(o + i0, g + i0, u + i0, i1 - i0); });
  });
}

void CpuBackend::swiglu_backward(TensorView grad_gate, TensorView grad_up, TensorView grad_out,
                                 TensorView gate, TensorView up) {
  check_swiglu_backward_args(grad_gate, grad_up, grad_out, gate, up, device());
  const int64_t n = gate.numel();
  dispatch_storage(gate.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T *g = gate.as<T>(), *u = up.as<T>(), *dy = grad_out.as<T>();
    T *dg = grad_gate.as<T>(), *du = grad_up.as<T>();
    for_chunks(n, [&](int64_t i0, int64_t i1) {
      swiglu_backward_range(dg + i0, du + i0, dy + i0, g + i0, u + i0, i1 - i0);
    });
  });
}

void CpuBackend::dropout(TensorView out, TensorView in, float probability, uint64_t seed,
                         uint64_t offset) {
  check_dropout_args(out, in, probability, device());
  const int64_t n = out.numel();
  const float keep_scale = 1.0f / (1.0f - probability);
  dispatch_storage(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x = in.as<T>();
    T* o = out.as<T>();
#pragma omp parallel for schedule(static) if (n > kParallelWork / 8)
    for (int64_t i = 0; i < n; ++i) {
      const bool keep = dropout_keep(seed, offset, static_cast<uint64_t>(i), probability);
      o[i] = from_float<T>(keep ? ld(x, i) * keep_scale : 0.0f);
    }
  });
}

void CpuBackend::adamw(TensorView master, TensorView m, TensorView v, TensorView grad,
                       const AdamWStep& step) {
  check_adamw_args(master, m, v, grad, step, device());
  const int64_t n = master.numel();
  const AdamWConstants k = adamw_constants(step);
  float *w = master.as<float>(), *mm = m.as<float>(), *vv = v.as<float>();
  dispatch_storage(grad.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* gr = grad.as<T>();
    for_chunks(n, [&](int64_t i0, int64_t i1) {
      adamw_range(w + i0, mm + i0, vv + i0, gr + i0, i1 - i0, k);
    });
  });
}

}  // namespace weft
