// Unit tests of the counter-based RNG: Philox known answers, windows of the global fill (what
// TP-invariant initialization relies on), distribution moments, derived seeds.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <set>
#include <vector>

#include "unit/unit_util.hpp"
#include "weft/weft.hpp"

namespace weft {
namespace {

using testing::poisoned;
using testing::to_host;

// The known-answer vectors of Random123 (kat_vectors), which Philox4x32-10 implementations
// (cuRAND, JAX, PyTorch) agree on.
TEST(Philox, MatchesRandom123KnownAnswers) {
  struct Kat {
    Philox4x32 counter;
    uint32_t key0, key1;
    Philox4x32 expected;
  };
  const Kat kats[] = {
      {{{0u, 0u, 0u, 0u}}, 0u, 0u, {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}}},
      {{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}},
       0xffffffffu,
       0xffffffffu,
       {{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}}},
      {{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}},
       0xa4093822u,
       0x299f31d0u,
       {{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}}},
  };
  for (const Kat& k : kats) {
    const Philox4x32 out = philox4x32_10(k.counter, k.key0, k.key1);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(out.v[i], k.expected.v[i]) << "word " << i;
  }
}

TEST(Philox, DrawIsDeterministicAndDependsOnSeedAndIndex) {
  const Philox4x32 a = philox_draw(1234, 99), b = philox_draw(1234, 99);
  EXPECT_EQ(std::memcmp(&a, &b, sizeof a), 0);
  const Philox4x32 other_index = philox_draw(1234, 100), other_seed = philox_draw(1235, 99);
  EXPECT_NE(std::memcmp(&a, &other_index, sizeof a), 0);
  EXPECT_NE(std::memcmp(&a, &other_seed, sizeof a), 0);
  // The high halves of the seed and of the index matter too.
  const Philox4x32 high_seed = philox_draw(1234 + (1ull << 32), 99);
  const Philox4x32 high_index = philox_draw(1234, 99 + (1ull << 32));
  EXPECT_NE(std::memcmp(&a, &high_seed, sizeof a), 0);
  EXPECT_NE(std::memcmp(&a, &high_index, sizeof a), 0);
  // The draw is Philox applied to counter (index lo, index hi, 0, 0) with key (seed lo, seed hi).
  const uint64_t seed = 0x0123456789abcdefull, index = 0xfedcba9876543210ull;
  const Philox4x32 direct = philox4x32_10(
      Philox4x32{{static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), 0u, 0u}},
      static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  const Philox4x32 drawn = philox_draw(seed, index);
  EXPECT_EQ(std::memcmp(&direct, &drawn, sizeof direct), 0);
}

TEST(Philox, OpenUnitIntervalExcludesBothEnds) {
  EXPECT_GT(bits_to_open_unit(0u), 0.0);
  EXPECT_LT(bits_to_open_unit(0xffffffffu), 1.0);
  EXPECT_TRUE(std::isfinite(std::log(bits_to_open_unit(0u))));
}

// The global matrix the windows are cut from.
constexpr int64_t kRows = 13, kCols = 24;

Tensor global_fill(Backend& backend, const RandomFill& spec, DType dtype) {
  Tensor t = poisoned(backend, Shape({kRows, kCols}), dtype);
  backend.fill_random(t, spec);
  return t;
}

// Elements [row0, row0 + rows) x [col0, col0 + cols) of the global matrix, bit for bit.
void expect_window_matches(const Tensor& global, const Tensor& window, int64_t row0, int64_t col0) {
  const size_t es = dtype_size(global.dtype());
  const int64_t rows = window.shape().rows(), cols = window.shape().cols();
  for (int64_t r = 0; r < rows; ++r) {
    const char* g = static_cast<const char*>(global.data()) + ((row0 + r) * kCols + col0) * es;
    const char* w = static_cast<const char*>(window.data()) + r * cols * es;
    ASSERT_EQ(std::memcmp(g, w, cols * es), 0)
        << "row " << r << " of the window at (" << row0 << ", " << col0 << ")";
  }
}

class WindowFill : public ::testing::TestWithParam<std::tuple<Distribution, DType>> {};

