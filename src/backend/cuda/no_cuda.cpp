// Entry points of the CUDA backend for a build without CUDA (comm/no_nccl.cpp: the NCCL one).
#include "weft/backend.hpp"
#include "weft/error.hpp"

namespace weft {

int cuda_device_count() { return 0; }
int64_t cuda_device_memory_bytes(int) { return 0; }

std::unique_ptr<Backend> make_cuda_backend(int device) {
  WEFT_THROW(ErrorCode::kInvalidArgument, "cuda:", device,
             " requested, but weft was built without CUDA (no nvcc found at configure time)");
}

}  // namespace weft
