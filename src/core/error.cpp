// weft::Error: formatting of the message with code, rank, expression and location.
#include "weft/error.hpp"

#include <atomic>

namespace weft {

namespace {
std::atomic<int> g_error_rank{-1};

std::string format_what(ErrorCode code, const std::string& message, const char* expression,
                        const char* file, int line, int rank) {
  std::ostringstream os;
  os << "weft " << error_code_name(code) << " error";
  if (rank >= 0) os << " on rank " << rank;
  os << ": " << message;
  if (expression != nullptr && expression[0] != '\0') os << " [check: " << expression << "]";
  os << " (" << file << ":" << line << ")";
  return os.str();
}
}  // namespace

const char* error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument:
      return "invalid-argument";
    case ErrorCode::kCuda:
      return "CUDA";
    case ErrorCode::kCublas:
      return "cuBLAS";
    case ErrorCode::kNccl:
      return "NCCL";
    case ErrorCode::kMpi:
      return "MPI";
    case ErrorCode::kDnnl:
      return "oneDNN";
    case ErrorCode::kIo:
      return "I/O";
    case ErrorCode::kInternal:
      return "internal";
  }
  return "unknown";
}

void set_error_rank(int rank) { g_error_rank.store(rank); }
int error_rank() { return g_error_rank.load(); }

Error::Error(ErrorCode code, const std::string& message, const char* expression, const char* file,
             int line)
    : std::runtime_error(format_what(code, message, expression, file, line, error_rank())),
      code_(code),
      message_(message),
      expression_(expression ? expression : ""),
      file_(file),
      line_(line),
      rank_(error_rank()) {}

namespace detail {
void throw_error(ErrorCode code, const std::string& message, const char* expression,
                 const char* file, int line) {
  throw Error(code, message, expression, file, line);
}
}  // namespace detail

}  // namespace weft
