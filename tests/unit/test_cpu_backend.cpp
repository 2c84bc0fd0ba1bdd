// Unit tests of CpuBackend: GEMM with every epilogue against double-precision loops, the copy and
// elementwise ops, and the argument checks. Outputs are poisoned with NaN before each op.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "unit/unit_util.hpp"
#include "weft/weft.hpp"

namespace weft {
namespace {

using testing::from_host;
using testing::max_rel_error;
using testing::poisoned;
using testing::random_tensor;
using testing::reference_gelu;
using testing::reference_gelu_grad;
using testing::reference_matmul;
using testing::to_host;
using testing::tolerance;

const DType kDtypes[] = {DType::kF32, DType::kBF16, DType::kF16};

// --- GEMM against the double reference ----------------------------------------------------------

struct GemmCase {
  DType in = DType::kF32;
  DType out = DType::kF32;
  bool ta = false, tb = false;
  int64_t m = 37, n = 53, k = 29;
  float alpha = 1.0f, beta = 0.0f;
  Epilogue epilogue = Epilogue::kNone;
  bool save_gelu_input = false;
};

const char* epilogue_name(Epilogue e) {
  switch (e) {
    case Epilogue::kNone:
      return "None";
    case Epilogue::kBias:
      return "Bias";
    case Epilogue::kGelu:
      return "Gelu";
    case Epilogue::kBiasGelu:
      return "BiasGelu";
    case Epilogue::kBiasGrad:
      return "BiasGrad";
  }
  return "Unknown";
}

std::string scalar_name(float v) {
  std::string s = std::to_string(v);
  s.erase(s.find_last_not_of('0') + 1);
  if (s.back() == '.') s.pop_back();
  for (char& c : s) {
    if (c == '.') c = 'p';
    if (c == '-') c = 'm';
  }
  return s;
}

std::string case_name(const GemmCase& c) {
  std::ostringstream os;
  os << dtype_name(c.in);
  if (c.out != c.in) os << "_to_" << dtype_name(c.out);
  os << "_" << (c.ta ? 'T' : 'N') << (c.tb ? 'T' : 'N') << "_" << c.m << "x" << c.n << "x" << c.k
     << "_" << epilogue_name(c.epilogue) << (c.save_gelu_input ? "Saved" : "") << "_alpha"
     << scalar_name(c.alpha) << "_beta" << scalar_name(c.beta);
  return os.str();
}

// Every C the kernel can produce for these inputs: inputs of `in`, C of `in` or f32.
std::vector<std::pair<DType, DType>> dtype_pairs() {
  return {{DType::kF32, DType::kF32},
          {DType::kBF16, DType::kBF16},
          {DType::kF16, DType::kF16},
          {DType::kBF16, DType::kF32},
          {DType::kF16, DType::kF32}};
}

std::vector<GemmCase> gemm_cases() {
  std::vector<GemmCase> cases;
  for (auto [in, out] : dtype_pairs()) {
    // Plain products, all four transpose combinations, odd and larger sizes.
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        GemmCase c;
        c.in = in;
        c.out = out;
        c.ta = ta;
        c.tb = tb;
        cases.push_back(c);
        c.m = 128;
        c.n = 96;
        c.k = 200;
        cases.push_back(c);
        // Scaling and accumulation into a random C.
        c.m = 37;
        c.n = 53;
        c.k = 29;
        c.alpha = 0.625f;
        cases.push_back(c);
        c.alpha = 1.0f;
        c.beta = 1.0f;
        cases.push_back(c);
        c.alpha = -1.5f;
        c.beta = 0.5f;
        cases.push_back(c);
      }
    }
    // Each epilogue, with and without scaling and accumulation.
    const std::pair<float, float> scalings[] = {
        {1.0f, 0.0f}, {1.0f, 1.0f}, {0.625f, 0.0f}, {-1.5f, 0.5f}};
    struct Ep {
      Epilogue epilogue;
      bool saved;
    };
    const Ep eps[] = {{Epilogue::kBias, false},    {Epilogue::kGelu, false},
                      {Epilogue::kGelu, true},     {Epilogue::kBiasGelu, false},
                      {Epilogue::kBiasGelu, true}, {Epilogue::kBiasGrad, false}};
    for (const Ep& ep : eps) {
      for (auto [alpha, beta] : scalings) {
        for (bool ta : {false, true}) {
          GemmCase c;
          c.in = in;
          c.out = out;
          c.ta = ta;
          c.tb = !ta;
          c.alpha = alpha;
          c.beta = beta;
          c.epilogue = ep.epilogue;
          c.save_gelu_input = ep.saved;
          cases.push_back(c);
        }
      }
      GemmCase big;
      big.in = in;
      big.out = out;
      big.m = 128;
      big.n = 96;
      big.k = 200;
      big.epilogue = ep.epilogue;
      big.save_gelu_input = ep.saved;
      cases.push_back(big);
    }
  }
  return cases;
}

