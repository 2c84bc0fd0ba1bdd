// GPTConfig presets and checks, and GPTModel: embedding, layers, final norm, tied LM head, loss.
#include <algorithm>
#include <cmath>

#include "layers/gpt_norm_config.hpp"
#include "weft/checked.hpp"
#include "weft/error.hpp"
#include "weft/gpt.hpp"
#include "weft/log.hpp"
#include "weft/partition.hpp"

namespace weft {

Recompute parse_recompute(const std::string& name) {
  if (name == "none") return Recompute::kNone;
  if (name == "selective") return Recompute::kSelective;
  if (name == "full") return Recompute::kFull;
  WEFT_THROW(ErrorCode::kInvalidArgument, "unknown recompute policy '", name,
             "': expected none, selective or full");
}

const char* recompute_name(Recompute recompute) {
  switch (recompute) {
    case Recompute::kNone:
      return "none";
    case Recompute::kSelective:
      return "selective";
    case Recompute::kFull:
      return "full";
  }
  return "?";
}

GPTConfig GPTConfig::preset(const std::string& name) {
  GPTConfig c;
  if (name == "gpt2") return c;
  if (name == "llama") {
    c.norm = NormKind::kRMSNorm;
    c.activation = MlpActivation::kSwiGLU;
    c.rotary = true;
    c.bias = false;
    c.kv_heads = -1;  // heads / 2: grouped-query attention
    return c;
  }
  WEFT_THROW(ErrorCode::kInvalidArgument, "unknown preset '", name, "': expected gpt2 or llama");
}

void GPTConfig::finalize(int tp) {
  WEFT_CHECK(vocab_size > 0 && max_seq > 0 && layers > 0 && hidden > 0 && heads > 0, "vocab (",
             vocab_size, "), max sequence (", max_seq, "), layers (", layers, "), hidden (", hidden,
             ") and heads (", heads, ") must all be positive");
  WEFT_CHECK(dropout >= 0.0f && dropout < 1.0f, "dropout (", dropout, ") must be in [0, 1)");
  divide_exact(hidden, heads, "hidden size", "the number of heads");
  divide_exact(heads, tp, "number of heads", "the tensor-parallel size");
  if (kv_heads == 0) kv_heads = heads;
  if (kv_heads == -1) kv_heads = heads % 2 == 0 ? heads / 2 : heads;
  WEFT_CHECK(kv_heads > 0 && heads % kv_heads == 0, "kv heads (", kv_heads,
             ") must be positive and divide the number of heads (", heads, ")");
  WEFT_CHECK(kv_heads % tp == 0 || tp % kv_heads == 0, "kv heads (", kv_heads,
             ") must be divisible by the tensor-parallel size (", tp, ") or divide it");
  if (ffn_hidden == 0) {
    // LLaMA keeps the parameter count of a 4h GeLU MLP: 2/3 of 4h per matrix, rounded to 64.
    const int64_t eight_h = checked_mul(8, hidden, "MLP hidden size (from 8 x hidden)");
    ffn_hidden = activation == MlpActivation::kGelu ? eight_h / 2 : (eight_h / 3 + 63) / 64 * 64;
  }
  WEFT_CHECK(ffn_hidden > 0 && vocab_pad_multiple > 0, "MLP hidden size (", ffn_hidden,
             ") and vocabulary padding multiple (", vocab_pad_multiple, ") must be positive");
  divide_exact(ffn_hidden, tp, "MLP hidden size", "the tensor-parallel size");
  WEFT_CHECK(!rotary || head_dim() % 2 == 0, "rotary embedding needs an even head size, got ",
             head_dim());
  parameter_count();  // a model whose sizes overflow int64 is refused here, before any allocation
}

int64_t GPTConfig::parameter_count() const {
  // Checked: the sizes may come from a flag or a checkpoint's manifest.
  auto mul = [](int64_t a, int64_t b) { return checked_mul(a, b, "GPT parameter count"); };
  auto add = [](int64_t a, int64_t b) { return checked_add(a, b, "GPT parameter count"); };
  const int64_t d = head_dim(), kv = kv_heads > 0 ? kv_heads : heads;
  const int64_t norm_params = mul(norm == NormKind::kLayerNorm ? 2 : 1, hidden);
  const int64_t qkv_heads = add(heads, mul(2, kv));
  int64_t attention = add(mul(mul(hidden, qkv_heads), d), mul(mul(heads, d), hidden));
  if (bias) attention = add(attention, add(mul(qkv_heads, d), hidden));
  int64_t mlp = mul(mul(activation == MlpActivation::kGelu ? 2 : 3, hidden), ffn_hidden);
  if (bias) mlp = add(mlp, add(mul(activation == MlpActivation::kGelu ? 1 : 2, ffn_hidden), hidden));
  int64_t total = add(add(mul(layers, add(add(attention, mlp), mul(2, norm_params))), norm_params),
                      mul(vocab_size, hidden));
  if (!rotary) total = add(total, mul(max_seq, hidden));
  return total;
}

double GPTConfig::flops_per_token(int64_t seq) const {
  const int64_t d = head_dim(), kv = kv_heads > 0 ? kv_heads : heads;
  const double matmul_params =
      static_cast<double>(layers) *
          (hidden * (heads + 2 * kv) * d + heads * d * hidden +
           (activation == MlpActivation::kGelu ? 2 : 3) * hidden * ffn_hidden) +
      static_cast<double>(vocab_size) * hidden;  // LM head
  // 6 FLOPs per parameter per token (forward + backward), plus causal attention scores and
  // weighted sums: 2 matmuls x 2 FLOPs x seq/2 keys x heads x d, times 3 for backward.
  return 6.0 * matmul_params + 6.0 * layers * heads * d * seq;
}

GPTModel::GPTModel(const ParallelContext& ctx, const GPTConfig& config, GPTStageLayout layout)
    : ctx_(ctx), config_(config), layout_(layout), cross_entropy_(ctx) {
  WEFT_CHECK(config_.kv_heads > 0 && config_.ffn_hidden > 0,
             "GPTModel: call GPTConfig::finalize(tp) first");
  if (layout_.layers < 0) layout_.layers = config_.layers - layout_.first_layer;
  WEFT_CHECK(layout_.first_layer >= 0 && layout_.layers >= 0 &&
                 layout_.first_layer + layout_.layers <= config_.layers,
             "GPTModel: stage layers [", layout_.first_layer, ", ",
             layout_.first_layer + layout_.layers, ") are outside the model's ", config_.layers,
             " layers");
  if (layout_.has_embedding || layout_.has_head) {
    VocabParallelEmbeddingConfig e;
    e.parallel() = config_.parallel();
    e.vocab_size = config_.vocab_size;
    e.hidden = config_.hidden;
    e.pad_multiple = config_.vocab_pad_multiple;
    embedding_ = std::make_unique<VocabParallelEmbedding>(ctx, e);
  }
  if (layout_.has_embedding && !config_.rotary) {
    positions_ = std::make_unique<Parameter>(
        make_parameter(ctx.backend, "positions", Shape({config_.max_seq, config_.hidden}),
                       config_.dtype, -1, 1, 0));
    positions_->replica_count = ctx.tp.size();
    init_parameter(ctx.backend, *positions_,
                   RandomFill{Distribution::kNormal, config_.seed, 0, 0.0, config_.init_std});
  }
  for (int64_t i = 0; i < layout_.layers; ++i) {
    layers_.push_back(std::make_unique<TransformerLayer>(
        ctx, config_, static_cast<int>(layout_.first_layer + i)));
  }
  if (layout_.has_head) {
    final_norm_ =
        std::make_unique<Norm>(ctx, gpt_norm_config(config_, ctx.tp.size(), "final_norm"));
  }
}

std::vector<Parameter*> GPTModel::parameters() {
  std::vector<Parameter*> params;
  if (embedding_) params = embedding_->parameters();
  if (positions_) params.push_back(positions_.get());
  for (auto& layer : layers_) {
    for (Parameter* p : layer->parameters()) params.push_back(p);
  }
  if (final_norm_) {
    for (Parameter* p : final_norm_->parameters()) params.push_back(p);
  }
  return params;
}

void GPTModel::check_tokens(TensorView ids, const char* what, int64_t seq, int64_t batch) const {
  WEFT_CHECK(seq > 0 && batch > 0, "GPTModel: seq (", seq, ") and batch (", batch,
             ") must be positive");
  WEFT_CHECK(ids.dtype == DType::kI32 && ids.numel() == seq * batch, "GPTModel: ", what, " ",
             ids.str(), " must be i32 with seq x batch = ", seq * batch, " elements");
}

Tensor GPTModel::embed(TensorView ids, TensorView position_ids,
                       VocabParallelEmbedding::Saved* saved, SequenceParallel mode) {
  Tensor x = saved ? embedding_->forward(ids, *saved) : embedding_->forward(ids, mode);
  if (positions_) {
    // Row s * batch + b of position_ids holds its absolute position (of this rank's rows under
    // sequence parallelism).
    Tensor pos(ctx_.backend, x.shape(), x.dtype());
    ctx_.backend.embedding(pos, position_ids, positions_->value, 0);
    ctx_.backend.add(x, x, pos);
  }
  return x;
}

// Built once per key and kept, rather than filled on the host and copied to the device every
// forward; a saved view stays valid for the model's lifetime.
TensorView GPTModel::positions(int64_t seq, int64_t batch, int64_t first) {
  Tensor& ids = position_ids_[{seq, batch, first}];
  if (ids.defined()) return ids;
  std::vector<int32_t> host(static_cast<size_t>(seq * batch));
  for (int64_t s = 0; s < seq; ++s) {
    for (int64_t b = 0; b < batch; ++b) host[s * batch + b] = static_cast<int32_t>(first + s);
  }
  ids = Tensor(ctx_.backend, Shape({seq * batch}), DType::kI32);
  ctx_.backend.copy(ids, TensorView{host.data(), ids.shape(), DType::kI32, Device::cpu()});
  return ids;
}

Tensor GPTModel::forward_stage(TensorView input, TensorView targets, int64_t seq, int64_t batch,
                               DropoutRng& rng, Saved& saved) {
  const bool backward_next = saved.backward_next;
  saved = Saved{};
  saved.backward_next = backward_next;
  // A backward that comes next needs everything: recomputing would repeat this forward.
  return run_stage(input, targets, seq, batch, rng, &saved, backward_next, &saved.loss);
}

Stage::TensorSpec GPTModel::input_spec(int64_t seq, int64_t batch) const {
  if (layout_.has_embedding) return {Shape({seq * batch}), DType::kI32};
  return {Shape({seq * batch / sequence_shards(), config_.hidden}), config_.dtype};
}

Stage::TensorSpec GPTModel::target_spec(int64_t seq, int64_t batch) const {
  return {Shape({seq * batch}), DType::kI32};
}

Stage::TensorSpec GPTModel::output_spec(int64_t seq, int64_t batch) const {
  return {Shape({seq * batch / sequence_shards(), config_.hidden}), config_.dtype};
}

Tensor GPTModel::forward(TensorView input, TensorView targets, int64_t seq, int64_t batch,
                         DropoutRng& rng, State* state, float* loss) {
  if (state == nullptr) return forward_stage(input, targets, seq, batch, rng, loss);
  Saved& saved = dynamic_cast<Saved&>(*state);
  Tensor out = forward_stage(input, targets, seq, batch, rng, saved);
  if (loss != nullptr) *loss = saved.loss;
  return out;
}

void GPTModel::recompute(State& state) { recompute(dynamic_cast<Saved&>(state)); }

Tensor GPTModel::backward(TensorView grad_output, float loss_scale, State& state) {
  return backward_stage(grad_output, loss_scale, dynamic_cast<Saved&>(state));
}

std::vector<Parameter*> GPTModel::shared_parameters() {
  if (!embedding_) return {};
  return {&embedding_->weight()};
}

int64_t GPTModel::dropout_draws_per_token() const {
  if (!training_ || config_.dropout <= 0.0f) return 0;
  return config_.hidden *
         ((layout_.has_embedding ? 1 : 0) + 2 * static_cast<int64_t>(layers_.size()));
}

Tensor GPTModel::forward_stage(TensorView input, TensorView targets, int64_t seq, int64_t batch,
                               DropoutRng& rng, float* loss) {
  return run_stage(input, targets, seq, batch, rng, nullptr, false, loss);
}

Tensor GPTModel::run_stage(TensorView input, TensorView targets, int64_t seq, int64_t batch,
                           DropoutRng& rng, Saved* saved, bool keep_all, float* loss) {
  WEFT_CHECK(seq <= config_.max_seq, "GPTModel: sequence length (", seq,
             ") exceeds the model's maximum (", config_.max_seq, ")");
  // Under sequence parallelism every activation between the embedding and the LM head is this
  // rank's block of seq / tp positions: checked first, on every rank, before any communication.
  if (config_.sequence_parallel) check_sequence_parallel_seq(seq, ctx_.tp.size(), "GPTModel");
  const int shards = sequence_shards();
  const int64_t rows = seq * batch / shards;
  if (layout_.has_embedding) {
    check_tokens(input, "ids", seq, batch);
  } else {
    WEFT_CHECK(input.shape == Shape({rows, config_.hidden}) && input.dtype == config_.dtype,
               "GPTModel stage: input activation ", input.str(), " must be ",
               dtype_name(config_.dtype), "[", rows, ", ", config_.hidden, "]",
               shards > 1 ? " (this rank's rows: sequence parallel)" : "");
  }
  if (layout_.has_head) check_tokens(targets, "targets", seq, batch);
  WEFT_CHECK(layout_.has_embedding || layout_.has_head || !layers_.empty(),
             "GPTModel stage: a stage without layers, embedding or head");
  if (saved != nullptr) {
    saved->seq = seq;
    saved->batch = batch;
    saved->input = input;
    saved->targets = targets;
    if (config_.recompute == Recompute::kFull && !keep_all) {
      // Keep only the inputs and where the dropout streams stood; backward runs this again.
      saved->rng = rng;
      saved = nullptr;
    }
  }

  Tensor x;  // the activation flowing through the stage
  TensorView current = input;
  if (layout_.has_embedding) {
    TensorView position_ids;
    if (positions_) {
      const int64_t local_seq = seq / shards;
      position_ids = positions(local_seq, batch, shards > 1 ? local_seq * ctx_.tp.rank() : 0);
    }
    x = embed(input, position_ids, saved ? &saved->embedding : nullptr,
              SequenceParallel::kAsConfigured);
    if (training_ && config_.dropout > 0.0f) {
      // As TransformerLayer::dropped: the whole activation's draw, this rank's part of it.
      const int64_t local = x.numel();
      DropoutRng::Draw draw = rng.replicated(local * shards);
      if (shards > 1) draw.offset += static_cast<uint64_t>(ctx_.tp.rank() * local);
      ctx_.backend.dropout(x, x, config_.dropout, draw.seed, draw.offset);
      if (saved) {
        saved->embedding_drop = draw;
        saved->embedding_dropout = true;
      }
    }
    if (saved) saved->position_ids = position_ids;
    current = x;
  }
  if (saved) saved->layers.resize(layers_.size());
  for (size_t i = 0; i < layers_.size(); ++i) {
    Tensor out = saved ? layers_[i]->forward(current, seq, batch, rng, saved->layers[i])
                       : layers_[i]->forward(current, seq, batch, rng);
    // The layer's input must outlive its backward: keep the previous activation.
    if (saved && x.defined()) saved->activations.push_back(std::move(x));
    x = std::move(out);
    current = x;
  }
  if (!layout_.has_head) return x;

  Tensor final_hidden =
      saved ? final_norm_->forward(current, saved->final_norm) : final_norm_->forward(current);
  Tensor logits = saved ? embedding_->lm_head_forward(final_hidden, saved->head)
                        : embedding_->lm_head_forward(final_hidden);
  const std::vector<float> losses =
      saved
          ? cross_entropy_.forward(logits, targets, embedding_->vocab_start(), config_.vocab_size,
                                   saved->cross_entropy)
          : cross_entropy_.forward(logits, targets, embedding_->vocab_start(), config_.vocab_size);
  double sum = 0.0;
  for (float l : losses) sum += l;
  const float mean = static_cast<float>(sum / static_cast<double>(losses.size()));
  if (loss != nullptr) *loss = mean;
  if (saved) {
    saved->loss = mean;
    saved->tokens = losses.size();
    saved->final_input = std::move(x);
    saved->final_hidden = std::move(final_hidden);
    saved->logits = std::move(logits);
  }
  return Tensor();
}

Tensor GPTModel::backward_stage(TensorView grad_output, float loss_scale, Saved& saved) {
  WEFT_CHECK(saved.seq > 0, "GPTModel: backward called before forward (its saved state is empty)");
  if (saved.needs_recompute()) recompute(saved);
  Tensor grad;
  TensorView upstream = grad_output;  // the gradient flowing into the next layer down
  if (layout_.has_head) {
    const std::vector<float> grad_loss(saved.tokens, loss_scale / static_cast<float>(saved.tokens));
    grad = embedding_->lm_head_backward(cross_entropy_.backward(grad_loss, saved.cross_entropy),
                                        saved.head);
    grad = final_norm_->backward(grad, saved.final_norm);
    upstream = grad;
  } else {
    const int64_t rows = saved.seq * saved.batch / sequence_shards();
    WEFT_CHECK(grad_output.shape == Shape({rows, config_.hidden}),
               "GPTModel stage: ", "grad_output ", grad_output.str(),
               " must match the stage output [", rows, ", ", config_.hidden, "]");
  }
  for (size_t i = layers_.size(); i-- > 0;) {
    grad = layers_[i]->backward(upstream, saved.layers[i]);
    upstream = grad;
  }
  if (!layout_.has_embedding) {
    saved = Saved{};
    return grad;
  }
  if (!grad.defined()) {
    // A first stage holding only the embedding: the dropout below works in place, and the
    // caller's gradient must not change.
    grad = Tensor(ctx_.backend, upstream.shape, upstream.dtype);
    ctx_.backend.copy(grad, upstream);
  }
  if (saved.embedding_dropout) {
    ctx_.backend.dropout(grad, grad, config_.dropout, saved.embedding_drop.seed,
                         saved.embedding_drop.offset);
  }
  embedding_->backward(grad, saved.embedding);
  if (positions_) accumulate_position_grads(grad, saved.position_ids, saved.seq);
  saved = Saved{};
  return Tensor();
}

void GPTModel::recompute(Saved& saved) {
  WEFT_CHECK(saved.needs_recompute(),
             "GPTModel: recompute needs the saved state of a forward "
             "under Recompute::kFull that was not recomputed yet");
  // The forward again from the kept input, keeping everything this time.
  Saved full;
  DropoutRng rng = *saved.rng;
  run_stage(saved.input, saved.targets, saved.seq, saved.batch, rng, &full, true, nullptr);
  saved = std::move(full);
}

float GPTModel::forward(TensorView ids, TensorView targets, int64_t seq, int64_t batch,
                        DropoutRng& rng, Saved& saved) {
  WEFT_CHECK(layout_.has_embedding && layout_.has_head,
             "GPTModel::forward needs the whole model; a pipeline stage uses forward_stage");
  forward_stage(ids, targets, seq, batch, rng, saved);
  return saved.loss;
}

float GPTModel::forward(TensorView ids, TensorView targets, int64_t seq, int64_t batch,
                        DropoutRng& rng) {
  WEFT_CHECK(layout_.has_embedding && layout_.has_head,
             "GPTModel::forward needs the whole model; a pipeline stage uses forward_stage");
  float loss = 0.0f;
  forward_stage(ids, targets, seq, batch, rng, &loss);
  return loss;
}

void GPTModel::backward(Saved& saved, float loss_scale) {
  backward_stage(TensorView{}, loss_scale, saved);
}

void GPTModel::accumulate_position_grads(TensorView grad, TensorView position_ids, int64_t seq) {
  if (sequence_shards() == 1) {
    ctx_.backend.embedding_backward(positions_->grad, position_ids, grad, 0);
    return;
  }
  // This rank's rows hold positions [r seq/tp, (r+1) seq/tp) only: its share of the replicated
  // table's gradient is partial (like a norm's), and the sum over TP is the whole gradient.
  // Only rows [0, seq) of the table can have one.
  const TensorView used = positions_->grad.view().rows(0, seq);
  Tensor delta(ctx_.backend, used.shape, used.dtype);
  ctx_.backend.fill(delta, 0.0f);
  ctx_.backend.embedding_backward(delta, position_ids, grad, 0);
  ctx_.tp.all_reduce(delta, delta, ReduceOp::kSum, ctx_.backend.stream());
  ctx_.backend.add(used, used, delta);
}

std::vector<TensorView> GPTModel::Saved::views() const {
  std::vector<TensorView> saved;
  auto append = [&](const std::vector<TensorView>& views) {
    saved.insert(saved.end(), views.begin(), views.end());
  };
  if (rng.has_value()) {  // full recomputation: the stage input only
    for (const TensorView& v : {input, targets}) {
      if (v.data != nullptr) saved.push_back(v);
    }
    return saved;
  }
  for (const auto& layer : layers) append(layer.views());
  append(final_norm.views());
  append(embedding.views());
  append(head.views());
  for (const Tensor* t : {&final_hidden, &logits}) {
    if (t->defined()) saved.push_back(*t);
  }
  return saved;
}

void GPTModel::set_training(bool training) {
  training_ = training;
  for (auto& layer : layers_) layer->set_training(training);
}

KVCache GPTModel::new_cache(int64_t batch, int64_t capacity) const {
  WEFT_CHECK(layout_.has_embedding && layout_.has_head, "GPTModel: decoding needs the whole model");
  WEFT_CHECK(capacity <= config_.max_seq, "GPTModel: cache capacity (", capacity,
             ") exceeds the model's maximum sequence length (", config_.max_seq, ")");
  KVCache cache;
  for (const auto& layer : layers_) {
    cache.layers.push_back(layer->attention().new_cache(batch, capacity));
  }
  cache.batch = batch;
  cache.capacity = capacity;
  return cache;
}

std::vector<float> GPTModel::next_token_logits(TensorView ids, int64_t seq, KVCache& cache) {
  WEFT_CHECK(layout_.has_embedding && layout_.has_head, "GPTModel: decoding needs the whole model");
  WEFT_CHECK(cache.layers.size() == layers_.size(), "GPTModel: the cache holds ",
             cache.layers.size(), " layers, the model ", layers_.size(),
             " (a cache from new_cache of this model?)");
  const int64_t batch = cache.batch, past = cache.length;
  check_tokens(ids, "ids", seq, batch);
  WEFT_CHECK(past + seq <= config_.max_seq, "GPTModel: positions up to ", past + seq,
             " exceed the model's maximum sequence length (", config_.max_seq, ")");
  // Decoding runs without sequence parallelism (as TransformerLayer::forward_cached does in the
  // attention and MLP; here the embedding and its tied head).
  Tensor x = embed(ids, positions_ ? positions(seq, batch, past) : TensorView{}, nullptr,
                   SequenceParallel::kOff);
  for (size_t i = 0; i < layers_.size(); ++i) {
    x = layers_[i]->forward_cached(x, seq, batch, cache.layers[i]);
  }
  cache.length = past + seq;
  Tensor hidden = final_norm_->forward(x);
  // Only the last position's rows go through the LM head.
  Tensor last(ctx_.backend, Shape({batch, config_.hidden}), config_.dtype);
  ctx_.backend.copy(last, hidden.view().rows((seq - 1) * batch, batch));
  Tensor local = embedding_->lm_head_forward(last, SequenceParallel::kOff);
  Tensor full = gather_last_dim(ctx_, local);  // [batch, padded vocab]: inference only
  Tensor full_f32(ctx_.backend, full.shape(), DType::kF32);
  ctx_.backend.convert(full_f32, full);
  const int64_t padded = full.shape().cols();
  std::vector<float> host(static_cast<size_t>(batch * padded));
  ctx_.backend.copy(TensorView{host.data(), full_f32.shape(), DType::kF32, Device::cpu()},
                    full_f32);
  std::vector<float> logits(static_cast<size_t>(batch * config_.vocab_size));
  for (int64_t b = 0; b < batch; ++b) {
    std::copy_n(host.begin() + b * padded, config_.vocab_size,
                logits.begin() + b * config_.vocab_size);
  }
  return logits;
}

}  // namespace weft
