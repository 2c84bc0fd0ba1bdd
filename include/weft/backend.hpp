// Backend: where local math happens. Memory, streams and events, GEMM with epilogues, and the
// elementwise ops the layers need. Sharding logic never lives here: a backend sees one rank.
#pragma once

#include <memory>
#include <string>

#include "weft/rng.hpp"
#include "weft/tensor.hpp"

namespace weft {

// An ordered queue of work on one device. On the CPU every op completes before it returns, so a
// CPU stream only exists to keep one code path for both backends.
class Stream {
 public:
  virtual ~Stream() = default;
  virtual void synchronize() = 0;
  // The backend's native handle (cudaStream_t on CUDA, nullptr on the CPU), for communicators.
  virtual void* native_handle() const = 0;
};

// A point in a stream that another stream, or the host, can wait for.
class Event {
 public:
  virtual ~Event() = default;
  virtual void record(Stream& stream) = 0;
  virtual void wait(Stream& stream) = 0;  // `stream` waits until the recorded point is reached
  virtual void synchronize() = 0;         // the host waits
};

enum class StreamPriority { kNormal, kHigh };

// The stream of host work: everything on it has completed when the call returns. For host-memory
// communication outside any backend (bootstrap, metadata).
Stream& host_stream();

enum class Epilogue {
  kNone,
  kBias,      // c += bias (broadcast over rows)
  kGelu,      // c = gelu(c)
  kBiasGelu,  // c = gelu(c + bias)
  kBiasGrad,  // c as kNone; also bias_grad = sum of op(a) over its reduction dimension (length m)
};

// C = epilogue(alpha * op(A) op(B) + beta * C), all matrices row-major 2D.
//   op(A): m x k, op(B): k x n, C: m x n. A transposed operand is stored as its transpose
//   (transpose_a: A is stored k x m). Leading dimensions are the stored column counts.
// Dtypes: A and B share one of f32/bf16/f16; C is that dtype or f32; accumulation is always f32.
// bias, gelu_input and bias_grad have C's dtype. The GeLU is the tanh approximation (GPT-2,
// Megatron, cuBLASLt).
struct GemmArgs {
  TensorView a;
  TensorView b;
  TensorView c;
  bool transpose_a = false;
  bool transpose_b = false;
  float alpha = 1.0f;
  float beta = 0.0f;
  Epilogue epilogue = Epilogue::kNone;
  TensorView bias;          // kBias, kBiasGelu: n elements
  TensorView gelu_input;    // kGelu, kBiasGelu: optional m x n, receives the GeLU's input
  TensorView bias_grad;     // kBiasGrad: m elements
  bool allow_tf32 = false;  // f32 GEMMs on CUDA may use TF32 tensor cores (ignored on the CPU)
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual Device device() const = 0;
  virtual std::string name() const = 0;  // "cpu (oneDNN 2.6.3)", "cuda:0 (NVIDIA H100 ...)"

  // Memory. Alignment is at least 256 bytes on CUDA and 64 on the CPU.
  virtual void* allocate(size_t bytes) = 0;
  virtual void deallocate(void* ptr) noexcept = 0;

  // Streams and events. Every op below is queued on the current stream.
  virtual Stream& stream() = 0;
  virtual void set_stream(Stream& stream) = 0;
  virtual std::unique_ptr<Stream> create_stream(StreamPriority priority) = 0;
  virtual std::unique_ptr<Event> create_event() = 0;
  void synchronize() { stream().synchronize(); }

  // Copies src to dst (equal shape and dtype). Either side may be host memory (Device::cpu()) or
  // this backend's device; host-side transfers complete before return.
  virtual void copy(TensorView dst, TensorView src) = 0;
  // For every row r of the 2D views: dst[r, dst_col : dst_col+cols] = src[r, src_col :
  // src_col+cols]. The building block of split and gather along the last dimension.
  virtual void copy_columns(TensorView dst, int64_t dst_col, TensorView src, int64_t src_col,
                            int64_t cols) = 0;
  // dst = src converted to dst's dtype (equal shape).
  virtual void convert(TensorView dst, TensorView src) = 0;
  virtual void fill(TensorView dst, float value) = 0;
  // dst = the window of the global random matrix that `spec` describes (see rng.hpp).
  virtual void fill_random(TensorView dst, const RandomFill& spec) = 0;

  virtual void gemm(const GemmArgs& args) = 0;

  // Elementwise; `out` may alias an input. All operands share one dtype.
  virtual void add(TensorView out, TensorView a, TensorView b) = 0;  // out = a + b
  virtual void add_bias(TensorView out, TensorView in,
                        TensorView bias) = 0;  // out[r,:] = in[r,:] + bias
  virtual void gelu(TensorView out, TensorView in) = 0;
  // grad_in = grad_out * gelu'(input)
  virtual void gelu_backward(TensorView grad_in, TensorView grad_out, TensorView input) = 0;
};

std::unique_ptr<Backend> make_cpu_backend();
// Throws weft::Error when weft was built without CUDA or `device` does not exist.
std::unique_ptr<Backend> make_cuda_backend(int device);
// 0 when weft was built without CUDA, or no GPU is visible; never throws.
int cuda_device_count();

// Parses "cpu" / "cuda" / "cuda:N" and makes that backend.
std::unique_ptr<Backend> make_backend(const std::string& spec);

}  // namespace weft
