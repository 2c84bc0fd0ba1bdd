// Tensor allocation through an Allocator, and TensorView slicing.
#include "weft/tensor.hpp"

#include <algorithm>
#include <utility>

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

int64_t distinct_bytes(const std::vector<TensorView>& views) {
  // Union of the byte ranges [data, data + bytes): sort by start, merge overlaps.
  std::vector<std::pair<uintptr_t, uintptr_t>> ranges;
  for (const TensorView& v : views) {
    if (v.data == nullptr || v.bytes() == 0) continue;
    const auto begin = reinterpret_cast<uintptr_t>(v.data);
    ranges.emplace_back(begin, begin + v.bytes());
  }
  std::sort(ranges.begin(), ranges.end());
  int64_t total = 0;
  uintptr_t covered = 0;  // end of the union so far
  for (const auto& [begin, end] : ranges) {
    const uintptr_t from = std::max(begin, covered);
    if (end > from) total += static_cast<int64_t>(end - from);
    covered = std::max(covered, end);
  }
  return total;
}

Tensor::Tensor(Allocator& allocator, const Shape& shape, DType dtype) {
  const size_t bytes = static_cast<size_t>(checked_mul(
      shape.numel(), static_cast<int64_t>(dtype_size(dtype)), "byte count of a tensor"));
  // One byte minimum: a zero-sized tensor still has a distinct, freeable address.
  void* ptr = allocator.allocate(bytes == 0 ? 1 : bytes);
  Allocator* owner = &allocator;
  storage_ = std::shared_ptr<void>(ptr, [owner](void* p) { owner->deallocate(p); });
  view_ = TensorView{ptr, shape, dtype, allocator.device()};
}

}  // namespace weft
