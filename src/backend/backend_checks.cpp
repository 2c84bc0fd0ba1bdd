// The building blocks of the ops' argument checks, and the allocation-poisoning switch.
#include "backend/backend_checks.hpp"

#include <cstdlib>

#include "weft/error.hpp"

namespace weft {

void check_on_device(const TensorView& view, Device device, const char* op, const char* what) {
  WEFT_CHECK(view.data != nullptr || view.numel() == 0, op, ": ", what, " has no data");
  WEFT_CHECK(view.device == device, op, ": ", what, " ", view.str(), " is not on ", device.str());
}

void check_host_or_device(const TensorView& view, Device device, const char* op, const char* what) {
  if (device.is_cpu()) return check_on_device(view, device, op, what);
  WEFT_CHECK(view.data != nullptr || view.numel() == 0, op, ": ", what, " has no data");
  WEFT_CHECK(view.device.is_cpu() || view.device == device, op, ": ", what, " ", view.str(),
             " is neither in host memory nor on ", device.str());
}

void check_same_layout(const TensorView& a, const TensorView& b, const char* op, const char* what_a,
                       const char* what_b) {
  WEFT_CHECK(a.shape == b.shape, op, ": ", what_a, " shape ", a.shape.str(), " differs from ",
             what_b, " shape ", b.shape.str());
  WEFT_CHECK(a.dtype == b.dtype, op, ": ", what_a, " dtype ", dtype_name(a.dtype), " differs from ",
             what_b, " dtype ", dtype_name(b.dtype));
}

void check_on_device(Device device, const char* op, std::initializer_list<Operand> operands) {
  for (const Operand& o : operands) check_on_device(o.view, device, op, o.name);
}

void check_same_layout(const Operand& like, const char* op,
                       std::initializer_list<Operand> operands) {
  for (const Operand& o : operands) check_same_layout(o.view, like.view, op, o.name, like.name);
}

void check_floating(const TensorView& v, const char* op, const char* what) {
  WEFT_CHECK(is_floating(v.dtype), op, ": ", what, " ", v.str(), " must be f32, bf16 or f16");
}

void check_dtype(const TensorView& v, DType dtype, const char* op, const char* what) {
  WEFT_CHECK(v.dtype == dtype, op, ": ", what, " ", v.str(), " must be ", dtype_name(dtype));
}

void check_vector(const TensorView& v, int64_t count, DType dtype, const char* op,
                  const char* what) {
  WEFT_CHECK(v.numel() == count && v.dtype == dtype, op, ": ", what, " ", v.str(), " must have ",
             count, " elements of dtype ", dtype_name(dtype));
}

void check_matrix(const TensorView& v, int64_t rows, int64_t cols, DType dtype, const char* op,
                  const char* what) {
  WEFT_CHECK(
      v.shape.rank() >= 1 && v.shape.rows() == rows && v.shape.cols() == cols && v.dtype == dtype,
      op, ": ", what, " ", v.str(), " must be [", rows, ", ", cols, "] of dtype ",
      dtype_name(dtype));
}

void check_has_rows(const TensorView& v, const char* op, const char* what) {
  WEFT_CHECK(v.shape.rank() >= 1, op, ": ", what, " ", v.str(), " must have at least 1 dimension");
}

bool poison_allocations() {
  static const bool poison = [] {
    const char* env = std::getenv("WEFT_POISON_ALLOCATIONS");
    return env != nullptr && env[0] == '1';
  }();
  return poison;
}

}  // namespace weft
