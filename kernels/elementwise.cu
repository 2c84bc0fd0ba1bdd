// Elementwise and reduction kernels of the CUDA backend, all computing in float over storage
// types float, bf16_t and f16_t:
//   convert (all 9 type pairs), fill, add, add_bias, gelu, gelu_backward (GeLU is the tanh
//   approximation 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as in GPT-2, Megatron and
//   cuBLASLt's epilogue), and sum_rows / sum_columns (the bias gradient when cuBLASLt's BGRADB
//   epilogue cannot be used; in/out type pairs as for convert).
// One variant each: grid-stride loops of 256-thread blocks. The reductions are deterministic
// (fixed summation order, no atomics), so two runs give the same bits.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "backend/pointwise_math.hpp"
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

template <typename Dst, typename Src>
__global__ void convert_kernel(Dst* dst, const Src* src, int64_t n) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    dst[i] = from_float<Dst>(to_float(src[i]));
  }
}

template <typename T>
__global__ void fill_kernel(T* dst, T value, int64_t n) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) dst[i] = value;
}

template <typename T>
__global__ void add_kernel(T* out, const T* a, const T* b, int64_t n) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    out[i] = from_float<T>(to_float(a[i]) + to_float(b[i]));
  }
}

template <typename T>
__global__ void add_bias_kernel(T* out, const T* in, const T* bias, int64_t n, int64_t cols) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    out[i] = from_float<T>(to_float(in[i]) + to_float(bias[i % cols]));
  }
}

template <typename T>
__global__ void gelu_kernel(T* out, const T* in, int64_t n) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    out[i] = from_float<T>(gelu_tanh(to_float(in[i])));
  }
}

template <typename T>
__global__ void gelu_backward_kernel(T* grad_in, const T* grad_out, const T* input, int64_t n) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    grad_in[i] = from_float<T>(to_float(grad_out[i]) * gelu_tanh_grad(to_float(input[i])));
  }
}

// One block per row (grid-stride over rows): each thread sums a strided slice of the row, then a
// shared-memory tree combines the 256 partial sums in a fixed order.
template <typename Out, typename In>
__global__ void sum_rows_kernel(Out* out, const In* in, int64_t rows, int64_t cols) {
  __shared__ float partial[kThreads];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const In* row = in + r * cols;
    float sum = 0.0f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) sum += to_float(row[c]);
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int width = kThreads / 2; width > 0; width /= 2) {
      if (static_cast<int>(threadIdx.x) < width)
        partial[threadIdx.x] += partial[threadIdx.x + width];
      __syncthreads();
    }
    if (threadIdx.x == 0) out[r] = from_float<Out>(partial[0]);
    __syncthreads();  // partial[0] is read above before the next row overwrites it
  }
}

// Blocks of 32 x 8 threads own 32 adjacent columns (coalesced loads along a row); the 8 thread
// rows split the matrix rows between them and are combined in a fixed order.
constexpr int kColumnTile = 32;
constexpr int kRowLanes = kThreads / kColumnTile;

template <typename Out, typename In>
__global__ void sum_columns_kernel(Out* out, const In* in, int64_t rows, int64_t cols) {
  __shared__ float partial[kRowLanes][kColumnTile + 1];
  const int64_t tiles = (cols + kColumnTile - 1) / kColumnTile;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t c = tile * kColumnTile + threadIdx.x;
    float sum = 0.0f;
    if (c < cols) {
      for (int64_t r = threadIdx.y; r < rows; r += kRowLanes) sum += to_float(in[r * cols + c]);
    }
    partial[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
      float total = 0.0f;
      for (int lane = 0; lane < kRowLanes; ++lane) total += partial[lane][threadIdx.x];
      out[c] = from_float<Out>(total);
    }
    __syncthreads();
  }
}

}  // namespace

