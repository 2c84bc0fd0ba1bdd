// The MPI world shared by all distributed tests, set up once by dist_main.cpp.
#pragma once

#include "weft/weft.hpp"

namespace weft::testing {

Communicator& world();

// Tensor-parallel sizes this world can run (divisors of the world size among 1, 2, 4).
std::vector<int> tp_sizes();

}  // namespace weft::testing
