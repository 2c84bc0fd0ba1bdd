// fill_random: writes the window of a global random matrix (Philox4x32-10 counters, uniform or
// Box-Muller normal) through weft::random_value, the same __host__ __device__ function the CPU
// backend calls, so both backends produce the same numbers for the same RandomFill.
// Variants: storage type float, bf16_t or f16_t. This file is compiled with -fmad=false: a
// contracted multiply-add in random_value's double arithmetic would round differently from the
// host, and uniform fills must match the CPU bit for bit.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernel_util.cuh"
#include "kernels.hpp"

namespace weft {
namespace {

template <typename T>
__global__ void fill_random_kernel(T* dst, int64_t rows, int64_t cols, RandomFill spec,
                                   int64_t global_cols) {
  const int64_t n = rows * cols;
  for (int64_t i = kernel::first_index(); i < n; i += kernel::grid_stride()) {
    const int64_t r = i / cols;
    const int64_t c = i - r * cols;
    dst[i] = from_float<T>(random_value(spec, global_cols, spec.row0 + r, spec.col0 + c));
  }
}

}  // namespace

template <typename T>
void launch_fill_random(T* dst, int64_t rows, int64_t cols, const RandomFill& spec,
                        CudaStreamHandle stream) {
  const int64_t n = rows * cols;
  if (n <= 0) return;
  const int64_t global_cols = spec.row_length(cols);
  fill_random_kernel<T>
      <<<kernel::blocks_for(n), kernel::kThreads, 0, stream>>>(dst, rows, cols, spec, global_cols);
  kernel::check_launch("fill_random_kernel");
}

template void launch_fill_random<float>(float*, int64_t, int64_t, const RandomFill&,
                                        CudaStreamHandle);
template void launch_fill_random<bf16_t>(bf16_t*, int64_t, int64_t, const RandomFill&,
                                         CudaStreamHandle);
template void launch_fill_random<f16_t>(f16_t*, int64_t, int64_t, const RandomFill&,
                                        CudaStreamHandle);

}  // namespace weft
