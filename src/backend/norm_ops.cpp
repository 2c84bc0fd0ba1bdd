// Backend's checked entry points of the normalizations (layer_norm, rms_norm and their
// backwards), each with its argument check: in [rows, cols] (leading dims folded); mean, rstd f32
// with `rows` elements; gamma, beta (and their gradients) `cols` elements of in's dtype.
#include <cmath>

#include "backend/backend_checks.hpp"
#include "weft/error.hpp"

namespace weft {

namespace {

void check_eps(float eps, const char* op) {
  WEFT_CHECK(eps >= 0.0f && std::isfinite(eps), op, ": eps ", eps, " must be finite and >= 0");
}

void check_layer_norm(const TensorView& out, const TensorView& mean, const TensorView& rstd,
                      const TensorView& in, const TensorView& gamma, const TensorView& beta,
                      float eps, Device device) {
  const char* op = "layer_norm";
  check_on_device(
      device, op,
      {{out, "out"}, {mean, "mean"}, {rstd, "rstd"}, {in, "in"}, {gamma, "gamma"}, {beta, "beta"}});
  check_has_rows(in, op, "in");
  check_floating(in, op, "in");
  check_same_layout(out, in, op, "out", "in");
  const int64_t rows = in.shape.rows(), cols = in.shape.cols();
  check_vector(mean, rows, DType::kF32, op, "mean");
  check_vector(rstd, rows, DType::kF32, op, "rstd");
  check_vector(gamma, cols, in.dtype, op, "gamma");
  check_vector(beta, cols, in.dtype, op, "beta");
  check_eps(eps, op);
}

void check_layer_norm_backward(const TensorView& grad_in, const TensorView& grad_gamma,
                               const TensorView& grad_beta, const TensorView& grad_out,
                               const TensorView& in, const TensorView& gamma,
                               const TensorView& mean, const TensorView& rstd, Device device) {
  const char* op = "layer_norm_backward";
  check_on_device(device, op,
                  {{grad_in, "grad_in"},
                   {grad_gamma, "grad_gamma"},
                   {grad_beta, "grad_beta"},
                   {grad_out, "grad_out"},
                   {in, "in"},
                   {gamma, "gamma"},
                   {mean, "mean"},
                   {rstd, "rstd"}});
  check_has_rows(in, op, "in");
  check_floating(in, op, "in");
  check_same_layout({in, "in"}, op, {{grad_out, "grad_out"}, {grad_in, "grad_in"}});
  const int64_t rows = in.shape.rows(), cols = in.shape.cols();
  check_vector(gamma, cols, in.dtype, op, "gamma");
  check_vector(grad_gamma, cols, in.dtype, op, "grad_gamma");
  check_vector(grad_beta, cols, in.dtype, op, "grad_beta");
  check_vector(mean, rows, DType::kF32, op, "mean");
  check_vector(rstd, rows, DType::kF32, op, "rstd");
}

void check_rms_norm(const TensorView& out, const TensorView& rstd, const TensorView& in,
                    const TensorView& gamma, float eps, Device device) {
  const char* op = "rms_norm";
  check_on_device(device, op, {{out, "out"}, {rstd, "rstd"}, {in, "in"}, {gamma, "gamma"}});
  check_has_rows(in, op, "in");
  check_floating(in, op, "in");
  check_same_layout(out, in, op, "out", "in");
  check_vector(rstd, in.shape.rows(), DType::kF32, op, "rstd");
  check_vector(gamma, in.shape.cols(), in.dtype, op, "gamma");
  check_eps(eps, op);
}

void check_rms_norm_backward(const TensorView& grad_in, const TensorView& grad_gamma,
                             const TensorView& grad_out, const TensorView& in,
                             const TensorView& gamma, const TensorView& rstd, Device device) {
  const char* op = "rms_norm_backward";
  check_on_device(device, op,
                  {{grad_in, "grad_in"},
                   {grad_gamma, "grad_gamma"},
                   {grad_out, "grad_out"},
                   {in, "in"},
                   {gamma, "gamma"},
                   {rstd, "rstd"}});
  check_has_rows(in, op, "in");
  check_floating(in, op, "in");
  check_same_layout({in, "in"}, op, {{grad_out, "grad_out"}, {grad_in, "grad_in"}});
  check_vector(gamma, in.shape.cols(), in.dtype, op, "gamma");
  check_vector(grad_gamma, in.shape.cols(), in.dtype, op, "grad_gamma");
  check_vector(rstd, in.shape.rows(), DType::kF32, op, "rstd");
}

}  // namespace

void Backend::layer_norm(TensorView out, TensorView mean, TensorView rstd, TensorView in,
                         TensorView gamma, TensorView beta, float eps) {
  check_layer_norm(out, mean, rstd, in, gamma, beta, eps, device());
  do_layer_norm(out, mean, rstd, in, gamma, beta, eps);
}

void Backend::layer_norm_backward(TensorView grad_in, TensorView grad_gamma, TensorView grad_beta,
                                  TensorView grad_out, TensorView in, TensorView gamma,
                                  TensorView mean, TensorView rstd) {
  check_layer_norm_backward(grad_in, grad_gamma, grad_beta, grad_out, in, gamma, mean, rstd,
                            device());
  do_layer_norm_backward(grad_in, grad_gamma, grad_beta, grad_out, in, gamma, mean, rstd);
}

void Backend::rms_norm(TensorView out, TensorView rstd, TensorView in, TensorView gamma,
                       float eps) {
  check_rms_norm(out, rstd, in, gamma, eps, device());
  do_rms_norm(out, rstd, in, gamma, eps);
}

void Backend::rms_norm_backward(TensorView grad_in, TensorView grad_gamma, TensorView grad_out,
                                TensorView in, TensorView gamma, TensorView rstd) {
  check_rms_norm_backward(grad_in, grad_gamma, grad_out, in, gamma, rstd, device());
  do_rms_norm_backward(grad_in, grad_gamma, grad_out, in, gamma, rstd);
}

}  // namespace weft
