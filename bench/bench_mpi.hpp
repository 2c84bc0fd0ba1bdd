// MPI-side helpers of the benchmarks run under mpirun.
#pragma once

#include <mpi.h>

#include <string>

namespace weft::bench {

// The MPI library's name and version, up to its first comma or line break.
inline std::string mpi_library_version() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING];
  int length = 0;
  MPI_Get_library_version(text, &length);
  std::string version(text, static_cast<size_t>(length));
  return version.substr(0, version.find_first_of(",\n"));
}

}  // namespace weft::bench
