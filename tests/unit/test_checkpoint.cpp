// Unit tests of checkpoint I/O: safetensors round trips, the exact byte layout, atomic writes,
// and a weft::Error naming the file for every kind of corrupt file.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "common/temp_dir.hpp"
#include "unit/unit_util.hpp"
#include "weft/checkpoint.hpp"
#include "weft/weft.hpp"

namespace weft {
namespace {

using testing::TempDir;

namespace fs = std::filesystem;

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string le64(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out;
}

// A safetensors file from a header text (padded as the spec asks) and raw data bytes.
std::string safetensors_bytes(std::string header, const std::string& data) {
  header.append((8 - header.size() % 8) % 8, ' ');
  return le64(header.size()) + header + data;
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string raw(const TensorView& v) {
  return std::string(static_cast<const char*>(v.data), v.bytes());
}

Tensor i32_tensor(Backend& backend, const Shape& shape) {
  Tensor t(backend, shape, DType::kI32);
  for (int64_t i = 0; i < t.numel(); ++i) t.as<int32_t>()[i] = static_cast<int32_t>(i * 7919 - 3);
  return t;
}

TEST(SafetensorsRoundTrip, AllDtypesAndShapesWithMetadata) {
  auto backend = make_cpu_backend();
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  std::vector<Tensor> owned;
  owned.push_back(testing::random_tensor(*backend, {3, 5}, DType::kF32, 1));
  owned.push_back(testing::random_tensor(*backend, {7}, DType::kBF16, 2));
  owned.push_back(testing::random_tensor(*backend, {}, DType::kF16, 3));  // 0-d: a scalar
  owned.push_back(i32_tensor(*backend, {2, 1, 3}));
  owned.push_back(Tensor(*backend, {0, 4}, DType::kF32));  // empty: no data bytes
  owned.push_back(testing::random_tensor(*backend, {1}, DType::kF32, 4));
  owned.push_back(testing::random_tensor(*backend, {2, 3, 2, 2}, DType::kF16, 5));
  const std::vector<std::string> names = {"layers.0.weight", "embedding", "scale", "ids",
                                          "empty",           "b",         "x/y"};
  std::vector<NamedTensor> tensors;
  for (size_t i = 0; i < owned.size(); ++i) tensors.push_back({names[i], owned[i]});
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"step", "42"}, {"note", "quote \" and ünïcödé"}, {"", "empty key"}};

  save_safetensors(path, tensors, metadata, *backend);

