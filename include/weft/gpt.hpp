// TransformerLayer and GPTModel: a Megatron-style decoder-only transformer on weft's layers.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "weft/attention.hpp"
#include "weft/dropout.hpp"
#include "weft/embedding.hpp"
#include "weft/mlp.hpp"
#include "weft/norm.hpp"
#include "weft/stage.hpp"

namespace weft {

// What a training forward keeps for its backward (Korthikanti et al. 2022).
enum class Recompute {
  kNone,       // every layer's activations: no recomputation
  kSelective,  // all but the attention core's output (its forward re-run in backward)
  kFull,       // only a model (or pipeline stage) input: backward re-runs the whole forward first
};
// "none", "selective" or "full"; weft::Error naming the accepted names.
Recompute parse_recompute(const std::string& name);
const char* recompute_name(Recompute recompute);

// dtype, seed, init_std, sequence_parallel and tp_comm_overlap (ParallelConfig) pass down to
// every layer whole. Sequence parallelism: the norms, dropout and residuals run on this rank's
// seq / tp positions, the all-reduces become all-gather / reduce-scatter pairs; training sequence
// lengths must be divisible by tp; KV-cache decoding runs without it.
struct GPTConfig : ParallelConfig {
  int64_t vocab_size = 256;
  int64_t max_seq = 256;  // longest sequence (size of the learned position table, KV caches)
  int64_t layers = 2;
  int64_t hidden = 128;
  int64_t heads = 4;
  int64_t kv_heads = 0;    // 0: = heads; -1: heads / 2 (the llama preset)
  int64_t ffn_hidden = 0;  // 0: 4 * hidden (GeLU) or the LLaMA size for SwiGLU (see preset)
  NormKind norm = NormKind::kLayerNorm;
  MlpActivation activation = MlpActivation::kGelu;
  bool rotary = false;  // rotary positions instead of a learned position table
  float rope_theta = 10000.0f;
  bool bias = true;
  float dropout = 0.0f;  // on embeddings and on each residual branch (replicated regions)
  float norm_eps = 1e-5f;
  int64_t vocab_pad_multiple = 128;
  Recompute recompute = Recompute::kNone;

  // "gpt2": pre-LN, LayerNorm, learned positions, GeLU, multi-head, biases.
  // "llama": RMSNorm, rotary, SwiGLU, grouped-query (kv_heads = heads / 2 by default), no biases.
  // Throws weft::Error naming the accepted presets.
  static GPTConfig preset(const std::string& name);
  // Fills derived defaults (kv_heads, ffn_hidden) and checks every size against tp, naming the
  // values that break a rule.
  void finalize(int tp);
  int64_t head_dim() const { return hidden / heads; }
  // Parameters of the unsharded model (for MFU and logs).
  int64_t parameter_count() const;
  // Training FLOPs per token of forward + backward at sequence length seq (matmuls and attention).
  double flops_per_token(int64_t seq) const;
};

// Pre-LN block: x + drop(attn(norm1(x))), then + drop(mlp(norm2(.))).
class TransformerLayer {
 public:
  // What one forward keeps for its backward (the sub-layers' saved state and the tensors they
  // view; the dropout masks are drawn again from their counters, not kept).
  struct Saved {
    Norm::Saved norm1;
    Tensor normed1;
    ParallelAttention::Saved attention;
    DropoutRng::Draw attention_drop{}, mlp_drop{};
    bool dropout = false;
    Tensor residual1;
    Norm::Saved norm2;
    Tensor normed2;
    ParallelMLP::Saved mlp;
    std::vector<TensorView> views() const;
    int64_t bytes() const { return distinct_bytes(views()); }
  };

  TransformerLayer(const ParallelContext& ctx, const GPTConfig& config, int index);

  // x [seq * batch, hidden], rows ordered (position, batch); must stay alive until backward.
  // Sequence parallel: x and the result are this rank's rows [seq * batch / tp, hidden].
  // Under Recompute::kSelective the attention core's output is left out of `saved`.
  Tensor forward(TensorView x, int64_t seq, int64_t batch, DropoutRng& rng, Saved& saved);
  // The same numbers (and dropout draws), keeping nothing.
  Tensor forward(TensorView x, int64_t seq, int64_t batch, DropoutRng& rng);
  Tensor backward(TensorView grad_output, Saved& saved);  // consumes `saved`
  // Inference step through the caller's KV cache of this layer's attention (no dropout, no
  // backward, no sequence parallelism: x holds all rows).
  Tensor forward_cached(TensorView x, int64_t seq, int64_t batch,
                        ParallelAttention::KVCache& cache);

