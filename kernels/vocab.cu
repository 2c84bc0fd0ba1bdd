// Vocabulary-sharded ops, computing in float over storage float, bf16_t and f16_t with i32 ids:
//   embedding: out[t, :] = table[id - vocab_start, :] for ids in the table's range, else 0; one
//     thread per output element.
//   embedding_backward: grad_table[id - vocab_start, :] += grad_out[t, :], deterministic without
//     atomics: a stable CUB radix sort groups the tokens by table row (keeping token order), then
//     one 128-thread block per run of equal rows adds the run's gradients in float, one thread
//     per column, and rounds once (as the CPU backend does).
//   vocab_max, vocab_sum_exp_and_target: one 256-thread block per row (grid-stride over rows),
//     block reductions in a fixed order; padding columns (global index >= vocab_size) are skipped.
//   vocab_cross_entropy_backward: one thread per logit, padding columns get 0.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cub/cub.cuh>

#include "kernel_util.cuh"
#include "kernels.hpp"

namespace weft {
namespace {

using kernel::blocks_for;
using kernel::check_launch;
using kernel::first_index;
using kernel::grid_stride;
using kernel::kMaxBlocks;
using kernel::kThreads;

// Threads per block of embedding_backward's row kernel (columns of one table row).
constexpr int kEmbeddingThreads = 128;

int row_blocks(int64_t rows) { return static_cast<int>(std::min<int64_t>(rows, kMaxBlocks)); }

template <typename T>
__global__ void embedding_kernel(T* out, const int32_t* ids, const T* table, int64_t tokens,
                                 int64_t table_rows, int64_t cols, int64_t vocab_start) {
  const int64_t n = tokens * cols;
  for (int64_t idx = first_index(); idx < n; idx += grid_stride()) {
    const int64_t t = idx / cols;
    const int64_t c = idx - t * cols;
    const int64_t row = static_cast<int64_t>(ids[t]) - vocab_start;
    out[idx] = row >= 0 && row < table_rows ? table[row * cols + c] : from_float<T>(0.0f);
  }
}

// Sort keys of embedding_backward: the table row of token t, or table_rows (after every real row)
// when its id falls outside this table; the values are the token indices.
__global__ void embedding_row_keys_kernel(uint32_t* keys, uint32_t* token_index, const int32_t* ids,
                                          int64_t tokens, int64_t table_rows, int64_t vocab_start) {
  for (int64_t t = first_index(); t < tokens; t += grid_stride()) {
    const int64_t row = static_cast<int64_t>(ids[t]) - vocab_start;
    keys[t] = static_cast<uint32_t>(row >= 0 && row < table_rows ? row : table_rows);
    token_index[t] = static_cast<uint32_t>(t);
  }
}

// After a stable sort by row: block p (grid-stride) handles the run of equal rows that starts at
// sorted position p, if one does. Each thread owns columns of that row and adds the run's
// gradient rows in token order in float, rounding once, as the CPU backend does.
template <typename T>
__global__ void embedding_backward_runs_kernel(T* grad_table, const T* grad_out,
                                               const uint32_t* keys, const uint32_t* token_index,
                                               int64_t tokens, int64_t table_rows, int64_t cols) {
  for (int64_t p = blockIdx.x; p < tokens; p += gridDim.x) {
    const uint32_t row = keys[p];
    // Uniform over the block: every thread reads the same keys.
    if (row >= table_rows || (p > 0 && keys[p - 1] == row)) continue;
    int64_t end = p + 1;
    while (end < tokens && keys[end] == row) ++end;
    T* dst = grad_table + static_cast<int64_t>(row) * cols;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      float acc = to_float(dst[c]);
      for (int64_t q = p; q < end; ++q) {
        acc += to_float(grad_out[static_cast<int64_t>(token_index[q]) * cols + c]);
      }
      dst[c] = from_float<T>(acc);
    }
  }
}

template <typename T>
__global__ void vocab_max_kernel(float* row_max, const T* logits, int64_t tokens, int64_t v_local,
                                 int64_t valid_cols) {
  __shared__ float scratch[32];
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    const T* row = logits + t * v_local;
    float max = -INFINITY;
    for (int64_t j = threadIdx.x; j < valid_cols; j += blockDim.x)
      max = fmaxf(max, to_float(row[j]));
    max = kernel::block_max(max, scratch);
    if (threadIdx.x == 0) row_max[t] = max;
  }
}

