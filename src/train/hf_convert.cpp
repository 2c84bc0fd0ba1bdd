// Hugging Face GPT2LMHeadModel / LlamaForCausalLM <-> weft: config.json checks, tensor name and
// layout mapping (Conv1D transposes, [q|k|v] <-> grouped QKV), import, export, direct load.
#include "weft/hf_convert.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "weft/backend.hpp"
#include "weft/checkpoint.hpp"
#include "weft/checkpoint_store.hpp"
#include "weft/error.hpp"
#include "weft/gpt_checkpoint.hpp"
#include "weft/log.hpp"
#include "weft/pipeline.hpp"
#include "weft/tokenizer.hpp"

namespace weft {

namespace {

using nlohmann::json;

bool is_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// ---- config.json ------------------------------------------------------------------------------

// Field accessors that name the file, the field and the value when it is not what weft needs.
struct ConfigReader {
  std::string path;
  json j;

  [[noreturn]] void refuse(const std::string& field, const std::string& value,
                           const std::string& why) const {
    WEFT_THROW(ErrorCode::kInvalidArgument, path, ": field '", field, "' is ", value, ": ", why);
  }
  std::string shown(const std::string& field) const {
    return j.contains(field) ? j.at(field).dump() : std::string("missing");
  }
  int64_t integer(const std::string& field, int64_t fallback = -1) const {
    if (!j.contains(field) || j.at(field).is_null()) {
      if (fallback >= 0) return fallback;
      refuse(field, "missing", "required (a positive integer)");
    }
    const json& v = j.at(field);
    if (!v.is_number_integer() || v.get<int64_t>() <= 0) {
      refuse(field, v.dump(), "must be a positive integer");
    }
    return v.get<int64_t>();
  }
  double number(const std::string& field, double fallback) const {
    if (!j.contains(field) || j.at(field).is_null()) return fallback;
    const json& v = j.at(field);
    if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() <= 0.0) {
      refuse(field, v.dump(), "must be a positive number");
    }
    return v.get<double>();
  }
  bool flag(const std::string& field, bool fallback) const {
    if (!j.contains(field) || j.at(field).is_null()) return fallback;
    if (!j.at(field).is_boolean()) refuse(field, j.at(field).dump(), "must be true or false");
    return j.at(field).get<bool>();
  }
  std::string text(const std::string& field, const std::string& fallback) const {
    if (!j.contains(field) || j.at(field).is_null()) return fallback;
    if (!j.at(field).is_string()) refuse(field, j.at(field).dump(), "must be a string");
    return j.at(field).get<std::string>();
  }
  // A feature weft does not implement must be absent, null or `off`.
  void require_off(const std::string& field, const json& off, const std::string& why) const {
    if (!j.contains(field) || j.at(field).is_null() || j.at(field) == off) return;
    refuse(field, j.at(field).dump(), why);
  }
};

// Features of the other HF decoders that change the computation; weft has none of them.
void refuse_foreign_features(const ConfigReader& r) {
  r.require_off("use_parallel_residual", false, "weft has no parallel residual");
  r.require_off("parallel_attn", false, "weft has no parallel residual");
  r.require_off("add_cross_attention", false, "weft has no cross-attention");
  r.require_off("rope_scaling", json(nullptr), "weft has no rope scaling");
  r.require_off("sliding_window", json(nullptr), "weft has no sliding-window attention");
}

HfModelInfo parse_config(const std::string& dir) {
  ConfigReader r;
  r.path = dir + "/config.json";
  try {
    r.j = json::parse(read_file(r.path));
  } catch (const json::exception& e) {
    WEFT_THROW(ErrorCode::kInvalidArgument, r.path, ": not valid JSON: ", e.what());
  }
  if (!r.j.is_object()) WEFT_THROW(ErrorCode::kInvalidArgument, r.path, ": not a JSON object");
  HfModelInfo info;
  info.dir = dir;
  const std::string type = r.text("model_type", "");
  if (type != "gpt2" && type != "llama") {
    r.refuse("model_type", r.shown("model_type"),
             "weft reads gpt2 (GPT2LMHeadModel) and llama (LlamaForCausalLM)");
  }
  if (r.j.contains("architectures")) {
    const json& a = r.j.at("architectures");
    const std::string want = type == "gpt2" ? "GPT2LMHeadModel" : "LlamaForCausalLM";
    if (!a.is_array() || a.size() != 1 || a[0] != want) {
      r.refuse("architectures", a.dump(),
               "weft reads GPT2LMHeadModel (model_type gpt2) and LlamaForCausalLM (llama)");
    }
  }
  refuse_foreign_features(r);
  GPTConfig c;
  c.dropout = 0.0f;
  c.dtype = DType::kF32;
  if (type == "gpt2") {
    info.kind = "gpt2";
    c.vocab_size = r.integer("vocab_size");
    c.max_seq = r.integer("n_positions");
    c.hidden = r.integer("n_embd");
    c.layers = r.integer("n_layer");
    c.heads = r.integer("n_head");
    c.kv_heads = c.heads;
    c.ffn_hidden = r.integer("n_inner", 4 * c.hidden);
    c.norm = NormKind::kLayerNorm;
    c.norm_eps = static_cast<float>(r.number("layer_norm_epsilon", 1e-5));
    const std::string act = r.text("activation_function", "gelu_new");
    if (act != "gelu_new" && act != "gelu_pytorch_tanh") {
      r.refuse("activation_function", "\"" + act + "\"",
               "weft's GPT-2 MLP uses the tanh GeLU (gelu_new, gelu_pytorch_tanh)");
    }
    c.activation = MlpActivation::kGelu;
    c.rotary = false;
    c.bias = true;
    if (!r.flag("scale_attn_weights", true)) {
      r.refuse("scale_attn_weights", "false", "weft always scales scores by 1/sqrt(head size)");
    }
    r.require_off("scale_attn_by_inverse_layer_idx", false,
                  "weft does not scale attention by the layer index");
    r.require_off("reorder_and_upcast_attn", false, "weft does not reorder the attention upcast");
    c.tie_word_embeddings = r.flag("tie_word_embeddings", true);
  } else {
    info.kind = "llama";
    c.vocab_size = r.integer("vocab_size");
    c.max_seq = r.integer("max_position_embeddings");
    c.hidden = r.integer("hidden_size");
    c.layers = r.integer("num_hidden_layers");
    c.heads = r.integer("num_attention_heads");
    c.kv_heads = r.integer("num_key_value_heads", c.heads);
    c.ffn_hidden = r.integer("intermediate_size");
    if (c.hidden % c.heads != 0) {
      r.refuse("hidden_size", std::to_string(c.hidden),
               "must be divisible by num_attention_heads (" + std::to_string(c.heads) + ")");
    }
    if (r.j.contains("head_dim") && !r.j.at("head_dim").is_null() &&
        r.j.at("head_dim") != json(c.hidden / c.heads)) {
      r.refuse("head_dim", r.shown("head_dim"),
               "weft's head size is hidden_size / num_attention_heads = " +
                   std::to_string(c.hidden / c.heads));
    }
    c.norm = NormKind::kRMSNorm;
    c.norm_eps = static_cast<float>(r.number("rms_norm_eps", 1e-6));
    const std::string act = r.text("hidden_act", "silu");
    if (act != "silu")
      r.refuse("hidden_act", "\"" + act + "\"", "weft's Llama MLP is SwiGLU (silu)");
    c.activation = MlpActivation::kSwiGLU;
    c.rotary = true;
    c.rope_theta = static_cast<float>(r.number("rope_theta", 10000.0));
    c.bias = false;
    r.require_off("attention_bias", false, "weft's Llama attention has no biases");
    r.require_off("mlp_bias", false, "weft's Llama MLP has no biases");
    c.tie_word_embeddings = r.flag("tie_word_embeddings", false);
  }
  try {
    GPTConfig check = c;
    check.finalize(1);
  } catch (const Error& e) {
    WEFT_THROW(ErrorCode::kInvalidArgument, r.path, ": ", e.message());
  }
  info.config = c;
  if (is_file(dir + "/tokenizer.json")) info.tokenizer = dir + "/tokenizer.json";
  return info;
}

// ---- Tensor names -----------------------------------------------------------------------------

// The HF tensors of a model: name -> shape, in HF's own layout ([in, out] for GPT-2's Conv1D).
std::map<std::string, Shape> hf_tensor_shapes(const HfModelInfo& info, const std::string& prefix) {
  const GPTConfig& c = info.config;
  const int64_t h = c.hidden, f = c.ffn_hidden, d = c.hidden / c.heads;
  std::map<std::string, Shape> out;
  if (info.kind == "gpt2") {
    const std::string p = prefix;
    out[p + "wte.weight"] = Shape({c.vocab_size, h});
    out[p + "wpe.weight"] = Shape({c.max_seq, h});
    for (int64_t i = 0; i < c.layers; ++i) {
      const std::string l = p + "h." + std::to_string(i) + ".";
      for (const char* n : {"ln_1", "ln_2"}) {
        out[l + n + ".weight"] = Shape({h});
        out[l + n + ".bias"] = Shape({h});
      }
      out[l + "attn.c_attn.weight"] = Shape({h, 3 * h});
      out[l + "attn.c_attn.bias"] = Shape({3 * h});
      out[l + "attn.c_proj.weight"] = Shape({h, h});
      out[l + "attn.c_proj.bias"] = Shape({h});
      out[l + "mlp.c_fc.weight"] = Shape({h, f});
      out[l + "mlp.c_fc.bias"] = Shape({f});
      out[l + "mlp.c_proj.weight"] = Shape({f, h});
      out[l + "mlp.c_proj.bias"] = Shape({h});
    }
    out[p + "ln_f.weight"] = Shape({h});
    out[p + "ln_f.bias"] = Shape({h});
  } else {
    out["model.embed_tokens.weight"] = Shape({c.vocab_size, h});
    for (int64_t i = 0; i < c.layers; ++i) {
      const std::string l = "model.layers." + std::to_string(i) + ".";
      out[l + "input_layernorm.weight"] = Shape({h});
      out[l + "post_attention_layernorm.weight"] = Shape({h});
      out[l + "self_attn.q_proj.weight"] = Shape({c.heads * d, h});
      out[l + "self_attn.k_proj.weight"] = Shape({c.kv_heads * d, h});
      out[l + "self_attn.v_proj.weight"] = Shape({c.kv_heads * d, h});
      out[l + "self_attn.o_proj.weight"] = Shape({h, c.heads * d});
      out[l + "mlp.gate_proj.weight"] = Shape({f, h});
      out[l + "mlp.up_proj.weight"] = Shape({f, h});
      out[l + "mlp.down_proj.weight"] = Shape({h, f});
    }
    out["model.norm.weight"] = Shape({h});
  }
  if (!c.tie_word_embeddings) out["lm_head.weight"] = Shape({c.vocab_size, h});
  return out;
}

// Stored tensors that are buffers, not weights, or a tied head's copy: skipped.
bool ignorable(const HfModelInfo& info, const std::string& name) {
  auto ends = [&](const char* s) {
    const size_t n = std::strlen(s);
    return name.size() >= n && name.compare(name.size() - n, n, s) == 0;
  };
  if (info.kind == "gpt2" && (ends(".attn.bias") || ends(".attn.masked_bias"))) return true;
  if (info.kind == "llama" && ends(".rotary_emb.inv_freq")) return true;
  return info.config.tie_word_embeddings && name == "lm_head.weight";
}

std::vector<float> to_f32(const void* raw, DType dtype, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    switch (dtype) {
      case DType::kF32:
        out[i] = static_cast<const float*>(raw)[i];
        break;
      case DType::kBF16:
        out[i] = bf16_to_float(static_cast<const bf16_t*>(raw)[i]);
        break;
      case DType::kF16:
        out[i] = f16_to_float(static_cast<const f16_t*>(raw)[i]);
        break;
      default:
        WEFT_THROW(ErrorCode::kInvalidArgument, "unexpected dtype ", dtype_name(dtype));
    }
  }
  return out;
}