  ParallelAttention& attention() { return attention_; }
  std::vector<Parameter*> parameters();
  // Dropout applies only while training (the default); evaluation turns it off.
  void set_training(bool training) { training_ = training; }

 private:
  Tensor run_forward(TensorView x, int64_t seq, int64_t batch, DropoutRng& rng, Saved* saved);
  Tensor dropped(TensorView x, DropoutRng::Draw* draw, DropoutRng& rng);
  bool dropout_active() const { return training_ && config_.dropout > 0.0f; }

  Backend& backend_;
  Communicator& tp_;
  GPTConfig config_;
  Norm norm1_, norm2_;
  ParallelAttention attention_;
  ParallelMLP mlp_;
  bool training_ = true;
};

// Which part of the model a pipeline stage holds: a contiguous slice of the layers, the
// embedding on the first stage, final norm + LM head + loss on the last. The default is the
// whole model.
struct GPTStageLayout {
  int64_t first_layer = 0;
  int64_t layers = -1;  // -1: all layers from first_layer on
  bool has_embedding = true;
  bool has_head = true;
};

// The decoding state of one batch of sequences for a GPTModel: every layer's keys and values
// (ParallelAttention::KVCache) and the positions fed so far. GPTModel::new_cache makes one; the
// caller owns it and passes it to next_token_logits.
struct KVCache {
  std::vector<ParallelAttention::KVCache> layers;  // one per layer, in order
  int64_t batch = 0, capacity = 0;
  int64_t length = 0;  // positions fed so far
};

// Embedding (+ learned positions) -> layers -> final norm -> tied LM head -> vocab-parallel
// cross-entropy. Every TP rank holds its shard of every layer it has; parameter names use global
// layer indices, so one seed gives one model at every TP and PP size. A last stage without the
// embedding keeps its own copy of the (tied) table for the LM head (shared_parameters()); the
// pipeline sums the two copies' gradients.
class GPTModel : public Stage {
 public:
  // What one forward keeps for its backward. Under Recompute::kFull only the stage input, the
  // targets and the dropout counters (the inputs are views: keep them alive); backward re-runs
  // the forward, keeping everything, first.
  struct Saved : Stage::State {
    int64_t seq = 0, batch = 0;
    float loss = 0.0f;  // the mean token loss, on a stage with the head
    TensorView input, targets;
    std::optional<DropoutRng> rng;  // kFull: the counters before the forward
    VocabParallelEmbedding::Saved embedding;
    DropoutRng::Draw embedding_drop{};
    bool embedding_dropout = false;
    TensorView position_ids;
    std::vector<Tensor> activations;  // the embedding's output, then each layer's but the last
    std::vector<TransformerLayer::Saved> layers;
    Tensor final_input;  // the last layer's output (the final norm's input)
    Norm::Saved final_norm;
    Tensor final_hidden;
    VocabParallelEmbedding::HeadSaved head;
    Tensor logits;
    VocabParallelCrossEntropy::Saved cross_entropy;
    size_t tokens = 0;  // the loss's token count
    // Recompute::kFull: only the input is kept so far (GPTModel::recompute fills the rest).
    bool needs_recompute() const override { return rng.has_value(); }
    std::vector<TensorView> views() const;
    int64_t bytes() const override { return distinct_bytes(views()); }
  };

  GPTModel(const ParallelContext& ctx, const GPTConfig& config, GPTStageLayout layout = {});

  // Whole model. ids, targets: i32 [seq * batch] on the backend's device, rows ordered
  // (position, batch). Returns the mean loss over the tokens (identical on all TP ranks).
  // Without `saved`, nothing is kept (evaluation).
  float forward(TensorView ids, TensorView targets, int64_t seq, int64_t batch, DropoutRng& rng,
                Saved& saved);
  float forward(TensorView ids, TensorView targets, int64_t seq, int64_t batch, DropoutRng& rng);
  // Backpropagates loss_scale * mean loss of the forward that filled `saved` (consumed);
  // accumulates parameter gradients.
  void backward(Saved& saved, float loss_scale = 1.0f);

