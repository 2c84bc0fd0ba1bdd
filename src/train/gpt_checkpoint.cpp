// GPT checkpoints: manifest JSON, per-rank safetensors shards with per-tensor slice metadata,
// and the index over all shards that loads (or reshards) them at any layout.
#include "weft/gpt_checkpoint.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

#include "weft/checked.hpp"
#include "weft/checkpoint.hpp"
#include "weft/checkpoint_store.hpp"
#include "weft/error.hpp"
#include "weft/pipeline.hpp"

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
              {"tie_word_embeddings", c.tie_word_embeddings},
              {"dtype", dtype_name(c.dtype)},
              {"seed", c.seed},
              {"init_std", c.init_std}};
}

// The newest manifest version this build reads and writes.
constexpr int kManifestVersion = 2;
// A manifest is a few KiB; anything larger is not one (a symlink to a device, a huge file).
constexpr size_t kManifestLimit = size_t{1} << 20;
constexpr char kChecksumKind[] = "xxh3_64";

// Field `key` of object `j` as an integer in [lo, hi]: never 2.5 read as 2 or 2^32 + 2 as 2.
int64_t integer_field(const json& j, const char* key, int64_t lo, int64_t hi,
                      const std::string& where) {
  const json& v = j.at(key);
  const std::string what = where + ": field '" + key + "'";
  if (!v.is_number_integer() ||
      (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))) {
    WEFT_THROW(ErrorCode::kIo, what, " is ", v.dump(), ", not an integer in [", lo, ", ", hi, "]");
  }
  const int64_t value = v.get<int64_t>();
  if (value < lo || value > hi) {
    WEFT_THROW(ErrorCode::kIo, what, " is ", value, ", outside [", lo, ", ", hi, "]");
  }
  return value;
}

GPTConfig config_from_json(const json& j, const std::string& where) {
  GPTConfig c;
  const std::string in = where + " config";
  auto size = [&](const char* key) { return integer_field(j, key, 0, INT64_MAX, in); };
  c.vocab_size = size("vocab_size");
  c.max_seq = size("max_seq");
  c.layers = size("layers");
  c.hidden = size("hidden");
  c.heads = size("heads");
  c.kv_heads = size("kv_heads");
  c.ffn_hidden = size("ffn_hidden");
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
  c.vocab_pad_multiple = size("vocab_pad_multiple");
  // Absent in checkpoints from before untied heads existed: those are tied.
  c.tie_word_embeddings = j.value("tie_word_embeddings", true);
  c.dtype = parse_dtype(j.at("dtype").get<std::string>());
  c.seed = j.at("seed").get<uint64_t>();
  c.init_std = j.at("init_std").get<float>();
  return c;
}

std::string shard_name(int tp_rank, int pp_rank) {
  return "tp" + std::to_string(tp_rank) + "_pp" + std::to_string(pp_rank) + ".safetensors";
}
std::string shard_path(const std::string& dir, int tp_rank, int pp_rank) {
  return dir + "/" + shard_name(tp_rank, pp_rank);
}

void make_directory(const std::string& dir) {
  if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    WEFT_THROW(ErrorCode::kIo, "cannot create checkpoint directory '", dir,
               "': ", std::strerror(errno));
  }
}

// The optimizer state saved beside each parameter, f32, of the parameter's shape.
const char* const kOptimizerSuffixes[] = {".master", ".exp_avg", ".exp_avg_sq"};

// ---- Slices --------------------------------------------------------------------------------

// A block [offset, offset + count) along dim of global tensor `global_name`, stored as `name`;
// `local` is the shard's extent there (count, or more for vocabulary padding).
TensorSlice make_slice(std::string name, std::string global_name, const Shape& global, int dim,
                       int64_t offset, int64_t count, int64_t local) {
  TensorSlice s;
  s.name = std::move(name);
  s.global_name = std::move(global_name);
  s.global_shape = global;
  s.partition_dim = dim;
  s.offset = dim < 0 ? 0 : offset;
  s.shape = dim < 0 ? global : global.with_dim(dim, count);
  s.local_extent = dim < 0 ? 0 : local;
  return s;
}
// An even split of dimension `dim` into tp parts, part tp_rank.
TensorSlice even_slice(const std::string& name, const Shape& global, int dim, int tp, int rank) {
  const int64_t local = global[dim] / tp;
  return make_slice(name, name, global, dim, local * rank, local, local);
}
TensorSlice whole(const std::string& name, const Shape& global) {
  return make_slice(name, name, global, -1, 0, 0, 0);
}

nlohmann::json slice_json(const TensorSlice& s, const std::string& suffix) {
  return nlohmann::json{{"global_name", s.global_name + suffix},
                        {"global_shape", s.global_shape.dims()},
                        {"partition_dim", s.partition_dim < 0 ? nlohmann::json(nullptr)
                                                              : nlohmann::json(s.partition_dim)},
                        {"offset", s.offset}};
}

// One shard file's contents: its slices (count > 0), with the optimizer state when asked for.
struct ShardTensor {
  TensorSlice slice;   // geometry; slice.name is the parameter's
  std::string suffix;  // "" or one of kOptimizerSuffixes
  DType dtype;
  std::string stored() const { return slice.name + suffix; }
};

std::vector<ShardTensor> shard_tensors(const std::vector<TensorSlice>& slices, DType dtype,
                                       bool optimizer) {
  std::vector<ShardTensor> out;
  for (const TensorSlice& s : slices) {
    if (s.shape.numel() == 0) continue;  // a rank holding vocabulary padding only
    out.push_back({s, "", dtype});
    if (optimizer) {
      for (const char* suffix : kOptimizerSuffixes) out.push_back({s, suffix, DType::kF32});
    }
  }
  return out;
}

