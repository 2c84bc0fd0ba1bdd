// Sequence parallelism and the overlapped (ring) communication, against the plain paths.
//
// The plain tensor-parallel layers are checked against double references elsewhere
// (test_linear.cpp, test_gpt_blocks.cpp); here every sequence-parallel or overlapped layer is run
// beside a plain twin (same seed, so the same weights at any TP size) on the same global input:
// the twin sees all rows, the layer under test this rank's block of rows, and its output and
// input gradient must be that block of the twin's, its parameter gradients the twin's. The
// mappings and the async group are checked exactly on rank-valued tensors; the fused ops against
// the collective + GEMM they replace. Then whole models: loss and every gradient, 20-step loss
// curves, replicated parameters after training, activation memory, and bad sequence lengths.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>

#include "common/gpt_fixtures.hpp"
#include "common/test_util.hpp"
#include "dist/tp_fixture.hpp"
#include "weft/attention.hpp"
#include "weft/embedding.hpp"
#include "weft/gpt.hpp"
#include "weft/optimizer.hpp"
#include "weft/overlap.hpp"

namespace weft::testing {
namespace {

// f32 results of the same math summed in another order (ring vs tree reductions, GEMMs by
// blocks of rows).
constexpr double kTol = 2e-5;

// The communication modes besides the plain one: sequence parallel, overlapped, or both.
struct Mode {
  bool sequence_parallel, overlap;
};
std::string describe(Mode m) {
  return std::string("sequence_parallel=") + (m.sequence_parallel ? "1" : "0") +
         " tp_comm_overlap=" + (m.overlap ? "1" : "0");
}
constexpr Mode kModes[] = {{true, false}, {false, true}, {true, true}};

// Helpers of every fixture below; the parameter (TP size, dtype) comes from the derived fixture.
class SpFixture : public ::testing::Test {
 protected:
  // Returns false (after GTEST_SKIP in the caller) when the world cannot run this TP size.
  bool make_grid(int tp) {
    tp_ = tp;
    if (world().size() % tp != 0) return false;
    grid_ = std::make_unique<ParallelGrid>(world(), tp);
    return true;
  }
  int tp() const { return tp_; }
  int tp_rank() const { return grid_->tp_rank(); }
  ParallelContext ctx() { return ParallelContext{*cpu_, grid_->tp()}; }

  Tensor random(const Shape& shape, uint64_t seed, DType dtype = DType::kF32) {
    return random_tensor(*cpu_, shape, dtype, seed);
  }
  // This rank's block of dim 0 (a copy), when `split`; else a copy of the whole.
  Tensor own_rows(TensorView full, bool split = true) {
    const int64_t parts = split ? tp() : 1, rows = full.shape[0] / parts;
    Tensor out(*cpu_, full.shape.with_dim(0, rows), full.dtype);
    const int64_t per_row = full.numel() / full.shape[0];
    cpu_->copy(
        out.view().reshaped(Shape({rows, per_row})),
        full.reshaped(Shape({full.shape[0], per_row})).rows(split ? rows * tp_rank() : 0, rows));
    return out;
  }
  void expect_close(TensorView actual, TensorView expected, const std::string& what,
                    double tol = kTol) {
    ASSERT_EQ(actual.shape, expected.shape) << what;
    EXPECT_LE(max_rel_error(to_host(*cpu_, actual), to_host(*cpu_, expected)), tol)
        << what << " on tp rank " << tp_rank() << " of " << tp();
  }
  void expect_same_grads(const std::vector<Parameter*>& actual,
                         const std::vector<Parameter*>& expected, const std::string& what) {
    ASSERT_EQ(actual.size(), expected.size());
    for (size_t i = 0; i < actual.size(); ++i) {
      ASSERT_EQ(actual[i]->name, expected[i]->name);
      expect_close(actual[i]->grad, expected[i]->grad, what + " " + actual[i]->name + " grad");
    }
  }

