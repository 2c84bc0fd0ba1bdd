// Unit tests of the CPU backend's tensor memory: freed blocks are reused by size class, live
// blocks never alias, every block is aligned and fully writable.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <set>
#include <vector>

#include "weft/weft.hpp"

namespace weft {
namespace {

bool aligned64(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 64 == 0; }

TEST(HostMemory, FreedBlockIsReusedForTheSameSize) {
  auto backend = make_cpu_backend();
  for (size_t bytes : {size_t{100}, size_t{1} << 20, (size_t{3} << 20) + 5}) {
    void* first = backend->allocate(bytes);
    backend->deallocate(first);
    void* second = backend->allocate(bytes);
    EXPECT_EQ(first, second) << bytes << " bytes";
    backend->deallocate(second);
  }
}

// Above glibc's largest mmap threshold (32 MiB) malloc maps fresh, zeroed pages for every request;
// the pool hands the same pages back, still holding what was written (no fault, no zeroing).
TEST(HostMemory, LargeBlockComesBackWithoutFreshPages) {
  if (const char* p = std::getenv("WEFT_POISON_ALLOCATIONS"); p && p[0] == '1') {
    GTEST_SKIP() << "allocations are poisoned";
  }
  auto backend = make_cpu_backend();
  const size_t bytes = size_t{64} << 20;
  auto* first = static_cast<unsigned char*>(backend->allocate(bytes));
  std::memset(first, 0x5a, bytes);
  backend->deallocate(first);
  auto* second = static_cast<unsigned char*>(backend->allocate(bytes));
  EXPECT_EQ(second, first);
  EXPECT_EQ(second[0], 0x5a);
  EXPECT_EQ(second[bytes / 2], 0x5a);
  EXPECT_EQ(second[bytes - 1], 0x5a);
  backend->deallocate(second);
}

TEST(HostMemory, LiveBlocksNeverAliasAndAreWritable) {
  auto backend = make_cpu_backend();
  std::vector<std::pair<unsigned char*, size_t>> blocks;
  std::set<void*> seen;
  // Sizes on both sides of class boundaries, each allocated twice.
  for (size_t bytes : {size_t{1}, size_t{63}, size_t{64}, size_t{65536}, size_t{65537},
                       size_t{81920}, size_t{81921}, size_t{1} << 22}) {
    for (int copy = 0; copy < 2; ++copy) {
      auto* p = static_cast<unsigned char*>(backend->allocate(bytes));
      EXPECT_TRUE(aligned64(p)) << bytes;
      EXPECT_TRUE(seen.insert(p).second) << "a live block was handed out twice";
      std::memset(p, copy + 1, bytes);
      blocks.emplace_back(p, bytes);
    }
  }
  // Each block kept what was written to it: no two overlap.
  for (size_t i = 0; i < blocks.size(); ++i) {
    const unsigned char expected = static_cast<unsigned char>(i % 2 + 1);
    EXPECT_EQ(blocks[i].first[0], expected);
    EXPECT_EQ(blocks[i].first[blocks[i].second - 1], expected);
  }
  for (auto& [p, bytes] : blocks) backend->deallocate(p);
}

TEST(HostMemory, TensorsReuseMemoryAcrossSteps) {
  auto backend = make_cpu_backend();
  const void* first = nullptr;
  for (int step = 0; step < 3; ++step) {
    Tensor activations(*backend, Shape{256, 1024}, DType::kF32);
    if (step == 0) first = activations.data();
    EXPECT_EQ(activations.data(), first) << "step " << step;
  }
}

}  // namespace
}  // namespace weft