// The shard file's metadata: the layout, the step and every tensor's slice.
std::map<std::string, std::string> shard_metadata(const std::vector<ShardTensor>& tensors, int tp,
                                                  int tp_rank, int pp, int pp_rank, int64_t step) {
  std::map<std::string, std::string> m{{"format", "weft"},
                                       {"tp", std::to_string(tp)},
                                       {"tp_rank", std::to_string(tp_rank)},
                                       {"pp", std::to_string(pp)},
                                       {"pp_rank", std::to_string(pp_rank)},
                                       {"step", std::to_string(step)}};
  for (const ShardTensor& t : tensors) {
    WEFT_CHECK(m.count(t.stored()) == 0, "tensor name '", t.stored(),
               "' collides with a metadata key");
    m[t.stored()] = slice_json(t.slice, t.suffix).dump();
  }
  return m;
}

nlohmann::json manifest_json(const CheckpointInfo& info, bool has_optimizer) {
  nlohmann::json manifest{{"format", "weft-gpt-checkpoint"},
                          {"version", kManifestVersion},
                          {"checksums", kChecksumKind},
                          {"config", config_to_json(info.config)},
                          {"tp", info.tp},
                          {"pp", info.pp},
                          {"virtual_stages", info.virtual_stages},
                          {"step", info.step},
                          {"has_optimizer", has_optimizer},
                          {"rng",
                           {{"dropout_replicated", info.dropout_replicated},
                            {"dropout_sharded", info.dropout_sharded}}},
                          {"run_args", nlohmann::json::parse(info.run_args)}};
  if (!info.tokenizer.empty()) manifest["tokenizer"] = "tokenizer.json";
  return manifest;
}

// ---- Values ---------------------------------------------------------------------------------

// The first of `n` elements at `p` that is NaN or infinite, or -1 (integer dtypes: -1).
int64_t first_nonfinite(const void* p, int64_t n, DType dtype) {
  const unsigned char* bytes = static_cast<const unsigned char*>(p);
  auto scan = [&](auto word, uint64_t exponent) -> int64_t {
    for (int64_t i = 0; i < n; ++i) {
      decltype(word) w;
      std::memcpy(&w, bytes + static_cast<size_t>(i) * sizeof w, sizeof w);
      if ((w & exponent) == exponent) return i;
    }
    return -1;
  };
  switch (dtype) {
    case DType::kF32:
      return scan(uint32_t{}, 0x7f800000u);
    case DType::kBF16:
      return scan(uint16_t{}, 0x7f80u);
    case DType::kF16:
      return scan(uint16_t{}, 0x7c00u);
    case DType::kI32:
      return -1;
  }
  return -1;
}

// "NaN", "inf" or "-inf": element i at p (not finite).
std::string nonfinite_text(const void* p, int64_t i, DType dtype) {
  const unsigned char* at = static_cast<const unsigned char*>(p) + i * dtype_size(dtype);
  bool nan = false, negative = false;
  if (dtype == DType::kF32) {
    uint32_t w;
    std::memcpy(&w, at, 4);
    nan = (w & 0x007fffffu) != 0;
    negative = (w >> 31) != 0;
  } else {
    uint16_t w;
    std::memcpy(&w, at, 2);
    nan = (w & (dtype == DType::kBF16 ? 0x007fu : 0x03ffu)) != 0;
    negative = (w >> 15) != 0;
  }
  return nan ? "NaN" : negative ? "-inf" : "inf";
}

// ---- The index over every shard of a checkpoint ----------------------------------------------

// Every shard file of a checkpoint opened (headers only) and checked against the manifest's
// config; reads any block of any global tensor from the stored blocks that cover it.
class CheckpointIndex {
 public:
  struct Block {
    const SafetensorsReader* file;
    std::string stored;
    int64_t offset, count;  // along the tensor's partition dim (0, whole extent when replicated)
  };
  struct Global {
    DType dtype;
    Shape shape;
    int partition_dim;
    std::vector<Block> blocks;  // sorted by offset
  };

  CheckpointIndex(const std::string& dir, const CheckpointInfo& info) : dir_(dir) {
    const std::string manifest = dir + "/manifest.json";
    WEFT_CHECK(info.tp > 0 && info.pp > 0 && info.virtual_stages > 0, manifest,
               ": layout tp=", info.tp, " pp=", info.pp, " virtual_stages=", info.virtual_stages,
               " must be positive");
    GPTConfig config = info.config;
    try {
      config.finalize(info.tp);
      split_layers(config.layers, info.pp * info.virtual_stages, {});
    } catch (const Error& e) {
      WEFT_THROW(ErrorCode::kInvalidArgument, manifest, ": its layout (tp ", info.tp, ", pp ",
                 info.pp, ", virtual_stages ", info.virtual_stages,
                 ") does not divide its model: ", e.message());
    }
    files_.reserve(static_cast<size_t>(info.tp) * static_cast<size_t>(info.pp));
    for (int s = 0; s < info.pp; ++s) {
      for (int t = 0; t < info.tp; ++t) files_.emplace_back(shard_path(dir, t, s));
    }
    legacy_ = info.version < 2;
    if (info.has_checksums) {
      for (const SafetensorsReader& f : files_) {
        for (const std::string& name : f.names()) {
          WEFT_CHECK(f.has_checksum(name), f.path(), ": tensor '", name,
                     "' has no checksum (metadata key '", kSafetensorsChecksumPrefix, name,
                     "'), but the manifest says every tensor has one (checksums: ", kChecksumKind,
                     ")");
        }
      }
    }
    // What the config says the checkpoint holds: its tensors at TP 1.
    for (const TensorSlice& s : gpt_parameter_slices(info.config, 1, 0)) {
      expected_[s.global_name] = Global{config.dtype, s.global_shape, s.partition_dim, {}};
      if (info.has_optimizer) {
        for (const char* suffix : kOptimizerSuffixes) {
          expected_[s.global_name + suffix] =
              Global{DType::kF32, s.global_shape, s.partition_dim, {}};
        }
      }
    }
    model_ = describe(config);
    if (!legacy_) check_tensor_sets(info);
    for (int s = 0; s < info.pp; ++s) {
      for (int t = 0; t < info.tp; ++t) {
        const SafetensorsReader& f = files_[static_cast<size_t>(s * info.tp + t)];
        check_field(f, "tp", info.tp);
        check_field(f, "tp_rank", t);
        check_field(f, "pp", info.pp);
        check_field(f, "pp_rank", s);
        if (!legacy_) add_blocks(f, info.has_optimizer);
      }
    }
    if (legacy_) return;
    const std::map<std::string, Global>& expected = expected_;
    const std::string& model = model_;
    for (const auto& [name, g] : expected) {
      auto it = tensors_.find(name);
      WEFT_CHECK(it != tensors_.end(), "checkpoint ", dir, ": no shard holds tensor '", name, "' ",
                 g.shape.str(), " of ", model);
      const Global& have = it->second;
      if (have.partition_dim < 0) continue;
      int64_t covered = 0;
      for (const Block& b : have.blocks) {
        if (b.offset > covered) break;
        covered = std::max(covered, b.offset + b.count);
      }
      WEFT_CHECK(covered == have.shape[have.partition_dim], "checkpoint ", dir,
                 ": no shard holds elements [", covered, ", ", have.shape[have.partition_dim],
                 ") of dimension ", have.partition_dim, " of tensor '", name, "' ",
                 have.shape.str());
    }
  }

