// Counter-based RNG (Philox4x32-10): the same numbers on CPU and GPU for a given seed and counter.
//
// Each element of a global matrix draws from its own counter (offset + row * global_cols + col),
// so any rank can fill just its shard and get exactly the slice of the global tensor. That is
// what makes initialization identical at every tensor-parallel size.
#pragma once

#include <cmath>
#include <cstdint>

#include "weft/host_device.hpp"

namespace weft {

struct Philox4x32 {
  uint32_t v[4];
};

WEFT_HOST_DEVICE Philox4x32 philox4x32_10(Philox4x32 counter, uint32_t key0, uint32_t key1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = static_cast<uint64_t>(kMul0) * counter.v[0];
    uint64_t p1 = static_cast<uint64_t>(kMul1) * counter.v[2];
    Philox4x32 next;
    next.v[0] = static_cast<uint32_t>(p1 >> 32) ^ counter.v[1] ^ key0;
    next.v[1] = static_cast<uint32_t>(p1);
    next.v[2] = static_cast<uint32_t>(p0 >> 32) ^ counter.v[3] ^ key1;
    next.v[3] = static_cast<uint32_t>(p0);
    counter = next;
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
  return counter;
}

// Four independent 32-bit words for element `index` of the stream named by `seed`.
WEFT_HOST_DEVICE Philox4x32 philox_draw(uint64_t seed, uint64_t index) {
  Philox4x32 counter{{static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), 0u, 0u}};
  return philox4x32_10(counter, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Uniform in (0, 1): never exactly 0 or 1, so log() of it is always finite.
WEFT_HOST_DEVICE double bits_to_open_unit(uint32_t bits) {
  return (static_cast<double>(bits) + 0.5) * (1.0 / 4294967296.0);
}

// Dropout's mask: element `index` of a tensor is kept when its uniform draw from the stream
// (seed, offset + index) is >= probability. One rule on host and device, so a CPU and a GPU
// dropout with the same seed and offset drop the same elements.
WEFT_HOST_DEVICE bool dropout_keep(uint64_t seed, uint64_t offset, uint64_t index,
                                   float probability) {
  return bits_to_open_unit(philox_draw(seed, offset + index).v[0]) >=
         static_cast<double>(probability);
}

enum class Distribution { kUniform, kNormal };

// Describes how to fill a 2D view that is a window of a (possibly larger) global matrix.
struct RandomFill {
  Distribution distribution = Distribution::kNormal;
  uint64_t seed = 0;
  uint64_t offset = 0;       // counter of global element (0, 0)
  double a = 0.0;            // uniform: low bound;  normal: mean
  double b = 1.0;            // uniform: high bound; normal: standard deviation
  int64_t global_cols = -1;  // row length of the global matrix; -1: the view's own column count
  int64_t row0 = 0;          // where the view's element (0, 0) sits in the global matrix
  int64_t col0 = 0;

  // The global row length for a view of `view_cols` columns.
  WEFT_HOST_DEVICE int64_t row_length(int64_t view_cols) const {
    return global_cols < 0 ? view_cols : global_cols;
  }
};

// The value of global element (row, col). Computed in double on both host and device, so the
// float result agrees bit for bit between CPU and GPU (Box-Muller needs log/cos/sqrt).
WEFT_HOST_DEVICE float random_value(const RandomFill& fill, int64_t global_cols, int64_t row,
                                    int64_t col) {
  uint64_t index = fill.offset + static_cast<uint64_t>(row) * static_cast<uint64_t>(global_cols) +
                   static_cast<uint64_t>(col);
  Philox4x32 r = philox_draw(fill.seed, index);
  double u0 = bits_to_open_unit(r.v[0]);
  if (fill.distribution == Distribution::kUniform) {
    return static_cast<float>(fill.a + (fill.b - fill.a) * u0);
  }
  double u1 = bits_to_open_unit(r.v[1]);
  double z = sqrt(-2.0 * log(u0)) * cos(6.283185307179586 * u1);
  return static_cast<float>(fill.a + fill.b * z);
}

// A seed for one named stream (a parameter, a test tensor) derived from a base seed: FNV-1a of
// the name mixed with the seed. Stable across runs, platforms and TP sizes.
uint64_t derive_seed(uint64_t seed, const char* name);

}  // namespace weft
