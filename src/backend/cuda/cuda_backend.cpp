// CudaBackend: memory, streams, events and the ops of Backend on one GPU; also the entry points
// make_cuda_backend and cuda_device_count.
#include "backend/cuda/cuda_backend.hpp"

#include <cstring>
#include <exception>
#include <utility>

#include "backend/backend_checks.hpp"
#include "backend/cuda_check.hpp"
#include "backend/device_memory.hpp"
#include "kernels.hpp"
#include "weft/error.hpp"
#include "weft/log.hpp"

namespace weft {

namespace {

// Logs a failed CUDA call from a destructor or other noexcept path, where throwing is not allowed.
void log_cuda_error(cudaError_t status, const char* what) noexcept {
  if (status == cudaSuccess) return;
  try {
    WEFT_LOG(kError, what, ": ", cudaGetErrorString(status));
  } catch (...) {
    // Logging itself failed (out of memory); nothing better to do in a destructor.
  }
}

}  // namespace

// ---- DeviceGuard ----

DeviceGuard::DeviceGuard(int device) : device_(device) {
  WEFT_CHECK_CUDA(cudaGetDevice(&previous_), "querying the current device");
  if (previous_ != device_) WEFT_CHECK_CUDA(cudaSetDevice(device_), "selecting cuda:", device_);
}

DeviceGuard::~DeviceGuard() {
  if (previous_ >= 0 && previous_ != device_) {
    log_cuda_error(cudaSetDevice(previous_), "restoring the current device");
  }
}

// ---- CudaStream ----

CudaStream::CudaStream(int device, StreamPriority priority) : device_(device) {
  DeviceGuard guard(device_);
  int least = 0;
  int greatest = 0;
  WEFT_CHECK_CUDA(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  // Numerically lower is higher priority; `least` is also the default priority.
  const int value = priority == StreamPriority::kHigh ? greatest : least;
  // Non-blocking: no implicit synchronization with the legacy default stream of other code.
  WEFT_CHECK_CUDA(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, value),
                  "creating a stream on cuda:", device_);
}

// Never blocks: the workspace is freed after the GEMMs queued here (stream order), and
// cudaStreamDestroy returns at once, releasing the stream when its work is done. A wait here
// could hang a rank whose queued NCCL work waits for a peer that failed.
CudaStream::~CudaStream() {
  try {
    DeviceGuard guard(device_);
    pool_free(workspace_, stream_);
    log_cuda_error(cudaStreamDestroy(stream_), "destroying a stream");
  } catch (const std::exception& e) {
    // The device could not be selected: leak rather than free on the wrong device.
    try {
      WEFT_LOG(kError, "CudaStream on cuda:", device_, " not released: ", e.what());
    } catch (...) {
    }
  }
}

void CudaStream::synchronize() {
  WEFT_CHECK_CUDA(cudaStreamSynchronize(stream_), "synchronizing a stream on cuda:", device_);
}

void* CudaStream::workspace(size_t bytes) {
  if (workspace_bytes_ < bytes) {
    // Stream order: the old buffer is released after the work queued so far, which may use it.
    pool_free(workspace_, stream_);
    workspace_ = nullptr;
    workspace_bytes_ = 0;
    workspace_ = pool_allocate(device_, bytes, stream_, "cuBLASLt workspace");
    workspace_bytes_ = bytes;
  }
  return workspace_;
}

CudaStream& as_cuda_stream(Stream& stream, const char* op) {
  auto* cuda = dynamic_cast<CudaStream*>(&stream);
  WEFT_CHECK(cuda != nullptr, op, ": the stream is not a CUDA stream (make it with the CUDA ",
             "backend's create_stream or stream())");
  return *cuda;
}

// ---- CudaEvent ----

CudaEvent::CudaEvent(int device) : device_(device) {
  DeviceGuard guard(device_);
  // No timing: cheaper to record, and we only order work with events.
  WEFT_CHECK_CUDA(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming),
                  "creating an event on cuda:", device_);
}

CudaEvent::~CudaEvent() {
  try {
    DeviceGuard guard(device_);
    log_cuda_error(cudaEventDestroy(event_), "destroying an event");
  } catch (const std::exception& e) {
    try {
      WEFT_LOG(kError, "CudaEvent on cuda:", device_, " not released: ", e.what());
    } catch (...) {
    }
  }
}