  std::unique_ptr<Backend> cpu_ = make_test_backend();  // the engine WEFT_TEST_BACKEND names
  std::unique_ptr<ParallelGrid> grid_;
  int tp_ = 1;
};

class SequenceParallelTest : public SpFixture, public ::testing::WithParamInterface<int> {
 protected:
  void SetUp() override {
    if (!make_grid(GetParam())) GTEST_SKIP() << "world size not divisible by tp";
  }
};

// ---------------------------------------------------------------------------------------------
// Mappings and the async group

TEST_P(SequenceParallelTest, RowMappingsAreDualCollectives) {
  const int64_t rows = 3, cols = 5;
  auto filled = [&](int64_t n, const std::function<float(int64_t, int64_t)>& value) {
    return from_host(*cpu_, Shape({n, cols}), DType::kF32,
                     [&](int64_t i) { return value(i / cols, i % cols); });
  };
  // gather_rows: rank j's block lands at rows [j*rows, (j+1)*rows).
  Tensor local = filled(rows, [&](int64_t r, int64_t c) { return 1000 * tp_rank() + 10 * r + c; });
  Tensor full = gather_rows(ctx(), local);
  ASSERT_EQ(full.shape(), Shape({rows * tp(), cols}));
  const auto fv = to_host(*cpu_, full);
  for (int64_t r = 0; r < rows * tp(); ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      ASSERT_EQ(fv[r * cols + c], 1000 * (r / rows) + 10 * (r % rows) + c);
    }
  }
  // split_rows undoes it; reduce_scatter_rows sums the ranks' partial blocks.
  EXPECT_EQ(to_host(*cpu_, split_rows(ctx(), full)), to_host(*cpu_, local));
  Tensor partial =
      filled(rows * tp(), [&](int64_t r, int64_t c) { return (tp_rank() + 1) * (r + 2 * c); });
  Tensor summed = reduce_scatter_rows(ctx(), partial);
  ASSERT_EQ(summed.shape(), Shape({rows, cols}));
  const int t = tp();
  const auto sv = to_host(*cpu_, summed);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      ASSERT_EQ(sv[r * cols + c], t * (t + 1) / 2 * (tp_rank() * rows + r + 2 * c));
    }
  }
  if (tp() > 1) {
    Tensor odd = filled(rows * tp() + 1, [](int64_t r, int64_t c) { return float(r + c); });
    EXPECT_THROW(reduce_scatter_rows(ctx(), odd), Error);
    EXPECT_THROW(split_rows(ctx(), odd), Error);
  }
}

TEST_P(SequenceParallelTest, AsyncGroupRingExchangeCompletesAtWait) {
  Communicator& comm = grid_->tp();
  const int next = (tp_rank() + 1) % tp(), prev = (tp_rank() + tp() - 1) % tp();
  // Large enough for a rendezvous transfer (MPI progresses it only inside MPI calls).
  const int64_t n = 1 << 16;
  Tensor send = from_host(*cpu_, Shape({n}), DType::kF32,
                          [&](int64_t i) { return float(tp_rank() * n + i); });
  Tensor recv(*cpu_, Shape({n}), DType::kF32);
  comm.group_start();
  comm.send(send, next, cpu_->stream());
  comm.recv(recv, prev, cpu_->stream());
  std::unique_ptr<PendingGroup> pending = comm.group_end_async();
  for (int i = 0; i < 100 && !pending->test(); ++i) {
  }
  pending->wait();
  EXPECT_TRUE(pending->test());
  const auto rv = to_host(*cpu_, recv);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(rv[i], float(prev * n + i));
  // Only the outermost group can end asynchronously.
  comm.group_start();
  comm.group_start();
  EXPECT_THROW(comm.group_end_async(), Error);
  comm.group_end();
  comm.group_end();
}

TEST_P(SequenceParallelTest, AnUnwaitedAsyncGroupIsCompleteWhenDestroyed) {
  Communicator& comm = grid_->tp();
  const int next = (tp_rank() + 1) % tp(), prev = (tp_rank() + tp() - 1) % tp();
  const int64_t n = 1 << 16;  // a rendezvous transfer, as above
  Tensor send(*cpu_, Shape({n}), DType::kF32);
  Tensor recv(*cpu_, Shape({n}), DType::kF32);
  cpu_->fill(recv, NAN);
  for (int64_t i = 0; i < n; ++i) send.as<float>()[i] = float(tp_rank() * n + i);
  comm.group_start();
  comm.send(send, next, cpu_->stream());
  comm.recv(recv, prev, cpu_->stream());
  comm.group_end_async().reset();  // destroyed without wait(): the contract completes it
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(recv.as<float>()[i], float(prev * n + i));
}

// A consume() that throws (on every rank alike) leaves the ring step's transfer complete before
// the exception leaves ring_all_gather_rows, so the buffers can be freed: the block received
// meanwhile is whole, and the communicator is in step for the next call.
TEST_P(SequenceParallelTest, RingStepCompletesItsTransferWhenConsumeThrows) {
  const int64_t rows = 64, cols = 512;  // 128 KiB blocks: rendezvous transfers
  auto value = [](int64_t row, int64_t c) { return float(row * cols + c); };
  Tensor local(*cpu_, Shape({rows, cols}), DType::kF32);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c)
      local.as<float>()[r * cols + c] = value(tp_rank() * rows + r, c);
  }
  struct ConsumeFailed : std::runtime_error {
    ConsumeFailed() : std::runtime_error("consume failed") {}
  };
  Tensor gathered(*cpu_, Shape({rows * tp(), cols}), DType::kF32);
  cpu_->fill(gathered, NAN);
  EXPECT_THROW(
      ring_all_gather_rows(
          ctx(), local, [](int, TensorView, const OverlapProgress&) { throw ConsumeFailed(); },
          gathered),
      ConsumeFailed);
  // Step 0 received the previous rank's block while consuming this rank's own.
  const int prev = (tp_rank() + tp() - 1) % tp();
  for (int block : {tp_rank(), prev}) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t row = block * rows + r;
        ASSERT_EQ(gathered.as<float>()[row * cols + c], value(row, c)) << "block " << block;
      }
    }
  }
  Tensor again(*cpu_, Shape({rows * tp(), cols}), DType::kF32);
  cpu_->fill(again, NAN);
  ring_all_gather_rows(
      ctx(), local, [](int, TensorView, const OverlapProgress&) {}, again);
  for (int64_t i = 0; i < again.numel(); ++i) {
    ASSERT_EQ(again.as<float>()[i], value(i / cols, i % cols)) << "element " << i;
  }
}