  bool legacy() const { return legacy_; }
  const std::map<std::string, Global>& tensors() const { return tensors_; }
  const std::vector<SafetensorsReader>& files() const { return files_; }

  // Elements [offset, offset + count) along dimension `dim` of global tensor `name` (the whole
  // tensor when dim < 0) into host `dst`: dense, of the global shape but dst_extent along dim.
  void read(const std::string& name, DType dtype, int dim, int64_t offset, int64_t count, void* dst,
            int64_t dst_extent) const {
    auto it = tensors_.find(name);
    WEFT_CHECK(it != tensors_.end(), "checkpoint ", dir_, " has no tensor '", name, "'");
    const Global& g = it->second;
    WEFT_CHECK(g.dtype == dtype && g.partition_dim == dim, "checkpoint ", dir_, ": tensor '", name,
               "' is ", dtype_name(g.dtype), " split along ", g.partition_dim, ", expected ",
               dtype_name(dtype), " split along ", dim);
    if (dim < 0) {
      const Block& b = g.blocks.front();
      if (g.shape.rank() > 0) b.file->read_block(b.stored, 0, 0, g.shape[0], dst, g.shape[0], 0);
      check_finite(b, name, g, 0, dst, 0, 0);
      return;
    }
    int64_t at = offset;
    const int64_t end = offset + count;
    for (const Block& b : g.blocks) {
      if (at >= end) break;
      if (b.offset > at || b.offset + b.count <= at) continue;
      const int64_t n = std::min(end, b.offset + b.count) - at;
      b.file->read_block(b.stored, dim, at - b.offset, n, dst, dst_extent, at - offset);
      check_finite(b, name, g, at - b.offset, dst, dst_extent, at - offset, n);
      at += n;
    }
    WEFT_CHECK(at == end, "checkpoint ", dir_, ": no shard holds elements [", at, ", ", end,
               ") of dimension ", dim, " of tensor '", name, "'");
  }

 private:
  // A block just read holds finite values only: a NaN or an infinity in the weights or the
  // optimizer state would load silently and train into garbage. `first`/`n`: the rows of the
  // block read (along the partition dim) and where they landed in dst (dst_begin of dst_extent).
  void check_finite(const Block& b, const std::string& name, const Global& g, int64_t first,
                    const void* dst, int64_t dst_extent, int64_t dst_begin, int64_t n = 0) const {
    const size_t element = dtype_size(g.dtype);
    const char* out = static_cast<const char*>(dst);
    auto fail = [&](const void* p, int64_t i, int64_t element_index) {
      WEFT_THROW(ErrorCode::kIo, b.file->path(), ": tensor '", b.stored, "' (of '", name,
                 "') holds ", nonfinite_text(p, i, g.dtype), " at element ", element_index,
                 " of its ", b.file->shape(b.stored).str(),
                 ": a checkpoint's values must be finite");
    };
    if (g.partition_dim < 0) {
      const int64_t i = first_nonfinite(dst, g.shape.numel(), g.dtype);
      if (i >= 0) fail(dst, i, i);
      return;
    }
    const int dim = g.partition_dim;
    int64_t outer = 1, inner = 1;
    for (int d = 0; d < dim; ++d) outer *= g.shape[d];
    for (int d = dim + 1; d < g.shape.rank(); ++d) inner *= g.shape[d];
    for (int64_t o = 0; o < outer; ++o) {
      const char* run = out + static_cast<size_t>((o * dst_extent + dst_begin) * inner) * element;
      const int64_t i = first_nonfinite(run, n * inner, g.dtype);
      if (i >= 0) fail(run, i, (o * b.count + first) * inner + i);
    }
  }

