// The engine of the distributed tests and the worlds they share, set up once by dist_main.cpp.
// WEFT_TEST_BACKEND=cpu|cuda|cpu-staged (default cpu) picks the engine for every test: the same
// layer, model, sequence-parallel, overlap and pipeline tests run on oneDNN + MPI or on a GPU +
// NCCL (or the staged communicator when the ranks share a GPU), as weft::make_runtime chooses;
// cpu-staged runs the CPU engine with its world through the staged communicator over host memory.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "weft/weft.hpp"

namespace weft::testing {

// The engine's communicator over all ranks, moving buffers in the engine's memory: what the
// layers and grids use.
Communicator& world();
// MPI over all ranks with host buffers: for the tests' own bookkeeping (names, verdicts).
Communicator& host_world();
// A fresh backend of the engine (on the GPU the runtime picked).
std::unique_ptr<Backend> make_test_backend();
// A group of this rank alone on the engine: the unsharded references.
std::unique_ptr<Communicator> make_test_self();

// Tensor-parallel sizes this world can run (divisors of the world size among 1, 2, 4).
std::vector<int> tp_sizes();

// Runs fn, expects a weft::Error whose text contains every needle and names this rank, then meets
// every rank at a barrier: a rank that had hung in a collective would never get there.
template <typename Fn>
void expect_error_on_every_rank(Fn&& fn, const std::vector<std::string>& needles) {
  try {
    fn();
    ADD_FAILURE() << "expected weft::Error";
  } catch (const Error& e) {
    const std::string what = e.what();
    for (const std::string& needle : needles) {
      EXPECT_NE(what.find(needle), std::string::npos) << "'" << needle << "' missing in: " << what;
    }
    EXPECT_EQ(e.rank(), world().rank()) << "the error must say which rank raised it";
  }
  world().barrier();
}

}  // namespace weft::testing
