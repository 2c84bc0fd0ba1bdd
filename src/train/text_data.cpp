// TextDataset: a text file as byte tokens, with Philox-drawn windows for each micro-batch.
#include <algorithm>
#include <cmath>

#include "weft/checkpoint.hpp"
#include "weft/data.hpp"
#include "weft/error.hpp"
#include "weft/rng.hpp"

namespace weft {

namespace {
int64_t validation_bytes(int64_t n, double fraction) {
  return static_cast<int64_t>(std::floor(static_cast<double>(n) * fraction));
}

// The shortest file whose splits both hold a window of 2 tokens (the validation split only when
// it exists).
int64_t min_bytes(double fraction) {
  // Lower bounds from validation = floor(n f) >= 2 and n - floor(n f) > n (1 - f) >= 1 keep the
  // search short.
  double bound = 1.0 / (1.0 - fraction);
  if (fraction > 0.0) bound = std::max(bound, 2.0 / fraction - 1.0);
  if (bound > 1e15) return static_cast<int64_t>(bound);
  for (int64_t n = std::max<int64_t>(2, static_cast<int64_t>(bound));; ++n) {
    const int64_t validation = validation_bytes(n, fraction);
    if (n - validation >= 2 && (fraction == 0.0 || validation >= 2)) return n;
  }
}
}  // namespace

TextDataset::TextDataset(const std::string& path, double validation_fraction) : path_(path) {
  WEFT_CHECK(validation_fraction >= 0.0 && validation_fraction < 1.0, "TextDataset('", path,
             "'): validation_fraction ", validation_fraction, " is not in [0, 1)");
  bytes_ = read_file(path);
  const int64_t n = size();
  const int64_t validation = validation_bytes(n, validation_fraction);
  train_size_ = n - validation;
  if (train_size_ < 2 || (validation_fraction > 0.0 && validation < 2)) {
    WEFT_THROW(ErrorCode::kIo, "text file '", path, "' has ", n,
               " bytes: too short for a window (2 tokens: an input and its target) in each split "
               "(training ",
               train_size_, " bytes, validation ", validation, " bytes with validation_fraction ",
               validation_fraction, "); it needs at least ", min_bytes(validation_fraction),
               " bytes");
  }
}

int64_t TextDataset::window_start(bool validation, uint64_t seed, int64_t index, int64_t seq,
                                  int64_t b) const {
  const int64_t split = validation ? validation_size() : train_size_;
  WEFT_CHECK(seq >= 1 && index >= 0 && b >= 0, "TextDataset('", path_, "'): seq ", seq, ", index ",
             index, ", b ", b, " must be seq >= 1, index >= 0, b >= 0");
  WEFT_CHECK(seq + 1 <= split, "TextDataset('", path_, "'): a window of seq + 1 = ", seq + 1,
             " tokens does not fit the ", validation ? "validation" : "training", " split of ",
             split, " tokens");
  // weft's Philox with the whole 128-bit counter (index, b): philox_draw(key, index) for b = 0,
  // and distinct streams for every sequence of every micro-batch, whatever the batch size.
  const uint64_t key = derive_seed(seed, validation ? "weft.text.validation" : "weft.text.train");
  const auto i = static_cast<uint64_t>(index);
  const auto j = static_cast<uint64_t>(b);
  const Philox4x32 r =
      philox4x32_10(Philox4x32{{static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32),
                                static_cast<uint32_t>(j), static_cast<uint32_t>(j >> 32)}},
                    static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32));
  const uint64_t bits = static_cast<uint64_t>(r.v[0]) | (static_cast<uint64_t>(r.v[1]) << 32);
  // Windows may start at 0 .. split - (seq + 1); the modulo bias is below 2^-24 for any file
  // under a terabyte.
  return static_cast<int64_t>(bits % static_cast<uint64_t>(split - seq));
}

void TextDataset::batch(bool validation, uint64_t seed, int64_t index, int64_t seq, int64_t batch,
                        int32_t* ids, int32_t* targets) const {
  WEFT_CHECK(batch >= 1, "TextDataset('", path_, "'): batch ", batch, " must be >= 1");
  WEFT_CHECK(ids != nullptr && targets != nullptr, "TextDataset('", path_,
             "'): ids and targets must not be null");
  const int64_t base = validation ? train_size_ : 0;
  const auto* text = reinterpret_cast<const unsigned char*>(bytes_.data());
  for (int64_t b = 0; b < batch; ++b) {
    const unsigned char* window = text + base + window_start(validation, seed, index, seq, b);
    for (int64_t s = 0; s < seq; ++s) {
      ids[s * batch + b] = window[s];
      targets[s * batch + b] = window[s + 1];
    }
  }
}

}  // namespace weft