// ---------------------------------------------------------------------------------------------
// Fused ops against the collective + GEMM they replace

class OverlapOpsTest : public SpFixture,
                       public ::testing::WithParamInterface<std::tuple<int, DType>> {
 protected:
  void SetUp() override {
    if (!make_grid(std::get<0>(GetParam()))) GTEST_SKIP() << "world size not divisible by tp";
  }
  DType dtype() const { return std::get<1>(GetParam()); }
  double tol() const { return dtype() == DType::kF32 ? kTol : 2e-2; }
};

TEST_P(OverlapOpsTest, AllGatherGemmEqualsAllGatherThenGemm) {
  // Uneven-looking shapes; 70 rows per block also splits the host-progressed GEMMs in pieces.
  for (int64_t block_rows : {int64_t{5}, int64_t{70}}) {
    const int64_t k = 13, n = 11, m = block_rows * tp();
    SCOPED_TRACE(::testing::Message() << "m=" << m << " k=" << k << " n=" << n);
    Tensor a_full = random(Shape({m, k}), 1, dtype()), b = random(Shape({n, k}), 2, dtype());
    Tensor bias = random(Shape({n}), 3, dtype());
    Tensor a = own_rows(a_full);
    for (Epilogue epilogue : {Epilogue::kNone, Epilogue::kBiasGelu}) {
      GemmArgs g;
      g.b = b;
      g.transpose_b = true;
      g.epilogue = epilogue;
      if (epilogue == Epilogue::kBiasGelu) g.bias = bias;
      // Reference: all_gather, then one GEMM.
      Tensor gathered_ref = gather_rows(ctx(), a);
      Tensor expected(*cpu_, Shape({m, n}), dtype()), expected_pre(*cpu_, Shape({m, n}), dtype());
      GemmArgs plain = g;
      plain.a = gathered_ref;
      plain.c = expected;
      if (epilogue == Epilogue::kBiasGelu) plain.gelu_input = expected_pre;
      cpu_->gemm(plain);

      Tensor out(*cpu_, Shape({m, n}), dtype()), pre(*cpu_, Shape({m, n}), dtype());
      Tensor gathered(*cpu_, Shape({m, k}), dtype());
      GemmArgs fused = g;
      fused.a = a;
      fused.c = out;
      if (epilogue == Epilogue::kBiasGelu) fused.gelu_input = pre;
      all_gather_gemm(ctx(), fused, gathered);
      EXPECT_EQ(to_host(*cpu_, gathered), to_host(*cpu_, a_full)) << "gathered input";
      expect_close(out, expected, "all_gather_gemm output", tol());
      if (epilogue == Epilogue::kBiasGelu) expect_close(pre, expected_pre, "gelu input", tol());
    }
  }
}

TEST_P(OverlapOpsTest, GemmReduceScatterEqualsGemmThenReduceScatter) {
  for (int64_t block_rows : {int64_t{3}, int64_t{70}}) {
    const int64_t k = 9, n = 17, m = block_rows * tp();
    SCOPED_TRACE(::testing::Message() << "m=" << m << " k=" << k << " n=" << n);
    // Each rank's own A (its share of the inner dimension): the reduction is over ranks.
    Tensor a = random(Shape({m, k}), 10 + tp_rank(), dtype()),
           b = random(Shape({n, k}), 20, dtype());
    GemmArgs g;
    g.a = a;
    g.b = b;
    g.transpose_b = true;
    Tensor partial(*cpu_, Shape({m, n}), dtype());
    GemmArgs plain = g;
    plain.c = partial;
    cpu_->gemm(plain);
    Tensor expected = reduce_scatter_rows(ctx(), partial);

    Tensor out(*cpu_, Shape({block_rows, n}), dtype());
    g.c = out;
    gemm_reduce_scatter(ctx(), g);
    expect_close(out, expected, "gemm_reduce_scatter output", tol());
  }
}

