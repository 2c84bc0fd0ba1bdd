// CommWatchdog across ranks: a rank stuck in a collective past the timeout names the ranks of the
// group that did not arrive and what each is doing instead (asked over the watchdogs' channel).
//
// The late rank must stay out of every communicator operation while the others' watchdogs ask
// it, yet join once they have fired (an MPI collective cannot be interrupted, so the stuck ranks
// only return when it does). It waits for a token from each firing rank, sent by its on_timeout,
// by polling PendingGroup::test(), which is no blocking operation. Every wait is bounded, so the
// test ends on every rank whatever happens.
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <mutex>
#include <thread>

#include "common/test_util.hpp"
#include "dist/dist_env.hpp"
#include "weft/watchdog.hpp"

namespace weft::testing {
namespace {

constexpr double kTimeout = 1.0, kPoll = 0.05;

TensorView host_view(float* value) { return {value, Shape({1}), DType::kF32, Device::cpu()}; }

// Captures the message, then sends a token to `late` over `release`.
struct Firing {
  std::mutex mutex;
  std::string message;
  void fire(const std::string& m, Communicator& release, int late) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      message = m;
    }
    float token = 1.0f;
    release.send(host_view(&token), late, host_stream());
  }
  std::string get() {
    std::lock_guard<std::mutex> lock(mutex);
    return message;
  }
};