template <typename T>
__global__ void vocab_sum_exp_and_target_kernel(float* sum_exp, float* target_logit,
                                                const T* logits, const float* row_max,
                                                const int32_t* targets, int64_t tokens,
                                                int64_t v_local, int64_t valid_cols,
                                                int64_t vocab_start) {
  __shared__ float scratch[32];
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    const T* row = logits + t * v_local;
    const float max = row_max[t];
    float sum = 0.0f;
    for (int64_t j = threadIdx.x; j < valid_cols; j += blockDim.x) {
      sum += expf(to_float(row[j]) - max);
    }
    sum = kernel::block_sum(sum, scratch);
    if (threadIdx.x == 0) {
      sum_exp[t] = sum;
      const int64_t j = static_cast<int64_t>(targets[t]) - vocab_start;
      target_logit[t] = j >= 0 && j < valid_cols ? to_float(row[j]) : 0.0f;
    }
  }
}

template <typename T>
__global__ void vocab_cross_entropy_backward_kernel(T* grad_logits, const T* logits,
                                                    const float* row_max, const float* sum_exp,
                                                    const int32_t* targets, const float* grad_loss,
                                                    int64_t tokens, int64_t v_local,
                                                    int64_t valid_cols, int64_t vocab_start) {
  const int64_t n = tokens * v_local;
  for (int64_t idx = first_index(); idx < n; idx += grid_stride()) {
    const int64_t t = idx / v_local;
    const int64_t j = idx - t * v_local;
    float grad = 0.0f;
    if (j < valid_cols) {
      const float p = expf(to_float(logits[idx]) - row_max[t]) * (1.0f / sum_exp[t]);
      const bool is_target = static_cast<int64_t>(targets[t]) - vocab_start == j;
      grad = (p - (is_target ? 1.0f : 0.0f)) * grad_loss[t];
    }
    grad_logits[idx] = from_float<T>(grad);
  }
}

}  // namespace

template <typename T>
void launch_embedding(T* out, const int32_t* ids, const T* table, int64_t tokens,
                      int64_t table_rows, int64_t cols, int64_t vocab_start,
                      CudaStreamHandle stream) {
  const int64_t n = tokens * cols;
  if (n <= 0) return;
  embedding_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(out, ids, table, tokens, table_rows,
                                                              cols, vocab_start);
  check_launch("embedding_kernel");
}

template <typename T>
void launch_embedding_backward(T* grad_table, const int32_t* ids, const T* grad_out, int64_t tokens,
                               int64_t table_rows, int64_t cols, int64_t vocab_start,
                               CudaStreamHandle stream) {
  if (tokens <= 0 || cols <= 0 || table_rows <= 0) return;
  WEFT_CHECK(tokens < (int64_t{1} << 31) && table_rows < (int64_t{1} << 31),
             "embedding_backward: ", tokens, " tokens or ", table_rows,
             " table rows exceed the CUDA kernel's 2^31 limit");
  // Keys, sorted keys, token indices and sorted token indices.
  const size_t n = static_cast<size_t>(tokens);
  kernel::StreamScratch buffers(4 * n * sizeof(uint32_t), stream, "embedding_backward");
  uint32_t* keys = buffers.as<uint32_t>();
  uint32_t* sorted_keys = keys + n;
  uint32_t* order = keys + 2 * n;
  uint32_t* sorted_order = keys + 3 * n;
  embedding_row_keys_kernel<<<blocks_for(tokens), kThreads, 0, stream>>>(keys, order, ids, tokens,
                                                                         table_rows, vocab_start);
  check_launch("embedding_row_keys_kernel");

  int end_bit = 1;  // enough bits for the largest key, table_rows
  while ((int64_t{1} << end_bit) <= table_rows) ++end_bit;
  const int items = static_cast<int>(tokens);
  size_t temp_bytes = 0;
  WEFT_CHECK_CUDA(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys, sorted_keys, order,
                                                  sorted_order, items, 0, end_bit, stream),
                  "embedding_backward: sizing the sort");
  kernel::StreamScratch temp(std::max<size_t>(temp_bytes, 256), stream, "embedding_backward");
  // Radix sort is stable: within a row, tokens stay in order.
  WEFT_CHECK_CUDA(cub::DeviceRadixSort::SortPairs(temp.as<void>(), temp_bytes, keys, sorted_keys,
                                                  order, sorted_order, items, 0, end_bit, stream),
                  "embedding_backward: sorting token rows");

  const int blocks = static_cast<int>(std::min<int64_t>(tokens, kMaxBlocks));
  embedding_backward_runs_kernel<T><<<blocks, kEmbeddingThreads, 0, stream>>>(
      grad_table, grad_out, sorted_keys, sorted_order, tokens, table_rows, cols);
  check_launch("embedding_backward_runs_kernel");
}

