// The GEMM case table and its test, run on each backend its binary instantiates it for.
#include "common/gemm_op_cases.hpp"

#include <array>
#include <functional>
#include <map>
#include <mutex>
#include <ostream>
#include <set>
#include <sstream>
#include <utility>

#include "common/test_util.hpp"

namespace weft::testing {

namespace {

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

struct EpilogueCase {
  Epilogue epilogue;
  bool saved;  // gelu_input given
};

// Every C the kernels produce for these inputs: inputs of `in`, C of `in` or f32.
const std::pair<DType, DType> kDtypePairs[] = {{DType::kF32, DType::kF32},
                                               {DType::kBF16, DType::kBF16},
                                               {DType::kF16, DType::kF16},
                                               {DType::kBF16, DType::kF32},
                                               {DType::kF16, DType::kF32}};
const EpilogueCase kEpilogues[] = {{Epilogue::kNone, false},     {Epilogue::kBias, false},
                                   {Epilogue::kGelu, false},     {Epilogue::kGelu, true},
                                   {Epilogue::kBiasGelu, false}, {Epilogue::kBiasGelu, true},
                                   {Epilogue::kBiasGrad, false}};

GemmCase make_case(std::pair<DType, DType> dtypes, bool ta, bool tb, int64_t m, int64_t n,
                   int64_t k, EpilogueCase e, float alpha, float beta) {
  GemmCase c;
  c.in = dtypes.first;
  c.out = dtypes.second;
  c.ta = ta;
  c.tb = tb;
  c.m = m;
  c.n = n;
  c.k = k;
  c.epilogue = e.epilogue;
  c.save_gelu_input = e.saved;
  c.alpha = alpha;
  c.beta = beta;
  return c;
}

// The norm-wise tolerance of a case's outputs against the double reference. 16-bit C: 1e-2. f32
// C on the CPU: 1e-5 (oneDNN accumulates in f32; 16-bit inputs are exact in f32). On CUDA any
// 16-bit operand gives 1e-2, f32 1e-4, and 2e-3 with a fused GeLU: cuBLASLt may evaluate tanh
// with the hardware approximation (relative error about 2^-11), far from any mapping bug.
double gemm_tolerance(const GemmCase& p, const Backend& backend) {
  if (backend.device().is_cpu()) return tolerance(p.out);
  if (p.in != DType::kF32 || p.out != DType::kF32) return 1e-2;
  if (p.epilogue == Epilogue::kGelu || p.epilogue == Epilogue::kBiasGelu) return 2e-3;
  return 1e-4;
}

// A case's operands A and B (random, of its input dtype, as the backend stored them) and op(A)
// op(B) in double. Made once per backend and inputs and shared by the epilogue and scaling cases:
// drawing and multiplying them is most of a case's time.
struct Operands {
  std::vector<double> a, b, product;
};

const Operands& operands(Backend& backend, const std::string& key, const GemmCase& p) {
  static std::mutex mutex;
  static std::map<std::string, Operands> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  const int64_t m = p.m, n = p.n, k = p.k;
  const uint64_t seed = std::hash<std::string>()(key);
  Operands o;
  o.a = to_host(backend, random_tensor(backend, p.ta ? Shape({k, m}) : Shape({m, k}), p.in, seed));
  o.b = to_host(backend,
                random_tensor(backend, p.tb ? Shape({n, k}) : Shape({k, n}), p.in, seed + 1));
  // Streams rows of B (the largest products are 25M multiply-adds).
  o.product.assign(static_cast<size_t>(m * n), 0.0);
  std::vector<double> b_row(static_cast<size_t>(n));
  for (int64_t kk = 0; kk < k; ++kk) {
    for (int64_t j = 0; j < n; ++j) b_row[j] = p.tb ? o.b[j * k + kk] : o.b[kk * n + j];
    for (int64_t i = 0; i < m; ++i) {
      const double av = p.ta ? o.a[kk * m + i] : o.a[i * k + kk];
      double* row = o.product.data() + i * n;
      for (int64_t j = 0; j < n; ++j) row[j] += av * b_row[j];
    }
  }
  return cache.emplace(key, std::move(o)).first->second;
}

}  // namespace

std::string gemm_case_name(const GemmCase& c) {
  std::ostringstream os;
  os << dtype_name(c.in);
  if (c.out != c.in) os << "_to_" << dtype_name(c.out);
  os << "_" << (c.ta ? 'T' : 'N') << (c.tb ? 'T' : 'N') << "_" << c.m << "x" << c.n << "x" << c.k
     << "_" << epilogue_name(c.epilogue) << (c.save_gelu_input ? "Saved" : "") << "_alpha"
     << scalar_name(c.alpha) << "_beta" << scalar_name(c.beta);
  return os.str();
}

void PrintTo(const GemmCase& c, std::ostream* os) { *os << gemm_case_name(c); }

std::vector<GemmCase> gemm_cases() {
  std::vector<GemmCase> cases;
  for (const auto& dtypes : kDtypePairs) {
    for (int t = 0; t < 4; ++t) {
      const bool ta = (t & 1) != 0, tb = (t & 2) != 0;
      // Plain products, odd and larger sizes; scaling and accumulation into a random C.
      for (auto [alpha, beta] :
           {std::pair{1.0f, 0.0f}, {0.625f, 0.0f}, {1.0f, 1.0f}, {-1.5f, 0.5f}}) {
        cases.push_back(make_case(dtypes, ta, tb, 37, 53, 29, kEpilogues[0], alpha, beta));
      }
      cases.push_back(make_case(dtypes, ta, tb, 128, 96, 200, kEpilogues[0], 1.0f, 0.0f));
      // Every epilogue, beta 0 and 1, at odd sizes (no vectorized kernel fits, the GeLU input
      // falls back: n % 8 != 0), aligned ones (the fused cuBLASLt epilogues) and a larger one.
      for (const auto& size :
           {std::array<int64_t, 3>{37, 53, 29}, {64, 128, 96}, {192, 256, 520}}) {
        for (const EpilogueCase& e : kEpilogues) {
          for (float beta : {0.0f, 1.0f}) {
            cases.push_back(make_case(dtypes, ta, tb, size[0], size[1], size[2], e, 1.0f, beta));
          }
        }
      }
    }
    // Each epilogue with scaling and accumulation; alpha != 1 also checks that the bias gradient
    // is not scaled.
    for (const EpilogueCase& e : kEpilogues) {
      for (auto [alpha, beta] : {std::pair{0.625f, 0.0f}, {-1.5f, 0.5f}}) {
        for (bool ta : {false, true}) {
          cases.push_back(make_case(dtypes, ta, !ta, 37, 53, 29, e, alpha, beta));
        }
      }
      cases.push_back(make_case(dtypes, false, false, 128, 96, 200, e, 1.0f, 0.0f));
      if (dtypes.first == dtypes.second && dtypes.first != DType::kF16) {
        for (bool ta : {false, true}) {
          cases.push_back(make_case(dtypes, ta, false, 64, 128, 96, e, 0.75f, 1.0f));
        }
      }
    }
  }
  // One case a name (the lists above overlap).
  std::vector<GemmCase> unique;
  std::set<std::string> seen;
  for (const GemmCase& c : cases) {
    if (seen.insert(gemm_case_name(c)).second) unique.push_back(c);
  }
  return unique;
}

TEST_P(GemmOpTest, MatchesDoubleReference) {
  const GemmCase& p = op_case();
  Backend& be = backend();
  const int64_t m = p.m, n = p.n, k = p.k;
  const std::string name = gemm_case_name(p);
  std::ostringstream inputs;
  inputs << spec() << "_" << dtype_name(p.in) << p.ta << p.tb << "_" << m << "x" << n << "x" << k;
  const Operands& ops = operands(be, inputs.str(), p);
  const std::vector<double>&a_h = ops.a, &b_h = ops.b;
  Tensor a = from_host(be, p.ta ? Shape({k, m}) : Shape({m, k}), p.in,
                       [&](int64_t i) { return a_h[static_cast<size_t>(i)]; });
  Tensor b = from_host(be, p.tb ? Shape({n, k}) : Shape({k, n}), p.in,
                       [&](int64_t i) { return b_h[static_cast<size_t>(i)]; });
  // beta == 0 means C is not read: poison it then, so a kernel that reads it fails.
  const uint64_t seed = std::hash<std::string>()(name);
  Tensor c = p.beta != 0.0f ? random_tensor(be, Shape({m, n}), p.out, seed + 3)
                            : poisoned(be, Shape({m, n}), p.out);
  Tensor bias = random_tensor(be, Shape({n}), p.out, seed + 4, 0.7);
  Tensor gelu_input = poisoned(be, Shape({m, n}), p.out);
  Tensor bias_grad = poisoned(be, Shape({m}), p.out);
  const std::vector<double> c0 = to_host(be, c), bias_h = to_host(be, bias);

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
  be.gemm(args);

  // The pre-activation: alpha op(A) op(B) + beta C (+ bias), then the GeLU where asked.
  std::vector<double> pre = ops.product;
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
  const double tol = gemm_tolerance(p, be);
  EXPECT_LE(max_rel_error(to_host(be, c), expected), tol) << "C of " << name;
  if (p.save_gelu_input) {
    EXPECT_LE(max_rel_error(to_host(be, gelu_input), pre), tol)
        << "gelu_input (the pre-activation) of " << name;
  }
  if (p.epilogue == Epilogue::kBiasGrad) {
    // bias_grad[i] = sum over the reduction dimension of op(A)[i, :].
    std::vector<double> sums(static_cast<size_t>(m), 0.0);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t kk = 0; kk < k; ++kk) sums[i] += p.ta ? a_h[kk * m + i] : a_h[i * k + kk];
    }
    EXPECT_LE(max_rel_error(to_host(be, bias_grad), sums), tol) << "bias_grad of " << name;
  }
}

}  // namespace weft::testing