// [rows, cols] -> [cols, rows].
std::vector<float> transposed(const std::vector<float>& m, int64_t rows, int64_t cols) {
  std::vector<float> t(m.size());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) t[c * rows + r] = m[r * cols + c];
  }
  return t;
}

// Rows of q [heads d, w], k and v [kv d, w] -> weft's grouped layout (per kv group: its query
// heads, its key head, its value head), and back.
std::vector<float> group_qkv(const std::vector<float>& q, const std::vector<float>& k,
                             const std::vector<float>& v, int64_t heads, int64_t kv, int64_t d,
                             int64_t w) {
  const int64_t qpg = heads / kv, block = d * w;
  std::vector<float> out;
  out.reserve(q.size() + k.size() + v.size());
  for (int64_t g = 0; g < kv; ++g) {
    out.insert(out.end(), q.begin() + g * qpg * block, q.begin() + (g + 1) * qpg * block);
    out.insert(out.end(), k.begin() + g * block, k.begin() + (g + 1) * block);
    out.insert(out.end(), v.begin() + g * block, v.begin() + (g + 1) * block);
  }
  return out;
}
void ungroup_qkv(const std::vector<float>& qkv, int64_t heads, int64_t kv, int64_t d, int64_t w,
                 std::vector<float>& q, std::vector<float>& k, std::vector<float>& v) {
  const int64_t qpg = heads / kv, block = d * w;
  q.clear();
  k.clear();
  v.clear();
  for (int64_t g = 0; g < kv; ++g) {
    auto at = qkv.begin() + g * (qpg + 2) * block;
    q.insert(q.end(), at, at + qpg * block);
    k.insert(k.end(), at + qpg * block, at + (qpg + 1) * block);
    v.insert(v.end(), at + (qpg + 1) * block, at + (qpg + 2) * block);
  }
}

}  // namespace