  SafetensorsReader reader(path);
  EXPECT_EQ(reader.path(), path);
  EXPECT_EQ(reader.metadata(), metadata);
  std::vector<std::string> sorted = names;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(reader.names(), sorted);
  EXPECT_FALSE(reader.contains("missing"));
  EXPECT_FALSE(reader.contains("__metadata__"));
  for (size_t i = 0; i < owned.size(); ++i) {
    SCOPED_TRACE(names[i]);
    ASSERT_TRUE(reader.contains(names[i]));
    EXPECT_EQ(reader.shape(names[i]), owned[i].shape());
    EXPECT_EQ(reader.dtype(names[i]), owned[i].dtype());
    Tensor back(*backend, owned[i].shape(), owned[i].dtype());
    if (back.bytes() > 0) std::memset(back.data(), 0xa5, back.bytes());
    reader.read(names[i], back, *backend);
    EXPECT_EQ(raw(back), raw(owned[i]));  // bit for bit, NaN patterns included
  }
}

TEST(SafetensorsRoundTrip, NoTensorsNoMetadataAndMovedReader) {
  auto backend = make_cpu_backend();
  TempDir dir;
  const std::string path = dir.file("empty.safetensors");
  save_safetensors(path, {}, {}, *backend);
  // The smallest file: "{}" padded to 8 bytes, no data.
  EXPECT_EQ(read_file(path), le64(8) + "{}      ");
  SafetensorsReader reader(path);
  EXPECT_TRUE(reader.names().empty());
  EXPECT_TRUE(reader.metadata().empty());

  Tensor t = testing::random_tensor(*backend, {4}, DType::kBF16, 9);
  save_safetensors(path, {{"t", t}}, {}, *backend);
  SafetensorsReader first(path);
  SafetensorsReader moved(std::move(first));
  Tensor back(*backend, {4}, DType::kBF16);
  moved.read("t", back, *backend);
  EXPECT_EQ(raw(back), raw(t));
  reader = std::move(moved);
  reader.read("t", back, *backend);
  EXPECT_EQ(raw(back), raw(t));
}

// The layout checked byte by byte against the spec, not against our own reader.
TEST(SafetensorsFormat, HeaderBytesByHand) {
  auto backend = make_cpu_backend();
  TempDir dir;
  const std::string path = dir.file("tiny.safetensors");
  Tensor a(*backend, {2}, DType::kF32);
  a.as<float>()[0] = 1.0f;
  a.as<float>()[1] = -2.0f;
  save_safetensors(path, {{"a", a}}, {{"k", "v"}}, *backend);

  const std::string json =
      R"({"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  ASSERT_EQ(json.size(), 79u);  // padded with 1 space to 80
  const std::string expected_header = json + " ";
  const std::string data("\x00\x00\x80\x3f\x00\x00\x00\xc0", 8);  // 1.0f, -2.0f little-endian
  const std::string bytes = read_file(path);
  ASSERT_EQ(bytes.size(), 8u + 80u + 8u);
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x50\0\0\0\0\0\0\0", 8));  // 80, u64 LE
  EXPECT_EQ(bytes.substr(8, 80), expected_header);
  EXPECT_EQ(bytes.substr(88), data);
}

// The reference writer's order: F32, I32, BF16, F16 (its Dtype enum, descending), then names;
// every tensor starts aligned to its element size.
TEST(SafetensorsFormat, DataOrderedAsTheReferenceWriterDoes) {
  auto backend = make_cpu_backend();
  TempDir dir;
  const std::string path = dir.file("order.safetensors");
  Tensor f = testing::random_tensor(*backend, {1}, DType::kF16, 1);
  Tensor h = testing::random_tensor(*backend, {3}, DType::kBF16, 2);
  Tensor z = testing::random_tensor(*backend, {1}, DType::kF32, 3);
  Tensor y = i32_tensor(*backend, {2});
  Tensor a = testing::random_tensor(*backend, {2}, DType::kF32, 4);
  save_safetensors(path, {{"f", f}, {"h", h}, {"z", z}, {"y", y}, {"a", a}}, {}, *backend);
  const std::string json = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("z":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},)"
                           R"("y":{"dtype":"I32","shape":[2],"data_offsets":[12,20]},)"
                           R"("h":{"dtype":"BF16","shape":[3],"data_offsets":[20,26]},)"
                           R"("f":{"dtype":"F16","shape":[1],"data_offsets":[26,28]}})";
  const std::string bytes = read_file(path);
  const size_t padded = (json.size() + 7) / 8 * 8;
  ASSERT_EQ(bytes.size(), 8 + padded + 28);
  EXPECT_EQ(bytes.substr(0, 8), le64(padded));
  EXPECT_EQ(bytes.substr(8, padded), json + std::string(padded - json.size(), ' '));
  EXPECT_EQ(bytes.substr(8 + padded), raw(a) + raw(z) + raw(y) + raw(h) + raw(f));
}

TEST(SafetensorsFormat, ReadsAFileWrittenByHand) {
  TempDir dir;
  const std::string path = dir.file("hand.safetensors");
  // Keys in any order, extra whitespace, tensors listed out of offset order.
  const std::string header =
      "{ \"b\": {\"shape\": [], \"dtype\": \"I32\", \"data_offsets\": [4, 8]},\n"
      "  \"a\": {\"data_offsets\": [0, 4], \"dtype\": \"BF16\", \"shape\": [1, 2]},\n"
      "  \"__metadata__\": {\"epoch\": \"3\"} }";
  write_bytes(path, safetensors_bytes(header, std::string("\x80\x3f\x00\xc0\x2a\0\0\0", 8)));
  auto backend = make_cpu_backend();
  SafetensorsReader reader(path);
  EXPECT_EQ(reader.metadata().at("epoch"), "3");
  EXPECT_EQ(reader.shape("b"), Shape{});
  Tensor b(*backend, {}, DType::kI32);
  reader.read("b", b, *backend);
  EXPECT_EQ(b.as<int32_t>()[0], 42);
  Tensor a(*backend, {1, 2}, DType::kBF16);
  reader.read("a", a, *backend);
  EXPECT_EQ(bf16_to_float(a.as<bf16_t>()[0]), 1.0f);
  EXPECT_EQ(bf16_to_float(a.as<bf16_t>()[1]), -2.0f);
}

