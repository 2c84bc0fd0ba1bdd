// gpt_generate: continues a prompt with a GPT checkpoint written by gpt_train, sharded over the
// TP size it was saved with, using each attention layer's KV cache.
//
//   mpirun -np 2 build/bin/gpt_generate --load ckpt --prompt "Hello" --max-new-tokens 100
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <optional>
#include <vector>

#include "common/flags.hpp"
#include "common/launch.hpp"
#include "weft/data.hpp"
#include "weft/gpt_checkpoint.hpp"
#include "weft/weft.hpp"

namespace {

struct Args {
  std::string load, prompt = "The ", tokenizer;
  int64_t max_new_tokens = 100, top_k = 0, seed = 1, tp = 0;
  double temperature = 0.0;
  weft::examples::EngineFlags engine;  // --backend, --comm
};

// Greedy when temperature is 0; otherwise softmax(logits / temperature) over the top_k largest
// (all when top_k is 0), sampled with Philox(seed, step): the same on every rank.
int32_t choose_token(const float* logits, int64_t vocab, const Args& a, int64_t step) {
  if (a.temperature <= 0.0) {
    return static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
  }
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  const int64_t k = a.top_k > 0 ? std::min(a.top_k, vocab) : vocab;
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int32_t x, int32_t y) { return logits[x] > logits[y]; });
  std::vector<double> p(static_cast<size_t>(k));
  double total = 0.0;
  for (int64_t i = 0; i < k; ++i) {
    p[i] = std::exp((logits[order[i]] - logits[order[0]]) / a.temperature);
    total += p[i];
  }
  double u =
      weft::bits_to_open_unit(
          weft::philox_draw(static_cast<uint64_t>(a.seed), static_cast<uint64_t>(step)).v[0]) *
      total;
  for (int64_t i = 0; i < k; ++i) {
    u -= p[i];
    if (u <= 0.0) return order[i];
  }
  return order[k - 1];
}

int generate(int argc, char** argv, weft::Communicator& mpi_world) {
  Args a;
  weft::examples::Flags flags("gpt_generate", "Generate text from a gpt_train checkpoint.");
  flags.add("load", &a.load, "checkpoint directory written by gpt_train --save");
  flags.add("prompt", &a.prompt, "text to continue");
  flags.add("tokenizer", &a.tokenizer,
            "Hugging Face tokenizer.json (default: the checkpoint's, else bytes are tokens)");
  flags.add("tp", &a.tp, "tensor-parallel size (0: the checkpoint's)", 0, 1 << 20);
  flags.add("max-new-tokens", &a.max_new_tokens, "tokens to generate", 0, 1 << 30);
  flags.add("temperature", &a.temperature, "0: greedy; otherwise sampling temperature", 0.0, 100.0);
  flags.add("top-k", &a.top_k, "sample among the k most likely tokens (0: all)", 0, 1 << 30);
  flags.add("seed", &a.seed, "sampling seed", 0, std::numeric_limits<int64_t>::max());
  a.engine.add_to(flags);
  if (!flags.parse(argc, argv)) {
    if (mpi_world.rank() == 0) std::printf("%s", flags.usage().c_str());
    return 0;
  }
  if (a.load.empty()) throw weft::examples::UsageError("gpt_generate: --load DIR is required");
  if (a.prompt.empty())
    throw weft::examples::UsageError("gpt_generate: --prompt must not be empty");

  const weft::CheckpointInfo info = weft::read_checkpoint_info(a.load);
  std::optional<weft::Tokenizer> tokenizer;
  const std::string tokenizer_path = a.tokenizer.empty() ? info.tokenizer : a.tokenizer;
  if (!tokenizer_path.empty()) tokenizer = weft::Tokenizer::from_file(tokenizer_path);
  const int64_t vocab = tokenizer ? tokenizer->vocab_size() : weft::TextDataset::kVocabSize;
  WEFT_CHECK(vocab == info.config.vocab_size, "checkpoint ", a.load, " has a vocabulary of ",
             info.config.vocab_size, " tokens but ",
             tokenizer ? "tokenizer '" + tokenizer->source() + "'" : std::string("bytes"), " give ",
             vocab);
  WEFT_CHECK(info.tp > 0, "checkpoint ", a.load, " has tensor-parallel size ", info.tp,
             "; it must be positive");
  const int tp = a.tp > 0 ? static_cast<int>(a.tp) : info.tp;
  WEFT_CHECK(mpi_world.size() % tp == 0, "tensor-parallel size ", tp,
             a.tp > 0 ? "" : " (the checkpoint's)", " does not divide the ", mpi_world.size(),
             " ranks; run with a multiple of ", tp, " ranks or give --tp");
  const weft::Runtime runtime = weft::examples::launch(a.engine, mpi_world);
  weft::Backend& backend = *runtime.backend;
  weft::ParallelGrid grid(*runtime.world, tp);
  weft::GPTConfig config = info.config;
  config.finalize(tp);  // the manifest's sizes, checked (positive, dividing tp, no overflow)
  weft::GPTModel model(weft::ParallelContext{backend, grid.tp()}, config);
  weft::load_checkpoint(a.load, model.parameters(), nullptr, grid, backend);
  model.set_training(false);

  std::vector<int32_t> tokens;
  if (tokenizer) {
    tokens = tokenizer->encode(a.prompt);
  } else {
    for (const char c : a.prompt) tokens.push_back(static_cast<unsigned char>(c));
  }
  const int64_t prompt_tokens = static_cast<int64_t>(tokens.size());
  const int64_t capacity = std::min(
      config.max_seq, weft::checked_add(prompt_tokens, a.max_new_tokens, "prompt + new tokens"));
  WEFT_CHECK(prompt_tokens < config.max_seq, "the prompt (", prompt_tokens,
             " tokens) must be shorter than the model's maximum sequence length (", config.max_seq,
             ")");
  weft::KVCache cache = model.new_cache(1, capacity);

  std::vector<int32_t> generated;
  std::vector<int32_t> feed = tokens;  // the prompt first, then one token at a time
  for (int64_t step = 0;
       step < a.max_new_tokens && cache.length + static_cast<int64_t>(feed.size()) <= capacity;
       ++step) {
    const int64_t n = static_cast<int64_t>(feed.size());
    weft::Tensor ids(backend, weft::Shape({n}), weft::DType::kI32);
    backend.copy(
        ids, weft::TensorView{feed.data(), ids.shape(), weft::DType::kI32, weft::Device::cpu()});
    const std::vector<float> logits = model.next_token_logits(ids, n, cache);
    const int32_t next = choose_token(logits.data(), config.vocab_size, a, step);
    generated.push_back(next);
    feed.assign(1, next);
  }
  if (mpi_world.rank() == 0) {
    const std::string text =
        a.prompt + (tokenizer ? tokenizer->decode(generated)
                              : std::string(generated.begin(), generated.end()));
    std::printf("%s\n", text.c_str());
    if (static_cast<int64_t>(generated.size()) < a.max_new_tokens) {
      std::fprintf(stderr, "(stopped after %zu tokens: the model's context is %lld positions)\n",
                   generated.size(), static_cast<long long>(config.max_seq));
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return weft::examples::run_main("gpt_generate", argc, argv, generate);
}
