// Row normalizations over the last dimension, computing in float over storage float, bf16_t and
// f16_t, with f32 statistics:
//   layer_norm: mean, rstd = 1 / sqrt(biased variance + eps), out = (x - mean) rstd gamma + beta;
//   rms_norm:   rstd = 1 / sqrt(mean(x^2) + eps), out = x rstd gamma;
//   their backward passes: grad_in = rstd (g - mean(g) - xhat mean(g xhat)) with g = dy gamma
//   (RMS norm drops the mean(g) term), and grad_gamma = sum_rows(dy xhat), grad_beta =
//   sum_rows(dy).
// The forward and grad_in kernels give each row to one 256-thread block (grid-stride over rows;
// deterministic block reductions). The parameter gradients are a two-pass column reduction: blocks
// of 32 columns x 8 row lanes sum chunks of rows into f32 partials, then launch_sum_columns adds
// the chunks, in a fixed order, without atomics. One variant per op; layer and RMS norm share
// kernels through a template flag.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernel_util.cuh"
#include "kernels.hpp"

namespace weft {
namespace {

using kernel::block_sum;
using kernel::check_launch;
using kernel::kMaxBlocks;
using kernel::kThreads;

int row_blocks(int64_t rows) { return static_cast<int>(std::min<int64_t>(rows, kMaxBlocks)); }

template <typename T, bool kRms>
__global__ void norm_forward_kernel(T* out, float* mean_out, float* rstd_out, const T* in,
                                    const T* gamma, const T* beta, float eps, int64_t rows,
                                    int64_t cols) {
  __shared__ float scratch[32];
  const float inv_cols = 1.0f / static_cast<float>(cols);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* x = in + r * cols;
    float mean = 0.0f;
    if (!kRms) {
      float sum = 0.0f;
      for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) sum += to_float(x[c]);
      mean = block_sum(sum, scratch) * inv_cols;
    }
    // Two passes (mean first) rather than E[x^2] - mean^2, which cancels badly.
    float sum_sq = 0.0f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const float d = to_float(x[c]) - mean;
      sum_sq += d * d;
    }
    const float rstd = rsqrtf(block_sum(sum_sq, scratch) * inv_cols + eps);
    if (threadIdx.x == 0) {
      if (!kRms) mean_out[r] = mean;
      rstd_out[r] = rstd;
    }
    // Every read of row r happened before the barriers in block_sum, so `out` may alias `in`.
    T* y = out + r * cols;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      float value = (to_float(x[c]) - mean) * rstd * to_float(gamma[c]);
      if (!kRms) value += to_float(beta[c]);
      y[c] = from_float<T>(value);
    }
  }
}

template <typename T, bool kRms>
__global__ void norm_backward_input_kernel(T* grad_in, const T* grad_out, const T* in,
                                           const T* gamma, const float* mean, const float* rstd,
                                           int64_t rows, int64_t cols) {
  __shared__ float scratch[32];
  const float inv_cols = 1.0f / static_cast<float>(cols);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* x = in + r * cols;
    const T* dy = grad_out + r * cols;
    const float mu = kRms ? 0.0f : mean[r];
    const float rs = rstd[r];
    float sum_g = 0.0f;
    float sum_gx = 0.0f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const float g = to_float(dy[c]) * to_float(gamma[c]);
      const float xhat = (to_float(x[c]) - mu) * rs;
      sum_g += g;
      sum_gx += g * xhat;
    }
    const float mean_g = kRms ? 0.0f : block_sum(sum_g, scratch) * inv_cols;
    const float mean_gx = block_sum(sum_gx, scratch) * inv_cols;
    T* dx = grad_in + r * cols;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const float g = to_float(dy[c]) * to_float(gamma[c]);
      const float xhat = (to_float(x[c]) - mu) * rs;
      dx[c] = from_float<T>(rs * (g - mean_g - xhat * mean_gx));
    }
  }
}

constexpr int kColumnTile = 32;
constexpr int kRowLanes = kThreads / kColumnTile;
constexpr int64_t kRowsPerChunk = 64;
constexpr int64_t kMaxChunks = 512;

// Block (tile, chunk) sums dy * xhat (and dy, for layer norm) over the rows of its chunk for its
// 32 columns: partial_gamma[chunk, c], partial_beta[chunk, c].
template <typename T, bool kRms>
__global__ void norm_param_partials_kernel(float* partial_gamma, float* partial_beta,
                                           const T* grad_out, const T* in, const float* mean,
                                           const float* rstd, int64_t rows, int64_t cols,
                                           int64_t rows_per_chunk) {
  __shared__ float gamma_lanes[kRowLanes][kColumnTile + 1];
  __shared__ float beta_lanes[kRowLanes][kColumnTile + 1];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColumnTile + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  const int64_t begin = chunk * rows_per_chunk;
  const int64_t end = begin + rows_per_chunk < rows ? begin + rows_per_chunk : rows;
  float sum_gamma = 0.0f;
  float sum_beta = 0.0f;
  if (c < cols) {
    for (int64_t r = begin + threadIdx.y; r < end; r += kRowLanes) {
      const float dy = to_float(grad_out[r * cols + c]);
      const float mu = kRms ? 0.0f : mean[r];
      const float xhat = (to_float(in[r * cols + c]) - mu) * rstd[r];
      sum_gamma += dy * xhat;
      sum_beta += dy;
    }
  }
  gamma_lanes[threadIdx.y][threadIdx.x] = sum_gamma;
  beta_lanes[threadIdx.y][threadIdx.x] = sum_beta;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float total_gamma = 0.0f;
    float total_beta = 0.0f;
    for (int lane = 0; lane < kRowLanes; ++lane) {
      total_gamma += gamma_lanes[lane][threadIdx.x];
      total_beta += beta_lanes[lane][threadIdx.x];
    }
    partial_gamma[chunk * cols + c] = total_gamma;
    if (!kRms) partial_beta[chunk * cols + c] = total_beta;
  }
}

