// Shared start-up of the examples: MPI, the backend and world communicator the flags name, and
// error handling that never leaves a rank waiting.
#pragma once

#include <cstdio>
#include <functional>
#include <memory>
#include <string>

#include "common/flags.hpp"
#include "weft/weft.hpp"

namespace weft::examples {

// --backend cpu|cuda and --comm auto|mpi|nccl|mpi-staged, as every example takes them.
struct EngineFlags {
  std::string backend = "cpu";
  std::string comm = "auto";

  void add_to(Flags& flags) {
    flags.add("backend", &backend, "cpu (MPI + oneDNN) or cuda (cuBLASLt + NCCL or mpi-staged)");
    flags.add("comm", &comm,
              "auto, mpi (cpu), nccl or mpi-staged (cuda; ranks may share a GPU). auto: WEFT_COMM "
              "if set, else nccl with a GPU per rank, mpi-staged when ranks share one");
  }
};

// The backend and the world communicator the flags name (weft::make_runtime). Unknown names are a
// usage error, on every rank alike.
inline Runtime launch(const EngineFlags& engine, Communicator& mpi_world) {
  const std::string& b = engine.backend;
  const std::string& c = engine.comm;
  if (b != "cpu" && b != "cuda") throw UsageError("--backend must be cpu or cuda, got '" + b + "'");
  if (c != "auto" && c != "mpi" && c != "nccl" && c != "mpi-staged") {
    throw UsageError("--comm must be auto, mpi, nccl or mpi-staged, got '" + c + "'");
  }
  const bool gpu_comm = c == "nccl" || c == "mpi-staged";
  if (c != "auto" && (b == "cpu") == gpu_comm) {
    throw UsageError("--comm " + c + " does not run on --backend " + b +
                     " (cpu takes mpi; cuda takes nccl or mpi-staged)");
  }
  RuntimeOptions options;
  options.comm = c == "mpi" ? "auto" : c;
  return make_runtime(b, mpi_world, options);
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
