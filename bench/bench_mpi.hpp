// MPI-side helpers of the benchmarks run under mpirun.
#pragma once

#include <mpi.h>

#include <string>

#include "weft/backend.hpp"

namespace weft::bench {

// This rank's GPU (its rank on the node) when every rank of every node has one of its own, else
// -1 (NCCL refuses two ranks on one GPU). Collective over MPI_COMM_WORLD, so that all ranks agree
// and register the same benchmarks.
inline int gpu_for_every_rank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
  int local_rank = 0, local_size = 1;
  MPI_Comm_rank(node, &local_rank);
  MPI_Comm_size(node, &local_size);
  MPI_Comm_free(&node);
  int usable = cuda_device_count() >= local_size ? 1 : 0, all_usable = 0;
  MPI_Allreduce(&usable, &all_usable, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all_usable ? local_rank : -1;
}

// The MPI library's name and version, up to its first comma or line break.
inline std::string mpi_library_version() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING];
  int length = 0;
  MPI_Get_library_version(text, &length);
  std::string version(text, static_cast<size_t>(length));
  return version.substr(0, version.find_first_of(",\n"));
}

}  // namespace weft::bench