  // The exact set of tensors: each shard file of TP rank t holds the embedding table (first and
  // last pipeline rank), the positions (first), the final norm (last), and whole layers, each
  // layer in exactly one of the pipeline ranks' files, with the optimizer state when the manifest
  // says so; nothing else. (How the layers split between pipeline ranks is free.)
  void check_tensor_sets(const CheckpointInfo& info) const {
    const bool opt = info.has_optimizer;
    auto names = [&](int t, const GPTStageLayout& stage) {
      std::set<std::string> out;
      for (const ShardTensor& x : shard_tensors(
               gpt_parameter_slices(info.config, info.tp, t, stage), info.config.dtype, opt)) {
        out.insert(x.stored());
      }
      return out;
    };
    const int64_t layers = info.config.layers;
    for (int t = 0; t < info.tp; ++t) {
      std::map<std::string, int64_t> layer_of;
      std::vector<std::set<std::string>> layer_names(static_cast<size_t>(layers));
      for (int64_t i = 0; i < layers; ++i) {
        layer_names[static_cast<size_t>(i)] = names(t, GPTStageLayout{i, 1, false, false});
        for (const std::string& n : layer_names[static_cast<size_t>(i)]) layer_of[n] = i;
      }
      std::vector<int> holder(static_cast<size_t>(layers), -1);
      for (int s = 0; s < info.pp; ++s) {
        const SafetensorsReader& f = files_[static_cast<size_t>(s * info.tp + t)];
        const std::set<std::string> fixed =
            names(t, GPTStageLayout{0, 0, s == 0, s == info.pp - 1});
        std::set<int64_t> here;
        for (const std::string& n : f.names()) {
          if (fixed.count(n) != 0) continue;
          auto it = layer_of.find(n);
          WEFT_CHECK(it != layer_of.end(), f.path(), ": unexpected tensor '", n, "': ", model_,
                     opt ? "" : " without optimizer state", " at tp ", info.tp,
                     " has no such tensor",
                     info.pp > 1 ? " in pipeline rank " + std::to_string(s) + "'s file" : "");
          here.insert(it->second);
        }
        for (const std::string& n : fixed) {
          WEFT_CHECK(f.contains(n), f.path(), ": tensor '", n, "' is missing (", model_,
                     opt ? " with optimizer state" : "", " at tp ", info.tp, ")");
        }
        for (int64_t i : here) {
          int& h = holder[static_cast<size_t>(i)];
          WEFT_CHECK(h < 0, f.path(), ": layer ", i, " is stored in ",
                     shard_path(dir_, t, h < 0 ? 0 : h), " too");
          h = s;
          for (const std::string& n : layer_names[static_cast<size_t>(i)]) {
            WEFT_CHECK(f.contains(n), f.path(), ": tensor '", n, "' of layer ", i, " is missing (",
                       model_, opt ? " with optimizer state" : "", ")");
          }
        }
      }
      for (int64_t i = 0; i < layers; ++i) {
        WEFT_CHECK(holder[static_cast<size_t>(i)] >= 0, "checkpoint ", dir_,
                   ": no shard of tp rank ", t, " holds layer ", i, " (tensors '",
                   *layer_names[static_cast<size_t>(i)].begin(), "', ...) of ", model_);
      }
    }
  }

  static void check_field(const SafetensorsReader& f, const char* key, int want) {
    auto it = f.metadata().find(key);
    WEFT_CHECK(it != f.metadata().end() && it->second == std::to_string(want), f.path(),
               ": metadata field '", key, "' is ",
               it == f.metadata().end() ? std::string("missing") : "'" + it->second + "'",
               ", expected ", want, " (from the file's name and the manifest)");
  }

  static std::string describe(const GPTConfig& c) {
    std::string s = "the manifest's config (vocab_size " + std::to_string(c.vocab_size) +
                    ", layers " + std::to_string(c.layers) + ", hidden " +
                    std::to_string(c.hidden) + ", heads " + std::to_string(c.heads) +
                    ", kv_heads " + std::to_string(c.kv_heads) + ", ffn_hidden " +
                    std::to_string(c.ffn_hidden) + ", dtype " + dtype_name(c.dtype) + ")";
    return s;
  }

  void add_blocks(const SafetensorsReader& f, bool has_optimizer) {
    for (const std::string& stored : f.names()) {
      auto meta = f.metadata().find(stored);
      WEFT_CHECK(meta != f.metadata().end(), f.path(), ": tensor '", stored,
                 "' has no slice metadata (key '", stored,
                 "' in __metadata__: global_name, global_shape, partition_dim, offset)");
      auto bad = [&](const std::string& field, const std::string& value, const char* rule) {
        WEFT_THROW(ErrorCode::kIo, f.path(), ": tensor '", stored, "': slice field '", field,
                   "' is ", value, " (", rule, ")");
      };
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(meta->second);
      } catch (const nlohmann::json::exception&) {
        bad("(all)", "'" + meta->second + "'", "must be a JSON object");
      }
      if (!j.is_object()) bad("(all)", "'" + meta->second + "'", "must be a JSON object");
      auto field = [&](const char* key) -> const nlohmann::json& {
        if (!j.contains(key)) bad(key, "missing", "required");
        return j[key];
      };
      const nlohmann::json& gname = field("global_name");
      if (!gname.is_string() || gname.get<std::string>().empty()) {
        bad("global_name", gname.dump(), "must be a non-empty string");
      }
      const nlohmann::json& gshape = field("global_shape");
      std::vector<int64_t> dims;
      if (gshape.is_array()) {
        for (const auto& d : gshape) {
          if (!d.is_number_unsigned()) bad("global_shape", gshape.dump(), "sizes >= 0");
          dims.push_back(d.get<int64_t>());
        }
      } else {
        bad("global_shape", gshape.dump(), "must be an array of sizes");
      }
      const Shape stored_shape = f.shape(stored);
      if (static_cast<int>(dims.size()) != stored_shape.rank()) {
        bad("global_shape", gshape.dump(),
            ("must have the stored tensor's rank, " + std::to_string(stored_shape.rank())).c_str());
      }
      const nlohmann::json& pdim = field("partition_dim");
      int dim = -1;
      if (!pdim.is_null()) {
        if (!pdim.is_number_integer() || pdim.get<int64_t>() < 0 ||
            pdim.get<int64_t>() >= stored_shape.rank()) {
          bad("partition_dim", pdim.dump(), "null, or a dimension of the tensor");
        }
        dim = pdim.get<int>();
      }
      const nlohmann::json& off = field("offset");
      if (!off.is_number_unsigned()) bad("offset", off.dump(), "must be an integer >= 0");
      const int64_t offset = off.get<int64_t>();
      for (int d = 0; d < stored_shape.rank(); ++d) {
        if (d != dim && stored_shape[d] != dims[static_cast<size_t>(d)]) {
          bad("global_shape", gshape.dump(),
              ("disagrees with the stored shape " + stored_shape.str() + " in dimension " +
               std::to_string(d))
                  .c_str());
        }
      }
      if (dim < 0 && offset != 0) bad("offset", off.dump(), "must be 0 for a whole tensor");
      if (dim >= 0 && offset + stored_shape[dim] > dims[static_cast<size_t>(dim)]) {
        bad("offset", off.dump(),
            ("the block of " + std::to_string(stored_shape[dim]) + " from there exceeds " +
             std::to_string(dims[static_cast<size_t>(dim)]))
                .c_str());
      }
      const std::string name = gname.get<std::string>();
      const DType dtype = f.dtype(stored);
      auto want = expected_.find(name);
      WEFT_CHECK(want != expected_.end(), f.path(), ": tensor '", stored,
                 "': slice field 'global_name' is '", name, "', a tensor ", model_,
                 " does not have", has_optimizer ? "" : " (the manifest says: no optimizer state)");
      const Global& w = want->second;
      WEFT_CHECK(Shape(dims) == w.shape, f.path(), ": tensor '", stored,
                 "': slice field 'global_shape' is ", Shape(dims).str(), ", but ", model_,
                 " gives ", w.shape.str());
      WEFT_CHECK(dim == w.partition_dim, f.path(), ": tensor '", stored,
                 "': slice field 'partition_dim' is ", pdim.dump(), ", but ", model_,
                 " splits it along ",
                 w.partition_dim < 0 ? "none" : std::to_string(w.partition_dim));
      WEFT_CHECK(dtype == w.dtype, f.path(), ": tensor '", stored, "': dtype is ",
                 dtype_name(dtype), ", but ", model_, " gives ", dtype_name(w.dtype));
      Global& g = tensors_.try_emplace(name, Global{dtype, Shape(dims), dim, {}}).first->second;
      const int64_t count = dim < 0 ? (dims.empty() ? 1 : dims[0]) : stored_shape[dim];
      g.blocks.push_back(Block{&f, stored, offset, count});
      std::stable_sort(g.blocks.begin(), g.blocks.end(),
                       [](const Block& a, const Block& b) { return a.offset < b.offset; });
    }
  }

  std::string dir_;
  std::vector<SafetensorsReader> files_;  // reserved up front: blocks point into it
  std::map<std::string, Global> tensors_;
  std::map<std::string, Global> expected_;  // from the manifest's config
  std::string model_;                       // the config, in words
  bool legacy_ = false;
};

