// Causal softmax attention over Megatron's grouped QKV layout, and rotary embeddings, computing in
// float over storage float, bf16_t and f16_t. Attention streams over the keys in tiles of
// kKeyTile with an online softmax (running max and sum, FlashAttention style), so no buffer grows
// with the number of keys and there is no limit on seq; the forward saves each query's
// log-sum-exp and the backward recomputes the probabilities from it:
//   attention: one 128-thread block per (query position, head, batch). Per key tile, each warp
//     takes every 4th key and reduces q.k with shuffles into shared memory, the block finds the
//     tile's max, rescales its running sum and output accumulator (one thread per output column)
//     and adds the tile's exp-weighted values. It writes out and lse = max + log(sum).
//   attention_with_cache: a copy kernel stores the new keys and values into the caches, then the
//     same forward kernel reads keys and values from the caches (no lse saved).
//   attention_backward: two kernels, both deterministic (no atomics):
//     query side, one block per (query position, head, batch): a first pass over the key tiles
//       sums delta = sum_j P dP with P = exp(scale q.k - lse) and dP = dO.V, a second forms
//       dS = P (dP - delta) and dQ += scale dS.K; delta is kept for the second kernel;
//     key side, one block per (key position, kv group, batch): each warp walks its share of the
//       (query head of the group, query position >= key) pairs in a fixed order, recomputes P and
//       dS and accumulates dK += scale dS q and dV += P dO per column in shared memory; the warps'
//       sums are then added in warp order. So dK/dV sum over the group's heads without races.
//   rope: one thread per rotated pair (i, i + head_dim/2) of every query and key head, NeoX /
//     LLaMA layout, angle p theta^(-2i/head_dim) computed in double as on the CPU backend, so the
//     rounded cos/sin agree even at large positions.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernel_util.cuh"
#include "kernels.hpp"

namespace weft {
namespace {

using kernel::check_launch;

constexpr int kAttentionThreads = 128;
constexpr int kAttentionWarps = kAttentionThreads / 32;
constexpr int64_t kKeyTile = 256;  // keys whose scores one block holds in shared memory at a time

void check_head_dim(const AttentionDims& a, const char* op) {
  WEFT_CHECK(a.head_dim <= kAttentionMaxHeadDim, op, ": head_dim ", a.head_dim,
             " exceeds the CUDA kernel's limit of ", kAttentionMaxHeadDim);
}

// Where the keys and values of one (batch, group) start, and the distance between positions:
// rows of qkv during training, the caches during inference.
struct KeySource {
  const void* keys;
  const void* values;
  int64_t batch_stride;
  int64_t group_stride;
  int64_t position_stride;
};

// Block (x, h, b) handles query position i = seq - 1 - x (the longest rows start first) of head h,
// attending the positions [0, past + i] tile by tile. lse (training only, past == 0) receives
// the row's log-sum-exp.
template <typename T>
__global__ void attention_forward_kernel(T* out, float* lse, const T* qkv, KeySource source,
                                         AttentionDims a, int64_t past) {
  extern __shared__ float shared[];
  __shared__ float scratch[32];
  const int64_t d = a.head_dim;
  float* q = shared;
  float* o = shared + d;  // running output; thread t owns columns t, t + blockDim.x, ...
  float* p = shared + 2 * d;  // [kKeyTile] scores, then weights, of the current tile
  const int64_t i = a.seq - 1 - blockIdx.x;
  const int64_t h = blockIdx.y;
  const int64_t b = blockIdx.z;
  const int64_t g = h / a.q_per_group;
  const int64_t keys = past + i + 1;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;

  const T* q_row = qkv + (i * a.batch + b) * a.qkv_cols + a.q_col(h);
  for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
    q[c] = to_float(q_row[c]);
    o[c] = 0.0f;
  }
  __syncthreads();

