// activation_memory: the activation bytes one TransformerLayer keeps from forward to backward, per
// rank, with and without sequence parallelism, under each recompute policy, beside Korthikanti et
// al.'s formulas (2022, "Reducing Activation Recomputation in Large Transformer Models", Table 2,
// 2-byte activations):
//   tensor parallel alone   s b h (10 + 24/t + 5 a s / (h t))   selective: s b h (10 + 24/t)
//   + sequence parallel     (s b h / t) (34 + 5 a s / h)        selective: s b h 34 / t
//   full recomputation      2 s b h (the layer input; / t with sequence parallelism)
//
// Measured exactly: the bytes of the distinct tensors a forward's saved state holds
// (TransformerLayer::Saved::bytes(): its norms', attention's and MLP's, their inputs included;
// under full recomputation GPTModel::Saved::bytes() of a one-layer pipeline stage).
// Our saved set differs from the paper's assumptions, so our own closed form is
//   tensor parallel alone   s b h (8 + 24/t) + 4 a s b / t + 16 s b   selective: - 2 s b h / t
//   + sequence parallel     (s b h / t) 32 + 4 a s b / t + 16 s b / t selective: - 2 s b h / t
// (selective recomputation drops the attention output, the core's forward re-run in backward)
// - No dropout masks: weft draws them again in backward from Philox (seed, offset), so the paper's
//   two 1-byte residual masks (2 s b h, in its 10 and 34) are not kept.
// - Nothing quadratic in s: the paper keeps the softmax (2 a s^2 b) and its dropout mask and
//   output (3 a s^2 b). weft has no attention dropout, and its attention saves only each query
//   row's f32 log-sum-exp (4 a s b / t per rank) and recomputes the probabilities in backward
//   (FlashAttention): 4 a s b in place of 5 a s^2 b.
// - The LayerNorms' f32 mean and rstd, 8 s b bytes per norm, which the paper leaves out.
// The rest is the same: the two norm inputs, the QKV and fc1 inputs (2 s b h each, replicated
// without sequence parallelism), q, k, v (6 s b h / t), the attention output (2 s b h / t) and the
// GeLU's input and output (8 + 8 s b h / t), split by heads or columns. Selective recomputation
// drops the attention output (2 s b h / t) and keeps the rest.
//
// Run with as many ranks as the largest TP size (here 1, 2 and 4 from one run of 4 ranks):
//   OMP_NUM_THREADS=1 mpirun -np 4 build/bin/activation_memory [seq batch hidden heads]
// (seq and hidden in [1, 65536], batch and heads in [1, 1024]; anything else exits with status 2)
// (as root mpirun also needs OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1, and
// --oversubscribe with more ranks than cores).
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <stdexcept>
#include <vector>

#include "weft/weft.hpp"

namespace {

double mib(double bytes) { return bytes / (1 << 20); }

// Bytes one rank keeps after one bf16 forward of a one-layer model chunk under `recompute`:
// a TransformerLayer's saved state, or (full recomputation) what a pipeline stage of that layer
// keeps, its input.
int64_t measure(weft::Backend& cpu, const weft::ParallelGrid& grid, weft::GPTConfig config,
                int64_t s, int64_t b) {
  const int t = grid.tp_size();
  const bool sp = config.sequence_parallel;
  weft::ParallelContext ctx{cpu, grid.tp()};
  weft::DropoutRng rng(1, grid.tp_rank());
  weft::Tensor x(cpu, weft::Shape({s * b / (sp ? t : 1), config.hidden}), weft::DType::kBF16);
  cpu.fill_random(x, weft::RandomFill{weft::Distribution::kNormal, 7, 0, 0.0, 1.0});
  if (config.recompute == weft::Recompute::kFull) {
    weft::GPTModel stage(ctx, config, weft::GPTStageLayout{0, 1, false, false});
    weft::GPTModel::Saved saved;
    weft::Tensor y = stage.forward_stage(x, weft::TensorView{}, s, b, rng, saved);
    return saved.bytes();
  }
  weft::TransformerLayer layer(ctx, config, 0);
  weft::TransformerLayer::Saved saved;
  weft::Tensor y = layer.forward(x, s, b, rng, saved);
  return saved.bytes();
}

// A bad command line: every rank parses the same one, so every rank exits with status 2 alike.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename... Args>
void usage_check(bool cond, const Args&... message) {
  if (!cond) throw UsageError("activation_memory: " + weft::detail::concat(message...));
}

// A positional argument: an integer in [1, max].
int64_t positional(const char* name, const char* text, int64_t max) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text, &end, 10);
  usage_check(*text != '\0' && *end == '\0' && errno == 0 && v >= 1 && v <= max, name,
              " expects an integer in [1, ", max, "], got '", text, "'");
  return v;
}

