// WEFT_HOST_DEVICE marks inline functions shared by host code and CUDA kernels (no CUDA header).
#pragma once

#if defined(__CUDACC__)
#define WEFT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define WEFT_HOST_DEVICE inline
#endif
