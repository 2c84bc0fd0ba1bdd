// Byte-level BPE (Hugging Face tokenizer.json, GPT-2 style): loading and checking the file,
// PCRE2 pre-tokenisation, rank-ordered merges, decoding.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "weft/tokenizer.hpp"

#include <pcre2.h>

#include <array>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>

#include "weft/checkpoint.hpp"
#include "weft/error.hpp"

namespace weft {

namespace {

using json = nlohmann::json;

// The 256 code points of the byte-level alphabet, indexed by byte.
std::array<uint32_t, 256> make_byte_code_points() {
  std::array<uint32_t, 256> cp{};
  uint32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    cp[b] = printable ? static_cast<uint32_t>(b) : next++;
  }
  return cp;
}

const std::array<uint32_t, 256>& byte_code_points() {
  static const std::array<uint32_t, 256> table = make_byte_code_points();
  return table;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Decodes the UTF-8 character at s[i], advancing i; nothing for a malformed sequence (i is then
// left where it was). Vocabulary strings come from JSON, so they are valid UTF-8 in practice.
std::optional<uint32_t> next_code_point(std::string_view s, size_t& i) {
  const auto c0 = static_cast<unsigned char>(s[i]);
  const int extra = c0 < 0x80         ? 0
                    : (c0 >> 5) == 6  ? 1
                    : (c0 >> 4) == 14 ? 2
                    : (c0 >> 3) == 30 ? 3
                                      : -1;
  if (extra < 0 || i + static_cast<size_t>(extra) >= s.size()) return std::nullopt;
  uint32_t cp = extra == 0 ? c0 : c0 & (0x3F >> extra);
  for (int k = 1; k <= extra; ++k) {
    const auto c = static_cast<unsigned char>(s[i + k]);
    if ((c & 0xC0) != 0x80) return std::nullopt;
    cp = (cp << 6) | (c & 0x3F);
  }
  i += 1 + extra;
  return cp;
}

uint64_t fnv1a(std::string_view bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const char c : bytes) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

// The compiled GPT-2 pattern, shared by every tokenizer (PCRE2 code is safe to use from several
// threads; match data is per call).
class Gpt2Pattern {
 public:
  Gpt2Pattern() {
    int error = 0;
    PCRE2_SIZE offset = 0;
    code_ =
        pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kGpt2SplitPattern), PCRE2_ZERO_TERMINATED,
                      PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error, &offset, nullptr);
    if (code_ == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      WEFT_THROW(ErrorCode::kInternal, "PCRE2 rejected the GPT-2 pattern at offset ", offset, ": ",
                 reinterpret_cast<const char*>(message));
    }
    // The JIT is several times faster; without it (an unsupported CPU) the interpreter is used.
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);
  }
  ~Gpt2Pattern() { pcre2_code_free(code_); }
  Gpt2Pattern(const Gpt2Pattern&) = delete;
  Gpt2Pattern& operator=(const Gpt2Pattern&) = delete;

  // Calls piece(begin, end) for each match and each run of bytes between matches, in order.
  template <typename F>
  void split(std::string_view text, F&& piece) const {
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> match(
        pcre2_match_data_create_from_pattern(code_, nullptr), &pcre2_match_data_free);
    WEFT_CHECK(match != nullptr, "out of memory for PCRE2 match data");
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t at = 0;
    while (at < text.size()) {
      const int rc = pcre2_match(code_, subject, text.size(), at, 0, match.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(rc, message, sizeof(message));
        WEFT_THROW(ErrorCode::kInternal, "PCRE2 match failed at byte ", at, ": ",
                   reinterpret_cast<const char*>(message));
      }
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match.get());
      // Every alternative consumes at least one character, so matches are never empty.
      if (ovector[0] > at) piece(at, ovector[0]);
      piece(ovector[0], ovector[1]);
      at = ovector[1];
    }
    if (at < text.size()) piece(at, text.size());
  }

 private:
  pcre2_code* code_ = nullptr;
};

const Gpt2Pattern& gpt2_pattern() {
  static const Gpt2Pattern pattern;
  return pattern;
}

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;
};

struct MergeEntry {
  int32_t rank = 0;
  int32_t new_id = 0;
};

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

std::string describe(const json& v) {
  std::string s = v.dump();
  return s.size() > 80 ? s.substr(0, 77) + "..." : s;
}

}  // namespace

