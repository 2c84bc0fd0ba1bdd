// DType names and sizes.
#include "weft/dtype.hpp"

#include "weft/error.hpp"

namespace weft {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kBF16:
      return 2;
    case DType::kF16:
      return 2;
    case DType::kI32:
      return 4;
  }
  WEFT_THROW(ErrorCode::kInternal, "unknown dtype ", static_cast<int>(dtype));
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kBF16:
      return "bf16";
    case DType::kF16:
      return "f16";
    case DType::kI32:
      return "i32";
  }
  return "unknown";
}

DType parse_dtype(const std::string& name) {
  if (name == "f32" || name == "float32" || name == "fp32") return DType::kF32;
  if (name == "bf16" || name == "bfloat16") return DType::kBF16;
  if (name == "f16" || name == "float16" || name == "fp16") return DType::kF16;
  if (name == "i32" || name == "int32") return DType::kI32;
  WEFT_THROW(ErrorCode::kInvalidArgument, "unknown dtype '", name,
             "': expected f32, bf16, f16 or i32");
}

}  // namespace weft
