// activation_memory: the activation bytes one TransformerLayer keeps from forward to backward, per
// rank, with and without sequence parallelism, beside Korthikanti et al.'s formulas (2022,
// "Reducing Activation Recomputation in Large Transformer Models", Table 2, 2-byte activations):
//   tensor parallel alone   s b h (10 + 24/t + 5 a s / (h t))
//   + sequence parallel     (s b h / t) (34 + 5 a s / h)
//
// Measured exactly: TransformerLayer::saved_activation_bytes() after one bf16 forward, the bytes
// of the distinct tensors its norms, attention and MLP keep for backward (their inputs included).
// Our saved set differs from the paper's assumptions, so our own closed form is
//   tensor parallel alone   s b h (8 + 24/t) + 4 a s b / t + 16 s b
//   + sequence parallel     (s b h / t) 32 + 4 a s b / t + 16 s b / t
// - No dropout masks: weft draws them again in backward from Philox (seed, offset), so the paper's
//   two 1-byte residual masks (2 s b h, in its 10 and 34) are not kept.
// - Nothing quadratic in s: the paper keeps the softmax (2 a s^2 b) and its dropout mask and
//   output (3 a s^2 b). weft has no attention dropout, and its attention saves only each query
//   row's f32 log-sum-exp (4 a s b / t per rank) and recomputes the probabilities in backward
//   (FlashAttention): 4 a s b in place of 5 a s^2 b.
// - The LayerNorms' f32 mean and rstd, 8 s b bytes per norm, which the paper leaves out.
// The rest is the same: the two norm inputs, the QKV and fc1 inputs (2 s b h each, replicated
// without sequence parallelism), q, k, v (6 s b h / t), the attention output (2 s b h / t) and the
// GeLU's input and output (8 + 8 s b h / t), split by heads or columns.
//
// Run with as many ranks as the largest TP size (here 1, 2 and 4 from one run of 4 ranks):
//   OMP_NUM_THREADS=1 mpirun -np 4 build/bin/activation_memory [seq batch hidden heads]
// (as root mpirun also needs OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1, and
// --oversubscribe with more ranks than cores).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <vector>

#include "weft/weft.hpp"

namespace {

double mib(double bytes) { return bytes / (1 << 20); }

int run(int argc, char** argv) {
  std::unique_ptr<weft::Communicator> world = weft::make_mpi_world_communicator();
  const int64_t s = argc > 4 ? std::atoll(argv[1]) : 1024, b = argc > 4 ? std::atoll(argv[2]) : 1,
                h = argc > 4 ? std::atoll(argv[3]) : 1024, a = argc > 4 ? std::atoll(argv[4]) : 16;
  std::unique_ptr<weft::Backend> cpu = weft::make_cpu_backend();
  if (world->rank() == 0) {
    std::printf(
        "activation bytes of one gpt2 TransformerLayer per rank, bf16: s=%lld b=%lld h=%lld "
        "a=%lld (5as/h = %.0f)\n",
        static_cast<long long>(s), static_cast<long long>(b), static_cast<long long>(h),
        static_cast<long long>(a), 5.0 * a * s / h);
    std::printf("%3s | %12s %12s %14s | %12s %12s %14s | %9s\n", "t", "TP measured", "TP ours",
                "TP Korthikanti", "SP measured", "SP ours", "SP Korthikanti", "SP saves");
  }
  const double sbh = static_cast<double>(s * b * h), sb = static_cast<double>(s * b);
  for (int t : {1, 2, 4, 8}) {
    if (world->size() % t != 0 || s % t != 0 || a % t != 0) continue;
    weft::ParallelGrid grid(*world, t);
    double measured[2];
    for (bool sp : {false, true}) {
      weft::GPTConfig config = weft::GPTConfig::preset("gpt2");
      config.hidden = h;
      config.heads = a;
      config.max_seq = s;
      config.dtype = weft::DType::kBF16;
      config.sequence_parallel = sp;
      config.finalize(t);
      weft::ParallelContext ctx{*cpu, grid.tp()};
      weft::TransformerLayer layer(ctx, config, 0);
      weft::DropoutRng rng(1, grid.tp_rank());
      weft::Tensor x(*cpu, weft::Shape({s * b / (sp ? t : 1), h}), weft::DType::kBF16);
      cpu->fill_random(x, weft::RandomFill{weft::Distribution::kNormal, 7, 0, 0.0, 1.0});
      weft::Tensor y = layer.forward(x, s, b, rng);
      const auto bytes = static_cast<float>(layer.saved_activation_bytes());
      // Every rank of the TP group must hold the same amount.
      const float most = weft::all_reduce_scalar(grid.tp(), *cpu, bytes, weft::ReduceOp::kMax);
      const float least = weft::all_reduce_scalar(grid.tp(), *cpu, bytes, weft::ReduceOp::kMin);
      if (most != least) {
        std::fprintf(stderr, "ranks disagree: %g vs %g bytes\n", most, least);
        return 1;
      }
      measured[sp ? 1 : 0] = layer.saved_activation_bytes();
    }
    const double ours_tp = sbh * (8 + 24.0 / t) + 4.0 * a * sb / t + 16 * sb;
    const double ours_sp = sbh / t * 32 + 4.0 * a * sb / t + 16 * sb / t;
    const double paper_tp = sbh * (10 + 24.0 / t + 5.0 * a * s / (h * t));
    const double paper_sp = sbh / t * (34 + 5.0 * a * s / h);
    if (world->rank() == 0) {
      std::printf(
          "%3d | %9.1f MiB %8.1f MiB %10.1f MiB | %8.1f MiB %8.1f MiB %10.1f MiB | %8.2fx\n", t,
          mib(measured[0]), mib(ours_tp), mib(paper_tp), mib(measured[1]), mib(ours_sp),
          mib(paper_sp), measured[0] / measured[1]);
    }
    if (std::abs(measured[0] - ours_tp) > 0.5 || std::abs(measured[1] - ours_sp) > 0.5) {
      if (world->rank() == 0) std::fprintf(stderr, "measured bytes differ from our formula\n");
      return 1;
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  weft::MpiRuntime mpi(&argc, &argv);
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "activation_memory: %s\n", e.what());
    std::fflush(stderr);
    weft::MpiRuntime::abort(1);
  }
}
