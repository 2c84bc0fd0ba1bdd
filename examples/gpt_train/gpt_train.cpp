// gpt_train: trains a Megatron-style GPT on a text file with tensor, pipeline and data
// parallelism (world = tp x dp x pp).
//
//   mpirun -np 2 build/bin/gpt_train --preset gpt2 --tp 2 --data FILE --steps 200
//   mpirun -np 4 build/bin/gpt_train --tp 2 --pp 2 --schedule 1f1b --global-batch 16 ...
//
// Rank 0 prints one line per step; --log-json writes one JSON object per step per line.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstdio>
#include <fstream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>
#include <vector>

#include "common/auto_layout.hpp"
#include "common/flags.hpp"
#include "common/launch.hpp"
#include "common/model_source.hpp"
#include "weft/checkpoint.hpp"
#include "weft/data.hpp"
#include "weft/gpt_checkpoint.hpp"
#include "weft/pipeline.hpp"
#include "weft/watchdog.hpp"
#include "weft/weft.hpp"

namespace {

using weft::Tensor;

constexpr int64_t kMaxRanks = 1 << 16;
constexpr int64_t kMaxSteps = int64_t{1} << 40;
using weft::TensorView;

struct Args {
  std::string preset = "gpt2", dtype = "f32", data, log_json, save, load, load_hf, trace;
  std::string tokenizer, inject_fault;
  std::string schedule = "1f1b", recompute = "none", layout = "manual", cluster;
  weft::examples::EngineFlags engine;  // --backend, --comm
  int64_t tp = 1, pp = 1, virtual_stages = 1, layers = 2, hidden = 128, heads = 4, kv_heads = 0;
  int64_t seq_len = 64;
  bool sequence_parallel = false, tp_comm_overlap = false;
  int64_t micro_batch = 4, global_batch = 0, steps = 100, seed = 1234, eval_interval = 0;
  int64_t eval_batches = 4, warmup = 0, save_interval = 0, keep_checkpoints = 3;
  double lr = 1e-3, min_lr = 0, dropout = 0, weight_decay = 0.1, clip_grad = 1.0;
  double comm_timeout = 300;
  std::vector<std::string> model_flags_given;  // of those --load overrides, the ones given
};

// The flags that name the model: a checkpoint's manifest overrides them all with --load.
const char* const kModelFlags[] = {"preset", "layers", "hidden", "heads", "kv-heads",
                                   "dtype",  "dropout", "seed"};

weft::examples::Flags make_flags(Args& a) {
  weft::examples::Flags f("gpt_train",
                          "Train a GPT with tensor, pipeline and data parallelism "
                          "(world = tp x dp x pp).");
  f.add("preset", &a.preset,
        "gpt2 (LayerNorm, learned positions, GeLU, MHA) or llama "
        "(RMSNorm, RoPE, SwiGLU, GQA)");
  f.add("tp", &a.tp, "tensor-parallel size", 1, kMaxRanks);
  f.add("pp", &a.pp, "pipeline-parallel size (stages)", 1, kMaxRanks);
  f.add("schedule", &a.schedule, "pipeline schedule: gpipe, 1f1b or interleaved");
  f.add("virtual-stages", &a.virtual_stages, "model chunks per pipeline rank (interleaved)", 1, 1024);
  f.add("sequence-parallel", &a.sequence_parallel,
        "split norm/dropout/residual activations along the sequence across TP ranks");
  f.add("tp-comm-overlap", &a.tp_comm_overlap,
        "overlap TP communication with the GEMMs (ring all-gather / reduce-scatter)");
  f.add("recompute", &a.recompute,
        "activation recomputation: none, selective (the attention core) or full (keep only each "
        "pipeline stage's input)");
  f.add("layout", &a.layout,
        "manual (the flags), or auto: the layout planner picks tp, pp, micro-batch, virtual "
        "stages, sequence parallelism and overlap for the ranks at hand");
  f.add("cluster", &a.cluster,
        "with --layout auto: a cluster file or built-in name (default: a quick calibration here)");
  f.add("trace", &a.trace, "write a Chrome/Perfetto trace of the pipeline to this file");
  f.add("layers", &a.layers, "transformer layers", 1, 1 << 20);
  f.add("hidden", &a.hidden, "hidden size", 1, 1 << 20);
  f.add("heads", &a.heads, "attention heads", 1, 1 << 16);
  f.add("kv-heads", &a.kv_heads, "key/value heads (0: preset default)", 0, 1 << 16);
  f.add("seq-len", &a.seq_len, "sequence length (also the model's maximum)", 2, 1 << 24);
  f.add("micro-batch", &a.micro_batch, "sequences per micro-batch per data-parallel rank", 1,
        1 << 20);
  f.add("global-batch", &a.global_batch,
        "sequences per step over all data-parallel ranks (0: micro-batch x dp)", 0, 1 << 30);
  f.add("steps", &a.steps, "optimizer steps (in total, counting a loaded checkpoint's)", 1,
        kMaxSteps);
  f.add("lr", &a.lr, "peak learning rate", 0.0, 1.0);
  f.add("min-lr", &a.min_lr, "learning rate at the end of the cosine decay (at most --lr)", 0.0,
        1.0);
  f.add("warmup", &a.warmup, "warmup steps (0: 5% of the steps; at most --steps)", 0, kMaxSteps);
  f.add("weight-decay", &a.weight_decay, "AdamW weight decay (matrices only)", 0.0, 1.0);
  f.add("clip-grad", &a.clip_grad, "clip the global gradient norm to this (0: off)", 0.0, 1e6);
  f.add("seed", &a.seed, "seed of initialization, data order and dropout", 0,
        std::numeric_limits<int64_t>::max());
  f.add("dtype", &a.dtype, "f32 or bf16 (compute; master weights stay f32)");
  f.add("dropout", &a.dropout, "dropout probability", 0.0, 0.99);
  a.engine.add_to(f);
  f.add("data", &a.data, "text file to train on (its bytes are the tokens without --tokenizer)");
  f.add("tokenizer", &a.tokenizer,
        "Hugging Face tokenizer.json (byte-level BPE): tokenises --data once, into a cache file "
        "next to it, and sets the vocabulary (default: the checkpoint's with --load, else bytes)");
  f.add("log-json", &a.log_json, "write one JSON object per step to this file (rank 0)");
  f.add("save", &a.save,
        "checkpoint root: each save goes to DIR/step-N, then DIR/latest points at it (at the end, "
        "and every --save-interval steps)");
  f.add("save-interval", &a.save_interval,
        "also save every N steps (0: only at the end; needs --save)", 0, kMaxSteps);
  f.add("keep-checkpoints", &a.keep_checkpoints,
        "complete checkpoints kept under --save, newest first (0: all)", 0, 1000000);
  f.add("load", &a.load,
        "resume from this checkpoint: a step directory, or a root (its latest complete save)");
  f.add("load-hf", &a.load_hf,
        "fine-tune a Hugging Face model: a GPT2LMHeadModel or LlamaForCausalLM directory "
        "(config.json + model.safetensors) sets the model and its weights (from step 0; "
        "--dtype, --dropout and --seed still apply)");
  f.add("eval-interval", &a.eval_interval, "validation loss every N steps (0: never)", 0, kMaxSteps);
  f.add("eval-batches", &a.eval_batches, "micro-batches per validation", 1, 1 << 20);
  f.add("comm-timeout", &a.comm_timeout,
        "seconds a rank may wait in one collective or send/recv before the job is aborted with a "
        "message naming it and its group (0: wait forever)",
        0.0, 86400.0);
  f.add("inject-fault", &a.inject_fault,
        "RANK:STEP:KIND, for testing: world rank RANK fails at the start of step STEP, KIND "
        "exit0, exit1, abort (SIGABRT), throw, hang or stop (SIGSTOP: the whole process, as a stalled "
        "node)");
  return f;
}

std::string args_json(const Args& a) {
  return nlohmann::json{{"preset", a.preset},
                        {"tp", a.tp},
                        {"pp", a.pp},
                        {"schedule", a.schedule},
                        {"virtual_stages", a.virtual_stages},
                        {"sequence_parallel", a.sequence_parallel},
                        {"tp_comm_overlap", a.tp_comm_overlap},
                        {"seq_len", a.seq_len},
                        {"micro_batch", a.micro_batch},
                        {"global_batch", a.global_batch},
                        {"steps", a.steps},
                        {"lr", a.lr},
                        {"min_lr", a.min_lr},
                        {"warmup", a.warmup},
                        {"weight_decay", a.weight_decay},
                        {"clip_grad", a.clip_grad},
                        {"seed", a.seed},
                        {"data", a.data},
                        {"tokenizer", a.tokenizer}}
      .dump();
}

// Peak dense matmul FLOP/s of the device, where known (for MFU); 0 when unknown.
double peak_flops(const std::string& backend_name, weft::DType dtype) {
  const bool hopper = backend_name.find("H100") != std::string::npos ||
                      backend_name.find("H200") != std::string::npos;
  if (!hopper) return 0.0;
  return dtype == weft::DType::kF32 ? 494.7e12 /* TF32 */ : 989.4e12;
}

// The measured bubble and peak activation memory of every pipeline stage beside the theory,
// and the trace file.
void report_pipeline(const Args& a, weft::PipelineModel& model, const weft::ParallelGrid& grid,
                     weft::Backend& backend, int64_t micro_batches, weft::PipelineTrace& trace) {
  if (!a.trace.empty()) {
    const bool main_group = grid.tp_rank() == 0 && grid.dp_rank() == 0;
    const std::string path = main_group ? a.trace
                                        : a.trace + ".tp" + std::to_string(grid.tp_rank()) + ".dp" +
                                              std::to_string(grid.dp_rank());
    trace.write_chrome_trace(path, grid.pp());
  }
  const int p = grid.pp_size();
  if (p == 1 && a.trace.empty()) return;
  // One slot per stage, summed over the pipeline group: every rank learns every stage's figures.
  std::vector<float> bubble(static_cast<size_t>(p)), held(bubble), bytes(bubble);
  for (int s = 0; s < p; ++s) {
    const bool mine = s == grid.pp_rank();
    const weft::PipelineStats& st = model.stats();
    const double measured =
        a.trace.empty() ? st.bubble_fraction() : trace.measured_bubble_fraction();
    bubble[s] = weft::all_reduce_scalar(
        grid.pp(), backend, mine ? static_cast<float>(measured) : 0.0f, weft::ReduceOp::kSum);
    held[s] = weft::all_reduce_scalar(grid.pp(), backend,
                                      mine ? static_cast<float>(st.peak_stored_inputs) : 0.0f,
                                      weft::ReduceOp::kSum);
    bytes[s] = weft::all_reduce_scalar(grid.pp(), backend,
                                       mine ? static_cast<float>(st.peak_stored_bytes) : 0.0f,
                                       weft::ReduceOp::kSum);
  }
  if (grid.world().rank() != 0) return;
  const double theory =
      weft::theoretical_bubble_fraction(model.schedule(), p, micro_batches, model.virtual_stages());
  std::printf("pipeline %s, p=%d, m=%lld, v=%d: bubble in theory %.3f ((p-1)/(m+p-1)%s)\n",
              weft::schedule_name(model.schedule()), p, static_cast<long long>(micro_batches),
              model.virtual_stages(), theory, model.virtual_stages() > 1 ? " / v" : "");
  for (int s = 0; s < p; ++s) {
    std::printf(
        "  stage %d: measured bubble %.3f %s; peak activations held: %.0f micro-batch "
        "input(s), %.1f KiB\n",
        s, bubble[s], a.trace.empty() ? "(last step)" : "(all steps)", held[s], bytes[s] / 1024.0);
  }
  if (!a.trace.empty()) std::printf("  trace written to %s\n", a.trace.c_str());
}

// --inject-fault RANK:STEP:KIND: a rank that fails on purpose, to test that the job never hangs.
struct Fault {
  int64_t rank = -1, step = -1;
  std::string kind;
};

Fault parse_fault(const std::string& spec) {
  Fault f;
  if (spec.empty()) return f;
  const size_t a = spec.find(':'), b = spec.find(':', a == std::string::npos ? a : a + 1);
  bool ok = a != std::string::npos && b != std::string::npos;
  if (ok) {
    try {
      size_t used_rank = 0, used_step = 0;
      const std::string rank = spec.substr(0, a), step = spec.substr(a + 1, b - a - 1);
      f.rank = std::stoll(rank, &used_rank);
      f.step = std::stoll(step, &used_step);
      ok = used_rank == rank.size() && used_step == step.size() && f.rank >= 0 && f.step >= 1;
    } catch (const std::exception&) {
      ok = false;
    }
    f.kind = spec.substr(b + 1);
  }
  ok = ok && (f.kind == "exit0" || f.kind == "exit1" || f.kind == "abort" || f.kind == "throw" ||
              f.kind == "hang" || f.kind == "stop");
  weft::examples::usage_check(ok, "gpt_train", "--inject-fault expects RANK:STEP:KIND (RANK >= 0, ",
                              "STEP >= 1, KIND exit0, exit1, abort, throw, hang or stop), got '", spec,
                              "'");
  return f;
}

void inject_fault(const Fault& f, int rank, int64_t step) {
  if (f.rank != rank || f.step != step) return;
  std::fprintf(stderr, "gpt_train: rank %d injects fault '%s' at step %lld\n", rank,
               f.kind.c_str(), static_cast<long long>(step));
  std::fflush(stderr);
  if (f.kind == "exit0") std::_Exit(0);
  if (f.kind == "exit1") std::_Exit(1);
  if (f.kind == "abort") std::abort();
  if (f.kind == "throw") WEFT_THROW(weft::ErrorCode::kInternal, "injected fault at step ", step);
  // Its watchdog stops too: the peers' watchdogs get no answer from it.
  if (f.kind == "stop") std::raise(SIGSTOP);
  for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));  // hang
}

