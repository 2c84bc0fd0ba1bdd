// Replicated dropout, checked on the outputs: a TransformerLayer with dropout on its residual
// branches gives bit-identical outputs on every TP rank (one mask for the replicated residual
// stream), equal to the unsharded layer's with the same seed, with and without sequence
// parallelism, and different from the layer without dropout (a mask was applied).
#include <gtest/gtest.h>

#include <string>

#include "common/test_util.hpp"
#include "dist/dist_env.hpp"
#include "weft/gpt.hpp"

namespace weft::testing {
namespace {

constexpr int64_t kSeq = 8, kBatch = 2, kHidden = 32;

GPTConfig layer_config(int tp, float dropout, bool sequence_parallel) {
  GPTConfig c = GPTConfig::preset("gpt2");
  c.max_seq = kSeq;
  c.layers = 1;
  c.hidden = kHidden;
  c.heads = 4;
  c.seed = 31;
  c.init_std = 0.2f;  // branches as large as the residual, so that a mask shows
  c.dropout = dropout;
  c.sequence_parallel = sequence_parallel;
  c.finalize(tp);
  return c;
}

// The layer's output on all rows, in f64, for x drawn from a fixed seed.
std::vector<double> layer_output(Backend& backend, Communicator& tp, float dropout,
                                 bool sequence_parallel) {
  TransformerLayer layer(ParallelContext{backend, tp},
                         layer_config(tp.size(), dropout, sequence_parallel), 0);
  const Tensor x = random_tensor(backend, Shape({kSeq * kBatch, kHidden}), DType::kF32, 5);
  DropoutRng rng(77, tp.rank());
  rng.set_offsets(1000, 2000);  // any counters: equal on every rank
  if (!sequence_parallel) return to_host(backend, layer.forward(x, kSeq, kBatch, rng));
  // This rank's block of rows in, its block out; the blocks gathered back in rank order.
  const int64_t rows = kSeq * kBatch / tp.size();
  const Tensor mine = layer.forward(x.view().rows(rows * tp.rank(), rows), kSeq, kBatch, rng);
  Tensor all(backend, Shape({kSeq * kBatch, kHidden}), DType::kF32);
  tp.all_gather(mine, all, host_stream());
  return to_host(backend, all);
}

TEST(ReplicatedDropout, OutputsAgreeAcrossTpRanksAndEqualTheUnshardedLayer) {
  auto cpu = make_cpu_backend();
  auto self = make_self_communicator();
  ParallelGrid grid(world(), world().size());
  const std::vector<double> reference = layer_output(*cpu, *self, 0.5f, false);
  const std::vector<double> undropped = layer_output(*cpu, *self, 0.0f, false);
  ASSERT_GT(max_rel_error(undropped, reference), 0.1) << "dropout 0.5 must change the output";

  for (bool sp : {false, true}) {
    SCOPED_TRACE(sp ? "sequence parallel" : "tensor parallel");
    if (sp && kSeq % grid.tp_size() != 0) continue;
    const std::vector<double> out = layer_output(*cpu, grid.tp(), 0.5f, sp);
    EXPECT_LE(max_rel_error(out, reference), 1e-5) << "tp=" << grid.tp_size();
    // Bit-identical on every TP rank: the elementwise maximum and minimum over the group agree.
    std::vector<float> local(out.begin(), out.end()), hi(local.size()), lo(local.size());
    const Shape shape({static_cast<int64_t>(local.size())});
    const TensorView in{local.data(), shape, DType::kF32, Device::cpu()};
    grid.tp().all_reduce(in, TensorView{hi.data(), shape, DType::kF32, Device::cpu()},
                         ReduceOp::kMax, host_stream());
    grid.tp().all_reduce(in, TensorView{lo.data(), shape, DType::kF32, Device::cpu()},
                         ReduceOp::kMin, host_stream());
    EXPECT_EQ(hi, lo) << "the outputs differ across TP ranks";
  }
}

}  // namespace
}  // namespace weft::testing