TEST_P(OverlapOpsTest, FusedOpsRejectWhatTheyCannotSplit) {
  Tensor a = random(Shape({4, 3}), 1), b = random(Shape({5, 3}), 2);
  Tensor c(*cpu_, Shape({4 * tp(), 5}), DType::kF32);
  GemmArgs g;
  g.a = a;
  g.b = b;
  g.transpose_b = true;
  g.c = c;
  g.transpose_a = true;
  EXPECT_THROW(all_gather_gemm(ctx(), g), Error);
  g.transpose_a = false;
  g.epilogue = Epilogue::kBias;
  EXPECT_THROW(gemm_reduce_scatter(ctx(), g), Error);
  world().barrier();
}

// ---------------------------------------------------------------------------------------------
// Layers: sequence parallel and overlapped against the plain twin

TEST_P(SequenceParallelTest, ColumnAndRowLinearEqualThePlainLayers) {
  constexpr int64_t kSeq = 8, kBatch = 3, kIn = 12, kOut = 20;
  const int64_t tokens = kSeq * kBatch;
  for (Mode mode : kModes) {
    for (bool gelu : {false, true}) {
      SCOPED_TRACE(describe(mode) + " gelu=" + std::to_string(gelu));
      ColumnParallelLinearConfig cc;
      cc.in_features = kIn;
      cc.out_features = kOut;
      cc.activation = gelu ? Activation::kGelu : Activation::kNone;
      cc.init_std = 0.3f;
      RowParallelLinearConfig rc;
      rc.in_features = kOut;
      rc.out_features = kIn;
      rc.init_std = 0.3f;
      ColumnParallelLinear col_ref(ctx(), cc);
      RowParallelLinear row_ref(ctx(), rc);
      cc.sequence_parallel = rc.sequence_parallel = mode.sequence_parallel;
      cc.tp_comm_overlap = rc.tp_comm_overlap = mode.overlap;
      ColumnParallelLinear col(ctx(), cc);
      RowParallelLinear row(ctx(), rc);
      // Biases start at zero: give them values so that their handling shows.
      for (auto [p, q] :
           {std::pair{col.bias(), col_ref.bias()}, std::pair{row.bias(), row_ref.bias()}}) {
        cpu_->fill_random(p->value, RandomFill{Distribution::kNormal, 7, 0, 0.0, 0.5});
        cpu_->copy(q->value, p->value);
      }

      // 3D [seq, batch, in]: dim 0 (positions) is the one split.
      Tensor x = random(Shape({kSeq, kBatch, kIn}), 31),
             dy = random(Shape({kSeq, kBatch, kIn}), 32);
      const bool sp = mode.sequence_parallel;
      Tensor x_in = own_rows(x, sp), dy_in = own_rows(dy, sp);
      ColumnParallelLinear::Saved col_ref_saved, col_saved;
      RowParallelLinear::Saved row_ref_saved, row_saved;
      Tensor h_ref = col_ref.forward(x, col_ref_saved);
      Tensor y_ref = row_ref.forward(h_ref, row_ref_saved);
      Tensor h = col.forward(x_in, col_saved);
      expect_close(h, h_ref, "column output (all rows)");
      Tensor y = row.forward(h, row_saved);
      expect_close(y, own_rows(y_ref, sp), "row output");
      // Activation memory: the column layer keeps only its own rows of the input.
      EXPECT_EQ(col_saved.bytes(),
                (tokens / (sp ? tp() : 1) * kIn + (gelu ? tokens * kOut / tp() : 0)) * 4);

      Tensor dh_ref = row_ref.backward(dy, row_ref_saved);
      Tensor dx_ref = col_ref.backward(dh_ref, col_ref_saved);
      Tensor dh = row.backward(dy_in, row_saved);
      expect_close(dh, dh_ref, "row input grad (all rows)");
      Tensor dx = col.backward(dh, col_saved);
      expect_close(dx, own_rows(dx_ref, sp), "column input grad");
      expect_same_grads(col.parameters(), col_ref.parameters(), "column");
      expect_same_grads(row.parameters(), row_ref.parameters(), "row");
    }
  }
}