// gtest prints a failing parameter with this instead of its bytes.
void PrintTo(const GemmCase& c, std::ostream* os) { *os << case_name(c); }

class GemmTest : public ::testing::TestWithParam<GemmCase> {};

TEST_P(GemmTest, MatchesDoubleReference) {
  const GemmCase& p = GetParam();
  auto backend = make_cpu_backend();
  const int64_t m = p.m, n = p.n, k = p.k;
  const uint64_t seed = std::hash<std::string>()(case_name(p));
  Tensor a = random_tensor(*backend, p.ta ? Shape({k, m}) : Shape({m, k}), p.in, seed + 1);
  Tensor b = random_tensor(*backend, p.tb ? Shape({n, k}) : Shape({k, n}), p.in, seed + 2);
  // beta == 0 means C is not read: poison it then, so a kernel that reads it fails.
  Tensor c = p.beta != 0.0f ? random_tensor(*backend, Shape({m, n}), p.out, seed + 3)
                            : poisoned(*backend, Shape({m, n}), p.out);
  Tensor bias = random_tensor(*backend, Shape({n}), p.out, seed + 4, 0.7);
  Tensor gelu_input = poisoned(*backend, Shape({m, n}), p.out);
  Tensor bias_grad = poisoned(*backend, Shape({m}), p.out);

  const std::vector<double> a_h = to_host(*backend, a), b_h = to_host(*backend, b);
  const std::vector<double> c0 = to_host(*backend, c), bias_h = to_host(*backend, bias);

  GemmArgs args;
  args.a = a;
  args.b = b;
  args.c = c;
  args.transpose_a = p.ta;
  args.transpose_b = p.tb;
  args.alpha = p.alpha;
  args.beta = p.beta;
  args.epilogue = p.epilogue;
  const bool wants_bias = p.epilogue == Epilogue::kBias || p.epilogue == Epilogue::kBiasGelu;
  const bool gelu = p.epilogue == Epilogue::kGelu || p.epilogue == Epilogue::kBiasGelu;
  if (wants_bias) args.bias = bias;
  if (p.save_gelu_input) args.gelu_input = gelu_input;
  if (p.epilogue == Epilogue::kBiasGrad) args.bias_grad = bias_grad;
  backend->gemm(args);

  // The pre-activation: alpha op(A) op(B) + beta C (+ bias), then the GeLU where asked.
  std::vector<double> pre = reference_matmul(a_h, b_h, m, n, k, p.ta, p.tb);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double& v = pre[i * n + j];
      v = p.alpha * v + (p.beta != 0.0f ? p.beta * c0[i * n + j] : 0.0);
      if (wants_bias) v += bias_h[j];
    }
  }
  std::vector<double> expected = pre;
  if (gelu) {
    for (double& v : expected) v = reference_gelu(v);
  }
  const double tol = tolerance(p.out);
  EXPECT_LE(max_rel_error(to_host(*backend, c), expected), tol) << "C of " << case_name(p);
  if (p.save_gelu_input) {
    EXPECT_LE(max_rel_error(to_host(*backend, gelu_input), pre), tol)
        << "gelu_input (the pre-activation) of " << case_name(p);
  }
  if (p.epilogue == Epilogue::kBiasGrad) {
    // bias_grad[i] = sum over the reduction dimension of op(A)[i, :].
    std::vector<double> sums(static_cast<size_t>(m), 0.0);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t kk = 0; kk < k; ++kk) sums[i] += p.ta ? a_h[kk * m + i] : a_h[i * k + kk];
    }
    EXPECT_LE(max_rel_error(to_host(*backend, bias_grad), sums), tol)
        << "bias_grad of " << case_name(p);
  }
}