  // One pipeline stage. `input` is the token ids on a stage with the embedding, else the
  // previous stage's output [seq * batch, hidden] (this rank's [seq * batch / tp, hidden] under
  // sequence parallelism); `targets` is only read on a stage with the head. Returns this stage's
  // output activation (undefined on the last stage, whose mean loss is saved.loss). Without
  // `saved` nothing is kept and `loss` (if given) receives the mean loss.
  Tensor forward_stage(TensorView input, TensorView targets, int64_t seq, int64_t batch,
                       DropoutRng& rng, Saved& saved);
  Tensor forward_stage(TensorView input, TensorView targets, int64_t seq, int64_t batch,
                       DropoutRng& rng, float* loss);
  // grad_output: gradient of forward_stage's output (ignored on the last stage, which starts
  // from loss_scale * mean loss). Returns the gradient of the stage's input activation
  // (undefined on a stage with the embedding). Consumes `saved`.
  Tensor backward_stage(TensorView grad_output, float loss_scale, Saved& saved);
  // Full recomputation: re-runs the forward of a Recompute::kFull `saved` (the same numbers and
  // dropout masks), keeping everything this time. backward_stage does it when not done before.
  void recompute(Saved& saved);

  // Stage (pipeline.hpp runs chunks through it): the calls above, with GPTModel::Saved states.
  TensorSpec input_spec(int64_t seq, int64_t batch) const override;
  TensorSpec target_spec(int64_t seq, int64_t batch) const override;
  TensorSpec output_spec(int64_t seq, int64_t batch) const override;
  std::unique_ptr<State> new_state() const override { return std::make_unique<Saved>(); }
  Tensor forward(TensorView input, TensorView targets, int64_t seq, int64_t batch, DropoutRng& rng,
                 State* state, float* loss) override;
  void recompute(State& state) override;
  Tensor backward(TensorView grad_output, float loss_scale, State& state) override;
  // The token table on a stage with the embedding or the head.
  std::vector<Parameter*> shared_parameters() override;
  // The embedding draws hidden per token, each layer 2 x hidden (when training with dropout).
  int64_t dropout_draws_per_token() const override;

  // Inference, whole models only: a KV cache for `batch` sequences of up to `capacity` positions
  // (at most max_seq), owned by the caller; then each call feeds positions [cache.length,
  // cache.length + seq) of the cache's sequences (ids [seq * batch], rows ordered (position,
  // batch)) and returns the logits of their last position, [batch, vocab_size] on the host
  // (gathered across TP). The model keeps no decoding state: caches of different sequences may
  // be used in any order.
  KVCache new_cache(int64_t batch, int64_t capacity) const;
  std::vector<float> next_token_logits(TensorView ids, int64_t seq, KVCache& cache);

  const GPTConfig& config() const { return config_; }
  const GPTStageLayout& layout() const { return layout_; }
  std::vector<Parameter*> parameters() override;
  // The token table (the embedding's, or the last stage's copy for the tied head); null on a
  // middle stage.
  Parameter* word_embeddings() { return embedding_ ? &embedding_->weight() : nullptr; }
  // Dropout applies only while training (the default); evaluation turns it off.
  void set_training(bool training) override;
  bool training() const { return training_; }

 private:
  // saved == nullptr: keep nothing. keep_all: ignore Recompute::kFull (its recomputation).
  Tensor run_stage(TensorView input, TensorView targets, int64_t seq, int64_t batch,
                   DropoutRng& rng, Saved* saved, bool keep_all, float* loss);
  Tensor embed(TensorView ids, TensorView position_ids, VocabParallelEmbedding::Saved* saved,
               SequenceParallel mode);
  // i32 positions [seq * batch], row s * batch + b holding first + s; built once per key.
  TensorView positions(int64_t seq, int64_t batch, int64_t first);
  // 1, or the TP size under sequence parallelism: the activations' rows are seq * batch / this.
  int sequence_shards() const { return config_.sequence_parallel ? ctx_.tp.size() : 1; }
  // The learned position table's gradient from the embedding output's gradient.
  void accumulate_position_grads(TensorView grad, TensorView position_ids, int64_t seq);
  void check_tokens(TensorView ids, const char* what, int64_t seq, int64_t batch) const;

  ParallelContext ctx_;
  GPTConfig config_;
  GPTStageLayout layout_;
  std::unique_ptr<VocabParallelEmbedding> embedding_;  // first stage, and last for the head
  std::unique_ptr<Parameter> positions_;  // learned position table [max_seq, hidden], replicated
  std::vector<std::unique_ptr<TransformerLayer>> layers_;
  std::unique_ptr<Norm> final_norm_;
  VocabParallelCrossEntropy cross_entropy_;
  // Position ids by (seq, batch, first position): constants, built once, shared by every call.
  std::map<std::vector<int64_t>, Tensor> position_ids_;
  bool training_ = true;
};

}  // namespace weft