// The rules between flags, checked on every rank alike before any work: a usage error (exit 2)
// naming the flags and values.
void check_args(const Args& a, int world_size) {
  using weft::examples::usage_check;
  const char* p = "gpt_train";
  usage_check(a.layout == "manual" || a.layout == "auto", p, "--layout must be manual or auto, got '",
              a.layout, "'");
  usage_check(a.preset == "gpt2" || a.preset == "llama", p, "--preset must be gpt2 or llama, got '",
              a.preset, "'");
  usage_check(a.dtype == "f32" || a.dtype == "bf16", p, "--dtype must be f32 or bf16, got '",
              a.dtype, "'");
  usage_check(a.schedule == "gpipe" || a.schedule == "1f1b" || a.schedule == "interleaved", p,
              "--schedule must be gpipe, 1f1b or interleaved, got '", a.schedule, "'");
  usage_check(a.recompute == "none" || a.recompute == "selective" || a.recompute == "full", p,
              "--recompute must be none, selective or full, got '", a.recompute, "'");
  usage_check(!a.data.empty(), p, "--data FILE is required (any text file)");
  usage_check(a.save_interval == 0 || !a.save.empty(), p, "--save-interval (", a.save_interval,
              ") needs --save DIR");
  usage_check(a.min_lr <= a.lr, p, "--min-lr (", a.min_lr, ") must not exceed --lr (", a.lr, ")");
  usage_check(a.warmup <= a.steps, p, "--warmup (", a.warmup, ") must not exceed --steps (", a.steps,
              ")");
  const Fault fault = parse_fault(a.inject_fault);
  usage_check(fault.rank < world_size, p, "--inject-fault names rank ", fault.rank, " of ",
              world_size);
  usage_check(a.virtual_stages == 1 || a.pp > 1, p, "--virtual-stages (", a.virtual_stages,
              ") must be 1, or more than 1 with --pp > 1");
  if (a.layout == "manual") {
    const int64_t tp_pp = a.tp * a.pp;  // both at most 2^16: no overflow
    usage_check(world_size % tp_pp == 0, p, "--tp (", a.tp, ") x --pp (", a.pp,
                ") must divide the number of ranks (", world_size, ")");
    const int64_t dp = world_size / tp_pp;
    usage_check(a.global_batch % (a.micro_batch * dp) == 0, p, "--global-batch (", a.global_batch,
                ") must be divisible by --micro-batch (", a.micro_batch,
                ") x data-parallel size (", dp, ")");
  }
}

