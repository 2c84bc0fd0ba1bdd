// Unit tests of the byte-level BPE tokenizer: the byte map, the GPT-2 pattern's pieces (ASCII,
// non-ASCII, invalid UTF-8), merges by rank on a hand-made tokenizer.json, added tokens, decode,
// and files of kinds weft rejects.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "common/temp_dir.hpp"
#include "weft/data.hpp"
#include "weft/error.hpp"
#include "weft/tokenizer.hpp"

namespace weft {
namespace {

using json = nlohmann::json;

// A tiny GPT-2-style tokenizer: the 256 byte characters as ids 0..255 in byte order, then merged
// tokens whose ranks make the merge order matter ("hello" needs "l l" before "e l" goes stale).
json tiny_tokenizer() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_to_unicode(static_cast<uint8_t>(b))] = b;
  const std::vector<std::string> merged = {"ll", "el", "he", "hell", "hello", "aa", "Ġw", "Ġwo"};
  for (size_t i = 0; i < merged.size(); ++i) vocab[merged[i]] = 256 + static_cast<int>(i);
  return json{
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", json::array({{{"id", 300},
                                     {"content", "<|endoftext|>"},
                                     {"single_word", false},
                                     {"lstrip", false},
                                     {"rstrip", false},
                                     {"normalized", false},
                                     {"special", true}}})},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "ByteLevel"},
        {"add_prefix_space", false},
        {"trim_offsets", true},
        {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"vocab", vocab},
        // Both forms `tokenizers` writes: "a b" (up to 0.19) and ["a", "b"] (0.20 on).
        {"merges", json::array({"l l", "e l", json::array({"h", "e"}), "he ll", "hell o", "a a",
                                "Ġ w", "Ġw o"})}}}};
}

Tokenizer load(const json& j) { return Tokenizer::from_json(j.dump(), "tiny.json"); }

int32_t id_of(const Tokenizer& t, const std::string& token) {
  const std::optional<int32_t> id = t.token_to_id(token);
  EXPECT_TRUE(id.has_value()) << token;
  return id.value_or(-1);
}

TEST(Tokenizer, ByteMapIsGpt2s) {
  EXPECT_EQ(byte_to_unicode(' '), "\u0120");   // Ġ
  EXPECT_EQ(byte_to_unicode('\n'), "\u010A");  // Ċ
  EXPECT_EQ(byte_to_unicode(0), "\u0100");
  EXPECT_EQ(byte_to_unicode(127), "\u0121");  // after the 33 bytes 0..32
  EXPECT_EQ(byte_to_unicode(160), "\u0142");
  EXPECT_EQ(byte_to_unicode(173), "\u0143");  // the soft hyphen is the 68th and last
  EXPECT_EQ(byte_to_unicode('a'), "a");
  EXPECT_EQ(byte_to_unicode('!'), "!");
  EXPECT_EQ(byte_to_unicode(0xE9), "\u00E9");  // é stands for itself
  std::set<std::string> seen;
  for (int b = 0; b < 256; ++b) {
    const std::string s = byte_to_unicode(static_cast<uint8_t>(b));
    seen.insert(s);
    // Decode the one character back to its code point and through the inverse map.
    uint32_t cp = static_cast<unsigned char>(s[0]);
    if (s.size() == 2) cp = ((cp & 0x1F) << 6) | (static_cast<unsigned char>(s[1]) & 0x3F);
    EXPECT_EQ(unicode_to_byte(cp), std::optional<uint8_t>(static_cast<uint8_t>(b))) << b;
  }
  EXPECT_EQ(seen.size(), 256u);
  EXPECT_FALSE(unicode_to_byte(' ').has_value());
  EXPECT_FALSE(unicode_to_byte(0x144).has_value());
}