TEST_P(SequenceParallelTest, NormGradientsAreSummedOverTheSequenceShards) {
  // Megatron-LM issue 1446: with sequence parallelism each rank's norm sees its own rows, and
  // without the all-reduce its gamma/beta gradients would be that block's share only (and differ
  // between ranks). They must equal the gradient over all rows.
  constexpr int64_t kRows = 12, kHidden = 10;
  for (NormKind kind : {NormKind::kLayerNorm, NormKind::kRMSNorm}) {
    SCOPED_TRACE(kind == NormKind::kLayerNorm ? "layer norm" : "rms norm");
    NormConfig config;
    config.hidden = kHidden;
    config.kind = kind;
    config.replicas = tp();
    Norm ref(ctx(), config);
    config.sequence_parallel = true;
    Norm norm(ctx(), config);
    Tensor x = random(Shape({kRows * tp(), kHidden}), 41);
    Tensor dy = random(Shape({kRows * tp(), kHidden}), 42);
    Norm::Saved ref_saved, saved;
    Tensor y_ref = ref.forward(x, ref_saved);
    Tensor dx_ref = ref.backward(dy, ref_saved);
    Tensor x_own = own_rows(x), dy_own = own_rows(dy);
    Tensor y = norm.forward(x_own, saved);
    expect_close(y, own_rows(y_ref), "norm output");
    expect_close(norm.backward(dy_own, saved), own_rows(dx_ref), "norm input grad");
    expect_same_grads(norm.parameters(), ref.parameters(), "norm");
    if (tp() > 1) {
      // The check above is strong enough to see a missing reduction: one block's share is far
      // from the whole.
      NormConfig plain = config;
      plain.sequence_parallel = false;
      Norm unreduced(ctx(), plain);
      Norm::Saved unreduced_saved;
      unreduced.forward(x_own, unreduced_saved);
      unreduced.backward(dy_own, unreduced_saved);
      EXPECT_GT(max_rel_error(to_host(*cpu_, unreduced.parameters()[0]->grad),
                              to_host(*cpu_, ref.parameters()[0]->grad)),
                1e-2);
    }
  }
}

TEST_P(SequenceParallelTest, MlpEqualsThePlainMlp) {
  constexpr int64_t kSeq = 4, kBatch = 2, kHidden = 8, kFfn = 16;
  for (MlpActivation activation : {MlpActivation::kGelu, MlpActivation::kSwiGLU}) {
    for (Mode mode : kModes) {
      SCOPED_TRACE(describe(mode) + (activation == MlpActivation::kGelu ? " gelu" : " swiglu"));
      ParallelMLPConfig config;
      config.hidden = kHidden;
      config.ffn_hidden = kFfn;
      config.activation = activation;
      config.init_std = config.output_init_std = 0.3f;
      ParallelMLP ref(ctx(), config);
      config.sequence_parallel = mode.sequence_parallel;
      config.tp_comm_overlap = mode.overlap;
      ParallelMLP mlp(ctx(), config);
      Tensor x = random(Shape({kSeq * kBatch, kHidden}), 51);
      Tensor dy = random(Shape({kSeq * kBatch, kHidden}), 52);
      const bool sp = mode.sequence_parallel;
      ParallelMLP::Saved ref_saved, saved;
      Tensor y_ref = ref.forward(x, ref_saved);
      Tensor dx_ref = ref.backward(dy, ref_saved);
      Tensor x_in = own_rows(x, sp), dy_in = own_rows(dy, sp);
      expect_close(mlp.forward(x_in, saved), own_rows(y_ref, sp), "mlp output");
      expect_close(mlp.backward(dy_in, saved), own_rows(dx_ref, sp), "mlp input grad");
      expect_same_grads(mlp.parameters(), ref.parameters(), "mlp");
    }
  }
}

TEST_P(SequenceParallelTest, AttentionEqualsThePlainAttention) {
  constexpr int64_t kSeq = 8, kBatch = 2, kHidden = 16;
  struct Case {
    int64_t heads, kv_heads;
    bool rotary;
  };
  // Multi-head; grouped-query with 2 kv heads (split at tp 2, replicated at tp 4).
  for (Case c : {Case{4, 4, false}, Case{4, 2, true}}) {
    for (Mode mode : kModes) {
      SCOPED_TRACE(describe(mode) + " heads=" + std::to_string(c.heads) +
                   " kv_heads=" + std::to_string(c.kv_heads));
      ParallelAttentionConfig config;
      config.hidden = kHidden;
      config.heads = c.heads;
      config.kv_heads = c.kv_heads;
      config.rotary = c.rotary;
      config.init_std = config.output_init_std = 0.3f;
      ParallelAttention ref(ctx(), config);
      config.sequence_parallel = mode.sequence_parallel;
      config.tp_comm_overlap = mode.overlap;
      ParallelAttention attention(ctx(), config);
      Tensor x = random(Shape({kSeq * kBatch, kHidden}), 61);
      Tensor dy = random(Shape({kSeq * kBatch, kHidden}), 62);
      const bool sp = mode.sequence_parallel;
      ParallelAttention::Saved ref_saved, saved;
      Tensor y_ref = ref.forward(x, kSeq, kBatch, ref_saved);
      Tensor dx_ref = ref.backward(dy, ref_saved);
      Tensor x_in = own_rows(x, sp), dy_in = own_rows(dy, sp);
      expect_close(attention.forward(x_in, kSeq, kBatch, saved), own_rows(y_ref, sp),
                   "attention output");
      expect_close(attention.backward(dy_in, saved), own_rows(dx_ref, sp), "attention input grad");
      expect_same_grads(attention.parameters(), ref.parameters(), "attention");
    }
  }
}