std::string byte_to_unicode(uint8_t byte) {
  std::string out;
  append_utf8(out, byte_code_points()[byte]);
  return out;
}

std::optional<uint8_t> unicode_to_byte(uint32_t code_point) {
  // Printable bytes stand for themselves; the other 68 were numbered from U+0100 in byte order.
  static const std::unordered_map<uint32_t, uint8_t> inverse = [] {
    std::unordered_map<uint32_t, uint8_t> m;
    for (int b = 0; b < 256; ++b) m[byte_code_points()[b]] = static_cast<uint8_t>(b);
    return m;
  }();
  const auto it = inverse.find(code_point);
  if (it == inverse.end()) return std::nullopt;
  return it->second;
}

std::vector<std::string> gpt2_pre_tokenize(std::string_view text) {
  std::vector<std::string> pieces;
  gpt2_pattern().split(text, [&](size_t begin, size_t end) {
    pieces.emplace_back(text.substr(begin, end - begin));
  });
  return pieces;
}

struct Tokenizer::Impl {
  std::string source;
  uint64_t fingerprint = 0;
  std::unordered_map<std::string, int32_t> vocab;   // byte-level token string -> id
  std::vector<std::string> tokens;                  // id -> vocabulary string ("" when none)
  std::vector<bool> has_token;                      // id -> in the model vocabulary
  std::unordered_map<uint64_t, MergeEntry> merges;  // (left id, right id) -> rank, merged id
  std::vector<AddedToken> added;
  std::unordered_map<int32_t, size_t> added_by_id;
  std::array<bool, 256> added_starts{};  // bytes an added token begins with
  std::array<int32_t, 256> byte_id{};    // id of each byte's one-character token, -1 if none
  std::optional<int32_t> unk_id;
  bool fuse_unk = false;
  bool ignore_merges = false;
  bool add_prefix_space = false;
  bool use_regex = true;
  int64_t vocab_size = 0;

  [[noreturn]] void reject(const std::string& field, const json& value,
                           const std::string& rule) const {
    WEFT_THROW(ErrorCode::kInvalidArgument, "tokenizer file '", source, "': field '", field,
               "' is ", describe(value), ": ", rule);
  }

  void load(const json& j);
  void load_model(const json& model);
  void load_added_tokens(const json& list);
  void bpe(std::string_view piece, std::vector<int32_t>& out) const;
  void encode_segment(std::string_view segment, std::vector<int32_t>& out,
                      std::unordered_map<std::string, std::vector<int32_t>>& cache) const;
};

void Tokenizer::Impl::load(const json& j) {
  if (!j.is_object()) reject("(top level)", j, "a tokenizer.json is a JSON object");
  auto field = [&](const char* name) { return j.contains(name) ? j.at(name) : json(nullptr); };
  for (const char* name : {"truncation", "padding"}) {
    if (!field(name).is_null()) {
      reject(name, field(name), "weft encodes whole texts; it must be null");
    }
  }
  if (!field("normalizer").is_null()) {
    reject("normalizer", field("normalizer"), "weft implements no normalizer; it must be null");
  }
  const json pre = field("pre_tokenizer");
  if (!pre.is_object() || pre.value("type", "") != "ByteLevel") {
    reject("pre_tokenizer", pre, "weft implements only the \"ByteLevel\" pre-tokenizer");
  }
  add_prefix_space = pre.value("add_prefix_space", false);
  use_regex = pre.value("use_regex", true);
  const json decoder = field("decoder");
  if (!decoder.is_object() || decoder.value("type", "") != "ByteLevel") {
    reject("decoder", decoder, "weft implements only the \"ByteLevel\" decoder");
  }
  const json post = field("post_processor");
  if (!post.is_null() && (!post.is_object() || post.value("type", "") != "ByteLevel")) {
    reject("post_processor", post,
           "weft adds no ids after encoding: it must be null or \"ByteLevel\"");
  }
  if (!j.contains("model")) reject("model", json(nullptr), "a tokenizer needs a model");
  load_model(j.at("model"));
  load_added_tokens(field("added_tokens"));
}