TEST(Tokenizer, Gpt2PatternPieces) {
  using Pieces = std::vector<std::string>;
  EXPECT_EQ(gpt2_pre_tokenize("Hello world's 123 done!!  \n x"),
            (Pieces{"Hello", " world", "'s", " 123", " done", "!!", "  \n", " x"}));
  EXPECT_EQ(gpt2_pre_tokenize("I'll don't IT'S"),
            (Pieces{"I", "'ll", " don", "'t", " IT", "'", "S"}));
  EXPECT_EQ(gpt2_pre_tokenize("end  "), (Pieces{"end", "  "}));
  // Only a space joins the word after it; a tab stays apart.
  EXPECT_EQ(gpt2_pre_tokenize("a\t\tb"), (Pieces{"a", "\t", "\t", "b"}));
  // Letters and digits of any script are \p{L} and \p{N}; the space before them joins them.
  EXPECT_EQ(gpt2_pre_tokenize("Grüße, мир! 東京2024年 ١٢٣"),
            (Pieces{"Grüße", ",", " мир", "!", " 東京", "2024", "年", " ١٢٣"}));
  // A no-break space is white space, not a letter or symbol.
  EXPECT_EQ(gpt2_pre_tokenize("a\u00A0b"), (Pieces{"a", "\u00A0", "b"}));
  // Bytes that are not UTF-8 match nothing and come out as pieces of their own.
  EXPECT_EQ(gpt2_pre_tokenize("ab\xFF\xFE cd"), (Pieces{"ab", "\xFF\xFE", " cd"}));
  EXPECT_TRUE(gpt2_pre_tokenize("").empty());
}

TEST(Tokenizer, PiecesConcatenateToTheText) {
  const std::string text =
      "Pi\xC3\xB1"
      "a  colada\r\n\tx \xE2\x80\xA8y 3.14 \xF0\x9F\x98\x80!\xC3";
  std::string joined;
  for (const std::string& p : gpt2_pre_tokenize(text)) {
    EXPECT_FALSE(p.empty());
    joined += p;
  }
  EXPECT_EQ(joined, text);
}

TEST(Tokenizer, MergesByRankLeftmostFirst) {
  const Tokenizer t = load(tiny_tokenizer());
  EXPECT_EQ(t.vocab_size(), 301);  // the added token's id 300 is the largest
  // "l l" (rank 0) first makes "e l" (rank 1) stale; then h+e, he+ll, hell+o.
  EXPECT_EQ(t.encode("hello"), (std::vector<int32_t>{id_of(t, "hello")}));
  // Rank beats position: "e l" (rank 1) merges before "h e" (rank 2) to its left.
  EXPECT_EQ(t.encode("hel"), (std::vector<int32_t>{'h', id_of(t, "el")}));
  EXPECT_EQ(t.encode("ell"), (std::vector<int32_t>{'e', id_of(t, "ll")}));
  // Equal ranks merge leftmost first: aaa -> aa a, aaaa -> aa aa.
  const int32_t aa = id_of(t, "aa");
  EXPECT_EQ(t.encode("aaa"), (std::vector<int32_t>{aa, 'a'}));
  EXPECT_EQ(t.encode("aaaa"), (std::vector<int32_t>{aa, aa}));
  // Pieces never merge across the pattern's boundaries: " wo" is one piece, "hello" another.
  const int32_t space = id_of(t, "\u0120");
  EXPECT_EQ(t.encode("hello world"),
            (std::vector<int32_t>{id_of(t, "hello"), id_of(t, "\u0120wo"), 'r', 'l', 'd'}));
  EXPECT_EQ(t.encode("hello  wo"),
            (std::vector<int32_t>{id_of(t, "hello"), space, id_of(t, "\u0120wo")}));
  // Non-ASCII bytes map through the byte alphabet: é is C3 A9.
  EXPECT_EQ(t.encode("\xC3\xA9"), (std::vector<int32_t>{0xC3, 0xA9}));
  EXPECT_TRUE(t.encode("").empty());
}

