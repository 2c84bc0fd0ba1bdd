// AttentionDims: a validated attention shape and the column offsets of the grouped QKV layout,
// shared by the CPU loops, the CUDA host code and the kernels; attention_dims makes one.
#pragma once

#include <cmath>
#include <cstdint>

#include "weft/backend.hpp"
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

// The dims of a shape that the op's entry point has validated (positive counts, heads divisible
// by kv_heads, a finite scale).
inline AttentionDims attention_dims(const AttentionShape& shape) {
  AttentionDims d;
  d.seq = shape.seq;
  d.batch = shape.batch;
  d.heads = shape.heads;
  d.kv_heads = shape.kv_heads;
  d.head_dim = shape.head_dim;
  d.q_per_group = shape.heads / shape.kv_heads;
  d.tokens = shape.seq * shape.batch;
  d.qkv_cols = shape.qkv_cols();
  d.out_cols = shape.heads * shape.head_dim;
  d.scale = shape.scale != 0.0f
                ? shape.scale
                : static_cast<float>(1.0 / std::sqrt(static_cast<double>(shape.head_dim)));
  return d;
}

}  // namespace weft
