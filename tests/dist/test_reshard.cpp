// Checkpoints at any layout: a GPT saved at tp 2 x pp 2 (tp 2 on 2 ranks) resumes at other TP x
// PP x DP layouts with the next 10 losses of the uninterrupted run there; saved again there and
// reloaded at the original layout, it gives the original weights and optimizer state bit for bit;
// reshard_checkpoint writes the very shard files of that run-time reshard; bad checkpoints fail
// on every rank naming the file, the field and the value.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/temp_dir.hpp"
#include "common/test_util.hpp"
#include "dist/dist_env.hpp"
#include "weft/checkpoint.hpp"
#include "weft/gpt_checkpoint.hpp"
#include "weft/optimizer.hpp"
#include "weft/pipeline.hpp"

namespace weft::testing {
namespace {

// kGlobal sequences per step, in micro-batches of one; kSaved steps before the checkpoint.
constexpr int64_t kSeq = 8, kGlobal = 4, kSaved = 2, kNext = 10;

// GQA (2 kv heads: replicated at tp 4) and a vocabulary that is no multiple of the padding
// (203 rows padded to 208 at tp 1 and 2, to 224 at tp 4).
// "llama_untied": the llama preset with its own output layer (lm_head.weight).
GPTConfig reshard_config(const std::string& preset, uint64_t seed = 21) {
  GPTConfig c = GPTConfig::preset(preset == "llama_untied" ? "llama" : preset);
  c.tie_word_embeddings = preset != "llama_untied";
  c.vocab_size = 203;
  c.max_seq = kSeq;
  c.layers = 4;
  c.hidden = 32;
  c.heads = 4;
  c.kv_heads = 2;
  c.vocab_pad_multiple = 8;
  c.seed = seed;
  return c;
}

void fill_sequence(int64_t index, int32_t* ids, int32_t* targets) {
  static const std::string text =
      "It was the best of times, it was the worst of times, it was the age of wisdom, it was the "
      "age of foolishness, it was the epoch of belief, it was the epoch of incredulity.";
  const int64_t span = static_cast<int64_t>(text.size()) - kSeq - 1;
  const int64_t start = (index * 29) % span;
  for (int64_t s = 0; s < kSeq; ++s) {
    ids[s] = static_cast<unsigned char>(text[static_cast<size_t>(start + s)]);
    targets[s] = static_cast<unsigned char>(text[static_cast<size_t>(start + s + 1)]);
  }
}

struct Layout {
  int tp, pp, v;
};

std::string describe(const std::string& preset, Layout l) {
  std::ostringstream os;
  os << preset << " tp=" << l.tp << " pp=" << l.pp << " v=" << l.v
     << " dp=" << world().size() / (l.tp * l.pp);
  return os.str();
}

// A training run at a layout over `comm`: AdamW, clipping at 1, the cosine schedule; step s
// trains on global sequences [s kGlobal, (s + 1) kGlobal), each data-parallel rank on its part.
struct TrainingRun {
  TrainingRun(Backend& backend, Communicator& comm, Layout l, const GPTConfig& config)
      : backend(backend),
        grid(comm, l.tp, l.pp),
        model(ParallelContext{backend, grid.tp()}, grid.pp(), config,
              l.v > 1 ? ScheduleKind::kInterleaved : ScheduleKind::k1F1B, l.v),
        optimizer(backend, model.parameters(), AdamWConfig{}),
        rng(config.seed, grid.tp_rank()) {}

  float step(int64_t s) {
    const int64_t dp = grid.dp_size(), m = kGlobal / dp, first = s * kGlobal + grid.dp_rank() * m;
    auto load = [&](int64_t mb, TensorView ids, TensorView targets) {
      std::vector<int32_t> i(kSeq), t(kSeq);
      fill_sequence(first + mb, i.data(), t.data());
      backend.copy(ids, TensorView{i.data(), ids.shape, DType::kI32, Device::cpu()});
      backend.copy(targets, TensorView{t.data(), targets.shape, DType::kI32, Device::cpu()});
    };
    const float loss = model.train_step(load, m, kSeq, 1, 1.0f, rng);
    average_gradients(backend, grid.dp(), model.parameters());
    const float norm = model.grad_norm();
    optimizer.step(cosine_lr(s + 1, 2, 20, 3e-3f, 3e-4f), clip_coefficient(norm, 1.0f));
    return all_reduce_scalar(grid.dp(), backend, loss, ReduceOp::kSum) / static_cast<float>(dp);
  }

