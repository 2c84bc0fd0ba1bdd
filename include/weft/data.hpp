// Training data: the tokens of a text file (its bytes, vocabulary 256, or a tokenizer's ids),
// split into a training and a validation region, sampled deterministically from a seed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "weft/tokenizer.hpp"

namespace weft {

class TextDataset {
 public:
  static constexpr int64_t kVocabSize = 256;  // every byte is a token

  // Loads `path` into memory. The last `validation_fraction` of the bytes (rounded down) is the
  // validation split, the rest the training split. Throws weft::Error naming the path and its
  // size when the file cannot be read, or when a split that exists holds fewer than 2 bytes (the
  // shortest window: one input and its target). validation_fraction is in [0, 1).
  explicit TextDataset(const std::string& path, double validation_fraction = 0.05);

  // The same with `tokenizer`'s ids as tokens. The text is tokenised once: the ids are cached in
  // token_cache_path(path, tokenizer) next to it, together with a hash of the text, and reused
  // while the text is unchanged (a changed text, or another tokenizer, tokenises again; the cache
  // is written atomically, and a directory that cannot be written only costs the cache). The
  // too-short error names the tokenizer and the token count.
  TextDataset(const std::string& path, const Tokenizer& tokenizer,
              double validation_fraction = 0.05);

  // Where the ids of `path` tokenised by `tokenizer` are cached: path + ".<fingerprint>.tokens".
  static std::string token_cache_path(const std::string& path, const Tokenizer& tokenizer);

  int64_t size() const { return static_cast<int64_t>(tokens_.size()); }
  int64_t train_size() const { return train_size_; }
  int64_t validation_size() const { return size() - train_size_; }
  const std::string& path() const { return path_; }
  // Every token of the file, in order (the training split, then the validation split).
  const std::vector<int32_t>& tokens() const { return tokens_; }
  // Whether the ids came from the token cache rather than from tokenising (tokenizer only).
  bool from_cache() const { return from_cache_; }

  // Fills `ids` and `targets` (host i32 arrays of seq * batch elements each) with micro-batch
  // `index` of the training (or validation) split. Rows are ordered (position, batch): element
  // s * batch + b is position s of sequence b, and targets are the ids shifted by one position
  // (targets[s * batch + b] is the token after ids[s * batch + b]). Sequence b is the window of
  // seq + 1 tokens starting where the Philox draw for (seed, split, index, b) says, uniform over
  // the split, so every rank and every TP size sees the same data for the same seed. Throws
  // weft::Error when seq + 1 exceeds the split or seq, batch, index are negative.
  void batch(bool validation, uint64_t seed, int64_t index, int64_t seq, int64_t batch,
             int32_t* ids, int32_t* targets) const;

  // Where the window of sequence b of micro-batch `index` starts, relative to its split.
  int64_t window_start(bool validation, uint64_t seed, int64_t index, int64_t seq, int64_t b) const;

 private:
  void split(double validation_fraction, const std::string& unit, const std::string& tokenizer);

  std::string path_;
  std::vector<int32_t> tokens_;
  int64_t train_size_ = 0;
  bool from_cache_ = false;
};

}  // namespace weft
