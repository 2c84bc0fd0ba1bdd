// Fuzz target: a safetensors file as the checkpoint loader opens it (header validation, then every
// tensor read). Anything but a clean weft::Error is a finding.
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz/fuzz_util.hpp"
#include "weft/weft.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::unique_ptr<weft::Backend> backend = weft::make_cpu_backend();
  const std::string path = weft::fuzz::write_input("input.safetensors", data, size);
  try {
    weft::SafetensorsReader reader(path);
    for (const std::string& name : reader.names()) {
      const weft::Shape shape = reader.shape(name);
      if (shape.numel() > (int64_t{1} << 20)) continue;  // validated, but not worth the memory
      weft::Tensor host(*backend, shape, reader.dtype(name));
      reader.read(name, host.view(), *backend);
    }
  } catch (const weft::Error&) {
  }
  return 0;
}
