// divide_exact: the one place that words a divisibility error.
#include "weft/partition.hpp"

#include "weft/error.hpp"

namespace weft {

int64_t divide_exact(int64_t value, int64_t parts, const char* what, const char* parts_name) {
  WEFT_CHECK(parts > 0, parts_name, " must be positive, got ", parts);
  WEFT_CHECK(value % parts == 0, what, " (", value, ") must be divisible by ", parts_name, " (",
             parts, ")");
  return value / parts;
}

}  // namespace weft
