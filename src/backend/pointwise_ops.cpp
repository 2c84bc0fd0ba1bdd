// Backend's checked entry points of the elementwise ops and reductions (add, add_bias, gelu,
// scale, sum_squares, swiglu, dropout, adamw and the backwards), each with its argument check.
#include <cmath>

#include "backend/backend_checks.hpp"
#include "weft/error.hpp"

namespace weft {

namespace {

// out and in on `device`, of one shape and dtype.
void check_unary(const TensorView& out, const TensorView& in, Device device, const char* op) {
  check_on_device(out, device, op, "out");
  check_on_device(in, device, op, "in");
  check_same_layout(out, in, op, "out", "in");
}

void check_add(const TensorView& out, const TensorView& a, const TensorView& b, Device device) {
  check_on_device(device, "add", {{out, "out"}, {a, "a"}, {b, "b"}});
  check_same_layout(out, a, "add", "out", "a");
  check_same_layout(out, b, "add", "out", "b");
}

void check_add_bias(const TensorView& out, const TensorView& in, const TensorView& bias,
                    Device device) {
  check_on_device(device, "add_bias", {{out, "out"}, {in, "in"}, {bias, "bias"}});
  check_same_layout(out, in, "add_bias", "out", "in");
  const int64_t cols = out.shape.cols();
  WEFT_CHECK(bias.numel() == cols && bias.dtype == out.dtype, "add_bias: bias ", bias.str(),
             " must have ", cols, " elements of dtype ", dtype_name(out.dtype));
}

void check_gelu_backward(const TensorView& grad_in, const TensorView& grad_out,
                         const TensorView& input, Device device) {
  check_on_device(device, "gelu_backward",
                  {{grad_in, "grad_in"}, {grad_out, "grad_out"}, {input, "input"}});
  check_same_layout(grad_in, grad_out, "gelu_backward", "grad_in", "grad_out");
  check_same_layout(grad_in, input, "gelu_backward", "grad_in", "input");
}

void check_sum_squares(const TensorView& out, const TensorView& in, Device device) {
  check_on_device(out, device, "sum_squares", "out");
  check_on_device(in, device, "sum_squares", "in");
  check_floating(in, "sum_squares", "in");
  check_vector(out, 1, DType::kF32, "sum_squares", "out");
}

// All operands share one shape and floating dtype.
void check_swiglu(const TensorView& out, const TensorView& gate, const TensorView& up,
                  Device device) {
  const char* op = "swiglu";
  check_on_device(device, op, {{out, "out"}, {gate, "gate"}, {up, "up"}});
  check_floating(gate, op, "gate");
  check_same_layout({gate, "gate"}, op, {{up, "up"}, {out, "out"}});
}

void check_swiglu_backward(const TensorView& grad_gate, const TensorView& grad_up,
                           const TensorView& grad_out, const TensorView& gate, const TensorView& up,
                           Device device) {
  const char* op = "swiglu_backward";
  check_on_device(device, op,
                  {{grad_gate, "grad_gate"},
                   {grad_up, "grad_up"},
                   {grad_out, "grad_out"},
                   {gate, "gate"},
                   {up, "up"}});
  check_floating(gate, op, "gate");
  check_same_layout(
      {gate, "gate"}, op,
      {{up, "up"}, {grad_out, "grad_out"}, {grad_gate, "grad_gate"}, {grad_up, "grad_up"}});
}

// master, m, v f32 of one shape; grad floating with as many elements; step >= 1, betas in
// [0, 1), eps >= 0, lr >= 0, weight_decay >= 0, grad_scale finite.
void check_adamw(const TensorView& master, const TensorView& m, const TensorView& v,
                 const TensorView& grad, const AdamWStep& step, Device device) {
  const char* op = "adamw";
  check_on_device(device, op, {{master, "master"}, {m, "m"}, {v, "v"}, {grad, "grad"}});
  check_dtype(master, DType::kF32, op, "master");
  check_same_layout({master, "master"}, op, {{m, "m"}, {v, "v"}});
  check_floating(grad, op, "grad");
  WEFT_CHECK(grad.numel() == master.numel(), op, ": grad ", grad.str(), " must have ",
             master.numel(), " elements like master ", master.str());
  WEFT_CHECK(step.step >= 1, op, ": step ", step.step, " must be >= 1 (1-based)");
  WEFT_CHECK(step.beta1 >= 0.0f && step.beta1 < 1.0f && step.beta2 >= 0.0f && step.beta2 < 1.0f, op,
             ": beta1 ", step.beta1, " and beta2 ", step.beta2, " must be in [0, 1)");
  WEFT_CHECK(step.lr >= 0.0f && step.eps >= 0.0f && step.weight_decay >= 0.0f &&
                 std::isfinite(step.lr) && std::isfinite(step.eps) &&
                 std::isfinite(step.weight_decay) && std::isfinite(step.grad_scale),
             op, ": lr ", step.lr, ", eps ", step.eps, " and weight_decay ", step.weight_decay,
             " must be finite and >= 0, grad_scale ", step.grad_scale, " finite");
}

}  // namespace

void Backend::add(TensorView out, TensorView a, TensorView b) {
  check_add(out, a, b, device());
  do_add(out, a, b);
}

void Backend::add_bias(TensorView out, TensorView in, TensorView bias) {
  check_add_bias(out, in, bias, device());
  do_add_bias(out, in, bias);
}

void Backend::gelu(TensorView out, TensorView in) {
  check_unary(out, in, device(), "gelu");
  do_gelu(out, in);
}

void Backend::gelu_backward(TensorView grad_in, TensorView grad_out, TensorView input) {
  check_gelu_backward(grad_in, grad_out, input, device());
  do_gelu_backward(grad_in, grad_out, input);
}

void Backend::scale(TensorView out, TensorView in, float alpha) {
  check_on_device(out, device(), "scale", "out");
  check_on_device(in, device(), "scale", "in");
  check_floating(in, "scale", "in");
  check_same_layout(out, in, "scale", "out", "in");
  do_scale(out, in, alpha);
}

void Backend::sum_squares(TensorView out, TensorView in) {
  check_sum_squares(out, in, device());
  do_sum_squares(out, in);
}

void Backend::swiglu(TensorView out, TensorView gate, TensorView up) {
  check_swiglu(out, gate, up, device());
  do_swiglu(out, gate, up);
}

void Backend::swiglu_backward(TensorView grad_gate, TensorView grad_up, TensorView grad_out,
                              TensorView gate, TensorView up) {
  check_swiglu_backward(grad_gate, grad_up, grad_out, gate, up, device());
  do_swiglu_backward(grad_gate, grad_up, grad_out, gate, up);
}

void Backend::dropout(TensorView out, TensorView in, float probability, uint64_t seed,
                      uint64_t offset) {
  check_on_device(out, device(), "dropout", "out");
  check_on_device(in, device(), "dropout", "in");
  check_floating(in, "dropout", "in");
  check_same_layout(out, in, "dropout", "out", "in");
  WEFT_CHECK(probability >= 0.0f && probability < 1.0f, "dropout: probability ", probability,
             " must be in [0, 1)");
  do_dropout(out, in, probability, seed, offset);
}

void Backend::adamw(TensorView master, TensorView m, TensorView v, TensorView grad,
                    const AdamWStep& step) {
  check_adamw(master, m, v, grad, step, device());
  do_adamw(master, m, v, grad, step);
}

}  // namespace weft