  void load(const std::string& dir) {
    load_checkpoint(dir, model.parameters(), &optimizer, grid, backend);
    const CheckpointInfo info = read_checkpoint_info(dir);
    rng.set_offsets(info.dropout_replicated, info.dropout_sharded);
  }

  void save(const std::string& dir, int64_t step) {
    CheckpointInfo info{model.config(),
                        grid.tp_size(),
                        grid.pp_size(),
                        step,
                        rng.replicated_offset(),
                        rng.sharded_offset(),
                        "{}"};
    info.virtual_stages = model.virtual_stages();
    save_checkpoint(dir, info, model.parameters(), &optimizer, grid, backend);
  }

  Backend& backend;
  ParallelGrid grid;
  PipelineModel model;
  AdamW optimizer;
  DropoutRng rng;
};

// A directory that rank 0 makes and removes, its name broadcast to every rank.
struct SharedDir {
  SharedDir() {
    if (world().rank() == 0) made = std::make_unique<TempDir>("weft-reshard");
    std::vector<char> name(256, 0);
    if (made) {
      const std::string p = made->path();
      std::copy(p.begin(), p.end(), name.begin());
    }
    host_world().broadcast(TensorView{name.data(), Shape({64}), DType::kF32, Device::cpu()}, 0,
                           host_stream());
    path = std::string(name.data());
  }
  ~SharedDir() { world().barrier(); }  // nobody reads it any more when rank 0 removes it
  std::string sub(const std::string& name) const { return path + "/" + name; }
  std::unique_ptr<TempDir> made;
  std::string path;
};

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

// The saving layout and the layouts it resumes at, by world size.
Layout saving_layout() { return world().size() == 4 ? Layout{2, 2, 1} : Layout{2, 1, 1}; }
// On 4 ranks: tp 1 x dp 4, tp 4 (replicated kv heads, another padding), pp 4, tp 2 x dp 2, and
// tp 2 x pp 2 interleaved with 2 virtual stages per rank; on 2: tp 1 x dp 2 and pp 2. The gpt2
// preset (biases, LayerNorm, learned positions) and the untied llama take the first two only, to
// keep the test short: the layouts' logic is the same for all.
std::vector<Layout> resume_layouts(const std::string& preset) {
  std::vector<Layout> all =
      world().size() == 4
          ? std::vector<Layout>{{1, 1, 1}, {4, 1, 1}, {1, 4, 1}, {2, 1, 1}, {2, 2, 2}}
          : std::vector<Layout>{{1, 1, 1}, {1, 2, 1}};
  if (preset != "llama") all.resize(2);
  return all;
}

// The stored rows of this rank's shard of `p` (the vocabulary's real rows; all of the others).
std::vector<double> stored_part(Backend& backend, const std::map<std::string, TensorSlice>& slices,
                                const std::string& name, TensorView shard) {
  const TensorSlice& s = slices.at(name);
  if (s.partition_dim == 0 && s.shape[0] < s.local_extent) shard = shard.rows(0, s.shape[0]);
  return to_host(backend, shard);
}

class ReshardTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (world().size() < 2) GTEST_SKIP() << "saving at tp 2 needs 2 ranks";
  }
  std::unique_ptr<Backend> backend_ = make_test_backend();
};

