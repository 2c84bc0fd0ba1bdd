// Scalar math shared by the CPU loops (the CUDA kernels have their own copy in kernels/).
#pragma once

#include <cmath>

#include "weft/dtype.hpp"
#include "weft/error.hpp"

namespace weft {

// GeLU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
inline float gelu_tanh(float x) {
  const float inner = 0.7978845608028654f * (x + 0.044715f * x * x * x);
  return 0.5f * x * (1.0f + std::tanh(inner));
}

inline float gelu_tanh_grad(float x) {
  const float inner = 0.7978845608028654f * (x + 0.044715f * x * x * x);
  const float t = std::tanh(inner);
  const float dinner = 0.7978845608028654f * (1.0f + 3.0f * 0.044715f * x * x);
  return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * dinner;
}

// Calls fn(T{}) with T the storage type of the floating-point `dtype` (throws for i32).
template <typename Fn>
void dispatch_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kF32:
      fn(float{});
      return;
    case DType::kBF16:
      fn(bf16_t{});
      return;
    case DType::kF16:
      fn(f16_t{});
      return;
    case DType::kI32:
      break;
  }
  WEFT_THROW(ErrorCode::kInvalidArgument, "this op needs a floating-point dtype, got ",
             dtype_name(dtype));
}

}  // namespace weft
