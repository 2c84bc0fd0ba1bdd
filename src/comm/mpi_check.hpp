// WEFT_CHECK_MPI: turns an MPI error code into a weft::Error with MPI's own description; and
// mpi_finalized.
#pragma once

#include <mpi.h>

#include <string>

#include "weft/error.hpp"

namespace weft {
inline std::string mpi_error_string(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS)
    return "MPI error " + std::to_string(code);
  return std::string(text, static_cast<size_t>(length));
}

// Whether MPI_Finalize has run (no MPI call may follow it: destructors and late watchdog polls).
inline bool mpi_finalized() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  return finalized != 0;
}
}  // namespace weft

#define WEFT_CHECK_MPI(expr, ...)                                                        \
  WEFT_CHECK_GEN(::weft::ErrorCode::kMpi, (expr), MPI_SUCCESS, ::weft::mpi_error_string, \
                 ##__VA_ARGS__)
