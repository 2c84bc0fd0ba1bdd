// ParallelAttention: causal self-attention with heads split across TP ranks (Megatron).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "weft/linear.hpp"

namespace weft {

// sequence_parallel: input and output are this rank's rows, seq / tp positions of every sequence
// (linear.hpp); the QKV projection gathers them, the output projection reduce-scatters; seq
// divisible by tp. tp_comm_overlap: the projections' communication overlaps their GEMMs.
struct ParallelAttentionConfig : ParallelConfig {
  int64_t hidden = 0;
  int64_t heads = 0;     // divisible by the TP size
  int64_t kv_heads = 0;  // 0: = heads (multi-head); fewer: grouped-query. Divides heads.
  bool bias = true;      // biases of the QKV and output projections
  bool rotary = false;   // rotary position embedding on q and k
  float rope_theta = 10000.0f;
  std::string name = "attention";
  float output_init_std = 0.02f;  // GPT-2 scales the output projection by 1/sqrt(2 * layers)
  // Selective recomputation. The core's own saved state is already O(batch heads seq) (a
  // log-sum-exp per query row, not Korthikanti et al.'s seq^2 softmax), so what is left to drop is
  // the core's output: a forward keeps q, k, v and the log-sum-exp, and backward re-runs the core
  // forward for the output projection's input (2 s b h / t bytes saved for one attention pass).
  bool recompute_core = false;
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
  // What one forward keeps for its backward.
  struct Saved {
    ColumnParallelLinear::Saved qkv;  // kv_heads divisible by tp: the QKV projection's
    TensorView input;                 // replicated kv: the projections' input (a view)
    Tensor qkv_act;                   // after rotary: what the attention core saw
    // The attention core's own saved state: each query row's f32 log-sum-exp [batch, heads,
    // seq], from which the backend's backward recomputes the probabilities.
    Tensor lse;
    // The core's output, the output projection's input; left empty by a recompute_core forward
    // (proj.input then empty too) and rebuilt in backward.
    Tensor context;
    RowParallelLinear::Saved proj;
    int64_t seq = 0, batch = 0;
    bool sequence_parallel = false;
    std::vector<TensorView> views() const;
    int64_t bytes() const { return distinct_bytes(views()); }
  };

  ParallelAttention(const ParallelContext& ctx, const ParallelAttentionConfig& config);

  // x [seq * batch, hidden], rows ordered (position, batch). Returns [seq * batch, hidden],
  // identical on all TP ranks. Sequence parallel: x and the result are this rank's rows
  // [seq * batch / tp, hidden] (positions [r seq/tp, (r+1) seq/tp) of every sequence).
  Tensor forward(TensorView x, int64_t seq, int64_t batch, Saved& saved);
  Tensor forward(TensorView x, int64_t seq, int64_t batch);  // inference: nothing kept
  // grad_output has the output's shape -> grad of x (all-reduced across TP, or reduce-scattered to
  // this rank's rows). Consumes `saved`.
  Tensor backward(TensorView grad_output, Saved& saved);

  // The decoding state of `batch` sequences: this rank's keys and values of every position fed so
  // far. The caller owns it (new_cache) and passes it to each forward_cached; the layer keeps no
  // decoding state, so any number of caches (sequences) decode with one layer, interleaved.
  struct KVCache {
    Tensor k, v;  // [batch, local kv heads, capacity, head_dim]
    int64_t batch = 0, capacity = 0;
    int64_t length = 0;  // positions fed so far
  };
  // Room for `capacity` positions of `batch` sequences, none fed.
  KVCache new_cache(int64_t batch, int64_t capacity) const;
  // Inference: feeds positions [cache.length, cache.length + seq) and advances cache.length.
  // Always runs without sequence parallelism: x holds all rows. Nothing is kept for a backward.
  Tensor forward_cached(TensorView x, int64_t seq, int64_t batch, KVCache& cache);

  std::vector<Parameter*> parameters();
  const ParallelAttentionConfig& config() const { return config_; }
  int64_t local_heads() const { return local_heads_; }
  int64_t local_kv_heads() const { return local_kv_heads_; }

 private:
  AttentionShape local_shape(int64_t seq, int64_t batch) const;
  void check_input(const TensorView& x, int64_t seq, int64_t batch, bool sequence_parallel,
                   const char* what) const;
  Tensor run_forward(TensorView x, int64_t seq, int64_t batch, Saved* saved);
  // x [tokens, hidden] -> this rank's qkv [tokens, local qkv columns] in the grouped layout;
  // fills saved's qkv / input when given.
  Tensor project_qkv(TensorView x, bool sequence_parallel, Saved* saved);
  // grad of project_qkv's output -> grad of x, all-reduced across TP (reduce-scattered to this
  // rank's rows under sequence parallelism); accumulates the QKV grads.
  Tensor project_qkv_backward(TensorView grad_qkv, Saved& saved);
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
  std::unique_ptr<RowParallelLinear> proj_;
};

}  // namespace weft