void Tokenizer::Impl::load_model(const json& model) {
  if (!model.is_object()) reject("model", model, "it must be a JSON object");
  const json type = model.contains("type") ? model.at("type") : json(nullptr);
  if (type != "BPE") reject("model.type", type, "weft implements only \"BPE\"");
  auto field = [&](const char* name) {
    return model.contains(name) ? model.at(name) : json(nullptr);
  };
  const json dropout = field("dropout");
  if (!dropout.is_null() && !(dropout.is_number() && dropout.get<double>() == 0.0)) {
    reject("model.dropout", dropout, "BPE dropout makes encoding random; it must be null or 0");
  }
  for (const char* name : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const json v = field(name);
    if (!v.is_null() && v != "") {
      reject(std::string("model.") + name, v, "byte-level BPE uses none; it must be null or \"\"");
    }
  }
  if (field("byte_fallback") == true) {
    reject("model.byte_fallback", true, "weft does not implement byte fallback (<0x..> tokens)");
  }
  fuse_unk = field("fuse_unk") == true;
  ignore_merges = field("ignore_merges") == true;

  const json vocab_json = field("vocab");
  if (!vocab_json.is_object()) reject("model.vocab", vocab_json, "it must map tokens to ids");
  for (const auto& [token, id_json] : vocab_json.items()) {
    if (!id_json.is_number_integer() || id_json.get<int64_t>() < 0 ||
        id_json.get<int64_t>() > INT32_MAX) {
      reject("model.vocab[\"" + token + "\"]", id_json, "ids are integers in [0, 2^31)");
    }
    const auto id = id_json.get<int32_t>();
    vocab[token] = id;
    if (static_cast<size_t>(id) >= tokens.size()) {
      tokens.resize(static_cast<size_t>(id) + 1);
      has_token.resize(static_cast<size_t>(id) + 1, false);
    }
    if (has_token[id]) {
      reject("model.vocab[\"" + token + "\"]", id_json,
             "id already belongs to \"" + tokens[id] + "\"");
    }
    tokens[id] = token;
    has_token[id] = true;
  }
  vocab_size = static_cast<int64_t>(tokens.size());
  for (int b = 0; b < 256; ++b) {
    const auto it = vocab.find(byte_to_unicode(static_cast<uint8_t>(b)));
    byte_id[b] = it == vocab.end() ? -1 : it->second;
  }

  const json unk = field("unk_token");
  if (!unk.is_null()) {
    if (!unk.is_string() || vocab.count(unk.get<std::string>()) == 0) {
      reject("model.unk_token", unk, "it must be null or a token of model.vocab");
    }
    unk_id = vocab.at(unk.get<std::string>());
  }

  const json merges_json = field("merges");
  if (!merges_json.is_array()) reject("model.merges", merges_json, "it must be a list");
  for (size_t rank = 0; rank < merges_json.size(); ++rank) {
    const json& m = merges_json[rank];
    const std::string where = "model.merges[" + std::to_string(rank) + "]";
    std::string left, right;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        reject(where, m, "a merge is two tokens separated by one space");
      }
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      reject(where, m, "a merge is \"left right\" or [\"left\", \"right\"]");
    }
    const auto l = vocab.find(left), r = vocab.find(right), n = vocab.find(left + right);
    if (l == vocab.end() || r == vocab.end() || n == vocab.end()) {
      reject(where, m,
             "both tokens and their concatenation \"" + left + right + "\" must be in model.vocab");
    }
    // A later duplicate replaces an earlier one, as in `tokenizers`.
    merges[pair_key(l->second, r->second)] = MergeEntry{static_cast<int32_t>(rank), n->second};
  }
}

