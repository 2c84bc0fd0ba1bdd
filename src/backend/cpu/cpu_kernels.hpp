// Scalar math shared by the CPU loops (the CUDA kernels have their own copy in kernels/).
#pragma once

#include <cmath>

#include "backend/pointwise_math.hpp"
#include "weft/dtype.hpp"
#include "weft/error.hpp"

namespace weft {

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
