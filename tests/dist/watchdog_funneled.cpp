// A program that initialised MPI itself with MPI_THREAD_FUNNELED: the watchdog must not use MPI
// from its thread, so it names the operation and the group but says that which ranks did not
// arrive is unknown. Two ranks: rank 1 joins the all_reduce 3 s late; rank 0's watchdog fires at
// 1 s. Exits non-zero on a rank whose check failed.
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>

#include "weft/watchdog.hpp"
#include "weft/weft.hpp"

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  int failures = 0;
  {
    weft::MpiRuntime mpi(&argc, &argv);  // MPI is up already: it keeps the program's thread level
    std::unique_ptr<weft::Communicator> world = weft::make_mpi_world_communicator();
    if (world->size() != 2) {
      std::fprintf(stderr, "watchdog_funneled: run it on 2 ranks\n");
      return 2;
    }
    std::mutex mutex;
    std::string message;
    float x = 1.0f;
    weft::TensorView view{&x, weft::Shape({1}), weft::DType::kF32, weft::Device::cpu()};
    {
      weft::CommWatchdog watchdog(
          *world, 1.0,
          [&](const std::string& m) {
            std::lock_guard<std::mutex> lock(mutex);
            message = m;
          },
          0.05);
      if (world->rank() == 1) std::this_thread::sleep_for(std::chrono::seconds(3));
      world->all_reduce(view, view, weft::ReduceOp::kSum, weft::host_stream());
    }
    const std::string expected =
        world->rank() == 0
            ? "weft watchdog (rank 0): all_reduce #1 on mpi group of world ranks {0, 1} has "
              "waited "
            : "";
    const std::string unknown =
        "; which ranks did not arrive is unknown: MPI without MPI_THREAD_MULTIPLE; aborting";
    const bool ok = world->rank() == 0 ? message.find(expected) != std::string::npos &&
                                             message.find(unknown) != std::string::npos
                                       : message.empty();
    if (!ok) {
      std::fprintf(stderr, "watchdog_funneled: rank %d got the message '%s'\n", world->rank(),
                   message.c_str());
      ++failures;
    }
  }
  MPI_Finalize();
  return failures == 0 ? 0 : 1;
}
