// Device-side helpers shared by the transformer kernels (norms.cu, attention.cu, vocab.cu,
// transformer.cu): grid-stride indexing, launch checks, deterministic warp/block reductions and
// stream-ordered scratch memory.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "backend/cuda_check.hpp"
#include "backend/device_memory.hpp"
#include "weft/log.hpp"

namespace weft {
namespace kernel {

constexpr int kThreads = 256;
// Enough blocks to fill an H100 many times over; the grid-stride loops cover the rest.
constexpr int64_t kMaxBlocks = 65536;

inline int blocks_for(int64_t n, int threads = kThreads) {
  return static_cast<int>(std::min<int64_t>((n + threads - 1) / threads, kMaxBlocks));
}

inline void check_launch(const char* kernel) {
  WEFT_CHECK_CUDA(cudaGetLastError(), "launching ", kernel);
}

__device__ __forceinline__ int64_t first_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// Butterfly reductions: every lane ends with the same value, and the combination order depends
// only on the lane, so results are reproducible bit for bit.
__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

// The sum (or max) of `v` over the block, returned to every thread, in a fixed order. blockDim.x
// must be a multiple of 32 and every thread must call it; `scratch` holds at least 32 floats and
// may be reused by the next call (the leading barrier protects it).
template <bool kMax = false>
__device__ __forceinline__ float block_reduce(float v, float* scratch) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  const int warps = static_cast<int>(blockDim.x) >> 5;
  v = kMax ? warp_max(v) : warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const float identity = kMax ? -INFINITY : 0.0f;
  v = lane < warps ? scratch[lane] : identity;
  return kMax ? warp_max(v) : warp_sum(v);
}
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  return block_reduce<false>(v, scratch);
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
  return block_reduce<true>(v, scratch);
}

// Temporary device memory for one launcher on the current device: allocated and freed in stream
// order from the pool the device's tensors come from (device_memory.hpp), so it needs no
// synchronization, and an out-of-memory retry trims the same pool a tensor allocation would.
class StreamScratch {
 public:
  StreamScratch(size_t bytes, cudaStream_t stream, const char* op) : stream_(stream) {
    if (bytes == 0) return;
    int device = 0;
    WEFT_CHECK_CUDA(cudaGetDevice(&device), op, ": querying the current device");
    ptr_ = pool_allocate(device, bytes, stream_, op);
  }
  ~StreamScratch() { pool_free(ptr_, stream_); }
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;

  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  cudaStream_t stream_;
  void* ptr_ = nullptr;
};

}  // namespace kernel
}  // namespace weft
