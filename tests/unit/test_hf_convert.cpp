// Hugging Face conversion without Python: HF-layout GPT-2 (Conv1D [in, out], [q|k|v]) and Llama
// (GQA, untied head) directories written here with random tensors go through import-hf at tp 2
// and export-hf back, bit for bit; the grouped QKV layout of the import is checked against a
// hand-built one; configs and tensors weft does not implement are refused naming the file, the
// field and the value, and leave nothing behind.
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "common/temp_dir.hpp"
#include "weft/backend.hpp"
#include "weft/checkpoint.hpp"
#include "weft/error.hpp"
#include "weft/gpt_checkpoint.hpp"
#include "weft/hf_convert.hpp"

namespace weft::testing {
namespace {

using nlohmann::json;

json gpt2_config() {
  return json{{"model_type", "gpt2"}, {"architectures", json::array({"GPT2LMHeadModel"})},
              {"vocab_size", 50},     {"n_positions", 16},
              {"n_embd", 8},          {"n_layer", 2},
              {"n_head", 2},          {"activation_function", "gelu_new"}};
}
json llama_config() {
  return json{{"model_type", "llama"},    {"vocab_size", 50},
              {"hidden_size", 8},         {"intermediate_size", 12},
              {"num_hidden_layers", 2},   {"num_attention_heads", 4},
              {"num_key_value_heads", 2}, {"max_position_embeddings", 16},
              {"rope_theta", 5000.0},     {"tie_word_embeddings", false}};
}

// The HF tensors of a config, random, by name.
std::map<std::string, std::vector<float>> hf_tensors(const json& c,
                                                     std::map<std::string, Shape>* shapes) {
  std::map<std::string, Shape> s;
  if (c["model_type"] == "gpt2") {
    const int64_t h = c["n_embd"], v = c["vocab_size"], p = c["n_positions"];
    s["transformer.wte.weight"] = Shape({v, h});
    s["transformer.wpe.weight"] = Shape({p, h});
    for (int i = 0; i < c["n_layer"].get<int>(); ++i) {
      const std::string l = "transformer.h." + std::to_string(i) + ".";
      for (const char* n : {"ln_1", "ln_2"}) {
        s[l + n + ".weight"] = Shape({h});
        s[l + n + ".bias"] = Shape({h});
      }
      s[l + "attn.c_attn.weight"] = Shape({h, 3 * h});
      s[l + "attn.c_attn.bias"] = Shape({3 * h});
      s[l + "attn.c_proj.weight"] = Shape({h, h});
      s[l + "attn.c_proj.bias"] = Shape({h});
      s[l + "mlp.c_fc.weight"] = Shape({h, 4 * h});
      s[l + "mlp.c_fc.bias"] = Shape({4 * h});
      s[l + "mlp.c_proj.weight"] = Shape({4 * h, h});
      s[l + "mlp.c_proj.bias"] = Shape({h});
    }
    s["transformer.ln_f.weight"] = Shape({h});
    s["transformer.ln_f.bias"] = Shape({h});
  } else {
    const int64_t h = c["hidden_size"], v = c["vocab_size"], f = c["intermediate_size"];
    const int64_t d = h / c["num_attention_heads"].get<int64_t>();
    const int64_t q = c["num_attention_heads"].get<int64_t>() * d;
    const int64_t kv = c["num_key_value_heads"].get<int64_t>() * d;
    s["model.embed_tokens.weight"] = Shape({v, h});
    for (int i = 0; i < c["num_hidden_layers"].get<int>(); ++i) {
      const std::string l = "model.layers." + std::to_string(i) + ".";
      s[l + "input_layernorm.weight"] = Shape({h});
      s[l + "post_attention_layernorm.weight"] = Shape({h});
      s[l + "self_attn.q_proj.weight"] = Shape({q, h});
      s[l + "self_attn.k_proj.weight"] = Shape({kv, h});
      s[l + "self_attn.v_proj.weight"] = Shape({kv, h});
      s[l + "self_attn.o_proj.weight"] = Shape({h, q});
      s[l + "mlp.gate_proj.weight"] = Shape({f, h});
      s[l + "mlp.up_proj.weight"] = Shape({f, h});
      s[l + "mlp.down_proj.weight"] = Shape({h, f});
    }
    s["model.norm.weight"] = Shape({h});
    s["lm_head.weight"] = Shape({v, h});
  }
  std::mt19937 gen(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::map<std::string, std::vector<float>> out;
  for (const auto& [name, shape] : s) {
    std::vector<float>& t = out[name];
    t.resize(static_cast<size_t>(shape.numel()));
    for (float& x : t) x = normal(gen);
  }
  if (shapes) *shapes = s;
  return out;
}

std::string write_hf(const TempDir& tmp, const std::string& name, const json& config,
                     const std::map<std::string, std::vector<float>>& tensors,
                     const std::map<std::string, Shape>& shapes) {
  const std::string dir = tmp.file(name);
  std::filesystem::create_directories(dir);
  write_file_atomically(dir + "/config.json", config.dump());
  auto cpu = make_cpu_backend();
  std::vector<NamedTensor> named;
  for (const auto& [n, t] : tensors) {
    named.push_back(
        {n, TensorView{const_cast<float*>(t.data()), shapes.at(n), DType::kF32, Device::cpu()}});
  }
  save_safetensors(dir + "/model.safetensors", named, {{"format", "pt"}}, *cpu);
  return dir;
}

std::vector<float> read_all(const SafetensorsReader& f, const std::string& name) {
  const Shape s = f.shape(name);
  std::vector<float> out(static_cast<size_t>(s.numel()));
  f.read_block(name, 0, 0, s[0], out.data(), s[0], 0);
  return out;
}

class HfRoundTrip : public ::testing::TestWithParam<std::string> {};

TEST_P(HfRoundTrip, ImportAtTp2AndExportGiveTheSameTensorsBitForBit) {
  const TempDir tmp("weft-hf");
  const json config = GetParam() == "gpt2" ? gpt2_config() : llama_config();
  std::map<std::string, Shape> shapes;
  const auto tensors = hf_tensors(config, &shapes);
  const std::string hf = write_hf(tmp, "hf", config, tensors, shapes);
  import_hf_checkpoint(hf, tmp.file("weft"), 2, 2);
  const CheckpointInfo info = read_checkpoint_info(tmp.file("weft"));
  EXPECT_EQ(info.tp, 2);
  EXPECT_EQ(info.pp, 2);
  EXPECT_EQ(info.config.tie_word_embeddings, GetParam() == "gpt2");
  if (GetParam() == "llama") {
    EXPECT_EQ(info.config.kv_heads, 2);
    EXPECT_FLOAT_EQ(info.config.rope_theta, 5000.0f);
  }
  // The grouped QKV of layer 1 at tp 1 against the layout built by hand from HF's tensors.
  reshard_checkpoint(tmp.file("weft"), tmp.file("weft1"), 1, 1);
  {
    const SafetensorsReader shard(tmp.file("weft1") + "/tp0_pp0.safetensors");
    const std::vector<float> qkv = read_all(shard, "layers.1.attention.qkv.weight");
    std::vector<float> expected;
    if (GetParam() == "gpt2") {
      // c_attn [h, 3h] (in, out): output column j of q|k|v is row j of weft's [3h, h].
      const int64_t h = 8, d = 4;
      const auto& w = tensors.at("transformer.h.1.attn.c_attn.weight");
      for (int64_t head = 0; head < 2; ++head) {
        for (int64_t part = 0; part < 3; ++part) {  // per head: q, k, v
          for (int64_t r = 0; r < d; ++r) {
            for (int64_t i = 0; i < h; ++i)
              expected.push_back(w[i * 3 * h + part * h + head * d + r]);
          }
        }
      }
    } else {
      const int64_t h = 8, d = 2;  // 4 heads, 2 kv groups of 2 query heads
      const auto& q = tensors.at("model.layers.1.self_attn.q_proj.weight");
      const auto& k = tensors.at("model.layers.1.self_attn.k_proj.weight");
      const auto& v = tensors.at("model.layers.1.self_attn.v_proj.weight");
      for (int64_t g = 0; g < 2; ++g) {
        expected.insert(expected.end(), q.begin() + g * 2 * d * h, q.begin() + (g + 1) * 2 * d * h);
        expected.insert(expected.end(), k.begin() + g * d * h, k.begin() + (g + 1) * d * h);
        expected.insert(expected.end(), v.begin() + g * d * h, v.begin() + (g + 1) * d * h);
      }
    }
    EXPECT_EQ(qkv, expected);
  }
  export_hf_checkpoint(tmp.file("weft"), tmp.file("back"));
  const SafetensorsReader back(tmp.file("back") + "/model.safetensors");
  EXPECT_EQ(back.names().size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    ASSERT_TRUE(back.contains(name)) << name;
    EXPECT_EQ(back.shape(name), shapes.at(name)) << name;
    EXPECT_EQ(read_all(back, name), t) << name;
  }
  EXPECT_EQ(back.metadata().at("format"), "pt");
  const json exported = json::parse(read_file(tmp.file("back") + "/config.json"));
  for (const auto& [key, value] : config.items()) EXPECT_EQ(exported.at(key), value) << key;
  // Only the outputs: no temporary directory left beside them.
  for (const auto& e : std::filesystem::directory_iterator(tmp.path())) {
    const std::string n = e.path().filename().string();
    EXPECT_TRUE(n == "hf" || n == "weft" || n == "weft1" || n == "back") << n;
  }
}

INSTANTIATE_TEST_SUITE_P(Kinds, HfRoundTrip, ::testing::Values("gpt2", "llama"),
                         [](const auto& info) { return info.param; });

// Runs import-hf on a model changed by `edit`, expects a weft::Error with every needle, and no
// output directory.
void expect_refused(const json& base,
                    const std::function<void(json&, std::map<std::string, std::vector<float>>&,
                                             std::map<std::string, Shape>&)>& edit,
                    const std::vector<std::string>& needles) {
  const TempDir tmp("weft-hf-bad");
  json config = base;
  std::map<std::string, Shape> shapes;
  auto tensors = hf_tensors(base, &shapes);
  edit(config, tensors, shapes);
  const std::string hf = write_hf(tmp, "hf", config, tensors, shapes);
  try {
    import_hf_checkpoint(hf, tmp.file("out"), 2, 1);
    ADD_FAILURE() << "expected weft::Error for " << needles.front();
  } catch (const Error& e) {
    for (const std::string& n : needles) {
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << n << " in: " << e.what();
    }
  }
  EXPECT_EQ(tmp.entries(), std::vector<std::string>{"hf"}) << "nothing written half";
}

using Tensors = std::map<std::string, std::vector<float>>;
using Shapes = std::map<std::string, Shape>;

TEST(HfConvertErrors, UnsupportedConfigsAreRefusedNamingFileFieldAndValue) {
  auto set = [](const char* key, json value) {
    return [key, value](json& c, Tensors&, Shapes&) { c[key] = value; };
  };
  expect_refused(llama_config(), set("attention_bias", true),
                 {"config.json", "'attention_bias'", "true"});
  expect_refused(llama_config(), set("mlp_bias", true), {"config.json", "'mlp_bias'"});
  expect_refused(llama_config(), set("rope_scaling", json{{"type", "linear"}, {"factor", 2.0}}),
                 {"config.json", "'rope_scaling'", "linear"});
  expect_refused(llama_config(), set("hidden_act", "gelu"), {"'hidden_act'", "\"gelu\""});
  expect_refused(llama_config(), set("head_dim", 4), {"'head_dim'", "4"});
  expect_refused(gpt2_config(), set("scale_attn_by_inverse_layer_idx", true),
                 {"config.json", "'scale_attn_by_inverse_layer_idx'", "true"});
  expect_refused(gpt2_config(), set("reorder_and_upcast_attn", true),
                 {"'reorder_and_upcast_attn'"});
  expect_refused(gpt2_config(), set("activation_function", "relu"),
                 {"'activation_function'", "\"relu\""});
  expect_refused(gpt2_config(), set("model_type", "gpt_neox"), {"'model_type'", "gpt_neox"});
  expect_refused(gpt2_config(), set("use_parallel_residual", true), {"'use_parallel_residual'"});
  expect_refused(gpt2_config(), set("n_head", 3), {"config.json", "3"});
}

TEST(HfConvertErrors, MissingExtraAndMisshapedTensorsAreRefused) {
  expect_refused(llama_config(), [](json&, Tensors& t, Shapes&) { t.erase("lm_head.weight"); },
                 {"model.safetensors", "'lm_head.weight'", "missing"});
  expect_refused(
      gpt2_config(),
      [](json&, Tensors&, Shapes& s) {
        s["transformer.h.1.mlp.c_fc.weight"] = Shape({32, 8});  // [out, in]: not Conv1D's layout
      },
      {"model.safetensors", "'transformer.h.1.mlp.c_fc.weight'", "[32, 8]", "[8, 32]"});
  expect_refused(llama_config(),
                 [](json&, Tensors& t, Shapes& s) {
                   t["model.layers.0.self_attn.q_proj.bias"] = std::vector<float>(8, 1.0f);
                   s["model.layers.0.self_attn.q_proj.bias"] = Shape({8});
                 },
                 {"model.safetensors", "'model.layers.0.self_attn.q_proj.bias'", "not part of"});
}

TEST(HfConvertErrors, ShardedCheckpointsAndFullOutputsAreRefused) {
  const TempDir tmp("weft-hf-index");
  std::map<std::string, Shape> shapes;
  const auto tensors = hf_tensors(gpt2_config(), &shapes);
  const std::string hf = write_hf(tmp, "hf", gpt2_config(), tensors, shapes);
  std::filesystem::rename(hf + "/model.safetensors", hf + "/model-00001-of-00002.safetensors");
  write_file_atomically(hf + "/model.safetensors.index.json", "{}");
  EXPECT_TRUE(is_hf_model_dir(hf));
  try {
    import_hf_checkpoint(hf, tmp.file("out"));
    ADD_FAILURE() << "expected weft::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.safetensors.index.json"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(tmp.file("out")));
}

}  // namespace
}  // namespace weft::testing
