// CpuBackend: host memory, synchronous streams, OpenMP loops for the elementwise ops.
#include "backend/cpu/cpu_backend.hpp"

#include <cstdlib>
#include <cstring>

#include "backend/backend_checks.hpp"
#include "backend/cpu/onednn.hpp"
#include "backend/dtype_dispatch.hpp"
#include "backend/pointwise_math.hpp"
#include "weft/error.hpp"

namespace weft {

namespace {

// Work on the CPU completes inside each call, so ordering between streams is already given.
class CpuStream final : public Stream {
 public:
  void synchronize() override {}
  void* native_handle() const override { return nullptr; }
};

class CpuEvent final : public Event {
 public:
  void record(Stream&) override {}
  void wait(Stream&) override {}
  void synchronize() override {}
};

}  // namespace

CpuBackend::CpuBackend()
    : default_stream_(std::make_unique<CpuStream>()),
      current_(default_stream_.get()),
      onednn_(std::make_unique<OneDnn>()) {}

CpuBackend::~CpuBackend() = default;

std::string CpuBackend::name() const { return "cpu (" + onednn_->version() + ")"; }

void* CpuBackend::allocate(size_t bytes) {
  void* ptr = pool_.allocate(bytes);
  if (poison_allocations()) std::memset(ptr, 0xff, HostMemoryPool::size_class(bytes));
  return ptr;
}

void CpuBackend::deallocate(void* ptr) noexcept { pool_.deallocate(ptr); }

void CpuBackend::set_stream(Stream& stream) {
  WEFT_CHECK(dynamic_cast<CpuStream*>(&stream) != nullptr,
             "set_stream: the CPU backend only runs on streams it created");
  current_ = &stream;
}

std::unique_ptr<Stream> CpuBackend::create_stream(StreamPriority) {
  return std::make_unique<CpuStream>();
}

std::unique_ptr<Event> CpuBackend::create_event() { return std::make_unique<CpuEvent>(); }

void CpuBackend::copy(TensorView dst, TensorView src) {
  check_on_device(dst, device(), "copy", "dst");
  check_on_device(src, device(), "copy", "src");
  check_same_layout(dst, src, "copy", "dst", "src");
  if (dst.data != src.data && dst.bytes() > 0) std::memcpy(dst.data, src.data, dst.bytes());
}

void CpuBackend::copy_columns(TensorView dst, int64_t dst_col, TensorView src, int64_t src_col,
                              int64_t cols) {
  check_on_device(dst, device(), "copy_columns", "dst");
  check_on_device(src, device(), "copy_columns", "src");
  check_copy_columns_args(dst, dst_col, src, src_col, cols);
  const int64_t rows = dst.shape.rows();
  const size_t es = dtype_size(dst.dtype);
  const size_t dst_pitch = dst.shape.cols() * es, src_pitch = src.shape.cols() * es;
  char* d = static_cast<char*>(dst.data) + dst_col * es;
  const char* s = static_cast<const char*>(src.data) + src_col * es;
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
  for (int64_t r = 0; r < rows; ++r) std::memcpy(d + r * dst_pitch, s + r * src_pitch, cols * es);
}

void CpuBackend::convert(TensorView dst, TensorView src) {
  check_convert_args(dst, src, device());
  const int64_t n = dst.numel();
  dispatch_storage(src.dtype, [&](auto src_tag) {
    using TS = typename decltype(src_tag)::type;
    dispatch_storage(dst.dtype, [&](auto dst_tag) {
      using TD = typename decltype(dst_tag)::type;
      const TS* s = src.as<TS>();
      TD* d = dst.as<TD>();
#pragma omp parallel for schedule(static) if (n > 65536)
      for (int64_t i = 0; i < n; ++i) d[i] = from_float<TD>(to_float(s[i]));
    });
  });
}

void CpuBackend::fill(TensorView dst, float value) {
  check_on_device(dst, device(), "fill", "dst");
  const int64_t n = dst.numel();
  dispatch_storage(dst.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T v = from_float<T>(value);
    T* d = dst.as<T>();
    for (int64_t i = 0; i < n; ++i) d[i] = v;
  });
}

void CpuBackend::fill_random(TensorView dst, const RandomFill& spec) {
  check_on_device(dst, device(), "fill_random", "dst");
  const int64_t rows = dst.shape.rows(), cols = dst.shape.cols();
  const int64_t global_cols = check_fill_random_args(dst, spec);
  dispatch_storage(dst.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* d = dst.as<T>();
#pragma omp parallel for schedule(static) if (rows * cols > 16384)
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        d[r * cols + c] =
            from_float<T>(random_value(spec, global_cols, spec.row0 + r, spec.col0 + c));
      }
    }
  });
}

void CpuBackend::gemm(const GemmArgs& args) { onednn_->matmul(args); }

namespace {
// Applies fn(i, TypeTag<T>) -> float to every element of `out` (same dtype T for all operands).
template <typename Fn>
void elementwise(const TensorView& out, Fn&& fn) {
  const int64_t n = out.numel();
  dispatch_storage(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* o = out.as<T>();
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) o[i] = from_float<T>(fn(i, tag));
  });
}
template <typename T>
float at(const TensorView& v, int64_t i) {
  return to_float(v.as<T>()[i]);
}
}  // namespace

void CpuBackend::add(TensorView out, TensorView a, TensorView b) {
  check_add_args(out, a, b, device());
  elementwise(out, [&](int64_t i, auto tag) {
    using T = typename decltype(tag)::type;
    return at<T>(a, i) + at<T>(b, i);
  });
}

void CpuBackend::add_bias(TensorView out, TensorView in, TensorView bias) {
  check_add_bias_args(out, in, bias, device());
  const int64_t cols = out.shape.cols();
  elementwise(out, [&](int64_t i, auto tag) {
    using T = typename decltype(tag)::type;
    return at<T>(in, i) + at<T>(bias, i % cols);
  });
}

void CpuBackend::gelu(TensorView out, TensorView in) {
  check_gelu_args(out, in, device());
  if (onednn_->gelu(out, in)) return;
  elementwise(out, [&](int64_t i, auto tag) {
    using T = typename decltype(tag)::type;
    return gelu_tanh(at<T>(in, i));
  });
}

void CpuBackend::gelu_backward(TensorView grad_in, TensorView grad_out, TensorView input) {
  check_gelu_backward_args(grad_in, grad_out, input, device());
  if (onednn_->gelu_backward(grad_in, grad_out, input)) return;
  elementwise(grad_in, [&](int64_t i, auto tag) {
    using T = typename decltype(tag)::type;
    return at<T>(grad_out, i) * gelu_tanh_grad(at<T>(input, i));
  });
}

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace weft