// The slice of this rank's parameter `p` (by name), checked against the parameter's shape.
const TensorSlice& slice_of(const std::map<std::string, TensorSlice>& slices, const Parameter& p) {
  auto it = slices.find(p.name);
  WEFT_CHECK(it != slices.end(), "parameter '", p.name,
             "' is not a parameter of the checkpoint's GPT config");
  const TensorSlice& s = it->second;
  const Shape local = s.partition_dim < 0
                          ? s.global_shape
                          : s.global_shape.with_dim(s.partition_dim, s.local_extent);
  WEFT_CHECK(p.value.shape() == local, "parameter '", p.name, "' has shape ", p.value.shape().str(),
             " but the checkpoint's config gives its shard ", local.str());
  return s;
}

std::map<std::string, TensorSlice> slices_by_name(const GPTConfig& config, int tp, int tp_rank) {
  std::map<std::string, TensorSlice> out;
  for (TensorSlice& s : gpt_parameter_slices(config, tp, tp_rank)) out[s.name] = std::move(s);
  return out;
}

// The stored part of a shard: all of it, or its first rows (vocabulary padding excluded).
TensorView stored_view(const TensorSlice& s, TensorView shard) {
  if (s.partition_dim < 0 || s.shape[s.partition_dim] == s.local_extent) return shard;
  WEFT_CHECK(s.partition_dim == 0, "only rows can be padding (", s.name, ")");
  return shard.rows(0, s.shape[0]);
}

// Host bytes read for a destination (a parameter's stored part, or an optimizer state's), copied
// there once every rank has read and checked all of its own.
struct StagedRead {
  TensorView target;
  std::vector<unsigned char> bytes;
};

// Reads slice `s` of global tensor s.global_name + suffix for `dst` (this rank's shard).
void read_staged(const CheckpointIndex& index, const TensorSlice& s, const std::string& suffix,
                 TensorView dst, std::vector<StagedRead>& staged) {
  const TensorView target = stored_view(s, dst);
  if (target.numel() == 0) return;
  const int dim = s.partition_dim;
  const int64_t count = dim < 0 ? 0 : s.shape[dim];
  StagedRead st{target, std::vector<unsigned char>(target.bytes())};
  index.read(s.global_name + suffix, dst.dtype, dim, s.offset, count, st.bytes.data(), count);
  staged.push_back(std::move(st));
}

}  // namespace

