// Tensor allocation through a Backend, and TensorView slicing.
#include "weft/tensor.hpp"

#include "weft/backend.hpp"
#include "weft/error.hpp"

namespace weft {

std::string Device::str() const {
  return kind == DeviceKind::kCpu ? std::string("cpu") : "cuda:" + std::to_string(index);
}

TensorView TensorView::rows(int64_t begin, int64_t count) const {
  const int64_t total = shape.rows();
  WEFT_CHECK(begin >= 0 && count >= 0 && begin + count <= total, "rows [", begin, ", ",
             begin + count, ") out of range for ", str());
  TensorView v = *this;
  v.data = static_cast<char*>(data) + static_cast<size_t>(begin * shape.cols()) * dtype_size(dtype);
  v.shape = Shape({count, shape.cols()});
  return v;
}

TensorView TensorView::reshaped(const Shape& new_shape) const {
  WEFT_CHECK(new_shape.numel() == numel(), "cannot reshape ", str(), " to ", new_shape.str(),
             ": element counts differ");
  TensorView v = *this;
  v.shape = new_shape;
  return v;
}

std::string TensorView::str() const {
  return std::string(dtype_name(dtype)) + shape.str() + "@" + device.str();
}

Tensor::Tensor(Backend& backend, const Shape& shape, DType dtype) {
  size_t bytes = static_cast<size_t>(shape.numel()) * dtype_size(dtype);
  // One byte minimum: a zero-sized tensor still has a distinct, freeable address.
  void* ptr = backend.allocate(bytes == 0 ? 1 : bytes);
  Backend* owner = &backend;
  storage_ = std::shared_ptr<void>(ptr, [owner](void* p) { owner->deallocate(p); });
  view_ = TensorView{ptr, shape, dtype, backend.device()};
}

}  // namespace weft