int run(int argc, char** argv) {
  std::unique_ptr<weft::Communicator> world = weft::make_mpi_world_communicator();
  int64_t s = 1024, b = 1, h = 1024, a = 16;
  if (argc != 1) {
    usage_check(argc == 5, "expects no arguments or four: seq batch hidden heads");
    s = positional("seq", argv[1], 1 << 16);
    b = positional("batch", argv[2], 1 << 10);
    h = positional("hidden", argv[3], 1 << 16);
    a = positional("heads", argv[4], 1 << 10);
    usage_check(h % a == 0, "hidden (", h, ") must be divisible by heads (", a, ")");
  }
  std::unique_ptr<weft::Backend> cpu = weft::make_cpu_backend();
  if (world->rank() == 0) {
    std::printf(
        "activation bytes of one gpt2 TransformerLayer per rank, bf16: s=%lld b=%lld h=%lld "
        "a=%lld (5as/h = %.0f)\n",
        static_cast<long long>(s), static_cast<long long>(b), static_cast<long long>(h),
        static_cast<long long>(a), 5.0 * a * s / h);
    std::printf("%3s %-9s | %12s %12s %14s | %12s %12s %14s | %9s\n", "t", "recompute",
                "TP measured", "TP ours", "TP Korthikanti", "SP measured", "SP ours",
                "SP Korthikanti", "SP saves");
  }
  const double sbh = static_cast<double>(s * b * h), sb = static_cast<double>(s * b);
  for (int t : {1, 2, 4, 8}) {
    if (world->size() % t != 0 || s % t != 0 || a % t != 0) continue;
    weft::ParallelGrid grid(*world, t);
    for (weft::Recompute recompute :
         {weft::Recompute::kNone, weft::Recompute::kSelective, weft::Recompute::kFull}) {
      double measured[2];
      for (bool sp : {false, true}) {
        weft::GPTConfig config = weft::GPTConfig::preset("gpt2");
        config.hidden = h;
        config.heads = a;
        config.max_seq = s;
        config.dtype = weft::DType::kBF16;
        config.sequence_parallel = sp;
        config.recompute = recompute;
        config.finalize(t);
        const auto bytes = static_cast<float>(measure(*cpu, grid, config, s, b));
        // Every rank of the TP group must hold the same amount.
        const float most = weft::all_reduce_scalar(grid.tp(), *cpu, bytes, weft::ReduceOp::kMax);
        const float least = weft::all_reduce_scalar(grid.tp(), *cpu, bytes, weft::ReduceOp::kMin);
        if (most != least) {
          std::fprintf(stderr, "ranks disagree: %g vs %g bytes\n", most, least);
          return 1;
        }
        measured[sp ? 1 : 0] = bytes;
      }
      // The attention core's share: ours keeps the f32 log-sum-exp (4 a s b / t), and selective
      // recomputation drops the attention output (2 s b h / t); the paper drops its 5 a s^2 b / t.
      const bool selective = recompute == weft::Recompute::kSelective;
      const double context = selective ? 0.0 : 2.0 * sbh / t;
      const double core_paper = recompute == weft::Recompute::kNone ? 5.0 * a * s / (h * t) : 0.0;
      double ours_tp = sbh * (8 + 22.0 / t) + context + 4.0 * a * sb / t + 16 * sb;
      double ours_sp = sbh / t * 30 + context + 4.0 * a * sb / t + 16 * sb / t;
      double paper_tp = sbh * (10 + 24.0 / t + core_paper);
      double paper_sp = sbh / t * (34 + core_paper * t);
      if (recompute == weft::Recompute::kFull) {  // the input of each layer: 2 s b h (/ t)
        ours_tp = paper_tp = 2 * sbh;
        ours_sp = paper_sp = 2 * sbh / t;
      }
      if (world->rank() == 0) {
        std::printf(
            "%3d %-9s | %8.1f MiB %8.1f MiB %10.1f MiB | %8.1f MiB %8.1f MiB %10.1f MiB | "
            "%8.2fx\n",
            t, weft::recompute_name(recompute), mib(measured[0]), mib(ours_tp), mib(paper_tp),
            mib(measured[1]), mib(ours_sp), mib(paper_sp), measured[0] / measured[1]);
      }
      if (std::abs(measured[0] - ours_tp) > 0.5 || std::abs(measured[1] - ours_sp) > 0.5) {
        if (world->rank() == 0) std::fprintf(stderr, "measured bytes differ from our formula\n");
        return 1;
      }
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  weft::MpiRuntime mpi(&argc, &argv);
  try {
    return run(argc, argv);
  } catch (const UsageError& e) {
    if (weft::error_rank() <= 0) std::fprintf(stderr, "%s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "activation_memory: %s\n", e.what());
    std::fflush(stderr);
    weft::MpiRuntime::abort(1);
  }
}
