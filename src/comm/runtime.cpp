// make_runtime: picks the backend and the communicator from the engine name, the GPUs each node
// has and the ranks placed on it, the same way on every rank.
#include "weft/runtime.hpp"

#include <cstdlib>
#include <fstream>

#include "comm/mpi_check.hpp"
#include "comm/mpi_communicator.hpp"
#include "weft/config.hpp"
#include "weft/error.hpp"
#include "weft/log.hpp"

namespace weft {

namespace {

struct NodePlace {
  int local_rank = 0;
  int local_size = 1;
};

// This rank's place among the ranks of its node (collective).
NodePlace node_place(Communicator& host_world) {
  if (host_world.size() == 1) return {};
  auto* mpi = dynamic_cast<MpiCommunicator*>(&host_world);
  WEFT_CHECK(mpi != nullptr, "make_runtime: the host world must be an MPI communicator (got ",
             host_world.name(), ") to find the ranks that share a node");
  MPI_Comm node = MPI_COMM_NULL;
  WEFT_CHECK_MPI(
      MPI_Comm_split_type(mpi->native(), MPI_COMM_TYPE_SHARED, mpi->rank(), MPI_INFO_NULL, &node));
  NodePlace place;
  MPI_Comm_rank(node, &place.local_rank);
  MPI_Comm_size(node, &place.local_size);
  MPI_Comm_free(&node);
  return place;
}

int all_reduce_int(Communicator& host_world, int value, ReduceOp op) {
  TensorView v{&value, Shape({1}), DType::kI32, Device::cpu()};
  host_world.all_reduce(v, v, op, host_stream());
  return value;
}

// The smallest of every rank's share of its memory, in bytes (in MiB through a float: exact up to
// 16 TiB).
int64_t smallest_share(Communicator& host_world, int64_t bytes, int sharers) {
  float mib = static_cast<float>(bytes / sharers / (1 << 20));
  TensorView v{&mib, Shape({1}), DType::kF32, Device::cpu()};
  host_world.all_reduce(v, v, ReduceOp::kMin, host_stream());
  return static_cast<int64_t>(mib) << 20;
}

Runtime make_cpu_runtime(Communicator& host_world, const RuntimeOptions& options) {
  WEFT_CHECK(options.comm == "auto" || options.comm == "mpi", "communicator '", options.comm,
             "' does not run on the cpu backend (it takes mpi; nccl and mpi-staged need cuda)");
  Runtime rt;
  rt.backend = make_cpu_backend();
  rt.world = host_world.split(0, host_world.rank());  // a private copy the runtime owns
  rt.description = "cpu + " + rt.world->name();
  rt.memory_per_rank_bytes =
      smallest_share(host_world, host_memory_bytes(), node_place(host_world).local_size);
  return rt;
}

Runtime make_cuda_runtime(Communicator& host_world, const RuntimeOptions& options) {
  std::string comm = options.comm;
  if (comm == "auto") {
    if (const char* env = std::getenv("WEFT_COMM"); env != nullptr && *env != '\0') comm = env;
  }
  WEFT_CHECK(comm == "auto" || comm == "nccl" || comm == "mpi-staged", "communicator '", comm,
             "' does not run on the cuda backend (it takes auto, nccl or mpi-staged)");
  const NodePlace place = node_place(host_world);
  const int devices = cuda_device_count();
  // Agreed by every rank, so that they all throw alike or all make the same communicator.
  const int fewest_gpus = all_reduce_int(host_world, devices, ReduceOp::kMin);
  const int shared = all_reduce_int(host_world, place.local_size > devices ? 1 : 0, ReduceOp::kMax);
  WEFT_CHECK(fewest_gpus > 0, "the cuda backend needs a GPU on every rank, but ",
             devices == 0 ? "this rank sees none" : "another rank sees none",
             WEFT_HAVE_CUDA ? "" : " (weft was built without CUDA)");
  WEFT_CHECK(!(comm == "nccl" && shared), "communicator nccl: ", place.local_size,
             " ranks on a node with ", devices,
             " GPU(s) would share a device, which NCCL refuses; use mpi-staged");
  const int device = place.local_rank % devices;

  Runtime rt;
  rt.backend = make_cuda_backend(device);
  std::string why;
  if (comm == "auto") {
    comm = shared ? "mpi-staged" : "nccl";
    why = shared ? "ranks share a GPU: " + std::to_string(place.local_size) + " on a node with " +
                       std::to_string(devices)
                 : "a GPU per rank";
  } else {
    why = options.comm == "auto" ? "WEFT_COMM" : "asked for";
  }
  rt.world = comm == "nccl" ? make_nccl_communicator(host_world, device)
                            : make_staged_communicator(host_world, device);
  rt.description = rt.backend->device().str() + " + " + rt.world->name() + " (" + why + ")";
  // Local ranks r use GPU r % devices.
  const int sharing_this_gpu = (place.local_size - device + devices - 1) / devices;
  rt.memory_per_rank_bytes =
      smallest_share(host_world, cuda_device_memory_bytes(device), sharing_this_gpu);
  return rt;
}

}  // namespace

std::unique_ptr<Communicator> Runtime::make_self() const {
  WEFT_CHECK(backend != nullptr, "Runtime::make_self: the runtime has no backend");
  std::unique_ptr<Communicator> self = make_self_communicator();
  if (backend->device().is_cpu()) return self;
  return make_staged_communicator(*self, backend->device().index);
}

Runtime make_runtime(const std::string& engine, Communicator& host_world,
                     const RuntimeOptions& options) {
  WEFT_CHECK(host_world.buffer_device() == DeviceKind::kCpu, "make_runtime: the host world ",
             host_world.name(), " must move host buffers");
  WEFT_CHECK(engine == "cpu" || engine == "cuda", "backend must be cpu or cuda, got '", engine,
             "'");
  Runtime rt = engine == "cuda" ? make_cuda_runtime(host_world, options)
                                : make_cpu_runtime(host_world, options);
  if (host_world.rank() == 0) WEFT_LOG(kInfo, "runtime: ", rt.description);
  return rt;
}

int ranks_on_this_node(Communicator& host_world) { return node_place(host_world).local_size; }

int64_t host_memory_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t kib = 0;
  while (in >> key >> kib) {
    if (key == "MemTotal:") return kib * 1024;
    in.ignore(256, '\n');
  }
  return 0;
}

bool cuda_on_every_rank(Communicator& host_world) {
  return all_reduce_int(host_world, cuda_device_count() > 0 ? 1 : 0, ReduceOp::kMin) > 0;
}

}  // namespace weft