template <typename Dst, typename Src>
void launch_convert(Dst* dst, const Src* src, int64_t n, CudaStreamHandle stream) {
  if (n <= 0) return;
  convert_kernel<Dst, Src><<<blocks_for(n), kThreads, 0, stream>>>(dst, src, n);
  check_launch("convert_kernel");
}

template <typename T>
void launch_fill(T* dst, float value, int64_t n, CudaStreamHandle stream) {
  if (n <= 0) return;
  fill_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(dst, from_float<T>(value), n);
  check_launch("fill_kernel");
}

template <typename T>
void launch_add(T* out, const T* a, const T* b, int64_t n, CudaStreamHandle stream) {
  if (n <= 0) return;
  add_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(out, a, b, n);
  check_launch("add_kernel");
}

template <typename T>
void launch_add_bias(T* out, const T* in, const T* bias, int64_t rows, int64_t cols,
                     CudaStreamHandle stream) {
  const int64_t n = rows * cols;
  if (n <= 0) return;
  add_bias_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(out, in, bias, n, cols);
  check_launch("add_bias_kernel");
}

template <typename T>
void launch_gelu(T* out, const T* in, int64_t n, CudaStreamHandle stream) {
  if (n <= 0) return;
  gelu_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(out, in, n);
  check_launch("gelu_kernel");
}

template <typename T>
void launch_gelu_backward(T* grad_in, const T* grad_out, const T* input, int64_t n,
                          CudaStreamHandle stream) {
  if (n <= 0) return;
  gelu_backward_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(grad_in, grad_out, input, n);
  check_launch("gelu_backward_kernel");
}

template <typename Out, typename In>
void launch_sum_rows(Out* out, const In* in, int64_t rows, int64_t cols, CudaStreamHandle stream) {
  if (rows <= 0) return;
  const int blocks = static_cast<int>(std::min<int64_t>(rows, kMaxBlocks));
  sum_rows_kernel<Out, In><<<blocks, kThreads, 0, stream>>>(out, in, rows, cols);
  check_launch("sum_rows_kernel");
}

template <typename Out, typename In>
void launch_sum_columns(Out* out, const In* in, int64_t rows, int64_t cols,
                        CudaStreamHandle stream) {
  if (cols <= 0) return;
  const int64_t tiles = (cols + kColumnTile - 1) / kColumnTile;
  const int blocks = static_cast<int>(std::min<int64_t>(tiles, kMaxBlocks));
  sum_columns_kernel<Out, In>
      <<<blocks, dim3(kColumnTile, kRowLanes), 0, stream>>>(out, in, rows, cols);
  check_launch("sum_columns_kernel");
}

#define WEFT_INSTANTIATE_PAIR(Out, In)                                                         \
  template void launch_convert<Out, In>(Out*, const In*, int64_t, CudaStreamHandle);           \
  template void launch_sum_rows<Out, In>(Out*, const In*, int64_t, int64_t, CudaStreamHandle); \
  template void launch_sum_columns<Out, In>(Out*, const In*, int64_t, int64_t, CudaStreamHandle);

#define WEFT_INSTANTIATE_TYPE(T)                                                                \
  template void launch_fill<T>(T*, float, int64_t, CudaStreamHandle);                           \
  template void launch_add<T>(T*, const T*, const T*, int64_t, CudaStreamHandle);               \
  template void launch_add_bias<T>(T*, const T*, const T*, int64_t, int64_t, CudaStreamHandle); \
  template void launch_gelu<T>(T*, const T*, int64_t, CudaStreamHandle);                        \
  template void launch_gelu_backward<T>(T*, const T*, const T*, int64_t, CudaStreamHandle);     \
  WEFT_INSTANTIATE_PAIR(T, float)                                                               \
  WEFT_INSTANTIATE_PAIR(T, bf16_t)                                                              \
  WEFT_INSTANTIATE_PAIR(T, f16_t)

WEFT_INSTANTIATE_TYPE(float)
WEFT_INSTANTIATE_TYPE(bf16_t)
WEFT_INSTANTIATE_TYPE(f16_t)

}  // namespace weft
