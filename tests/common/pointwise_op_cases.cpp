// The elementwise-op case table and its test, run on each backend its binary instantiates it for.
#include "common/pointwise_op_cases.hpp"

#include <functional>
#include <ostream>

#include "common/test_util.hpp"

namespace weft::testing {

namespace {

const char* op_name(PointwiseOp op) {
  switch (op) {
    case PointwiseOp::kAdd:
      return "add";
    case PointwiseOp::kAddBias:
      return "add_bias";
    case PointwiseOp::kGelu:
      return "gelu";
    case PointwiseOp::kGeluBackward:
      return "gelu_backward";
  }
  return "unknown";
}

// Norm-wise against the double reference. 16-bit: 1e-2. f32: 1e-5 on the CPU; on CUDA 1e-6 for
// the sums and 1e-5 for the GeLU (its tanh).
double pointwise_tolerance(const PointwiseCase& c, const Backend& backend) {
  if (backend.device().is_cpu() || c.dtype != DType::kF32) return tolerance(c.dtype);
  return c.op == PointwiseOp::kAdd || c.op == PointwiseOp::kAddBias ? 1e-6 : 1e-5;
}

Tensor input(Backend& backend, const PointwiseCase& c, const Shape& shape, uint64_t seed,
             double std) {
  if (!c.uniform) return random_tensor(backend, shape, c.dtype, seed, std);
  Tensor t(backend, shape, c.dtype);
  backend.fill_random(t, RandomFill{Distribution::kUniform, seed, 0, -2.0, 3.0});
  return t;
}

}  // namespace

std::string pointwise_case_name(const PointwiseCase& c) {
  std::string name = std::string(op_name(c.op)) + "_" + dtype_name(c.dtype);
  for (int64_t d : c.shape.dims()) name += "_" + std::to_string(d);
  return name + (c.uniform ? "_uniform" : "");
}

void PrintTo(const PointwiseCase& c, std::ostream* os) { *os << pointwise_case_name(c); }

std::vector<PointwiseCase> pointwise_cases() {
  // Odd shapes, one large enough for the threaded loops, leading dimensions folded into rows.
  const std::vector<Shape> add_shapes = {Shape({3, 7}), Shape({33, 65}), Shape({300, 257})};
  const std::vector<Shape> bias_shapes = {Shape({2, 3, 10}), Shape({2, 17, 39}), Shape({300, 257})};
  const std::vector<Shape> gelu_shapes = {Shape({6, 11}), Shape({300, 257})};
  std::vector<PointwiseCase> cases;
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (const Shape& s : add_shapes) cases.push_back({PointwiseOp::kAdd, dtype, s, false});
    for (const Shape& s : bias_shapes) cases.push_back({PointwiseOp::kAddBias, dtype, s, false});
    for (PointwiseOp op : {PointwiseOp::kGelu, PointwiseOp::kGeluBackward}) {
      for (const Shape& s : gelu_shapes) cases.push_back({op, dtype, s, false});
      cases.push_back({op, dtype, Shape({29, 71}), true});
    }
  }
  return cases;
}

// Out of place against the reference (outputs poisoned first); in place (the output aliasing an
// input) equal to out of place.
TEST_P(PointwiseOpTest, MatchesDoubleReferenceOutOfPlaceAndInPlace) {
  const PointwiseCase& c = op_case();
  Backend& be = backend();
  const Shape& shape = c.shape;
  const uint64_t seed = std::hash<std::string>()(pointwise_case_name(c));
  const double tol = pointwise_tolerance(c, be);
  Tensor out = poisoned(be, shape, c.dtype);
  switch (c.op) {
    case PointwiseOp::kAdd: {
      Tensor a = input(be, c, shape, seed, 1.0), b = input(be, c, shape, seed + 1, 0.5);
      const auto ah = to_host(be, a), bh = to_host(be, b);
      std::vector<double> expected(ah.size()), doubled(ah.size());
      for (size_t i = 0; i < ah.size(); ++i) {
        expected[i] = ah[i] + bh[i];
        doubled[i] = 2 * ah[i];
      }
      be.add(out, a, b);
      EXPECT_LE(max_rel_error(to_host(be, out), expected), tol);
      be.add(b, a, b);  // out aliases b
      EXPECT_EQ(to_host(be, b), to_host(be, out));
      be.add(a, a, a);  // out aliases both
      EXPECT_EQ(to_host(be, a), doubled);
      break;
    }
    case PointwiseOp::kAddBias: {
      const int64_t cols = shape.cols();
      Tensor in = input(be, c, shape, seed, 1.0), bias = input(be, c, Shape({cols}), seed + 1, 1.0);
      const auto ih = to_host(be, in), bh = to_host(be, bias);
      std::vector<double> expected(ih.size());
      for (size_t i = 0; i < ih.size(); ++i) expected[i] = ih[i] + bh[i % cols];
      be.add_bias(out, in, bias);
      EXPECT_LE(max_rel_error(to_host(be, out), expected), tol);
      be.add_bias(in, in, bias);
      EXPECT_EQ(to_host(be, in), to_host(be, out));
      break;
    }
    case PointwiseOp::kGelu: {
      Tensor in = input(be, c, shape, seed, 2.5);  // reaches both tails
      std::vector<double> expected = to_host(be, in);
      for (double& v : expected) v = reference_gelu(v);
      be.gelu(out, in);
      EXPECT_LE(max_rel_error(to_host(be, out), expected), tol);
      be.gelu(in, in);
      EXPECT_EQ(to_host(be, in), to_host(be, out));
      break;
    }
    case PointwiseOp::kGeluBackward: {
      Tensor x = input(be, c, shape, seed, 2.5);
      Tensor grad_out = random_tensor(be, shape, c.dtype, seed + 1);
      const auto xh = to_host(be, x), gh = to_host(be, grad_out);
      std::vector<double> expected(xh.size());
      for (size_t i = 0; i < xh.size(); ++i) expected[i] = gh[i] * reference_gelu_grad(xh[i]);
      be.gelu_backward(out, grad_out, x);
      EXPECT_LE(max_rel_error(to_host(be, out), expected), tol);
      be.gelu_backward(grad_out, grad_out, x);  // grad_in aliases grad_out
      EXPECT_EQ(to_host(be, grad_out), to_host(be, out));
      break;
    }
  }
}

}  // namespace weft::testing