// ---- HfModel ----------------------------------------------------------------------------------

struct HfModel::Files {
  SafetensorsReader reader;
  std::string prefix;  // GPT-2: "transformer." or ""

  // HF tensor `name` as f32 (checked against its expected shape at construction).
  std::vector<float> read(const std::string& name) const {
    const Shape shape = reader.shape(name);
    const DType dtype = reader.dtype(name);
    std::vector<unsigned char> raw(static_cast<size_t>(shape.numel()) * dtype_size(dtype));
    if (shape.numel() > 0) {
      reader.read_block(name, 0, 0, shape[0], raw.data(), shape[0], 0);
    }
    return to_f32(raw.data(), dtype, shape.numel());
  }
};

bool is_hf_model_dir(const std::string& dir) {
  return is_file(dir + "/config.json") &&
         (is_file(dir + "/model.safetensors") || is_file(dir + "/model.safetensors.index.json"));
}

HfModelInfo read_hf_config(const std::string& dir) { return parse_config(dir); }

HfModel::HfModel(const std::string& dir) : info_(parse_config(dir)) {
  const std::string path = dir + "/model.safetensors";
  WEFT_CHECK(!is_file(dir + "/model.safetensors.index.json") || is_file(path), dir,
             "/model.safetensors.index.json: a model sharded over several safetensors files; "
             "weft reads a single model.safetensors (save it with a larger max_shard_size)");
  files_ = std::make_unique<Files>(Files{SafetensorsReader(path), ""});
  const SafetensorsReader& f = files_->reader;
  if (info_.kind == "gpt2" && f.contains("transformer.wte.weight")) files_->prefix = "transformer.";
  const std::map<std::string, Shape> want = hf_tensor_shapes(info_, files_->prefix);
  for (const auto& [name, shape] : want) {
    WEFT_CHECK(f.contains(name), path, ": tensor '", name, "' ", shape.str(),
               " is missing (config.json: ", info_.kind, " with ", info_.config.layers,
               " layers, hidden ", info_.config.hidden,
               info_.config.tie_word_embeddings ? "" : ", tie_word_embeddings false", ")");
    WEFT_CHECK(f.shape(name) == shape, path, ": tensor '", name, "' has shape ",
               f.shape(name).str(), ", but config.json gives ", shape.str());
    const DType dt = f.dtype(name);
    WEFT_CHECK(dt == DType::kF32 || dt == DType::kBF16 || dt == DType::kF16, path, ": tensor '",
               name, "' has dtype ", dtype_name(dt), "; weft reads F32, BF16 and F16 weights");
  }
  for (const std::string& name : f.names()) {
    WEFT_CHECK(want.count(name) != 0 || ignorable(info_, name), path, ": tensor '", name, "' ",
               f.shape(name).str(), " is not part of a ", info_.kind,
               " model weft implements (config.json: its features say it has no such tensor)");
  }
}

