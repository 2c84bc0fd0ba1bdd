// Training pieces: AdamW with f32 master weights, global gradient norm and clipping, the
// warmup + cosine learning-rate schedule, data-parallel gradient averaging.
#pragma once

#include <vector>

#include "weft/backend.hpp"
#include "weft/comm.hpp"
#include "weft/parameter.hpp"

namespace weft {

struct AdamWConfig {
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  // Applied to matrices only: biases, norm gains and other vectors are not decayed (Megatron).
  float weight_decay = 0.1f;
};

// Linear warmup from 0 to max_lr over `warmup` steps, then cosine decay to min_lr at `total`
// steps (and min_lr after). Steps are 1-based.
float cosine_lr(int64_t step, int64_t warmup, int64_t total, float max_lr, float min_lr);

// The factor that scales gradients to a global norm of at most max_norm (1 when already below;
// max_norm <= 0 disables clipping).
float clip_coefficient(float grad_norm, float max_norm);

class AdamW {
 public:
  // Every parameter gets an f32 master copy of its current value and f32 moments m, v. The
  // parameters' own values (possibly bf16) are refreshed from the masters after each step.
  AdamW(Backend& backend, std::vector<Parameter*> params, AdamWConfig config);

  // L2 norm of all gradients of the model, each value counted once: every rank's sum of squares
  // is divided by its parameters' replica_count and summed over `model_parallel` (the TP group;
  // data-parallel replicas are not included, their gradients are averaged before).
  float grad_norm(Communicator& model_parallel);
  // One update; grad_scale multiplies the gradients first (clipping).
  void step(float lr, float grad_scale);

  struct State {
    Parameter* param;
    Tensor master, m, v;  // f32, the parameter's local shape
  };
  std::vector<State>& state() { return state_; }
  int64_t steps_taken() const { return steps_; }
  void set_steps_taken(int64_t steps) { steps_ = steps; }
  // Copies the masters into the parameters' values (after loading a checkpoint).
  void refresh_parameters();

 private:
  Backend& backend_;
  AdamWConfig config_;
  std::vector<State> state_;
  int64_t steps_ = 0;
};

// Sums every gradient over the data-parallel group and divides by its size (no-op for one rank).
void average_gradients(Backend& backend, Communicator& data_parallel,
                       const std::vector<Parameter*>& params);

}  // namespace weft
