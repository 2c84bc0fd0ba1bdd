// Layout planner: predicts step time, throughput and memory per device of a GPT training run for
// a layout (tp, pp, dp, micro-batch, virtual stages, sequence parallelism, recomputation, TP
// communication overlap) on a described cluster, and ranks every layout that fits.
//
// Pure arithmetic: nothing here touches a backend or a communicator. The model, term by term with
// its source, is in src/planner/plan_model.cpp; clusters (built-ins, JSON files, calibration from
// weft's benchmark JSON) in src/planner/cluster.cpp. All sizes are global (whole model, whole batch)
// unless a name says "per device". Bad input throws weft::Error naming the value and the rule.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace weft::plan {

// The transformer, as the FLOP and memory formulas see it.
struct ModelShape {
  int64_t layers = 0, hidden = 0, heads = 0, kv_heads = 0, ffn_hidden = 0, seq_len = 0, vocab = 0;
  bool gated_mlp = false;  // SwiGLU: three ffn matrices instead of two
  bool learned_positions = true;
  bool bias = true;

  // Megatron's GPT: kv_heads = heads, ffn 4h, GeLU, learned positions, biases.
  static ModelShape gpt(int64_t layers, int64_t hidden, int64_t heads, int64_t seq_len,
                        int64_t vocab);
  int64_t head_dim() const { return hidden / heads; }
  double parameter_count() const;
  // Throws weft::Error unless every size is positive and heads divides hidden.
  void check() const;
};

enum class Recompute { kNone, kSelective, kFull };
const char* recompute_name(Recompute r);
Recompute parse_recompute(const std::string& name);  // none | selective | full

// One layout. world = tp x pp x dp; virtual_stages > 1 means the interleaved 1F1B schedule.
struct Layout {
  int64_t tp = 1, pp = 1, dp = 1, micro_batch = 1, virtual_stages = 1;
  bool sequence_parallel = false, tp_comm_overlap = false;
  Recompute recompute = Recompute::kNone;
};
std::string layout_name(const Layout& l);  // "tp2 pp2 dp1 mb4 v1 sp overlap full"

// A link class between devices, in nccl-tests' terms: a collective over n devices takes
// steps x latency + bytes x busbw-factor / bandwidth (see collective_time_s).
struct Link {
  double bandwidth_gbps = 0;  // bus bandwidth one device reaches for large messages, GB/s
  double latency_us = 0;      // per ring step
};

// The three GEMMs of a linear layer: forward Y = X W^T, data gradient dX = dY W (no transpose),
// weight gradient dW = dY^T X (reduction over the tokens). Libraries run them at different rates.
enum class GemmRole { kForward, kBackwardData, kBackwardWeight };
const char* gemm_role_name(GemmRole r);  // forward | backward_data | backward_weight

// One measured GEMM rate: C[m x n] = op(A)[m x k] op(B)[k x n] in the role's layout, per device.
struct GemmTableEntry {
  GemmRole role = GemmRole::kForward;
  bool bf16 = false;
  double m = 0, n = 0, k = 0, tflops = 0;
};

// Hardware facts, and one achievable-efficiency curve (or a measured GEMM table), of a cluster.
struct Cluster {
  std::string name, description;
  double peak_tflops_bf16 = 0, peak_tflops_f32 = 0;  // dense, per device
  // Achievable fraction of peak of a GEMM whose smallest dimension is d:
  //   gemm_efficiency_max * d / (d + gemm_half_dim).
  double gemm_efficiency_max = 0, gemm_half_dim = 0;
  // The attention core's achievable fraction of peak at head size d (optional; calibrated):
  //   attention_efficiency_max * d / (d + attention_half_dim), in the model's FLOPs (full s^2,
  //   so a causal kernel may pass 1); when 0 the GEMM curve at d.
  double attention_efficiency_max = 0, attention_half_dim = 0;
  // Measured rates (optional): a GEMM takes the rate of the nearest measured shape of its role
  // and dtype (in log m, n, k); without entries for them the curve above.
  std::vector<GemmTableEntry> gemm_table;
  double memory_gib = 0;             // per device
  double memory_bandwidth_gbps = 0;  // per device, achievable by element-wise kernels
  int64_t devices_per_node = 0;
  Link intra_node, inter_node;
  // Share of TP communication that the overlapped (ring) all-gather/reduce-scatter + GEMM hides
  // when tp_comm_overlap is on, at most (Flux: about 0.8 on H100).
  double tp_overlap_efficiency = 0;
  // Devices of a node share its compute and memory bandwidth (ranks on CPU cores): the peak,
  // table and bandwidth above are the node's, divided among the ranks a run puts on it; more
  // ranks than devices_per_node (cores) share the cores in time, so a pipeline stage waiting in
  // its bubble lends its share to the others.
  bool shared_node = false;

