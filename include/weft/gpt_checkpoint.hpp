// GPT checkpoints: per-rank safetensors shards plus a JSON manifest (config, layout, step,
// optimizer and RNG state), written so that a crash never leaves a checkpoint that looks whole;
// loadable at any layout (resharded at load, or ahead of time by reshard_checkpoint).
#pragma once

#include <string>
#include <vector>

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
  int virtual_stages = 1;  // model chunks per pipeline rank of the saving run
  // Filled by read_checkpoint_info: whether the shards hold optimizer state, and the manifest's
  // format version (1: shards without slice metadata, loadable only at their own TP size).
  bool has_optimizer = false;
  int version = 2;
  // Filled by read_checkpoint_info: the manifest says every shard records a checksum of every
  // tensor (checksums: "xxh3_64"; checkpoints saved before checksums existed have none).
  bool has_checksums = false;
};

// Where a stored tensor sits in the global tensor it is a block of: each shard file records it
// per tensor in its safetensors "__metadata__" (key: the stored tensor's name; value: the JSON
// object {"global_name": ..., "global_shape": [...], "partition_dim": d or null, "offset": o}),
// so that any reader can reassemble the global tensors. The stored tensor is elements
// [offset, offset + shape[d]) of the global tensor along d (the whole tensor when d is null).
struct TensorSlice {
  std::string name;         // stored name: the parameter's ("layers.0.attention.q.weight")
  std::string global_name;  // "layers.0.attention.qkv.weight"
  Shape global_shape;
  int partition_dim = -1;  // -1: replicated, the whole global tensor
  int64_t offset = 0;
  Shape shape;  // the stored block: global_shape with `count` along partition_dim
  // The parameter shard's extent along partition_dim (its local shape); the stored block is its
  // first shape[partition_dim] elements there, the rest being vocabulary padding.
  int64_t local_extent = 0;
};

// The global tensors of a GPT are its parameters at TP 1, except that the QKV projection is one
// tensor in the grouped layout (attention.hpp) whether or not key/value heads are replicated, and
// the token table holds the real vocabulary only (padding rows, whose number depends on tp, are
// never stored). These are the blocks TP rank `tp_rank` of `tp` holds of the parameters of
// `stage` (config finalized here for tp; weft::Error naming the values when tp does not divide
// the model).
std::vector<TensorSlice> gpt_parameter_slices(const GPTConfig& config, int tp, int tp_rank,
                                              const GPTStageLayout& stage = {});

// Layout of a checkpoint directory:
//   tp<t>_pp<s>.safetensors  the parameters held by TP rank t of pipeline rank s (by their global
//                            names) and, with an optimizer, their f32 master weights and moments
//                            ("<name>.master", ".exp_avg", ".exp_avg_sq"); written by the ranks
//                            of data-parallel rank 0;
//   tokenizer.json           a copy of info.tokenizer, when there is one (world rank 0);
//   manifest.json            written by world rank 0 last, after every shard is on disk: a
//                            directory without it is not a checkpoint.
// Every shard records an XXH3-64 checksum of each tensor (checkpoint.hpp), and the manifest says
// so ("checksums": "xxh3_64"). Collective over grid.world(); a failure on any rank (a full disk)
// is a weft::Error on every rank, and leaves no manifest. `params` are this rank's (a GPTModel's
// or a PipelineModel's).
void save_checkpoint(const std::string& dir, const CheckpointInfo& info,
                     const std::vector<Parameter*>& params, AdamW* optimizer,
                     const ParallelGrid& grid, Backend& backend);

// The manifest.json text save_checkpoint writes for `info` (format version 2): for tools that
// write shard files themselves (hf_convert.hpp).
std::string checkpoint_manifest(const CheckpointInfo& info, bool has_optimizer);

// Reads the manifest of a checkpoint directory, or of the step a checkpoint root's `latest` names
// (checkpoint_store.hpp); weft::Error naming the file when it is missing or malformed.
CheckpointInfo read_checkpoint_info(const std::string& path_or_root);

// Loads `params` (and the optimizer state when `optimizer` is given: f32 master weights, both
// moments, the step count) at this run's layout, whatever TP x PP x DP layout saved them: each
// rank reads every shard's header, then only the blocks of the global tensors its own shards
// cover (memory: its own shards and one tensor's staging). Vocabulary padding rows are left as
// they are. The whole checkpoint is checked against its manifest's config first, on every rank
// alike: a missing file or tensor, a tensor whose global shape, partition or dtype disagrees
// with the config, blocks that leave part of a tensor uncovered, a layout that does not divide
// the model, a tensor a shard should not hold, a manifest from a newer weft or with a field out
// of range: weft::Error naming the file, the field and the value. Then each rank reads what it
// needs into host memory (memory: its shards twice, briefly), verifying every tensor's checksum
// (when the manifest says there are checksums; older checkpoints load without) and that every
// value is finite. Parameters change only after every rank succeeded: a failure on any rank
// (a corrupt, truncated or unreadable shard) is a weft::Error on every rank ("rank R: ...").
// Version-1 checkpoints (no slice metadata) load at their own TP size only; otherwise the error
// names the file and the missing metadata. `path_or_root` as for read_checkpoint_info.
void load_checkpoint(const std::string& path_or_root, const std::vector<Parameter*>& params,
                     AdamW* optimizer, const ParallelGrid& grid, Backend& backend);

// One global tensor of a checkpoint, as its shards describe it.
struct CheckpointTensor {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;             // global
  int partition_dim = -1;  // -1: replicated
  int64_t blocks = 0;      // stored blocks, replicas included
  int64_t stored_bytes = 0;
};
// Reads the manifest and every shard's header (no tensor data) and checks them as load_checkpoint
// does; returns the global tensors sorted by name. No MPI needed. `path_or_root` as for
// read_checkpoint_info.
std::vector<CheckpointTensor> list_checkpoint_tensors(const std::string& path_or_root);

// Writes checkpoint `src` (a directory, or a root whose `latest` names one) at layout (tp, pp,
// virtual_stages) to `dst`, shard files equal byte for byte to those a run at that layout saves
// after load_checkpoint(src), and the manifest with the new layout. No MPI needed; memory: one
// tensor block at a time. Written into a temporary directory beside `dst`, renamed to `dst` at the
// end (dst must not exist). weft::Error naming the value when the layout does not divide the model,
// and as load_checkpoint for a bad `src`.
void reshard_checkpoint(const std::string& src, const std::string& dst, int tp, int pp,
                        int virtual_stages = 1);

}  // namespace weft
