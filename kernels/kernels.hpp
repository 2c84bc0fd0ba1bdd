// Launchers of weft's CUDA kernels (elementwise.cu, random.cu), callable from plain C++.
//
// Every launcher queues its kernel on `stream`, checks the launch with cudaGetLastError and throws
// weft::Error on failure; an empty range launches nothing. Templates are instantiated in the .cu
// files for the storage types float, bf16_t and f16_t (all pairs where two types appear); math
// is always done in float (weft::to_float / weft::from_float), as on the CPU backend.
#pragma once

#include <cstdint>

#include "weft/dtype.hpp"
#include "weft/error.hpp"
#include "weft/rng.hpp"

// cudaStream_t is `CUstream_st*`; declaring the struct keeps CUDA headers out of C++ callers.
struct CUstream_st;

namespace weft {

using CudaStreamHandle = CUstream_st*;

// Calls f(TypeTag<T>{}) with T the storage type of `dtype`, to pick a launcher instantiation:
//   dispatch_storage(view.dtype, [&](auto tag) { using T = typename decltype(tag)::type; ... });
template <typename T>
struct TypeTag {
  using type = T;
};
template <typename F>
void dispatch_storage(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kF32:
      f(TypeTag<float>{});
      return;
    case DType::kBF16:
      f(TypeTag<bf16_t>{});
      return;
    case DType::kF16:
      f(TypeTag<f16_t>{});
      return;
    case DType::kI32:
      break;
  }
  WEFT_CHECK(false, "this op needs a floating-point dtype, got ", dtype_name(dtype));
}

// dst[i] = Dst(src[i]), rounding to nearest even.
template <typename Dst, typename Src>
void launch_convert(Dst* dst, const Src* src, int64_t n, CudaStreamHandle stream);

// dst[i] = T(value).
template <typename T>
void launch_fill(T* dst, float value, int64_t n, CudaStreamHandle stream);

// dst (rows x cols, row-major) = the window of the global random matrix that `spec` describes.
template <typename T>
void launch_fill_random(T* dst, int64_t rows, int64_t cols, const RandomFill& spec,
                        CudaStreamHandle stream);

// out[i] = a[i] + b[i]. `out` may alias an input.
template <typename T>
void launch_add(T* out, const T* a, const T* b, int64_t n, CudaStreamHandle stream);

// out[r, c] = in[r, c] + bias[c] for a rows x cols matrix. `out` may alias `in`.
template <typename T>
void launch_add_bias(T* out, const T* in, const T* bias, int64_t rows, int64_t cols,
                     CudaStreamHandle stream);

// out[i] = gelu(in[i]), the tanh approximation. `out` may alias `in`.
template <typename T>
void launch_gelu(T* out, const T* in, int64_t n, CudaStreamHandle stream);

// grad_in[i] = grad_out[i] * gelu'(input[i]). `grad_in` may alias an input.
template <typename T>
void launch_gelu_backward(T* grad_in, const T* grad_out, const T* input, int64_t n,
                          CudaStreamHandle stream);

// out[r] = sum over c of in[r, c] (rows x cols, row-major); accumulated in float, in a fixed
// order, so repeated runs give identical bits.
template <typename Out, typename In>
void launch_sum_rows(Out* out, const In* in, int64_t rows, int64_t cols, CudaStreamHandle stream);

// out[c] = sum over r of in[r, c] (rows x cols, row-major); float, fixed order as above.
template <typename Out, typename In>
void launch_sum_columns(Out* out, const In* in, int64_t rows, int64_t cols,
                        CudaStreamHandle stream);

}  // namespace weft