TEST(Tokenizer, AddedTokensSplitFirstAndDecode) {
  json j = tiny_tokenizer();
  j["added_tokens"].push_back({{"id", 301}, {"content", "<|end"}, {"special", false}});
  const Tokenizer t = load(j);
  EXPECT_EQ(t.vocab_size(), 302);
  // The longest added token at the leftmost position wins over its prefix "<|end".
  const std::vector<int32_t> ids = t.encode("hello<|endoftext|>aa<|end");
  EXPECT_EQ(ids, (std::vector<int32_t>{id_of(t, "hello"), 300, id_of(t, "aa"), 301}));
  EXPECT_EQ(t.decode(ids), "hello<|endoftext|>aa<|end");
  EXPECT_EQ(t.decode(ids, /*skip_special=*/true), "helloaa<|end");
  EXPECT_EQ(t.id_to_token(300), "<|endoftext|>");
  EXPECT_EQ(t.id_to_token(id_of(t, "\u0120wo")), "\u0120wo");
}

TEST(Tokenizer, DecodeInvertsEncodeOnAnyBytes) {
  const Tokenizer t = load(tiny_tokenizer());
  std::string bytes(4096, '\0');
  uint32_t x = 7;
  for (char& c : bytes) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  for (const std::string& text :
       {bytes,
        std::string("hello  world\n\n  aaaa\xE6\x9D\xB1\xE4\xBA\xAC \xD0\xBC\xD0\xB8\xD1\x80")}) {
    EXPECT_EQ(t.decode(t.encode(text)), text);
  }
  EXPECT_THROW(t.decode({302}), Error);
  EXPECT_THROW(t.decode({-1}), Error);
}

TEST(Tokenizer, PrefixSpaceWholePiecesAndIgnoreMerges) {
  json j = tiny_tokenizer();
  j["pre_tokenizer"]["add_prefix_space"] = true;
  const Tokenizer prefixed = load(j);
  EXPECT_EQ(prefixed.encode("hello"),
            (std::vector<int32_t>{id_of(prefixed, "\u0120"), id_of(prefixed, "hello")}));
  EXPECT_EQ(prefixed.encode(" wo"), (std::vector<int32_t>{id_of(prefixed, "\u0120wo")}));

  j = tiny_tokenizer();
  j["pre_tokenizer"]["use_regex"] = false;  // the whole text is one piece
  const Tokenizer whole = load(j);
  EXPECT_EQ(whole.encode("aa aa"),
            (std::vector<int32_t>{id_of(whole, "aa"), ' ', id_of(whole, "aa")}));
  EXPECT_EQ(whole.encode("a wo"), (std::vector<int32_t>{'a', id_of(whole, "\u0120wo")}));

  // ignore_merges: a piece that is itself a vocabulary entry is that one id, even where the
  // merges would not build it ("ehll" has no merge path; here it is in the vocabulary).
  j = tiny_tokenizer();
  j["model"]["vocab"]["ehll"] = 400;
  EXPECT_EQ(load(j).encode("ehll"), (std::vector<int32_t>{'e', 'h', id_of(load(j), "ll")}));
  j["model"]["ignore_merges"] = true;
  EXPECT_EQ(load(j).encode("ehll"), (std::vector<int32_t>{400}));
}

TEST(Tokenizer, UnknownBytesBecomeUnkOrVanish) {
  json j = tiny_tokenizer();
  j["model"]["vocab"].erase("z");
  j["model"]["vocab"].erase("y");
  j["model"]["vocab"]["<unk>"] = 122;  // 'z''s old id
  const Tokenizer dropped = load(j);
  EXPECT_EQ(dropped.encode("azy"), (std::vector<int32_t>{'a'}));  // as `tokenizers` does
  j["model"]["unk_token"] = "<unk>";
  EXPECT_EQ(load(j).encode("azy"), (std::vector<int32_t>{'a', 122, 122}));
  j["model"]["fuse_unk"] = true;
  EXPECT_EQ(load(j).encode("azya"), (std::vector<int32_t>{'a', 122, 'a'}));
}