INSTANTIATE_TEST_SUITE_P(Cpu, GemmTest, ::testing::ValuesIn(gemm_cases()),
                         [](const ::testing::TestParamInfo<GemmCase>& info) {
                           return case_name(info.param);
                         });

TEST(GemmTest, EmptyOutputIsANoOp) {
  auto backend = make_cpu_backend();
  Tensor a = random_tensor(*backend, Shape({0, 5}), DType::kF32, 1);
  Tensor b = random_tensor(*backend, Shape({5, 3}), DType::kF32, 2);
  Tensor c(*backend, Shape({0, 3}), DType::kF32);
  GemmArgs args;
  args.a = a;
  args.b = b;
  args.c = c;
  EXPECT_NO_THROW(backend->gemm(args));
}

TEST(GemmTest, RepeatedCallsWithCachedPrimitivesAgree) {
  // The primitive cache is keyed by shape, dtypes, epilogue and scalars: a second call with other
  // scalars must not reuse the first call's primitive.
  auto backend = make_cpu_backend();
  Tensor a = random_tensor(*backend, Shape({8, 6}), DType::kF32, 11);
  Tensor b = random_tensor(*backend, Shape({6, 4}), DType::kF32, 12);
  const auto ref =
      reference_matmul(to_host(*backend, a), to_host(*backend, b), 8, 4, 6, false, false);
  for (float alpha : {1.0f, 2.0f, 1.0f, -0.5f}) {
    Tensor c = poisoned(*backend, Shape({8, 4}), DType::kF32);
    GemmArgs args;
    args.a = a;
    args.b = b;
    args.c = c;
    args.alpha = alpha;
    backend->gemm(args);
    std::vector<double> expected = ref;
    for (double& v : expected) v *= alpha;
    EXPECT_LE(max_rel_error(to_host(*backend, c), expected), 1e-5) << "alpha " << alpha;
  }
}

// --- GEMM argument checks -----------------------------------------------------------------------

struct GemmOperands {
  Tensor a, b, c;
  GemmArgs args() const {
    GemmArgs g;
    g.a = a;
    g.b = b;
    g.c = c;
    return g;
  }
};

GemmOperands operands(Backend& backend, Shape a, Shape b, Shape c, DType da = DType::kF32,
                      DType db = DType::kF32, DType dc = DType::kF32) {
  return {random_tensor(backend, a, da, 1), random_tensor(backend, b, db, 2),
          poisoned(backend, c, dc)};
}

TEST(GemmErrors, MismatchedInnerDimensionsNameBothShapes) {
  auto backend = make_cpu_backend();
  auto ops = operands(*backend, Shape({4, 5}), Shape({6, 7}), Shape({4, 7}));
  EXPECT_WEFT_ERROR(backend->gemm(ops.args()), "[4, 5]", "[6, 7]", "inner");
  GemmArgs transposed = ops.args();
  transposed.transpose_b = true;  // op(B) = [7, 6]: k 5 vs 7
  EXPECT_WEFT_ERROR(backend->gemm(transposed), "[4, 5]", "[6, 7]", "transposed");
}

TEST(GemmErrors, WrongCShapeNamesCAndTheProductShape) {
  auto backend = make_cpu_backend();
  auto ops = operands(*backend, Shape({4, 5}), Shape({5, 7}), Shape({4, 8}));
  EXPECT_WEFT_ERROR(backend->gemm(ops.args()), "[4, 8]", "[4, 7]");
  auto ops2 = operands(*backend, Shape({5, 4}), Shape({5, 7}), Shape({5, 7}));
  GemmArgs args = ops2.args();
  args.transpose_a = true;  // op(A) op(B) = [4, 7]
  EXPECT_WEFT_ERROR(backend->gemm(args), "[5, 7]", "[4, 7]");
}

