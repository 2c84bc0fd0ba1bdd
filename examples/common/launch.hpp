// Shared start-up of the examples: MPI, the backend and world communicator a flag names, and
// error handling that never leaves a rank waiting.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>

#include "common/flags.hpp"
#include "weft/weft.hpp"

namespace weft::examples {

// This process's rank on its node, from the launcher's environment (Open MPI, Slurm, MPICH).
inline int local_rank() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"}) {
    if (const char* v = std::getenv(name)) return std::atoi(v);
  }
  return 0;
}

struct Launch {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Communicator> nccl;  // set for the cuda backend
  Communicator* world = nullptr;       // the communicator the layers use (NCCL or MPI)
};

// "cpu": oneDNN + the MPI world. "cuda": GPU local_rank() % GPUs + NCCL over the MPI world.
inline Launch launch(const std::string& backend_name, Communicator& mpi_world) {
  Launch l;
  if (backend_name == "cuda") {
    const int devices = cuda_device_count();
    WEFT_CHECK(devices > 0, "--backend cuda, but no GPU is visible");
    const int device = local_rank() % devices;
    l.backend = make_cuda_backend(device);
    l.nccl = make_nccl_communicator(mpi_world, device);
    l.world = l.nccl.get();
  } else {
    WEFT_CHECK(backend_name == "cpu", "--backend must be cpu or cuda, got '", backend_name, "'");
    l.backend = make_cpu_backend();
    l.world = &mpi_world;
  }
  return l;
}

// Runs body(argc, argv, mpi_world) under MPI. A bad command line (the same on every rank) exits
// with status 2 after rank 0 prints why; any other error is printed by the rank that hit it and
// ends the whole job through MPI_Abort, since its peers may be waiting in a collective.
inline int run_main(const char* program, int argc, char** argv,
                    const std::function<int(int, char**, Communicator&)>& body) {
  MpiRuntime mpi(&argc, &argv);
  std::unique_ptr<Communicator> world;
  try {
    world = make_mpi_world_communicator();
    return body(argc, argv, *world);
  } catch (const UsageError& e) {
    if (world == nullptr || world->rank() == 0) std::fprintf(stderr, "%s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", program, e.what());
    std::fflush(stderr);
    MpiRuntime::abort(1);
  }
}

}  // namespace weft::examples