std::vector<TensorSlice> gpt_parameter_slices(const GPTConfig& model, int tp, int tp_rank,
                                              const GPTStageLayout& stage) {
  GPTConfig c = model;
  c.finalize(tp);
  WEFT_CHECK(tp_rank >= 0 && tp_rank < tp, "tp_rank ", tp_rank, " outside [0, ", tp, ")");
  const int64_t h = c.hidden, d = c.head_dim(), heads = c.heads, kv = c.kv_heads;
  const int64_t first = stage.first_layer;
  const int64_t count = stage.layers < 0 ? c.layers - first : stage.layers;
  WEFT_CHECK(first >= 0 && count >= 0 && first + count <= c.layers, "stage layers [", first, ", ",
             first + count, ") are outside the model's ", c.layers, " layers");
  std::vector<TensorSlice> out;
  auto norm = [&](const std::string& name) {
    out.push_back(whole(name + ".weight", Shape({h})));
    if (c.norm == NormKind::kLayerNorm) out.push_back(whole(name + ".bias", Shape({h})));
  };
  auto column = [&](const std::string& name, int64_t out_features, int64_t in_features) {
    out.push_back(even_slice(name + ".weight", Shape({out_features, in_features}), 0, tp, tp_rank));
    if (c.bias) out.push_back(even_slice(name + ".bias", Shape({out_features}), 0, tp, tp_rank));
  };
  auto row = [&](const std::string& name, int64_t out_features, int64_t in_features) {
    out.push_back(even_slice(name + ".weight", Shape({out_features, in_features}), 1, tp, tp_rank));
    if (c.bias) out.push_back(whole(name + ".bias", Shape({out_features})));
  };
  // Only the real vocabulary is stored: this rank's rows of the padded table that hold one.
  auto vocab_rows = [&](const std::string& name) {
    const int64_t local = padded_vocab_size(c.vocab_size, c.vocab_pad_multiple, tp) / tp;
    const int64_t begin = local * tp_rank;
    const int64_t real = std::clamp<int64_t>(c.vocab_size - begin, 0, local);
    out.push_back(make_slice(name, name, Shape({c.vocab_size, h}), 0, begin, real, local));
  };
  if (stage.has_embedding || (stage.has_head && c.tie_word_embeddings)) {
    vocab_rows("embedding.weight");
  }
  if (stage.has_embedding && !c.rotary) out.push_back(whole("positions", Shape({c.max_seq, h})));
  for (int64_t i = first; i < first + count; ++i) {
    const std::string layer = "layers." + std::to_string(i);
    norm(layer + ".norm1");
    const std::string attn = layer + ".attention";
    const int64_t qkv_rows = (heads + 2 * kv) * d;
    if (kv % tp == 0) {
      column(attn + ".qkv", qkv_rows, h);
    } else {
      // Replicated key/value heads (attention.hpp): this rank's query heads and its group's key
      // and value are two windows of the grouped QKV tensor.
      const int64_t per_group = tp / kv, group = tp_rank / per_group, qpg = heads / kv;
      const int64_t local_heads = heads / tp;
      const int64_t q_row = group * (qpg + 2) * d + (tp_rank % per_group) * local_heads * d;
      const int64_t kv_row = (group * (qpg + 2) + qpg) * d;
      const std::string qkv = attn + ".qkv";
      for (const char* part : {".weight", ".bias"}) {
        if (std::string(part) == ".bias" && !c.bias) continue;
        const Shape global =
            std::string(part) == ".weight" ? Shape({qkv_rows, h}) : Shape({qkv_rows});
        out.push_back(make_slice(attn + ".q" + part, qkv + part, global, 0, q_row, local_heads * d,
                                 local_heads * d));
        out.push_back(make_slice(attn + ".kv" + part, qkv + part, global, 0, kv_row, 2 * d, 2 * d));
      }
    }
    row(attn + ".proj", h, heads * d);
    norm(layer + ".norm2");
    column(layer + ".mlp.fc1", c.ffn_hidden, h);
    if (c.activation == MlpActivation::kSwiGLU) column(layer + ".mlp.up", c.ffn_hidden, h);
    row(layer + ".mlp.fc2", h, c.ffn_hidden);
  }
  if (stage.has_head) norm("final_norm");
  if (stage.has_head && !c.tie_word_embeddings) vocab_rows("lm_head.weight");
  return out;
}

void save_checkpoint(const std::string& dir, const CheckpointInfo& info,
                     const std::vector<Parameter*>& params, AdamW* optimizer,
                     const ParallelGrid& grid, Backend& backend) {
  Communicator& world = grid.world();
  // Each step that can fail on one rank only (a full disk, a lost mount) is agreed on, so that a
  // failure is an error on every rank rather than peers waiting at the next barrier.
  run_agreed(world, backend, [&] {
    if (world.rank() == 0) {
      make_directory(dir);
      // A stale manifest would vouch for shards about to be replaced: remove it first.
      std::remove((dir + "/manifest.json").c_str());
    }
  });
  run_agreed(world, backend, [&] {
    if (grid.dp_rank() != 0) return;
    const std::map<std::string, TensorSlice> slices =
        slices_by_name(info.config, grid.tp_size(), grid.tp_rank());
    std::vector<TensorSlice> mine;
    std::map<std::string, TensorView> views;  // stored name -> the stored part of the shard
    for (Parameter* p : params) {
      const TensorSlice& s = slice_of(slices, *p);
      mine.push_back(s);
      views[s.name] = stored_view(s, p->value);
    }
    if (optimizer != nullptr) {
      for (AdamW::State& st : optimizer->state()) {
        const TensorSlice& s = slice_of(slices, *st.param);
        views[s.name + ".master"] = stored_view(s, st.master);
        views[s.name + ".exp_avg"] = stored_view(s, st.m);
        views[s.name + ".exp_avg_sq"] = stored_view(s, st.v);
      }
    }
    const std::vector<ShardTensor> tensors =
        shard_tensors(mine, info.config.dtype, optimizer != nullptr);
    std::vector<NamedTensor> named;
    for (const ShardTensor& t : tensors) named.push_back({t.stored(), views.at(t.stored())});
    save_safetensors(shard_path(dir, grid.tp_rank(), grid.pp_rank()), named,
                     shard_metadata(tensors, grid.tp_size(), grid.tp_rank(), grid.pp_size(),
                                    grid.pp_rank(), info.step),
                     backend, SafetensorsOptions{/*checksums=*/true});
  });  // every shard is on disk before the manifest says so
  run_agreed(world, backend, [&] {
    if (world.rank() != 0) return;
    // The tokenizer travels with the model, so the checkpoint alone says what its ids mean.
    if (!info.tokenizer.empty()) {
      write_file_atomically(dir + "/tokenizer.json", read_file(info.tokenizer));
    }
    write_file_atomically(dir + "/manifest.json",
                          manifest_json(info, optimizer != nullptr).dump(2) + "\n");
  });
}

std::string checkpoint_manifest(const CheckpointInfo& info, bool has_optimizer) {
  return manifest_json(info, has_optimizer).dump(2) + "\n";
}