TEST_P(SequenceParallelTest, EmbeddingAndLmHeadEqualThePlainOnes) {
  constexpr int64_t kSeq = 4, kBatch = 3, kHidden = 8, kVocab = 30;
  for (Mode mode : kModes) {
    SCOPED_TRACE(describe(mode));
    VocabParallelEmbeddingConfig config;
    config.vocab_size = kVocab;
    config.hidden = kHidden;
    config.pad_multiple = 4;
    config.init_std = 0.5f;
    VocabParallelEmbedding ref(ctx(), config);
    config.sequence_parallel = mode.sequence_parallel;
    config.tp_comm_overlap = mode.overlap;
    VocabParallelEmbedding emb(ctx(), config);
    Tensor ids = from_host(*cpu_, Shape({kSeq * kBatch}), DType::kI32,
                           [&](int64_t t) { return (t * 7 + 3) % kVocab; });
    const bool sp = mode.sequence_parallel;
    VocabParallelEmbedding::Saved ref_saved, saved;
    expect_close(emb.forward(ids, saved), own_rows(ref.forward(ids, ref_saved), sp),
                 "embedding output");
    Tensor dy = random(Shape({kSeq * kBatch, kHidden}), 71);
    ref.backward(dy, ref_saved);
    emb.backward(own_rows(dy, sp), saved);
    Tensor h = random(Shape({kSeq * kBatch, kHidden}), 72), h_in = own_rows(h, sp);
    VocabParallelEmbedding::HeadSaved ref_head, head;
    expect_close(emb.lm_head_forward(h_in, head), ref.lm_head_forward(h, ref_head),
                 "lm head logits (all rows)");
    Tensor dlogits = random(Shape({kSeq * kBatch, ref.local_vocab_size()}), 73 + tp_rank());
    expect_close(emb.lm_head_backward(dlogits, head),
                 own_rows(ref.lm_head_backward(dlogits, ref_head), sp), "lm head input grad");
    expect_same_grads(emb.parameters(), ref.parameters(), "embedding");
  }
}

// ---------------------------------------------------------------------------------------------
// Whole models

constexpr int64_t kSeq = 8, kBatch = 2;

GPTConfig tiny_config(const std::string& preset, int tp, Mode mode = {false, false}) {
  GPTConfig c = tiny_gpt_config(preset, kSeq);
  c.vocab_size = 64;
  c.sequence_parallel = mode.sequence_parallel;
  c.tp_comm_overlap = mode.overlap;
  c.finalize(tp);
  return c;
}

// Deterministic batches with structure to learn: identical on every rank.
void fill_batch(Backend& backend, Tensor& ids, Tensor& targets, int64_t step) {
  // Row s * kBatch + b holds position s of sequence b.
  const auto token = [&](int64_t row, int64_t shift) {
    return ((row / kBatch + shift) * 5 + (row % kBatch) * 11 + step * 3) % 64;
  };
  backend.copy(
      ids, from_host(backend, ids.shape(), DType::kI32, [&](int64_t r) { return token(r, 0); }));
  backend.copy(targets, from_host(backend, targets.shape(), DType::kI32,
                                  [&](int64_t r) { return token(r, 1); }));
}

class SequenceParallelModelTest : public SequenceParallelTest {
 protected:
  struct Run {
    Run(Backend& backend, Communicator& tp, const GPTConfig& config)
        : ctx{backend, tp},
          model(ctx, config),
          optimizer(backend, model.parameters(), AdamWConfig{}),
          rng(config.seed, tp.rank()),
          ids(backend, Shape({kSeq * kBatch}), DType::kI32),
          targets(backend, Shape({kSeq * kBatch}), DType::kI32) {}
    float step(Backend& backend, int64_t s) {
      zero_grads(backend, model.parameters());
      fill_batch(backend, ids, targets, s);
      GPTModel::Saved saved;
      const float loss = model.forward(ids, targets, kSeq, kBatch, rng, saved);
      model.backward(saved);
      const float norm = optimizer.grad_norm(ctx.tp);
      optimizer.step(cosine_lr(s + 1, 2, 20, 3e-3f, 3e-4f), clip_coefficient(norm, 1.0f));
      return loss;
    }
    ParallelContext ctx;
    GPTModel model;
    AdamW optimizer;
    DropoutRng rng;
    Tensor ids, targets;
  };
};