void Tokenizer::Impl::load_added_tokens(const json& list) {
  if (list.is_null()) return;
  if (!list.is_array()) reject("added_tokens", list, "it must be a list");
  for (size_t i = 0; i < list.size(); ++i) {
    const json& t = list[i];
    const std::string where = "added_tokens[" + std::to_string(i) + "]";
    if (!t.is_object() || !t.contains("id") || !t.at("id").is_number_integer() ||
        t.at("id").get<int64_t>() < 0 || t.at("id").get<int64_t>() > INT32_MAX ||
        !t.contains("content") || !t.at("content").is_string() ||
        t.at("content").get<std::string>().empty()) {
      reject(where, t, "an added token has an integer \"id\" >= 0 and a non-empty \"content\"");
    }
    for (const char* flag : {"single_word", "lstrip", "rstrip"}) {
      if (t.value(flag, false)) {
        reject(where + "." + flag, true, "weft matches added tokens exactly; it must be false");
      }
    }
    AddedToken token{t.at("content").get<std::string>(), t.at("id").get<int32_t>(),
                     t.value("special", false)};
    const auto known = vocab.find(token.content);
    if (known != vocab.end() && known->second != token.id) {
      reject(where + ".id", t.at("id"),
             "model.vocab gives \"" + token.content + "\" the id " + std::to_string(known->second));
    }
    if (added_by_id.count(token.id) != 0) {
      reject(where + ".id", t.at("id"), "another added token has this id");
    }
    added_by_id[token.id] = added.size();
    added_starts[static_cast<unsigned char>(token.content[0])] = true;
    vocab_size = std::max<int64_t>(vocab_size, static_cast<int64_t>(token.id) + 1);
    added.push_back(std::move(token));
  }
}