  const T* k_base =
      static_cast<const T*>(source.keys) + b * source.batch_stride + g * source.group_stride;
  const T* v_base =
      static_cast<const T*>(source.values) + b * source.batch_stride + g * source.group_stride;
  float run_max = -INFINITY;
  float run_sum = 0.0f;
  for (int64_t t0 = 0; t0 < keys; t0 += kKeyTile) {
    const int64_t n = keys - t0 < kKeyTile ? keys - t0 : kKeyTile;
    for (int64_t j = warp; j < n; j += kAttentionWarps) {
      const T* k = k_base + (t0 + j) * source.position_stride;
      float dot = 0.0f;
      for (int64_t c = lane; c < d; c += 32) dot += q[c] * to_float(k[c]);
      dot = kernel::warp_sum(dot);
      if (lane == 0) p[j] = dot * a.scale;
    }
    __syncthreads();
    float tile_max = -INFINITY;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) tile_max = fmaxf(tile_max, p[j]);
    const float new_max = fmaxf(run_max, kernel::block_max(tile_max, scratch));
    float sum = 0.0f;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      const float e = expf(p[j] - new_max);
      p[j] = e;
      sum += e;
    }
    // block_sum's barriers also make every p[j] visible to the whole block.
    const float tile_sum = kernel::block_sum(sum, scratch);
    const float rescale = run_max == -INFINITY ? 0.0f : expf(run_max - new_max);
    run_sum = run_sum * rescale + tile_sum;
    run_max = new_max;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      float acc = 0.0f;
      for (int64_t j = 0; j < n; ++j)
        acc += p[j] * to_float(v_base[(t0 + j) * source.position_stride + c]);
      o[c] = o[c] * rescale + acc;
    }
    __syncthreads();  // the next tile overwrites p
  }

  T* out_row = out + (i * a.batch + b) * a.out_cols + h * d;
  const float inv_sum = 1.0f / run_sum;
  for (int64_t c = threadIdx.x; c < d; c += blockDim.x) out_row[c] = from_float<T>(o[c] * inv_sum);
  if (lse != nullptr && threadIdx.x == 0) {
    lse[(b * a.heads + h) * a.seq + i] = run_max + logf(run_sum);
  }
}

// Copies the keys and values of the seq new positions into the caches at past + s.
template <typename T>
__global__ void store_kv_kernel(T* k_cache, T* v_cache, const T* qkv, AttentionDims a,
                                int64_t capacity, int64_t past) {
  const int64_t d = a.head_dim;
  const int64_t n = a.seq * a.batch * a.kv_heads * d;
  for (int64_t idx = kernel::first_index(); idx < n; idx += kernel::grid_stride()) {
    const int64_t c = idx % d;
    int64_t rest = idx / d;
    const int64_t g = rest % a.kv_heads;
    rest /= a.kv_heads;
    const int64_t b = rest % a.batch;
    const int64_t s = rest / a.batch;
    const T* row = qkv + (s * a.batch + b) * a.qkv_cols;
    const int64_t at = ((b * a.kv_heads + g) * capacity + past + s) * d + c;
    k_cache[at] = row[a.k_col(g) + c];
    v_cache[at] = row[a.v_col(g) + c];
  }
}

