// GPT checkpoints: manifest JSON and per-rank safetensors shards.
#include "weft/gpt_checkpoint.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "weft/checkpoint.hpp"
#include "weft/checkpoint_store.hpp"
#include "weft/error.hpp"

namespace weft {

namespace {

using nlohmann::json;

const char* norm_name(NormKind k) { return k == NormKind::kLayerNorm ? "layernorm" : "rmsnorm"; }
const char* activation_name(MlpActivation a) {
  return a == MlpActivation::kGelu ? "gelu" : "swiglu";
}

json config_to_json(const GPTConfig& c) {
  return json{{"vocab_size", c.vocab_size},
              {"max_seq", c.max_seq},
              {"layers", c.layers},
              {"hidden", c.hidden},
              {"heads", c.heads},
              {"kv_heads", c.kv_heads},
              {"ffn_hidden", c.ffn_hidden},
              {"norm", norm_name(c.norm)},
              {"activation", activation_name(c.activation)},
              {"rotary", c.rotary},
              {"rope_theta", c.rope_theta},
              {"bias", c.bias},
              {"dropout", c.dropout},
              {"norm_eps", c.norm_eps},
              {"vocab_pad_multiple", c.vocab_pad_multiple},
              {"dtype", dtype_name(c.dtype)},
              {"seed", c.seed},
              {"init_std", c.init_std}};
}

GPTConfig config_from_json(const json& j) {
  GPTConfig c;
  c.vocab_size = j.at("vocab_size").get<int64_t>();
  c.max_seq = j.at("max_seq").get<int64_t>();
  c.layers = j.at("layers").get<int64_t>();
  c.hidden = j.at("hidden").get<int64_t>();
  c.heads = j.at("heads").get<int64_t>();
  c.kv_heads = j.at("kv_heads").get<int64_t>();
  c.ffn_hidden = j.at("ffn_hidden").get<int64_t>();
  const std::string norm = j.at("norm").get<std::string>();
  WEFT_CHECK(norm == "layernorm" || norm == "rmsnorm", "unknown norm '", norm, "'");
  c.norm = norm == "layernorm" ? NormKind::kLayerNorm : NormKind::kRMSNorm;
  const std::string activation = j.at("activation").get<std::string>();
  WEFT_CHECK(activation == "gelu" || activation == "swiglu", "unknown activation '", activation,
             "'");
  c.activation = activation == "gelu" ? MlpActivation::kGelu : MlpActivation::kSwiGLU;
  c.rotary = j.at("rotary").get<bool>();
  c.rope_theta = j.at("rope_theta").get<float>();
  c.bias = j.at("bias").get<bool>();
  c.dropout = j.at("dropout").get<float>();
  c.norm_eps = j.at("norm_eps").get<float>();
  c.vocab_pad_multiple = j.at("vocab_pad_multiple").get<int64_t>();
  c.dtype = parse_dtype(j.at("dtype").get<std::string>());
  c.seed = j.at("seed").get<uint64_t>();
  c.init_std = j.at("init_std").get<float>();
  return c;
}

std::string shard_path(const std::string& dir, int tp_rank, int pp_rank) {
  return dir + "/tp" + std::to_string(tp_rank) + "_pp" + std::to_string(pp_rank) + ".safetensors";
}

void make_directory(const std::string& dir) {
  if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    WEFT_THROW(ErrorCode::kIo, "cannot create checkpoint directory '", dir,
               "': ", std::strerror(errno));
  }
}

}  // namespace

