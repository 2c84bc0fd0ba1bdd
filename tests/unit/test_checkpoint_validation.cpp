// Unit tests of whole-checkpoint validation at one rank: per-tensor checksums (recorded at save,
// verified at load), finite values, the exact tensor set, the manifest's version, size and
// integer fields; a refused load leaves every parameter as it was.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/gpt_fixtures.hpp"
#include "common/temp_dir.hpp"
#include "unit/unit_util.hpp"
#include "weft/checkpoint.hpp"
#include "weft/gpt_checkpoint.hpp"
#include "weft/weft.hpp"

namespace weft::testing {
namespace {

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A file's tensors and metadata, to be changed and written back.
struct ShardContents {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;
};

ShardContents read_shard(Backend& cpu, const std::string& path) {
  SafetensorsReader f(path);
  ShardContents out;
  out.metadata = f.metadata();
  for (const std::string& name : f.names()) {
    Tensor t(cpu, f.shape(name), f.dtype(name));
    f.read(name, t, cpu);
    out.tensors.emplace(name, std::move(t));
  }
  return out;
}

// Writes `c` back; `checksums`: fresh ones for the data as it is now (the old keys dropped).
void write_shard(Backend& cpu, const std::string& path, ShardContents c, bool checksums) {
  std::vector<NamedTensor> named;
  for (auto& [name, t] : c.tensors) named.push_back({name, t});
  if (checksums) {
    for (auto it = c.metadata.begin(); it != c.metadata.end();) {
      it = it->first.rfind(kSafetensorsChecksumPrefix, 0) == 0 ? c.metadata.erase(it)
                                                               : std::next(it);
    }
  }
  save_safetensors(path, named, c.metadata, cpu, SafetensorsOptions{checksums});
}

GPTConfig finalized(GPTConfig c) {
  c.finalize(1);
  return c;
}

class CheckpointValidation : public ::testing::Test {
 protected:
  CheckpointValidation()
      : cpu_(make_cpu_backend()),
        self_(make_self_communicator()),
        grid_(*self_, 1),
        config_(finalized(tiny_gpt_config("llama", 8, 2, 7))),
        model_(ParallelContext{*cpu_, grid_.tp()}, config_),
        optimizer_(*cpu_, model_.parameters(), AdamWConfig{}) {
    ckpt_ = dir_.file("ckpt");
    CheckpointInfo info;
    info.config = model_.config();
    info.step = 3;
    save_checkpoint(ckpt_, info, model_.parameters(), &optimizer_, grid_, *cpu_);
    shard_ = ckpt_ + "/tp0_pp0.safetensors";
  }

  // Poisons every parameter and optimizer state (NaN), so that a load that changed anything shows.
  void poison() {
    for (Parameter* p : model_.parameters()) poison_tensor(p->value);
    for (AdamW::State& s : optimizer_.state()) {
      poison_tensor(s.master);
      poison_tensor(s.m);
      poison_tensor(s.v);
    }
  }
  void poison_tensor(TensorView v) {
    std::vector<float> nan(static_cast<size_t>(v.numel()), std::numeric_limits<float>::quiet_NaN());
    if (v.dtype == DType::kF32) std::memcpy(v.data, nan.data(), v.bytes());
    if (v.dtype != DType::kF32) std::memset(v.data, 0xff, v.bytes());  // NaN in bf16 and f16
  }
  // Every value still the poison: the failed load changed nothing.
  void expect_untouched() {
    for (Parameter* p : model_.parameters()) {
      for (double x : to_host(*cpu_, p->value)) {
        ASSERT_TRUE(std::isnan(x)) << p->name << " was changed by a load that failed";
      }
    }
  }
  void load() { load_checkpoint(ckpt_, model_.parameters(), &optimizer_, grid_, *cpu_); }

  void edit_manifest(const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json m = nlohmann::json::parse(read_bytes(ckpt_ + "/manifest.json"));
    edit(m);
    write_bytes(ckpt_ + "/manifest.json", m.dump(2));
  }