// Block (x, h, b), query position i = seq - 1 - x: dQ of the row and delta[b, h, i] =
// sum_j P_ij dP_ij, from a first pass over the key tiles (in f32: not dO . O, whose stored 16-bit
// O is too coarse for dP - delta).
template <typename T>
__global__ void attention_backward_query_kernel(T* grad_qkv, float* delta, const T* grad_out,
                                                const T* qkv, const float* lse, AttentionDims a) {
  extern __shared__ float shared[];
  __shared__ float scratch[32];
  const int64_t d = a.head_dim;
  float* q = shared;
  float* dout = shared + d;
  float* dq = shared + 2 * d;  // thread t owns columns t, t + blockDim.x, ...
  float* ds = shared + 3 * d;  // [kKeyTile]
  const int64_t i = a.seq - 1 - blockIdx.x;
  const int64_t h = blockIdx.y;
  const int64_t b = blockIdx.z;
  const int64_t g = h / a.q_per_group;
  const int64_t keys = i + 1;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;

  const int64_t row_i = i * a.batch + b;
  const T* q_row = qkv + row_i * a.qkv_cols + a.q_col(h);
  const T* dout_row = grad_out + row_i * a.out_cols + h * d;
  for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
    q[c] = to_float(q_row[c]);
    dout[c] = to_float(dout_row[c]);
    dq[c] = 0.0f;
  }
  __syncthreads();
  const float row_lse = lse[(b * a.heads + h) * a.seq + i];

  const int64_t position_stride = a.batch * a.qkv_cols;
  const T* k_base = qkv + b * a.qkv_cols + a.k_col(g);
  const T* v_base = qkv + b * a.qkv_cols + a.v_col(g);
  // Pass 0 sums P dP over the keys (each warp its keys, in a fixed order); pass 1 forms dS.
  float row_delta = 0.0f;
  for (int pass = 0; pass < 2; ++pass) {
    float partial = 0.0f;
    for (int64_t t0 = 0; t0 < keys; t0 += kKeyTile) {
      const int64_t n = keys - t0 < kKeyTile ? keys - t0 : kKeyTile;
      for (int64_t j = warp; j < n; j += kAttentionWarps) {
        const T* k = k_base + (t0 + j) * position_stride;
        const T* v = v_base + (t0 + j) * position_stride;
        float score = 0.0f;
        float dp = 0.0f;
        for (int64_t c = lane; c < d; c += 32) {
          score += q[c] * to_float(k[c]);
          dp += dout[c] * to_float(v[c]);
        }
        score = kernel::warp_sum(score);
        dp = kernel::warp_sum(dp);
        const float pij = expf(score * a.scale - row_lse);
        if (pass == 0) {
          partial += pij * dp;  // every lane holds the same sums
        } else if (lane == 0) {
          ds[j] = pij * (dp - row_delta);
        }
      }
      if (pass == 0) continue;
      __syncthreads();
      for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
        float acc = 0.0f;
        for (int64_t j = 0; j < n; ++j)
          acc += ds[j] * to_float(k_base[(t0 + j) * position_stride + c]);
        dq[c] += acc;
      }
      __syncthreads();  // the next tile overwrites ds
    }
    if (pass == 0) {
      // One lane per warp contributes its warp's sum.
      row_delta = kernel::block_sum(lane == 0 ? partial : 0.0f, scratch);
      if (threadIdx.x == 0) delta[(b * a.heads + h) * a.seq + i] = row_delta;
    }
  }

  T* dq_row = grad_qkv + row_i * a.qkv_cols + a.q_col(h);
  for (int64_t c = threadIdx.x; c < d; c += blockDim.x) dq_row[c] = from_float<T>(dq[c] * a.scale);
}

// Block (j, g, b): dK and dV of key position j of group g, summed over the group's query heads.
template <typename T>
__global__ void attention_backward_key_kernel(T* grad_qkv, const float* delta, const T* grad_out,
                                              const T* qkv, const float* lse, AttentionDims a) {
  extern __shared__ float shared[];
  const int64_t d = a.head_dim;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  float* k = shared;
  float* v = shared + d;
  float* acc_k = shared + 2 * d;               // [warps][d]
  float* acc_v = acc_k + kAttentionWarps * d;  // [warps][d]
  const int64_t j = blockIdx.x;
  const int64_t g = blockIdx.y;
  const int64_t b = blockIdx.z;
  const int64_t row_j = j * a.batch + b;

  const T* k_row = qkv + row_j * a.qkv_cols + a.k_col(g);
  const T* v_row = qkv + row_j * a.qkv_cols + a.v_col(g);
  for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
    k[c] = to_float(k_row[c]);
    v[c] = to_float(v_row[c]);
  }
  for (int64_t c = threadIdx.x; c < kAttentionWarps * d; c += blockDim.x) {
    acc_k[c] = 0.0f;
    acc_v[c] = 0.0f;
  }
  __syncthreads();

  float* my_k = acc_k + warp * d;  // each lane owns columns lane, lane + 32, ...
  float* my_v = acc_v + warp * d;
  for (int64_t hh = 0; hh < a.q_per_group; ++hh) {
    const int64_t h = g * a.q_per_group + hh;
    const float* row_lse = lse + (b * a.heads + h) * a.seq;
    const float* row_delta = delta + (b * a.heads + h) * a.seq;
    for (int64_t i = j + warp; i < a.seq; i += kAttentionWarps) {
      const int64_t row_i = i * a.batch + b;
      const T* dout = grad_out + row_i * a.out_cols + h * d;
      const T* q = qkv + row_i * a.qkv_cols + a.q_col(h);
      float score = 0.0f;
      float dp = 0.0f;
      for (int64_t c = lane; c < d; c += 32) {
        score += to_float(q[c]) * k[c];
        dp += to_float(dout[c]) * v[c];
      }
      score = kernel::warp_sum(score);
      dp = kernel::warp_sum(dp);
      const float pij = expf(score * a.scale - row_lse[i]);
      const float dsij = pij * (dp - row_delta[i]);
      for (int64_t c = lane; c < d; c += 32) {
        my_k[c] += dsij * to_float(q[c]);
        my_v[c] += pij * to_float(dout[c]);
      }
    }
  }
  __syncthreads();

  T* grad_row = grad_qkv + row_j * a.qkv_cols;
  for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
    float sum_k = 0.0f;
    float sum_v = 0.0f;
    for (int w = 0; w < kAttentionWarps; ++w) {
      sum_k += acc_k[w * d + c];
      sum_v += acc_v[w * d + c];
    }
    grad_row[a.k_col(g) + c] = from_float<T>(sum_k * a.scale);
    grad_row[a.v_col(g) + c] = from_float<T>(sum_v);
  }
}

