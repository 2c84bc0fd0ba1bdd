// DeferredHostEngine: the staged communicator's copy engine over host memory, with stream-like
// deferred copies, for the tests of its staging logic on the CPU.
#pragma once

#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "comm/staged_communicator.hpp"

namespace weft::testing {

// A copy engine whose "device" is host memory and whose copies are queued, like a stream's, and
// run only at synchronize(): a staged communicator that hands a staging buffer to MPI, or returns,
// before synchronizing would send or leave stale bytes, and the tests' exact comparisons fail.
// Fresh staging memory is filled with 0xff bytes (NaN in every float format).
class DeferredHostEngine final : public StagingEngine {
 public:
  Device device() const override { return Device::cpu(); }
  void* allocate_host(size_t bytes) override {
    ++allocations;
    void* ptr = std::malloc(bytes);
    if (ptr == nullptr) throw std::bad_alloc();
    std::memset(ptr, 0xff, bytes);
    return ptr;
  }
  void free_host(void* ptr) noexcept override { std::free(ptr); }
  void to_host(void* host, const void* device, size_t bytes, Stream&) override {
    queue_.push_back({host, device, bytes});
  }
  void to_device(void* device, const void* host, size_t bytes, Stream&) override {
    queue_.push_back({device, host, bytes});
  }
  void synchronize(Stream&) override {
    for (const Copy& c : queue_) std::memcpy(c.dst, c.src, c.bytes);
    queue_.clear();
  }
  void synchronize_device() override { synchronize(host_stream()); }

  int allocations = 0;

 private:
  struct Copy {
    void* dst;
    const void* src;
    size_t bytes;
  };
  std::vector<Copy> queue_;
};

}  // namespace weft::testing
