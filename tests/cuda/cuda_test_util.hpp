// Helpers of the CUDA tests: the skip-or-fail rule without a GPU, host/device transfers,
// random inputs, and comparisons that never let a NaN pass.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/backend_op_test.hpp"
#include "weft/backend.hpp"
#include "weft/comm.hpp"
#include "weft/dtype.hpp"
#include "weft/rng.hpp"
#include "weft/tensor.hpp"

namespace weft::test {

// Every CUDA test derives from this: without a GPU it is skipped, or fails when the GPU check
// (WEFT_REQUIRE_GPU=1) expects one, so a machine that lost its GPU cannot pass by skipping.
template <typename Base>
class CudaFixture : public Base {
 protected:
  void SetUp() override {
    WEFT_SKIP_WITHOUT_GPU();
    cpu_ = make_cpu_backend();
    cuda_ = make_cuda_backend(0);
  }

  Backend& cpu() { return *cpu_; }
  Backend& cuda() { return *cuda_; }

  // A host tensor of `dtype` filled from the global random matrix named by `seed`.
  Tensor random_host(const Shape& shape, DType dtype, uint64_t seed,
                     Distribution distribution = Distribution::kNormal) {
    Tensor t(cpu(), shape, dtype);
    RandomFill spec;
    spec.distribution = distribution;
    spec.seed = seed;
    if (distribution == Distribution::kUniform) {
      spec.a = -2.0;
      spec.b = 3.0;
    }
    cpu().fill_random(t, spec);
    return t;
  }
  // A device copy of a host tensor.
  Tensor to_device(const Tensor& host) {
    Tensor t(cuda(), host.shape(), host.dtype());
    cuda().copy(t, host);
    return t;
  }
  // A device tensor poisoned with NaN, so that an op that writes nothing cannot pass.
  Tensor poisoned_device(const Shape& shape, DType dtype) {
    Tensor t(cuda(), shape, dtype);
    cuda().fill(t, NAN);
    return t;
  }
  // The raw bytes of a view on either backend (synchronizes the CUDA stream).
  std::vector<unsigned char> bytes_of(const TensorView& view) {
    std::vector<unsigned char> out(view.bytes());
    if (out.empty()) return out;
    if (view.device.is_cpu()) {
      std::memcpy(out.data(), view.data, out.size());
      return out;
    }
    Tensor host(cpu(), view.shape, view.dtype);
    cuda().copy(host, view);
    cuda().synchronize();
    std::memcpy(out.data(), host.data(), out.size());
    return out;
  }
  // The values of a view on either backend, as floats.
  std::vector<float> floats_of(const TensorView& view) {
    const std::vector<unsigned char> raw = bytes_of(view);
    std::vector<float> out(static_cast<size_t>(view.numel()));
    for (size_t i = 0; i < out.size(); ++i) {
      switch (view.dtype) {
        case DType::kF32: {
          float v;
          std::memcpy(&v, raw.data() + 4 * i, 4);
          out[i] = v;
          break;
        }
        case DType::kBF16: {
          bf16_t v;
          std::memcpy(&v.bits, raw.data() + 2 * i, 2);
          out[i] = to_float(v);
          break;
        }
        case DType::kF16: {
          f16_t v;
          std::memcpy(&v.bits, raw.data() + 2 * i, 2);
          out[i] = to_float(v);
          break;
        }
        case DType::kI32: {
          int32_t v;
          std::memcpy(&v, raw.data() + 4 * i, 4);
          out[i] = static_cast<float>(v);
          break;
        }
      }
    }
    return out;
  }

  std::unique_ptr<Backend> cpu_;
  std::unique_ptr<Backend> cuda_;
};

using CudaTest = CudaFixture<::testing::Test>;

// A CUDA fixture with an NCCL communicator of one rank on device 0 (bootstrapped through the
// self communicator: these tests run without mpirun).
class NcclTest : public CudaTest {
 protected:
  void SetUp() override {
    CudaTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    bootstrap_ = make_self_communicator();
    nccl_ = make_nccl_communicator(*bootstrap_, 0);
  }
  void TearDown() override {
    nccl_.reset();  // before the backends of the fixture
    bootstrap_.reset();
  }
  Communicator& nccl() { return *nccl_; }