TEST(GemmErrors, DtypeMismatchNamesBothDtypes) {
  auto backend = make_cpu_backend();
  auto ops = operands(*backend, Shape({4, 5}), Shape({5, 7}), Shape({4, 7}), DType::kF32,
                      DType::kBF16, DType::kF32);
  EXPECT_WEFT_ERROR(backend->gemm(ops.args()), "f32", "bf16");
  // C may be the inputs' dtype or f32, nothing else.
  auto ops2 = operands(*backend, Shape({4, 5}), Shape({5, 7}), Shape({4, 7}), DType::kBF16,
                       DType::kBF16, DType::kF16);
  EXPECT_WEFT_ERROR(backend->gemm(ops2.args()), "f16", "bf16");
  auto ops3 = operands(*backend, Shape({4, 5}), Shape({5, 7}), Shape({4, 7}), DType::kF32,
                       DType::kF32, DType::kBF16);
  EXPECT_WEFT_ERROR(backend->gemm(ops3.args()), "bf16", "f32");
}

TEST(GemmErrors, EpilogueOperandsOfTheWrongSizeOrDtype) {
  auto backend = make_cpu_backend();
  auto ops = operands(*backend, Shape({4, 5}), Shape({5, 7}), Shape({4, 7}));
  Tensor short_bias = random_tensor(*backend, Shape({6}), DType::kF32, 3);
  for (Epilogue e : {Epilogue::kBias, Epilogue::kBiasGelu}) {
    GemmArgs args = ops.args();
    args.epilogue = e;
    args.bias = short_bias;
    EXPECT_WEFT_ERROR(backend->gemm(args), "bias", "f32[6]", "7");
  }
  Tensor bf16_bias = random_tensor(*backend, Shape({7}), DType::kBF16, 4);
  GemmArgs args = ops.args();
  args.epilogue = Epilogue::kBias;
  args.bias = bf16_bias;
  EXPECT_WEFT_ERROR(backend->gemm(args), "bias", "bf16[7]");
  args.bias = TensorView{};  // a bias epilogue without a bias
  EXPECT_WEFT_ERROR(backend->gemm(args), "bias");

  Tensor small_aux = poisoned(*backend, Shape({4, 6}), DType::kF32);
  args = ops.args();
  args.epilogue = Epilogue::kGelu;
  args.gelu_input = small_aux;
  EXPECT_WEFT_ERROR(backend->gemm(args), "gelu_input", "f32[4, 6]");
  Tensor aux = poisoned(*backend, Shape({4, 7}), DType::kF32);
  args = ops.args();
  args.gelu_input = aux;  // only GeLU epilogues write it
  EXPECT_WEFT_ERROR(backend->gemm(args), "gelu_input");

  Tensor long_grad = poisoned(*backend, Shape({5}), DType::kF32);
  args = ops.args();
  args.epilogue = Epilogue::kBiasGrad;
  args.bias_grad = long_grad;
  EXPECT_WEFT_ERROR(backend->gemm(args), "bias_grad", "f32[5]", "4");
}

TEST(GemmErrors, NonMatricesAndForeignMemory) {
  auto backend = make_cpu_backend();
  auto ops = operands(*backend, Shape({2, 4, 5}), Shape({5, 7}), Shape({8, 7}));
  EXPECT_WEFT_ERROR(backend->gemm(ops.args()), "2D", "[2, 4, 5]");
  auto ok = operands(*backend, Shape({4, 5}), Shape({5, 7}), Shape({4, 7}));
  GemmArgs args = ok.args();
  args.b.device = Device::cuda(0);
  EXPECT_WEFT_ERROR(backend->gemm(args), "cuda:0", "cpu");
  args = ok.args();
  args.a.data = nullptr;
  EXPECT_WEFT_ERROR(backend->gemm(args), "no data");
}

// --- copy, copy_columns, convert, fill ----------------------------------------------------------

std::vector<uint8_t> bytes_of(const TensorView& v) {
  const auto* p = static_cast<const uint8_t*>(v.data);
  return std::vector<uint8_t>(p, p + v.bytes());
}

TEST(CopyTest, CopiesEveryByteInEachDtype) {
  auto backend = make_cpu_backend();
  for (DType dtype : kDtypes) {
    for (const Shape& shape : {Shape({3, 5}), Shape({300, 257})}) {
      Tensor src = random_tensor(*backend, shape, dtype, 21);
      Tensor dst = poisoned(*backend, shape, dtype);
      backend->copy(dst, src);
      EXPECT_EQ(bytes_of(dst), bytes_of(src)) << dtype_name(dtype) << shape.str();
    }
  }
}

