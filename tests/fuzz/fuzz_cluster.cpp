// Fuzz target: a planner cluster file as cluster_from_json parses and checks it, written back
// with cluster_to_json.
#include <cstdint>
#include <string>

#include "weft/plan.hpp"
#include "weft/weft.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const weft::plan::Cluster cluster = weft::plan::cluster_from_json(
        std::string(reinterpret_cast<const char*>(data), size), "fuzz input");
    weft::plan::cluster_to_json(cluster);
  } catch (const weft::Error&) {
  }
  return 0;
}