  std::unique_ptr<Communicator> bootstrap_;
  std::unique_ptr<Communicator> nccl_;
};

// |got - want| <= rtol * (|want| + max|want|) elementwise: relative to the element, with a floor
// relative to the tensor's scale, so that values that cancel to near zero are judged against the
// magnitude of what was summed. NaN or inf on either side fails.
inline ::testing::AssertionResult all_close(const std::vector<float>& got,
                                            const std::vector<float>& want, double rtol) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << "sizes differ: " << got.size() << " vs " << want.size();
  }
  double scale = 0.0;
  for (float w : want) {
    if (std::isfinite(w)) scale = std::max(scale, static_cast<double>(std::fabs(w)));
  }
  size_t bad = 0;
  std::string first;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = got[i];
    const double w = want[i];
    const bool ok =
        std::isfinite(g) && std::isfinite(w) && std::fabs(g - w) <= rtol * (std::fabs(w) + scale);
    if (!ok) {
      if (bad < 5) {
        first += " [" + std::to_string(i) + "] got " + std::to_string(g) + " want " +
                 std::to_string(w) + ";";
      }
      ++bad;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << got.size() << " elements differ (rtol "
                                       << rtol << ", scale " << scale << "):" << first;
}

// Equal storage bits, element by element.
inline ::testing::AssertionResult bitwise_equal(const std::vector<unsigned char>& got,
                                                const std::vector<unsigned char>& want) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << "sizes differ: " << got.size() << " vs " << want.size();
  }
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != want[i]) {
      return ::testing::AssertionFailure()
             << "byte " << i << " differs: " << int(got[i]) << " vs " << int(want[i]);
    }
  }
  return ::testing::AssertionSuccess();
}

// At most `ulps` units in the last place apart in the storage format (same sign), no NaN.
inline ::testing::AssertionResult within_ulps(const std::vector<unsigned char>& got,
                                              const std::vector<unsigned char>& want, DType dtype,
                                              int64_t ulps) {
  const size_t width = dtype_size(dtype);
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << "sizes differ: " << got.size() << " vs " << want.size();
  }
  for (size_t i = 0; i < got.size() / width; ++i) {
    uint32_t g = 0;
    uint32_t w = 0;
    std::memcpy(&g, got.data() + i * width, width);
    std::memcpy(&w, want.data() + i * width, width);
    const uint32_t sign_bit = width == 4 ? 0x80000000u : 0x8000u;
    const uint32_t exp_mask =
        width == 4 ? 0x7f800000u : (dtype == DType::kBF16 ? 0x7f80u : 0x7c00u);
    const bool nan_or_inf = (g & exp_mask) == exp_mask || (w & exp_mask) == exp_mask;
    const int64_t distance =
        std::llabs(static_cast<int64_t>(g & ~sign_bit) - static_cast<int64_t>(w & ~sign_bit));
    const bool same_sign = (g & sign_bit) == (w & sign_bit) || ((g | w) & ~sign_bit) == 0;
    if (nan_or_inf || !same_sign || distance > ulps) {
      return ::testing::AssertionFailure() << "element " << i << " differs by " << distance
                                           << " ulps (bits " << g << " vs " << w << ")";
    }
  }
  return ::testing::AssertionSuccess();
}

inline const char* short_name(DType dtype) { return dtype_name(dtype); }

// fp32 1e-5 to 1e-4, 16-bit formats 1e-2 (README, "Tests").
inline double dtype_rtol(DType dtype, double f32_rtol) {
  return dtype == DType::kF32 ? f32_rtol : 1e-2;
}

}  // namespace weft::test
