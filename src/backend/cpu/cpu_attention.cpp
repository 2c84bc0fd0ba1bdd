// CpuBackend's causal attention as FlashAttention-2-style tiled kernels (Dao, 2023).
//
// Forward: one task per (batch, head, block of queries) streams the key tiles up to the
// diagonal, keeping each row's running max and sum (online softmax), and saves the rows'
// log-sum-exp. Backward: one task per (batch, head) walks the (query block, key tile) pairs on
// and below the diagonal, recomputes the probabilities from the log-sum-exp and accumulates dQ,
// dK and dV in f32; a last pass sums each kv group's dK and dV over its query heads in head
// order. Tiles above the diagonal are never visited, and diagonal tiles skip the query rows that
// see none of their keys. The KV-cache decode path runs the same forward over the cache.
//
// The tile products go through OneDnn::tile_matmul (oneDNN's sgemm for f32) in the activations'
// dtype where oneDNN has a native kernel for it on this CPU, else in f32. When the activations
// already are in that dtype, Q, K, V and dO are read in place from the strided activations (the
// query heads of a kv group read the same key and value rows: grouped-query attention shares
// them) and f32 dQ is written straight into grad_qkv; otherwise keys and values are converted
// once per call into dense panels that all heads of a group read. The softmax steps are SIMD
// loops. Nothing grows with seq^2, and every sum runs in an order fixed by the shapes, so results
// do not depend on the thread count.
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

#include "backend/backend_checks.hpp"
#include "backend/cpu/cpu_backend.hpp"
#include "backend/cpu/cpu_simd.hpp"
#include "backend/cpu/onednn.hpp"
#include "backend/dtype_dispatch.hpp"
#include "backend/pointwise_math.hpp"
#include "weft/error.hpp"

