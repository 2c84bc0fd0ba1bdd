// Backend's checked entry points of the memory ops (copy, copy_columns, convert, fill,
// fill_random), each with its argument check.
#include "backend/backend_checks.hpp"
#include "weft/error.hpp"

namespace weft {

namespace {

void check_copy(const TensorView& dst, const TensorView& src, Device device) {
  check_host_or_device(dst, device, "copy", "dst");
  check_host_or_device(src, device, "copy", "src");
  check_same_layout(dst, src, "copy", "dst", "src");
}

void check_copy_columns(const TensorView& dst, int64_t dst_col, const TensorView& src,
                        int64_t src_col, int64_t cols, Device device) {
  check_host_or_device(dst, device, "copy_columns", "dst");
  check_host_or_device(src, device, "copy_columns", "src");
  WEFT_CHECK(dst.dtype == src.dtype, "copy_columns: dtypes differ (", dtype_name(dst.dtype), " vs ",
             dtype_name(src.dtype), ")");
  WEFT_CHECK(src.shape.rows() == dst.shape.rows(), "copy_columns: row counts differ: dst ",
             dst.shape.str(), ", src ", src.shape.str());
  WEFT_CHECK(cols >= 0 && dst_col >= 0 && src_col >= 0 && dst_col + cols <= dst.shape.cols() &&
                 src_col + cols <= src.shape.cols(),
             "copy_columns: columns [", src_col, ", ", src_col + cols, ") of ", src.shape.str(),
             " to [", dst_col, ", ", dst_col + cols, ") of ", dst.shape.str(), " out of range");
}

void check_convert(const TensorView& dst, const TensorView& src, Device device) {
  check_on_device(dst, device, "convert", "dst");
  check_on_device(src, device, "convert", "src");
  WEFT_CHECK(dst.shape == src.shape, "convert: shapes differ: dst ", dst.shape.str(), ", src ",
             src.shape.str());
}

void check_fill_random(const TensorView& dst, const RandomFill& spec, Device device) {
  check_on_device(dst, device, "fill_random", "dst");
  const int64_t cols = dst.shape.cols();
  const int64_t global_cols = spec.row_length(cols);
  WEFT_CHECK(spec.col0 >= 0 && spec.row0 >= 0 && spec.col0 + cols <= global_cols,
             "fill_random: window at (", spec.row0, ", ", spec.col0, ") of ", cols,
             " columns does not fit a global row of ", global_cols);
}

}  // namespace

void Backend::copy(TensorView dst, TensorView src) {
  check_copy(dst, src, device());
  do_copy(dst, src);
}

void Backend::copy_columns(TensorView dst, int64_t dst_col, TensorView src, int64_t src_col,
                           int64_t cols) {
  check_copy_columns(dst, dst_col, src, src_col, cols, device());
  do_copy_columns(dst, dst_col, src, src_col, cols);
}

void Backend::convert(TensorView dst, TensorView src) {
  check_convert(dst, src, device());
  do_convert(dst, src);
}

void Backend::fill(TensorView dst, float value) {
  check_on_device(dst, device(), "fill", "dst");
  do_fill(dst, value);
}

void Backend::fill_random(TensorView dst, const RandomFill& spec) {
  check_fill_random(dst, spec, device());
  do_fill_random(dst, spec);
}

}  // namespace weft
