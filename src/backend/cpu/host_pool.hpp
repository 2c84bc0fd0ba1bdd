// HostMemoryPool: the CPU backend's caching allocator for tensor memory.
#pragma once

#include <cstddef>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace weft {

// Keeps freed blocks for reuse, by size class, instead of handing them back to malloc. A training
// step allocates and frees the same activation and gradient sizes every micro-batch; glibc serves
// blocks above its mmap threshold with fresh mappings, so without the cache each of them is
// page-faulted and zeroed by the kernel again, which on a small model costs more than the math.
// Size classes keep four steps per power of two (at most 25% rounding) above 64 KiB, and 64-byte
// steps below. Idle blocks above kMaxIdleBytes are freed at once rather than cached. Thread-safe.
class HostMemoryPool {
 public:
  static constexpr size_t kAlignment = 64;  // one cache line; what oneDNN prefers
  static constexpr size_t kMaxIdleBytes = size_t{1} << 30;

  HostMemoryPool() = default;
  HostMemoryPool(const HostMemoryPool&) = delete;
  HostMemoryPool& operator=(const HostMemoryPool&) = delete;
  ~HostMemoryPool();

  // A block of at least `bytes`, aligned to kAlignment; throws weft::Error when the system has
  // none, after giving back every idle block once.
  void* allocate(size_t bytes);
  // Returns a block from allocate (null: nothing) to the pool.
  void deallocate(void* ptr) noexcept;

  size_t idle_bytes() const;
  // Frees every idle block.
  void release_idle() noexcept;

  static size_t size_class(size_t bytes);

 private:
  void release_idle_locked() noexcept;

  mutable std::mutex mutex_;
  std::unordered_map<void*, size_t> live_;               // block -> its size class
  std::unordered_map<size_t, std::vector<void*>> idle_;  // size class -> idle blocks
  size_t idle_bytes_ = 0;
};

}  // namespace weft
