// CpuBackend's causal attention as FlashAttention-2-style tiled kernels (Dao, 2023).
//
// Forward: one task per (batch, head, block of queries) streams the key blocks up to the
// diagonal, keeping each row's running max and sum (online softmax), and saves the rows'
// log-sum-exp. Backward: one task per (batch, head) walks the (query block, key block) tiles on
// and below the diagonal, recomputes the probabilities from the log-sum-exp and accumulates dQ,
// dK and dV in f32; a last pass sums each kv group's dK and dV over its query heads in head
// order. The keys and values of a group are gathered once into dense panels that all its query
// heads read (grouped-query attention shares them). The KV-cache decode path runs the same
// forward over the cache. The tile products go through oneDNN matmul (OneDnn::tile_matmul) in
// the activations' dtype where oneDNN has a native kernel for it on this CPU, else in f32; the
// softmax steps are SIMD loops. Nothing grows with seq^2, and every sum runs in an order fixed by
// the shapes, so results do not depend on the thread count.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "backend/attention_dims.hpp"
#include "backend/cpu/cpu_backend.hpp"
#include "backend/cpu/onednn.hpp"
#include "backend/dtype_dispatch.hpp"
#include "backend/pointwise_math.hpp"
#include "weft/error.hpp"

// The softmax loops are compiled twice, for AVX2 + FMA and for the baseline, and picked at load
// time: the library itself is built for the baseline x86-64.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define WEFT_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define WEFT_SIMD_CLONES
#endif

namespace weft {

namespace {

// Tile sizes: large enough that a tile product amortizes oneDNN's per-call cost, small enough
// that a task's tiles stay in L2.
constexpr int64_t kQueryBlock = 128;
constexpr int64_t kKeyBlock = 128;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Below this many score multiply-adds (b h s^2 d) a call stays on one thread: the fork and the
// barriers cost more.
constexpr int64_t kParallelWork = 1 << 20;

// Keeps a small call on one thread, oneDNN's tile products included (outside an active parallel
// region they would fork on their own): lowers this thread's OpenMP thread count for the scope.
class OneThreadWhenSmall {
 public:
  explicit OneThreadWhenSmall(int64_t work) : saved_(omp_get_max_threads()) {
    if (work < kParallelWork) omp_set_num_threads(1);
  }
  ~OneThreadWhenSmall() { omp_set_num_threads(saved_); }
  OneThreadWhenSmall(const OneThreadWhenSmall&) = delete;
  OneThreadWhenSmall& operator=(const OneThreadWhenSmall&) = delete;

 private:
  int saved_;
};

// max over x[0, n), n > 0.
WEFT_SIMD_CLONES float max_of(const float* x, int64_t n) {
  float m = x[0];
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

// exp(x) for x <= 0 (larger x are not passed): 2^k e^r with k = round(x / ln 2), |r| <= ln2 / 2,
// e^r by its degree-6 Taylor-like polynomial (Cephes' expf coefficients); relative error about
// 2e-7. Written without calls or branches so the loops around it vectorize.
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;  // below, 2^k would leave the normal range; NaN stays NaN
  const float k = (x * 1.44269504f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = x - k * 0.693359375f + k * 2.12194440e-4f;      // x - k ln2, two parts
  float q = 1.9875691500e-4f;
  q = q * r + 1.3981999507e-3f;
  q = q * r + 8.3334519073e-3f;
  q = q * r + 4.1665795894e-2f;
  q = q * r + 1.6666665459e-1f;
  q = q * r + 5.0000001201e-1f;
  q = q * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float two_k;
  std::memcpy(&two_k, &bits, sizeof two_k);
  return q * two_k;
}

// p[j] = exp(s[j] - shift) for j < n (p may be s); returns the sum.
WEFT_SIMD_CLONES float exp_shifted(float* p, const float* s, int64_t n, float shift) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    p[j] = exp_nonpositive(s[j] - shift);
    sum += p[j];
  }
  return sum;
}

WEFT_SIMD_CLONES void scale_in_place(float* x, int64_t n, float a) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) x[j] *= a;
}

// The backward's probabilities of one row from its scores: p[j] = exp(p[j] - lse) for j < n;
// returns sum_j p[j] dp[j].
WEFT_SIMD_CLONES float probs_from_scores(float* p, const float* dp, int64_t n, float lse) {
  float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
  for (int64_t j = 0; j < n; ++j) {
    p[j] = exp_nonpositive(p[j] - lse);
    dot += p[j] * dp[j];
  }
  return dot;
}