TEST_P(WindowFill, EqualsTheSliceOfTheGlobalFill) {
  auto backend = make_cpu_backend();
  const auto [distribution, dtype] = GetParam();
  RandomFill spec;
  spec.distribution = distribution;
  spec.seed = 20240611;
  spec.offset = 777;
  spec.a = -0.3;
  spec.b = 1.7;
  const Tensor global = global_fill(*backend, spec, dtype);
  for (double v : to_host(*backend, global)) ASSERT_TRUE(std::isfinite(v));

  struct Window {
    int64_t row0, col0, rows, cols;
  };
  const Window windows[] = {
      {0, 0, kRows, kCols},  // the whole matrix, described as a window
      {0, 6, kRows, 6},      // a column shard (column-parallel weight, tp = 4, rank 1)
      {0, 18, kRows, 6},     // the last column shard
      {5, 0, 4, kCols},      // a row shard
      {3, 7, 6, 11},         // both
      {kRows - 1, kCols - 1, 1, 1},
  };
  for (const Window& w : windows) {
    RandomFill window_spec = spec;
    window_spec.global_cols = kCols;
    window_spec.row0 = w.row0;
    window_spec.col0 = w.col0;
    Tensor window = poisoned(*backend, Shape({w.rows, w.cols}), dtype);
    backend->fill_random(window, window_spec);
    expect_window_matches(global, window, w.row0, w.col0);
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllDistributionsAndDtypes, WindowFill,
    ::testing::Combine(::testing::Values(Distribution::kNormal, Distribution::kUniform),
                       ::testing::Values(DType::kF32, DType::kBF16, DType::kF16)));

TEST(RandomFillTest, ColumnShardsConcatenateToTheGlobalMatrixAtEveryTpSize) {
  auto backend = make_cpu_backend();
  RandomFill spec;
  spec.seed = 99;
  const Tensor global = global_fill(*backend, spec, DType::kF32);
  for (int tp : {1, 2, 3, 4, 6, 8}) {
    const int64_t local = kCols / tp;
    for (int rank = 0; rank < tp; ++rank) {
      RandomFill s = spec;
      s.global_cols = kCols;
      s.col0 = rank * local;
      Tensor shard = poisoned(*backend, Shape({kRows, local}), DType::kF32);
      backend->fill_random(shard, s);
      expect_window_matches(global, shard, 0, rank * local);
    }
  }
}

TEST(RandomFillTest, OffsetShiftsTheCounter) {
  // Counter of element (r, c) is offset + r * cols + c: an offset of 3 rows gives rows 3...
  auto backend = make_cpu_backend();
  RandomFill spec;
  spec.seed = 5;
  const Tensor global = global_fill(*backend, spec, DType::kF32);
  RandomFill shifted = spec;
  shifted.offset = 3 * kCols;
  Tensor tail = poisoned(*backend, Shape({kRows - 3, kCols}), DType::kF32);
  backend->fill_random(tail, shifted);
  expect_window_matches(global, tail, 3, 0);
}

TEST(RandomFillTest, ElementsAreRandomValueOfTheirGlobalPosition) {
  auto backend = make_cpu_backend();
  RandomFill spec;
  spec.seed = 31337;
  spec.offset = 12;
  spec.a = 0.5;
  spec.b = 2.0;
  spec.global_cols = 40;
  spec.row0 = 2;
  spec.col0 = 9;
  Tensor t = poisoned(*backend, Shape({3, 2, 5}), DType::kF32);  // folded to 6 x 5
  backend->fill_random(t, spec);
  for (int64_t r = 0; r < 6; ++r) {
    for (int64_t c = 0; c < 5; ++c) {
      EXPECT_EQ(t.as<float>()[r * 5 + c], random_value(spec, 40, 2 + r, 9 + c));
    }
  }
}

TEST(RandomFillTest, SixteenBitFillsAreTheRoundedF32Fill) {
  auto backend = make_cpu_backend();
  RandomFill spec;
  spec.seed = 8;
  const Tensor f32 = global_fill(*backend, spec, DType::kF32);
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    const Tensor t = global_fill(*backend, spec, dtype);
    EXPECT_EQ(to_host(*backend, t), testing::rounded(to_host(*backend, f32), dtype))
        << dtype_name(dtype);
  }
}

TEST(RandomFillTest, IsDeterministicAndSeedSensitive) {
  auto backend = make_cpu_backend();
  RandomFill spec;
  spec.seed = 42;
  const auto a = to_host(*backend, global_fill(*backend, spec, DType::kF32));
  const auto b = to_host(*backend, global_fill(*backend, spec, DType::kF32));
  EXPECT_EQ(a, b);
  spec.seed = 43;
  const auto c = to_host(*backend, global_fill(*backend, spec, DType::kF32));
  int equal = 0;
  for (size_t i = 0; i < a.size(); ++i) equal += a[i] == c[i];
  EXPECT_EQ(equal, 0);
  // No two elements of one fill coincide (each has its own counter).
  EXPECT_EQ(std::set<double>(a.begin(), a.end()).size(), a.size());
}

TEST(RandomFillTest, WindowOutsideTheGlobalRowThrows) {
  auto backend = make_cpu_backend();
  Tensor t(*backend, Shape({4, 8}), DType::kF32);
  RandomFill spec;
  spec.global_cols = 10;
  spec.col0 = 3;  // columns 3..10 do not fit in 10
  EXPECT_WEFT_ERROR(backend->fill_random(t, spec), "fill_random", "10");
  spec.col0 = -1;
  EXPECT_THROW(backend->fill_random(t, spec), Error);
  spec.col0 = 0;
  spec.row0 = -2;
  EXPECT_THROW(backend->fill_random(t, spec), Error);
  spec.row0 = 0;
  spec.global_cols = 6;  // narrower than the view itself
  EXPECT_THROW(backend->fill_random(t, spec), Error);
}

