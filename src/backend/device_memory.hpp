// Stream-ordered device memory for everything weft allocates on a GPU: tensors, cuBLASLt
// workspaces, kernel scratch, NCCL's barrier buffer, all from one CUDA memory pool per device.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace weft {

// Allocation and free are queued on a stream (cudaMallocFromPoolAsync / cudaFreeAsync), so
// neither ever synchronizes the device: cudaMalloc/cudaFree would wait for every stream, and
// with a pipeline's point-to-point rounds in flight (a receive waiting for a peer that waits for
// this rank) that wait can deadlock the job. The pool keeps freed memory for reuse (release
// threshold unlimited) instead of returning it to the driver at each synchronization, which is
// what weft's former caching allocator was for. Reuse follows stream order: memory freed on a
// stream is reused by later work of that stream, by another stream only once the free has
// completed or an event orders it; never through a dependency the pool would insert by itself.
//
// The pool of `device`, created on first use and kept for the life of the process (the driver
// releases it at exit). Thread-safe.
cudaMemPool_t device_pool(int device);

// `bytes` (> 0) from `device`'s pool, valid for work queued on `stream` from now on (on other
// streams once ordered after it). Out of memory: the pool first gives back what it holds unused
// (cudaMemPoolTrimTo, which does not synchronize) and the allocation is tried once more; then
// throws weft::Error naming `what`. The caller makes `device` current.
void* pool_allocate(int device, size_t bytes, cudaStream_t stream, const char* what);

// Returns `ptr` (null: nothing) to its pool once the work queued on `stream` so far is done.
// Logs a failure, never throws.
void pool_free(void* ptr, cudaStream_t stream) noexcept;

}  // namespace weft
