// Shape: dimension bookkeeping with bounds-checked, Python-style indexing.
#include "weft/shape.hpp"

#include <sstream>

#include "weft/checked.hpp"
#include "weft/error.hpp"

namespace weft {

Shape::Shape(std::initializer_list<int64_t> dims) : Shape(std::vector<int64_t>(dims)) {}

Shape::Shape(std::vector<int64_t> dims) : dims_(std::move(dims)) {
  for (int64_t d : dims_) {
    WEFT_CHECK(d >= 0, "negative dimension ", d, " in shape ", str());
  }
  numel();  // a shape whose element count overflows int64 is refused here, before any allocation
}

int Shape::normalize(int index) const {
  int i = index < 0 ? index + rank() : index;
  WEFT_CHECK(i >= 0 && i < rank(), "dimension index ", index, " out of range for shape ", str());
  return i;
}

int64_t Shape::dim(int index) const { return dims_[normalize(index)]; }

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int64_t d : dims_) n = checked_mul(n, d, "element count of a shape");
  return n;
}

int64_t Shape::cols() const { return rank() == 0 ? 1 : dims_.back(); }
int64_t Shape::rows() const {
  int64_t c = cols();
  return c == 0 ? 0 : numel() / c;
}

Shape Shape::with_dim(int index, int64_t size) const {
  std::vector<int64_t> dims = dims_;
  dims[normalize(index)] = size;
  return Shape(std::move(dims));
}

std::string Shape::str() const {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < dims_.size(); ++i) os << (i ? ", " : "") << dims_[i];
  os << ']';
  return os.str();
}

}  // namespace weft
