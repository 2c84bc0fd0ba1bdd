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
  int pp = 1;
  int64_t step = 0;                 // optimizer steps taken
  uint64_t dropout_replicated = 0;  // DropoutRng counters
  uint64_t dropout_sharded = 0;
  std::string run_args = "{}";  // the program's own settings, as a JSON object
  // The tokenizer.json the model's ids mean ("" for bytes). save_checkpoint copies this file into
  // the checkpoint as tokenizer.json; read_checkpoint_info returns the path of that copy.
  std::string tokenizer;
};

// Layout of a checkpoint directory:
//   tp<t>_pp<s>.safetensors  the parameters held by TP rank t of pipeline rank s (by their global
//                            names) and, with an optimizer, their f32 master weights and moments
//                            ("<name>.master", ".exp_avg", ".exp_avg_sq"); written by the ranks
//                            of data-parallel rank 0;
//   tokenizer.json           a copy of info.tokenizer, when there is one (world rank 0);
//   manifest.json            written by world rank 0 last, after every shard is on disk: a
//                            directory without it is not a checkpoint.
// Collective over grid.world(). `params` are this rank's (a GPTModel's or a PipelineModel's).
void save_checkpoint(const std::string& dir, const CheckpointInfo& info,
                     const std::vector<Parameter*>& params, AdamW* optimizer,
                     const ParallelGrid& grid, Backend& backend);

// Reads the manifest of a checkpoint directory, or of the step a checkpoint root's `latest` names
// (checkpoint_store.hpp); weft::Error naming the file when it is missing or malformed.
CheckpointInfo read_checkpoint_info(const std::string& path_or_root);

// Loads `params` (and the optimizer state when `optimizer` is given) by name from the shards of
// this rank's TP rank, whatever pipeline layout saved them: parameter names are global, so a
// checkpoint loads at any pipeline size. The TP size must be the saved one; a different TP size
// or a missing or mismatched tensor is a weft::Error naming the file and tensor.
// `path_or_root` as for read_checkpoint_info.
void load_checkpoint(const std::string& path_or_root, const std::vector<Parameter*>& params,
                     AdamW* optimizer, const ParallelGrid& grid, Backend& backend);

}  // namespace weft