// dS = P (dP - delta) in place of dP, for j < n.
WEFT_SIMD_CLONES void softmax_grad(const float* p, float* dp, int64_t n, float delta) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dp[j] = p[j] * (dp[j] - delta);
}

// Exceptions must not leave an OpenMP region: the first one is kept and rethrown after it.
class RegionError {
 public:
  template <typename Fn>
  void run(Fn&& fn) {
    try {
      fn();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
  }
  void rethrow() {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::mutex mutex_;
  std::exception_ptr error_;
};

template <typename Tc>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<Tc, float>) return DType::kF32;
  if constexpr (std::is_same_v<Tc, bf16_t>) return DType::kBF16;
  return DType::kF16;
}

// rows x cols of src (row r at src + r * stride) into dense dst, converted to Tc.
template <typename Tc, typename T>
void gather_rows(Tc* dst, const T* src, int64_t rows, int64_t cols, int64_t stride) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      if constexpr (std::is_same_v<Tc, T>) {
        dst[r * cols + c] = src[r * stride + c];
      } else {
        dst[r * cols + c] = from_float<Tc>(to_float(src[r * stride + c]));
      }
    }
  }
}

// A tile operand in Tc: the f32 buffer itself, or its copy rounded into `tmp`.
template <typename Tc>
const Tc* as_tile_operand(float* f32, Tc* tmp, int64_t n) {
  if constexpr (std::is_same_v<Tc, float>) {
    (void)tmp;
    (void)n;
    return f32;
  } else {
    for (int64_t i = 0; i < n; ++i) tmp[i] = from_float<Tc>(f32[i]);
    return tmp;
  }
}

// Dense [len, head_dim] key and value panels in Tc of every (batch, kv group): panel (b, g)
// starts at (b * kv_heads + g) * stride.
template <typename Tc>
struct KvPanels {
  const Tc* k;
  const Tc* v;
  int64_t stride;
};

// Gathers the keys and values of the `len` positions of qkv into panels [batch, kv_heads, len, d].
template <typename Tc, typename T>
KvPanels<Tc> gather_kv(std::vector<Tc>& k, std::vector<Tc>& v, const T* qkv, const AttentionDims& d,
                       int64_t len, int64_t row_stride, int64_t pos_stride) {
  const int64_t D = d.head_dim, panels = d.batch * d.kv_heads;
  k.resize(static_cast<size_t>(panels * len * D));
  v.resize(k.size());
#pragma omp parallel for schedule(static) if (panels * len * D > 32768)
  for (int64_t bg = 0; bg < panels; ++bg) {
    const int64_t b = bg / d.kv_heads, g = bg % d.kv_heads;
    const T* base = qkv + b * row_stride;
    gather_rows(k.data() + bg * len * D, base + d.k_col(g), len, D, pos_stride);
    gather_rows(v.data() + bg * len * D, base + d.v_col(g), len, D, pos_stride);
  }
  return {k.data(), v.data(), len * D};
}

