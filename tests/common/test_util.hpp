// Test helpers: the GPU-or-skip rule, random and poisoned tensors, tensors from host values and
// back in double (on any backend), norm-wise relative error, naive references.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "weft/weft.hpp"

namespace weft::testing {

// WEFT_REQUIRE_GPU=1 (the GPU check): a missing GPU fails the CUDA tests instead of skipping them,
// so a machine that lost its GPU cannot pass by skipping.
inline bool gpu_required() {
  const char* value = std::getenv("WEFT_REQUIRE_GPU");
  return value != nullptr && std::string(value) == "1";
}

// Skips (or fails, under WEFT_REQUIRE_GPU=1) the current test when no GPU is visible. The skip
// message is what ctest's SKIP_REGULAR_EXPRESSION of the CUDA entries looks for.
#define WEFT_SKIP_WITHOUT_GPU()                                                                  \
  do {                                                                                           \
    if (::weft::cuda_device_count() == 0) {                                                      \
      if (::weft::testing::gpu_required()) FAIL() << "WEFT_REQUIRE_GPU=1 but no GPU is visible"; \
      GTEST_SKIP() << "no CUDA device visible (set WEFT_REQUIRE_GPU=1 to make this a failure)";  \
    }                                                                                            \
  } while (0)

// A tensor of N(0, std) (or uniform [lo, hi)) values from its own seed; never zeros or ones.
inline Tensor random_tensor(Backend& backend, const Shape& shape, DType dtype, uint64_t seed,
                            double std = 1.0) {
  Tensor t(backend, shape, dtype);
  backend.fill_random(t, RandomFill{Distribution::kNormal, seed, 0, 0.0, std});
  return t;
}

// A tensor whose every element is NaN, so that an op that writes nothing fails its check.
inline Tensor poisoned(Backend& backend, const Shape& shape, DType dtype) {
  Tensor t(backend, shape, dtype);
  backend.fill(t, NAN);
  return t;
}

// The values of any view (host or device) as doubles.
inline std::vector<double> to_host(Backend& backend, TensorView v) {
  Tensor host_copy;
  TensorView src = v;
  std::unique_ptr<Backend> cpu;
  if (!v.device.is_cpu()) {
    cpu = make_cpu_backend();
    host_copy = Tensor(*cpu, v.shape, v.dtype);
    backend.copy(host_copy, v);
    src = host_copy;
  }
  std::vector<double> out(static_cast<size_t>(src.numel()));
  for (size_t i = 0; i < out.size(); ++i) {
    switch (src.dtype) {
      case DType::kF32:
        out[i] = src.as<float>()[i];
        break;
      case DType::kBF16:
        out[i] = bf16_to_float(src.as<bf16_t>()[i]);
        break;
      case DType::kF16:
        out[i] = f16_to_float(src.as<f16_t>()[i]);
        break;
      case DType::kI32:
        out[i] = src.as<int32_t>()[i];
        break;
    }
  }
  return out;
}

// A tensor of `backend` (any engine) holding value(i) at flat index i, rounded to `dtype`: written
// in host memory, then copied over.
inline Tensor from_host(Backend& backend, const Shape& shape, DType dtype,
                        const std::function<double(int64_t)>& value) {
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  Tensor host(*cpu, shape, dtype), f32(*cpu, shape, DType::kF32);
  for (int64_t i = 0; i < shape.numel(); ++i) {
    if (dtype == DType::kI32) {
      host.as<int32_t>()[i] = static_cast<int32_t>(value(i));
    } else {
      f32.as<float>()[i] = static_cast<float>(value(i));
    }
  }
  if (dtype != DType::kI32) cpu->convert(host, f32);
  Tensor out(backend, shape, dtype);
  backend.copy(out, host);
  return out;
}

// Element i of a dense view, as a view of one element.
inline TensorView element(TensorView v, int64_t i) {
  return TensorView{static_cast<char*>(v.data) + static_cast<size_t>(i) * dtype_size(v.dtype),
                    Shape({1}), v.dtype, v.device};
}
// One f32 element read or written through the backend (host or device memory).
inline float read_scalar(Backend& backend, TensorView one) {
  float value = 0.0f;
  backend.copy(TensorView{&value, Shape({1}), DType::kF32, Device::cpu()}, one);
  return value;
}
inline void write_scalar(Backend& backend, TensorView one, float value) {
  backend.copy(one, TensorView{&value, Shape({1}), DType::kF32, Device::cpu()});
}

// A backend tensor of i32 token ids.
inline Tensor ids_tensor(Backend& backend, const std::vector<int32_t>& ids) {
  return from_host(backend, Shape({static_cast<int64_t>(ids.size())}), DType::kI32,
                   [&](int64_t i) { return ids[static_cast<size_t>(i)]; });
}

// max |actual - expected| / max |expected|: norm-wise, so that entries near zero do not blow up,
// yet a wrong shard, a missing reduction or a transposed weight gives O(1). Any NaN, any
// size mismatch or an all-zero reference gives infinity: they never pass.
inline double max_rel_error(const std::vector<double>& actual,
                            const std::vector<double>& expected) {
  const double inf = std::numeric_limits<double>::infinity();
  if (actual.size() != expected.size()) return inf;
  double max_diff = 0.0, max_ref = 0.0;
  for (size_t i = 0; i < actual.size(); ++i) {
    if (std::isnan(actual[i]) || std::isnan(expected[i])) return inf;
    max_diff = std::max(max_diff, std::abs(actual[i] - expected[i]));
    max_ref = std::max(max_ref, std::abs(expected[i]));
  }
  if (max_ref == 0.0) return actual.empty() ? 0.0 : inf;
  return max_diff / max_ref;
}

// The tolerance the project sets for a dtype (README, "Tests"): f32 at rounding level, 16-bit
// formats at 1e-2.
inline double tolerance(DType dtype) { return dtype == DType::kF32 ? 1e-5 : 1e-2; }

// Rounds every value to what `dtype` can hold (the reference sees the inputs the kernel sees).
inline std::vector<double> rounded(std::vector<double> v, DType dtype) {
  for (double& x : v) {
    if (dtype == DType::kBF16) x = bf16_to_float(float_to_bf16(static_cast<float>(x)));
    if (dtype == DType::kF16) x = f16_to_float(float_to_f16(static_cast<float>(x)));
    if (dtype == DType::kF32) x = static_cast<float>(x);
  }
  return v;
}

// C[m x n] = op(A) op(B) in double, row-major, A stored (ta ? k x m : m x k), B (tb ? n x k : k x
// n).
inline std::vector<double> reference_matmul(const std::vector<double>& a,
                                            const std::vector<double>& b, int64_t m, int64_t n,
                                            int64_t k, bool ta, bool tb) {
  std::vector<double> c(static_cast<size_t>(m * n), 0.0);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double s = 0.0;
      for (int64_t p = 0; p < k; ++p) {
        s += (ta ? a[p * m + i] : a[i * k + p]) * (tb ? b[j * k + p] : b[p * n + j]);
      }
      c[i * n + j] = s;
    }
  }
  return c;
}

inline double reference_gelu(double x) {
  return 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}
inline double reference_gelu_grad(double x) {
  const double t = std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x));
  return 0.5 * (1.0 + t) +
         0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3 * 0.044715 * x * x);
}

// An attention problem: `seq` positions of `batch` sequences, `heads` query heads reading
// `kv_heads` key/value heads of head_dim; scale 0: 1/sqrt(head_dim).
inline AttentionShape attention_shape(int64_t seq, int64_t batch, int64_t heads, int64_t kv_heads,
                                      int64_t head_dim, float scale = 0.0f) {
  return AttentionShape{seq, batch, heads, kv_heads, head_dim, scale};
}

// Columns [col0, col0 + cols) of a row-major [rows, total_cols] matrix.
inline std::vector<double> column_block(const std::vector<double>& m, int64_t rows,
                                        int64_t total_cols, int64_t col0, int64_t cols) {
  std::vector<double> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = m[r * total_cols + col0 + c];
  }
  return out;
}

}  // namespace weft::testing
