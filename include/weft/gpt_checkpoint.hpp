// GPT checkpoints: per-rank safetensors shards plus a JSON manifest (config, layout, step,
// optimizer and RNG state), written so that a crash never leaves a checkpoint that looks whole.
#pragma once

#include <string>

#include "weft/gpt.hpp"
#include "weft/grid.hpp"
#include "weft/optimizer.hpp"

namespace weft {

struct CheckpointInfo {
  GPTConfig config;
  int tp = 1;
  int64_t step = 0;                 // optimizer steps taken
  uint64_t dropout_replicated = 0;  // DropoutRng counters
  uint64_t dropout_sharded = 0;
  std::string run_args = "{}";  // the program's own settings, as a JSON object
};

// Layout of a checkpoint directory:
//   tp<r>.safetensors  this TP rank's parameter shards and (with an optimizer) its f32 master
//                      weights and moments ("<name>", "<name>.master", ".exp_avg", ".exp_avg_sq"),
//                      written by the ranks of data-parallel rank 0 and pipeline rank 0;
//   manifest.json      written by world rank 0 last, after every shard is on disk: a directory
//                      without it is not a checkpoint.
// Collective over grid.world().
void save_checkpoint(const std::string& dir, const CheckpointInfo& info, GPTModel& model,
                     AdamW* optimizer, const ParallelGrid& grid, Backend& backend);

// Reads dir/manifest.json; weft::Error naming the file when it is missing or malformed.
CheckpointInfo read_checkpoint_info(const std::string& dir);

// Loads this rank's shards (and optimizer state when `optimizer` is given). The model must have
// been built from the manifest's config at its TP size: a different TP size or a missing or
// mismatched tensor is a weft::Error naming the file and tensor.
void load_checkpoint(const std::string& dir, GPTModel& model, AdamW* optimizer,
                     const ParallelGrid& grid, Backend& backend);

}  // namespace weft