TEST_P(ReshardTest, ResumesAtEveryLayoutAndRoundTripsBitForBit) {
  const std::string preset = GetParam();
  const GPTConfig config = reshard_config(preset);
  SharedDir dir;
  const Layout original = saving_layout();
  TrainingRun saved(*backend_, world(), original, config);
  for (int64_t s = 0; s < kSaved; ++s) saved.step(s);
  saved.save(dir.sub("original"), kSaved);

  const auto layouts = resume_layouts(preset);
  for (size_t i = 0; i < layouts.size(); ++i) {
    const Layout layout = layouts[i];
    SCOPED_TRACE(describe(preset, layout));
    const std::string again = dir.sub("again" + std::to_string(i));
    const std::string tool = dir.sub("tool" + std::to_string(i));
    {
      std::vector<float> straight, resumed;
      {
        TrainingRun run(*backend_, world(), layout, config);
        for (int64_t s = 0; s < kSaved + kNext; ++s) {
          const float loss = run.step(s);
          if (s >= kSaved) straight.push_back(loss);
        }
      }
      {
        TrainingRun run(*backend_, world(), layout,
                        reshard_config(preset, 5));  // other weights first
        run.load(dir.sub("original"));
        EXPECT_EQ(run.optimizer.steps_taken(), kSaved);
        run.save(again, kSaved);  // the run-time reshard, saved at this layout
        for (int64_t s = kSaved; s < kSaved + kNext; ++s) resumed.push_back(run.step(s));
      }
      ASSERT_EQ(resumed.size(), straight.size());
      EXPECT_LT(straight.back(), straight.front()) << "the loss must fall";
      for (size_t s = 0; s < straight.size(); ++s) {
        EXPECT_NEAR(resumed[s], straight[s], 1e-5 * std::abs(straight[s])) << "step " << kSaved + s;
      }
    }
    // The tool's reshard of the original equals the run-time one, file by file.
    if (world().rank() == 0) {
      reshard_checkpoint(dir.sub("original"), tool, layout.tp, layout.pp, layout.v);
      for (int t = 0; t < layout.tp; ++t) {
        for (int p = 0; p < layout.pp; ++p) {
          const std::string name =
              "/tp" + std::to_string(t) + "_pp" + std::to_string(p) + ".safetensors";
          const std::string a = file_bytes(again + name), b = file_bytes(tool + name);
          EXPECT_FALSE(a.empty()) << again + name;
          EXPECT_TRUE(a == b) << tool + name << " differs from the run-time reshard "
                              << again + name;
        }
      }
      EXPECT_FALSE(std::filesystem::exists(tool + ".tmp." + std::to_string(::getpid())));
    }
    world().barrier();

    // Saved at the new layout, reloaded at the original one: every tensor bit for bit. Half the
    // time from the tool's copy (equal files, by the check above).
    TrainingRun back(*backend_, world(), original, reshard_config(preset, 6));
    back.load(i % 2 == 0 ? again : tool);
    EXPECT_EQ(back.optimizer.steps_taken(), kSaved);
    const auto slices = std::map<std::string, TensorSlice>([&] {
      std::map<std::string, TensorSlice> m;
      for (TensorSlice& s : gpt_parameter_slices(config, original.tp, back.grid.tp_rank())) {
        m[s.name] = s;
      }
      return m;
    }());
    const auto& a = saved.optimizer.state();
    const auto& b = back.optimizer.state();
    ASSERT_EQ(a.size(), b.size());
    for (size_t k = 0; k < a.size(); ++k) {
      const std::string& name = a[k].param->name;
      ASSERT_EQ(b[k].param->name, name);
      auto part = [&](TensorView v) { return stored_part(*backend_, slices, name, v); };
      EXPECT_EQ(part(b[k].param->value), part(a[k].param->value)) << name;
      EXPECT_EQ(part(b[k].master), part(a[k].master)) << name << " master";
      EXPECT_EQ(part(b[k].m), part(a[k].m)) << name << " exp_avg";
      EXPECT_EQ(part(b[k].v), part(a[k].v)) << name << " exp_avg_sq";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Presets, ReshardTest, ::testing::Values("gpt2", "llama", "llama_untied"),
                         [](const auto& info) { return info.param; });

// What the shards say about themselves is enough to reassemble a global tensor without weft's
// loader: the stored blocks of layers.1.attention.qkv.weight, placed by their metadata, give the
// unsharded model's tensor (tp 4: query windows and replicated key/value windows).
TEST(Reshard, SliceMetadataReassemblesTheGlobalTensor) {
  if (world().size() != 4) GTEST_SKIP() << "tp 4 on 4 ranks";
  auto cpu = make_cpu_backend();
  const GPTConfig config = reshard_config("llama");
  SharedDir dir;
  {
    TrainingRun run(*cpu, world(), {4, 1, 1}, config);
    run.save(dir.sub("tp4"), 0);
  }
  if (world().rank() == 0) {
    auto self = make_self_communicator();
    GPTConfig c = config;
    c.finalize(1);
    GPTModel reference(ParallelContext{*cpu, *self}, c);
    for (Parameter* p : reference.parameters()) {
      if (p->name != "layers.1.attention.qkv.weight") continue;
      const std::vector<double> want = to_host(*cpu, p->value);
      std::vector<double> got(want.size(), std::nan(""));
      const int64_t cols = p->global_shape.cols();
      int blocks = 0;
      for (int t = 0; t < 4; ++t) {
        SafetensorsReader f(dir.sub("tp4/tp" + std::to_string(t) + "_pp0.safetensors"));
        for (const std::string& name : f.names()) {
          const auto j = nlohmann::json::parse(f.metadata().at(name));
          if (j.at("global_name") != p->name) continue;
          ASSERT_EQ(j.at("global_shape").get<std::vector<int64_t>>(), p->global_shape.dims());
          ASSERT_EQ(j.at("partition_dim"), 0);
          const int64_t offset = j.at("offset").get<int64_t>();
          Tensor block(*cpu, f.shape(name), DType::kF32);
          f.read(name, block, *cpu);
          const std::vector<double> values = to_host(*cpu, block);
          std::copy(values.begin(), values.end(), got.begin() + offset * cols);
          ++blocks;
        }
      }
      EXPECT_EQ(blocks, 8) << "a query and a key/value block per rank";
      EXPECT_EQ(got, want);
    }
  }
  world().barrier();
}

// Rewrites shard `path` with one metadata value replaced (rank 0; the others wait).
void rewrite_metadata(const std::string& path, const std::string& key, const std::string& value) {
  if (world().rank() == 0) {
    auto cpu = make_cpu_backend();
    std::vector<Tensor> data;
    std::vector<NamedTensor> tensors;
    std::map<std::string, std::string> metadata;
    {
      SafetensorsReader f(path);
      metadata = f.metadata();
      for (const std::string& name : f.names()) {
        data.emplace_back(*cpu, f.shape(name), f.dtype(name));
        f.read(name, data.back(), *cpu);
      }
      for (size_t i = 0; i < data.size(); ++i) tensors.push_back({f.names()[i], data[i]});
    }
    metadata[key] = value;
    save_safetensors(path, tensors, metadata, *cpu);
  }
  world().barrier();
}

// A checkpoint of format version 1 (shards without slice metadata) loads at its own TP size, and
// at another one fails naming a shard and the missing metadata.
TEST(Reshard, VersionOneCheckpointsLoadAtTheirOwnTpSizeOnly) {
  if (world().size() < 2) GTEST_SKIP() << "tp 2 needs 2 ranks";
  auto backend = make_test_backend();
  const GPTConfig config = reshard_config("llama");
  SharedDir dir;
  const std::string ckpt = dir.sub("v1");
  TrainingRun saved(*backend, world(), {2, 1, 1}, config);
  saved.step(0);
  saved.save(ckpt, 1);
  // Each rank writes its shard as version 1 did: the parameters' and optimizer's own tensors by
  // name (vocabulary padding included), the layout in the metadata, no slices.
  if (saved.grid.dp_rank() == 0) {
    std::vector<NamedTensor> tensors;
    for (AdamW::State& st : saved.optimizer.state()) {
      tensors.push_back({st.param->name, st.param->value});
      tensors.push_back({st.param->name + ".master", st.master});
      tensors.push_back({st.param->name + ".exp_avg", st.m});
      tensors.push_back({st.param->name + ".exp_avg_sq", st.v});
    }
    const std::string rank = std::to_string(saved.grid.tp_rank());
    save_safetensors(ckpt + "/tp" + rank + "_pp0.safetensors", tensors,
                     {{"format", "weft"},
                      {"tp", "2"},
                      {"tp_rank", rank},
                      {"pp", "1"},
                      {"pp_rank", "0"},
                      {"step", "1"}},
                     *backend);
  }
  world().barrier();
  if (world().rank() == 0) {
    nlohmann::json m = nlohmann::json::parse(file_bytes(ckpt + "/manifest.json"));
    m["version"] = 1;
    m.erase("virtual_stages");
    m.erase("checksums");  // version 1 had none
    write_file_atomically(ckpt + "/manifest.json", m.dump());
  }
  world().barrier();
  {
    TrainingRun same(*backend, world(), {2, 1, 1}, reshard_config("llama", 8));
    same.load(ckpt);
    const auto& a = saved.optimizer.state();
    const auto& b = same.optimizer.state();
    for (size_t k = 0; k < a.size(); ++k) {
      EXPECT_EQ(to_host(*backend, b[k].master), to_host(*backend, a[k].master)) << a[k].param->name;
      EXPECT_EQ(to_host(*backend, b[k].v), to_host(*backend, a[k].v)) << a[k].param->name;
    }
  }
  TrainingRun other(*backend, world(), {1, 1, 1}, config);
  expect_error_on_every_rank([&] { other.load(ckpt); },
                             {"version 1", "tp0_pp0.safetensors", "slice metadata", "tp=2"});
}

TEST(Reshard, BadCheckpointsFailOnEveryRankNamingFileFieldAndValue) {
  auto backend = make_test_backend();
  const int tp = world().size() >= 2 ? 2 : 1;
  const GPTConfig config = reshard_config("llama");
  SharedDir dir;
  const std::string ckpt = dir.sub("ckpt");
  TrainingRun run(*backend, world(), {tp, 1, 1}, config);
  run.save(ckpt, 0);
  const std::string shard = ckpt + "/tp0_pp0.safetensors";
  const std::string qkv = "layers.0.attention.qkv.weight";
  const std::string original = [&] {
    SafetensorsReader f(shard);
    return f.metadata().at(qkv);
  }();
  world().barrier();

  // A global shape that disagrees with the config.
  nlohmann::json j = nlohmann::json::parse(original);
  j["global_shape"] = {72, 32};
  rewrite_metadata(shard, qkv, j.dump());
  expect_error_on_every_rank([&] { run.load(ckpt); }, {"tp0_pp0.safetensors", qkv,
                                                       "'global_shape' is [72, 32]", "[64, 32]"});
  // A block past the end of its tensor.
  j = nlohmann::json::parse(original);
  j["offset"] = 60;
  rewrite_metadata(shard, qkv, j.dump());
  expect_error_on_every_rank([&] { run.load(ckpt); }, {"tp0_pp0.safetensors", "'offset' is 60"});
  // No slice metadata at all.
  rewrite_metadata(shard, qkv, "not json");
  expect_error_on_every_rank([&] { run.load(ckpt); }, {"tp0_pp0.safetensors", qkv, "'not json'"});
  // The metadata of another rank's file.
  j = nlohmann::json::parse(original);
  rewrite_metadata(shard, qkv, j.dump());
  rewrite_metadata(shard, "tp_rank", "1");
  expect_error_on_every_rank([&] { run.load(ckpt); },
                             {"tp0_pp0.safetensors", "'tp_rank' is '1'", "expected 0"});
  rewrite_metadata(shard, "tp_rank", "0");
  // A manifest layout that does not divide the model (3 does not divide 4 heads).
  const std::string manifest = file_bytes(ckpt + "/manifest.json");
  if (world().rank() == 0) {
    nlohmann::json m = nlohmann::json::parse(manifest);
    m["tp"] = 3;
    write_file_atomically(ckpt + "/manifest.json", m.dump());
  }
  world().barrier();
  expect_error_on_every_rank([&] { run.load(ckpt); },
                             {"manifest.json", "tp 3", "does not divide", "(3)"});
  // A missing shard file.
  if (world().rank() == 0) {
    nlohmann::json m = nlohmann::json::parse(manifest);
    m["pp"] = 2;
    write_file_atomically(ckpt + "/manifest.json", m.dump());
  }
  world().barrier();
  expect_error_on_every_rank([&] { run.load(ckpt); }, {"tp0_pp1.safetensors"});
  if (world().rank() == 0) write_file_atomically(ckpt + "/manifest.json", manifest);
  world().barrier();
  run.load(ckpt);  // whole again
  // Resharding to a layout that does not divide the model.
  if (world().rank() == 0) {
    EXPECT_THROW(
        {
          try {
            reshard_checkpoint(ckpt, dir.sub("bad"), 3, 1);
          } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("(3)"), std::string::npos) << e.what();
            throw;
          }
        },
        Error);
    EXPECT_FALSE(std::filesystem::exists(dir.sub("bad")));
  }
  world().barrier();
}