CheckpointInfo read_checkpoint_info(const std::string& path_or_root) {
  const std::string dir = resolve_checkpoint(path_or_root);
  const std::string path = dir + "/manifest.json";
  const std::string text = read_file(path, kManifestLimit);
  try {
    const json j = json::parse(text);
    WEFT_CHECK(j.is_object() && j.contains("format") && j["format"].is_string() &&
                   j["format"].get<std::string>() == "weft-gpt-checkpoint",
               path,
               " is not a weft GPT checkpoint manifest (no \"format\": "
               "\"weft-gpt-checkpoint\")");
    CheckpointInfo info;
    // Fields of int type are read as int64 and narrowed checked: 2^32 + 2 is no tp of 2.
    auto int_field = [&](const char* key, int64_t lo) {
      return checked_narrow<int>(integer_field(j, key, lo, INT64_MAX, path),
                                 (path + ": field '" + key + "'").c_str());
    };
    info.version = int_field("version", 1);
    WEFT_CHECK(info.version <= kManifestVersion, path, ": format version ", info.version,
               " is newer than this build of weft reads (versions 1 to ", kManifestVersion,
               "): it was written by a newer weft; load it with that one");
    info.config = config_from_json(j.at("config"), path);
    info.tp = int_field("tp", 1);
    info.pp = j.contains("pp") ? int_field("pp", 1) : 1;
    info.virtual_stages = j.contains("virtual_stages") ? int_field("virtual_stages", 1) : 1;
    info.step = integer_field(j, "step", 0, INT64_MAX, path);
    if (j.contains("checksums")) {
      const json& kind = j.at("checksums");
      WEFT_CHECK(kind.is_string() && kind.get<std::string>() == kChecksumKind, path,
                 ": field 'checksums' is ", kind.dump(), ", but this weft knows \"", kChecksumKind,
                 "\" only");
      info.has_checksums = true;
    }
    info.has_optimizer = j.contains("has_optimizer") && j.at("has_optimizer").get<bool>();
    info.dropout_replicated = j.at("rng").at("dropout_replicated").get<uint64_t>();
    info.dropout_sharded = j.at("rng").at("dropout_sharded").get<uint64_t>();
    info.run_args = j.at("run_args").dump();
    if (j.contains("tokenizer")) info.tokenizer = dir + "/" + j.at("tokenizer").get<std::string>();
    return info;
  } catch (const json::exception& e) {
    WEFT_THROW(ErrorCode::kIo, "malformed checkpoint manifest ", path, ": ", e.what());
  }
}

