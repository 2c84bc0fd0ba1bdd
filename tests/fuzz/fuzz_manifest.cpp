// Fuzz target: a checkpoint manifest.json as read_checkpoint_info parses and checks it.
#include <cstdint>
#include <string>

#include "fuzz/fuzz_util.hpp"
#include "weft/weft.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = weft::fuzz::write_input("manifest.json", data, size);
  try {
    const std::string dir = path.substr(0, path.rfind('/'));
    weft::read_checkpoint_info(dir);
  } catch (const weft::Error&) {
  }
  return 0;
}