  // Throws weft::Error naming the first missing, negative or zero field.
  void check() const;
};

std::vector<std::string> builtin_cluster_names();  // a100-80g-dgx, h100-80g-dgx, v100-32g-dgx2
Cluster builtin_cluster(const std::string& name);  // throws, listing the known names
// A cluster from a JSON file with the fields of Cluster (links as objects {bandwidth_gbps,
// latency_us}); every field required, none negative.
Cluster load_cluster_file(const std::string& path);
Cluster cluster_from_json(const std::string& json_text, const std::string& origin);
std::string cluster_to_json(const Cluster& c);
// Measurements a calibration fits: GEMM rates by the GEMM's smallest dimension, collective
// times.
struct GemmRate {
  bool bf16 = false;
  double smallest_dim = 0, gflops = 0;
  // The shape and role, when known: calibrate_from_samples puts such rates in the GEMM table.
  GemmRole role = GemmRole::kForward;
  double m = 0, n = 0, k = 0;
};
enum class Collective { kAllReduce, kAllGather, kReduceScatter, kSendRecv };
struct CollectiveSample {
  Collective kind = Collective::kAllReduce;
  double bytes = 0;
  int64_t n = 0;
  double seconds = 0;
};
// A shared-node cluster (ranks on one machine) fitted to measurements: the f32 rates to
// rate(d) = peak d / (d + gemm_half_dim) (relative errors; bf16 with the same d_half; without
// bf16 rates its peak is f32's), the collective times to alpha-beta (collective_time_s). Without
// samples (one rank) the link is the memory bandwidth, latency 0. Throws weft::Error without f32
// rates.
Cluster calibrate_from_samples(const std::vector<GemmRate>& gemms,
                               const std::vector<CollectiveSample>& collectives,
                               double memory_bandwidth_gbps, double memory_gib,
                               const std::string& description);
// The attention core's forward + backward time at one shape, one rank on all cores (f32, tp 1):
// bench_gpt_layer's attn_ms.
struct AttentionSample {
  int64_t hidden = 0, heads = 0, seq_len = 0, micro_batch = 0;
  double seconds = 0;
};
// Fits c's attention curve to the samples (relative errors, like the GEMM curve); no samples:
// unchanged.
void fit_attention(Cluster& c, const std::vector<AttentionSample>& samples);
// bench_gpt_layer's f32 tp-1 rows that carry their shape (hidden, heads, seq, batch) and attn_ms,
// the fastest of each case.
std::vector<AttentionSample> load_attention_samples(const std::string& bench_gpt_layer_json);
// "this-machine": peaks, the efficiency curve and the GEMM table from bench_gemm's JSON (all
// cores; devices_per_node its CPU count), the link from bench_collectives' JSON (times fitted to
// latency + bytes / bandwidth), memory bandwidth and capacity as given, and the attention curve
// fitted to `attention` (if any). Devices are ranks sharing the node (shared_node).
Cluster calibrate_cluster(const std::string& bench_gemm_json, const std::string& collectives_json,
                          double memory_bandwidth_gbps, double memory_gib,
                          const std::vector<AttentionSample>& attention = {});

