// TransformerLayer and GPTModel: a Megatron-style decoder-only transformer on weft's layers.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "weft/attention.hpp"
#include "weft/dropout.hpp"
#include "weft/embedding.hpp"
#include "weft/mlp.hpp"
#include "weft/norm.hpp"

namespace weft {

struct GPTConfig {
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
  DType dtype = DType::kF32;
  uint64_t seed = 1234;
  float init_std = 0.02f;

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
  TransformerLayer(const ParallelContext& ctx, const GPTConfig& config, int index);

  // x [seq * batch, hidden], rows ordered (position, batch); must stay alive until backward.
  Tensor forward(TensorView x, int64_t seq, int64_t batch, DropoutRng& rng);
  Tensor backward(TensorView grad_output);
  // Inference step with the attention's KV cache (no dropout, no backward).
  Tensor forward_cached(TensorView x, int64_t seq, int64_t batch, int64_t past);

  ParallelAttention& attention() { return attention_; }
  std::vector<Parameter*> parameters();
  // Dropout applies only while training (the default); evaluation turns it off.
  void set_training(bool training) { training_ = training; }

 private:
  Tensor dropped(TensorView x, DropoutRng::Draw* draw, DropoutRng& rng);
  bool dropout_active() const { return training_ && config_.dropout > 0.0f; }

  Backend& backend_;
  GPTConfig config_;
  Norm norm1_, norm2_;
  ParallelAttention attention_;
  ParallelMLP mlp_;
  Tensor normed1_, residual1_, normed2_;  // saved activations
  DropoutRng::Draw attention_drop_{}, mlp_drop_{};
  bool training_ = true;
};

// Embedding (+ learned positions) -> layers -> final norm -> tied LM head -> vocab-parallel
// cross-entropy. Every TP rank holds its shard of every layer.
class GPTModel {
 public:
  GPTModel(const ParallelContext& ctx, const GPTConfig& config);

  // ids, targets: i32 [seq * batch] on the backend's device, rows ordered (position, batch).
  // Returns the mean loss over the tokens (identical on all TP ranks).
  float forward(TensorView ids, TensorView targets, int64_t seq, int64_t batch, DropoutRng& rng);
  // Backpropagates loss_scale * mean loss of the last forward; accumulates parameter gradients.
  void backward(float loss_scale = 1.0f);

  // Inference: allocate KV caches, then feed positions [past, past + seq) and get the logits of
  // the last position of each sequence, [batch, vocab_size] on the host (gathered across TP).
  void allocate_cache(int64_t batch, int64_t capacity);
  std::vector<float> next_token_logits(TensorView ids, int64_t seq, int64_t batch, int64_t past);

  const GPTConfig& config() const { return config_; }
  std::vector<Parameter*> parameters();
  VocabParallelEmbedding& embedding() { return embedding_; }
  // Dropout applies only while training (the default); evaluation turns it off.
  void set_training(bool training);

 private:
  Tensor embed(TensorView ids, int64_t seq, int64_t batch);
  void check_tokens(TensorView ids, const char* what, int64_t seq, int64_t batch) const;

  ParallelContext ctx_;
  GPTConfig config_;
  VocabParallelEmbedding embedding_;
  std::unique_ptr<Parameter> positions_;  // learned position table [max_seq, hidden], replicated
  std::vector<std::unique_ptr<TransformerLayer>> layers_;
  Norm final_norm_;
  VocabParallelCrossEntropy cross_entropy_;

  // Saved by forward for backward.
  int64_t seq_ = 0, batch_ = 0;
  Tensor position_ids_;
  DropoutRng::Draw embedding_drop_{};
  bool training_ = true;
  std::vector<Tensor> activations_;  // input of each layer, then the final norm's input
  Tensor final_hidden_, logits_;
  std::vector<float> losses_;
};

}  // namespace weft
