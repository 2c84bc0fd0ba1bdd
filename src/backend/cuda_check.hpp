// WEFT_CHECK_CUDA / WEFT_CHECK_CUBLAS / WEFT_CHECK_NCCL: status checks for code that calls the CUDA
// runtime, cuBLASLt and NCCL, built on WEFT_CHECK_GEN so every failure becomes a weft::Error.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include "weft/error.hpp"

#define WEFT_CHECK_CUDA(expr, ...) \
  WEFT_CHECK_GEN(::weft::ErrorCode::kCuda, expr, cudaSuccess, cudaGetErrorString, ##__VA_ARGS__)
// cuBLASLt's own status string (as cublasGetStatusString): weft links libcublasLt alone.
#define WEFT_CHECK_CUBLAS(expr, ...)                                                               \
  WEFT_CHECK_GEN(::weft::ErrorCode::kCublas, expr, CUBLAS_STATUS_SUCCESS, cublasLtGetStatusString, \
                 ##__VA_ARGS__)
#define WEFT_CHECK_NCCL(expr, ...) \
  WEFT_CHECK_GEN(::weft::ErrorCode::kNccl, expr, ncclSuccess, ncclGetErrorString, ##__VA_ARGS__)
