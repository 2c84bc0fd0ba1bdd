// Glue between the examples and the layout planner: a planner ModelShape from a GPTConfig, and
// this machine's memory facts (bandwidth measured by copying, capacity from /proc/meminfo).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "weft/gpt.hpp"
#include "weft/plan.hpp"
#include "weft/runtime.hpp"

namespace weft::examples {

// The planner's view of a finalized GPTConfig (kv_heads and ffn_hidden filled in).
inline plan::ModelShape shape_of(const GPTConfig& c, int64_t seq_len) {
  plan::ModelShape m;
  m.layers = c.layers;
  m.hidden = c.hidden;
  m.heads = c.heads;
  m.kv_heads = c.kv_heads;
  m.ffn_hidden = c.ffn_hidden;
  m.seq_len = seq_len;
  m.vocab = c.vocab_size;
  m.gated_mlp = c.activation != MlpActivation::kGelu;
  m.learned_positions = !c.rotary;
  m.bias = c.bias;
  return m;
}

// Copy bandwidth of this process (read + write bytes per second, GB/s): the best of a few
// copies of 64 MiB, larger than the caches.
inline double measure_copy_bandwidth_gbps() {
  const size_t bytes = size_t{64} << 20;
  std::vector<char> a(bytes, 1), b(bytes, 2);
  double best = 0;
  for (int i = 0; i < 5; ++i) {
    const auto start = std::chrono::steady_clock::now();
    std::memcpy(b.data(), a.data(), bytes);
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::max(best, 2.0 * static_cast<double>(bytes) / s / 1e9);
    std::swap(a, b);
  }
  return best;
}

// MemTotal of /proc/meminfo in GiB (0 when unreadable).
inline double memory_total_gib() {
  return static_cast<double>(host_memory_bytes()) / (1024.0 * 1024.0 * 1024.0);
}

}  // namespace weft::examples