// One thread per rotated pair: (row, rotated head, i < head_dim / 2). The rotated heads of group
// g are its query heads and its key head (slots 0 .. q_per_group), not its value head.
template <typename T>
__global__ void rope_kernel(T* qkv, AttentionDims a, double theta, int64_t position_offset,
                            bool inverse) {
  const int64_t half = a.head_dim / 2;
  const int64_t slots = a.q_per_group + 1;
  const int64_t n = a.seq * a.batch * a.kv_heads * slots * half;
  for (int64_t idx = kernel::first_index(); idx < n; idx += kernel::grid_stride()) {
    const int64_t i = idx % half;
    int64_t rest = idx / half;
    const int64_t slot = rest % slots;
    rest /= slots;
    const int64_t g = rest % a.kv_heads;
    const int64_t row = rest / a.kv_heads;
    const int64_t position = position_offset + row / a.batch;
    const double inv_freq =
        pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(a.head_dim));
    double sin_d;
    double cos_d;
    sincos(static_cast<double>(position) * inv_freq, &sin_d, &cos_d);
    const float cos_a = static_cast<float>(cos_d);
    const float sin_a = inverse ? -static_cast<float>(sin_d) : static_cast<float>(sin_d);
    T* x = qkv + row * a.qkv_cols + g * (a.q_per_group + 2) * a.head_dim + slot * a.head_dim;
    const float x0 = to_float(x[i]);
    const float x1 = to_float(x[i + half]);
    x[i] = from_float<T>(x0 * cos_a - x1 * sin_a);
    x[i + half] = from_float<T>(x0 * sin_a + x1 * cos_a);
  }
}

dim3 query_grid(const AttentionDims& a, int64_t heads) {
  return dim3(static_cast<unsigned>(a.seq), static_cast<unsigned>(heads),
              static_cast<unsigned>(a.batch));
}

void check_grid(const AttentionDims& a, const char* op) {
  WEFT_CHECK(a.heads <= 65535 && a.batch <= 65535, op, ": heads (", a.heads, ") and batch (",
             a.batch, ") must be at most 65535 (CUDA grid limits)");
}

}  // namespace

template <typename T>
void launch_attention(T* out, float* lse, const T* qkv, const AttentionDims& a,
                      CudaStreamHandle stream) {
  check_head_dim(a, "attention");
  if (a.seq <= 0 || a.batch <= 0 || a.heads <= 0) return;
  check_grid(a, "attention");
  const KeySource source{qkv + a.k_col(0), qkv + a.v_col(0), a.qkv_cols,
                         (a.q_per_group + 2) * a.head_dim, a.batch * a.qkv_cols};
  const size_t shared = sizeof(float) * static_cast<size_t>(2 * a.head_dim + kKeyTile);
  attention_forward_kernel<T><<<query_grid(a, a.heads), kAttentionThreads, shared, stream>>>(
      out, lse, qkv, source, a, 0);
  check_launch("attention_forward_kernel");
}

