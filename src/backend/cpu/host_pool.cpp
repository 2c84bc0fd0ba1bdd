// HostMemoryPool: size classes, reuse of idle blocks, and release.
#include "backend/cpu/host_pool.hpp"

#include <algorithm>
#include <cstdlib>

#include "weft/error.hpp"
#include "weft/log.hpp"

namespace weft {

size_t HostMemoryPool::size_class(size_t bytes) {
  constexpr size_t kSmall = size_t{64} << 10;
  const size_t aligned = (std::max<size_t>(bytes, 1) + kAlignment - 1) / kAlignment * kAlignment;
  if (aligned <= kSmall) return aligned;
  // Four classes per doubling: round up to a multiple of a quarter of the highest power of two.
  size_t power = kSmall;
  while (power * 2 <= aligned) power *= 2;
  const size_t step = power / 4;
  return (aligned + step - 1) / step * step;
}

HostMemoryPool::~HostMemoryPool() {
  release_idle();
  // Tensors must not outlive their backend; a leak here is theirs, and freeing it would turn a
  // later use into memory corruption.
  if (!live_.empty()) {
    WEFT_LOG(kWarning, "cpu backend destroyed with ", live_.size(),
             " tensor buffers still allocated");
  }
}

void* HostMemoryPool::allocate(size_t bytes) {
  const size_t size = size_class(bytes);
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = idle_.find(size);
  if (it != idle_.end() && !it->second.empty()) {
    void* ptr = it->second.back();
    it->second.pop_back();
    idle_bytes_ -= size;
    live_.emplace(ptr, size);
    return ptr;
  }
  void* ptr = std::aligned_alloc(kAlignment, size);
  if (ptr == nullptr && idle_bytes_ > 0) {
    release_idle_locked();
    ptr = std::aligned_alloc(kAlignment, size);
  }
  if (ptr == nullptr) {
    WEFT_THROW(ErrorCode::kInvalidArgument, "host allocation of ", bytes, " bytes failed");
  }
  live_.emplace(ptr, size);
  return ptr;
}

void HostMemoryPool::deallocate(void* ptr) noexcept {
  if (ptr == nullptr) return;
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = live_.find(ptr);
  if (it == live_.end()) {
    WEFT_LOG(kError, "cpu backend: freeing ", ptr, ", which it did not allocate");
    return;
  }
  const size_t size = it->second;
  live_.erase(it);
  if (idle_bytes_ + size > kMaxIdleBytes) {
    std::free(ptr);
    return;
  }
  try {
    idle_[size].push_back(ptr);
    idle_bytes_ += size;
  } catch (...) {  // no memory for the bookkeeping: give the block back instead
    std::free(ptr);
  }
}

size_t HostMemoryPool::idle_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return idle_bytes_;
}

void HostMemoryPool::release_idle() noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  release_idle_locked();
}

void HostMemoryPool::release_idle_locked() noexcept {
  for (auto& [size, blocks] : idle_) {
    for (void* ptr : blocks) std::free(ptr);
  }
  idle_.clear();
  idle_bytes_ = 0;
}

}  // namespace weft