HfModel::~HfModel() = default;
HfModel::HfModel(HfModel&&) noexcept = default;
HfModel& HfModel::operator=(HfModel&&) noexcept = default;

std::vector<float> HfModel::global(const std::string& name) const {
  const GPTConfig& c = info_.config;
  const int64_t h = c.hidden, f = c.ffn_hidden, d = h / c.heads;
  const bool gpt2 = info_.kind == "gpt2";
  const std::string p = files_->prefix;
  auto read = [&](const std::string& hf) { return files_->read(hf); };
  if (name == "embedding.weight")
    return read(gpt2 ? p + "wte.weight" : "model.embed_tokens.weight");
  if (name == "lm_head.weight") return read("lm_head.weight");
  if (name == "positions") return read(p + "wpe.weight");
  if (name.rfind("final_norm.", 0) == 0) {
    const std::string part = name.substr(std::strlen("final_norm."));
    return read(gpt2 ? p + "ln_f." + part : "model.norm." + part);
  }
  WEFT_CHECK(name.rfind("layers.", 0) == 0, "HF conversion: no HF tensor for '", name, "'");
  const size_t dot = name.find('.', 7);
  const std::string index = name.substr(7, dot - 7), rest = name.substr(dot + 1);
  const std::string l = gpt2 ? p + "h." + index + "." : "model.layers." + index + ".";
  if (gpt2) {
    if (rest == "norm1.weight" || rest == "norm1.bias") return read(l + "ln_1." + rest.substr(6));
    if (rest == "norm2.weight" || rest == "norm2.bias") return read(l + "ln_2." + rest.substr(6));
    if (rest == "attention.qkv.weight" || rest == "attention.qkv.bias") {
      const bool weight = rest == "attention.qkv.weight";
      const std::vector<float> w = read(l + (weight ? "attn.c_attn.weight" : "attn.c_attn.bias"));
      // [h, 3h] (in, out) -> [3h, h] rows q | k | v; a bias is one column.
      const int64_t cols = weight ? h : 1;
      const std::vector<float> t = weight ? transposed(w, h, 3 * h) : w;
      const int64_t part = h * cols;
      const std::vector<float> q(t.begin(), t.begin() + part),
          k(t.begin() + part, t.begin() + 2 * part), v(t.begin() + 2 * part, t.end());
      return group_qkv(q, k, v, c.heads, c.kv_heads, d, cols);
    }
    if (rest == "attention.proj.weight") return transposed(read(l + "attn.c_proj.weight"), h, h);
    if (rest == "attention.proj.bias") return read(l + "attn.c_proj.bias");
    if (rest == "mlp.fc1.weight") return transposed(read(l + "mlp.c_fc.weight"), h, f);
    if (rest == "mlp.fc1.bias") return read(l + "mlp.c_fc.bias");
    if (rest == "mlp.fc2.weight") return transposed(read(l + "mlp.c_proj.weight"), f, h);
    if (rest == "mlp.fc2.bias") return read(l + "mlp.c_proj.bias");
  } else {
    if (rest == "norm1.weight") return read(l + "input_layernorm.weight");
    if (rest == "norm2.weight") return read(l + "post_attention_layernorm.weight");
    if (rest == "attention.qkv.weight") {
      return group_qkv(read(l + "self_attn.q_proj.weight"), read(l + "self_attn.k_proj.weight"),
                       read(l + "self_attn.v_proj.weight"), c.heads, c.kv_heads, d, h);
    }
    if (rest == "attention.proj.weight") return read(l + "self_attn.o_proj.weight");
    if (rest == "mlp.fc1.weight") return read(l + "mlp.gate_proj.weight");
    if (rest == "mlp.up.weight") return read(l + "mlp.up_proj.weight");
    if (rest == "mlp.fc2.weight") return read(l + "mlp.down_proj.weight");
  }
  WEFT_THROW(ErrorCode::kInvalidArgument, "HF conversion: no HF tensor for '", name, "'");
}