// One rank's shard fails its checksum after every header checked fine (each rank reads only its
// own shard's data at its own layout): every rank raises the same error, naming the rank, the
// file and the tensor, and no rank's parameters changed; the peers never wait for the failed one.
TEST(Reshard, ACorruptShardReadOnOneRankFailsOnEveryRankBeforeAnyChange) {
  if (world().size() < 2) GTEST_SKIP() << "needs a shard that only one rank reads";
  auto backend = make_test_backend();
  const GPTConfig config = reshard_config("llama");
  SharedDir dir;
  const std::string ckpt = dir.sub("ckpt");
  const Layout layout{2, world().size() / 2, 1};  // tp 2 (x pp 2 on 4 ranks): a shard per rank
  TrainingRun run(*backend, world(), layout, config);
  run.save(ckpt, 0);
  const int victim = world().size() - 1;  // the last rank's shard
  const std::string shard = ckpt + "/tp1_pp" + std::to_string(layout.pp - 1) + ".safetensors";
  // A byte of a tensor only that rank reads: its block of the last layer's column-parallel fc1.
  const std::string victim_tensor =
      "layers." + std::to_string(config.layers - 1) + ".mlp.fc1.weight";
  if (world().rank() == 0) {
    std::string bytes = file_bytes(shard);
    uint64_t header = 0;
    for (int i = 0; i < 8; ++i)
      header |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
    const nlohmann::json j = nlohmann::json::parse(bytes.substr(8, header));
    const size_t at = 8 + header + j.at(victim_tensor).at("data_offsets")[0].get<size_t>() + 5;
    bytes[at] = static_cast<char>(bytes[at] ^ 0x10);
    std::ofstream(shard, std::ios::binary | std::ios::trunc) << bytes;
  }
  world().barrier();
  for (Parameter* p : run.model.parameters()) {
    std::vector<float> nan(static_cast<size_t>(p->value.numel()),
                           std::numeric_limits<float>::quiet_NaN());
    backend->copy(p->value, TensorView{nan.data(), p->value.shape(), DType::kF32, Device::cpu()});
  }
  std::string message;
  expect_error_on_every_rank(
      [&] {
        try {
          run.load(ckpt);
        } catch (const Error& e) {
          message = e.message();
          throw;
        }
      },
      {"rank " + std::to_string(victim) + ": ", "checksum mismatch", shard,
       "tensor '" + victim_tensor + "'"});
  for (Parameter* p : run.model.parameters()) {
    for (double x : to_host(*backend, p->value)) {
      ASSERT_TRUE(std::isnan(x)) << p->name << " changed on rank " << world().rank();
    }
  }
  // The same text on every rank: rank 0's, compared everywhere.
  std::vector<char> text(4096 + 8, 0);
  std::copy(message.begin(), message.begin() + std::min<size_t>(message.size(), 4096),
            text.begin());
  std::vector<char> root = text;
  host_world().broadcast(TensorView{root.data(), Shape({static_cast<int64_t>(root.size() / 4)}),
                                    DType::kF32, Device::cpu()},
                         0, host_stream());
  EXPECT_EQ(std::string(root.data()), std::string(text.data()));
}

}  // namespace
}  // namespace weft::testing