void CudaEvent::record(Stream& stream) {
  CudaStream& cuda = as_cuda_stream(stream, "Event::record");
  WEFT_CHECK(cuda.device() == device_, "Event::record: the event is on cuda:", device_,
             " but the stream on cuda:", cuda.device());
  DeviceGuard guard(device_);
  WEFT_CHECK_CUDA(cudaEventRecord(event_, cuda.get()));
}

void CudaEvent::wait(Stream& stream) {
  CudaStream& cuda = as_cuda_stream(stream, "Event::wait");
  // A stream may wait for an event of another device; the stream's device must be current.
  DeviceGuard guard(cuda.device());
  WEFT_CHECK_CUDA(cudaStreamWaitEvent(cuda.get(), event_, 0));
}

void CudaEvent::synchronize() { WEFT_CHECK_CUDA(cudaEventSynchronize(event_)); }

// ---- CudaBackend ----

CudaBackend::CudaBackend(int device) : device_(device) {
  DeviceGuard guard(device_);
  cudaDeviceProp prop{};
  WEFT_CHECK_CUDA(cudaGetDeviceProperties(&prop, device_), "querying cuda:", device_);
  name_ = detail::concat("cuda:", device_, " (", prop.name, ", sm_", prop.major, prop.minor, ")");
  matmul_ = std::make_unique<CublasLtMatmul>(device_);
  default_stream_ = std::make_unique<CudaStream>(device_, StreamPriority::kNormal);
  current_ = default_stream_.get();
}

// Never blocks either: the default stream's workspace is freed in stream order by ~CudaStream,
// the cuBLASLt descriptors are host objects, and the pool keeps its memory for the process (a
// trim here could only give back what no stream uses, and is left to out-of-memory retries).
// cublasLtDestroy may synchronize the device (cuBLAS documents that cublasDestroy does): while an
// exception unwinds, queued NCCL work may wait for a failed peer, so the handle is then left to
// the process.
CudaBackend::~CudaBackend() {
  if (std::uncaught_exceptions() > 0) (void)matmul_.release();
}

void* CudaBackend::allocate(size_t bytes) {
  if (bytes == 0) return nullptr;
  DeviceGuard guard(device_);
  // Device memory from the pool, never managed memory: page migration would hide copies from the
  // profiler.
  void* ptr = pool_allocate(device_, bytes, current_->get(), "tensor");
  if (poison_allocations()) {
    // On the current stream, the one that orders this block's reuse: after the previous owner's
    // last use and before the new tensor's first writer. (cudaMemset would run on the legacy
    // default stream, which does not synchronize with weft's non-blocking streams.)
    WEFT_CHECK_CUDA(cudaMemsetAsync(ptr, 0xff, bytes, current_->get()), "poisoning ", bytes,
                    " bytes");
  }
  return ptr;
}

void CudaBackend::deallocate(void* ptr) noexcept {
  if (ptr == nullptr) return;
  try {
    DeviceGuard guard(device_);
    pool_free(ptr, current_->get());
  } catch (const std::exception& e) {
    try {
      WEFT_LOG(kError, "deallocate on cuda:", device_, ": ", e.what());
    } catch (...) {
    }
  }
}

void CudaBackend::set_stream(Stream& stream) {
  CudaStream& cuda = as_cuda_stream(stream, "set_stream");
  WEFT_CHECK(cuda.device() == device_, "set_stream: the stream is on cuda:", cuda.device(),
             ", this backend on cuda:", device_);
  current_ = &cuda;
}

std::unique_ptr<Stream> CudaBackend::create_stream(StreamPriority priority) {
  return std::make_unique<CudaStream>(device_, priority);
}

std::unique_ptr<Event> CudaBackend::create_event() { return std::make_unique<CudaEvent>(device_); }

void CudaBackend::do_copy(TensorView dst, TensorView src) {
  if (dst.bytes() == 0 || dst.data == src.data) return;
  if (dst.device.is_cpu() && src.device.is_cpu()) {
    std::memcpy(dst.data, src.data, dst.bytes());
    return;
  }
  DeviceGuard guard(device_);
  WEFT_CHECK_CUDA(
      cudaMemcpyAsync(dst.data, src.data, dst.bytes(), cudaMemcpyDefault, current_->get()), "copy ",
      src.str(), " -> ", dst.str());
  // The host side may be pageable memory the caller reuses right after we return.
  if (dst.device.is_cpu() || src.device.is_cpu()) current_->synchronize();
}

