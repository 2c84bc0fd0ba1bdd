// tokenizer_check: weft's encode against ids computed by another implementation, text by text.
//   tokenizer_check [--ids-only] TOKENIZER_JSON TEXT IDS [TEXT IDS ...]
// IDS holds the expected ids, white-space separated. For each text: the ids must be equal, all of
// them, and decode(encode(text)) must give the text's bytes back (unless --ids-only: a tokenizer
// that adds a prefix space does not round-trip). Prints one line per text (with
// the first difference and the tokens around it when there is one); exit status 1 on any failure.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "weft/checkpoint.hpp"
#include "weft/tokenizer.hpp"

namespace {

std::vector<int32_t> read_ids(const std::string& path) {
  std::ifstream in(path);
  std::vector<int32_t> ids;
  for (long long id; in >> id;) ids.push_back(static_cast<int32_t>(id));
  return ids;
}

// The tokens at ids[from, to) as their strings, for a readable mismatch report.
std::string show(const weft::Tokenizer& t, const std::vector<int32_t>& ids, size_t from,
                 size_t to) {
  std::ostringstream os;
  for (size_t i = from; i < to && i < ids.size(); ++i) {
    os << (i == from ? "" : " ") << ids[i] << ":'";
    try {
      os << t.id_to_token(ids[i]);
    } catch (const std::exception&) {
      os << "?";
    }
    os << "'";
  }
  return os.str();
}

}  // namespace

int main(int argc, char** argv) {
  const bool ids_only = argc > 1 && std::string(argv[1]) == "--ids-only";
  if (ids_only) {
    --argc;
    ++argv;
  }
  if (argc < 4 || argc % 2 != 0) {
    std::fprintf(stderr,
                 "usage: tokenizer_check [--ids-only] TOKENIZER_JSON TEXT IDS [TEXT IDS ...]\n");
    return 2;
  }
  try {
    const weft::Tokenizer tokenizer = weft::Tokenizer::from_file(argv[1]);
    int failures = 0;
    double seconds = 0.0;
    size_t bytes = 0;
    for (int a = 2; a < argc; a += 2) {
      const std::string text = weft::read_file(argv[a]);
      const std::vector<int32_t> expected = read_ids(argv[a + 1]);
      const auto start = std::chrono::steady_clock::now();
      const std::vector<int32_t> ids = tokenizer.encode(text);
      seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      bytes += text.size();
      size_t diff = 0;
      while (diff < ids.size() && diff < expected.size() && ids[diff] == expected[diff]) ++diff;
      const bool same = ids == expected;
      const bool round_trip = ids_only || tokenizer.decode(ids) == text;
      std::printf("%-28s %7zu bytes %6zu tokens: ids %s, decode(encode(x)) %s\n", argv[a],
                  text.size(), ids.size(), same ? "equal" : "DIFFER",
                  ids_only     ? "not checked"
                  : round_trip ? "== x"
                               : "!= x");
      if (!same) {
        const size_t from = diff >= 3 ? diff - 3 : 0;
        std::printf(
            "  first difference at token %zu of %zu (expected %zu)\n    weft:     %s\n"
            "    expected: %s\n",
            diff, ids.size(), expected.size(), show(tokenizer, ids, from, diff + 4).c_str(),
            show(tokenizer, expected, from, diff + 4).c_str());
      }
      failures += (same ? 0 : 1) + (round_trip ? 0 : 1);
    }
    std::printf("%s: %d failure(s); weft encoded %zu bytes in %.3f s (%.1f MB/s, one thread)\n",
                failures == 0 ? "PASS" : "FAIL", failures, bytes, seconds,
                seconds > 0 ? bytes / seconds / 1e6 : 0.0);
    return failures == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tokenizer_check: %s\n", e.what());
    return 1;
  }
}
