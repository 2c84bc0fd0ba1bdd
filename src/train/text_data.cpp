// TextDataset: a text file as byte tokens or a tokenizer's ids (cached next to the file), with
// Philox-drawn windows for each micro-batch.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <vector>

#include "weft/checkpoint.hpp"
#include "weft/data.hpp"
#include "weft/error.hpp"
#include "weft/log.hpp"
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

// The token cache: a header naming what it was made from, then the ids (int32, little-endian as
// every machine weft runs on).
struct CacheHeader {
  char magic[8];
  uint64_t tokenizer;  // Tokenizer::fingerprint()
  uint64_t text_hash;  // FNV-1a of the text
  uint64_t text_size;
  uint64_t count;  // ids that follow
};
constexpr char kCacheMagic[8] = {'w', 'e', 'f', 't', 't', 'o', 'k', '1'};

uint64_t fnv1a(const std::string& bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const char c : bytes) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

// The cached ids when `cache` was made from this text by this tokenizer; nothing otherwise.
std::optional<std::vector<int32_t>> read_cache(const std::string& cache, const CacheHeader& want) {
  std::FILE* f = std::fopen(cache.c_str(), "rb");
  if (f == nullptr) return std::nullopt;
  CacheHeader have{};
  std::vector<int32_t> ids;
  bool ok = std::fread(&have, sizeof(have), 1, f) == 1 &&
            std::memcmp(have.magic, want.magic, sizeof(want.magic)) == 0 &&
            have.tokenizer == want.tokenizer && have.text_hash == want.text_hash &&
            have.text_size == want.text_size && have.count <= have.text_size * 4 + 16;
  if (ok) {
    ids.resize(have.count);
    ok = std::fread(ids.data(), sizeof(int32_t), ids.size(), f) == ids.size() &&
         std::fgetc(f) == EOF;
  }
  std::fclose(f);
  if (!ok) return std::nullopt;
  return ids;
}
}  // namespace

TextDataset::TextDataset(const std::string& path, double validation_fraction) : path_(path) {
  WEFT_CHECK(validation_fraction >= 0.0 && validation_fraction < 1.0, "TextDataset('", path,
             "'): validation_fraction ", validation_fraction, " is not in [0, 1)");
  const std::string bytes = read_file(path);
  tokens_.assign(bytes.begin(), bytes.end());
  for (int32_t& t : tokens_) t &= 0xFF;  // char may be signed
  split(validation_fraction, "bytes", "");
}

TextDataset::TextDataset(const std::string& path, const Tokenizer& tokenizer,
                         double validation_fraction)
    : path_(path) {
  WEFT_CHECK(validation_fraction >= 0.0 && validation_fraction < 1.0, "TextDataset('", path,
             "'): validation_fraction ", validation_fraction, " is not in [0, 1)");
  const std::string text = read_file(path);
  CacheHeader header{};
  std::memcpy(header.magic, kCacheMagic, sizeof(kCacheMagic));
  header.tokenizer = tokenizer.fingerprint();
  header.text_hash = fnv1a(text);
  header.text_size = text.size();
  const std::string cache = token_cache_path(path, tokenizer);
  if (std::optional<std::vector<int32_t>> cached = read_cache(cache, header)) {
    tokens_ = std::move(*cached);
    from_cache_ = true;
  } else {
    tokens_ = tokenizer.encode(text);
    header.count = tokens_.size();
    std::string contents(reinterpret_cast<const char*>(&header), sizeof(header));
    contents.append(reinterpret_cast<const char*>(tokens_.data()), tokens_.size() * 4);
    try {
      write_file_atomically(cache, contents);
    } catch (const Error& e) {
      WEFT_LOG(kWarning, "token cache not written (", e.message(), "); the text of '", path,
               "' will be tokenised again next time");
    }
  }
  split(validation_fraction, "tokens", tokenizer.source());
}

std::string TextDataset::token_cache_path(const std::string& path, const Tokenizer& tokenizer) {
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx",
                static_cast<unsigned long long>(tokenizer.fingerprint()));
  return path + "." + hex + ".tokens";
}

void TextDataset::split(double validation_fraction, const std::string& unit,
                        const std::string& tokenizer) {
  const int64_t n = size();
  const int64_t validation = validation_bytes(n, validation_fraction);
  train_size_ = n - validation;
  if (train_size_ < 2 || (validation_fraction > 0.0 && validation < 2)) {
    const std::string what = tokenizer.empty() ? "has " + std::to_string(n) + " bytes"
                                               : "tokenises to " + std::to_string(n) +
                                                     " tokens with tokenizer '" + tokenizer + "'";
    WEFT_THROW(ErrorCode::kIo, "text file '", path_, "' ", what,
               ": too short for a window (2 tokens: an input and its target) in each split "
               "(training ",
               train_size_, " ", unit, ", validation ", validation, " ", unit,
               " with validation_fraction ", validation_fraction, "); it needs at least ",
               min_bytes(validation_fraction), " ", unit);
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
  for (int64_t b = 0; b < batch; ++b) {
    const int32_t* window = tokens_.data() + base + window_start(validation, seed, index, seq, b);
    for (int64_t s = 0; s < seq; ++s) {
      ids[s * batch + b] = window[s];
      targets[s * batch + b] = window[s + 1];
    }
  }
}

}  // namespace weft
