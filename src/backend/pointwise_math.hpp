// Per-element math shared by the CPU loops and the CUDA kernels, so both backends compute the
// same formula: GeLU (tanh approximation) and its derivative, SiLU-gated units, one AdamW update.
#pragma once

#include <cmath>

#include "weft/backend.hpp"
#include "weft/host_device.hpp"

namespace weft {

// GeLU, tanh approximation (GPT-2, Megatron, cuBLASLt's epilogue):
// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
WEFT_HOST_DEVICE float gelu_tanh(float x) {
  const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
  return 0.5f * x * (1.0f + tanhf(u));
}

// d/dx of gelu_tanh: 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx with t = tanh(u).
WEFT_HOST_DEVICE float gelu_tanh_grad(float x) {
  const float x2 = x * x;
  const float t = tanhf(0.7978845608028654f * (x + 0.044715f * x2 * x));
  const float du = 0.7978845608028654f * (1.0f + 3.0f * 0.044715f * x2);
  return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
}

WEFT_HOST_DEVICE float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// SwiGLU: silu(gate) * up.
WEFT_HOST_DEVICE float swiglu_value(float gate, float up) { return gate * sigmoid(gate) * up; }

// Its gradients, with d silu(g)/dg = s (1 + g (1 - s)), s = sigmoid(g).
WEFT_HOST_DEVICE void swiglu_grads(float grad_out, float gate, float up, float* grad_gate,
                                   float* grad_up) {
  const float s = sigmoid(gate);
  *grad_gate = grad_out * up * s * (1.0f + gate * (1.0f - s));
  *grad_up = grad_out * gate * s;
}

// The per-step constants of AdamW; bias corrections are 1 - beta^step, computed once on the host.
struct AdamWConstants {
  float lr, beta1, beta2, eps, weight_decay, grad_scale;
  float bias_correction1, bias_correction2;
};

inline AdamWConstants adamw_constants(const AdamWStep& step) {
  const double t = static_cast<double>(step.step);
  return AdamWConstants{step.lr,
                        step.beta1,
                        step.beta2,
                        step.eps,
                        step.weight_decay,
                        step.grad_scale,
                        static_cast<float>(1.0 - std::pow(static_cast<double>(step.beta1), t)),
                        static_cast<float>(1.0 - std::pow(static_cast<double>(step.beta2), t))};
}

// One element of AdamW with decoupled weight decay (Loshchilov & Hutter).
WEFT_HOST_DEVICE void adamw_update(float* master, float* m, float* v, float grad,
                                   const AdamWConstants& k) {
  const float g = grad * k.grad_scale;
  const float mi = k.beta1 * *m + (1.0f - k.beta1) * g;
  const float vi = k.beta2 * *v + (1.0f - k.beta2) * g * g;
  *m = mi;
  *v = vi;
  const float m_hat = mi / k.bias_correction1, v_hat = vi / k.bias_correction2;
  *master -= k.lr * (m_hat / (sqrtf(v_hat) + k.eps) + k.weight_decay * *master);
}

}  // namespace weft