// Refuses (a usage error on every rank) a run whose parameters, gradients, optimizer state and
// activations per rank (the planner's memory model) exceed the memory each rank has
// (Runtime::memory_per_rank_bytes: the node's on the CPU, the GPU's on CUDA); prints the
// estimate otherwise.
void check_memory(const Args& a, const weft::GPTConfig& config, weft::Communicator& world,
                  const weft::Runtime& runtime, int64_t micro_batches) {
  namespace plan = weft::plan;
  plan::Training t;
  t.model = weft::examples::shape_of(config, a.seq_len);
  t.gpus = world.size();
  const int64_t dp = world.size() / (a.tp * a.pp);
  t.global_batch = micro_batches * a.micro_batch * dp;
  t.bf16 = config.dtype == weft::DType::kBF16;
  // The planner's layout rules are stricter than the model's where memory does not depend on them
  // (sequence parallelism at tp 1 is a no-op): the estimate leaves those to the model's checks.
  plan::Layout l{a.tp,
                 a.pp,
                 dp,
                 a.micro_batch,
                 a.virtual_stages,
                 a.sequence_parallel && a.tp > 1 && a.seq_len % a.tp == 0,
                 a.tp_comm_overlap && a.tp > 1,
                 plan::parse_recompute(a.recompute)};
  const plan::Memory m = plan::memory_per_device(t, l);
  const double gib = 1024.0 * 1024.0 * 1024.0;
  // The same on every rank (the smallest), so that every rank decides alike.
  const double limit = static_cast<double>(runtime.memory_per_rank_bytes) / gib;
  char what[320];
  std::snprintf(what, sizeof what,
                "%.3g GiB per rank (parameters %.3g, gradients %.3g, optimizer %.3g, activations "
                "%.3g GiB)",
                m.total() / gib, m.parameters / gib, m.gradients / gib, m.optimizer / gib,
                m.activations / gib);
  char limit_text[32];
  std::snprintf(limit_text, sizeof limit_text, "%.3g", limit);
  weft::examples::usage_check(limit <= 0 || m.total() / gib <= limit, "gpt_train",
                              "the model needs about ", what, ", more than the ", limit_text,
                              " GiB of memory each rank has here (",
                              a.engine.backend == "cpu" ? "MemTotal / ranks per node"
                                                        : "GPU memory / ranks per GPU",
                              "); use a smaller model or more ranks");
  if (world.rank() == 0) std::printf("memory estimate: %s of %.3g GiB\n", what, limit);
}