TEST(CopyTest, MismatchesThrowNamingShapesAndDtypes) {
  auto backend = make_cpu_backend();
  Tensor a = random_tensor(*backend, Shape({3, 5}), DType::kF32, 1);
  Tensor b = poisoned(*backend, Shape({5, 3}), DType::kF32);
  Tensor c = poisoned(*backend, Shape({3, 5}), DType::kBF16);
  EXPECT_WEFT_ERROR(backend->copy(b, a), "[5, 3]", "[3, 5]");
  EXPECT_WEFT_ERROR(backend->copy(c, a), "bf16", "f32");
  TensorView on_gpu = b.view().reshaped(Shape({3, 5}));
  on_gpu.device = Device::cuda(1);
  EXPECT_WEFT_ERROR(backend->copy(on_gpu, a), "cuda:1");
}

TEST(CopyColumnsTest, WritesIntoTheMiddleOfAWiderMatrixAndNothingElse) {
  auto backend = make_cpu_backend();
  for (DType dtype : kDtypes) {
    for (int64_t rows : {7, 400}) {
      const int64_t src_cols = 5, dst_cols = 212, cols = 180;
      const int64_t width = rows == 7 ? 3 : cols;  // a narrow and a wide (parallel) copy
      Tensor src = random_tensor(*backend, Shape({rows, rows == 7 ? src_cols : 190}), dtype, 31);
      Tensor dst = random_tensor(*backend, Shape({rows, dst_cols}), dtype, 32);
      const auto before = to_host(*backend, dst), s = to_host(*backend, src);
      const int64_t sc = src.shape().cols(), src_col = 1, dst_col = 6;
      backend->copy_columns(dst, dst_col, src, src_col, width);
      const auto after = to_host(*backend, dst);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < dst_cols; ++c) {
          const bool inside = c >= dst_col && c < dst_col + width;
          const double expected =
              inside ? s[r * sc + src_col + (c - dst_col)] : before[r * dst_cols + c];
          ASSERT_EQ(after[r * dst_cols + c], expected)
              << dtype_name(dtype) << " rows " << rows << " at (" << r << ", " << c << ")";
        }
      }
    }
  }
}

TEST(CopyColumnsTest, FoldsLeadingDimensionsAndChecksRanges) {
  auto backend = make_cpu_backend();
  Tensor src = random_tensor(*backend, Shape({2, 3, 4}), DType::kF32, 41);  // 6 x 4
  Tensor dst = poisoned(*backend, Shape({6, 4}), DType::kF32);
  backend->copy_columns(dst, 0, src, 0, 4);
  EXPECT_EQ(bytes_of(dst), bytes_of(src));
  EXPECT_WEFT_ERROR(backend->copy_columns(dst, 2, src, 0, 3), "[6, 4]", "out of range");
  EXPECT_WEFT_ERROR(backend->copy_columns(dst, 0, src, 2, 3), "[2, 3, 4]", "out of range");
  EXPECT_THROW(backend->copy_columns(dst, -1, src, 0, 1), Error);
  Tensor short_dst = poisoned(*backend, Shape({5, 4}), DType::kF32);
  EXPECT_WEFT_ERROR(backend->copy_columns(short_dst, 0, src, 0, 4), "[5, 4]", "[2, 3, 4]");
  Tensor bf16_dst = poisoned(*backend, Shape({6, 4}), DType::kBF16);
  EXPECT_WEFT_ERROR(backend->copy_columns(bf16_dst, 0, src, 0, 4), "bf16", "f32");
}

TEST(ConvertTest, EveryDtypePairRoundsToNearestEven) {
  auto backend = make_cpu_backend();
  for (DType from : kDtypes) {
    for (DType to : kDtypes) {
      for (const Shape& shape : {Shape({4, 9}), Shape({300, 257})}) {
        // Wide range, so that f32 -> f16 also meets overflow and subnormals.
        Tensor src = random_tensor(*backend, shape, from, 51, from == DType::kF16 ? 100.0 : 3e4);
        if (from == DType::kF32) {
          src.as<float>()[0] = 1e-6f;                        // an f16 subnormal
          src.as<float>()[1] = 7e4f;                         // beyond f16's range
          src.as<float>()[2] = 1.0f + std::ldexp(1.0f, -8);  // a bf16 tie
        }
        Tensor dst = poisoned(*backend, shape, to);
        backend->convert(dst, src);
        const auto expected = testing::rounded(to_host(*backend, src), to);
        const auto actual = to_host(*backend, dst);
        ASSERT_EQ(actual.size(), expected.size());
        for (size_t i = 0; i < actual.size(); ++i) {
          ASSERT_EQ(actual[i], expected[i])
              << dtype_name(from) << " -> " << dtype_name(to) << " element " << i;
        }
      }
    }
  }
}

