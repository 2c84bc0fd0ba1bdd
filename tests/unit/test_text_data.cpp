// Unit tests of TextDataset: byte tokens, deterministic Philox windows, the (position, batch) row
// order, shifted targets, and windows that never leave their split.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "common/temp_dir.hpp"
#include "unit/unit_util.hpp"
#include "weft/data.hpp"

namespace weft {
namespace {

using testing::TempDir;

namespace fs = std::filesystem;

struct Batch {
  std::vector<int32_t> ids, targets;
};

Batch draw(const TextDataset& data, bool validation, uint64_t seed, int64_t index, int64_t seq,
           int64_t batch) {
  Batch out{std::vector<int32_t>(seq * batch, -1), std::vector<int32_t>(seq * batch, -1)};
  data.batch(validation, seed, index, seq, batch, out.ids.data(), out.targets.data());
  return out;
}

// Bytes of every value 0..255 (high bytes must come out as 128..255, not negative), in an order
// with no short period, so that a window's content identifies where it was taken.
std::string varied_bytes(size_t n) {
  std::string out(n, '\0');
  uint32_t x = 12345;
  for (size_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    out[i] = static_cast<char>(x >> 24);
  }
  return out;
}

TEST(TextData, SizesAndSplit) {
  TempDir dir;
  const std::string path = dir.write("a.txt", varied_bytes(1000));
  TextDataset data(path, 0.1);
  EXPECT_EQ(data.size(), 1000);
  EXPECT_EQ(data.train_size(), 900);
  EXPECT_EQ(data.validation_size(), 100);
  TextDataset default_split(path);
  EXPECT_EQ(default_split.validation_size(), 50);
  TextDataset no_validation(path, 0.0);
  EXPECT_EQ(no_validation.train_size(), 1000);
  EXPECT_EQ(no_validation.validation_size(), 0);
  EXPECT_EQ(TextDataset::kVocabSize, 256);
}

TEST(TextData, DeterministicForASeedDifferentForAnotherSeedOrIndex) {
  TempDir dir;
  const std::string path = dir.write("a.txt", varied_bytes(5000));
  TextDataset data(path);
  TextDataset reloaded(path);  // another rank: its own copy of the file, same numbers
  const Batch a = draw(data, false, 7, 3, 16, 4);
  const Batch b = draw(reloaded, false, 7, 3, 16, 4);
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_EQ(a.targets, b.targets);
  EXPECT_NE(draw(data, false, 8, 3, 16, 4).ids, a.ids);
  EXPECT_NE(draw(data, false, 7, 4, 16, 4).ids, a.ids);
  EXPECT_NE(draw(data, true, 7, 3, 16, 4).ids, a.ids);
  // Sequence b is the same whatever the batch size around it.
  const Batch wide = draw(data, false, 7, 3, 16, 8);
  for (int64_t s = 0; s < 16; ++s) {
    for (int64_t j = 0; j < 4; ++j) EXPECT_EQ(wide.ids[s * 8 + j], a.ids[s * 4 + j]);
  }
  // The sequences of one batch are not all the same window.
  std::set<int64_t> starts;
  for (int64_t j = 0; j < 8; ++j) starts.insert(data.window_start(false, 7, 3, 16, j));
  EXPECT_GT(starts.size(), 1u);
}

TEST(TextData, RowsArePositionMajorAndTargetsAreShiftedIds) {
  TempDir dir;
  const std::string text = varied_bytes(3000);
  const std::string path = dir.write("a.txt", text);
  TextDataset data(path, 0.2);
  const int64_t seq = 32, batch = 5;
  for (bool validation : {false, true}) {
    const int64_t base = validation ? data.train_size() : 0;
    for (int64_t index = 0; index < 20; ++index) {
      const Batch got = draw(data, validation, 11, index, seq, batch);
      for (int64_t b = 0; b < batch; ++b) {
        const int64_t start = base + data.window_start(validation, 11, index, seq, b);
        for (int64_t s = 0; s < seq; ++s) {
          const int64_t row = s * batch + b;
          ASSERT_EQ(got.ids[row], static_cast<unsigned char>(text[start + s]));
          ASSERT_EQ(got.targets[row], static_cast<unsigned char>(text[start + s + 1]));
          if (s + 1 < seq) {
            ASSERT_EQ(got.targets[row], got.ids[row + batch]);
          }
          ASSERT_GE(got.ids[row], 0);
          ASSERT_LT(got.ids[row], 256);
          ASSERT_LT(got.targets[row], 256);
        }
      }
    }
  }
}

TEST(TextData, WindowsStayInTheirSplitAndCoverIt) {
  // Training bytes are all < 128, validation bytes all >= 128: any window crossing the boundary,
  // or taken from the wrong split, shows.
  std::string text = varied_bytes(1000);
  for (size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    text[i] = static_cast<char>(i < 900 ? (c & 0x7f) : (c | 0x80));
  }
  TempDir dir;
  TextDataset data(dir.write("a.txt", text), 0.1);
  ASSERT_EQ(data.validation_size(), 100);
  const int64_t seq = 10, batch = 4;
  int64_t min_start = 1 << 30, max_start = -1;
  for (int64_t index = 0; index < 500; ++index) {
    const Batch v = draw(data, true, 5, index, seq, batch);
    const Batch t = draw(data, false, 5, index, seq, batch);
    for (size_t i = 0; i < v.ids.size(); ++i) {
      ASSERT_GE(v.ids[i], 128);
      ASSERT_GE(v.targets[i], 128);
      ASSERT_LT(t.ids[i], 128);
      ASSERT_LT(t.targets[i], 128);
    }
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t start = data.window_start(true, 5, index, seq, b);
      min_start = std::min(min_start, start);
      max_start = std::max(max_start, start);
    }
  }
  // 2000 draws over the 90 possible starts reach both ends of the validation split.
  EXPECT_EQ(min_start, 0);
  EXPECT_EQ(max_start, 100 - seq - 1);
}

TEST(TextData, ShortOrMissingFilesAndOversizedWindowsAreErrors) {
  TempDir dir;
  const std::string missing = (fs::temp_directory_path() / "weft-no-such-file.txt").string();
  EXPECT_WEFT_ERROR(TextDataset{missing}, missing, "No such file or directory");

  const std::string tiny = dir.write("tiny.txt", "abc");
  EXPECT_WEFT_ERROR(TextDataset{tiny}, tiny, "has 3 bytes", "needs at least 40 bytes");
  EXPECT_WEFT_ERROR(TextDataset(tiny, 0.5), tiny, "has 3 bytes", "needs at least 4 bytes");
  EXPECT_WEFT_ERROR(TextDataset(dir.write("empty.txt", ""), 0.0), "has 0 bytes",
                    "needs at least 2 bytes");
  EXPECT_WEFT_ERROR(TextDataset(tiny, 1.0), "validation_fraction 1");
  EXPECT_WEFT_ERROR(TextDataset(tiny, -0.1), "validation_fraction -0.1");

  TextDataset two(dir.write("two.txt", "hi"), 0.0);
  const Batch b = draw(two, false, 1, 0, 1, 3);
  EXPECT_EQ(b.ids, (std::vector<int32_t>{'h', 'h', 'h'}));
  EXPECT_EQ(b.targets, (std::vector<int32_t>{'i', 'i', 'i'}));

  TextDataset data(dir.write("a.txt", varied_bytes(1000)), 0.1);
  std::vector<int32_t> ids(900 * 2), targets(900 * 2);
  EXPECT_WEFT_ERROR(data.batch(true, 1, 0, 100, 2, ids.data(), targets.data()), "seq + 1 = 101",
                    "validation split of 100 tokens");
  EXPECT_WEFT_ERROR(data.batch(false, 1, 0, 900, 2, ids.data(), targets.data()), "seq + 1 = 901",
                    "training split of 900 tokens");
  data.batch(false, 1, 0, 899, 1, ids.data(), targets.data());  // exactly fits
  data.batch(true, 1, 0, 99, 2, ids.data(), targets.data());
  EXPECT_WEFT_ERROR(data.batch(false, 1, 0, 0, 2, ids.data(), targets.data()), "seq 0");
  EXPECT_WEFT_ERROR(data.batch(false, 1, -1, 4, 2, ids.data(), targets.data()), "index -1");
  EXPECT_WEFT_ERROR(data.batch(false, 1, 0, 4, 0, ids.data(), targets.data()), "batch 0");
  EXPECT_WEFT_ERROR(data.batch(false, 1, 0, 4, 2, nullptr, targets.data()), "null");
}

}  // namespace
}  // namespace weft