// Loading `j` fails with a weft::Error whose message holds every one of `parts`.
void expect_rejected(const json& j, const std::vector<std::string>& parts) {
  try {
    load(j);
    ADD_FAILURE() << "accepted " << j.dump().substr(0, 200);
  } catch (const Error& e) {
    for (const std::string& p : parts) {
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
          << "'" << p << "' missing from: " << e.what();
    }
  }
}

TEST(Tokenizer, RejectsKindsItDoesNotImplement) {
  json j = tiny_tokenizer();
  j["model"]["type"] = "WordPiece";
  expect_rejected(j, {"tiny.json", "model.type", "WordPiece"});
  j = tiny_tokenizer();
  j["normalizer"] = {{"type", "NFC"}};
  expect_rejected(j, {"tiny.json", "normalizer", "NFC"});
  j = tiny_tokenizer();
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\u2581"}};
  expect_rejected(j, {"pre_tokenizer", "Metaspace"});
  j = tiny_tokenizer();
  j["pre_tokenizer"] = nullptr;
  expect_rejected(j, {"pre_tokenizer", "null"});
  j = tiny_tokenizer();
  j["decoder"] = {{"type", "WordPiece"}};
  expect_rejected(j, {"decoder", "WordPiece"});
  j = tiny_tokenizer();
  j["post_processor"] = {{"type", "TemplateProcessing"}};
  expect_rejected(j, {"post_processor", "TemplateProcessing"});
  j = tiny_tokenizer();
  j["truncation"] = {{"max_length", 512}};
  expect_rejected(j, {"truncation", "512"});
  j = tiny_tokenizer();
  j["model"]["dropout"] = 0.1;
  expect_rejected(j, {"model.dropout", "0.1"});
  j = tiny_tokenizer();
  j["model"]["byte_fallback"] = true;
  expect_rejected(j, {"model.byte_fallback"});
  j = tiny_tokenizer();
  j["model"]["continuing_subword_prefix"] = "##";
  expect_rejected(j, {"model.continuing_subword_prefix", "##"});
  j = tiny_tokenizer();
  j["added_tokens"][0]["lstrip"] = true;
  expect_rejected(j, {"added_tokens[0].lstrip"});
}

TEST(Tokenizer, RejectsBrokenFiles) {
  json j = tiny_tokenizer();
  j["model"]["merges"].push_back("h q");  // "hq" is not in the vocabulary
  expect_rejected(j, {"model.merges[8]", "h q", "hq"});
  j = tiny_tokenizer();
  j["model"]["merges"].push_back("hello");
  expect_rejected(j, {"model.merges[8]", "two tokens"});
  j = tiny_tokenizer();
  j["model"]["vocab"]["dup"] = 5;
  expect_rejected(j, {"model.vocab", "already belongs", "dup"});
  j = tiny_tokenizer();
  j["model"]["vocab"]["neg"] = -3;
  expect_rejected(j, {"model.vocab[\"neg\"]", "-3"});
  j = tiny_tokenizer();
  j["model"]["unk_token"] = "<nope>";
  expect_rejected(j, {"model.unk_token", "<nope>"});
  j = tiny_tokenizer();
  j["added_tokens"][0]["id"] = 5;  // "<|endoftext|>" is not token 5
  j["model"]["vocab"]["<|endoftext|>"] = 299;
  expect_rejected(j, {"added_tokens[0].id", "299"});
  j = tiny_tokenizer();
  j["model"].erase("vocab");
  expect_rejected(j, {"model.vocab"});

  EXPECT_THROW(Tokenizer::from_json("{\"model\": ", "cut.json"), Error);
  try {
    Tokenizer::from_json("[1, 2]", "list.json");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("list.json"), std::string::npos) << e.what();
  }
  testing::TempDir dir;
  EXPECT_THROW(Tokenizer::from_file(dir.file("missing.json")), Error);
  const std::string path = dir.write("tokenizer.json", tiny_tokenizer().dump());
  const Tokenizer from_file = Tokenizer::from_file(path);
  EXPECT_EQ(from_file.source(), path);
  EXPECT_EQ(from_file.encode("hello"), load(tiny_tokenizer()).encode("hello"));
  // The fingerprint follows the file's bytes.
  json other = tiny_tokenizer();
  other["model"]["merges"].erase(other["model"]["merges"].end() - 1);
  EXPECT_NE(load(other).fingerprint(), from_file.fingerprint());
  EXPECT_EQ(load(tiny_tokenizer()).fingerprint(), from_file.fingerprint());
}