TEST(ConvertTest, ShapeMismatchThrows) {
  auto backend = make_cpu_backend();
  Tensor src = random_tensor(*backend, Shape({4, 6}), DType::kF32, 1);
  Tensor dst = poisoned(*backend, Shape({6, 4}), DType::kBF16);
  EXPECT_WEFT_ERROR(backend->convert(dst, src), "[6, 4]", "[4, 6]");
}

TEST(FillTest, FillsEveryElementWithTheRoundedValue) {
  auto backend = make_cpu_backend();
  for (DType dtype : kDtypes) {
    Tensor t = random_tensor(*backend, Shape({5, 300}), dtype, 61);
    backend->fill(t, 0.3f);
    const double expected = testing::rounded({0.3}, dtype)[0];
    for (double v : to_host(*backend, t)) ASSERT_EQ(v, expected) << dtype_name(dtype);
    backend->fill(t, NAN);
    for (double v : to_host(*backend, t)) ASSERT_TRUE(std::isnan(v)) << dtype_name(dtype);
  }
}

// --- elementwise ops ----------------------------------------------------------------------------

TEST(AddTest, MatchesReferenceOutOfPlaceAndInPlace) {
  auto backend = make_cpu_backend();
  for (DType dtype : kDtypes) {
    for (const Shape& shape : {Shape({3, 7}), Shape({300, 257})}) {
      Tensor a = random_tensor(*backend, shape, dtype, 71);
      Tensor b = random_tensor(*backend, shape, dtype, 72, 0.5);
      const auto ah = to_host(*backend, a), bh = to_host(*backend, b);
      std::vector<double> expected(ah.size());
      for (size_t i = 0; i < ah.size(); ++i) expected[i] = ah[i] + bh[i];
      Tensor out = poisoned(*backend, shape, dtype);
      backend->add(out, a, b);
      EXPECT_LE(max_rel_error(to_host(*backend, out), expected), tolerance(dtype))
          << dtype_name(dtype) << shape.str();
      backend->add(b, a, b);  // out aliases b
      EXPECT_LE(max_rel_error(to_host(*backend, b), expected), tolerance(dtype));
      backend->add(a, a, a);  // out aliases both
      std::vector<double> doubled(ah.size());
      for (size_t i = 0; i < ah.size(); ++i) doubled[i] = 2 * ah[i];
      EXPECT_EQ(to_host(*backend, a), doubled) << dtype_name(dtype);
    }
  }
}

TEST(AddTest, MismatchedOperandsThrow) {
  auto backend = make_cpu_backend();
  Tensor a = random_tensor(*backend, Shape({3, 4}), DType::kF32, 1);
  Tensor b = random_tensor(*backend, Shape({4, 3}), DType::kF32, 2);
  Tensor c = random_tensor(*backend, Shape({3, 4}), DType::kBF16, 3);
  Tensor out = poisoned(*backend, Shape({3, 4}), DType::kF32);
  EXPECT_WEFT_ERROR(backend->add(out, a, b), "add", "[4, 3]", "[3, 4]");
  EXPECT_WEFT_ERROR(backend->add(out, a, c), "add", "bf16", "f32");
}

