// Backend's checked entry point of gemm, with its argument check.
#include "backend/backend_checks.hpp"
#include "backend/gemm_dims.hpp"
#include "weft/error.hpp"

namespace weft {

namespace {

// Shapes, dtypes, devices and the epilogue's operands.
GemmDims check_gemm(const GemmArgs& args, Device device) {
  const TensorView &a = args.a, &b = args.b, &c = args.c;
  check_on_device(device, "gemm", {{a, "A"}, {b, "B"}, {c, "C"}});
  WEFT_CHECK(a.shape.rank() == 2 && b.shape.rank() == 2 && c.shape.rank() == 2,
             "gemm: A, B and C must be 2D, got A ", a.shape.str(), ", B ", b.shape.str(), ", C ",
             c.shape.str());
  WEFT_CHECK(a.dtype == b.dtype, "gemm: A dtype ", dtype_name(a.dtype), " differs from B dtype ",
             dtype_name(b.dtype));
  WEFT_CHECK(is_floating(a.dtype) && is_floating(c.dtype),
             "gemm: A, B and C must be floating-point, got ", dtype_name(a.dtype), " and ",
             dtype_name(c.dtype));
  WEFT_CHECK(c.dtype == a.dtype || c.dtype == DType::kF32, "gemm: C dtype ", dtype_name(c.dtype),
             " must be f32 or the inputs' dtype ", dtype_name(a.dtype));
  const GemmDims d = gemm_dims(args);
  const int64_t kb = args.transpose_b ? b.shape[1] : b.shape[0];
  WEFT_CHECK(d.k == kb, "gemm: inner dimensions differ: op(A) is ", d.m, "x", d.k, " (A ",
             a.shape.str(), args.transpose_a ? " transposed" : "", "), op(B) is ", kb, "x", d.n,
             " (B ", b.shape.str(), args.transpose_b ? " transposed" : "", ")");
  WEFT_CHECK(c.shape[0] == d.m && c.shape[1] == d.n, "gemm: C is ", c.shape.str(),
             " but op(A) op(B) is [", d.m, ", ", d.n, "]");

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

}  // namespace

void Backend::gemm(const GemmArgs& args) {
  const GemmDims d = check_gemm(args, device());
  if (d.m == 0 || d.n == 0) return;
  WEFT_CHECK(d.k > 0, "gemm: inner dimension k is 0 (A ", args.a.shape.str(), ", B ",
             args.b.shape.str(), ")");
  do_gemm(args);
}

}  // namespace weft
