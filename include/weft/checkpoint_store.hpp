// Crash-safe checkpoint saving: every save in its own step directory, published by atomically
// replacing a small `latest` pointer, so a crash or a full disk at any moment leaves the previous
// checkpoint loadable.
#pragma once

#include <string>
#include <vector>

#include "weft/gpt_checkpoint.hpp"

namespace weft {

// Layout of a checkpoint root (what gpt_train --save names):
//   ROOT/step-00000100/          a complete checkpoint (save_checkpoint's layout)
//   ROOT/step-00000100-2/        a second save of the same step (e.g. after a resume)
//   ROOT/latest                  one line: the name of the newest complete step directory
//   ROOT/step-00000200.partial/  a save in progress, or one a crash interrupted (removed later)
// A step directory is renamed into place only after every shard and the manifest are fsynced,
// and `latest` is replaced only after that rename is durable.

// Collective over `world`: every rank creates ROOT if needed and proves it can write a file
// there (each rank writes its own shards), then world rank 0 removes what crashed runs left
// (*.partial directories, *.tmp.<pid> files). Every rank throws weft::Error naming ROOT when any
// rank cannot write, so a run never finds out after training that its saves fail.
void prepare_checkpoint_root(const std::string& root, Communicator& world, Backend& backend);

// Collective over grid.world(): saves into ROOT/step-<step>.partial, renames it to its step
// directory, points ROOT/latest at it, and removes the oldest complete step directories beyond
// `keep_last` (0 keeps all). Returns the step directory's path.
std::string save_checkpoint_step(const std::string& root, const CheckpointInfo& info,
                                 const std::vector<Parameter*>& params, AdamW* optimizer,
                                 const ParallelGrid& grid, Backend& backend, int keep_last);

// The checkpoint directory `path` names: `path` itself when it holds manifest.json, else the
// step directory ROOT/latest names. weft::Error naming the path and what is missing otherwise.
std::string resolve_checkpoint(const std::string& path);

// The complete step directories under ROOT, oldest first (names only).
std::vector<std::string> list_checkpoint_steps(const std::string& root);

}  // namespace weft