TEST(AddBiasTest, BroadcastsOverRowsOutOfPlaceAndInPlace) {
  auto backend = make_cpu_backend();
  for (DType dtype : kDtypes) {
    for (const Shape& shape : {Shape({2, 3, 10}), Shape({300, 257})}) {
      const int64_t cols = shape.cols();
      Tensor in = random_tensor(*backend, shape, dtype, 81);
      Tensor bias = random_tensor(*backend, Shape({cols}), dtype, 82);
      const auto ih = to_host(*backend, in), bh = to_host(*backend, bias);
      std::vector<double> expected(ih.size());
      for (size_t i = 0; i < ih.size(); ++i) expected[i] = ih[i] + bh[i % cols];
      Tensor out = poisoned(*backend, shape, dtype);
      backend->add_bias(out, in, bias);
      EXPECT_LE(max_rel_error(to_host(*backend, out), expected), tolerance(dtype))
          << dtype_name(dtype) << shape.str();
      backend->add_bias(in, in, bias);
      EXPECT_EQ(to_host(*backend, in), to_host(*backend, out)) << dtype_name(dtype);
    }
  }
}

TEST(AddBiasTest, WrongBiasThrowsNamingIt) {
  auto backend = make_cpu_backend();
  Tensor in = random_tensor(*backend, Shape({4, 10}), DType::kF32, 1);
  Tensor out = poisoned(*backend, Shape({4, 10}), DType::kF32);
  Tensor bias9 = random_tensor(*backend, Shape({9}), DType::kF32, 2);
  Tensor bias_bf16 = random_tensor(*backend, Shape({10}), DType::kBF16, 3);
  EXPECT_WEFT_ERROR(backend->add_bias(out, in, bias9), "f32[9]", "10");
  EXPECT_WEFT_ERROR(backend->add_bias(out, in, bias_bf16), "bf16[10]");
}

TEST(GeluTest, MatchesReferenceOutOfPlaceAndInPlace) {
  auto backend = make_cpu_backend();
  for (DType dtype : kDtypes) {
    for (const Shape& shape : {Shape({6, 11}), Shape({300, 257})}) {
      Tensor in = random_tensor(*backend, shape, dtype, 91, 2.5);  // reach both tails
      std::vector<double> expected = to_host(*backend, in);
      for (double& v : expected) v = reference_gelu(v);
      Tensor out = poisoned(*backend, shape, dtype);
      backend->gelu(out, in);
      EXPECT_LE(max_rel_error(to_host(*backend, out), expected), tolerance(dtype))
          << dtype_name(dtype) << shape.str();
      backend->gelu(in, in);
      EXPECT_EQ(to_host(*backend, in), to_host(*backend, out)) << dtype_name(dtype);
    }
  }
}

TEST(GeluTest, BackwardMatchesReferenceOutOfPlaceAndInPlace) {
  auto backend = make_cpu_backend();
  for (DType dtype : kDtypes) {
    for (const Shape& shape : {Shape({6, 11}), Shape({300, 257})}) {
      Tensor input = random_tensor(*backend, shape, dtype, 101, 2.5);
      Tensor grad_out = random_tensor(*backend, shape, dtype, 102);
      const auto xh = to_host(*backend, input), gh = to_host(*backend, grad_out);
      std::vector<double> expected(xh.size());
      for (size_t i = 0; i < xh.size(); ++i) expected[i] = gh[i] * reference_gelu_grad(xh[i]);
      Tensor grad_in = poisoned(*backend, shape, dtype);
      backend->gelu_backward(grad_in, grad_out, input);
      EXPECT_LE(max_rel_error(to_host(*backend, grad_in), expected), tolerance(dtype))
          << dtype_name(dtype) << shape.str();
      backend->gelu_backward(grad_out, grad_out, input);  // grad_in aliases grad_out
      EXPECT_EQ(to_host(*backend, grad_out), to_host(*backend, grad_in)) << dtype_name(dtype);
    }
  }
}

TEST(GeluTest, ReferenceGradientIsTheDerivativeOfTheReference) {
  const double h = 1e-5;
  for (double x = -6.0; x <= 6.0; x += 0.0625 + 1e-3) {
    const double fd = (reference_gelu(x + h) - reference_gelu(x - h)) / (2 * h);
    EXPECT_NEAR(reference_gelu_grad(x), fd, 1e-8) << "x = " << x;
  }
  // Known values of the tanh GeLU.
  EXPECT_NEAR(reference_gelu(1.0), 0.8411919906082768, 1e-12);
  EXPECT_NEAR(reference_gelu(-1.0), -0.15880800939172324, 1e-12);
  EXPECT_EQ(reference_gelu(0.0), 0.0);
  EXPECT_NEAR(reference_gelu_grad(0.0), 0.5, 1e-15);
}

