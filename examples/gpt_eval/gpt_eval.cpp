// gpt_eval: mean next-token loss and perplexity of a checkpoint (or a Hugging Face model
// directory) over a text file, at any TP x PP (x DP) layout.
//
//   mpirun -np 2 build/bin/gpt_eval --load ckpt --data FILE --tp 2 [--seq-len S --batch B]
//
// The file's tokens are cut into consecutive, non-overlapping windows of S inputs (window w
// predicts tokens w S + 1 .. w S + S from tokens w S .. w S + S - 1); the last partial window is
// dropped. Forward only, dropout off: the same numbers on every run and at every layout.
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "common/flags.hpp"
#include "common/launch.hpp"
#include "common/model_source.hpp"
#include "weft/data.hpp"
#include "weft/gpt_checkpoint.hpp"
#include "weft/pipeline.hpp"
#include "weft/weft.hpp"

namespace {

struct Args {
  std::string load, data, tokenizer, dump_logits;
  int64_t tp = 1, pp = 1, seq_len = 0, batch = 4;
  bool log_json = false;
  weft::examples::EngineFlags engine;
};

int evaluate(int argc, char** argv, weft::Communicator& mpi_world) {
  Args a;
  weft::examples::Flags flags("gpt_eval",
                              "Mean next-token loss and perplexity of a checkpoint over a text "
                              "file's consecutive windows (world = tp x dp x pp).");
  flags.add("load", &a.load,
            "checkpoint directory (saved at any layout), or a Hugging Face model directory "
            "(config.json + model.safetensors: GPT2LMHeadModel, LlamaForCausalLM)");
  flags.add("data", &a.data, "text file to evaluate on");
  flags.add("tokenizer", &a.tokenizer,
            "Hugging Face tokenizer.json (default: the checkpoint's, else bytes are tokens)");
  flags.add("tp", &a.tp, "tensor-parallel size", 1, 1 << 20);
  flags.add("pp", &a.pp, "pipeline-parallel size", 1, 1 << 20);
  flags.add("seq-len", &a.seq_len, "tokens per window (0: the model's maximum)", 0, 1 << 30);
  flags.add("batch", &a.batch, "windows per micro-batch", 1, 1 << 30);
  flags.add("log-json", &a.log_json, "print the result as one JSON object");
  flags.add("dump-logits", &a.dump_logits,
            "also write the logits of the first --batch windows to FILE (raw little-endian f32 "
            "[seq-len, windows, vocab], rows by position then window; needs --pp 1)");
  a.engine.add_to(flags);
  if (!flags.parse(argc, argv)) {
    if (mpi_world.rank() == 0) std::printf("%s", flags.usage().c_str());
    return 0;
  }
  using weft::examples::UsageError;
  if (a.load.empty()) throw UsageError("gpt_eval: --load DIR is required");
  if (a.data.empty()) throw UsageError("gpt_eval: --data FILE is required");
  if (a.batch <= 0 || a.seq_len < 0 || a.tp <= 0 || a.pp <= 0) {
    throw UsageError(
        "gpt_eval: --batch, --tp and --pp must be positive and --seq-len not negative");
  }

  if (!a.dump_logits.empty() && a.pp != 1) {
    throw UsageError("gpt_eval: --dump-logits needs --pp 1");
  }
  const weft::examples::ModelSource info = weft::examples::open_model(a.load);
  std::optional<weft::Tokenizer> tokenizer;
  const std::string tokenizer_path = a.tokenizer.empty() ? info.tokenizer : a.tokenizer;
  if (!tokenizer_path.empty()) tokenizer = weft::Tokenizer::from_file(tokenizer_path);
  const int64_t vocab = tokenizer ? tokenizer->vocab_size() : weft::TextDataset::kVocabSize;
  WEFT_CHECK(vocab == info.config.vocab_size, "checkpoint ", a.load, " has a vocabulary of ",
             info.config.vocab_size, " tokens but ",
             tokenizer ? "tokenizer '" + tokenizer->source() + "'" : std::string("bytes"), " give ",
             vocab);
  const int64_t seq = a.seq_len > 0 ? a.seq_len : info.config.max_seq;
  WEFT_CHECK(seq >= 1 && seq <= info.config.max_seq, "--seq-len (", seq,
             ") must be at most the model's maximum sequence length (", info.config.max_seq,
             ", checkpoint ", a.load, ")");
  const weft::TextDataset data =
      tokenizer ? weft::TextDataset(a.data, *tokenizer, 0.0) : weft::TextDataset(a.data, 0.0);
  const std::vector<int32_t>& tokens = data.tokens();
  const int64_t n = static_cast<int64_t>(tokens.size());
  WEFT_CHECK(n >= seq + 1, "--data '", a.data, "' gives ", n, " tokens",
             tokenizer ? " with tokenizer '" + tokenizer->source() + "'" : std::string(" (bytes)"),
             ", fewer than one window of --seq-len + 1 = ", seq + 1, " tokens");
  const int64_t windows = (n - 1) / seq;

  const weft::Runtime runtime = weft::examples::launch(a.engine, mpi_world);
  weft::Backend& backend = *runtime.backend;
  weft::ParallelGrid grid(*runtime.world, static_cast<int>(a.tp), static_cast<int>(a.pp));
  weft::GPTConfig config = info.config;
  config.dropout = 0.0f;
  weft::PipelineModel model(weft::ParallelContext{backend, grid.tp()}, grid.pp(), config,
                            weft::ScheduleKind::k1F1B);
  weft::examples::load_weights(info, model.parameters(), grid, backend);
  model.set_training(false);

  // Micro-batches of `batch` consecutive windows (the last one smaller), dealt round-robin to
  // the data-parallel ranks; each rank runs its own in groups of equal size through the pipeline.
  const int64_t dp = grid.dp_size();
  const int64_t micro_batches = (windows + a.batch - 1) / a.batch;
  auto size_of = [&](int64_t mb) { return std::min(a.batch, windows - mb * a.batch); };
  std::vector<int64_t> mine;
  for (int64_t mb = grid.dp_rank(); mb < micro_batches; mb += dp) mine.push_back(mb);
  std::vector<int32_t> ids_host, targets_host;
  double loss_sum = 0.0;         // summed over this rank's windows' tokens
  constexpr size_t kGroup = 16;  // micro-batches per pipeline pass
  for (size_t i = 0; i < mine.size();) {
    const int64_t b = size_of(mine[i]);
    size_t j = i;
    while (j < mine.size() && j - i < kGroup && size_of(mine[j]) == b) ++j;
    auto load = [&](int64_t k, weft::TensorView ids, weft::TensorView targets) {
      const int64_t first = mine[i + static_cast<size_t>(k)] * a.batch;  // window index
      ids_host.resize(static_cast<size_t>(seq * b));
      targets_host.resize(ids_host.size());
      for (int64_t w = 0; w < b; ++w) {
        for (int64_t s = 0; s < seq; ++s) {  // rows ordered (position, batch)
          const size_t at = static_cast<size_t>((first + w) * seq + s);
          ids_host[static_cast<size_t>(s * b + w)] = tokens[at];
          targets_host[static_cast<size_t>(s * b + w)] = tokens[at + 1];
        }
      }
      backend.copy(ids, weft::TensorView{ids_host.data(), ids.shape, weft::DType::kI32,
                                         weft::Device::cpu()});
      backend.copy(targets, weft::TensorView{targets_host.data(), targets.shape, weft::DType::kI32,
                                             weft::Device::cpu()});
    };
    const float mean = model.evaluate(load, static_cast<int64_t>(j - i), seq, b);
    loss_sum += static_cast<double>(mean) * static_cast<double>((j - i) * b * seq);
    i = j;
  }
  const double total =
      dp > 1 ? weft::all_reduce_scalar(grid.dp(), backend, static_cast<float>(loss_sum),
                                       weft::ReduceOp::kSum)
             : loss_sum;
  const double loss = total / static_cast<double>(windows * seq);
  if (!a.dump_logits.empty()) {
    // Position by position through the KV cache (the decoding path gives every position's
    // logits; the training forward keeps them vocabulary-split).
    weft::GPTConfig c = config;
    c.finalize(grid.tp_size());
    weft::GPTModel whole(weft::ParallelContext{backend, grid.tp()}, c);
    weft::examples::load_weights(info, whole.parameters(), grid, backend);
    whole.set_training(false);
    const int64_t b = std::min(a.batch, windows);
    weft::KVCache cache = whole.new_cache(b, seq);
    std::vector<float> dump;
    std::vector<int32_t> step_ids(static_cast<size_t>(b));
    for (int64_t s = 0; s < seq; ++s) {
      for (int64_t w = 0; w < b; ++w) step_ids[static_cast<size_t>(w)] = tokens[w * seq + s];
      weft::Tensor ids(backend, weft::Shape({b}), weft::DType::kI32);
      backend.copy(ids, weft::TensorView{step_ids.data(), ids.shape(), weft::DType::kI32,
                                         weft::Device::cpu()});
      const std::vector<float> logits = whole.next_token_logits(ids, 1, cache);
      dump.insert(dump.end(), logits.begin(), logits.end());
    }
    if (mpi_world.rank() == 0) {
      weft::write_file_atomically(
          a.dump_logits,
          std::string(reinterpret_cast<const char*>(dump.data()), dump.size() * sizeof(float)));
    }
  }
  if (mpi_world.rank() == 0) {
    if (a.log_json) {
      std::printf("%s\n", nlohmann::json{{"loss", loss},
                                         {"perplexity", std::exp(loss)},
                                         {"windows", windows},
                                         {"seq_len", seq},
                                         {"tokens", windows * seq},
                                         {"dropped_tokens", n - 1 - windows * seq},
                                         {"batch", a.batch},
                                         {"tp", grid.tp_size()},
                                         {"pp", grid.pp_size()},
                                         {"dp", dp},
                                         {"step", info.step},
                                         {"checkpoint", a.load},
                                         {"data", a.data}}
                              .dump()
                              .c_str());
    } else {
      std::printf(
          "gpt_eval: %s (step %lld) on %s: %lld windows of %lld tokens (%lld of %lld tokens "
          "dropped), tp=%d pp=%d dp=%lld\nloss %.6f | perplexity %.4f\n",
          a.load.c_str(), static_cast<long long>(info.step), a.data.c_str(),
          static_cast<long long>(windows), static_cast<long long>(seq),
          static_cast<long long>(n - 1 - windows * seq), static_cast<long long>(n), grid.tp_size(),
          grid.pp_size(), static_cast<long long>(dp), loss, std::exp(loss));
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return weft::examples::run_main("gpt_eval", argc, argv, evaluate);
}
