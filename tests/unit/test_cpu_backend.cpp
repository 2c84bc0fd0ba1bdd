// Unit tests of CpuBackend: the GEMM and elementwise-op case tables (common/*_op_cases.cpp) on
// the CPU, the copy ops, primitive caching, and the argument checks. Outputs are poisoned with
// NaN before each op.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "common/gemm_op_cases.hpp"
#include "common/pointwise_op_cases.hpp"
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

// --- GEMM: the table of cases every backend runs (common/gemm_op_cases.cpp) ---------------------

using testing::GemmOpTest;
WEFT_INSTANTIATE_GEMM_CASES(Cpu, "cpu");

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

TEST(ConvertTest, ShapeMismatchThrows) {
  auto backend = make_cpu_backend();
  Tensor src = random_tensor(*backend, Shape({4, 6}), DType::kF32, 1);
  Tensor dst = poisoned(*backend, Shape({6, 4}), DType::kBF16);
  EXPECT_WEFT_ERROR(backend->convert(dst, src), "[6, 4]", "[4, 6]");
}

// --- elementwise ops: the table of cases every backend runs (common/pointwise_op_cases.cpp) -----

using testing::PointwiseOpTest;
WEFT_INSTANTIATE_POINTWISE_CASES(Cpu, "cpu");

TEST(AddTest, MismatchedOperandsThrow) {
  auto backend = make_cpu_backend();
  Tensor a = random_tensor(*backend, Shape({3, 4}), DType::kF32, 1);
  Tensor b = random_tensor(*backend, Shape({4, 3}), DType::kF32, 2);
  Tensor c = random_tensor(*backend, Shape({3, 4}), DType::kBF16, 3);
  Tensor out = poisoned(*backend, Shape({3, 4}), DType::kF32);
  EXPECT_WEFT_ERROR(backend->add(out, a, b), "add", "[4, 3]", "[3, 4]");
  EXPECT_WEFT_ERROR(backend->add(out, a, c), "add", "bf16", "f32");
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
