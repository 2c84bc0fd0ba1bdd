// The planner's performance and memory model, top to bottom: FLOPs, GEMM and element-wise time,
// collectives, pipeline bubble, data-parallel all-reduce, optimizer, memory; then predict().
//
// Conventions (every term says where it comes from):
// - FLOPs: Narayanan et al. 2021 ("Efficient Large-Scale Language Model Training on GPU Clusters
//   Using Megatron-LM", eq. 3): a layer's forward is 24 s h^2 + 4 s^2 h per sequence (full s^2
//   attention scores, no causal halving), backward twice the forward, full recomputation one more
//   forward, the LM head 2 s h V forward. Published TFLOP/s count the recomputation.
// - GEMM time: FLOPs / (peak x efficiency), the efficiency a curve of the GEMM's smallest
//   dimension (small GEMMs starve tensor cores / vector units); one curve per cluster. A cluster
//   with a measured GEMM table (a calibrated one) takes instead the rate of the nearest measured
//   shape in the same role: forward, data gradient or weight gradient, which libraries run at
//   different rates (oneDNN's weight gradient of a small layer: about half its forward rate).
// - Attention core: its FLOPs at the GEMM curve's rate for the head size, or, on calibrated
//   clusters, at a curve of its own measured on bench_gpt_layer (weft's CPU attention runs far
//   below the GEMM rate at head sizes 16-32).
// - Element-wise time (norms, softmax, GeLU, residuals, dropout): memory-bound; the bytes they
//   move are taken as twice (written once, read once) the activations the layer stores without
//   recomputation (Korthikanti et al. 2022, Table 2, in weft's form), at the cluster's achievable
//   memory bandwidth.
// - Collectives: ring algorithms in nccl-tests' bus-bandwidth terms, alpha-beta (latency per ring
//   step + bytes x busbw factor / link bandwidth).
// - Pipeline: 1F1B bubble (p - 1) / m of the ideal time, interleaved (p - 1) / (m v) (Narayanan
//   et al. 2021, section 2.2); p2p of one micro-batch's boundary activations per chunk, blocking.
//   On a shared node with more ranks than cores, a stage in its bubble lends its cores: the step
//   is the busy time or the whole critical path at one core per busy rank, whichever is longer.
// - Data parallel: ring all-reduce of the gradients in the compute dtype after the last
//   backward (weft's average_gradients and Megatron 2021 do not overlap it with backward).
// - Memory: mixed-precision Adam as in weft's AdamW (16-bit weights, f32 gradients, f32 master
//   weights and moments: 2 + 4 + 12 bytes per parameter; f32 runs 4 + 4 + 8), activations by
//   layer_activation_bytes below, times the micro-batches in flight on the first stage.
#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "weft/error.hpp"
#include "weft/plan.hpp"