// On the late rank: returns once every rank in `firing` sent its token (or after 60 s, failing),
// without entering a blocking communicator operation meanwhile.
void wait_for_tokens(Communicator& release, const std::vector<int>& firing) {
  std::vector<float> tokens(firing.size(), 0.0f);
  release.group_start();
  for (size_t i = 0; i < firing.size(); ++i) {
    release.recv(host_view(&tokens[i]), firing[i], host_stream());
  }
  std::unique_ptr<PendingGroup> pending = release.group_end_async();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  bool done = false;
  while (!(done = pending->test()) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(done) << "the other ranks' watchdogs did not fire within 60 s";
  if (!done) pending->cancel(1.0);
}

void expect_contains(const std::string& text, const std::string& needle) {
  EXPECT_NE(text.find(needle), std::string::npos) << "'" << needle << "' missing in: " << text;
}

TEST(Watchdog, NamesTheRankThatIsNotInACommunicatorOperation) {
  Communicator& host = host_world();
  const int rank = host.rank(), size = host.size();
  if (size < 2) GTEST_SKIP() << "needs a peer";
  const int late = size - 1;
  std::unique_ptr<Communicator> comm = host.split(0, rank), release = host.split(0, rank);
  float x = 1.0f;
  comm->all_reduce(host_view(&x), host_view(&x), ReduceOp::kSum, host_stream());  // #1 arrives
  Firing firing;
  bool fired = false;
  {
    CommWatchdog watchdog(
        host, kTimeout, [&](const std::string& m) { firing.fire(m, *release, late); }, kPoll);
    if (rank == late) {
      std::vector<int> others;
      for (int r = 0; r < late; ++r) others.push_back(r);
      wait_for_tokens(*release, others);
    }
    comm->all_reduce(host_view(&x), host_view(&x), ReduceOp::kSum, host_stream());  // #2
    fired = watchdog.fired();
  }
  const std::string message = firing.get();
  if (rank == late) {
    EXPECT_FALSE(fired) << message;  // it never waited
  } else {
    EXPECT_TRUE(fired);
    std::string all = "0";
    for (int r = 1; r < size; ++r) all += ", " + std::to_string(r);
    expect_contains(message, "weft watchdog (rank " + std::to_string(rank) +
                                 "): all_reduce #2 on " + "mpi group of world ranks {" + all +
                                 "} has waited ");
    expect_contains(message, "longer than the timeout of 1 s");
    std::string arrived = "0";
    for (int r = 1; r < late; ++r) arrived += ", " + std::to_string(r);
    expect_contains(message, "arrived: world ranks {" + arrived + "}; did not arrive: rank " +
                                 std::to_string(late) +
                                 " (entered 1 collectives on this group; now not in a "
                                 "communicator operation); aborting the communicator");
  }
  host.barrier();
}

// A receive counts per peer: rank 0 waits for the first send of the last rank, which sends
// nothing until rank 0's watchdog has fired.
TEST(Watchdog, NamesThePeerOfAReceiveThatDidNotSend) {
  Communicator& host = host_world();
  const int rank = host.rank(), size = host.size();
  if (size < 2) GTEST_SKIP() << "needs a peer";
  const int late = size - 1;
  std::unique_ptr<Communicator> comm = host.split(0, rank), release = host.split(0, rank);
  Firing firing;
  bool fired = false;
  {
    CommWatchdog watchdog(
        host, kTimeout, [&](const std::string& m) { firing.fire(m, *release, late); }, kPoll);
    float x = static_cast<float>(rank);
    if (rank == 0) {
      comm->recv(host_view(&x), late, host_stream());
      EXPECT_EQ(x, static_cast<float>(late));
    } else if (rank == late) {
      wait_for_tokens(*release, {0});
      comm->send(host_view(&x), 0, host_stream());
    }
    fired = watchdog.fired();
  }
  const std::string message = firing.get();
  if (rank == 0) {
    EXPECT_TRUE(fired);
    expect_contains(message, "weft watchdog (rank 0): recv #1 from world rank " +
                                 std::to_string(late) + " on mpi group of world ranks {0, ");
    expect_contains(message, "arrived: world ranks {0}; did not arrive: rank " +
                                 std::to_string(late) +
                                 " (posted 0 of the 1 sends this rank receives; now not in a "
                                 "communicator operation); aborting");
  } else {
    EXPECT_FALSE(fired) << message;
  }
  host.barrier();
}

// Four ranks in two tensor-parallel pairs {0, 1} {2, 3}: ranks 0 and 1 wait in a world all_reduce,
// rank 2 in a barrier of its pair, rank 3 in none. Each watchdog names exactly the missing ranks.
TEST(Watchdog, NamesWhatEachMissingRankOfASubGroupIsDoing) {
  Communicator& host = host_world();
  const int rank = host.rank();
  if (host.size() != 4) GTEST_SKIP() << "needs 4 ranks";
  std::unique_ptr<Communicator> all = host.split(0, rank), release = host.split(0, rank);
  std::unique_ptr<Communicator> pair = host.split(rank / 2, rank);
  Firing firing;
  bool fired = false;
  {
    CommWatchdog watchdog(
        host, kTimeout, [&](const std::string& m) { firing.fire(m, *release, 3); }, kPoll);
    float x = 1.0f;
    if (rank == 3) {
      wait_for_tokens(*release, {0, 1, 2});
      pair->barrier();
    } else if (rank == 2) {
      pair->barrier();
    } else {
      // Rank 2 is in its barrier well before these wait past the timeout.
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    all->all_reduce(host_view(&x), host_view(&x), ReduceOp::kSum, host_stream());
    fired = watchdog.fired();
  }
  const std::string message = firing.get();
  const std::string not_in_op = "now not in a communicator operation)";
  if (rank == 3) {
    EXPECT_FALSE(fired) << message;
  } else if (rank == 2) {
    EXPECT_TRUE(fired);
    expect_contains(message,
                    "weft watchdog (rank 2): barrier #1 on mpi group of world ranks {2, 3} has "
                    "waited ");
    expect_contains(message,
                    "arrived: world ranks {2}; did not arrive: rank 3 (entered 0 "
                    "collectives on this group; " +
                        not_in_op + "; aborting");
  } else {
    EXPECT_TRUE(fired);
    expect_contains(message, "weft watchdog (rank " + std::to_string(rank) +
                                 "): all_reduce #1 on mpi group of world ranks {0, 1, 2, 3} has "
                                 "waited ");
    expect_contains(message,
                    "arrived: world ranks {0, 1}; did not arrive: rank 2 (entered 0 "
                    "collectives on this group; now in barrier #1 on mpi group of "
                    "world ranks {2, 3} for ");
    expect_contains(
        message, " s), rank 3 (entered 0 collectives on this group; " + not_in_op + "; aborting");
  }
  host.barrier();
}

}  // namespace
}  // namespace weft::testing
