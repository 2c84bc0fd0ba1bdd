// Backend-independent pieces: argument checks, the host stream, backend selection by name.
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
  WEFT_CHECK(a.dtype == b.dtype, op, ": ", what_a, " dtype ", dtype_name(a.dtype),
             " differs from ", what_b, " dtype ", dtype_name(b.dtype));
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
  WEFT_CHECK(c.shape[0] == d.m && c.shape[1] == d.n, "gemm: C is ", c.shape.str(), " but op(A) op(B) is [",
             d.m, ", ", d.n, "]");
  d.lda = a.shape[1];
  d.ldb = b.shape[1];
  d.ldc = c.shape[1];

  const bool wants_bias = args.epilogue == Epilogue::kBias || args.epilogue == Epilogue::kBiasGelu;
  if (wants_bias) {
    check_on_device(args.bias, device, "gemm", "bias");
    WEFT_CHECK(args.bias.numel() == d.n && args.bias.dtype == c.dtype, "gemm: bias must have n = ",
               d.n, " elements of C's dtype ", dtype_name(c.dtype), ", got ", args.bias.str());
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