// ---- Direct load ------------------------------------------------------------------------------

void load_hf_model(const std::string& dir, const std::vector<Parameter*>& params,
                   const ParallelGrid& grid, Backend& backend) {
  const HfModel model(dir);
  std::map<std::string, TensorSlice> slices;
  for (TensorSlice& s : gpt_parameter_slices(model.info().config, grid.tp_size(), grid.tp_rank())) {
    slices[s.name] = std::move(s);
  }
  for (Parameter* p : params) {
    auto it = slices.find(p->name);
    WEFT_CHECK(it != slices.end(), "HF model ", dir, ": parameter '", p->name,
               "' is not one of its config's");
    const TensorSlice& s = it->second;
    const std::vector<float> global = model.global(s.global_name);
    // The block of the global tensor this shard stores, dense [s.shape].
    std::vector<float> block;
    const int dim = s.partition_dim;
    if (dim < 0) {
      block = global;
    } else {
      const int64_t cols = s.global_shape.rank() == 1 ? 1 : s.global_shape.cols();
      const int64_t count = s.shape[dim];
      if (dim == 0) {
        block.assign(global.begin() + s.offset * cols, global.begin() + (s.offset + count) * cols);
      } else {
        const int64_t rows = s.global_shape.rows();
        block.resize(static_cast<size_t>(rows * count));
        for (int64_t r = 0; r < rows; ++r) {
          std::copy_n(global.begin() + r * cols + s.offset, count, block.begin() + r * count);
        }
      }
    }
    if (block.empty()) continue;  // a rank holding vocabulary padding only
    TensorView target = p->value.view();
    if (dim == 0 && s.shape[0] < s.local_extent) target = target.rows(0, s.shape[0]);
    const TensorView host{block.data(), target.shape, DType::kF32, Device::cpu()};
    if (target.dtype == DType::kF32) {
      backend.copy(target, host);
    } else {
      Tensor staged(backend, target.shape, DType::kF32);
      backend.copy(staged, host);
      backend.convert(target, staged);
    }
  }
  backend.synchronize();
}