// A file written piece by piece equals the one written from whole tensors, and read_block reads
// any block along any dimension into its place in a larger destination.
TEST(SafetensorsBlocks, StreamedWriteAndBlockReadsAlongEachDimension) {
  auto backend = make_cpu_backend();
  TempDir dir;
  const Tensor a = i32_tensor(*backend, {4, 3, 5});
  const Tensor b = i32_tensor(*backend, {6});
  const std::map<std::string, std::string> metadata{{"k", "v"}};
  save_safetensors(dir.file("whole.safetensors"), {{"a", a}, {"b", b}}, metadata, *backend);
  int asked = 0;
  save_safetensors_streamed(
      dir.file("streamed.safetensors"),
      {{"b", DType::kI32, b.shape()}, {"a", DType::kI32, a.shape()}}, metadata,
      [&](const SafetensorsEntry& e, std::vector<unsigned char>& scratch) -> const void* {
        ++asked;
        EXPECT_EQ(scratch.size(), (e.name == "a" ? a : b).view().bytes());
        std::memcpy(scratch.data(), (e.name == "a" ? a : b).view().data, scratch.size());
        return scratch.data();
      });
  EXPECT_EQ(asked, 2);
  EXPECT_EQ(file_bytes(dir.file("streamed.safetensors")),
            file_bytes(dir.file("whole.safetensors")));

  SafetensorsReader reader(dir.file("whole.safetensors"));
  const int32_t* src = a.as<int32_t>();
  for (int dim = 0; dim < 3; ++dim) {
    const int64_t extent = a.shape()[dim], begin = 1, count = extent - 2, dst_extent = extent + 3;
    std::vector<int64_t> dims = a.shape().dims();
    dims[static_cast<size_t>(dim)] = dst_extent;
    const Shape dst_shape(dims);
    std::vector<int32_t> dst(static_cast<size_t>(dst_shape.numel()), -1);
    reader.read_block("a", dim, begin, count, dst.data(), dst_extent, 2);
    for (int64_t i = 0; i < dst_shape[0]; ++i) {
      for (int64_t j = 0; j < dst_shape[1]; ++j) {
        for (int64_t k = 0; k < dst_shape[2]; ++k) {
          int64_t s[3] = {i, j, k};        // becomes the source index
          const int64_t pos = s[dim] - 2;  // position in the block
          s[dim] = begin + pos;
          const int32_t want = pos >= 0 && pos < count ? src[(s[0] * 3 + s[1]) * 5 + s[2]] : -1;
          const int64_t at = (i * dst_shape[1] + j) * dst_shape[2] + k;
          ASSERT_EQ(dst[static_cast<size_t>(at)], want) << "dim " << dim << " at " << at;
        }
      }
    }
  }
  std::vector<int32_t> tiny(4);
  EXPECT_THROW(reader.read_block("a", 1, 2, 2, tiny.data(), 3, 0), Error);  // past the tensor
  EXPECT_THROW(reader.read_block("a", 3, 0, 1, tiny.data(), 1, 0), Error);  // no dimension 3
}

TEST(CheckpointAtomicWrite, ReplacesExistingFileAndLeavesNoTemp) {
  auto backend = make_cpu_backend();
  TempDir dir;
  const std::string path = dir.file("ckpt.safetensors");
  write_bytes(path, "an older checkpoint");
  Tensor t = testing::random_tensor(*backend, {8, 4}, DType::kF32, 7);
  save_safetensors(path, {{"w", t}}, {{"step", "1"}}, *backend);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"ckpt.safetensors"});
  EXPECT_EQ(SafetensorsReader(path).metadata().at("step"), "1");

  const std::string manifest = dir.file("manifest.json");
  write_file_atomically(manifest, "{\"step\": 1}");
  write_file_atomically(manifest, "{\"step\": 2}\n");
  EXPECT_EQ(read_file(manifest), "{\"step\": 2}\n");
  write_file_atomically(manifest, "");
  EXPECT_EQ(read_file(manifest), "");
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"ckpt.safetensors", "manifest.json"}));

  // A relative path (its directory is ".") works as well.
  const fs::path cwd = fs::current_path();
  fs::current_path(dir.file(""));
  write_file_atomically("relative.txt", "here");
  fs::current_path(cwd);
  EXPECT_EQ(read_file(dir.file("relative.txt")), "here");
}