template <typename T, bool kRms>
void norm_backward(T* grad_in, T* grad_gamma, T* grad_beta, const T* grad_out, const T* in,
                   const T* gamma, const float* mean, const float* rstd, int64_t rows, int64_t cols,
                   cudaStream_t stream) {
  if (cols <= 0) return;
  if (rows <= 0) {  // empty sums
    launch_fill<T>(grad_gamma, 0.0f, cols, stream);
    if (!kRms) launch_fill<T>(grad_beta, 0.0f, cols, stream);
    return;
  }
  // The parameter gradients first: grad_in may alias grad_out, which they read.
  const int64_t chunks = std::min<int64_t>((rows + kRowsPerChunk - 1) / kRowsPerChunk, kMaxChunks);
  const int64_t rows_per_chunk = (rows + chunks - 1) / chunks;
  const int64_t tiles = (cols + kColumnTile - 1) / kColumnTile;
  const size_t partial_elements = static_cast<size_t>(chunks * cols);
  kernel::StreamScratch scratch(sizeof(float) * partial_elements * (kRms ? 1 : 2), stream,
                                kRms ? "rms_norm_backward" : "layer_norm_backward");
  float* partial_gamma = scratch.as<float>();
  float* partial_beta = kRms ? nullptr : partial_gamma + partial_elements;
  norm_param_partials_kernel<T, kRms>
      <<<dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(chunks)),
         dim3(kColumnTile, kRowLanes), 0, stream>>>(partial_gamma, partial_beta, grad_out, in, mean,
                                                    rstd, rows, cols, rows_per_chunk);
  check_launch("norm_param_partials_kernel");
  launch_sum_columns<T, float>(grad_gamma, partial_gamma, chunks, cols, stream);
  if (!kRms) launch_sum_columns<T, float>(grad_beta, partial_beta, chunks, cols, stream);

  norm_backward_input_kernel<T, kRms><<<row_blocks(rows), kThreads, 0, stream>>>(
      grad_in, grad_out, in, gamma, mean, rstd, rows, cols);
  check_launch("norm_backward_input_kernel");
}

}  // namespace

template <typename T>
void launch_layer_norm(T* out, float* mean, float* rstd, const T* in, const T* gamma, const T* beta,
                       float eps, int64_t rows, int64_t cols, CudaStreamHandle stream) {
  if (rows <= 0 || cols <= 0) return;
  norm_forward_kernel<T, false><<<row_blocks(rows), kThreads, 0, stream>>>(
      out, mean, rstd, in, gamma, beta, eps, rows, cols);
  check_launch("norm_forward_kernel (layer norm)");
}

template <typename T>
void launch_layer_norm_backward(T* grad_in, T* grad_gamma, T* grad_beta, const T* grad_out,
                                const T* in, const T* gamma, const float* mean, const float* rstd,
                                int64_t rows, int64_t cols, CudaStreamHandle stream) {
  norm_backward<T, false>(grad_in, grad_gamma, grad_beta, grad_out, in, gamma, mean, rstd, rows,
                          cols, stream);
}

template <typename T>
void launch_rms_norm(T* out, float* rstd, const T* in, const T* gamma, float eps, int64_t rows,
                     int64_t cols, CudaStreamHandle stream) {
  if (rows <= 0 || cols <= 0) return;
  norm_forward_kernel<T, true><<<row_blocks(rows), kThreads, 0, stream>>>(
      out, nullptr, rstd, in, gamma, nullptr, eps, rows, cols);
  check_launch("norm_forward_kernel (RMS norm)");
}

template <typename T>
void launch_rms_norm_backward(T* grad_in, T* grad_gamma, const T* grad_out, const T* in,
                              const T* gamma, const float* rstd, int64_t rows, int64_t cols,
                              CudaStreamHandle stream) {
  norm_backward<T, true>(grad_in, grad_gamma, nullptr, grad_out, in, gamma, nullptr, rstd, rows,
                         cols, stream);
}

#define WEFT_INSTANTIATE(T)                                                                     \
  template void launch_layer_norm<T>(T*, float*, float*, const T*, const T*, const T*, float,   \
                                     int64_t, int64_t, CudaStreamHandle);                       \
  template void launch_layer_norm_backward<T>(T*, T*, T*, const T*, const T*, const T*,         \
                                              const float*, const float*, int64_t, int64_t,     \
                                              CudaStreamHandle);                                \
  template void launch_rms_norm<T>(T*, float*, const T*, const T*, float, int64_t, int64_t,     \
                                   CudaStreamHandle);                                           \
  template void launch_rms_norm_backward<T>(T*, T*, const T*, const T*, const T*, const float*, \
                                            int64_t, int64_t, CudaStreamHandle);

WEFT_INSTANTIATE(float)
WEFT_INSTANTIATE(bf16_t)
WEFT_INSTANTIATE(f16_t)

}  // namespace weft
