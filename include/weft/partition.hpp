// Shard arithmetic: how a global dimension splits evenly across ranks.
#pragma once

#include <cstdint>

namespace weft {

// value / parts, or weft::Error naming `what`, the value and the part count when it does not
// divide evenly: "out_features (10) must be divisible by the tensor-parallel size (4)".
int64_t divide_exact(int64_t value, int64_t parts, const char* what, const char* parts_name);

// One rank's contiguous block of a dimension of size `global` split into `count` equal parts.
struct Partition {
  int64_t global = 0;
  int count = 1;
  int index = 0;

  int64_t local() const { return global / count; }
  int64_t begin() const { return local() * index; }
  int64_t end() const { return begin() + local(); }
};

}  // namespace weft