template <typename T>
void launch_attention_backward(T* grad_qkv, const T* grad_out, const T* qkv, const float* lse,
                               const AttentionDims& a, CudaStreamHandle stream) {
  check_head_dim(a, "attention_backward");
  if (a.seq <= 0 || a.batch <= 0 || a.heads <= 0) return;
  check_grid(a, "attention_backward");
  kernel::StreamScratch delta(sizeof(float) * static_cast<size_t>(a.batch * a.heads * a.seq),
                              stream, "attention_backward");
  const size_t query_shared = sizeof(float) * static_cast<size_t>(3 * a.head_dim + kKeyTile);
  attention_backward_query_kernel<T>
      <<<query_grid(a, a.heads), kAttentionThreads, query_shared, stream>>>(
          grad_qkv, delta.as<float>(), grad_out, qkv, lse, a);
  check_launch("attention_backward_query_kernel");
  const size_t key_shared =
      sizeof(float) * static_cast<size_t>((2 + 2 * kAttentionWarps) * a.head_dim);
  attention_backward_key_kernel<T>
      <<<query_grid(a, a.kv_heads), kAttentionThreads, key_shared, stream>>>(
          grad_qkv, delta.as<float>(), grad_out, qkv, lse, a);
  check_launch("attention_backward_key_kernel");
}

template <typename T>
void launch_attention_with_cache(T* out, T* k_cache, T* v_cache, const T* qkv,
                                 const AttentionDims& a, int64_t capacity, int64_t past,
                                 CudaStreamHandle stream) {
  check_head_dim(a, "attention_with_cache");
  WEFT_CHECK(past >= 0 && past + a.seq <= capacity, "attention_with_cache: positions [", past, ", ",
             past + a.seq, ") do not fit a cache of capacity ", capacity);
  if (a.seq <= 0 || a.batch <= 0 || a.heads <= 0) return;
  check_grid(a, "attention_with_cache");
  const int64_t n = a.seq * a.batch * a.kv_heads * a.head_dim;
  store_kv_kernel<T><<<kernel::blocks_for(n), kernel::kThreads, 0, stream>>>(k_cache, v_cache, qkv,
                                                                             a, capacity, past);
  check_launch("store_kv_kernel");
  const KeySource source{k_cache, v_cache, a.kv_heads * capacity * a.head_dim,
                         capacity * a.head_dim, a.head_dim};
  const size_t shared = sizeof(float) * static_cast<size_t>(2 * a.head_dim + kKeyTile);
  attention_forward_kernel<T><<<query_grid(a, a.heads), kAttentionThreads, shared, stream>>>(
      out, nullptr, qkv, source, a, past);
  check_launch("attention_forward_kernel (cache)");
}

template <typename T>
void launch_rope(T* qkv, const AttentionDims& a, float theta, int64_t position_offset, bool inverse,
                 CudaStreamHandle stream) {
  check_head_dim(a, "rope");
  WEFT_CHECK(a.head_dim % 2 == 0, "rope: head_dim ", a.head_dim, " must be even");
  WEFT_CHECK(theta > 0.0f, "rope: theta ", theta, " must be positive");
  const int64_t n = a.seq * a.batch * a.kv_heads * (a.q_per_group + 1) * (a.head_dim / 2);
  if (n <= 0) return;
  rope_kernel<T><<<kernel::blocks_for(n), kernel::kThreads, 0, stream>>>(
      qkv, a, static_cast<double>(theta), position_offset, inverse);
  check_launch("rope_kernel");
}

#define WEFT_INSTANTIATE(T)                                                                        \
  template void launch_attention<T>(T*, float*, const T*, const AttentionDims&, CudaStreamHandle); \
  template void launch_attention_backward<T>(T*, const T*, const T*, const float*,                 \
                                             const AttentionDims&, CudaStreamHandle);              \
  template void launch_attention_with_cache<T>(T*, T*, T*, const T*, const AttentionDims&,         \
                                               int64_t, int64_t, CudaStreamHandle);                \
  template void launch_rope<T>(T*, const AttentionDims&, float, int64_t, bool, CudaStreamHandle);

WEFT_INSTANTIATE(float)
WEFT_INSTANTIATE(bf16_t)
WEFT_INSTANTIATE(f16_t)

}  // namespace weft