// ---- Import -----------------------------------------------------------------------------------

void import_hf_checkpoint(const std::string& hf_dir, const std::string& out, int tp, int pp) {
  const HfModel model(hf_dir);
  const GPTConfig& config = model.info().config;
  WEFT_CHECK(!std::filesystem::exists(out), "import-hf: the output directory '", out,
             "' exists already; give a new one");
  // Checked before anything is written: the layout must divide the model.
  try {
    WEFT_CHECK(tp > 0 && pp > 0, "tp (", tp, ") and pp (", pp, ") must be positive");
    GPTConfig c = config;
    c.finalize(tp);
    split_layers(c.layers, pp, {});
  } catch (const Error& e) {
    WEFT_THROW(ErrorCode::kInvalidArgument, "import-hf: ", hf_dir,
               "/config.json does not divide at tp ", tp, ", pp ", pp, ": ", e.message());
  }
  // A tp 1 x pp 1 checkpoint written here, then resharded into `out` by weft's own writer (which
  // renames its temporary directory to `out` only when whole).
  const std::string staging = out + ".hf-staging." + std::to_string(::getpid());
  std::error_code ignored;
  std::filesystem::remove_all(staging, ignored);
  WEFT_CHECK(::mkdir(staging.c_str(), 0755) == 0, "import-hf: cannot create '", staging,
             "': ", std::strerror(errno));
  try {
    const std::vector<TensorSlice> slices = gpt_parameter_slices(config, 1, 0);
    std::vector<SafetensorsEntry> entries;
    std::map<std::string, std::string> metadata{{"format", "weft"}, {"tp", "1"},
                                                {"tp_rank", "0"},   {"pp", "1"},
                                                {"pp_rank", "0"},   {"step", "0"}};
    for (const TensorSlice& s : slices) {
      entries.push_back({s.name, DType::kF32, s.shape});
      metadata[s.name] = json{
          {"global_name", s.global_name},
          {"global_shape", s.global_shape.dims()},
          {"partition_dim", s.partition_dim < 0 ? json(nullptr) : json(s.partition_dim)},
          {"offset",
           s.offset}}.dump();
    }
    std::vector<float> current;
    save_safetensors_streamed(
        staging + "/tp0_pp0.safetensors", entries, metadata,
        [&](const SafetensorsEntry& e, std::vector<unsigned char>&) -> const void* {
          current = model.global(e.name);
          WEFT_CHECK(static_cast<int64_t>(current.size()) == e.shape.numel(), "HF conversion of '",
                     e.name, "' gave ", current.size(), " values, expected ", e.shape.numel());
          return current.data();
        },
        SafetensorsOptions{/*checksums=*/true});  // the manifest says every tensor has one
    CheckpointInfo info;
    info.config = config;
    info.run_args = json{{"imported_from", hf_dir}, {"hf_model_type", model.info().kind}}.dump();
    if (!model.info().tokenizer.empty()) {
      // Kept only when weft's tokenizer reads it, so that the checkpoint's programs can use it.
      try {
        const Tokenizer t = Tokenizer::from_file(model.info().tokenizer);
        WEFT_CHECK(t.vocab_size() <= config.vocab_size, "its vocabulary (", t.vocab_size(),
                   ") exceeds the model's (", config.vocab_size, ")");
        info.tokenizer = model.info().tokenizer;
      } catch (const Error& e) {
        WEFT_LOG(
            kWarning, "import-hf: ", model.info().tokenizer,
            " is not kept in the checkpoint (give --tokenizer to the programs): ", e.message());
      }
    }
    if (!info.tokenizer.empty()) {
      write_file_atomically(staging + "/tokenizer.json", read_file(info.tokenizer));
    }
    write_file_atomically(staging + "/manifest.json", checkpoint_manifest(info, false));
    reshard_checkpoint(staging, out, tp, pp);
  } catch (...) {
    std::filesystem::remove_all(staging, ignored);
    throw;
  }
  std::filesystem::remove_all(staging, ignored);
}

// ---- Export -----------------------------------------------------------------------------------

