// Shape: the dimensions of a dense, row-major (last dimension contiguous) tensor.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

namespace weft {

class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims);
  explicit Shape(std::vector<int64_t> dims);

  int rank() const { return static_cast<int>(dims_.size()); }
  // Negative indices count from the end, as in Python: dim(-1) is the last dimension.
  int64_t dim(int index) const;
  int64_t operator[](int index) const { return dim(index); }
  int64_t numel() const;
  // Rows and columns of the 2D matrix view: all leading dimensions folded into rows.
  int64_t rows() const;
  int64_t cols() const;
  const std::vector<int64_t>& dims() const { return dims_; }
  // A copy with dimension `index` replaced by `size`.
  Shape with_dim(int index, int64_t size) const;
  std::string str() const;  // "[4, 8]"

  bool operator==(const Shape& other) const { return dims_ == other.dims_; }
  bool operator!=(const Shape& other) const { return dims_ != other.dims_; }

 private:
  int normalize(int index) const;
  std::vector<int64_t> dims_;
};

}  // namespace weft
