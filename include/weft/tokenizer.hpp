// Byte-level BPE tokenizers read from a Hugging Face `tokenizer.json` (GPT-2 style): encode text
// to token ids and decode ids back to bytes, giving the ids Hugging Face `tokenizers` gives.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace weft {

// GPT-2's reversible byte-to-unicode map, which lets a BPE vocabulary be strings of printable
// characters: bytes 33-126, 161-172 and 174-255 map to the code point of the same value, the other
// 68 bytes (controls, space, 127-160, 173) to U+0100, U+0101, ... in byte order (so ' ' is U+0120
// 'Ġ', '\n' is U+010A 'Ċ'). Returns the character's UTF-8 encoding.
std::string byte_to_unicode(uint8_t byte);

// The inverse: the byte a code point stands for, or nothing when it is none of the 256.
std::optional<uint8_t> unicode_to_byte(uint32_t code_point);

// GPT-2's pre-tokenisation pattern, as `tokenizers`' ByteLevel pre-tokenizer uses it: common
// English contractions, letters with an optional leading space, digits likewise, other symbols
// likewise, runs of white space (leaving the last space to the word after it).
inline constexpr const char* kGpt2SplitPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Splits `text` into the pieces kGpt2SplitPattern matches (PCRE2 with Unicode properties), in
// order; the pieces concatenated give `text` back. Bytes that are not valid UTF-8 match nothing and
// become pieces of their own (each maximal run of them one piece), so any byte string splits.
std::vector<std::string> gpt2_pre_tokenize(std::string_view text);

// A byte-level BPE tokenizer. What it accepts from tokenizer.json, and where it differs from
// `tokenizers`:
//   model          "BPE" with its vocab, merges (either the "a b" or the ["a", "b"] form), optional
//                  unk_token / fuse_unk, ignore_merges; dropout null or 0; no byte_fallback;
//                  continuing_subword_prefix and end_of_word_suffix null or "".
//   normalizer     null.
//   pre_tokenizer  "ByteLevel" (add_prefix_space, use_regex honoured).
//   decoder        "ByteLevel".   post_processor: null or "ByteLevel" (it adds no ids).
//   added_tokens   matched in the text first, longest match at the leftmost position, each
//                  becoming its own id; single_word, lstrip and rstrip must be false.
//   truncation, padding: null.
// Anything else is a weft::Error naming the file, the field and the value. Encoding equals
// `tokenizers`' Tokenizer.encode(text, add_special_tokens=False).ids on UTF-8 text; unlike it,
// encode also takes bytes that are not UTF-8 (see gpt2_pre_tokenize), so every byte string
// round-trips: decode(encode(x)) == x whenever every byte has a vocabulary entry.
//
// Immutable after construction; copies share the loaded tables, and every method may be called
// from several threads at once.
class Tokenizer {
 public:
  // Reads and checks `path` (a tokenizer.json). weft::Error naming the file when it cannot be
  // read, is not JSON, or describes a tokenizer of an unsupported kind.
  static Tokenizer from_file(const std::string& path);
  // The same from the file's contents; `source` names it in error messages.
  static Tokenizer from_json(std::string_view json, const std::string& source);

  // Token ids of `text`: added tokens split out first, then the pre-tokenizer's pieces, each
  // mapped to byte-level characters and merged by rank (lowest rank first, leftmost first on
  // ties), exactly as `tokenizers` merges.
  std::vector<int32_t> encode(std::string_view text) const;

  // The bytes `ids` stand for: added tokens by their content (special ones left out when
  // `skip_special` is set), other tokens through the inverse byte map. Returns raw bytes (a
  // prefix of an encoding may end inside a UTF-8 character), where `tokenizers` would replace
  // such bytes by U+FFFD. weft::Error for an id that is in neither the vocabulary nor the added
  // tokens.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;

  // One more than the largest id of the vocabulary and the added tokens: the model's vocabulary
  // size (before padding).
  int64_t vocab_size() const;
  // The id of a token (a vocabulary string in byte-level characters, or an added token's
  // content), if there is one.
  std::optional<int32_t> token_to_id(std::string_view token) const;
  // The token string of an id (byte-level characters for vocabulary entries); weft::Error when
  // the id has none.
  std::string id_to_token(int32_t id) const;

  // Where it was read from (the path, or from_json's `source`).
  const std::string& source() const;
  // A 64-bit FNV-1a hash of the tokenizer.json bytes: names caches of text tokenised with it.
  uint64_t fingerprint() const;

 private:
  struct Impl;
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

}  // namespace weft
