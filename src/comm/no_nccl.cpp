// The GPU communicators' entry points (NCCL, host-staged) for a build without CUDA.
#include "weft/comm.hpp"
#include "weft/error.hpp"

namespace weft {

std::unique_ptr<Communicator> make_nccl_communicator(Communicator&, int device) {
  WEFT_THROW(ErrorCode::kInvalidArgument, "NCCL communicator on cuda:", device,
             " requested, but weft was built without CUDA (no nvcc found at configure time)");
}

std::unique_ptr<Communicator> make_staged_communicator(Communicator&, int device, size_t) {
  WEFT_THROW(ErrorCode::kInvalidArgument, "staged communicator on cuda:", device,
             " requested, but weft was built without CUDA (no nvcc found at configure time)");
}

}  // namespace weft