namespace weft {

namespace {

// Tile sizes (measured on an AVX2 EPYC, head_dim 64, single thread; 64 to 256 queries and 32 to
// 128 keys were within a few percent of each other): a query block of 128 rows; below the
// diagonal, spans of up to 256 keys (one product packs the query block once for all of them; 64-key
// tiles there ran 10-15% slower); on the diagonal, 64-key tiles that skip the rows seeing none of
// their keys, so the causal mask wastes a quarter of the diagonal block square, not half.
constexpr int64_t kQueryBlock = 128;
constexpr int64_t kKeyBlock = 64;
constexpr int64_t kKeySpan = 256;
static_assert(kQueryBlock % kKeyBlock == 0, "diagonal tiles must not straddle query blocks");

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

// Rows of a tile operand in Tc: row r at p + r * ld.
template <typename Tc>
struct Rows {
  const Tc* p;
  int64_t ld;
  const Tc* row(int64_t r) const { return p + r * ld; }
};

// The [len, head_dim] key and value panels of every (batch, kv group) in Tc: the panel of (b, g)
// starts at b * batch_stride + g * group_stride and its rows are ld apart. When the activations
// are already in Tc the panels are the qkv (or cache) memory itself: no copy, and the query heads
// of a group read the same keys and values.
template <typename Tc>
struct KvPanels {
  const Tc* k;
  const Tc* v;
  int64_t batch_stride, group_stride, ld;
  Rows<Tc> keys(int64_t b, int64_t g) const {
    return {k + b * batch_stride + g * group_stride, ld};
  }
  Rows<Tc> values(int64_t b, int64_t g) const {
    return {v + b * batch_stride + g * group_stride, ld};
  }
};

// The keys and values of the `len` positions of qkv: in place when T is Tc, else dense panels
// [batch, kv_heads, len, d] of Tc in k and v (sized here, filled by fill_kv_panels) that all query
// heads of a group read.
template <typename Tc, typename T>
KvPanels<Tc> kv_panels(std::vector<Tc>& k, std::vector<Tc>& v, const T* qkv, const AttentionDims& d,
                       int64_t len) {
  const int64_t D = d.head_dim;
  if constexpr (std::is_same_v<T, Tc>) {
    (void)k, (void)v, (void)len;
    return {qkv + d.k_col(0), qkv + d.v_col(0), d.qkv_cols, (d.q_per_group + 2) * D,
            d.batch * d.qkv_cols};
  } else {
    (void)qkv;
    k.resize(static_cast<size_t>(d.batch * d.kv_heads * len * D));
    v.resize(k.size());
    return {k.data(), v.data(), d.kv_heads * len * D, len * D, D};
  }
}

// Converts the keys and values of qkv's `len` positions into the panels kv_panels sized (nothing
// to do when T is Tc). An orphaned `omp for`: called inside a kernel's parallel region, the
// region's threads share it and meet at its barrier (under a shared machine's contention every
// extra fork and join is costly); called outside, it runs on the calling thread.
template <typename Tc, typename T>
void fill_kv_panels(std::vector<Tc>& k, std::vector<Tc>& v, const T* qkv, const AttentionDims& d,
                    int64_t len) {
  if constexpr (!std::is_same_v<T, Tc>) {
    const int64_t D = d.head_dim, pos_stride = d.batch * d.qkv_cols;
#pragma omp for schedule(static)
    for (int64_t bg = 0; bg < d.batch * d.kv_heads; ++bg) {
      const int64_t b = bg / d.kv_heads, g = bg % d.kv_heads;
      const T* base = qkv + b * d.qkv_cols;
      gather_rows(k.data() + bg * len * D, base + d.k_col(g), len, D, pos_stride);
      gather_rows(v.data() + bg * len * D, base + d.v_col(g), len, D, pos_stride);
    }
  } else {
    (void)k, (void)v, (void)qkv, (void)d, (void)len;
  }
}

// `rows` rows of D values at src (row r at src + r * ld) as a tile operand: in place when T is
// Tc, else converted into `buf`.
template <typename Tc, typename T>
Rows<Tc> operand_rows(Tc* buf, const T* src, int64_t rows, int64_t D, int64_t ld) {
  if constexpr (std::is_same_v<T, Tc>) {
    (void)buf;
    (void)rows;
    (void)D;
    return {src, ld};
  } else {
    gather_rows(buf, src, rows, D, ld);
    return {buf, D};
  }
}

// The first row of a query block starting at position q0 that sees key j0: the rows above see
// none of the key tile starting there, so its products skip them (causal blocks above the
// diagonal are skipped whole by the key loop's bound).
inline int64_t first_row_seeing(int64_t j0, int64_t q0, int64_t mq) {
  return std::clamp<int64_t>(j0 - q0, 0, mq);
}

// The key tiles of a query block whose first row is at position q0 and whose last row sees keys
// below keys_end: below the diagonal (keys < q0, seen by every row) spans of up to kKeySpan keys,
// so that few large products amortize oneDNN's packing of the query block; on the diagonal
// tiles of kKeyBlock keys, each multiplied only with the rows that see some of its keys.
inline int64_t key_tile_end(int64_t j0, int64_t q0, int64_t keys_end) {
  return j0 < q0 ? std::min(q0, j0 + kKeySpan) : std::min(keys_end, j0 + kKeyBlock);
}

// Forward over queries i in [0, seq) at absolute positions past + i of qkv's rows (row
// i * batch + b), each attending keys [0, past + i] of its group's panels. Writes out and, when
// lse is not null, lse[b, h, i].
// `prologue` runs on every thread of the region before the tasks (fill_kv_panels, or nothing).
template <typename T, typename Tc, typename Prologue>
void flash_forward(OneDnn& dnn, T* out, float* lse, const T* qkv, const AttentionDims& d,
                   const KvPanels<Tc>& kv, int64_t past, Prologue&& prologue) {
  const int64_t S = d.seq, B = d.batch, D = d.head_dim, H = d.heads;
  const int64_t q_blocks = (S + kQueryBlock - 1) / kQueryBlock;
  const DType tile_dt = dtype_of<Tc>();
  constexpr bool wide = std::is_same_v<Tc, float>, in_place = std::is_same_v<T, Tc>;
  RegionError errors;
  const OneThreadWhenSmall threads(B * H * S * (past + S) * D);
#pragma omp parallel
  {
    std::vector<Tc> q_buf(in_place ? 0 : kQueryBlock * D),
        p16(wide ? 0 : kQueryBlock * std::max(kKeyBlock, kKeySpan));
    std::vector<float> s(kQueryBlock * std::max(kKeyBlock, kKeySpan)), o(kQueryBlock * D),
        m(kQueryBlock), l(kQueryBlock);
    prologue();
    // The last query blocks (most keys) first, so the dynamic schedule ends balanced; the heads
    // of a kv group run next to each other and share its key and value tiles in cache.
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < q_blocks * B * H; ++task) {
      errors.run([&] {
        const int64_t qb = q_blocks - 1 - task / (B * H), bh = task % (B * H);
        const int64_t b = bh / H, h = bh % H, g = h / d.q_per_group;
        const int64_t i0 = qb * kQueryBlock, mq = std::min(kQueryBlock, S - i0);
        const Rows<Tc> q = operand_rows<Tc>(
            q_buf.data(), qkv + (i0 * B + b) * d.qkv_cols + d.q_col(h), mq, D, B * d.qkv_cols);
        const Rows<Tc> keys = kv.keys(b, g), values = kv.values(b, g);
        std::fill(o.begin(), o.begin() + mq * D, 0.0f);
        std::fill(m.begin(), m.end(), kNegInf);
        std::fill(l.begin(), l.end(), 0.0f);
        const int64_t keys_end = past + i0 + mq;  // the block's last row sees keys below this
        for (int64_t j0 = 0, j1; j0 < keys_end; j0 = j1) {
          j1 = key_tile_end(j0, past + i0, keys_end);
          const int64_t n = j1 - j0;
          const int64_t r0 = first_row_seeing(j0, past + i0, mq), rows = mq - r0;
          OneDnn::Tile qk;
          qk.m = rows, qk.n = n, qk.k = D, qk.tb = true, qk.alpha = d.scale, qk.dtype = tile_dt;
          qk.lda = q.ld, qk.ldb = keys.ld;
          dnn.tile_matmul(qk, q.row(r0), keys.row(j0), s.data());
          for (int64_t r = r0; r < mq; ++r) {
            float* row = s.data() + (r - r0) * n;
            const int64_t seen = std::min<int64_t>(past + i0 + r + 1 - j0, n);  // >= 1
            const float mx = std::max(m[r], max_of(row, seen));
            const float rescale = m[r] == kNegInf ? 0.0f : std::exp(m[r] - mx);
            l[r] = l[r] * rescale + exp_shifted(row, row, seen, mx);
            std::fill(row + seen, row + n, 0.0f);
            scale_in_place(o.data() + r * D, D, rescale);
            m[r] = mx;
          }
          OneDnn::Tile pv;
          pv.m = rows, pv.n = D, pv.k = n, pv.beta = 1.0f, pv.dtype = tile_dt, pv.ldb = values.ld;
          dnn.tile_matmul(pv, as_tile_operand(s.data(), p16.data(), rows * n), values.row(j0),
                          o.data() + r0 * D);
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
  constexpr bool wide = std::is_same_v<Tc, float>, in_place = std::is_same_v<T, Tc>;
  // f32 activations: dQ goes straight into grad_qkv (each head owns its columns).
  constexpr bool dq_in_place = std::is_same_v<T, float>;
  std::vector<Tc> k_store, v_store;
  const KvPanels<Tc> kv = kv_panels(k_store, v_store, qkv, d, S);  // filled in the region
  // Per (batch, head) f32 gradients [B, H, S, D] (dQ only when it cannot go straight into
  // grad_qkv): dQ's first tile of each block writes with beta 0; dK and dV start at zero.
  const size_t per_head = static_cast<size_t>(S * D), all = static_cast<size_t>(B * H) * per_head;
  std::unique_ptr<float[]> dq(new float[dq_in_place ? 0 : all]), dk(new float[all]),
      dv(new float[all]);
  RegionError errors;
  const OneThreadWhenSmall threads(B * H * S * S * D);
#pragma omp parallel
  {
    const size_t row_block = static_cast<size_t>(std::min(kQueryBlock, S) * S);
    std::vector<Tc> q_buf(in_place ? 0 : per_head), dout_buf(in_place ? 0 : per_head),
        p16(wide ? 0 : kQueryBlock * std::max(kKeyBlock, kKeySpan)),
        ds16(wide ? 0 : kQueryBlock * std::max(kKeyBlock, kKeySpan));
    std::vector<float> p_row(row_block), dp_row(row_block), delta(kQueryBlock);
    fill_kv_panels(k_store, v_store, qkv, d, S);
#pragma omp for schedule(dynamic)
    for (int64_t bh = 0; bh < B * H; ++bh) {
      errors.run([&] {
        const int64_t b = bh / H, h = bh % H, g = h / d.q_per_group;
        const Rows<Tc> q =
            operand_rows<Tc>(q_buf.data(), qkv + b * d.qkv_cols + d.q_col(h), S, D, B * d.qkv_cols);
        const Rows<Tc> dout = operand_rows<Tc>(dout_buf.data(), grad_out + b * d.out_cols + h * D,
                                               S, D, B * d.out_cols);
        const float* lse_h = lse + bh * S;
        const Rows<Tc> keys = kv.keys(b, g), values = kv.values(b, g);
        float* dq_h;
        int64_t ldq;
        if constexpr (dq_in_place) {
          dq_h = grad_qkv + b * d.qkv_cols + d.q_col(h), ldq = B * d.qkv_cols;
        } else {
          dq_h = dq.get() + bh * per_head, ldq = D;
        }
        float* dk_h = dk.get() + bh * per_head;
        float* dv_h = dv.get() + bh * per_head;
        std::fill(dk_h, dk_h + per_head, 0.0f);  // the key tiles differ between query blocks
        std::fill(dv_h, dv_h + per_head, 0.0f);
        for (int64_t i0 = 0; i0 < S; i0 += kQueryBlock) {
          const int64_t mq = std::min(kQueryBlock, S - i0), keys_end = i0 + mq;
          // Tile (i0, j0) holds rows [r0, mq) dense [mq - r0, n] at j0 * mq in the row buffers.
          std::fill(delta.begin(), delta.end(), 0.0f);
          for (int64_t j0 = 0, j1; j0 < keys_end; j0 = j1) {
            j1 = key_tile_end(j0, i0, keys_end);
            const int64_t n = j1 - j0;
            const int64_t r0 = first_row_seeing(j0, i0, mq), rows = mq - r0;
            float* p = p_row.data() + j0 * mq;
            float* dp = dp_row.data() + j0 * mq;
            OneDnn::Tile qk;
            qk.m = rows, qk.n = n, qk.k = D, qk.tb = true, qk.alpha = d.scale, qk.dtype = tile_dt;
            qk.lda = q.ld, qk.ldb = keys.ld;
            dnn.tile_matmul(qk, q.row(i0 + r0), keys.row(j0), p);
            OneDnn::Tile dov = qk;
            dov.alpha = 1.0f, dov.lda = dout.ld, dov.ldb = values.ld;
            dnn.tile_matmul(dov, dout.row(i0 + r0), values.row(j0), dp);
            for (int64_t r = r0; r < mq; ++r) {
              const int64_t seen = std::min<int64_t>(i0 + r + 1 - j0, n), at = (r - r0) * n;
              delta[r] += probs_from_scores(p + at, dp + at, seen, lse_h[i0 + r]);
              std::fill(p + at + seen, p + at + n, 0.0f);
            }
          }
          for (int64_t j0 = 0, j1; j0 < keys_end; j0 = j1) {
            j1 = key_tile_end(j0, i0, keys_end);
            const int64_t n = j1 - j0;
            const int64_t r0 = first_row_seeing(j0, i0, mq), rows = mq - r0;
            float* p = p_row.data() + j0 * mq;
            float* ds = dp_row.data() + j0 * mq;
            for (int64_t r = r0; r < mq; ++r) {
              const int64_t seen = std::min<int64_t>(i0 + r + 1 - j0, n), at = (r - r0) * n;
              softmax_grad(p + at, ds + at, seen, delta[r]);
              std::fill(ds + at + seen, ds + at + n, 0.0f);
            }
            const Tc* p_tile = as_tile_operand(p, p16.data(), rows * n);
            const Tc* ds_tile = as_tile_operand(ds, ds16.data(), rows * n);
            OneDnn::Tile key_grad;  // [n, D] += op(tile)^T [n, rows] x [rows, D]
            key_grad.m = n, key_grad.n = D, key_grad.k = rows, key_grad.ta = true;
            key_grad.beta = 1.0f, key_grad.dtype = tile_dt;
            key_grad.ldb = dout.ld;
            dnn.tile_matmul(key_grad, p_tile, dout.row(i0 + r0), dv_h + j0 * D);
            key_grad.alpha = d.scale, key_grad.ldb = q.ld;
            dnn.tile_matmul(key_grad, ds_tile, q.row(i0 + r0), dk_h + j0 * D);
            OneDnn::Tile query_grad;  // [rows, D] += dS [rows, n] x K [n, D]
            query_grad.m = rows, query_grad.n = D, query_grad.k = n, query_grad.alpha = d.scale;
            query_grad.beta = j0 == 0 ? 0.0f : 1.0f, query_grad.dtype = tile_dt;
            query_grad.ldb = keys.ld, query_grad.ldc = ldq;
            dnn.tile_matmul(query_grad, ds_tile, keys.row(j0), dq_h + (i0 + r0) * ldq);
          }
        }
      });
    }
  }
  errors.rethrow();
  // grad_qkv rows: each head's dQ (unless written in place), and each group's dK and dV summed
  // over its heads in order.
#pragma omp parallel for schedule(static) if (S * B * d.qkv_cols > 32768)
  for (int64_t row = 0; row < S * B; ++row) {
    const int64_t i = row / B, b = row % B;
    T* dst = grad_qkv + row * d.qkv_cols;
    for (int64_t g = 0; g < d.kv_heads; ++g) {
      for (int64_t c = 0; c < D; ++c) {
        float sum_k = 0.0f, sum_v = 0.0f;
        for (int64_t h = g * d.q_per_group; h < (g + 1) * d.q_per_group; ++h) {
          const size_t at = static_cast<size_t>(b * H + h) * per_head + i * D + c;
          if constexpr (!dq_in_place) dst[d.q_col(h) + c] = from_float<T>(dq[at]);
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

void CpuBackend::attention(TensorView out, TensorView lse, TensorView qkv,
                           const AttentionShape& shape) {
  const AttentionDims d = check_attention_args(out, lse, qkv, shape, device());
  dispatch_attention(*onednn_, qkv.dtype, [&](auto t_tag, auto c_tag) {
    using T = decltype(t_tag);
    using Tc = decltype(c_tag);
    const T* x = qkv.as<T>();
    std::vector<Tc> k, v;
    const KvPanels<Tc> kv = kv_panels(k, v, x, d, d.seq);
    flash_forward<T, Tc>(*onednn_, out.as<T>(), lse.as<float>(), x, d, kv, 0,
                         [&] { fill_kv_panels(k, v, x, d, d.seq); });
  });
}

void CpuBackend::attention_backward(TensorView grad_qkv, TensorView grad_out, TensorView qkv,
                                    TensorView lse, const AttentionShape& shape) {
  const AttentionDims d =
      check_attention_backward_args(grad_qkv, grad_out, qkv, lse, shape, device());
  dispatch_attention(*onednn_, qkv.dtype, [&](auto t_tag, auto c_tag) {
    using T = decltype(t_tag);
    using Tc = decltype(c_tag);
    flash_backward<T, Tc>(*onednn_, grad_qkv.as<T>(), grad_out.as<T>(), qkv.as<T>(),
                          lse.as<float>(), d);
  });
}

void CpuBackend::attention_with_cache(TensorView out, TensorView k_cache, TensorView v_cache,
                                      TensorView qkv, const AttentionShape& shape, int64_t past) {
  const AttentionDims d =
      check_attention_with_cache_args(out, k_cache, v_cache, qkv, shape, past, device());
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
      kv = {kc, vc, d.kv_heads * capacity * D, capacity * D, D};
    } else {
      k.resize(static_cast<size_t>(B * d.kv_heads * len * D));
      v.resize(k.size());
      for (int64_t bg = 0; bg < B * d.kv_heads; ++bg) {
        gather_rows(k.data() + bg * len * D, kc + bg * capacity * D, len, D, D);
        gather_rows(v.data() + bg * len * D, vc + bg * capacity * D, len, D, D);
      }
      kv = {k.data(), v.data(), d.kv_heads * len * D, len * D, D};
    }
    flash_forward<T, Tc>(*onednn_, out.as<T>(), nullptr, x, d, kv, past, [] {});
  });
}

}  // namespace weft