namespace weft::plan {

// ---------------------------------------------------------------- model shape and names

ModelShape ModelShape::gpt(int64_t layers, int64_t hidden, int64_t heads, int64_t seq_len,
                           int64_t vocab) {
  ModelShape m;
  m.layers = layers;
  m.hidden = hidden;
  m.heads = heads;
  m.kv_heads = heads;
  m.ffn_hidden = 4 * hidden;
  m.seq_len = seq_len;
  m.vocab = vocab;
  return m;
}

void ModelShape::check() const {
  const std::pair<const char*, int64_t> sizes[] = {
      {"layers", layers},         {"hidden", hidden},   {"heads", heads}, {"kv-heads", kv_heads},
      {"ffn-hidden", ffn_hidden}, {"seq-len", seq_len}, {"vocab", vocab}};
  for (const auto& [name, value] : sizes) {
    WEFT_CHECK(value > 0, "model: --", name, " (", value, ") must be positive");
  }
  WEFT_CHECK(hidden % heads == 0, "model: hidden (", hidden, ") must be divisible by heads (",
             heads, ")");
  WEFT_CHECK(heads % kv_heads == 0, "model: heads (", heads, ") must be divisible by kv-heads (",
             kv_heads, ")");
}

double ModelShape::parameter_count() const {
  const double h = static_cast<double>(hidden), d = static_cast<double>(head_dim());
  const double qkv = h * static_cast<double>(heads + 2 * kv_heads) * d, proj = h * h;
  const double mlp = (gated_mlp ? 3.0 : 2.0) * h * static_cast<double>(ffn_hidden);
  double per_layer = qkv + proj + mlp + 4 * h;  // two norms' scale and shift
  if (bias)
    per_layer += static_cast<double>(heads + 2 * kv_heads) * d + h + h +
                 (gated_mlp ? 2.0 : 1.0) * static_cast<double>(ffn_hidden);
  double total = static_cast<double>(layers) * per_layer + 2 * h + static_cast<double>(vocab) * h;
  if (learned_positions) total += static_cast<double>(seq_len) * h;
  return total;
}

const char* recompute_name(Recompute r) {
  switch (r) {
    case Recompute::kNone:
      return "none";
    case Recompute::kSelective:
      return "selective";
    case Recompute::kFull:
      return "full";
  }
  return "?";
}

Recompute parse_recompute(const std::string& name) {
  if (name == "none") return Recompute::kNone;
  if (name == "selective") return Recompute::kSelective;
  if (name == "full") return Recompute::kFull;
  WEFT_THROW(ErrorCode::kInvalidArgument, "--recompute must be none, selective or full, got '",
             name, "'");
  return Recompute::kNone;
}

std::string layout_name(const Layout& l) {
  std::ostringstream os;
  os << "tp" << l.tp << " pp" << l.pp << " dp" << l.dp << " mb" << l.micro_batch << " v"
     << l.virtual_stages << (l.sequence_parallel ? " sp" : "")
     << (l.tp_comm_overlap ? " overlap" : "") << " " << recompute_name(l.recompute);
  return os.str();
}

// ---------------------------------------------------------------- FLOPs

double narayanan_flops_per_step(const ModelShape& m, int64_t global_batch, bool recompute) {
  const double B = static_cast<double>(global_batch), s = static_cast<double>(m.seq_len);
  const double l = static_cast<double>(m.layers), h = static_cast<double>(m.hidden);
  const double V = static_cast<double>(m.vocab);
  if (recompute) return 96 * B * s * l * h * h * (1 + s / (6 * h) + V / (16 * l * h));
  return 72 * B * s * l * h * h * (1 + s / (6 * h) + V / (12 * l * h));
}

namespace {

// One GEMM of a layer's forward at tensor-parallel size tp, per micro-batch: C[m x n] = A[m x k]
// B[k x n]. Its backward is two GEMMs of the same three dimensions (dgrad, wgrad).
struct Gemm {
  double m, n, k;
  double flops() const { return 2 * m * n * k; }
  double smallest() const { return std::min({m, n, k}); }
};

std::vector<Gemm> layer_gemms(const ModelShape& m, double tokens, double tp) {
  const double h = static_cast<double>(m.hidden), d = static_cast<double>(m.head_dim());
  const double f = static_cast<double>(m.ffn_hidden);
  const double qkv_out = static_cast<double>(m.heads + 2 * m.kv_heads) * d;
  return {
      {tokens, qkv_out / tp, h},                    // fused QKV, column-parallel
      {tokens, h, h / tp},                          // attention output, row-parallel
      {tokens, (m.gated_mlp ? 2 : 1) * f / tp, h},  // fc1 (gate and up for SwiGLU)
      {tokens, h, f / tp},                          // fc2, row-parallel
  };
}

// Attention scores Q K^T and the weighted sum P V of one micro-batch: 2 GEMMs of 2 s^2 d FLOPs
// per local head and sequence, the smallest dimension the head size.
double attention_flops(const ModelShape& m, double micro_batch, double tp) {
  const double s = static_cast<double>(m.seq_len);
  return 2 * 2 * micro_batch * s * s * static_cast<double>(m.hidden) / tp;
}

double forward_passes(Recompute r) { return r == Recompute::kFull ? 2.0 : 1.0; }

}  // namespace

const char* gemm_role_name(GemmRole r) {
  switch (r) {
    case GemmRole::kForward:
      return "forward";
    case GemmRole::kBackwardData:
      return "backward_data";
    case GemmRole::kBackwardWeight:
      return "backward_weight";
  }
  return "?";
}

double model_flops_per_step(const ModelShape& m, int64_t global_batch, Recompute recompute) {
  const double tokens = static_cast<double>(global_batch * m.seq_len);
  double linear = 0;
  for (const Gemm& g : layer_gemms(m, tokens, 1)) linear += g.flops();
  const double attention = attention_flops(m, static_cast<double>(global_batch), 1);
  const double head = 2 * tokens * static_cast<double>(m.hidden * m.vocab);
  const double layers = static_cast<double>(m.layers);
  // forward + backward (2x) = 3 passes; full recomputation adds a forward of every layer,
  // selective the attention core's forward (Korthikanti et al. 2022, section 5).
  double layer_passes = 3 + (recompute == Recompute::kFull ? 1 : 0);
  double attention_passes = layer_passes + (recompute == Recompute::kSelective ? 1 : 0);
  return layers * (layer_passes * linear + attention_passes * attention) + 3 * head;
}

// ---------------------------------------------------------------- collectives

double collective_time_s(Collective c, double bytes, int64_t n, const Link& link) {
  WEFT_CHECK(n >= 1 && bytes >= 0, "collective_time_s: n (", n, ") must be positive and bytes (",
             bytes, ") not negative");
  if (n == 1 && c != Collective::kSendRecv) return 0.0;
  const double alpha = link.latency_us * 1e-6, bw = link.bandwidth_gbps * 1e9;
  const double nn = static_cast<double>(n);
  switch (c) {
    case Collective::kAllReduce:
      return 2 * (nn - 1) * alpha + 2 * (nn - 1) / nn * bytes / bw;
    case Collective::kAllGather:
    case Collective::kReduceScatter:
      return (nn - 1) * alpha + (nn - 1) / nn * bytes / bw;
    case Collective::kSendRecv:
      return alpha + bytes / bw;
  }
  return 0.0;
}

// ---------------------------------------------------------------- activation memory

// Korthikanti et al. 2022, Table 2, per layer with 16-bit activations (s sequence, b micro-batch,
// h hidden, a heads, t TP size):
//   TP alone              s b h (10 + 24/t + 5 a s / (h t))
//   TP + SP               s b h / t (34 + 5 a s / h)
//   selective recompute   drops the attention core's 5 a s^2 b / t
//   full recompute        keeps only the layer input, 2 s b h (/ t with SP)
// weft's layers differ (bench/activation_memory measures them exactly and checks this form):
// no dropout masks are kept (drawn again in backward: -2 sbh), nothing quadratic in s (the
// attention keeps each query row's f32 log-sum-exp, 4 a s b / t, for 5 a s^2 b / t; so selective
// recomputation drops the attention output, 2 s b h / t, and re-runs the core's forward), the
// norms keep an f32 mean and rstd (16 s b), grouped-query K and V are smaller (2 s b kv d x 2
// bytes each / t), and an ffn other than 4h scales the MLP's share. For ModelShape::gpt shapes
// this is exactly
//   TP alone   s b h (8 + 24/t) + 4 a s b / t + 16 s b
//   TP + SP    s b h 32 / t + 4 a s b / t + 16 s b / t
double layer_activation_bytes(const ModelShape& m, int64_t micro_batch, int64_t tp,
                              bool sequence_parallel, Recompute recompute) {
  const double sb = static_cast<double>(m.seq_len * micro_batch), t = static_cast<double>(tp);
  const double h = static_cast<double>(m.hidden), f = static_cast<double>(m.ffn_hidden);
  const double d = static_cast<double>(m.head_dim());
  const double sp = sequence_parallel ? t : 1.0;  // the split of the replicated activations
  if (recompute == Recompute::kFull) return 2 * sb * h / sp;
  // Replicated across TP unless SP: the two norms' inputs, the QKV and fc1 inputs (2 bytes each),
  // the norms' f32 mean and rstd.
  const double replicated = (4 * 2 * sb * h + 16 * sb) / sp;
  // Split by heads or columns: q, k, v, the attention output, the MLP's activation input and
  // output (and the gate for SwiGLU), 2 bytes each.
  const double qkv = 2 * sb * static_cast<double>(m.heads + 2 * m.kv_heads) * d;
  const double mlp = 2 * sb * f * (m.gated_mlp ? 3.0 : 2.0);
  // The attention output, recomputed under selective recomputation.
  const double context = recompute == Recompute::kSelective ? 0.0 : 2 * sb * h;
  const double split = (qkv + context + mlp) / t;
  // The attention's f32 log-sum-exp per query row.
  const double lse = 4 * static_cast<double>(m.heads) * sb / t;
  return replicated + split + lse;
}

// ---------------------------------------------------------------- the run

void Training::check() const {
  model.check();
  WEFT_CHECK(global_batch > 0, "--global-batch (", global_batch, ") must be positive");
  WEFT_CHECK(gpus > 0, "--gpus (", gpus, ") must be positive");
}

namespace {

double gemm_efficiency(const Cluster& c, double smallest) {
  return c.gemm_efficiency_max * smallest / (smallest + c.gemm_half_dim);
}

// One GEMM C[m x n] = op(A)[m x k] op(B)[k x n] in `role` on `share` of a device: the nearest
// measured shape's rate (distance in log m, n, k) when the table has the role, else the curve.
double gemm_seconds(const Cluster& c, GemmRole role, double m, double n, double k, bool bf16,
                    double share) {
  const GemmTableEntry* nearest = nullptr;
  double best = std::numeric_limits<double>::infinity();
  for (const GemmTableEntry& e : c.gemm_table) {
    if (e.role != role || e.bf16 != bf16) continue;
    const double d = std::abs(std::log(m / e.m)) + std::abs(std::log(n / e.n)) +
                     std::abs(std::log(k / e.k));
    if (d < best) {
      best = d;
      nearest = &e;
    }
  }
  const double flops = 2 * m * n * k;
  if (nearest != nullptr) return flops / (nearest->tflops * 1e12 * share);
  const double peak = (bf16 ? c.peak_tflops_bf16 : c.peak_tflops_f32) * 1e12 * share;
  return flops / (peak * gemm_efficiency(c, std::min({m, n, k})));
}

// A linear layer's forward GEMM g (tokens x in -> tokens x out) and its two backward GEMMs:
// dX = dY W [tokens x out][out x in], dW = dY^T X [out x tokens][tokens x in].
double forward_seconds(const Cluster& c, const Gemm& g, bool bf16, double share) {
  return gemm_seconds(c, GemmRole::kForward, g.m, g.n, g.k, bf16, share);
}
double backward_seconds(const Cluster& c, const Gemm& g, bool bf16, double share) {
  return gemm_seconds(c, GemmRole::kBackwardData, g.m, g.k, g.n, bf16, share) +
         gemm_seconds(c, GemmRole::kBackwardWeight, g.n, g.k, g.m, bf16, share);
}

// One transformer layer, one micro-batch, on `share` of a device: the forward GEMMs, their
// backward, the attention core's forward, and the element-wise forward (a backward costs two).
struct LayerTimes {
  double gemm_fwd = 0, gemm_bwd = 0, attention_fwd = 0, elementwise_fwd = 0, scores_bytes = 0;
};

LayerTimes layer_times(const ModelShape& m, const Cluster& c, int64_t micro_batch, int64_t tp,
                       bool sequence_parallel, bool tp_comm_overlap, bool bf16, double share) {
  const double tokens = static_cast<double>(micro_batch * m.seq_len);
  const double peak = (bf16 ? c.peak_tflops_bf16 : c.peak_tflops_f32) * 1e12 * share;
  LayerTimes t;
  // TP comm overlap runs each GEMM as tp ring steps over blocks of tokens / tp rows, so a
  // measured table prices the smaller pieces.
  const double pieces = tp_comm_overlap ? static_cast<double>(tp) : 1.0;
  for (const Gemm& g : layer_gemms(m, tokens, static_cast<double>(tp))) {
    const Gemm piece{g.m / pieces, g.n, g.k};
    t.gemm_fwd += pieces * forward_seconds(c, piece, bf16, share);
    t.gemm_bwd += pieces * backward_seconds(c, piece, bf16, share);
  }
  const double d = static_cast<double>(m.head_dim());
  const double attention_efficiency =
      c.attention_efficiency_max > 0
          ? c.attention_efficiency_max * d / (d + c.attention_half_dim)
          : gemm_efficiency(c, d);
  t.attention_fwd =
      attention_flops(m, static_cast<double>(micro_batch), static_cast<double>(tp)) /
      (peak * attention_efficiency);
  const double stored =
      layer_activation_bytes(m, micro_batch, tp, sequence_parallel, Recompute::kNone);
  // The attention scores, f32 [b, a/t, s, s]: the time model still counts them through memory
  // (written and read, as Megatron 2021's softmax did, whose runs it is checked against), though
  // weft's attention keeps them in tiles and saves only a log-sum-exp (not in `stored`).
  t.scores_bytes = 4 * static_cast<double>(m.heads) * static_cast<double>(m.seq_len) *
                   static_cast<double>(m.seq_len) * static_cast<double>(micro_batch) /
                   static_cast<double>(tp);
  t.elementwise_fwd = 2 * (stored + t.scores_bytes) / (c.memory_bandwidth_gbps * 1e9 * share);
  return t;
}

double divide(int64_t a, int64_t b) { return static_cast<double>(a) / static_cast<double>(b); }

void check_layout(const Training& t, const Layout& l) {
  const ModelShape& m = t.model;
  WEFT_CHECK(l.tp > 0 && l.pp > 0 && l.dp > 0 && l.micro_batch > 0 && l.virtual_stages > 0,
             "layout ", layout_name(l),
             ": tp, pp, dp, micro-batch and virtual stages must be "
             "positive");
  WEFT_CHECK(l.tp * l.pp * l.dp == t.gpus, "layout ", layout_name(l), ": tp x pp x dp (",
             l.tp * l.pp * l.dp, ") must equal the GPU count (", t.gpus, ")");
  WEFT_CHECK(m.heads % l.tp == 0, "layout ", layout_name(l), ": heads (", m.heads,
             ") must be divisible by tp (", l.tp, ")");
  WEFT_CHECK(m.kv_heads % l.tp == 0 || l.tp % m.kv_heads == 0, "layout ", layout_name(l),
             ": kv heads (", m.kv_heads, ") must be divisible by tp (", l.tp, ") or divide it");
  WEFT_CHECK(m.ffn_hidden % l.tp == 0, "layout ", layout_name(l), ": ffn hidden (", m.ffn_hidden,
             ") must be divisible by tp (", l.tp, ")");
  WEFT_CHECK(m.layers % (l.pp * l.virtual_stages) == 0, "layout ", layout_name(l), ": layers (",
             m.layers, ") must be divisible by pp x virtual stages (", l.pp * l.virtual_stages,
             ")");
  WEFT_CHECK(l.virtual_stages == 1 || l.pp > 1, "layout ", layout_name(l),
             ": virtual stages > 1 need pp > 1");
  WEFT_CHECK(t.global_batch % (l.dp * l.micro_batch) == 0, "layout ", layout_name(l),
             ": global batch (", t.global_batch, ") must be divisible by dp x micro-batch (",
             l.dp * l.micro_batch, ")");
  WEFT_CHECK(!l.sequence_parallel || m.seq_len % l.tp == 0, "layout ", layout_name(l),
             ": with sequence parallelism seq-len (", m.seq_len, ") must be divisible by tp (",
             l.tp, ")");
  WEFT_CHECK(!(l.sequence_parallel || l.tp_comm_overlap) || l.tp > 1, "layout ", layout_name(l),
             ": sequence parallelism and TP comm overlap need tp > 1");
}

// Parameters per device on the most loaded stage: its layers split over TP, plus the
// vocab-split embedding (first stage) or tied head copy (last stage).
double stage_parameters(const ModelShape& m, const Layout& l) {
  const double h = static_cast<double>(m.hidden), tp = static_cast<double>(l.tp);
  const double layer_params =
      (m.parameter_count() - static_cast<double>(m.vocab) * h -
       (m.learned_positions ? static_cast<double>(m.seq_len) * h : 0) - 2 * h) /
      static_cast<double>(m.layers);
  return divide(m.layers, l.pp) * layer_params / tp + static_cast<double>(m.vocab) * h / tp;
}

}  // namespace

Memory memory_per_device(const Training& t, const Layout& l) {
  t.check();
  check_layout(t, l);
  const ModelShape& m = t.model;
  const double elt = t.bf16 ? 2.0 : 4.0;
  const double tp = static_cast<double>(l.tp);
  const double tokens = static_cast<double>(l.micro_batch) * static_cast<double>(m.seq_len);
  const double micro_batches = divide(t.global_batch, l.dp * l.micro_batch);
  const double layers_per_stage = divide(m.layers, l.pp);
  const double params = stage_parameters(m, l);
  // 1F1B keeps min(p, m) micro-batches in flight on the first stage, each with its layers'
  // activations: L/p layers x p = L layers' worth; interleaving adds (p - 1)/(p v) of it
  // (Korthikanti et al. 2022, section 4.2.3).
  Memory memory;
  memory.parameters = params * elt;
  memory.gradients = params * 4;
  memory.optimizer = params * (t.bf16 ? 12 : 8);
  const double in_flight = std::min(static_cast<double>(l.pp), micro_batches);
  const double interleave =
      l.virtual_stages > 1
          ? 1 + static_cast<double>(l.pp - 1) / static_cast<double>(l.pp * l.virtual_stages)
          : 1.0;
  const double kept =
      layer_activation_bytes(m, l.micro_batch, l.tp, l.sequence_parallel, l.recompute);
  double activations = layers_per_stage * in_flight * interleave * kept;
  // Full recomputation rebuilds one chunk's activations during its backward.
  if (l.recompute == Recompute::kFull) {
    const double stored =
        layer_activation_bytes(m, l.micro_batch, l.tp, l.sequence_parallel, Recompute::kNone);
    activations += layers_per_stage / static_cast<double>(l.virtual_stages) * stored;
  }
  // The f32 logits and their gradient on the last stage.
  activations += 2 * tokens * static_cast<double>(m.vocab) / tp * 4;
  memory.activations = activations;
  return memory;
}

Prediction predict(const Training& t, const Cluster& c, const Layout& l) {
  t.check();
  c.check();
  check_layout(t, l);
  const ModelShape& m = t.model;
  Prediction p;
  p.layout = l;
  const double elt = t.bf16 ? 2.0 : 4.0;
  const double tp = static_cast<double>(l.tp), b = static_cast<double>(l.micro_batch);
  const double tokens = b * static_cast<double>(m.seq_len), h = static_cast<double>(m.hidden);
  const double micro_batches = divide(t.global_batch, l.dp * l.micro_batch);
  const double layers_per_stage = divide(m.layers, l.pp);

  // Per-device compute and bandwidth (a shared node divides its own among the ranks on it).
  const double share =
      c.shared_node ? 1.0 / static_cast<double>(t.gpus) : 1.0;
  const double peak = (t.bf16 ? c.peak_tflops_bf16 : c.peak_tflops_f32) * 1e12 * share;
  const double mem_bw = c.memory_bandwidth_gbps * 1e9 * share;
  // Link classes: a group of consecutive ranks (TP; TP x DP for the data-parallel group, the
  // stride of pipeline neighbours) stays in one node when it fits in one.
  const Link& tp_link = c.shared_node || l.tp <= c.devices_per_node ? c.intra_node : c.inter_node;
  const Link& dp_link =
      c.shared_node || l.tp * l.dp <= c.devices_per_node ? c.intra_node : c.inter_node;
  const Link& pp_link =
      c.shared_node || l.tp * l.dp * l.pp <= c.devices_per_node ? c.intra_node : c.inter_node;

  // One layer, one micro-batch, one forward pass on one device (and the GEMMs' backward).
  const LayerTimes layer =
      layer_times(m, c, l.micro_batch, l.tp, l.sequence_parallel, l.tp_comm_overlap, t.bf16, share);
  const double gemm_fwd = layer.gemm_fwd, attn_fwd = layer.attention_fwd;
  const double elementwise_fwd = layer.elementwise_fwd, scores_bytes = layer.scores_bytes;
  // TP: two all-reduces of [tokens, h] per forward, or with SP an all-gather and a
  // reduce-scatter each (the same bus volume, twice the latency steps).
  const double activation = tokens * h * elt;
  const double tp_fwd =
      l.sequence_parallel
          ? 2 * (collective_time_s(Collective::kAllGather, activation, l.tp, tp_link) +
                 collective_time_s(Collective::kReduceScatter, activation, l.tp, tp_link))
          : 2 * collective_time_s(Collective::kAllReduce, activation, l.tp, tp_link);
  // With overlap the ring hides a share of it behind the layer's GEMMs.
  const double tp_exposed_fwd =
      l.tp_comm_overlap ? tp_fwd - std::min(tp_fwd * c.tp_overlap_efficiency, gemm_fwd) : tp_fwd;

  // Passes per micro-batch: forward, backward (2 forwards' worth), full recomputation's forward;
  // selective recomputation repeats only the attention core's forward.
  const double fwd = forward_passes(l.recompute);
  const bool selective = l.recompute == Recompute::kSelective;
  const double per_layer_gemm = fwd * gemm_fwd + layer.gemm_bwd;
  const double per_layer_attn = (fwd + 2 + (selective ? 1 : 0)) * attn_fwd;
  const double per_layer_elem =
      (fwd + 2) * elementwise_fwd + (selective ? 2 * scores_bytes / mem_bw : 0.0);
  const double per_layer_tp = (fwd + 2) * tp_exposed_fwd;

  // The last stage also runs the LM head (logits GEMM forward + backward) and the vocab-parallel
  // cross-entropy (f32 logits written and read, forward and backward).
  const Gemm head{tokens, static_cast<double>(m.vocab) / tp, h};
  const double head_time = forward_seconds(c, head, t.bf16, share) +
                           backward_seconds(c, head, t.bf16, share) +
                           4 * tokens * static_cast<double>(m.vocab) / tp * 4 / mem_bw;
  // Pipeline p2p: each chunk boundary sends a micro-batch's activations forward and their
  // gradient back ([tokens, h], split over TP with SP).
  const double p2p_bytes = activation / (l.sequence_parallel ? tp : 1.0);
  const double p2p = l.pp > 1 ? 2 * static_cast<double>(l.virtual_stages) *
                                    collective_time_s(Collective::kSendRecv, p2p_bytes, 2, pp_link)
                              : 0.0;

  // One micro-batch through the slowest stage (the last: its layers plus the head).
  const double stage_mb =
      layers_per_stage * (per_layer_gemm + per_layer_attn + per_layer_elem + per_layer_tp) +
      head_time + p2p;
  // Bubble: (p - 1) / v micro-batch slots idle (Narayanan et al. 2021, section 2.2).
  const double bubble_slots = static_cast<double>(l.pp - 1) / static_cast<double>(l.virtual_stages);
  p.time.gemm = micro_batches * layers_per_stage * per_layer_gemm;
  p.time.attention = micro_batches * layers_per_stage * per_layer_attn;
  p.time.elementwise = micro_batches * (layers_per_stage * per_layer_elem + head_time);
  p.time.tp_comm = micro_batches * layers_per_stage * per_layer_tp;
  p.time.pp_comm = micro_batches * p2p;
  p.time.bubble = bubble_slots * stage_mb;
  p.bubble_fraction = bubble_slots / micro_batches;

  const double params = stage_parameters(m, l);
  // Data parallel: ring all-reduce of the gradients (in the compute dtype).
  const double dp_time = collective_time_s(Collective::kAllReduce, params * elt, l.dp, dp_link);
  const double last_backward =
      layers_per_stage * (layer.gemm_bwd + 2 * (attn_fwd + elementwise_fwd));
  p.time.dp_comm = t.overlap_grad_reduce ? std::max(0.0, dp_time - last_backward) : dp_time;
  // AdamW: memory-bound, about 36 bytes moved per parameter (read weight, gradient, master, m, v;
  // write weight, master, m, v).
  p.time.optimizer = params * 36 / mem_bw;

  // More ranks than cores: the ranks idle in the bubble lend their cores to the busy ones, so the
  // step is the busy time, or the critical path at one core per rank if that is longer.
  if (c.shared_node && t.gpus > c.devices_per_node && p.time.bubble > 0) {
    const double busy = p.time.total() - p.time.bubble;
    const double one_core_each = p.time.total() * static_cast<double>(c.devices_per_node) /
                                 static_cast<double>(t.gpus);
    p.time.bubble = std::max(0.0, one_core_each - busy);
  }
  p.step_time_s = p.time.total();
  p.tokens_per_s = static_cast<double>(t.global_batch * m.seq_len) / p.step_time_s;
  const double gpus = static_cast<double>(t.gpus);
  p.tflops_per_gpu =
      model_flops_per_step(m, t.global_batch, l.recompute) / (p.step_time_s * gpus) / 1e12;
  p.mfu = model_flops_per_step(m, t.global_batch, Recompute::kNone) / (p.step_time_s * gpus) / peak;

  p.memory = memory_per_device(t, l);
  const double capacity = c.memory_gib * (c.shared_node ? share : 1.0) * 1073741824.0;
  if (p.memory.total() > capacity) {
    std::ostringstream os;
    os.precision(3);
    os << "needs " << p.memory.total() / 1073741824.0 << " GiB per device (parameters "
       << p.memory.parameters / 1073741824.0 << ", gradients " << p.memory.gradients / 1073741824.0
       << ", optimizer " << p.memory.optimizer / 1073741824.0 << ", activations "
       << p.memory.activations / 1073741824.0 << ") > capacity " << capacity / 1073741824.0
       << " GiB";
    p.fits = false;
    p.reason = os.str();
  }
  return p;
}

// ---------------------------------------------------------------- the search

std::vector<Prediction> search(const Training& t, const Cluster& c) {
  t.check();
  c.check();
  const ModelShape& m = t.model;
  std::vector<Prediction> fitting, rejected;
  for (int64_t tp = 1; tp <= t.gpus; ++tp) {
    if (t.gpus % tp != 0 || m.heads % tp != 0 || m.ffn_hidden % tp != 0) continue;
    if (m.kv_heads % tp != 0 && tp % m.kv_heads != 0) continue;
    for (int64_t pp = 1; pp <= t.gpus / tp; ++pp) {
      if ((t.gpus / tp) % pp != 0 || m.layers % pp != 0) continue;
      const int64_t dp = t.gpus / (tp * pp);
      if (t.global_batch % dp != 0) continue;
      const int64_t per_replica = t.global_batch / dp;
      for (int64_t mb = 1; mb <= std::min<int64_t>(per_replica, 64); mb *= 2) {
        if (per_replica % mb != 0) continue;
        for (int64_t v = 1; v <= (pp > 1 ? 8 : 1); v *= 2) {
          if (m.layers % (pp * v) != 0) continue;
          // Megatron's interleaved schedule needs whole rounds of p micro-batches.
          if (v > 1 && (per_replica / mb) % pp != 0) continue;
          for (int sp = 0; sp <= (tp > 1 && m.seq_len % tp == 0 ? 1 : 0); ++sp) {
            for (int overlap = 0; overlap <= (tp > 1 ? 1 : 0); ++overlap) {
              for (Recompute r : {Recompute::kNone, Recompute::kSelective, Recompute::kFull}) {
                Layout l{tp, pp, dp, mb, v, sp == 1, overlap == 1, r};
                Prediction p = predict(t, c, l);
                (p.fits ? fitting : rejected).push_back(std::move(p));
              }
            }
          }
        }
      }
    }
  }
  WEFT_CHECK(!fitting.empty() || !rejected.empty(), "no layout divides the problem: ", t.gpus,
             " GPUs, heads ", m.heads, ", layers ", m.layers, ", global batch ", t.global_batch,
             " (tp must divide heads and GPUs, pp the layers, dp the global batch)");
  auto faster = [](const Prediction& a, const Prediction& b) {
    return a.step_time_s < b.step_time_s;
  };
  std::stable_sort(fitting.begin(), fitting.end(), faster);
  std::stable_sort(rejected.begin(), rejected.end(), [](const Prediction& a, const Prediction& b) {
    return a.memory.total() < b.memory.total();
  });
  fitting.insert(fitting.end(), rejected.begin(), rejected.end());
  return fitting;
}

std::string prediction_json(const Prediction& p) {
  const Layout& l = p.layout;
  const double gib = 1073741824.0;
  nlohmann::json j{{"tp", l.tp},
                   {"pp", l.pp},
                   {"dp", l.dp},
                   {"micro_batch", l.micro_batch},
                   {"virtual_stages", l.virtual_stages},
                   {"sequence_parallel", l.sequence_parallel},
                   {"tp_comm_overlap", l.tp_comm_overlap},
                   {"recompute", recompute_name(l.recompute)},
                   {"fits", p.fits},
                   {"step_time_s", p.step_time_s},
                   {"tokens_per_s", p.tokens_per_s},
                   {"tflops_per_gpu", p.tflops_per_gpu},
                   {"mfu", p.mfu},
                   {"bubble_fraction", p.bubble_fraction},
                   {"memory_gib_per_gpu", p.memory.total() / gib},
                   {"memory_gib",
                    {{"parameters", p.memory.parameters / gib},
                     {"gradients", p.memory.gradients / gib},
                     {"optimizer", p.memory.optimizer / gib},
                     {"activations", p.memory.activations / gib}}},
                   {"time_s",
                    {{"gemm", p.time.gemm},
                     {"attention", p.time.attention},
                     {"elementwise", p.time.elementwise},
                     {"tp_comm", p.time.tp_comm},
                     {"pp_comm", p.time.pp_comm},
                     {"bubble", p.time.bubble},
                     {"dp_comm", p.time.dp_comm},
                     {"optimizer", p.time.optimizer}}}};
  if (!p.fits) j["reason"] = p.reason;
  return j.dump();
}

}  // namespace weft::plan
