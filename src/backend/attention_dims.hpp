// AttentionDims: a validated attention shape and the column offsets of the grouped QKV layout,
// shared by the CPU loops, the CUDA host code and the kernels.
#pragma once

#include <cstdint>

#include "weft/host_device.hpp"

namespace weft {

// An AttentionShape after validation, with the column offsets of Megatron's grouped QKV layout
// (usable inside kernels: pass it by value).
struct AttentionDims {
  int64_t seq, batch, heads, kv_heads, head_dim;
  int64_t q_per_group;  // heads / kv_heads
  int64_t tokens;       // seq * batch: rows of qkv and out
  int64_t qkv_cols;     // row length of qkv (and grad_qkv)
  int64_t out_cols;     // heads * head_dim
  float scale;          // shape.scale, or 1/sqrt(head_dim) when that is 0

  // First column of query head h, of the key and of the value head of kv group g.
  WEFT_HOST_DEVICE int64_t q_col(int64_t h) const {
    return ((h / q_per_group) * (q_per_group + 2) + h % q_per_group) * head_dim;
  }
  WEFT_HOST_DEVICE int64_t k_col(int64_t g) const {
    return (g * (q_per_group + 2) + q_per_group) * head_dim;
  }
  WEFT_HOST_DEVICE int64_t v_col(int64_t g) const { return k_col(g) + head_dim; }
};

}  // namespace weft
