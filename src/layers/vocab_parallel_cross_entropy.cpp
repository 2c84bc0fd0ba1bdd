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

std::vector<TensorView> VocabParallelCrossEntropy::Saved::views() const {
  std::vector<TensorView> saved;
  for (const TensorView& v : {logits, targets, row_max.view(), sum_exp.view()}) {
    if (v.data != nullptr) saved.push_back(v);
  }
  return saved;
}

std::vector<float> VocabParallelCrossEntropy::forward(TensorView logits, TensorView targets,
                                                      int64_t vocab_start, int64_t vocab_size) {
  Saved scratch;  // the all-reduced statistics are the loss's inputs; dropped here
  return forward(logits, targets, vocab_start, vocab_size, scratch);
}

std::vector<float> VocabParallelCrossEntropy::forward(TensorView logits, TensorView targets,
                                                      int64_t vocab_start, int64_t vocab_size,
                                                      Saved& saved) {
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

  saved = Saved{};
  saved.logits = logits;  // keeps the caller's shape for the gradient
  const TensorView logits2d = logits.reshaped(Shape({tokens, logits.shape.cols()}));
  saved.targets = targets.reshaped(Shape({tokens}));
  saved.vocab_start = vocab_start;
  saved.vocab_size = vocab_size;
  Tensor& row_max = saved.row_max;
  Tensor& sums = saved.sum_exp;
  const TensorView targets1d = saved.targets;

  // The exponentials must be taken against the global maximum, so its all-reduce comes first.
  row_max = Tensor(backend, Shape({tokens}), DType::kF32);
  backend.vocab_max(row_max, logits2d, vocab_start, vocab_size);
  if (ctx_.tp.size() > 1) ctx_.tp.all_reduce(row_max, row_max, ReduceOp::kMax, backend.stream());

  // Row 0: sum of exponentials, row 1: target logit (0 on the ranks that do not hold the target).
  // Both are sums over the TP group, so one all-reduce carries them.
  sums = Tensor(backend, Shape({2, tokens}), DType::kF32);
  const TensorView sum_exp = sums.view().rows(0, 1).reshaped(Shape({tokens}));
  const TensorView target_logit = sums.view().rows(1, 1).reshaped(Shape({tokens}));
  backend.vocab_sum_exp_and_target(sum_exp, target_logit, logits2d, row_max, targets1d, vocab_start,
                                   vocab_size);
  if (ctx_.tp.size() > 1) ctx_.tp.all_reduce(sums, sums, ReduceOp::kSum, backend.stream());

  std::vector<float> max_host(static_cast<size_t>(tokens)),
      sums_host(static_cast<size_t>(2 * tokens));
  backend.copy(host_view(max_host), row_max);
  backend.copy(host_view(sums_host).reshaped(Shape({2, tokens})), sums);
  std::vector<float> loss(static_cast<size_t>(tokens));
  for (size_t t = 0; t < loss.size(); ++t) {
    const double s = sums_host[t], target = sums_host[tokens + t];
    loss[t] = static_cast<float>(std::log(s) + max_host[t] - target);
  }
  return loss;
}

Tensor VocabParallelCrossEntropy::backward(const std::vector<float>& grad_loss, Saved& saved) {
  WEFT_CHECK(saved.logits.data != nullptr, kLayer,
             ": backward called before forward (its saved state is empty)");
  const TensorView saved_logits = saved.logits;
  const int64_t tokens = saved_logits.shape.rows();
  WEFT_CHECK(static_cast<int64_t>(grad_loss.size()) == tokens, kLayer, ": grad_loss holds ",
             grad_loss.size(), " values but forward had ", tokens, " tokens");
  Backend& backend = ctx_.backend;
  Tensor grad_loss_device(backend, Shape({tokens}), DType::kF32);
  std::vector<float> staged = grad_loss;  // a host view needs a mutable pointer
  backend.copy(grad_loss_device, host_view(staged));
  Tensor grad_logits(backend, saved_logits.shape, saved_logits.dtype);
  const Shape shape2d({tokens, saved_logits.shape.cols()});
  const TensorView sum_exp = saved.sum_exp.view().rows(0, 1).reshaped(Shape({tokens}));
  backend.vocab_cross_entropy_backward(
      grad_logits.view().reshaped(shape2d), saved_logits.reshaped(shape2d), saved.row_max, sum_exp,
      saved.targets, grad_loss_device, saved.vocab_start, saved.vocab_size);
  saved = Saved{};
  return grad_logits;
}

}  // namespace weft
