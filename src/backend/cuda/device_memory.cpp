// device_pool, pool_allocate, pool_free: weft's stream-ordered device memory (device_memory.hpp).
#include "backend/device_memory.hpp"

#include <cstdint>
#include <map>
#include <mutex>

#include "backend/cuda_check.hpp"
#include "weft/error.hpp"
#include "weft/log.hpp"

namespace weft {

cudaMemPool_t device_pool(int device) {
  static std::mutex mutex;
  static std::map<int, cudaMemPool_t> pools;
  std::lock_guard<std::mutex> lock(mutex);
  auto found = pools.find(device);
  if (found != pools.end()) return found->second;

  int supported = 0;
  WEFT_CHECK_CUDA(cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, device),
                  "querying memory pool support of cuda:", device);
  WEFT_CHECK(supported != 0, "cuda:", device,
             " does not support stream-ordered memory pools (cudaMallocAsync), which weft needs");
  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.handleTypes = cudaMemHandleTypeNone;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = device;
  cudaMemPool_t pool = nullptr;
  WEFT_CHECK_CUDA(cudaMemPoolCreate(&pool, &props), "creating a memory pool on cuda:", device);
  uint64_t keep_everything = UINT64_MAX;
  int no = 0;
  const cudaError_t status = [&] {
    cudaError_t s =
        cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_everything);
    // A dependency the pool inserts on its own would make one stream wait for another's work
    // (a receive that waits for a peer, say) where nobody asked for it.
    if (s == cudaSuccess) {
      s = cudaMemPoolSetAttribute(pool, cudaMemPoolReuseAllowInternalDependencies, &no);
    }
    return s;
  }();
  if (status != cudaSuccess) cudaMemPoolDestroy(pool);
  WEFT_CHECK_CUDA(status, "configuring the memory pool of cuda:", device);
  pools.emplace(device, pool);
  return pool;
}

void* pool_allocate(int device, size_t bytes, cudaStream_t stream, const char* what) {
  cudaMemPool_t pool = device_pool(device);
  void* ptr = nullptr;
  cudaError_t status = cudaMallocFromPoolAsync(&ptr, bytes, pool, stream);
  if (status == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();  // clear it: the retry decides
    WEFT_CHECK_CUDA(cudaMemPoolTrimTo(pool, 0), "trimming the memory pool of cuda:", device);
    status = cudaMallocFromPoolAsync(&ptr, bytes, pool, stream);
  }
  WEFT_CHECK_CUDA(status, what, ": allocating ", bytes, " bytes on cuda:", device);
  return ptr;
}

void pool_free(void* ptr, cudaStream_t stream) noexcept {
  if (ptr == nullptr) return;
  const cudaError_t status = cudaFreeAsync(ptr, stream);
  if (status == cudaSuccess) return;
  try {
    WEFT_LOG(kError, "cudaFreeAsync: ", cudaGetErrorString(status));
  } catch (...) {
    // Logging failed (out of memory): nothing better to do on a noexcept path.
  }
}

}  // namespace weft