// --- the pieces of the model, exposed for tests ---

// Narayanan et al. 2021, eq. (3): FLOPs of one training step of batch B (sequences), counted as
// Megatron does: with full recomputation 96 B s l h^2 (1 + s/6h + V/16lh), without it
// 72 B s l h^2 (1 + s/6h + V/12lh). Exact for ModelShape::gpt shapes.
double narayanan_flops_per_step(const ModelShape& m, int64_t global_batch, bool recompute);
// The same count from the actual GEMM shapes (GQA, SwiGLU, any ffn): forward + backward
// (+ the recomputed forward or attention core per `recompute`), full s^2 attention scores.
double model_flops_per_step(const ModelShape& m, int64_t global_batch, Recompute recompute);

// Ring collective of `bytes` (all_reduce: the buffer; all_gather: the gathered output;
// reduce_scatter: the input; send_recv: the message) over n devices on `link`:
//   all_reduce      2(n-1) latency + 2(n-1)/n bytes / bandwidth
//   all_gather, reduce_scatter   (n-1) latency + (n-1)/n bytes / bandwidth
//   send_recv       latency + bytes / bandwidth
double collective_time_s(Collective c, double bytes, int64_t n, const Link& link);

// Bytes one transformer layer keeps for backward per device, weft's layers in 16-bit
// activations (bench/activation_memory measures them exactly; Korthikanti et al. 2022 Table 2
// with weft's differences, see plan_model.cpp).
double layer_activation_bytes(const ModelShape& m, int64_t micro_batch, int64_t tp,
                              bool sequence_parallel, Recompute recompute);

struct Memory {  // bytes per device, on the most loaded pipeline stage
  double parameters = 0, gradients = 0, optimizer = 0, activations = 0;
  double total() const { return parameters + gradients + optimizer + activations; }
};
struct StepTime {  // seconds per step, on the critical path
  double gemm = 0, attention = 0, elementwise = 0, tp_comm = 0, pp_comm = 0, bubble = 0;
  double dp_comm = 0, optimizer = 0;
  double total() const {
    return gemm + attention + elementwise + tp_comm + pp_comm + bubble + dp_comm + optimizer;
  }
};

// The run being planned.
struct Training {
  ModelShape model;
  int64_t global_batch = 0;  // sequences per step
  int64_t gpus = 0;
  bool bf16 = true;                  // 16-bit compute, f32 master weights (else f32 throughout)
  bool overlap_grad_reduce = false;  // DP all-reduce hidden behind the last backward (neither
                                     // weft nor Megatron 2021 does it)
  void check() const;
};

struct Prediction {
  Layout layout;
  bool fits = true;
  std::string reason;  // why it does not fit
  double step_time_s = 0, tokens_per_s = 0;
  double tflops_per_gpu = 0;  // FLOPs executed (recomputation included, Megatron's convention)
  double mfu = 0;             // model FLOPs (no recomputation) / (time x devices x peak)
  double bubble_fraction = 0;
  Memory memory;
  StepTime time;
};

// Bytes per device on the most loaded pipeline stage (predict()'s memory, without a cluster):
// what a run checks against the memory it has before allocating anything. Throws like predict()
// when the layout's sizes do not divide.
Memory memory_per_device(const Training& t, const Layout& l);
// One layout. Throws weft::Error when its sizes do not divide (world, heads, layers, batch,
// sequence for SP); returns fits = false with the reason when it does not fit in memory.
Prediction predict(const Training& t, const Cluster& c, const Layout& l);
// Every valid layout for t.gpus devices: those that fit, fastest first, then those that do not.
std::vector<Prediction> search(const Training& t, const Cluster& c);
// One JSON object: tp, pp, dp, micro_batch, virtual_stages, sequence_parallel, tp_comm_overlap,
// recompute, step_time_s, tokens_per_s, tflops_per_gpu, mfu, memory_gib_per_gpu, fits, reason,
// memory and time breakdowns.
std::string prediction_json(const Prediction& p);

}  // namespace weft::plan