// One pre-tokenised piece (raw bytes) to ids: `tokenizers`' BPE Word::merge_all. Symbols form a
// linked list; a heap holds candidate merges ordered by rank, then position; an entry whose pair
// has changed since it was pushed is skipped.
void Tokenizer::Impl::bpe(std::string_view piece, std::vector<int32_t>& out) const {
  if (ignore_merges) {
    std::string word;
    for (const char c : piece) word += byte_to_unicode(static_cast<uint8_t>(c));
    const auto it = vocab.find(word);
    if (it != vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  struct Symbol {
    int32_t id;
    int prev, next;
    bool removed;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(piece.size());
  bool pending_unk = false;  // a fused run of unknown bytes not yet emitted
  auto add = [&](int32_t id) {
    const int n = static_cast<int>(symbols.size());
    symbols.push_back(Symbol{id, n - 1, -1, false});
    if (n > 0) symbols[n - 1].next = n;
  };
  for (const char c : piece) {
    const int32_t id = byte_id[static_cast<unsigned char>(c)];
    if (id >= 0) {
      if (pending_unk) add(*unk_id);
      pending_unk = false;
      add(id);
    } else if (unk_id) {
      // Without fuse_unk every unknown byte is an unk of its own; with it, a run is one.
      if (pending_unk && !fuse_unk) add(*unk_id);
      pending_unk = true;
    }
    // Without an unk token, `tokenizers` drops bytes that have no token; so does weft.
  }
  if (pending_unk) add(*unk_id);

  struct Candidate {
    int32_t rank, pos, new_id;
    bool operator<(const Candidate& o) const {  // the heap's top is the lowest (rank, pos)
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate> heap;
  auto push = [&](int pos) {
    const int next = symbols[pos].next;
    if (next < 0) return;
    const auto m = merges.find(pair_key(symbols[pos].id, symbols[next].id));
    if (m != merges.end()) heap.push(Candidate{m->second.rank, pos, m->second.new_id});
  };
  for (int i = 0; i + 1 < static_cast<int>(symbols.size()); ++i) push(i);
  while (!heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    Symbol& left = symbols[top.pos];
    if (left.removed || left.next < 0) continue;
    const auto m = merges.find(pair_key(left.id, symbols[left.next].id));
    if (m == merges.end() || m->second.new_id != top.new_id) continue;  // stale entry
    Symbol& right = symbols[left.next];
    left.id = top.new_id;
    right.removed = true;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) push(left.prev);
    push(top.pos);
  }
  for (const Symbol& s : symbols) {
    if (!s.removed) out.push_back(s.id);
  }
}

void Tokenizer::Impl::encode_segment(
    std::string_view segment, std::vector<int32_t>& out,
    std::unordered_map<std::string, std::vector<int32_t>>& cache) const {
  std::string prefixed;
  if (add_prefix_space && (segment.empty() || segment.front() != ' ')) {
    prefixed = " " + std::string(segment);
    segment = prefixed;
  }
  auto word = [&](std::string_view piece) {
    // Text repeats its words: merging each distinct one once makes encoding several times faster.
    constexpr size_t kMaxCached = 1 << 16;
    const auto hit = cache.find(std::string(piece));
    if (hit != cache.end()) {
      out.insert(out.end(), hit->second.begin(), hit->second.end());
      return;
    }
    std::vector<int32_t> ids;
    bpe(piece, ids);
    out.insert(out.end(), ids.begin(), ids.end());
    if (cache.size() < kMaxCached) cache.emplace(std::string(piece), std::move(ids));
  };
  if (!use_regex) {
    if (!segment.empty()) word(segment);
    return;
  }
  gpt2_pattern().split(segment,
                       [&](size_t begin, size_t end) { word(segment.substr(begin, end - begin)); });
}

Tokenizer Tokenizer::from_file(const std::string& path) { return from_json(read_file(path), path); }

Tokenizer Tokenizer::from_json(std::string_view text, const std::string& source) {
  auto impl = std::make_shared<Impl>();
  impl->source = source;
  impl->fingerprint = fnv1a(text);
  json j;
  try {
    j = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    WEFT_THROW(ErrorCode::kInvalidArgument, "tokenizer file '", source,
               "' is not JSON: ", e.what());
  }
  try {
    impl->load(j);
  } catch (const json::exception& e) {
    // A field of the wrong JSON type inside an accepted kind.
    WEFT_THROW(ErrorCode::kInvalidArgument, "tokenizer file '", source,
               "' is malformed: ", e.what());
  }
  return Tokenizer(std::move(impl));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  const Impl& t = *impl_;
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 1);
  std::unordered_map<std::string, std::vector<int32_t>> cache;
  size_t plain = 0;  // start of the text not yet encoded
  size_t at = 0;
  while (at < text.size() && !t.added.empty()) {
    // The longest added token starting here (leftmost-longest, as `tokenizers` matches them).
    if (!t.added_starts[static_cast<unsigned char>(text[at])]) {
      ++at;
      continue;
    }
    const AddedToken* best = nullptr;
    for (const AddedToken& a : t.added) {
      if (text.compare(at, a.content.size(), a.content) == 0 &&
          (best == nullptr || a.content.size() > best->content.size())) {
        best = &a;
      }
    }
    if (best == nullptr) {
      ++at;
      continue;
    }
    if (at > plain) t.encode_segment(text.substr(plain, at - plain), out, cache);
    out.push_back(best->id);
    at += best->content.size();
    plain = at;
  }
  if (plain < text.size()) t.encode_segment(text.substr(plain), out, cache);
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  const Impl& t = *impl_;
  std::string out;
  for (const int32_t id : ids) {
    const auto added = t.added_by_id.find(id);
    if (added != t.added_by_id.end()) {
      const AddedToken& a = t.added[added->second];
      if (!(skip_special && a.special)) out += a.content;
      continue;
    }
    WEFT_CHECK(id >= 0 && static_cast<size_t>(id) < t.tokens.size() && t.has_token[id],
               "tokenizer '", t.source, "': id ", id,
               " is neither in the vocabulary nor an added token (vocabulary size ", t.vocab_size,
               ")");
    // A token made only of byte-level characters stands for their bytes; any other stands for
    // itself (as `tokenizers`' ByteLevel decoder treats it).
    const std::string& token = t.tokens[id];
    std::string bytes;
    bool byte_level = true;
    for (size_t i = 0; i < token.size() && byte_level;) {
      const std::optional<uint32_t> cp = next_code_point(token, i);
      const std::optional<uint8_t> b = cp ? unicode_to_byte(*cp) : std::nullopt;
      if (b) {
        bytes.push_back(static_cast<char>(*b));
      } else {
        byte_level = false;
      }
    }
    out += byte_level ? bytes : token;
  }
  return out;
}

int64_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  for (const AddedToken& a : impl_->added) {
    if (a.content == token) return a.id;
  }
  const auto it = impl_->vocab.find(std::string(token));
  if (it == impl_->vocab.end()) return std::nullopt;
  return it->second;
}

std::string Tokenizer::id_to_token(int32_t id) const {
  const Impl& t = *impl_;
  const auto added = t.added_by_id.find(id);
  if (added != t.added_by_id.end()) return t.added[added->second].content;
  WEFT_CHECK(id >= 0 && static_cast<size_t>(id) < t.tokens.size() && t.has_token[id], "tokenizer '",
             t.source, "': id ", id, " has no token");
  return t.tokens[id];
}

const std::string& Tokenizer::source() const { return impl_->source; }

uint64_t Tokenizer::fingerprint() const { return impl_->fingerprint; }

}  // namespace weft
