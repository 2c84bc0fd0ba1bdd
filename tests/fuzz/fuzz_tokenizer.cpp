// Fuzz target: a tokenizer.json as Tokenizer::from_json checks it, then an encode/decode round
// trip of a fixed text through whatever it accepted.
#include <cstdint>
#include <string>
#include <string_view>

#include "weft/weft.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const weft::Tokenizer tokenizer = weft::Tokenizer::from_json(
        std::string_view(reinterpret_cast<const char*>(data), size), "fuzz input");
    const std::string text = "Hello, w\xc3\xb6rld! 123  \n\tweft's \xff bytes";
    tokenizer.decode(tokenizer.encode(text));
  } catch (const weft::Error&) {
  }
  return 0;
}
