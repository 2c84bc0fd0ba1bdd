// ParallelAttention: QKV projection split by kv groups, causal attention on each rank's heads,
// RowParallelLinear output projection.
//
// The global QKV weight is one [(heads + 2 * kv_heads) * head_dim, hidden] tensor whose rows
// follow Megatron's grouped layout: for kv group g, its heads / kv_heads query heads, then its key
// head, then its value head, head_dim rows each. Every rank's weights are windows of that tensor
// (random stream "<name>.qkv.weight"), so a seed gives one model at any TP size and in both modes:
//
// - kv_heads divisible by tp: a ColumnParallelLinear "<name>.qkv" holding kv_heads / tp whole
//   groups (an even row split of the global tensor).
// - kv_heads < tp (replicated kv): the tp / kv_heads ranks of group g = tp_rank / (tp / kv_heads)
//   each hold heads / tp of the group's query heads and a replica of its key and value heads:
//     "<name>.q.weight"  global [heads * head_dim, hidden] (query heads in order), split by tp;
//                        row h * head_dim + i is QKV row (g * (qpg + 2) + h % qpg) * head_dim + i
//                        with g = h / qpg, qpg = heads / kv_heads.
//     "<name>.kv.weight" global [2 * kv_heads * head_dim, hidden] (per group: key, value), split
//                        into kv_heads parts, part g held by tp / kv_heads ranks (replica_count);
//                        row g * 2 * head_dim + j is QKV row (g * (qpg + 2) + qpg) * head_dim + j.
//   The biases follow the same row order. The key/value gradients are summed over the ranks that
//   share the group.
#include <cmath>

#include "layers/linear_common.hpp"
#include "layers/tp_linear_ops.hpp"
#include "weft/attention.hpp"
#include "weft/error.hpp"

