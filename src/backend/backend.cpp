// Backend-independent pieces: argument checks, the host stream, backend selection by name.
#include <cstdlib>
#include <string>

#include "backend/backend_checks.hpp"
#include "weft/error.hpp"

namespace weft {

namespace {
class HostStream final : public Stream {
 public:
  void synchronize() override {}
  void* native_handle() const override { return nullptr; }
};
}  // namespace

Stream& host_stream() {
  static HostStream stream;
  return stream;
}

void check_on_device(const TensorView& view, Device device, const char* op, const char* what) {
  WEFT_CHECK(view.data != nullptr || view.numel() == 0, op, ": ", what, " has no data");
  WEFT_CHECK(view.device == device, op, ": ", what, " ", view.str(), " is not on ", device.str());
}

void check_same_layout(const TensorView& a, const TensorView& b, const char* op, const char* what_a,
                       const char* what_b) {
  WEFT_CHECK(a.shape == b.shape, op, ": ", what_a, " shape ", a.shape.str(), " differs from ",
             what_b, " shape ", b.shape.str());
  WEFT_CHECK(a.dtype == b.dtype, op, ": ", what_a, " dtype ", dtype_name(a.dtype), " differs from ",
             what_b, " dtype ", dtype_name(b.dtype));
}

GemmDims check_gemm_args(const GemmArgs& args, Device device) {
  const TensorView &a = args.a, &b = args.b, &c = args.c;
  check_on_device(a, device, "gemm", "A");
  check_on_device(b, device, "gemm", "B");
  check_on_device(c, device, "gemm", "C");
  WEFT_CHECK(a.shape.rank() == 2 && b.shape.rank() == 2 && c.shape.rank() == 2,
             "gemm: A, B and C must be 2D, got A ", a.shape.str(), ", B ", b.shape.str(), ", C ",
             c.shape.str());
  WEFT_CHECK(a.dtype == b.dtype, "gemm: A dtype ", dtype_name(a.dtype), " differs from B dtype ",
             dtype_name(b.dtype));
  WEFT_CHECK(is_floating(a.dtype) && is_floating(c.dtype), "gemm: A, B and C must be floating-point, got ",
             dtype_name(a.dtype), " and ", dtype_name(c.dtype));
  WEFT_CHECK(c.dtype == a.dtype || c.dtype == DType::kF32, "gemm: C dtype ", dtype_name(c.dtype),
             " must be f32 or the inputs' dtype ", dtype_name(a.dtype));
  GemmDims d;
  d.m = args.transpose_a ? a.shape[1] : a.shape[0];
  d.k = args.transpose_a ? a.shape[0] : a.shape[1];
  int64_t kb = args.transpose_b ? b.shape[1] : b.shape[0];
  d.n = args.transpose_b ? b.shape[0] : b.shape[1];
  WEFT_CHECK(d.k == kb, "gemm: inner dimensions differ: op(A) is ", d.m, "x", d.k, " (A ",
             a.shape.str(), args.transpose_a ? " transposed" : "", "), op(B) is ", kb, "x", d.n,
             " (B ", b.shape.str(), args.transpose_b ? " transposed" : "", ")");
  WEFT_CHECK(c.shape[0] == d.m && c.shape[1] == d.n, "gemm: C is ", c.shape.str(),
             " but op(A) op(B) is [", d.m, ", ", d.n, "]");
  d.lda = a.shape[1];
  d.ldb = b.shape[1];
  d.ldc = c.shape[1];

  const bool wants_bias = args.epilogue == Epilogue::kBias || args.epilogue == Epilogue::kBiasGelu;
  if (wants_bias) {
    check_on_device(args.bias, device, "gemm", "bias");
    WEFT_CHECK(args.bias.numel() == d.n && args.bias.dtype == c.dtype,
               "gemm: bias must have n = ", d.n, " elements of C's dtype ", dtype_name(c.dtype),
               ", got ", args.bias.str());
  }
  const bool gelu = args.epilogue == Epilogue::kGelu || args.epilogue == Epilogue::kBiasGelu;
  if (gelu && args.gelu_input.data != nullptr) {
    check_on_device(args.gelu_input, device, "gemm", "gelu_input");
    WEFT_CHECK(args.gelu_input.numel() == d.m * d.n && args.gelu_input.dtype == c.dtype,
               "gemm: gelu_input must be m x n = ", d.m, " x ", d.n, " of C's dtype ",
               dtype_name(c.dtype), ", got ", args.gelu_input.str());
  }
  WEFT_CHECK(gelu || args.gelu_input.data == nullptr,
             "gemm: gelu_input is only written by the kGelu and kBiasGelu epilogues");
  if (args.epilogue == Epilogue::kBiasGrad) {
    check_on_device(args.bias_grad, device, "gemm", "bias_grad");
    WEFT_CHECK(args.bias_grad.numel() == d.m && args.bias_grad.dtype == c.dtype,
               "gemm: bias_grad must have m = ", d.m, " elements of C's dtype ",
               dtype_name(c.dtype), ", got ", args.bias_grad.str());
  }
  return d;
}

void check_copy_columns_args(const TensorView& dst, int64_t dst_col, const TensorView& src,
                             int64_t src_col, int64_t cols) {
  WEFT_CHECK(dst.dtype == src.dtype, "copy_columns: dtypes differ (", dtype_name(dst.dtype), " vs ",
             dtype_name(src.dtype), ")");
  WEFT_CHECK(src.shape.rows() == dst.shape.rows(), "copy_columns: row counts differ: dst ",
             dst.shape.str(), ", src ", src.shape.str());
  WEFT_CHECK(cols >= 0 && dst_col >= 0 && src_col >= 0 && dst_col + cols <= dst.shape.cols() &&
                 src_col + cols <= src.shape.cols(),
             "copy_columns: columns [", src_col, ", ", src_col + cols, ") of ", src.shape.str(),
             " to [", dst_col, ", ", dst_col + cols, ") of ", dst.shape.str(), " out of range");
}

int64_t check_fill_random_args(const TensorView& dst, const RandomFill& spec) {
  const int64_t cols = dst.shape.cols();
  const int64_t global_cols = spec.global_cols < 0 ? cols : spec.global_cols;
  WEFT_CHECK(spec.col0 >= 0 && spec.row0 >= 0 && spec.col0 + cols <= global_cols,
             "fill_random: window at (", spec.row0, ", ", spec.col0, ") of ", cols,
             " columns does not fit a global row of ", global_cols);
  return global_cols;
}

void check_add_args(const TensorView& out, const TensorView& a, const TensorView& b,
                    Device device) {
  check_on_device(out, device, "add", "out");
  check_on_device(a, device, "add", "a");
  check_on_device(b, device, "add", "b");
  check_same_layout(out, a, "add", "out", "a");
  check_same_layout(out, b, "add", "out", "b");
}

void check_add_bias_args(const TensorView& out, const TensorView& in, const TensorView& bias,
                         Device device) {
  check_on_device(out, device, "add_bias", "out");
  check_on_device(in, device, "add_bias", "in");
  check_on_device(bias, device, "add_bias", "bias");
  check_same_layout(out, in, "add_bias", "out", "in");
  const int64_t cols = out.shape.cols();
  WEFT_CHECK(bias.numel() == cols && bias.dtype == out.dtype, "add_bias: bias ", bias.str(),
             " must have ", cols, " elements of dtype ", dtype_name(out.dtype));
}

void check_gelu_args(const TensorView& out, const TensorView& in, Device device) {
  check_on_device(out, device, "gelu", "out");
  check_on_device(in, device, "gelu", "in");
  check_same_layout(out, in, "gelu", "out", "in");
}

void check_gelu_backward_args(const TensorView& grad_in, const TensorView& grad_out,
                              const TensorView& input, Device device) {
  check_on_device(grad_in, device, "gelu_backward", "grad_in");
  check_on_device(grad_out, device, "gelu_backward", "grad_out");
  check_on_device(input, device, "gelu_backward", "input");
  check_same_layout(grad_in, grad_out, "gelu_backward", "grad_in", "grad_out");
  check_same_layout(grad_in, input, "gelu_backward", "grad_in", "input");
}

void check_convert_args(const TensorView& dst, const TensorView& src, Device device) {
  check_on_device(dst, device, "convert", "dst");
  check_on_device(src, device, "convert", "src");
  WEFT_CHECK(dst.shape == src.shape, "convert: shapes differ: dst ", dst.shape.str(), ", src ",
             src.shape.str());
}

bool poison_allocations() {
  static const bool poison = [] {
    const char* env = std::getenv("WEFT_POISON_ALLOCATIONS");
    return env != nullptr && env[0] == '1';
  }();
  return poison;
}

std::unique_ptr<Backend> make_backend(const std::string& spec) {
  if (spec == "cpu") return make_cpu_backend();
  if (spec == "cuda") return make_cuda_backend(0);
  if (spec.rfind("cuda:", 0) == 0) {
    const std::string ordinal = spec.substr(5);
    WEFT_CHECK(!ordinal.empty() && ordinal.find_first_not_of("0123456789") == std::string::npos,
               "backend '", spec, "': expected cpu, cuda or cuda:N");
    return make_cuda_backend(std::stoi(ordinal));
  }
  WEFT_THROW(ErrorCode::kInvalidArgument, "unknown backend '", spec,
             "': expected cpu, cuda or cuda:N");
}

}  // namespace weft