template <typename T>
void launch_vocab_max(float* row_max, const T* logits, int64_t tokens, int64_t v_local,
                      int64_t valid_cols, CudaStreamHandle stream) {
  if (tokens <= 0) return;
  vocab_max_kernel<T>
      <<<row_blocks(tokens), kThreads, 0, stream>>>(row_max, logits, tokens, v_local, valid_cols);
  check_launch("vocab_max_kernel");
}

template <typename T>
void launch_vocab_sum_exp_and_target(float* sum_exp, float* target_logit, const T* logits,
                                     const float* row_max, const int32_t* targets, int64_t tokens,
                                     int64_t v_local, int64_t valid_cols, int64_t vocab_start,
                                     CudaStreamHandle stream) {
  if (tokens <= 0) return;
  vocab_sum_exp_and_target_kernel<T><<<row_blocks(tokens), kThreads, 0, stream>>>(
      sum_exp, target_logit, logits, row_max, targets, tokens, v_local, valid_cols, vocab_start);
  check_launch("vocab_sum_exp_and_target_kernel");
}

template <typename T>
void launch_vocab_cross_entropy_backward(T* grad_logits, const T* logits, const float* row_max,
                                         const float* sum_exp, const int32_t* targets,
                                         const float* grad_loss, int64_t tokens, int64_t v_local,
                                         int64_t valid_cols, int64_t vocab_start,
                                         CudaStreamHandle stream) {
  const int64_t n = tokens * v_local;
  if (n <= 0) return;
  vocab_cross_entropy_backward_kernel<T>
      <<<blocks_for(n), kThreads, 0, stream>>>(grad_logits, logits, row_max, sum_exp, targets,
                                               grad_loss, tokens, v_local, valid_cols, vocab_start);
  check_launch("vocab_cross_entropy_backward_kernel");
}

#define WEFT_INSTANTIATE(T)                                                                     \
  template void launch_embedding<T>(T*, const int32_t*, const T*, int64_t, int64_t, int64_t,    \
                                    int64_t, CudaStreamHandle);                                 \
  template void launch_embedding_backward<T>(T*, const int32_t*, const T*, int64_t, int64_t,    \
                                             int64_t, int64_t, CudaStreamHandle);               \
  template void launch_vocab_max<T>(float*, const T*, int64_t, int64_t, int64_t,                \
                                    CudaStreamHandle);                                          \
  template void launch_vocab_sum_exp_and_target<T>(float*, float*, const T*, const float*,      \
                                                   const int32_t*, int64_t, int64_t, int64_t,   \
                                                   int64_t, CudaStreamHandle);                  \
  template void launch_vocab_cross_entropy_backward<T>(                                         \
      T*, const T*, const float*, const float*, const int32_t*, const float*, int64_t, int64_t, \
      int64_t, int64_t, CudaStreamHandle);

WEFT_INSTANTIATE(float)
WEFT_INSTANTIATE(bf16_t)
WEFT_INSTANTIATE(f16_t)

}  // namespace weft