// --layout auto: asks the planner for the fastest layout gpt_train can run on these ranks, prints
// it and the runner-up, and returns the flags set to it and its predicted step time.
Args auto_layout(Args a, weft::Communicator& world, double* predicted_s) {
  namespace plan = weft::plan;
  WEFT_CHECK(a.engine.backend == "cpu" || !a.cluster.empty(), "--layout auto with --backend ",
             a.engine.backend,
             " needs --cluster (a cluster file or a "
             "built-in such as h100-80g-dgx): the quick calibration measures the CPU");
  weft::GPTConfig config = weft::GPTConfig::preset(a.preset);
  if (!a.load.empty()) {
    config = weft::read_checkpoint_info(a.load).config;
  } else if (!a.load_hf.empty()) {
    config = weft::examples::read_hf_model_config(a.load_hf).config;
  } else {
    config.vocab_size = weft::TextDataset::kVocabSize;
    config.layers = a.layers;
    config.hidden = a.hidden;
    config.heads = a.heads;
    if (a.kv_heads != 0) config.kv_heads = a.kv_heads;
  }
  config.finalize(1);
  plan::Training t;
  t.model = weft::examples::shape_of(config, a.seq_len);
  t.gpus = world.size();
  t.global_batch = a.global_batch > 0 ? a.global_batch : a.micro_batch * world.size();
  t.bf16 = a.dtype == "bf16";
  const plan::Cluster cluster = a.cluster.empty() ? weft::examples::quick_calibration(world)
                                : a.cluster.find(".json") != std::string::npos
                                    ? plan::load_cluster_file(a.cluster)
                                    : plan::builtin_cluster(a.cluster);
  const std::vector<plan::Prediction> ranked = weft::examples::runnable_layouts(t, cluster);
  WEFT_CHECK(!ranked.empty(), "--layout auto: no layout of ", world.size(),
             " ranks fits this model (see weft_plan for the reasons)");
  const plan::Layout& l = ranked.front().layout;
  if (world.rank() == 0) {
    std::printf(
        "layout auto (cluster %s, %zu layouts fit):\n  chosen     %-34s predicted %.1f ms "
        "per step\n",
        cluster.name.c_str(), ranked.size(), plan::layout_name(l).c_str(),
        ranked.front().step_time_s * 1e3);
    if (ranked.size() > 1) {
      std::printf("  runner-up  %-34s predicted %.1f ms per step\n",
                  plan::layout_name(ranked[1].layout).c_str(), ranked[1].step_time_s * 1e3);
    }
  }
  a.tp = l.tp;
  a.pp = l.pp;
  a.micro_batch = l.micro_batch;
  a.global_batch = t.global_batch;
  a.virtual_stages = l.virtual_stages;
  a.schedule = l.virtual_stages > 1 ? "interleaved" : "1f1b";
  a.sequence_parallel = l.sequence_parallel;
  a.tp_comm_overlap = l.tp_comm_overlap;
  a.recompute = weft::plan::recompute_name(l.recompute);
  *predicted_s = ranked.front().step_time_s;
  return a;
}

