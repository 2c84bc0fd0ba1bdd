// PipelineModel: this rank's GPT chunks (each a Stage) and the executor that runs them.
#include <climits>

#include "weft/error.hpp"
#include "weft/mappings.hpp"
#include "weft/parameter.hpp"
#include "weft/pipeline.hpp"

namespace weft {

PipelineModel::PipelineModel(const ParallelContext& tp_ctx, Communicator& pp,
                             const GPTConfig& config, ScheduleKind kind, int virtual_stages,
                             const std::vector<int64_t>& layer_counts)
    : ctx_(tp_ctx),
      pp_(pp),
      config_(config),
      kind_(kind),
      stages_(pp.size()),
      virtual_stages_(virtual_stages),
      rank_(pp.rank()) {
  // Everything below up to the split depends only on arguments every rank shares, so a bad
  // layout throws on every rank before any communication.
  config_.finalize(ctx_.tp.size());
  WEFT_CHECK(virtual_stages_ >= 1, "PipelineModel: virtual stages per rank (", virtual_stages_,
             ") must be positive");
  WEFT_CHECK(kind_ == ScheduleKind::kInterleaved || virtual_stages_ == 1, "PipelineModel: the ",
             schedule_name(kind_), " schedule runs one model chunk per rank, got ", virtual_stages_,
             " virtual stages (use the interleaved schedule)");
  layer_counts_ = split_layers(config_.layers, stages_ * virtual_stages_, layer_counts);
  const std::vector<GPTStageLayout> layouts = pipeline_stage_layouts(layer_counts_);
  WEFT_CHECK(stages_ == 1 || pp.buffer_device() == ctx_.backend.device().kind,
             "PipelineModel: ", pp.name(), " communicator moves ",
             pp.buffer_device() == DeviceKind::kCpu ? "host" : "GPU", " buffers but the backend (",
             ctx_.backend.name(), ") computes elsewhere");
  std::vector<Stage*> stages;
  for (int c = 0; c < virtual_stages_; ++c) {
    chunks_.push_back(
        std::make_unique<GPTModel>(ctx_, config_, layouts[static_cast<size_t>(virtual_stage(c))]));
    stages.push_back(chunks_.back().get());
  }
  executor_ = std::make_unique<PipelineExecutor>(ctx_.backend, pp, std::move(stages));
}

PipelineModel::~PipelineModel() = default;

std::vector<Parameter*> PipelineModel::parameters() {
  std::vector<Parameter*> params;
  for (auto& chunk : chunks_) {
    for (Parameter* p : chunk->parameters()) params.push_back(p);
  }
  return params;
}

void PipelineModel::set_training(bool training) {
  training_ = training;
  for (auto& chunk : chunks_) chunk->set_training(training);
}

float PipelineModel::grad_norm() {
  Backend& backend = ctx_.backend;
  // The last stage's copy of the tied table carries the same gradient as the first stage's.
  Parameter* duplicate = stages_ * virtual_stages_ > 1 && has_last_stage()
                             ? chunks_.back()->word_embeddings()
                             : nullptr;
  std::vector<Parameter*> params;
  for (Parameter* p : parameters()) {
    if (p != duplicate) params.push_back(p);
  }
  return global_grad_norm(backend, params, {&ctx_.tp, &pp_});
}

const PipelineSchedule& PipelineModel::schedule_for(int64_t microbatches, bool forward_only) {
  for (const PipelineSchedule& s : schedules_) {
    if (s.microbatches == microbatches && s.forward_only == forward_only) return s;
  }
  schedules_.push_back(build_pipeline_schedule(kind_, stages_, static_cast<int>(microbatches),
                                               virtual_stages_, forward_only));
  return schedules_.back();
}

namespace {
// Checked on every rank before any communication: a stage that threw mid-step would leave its
// neighbours waiting.
void check_step_args(const GPTConfig& config, int tp, int64_t microbatches, int64_t seq,
                     int64_t batch) {
  WEFT_CHECK(microbatches >= 1 && microbatches <= INT_MAX, "PipelineModel: micro-batches (",
             microbatches, ") must be positive");
  WEFT_CHECK(seq > 0 && batch > 0, "PipelineModel: seq (", seq, ") and batch (", batch,
             ") must be positive");
  WEFT_CHECK(seq <= config.max_seq, "PipelineModel: sequence length (", seq,
             ") exceeds the model's maximum (", config.max_seq, ")");
  if (config.sequence_parallel) check_sequence_parallel_seq(seq, tp, "PipelineModel");
}
}  // namespace

float PipelineModel::train_step(const BatchLoader& load, int64_t microbatches, int64_t seq,
                                int64_t batch, float loss_scale, DropoutRng& rng,
                                PipelineTrace* trace) {
  check_step_args(config_, ctx_.tp.size(), microbatches, seq, batch);
  WEFT_CHECK(static_cast<bool>(load), "PipelineModel: train_step needs a batch loader");
  const PipelineSchedule& schedule = schedule_for(microbatches, false);
  zero_grads(ctx_.backend, parameters());
  return executor_->run(schedule, load, seq, batch, loss_scale, rng, timed_, trace);
}

float PipelineModel::evaluate(const BatchLoader& load, int64_t microbatches, int64_t seq,
                              int64_t batch) {
  check_step_args(config_, ctx_.tp.size(), microbatches, seq, batch);
  WEFT_CHECK(static_cast<bool>(load), "PipelineModel: evaluate needs a batch loader");
  const PipelineSchedule& schedule = schedule_for(microbatches, true);
  const bool was_training = training_;
  set_training(false);  // no dropout: the rng below is never drawn from
  DropoutRng unused(0, 0);
  float loss = 0.0f;
  try {
    loss = executor_->run(schedule, load, seq, batch, 1.0f, unused, timed_);
  } catch (...) {
    set_training(was_training);
    throw;
  }
  set_training(was_training);
  return loss;
}

}  // namespace weft
