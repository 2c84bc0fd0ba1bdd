// ParallelAttention: causal self-attention with heads split across TP ranks (Megatron).
#pragma once

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
  // identical on all TP ranks.
  Tensor forward(TensorView x, int64_t seq, int64_t batch);
  // grad_output [seq * batch, hidden] -> grad of x (all-reduced across TP).
  Tensor backward(TensorView grad_output);

  // Inference with a KV cache: allocate room for `capacity` positions of `batch` sequences, then
  // feed positions [past, past + seq) with forward_cached (past = positions fed so far).
  void allocate_cache(int64_t batch, int64_t capacity);
  Tensor forward_cached(TensorView x, int64_t seq, int64_t batch, int64_t past);

  std::vector<Parameter*> parameters();
  const ParallelAttentionConfig& config() const { return config_; }
  int64_t local_heads() const { return local_heads_; }
  int64_t local_kv_heads() const { return local_kv_heads_; }
};

}  // namespace weft