TEST(GeluTest, BackendBackwardIsTheDerivativeOfBackendForward) {
  // Central differences of the backend's own f32 GeLU against its gelu_backward.
  auto backend = make_cpu_backend();
  const Shape shape({16, 64});
  const float h = 1e-2f;
  Tensor x = random_tensor(*backend, shape, DType::kF32, 111, 2.0);
  Tensor grad_out = random_tensor(*backend, shape, DType::kF32, 112);
  Tensor shift = poisoned(*backend, shape, DType::kF32);
  backend->fill(shift, h);
  Tensor x_plus = poisoned(*backend, shape, DType::kF32),
         x_minus = poisoned(*backend, shape, DType::kF32);
  backend->add(x_plus, x, shift);
  backend->fill(shift, -h);
  backend->add(x_minus, x, shift);
  Tensor y_plus = poisoned(*backend, shape, DType::kF32),
         y_minus = poisoned(*backend, shape, DType::kF32);
  backend->gelu(y_plus, x_plus);
  backend->gelu(y_minus, x_minus);
  Tensor grad_in = poisoned(*backend, shape, DType::kF32);
  backend->gelu_backward(grad_in, grad_out, x);
  const auto yp = to_host(*backend, y_plus), ym = to_host(*backend, y_minus);
  const auto xp = to_host(*backend, x_plus), xm = to_host(*backend, x_minus);
  const auto g = to_host(*backend, grad_out);
  std::vector<double> fd(yp.size());
  for (size_t i = 0; i < fd.size(); ++i) fd[i] = g[i] * (yp[i] - ym[i]) / (xp[i] - xm[i]);
  EXPECT_LE(max_rel_error(to_host(*backend, grad_in), fd), 1e-3);
}

TEST(ElementwiseErrors, GeluOperandsMustMatch) {
  auto backend = make_cpu_backend();
  Tensor a = random_tensor(*backend, Shape({3, 4}), DType::kF32, 1);
  Tensor b = poisoned(*backend, Shape({3, 5}), DType::kF32);
  Tensor c = poisoned(*backend, Shape({3, 4}), DType::kF16);
  EXPECT_WEFT_ERROR(backend->gelu(b, a), "gelu", "[3, 5]", "[3, 4]");
  EXPECT_WEFT_ERROR(backend->gelu_backward(c, a, a), "gelu_backward", "f16", "f32");
  EXPECT_WEFT_ERROR(backend->gelu_backward(a, a, b), "gelu_backward", "[3, 5]");
}

// --- backend plumbing ---------------------------------------------------------------------------

TEST(CpuBackendTest, IdentityStreamsAndAllocation) {
  auto backend = make_cpu_backend();
  EXPECT_EQ(backend->device(), Device::cpu());
  EXPECT_CONTAINS(backend->name(), "cpu");
  EXPECT_CONTAINS(backend->name(), "oneDNN");
  void* p = backend->allocate(1000);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
  backend->deallocate(p);
  auto stream = backend->create_stream(StreamPriority::kHigh);
  EXPECT_EQ(stream->native_handle(), nullptr);
  backend->set_stream(*stream);
  EXPECT_EQ(&backend->stream(), stream.get());
  auto event = backend->create_event();
  event->record(*stream);
  event->wait(backend->stream());
  event->synchronize();
  backend->synchronize();
  EXPECT_WEFT_ERROR(backend->set_stream(host_stream()), "set_stream");
  host_stream().synchronize();
}

TEST(CpuBackendTest, MakeBackendParsesItsSpec) {
  EXPECT_EQ(make_backend("cpu")->device(), Device::cpu());
  EXPECT_WEFT_ERROR(make_backend("gpu"), "'gpu'", "cpu, cuda or cuda:N");
  EXPECT_WEFT_ERROR(make_backend("cuda:x"), "'cuda:x'");
  EXPECT_WEFT_ERROR(make_backend("cuda:"), "'cuda:'");
#if !WEFT_HAVE_CUDA
  EXPECT_EQ(cuda_device_count(), 0);
  EXPECT_THROW(make_cuda_backend(0), Error);
  EXPECT_THROW(make_backend("cuda"), Error);
#endif
}

}  // namespace
}  // namespace weft
