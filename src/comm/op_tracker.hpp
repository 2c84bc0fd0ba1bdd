// What each thread is blocked in, and how far this rank has got in each group: what a
// CommWatchdog measures and what the watchdogs of a group compare to name the ranks that did not
// arrive.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "weft/comm.hpp"

namespace weft::detail {

// One communicator's identity, the same on each of its ranks, and the operations this rank
// entered on it. Every collective is entered by all members in the same order, so "collective #N"
// names the same call on every rank. Sends and receives are counted per peer instead: this rank's
// k-th send to p matches p's k-th receive from it (MPI and NCCL both match p2p in order), while
// the totals differ from rank to rank (a pipeline's first stage only sends forward).
struct GroupRecord {
  std::string name;              // Communicator::name(): "mpi", "nccl", "mpi-staged"
  std::vector<int> world_ranks;  // empty: unknown, never registered
  // How many groups of the same name and world ranks this process made before this one: all
  // members make such groups in the same order (each creation is collective over a group that
  // holds them all), so (name, world ranks, ordinal) tells apart a world and its copies.
  int ordinal = 0;
  std::atomic<uint64_t> collectives{0};
  // Per group rank; allocated with the world ranks (p2p on a group without them is not counted).
  std::unique_ptr<std::atomic<uint64_t>[]> sends_to, recvs_from;
};

// Makes `record` findable by find_group (until it is destroyed) and assigns its ordinal.
void register_group(const std::shared_ptr<GroupRecord>& record);
// The live group of this process with that identity, or null.
std::shared_ptr<GroupRecord> find_group(const std::string& name,
                                        const std::vector<int>& world_ranks, int ordinal);

enum class OpKind { kCollective, kSend, kRecv, kP2pGroup };

// Marks the calling thread as inside `op` of `comm` for its lifetime and counts it (a collective,
// or a send/receive with the group rank `peer`). Nested scopes (a staged communicator calling its
// host's operation) keep the outermost. `op` must be a string literal.
class OpScope {
 public:
  OpScope(Communicator& comm, const char* op, OpKind kind = OpKind::kCollective, int peer = -1);
  ~OpScope();
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;
};

}  // namespace weft::detail