// TextDataset with a tokenizer: the ids are the tokenizer's, cached beside the text and reused
// only for the same text and tokenizer.
TEST(Tokenizer, DatasetTokenisesOnceIntoACache) {
  testing::TempDir dir;
  std::string text;
  for (int i = 0; i < 40; ++i) text += "hello world, aaa " + std::to_string(i) + "\n";
  const std::string path = dir.write("text.txt", text);
  const Tokenizer t = load(tiny_tokenizer());
  const std::vector<int32_t> ids = t.encode(text);
  const std::string cache = TextDataset::token_cache_path(path, t);
  EXPECT_EQ(cache.rfind(path + ".", 0), 0u) << cache;

  const TextDataset first(path, t, 0.0);
  EXPECT_FALSE(first.from_cache());
  EXPECT_TRUE(std::filesystem::exists(cache));
  ASSERT_EQ(first.size(), static_cast<int64_t>(ids.size()));
  // A window of the whole split is the encoding itself, shifted by one for the targets.
  const int64_t seq = first.size() - 1;
  std::vector<int32_t> x(seq, -1), y(seq, -1);
  first.batch(false, 1, 0, seq, 1, x.data(), y.data());
  EXPECT_EQ(x, std::vector<int32_t>(ids.begin(), ids.end() - 1));
  EXPECT_EQ(y, std::vector<int32_t>(ids.begin() + 1, ids.end()));

  const TextDataset second(path, t, 0.0);
  EXPECT_TRUE(second.from_cache());
  EXPECT_EQ(second.size(), first.size());
  std::vector<int32_t> x2(seq, -1), y2(seq, -1);
  second.batch(false, 1, 0, seq, 1, x2.data(), y2.data());
  EXPECT_EQ(x2, x);

  // A changed text of the same size tokenises again (and rewrites the cache).
  std::string changed = text;
  changed[0] = 'j';
  dir.write("text.txt", changed);
  const TextDataset third(path, t, 0.0);
  EXPECT_FALSE(third.from_cache());
  EXPECT_EQ(third.size(), static_cast<int64_t>(t.encode(changed).size()));
  EXPECT_TRUE(TextDataset(path, t, 0.0).from_cache());
  // Another tokenizer has its own cache file.
  json j = tiny_tokenizer();
  j["model"]["merges"].erase(j["model"]["merges"].begin() + 5);  // no "a a"
  const Tokenizer other = load(j);
  EXPECT_NE(TextDataset::token_cache_path(path, other), cache);
  const TextDataset fourth(path, other, 0.0);
  EXPECT_FALSE(fourth.from_cache());
  EXPECT_GT(fourth.size(), third.size());
  // A cut cache file is not trusted.
  const std::string cut = TextDataset::token_cache_path(path, other);
  std::filesystem::resize_file(cut, std::filesystem::file_size(cut) - 4);
  EXPECT_FALSE(TextDataset(path, other, 0.0).from_cache());
}

TEST(Tokenizer, DatasetTooShortNamesTokensAndTokenizer) {
  testing::TempDir dir;
  const std::string path = dir.write("short.txt", "hello hello");  // hello, Ġ, hello
  try {
    TextDataset(path, load(tiny_tokenizer()), 0.5);
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    const std::string m = e.what();
    for (const char* part : {"short.txt", "tokenises to 3 tokens", "tiny.json", "needs at least"}) {
      EXPECT_NE(m.find(part), std::string::npos) << part << " missing from: " << m;
    }
  }
}

}  // namespace
}  // namespace weft
