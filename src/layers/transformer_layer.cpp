// TransformerLayer: pre-LN attention and MLP blocks with residuals and replicated dropout.
#include <cmath>

#include "layers/gpt_norm_config.hpp"
#include "weft/error.hpp"
#include "weft/gpt.hpp"

namespace weft {

namespace {
std::string layer_name(int index) { return "layers." + std::to_string(index); }

ParallelAttentionConfig attention_config(const GPTConfig& c, int index) {
  ParallelAttentionConfig a;
  a.parallel() = c.parallel();
  a.hidden = c.hidden;
  a.heads = c.heads;
  a.kv_heads = c.kv_heads;
  a.bias = c.bias;
  a.rotary = c.rotary;
  a.rope_theta = c.rope_theta;
  a.name = layer_name(index) + ".attention";
  // GPT-2: residual projections scaled by 1/sqrt(2 * layers) so the residual stream's variance
  // does not grow with depth.
  a.output_init_std = c.init_std / std::sqrt(2.0f * static_cast<float>(c.layers));
  a.recompute_core = c.recompute == Recompute::kSelective;
  return a;
}

ParallelMLPConfig mlp_config(const GPTConfig& c, int index) {
  ParallelMLPConfig m;
  m.parallel() = c.parallel();
  m.hidden = c.hidden;
  m.ffn_hidden = c.ffn_hidden;
  m.activation = c.activation;
  m.bias = c.bias;
  m.name = layer_name(index) + ".mlp";
  m.output_init_std = c.init_std / std::sqrt(2.0f * static_cast<float>(c.layers));
  return m;
}
}  // namespace

TransformerLayer::TransformerLayer(const ParallelContext& ctx, const GPTConfig& config, int index)
    : backend_(ctx.backend),
      tp_(ctx.tp),
      config_(config),
      norm1_(ctx, gpt_norm_config(config, ctx.tp.size(), layer_name(index) + ".norm1")),
      norm2_(ctx, gpt_norm_config(config, ctx.tp.size(), layer_name(index) + ".norm2")),
      attention_(ctx, attention_config(config, index)),
      mlp_(ctx, mlp_config(config, index)) {}

std::vector<Parameter*> TransformerLayer::parameters() {
  std::vector<Parameter*> params;
  for (auto* group : {&norm1_, &norm2_}) {
    for (Parameter* p : group->parameters()) params.push_back(p);
  }
  for (Parameter* p : attention_.parameters()) params.push_back(p);
  for (Parameter* p : mlp_.parameters()) params.push_back(p);
  return params;
}

std::vector<TensorView> TransformerLayer::Saved::views() const {
  std::vector<TensorView> saved;
  auto append = [&](const std::vector<TensorView>& views) {
    saved.insert(saved.end(), views.begin(), views.end());
  };
  // The layer's own tensors (normed1, residual1, normed2) are among these as the inputs the
  // sub-layers keep; the dropout masks are not kept at all (Philox draws them again).
  append(norm1.views());
  append(attention.views());
  append(norm2.views());
  append(mlp.views());
  return saved;
}

// Dropout on a replicated activation: the same mask on every TP rank. The draw is kept so that
// backward applies the same mask to the gradient. Under sequence parallelism x is this rank's
// block of rows of the replicated activation: the draw covers the whole activation (the counters
// advance as without it) and this rank takes its block's part of the stream, so that the mask is
// the one the whole activation would get.
Tensor TransformerLayer::dropped(TensorView x, DropoutRng::Draw* draw, DropoutRng& rng) {
  Tensor out(backend_, x.shape, x.dtype);
  const int shards = config_.sequence_parallel ? tp_.size() : 1;
  *draw = rng.replicated(x.numel() * shards);
  if (shards > 1) draw->offset += static_cast<uint64_t>(tp_.rank() * x.numel());
  backend_.dropout(out, x, config_.dropout, draw->seed, draw->offset);
  return out;
}

Tensor TransformerLayer::forward(TensorView x, int64_t seq, int64_t batch, DropoutRng& rng,
                                 Saved& saved) {
  saved = Saved{};
  return run_forward(x, seq, batch, rng, &saved);
}

Tensor TransformerLayer::forward(TensorView x, int64_t seq, int64_t batch, DropoutRng& rng) {
  return run_forward(x, seq, batch, rng, nullptr);
}

Tensor TransformerLayer::run_forward(TensorView x, int64_t seq, int64_t batch, DropoutRng& rng,
                                     Saved* saved) {
  if (config_.sequence_parallel) check_sequence_parallel_seq(seq, tp_.size(), "TransformerLayer");
  DropoutRng::Draw attention_drop{}, mlp_drop{};
  Tensor normed1 = saved ? norm1_.forward(x, saved->norm1) : norm1_.forward(x);
  Tensor attended = saved ? attention_.forward(normed1, seq, batch, saved->attention)
                          : attention_.forward(normed1, seq, batch);
  if (dropout_active()) attended = dropped(attended, &attention_drop, rng);
  Tensor residual1(backend_, x.shape, x.dtype);
  backend_.add(residual1, x, attended);
  Tensor normed2 = saved ? norm2_.forward(residual1, saved->norm2) : norm2_.forward(residual1);
  Tensor mlp_out = saved ? mlp_.forward(normed2, saved->mlp) : mlp_.forward(normed2);
  if (dropout_active()) mlp_out = dropped(mlp_out, &mlp_drop, rng);
  Tensor out(backend_, x.shape, x.dtype);
  backend_.add(out, residual1, mlp_out);
  if (saved != nullptr) {
    saved->normed1 = std::move(normed1);
    saved->residual1 = std::move(residual1);
    saved->normed2 = std::move(normed2);
    saved->dropout = dropout_active();
    saved->attention_drop = attention_drop;
    saved->mlp_drop = mlp_drop;
  }
  return out;
}

Tensor TransformerLayer::backward(TensorView grad_output, Saved& saved) {
  WEFT_CHECK(saved.normed1.defined(),
             "TransformerLayer: backward called before forward (its "
             "saved state is empty)");
  TensorView grad_mlp = grad_output;
  Tensor grad_mlp_dropped;
  if (saved.dropout) {
    grad_mlp_dropped = Tensor(backend_, grad_output.shape, grad_output.dtype);
    backend_.dropout(grad_mlp_dropped, grad_output, config_.dropout, saved.mlp_drop.seed,
                     saved.mlp_drop.offset);
    grad_mlp = grad_mlp_dropped;
  }
  Tensor grad_residual1 = norm2_.backward(mlp_.backward(grad_mlp, saved.mlp), saved.norm2);
  backend_.add(grad_residual1, grad_residual1, grad_output);

  TensorView grad_attention = grad_residual1;
  Tensor grad_attention_dropped;
  if (saved.dropout) {
    grad_attention_dropped = Tensor(backend_, grad_residual1.shape(), grad_residual1.dtype());
    backend_.dropout(grad_attention_dropped, grad_residual1, config_.dropout,
                     saved.attention_drop.seed, saved.attention_drop.offset);
    grad_attention = grad_attention_dropped;
  }
  Tensor grad_input =
      norm1_.backward(attention_.backward(grad_attention, saved.attention), saved.norm1);
  backend_.add(grad_input, grad_input, grad_residual1);
  saved = Saved{};
  return grad_input;
}

Tensor TransformerLayer::forward_cached(TensorView x, int64_t seq, int64_t batch,
                                        ParallelAttention::KVCache& cache) {
  Tensor normed1 = norm1_.forward(x);
  Tensor attended = attention_.forward_cached(normed1, seq, batch, cache);
  Tensor residual(backend_, x.shape, x.dtype);
  backend_.add(residual, x, attended);
  Tensor normed2 = norm2_.forward(residual);
  // Decoding runs on all rows: the MLP without sequence parallelism (the attention does the same
  // in forward_cached).
  Tensor mlp_out = mlp_.forward(normed2, SequenceParallel::kOff);
  Tensor out(backend_, x.shape, x.dtype);
  backend_.add(out, residual, mlp_out);
  return out;
}

}  // namespace weft
