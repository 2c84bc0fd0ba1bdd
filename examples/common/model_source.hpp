// What the programs' --load takes: a weft checkpoint (directory or root) or a Hugging Face model
// directory (config.json + model.safetensors), read through one interface.
#pragma once

#include <string>
#include <vector>

#include "common/flags.hpp"
#include "weft/weft.hpp"

namespace weft::examples {

struct ModelSource {
  std::string path;
  bool hf = false;        // a Hugging Face directory (hf_convert.hpp)
  GPTConfig config;       // not finalized
  std::string tokenizer;  // the tokenizer.json it carries ("" for none)
  int tp = 1;             // the saving tensor-parallel size (1 for HF)
  int64_t step = 0;
};

// read_hf_config, with a model weft does not implement (the same on every rank) reported as a
// usage error: exit status 2 after rank 0 prints the file, the field and the value.
inline HfModelInfo read_hf_model_config(const std::string& path) {
  try {
    return read_hf_config(path);
  } catch (const Error& e) {
    if (e.code() != ErrorCode::kInvalidArgument) throw;
    throw UsageError(e.message());
  }
}

inline ModelSource open_model(const std::string& path) {
  ModelSource m;
  m.path = path;
  if (is_hf_model_dir(path)) {
    const HfModelInfo info = read_hf_model_config(path);
    m.hf = true;
    m.config = info.config;
    m.tokenizer = info.tokenizer;
    return m;
  }
  const CheckpointInfo info = read_checkpoint_info(path);
  m.config = info.config;
  m.tokenizer = info.tokenizer;
  m.tp = info.tp;
  m.step = info.step;
  return m;
}

// The weights (no optimizer state) into this rank's shards, at the grid's layout.
inline void load_weights(const ModelSource& m, const std::vector<Parameter*>& params,
                         const ParallelGrid& grid, Backend& backend) {
  if (m.hf) {
    load_hf_model(m.path, params, grid, backend);
  } else {
    load_checkpoint(m.path, params, nullptr, grid, backend);
  }
}

}  // namespace weft::examples