namespace {

// Version 1: shards without slice metadata, read by name at the saving TP size.
void load_legacy(const std::string& dir, const CheckpointInfo& info, const CheckpointIndex& index,
                 const std::vector<Parameter*>& params, AdamW* optimizer, const ParallelGrid& grid,
                 Backend& backend, std::vector<StagedRead>& staged) {
  const std::string first = shard_path(dir, 0, 0);
  WEFT_CHECK(info.tp == grid.tp_size(), "checkpoint ", dir, " is of format version 1: its shards (",
             first,
             ", ...) have no slice metadata (global_name, global_shape, partition_dim, offset "
             "per tensor in __metadata__), so it loads only at the tensor-parallel size it was "
             "saved with, tp=",
             info.tp, ", not ", grid.tp_size(), "; load it there and save it again");
  std::vector<const SafetensorsReader*> readers;
  for (const SafetensorsReader& f : index.files()) {
    if (f.metadata().at("tp_rank") == std::to_string(grid.tp_rank())) readers.push_back(&f);
  }
  auto read = [&](const std::string& name, TensorView dst) {
    for (const SafetensorsReader* reader : readers) {
      if (!reader->contains(name)) continue;
      StagedRead st{dst, std::vector<unsigned char>(dst.bytes())};
      reader->read(name, TensorView{st.bytes.data(), dst.shape, dst.dtype, Device::cpu()}, backend);
      const int64_t bad = first_nonfinite(st.bytes.data(), dst.numel(), dst.dtype);
      WEFT_CHECK(bad < 0, reader->path(), ": tensor '", name, "' holds ",
                 bad < 0 ? "" : nonfinite_text(st.bytes.data(), bad, dst.dtype), " at element ",
                 bad, " of its ", dst.shape.str(), ": a checkpoint's values must be finite");
      staged.push_back(std::move(st));
      return;
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
  }
}

}  // namespace

void load_checkpoint(const std::string& path_or_root, const std::vector<Parameter*>& params,
                     AdamW* optimizer, const ParallelGrid& grid, Backend& backend) {
  // Everything this rank needs is read into host memory and checked (checksums, finite values)
  // first; only when every rank succeeded does any parameter change. A failure on one rank (a
  // corrupt or unreadable shard) is an error on every rank, naming the file, before any state
  // changed.
  std::vector<StagedRead> staged;
  CheckpointInfo info;
  run_agreed(grid.world(), backend, [&] {
    const std::string dir = resolve_checkpoint(path_or_root);
    info = read_checkpoint_info(dir);
    WEFT_CHECK(optimizer == nullptr || info.has_optimizer || info.version < 2, "checkpoint ", dir,
               "/manifest.json: has_optimizer is false, but this run resumes an optimizer");
    const CheckpointIndex index(dir, info);
    if (index.legacy()) {
      load_legacy(dir, info, index, params, optimizer, grid, backend, staged);
      return;
    }
    const std::map<std::string, TensorSlice> slices =
        slices_by_name(info.config, grid.tp_size(), grid.tp_rank());
    for (Parameter* p : params) read_staged(index, slice_of(slices, *p), "", p->value, staged);
    if (optimizer != nullptr) {
      for (AdamW::State& s : optimizer->state()) {
        const TensorSlice& slice = slice_of(slices, *s.param);
        read_staged(index, slice, ".master", s.master, staged);
        read_staged(index, slice, ".exp_avg", s.m, staged);
        read_staged(index, slice, ".exp_avg_sq", s.v, staged);
      }
    }
  });
  for (StagedRead& st : staged) {
    backend.copy(st.target,
                 TensorView{st.bytes.data(), st.target.shape, st.target.dtype, Device::cpu()});
  }
  if (optimizer != nullptr) {
    optimizer->set_steps_taken(info.step);
    optimizer->refresh_parameters();
  }
}

std::vector<CheckpointTensor> list_checkpoint_tensors(const std::string& path_or_root) {
  const std::string dir = resolve_checkpoint(path_or_root);
  const CheckpointInfo info = read_checkpoint_info(dir);
  const CheckpointIndex index(dir, info);
  std::vector<CheckpointTensor> out;
  if (index.legacy()) {
    // No slice metadata: each stored tensor is listed as it is stored.
    std::map<std::string, CheckpointTensor> stored;
    for (const SafetensorsReader& f : index.files()) {
      for (const std::string& name : f.names()) {
        CheckpointTensor& t = stored[name];
        t.name = name;
        t.dtype = f.dtype(name);
        t.shape = f.shape(name);
        t.blocks += 1;
        t.stored_bytes += f.shape(name).numel() * static_cast<int64_t>(dtype_size(t.dtype));
      }
    }
    for (auto& [name, t] : stored) out.push_back(t);
    return out;
  }
  for (const auto& [name, g] : index.tensors()) {
    CheckpointTensor t;
    t.name = name;
    t.dtype = g.dtype;
    t.shape = g.shape;
    t.partition_dim = g.partition_dim;
    t.blocks = static_cast<int64_t>(g.blocks.size());
    for (const CheckpointIndex::Block& b : g.blocks) {
      t.stored_bytes += b.file->shape(b.stored).numel() * static_cast<int64_t>(dtype_size(g.dtype));
    }
    out.push_back(t);
  }
  return out;
}

void reshard_checkpoint(const std::string& path_or_root, const std::string& dst, int tp, int pp,
                        int virtual_stages) {
  const std::string src = resolve_checkpoint(path_or_root);
  const CheckpointInfo info = read_checkpoint_info(src);
  const CheckpointIndex index(src, info);
  WEFT_CHECK(!index.legacy(), "checkpoint ", src,
             " is of format version 1: its shards have no slice metadata, so it cannot be "
             "resharded; load it at tp=",
             info.tp, " and save it again");
  WEFT_CHECK(tp > 0 && pp > 0 && virtual_stages > 0, "reshard: tp (", tp, "), pp (", pp,
             ") and virtual stages (", virtual_stages, ") must be positive");
  WEFT_CHECK(virtual_stages == 1 || pp > 1, "reshard: virtual stages (", virtual_stages,
             ") need pp > 1");
  std::vector<GPTStageLayout> stages;
  try {
    GPTConfig config = info.config;
    config.finalize(tp);
    stages = pipeline_stage_layouts(split_layers(config.layers, pp * virtual_stages, {}));
  } catch (const Error& e) {
    WEFT_THROW(ErrorCode::kInvalidArgument, "reshard: the model of ", src,
               "/manifest.json does not divide at tp ", tp, ", pp ", pp, ", virtual stages ",
               virtual_stages, ": ", e.message());
  }
  WEFT_CHECK(!std::filesystem::exists(dst), "reshard: the output directory '", dst,
             "' exists already; give a new one");

  // Written in a temporary directory beside dst, renamed at the end: dst is whole or absent.
  const std::string tmp = dst + ".tmp." + std::to_string(::getpid());
  std::error_code ignored;
  std::filesystem::remove_all(tmp, ignored);
  make_directory(tmp);
  try {
    for (int s = 0; s < pp; ++s) {
      for (int t = 0; t < tp; ++t) {
        std::map<std::string, TensorSlice> slices;
        for (int c = 0; c < virtual_stages; ++c) {
          for (TensorSlice& slice :
               gpt_parameter_slices(info.config, tp, t, stages[static_cast<size_t>(c * pp + s)])) {
            slices[slice.name] = std::move(slice);
          }
        }
        std::vector<TensorSlice> list;
        for (auto& [name, slice] : slices) list.push_back(slice);
        const std::vector<ShardTensor> tensors =
            shard_tensors(list, info.config.dtype, info.has_optimizer);
        std::vector<SafetensorsEntry> entries;
        std::map<std::string, const ShardTensor*> by_name;
        for (const ShardTensor& x : tensors) {
          entries.push_back({x.stored(), x.dtype, x.slice.shape});
          by_name[x.stored()] = &x;
        }
        save_safetensors_streamed(
            shard_path(tmp, t, s), entries, shard_metadata(tensors, tp, t, pp, s, info.step),
            [&](const SafetensorsEntry& e, std::vector<unsigned char>& scratch) -> const void* {
              const ShardTensor& x = *by_name.at(e.name);
              const int dim = x.slice.partition_dim;
              const int64_t count = dim < 0 ? 0 : x.slice.shape[dim];
              index.read(x.slice.global_name + x.suffix, x.dtype, dim, x.slice.offset, count,
                         scratch.data(), count);
              return scratch.data();
            },
            SafetensorsOptions{/*checksums=*/true});
      }
    }
    nlohmann::json manifest = json::parse(read_file(src + "/manifest.json", kManifestLimit));
    manifest["version"] = kManifestVersion;
    manifest["checksums"] = kChecksumKind;
    manifest["tp"] = tp;
    manifest["pp"] = pp;
    manifest["virtual_stages"] = virtual_stages;
    if (!info.tokenizer.empty()) {
      write_file_atomically(tmp + "/tokenizer.json", read_file(info.tokenizer));
    }
    write_file_atomically(tmp + "/manifest.json", manifest.dump(2) + "\n");
    WEFT_CHECK(::rename(tmp.c_str(), dst.c_str()) == 0, "reshard: cannot rename '", tmp, "' to '",
               dst, "': ", std::strerror(errno));
  } catch (...) {
    std::filesystem::remove_all(tmp, ignored);
    throw;
  }
}

}  // namespace weft
