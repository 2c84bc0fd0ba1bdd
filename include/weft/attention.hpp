// ParallelAttention: causal self-attention with heads split across TP ranks (Megatron).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "weft/linear.hpp"

namespace weft {

struct ParallelAttentionConfig {
  int64_t hidden = 0;
  int64_t heads = 0;     // divisible by the TP size
  int64_t kv_heads = 0;  // 0: = heads (multi-head); fewer: grouped-query. Divides heads.
  bool bias = true;      // biases of the QKV and output projections
  bool rotary = false;   // rotary position embedding on q and k
  float rope_theta = 10000.0f;
  DType dtype = DType::kF32;
  std::string name = "attention";
  uint64_t seed = 1234;
  float init_std = 0.02f;
  float output_init_std = 0.02f;  // GPT-2 scales the output projection by 1/sqrt(2 * layers)
  // Input and output are this rank's rows, seq / tp positions of every sequence (linear.hpp); the
  // QKV projection gathers them, the output projection reduce-scatters. seq divisible by tp.
  bool sequence_parallel = false;
  bool tp_comm_overlap = false;  // overlap the projections' communication with their GEMMs
};

// QKV is one ColumnParallelLinear whose output columns follow Megatron's grouped layout (per kv
// group: its query heads, its key, its value), so an even split gives each rank whole groups and
// each of Q, K and V is split by heads. The core attention runs on each rank's own heads; the
// output projection is a RowParallelLinear (one all-reduce).
//
// kv_heads divisible by tp: each rank holds kv_heads / tp groups. kv_heads < tp (tp divisible by
// kv_heads): each rank holds heads / tp query heads and a replica of its group's key and value
// head; the replicas' gradients are summed over the ranks sharing them.
class ParallelAttention {
 public:
  ParallelAttention(const ParallelContext& ctx, const ParallelAttentionConfig& config);

  // x [seq * batch, hidden], rows ordered (position, batch). Returns [seq * batch, hidden],
  // identical on all TP ranks. Sequence parallel: x and the result are this rank's rows
  // [seq * batch / tp, hidden] (positions [r seq/tp, (r+1) seq/tp) of every sequence).
  Tensor forward(TensorView x, int64_t seq, int64_t batch);
  // grad_output has the output's shape -> grad of x (all-reduced across TP, or reduce-scattered to
  // this rank's rows).
  Tensor backward(TensorView grad_output);

  // Inference with a KV cache: allocate room for `capacity` positions of `batch` sequences, then
  // feed positions [past, past + seq) with forward_cached (past = positions fed so far). Always
  // runs without sequence parallelism: x holds all rows.
  void allocate_cache(int64_t batch, int64_t capacity);
  Tensor forward_cached(TensorView x, int64_t seq, int64_t batch, int64_t past);

  std::vector<TensorView> saved_activations() const;
  int64_t saved_activation_bytes() const { return distinct_bytes(saved_activations()); }
  void set_sequence_parallel(bool enabled);

  std::vector<Parameter*> parameters();
  const ParallelAttentionConfig& config() const { return config_; }
  int64_t local_heads() const { return local_heads_; }
  int64_t local_kv_heads() const { return local_kv_heads_; }

 private:
  AttentionShape local_shape(int64_t seq, int64_t batch) const;
  void check_input(const TensorView& x, int64_t seq, int64_t batch, const char* what) const;
  int sequence_shards() const { return config_.sequence_parallel ? ctx_.tp.size() : 1; }
  // x [tokens, hidden] -> this rank's qkv [tokens, local qkv columns] in the grouped layout.
  Tensor project_qkv(TensorView x);
  // grad of project_qkv's output -> grad of x, all-reduced across TP (reduce-scattered to this
  // rank's rows under sequence parallelism); accumulates the QKV grads.
  Tensor project_qkv_backward(TensorView grad_qkv);
  // Replicated kv: sums this rank's f32 key/value gradient shares `delta` (weight delta_w and
  // bias delta_b, views of it) over kv_group_ and adds them to kv_weight_/kv_bias_.
  void accumulate_shared_kv_grads(TensorView delta, TensorView delta_w, TensorView delta_b);

  ParallelContext ctx_;
  ParallelAttentionConfig config_;  // kv_heads resolved (never 0)
  int64_t head_dim_ = 0, local_heads_ = 0, local_kv_heads_ = 0;
  // kv_heads divisible by tp: one projection, rows in the grouped layout, split evenly.
  std::unique_ptr<ColumnParallelLinear> qkv_;
  // Replicated kv (kv_heads < tp): this rank's query heads, and its group's key and value rows,
  // which the kv_group_ ranks all hold (their gradients are summed over kv_group_).
  Parameter q_weight_, q_bias_, kv_weight_, kv_bias_;
  // Owned by the TP communicator (block_group), shared by the layers that group ranks alike.
  Communicator* kv_group_ = nullptr;
  TensorView saved_input_;  // the replicated-kv projection's input
  std::unique_ptr<RowParallelLinear> proj_;

  // Saved by forward() for backward().
  int64_t seq_ = 0, batch_ = 0;
  bool forward_saved_ = false;
  Tensor qkv_act_;  // after rotary: what the attention saw
  Tensor probs_;
  Tensor context_;  // attention output, the output projection's saved input

  int64_t cache_batch_ = 0, cache_capacity_ = 0;
  Tensor k_cache_, v_cache_;
};

}  // namespace weft