// Forward over queries i in [0, seq) at absolute positions past + i of qkv's rows (row
// i * batch + b), each attending keys [0, past + i] of its group's panels. Writes out and, when
// lse is not null, lse[b, h, i].
template <typename T, typename Tc>
void flash_forward(OneDnn& dnn, T* out, float* lse, const T* qkv, const AttentionDims& d,
                   const KvPanels<Tc>& kv, int64_t past) {
  const int64_t S = d.seq, B = d.batch, D = d.head_dim, H = d.heads;
  const int64_t q_blocks = (S + kQueryBlock - 1) / kQueryBlock;
  const DType tile_dt = dtype_of<Tc>();
  RegionError errors;
  const OneThreadWhenSmall threads(B * H * S * (past + S) * D);
#pragma omp parallel
  {
    std::vector<Tc> q(kQueryBlock * D),
        p16(std::is_same_v<Tc, float> ? 0 : kQueryBlock * kKeyBlock);
    std::vector<float> s(kQueryBlock * kKeyBlock), o(kQueryBlock * D), m(kQueryBlock),
        l(kQueryBlock);
    // The last query blocks (most keys) first, so the dynamic schedule ends balanced.
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < q_blocks * B * H; ++task) {
      errors.run([&] {
        const int64_t qb = q_blocks - 1 - task / (B * H), bh = task % (B * H);
        const int64_t b = bh / H, h = bh % H, g = h / d.q_per_group;
        const int64_t i0 = qb * kQueryBlock, mq = std::min(kQueryBlock, S - i0);
        gather_rows(q.data(), qkv + (i0 * B + b) * d.qkv_cols + d.q_col(h), mq, D, B * d.qkv_cols);
        const Tc* k_panel = kv.k + (b * d.kv_heads + g) * kv.stride;
        const Tc* v_panel = kv.v + (b * d.kv_heads + g) * kv.stride;
        std::fill(o.begin(), o.begin() + mq * D, 0.0f);
        std::fill(m.begin(), m.end(), kNegInf);
        std::fill(l.begin(), l.end(), 0.0f);
        const int64_t keys_end = past + i0 + mq;  // the block's last row sees keys below this
        for (int64_t j0 = 0; j0 < keys_end; j0 += kKeyBlock) {
          const int64_t n = std::min(kKeyBlock, keys_end - j0);
          OneDnn::Tile qk;
          qk.m = mq, qk.n = n, qk.k = D, qk.tb = true, qk.alpha = d.scale, qk.dtype = tile_dt;
          dnn.tile_matmul(qk, q.data(), k_panel + j0 * D, s.data());
          for (int64_t r = 0; r < mq; ++r) {
            float* row = s.data() + r * n;
            const int64_t seen = std::clamp<int64_t>(past + i0 + r + 1 - j0, 0, n);
            if (seen == 0) {
              std::fill(row, row + n, 0.0f);
              continue;
            }
            const float mx = std::max(m[r], max_of(row, seen));
            const float rescale = m[r] == kNegInf ? 0.0f : std::exp(m[r] - mx);
            l[r] = l[r] * rescale + exp_shifted(row, row, seen, mx);
            std::fill(row + seen, row + n, 0.0f);
            scale_in_place(o.data() + r * D, D, rescale);
            m[r] = mx;
          }
          OneDnn::Tile pv;
          pv.m = mq, pv.n = D, pv.k = n, pv.beta = 1.0f, pv.dtype = tile_dt;
          dnn.tile_matmul(pv, as_tile_operand(s.data(), p16.data(), mq * n), v_panel + j0 * D,
                          o.data());
        }
        for (int64_t r = 0; r < mq; ++r) {
          const float inv = 1.0f / l[r];
          T* orow = out + ((i0 + r) * B + b) * d.out_cols + h * D;
          for (int64_t c = 0; c < D; ++c) orow[c] = from_float<T>(o[r * D + c] * inv);
          if (lse != nullptr) lse[(b * H + h) * S + i0 + r] = m[r] + std::log(l[r]);
        }
      });
    }
  }
  errors.rethrow();
}

