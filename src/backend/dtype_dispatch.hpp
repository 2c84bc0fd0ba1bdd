// The one dtype dispatcher of the backends (CPU loops, CUDA host code and kernel launchers).
#pragma once

#include "weft/dtype.hpp"
#include "weft/error.hpp"

namespace weft {

// Calls f(TypeTag<T>{}) with T the storage type of the floating-point `dtype` (weft::Error for
// i32), to pick a loop or launcher instantiation:
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
  WEFT_THROW(ErrorCode::kInvalidArgument, "this op needs a floating-point dtype, got ",
             dtype_name(dtype));
}

}  // namespace weft
