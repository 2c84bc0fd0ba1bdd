// DropoutRng: Megatron's model-parallel RNG tracker, counter-based so that it has no state to
// fork or restore beyond two counters.
#pragma once

#include <cstdint>

namespace weft {

// Dropout masks come from Philox(seed, offset + element): a draw is a (seed, offset) pair and
// the counters advance by the elements drawn. Replicated regions (activations identical on every
// TP rank: the residual stream) must draw identical masks on all TP ranks, so their seed ignores
// the TP rank; sharded regions (each rank's own heads or columns) must draw different masks, so
// their seed mixes it in. Both advance the same way on every rank, so ranks stay in step.
class DropoutRng {
 public:
  struct Draw {
    uint64_t seed;
    uint64_t offset;
  };

  DropoutRng(uint64_t seed, int tp_rank);

  Draw replicated(int64_t elements);
  Draw sharded(int64_t elements);

  // For checkpoints: the counters, and setting them back.
  uint64_t replicated_offset() const { return replicated_offset_; }
  uint64_t sharded_offset() const { return sharded_offset_; }
  void set_offsets(uint64_t replicated, uint64_t sharded);

 private:
  uint64_t replicated_seed_, sharded_seed_;
  uint64_t replicated_offset_ = 0, sharded_offset_ = 0;
};

}  // namespace weft