// One task per (batch, head), query blocks in order. For each query block, a first pass over its
// key tiles keeps P (recomputed from lse) and dP = dO V^T for the whole block row and sums
// delta_i = sum_j P_ij dP_ij in f32 (not dO . O: the stored out is rounded to the activations'
// dtype, and dP - delta cancels); a second pass forms dS = P (dP - delta) and accumulates dV, dK
// and dQ. The row buffers hold kQueryBlock x seq values each: linear in seq.
template <typename T, typename Tc>
void flash_backward(OneDnn& dnn, T* grad_qkv, const T* grad_out, const T* qkv, const float* lse,
                    const AttentionDims& d) {
  const int64_t S = d.seq, B = d.batch, D = d.head_dim, H = d.heads;
  const DType tile_dt = dtype_of<Tc>();
  std::vector<Tc> k_store, v_store;
  const KvPanels<Tc> kv = gather_kv(k_store, v_store, qkv, d, S, d.qkv_cols, B * d.qkv_cols);
  // Per (batch, head) f32 gradients [B, H, S, D]; every element is written before it is read
  // (the first tile of each block writes with beta 0), so no zero fill.
  const size_t per_head = static_cast<size_t>(S * D), all = static_cast<size_t>(B * H) * per_head;
  std::unique_ptr<float[]> dq(new float[all]), dk(new float[all]), dv(new float[all]);
  RegionError errors;
  const OneThreadWhenSmall threads(B * H * S * S * D);
#pragma omp parallel
  {
    const bool wide = std::is_same_v<Tc, float>;
    const size_t row_block = static_cast<size_t>(std::min(kQueryBlock, S) * S);
    std::vector<Tc> q(per_head), dout(per_head), p16(wide ? 0 : kQueryBlock * kKeyBlock),
        ds16(wide ? 0 : kQueryBlock * kKeyBlock);
    std::vector<float> p_row(row_block), dp_row(row_block), delta(kQueryBlock);
#pragma omp for schedule(dynamic)
    for (int64_t bh = 0; bh < B * H; ++bh) {
      errors.run([&] {
        const int64_t b = bh / H, h = bh % H, g = h / d.q_per_group;
        gather_rows(q.data(), qkv + b * d.qkv_cols + d.q_col(h), S, D, B * d.qkv_cols);
        gather_rows(dout.data(), grad_out + b * d.out_cols + h * D, S, D, B * d.out_cols);
        const float* lse_h = lse + bh * S;
        const Tc* k_panel = kv.k + (b * d.kv_heads + g) * kv.stride;
        const Tc* v_panel = kv.v + (b * d.kv_heads + g) * kv.stride;
        float* dq_h = dq.get() + bh * per_head;
        float* dk_h = dk.get() + bh * per_head;
        float* dv_h = dv.get() + bh * per_head;
        for (int64_t i0 = 0; i0 < S; i0 += kQueryBlock) {
          const int64_t mq = std::min(kQueryBlock, S - i0), keys_end = i0 + mq;
          // Tile (i0, j0) is dense [mq, n] at j0 * mq in the row buffers.
          std::fill(delta.begin(), delta.end(), 0.0f);
          for (int64_t j0 = 0; j0 < keys_end; j0 += kKeyBlock) {
            const int64_t n = std::min(kKeyBlock, keys_end - j0);
            float* p = p_row.data() + j0 * mq;
            float* dp = dp_row.data() + j0 * mq;
            OneDnn::Tile qk;
            qk.m = mq, qk.n = n, qk.k = D, qk.tb = true, qk.alpha = d.scale, qk.dtype = tile_dt;
            dnn.tile_matmul(qk, q.data() + i0 * D, k_panel + j0 * D, p);
            OneDnn::Tile dov = qk;
            dov.alpha = 1.0f;
            dnn.tile_matmul(dov, dout.data() + i0 * D, v_panel + j0 * D, dp);
            for (int64_t r = 0; r < mq; ++r) {
              const int64_t seen = std::clamp<int64_t>(i0 + r + 1 - j0, 0, n);
              delta[r] += probs_from_scores(p + r * n, dp + r * n, seen, lse_h[i0 + r]);
              std::fill(p + r * n + seen, p + (r + 1) * n, 0.0f);
            }
          }
          for (int64_t j0 = 0; j0 < keys_end; j0 += kKeyBlock) {
            const int64_t n = std::min(kKeyBlock, keys_end - j0);
            float* p = p_row.data() + j0 * mq;
            float* ds = dp_row.data() + j0 * mq;
            for (int64_t r = 0; r < mq; ++r) {
              const int64_t seen = std::clamp<int64_t>(i0 + r + 1 - j0, 0, n);
              softmax_grad(p + r * n, ds + r * n, seen, delta[r]);
              std::fill(ds + r * n + seen, ds + (r + 1) * n, 0.0f);
            }
            const Tc* p_tile = as_tile_operand(p, p16.data(), mq * n);
            const Tc* ds_tile = as_tile_operand(ds, ds16.data(), mq * n);
            // Key block j0 is first reached from the query block holding position j0.
            const bool first_for_keys = i0 == j0 / kQueryBlock * kQueryBlock;
            OneDnn::Tile key_grad;  // [n, D] += op(tile)^T [n, mq] x [mq, D]
            key_grad.m = n, key_grad.n = D, key_grad.k = mq, key_grad.ta = true;
            key_grad.beta = first_for_keys ? 0.0f : 1.0f, key_grad.dtype = tile_dt;
            dnn.tile_matmul(key_grad, p_tile, dout.data() + i0 * D, dv_h + j0 * D);
            key_grad.alpha = d.scale;
            dnn.tile_matmul(key_grad, ds_tile, q.data() + i0 * D, dk_h + j0 * D);
            OneDnn::Tile query_grad;  // [mq, D] += dS [mq, n] x K [n, D]
            query_grad.m = mq, query_grad.n = D, query_grad.k = n, query_grad.alpha = d.scale;
            query_grad.beta = j0 == 0 ? 0.0f : 1.0f, query_grad.dtype = tile_dt;
            dnn.tile_matmul(query_grad, ds_tile, k_panel + j0 * D, dq_h + i0 * D);
          }
        }
      });
    }
  }
  errors.rethrow();
  // grad_qkv rows: each head's dQ, and each group's dK and dV summed over its heads in order.
#pragma omp parallel for schedule(static) if (S * B * d.qkv_cols > 32768)
  for (int64_t row = 0; row < S * B; ++row) {
    const int64_t i = row / B, b = row % B;
    T* dst = grad_qkv + row * d.qkv_cols;
    for (int64_t g = 0; g < d.kv_heads; ++g) {
      for (int64_t c = 0; c < D; ++c) {
        float sum_k = 0.0f, sum_v = 0.0f;
        for (int64_t h = g * d.q_per_group; h < (g + 1) * d.q_per_group; ++h) {
          const size_t at = static_cast<size_t>(b * H + h) * per_head + i * D + c;
          dst[d.q_col(h) + c] = from_float<T>(dq[at]);
          sum_k += dk[at];
          sum_v += dv[at];
        }
        dst[d.k_col(g) + c] = from_float<T>(sum_k);
        dst[d.v_col(g) + c] = from_float<T>(sum_v);
      }
    }
  }
}

