// Backend-independent pieces: argument checks, the host stream, backend selection by name.
#include <cmath>
#include <cstdlib>
#include <string>

#include "backend/backend_checks.hpp"
#include "weft/error.hpp"

namespace weft {

namespace {
class HostStream final : public Stream {
 public:
  void synchronize() override {}
  void* native_handle() const override { return nullptr; }
};
}  // namespace

Stream& host_stream() {
  static HostStream stream;
  return stream;
}

void check_on_device(const TensorView& view, Device device, const char* op, const char* what) {
  WEFT_CHECK(view.data != nullptr || view.numel() == 0, op, ": ", what, " has no data");
  WEFT_CHECK(view.device == device, op, ": ", what, " ", view.str(), " is not on ", device.str());
}

void check_same_layout(const TensorView& a, const TensorView& b, const char* op, const char* what_a,
                       const char* what_b) {
  WEFT_CHECK(a.shape == b.shape, op, ": ", what_a, " shape ", a.shape.str(), " differs from ",
             what_b, " shape ", b.shape.str());
  WEFT_CHECK(a.dtype == b.dtype, op, ": ", what_a, " dtype ", dtype_name(a.dtype), " differs from ",
             what_b, " dtype ", dtype_name(b.dtype));
}

GemmDims check_gemm_args(const GemmArgs& args, Device device) {
  const TensorView &a = args.a, &b = args.b, &c = args.c;
  check_on_device(a, device, "gemm", "A");
  check_on_device(b, device, "gemm", "B");
  check_on_device(c, device, "gemm", "C");
  WEFT_CHECK(a.shape.rank() == 2 && b.shape.rank() == 2 && c.shape.rank() == 2,
             "gemm: A, B and C must be 2D, got A ", a.shape.str(), ", B ", b.shape.str(), ", C ",
             c.shape.str());
  WEFT_CHECK(a.dtype == b.dtype, "gemm: A dtype ", dtype_name(a.dtype), " differs from B dtype ",
             dtype_name(b.dtype));
  WEFT_CHECK(is_floating(a.dtype) && is_floating(c.dtype),
             "gemm: A, B and C must be floating-point, got ", dtype_name(a.dtype), " and ",
             dtype_name(c.dtype));
  WEFT_CHECK(c.dtype == a.dtype || c.dtype == DType::kF32, "gemm: C dtype ", dtype_name(c.dtype),
             " must be f32 or the inputs' dtype ", dtype_name(a.dtype));
  GemmDims d;
  d.m = args.transpose_a ? a.shape[1] : a.shape[0];
  d.k = args.transpose_a ? a.shape[0] : a.shape[1];
  int64_t kb = args.transpose_b ? b.shape[1] : b.shape[0];
  d.n = args.transpose_b ? b.shape[0] : b.shape[1];
  WEFT_CHECK(d.k == kb, "gemm: inner dimensions differ: op(A) is ", d.m, "x", d.k, " (A ",
             a.shape.str(), args.transpose_a ? " transposed" : "", "), op(B) is ", kb, "x", d.n,
             " (B ", b.shape.str(), args.transpose_b ? " transposed" : "", ")");
  WEFT_CHECK(c.shape[0] == d.m && c.shape[1] == d.n, "gemm: C is ", c.shape.str(),
             " but op(A) op(B) is [", d.m, ", ", d.n, "]");
  d.lda = a.shape[1];
  d.ldb = b.shape[1];
  d.ldc = c.shape[1];

  const bool wants_bias = args.epilogue == Epilogue::kBias || args.epilogue == Epilogue::kBiasGelu;
  if (wants_bias) {
    check_on_device(args.bias, device, "gemm", "bias");
    WEFT_CHECK(args.bias.numel() == d.n && args.bias.dtype == c.dtype,
               "gemm: bias must have n = ", d.n, " elements of C's dtype ", dtype_name(c.dtype),
               ", got ", args.bias.str());
  }
  const bool gelu = args.epilogue == Epilogue::kGelu || args.epilogue == Epilogue::kBiasGelu;
  if (gelu && args.gelu_input.data != nullptr) {
    check_on_device(args.gelu_input, device, "gemm", "gelu_input");
    WEFT_CHECK(args.gelu_input.numel() == d.m * d.n && args.gelu_input.dtype == c.dtype,
               "gemm: gelu_input must be m x n = ", d.m, " x ", d.n, " of C's dtype ",
               dtype_name(c.dtype), ", got ", args.gelu_input.str());
  }
  WEFT_CHECK(gelu || args.gelu_input.data == nullptr,
             "gemm: gelu_input is only written by the kGelu and kBiasGelu epilogues");
  if (args.epilogue == Epilogue::kBiasGrad) {
    check_on_device(args.bias_grad, device, "gemm", "bias_grad");
    WEFT_CHECK(args.bias_grad.numel() == d.m && args.bias_grad.dtype == c.dtype,
               "gemm: bias_grad must have m = ", d.m, " elements of C's dtype ",
               dtype_name(c.dtype), ", got ", args.bias_grad.str());
  }
  return d;
}

void check_copy_columns_args(const TensorView& dst, int64_t dst_col, const TensorView& src,
                             int64_t src_col, int64_t cols) {
  WEFT_CHECK(dst.dtype == src.dtype, "copy_columns: dtypes differ (", dtype_name(dst.dtype), " vs ",
             dtype_name(src.dtype), ")");
  WEFT_CHECK(src.shape.rows() == dst.shape.rows(), "copy_columns: row counts differ: dst ",
             dst.shape.str(), ", src ", src.shape.str());
  WEFT_CHECK(cols >= 0 && dst_col >= 0 && src_col >= 0 && dst_col + cols <= dst.shape.cols() &&
                 src_col + cols <= src.shape.cols(),
             "copy_columns: columns [", src_col, ", ", src_col + cols, ") of ", src.shape.str(),
             " to [", dst_col, ", ", dst_col + cols, ") of ", dst.shape.str(), " out of range");
}

int64_t check_fill_random_args(const TensorView& dst, const RandomFill& spec) {
  const int64_t cols = dst.shape.cols();
  const int64_t global_cols = spec.global_cols < 0 ? cols : spec.global_cols;
  WEFT_CHECK(spec.col0 >= 0 && spec.row0 >= 0 && spec.col0 + cols <= global_cols,
             "fill_random: window at (", spec.row0, ", ", spec.col0, ") of ", cols,
             " columns does not fit a global row of ", global_cols);
  return global_cols;
}

void check_add_args(const TensorView& out, const TensorView& a, const TensorView& b,
                    Device device) {
  check_on_device(out, device, "add", "out");
  check_on_device(a, device, "add", "a");
  check_on_device(b, device, "add", "b");
  check_same_layout(out, a, "add", "out", "a");
  check_same_layout(out, b, "add", "out", "b");
}

void check_add_bias_args(const TensorView& out, const TensorView& in, const TensorView& bias,
                         Device device) {
  check_on_device(out, device, "add_bias", "out");
  check_on_device(in, device, "add_bias", "in");
  check_on_device(bias, device, "add_bias", "bias");
  check_same_layout(out, in, "add_bias", "out", "in");
  const int64_t cols = out.shape.cols();
  WEFT_CHECK(bias.numel() == cols && bias.dtype == out.dtype, "add_bias: bias ", bias.str(),
             " must have ", cols, " elements of dtype ", dtype_name(out.dtype));
}

void check_gelu_args(const TensorView& out, const TensorView& in, Device device) {
  check_on_device(out, device, "gelu", "out");
  check_on_device(in, device, "gelu", "in");
  check_same_layout(out, in, "gelu", "out", "in");
}

void check_gelu_backward_args(const TensorView& grad_in, const TensorView& grad_out,
                              const TensorView& input, Device device) {
  check_on_device(grad_in, device, "gelu_backward", "grad_in");
  check_on_device(grad_out, device, "gelu_backward", "grad_out");
  check_on_device(input, device, "gelu_backward", "input");
  check_same_layout(grad_in, grad_out, "gelu_backward", "grad_in", "grad_out");
  check_same_layout(grad_in, input, "gelu_backward", "grad_in", "input");
}

void check_convert_args(const TensorView& dst, const TensorView& src, Device device) {
  check_on_device(dst, device, "convert", "dst");
  check_on_device(src, device, "convert", "src");
  WEFT_CHECK(dst.shape == src.shape, "convert: shapes differ: dst ", dst.shape.str(), ", src ",
             src.shape.str());
}

namespace {

void check_floating(const TensorView& v, const char* op, const char* what) {
  WEFT_CHECK(is_floating(v.dtype), op, ": ", what, " ", v.str(), " must be f32, bf16 or f16");
}

void check_dtype(const TensorView& v, DType dtype, const char* op, const char* what) {
  WEFT_CHECK(v.dtype == dtype, op, ": ", what, " ", v.str(), " must be ", dtype_name(dtype));
}

// `v` has `count` elements of `dtype` (per-row statistics, parameter vectors).
void check_vector(const TensorView& v, int64_t count, DType dtype, const char* op,
                  const char* what) {
  WEFT_CHECK(v.numel() == count && v.dtype == dtype, op, ": ", what, " ", v.str(), " must have ",
             count, " elements of dtype ", dtype_name(dtype));
}

// `v` is a [rows, cols] matrix (leading dims folded) of `dtype`.
void check_matrix(const TensorView& v, int64_t rows, int64_t cols, DType dtype, const char* op,
                  const char* what) {
  WEFT_CHECK(
      v.shape.rank() >= 1 && v.shape.rows() == rows && v.shape.cols() == cols && v.dtype == dtype,
      op, ": ", what, " ", v.str(), " must be [", rows, ", ", cols, "] of dtype ",
      dtype_name(dtype));
}

void check_has_rows(const TensorView& v, const char* op, const char* what) {
  WEFT_CHECK(v.shape.rank() >= 1, op, ": ", what, " ", v.str(), " must have at least 1 dimension");
}

}  // namespace

void check_scale_args(const TensorView& out, const TensorView& in, Device device) {
  check_on_device(out, device, "scale", "out");
  check_on_device(in, device, "scale", "in");
  check_floating(in, "scale", "in");
  check_same_layout(out, in, "scale", "out", "in");
}

void check_sum_squares_args(const TensorView& out, const TensorView& in, Device device) {
  check_on_device(out, device, "sum_squares", "out");
  check_on_device(in, device, "sum_squares", "in");
  check_floating(in, "sum_squares", "in");
  check_vector(out, 1, DType::kF32, "sum_squares", "out");
}

void check_layer_norm_args(const TensorView& out, const TensorView& mean, const TensorView& rstd,
                           const TensorView& in, const TensorView& gamma, const TensorView& beta,
                           float eps, Device device) {
  const char* op = "layer_norm";
  check_on_device(out, device, op, "out");
  check_on_device(mean, device, op, "mean");
  check_on_device(rstd, device, op, "rstd");
  check_on_device(in, device, op, "in");
  check_on_device(gamma, device, op, "gamma");
  check_on_device(beta, device, op, "beta");
  check_has_rows(in, op, "in");
  check_floating(in, op, "in");
  check_same_layout(out, in, op, "out", "in");
  const int64_t rows = in.shape.rows(), cols = in.shape.cols();
  check_vector(mean, rows, DType::kF32, op, "mean");
  check_vector(rstd, rows, DType::kF32, op, "rstd");
  check_vector(gamma, cols, in.dtype, op, "gamma");
  check_vector(beta, cols, in.dtype, op, "beta");
  WEFT_CHECK(eps >= 0.0f && std::isfinite(eps), op, ": eps ", eps, " must be finite and >= 0");
}

void check_layer_norm_backward_args(const TensorView& grad_in, const TensorView& grad_gamma,
                                    const TensorView& grad_beta, const TensorView& grad_out,
                                    const TensorView& in, const TensorView& gamma,
                                    const TensorView& mean, const TensorView& rstd, Device device) {
  const char* op = "layer_norm_backward";
  check_on_device(grad_in, device, op, "grad_in");
  check_on_device(grad_gamma, device, op, "grad_gamma");
  check_on_device(grad_beta, device, op, "grad_beta");
  check_on_device(grad_out, device, op, "grad_out");
  check_on_device(in, device, op, "in");
  check_on_device(gamma, device, op, "gamma");
  check_on_device(mean, device, op, "mean");
  check_on_device(rstd, device, op, "rstd");
  check_has_rows(in, op, "in");
  check_floating(in, op, "in");
  check_same_layout(grad_out, in, op, "grad_out", "in");
  check_same_layout(grad_in, in, op, "grad_in", "in");
  const int64_t rows = in.shape.rows(), cols = in.shape.cols();
  check_vector(gamma, cols, in.dtype, op, "gamma");
  check_vector(grad_gamma, cols, in.dtype, op, "grad_gamma");
  check_vector(grad_beta, cols, in.dtype, op, "grad_beta");
  check_vector(mean, rows, DType::kF32, op, "mean");
  check_vector(rstd, rows, DType::kF32, op, "rstd");
}

void check_rms_norm_args(const TensorView& out, const TensorView& rstd, const TensorView& in,
                         const TensorView& gamma, float eps, Device device) {
  const char* op = "rms_norm";
  check_on_device(out, device, op, "out");
  check_on_device(rstd, device, op, "rstd");
  check_on_device(in, device, op, "in");
  check_on_device(gamma, device, op, "gamma");
  check_has_rows(in, op, "in");
  check_floating(in, op, "in");
  check_same_layout(out, in, op, "out", "in");
  check_vector(rstd, in.shape.rows(), DType::kF32, op, "rstd");
  check_vector(gamma, in.shape.cols(), in.dtype, op, "gamma");
  WEFT_CHECK(eps >= 0.0f && std::isfinite(eps), op, ": eps ", eps, " must be finite and >= 0");
}

void check_rms_norm_backward_args(const TensorView& grad_in, const TensorView& grad_gamma,
                                  const TensorView& grad_out, const TensorView& in,
                                  const TensorView& gamma, const TensorView& rstd, Device device) {
  const char* op = "rms_norm_backward";
  check_on_device(grad_in, device, op, "grad_in");
  check_on_device(grad_gamma, device, op, "grad_gamma");
  check_on_device(grad_out, device, op, "grad_out");
  check_on_device(in, device, op, "in");
  check_on_device(gamma, device, op, "gamma");
  check_on_device(rstd, device, op, "rstd");
  check_has_rows(in, op, "in");
  check_floating(in, op, "in");
  check_same_layout(grad_out, in, op, "grad_out", "in");
  check_same_layout(grad_in, in, op, "grad_in", "in");
  check_vector(gamma, in.shape.cols(), in.dtype, op, "gamma");
  check_vector(grad_gamma, in.shape.cols(), in.dtype, op, "grad_gamma");
  check_vector(rstd, in.shape.rows(), DType::kF32, op, "rstd");
}

AttentionDims check_attention_shape(const AttentionShape& shape, const char* op) {
  WEFT_CHECK(shape.seq > 0 && shape.batch > 0 && shape.heads > 0 && shape.kv_heads > 0 &&
                 shape.head_dim > 0,
             op, ": seq ", shape.seq, ", batch ", shape.batch, ", heads ", shape.heads,
             ", kv_heads ", shape.kv_heads, " and head_dim ", shape.head_dim,
             " must all be positive");
  WEFT_CHECK(shape.heads % shape.kv_heads == 0, op, ": heads ", shape.heads,
             " is not divisible by kv_heads ", shape.kv_heads);
  WEFT_CHECK(std::isfinite(shape.scale), op, ": scale ", shape.scale, " must be finite");
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

AttentionDims check_attention_args(const TensorView& out, const TensorView& lse,
                                   const TensorView& qkv, const AttentionShape& shape,
                                   Device device) {
  const char* op = "attention";
  check_on_device(out, device, op, "out");
  check_on_device(lse, device, op, "lse");
  check_on_device(qkv, device, op, "qkv");
  const AttentionDims d = check_attention_shape(shape, op);
  check_floating(qkv, op, "qkv");
  check_matrix(qkv, d.tokens, d.qkv_cols, qkv.dtype, op, "qkv");
  check_matrix(out, d.tokens, d.out_cols, qkv.dtype, op, "out");
  check_vector(lse, d.batch * d.heads * d.seq, DType::kF32, op, "lse");
  return d;
}

AttentionDims check_attention_backward_args(const TensorView& grad_qkv, const TensorView& grad_out,
                                            const TensorView& qkv, const TensorView& lse,
                                            const AttentionShape& shape, Device device) {
  const char* op = "attention_backward";
  check_on_device(grad_qkv, device, op, "grad_qkv");
  check_on_device(grad_out, device, op, "grad_out");
  check_on_device(qkv, device, op, "qkv");
  check_on_device(lse, device, op, "lse");
  const AttentionDims d = check_attention_shape(shape, op);
  check_floating(qkv, op, "qkv");
  check_matrix(qkv, d.tokens, d.qkv_cols, qkv.dtype, op, "qkv");
  check_matrix(grad_qkv, d.tokens, d.qkv_cols, qkv.dtype, op, "grad_qkv");
  check_matrix(grad_out, d.tokens, d.out_cols, qkv.dtype, op, "grad_out");
  WEFT_CHECK(grad_qkv.data != qkv.data, op, ": grad_qkv must not alias qkv (backward reads qkv)");
  check_vector(lse, d.batch * d.heads * d.seq, DType::kF32, op, "lse");
  return d;
}

AttentionDims check_attention_with_cache_args(const TensorView& out, const TensorView& k_cache,
                                              const TensorView& v_cache, const TensorView& qkv,
                                              const AttentionShape& shape, int64_t past,
                                              Device device) {
  const char* op = "attention_with_cache";
  check_on_device(out, device, op, "out");
  check_on_device(k_cache, device, op, "k_cache");
  check_on_device(v_cache, device, op, "v_cache");
  check_on_device(qkv, device, op, "qkv");
  const AttentionDims d = check_attention_shape(shape, op);
  check_floating(qkv, op, "qkv");
  check_matrix(qkv, d.tokens, d.qkv_cols, qkv.dtype, op, "qkv");
  check_matrix(out, d.tokens, d.out_cols, qkv.dtype, op, "out");
  WEFT_CHECK(k_cache.shape.rank() == 4 && k_cache.shape[0] == d.batch &&
                 k_cache.shape[1] == d.kv_heads && k_cache.shape[3] == d.head_dim &&
                 k_cache.dtype == qkv.dtype,
             op, ": k_cache ", k_cache.str(), " must be [batch ", d.batch, ", kv_heads ",
             d.kv_heads, ", capacity, head_dim ", d.head_dim, "] of dtype ", dtype_name(qkv.dtype));
  check_same_layout(v_cache, k_cache, op, "v_cache", "k_cache");
  const int64_t capacity = k_cache.shape[2];
  WEFT_CHECK(past >= 0 && past + d.seq <= capacity, op, ": positions [", past, ", ", past + d.seq,
             ") do not fit a cache of capacity ", capacity);
  return d;
}

AttentionDims check_rope_args(const TensorView& qkv, const AttentionShape& shape, float theta,
                              int64_t position_offset, Device device) {
  const char* op = "rope";
  check_on_device(qkv, device, op, "qkv");
  const AttentionDims d = check_attention_shape(shape, op);
  check_floating(qkv, op, "qkv");
  check_matrix(qkv, d.tokens, d.qkv_cols, qkv.dtype, op, "qkv");
  WEFT_CHECK(d.head_dim % 2 == 0, op, ": head_dim ", d.head_dim, " must be even");
  WEFT_CHECK(theta > 0.0f && std::isfinite(theta), op, ": theta ", theta, " must be positive");
  WEFT_CHECK(position_offset >= 0, op, ": position_offset ", position_offset, " must be >= 0");
  return d;
}

void check_embedding_args(const TensorView& out, const TensorView& ids, const TensorView& table,
                          int64_t vocab_start, Device device) {
  const char* op = "embedding";
  check_on_device(out, device, op, "out");
  check_on_device(ids, device, op, "ids");
  check_on_device(table, device, op, "table");
  check_dtype(ids, DType::kI32, op, "ids");
  check_has_rows(table, op, "table");
  check_floating(table, op, "table");
  check_matrix(out, ids.numel(), table.shape.cols(), table.dtype, op, "out");
  WEFT_CHECK(vocab_start >= 0, op, ": vocab_start ", vocab_start, " must be >= 0");
}

void check_embedding_backward_args(const TensorView& grad_table, const TensorView& ids,
                                   const TensorView& grad_out, int64_t vocab_start, Device device) {
  const char* op = "embedding_backward";
  check_on_device(grad_table, device, op, "grad_table");
  check_on_device(ids, device, op, "ids");
  check_on_device(grad_out, device, op, "grad_out");
  check_dtype(ids, DType::kI32, op, "ids");
  check_has_rows(grad_table, op, "grad_table");
  check_floating(grad_table, op, "grad_table");
  check_matrix(grad_out, ids.numel(), grad_table.shape.cols(), grad_table.dtype, op, "grad_out");
  WEFT_CHECK(vocab_start >= 0, op, ": vocab_start ", vocab_start, " must be >= 0");
}

namespace {
void check_vocab_range(int64_t vocab_start, int64_t vocab_size, const char* op) {
  WEFT_CHECK(vocab_start >= 0 && vocab_size > 0, op, ": vocab_start ", vocab_start,
             " must be >= 0 and vocab_size ", vocab_size, " positive");
}
}  // namespace

void check_vocab_max_args(const TensorView& row_max, const TensorView& logits, int64_t vocab_start,
                          int64_t vocab_size, Device device) {
  const char* op = "vocab_max";
  check_on_device(row_max, device, op, "row_max");
  check_on_device(logits, device, op, "logits");
  check_has_rows(logits, op, "logits");
  check_floating(logits, op, "logits");
  check_vector(row_max, logits.shape.rows(), DType::kF32, op, "row_max");
  check_vocab_range(vocab_start, vocab_size, op);
}

void check_vocab_sum_exp_and_target_args(const TensorView& sum_exp, const TensorView& target_logit,
                                         const TensorView& logits, const TensorView& row_max,
                                         const TensorView& targets, int64_t vocab_start,
                                         int64_t vocab_size, Device device) {
  const char* op = "vocab_sum_exp_and_target";
  check_on_device(sum_exp, device, op, "sum_exp");
  check_on_device(target_logit, device, op, "target_logit");
  check_on_device(logits, device, op, "logits");
  check_on_device(row_max, device, op, "row_max");
  check_on_device(targets, device, op, "targets");
  check_has_rows(logits, op, "logits");
  check_floating(logits, op, "logits");
  const int64_t tokens = logits.shape.rows();
  check_vector(sum_exp, tokens, DType::kF32, op, "sum_exp");
  check_vector(target_logit, tokens, DType::kF32, op, "target_logit");
  check_vector(row_max, tokens, DType::kF32, op, "row_max");
  check_vector(targets, tokens, DType::kI32, op, "targets");
  check_vocab_range(vocab_start, vocab_size, op);
}

void check_vocab_cross_entropy_backward_args(const TensorView& grad_logits,
                                             const TensorView& logits, const TensorView& row_max,
                                             const TensorView& sum_exp, const TensorView& targets,
                                             const TensorView& grad_loss, int64_t vocab_start,
                                             int64_t vocab_size, Device device) {
  const char* op = "vocab_cross_entropy_backward";
  check_on_device(grad_logits, device, op, "grad_logits");
  check_on_device(logits, device, op, "logits");
  check_on_device(row_max, device, op, "row_max");
  check_on_device(sum_exp, device, op, "sum_exp");
  check_on_device(targets, device, op, "targets");
  check_on_device(grad_loss, device, op, "grad_loss");
  check_has_rows(logits, op, "logits");
  check_floating(logits, op, "logits");
  check_same_layout(grad_logits, logits, op, "grad_logits", "logits");
  const int64_t tokens = logits.shape.rows();
  check_vector(row_max, tokens, DType::kF32, op, "row_max");
  check_vector(sum_exp, tokens, DType::kF32, op, "sum_exp");
  check_vector(targets, tokens, DType::kI32, op, "targets");
  check_vector(grad_loss, tokens, DType::kF32, op, "grad_loss");
  check_vocab_range(vocab_start, vocab_size, op);
}

void check_swiglu_args(const TensorView& out, const TensorView& gate, const TensorView& up,
                       Device device) {
  const char* op = "swiglu";
  check_on_device(out, device, op, "out");
  check_on_device(gate, device, op, "gate");
  check_on_device(up, device, op, "up");
  check_floating(gate, op, "gate");
  check_same_layout(up, gate, op, "up", "gate");
  check_same_layout(out, gate, op, "out", "gate");
}

void check_swiglu_backward_args(const TensorView& grad_gate, const TensorView& grad_up,
                                const TensorView& grad_out, const TensorView& gate,
                                const TensorView& up, Device device) {
  const char* op = "swiglu_backward";
  check_on_device(grad_gate, device, op, "grad_gate");
  check_on_device(grad_up, device, op, "grad_up");
  check_on_device(grad_out, device, op, "grad_out");
  check_on_device(gate, device, op, "gate");
  check_on_device(up, device, op, "up");
  check_floating(gate, op, "gate");
  check_same_layout(up, gate, op, "up", "gate");
  check_same_layout(grad_out, gate, op, "grad_out", "gate");
  check_same_layout(grad_gate, gate, op, "grad_gate", "gate");
  check_same_layout(grad_up, gate, op, "grad_up", "gate");
}

void check_dropout_args(const TensorView& out, const TensorView& in, float probability,
                        Device device) {
  check_on_device(out, device, "dropout", "out");
  check_on_device(in, device, "dropout", "in");
  check_floating(in, "dropout", "in");
  check_same_layout(out, in, "dropout", "out", "in");
  WEFT_CHECK(probability >= 0.0f && probability < 1.0f, "dropout: probability ", probability,
             " must be in [0, 1)");
}

void check_adamw_args(const TensorView& master, const TensorView& m, const TensorView& v,
                      const TensorView& grad, const AdamWStep& step, Device device) {
  const char* op = "adamw";
  check_on_device(master, device, op, "master");
  check_on_device(m, device, op, "m");
  check_on_device(v, device, op, "v");
  check_on_device(grad, device, op, "grad");
  check_dtype(master, DType::kF32, op, "master");
  check_same_layout(m, master, op, "m", "master");
  check_same_layout(v, master, op, "v", "master");
  check_floating(grad, op, "grad");
  WEFT_CHECK(grad.numel() == master.numel(), op, ": grad ", grad.str(), " must have ",
             master.numel(), " elements like master ", master.str());
  WEFT_CHECK(step.step >= 1, op, ": step ", step.step, " must be >= 1 (1-based)");
  WEFT_CHECK(step.beta1 >= 0.0f && step.beta1 < 1.0f && step.beta2 >= 0.0f && step.beta2 < 1.0f, op,
             ": beta1 ", step.beta1, " and beta2 ", step.beta2, " must be in [0, 1)");
  WEFT_CHECK(step.lr >= 0.0f && step.eps >= 0.0f && step.weight_decay >= 0.0f &&
                 std::isfinite(step.lr) && std::isfinite(step.eps) &&
                 std::isfinite(step.weight_decay) && std::isfinite(step.grad_scale),
             op, ": lr ", step.lr, ", eps ", step.eps, " and weight_decay ", step.weight_decay,
             " must be finite and >= 0, grad_scale ", step.grad_scale, " finite");
}

bool poison_allocations() {
  static const bool poison = [] {
    const char* env = std::getenv("WEFT_POISON_ALLOCATIONS");
    return env != nullptr && env[0] == '1';
  }();
  return poison;
}

std::unique_ptr<Backend> make_backend(const std::string& spec) {
  if (spec == "cpu") return make_cpu_backend();
  if (spec == "cuda") return make_cuda_backend(0);
  if (spec.rfind("cuda:", 0) == 0) {
    const std::string ordinal = spec.substr(5);
    WEFT_CHECK(!ordinal.empty() && ordinal.find_first_not_of("0123456789") == std::string::npos,
               "backend '", spec, "': expected cpu, cuda or cuda:N");
    return make_cuda_backend(std::stoi(ordinal));
  }
  WEFT_THROW(ErrorCode::kInvalidArgument, "unknown backend '", spec,
             "': expected cpu, cuda or cuda:N");
}

}  // namespace weft