TEST_P(SequenceParallelModelTest, LossAndEveryGradientEqualThePlainModel) {
  for (const char* preset : {"gpt2", "llama"}) {
    for (Mode mode : kModes) {
      SCOPED_TRACE(std::string(preset) + " " + describe(mode));
      GPTConfig plain = tiny_config(preset, tp());
      plain.dropout = 0.1f;  // the sequence-parallel masks must be the same masks
      GPTConfig config = tiny_config(preset, tp(), mode);
      config.dropout = 0.1f;
      Run ref(*cpu_, grid_->tp(), plain), run(*cpu_, grid_->tp(), config);
      fill_batch(*cpu_, ref.ids, ref.targets, 0);
      fill_batch(*cpu_, run.ids, run.targets, 0);
      GPTModel::Saved ref_saved, saved;
      const float loss_ref =
          ref.model.forward(ref.ids, ref.targets, kSeq, kBatch, ref.rng, ref_saved);
      const float loss = run.model.forward(run.ids, run.targets, kSeq, kBatch, run.rng, saved);
      EXPECT_NEAR(loss, loss_ref, 1e-5 * std::abs(loss_ref));
      ref.model.backward(ref_saved);
      run.model.backward(saved);
      expect_same_grads(run.model.parameters(), ref.model.parameters(), "model");
    }
  }
}

TEST_P(SequenceParallelModelTest, LossCurveEqualsThePlainOne) {
  // 20 steps of AdamW, f32, dropout 0: sequence parallelism and overlap each alone and together.
  for (const char* preset : {"gpt2", "llama"}) {
    std::vector<float> expected;
    {
      Run ref(*cpu_, grid_->tp(), tiny_config(preset, tp()));
      for (int64_t s = 0; s < 20; ++s) expected.push_back(ref.step(*cpu_, s));
    }
    EXPECT_LT(expected.back(), expected.front()) << "the loss must fall";
    for (Mode mode : kModes) {
      SCOPED_TRACE(std::string(preset) + " " + describe(mode));
      Run run(*cpu_, grid_->tp(), tiny_config(preset, tp(), mode));
      for (int64_t s = 0; s < 20; ++s) {
        const float loss = run.step(*cpu_, s);
        EXPECT_NEAR(loss, expected[s], 1e-4 * std::abs(expected[s])) << "step " << s;
      }
    }
  }
}

TEST_P(SequenceParallelModelTest, ReplicatedParametersStayIdenticalAcrossTpRanks) {
  if (tp() == 1) GTEST_SKIP() << "one rank";
  for (const char* preset : {"gpt2", "llama"}) {
    SCOPED_TRACE(preset);
    Run run(*cpu_, grid_->tp(), tiny_config(preset, tp(), {true, true}));
    for (int64_t s = 0; s < 3; ++s) run.step(*cpu_, s);
    for (Parameter* p : run.model.parameters()) {
      if (p->replica_count != tp()) continue;  // norms, row biases, positions
      const std::vector<double> mine = to_host(*cpu_, p->value);
      Tensor lo = from_host(*cpu_, Shape({int64_t(mine.size())}), DType::kF32,
                            [&](int64_t i) { return mine[i]; });
      Tensor hi = from_host(*cpu_, lo.shape(), DType::kF32, [&](int64_t i) { return mine[i]; });
      grid_->tp().all_reduce(lo, lo, ReduceOp::kMin, cpu_->stream());
      grid_->tp().all_reduce(hi, hi, ReduceOp::kMax, cpu_->stream());
      EXPECT_EQ(to_host(*cpu_, lo), to_host(*cpu_, hi)) << p->name << " differs across TP ranks";
    }
  }
}

TEST_P(SequenceParallelModelTest, DecodingWithTheKvCacheIgnoresSequenceParallelism) {
  // The same parameters with or without sequence parallelism: the same logits.
  GPTConfig plain = tiny_config("gpt2", tp()), config = tiny_config("gpt2", tp(), {true, true});
  Run ref(*cpu_, grid_->tp(), plain), run(*cpu_, grid_->tp(), config);
  // seq 3: not divisible
  Tensor prompt = from_host(*cpu_, Shape({3}), DType::kI32, [](int64_t i) { return 5 + 7 * i; });
  KVCache ref_cache = ref.model.new_cache(1, kSeq), run_cache = run.model.new_cache(1, kSeq);
  const std::vector<float> a = ref.model.next_token_logits(prompt, 3, ref_cache);
  const std::vector<float> b = run.model.next_token_logits(prompt, 3, run_cache);
  EXPECT_EQ(a, b);
  // Training passes still run sequence parallel afterwards.
  fill_batch(*cpu_, run.ids, run.targets, 0);
  fill_batch(*cpu_, ref.ids, ref.targets, 0);
  EXPECT_NEAR(run.model.forward(run.ids, run.targets, kSeq, kBatch, run.rng),
              ref.model.forward(ref.ids, ref.targets, kSeq, kBatch, ref.rng), 1e-4);
}