// Calls fn(T{}, Tc{}) with T the storage type of `dtype` and Tc the type its tiles multiply in.
template <typename Fn>
void dispatch_attention(OneDnn& dnn, DType dtype, Fn&& fn) {
  dispatch_storage(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, float>) {
      fn(T{}, float{});
    } else {
      if (dnn.tile_dtype(dtype) == dtype) {
        fn(T{}, T{});
      } else {
        fn(T{}, float{});
      }
    }
  });
}

}  // namespace

void CpuBackend::do_attention(TensorView out, TensorView lse, TensorView qkv,
                              const AttentionShape& shape) {
  const AttentionDims d = attention_dims(shape);
  dispatch_attention(*onednn_, qkv.dtype, [&](auto t_tag, auto c_tag) {
    using T = decltype(t_tag);
    using Tc = decltype(c_tag);
    const T* x = qkv.as<T>();
    std::vector<Tc> k, v;
    const KvPanels<Tc> kv = gather_kv(k, v, x, d, d.seq, d.qkv_cols, d.batch * d.qkv_cols);
    flash_forward<T, Tc>(*onednn_, out.as<T>(), lse.as<float>(), x, d, kv, 0);
  });
}

void CpuBackend::do_attention_backward(TensorView grad_qkv, TensorView grad_out, TensorView qkv,
                                       TensorView lse, const AttentionShape& shape) {
  const AttentionDims d = attention_dims(shape);
  dispatch_attention(*onednn_, qkv.dtype, [&](auto t_tag, auto c_tag) {
    using T = decltype(t_tag);
    using Tc = decltype(c_tag);
    flash_backward<T, Tc>(*onednn_, grad_qkv.as<T>(), grad_out.as<T>(), qkv.as<T>(),
                          lse.as<float>(), d);
  });
}

void CpuBackend::do_attention_with_cache(TensorView out, TensorView k_cache, TensorView v_cache,
                                         TensorView qkv, const AttentionShape& shape,
                                         int64_t past) {
  const AttentionDims d = attention_dims(shape);
  const int64_t S = d.seq, B = d.batch, D = d.head_dim, capacity = k_cache.shape[2];
  dispatch_attention(*onednn_, qkv.dtype, [&](auto t_tag, auto c_tag) {
    using T = decltype(t_tag);
    using Tc = decltype(c_tag);
    const T* x = qkv.as<T>();
    T *kc = k_cache.as<T>(), *vc = v_cache.as<T>();
    // Cache entry (b, g, position) starts at ((b * kv_heads + g) * capacity + position) * D.
    for (int64_t s = 0; s < S; ++s) {
      for (int64_t b = 0; b < B; ++b) {
        const T* row = x + (s * B + b) * d.qkv_cols;
        for (int64_t g = 0; g < d.kv_heads; ++g) {
          const int64_t at = ((b * d.kv_heads + g) * capacity + past + s) * D;
          std::memcpy(kc + at, row + d.k_col(g), D * sizeof(T));
          std::memcpy(vc + at, row + d.v_col(g), D * sizeof(T));
        }
      }
    }
    // The cache is already in panel layout; it is converted only when the tiles multiply in f32.
    const int64_t len = past + S;
    std::vector<Tc> k, v;
    KvPanels<Tc> kv;
    if constexpr (std::is_same_v<T, Tc>) {
      kv = {kc, vc, capacity * D};
    } else {
      k.resize(static_cast<size_t>(B * d.kv_heads * len * D));
      v.resize(k.size());
      for (int64_t bg = 0; bg < B * d.kv_heads; ++bg) {
        gather_rows(k.data() + bg * len * D, kc + bg * capacity * D, len, D, D);
        gather_rows(v.data() + bg * len * D, vc + bg * capacity * D, len, D, D);
      }
      kv = {k.data(), v.data(), len * D};
    }
    flash_forward<T, Tc>(*onednn_, out.as<T>(), nullptr, x, d, kv, past);
  });
}

}  // namespace weft
