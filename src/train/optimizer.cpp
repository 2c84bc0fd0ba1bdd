// AdamW with f32 master weights, gradient norm, clipping, LR schedule, DP gradient averaging.
#include "weft/optimizer.hpp"

#include <cmath>

#include "weft/error.hpp"

namespace weft {

float cosine_lr(int64_t step, int64_t warmup, int64_t total, float max_lr, float min_lr) {
  if (warmup > 0 && step <= warmup) {
    return max_lr * static_cast<float>(step) / static_cast<float>(warmup);
  }
  if (step >= total || total <= warmup) return min_lr;
  const double progress = static_cast<double>(step - warmup) / static_cast<double>(total - warmup);
  return min_lr + 0.5f * (max_lr - min_lr) * static_cast<float>(1.0 + std::cos(M_PI * progress));
}

float clip_coefficient(float grad_norm, float max_norm) {
  if (max_norm <= 0.0f || grad_norm <= max_norm) return 1.0f;
  return max_norm / (grad_norm + 1e-6f);
}

AdamW::AdamW(Backend& backend, std::vector<Parameter*> params, AdamWConfig config)
    : backend_(backend), config_(config) {
  for (Parameter* p : params) {
    State s{p, Tensor(backend, p->value.shape(), DType::kF32),
            Tensor(backend, p->value.shape(), DType::kF32),
            Tensor(backend, p->value.shape(), DType::kF32)};
    backend.convert(s.master, p->value);
    backend.fill(s.m, 0.0f);
    backend.fill(s.v, 0.0f);
    state_.push_back(std::move(s));
  }
}

float AdamW::grad_norm(Communicator& model_parallel) {
  std::vector<Parameter*> params;
  for (State& s : state_) params.push_back(s.param);
  return global_grad_norm(backend_, params, {&model_parallel});
}

void AdamW::step(float lr, float grad_scale) {
  ++steps_;
  for (State& s : state_) {
    AdamWStep hyper;
    hyper.lr = lr;
    hyper.beta1 = config_.beta1;
    hyper.beta2 = config_.beta2;
    hyper.eps = config_.eps;
    hyper.weight_decay = s.param->global_shape.rank() >= 2 ? config_.weight_decay : 0.0f;
    hyper.step = steps_;
    hyper.grad_scale = grad_scale;
    backend_.adamw(s.master, s.m, s.v, s.param->grad, hyper);
    backend_.convert(s.param->value, s.master);
  }
}

void AdamW::refresh_parameters() {
  for (State& s : state_) backend_.convert(s.param->value, s.master);
}

void average_gradients(Backend& backend, Communicator& data_parallel,
                       const std::vector<Parameter*>& params) {
  const int dp = data_parallel.size();
  if (dp == 1) return;
  for (Parameter* p : params) {
    data_parallel.all_reduce(p->grad, p->grad, ReduceOp::kSum, backend.stream());
    backend.scale(p->grad, p->grad, 1.0f / static_cast<float>(dp));
  }
}

}  // namespace weft
