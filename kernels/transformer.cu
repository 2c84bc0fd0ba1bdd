// Pointwise transformer ops and the gradient norm, computing in float over storage float, bf16_t
// and f16_t:
//   scale (out = alpha in), sum_squares (f32 sum of in^2: per-block partial sums, then one block
//   adds them; the grid depends only on n, so the order and the bits are fixed), swiglu and its
//   backward (silu(gate) * up), dropout (keep mask from weft::dropout_keep, the same Philox draw
//   as the CPU backend, so both drop the same elements), adamw (f32 master weights and moments;
//   the gradient in any storage type).
// One variant each: grid-stride loops of 256-thread blocks.
#include <cuda_runtime.h>

#include <cmath>
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
using kernel::kThreads;

template <typename T>
__global__ void scale_kernel(T* out, const T* in, float alpha, int64_t n) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    out[i] = from_float<T>(alpha * to_float(in[i]));
  }
}

// Pass 1 of sum_squares: block b sums the elements b, b + grid, ... (strided by the thread).
template <typename T>
__global__ void sum_squares_partial_kernel(float* partial, const T* in, int64_t n) {
  __shared__ float scratch[32];
  float sum = 0.0f;
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const float x = to_float(in[i]);
    sum += x * x;
  }
  sum = kernel::block_sum(sum, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

// Pass 2: one block adds the partial sums.
__global__ void sum_partials_kernel(float* out, const float* partial, int count) {
  __shared__ float scratch[32];
  float sum = 0.0f;
  for (int i = threadIdx.x; i < count; i += blockDim.x) sum += partial[i];
  sum = kernel::block_sum(sum, scratch);
  if (threadIdx.x == 0) out[0] = sum;
}

template <typename T>
__global__ void swiglu_kernel(T* out, const T* gate, const T* up, int64_t n) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    out[i] = from_float<T>(swiglu_value(to_float(gate[i]), to_float(up[i])));
  }
}

template <typename T>
__global__ void swiglu_backward_kernel(T* grad_gate, T* grad_up, const T* grad_out, const T* gate,
                                       const T* up, int64_t n) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    float dg, du;  // computed before either store: the gradients may alias the inputs
    swiglu_grads(to_float(grad_out[i]), to_float(gate[i]), to_float(up[i]), &dg, &du);
    grad_gate[i] = from_float<T>(dg);
    grad_up[i] = from_float<T>(du);
  }
}

template <typename T>
__global__ void dropout_kernel(T* out, const T* in, float probability, float keep_scale,
                               uint64_t seed, uint64_t offset, int64_t n) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const bool keep = dropout_keep(seed, offset, static_cast<uint64_t>(i), probability);
    out[i] = from_float<T>(keep ? to_float(in[i]) * keep_scale : 0.0f);
  }
}

template <typename T>
__global__ void adamw_kernel(float* master, float* m, float* v, const T* grad, int64_t n,
                             AdamWConstants k) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    adamw_update(&master[i], &m[i], &v[i], to_float(grad[i]), k);
  }
}

}  // namespace

template <typename T>
void launch_scale(T* out, const T* in, float alpha, int64_t n, CudaStreamHandle stream) {
  if (n <= 0) return;
  scale_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(out, in, alpha, n);
  check_launch("scale_kernel");
}

template <typename T>
void launch_sum_squares(float* out, const T* in, int64_t n, CudaStreamHandle stream) {
  if (n <= 0) {
    launch_fill<float>(out, 0.0f, 1, stream);
    return;
  }
  // At most 1024 partial sums, so that one block of pass 2 adds them quickly.
  const int blocks = static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 1024));
  kernel::StreamScratch partial(sizeof(float) * static_cast<size_t>(blocks), stream, "sum_squares");
  sum_squares_partial_kernel<T><<<blocks, kThreads, 0, stream>>>(partial.as<float>(), in, n);
  check_launch("sum_squares_partial_kernel");
  sum_partials_kernel<<<1, 1024, 0, stream>>>(out, partial.as<float>(), blocks);
  check_launch("sum_partials_kernel");
}

template <typename T>
void launch_swiglu(T* out, const T* gate, const T* up, int64_t n, CudaStreamHandle stream) {
  if (n <= 0) return;
  swiglu_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(out, gate, up, n);
  check_launch("swiglu_kernel");
}

template <typename T>
void launch_swiglu_backward(T* grad_gate, T* grad_up, const T* grad_out, const T* gate, const T* up,
                            int64_t n, CudaStreamHandle stream) {
  if (n <= 0) return;
  swiglu_backward_kernel<T>
      <<<blocks_for(n), kThreads, 0, stream>>>(grad_gate, grad_up, grad_out, gate, up, n);
  check_launch("swiglu_backward_kernel");
}

template <typename T>
void launch_dropout(T* out, const T* in, float probability, uint64_t seed, uint64_t offset,
                    int64_t n, CudaStreamHandle stream) {
  if (n <= 0) return;
  // probability 1 drops everything: scale 0 instead of 1/0 keeps the output free of NaN.
  const float keep_scale = probability < 1.0f ? 1.0f / (1.0f - probability) : 0.0f;
  dropout_kernel<T>
      <<<blocks_for(n), kThreads, 0, stream>>>(out, in, probability, keep_scale, seed, offset, n);
  check_launch("dropout_kernel");
}

template <typename T>
void launch_adamw(float* master, float* m, float* v, const T* grad, int64_t n,
                  const AdamWStep& step, CudaStreamHandle stream) {
  if (n <= 0) return;
  const AdamWConstants k = adamw_constants(step);
  adamw_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(master, m, v, grad, n, k);
  check_launch("adamw_kernel");
}

#define WEFT_INSTANTIATE(T)                                                                  \
  template void launch_scale<T>(T*, const T*, float, int64_t, CudaStreamHandle);             \
  template void launch_sum_squares<T>(float*, const T*, int64_t, CudaStreamHandle);          \
  template void launch_swiglu<T>(T*, const T*, const T*, int64_t, CudaStreamHandle);         \
  template void launch_swiglu_backward<T>(T*, T*, const T*, const T*, const T*, int64_t,     \
                                          CudaStreamHandle);                                 \
  template void launch_dropout<T>(T*, const T*, float, uint64_t, uint64_t, int64_t,          \
                                  CudaStreamHandle);                                         \
  template void launch_adamw<T>(float*, float*, float*, const T*, int64_t, const AdamWStep&, \
                                CudaStreamHandle);

WEFT_INSTANTIATE(float)
WEFT_INSTANTIATE(bf16_t)
WEFT_INSTANTIATE(f16_t)

}  // namespace weft
