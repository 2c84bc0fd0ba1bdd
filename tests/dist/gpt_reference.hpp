// ReferenceGpt: the unsharded GPT (tp 1, pp 1, no sequence parallelism or overlap) over a world of
// one, built from the same seed as the sharded model under test; and reference_shard, the window
// of one of its tensors that a sharded parameter holds.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/test_util.hpp"
#include "dist/dist_env.hpp"

namespace weft::testing {

struct ReferenceGpt {
  // Micro-batches of `batch` sequences of config.max_seq tokens; `self` is a world of one for
  // `backend` (make_test_self() on the test engine, or a host one for a CPU backend).
  ReferenceGpt(Backend& backend, std::unique_ptr<Communicator> self_world, const GPTConfig& config,
               int64_t batch)
      : self(std::move(self_world)),
        ctx{backend, *self},
        model(ctx, plain(config)),
        rng(config.seed, 0),
        seq(config.max_seq),
        batch(batch),
        ids(backend, Shape({config.max_seq * batch}), DType::kI32),
        targets(backend, Shape({config.max_seq * batch}), DType::kI32) {}

  static GPTConfig plain(GPTConfig c) {
    c.sequence_parallel = false;
    c.tp_comm_overlap = false;
    c.finalize(1);
    return c;
  }

  // Gradients of the mean over micro-batches of each micro-batch's mean token loss, with
  // load(mb, ids, targets) filling micro-batch mb; returns that loss.
  float accumulate(int64_t microbatches,
                   const std::function<void(int64_t, Tensor&, Tensor&)>& load) {
    zero_grads(ctx.backend, model.parameters());
    double loss = 0.0;
    for (int64_t mb = 0; mb < microbatches; ++mb) {
      load(mb, ids, targets);
      GPTModel::Saved saved;
      loss += model.forward(ids, targets, seq, batch, rng, saved);
      model.backward(saved, 1.0f / static_cast<float>(microbatches));
    }
    return static_cast<float>(loss / static_cast<double>(microbatches));
  }

  Parameter* find(const std::string& name) {
    for (Parameter* p : model.parameters()) {
      if (p->name == name) return p;
    }
    return nullptr;
  }

  std::unique_ptr<Communicator> self;
  ParallelContext ctx;
  GPTModel model;
  DropoutRng rng;
  int64_t seq, batch;
  Tensor ids, targets;
};

// This rank's window of the reference tensor `global` that `shard` describes (init_parameter's
// rule).
inline std::vector<double> reference_shard(Backend& backend, const Parameter& shard,
                                           TensorView global) {
  std::vector<double> full = to_host(backend, global);
  if (shard.is_replicated()) return full;
  const Shape& g = shard.global_shape;
  const Shape& local = shard.value.shape();
  if (shard.partition_dim == g.rank() - 1) {
    return column_block(full, g.rows(), g.cols(), local.cols() * shard.partition_index,
                        local.cols());
  }
  const auto begin = static_cast<std::ptrdiff_t>(local.numel() * shard.partition_index);
  return std::vector<double>(full.begin() + begin, full.begin() + begin + local.numel());
}

}  // namespace weft::testing
