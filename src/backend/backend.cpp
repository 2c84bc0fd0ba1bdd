// Backend-independent pieces: the host stream, backend selection by name. (The ops' checked
// entry points are in <family>_ops.cpp.)
#include "weft/backend.hpp"

#include <string>

#include "weft/error.hpp"

namespace weft {

namespace {
class HostStream final : public Stream {
 public:
  void synchronize() override {}
  void* native_handle() const override { return nullptr; }
};
}  // namespace

Stream& host_stream() {
  static HostStream stream;
  return stream;
}

std::unique_ptr<Backend> make_backend(const std::string& spec) {
  if (spec == "cpu") return make_cpu_backend();
  if (spec == "cuda") return make_cuda_backend(0);
  if (spec.rfind("cuda:", 0) == 0) {
    const std::string ordinal = spec.substr(5);
    WEFT_CHECK(!ordinal.empty() && ordinal.find_first_not_of("0123456789") == std::string::npos,
               "backend '", spec, "': expected cpu, cuda or cuda:N");
    return make_cuda_backend(std::stoi(ordinal));
  }
  WEFT_THROW(ErrorCode::kInvalidArgument, "unknown backend '", spec,
             "': expected cpu, cuda or cuda:N");
}

}  // namespace weft
