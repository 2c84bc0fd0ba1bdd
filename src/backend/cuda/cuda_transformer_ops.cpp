// CudaBackend's transformer ops on arguments Backend's entry points have checked: they launch the
// kernels of kernels/{transformer,norms,attention,vocab}.cu.
#include <algorithm>

#include "backend/attention_dims.hpp"
#include "backend/cuda/cuda_backend.hpp"
#include "kernels.hpp"
#include "weft/error.hpp"

namespace weft {

namespace {

// Vocabulary columns of a shard that are real entries (the rest is padding): [0, valid).
int64_t valid_vocab_columns(int64_t v_local, int64_t vocab_start, int64_t vocab_size) {
  return std::clamp<int64_t>(vocab_size - vocab_start, 0, v_local);
}

}  // namespace

void CudaBackend::do_scale(TensorView out, TensorView in, float alpha) {
  DeviceGuard guard(device_);
  dispatch_storage(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_scale<T>(out.as<T>(), in.as<T>(), alpha, out.numel(), current_->get());
  });
}

void CudaBackend::do_sum_squares(TensorView out, TensorView in) {
  DeviceGuard guard(device_);
  dispatch_storage(in.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_sum_squares<T>(out.as<float>(), in.as<T>(), in.numel(), current_->get());
  });
}

// ---- norms ----

void CudaBackend::do_layer_norm(TensorView out, TensorView mean, TensorView rstd, TensorView in,
                                TensorView gamma, TensorView beta, float eps) {
  DeviceGuard guard(device_);
  dispatch_storage(in.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_layer_norm<T>(out.as<T>(), mean.as<float>(), rstd.as<float>(), in.as<T>(), gamma.as<T>(),
                         beta.as<T>(), eps, in.shape.rows(), in.shape.cols(), current_->get());
  });
}

void CudaBackend::do_layer_norm_backward(TensorView grad_in, TensorView grad_gamma,
                                         TensorView grad_beta, TensorView grad_out, TensorView in,
                                         TensorView gamma, TensorView mean, TensorView rstd) {
  DeviceGuard guard(device_);
  dispatch_storage(in.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_layer_norm_backward<T>(grad_in.as<T>(), grad_gamma.as<T>(), grad_beta.as<T>(),
                                  grad_out.as<T>(), in.as<T>(), gamma.as<T>(), mean.as<float>(),
                                  rstd.as<float>(), in.shape.rows(), in.shape.cols(),
                                  current_->get());
  });
}

void CudaBackend::do_rms_norm(TensorView out, TensorView rstd, TensorView in, TensorView gamma,
                              float eps) {
  DeviceGuard guard(device_);
  dispatch_storage(in.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_rms_norm<T>(out.as<T>(), rstd.as<float>(), in.as<T>(), gamma.as<T>(), eps,
                       in.shape.rows(), in.shape.cols(), current_->get());
  });
}

void CudaBackend::do_rms_norm_backward(TensorView grad_in, TensorView grad_gamma,
                                       TensorView grad_out, TensorView in, TensorView gamma,
                                       TensorView rstd) {
  DeviceGuard guard(device_);
  dispatch_storage(in.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_rms_norm_backward<T>(grad_in.as<T>(), grad_gamma.as<T>(), grad_out.as<T>(), in.as<T>(),
                                gamma.as<T>(), rstd.as<float>(), in.shape.rows(), in.shape.cols(),
                                current_->get());
  });
}

// ---- attention ----

void CudaBackend::do_attention(TensorView out, TensorView lse, TensorView qkv,
                               const AttentionShape& shape) {
  const AttentionDims dims = attention_dims(shape);
  DeviceGuard guard(device_);
  dispatch_storage(qkv.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_attention<T>(out.as<T>(), lse.as<float>(), qkv.as<T>(), dims, current_->get());
  });
}

void CudaBackend::do_attention_backward(TensorView grad_qkv, TensorView grad_out, TensorView qkv,
                                        TensorView lse, const AttentionShape& shape) {
  const AttentionDims dims = attention_dims(shape);
  DeviceGuard guard(device_);
  dispatch_storage(qkv.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_attention_backward<T>(grad_qkv.as<T>(), grad_out.as<T>(), qkv.as<T>(), lse.as<float>(),
                                 dims, current_->get());
  });
}

void CudaBackend::do_attention_with_cache(TensorView out, TensorView k_cache, TensorView v_cache,
                                          TensorView qkv, const AttentionShape& shape,
                                          int64_t past) {
  const AttentionDims dims = attention_dims(shape);
  DeviceGuard guard(device_);
  dispatch_storage(qkv.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_attention_with_cache<T>(out.as<T>(), k_cache.as<T>(), v_cache.as<T>(), qkv.as<T>(), dims,
                                   k_cache.shape[2], past, current_->get());
  });
}

