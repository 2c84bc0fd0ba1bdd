// What each thread is blocked in: the communicator operation a CommWatchdog measures.
#pragma once

#include "weft/comm.hpp"

namespace weft::detail {

// Marks the calling thread as inside `op` of `comm` for its lifetime. Nested scopes (a staged
// communicator calling its host's operation) keep the outermost. `op` must be a string literal.
class OpScope {
 public:
  OpScope(Communicator& comm, const char* op);
  ~OpScope();
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;
};

}  // namespace weft::detail
