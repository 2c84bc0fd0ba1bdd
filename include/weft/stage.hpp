// Stage: one virtual stage of a model as a pipeline runs it (forward, backward, parameters, the
// parameters shared with another stage, and how it advances the dropout streams).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "weft/dropout.hpp"
#include "weft/parameter.hpp"

namespace weft {

// GPTModel's chunks implement it; so can any stack of layers (the pipeline executor knows only
// this interface). A micro-batch is [seq, batch]: tokens = seq x batch rows.
class Stage {
 public:
  // What one micro-batch's forward keeps for its backward: the stage's own type, created by
  // new_state() and filled by forward.
  class State {
   public:
    virtual ~State() = default;
    // Activation bytes held (each byte once).
    virtual int64_t bytes() const = 0;
    // The forward kept less than its backward needs (full recomputation): recompute() first.
    virtual bool needs_recompute() const { return false; }
    // Set by the caller before forward when this micro-batch's backward comes next on the stage:
    // recomputation would only repeat the forward, so a stage may keep everything at once.
    bool backward_next = false;
  };

  struct TensorSpec {
    Shape shape;
    DType dtype;
  };

  virtual ~Stage() = default;

  // What forward takes for a micro-batch: the first stage's input comes from the data (token
  // ids for a GPT), every other stage's is the previous stage's output, of this spec. The last
  // stage also reads `targets` of target_spec (unused elsewhere).
  virtual TensorSpec input_spec(int64_t seq, int64_t batch) const = 0;
  virtual TensorSpec target_spec(int64_t seq, int64_t batch) const = 0;
  // What forward returns on a stage that is not the last (the next stage's input_spec).
  virtual TensorSpec output_spec(int64_t seq, int64_t batch) const = 0;

  virtual std::unique_ptr<State> new_state() const = 0;
  // Returns the output activation (the next stage's input), or an undefined tensor on a last
  // stage, which writes its mean loss to *loss. state == nullptr: keep nothing (evaluation).
  // Replicated dropout draws start at rng's counters and advance them by
  // dropout_draws_per_token() x tokens.
  virtual Tensor forward(TensorView input, TensorView targets, int64_t seq, int64_t batch,
                         DropoutRng& rng, State* state, float* loss) = 0;
  // Makes a state with needs_recompute() whole (the same numbers and dropout masks).
  virtual void recompute(State& state) { (void)state; }
  // grad_output: the gradient of forward's output (ignored on a last stage, whose objective is
  // loss_scale x its mean loss). Accumulates the parameter gradients, consumes `state` and
  // returns the gradient of the input (undefined on a first stage).
  virtual Tensor backward(TensorView grad_output, float loss_scale, State& state) = 0;

  virtual std::vector<Parameter*> parameters() = 0;
  // Parameters that the first and the last stage of a pipeline both hold (a tied word embedding),
  // in the same order on both: the pipeline sums each pair's gradients. Empty elsewhere.
  virtual std::vector<Parameter*> shared_parameters() { return {}; }
  // Elements of the replicated dropout stream one forward draws per token (0 without dropout),
  // so that a pipeline can start every stage where one model running the micro-batches in order
  // would be.
  virtual int64_t dropout_draws_per_token() const { return 0; }
  // Dropout only while training.
  virtual void set_training(bool training) { (void)training; }
};

}  // namespace weft