void CudaBackend::do_rope(TensorView qkv, const AttentionShape& shape, float theta,
                          int64_t position_offset, bool inverse) {
  const AttentionDims dims = attention_dims(shape);
  DeviceGuard guard(device_);
  dispatch_storage(qkv.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_rope<T>(qkv.as<T>(), dims, theta, position_offset, inverse, current_->get());
  });
}

// ---- embedding ----

void CudaBackend::do_embedding(TensorView out, TensorView ids, TensorView table,
                               int64_t vocab_start) {
  DeviceGuard guard(device_);
  dispatch_storage(table.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_embedding<T>(out.as<T>(), ids.as<int32_t>(), table.as<T>(), ids.numel(),
                        table.shape.rows(), table.shape.cols(), vocab_start, current_->get());
  });
}

void CudaBackend::do_embedding_backward(TensorView grad_table, TensorView ids, TensorView grad_out,
                                        int64_t vocab_start) {
  DeviceGuard guard(device_);
  dispatch_storage(grad_table.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_embedding_backward<T>(grad_table.as<T>(), ids.as<int32_t>(), grad_out.as<T>(),
                                 ids.numel(), grad_table.shape.rows(), grad_table.shape.cols(),
                                 vocab_start, current_->get());
  });
}

// ---- vocab-parallel cross-entropy pieces ----

void CudaBackend::do_vocab_max(TensorView row_max, TensorView logits, int64_t vocab_start,
                               int64_t vocab_size) {
  const int64_t v_local = logits.shape.cols();
  DeviceGuard guard(device_);
  dispatch_storage(logits.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_vocab_max<T>(row_max.as<float>(), logits.as<T>(), logits.shape.rows(), v_local,
                        valid_vocab_columns(v_local, vocab_start, vocab_size), current_->get());
  });
}

void CudaBackend::do_vocab_sum_exp_and_target(TensorView sum_exp, TensorView target_logit,
                                              TensorView logits, TensorView row_max,
                                              TensorView targets, int64_t vocab_start,
                                              int64_t vocab_size) {
  const int64_t v_local = logits.shape.cols();
  DeviceGuard guard(device_);
  dispatch_storage(logits.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_vocab_sum_exp_and_target<T>(
        sum_exp.as<float>(), target_logit.as<float>(), logits.as<T>(), row_max.as<float>(),
        targets.as<int32_t>(), logits.shape.rows(), v_local,
        valid_vocab_columns(v_local, vocab_start, vocab_size), vocab_start, current_->get());
  });
}

void CudaBackend::do_vocab_cross_entropy_backward(TensorView grad_logits, TensorView logits,
                                                  TensorView row_max, TensorView sum_exp,
                                                  TensorView targets, TensorView grad_loss,
                                                  int64_t vocab_start, int64_t vocab_size) {
  const int64_t v_local = logits.shape.cols();
  DeviceGuard guard(device_);
  dispatch_storage(logits.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_vocab_cross_entropy_backward<T>(
        grad_logits.as<T>(), logits.as<T>(), row_max.as<float>(), sum_exp.as<float>(),
        targets.as<int32_t>(), grad_loss.as<float>(), logits.shape.rows(), v_local,
        valid_vocab_columns(v_local, vocab_start, vocab_size), vocab_start, current_->get());
  });
}

// ---- SwiGLU, dropout, AdamW ----

void CudaBackend::do_swiglu(TensorView out, TensorView gate, TensorView up) {
  DeviceGuard guard(device_);
  dispatch_storage(gate.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_swiglu<T>(out.as<T>(), gate.as<T>(), up.as<T>(), out.numel(), current_->get());
  });
}

void CudaBackend::do_swiglu_backward(TensorView grad_gate, TensorView grad_up, TensorView grad_out,
                                     TensorView gate, TensorView up) {
  DeviceGuard guard(device_);
  dispatch_storage(gate.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_swiglu_backward<T>(grad_gate.as<T>(), grad_up.as<T>(), grad_out.as<T>(), gate.as<T>(),
                              up.as<T>(), gate.numel(), current_->get());
  });
}

void CudaBackend::do_dropout(TensorView out, TensorView in, float probability, uint64_t seed,
                             uint64_t offset) {
  DeviceGuard guard(device_);
  dispatch_storage(in.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_dropout<T>(out.as<T>(), in.as<T>(), probability, seed, offset, in.numel(),
                      current_->get());
  });
}

void CudaBackend::do_adamw(TensorView master, TensorView m, TensorView v, TensorView grad,
                           const AdamWStep& step) {
  DeviceGuard guard(device_);
  dispatch_storage(grad.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_adamw<T>(master.as<float>(), m.as<float>(), v.as<float>(), grad.as<T>(), master.numel(),
                    step, current_->get());
  });
}

}  // namespace weft
