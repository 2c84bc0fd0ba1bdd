// Backend's checked entry points of the attention ops (attention, attention_backward,
// attention_with_cache, rope), each with its argument check.
#include <cmath>

#include "backend/attention_dims.hpp"
#include "backend/backend_checks.hpp"
#include "weft/error.hpp"

namespace weft {

namespace {

// Positive counts, heads divisible by kv_heads, a finite scale. `op` prefixes the messages.
AttentionDims check_attention_shape(const AttentionShape& shape, const char* op) {
  WEFT_CHECK(shape.seq > 0 && shape.batch > 0 && shape.heads > 0 && shape.kv_heads > 0 &&
                 shape.head_dim > 0,
             op, ": seq ", shape.seq, ", batch ", shape.batch, ", heads ", shape.heads,
             ", kv_heads ", shape.kv_heads, " and head_dim ", shape.head_dim,
             " must all be positive");
  WEFT_CHECK(shape.heads % shape.kv_heads == 0, op, ": heads ", shape.heads,
             " is not divisible by kv_heads ", shape.kv_heads);
  WEFT_CHECK(std::isfinite(shape.scale), op, ": scale ", shape.scale, " must be finite");
  return attention_dims(shape);
}

// qkv [tokens, qkv_cols] floating on `device`.
AttentionDims check_qkv(const TensorView& qkv, const AttentionShape& shape, Device device,
                        const char* op) {
  check_on_device(qkv, device, op, "qkv");
  const AttentionDims d = check_attention_shape(shape, op);
  check_floating(qkv, op, "qkv");
  check_matrix(qkv, d.tokens, d.qkv_cols, qkv.dtype, op, "qkv");
  return d;
}

// lse f32 with batch * heads * seq elements.
void check_lse(const TensorView& lse, const AttentionDims& d, const char* op) {
  check_vector(lse, d.batch * d.heads * d.seq, DType::kF32, op, "lse");
}

// Caches [batch, kv_heads, capacity, head_dim] of qkv's dtype; past >= 0 and past + seq <=
// capacity. The capacity is k_cache.shape[2].
void check_cache(const TensorView& k_cache, const TensorView& v_cache, const TensorView& qkv,
                 const AttentionDims& d, int64_t past, const char* op) {
  WEFT_CHECK(k_cache.shape.rank() == 4 && k_cache.shape[0] == d.batch &&
                 k_cache.shape[1] == d.kv_heads && k_cache.shape[3] == d.head_dim &&
                 k_cache.dtype == qkv.dtype,
             op, ": k_cache ", k_cache.str(), " must be [batch ", d.batch, ", kv_heads ",
             d.kv_heads, ", capacity, head_dim ", d.head_dim, "] of dtype ", dtype_name(qkv.dtype));
  check_same_layout(v_cache, k_cache, op, "v_cache", "k_cache");
  const int64_t capacity = k_cache.shape[2];
  WEFT_CHECK(past >= 0 && past + d.seq <= capacity, op, ": positions [", past, ", ", past + d.seq,
             ") do not fit a cache of capacity ", capacity);
}

}  // namespace

void Backend::attention(TensorView out, TensorView lse, TensorView qkv,
                        const AttentionShape& shape) {
  const char* op = "attention";
  check_on_device(out, device(), op, "out");
  check_on_device(lse, device(), op, "lse");
  const AttentionDims d = check_qkv(qkv, shape, device(), op);
  check_matrix(out, d.tokens, d.out_cols, qkv.dtype, op, "out");
  check_lse(lse, d, op);
  do_attention(out, lse, qkv, shape);
}

void Backend::attention_backward(TensorView grad_qkv, TensorView grad_out, TensorView qkv,
                                 TensorView lse, const AttentionShape& shape) {
  const char* op = "attention_backward";
  check_on_device(device(), op, {{grad_qkv, "grad_qkv"}, {grad_out, "grad_out"}, {lse, "lse"}});
  const AttentionDims d = check_qkv(qkv, shape, device(), op);
  check_matrix(grad_qkv, d.tokens, d.qkv_cols, qkv.dtype, op, "grad_qkv");
  check_matrix(grad_out, d.tokens, d.out_cols, qkv.dtype, op, "grad_out");
  WEFT_CHECK(grad_qkv.data != qkv.data, op, ": grad_qkv must not alias qkv (backward reads qkv)");
  check_lse(lse, d, op);
  do_attention_backward(grad_qkv, grad_out, qkv, lse, shape);
}

void Backend::attention_with_cache(TensorView out, TensorView k_cache, TensorView v_cache,
                                   TensorView qkv, const AttentionShape& shape, int64_t past) {
  const char* op = "attention_with_cache";
  check_on_device(device(), op, {{out, "out"}, {k_cache, "k_cache"}, {v_cache, "v_cache"}});
  const AttentionDims d = check_qkv(qkv, shape, device(), op);
  check_matrix(out, d.tokens, d.out_cols, qkv.dtype, op, "out");
  check_cache(k_cache, v_cache, qkv, d, past, op);
  do_attention_with_cache(out, k_cache, v_cache, qkv, shape, past);
}

void Backend::rope(TensorView qkv, const AttentionShape& shape, float theta,
                   int64_t position_offset, bool inverse) {
  const char* op = "rope";
  const AttentionDims d = check_qkv(qkv, shape, device(), op);
  WEFT_CHECK(d.head_dim % 2 == 0, op, ": head_dim ", d.head_dim, " must be even");
  WEFT_CHECK(theta > 0.0f && std::isfinite(theta), op, ": theta ", theta, " must be positive");
  WEFT_CHECK(position_offset >= 0, op, ": position_offset ", position_offset, " must be >= 0");
  do_rope(qkv, shape, theta, position_offset, inverse);
}

}  // namespace weft
