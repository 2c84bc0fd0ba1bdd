// The small GPT of the model tests and the text its batches are cut from.
#pragma once

#include <cstdint>
#include <string>

#include "weft/gpt.hpp"

namespace weft::testing {

// A preset ("gpt2", "llama") shrunk to 2 layers (unless told), hidden 32, 4 heads, a byte
// vocabulary of 256 padded to a multiple of 8, sequences of `seq` tokens, seed 99 (unless told).
inline GPTConfig tiny_gpt_config(const std::string& preset, int64_t seq, int64_t layers = 2,
                                 uint64_t seed = 99) {
  GPTConfig c = GPTConfig::preset(preset);
  c.vocab_size = 256;
  c.max_seq = seq;
  c.layers = layers;
  c.hidden = 32;
  c.heads = 4;
  c.vocab_pad_multiple = 8;
  c.seed = seed;
  return c;
}

// Sequences [first, first + count) of one English text (byte ids, next-byte targets) as a batch
// of `count`, rows ordered (position, batch), into host arrays of seq * count.
inline void fill_text_sequences(int64_t first, int64_t count, int64_t seq, int32_t* ids,
                                int32_t* targets) {
  static const std::string text =
      "It was the best of times, it was the worst of times, it was the age of wisdom, it was the "
      "age of foolishness, it was the epoch of belief, it was the epoch of incredulity.";
  const int64_t span = static_cast<int64_t>(text.size()) - seq - 1;
  for (int64_t b = 0; b < count; ++b) {
    const int64_t start = ((first + b) * 29) % span;
    for (int64_t s = 0; s < seq; ++s) {
      ids[s * count + b] = static_cast<unsigned char>(text[static_cast<size_t>(start + s)]);
      targets[s * count + b] = static_cast<unsigned char>(text[static_cast<size_t>(start + s + 1)]);
    }
  }
}

}  // namespace weft::testing