TEST(CheckpointAtomicWrite, RejectedWriteKeepsTheOldFile) {
  auto backend = make_cpu_backend();
  TempDir dir;
  const std::string path = dir.file("ckpt.safetensors");
  Tensor t = testing::random_tensor(*backend, {3}, DType::kF32, 1);
  save_safetensors(path, {{"w", t}}, {}, *backend);
  const std::string before = read_file(path);

  EXPECT_WEFT_ERROR(save_safetensors(path, {{"w", t}, {"w", t}}, {}, *backend), path,
                    "duplicate tensor name 'w'");
  EXPECT_WEFT_ERROR(save_safetensors(path, {{"__metadata__", t}}, {}, *backend), "reserved");
  EXPECT_WEFT_ERROR(save_safetensors(path, {{"", t}}, {}, *backend), "empty tensor name");
  EXPECT_WEFT_ERROR(
      save_safetensors(path, {{"null", TensorView{nullptr, Shape{2}, DType::kF32, Device::cpu()}}},
                       {}, *backend),
      "'null'", "has no data");
  EXPECT_WEFT_ERROR(save_safetensors(path, {{"bad\xff", t}}, {}, *backend), "UTF-8");
  EXPECT_EQ(read_file(path), before);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"ckpt.safetensors"});

  const std::string nowhere = dir.file("no-such-dir/ckpt.safetensors");
  try {
    save_safetensors(nowhere, {{"w", t}}, {}, *backend);
    ADD_FAILURE() << "expected weft::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
    EXPECT_CONTAINS(e.what(), nowhere);
    EXPECT_CONTAINS(e.what(), "No such file or directory");
  }
  EXPECT_WEFT_ERROR(write_file_atomically(nowhere, "x"), nowhere);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"ckpt.safetensors"});
}

TEST(CheckpointReadFile, MissingFileNamesThePath) {
  TempDir dir;
  const std::string path = dir.file("missing.json");
  EXPECT_WEFT_ERROR(read_file(path), path, "No such file or directory");
  EXPECT_WEFT_ERROR(SafetensorsReader{path}, path, "No such file or directory");
}

TEST(SafetensorsRead, WrongShapeDtypeOrNameIsAnError) {
  auto backend = make_cpu_backend();
  TempDir dir;
  const std::string path = dir.file("w.safetensors");
  Tensor t = testing::random_tensor(*backend, {2, 3}, DType::kBF16, 3);
  save_safetensors(path, {{"layer.w", t}}, {}, *backend);
  SafetensorsReader reader(path);
  Tensor wrong_shape(*backend, {3, 2}, DType::kBF16);
  EXPECT_WEFT_ERROR(reader.read("layer.w", wrong_shape, *backend), "'layer.w'", path,
                    "expected bf16[3, 2]", "found bf16[2, 3]");
  Tensor wrong_dtype(*backend, {2, 3}, DType::kF32);
  EXPECT_WEFT_ERROR(reader.read("layer.w", wrong_dtype, *backend), "'layer.w'",
                    "expected f32[2, 3]", "found bf16[2, 3]");
  Tensor flat(*backend, {6}, DType::kBF16);
  EXPECT_WEFT_ERROR(reader.read("layer.w", flat, *backend), "expected bf16[6]");
  EXPECT_WEFT_ERROR(reader.read("layer.v", flat, *backend), "no tensor 'layer.v'", path);
  EXPECT_WEFT_ERROR(reader.shape("layer.v"), "no tensor 'layer.v'", path);
  EXPECT_WEFT_ERROR(reader.dtype("layer.v"), "no tensor 'layer.v'", path);
}

// Each corrupt file must give weft::Error (kIo) naming the file and the problem.
void expect_corrupt(const std::string& path, const std::string& bytes, const std::string& what) {
  SCOPED_TRACE(what);
  write_bytes(path, bytes);
  try {
    SafetensorsReader reader(path);
    ADD_FAILURE() << "expected weft::Error containing '" << what << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
    EXPECT_CONTAINS(e.what(), path);
    EXPECT_CONTAINS(e.what(), what);
  }
}