namespace weft {

namespace {

// Validates the configuration (identically on every rank, before any communication) and resolves
// kv_heads = 0 to heads.
ParallelAttentionConfig checked(const ParallelAttentionConfig& config, int tp) {
  ParallelAttentionConfig c = config;
  WEFT_CHECK(c.hidden > 0 && c.heads > 0, c.name, ": hidden (", c.hidden, ") and heads (", c.heads,
             ") must be positive");
  WEFT_CHECK(c.kv_heads >= 0, c.name, ": kv_heads (", c.kv_heads,
             ") must be positive, or 0 for as many as heads");
  if (c.kv_heads == 0) c.kv_heads = c.heads;
  WEFT_CHECK(c.hidden % c.heads == 0, c.name, ": hidden (", c.hidden,
             ") must be divisible by heads (", c.heads, ")");
  WEFT_CHECK(c.heads % tp == 0, c.name, ": heads (", c.heads,
             ") must be divisible by the tensor-parallel size (", tp, ")");
  WEFT_CHECK(c.heads % c.kv_heads == 0, c.name, ": heads (", c.heads,
             ") must be divisible by kv_heads (", c.kv_heads, ")");
  WEFT_CHECK(c.kv_heads % tp == 0 || tp % c.kv_heads == 0, c.name, ": kv_heads (", c.kv_heads,
             ") and the tensor-parallel size (", tp,
             ") must divide one another (kv groups split across ranks, or ranks sharing a group)");
  if (c.rotary) {
    WEFT_CHECK((c.hidden / c.heads) % 2 == 0, c.name, ": rotary embedding needs an even head_dim (",
               "hidden ", c.hidden, " / heads ", c.heads, " = ", c.hidden / c.heads, ")");
    WEFT_CHECK(c.rope_theta > 0.0f, c.name, ": rope_theta (", c.rope_theta, ") must be positive");
  }
  return c;
}

}  // namespace

ParallelAttention::ParallelAttention(const ParallelContext& ctx,
                                     const ParallelAttentionConfig& config)
    : ctx_(ctx), config_(checked(config, ctx.tp.size())) {
  const auto& c = config_;
  const int tp = ctx.tp.size(), rank = ctx.tp.rank();
  head_dim_ = c.hidden / c.heads;
  local_heads_ = c.heads / tp;
  const int64_t d = head_dim_, qpg = c.heads / c.kv_heads;

  if (c.kv_heads % tp == 0) {
    local_kv_heads_ = c.kv_heads / tp;
    ColumnParallelLinearConfig qkv;
    qkv.parallel() = c.parallel();
    qkv.in_features = c.hidden;
    qkv.out_features = (c.heads + 2 * c.kv_heads) * d;
    qkv.bias = c.bias;
    qkv.name = c.name + ".qkv";
    qkv_ = std::make_unique<ColumnParallelLinear>(ctx, qkv);
  } else {
    local_kv_heads_ = 1;
    const int ranks_per_group = tp / static_cast<int>(c.kv_heads);
    const int group = rank / ranks_per_group;
    Backend& backend = ctx.backend;
    q_weight_ = make_parameter(backend, c.name + ".q.weight", Shape({c.heads * d, c.hidden}),
                               c.dtype, /*partition_dim=*/0, tp, rank);
    kv_weight_ = make_parameter(backend, c.name + ".kv.weight",
                                Shape({2 * c.kv_heads * d, c.hidden}), c.dtype,
                                /*partition_dim=*/0, static_cast<int>(c.kv_heads), group);
    kv_weight_.replica_count = ranks_per_group;
    // Both are windows of the global QKV tensor: this rank's query heads are contiguous rows of
    // their group, and so are the group's key and value.
    const int64_t group_row = group * (qpg + 2) * d;
    RandomFill fill{Distribution::kNormal, derive_seed(c.seed, (c.name + ".qkv.weight").c_str()), 0,
                    0.0, c.init_std};
    fill.global_cols = c.hidden;
    fill.row0 = group_row + (rank % ranks_per_group) * local_heads_ * d;
    backend.fill_random(q_weight_.value, fill);
    fill.row0 = group_row + qpg * d;
    backend.fill_random(kv_weight_.value, fill);
    if (c.bias) {
      q_bias_ = make_parameter(backend, c.name + ".q.bias", Shape({c.heads * d}), c.dtype,
                               /*partition_dim=*/0, tp, rank);
      kv_bias_ = make_parameter(backend, c.name + ".kv.bias", Shape({2 * c.kv_heads * d}), c.dtype,
                                /*partition_dim=*/0, static_cast<int>(c.kv_heads), group);
      kv_bias_.replica_count = ranks_per_group;
      backend.fill(q_bias_.value, 0.0f);
      backend.fill(kv_bias_.value, 0.0f);
    }
    kv_group_ = &ctx.tp.block_group(ranks_per_group);  // one per grouping, shared by the layers
  }

  RowParallelLinearConfig proj;
  proj.parallel() = c.parallel();
  proj.in_features = c.heads * d;
  proj.out_features = c.hidden;
  proj.bias = c.bias;
  proj.input_is_parallel = true;
  proj.name = c.name + ".proj";
  proj.init_std = c.output_init_std;
  proj_ = std::make_unique<RowParallelLinear>(ctx, proj);
}

std::vector<Parameter*> ParallelAttention::parameters() {
  std::vector<Parameter*> params;
  if (qkv_) {
    params = qkv_->parameters();
  } else {
    params.push_back(&q_weight_);
    if (config_.bias) params.push_back(&q_bias_);
    params.push_back(&kv_weight_);
    if (config_.bias) params.push_back(&kv_bias_);
  }
  for (Parameter* p : proj_->parameters()) params.push_back(p);
  return params;
}

AttentionShape ParallelAttention::local_shape(int64_t seq, int64_t batch) const {
  AttentionShape s;
  s.seq = seq;
  s.batch = batch;
  s.heads = local_heads_;
  s.kv_heads = local_kv_heads_;
  s.head_dim = head_dim_;
  return s;
}

void ParallelAttention::check_input(const TensorView& x, int64_t seq, int64_t batch, bool sp,
                                    const char* what) const {
  WEFT_CHECK(seq > 0 && batch > 0, config_.name, ": seq (", seq, ") and batch (", batch,
             ") must be positive");
  if (sp) check_sequence_parallel_seq(seq, ctx_.tp.size(), config_.name);
  check_activation(ctx_.backend, x, config_.hidden, config_.dtype, config_.name, what);
  const int64_t rows = seq * batch / (sp ? ctx_.tp.size() : 1);
  WEFT_CHECK(x.shape.rows() == rows, config_.name, ": ", what, " ", x.shape.str(), " has ",
             x.shape.rows(), " rows, but seq (", seq, ") x batch (", batch, ")", sp ? " / tp" : "",
             " = ", rows);
}

std::vector<TensorView> ParallelAttention::Saved::views() const {
  std::vector<TensorView> saved = qkv.views();
  for (const TensorView& v : {input, qkv_act.view(), lse.view(), context.view()}) {
    if (v.data != nullptr) saved.push_back(v);
  }
  for (const TensorView& v : proj.views()) saved.push_back(v);
  return saved;
}

Tensor ParallelAttention::project_qkv(TensorView x, bool sp, Saved* saved) {
  if (qkv_) {
    if (saved != nullptr) return qkv_->forward(x, saved->qkv);
    return qkv_->forward(x, sp ? SequenceParallel::kAsConfigured : SequenceParallel::kOff);
  }
  // Replicated kv: two column projections of one input (gathered once under sequence
  // parallelism), this rank's query heads and its group's key and value.
  Backend& backend = ctx_.backend;
  const int64_t tokens = x.shape.rows() * (sp ? ctx_.tp.size() : 1),
                q_cols = local_heads_ * head_dim_, kv_cols = 2 * head_dim_;
  if (saved != nullptr) saved->input = x;
  const Tensor q(backend, Shape({tokens, q_cols}), config_.dtype);
  const Tensor kv(backend, Shape({tokens, kv_cols}), config_.dtype);
  auto projection = [&](const Parameter& w, const Parameter& b, const Tensor& out) {
    ColumnProjection p;
    p.weight = w.value;
    if (config_.bias) {
      p.bias = b.value;
      p.epilogue = Epilogue::kBias;
    }
    p.out = out;
    return p;
  };
  column_forward(ctx_, {sp, config_.tp_comm_overlap}, x,
                 {projection(q_weight_, q_bias_, q), projection(kv_weight_, kv_bias_, kv)});
  // One group: the query heads, then key and value.
  Tensor qkv(backend, Shape({tokens, q_cols + kv_cols}), config_.dtype);
  backend.copy_columns(qkv, 0, q, 0, q_cols);
  backend.copy_columns(qkv, q_cols, kv, 0, kv_cols);
  return qkv;
}

Tensor ParallelAttention::project_qkv_backward(TensorView grad_qkv, Saved& saved) {
  if (qkv_) return qkv_->backward(grad_qkv, saved.qkv);
  Backend& backend = ctx_.backend;
  const int64_t tokens = grad_qkv.shape.rows(), q_cols = local_heads_ * head_dim_,
                kv_cols = 2 * head_dim_;
  Tensor grad_q(backend, Shape({tokens, q_cols}), config_.dtype);
  Tensor grad_kv(backend, Shape({tokens, kv_cols}), config_.dtype);
  backend.copy_columns(grad_q, 0, grad_qkv, 0, q_cols);
  backend.copy_columns(grad_kv, 0, grad_qkv, q_cols, kv_cols);

  // The key/value replicas' gradient is the sum over the ranks sharing the group of each one's
  // share (from its own query heads). The shares are accumulated in f32, one buffer for weight
  // and bias, so that a 16-bit model rounds the sum once rather than every partial.
  const int64_t rows = kv_weight_.value.shape()[0], cols = config_.hidden;
  const int64_t n_weight = rows * cols, n_total = n_weight + (config_.bias ? rows : 0);
  Tensor delta(backend, Shape({n_total}), DType::kF32);
  backend.fill(delta, 0.0f);
  const TensorView delta_w{delta.data(), Shape({rows, cols}), DType::kF32, delta.device()};
  const TensorView delta_b{static_cast<float*>(delta.data()) + n_weight, Shape({rows}), DType::kF32,
                           delta.device()};

  // This rank's share of the input gradient, from its query heads and from the part of the
  // key/value gradient that flows from them; the TP reduction adds up the shares of all ranks.
  ColumnGradient gq;
  gq.grad = grad_q;
  gq.weight = q_weight_.value;
  gq.weight_grad = q_weight_.grad;
  if (config_.bias) gq.bias_grad = q_bias_.grad;
  ColumnGradient gkv;
  gkv.grad = grad_kv;
  gkv.weight = kv_weight_.value;
  gkv.weight_grad = delta_w;
  if (config_.bias) gkv.bias_grad = delta_b;
  Tensor grad_input = column_backward(ctx_, {saved.sequence_parallel, config_.tp_comm_overlap},
                                      saved.input, {gq, gkv});
  accumulate_shared_kv_grads(delta, delta_w, delta_b);
  return grad_input;
}

void ParallelAttention::accumulate_shared_kv_grads(TensorView delta, TensorView delta_w,
                                                   TensorView delta_b) {
  Backend& backend = ctx_.backend;
  kv_group_->all_reduce(delta, delta, ReduceOp::kSum, backend.stream());
  auto add_to = [&](Parameter& p, const TensorView& sum) {
    if (config_.dtype == DType::kF32) {
      backend.add(p.grad, p.grad, sum.reshaped(p.grad.shape()));
      return;
    }
    Tensor converted(backend, p.grad.shape(), config_.dtype);
    backend.convert(converted, sum.reshaped(p.grad.shape()));
    backend.add(p.grad, p.grad, converted);
  };
  add_to(kv_weight_, delta_w);
  if (config_.bias) add_to(kv_bias_, delta_b);
}

Tensor ParallelAttention::forward(TensorView x, int64_t seq, int64_t batch, Saved& saved) {
  saved = Saved{};
  return run_forward(x, seq, batch, &saved);
}

Tensor ParallelAttention::forward(TensorView x, int64_t seq, int64_t batch) {
  return run_forward(x, seq, batch, nullptr);
}

Tensor ParallelAttention::run_forward(TensorView x, int64_t seq, int64_t batch, Saved* saved) {
  const bool sp = config_.sequence_parallel;
  check_input(x, seq, batch, sp, "input");
  Backend& backend = ctx_.backend;
  const AttentionShape shape = local_shape(seq, batch);
  const TensorView x2d =
      x.reshaped(Shape({seq * batch / (sp ? ctx_.tp.size() : 1), config_.hidden}));

  // Under sequence parallelism the projection gathers the rows: the core attention always sees
  // whole sequences (of this rank's heads), and the output projection scatters them again.
  Tensor qkv = project_qkv(x2d, sp, saved);
  if (config_.rotary) backend.rope(qkv, shape, config_.rope_theta, 0, /*inverse=*/false);
  // The backend op saves each query row's log-sum-exp for its backward, which recomputes the
  // probabilities from it (FlashAttention): nothing of size seq^2 is ever kept.
  Tensor lse(backend, Shape({batch, local_heads_, seq}), DType::kF32);
  Tensor context(backend, Shape({seq * batch, local_heads_ * head_dim_}), config_.dtype);
  backend.attention(context, lse, qkv, shape);
  if (saved == nullptr) {
    Tensor out = proj_->forward(context);
    out.reshape(x.shape);
    return out;
  }
  Tensor out = proj_->forward(context, saved->proj);
  out.reshape(x.shape);
  saved->seq = seq;
  saved->batch = batch;
  saved->sequence_parallel = sp;
  saved->qkv_act = std::move(qkv);
  saved->lse = std::move(lse);
  if (config_.recompute_core) {
    saved->proj.input = TensorView{};  // the context is dropped; backward recomputes it
  } else {
    saved->context = std::move(context);
  }
  return out;
}

Tensor ParallelAttention::backward(TensorView grad_output, Saved& saved) {
  WEFT_CHECK(saved.qkv_act.defined(), config_.name,
             ": backward needs a forward() first (its saved state is empty; forward_cached saves "
             "nothing for backward)");
  const int64_t seq = saved.seq, batch = saved.batch;
  const int64_t tokens = seq * batch / (saved.sequence_parallel ? ctx_.tp.size() : 1);
  check_activation(ctx_.backend, grad_output, config_.hidden, config_.dtype, config_.name,
                   "grad_output");
  WEFT_CHECK(grad_output.shape.rows() == tokens, config_.name, ": grad_output ",
             grad_output.shape.str(), " has ", grad_output.shape.rows(), " rows, forward had ",
             tokens);
  Backend& backend = ctx_.backend;
  const AttentionShape shape = local_shape(seq, batch);

  if (!saved.context.defined()) {
    // Selective recomputation: the attention output again, from the saved q, k, v, for the
    // output projection's backward (the recomputed log-sum-exp equals the saved one).
    saved.context = Tensor(backend, Shape({seq * batch, local_heads_ * head_dim_}), config_.dtype);
    Tensor lse(backend, saved.lse.shape(), DType::kF32);
    backend.attention(saved.context, lse, saved.qkv_act, shape);
    saved.proj.input = saved.context.view();
  }
  const Tensor grad_context =
      proj_->backward(grad_output.reshaped(Shape({tokens, config_.hidden})), saved.proj);
  Tensor grad_qkv(backend, saved.qkv_act.shape(), config_.dtype);
  backend.attention_backward(grad_qkv, grad_context, saved.qkv_act, saved.lse, shape);
  // The rotation is orthogonal: its backward rotates the q and k gradients back.
  if (config_.rotary) backend.rope(grad_qkv, shape, config_.rope_theta, 0, /*inverse=*/true);
  Tensor grad_input = project_qkv_backward(grad_qkv, saved);
  grad_input.reshape(grad_output.shape);
  saved = Saved{};
  return grad_input;
}

ParallelAttention::KVCache ParallelAttention::new_cache(int64_t batch, int64_t capacity) const {
  WEFT_CHECK(batch > 0 && capacity > 0, config_.name, ": cache batch (", batch, ") and capacity (",
             capacity, ") must be positive");
  const Shape shape({batch, local_kv_heads_, capacity, head_dim_});
  KVCache cache;
  cache.k = Tensor(ctx_.backend, shape, config_.dtype);
  cache.v = Tensor(ctx_.backend, shape, config_.dtype);
  cache.batch = batch;
  cache.capacity = capacity;
  return cache;
}

Tensor ParallelAttention::forward_cached(TensorView x, int64_t seq, int64_t batch, KVCache& cache) {
  WEFT_CHECK(cache.k.defined() && cache.v.defined(), config_.name,
             ": forward_cached needs a cache from new_cache (this one holds no tensors)");
  const Shape cache_shape({cache.batch, local_kv_heads_, cache.capacity, head_dim_});
  WEFT_CHECK(cache.k.shape() == cache_shape && cache.v.shape() == cache_shape, config_.name,
             ": cache keys ", cache.k.shape().str(), " and values ", cache.v.shape().str(),
             " are not this layer's ", cache_shape.str(), " (another layer's cache?)");
  // Decoding runs on all rows (one new position is not split across ranks).
  check_input(x, seq, batch, /*sequence_parallel=*/false, "input");
  WEFT_CHECK(batch == cache.batch, config_.name, ": batch (", batch,
             ") differs from the cache's batch (", cache.batch, ")");
  const int64_t past = cache.length;
  WEFT_CHECK(past >= 0 && past + seq <= cache.capacity, config_.name, ": positions [", past, ", ",
             past + seq, ") do not fit the cache's capacity (", cache.capacity, ")");
  Backend& backend = ctx_.backend;
  const AttentionShape shape = local_shape(seq, batch);

  Tensor qkv = project_qkv(x.reshaped(Shape({seq * batch, config_.hidden})), false, nullptr);
  if (config_.rotary) backend.rope(qkv, shape, config_.rope_theta, past, /*inverse=*/false);
  Tensor context(backend, Shape({seq * batch, local_heads_ * head_dim_}), config_.dtype);
  backend.attention_with_cache(context, cache.k, cache.v, qkv, shape, past);
  cache.length = past + seq;
  Tensor out = proj_->forward(context, SequenceParallel::kOff);
  out.reshape(x.shape);
  return out;
}

}  // namespace weft
