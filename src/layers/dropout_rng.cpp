// DropoutRng: seeds for replicated and sharded regions, and their counters.
#include <string>

#include "weft/dropout.hpp"
#include "weft/rng.hpp"

namespace weft {

DropoutRng::DropoutRng(uint64_t seed, int tp_rank)
    : replicated_seed_(derive_seed(seed, "dropout.replicated")),
      sharded_seed_(derive_seed(seed, ("dropout.sharded.tp" + std::to_string(tp_rank)).c_str())) {}

DropoutRng::Draw DropoutRng::replicated(int64_t elements) {
  Draw d{replicated_seed_, replicated_offset_};
  replicated_offset_ += static_cast<uint64_t>(elements);
  return d;
}

DropoutRng::Draw DropoutRng::sharded(int64_t elements) {
  Draw d{sharded_seed_, sharded_offset_};
  sharded_offset_ += static_cast<uint64_t>(elements);
  return d;
}

void DropoutRng::set_offsets(uint64_t replicated, uint64_t sharded) {
  replicated_offset_ = replicated;
  sharded_offset_ = sharded;
}

}  // namespace weft