void export_hf_checkpoint(const std::string& src_path, const std::string& out) {
  const std::string src = resolve_checkpoint(src_path);
  const CheckpointInfo info = read_checkpoint_info(src);
  GPTConfig c = info.config;
  c.finalize(1);
  const std::string manifest = src + "/manifest.json";
  auto refuse = [&](const char* field, const std::string& value, const char* why) {
    WEFT_THROW(ErrorCode::kInvalidArgument, "export-hf: ", manifest, ": config field '", field,
               "' is ", value, ": ", why);
  };
  std::string kind;
  if (c.norm == NormKind::kLayerNorm) {
    kind = "gpt2";
    if (c.activation != MlpActivation::kGelu) refuse("activation", "swiglu", "GPT-2 uses GeLU");
    if (c.rotary) refuse("rotary", "true", "GPT-2 has learned positions");
    if (!c.bias) refuse("bias", "false", "GPT-2 has biases");
    if (c.kv_heads != c.heads) {
      refuse("kv_heads", std::to_string(c.kv_heads), "GPT-2 is multi-head (kv_heads == heads)");
    }
  } else {
    kind = "llama";
    if (c.activation != MlpActivation::kSwiGLU) refuse("activation", "gelu", "Llama uses SwiGLU");
    if (!c.rotary) refuse("rotary", "false", "Llama has rotary positions");
    if (c.bias) refuse("bias", "true", "Llama has no biases");
  }
  WEFT_CHECK(!std::filesystem::exists(out), "export-hf: the output directory '", out,
             "' exists already; give a new one");
  const std::string tmp = out + ".tmp." + std::to_string(::getpid());
  std::error_code ignored;
  std::filesystem::remove_all(tmp, ignored);
  WEFT_CHECK(::mkdir(tmp.c_str(), 0755) == 0, "export-hf: cannot create '", tmp,
             "': ", std::strerror(errno));
  try {
    // The global tensors are the stored tensors of a tp 1 x pp 1 checkpoint.
    std::string whole = src;
    if (info.tp != 1 || info.pp != 1 || info.virtual_stages != 1) {
      whole = tmp + "/weft-tp1";
      reshard_checkpoint(src, whole, 1, 1);
    }
    const SafetensorsReader shard(whole + "/tp0_pp0.safetensors");
    auto global = [&](const std::string& name) {
      const Shape shape = shard.shape(name);
      const DType dtype = shard.dtype(name);
      std::vector<unsigned char> raw(static_cast<size_t>(shape.numel()) * dtype_size(dtype));
      shard.read_block(name, 0, 0, shape[0], raw.data(), shape[0], 0);
      return to_f32(raw.data(), dtype, shape.numel());
    };
    const int64_t h = c.hidden, f = c.ffn_hidden, d = c.head_dim();
    HfModelInfo hf;
    hf.kind = kind;
    hf.config = c;
    const std::map<std::string, Shape> shapes =
        hf_tensor_shapes(hf, kind == "gpt2" ? "transformer." : "");
    // Each HF tensor from its weft global tensor (the inverse of HfModel::global).
    auto convert = [&](const std::string& name) -> std::vector<float> {
      const bool gpt2 = kind == "gpt2";
      const std::string p = "transformer.";
      if (name == (gpt2 ? p + "wte.weight" : "model.embed_tokens.weight")) {
        return global("embedding.weight");
      }
      if (name == "lm_head.weight") return global("lm_head.weight");
      if (gpt2 && name == p + "wpe.weight") return global("positions");
      if (name == p + "ln_f.weight" || name == "model.norm.weight") {
        return global("final_norm.weight");
      }
      if (name == p + "ln_f.bias") return global("final_norm.bias");
      const std::string head = gpt2 ? p + "h." : "model.layers.";
      const size_t dot = name.find('.', head.size());
      const std::string index = name.substr(head.size(), dot - head.size());
      const std::string rest = name.substr(dot + 1), l = "layers." + index + ".";
      if (gpt2) {
        if (rest.rfind("ln_1.", 0) == 0) return global(l + "norm1." + rest.substr(5));
        if (rest.rfind("ln_2.", 0) == 0) return global(l + "norm2." + rest.substr(5));
        if (rest == "attn.c_attn.weight" || rest == "attn.c_attn.bias") {
          const bool weight = rest == "attn.c_attn.weight";
          const int64_t cols = weight ? h : 1;
          std::vector<float> q, k, v;
          ungroup_qkv(global(l + (weight ? "attention.qkv.weight" : "attention.qkv.bias")), c.heads,
                      c.kv_heads, d, cols, q, k, v);
          q.insert(q.end(), k.begin(), k.end());
          q.insert(q.end(), v.begin(), v.end());
          return weight ? transposed(q, 3 * h, h) : q;
        }
        if (rest == "attn.c_proj.weight")
          return transposed(global(l + "attention.proj.weight"), h, h);
        if (rest == "attn.c_proj.bias") return global(l + "attention.proj.bias");
        if (rest == "mlp.c_fc.weight") return transposed(global(l + "mlp.fc1.weight"), f, h);
        if (rest == "mlp.c_fc.bias") return global(l + "mlp.fc1.bias");
        if (rest == "mlp.c_proj.weight") return transposed(global(l + "mlp.fc2.weight"), h, f);
        if (rest == "mlp.c_proj.bias") return global(l + "mlp.fc2.bias");
      } else {
        if (rest == "input_layernorm.weight") return global(l + "norm1.weight");
        if (rest == "post_attention_layernorm.weight") return global(l + "norm2.weight");
        if (rest.rfind("self_attn.", 0) == 0 && rest != "self_attn.o_proj.weight") {
          std::vector<float> q, k, v;
          ungroup_qkv(global(l + "attention.qkv.weight"), c.heads, c.kv_heads, d, h, q, k, v);
          return rest == "self_attn.q_proj.weight" ? q : rest == "self_attn.k_proj.weight" ? k : v;
        }
        if (rest == "self_attn.o_proj.weight") return global(l + "attention.proj.weight");
        if (rest == "mlp.gate_proj.weight") return global(l + "mlp.fc1.weight");
        if (rest == "mlp.up_proj.weight") return global(l + "mlp.up.weight");
        if (rest == "mlp.down_proj.weight") return global(l + "mlp.fc2.weight");
      }
      WEFT_THROW(ErrorCode::kInternal, "export-hf: no weft tensor for HF tensor '", name, "'");
    };
    std::vector<SafetensorsEntry> entries;
    for (const auto& [name, shape] : shapes) entries.push_back({name, DType::kF32, shape});
    std::vector<float> current;
    save_safetensors_streamed(
        tmp + "/model.safetensors", entries, {{"format", "pt"}},
        [&](const SafetensorsEntry& e, std::vector<unsigned char>&) -> const void* {
          current = convert(e.name);
          WEFT_CHECK(static_cast<int64_t>(current.size()) == e.shape.numel(), "export-hf: '",
                     e.name, "' gave ", current.size(), " values, expected ", e.shape.numel());
          return current.data();
        });
    json config;
    if (kind == "gpt2") {
      config = json{{"architectures", json::array({"GPT2LMHeadModel"})},
                    {"model_type", "gpt2"},
                    {"vocab_size", c.vocab_size},
                    {"n_positions", c.max_seq},
                    {"n_ctx", c.max_seq},
                    {"n_embd", h},
                    {"n_layer", c.layers},
                    {"n_head", c.heads},
                    {"n_inner", f},
                    {"activation_function", "gelu_new"},
                    {"layer_norm_epsilon", c.norm_eps},
                    {"resid_pdrop", 0.0},
                    {"embd_pdrop", 0.0},
                    {"attn_pdrop", 0.0},
                    {"scale_attn_weights", true},
                    {"tie_word_embeddings", c.tie_word_embeddings},
                    {"torch_dtype", "float32"}};
    } else {
      config = json{{"architectures", json::array({"LlamaForCausalLM"})},
                    {"model_type", "llama"},
                    {"vocab_size", c.vocab_size},
                    {"max_position_embeddings", c.max_seq},
                    {"hidden_size", h},
                    {"intermediate_size", f},
                    {"num_hidden_layers", c.layers},
                    {"num_attention_heads", c.heads},
                    {"num_key_value_heads", c.kv_heads},
                    {"hidden_act", "silu"},
                    {"rms_norm_eps", c.norm_eps},
                    {"rope_theta", c.rope_theta},
                    {"rope_scaling", nullptr},
                    {"attention_bias", false},
                    {"tie_word_embeddings", c.tie_word_embeddings},
                    {"torch_dtype", "float32"}};
    }
    write_file_atomically(tmp + "/config.json", config.dump(2) + "\n");
    if (!info.tokenizer.empty()) {
      write_file_atomically(tmp + "/tokenizer.json", read_file(info.tokenizer));
    }
    if (whole != src) std::filesystem::remove_all(whole);
    WEFT_CHECK(::rename(tmp.c_str(), out.c_str()) == 0, "export-hf: cannot rename '", tmp, "' to '",
               out, "': ", std::strerror(errno));
  } catch (...) {
    std::filesystem::remove_all(tmp, ignored);
    throw;
  }
}

}  // namespace weft
