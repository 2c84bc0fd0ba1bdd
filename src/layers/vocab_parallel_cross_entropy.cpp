// VocabParallelCrossEntropy: the softmax cross-entropy over vocab-parallel logits, never gathered.
#include <cmath>
#include <vector>

#include "layers/token_ids.hpp"
#include "weft/embedding.hpp"
#include "weft/error.hpp"

namespace weft {

namespace {
constexpr const char* kLayer = "vocab_parallel_cross_entropy";

TensorView host_view(std::vector<float>& v) {
  return TensorView{v.data(), Shape({static_cast<int64_t>(v.size())}), DType::kF32, Device::cpu()};
}
}  // namespace

std::vector<float> VocabParallelCrossEntropy::forward(TensorView logits, TensorView targets,
                                                      int64_t vocab_start, int64_t vocab_size) {
  Backend& backend = ctx_.backend;
  WEFT_CHECK(logits.shape.rank() >= 1 && is_floating(logits.dtype), kLayer, ": logits ",
             logits.str(), " must be floating point with the vocabulary along the last dimension");
  WEFT_CHECK(logits.device == backend.device(), kLayer, ": logits are on ", logits.device.str(),
             " but the layer runs on ", backend.device().str());
  WEFT_CHECK(vocab_start >= 0 && vocab_size > 0, kLayer, ": vocab_start (", vocab_start,
             ") must be non-negative and vocab_size (", vocab_size, ") positive");
  const int64_t tokens = logits.shape.rows();
  WEFT_CHECK(targets.numel() == tokens, kLayer, ": targets ", targets.shape.str(), " hold ",
             targets.numel(), " ids but logits ", logits.shape.str(), " have ", tokens, " rows");
  check_token_ids(backend, targets, vocab_size, kLayer, "targets");

  logits_ = logits;  // keeps the caller's shape for the gradient
  const TensorView logits2d = logits.reshaped(Shape({tokens, logits.shape.cols()}));
  targets_ = targets.reshaped(Shape({tokens}));
  vocab_start_ = vocab_start;
  vocab_size_ = vocab_size;

  // The exponentials must be taken against the global maximum, so its all-reduce comes first.
  row_max_ = Tensor(backend, Shape({tokens}), DType::kF32);
  backend.vocab_max(row_max_, logits2d, vocab_start, vocab_size);
  if (ctx_.tp.size() > 1) ctx_.tp.all_reduce(row_max_, row_max_, ReduceOp::kMax, backend.stream());

  // Row 0: sum of exponentials, row 1: target logit (0 on the ranks that do not hold the target).
  // Both are sums over the TP group, so one all-reduce carries them.
  sum_exp_ = Tensor(backend, Shape({2, tokens}), DType::kF32);
  const TensorView sum_exp = sum_exp_.view().rows(0, 1).reshaped(Shape({tokens}));
  const TensorView target_logit = sum_exp_.view().rows(1, 1).reshaped(Shape({tokens}));
  backend.vocab_sum_exp_and_target(sum_exp, target_logit, logits2d, row_max_, targets_, vocab_start,
                                   vocab_size);
  if (ctx_.tp.size() > 1) ctx_.tp.all_reduce(sum_exp_, sum_exp_, ReduceOp::kSum, backend.stream());

  std::vector<float> max_host(static_cast<size_t>(tokens)),
      sums_host(static_cast<size_t>(2 * tokens));
  backend.copy(host_view(max_host), row_max_);
  backend.copy(host_view(sums_host).reshaped(Shape({2, tokens})), sum_exp_);
  std::vector<float> loss(static_cast<size_t>(tokens));
  for (size_t t = 0; t < loss.size(); ++t) {
    const double s = sums_host[t], target = sums_host[tokens + t];
    loss[t] = static_cast<float>(std::log(s) + max_host[t] - target);
  }
  return loss;
}

Tensor VocabParallelCrossEntropy::backward(const std::vector<float>& grad_loss) {
  WEFT_CHECK(logits_.data != nullptr, kLayer, ": backward called before forward");
  const int64_t tokens = logits_.shape.rows();
  WEFT_CHECK(static_cast<int64_t>(grad_loss.size()) == tokens, kLayer, ": grad_loss holds ",
             grad_loss.size(), " values but forward had ", tokens, " tokens");
  Backend& backend = ctx_.backend;
  Tensor grad_loss_device(backend, Shape({tokens}), DType::kF32);
  std::vector<float> staged = grad_loss;  // a host view needs a mutable pointer
  backend.copy(grad_loss_device, host_view(staged));
  Tensor grad_logits(backend, logits_.shape, logits_.dtype);
  const Shape shape2d({tokens, logits_.shape.cols()});
  const TensorView sum_exp = sum_exp_.view().rows(0, 1).reshaped(Shape({tokens}));
  backend.vocab_cross_entropy_backward(grad_logits.view().reshaped(shape2d),
                                       logits_.reshaped(shape2d), row_max_, sum_exp, targets_,
                                       grad_loss_device, vocab_start_, vocab_size_);
  return grad_logits;
}

}  // namespace weft