  std::unique_ptr<Backend> cpu_;
  std::unique_ptr<Communicator> self_;
  ParallelGrid grid_;
  GPTConfig config_;
  GPTModel model_;
  AdamW optimizer_;
  TempDir dir_;
  std::string ckpt_, shard_;
};

TEST_F(CheckpointValidation, EveryTensorHasAChecksumAndTheManifestSaysSo) {
  SafetensorsReader f(shard_);
  ASSERT_FALSE(f.names().empty());
  for (const std::string& name : f.names()) {
    EXPECT_TRUE(f.has_checksum(name)) << name;
    const std::string hex = f.metadata().at(kSafetensorsChecksumPrefix + name);
    EXPECT_EQ(hex.size(), 16u) << hex;
    f.verify(name);
  }
  EXPECT_TRUE(read_checkpoint_info(ckpt_).has_checksums);
  poison();
  load();  // whole: every value back
  for (Parameter* p : model_.parameters()) {
    for (double x : to_host(*cpu_, p->value)) ASSERT_TRUE(std::isfinite(x)) << p->name;
  }
}

TEST_F(CheckpointValidation, OneFlippedDataByteFailsNamingFileTensorAndHashes) {
  // The last data byte belongs to the last tensor in file order.
  std::string bytes = read_bytes(shard_);
  bytes.back() = static_cast<char>(bytes.back() ^ 0x01);
  write_bytes(shard_, bytes);
  poison();
  EXPECT_WEFT_ERROR(load(), "checksum mismatch", "tp0_pp0.safetensors", "tensor '", "xxh3_64",
                    "but the file records");
  expect_untouched();
}

TEST_F(CheckpointValidation, AFlippedByteInATensorReadInPartsFailsToo) {
  // Resharding reads blocks of stored tensors: the whole tensor is hashed first.
  std::string bytes = read_bytes(shard_);
  bytes[bytes.size() / 2] = static_cast<char>(bytes[bytes.size() / 2] ^ 0x40);
  write_bytes(shard_, bytes);
  SafetensorsReader f(shard_);
  std::string bad;
  for (const std::string& name : f.names()) {
    try {
      f.verify(name);
    } catch (const Error&) {
      bad = name;
    }
  }
  ASSERT_FALSE(bad.empty()) << "no tensor's checksum caught the flipped byte";
  const Shape shape = f.shape(bad);
  std::vector<unsigned char> part(static_cast<size_t>(shape.numel()) * dtype_size(f.dtype(bad)));
  SafetensorsReader fresh(shard_);
  EXPECT_WEFT_ERROR(fresh.read_block(bad, 0, 0, 1, part.data(), shape[0], 0), "checksum mismatch",
                    bad);
  EXPECT_WEFT_ERROR(reshard_checkpoint(ckpt_, dir_.file("out"), 1, 1), "checksum mismatch", bad);
  EXPECT_FALSE(std::filesystem::exists(dir_.file("out")));
}

TEST_F(CheckpointValidation, NonFiniteValuesFailNamingTheTensorEvenWithAMatchingChecksum) {
  const std::string victim = "layers.1.mlp.fc1.weight";
  const std::string pristine = read_bytes(shard_);
  for (float planted :
       {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity()}) {
    ShardContents c = read_shard(*cpu_, shard_);
    Tensor& t = c.tensors.at(victim);
    ASSERT_EQ(t.dtype(), DType::kF32);
    t.as<float>()[5] = planted;
    write_shard(*cpu_, shard_, std::move(c), /*checksums=*/true);
    poison();
    EXPECT_WEFT_ERROR(load(), "tp0_pp0.safetensors", victim, std::isnan(planted) ? "NaN" : "-inf",
                      "element 5", "must be finite");
    expect_untouched();
    write_bytes(shard_, pristine);
  }
  // Optimizer state too.
  ShardContents c = read_shard(*cpu_, shard_);
  c.tensors.at(victim + ".exp_avg_sq").as<float>()[0] = std::numeric_limits<float>::infinity();
  write_shard(*cpu_, shard_, std::move(c), true);
  EXPECT_WEFT_ERROR(load(), victim + ".exp_avg_sq", "inf at element 0");
}

TEST_F(CheckpointValidation, AnUnexpectedOrAMissingTensorFailsNamingIt) {
  const std::string pristine = read_bytes(shard_);
  // An extra tensor, with slice metadata that looks right.
  ShardContents extra = read_shard(*cpu_, shard_);
  extra.tensors.emplace("layers.0.extra.weight",
                        random_tensor(*cpu_, Shape({4, 4}), DType::kF32, 3));
  extra.metadata["layers.0.extra.weight"] =
      R"({"global_name":"layers.0.extra.weight","global_shape":[4,4],"partition_dim":null,"offset":0})";
  write_shard(*cpu_, shard_, std::move(extra), true);
  poison();
  EXPECT_WEFT_ERROR(load(), "tp0_pp0.safetensors", "unexpected tensor 'layers.0.extra.weight'");
  expect_untouched();
  EXPECT_WEFT_ERROR(list_checkpoint_tensors(ckpt_), "unexpected tensor 'layers.0.extra.weight'");
  // A missing one: a layer's tensor, and one outside the layers.
  for (const std::string gone : {"layers.1.norm2.weight", "final_norm.weight"}) {
    write_bytes(shard_, pristine);
    ShardContents missing = read_shard(*cpu_, shard_);
    ASSERT_EQ(missing.tensors.erase(gone), 1u) << gone;
    missing.metadata.erase(gone);
    write_shard(*cpu_, shard_, std::move(missing), true);
    EXPECT_WEFT_ERROR(load(), "tp0_pp0.safetensors", "tensor '" + gone + "'", "missing");
  }
  // Its optimizer state only.
  write_bytes(shard_, pristine);
  ShardContents no_moment = read_shard(*cpu_, shard_);
  no_moment.tensors.erase("layers.0.mlp.fc2.weight.exp_avg");
  no_moment.metadata.erase("layers.0.mlp.fc2.weight.exp_avg");
  write_shard(*cpu_, shard_, std::move(no_moment), true);
  EXPECT_WEFT_ERROR(load(), "tensor 'layers.0.mlp.fc2.weight.exp_avg'", "missing");
}

TEST_F(CheckpointValidation, AManifestFromTheFutureIsRefusedClearly) {
  edit_manifest([](nlohmann::json& m) { m["version"] = 3; });
  poison();
  EXPECT_WEFT_ERROR(load(), "manifest.json", "format version 3", "newer weft", "versions 1 to 2");
  expect_untouched();
  EXPECT_WEFT_ERROR(read_checkpoint_info(ckpt_), "format version 3");
}

TEST_F(CheckpointValidation, ManifestIntegersAreCheckedNotNarrowed) {
  const std::string manifest = read_bytes(ckpt_ + "/manifest.json");
  edit_manifest([](nlohmann::json& m) { m["tp"] = 4294967298LL; });  // 2^32 + 2: no tp of 2
  EXPECT_WEFT_ERROR(read_checkpoint_info(ckpt_), "manifest.json", "'tp'", "4294967298");
  write_bytes(ckpt_ + "/manifest.json", manifest);
  edit_manifest([](nlohmann::json& m) { m["tp"] = 0; });
  EXPECT_WEFT_ERROR(read_checkpoint_info(ckpt_), "'tp' is 0", "outside [1, ");
  write_bytes(ckpt_ + "/manifest.json", manifest);
  edit_manifest([](nlohmann::json& m) { m["pp"] = 1.5; });
  EXPECT_WEFT_ERROR(read_checkpoint_info(ckpt_), "'pp' is 1.5", "not an integer");
  write_bytes(ckpt_ + "/manifest.json", manifest);
  edit_manifest([](nlohmann::json& m) { m["step"] = -4; });
  EXPECT_WEFT_ERROR(read_checkpoint_info(ckpt_), "'step' is -4");
  write_bytes(ckpt_ + "/manifest.json", manifest);
  edit_manifest([](nlohmann::json& m) { m["config"]["layers"] = "2"; });
  EXPECT_WEFT_ERROR(read_checkpoint_info(ckpt_), "config: field 'layers' is \"2\"");
  write_bytes(ckpt_ + "/manifest.json", manifest);
  edit_manifest([](nlohmann::json& m) { m["checksums"] = "md5"; });
  EXPECT_WEFT_ERROR(read_checkpoint_info(ckpt_), "'checksums' is \"md5\"");
  write_bytes(ckpt_ + "/manifest.json", manifest);
  load();
}

TEST_F(CheckpointValidation, AnOversizedManifestIsRefusedBeforeItIsRead) {
  edit_manifest([](nlohmann::json& m) { m["run_args"]["padding"] = std::string(2 << 20, 'x'); });
  EXPECT_WEFT_ERROR(read_checkpoint_info(ckpt_), "manifest.json", "1048576");
  poison();
  EXPECT_WEFT_ERROR(load(), "manifest.json");
  expect_untouched();
}

TEST_F(CheckpointValidation, CheckpointsWithoutChecksumsStillLoad) {
  // As saved before checksums existed: no keys in the shard, no field in the manifest.
  write_shard(*cpu_, shard_, read_shard(*cpu_, shard_), /*checksums=*/false);
  {
    ShardContents c = read_shard(*cpu_, shard_);
    for (auto it = c.metadata.begin(); it != c.metadata.end();) {
      it = it->first.rfind(kSafetensorsChecksumPrefix, 0) == 0 ? c.metadata.erase(it)
                                                               : std::next(it);
    }
    write_shard(*cpu_, shard_, std::move(c), false);
  }
  SafetensorsReader f(shard_);
  for (const std::string& name : f.names()) ASSERT_FALSE(f.has_checksum(name)) << name;
  // With the manifest still saying there are checksums, that is an error...
  EXPECT_WEFT_ERROR(load(), "tp0_pp0.safetensors", "has no checksum", "xxh3_64");
  // ...without, the checkpoint of an older weft loads.
  edit_manifest([](nlohmann::json& m) { m.erase("checksums"); });
  EXPECT_FALSE(read_checkpoint_info(ckpt_).has_checksums);
  poison();
  load();
  for (Parameter* p : model_.parameters()) {
    for (double x : to_host(*cpu_, p->value)) ASSERT_TRUE(std::isfinite(x)) << p->name;
  }
}

TEST(SafetensorsChecksums, RecordedOnlyWhenAskedAndMalformedOnesAreRefused) {
  auto cpu = make_cpu_backend();
  TempDir dir;
  const Tensor a = random_tensor(*cpu, Shape({3, 4}), DType::kF32, 1);
  const Tensor b = random_tensor(*cpu, Shape({5}), DType::kBF16, 2);
  const std::vector<NamedTensor> tensors = {{"a", a}, {"b", b}};
  save_safetensors(dir.file("plain"), tensors, {{"k", "v"}}, *cpu);
  save_safetensors(dir.file("sums"), tensors, {{"k", "v"}}, *cpu, SafetensorsOptions{true});
  SafetensorsReader plain(dir.file("plain")), sums(dir.file("sums"));
  EXPECT_FALSE(plain.has_checksum("a"));
  EXPECT_EQ(plain.metadata().size(), 1u);
  EXPECT_TRUE(sums.has_checksum("a") && sums.has_checksum("b"));
  Tensor back(*cpu, Shape({3, 4}), DType::kF32);
  sums.read("a", back, *cpu);
  EXPECT_EQ(to_host(*cpu, back), to_host(*cpu, a));
  // A reserved key in the caller's metadata, a key naming no tensor, a value that is no hash.
  EXPECT_WEFT_ERROR(save_safetensors(dir.file("x"), tensors, {{"xxh3_64:a", "0"}}, *cpu,
                                     SafetensorsOptions{true}),
                    "'xxh3_64:a' is reserved");
  save_safetensors(dir.file("ghost"), tensors, {{"xxh3_64:c", "0123456789abcdef"}}, *cpu);
  EXPECT_WEFT_ERROR(SafetensorsReader(dir.file("ghost")), "'xxh3_64:c' names no tensor");
  save_safetensors(dir.file("short"), tensors, {{"xxh3_64:a", "12345"}}, *cpu);
  EXPECT_WEFT_ERROR(SafetensorsReader(dir.file("short")), "'xxh3_64:a' is '12345'",
                    "16 lowercase hexadecimal");
  // A wrong but well-formed hash is caught at the read.
  save_safetensors(dir.file("wrong"), tensors, {{"xxh3_64:a", "0123456789abcdef"}}, *cpu);
  SafetensorsReader wrong(dir.file("wrong"));
  EXPECT_WEFT_ERROR(wrong.read("a", back, *cpu), "checksum mismatch", "'a'",
                    "file records 0123456789abcdef");
  wrong.read("b", Tensor(*cpu, Shape({5}), DType::kBF16), *cpu);  // no checksum: read as is
}

}  // namespace
}  // namespace weft::testing