constexpr int64_t kSamples = 100000;

std::vector<double> samples(Backend& backend, const RandomFill& spec) {
  Tensor t = poisoned(backend, Shape({kSamples / 250, 250}), DType::kF32);
  backend.fill_random(t, spec);
  return to_host(backend, t);
}

TEST(RandomFillTest, UniformIsInItsHalfOpenRangeWithFlatHistogram) {
  auto backend = make_cpu_backend();
  RandomFill spec;
  spec.distribution = Distribution::kUniform;
  spec.seed = 2718;
  spec.a = -0.75;
  spec.b = 2.5;
  const auto v = samples(*backend, spec);
  const double width = spec.b - spec.a;
  double sum = 0.0, lo = spec.b, hi = spec.a;
  std::vector<int64_t> bins(10, 0);
  for (double x : v) {
    ASSERT_GE(x, static_cast<float>(spec.a));
    ASSERT_LT(x, static_cast<float>(spec.b));
    sum += x;
    lo = std::min(lo, x);
    hi = std::max(hi, x);
    ++bins[std::min<int64_t>(9, static_cast<int64_t>((x - spec.a) / width * 10))];
  }
  const double n = static_cast<double>(v.size());
  const double mean_sigma = width / std::sqrt(12.0 * n);
  EXPECT_NEAR(sum / n, (spec.a + spec.b) / 2, 5 * mean_sigma);
  EXPECT_LT(lo - spec.a, 1e-3 * width);  // reaches both ends
  EXPECT_LT(spec.b - hi, 1e-3 * width);
  const double bin_sigma = std::sqrt(n * 0.1 * 0.9);
  for (int i = 0; i < 10; ++i) EXPECT_NEAR(bins[i], n / 10, 5 * bin_sigma) << "bin " << i;
}

TEST(RandomFillTest, NormalHasItsMeanStdAndShape) {
  auto backend = make_cpu_backend();
  RandomFill spec;
  spec.distribution = Distribution::kNormal;
  spec.seed = 314;
  spec.a = 0.3;  // mean
  spec.b = 1.7;  // standard deviation
  const auto v = samples(*backend, spec);
  const double n = static_cast<double>(v.size());
  double sum = 0.0;
  for (double x : v) {
    ASSERT_TRUE(std::isfinite(x));
    sum += x;
  }
  const double mean = sum / n;
  double sq = 0.0, fourth = 0.0;
  int64_t within_one = 0;
  for (double x : v) {
    const double d = x - mean;
    sq += d * d;
    fourth += d * d * d * d;
    within_one += std::abs(x - spec.a) < spec.b;
  }
  const double std = std::sqrt(sq / (n - 1));
  EXPECT_NEAR(mean, spec.a, 5 * spec.b / std::sqrt(n));
  EXPECT_NEAR(std, spec.b, 5 * spec.b / std::sqrt(2 * n));
  // Kurtosis 3 (a normal's), loosely: catches a uniform (1.8) or a wrong transform.
  EXPECT_NEAR(fourth / n / std::pow(sq / n, 2), 3.0, 0.1);
  const double p = 0.6826894921370859;  // P(|z| < 1)
  EXPECT_NEAR(within_one / n, p, 5 * std::sqrt(p * (1 - p) / n));
}

TEST(DeriveSeed, DiffersByNameAndBySeedAndIsStable) {
  EXPECT_EQ(derive_seed(1234, "mlp.fc1.weight"), derive_seed(1234, "mlp.fc1.weight"));
  EXPECT_NE(derive_seed(1234, "mlp.fc1.weight"), derive_seed(1234, "mlp.fc2.weight"));
  EXPECT_NE(derive_seed(1234, "mlp.fc1.weight"), derive_seed(1234, "mlp.fc1.bias"));
  EXPECT_NE(derive_seed(1234, "a"), derive_seed(1234, "b"));
  EXPECT_NE(derive_seed(1234, "ab"), derive_seed(1234, "ba"));
  EXPECT_NE(derive_seed(1234, ""), derive_seed(1234, "a"));
  EXPECT_NE(derive_seed(1234, "w"), derive_seed(1235, "w"));
  EXPECT_NE(derive_seed(0, "w"), derive_seed(1, "w"));
  EXPECT_NE(derive_seed(0, "w"), derive_seed(1ull << 32, "w"));
  // Many neighbouring seeds and names: all distinct.
  std::set<uint64_t> seen;
  const char* names[] = {"", "w", "weight", "bias", "layers.0.weight", "layers.1.weight"};
  for (uint64_t seed = 0; seed < 100; ++seed) {
    for (const char* name : names) seen.insert(derive_seed(seed, name));
  }
  EXPECT_EQ(seen.size(), 600u);
}

}  // namespace
}  // namespace weft