void save_checkpoint(const std::string& dir, const CheckpointInfo& info,
                     const std::vector<Parameter*>& params, AdamW* optimizer,
                     const ParallelGrid& grid, Backend& backend) {
  Communicator& world = grid.world();
  if (world.rank() == 0) {
    make_directory(dir);
    // A stale manifest would vouch for shards about to be replaced: remove it first.
    std::remove((dir + "/manifest.json").c_str());
  }
  world.barrier();
  if (grid.dp_rank() == 0) {
    std::vector<NamedTensor> tensors;
    for (Parameter* p : params) tensors.push_back({p->name, p->value});
    if (optimizer != nullptr) {
      for (AdamW::State& s : optimizer->state()) {
        tensors.push_back({s.param->name + ".master", s.master});
        tensors.push_back({s.param->name + ".exp_avg", s.m});
        tensors.push_back({s.param->name + ".exp_avg_sq", s.v});
      }
    }
    const std::map<std::string, std::string> metadata{{"format", "weft"},
                                                      {"tp", std::to_string(grid.tp_size())},
                                                      {"tp_rank", std::to_string(grid.tp_rank())},
                                                      {"pp", std::to_string(grid.pp_size())},
                                                      {"pp_rank", std::to_string(grid.pp_rank())},
                                                      {"step", std::to_string(info.step)}};
    save_safetensors(shard_path(dir, grid.tp_rank(), grid.pp_rank()), tensors, metadata, backend);
  }
  world.barrier();  // every shard is on disk before the manifest says so
  if (world.rank() == 0) {
    // The tokenizer travels with the model, so the checkpoint alone says what its ids mean.
    if (!info.tokenizer.empty()) {
      write_file_atomically(dir + "/tokenizer.json", read_file(info.tokenizer));
    }
    json manifest{{"format", "weft-gpt-checkpoint"},
                  {"version", 1},
                  {"config", config_to_json(info.config)},
                  {"tp", info.tp},
                  {"pp", info.pp},
                  {"step", info.step},
                  {"has_optimizer", optimizer != nullptr},
                  {"rng",
                   {{"dropout_replicated", info.dropout_replicated},
                    {"dropout_sharded", info.dropout_sharded}}},
                  {"run_args", json::parse(info.run_args)}};
    if (!info.tokenizer.empty()) manifest["tokenizer"] = "tokenizer.json";
    write_file_atomically(dir + "/manifest.json", manifest.dump(2) + "\n");
  }
  world.barrier();
}

CheckpointInfo read_checkpoint_info(const std::string& path_or_root) {
  const std::string dir = resolve_checkpoint(path_or_root);
  const std::string path = dir + "/manifest.json";
  const std::string text = read_file(path);
  try {
    const json j = json::parse(text);
    WEFT_CHECK(j.at("format").get<std::string>() == "weft-gpt-checkpoint", path,
               " is not a weft GPT checkpoint manifest");
    CheckpointInfo info;
    info.config = config_from_json(j.at("config"));
    info.tp = j.at("tp").get<int>();
    info.pp = j.contains("pp") ? j.at("pp").get<int>() : 1;
    info.step = j.at("step").get<int64_t>();
    info.dropout_replicated = j.at("rng").at("dropout_replicated").get<uint64_t>();
    info.dropout_sharded = j.at("rng").at("dropout_sharded").get<uint64_t>();
    info.run_args = j.at("run_args").dump();
    if (j.contains("tokenizer")) info.tokenizer = dir + "/" + j.at("tokenizer").get<std::string>();
    return info;
  } catch (const json::exception& e) {
    WEFT_THROW(ErrorCode::kIo, "malformed checkpoint manifest ", path, ": ", e.what());
  }
}

void load_checkpoint(const std::string& path_or_root, const std::vector<Parameter*>& params,
                     AdamW* optimizer, const ParallelGrid& grid, Backend& backend) {
  const std::string dir = resolve_checkpoint(path_or_root);
  const CheckpointInfo info = read_checkpoint_info(dir);
  WEFT_CHECK(info.tp == grid.tp_size(), "checkpoint ", dir, " was saved at tensor-parallel size ",
             info.tp, " but this run has ", grid.tp_size(), "; load it at tp=", info.tp);
  std::vector<SafetensorsReader> readers;
  for (int s = 0; s < info.pp; ++s) readers.emplace_back(shard_path(dir, grid.tp_rank(), s));
  // Any pipeline stage's shard may hold a name (the tied embedding is in the first and last).
  auto read = [&](const std::string& name, TensorView dst) {
    for (const SafetensorsReader& reader : readers) {
      if (reader.contains(name)) return reader.read(name, dst, backend);
    }
    WEFT_THROW(ErrorCode::kIo, "checkpoint ", dir, " has no tensor '", name, "' in any of the ",
               readers.size(), " shard(s) of tp rank ", grid.tp_rank());
  };
  for (Parameter* p : params) read(p->name, p->value);
  if (optimizer != nullptr) {
    for (AdamW::State& s : optimizer->state()) {
      read(s.param->name + ".master", s.master);
      read(s.param->name + ".exp_avg", s.m);
      read(s.param->name + ".exp_avg_sq", s.v);
    }
    optimizer->set_steps_taken(info.step);
    optimizer->refresh_parameters();
  }
}

}  // namespace weft