void CudaBackend::do_copy_columns(TensorView dst, int64_t dst_col, TensorView src, int64_t src_col,
                                  int64_t cols) {
  const int64_t rows = dst.shape.rows();
  if (rows == 0 || cols == 0) return;
  const size_t element = dtype_size(dst.dtype);
  auto* dst_ptr = static_cast<char*>(dst.data) + static_cast<size_t>(dst_col) * element;
  const auto* src_ptr = static_cast<const char*>(src.data) + static_cast<size_t>(src_col) * element;
  DeviceGuard guard(device_);
  WEFT_CHECK_CUDA(cudaMemcpy2DAsync(dst_ptr, static_cast<size_t>(dst.shape.cols()) * element,
                                    src_ptr, static_cast<size_t>(src.shape.cols()) * element,
                                    static_cast<size_t>(cols) * element, static_cast<size_t>(rows),
                                    cudaMemcpyDefault, current_->get()),
                  "copy_columns ", src.str(), " -> ", dst.str());
  if (dst.device.is_cpu() || src.device.is_cpu()) current_->synchronize();
}

void CudaBackend::do_convert(TensorView dst, TensorView src) {
  DeviceGuard guard(device_);
  dispatch_storage(dst.dtype, [&](auto dst_tag) {
    using Dst = typename decltype(dst_tag)::type;
    dispatch_storage(src.dtype, [&](auto src_tag) {
      using Src = typename decltype(src_tag)::type;
      launch_convert<Dst, Src>(dst.as<Dst>(), src.as<Src>(), dst.numel(), current_->get());
    });
  });
}

void CudaBackend::do_fill(TensorView dst, float value) {
  DeviceGuard guard(device_);
  dispatch_storage(dst.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_fill<T>(dst.as<T>(), value, dst.numel(), current_->get());
  });
}

void CudaBackend::do_fill_random(TensorView dst, const RandomFill& spec) {
  DeviceGuard guard(device_);
  dispatch_storage(dst.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_fill_random<T>(dst.as<T>(), dst.shape.rows(), dst.shape.cols(), spec, current_->get());
  });
}

void CudaBackend::do_gemm(const GemmArgs& args) {
  const GemmDims dims = gemm_dims(args);  // checked, non-empty (Backend::gemm)
  DeviceGuard guard(device_);
  void* workspace = current_->workspace(kWorkspaceBytes);
  matmul_->run(args, dims, current_->get(), workspace, kWorkspaceBytes);
}

void CudaBackend::do_add(TensorView out, TensorView a, TensorView b) {
  DeviceGuard guard(device_);
  dispatch_storage(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_add<T>(out.as<T>(), a.as<T>(), b.as<T>(), out.numel(), current_->get());
  });
}

void CudaBackend::do_add_bias(TensorView out, TensorView in, TensorView bias) {
  DeviceGuard guard(device_);
  dispatch_storage(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_add_bias<T>(out.as<T>(), in.as<T>(), bias.as<T>(), in.shape.rows(), in.shape.cols(),
                       current_->get());
  });
}

void CudaBackend::do_gelu(TensorView out, TensorView in) {
  DeviceGuard guard(device_);
  dispatch_storage(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_gelu<T>(out.as<T>(), in.as<T>(), out.numel(), current_->get());
  });
}

void CudaBackend::do_gelu_backward(TensorView grad_in, TensorView grad_out, TensorView input) {
  DeviceGuard guard(device_);
  dispatch_storage(grad_in.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_gelu_backward<T>(grad_in.as<T>(), grad_out.as<T>(), input.as<T>(), grad_in.numel(),
                            current_->get());
  });
}

// ---- entry points (declared in weft/backend.hpp) ----

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver or no device: clear the error, report none
    return 0;
  }
  return count;
}

int64_t cuda_device_memory_bytes(int device) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return static_cast<int64_t>(prop.totalGlobalMem);
}

std::unique_ptr<Backend> make_cuda_backend(int device) {
  const int count = cuda_device_count();
  WEFT_CHECK(device >= 0 && device < count, "cuda:", device, " requested, but ", count,
             " CUDA device(s) are visible");
  return std::make_unique<CudaBackend>(device);
}

}  // namespace weft