TEST(SafetensorsCorrupt, EveryCaseNamesTheFileAndTheProblem) {
  TempDir dir;
  const std::string p = dir.file("bad.safetensors");
  const std::string f32x2 = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string data8(8, '\x11');
  const auto file = [](const std::string& header, const std::string& data) {
    return safetensors_bytes(header, data);
  };

  expect_corrupt(p, "", "0 bytes, fewer than the 8-byte header length");
  expect_corrupt(p, std::string("\x08\0\0", 3), "3 bytes, fewer than the 8-byte header length");
  expect_corrupt(p, le64(1000) + "{}      ", "header length 1000 exceeds the 8 bytes");
  expect_corrupt(p, le64(~uint64_t{0}) + "{}      ", "header length 18446744073709551615");
  expect_corrupt(p, file("{\"t\": ", ""), "malformed JSON header");
  expect_corrupt(p, file("{} trailing", ""), "malformed JSON header");
  expect_corrupt(p, file("[1, 2]", ""), "the JSON header is a array, not an object");
  expect_corrupt(p, file("{" + f32x2 + "," + f32x2 + "}", data8), "duplicate key 't'");
  expect_corrupt(p, file(R"({"t":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", data8),
                 "tensor 't' has unknown dtype 'F33'");
  expect_corrupt(p, file(R"({"t":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", data8),
                 "tensor 't' has unsupported dtype 'F64'");
  expect_corrupt(p, file(R"({"t":{"dtype":7,"shape":[2],"data_offsets":[0,8]}})", data8),
                 "tensor 't' has no string \"dtype\"");
  expect_corrupt(p, file(R"({"t":{"dtype":"F32","data_offsets":[0,8]}})", data8),
                 "tensor 't' has no \"shape\" array");
  expect_corrupt(p, file(R"({"t":{"dtype":"F32","shape":[2]}})", data8),
                 "tensor 't' has no \"data_offsets\"");
  expect_corrupt(p, file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", data8),
                 "tensor 't' has no \"data_offsets\"");
  expect_corrupt(p, file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[-1,8]}})", data8),
                 "tensor 't' has no \"data_offsets\"");
  expect_corrupt(p, file(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data8),
                 "tensor 't' has an invalid dimension -2");
  expect_corrupt(p, file(R"({"t":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", data8),
                 "tensor 't' has an invalid dimension 2.5");
  expect_corrupt(p,
                 file(R"({"t":{"dtype":"F32","shape":[4611686018427387904,4],)"
                      R"("data_offsets":[0,8]}})",
                      data8),
                 "too large to address");
  expect_corrupt(p, file(R"({"t":[1]})", data8), "tensor 't' is not an object");
  expect_corrupt(p, file(R"({"__metadata__":[1]})", ""), "\"__metadata__\" is not an object");
  expect_corrupt(p, file(R"({"__metadata__":{"step":3}})", ""),
                 "metadata value of 'step' is not a string");
  // Offsets that disagree with dtype x numel.
  expect_corrupt(p, file(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data8),
                 "data_offsets [0, 8] spanning 8 bytes, but F32 [3] needs 12");
  expect_corrupt(p, file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", data8),
                 "begin > end");
  // Offsets past the end of the file, and a file cut short.
  expect_corrupt(p, file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", data8),
                 "a gap of unused data bytes [0, 8) before tensor 't'");
  expect_corrupt(p, file("{" + f32x2 + "}", "\x11\x11\x11\x11\x11"),
                 "tensor 't' ends at data byte 8, but the file has 5 data bytes (truncated");
  expect_corrupt(
      p, file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[1000000,1000008]}})", data8),
      "a gap");
  // Overlapping tensors, and bytes that belong to no tensor.
  expect_corrupt(p,
                 file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                      std::string(12, '\x22')),
                 "tensor 'b' (data bytes [4, 12)) overlaps tensor 'a' (ending at 8)");
  expect_corrupt(p,
                 file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                      data8),
                 "overlaps");
  expect_corrupt(p, file("{" + f32x2 + "}", data8 + "xyz"), "3 unused bytes after the last tensor");

  // A valid file cut anywhere in its data is rejected too.
  auto backend = make_cpu_backend();
  Tensor t = testing::random_tensor(*backend, {16}, DType::kF32, 5);
  save_safetensors(p, {{"t", t}}, {}, *backend);
  const std::string good = read_file(p);
  expect_corrupt(p, good.substr(0, good.size() - 1), "truncated");
  expect_corrupt(p, good.substr(0, 20), "header length");
}

}  // namespace
}  // namespace weft