int train(const Args& a, weft::Communicator& mpi_world, double predicted_s) {
  check_args(a, mpi_world.size());
  const Fault fault = parse_fault(a.inject_fault);
  // Before the first collective: from here on no rank waits for a failed peer forever.
  std::optional<weft::CommWatchdog> watchdog;
  // A blocked MPI call cannot be interrupted: past the timeout the program ends the whole job.
  if (a.comm_timeout > 0) {
    watchdog.emplace(mpi_world, a.comm_timeout, [](const std::string& message) {
      std::fprintf(stderr, "%s\n", message.c_str());
      std::fflush(stderr);
      weft::MpiRuntime::abort(1);
    });
  }
  const weft::Runtime runtime = weft::examples::launch(a.engine, mpi_world);
  weft::Backend& backend = *runtime.backend;
  weft::ParallelGrid grid(*runtime.world, weft::checked_narrow<int>(a.tp, "--tp"),
                          weft::checked_narrow<int>(a.pp, "--pp"));
  // Before any work: a run must not find out after training that its saves cannot be written.
  if (!a.save.empty()) weft::prepare_checkpoint_root(a.save, grid.world(), backend);
  const weft::ScheduleKind schedule = weft::parse_schedule(a.schedule);
  WEFT_CHECK(a.virtual_stages == 1 || (a.virtual_stages > 1 && a.pp > 1), "--virtual-stages (",
             a.virtual_stages, ") must be 1, or more than 1 with --pp > 1");
  const int64_t dp = grid.dp_size();
  const int64_t global_batch = a.global_batch == 0 ? a.micro_batch * dp : a.global_batch;
  WEFT_CHECK(global_batch % (a.micro_batch * dp) == 0, "--global-batch (", global_batch,
             ") must be divisible by micro-batch (", a.micro_batch, ") x data-parallel size (", dp,
             ")");
  const int64_t micro_batches = global_batch / (a.micro_batch * dp);

  weft::GPTConfig config = weft::GPTConfig::preset(a.preset);
  // Tokens are bytes unless a tokenizer is named (here or by the checkpoint --load resumes).
  std::optional<weft::Tokenizer> tokenizer;
  if (!a.tokenizer.empty()) tokenizer = weft::Tokenizer::from_file(a.tokenizer);
  config.vocab_size = tokenizer ? tokenizer->vocab_size() : weft::TextDataset::kVocabSize;
  config.max_seq = a.seq_len;
  config.layers = a.layers;
  config.hidden = a.hidden;
  config.heads = a.heads;
  if (a.kv_heads != 0) config.kv_heads = a.kv_heads;
  config.dropout = static_cast<float>(a.dropout);
  config.dtype = weft::parse_dtype(a.dtype);
  config.seed = static_cast<uint64_t>(a.seed);
  WEFT_CHECK(config.dtype != weft::DType::kI32, "--dtype must be f32 or bf16");

  int64_t first_step = 0;
  if (!a.load_hf.empty()) {
    weft::examples::usage_check(a.load.empty(), "gpt_train",
                                "--load and --load-hf exclude each other");
    const weft::HfModelInfo hf = weft::examples::read_hf_model_config(a.load_hf);
    config = hf.config;  // the HF model, whatever the model flags say; this run's dtype etc.
    config.dropout = static_cast<float>(a.dropout);
    config.dtype = weft::parse_dtype(a.dtype);
    config.seed = static_cast<uint64_t>(a.seed);
    std::string names;  // the model flags the HF config overrides (--dtype etc. apply)
    for (const std::string& n : a.model_flags_given) {
      if (n != "dtype" && n != "dropout" && n != "seed") names += " --" + n;
    }
    if (mpi_world.rank() == 0 && !names.empty()) {
      std::printf("gpt_train: ignored (the HF model %s sets the model):%s\n", a.load_hf.c_str(),
                  names.c_str());
    }
    weft::examples::usage_check(a.seq_len <= config.max_seq, "gpt_train", "--seq-len (", a.seq_len,
                                ") exceeds the maximum sequence length (", config.max_seq,
                                ") of HF model ", a.load_hf);
    if (!tokenizer && !hf.tokenizer.empty()) tokenizer = weft::Tokenizer::from_file(hf.tokenizer);
    const int64_t vocab = tokenizer ? tokenizer->vocab_size() : weft::TextDataset::kVocabSize;
    WEFT_CHECK(config.vocab_size == vocab, "HF model ", a.load_hf, " has a vocabulary of ",
               config.vocab_size, " tokens but ",
               tokenizer ? "tokenizer '" + tokenizer->source() + "'" : std::string("bytes"),
               " give ", vocab);
  }
  weft::CheckpointInfo loaded;
  if (!a.load.empty()) {
    loaded = weft::read_checkpoint_info(a.load);
    config = loaded.config;  // the checkpoint's model, whatever the flags say
    first_step = loaded.step;
    if (mpi_world.rank() == 0 && !a.model_flags_given.empty()) {
      std::string names;
      for (const std::string& n : a.model_flags_given) names += " --" + n;
      std::printf("gpt_train: ignored (the checkpoint %s sets the model):%s\n", a.load.c_str(),
                  names.c_str());
    }
    weft::examples::usage_check(a.seq_len <= config.max_seq, "gpt_train", "--seq-len (",
                                a.seq_len, ") exceeds the maximum sequence length (",
                                config.max_seq, ") of checkpoint ", a.load);
    if (!tokenizer && !loaded.tokenizer.empty()) {
      tokenizer = weft::Tokenizer::from_file(loaded.tokenizer);
    }
    const int64_t vocab = tokenizer ? tokenizer->vocab_size() : weft::TextDataset::kVocabSize;
    WEFT_CHECK(config.vocab_size == vocab, "checkpoint ", a.load, " has a vocabulary of ",
               config.vocab_size, " tokens but ",
               tokenizer ? "tokenizer '" + tokenizer->source() + "'" : std::string("bytes"),
               " give ", vocab);
  }
  // How the model runs is this run's choice, not the checkpoint's.
  config.sequence_parallel = a.sequence_parallel;
  config.tp_comm_overlap = a.tp_comm_overlap;
  config.recompute = weft::parse_recompute(a.recompute);
  config.finalize(grid.tp_size());
  check_memory(a, config, mpi_world, runtime, micro_batches);

  const weft::TextDataset data =
      tokenizer ? weft::TextDataset(a.data, *tokenizer) : weft::TextDataset(a.data);
  WEFT_CHECK(
      data.train_size() > a.seq_len && (a.eval_interval == 0 || data.validation_size() > a.seq_len),
      "--data '", a.data, "' gives ", data.train_size(), " training and ", data.validation_size(),
      " validation tokens",
      tokenizer ? " with tokenizer '" + tokenizer->source() + "'" : std::string(" (bytes)"),
      ": a window of --seq-len + 1 = ", a.seq_len + 1, " tokens must fit in ",
      a.eval_interval == 0 ? "the training split" : "each split");
  weft::PipelineModel model(weft::ParallelContext{backend, grid.tp()}, grid.pp(), config, schedule,
                            weft::checked_narrow<int>(a.virtual_stages, "--virtual-stages"));
  // Before the optimizer copies the weights into its f32 masters.
  if (!a.load_hf.empty()) weft::load_hf_model(a.load_hf, model.parameters(), grid, backend);
  weft::AdamW optimizer(backend, model.parameters(),
                        weft::AdamWConfig{0.9f, 0.95f, 1e-8f, static_cast<float>(a.weight_decay)});
  weft::DropoutRng rng(config.seed, grid.tp_rank());
  if (!a.load.empty()) {
    weft::load_checkpoint(a.load, model.parameters(), &optimizer, grid, backend);
    rng.set_offsets(loaded.dropout_replicated, loaded.dropout_sharded);
  }
  weft::PipelineTrace trace;

  const bool leader = mpi_world.rank() == 0;
  std::ofstream log_json;
  if (leader && !a.log_json.empty()) {
    log_json.open(a.log_json, first_step > 0 ? std::ios::app : std::ios::trunc);
    WEFT_CHECK(log_json.good(), "cannot open --log-json file '", a.log_json, "'");
  }
  const int64_t warmup = a.warmup > 0 ? a.warmup : std::max<int64_t>(1, a.steps / 20);
  const double tokens_per_step = static_cast<double>(global_batch * a.seq_len);
  const double peak = peak_flops(backend.name(), config.dtype) * mpi_world.size();
  if (leader) {
    std::printf(
        "gpt_train: %s, %lld layers, hidden %lld, heads %lld (kv %lld), ffn %lld, "
        "%.2fM parameters, %s\n",
        !a.load_hf.empty() ? ("HF model " + a.load_hf).c_str()
        : a.load.empty()   ? (a.preset + " preset").c_str()
                           : ("checkpoint " + a.load).c_str(),
        static_cast<long long>(config.layers),
        static_cast<long long>(config.hidden), static_cast<long long>(config.heads),
        static_cast<long long>(config.kv_heads), static_cast<long long>(config.ffn_hidden),
        config.parameter_count() / 1e6, weft::dtype_name(config.dtype));
    std::printf(
        "  %d ranks: tp=%d pp=%d dp=%lld (%s schedule, %lld virtual stage(s) per rank%s%s), "
        "backend %s\n  global batch %lld x %lld tokens: %lld micro-batch(es) of %lld per "
        "data-parallel rank; data %s (%lld tokens)\n",
        mpi_world.size(), grid.tp_size(), grid.pp_size(), static_cast<long long>(dp),
        weft::schedule_name(schedule), static_cast<long long>(a.virtual_stages),
        config.sequence_parallel ? ", sequence parallel" : "",
        config.tp_comm_overlap ? ", TP comm overlap" : "", runtime.description.c_str(),
        static_cast<long long>(global_batch), static_cast<long long>(a.seq_len),
        static_cast<long long>(micro_batches), static_cast<long long>(a.micro_batch),
        a.data.c_str(), static_cast<long long>(data.size()));
    if (tokenizer) {
      std::printf("  tokenizer %s: vocabulary %lld; token cache %s %s\n",
                  tokenizer->source().c_str(), static_cast<long long>(tokenizer->vocab_size()),
                  weft::TextDataset::token_cache_path(a.data, *tokenizer).c_str(),
                  data.from_cache() ? "reused" : "written");
    }
  }

  std::vector<double> step_ms;  // for --layout auto's measured-vs-predicted line
  const int64_t tokens = a.seq_len * a.micro_batch;
  std::vector<int32_t> ids_host(tokens), targets_host(tokens);
  // Micro-batch `mb` of the batch starting at window `first`: each data-parallel rank reads its
  // own, every TP and pipeline rank of it the same.
  auto loader = [&](bool validation, int64_t first) {
    return [&, validation, first](int64_t mb, TensorView ids, TensorView targets) {
      data.batch(validation, config.seed, first + mb, a.seq_len, a.micro_batch, ids_host.data(),
                 targets_host.data());
      backend.copy(ids,
                   TensorView{ids_host.data(), ids.shape, weft::DType::kI32, weft::Device::cpu()});
      backend.copy(targets, TensorView{targets_host.data(), targets.shape, weft::DType::kI32,
                                       weft::Device::cpu()});
    };
  };
  auto save = [&](int64_t step) {
    weft::CheckpointInfo info;
    info.config = config;
    info.tp = grid.tp_size();
    info.pp = grid.pp_size();
    info.step = step;
    info.dropout_replicated = rng.replicated_offset();
    info.dropout_sharded = rng.sharded_offset();
    info.run_args = args_json(a);
    info.tokenizer = tokenizer ? tokenizer->source() : "";
    const std::string dir =
        weft::save_checkpoint_step(a.save, info, model.parameters(), &optimizer, grid, backend,
                                   static_cast<int>(a.keep_checkpoints));
    if (leader) {
      std::printf("saved checkpoint at step %lld to %s\n", static_cast<long long>(step),
                  dir.c_str());
    }
  };

  for (int64_t step = first_step + 1; step <= a.steps; ++step) {
    inject_fault(fault, mpi_world.rank(), step);
    // The last step measures each pipeline action (for the report below); the others do not
    // synchronize around them.
    model.set_timing(step == a.steps && grid.pp_size() > 1);
    backend.synchronize();
    const auto start = std::chrono::steady_clock::now();
    const float loss = model.train_step(
        loader(false, ((step - 1) * dp + grid.dp_rank()) * micro_batches), micro_batches, a.seq_len,
        a.micro_batch, 1.0f, rng, a.trace.empty() ? nullptr : &trace);
    weft::average_gradients(backend, grid.dp(), model.parameters());
    const float grad_norm = model.grad_norm();
    const float lr = weft::cosine_lr(step, warmup, a.steps, static_cast<float>(a.lr),
                                     static_cast<float>(a.min_lr));
    optimizer.step(lr, weft::clip_coefficient(grad_norm, static_cast<float>(a.clip_grad)));
    backend.synchronize();
    const float mean_loss =
        weft::all_reduce_scalar(grid.dp(), backend, loss, weft::ReduceOp::kSum) /
        static_cast<float>(dp);
    const double ms = weft::all_reduce_scalar(
        *runtime.world, backend,
        std::chrono::duration<float, std::milli>(std::chrono::steady_clock::now() - start).count(),
        weft::ReduceOp::kMax);
    const double tokens_per_s = tokens_per_step / (ms / 1e3);
    const double mfu = peak > 0 ? tokens_per_s * config.flops_per_token(a.seq_len) / peak : 0.0;
    if (leader) {
      std::printf("step %5lld | loss %.4f | grad norm %.3f | lr %.3e | %8.1f ms | %9.0f tok/s",
                  static_cast<long long>(step), mean_loss, grad_norm, lr, ms, tokens_per_s);
      if (mfu > 0) std::printf(" | MFU %.1f%%", 100.0 * mfu);
      std::printf("\n");
      if (log_json.is_open()) {
        nlohmann::json line{{"step", step}, {"loss", mean_loss}, {"grad_norm", grad_norm},
                            {"lr", lr},     {"ms", ms},          {"tokens_per_s", tokens_per_s}};
        if (mfu > 0) line["mfu"] = mfu;
        log_json << line.dump() << "\n" << std::flush;
      }
      step_ms.push_back(ms);
      // After the first steps (the first one warms up): measured beside the planner's prediction.
      if (predicted_s > 0 && (step_ms.size() == 4 || step == a.steps) && step_ms.size() > 1) {
        std::vector<double> later(step_ms.begin() + 1, step_ms.end());
        std::sort(later.begin(), later.end());
        std::printf(
            "layout auto: measured %.1f ms per step (median of steps 2-%zu), predicted "
            "%.1f ms (%+.0f%%)\n",
            later[later.size() / 2], step_ms.size(), predicted_s * 1e3,
            100.0 * (predicted_s * 1e3 / later[later.size() / 2] - 1));
        predicted_s = 0;
      }
    }
    if (a.eval_interval > 0 && (step % a.eval_interval == 0 || step == a.steps)) {
      const float val = model.evaluate(loader(true, grid.dp_rank() * a.eval_batches),
                                       a.eval_batches, a.seq_len, a.micro_batch);
      const float mean_val =
          weft::all_reduce_scalar(grid.dp(), backend, val, weft::ReduceOp::kSum) /
          static_cast<float>(dp);
      if (leader) {
        std::printf("step %5lld | validation loss %.4f\n", static_cast<long long>(step), mean_val);
        if (log_json.is_open()) {
          log_json << nlohmann::json{{"step", step}, {"val_loss", mean_val}}.dump() << "\n";
        }
      }
    }
    if (a.save_interval > 0 && step % a.save_interval == 0 && step != a.steps) save(step);
  }
  if (!a.save.empty()) save(std::max(a.steps, first_step));
  report_pipeline(a, model, grid, backend, micro_batches, trace);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return weft::examples::run_main(
      "gpt_train", argc, argv, [](int argc2, char** argv2, weft::Communicator& world) {
        Args args;
        weft::examples::Flags flags = make_flags(args);
        if (!flags.parse(argc2, argv2)) {
          if (world.rank() == 0) std::printf("%s", flags.usage().c_str());
          return 0;
        }
        for (const char* name : kModelFlags) {
          if (flags.given(name)) args.model_flags_given.push_back(name);
        }
        check_args(args, world.size());
        if (args.layout == "auto") {
          double predicted_s = 0;
          const Args chosen = auto_layout(args, world, &predicted_s);
          return train(chosen, world, predicted_s);
        }
        return train(args, world, 0.0);
      });
}