TEST_P(SequenceParallelModelTest, ActivationMemoryMatchesOurSavedSet) {
  // One gpt2 layer in bf16 (2-byte activations), multi-head: what forward keeps for backward,
  // per rank. Without sequence parallelism: the two norm inputs, the QKV and fc1 inputs (2sbh
  // each: 8sbh replicated), q/k/v (6sbh/t), the attention output (2sbh/t), the GeLU input and
  // output (8sbh/t each), the attention's f32 log-sum-exp per query row (4 a s b / t; no s^2
  // softmax) and the LayerNorms' f32 mean and rstd (16 sb). With it, all of it / t. Selective
  // recomputation keeps all but the attention output (2sbh/t, recomputed in backward); full
  // recomputation of a one-layer stage keeps its input (2sbh, / t with sequence parallelism).
  const int64_t s = 16, b = 2, h = 32, a = 4, t = tp();
  for (Recompute recompute : {Recompute::kNone, Recompute::kSelective, Recompute::kFull}) {
    for (bool sp : {false, true}) {
      SCOPED_TRACE(std::string(sp ? "sequence parallel" : "tensor parallel only") + " recompute " +
                   recompute_name(recompute));
      GPTConfig config = tiny_config("gpt2", tp(), {sp, false});
      config.hidden = h;
      config.heads = a;
      config.max_seq = s;
      config.dtype = DType::kBF16;
      config.recompute = recompute;
      config.finalize(tp());
      DropoutRng rng(1, tp_rank());
      Tensor x = random(Shape({s * b / (sp ? t : 1), h}), 81, DType::kBF16);
      const int64_t sbh = s * b * h;
      int64_t expected = sp ? (32 * sbh + 4 * a * s * b + 16 * s * b) / t
                            : 8 * sbh + 24 * sbh / t + 4 * a * s * b / t + 16 * s * b;
      if (recompute == Recompute::kSelective) expected -= 2 * sbh / t;
      if (recompute == Recompute::kFull) {
        // A middle pipeline stage of one layer.
        GPTModel stage(ctx(), config, GPTStageLayout{0, 1, false, false});
        GPTModel::Saved saved;
        Tensor y = stage.forward_stage(x, TensorView{}, s, b, rng, saved);
        EXPECT_EQ(saved.bytes(), 2 * sbh / (sp ? t : 1));
        stage.recompute(saved);  // then everything, as without recomputation
        EXPECT_EQ(saved.bytes(), expected);
        continue;
      }
      TransformerLayer layer(ctx(), config, 0);
      TransformerLayer::Saved saved;
      Tensor y = layer.forward(x, s, b, rng, saved);
      EXPECT_EQ(saved.bytes(), expected);
    }
  }
}

TEST_P(SequenceParallelModelTest, SeqNotDivisibleByTpIsAClearErrorOnEveryRank) {
  if (tp() == 1) GTEST_SKIP() << "every length divides by 1";
  Run run(*cpu_, grid_->tp(), tiny_config("gpt2", tp(), {true, false}));
  const int64_t seq = tp() + 1;  // <= max_seq
  Tensor ids =
      from_host(*cpu_, Shape({seq * kBatch}), DType::kI32, [](int64_t i) { return i % 64; });
  try {
    run.model.forward(ids, ids, seq, kBatch, run.rng);
    ADD_FAILURE() << "expected weft::Error";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("seq " + std::to_string(seq)), std::string::npos) << what;
    EXPECT_NE(what.find("tp " + std::to_string(tp())), std::string::npos) << what;
  }
  ParallelAttentionConfig config;
  config.hidden = 16;
  config.heads = 4;
  config.sequence_parallel = true;
  ParallelAttention attention(ctx(), config);
  Tensor x = random(Shape({seq * kBatch / tp(), 16}), 91);
  EXPECT_THROW(attention.forward(x, seq, kBatch), Error);
  // Nobody was left inside a collective: the group still works.
  EXPECT_EQ(all_reduce_scalar(grid_->tp(), *cpu_, 1.0f, ReduceOp::kSum), float(tp()));
}

INSTANTIATE_TEST_SUITE_P(TP, SequenceParallelTest, ::testing::Values(1, 2, 4),
                         [](const auto& info) { return "tp" + std::to_string(info.param); });
INSTANTIATE_TEST_SUITE_P(TP, SequenceParallelModelTest, ::testing::Values(1, 2, 4),
                         [](const auto& info) { return "tp" + std::to_string(info.param); });
INSTANTIATE_TEST_SUITE_P(TpAndDType, OverlapOpsTest, WEFT_TP_SIZES_AND_DTYPES, tp_dtype_name);

}  // namespace
}  // namespace weft::testing
