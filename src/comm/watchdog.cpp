// CommWatchdog, the per-thread record of the operation each thread is blocked in, the registry of
// groups, and the side channel over which the watchdogs of a job tell each other how far they got.
#include "weft/watchdog.hpp"

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <list>
#include <map>
#include <sstream>
#include <vector>

#include "comm/mpi_check.hpp"
#include "comm/mpi_communicator.hpp"
#include "comm/op_tracker.hpp"
#include "weft/error.hpp"

namespace weft {

namespace {

using Clock = std::chrono::steady_clock;

// One thread's current operation. The watchdog reads it under `mutex`, and calls abort() while
// holding it, so that the communicator cannot be destroyed meanwhile (the operation's scope must
// take the mutex to end).
struct ThreadSlot {
  std::mutex mutex;
  int depth = 0;
  Communicator* comm = nullptr;
  const char* op = nullptr;
  detail::OpKind kind = detail::OpKind::kCollective;
  int peer = -1;       // group rank of a send's or receive's peer
  uint64_t seq = 0;    // collective number on the group, or send/receive number to/from `peer`
  uint64_t entry = 0;  // counts this slot's outermost operations: tells one from the next
  Clock::time_point since;
};

std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
std::vector<std::shared_ptr<ThreadSlot>>& registry() {
  static std::vector<std::shared_ptr<ThreadSlot>> slots;
  return slots;
}

ThreadSlot& this_thread_slot() {
  thread_local std::shared_ptr<ThreadSlot> slot = [] {
    auto s = std::make_shared<ThreadSlot>();
    std::lock_guard<std::mutex> lock(registry_mutex());
    registry().push_back(s);
    return s;
  }();
  return *slot;
}

std::vector<std::shared_ptr<ThreadSlot>> all_slots() {
  std::lock_guard<std::mutex> lock(registry_mutex());
  return registry();
}

// The live groups of this process, and how many of each identity were made.
struct Groups {
  std::mutex mutex;
  std::vector<std::weak_ptr<detail::GroupRecord>> live;
  std::map<std::pair<std::string, std::vector<int>>, int> made;
};
Groups& groups() {
  static Groups g;
  return g;
}

std::string join(const std::vector<int>& values) {
  std::string text;
  for (size_t i = 0; i < values.size(); ++i) text += (i ? ", " : "") + std::to_string(values[i]);
  return text;
}

std::string seconds(double s) {
  std::ostringstream os;
  os.precision(3);
  os << s;
  return os.str();
}

// "all_reduce #7 on mpi group of world ranks {0, 1}", "recv #3 from world rank 2 on ...". The
// slot's mutex is held (its communicator is alive).
std::string describe_op(const ThreadSlot& slot) {
  std::string text = slot.op;
  const std::vector<int>& ranks = slot.comm->world_ranks();
  if (slot.kind != detail::OpKind::kP2pGroup && slot.seq > 0)
    text += " #" + std::to_string(slot.seq);
  if (slot.kind == detail::OpKind::kSend || slot.kind == detail::OpKind::kRecv) {
    text += slot.kind == detail::OpKind::kSend ? " to " : " from ";
    text += ranks.empty() ? "group rank " + std::to_string(slot.peer)
                          : "world rank " + std::to_string(ranks[static_cast<size_t>(slot.peer)]);
  }
  return text + " on " + slot.comm->describe();
}

// What every thread of this process is blocked in, "; "-separated, or that none is.
std::string current_ops() {
  std::string text;
  for (const std::shared_ptr<ThreadSlot>& slot : all_slots()) {
    std::lock_guard<std::mutex> lock(slot->mutex);
    if (slot->depth == 0 || slot->comm == nullptr) continue;
    const double waited = std::chrono::duration<double>(Clock::now() - slot->since).count();
    text +=
        (text.empty() ? "in " : "; in ") + describe_op(*slot) + " for " + seconds(waited) + " s";
  }
  return text.empty() ? "not in a communicator operation" : text;
}

uint64_t load(const std::unique_ptr<std::atomic<uint64_t>[]>& counts, int i) {
  return counts ? counts[static_cast<size_t>(i)].load() : 0;
}

}  // namespace

namespace detail {

void register_group(const std::shared_ptr<GroupRecord>& record) {
  Groups& g = groups();
  std::lock_guard<std::mutex> lock(g.mutex);
  record->ordinal = g.made[{record->name, record->world_ranks}]++;
  g.live.erase(std::remove_if(g.live.begin(), g.live.end(),
                              [](const std::weak_ptr<GroupRecord>& w) { return w.expired(); }),
               g.live.end());
  g.live.push_back(record);
}

std::shared_ptr<GroupRecord> find_group(const std::string& name,
                                        const std::vector<int>& world_ranks, int ordinal) {
  Groups& g = groups();
  std::lock_guard<std::mutex> lock(g.mutex);
  for (const std::weak_ptr<GroupRecord>& weak : g.live) {
    std::shared_ptr<GroupRecord> record = weak.lock();
    if (record && record->ordinal == ordinal && record->name == name &&
        record->world_ranks == world_ranks) {
      return record;
    }
  }
  return nullptr;
}

OpScope::OpScope(Communicator& comm, const char* op, OpKind kind, int peer) {
  GroupRecord& record = *comm.record_;
  uint64_t seq = 0;
  if (kind == OpKind::kCollective) {
    seq = ++record.collectives;
  } else if (kind == OpKind::kSend && record.sends_to) {
    seq = ++record.sends_to[static_cast<size_t>(peer)];
  } else if (kind == OpKind::kRecv && record.recvs_from) {
    seq = ++record.recvs_from[static_cast<size_t>(peer)];
  }
  ThreadSlot& slot = this_thread_slot();
  std::lock_guard<std::mutex> lock(slot.mutex);
  if (slot.depth++ == 0) {
    slot.comm = &comm;
    slot.op = op;
    slot.kind = kind;
    slot.peer = peer;
    slot.seq = seq;
    ++slot.entry;
    slot.since = Clock::now();
  }
}

OpScope::~OpScope() {
  ThreadSlot& slot = this_thread_slot();
  std::lock_guard<std::mutex> lock(slot.mutex);
  if (--slot.depth == 0) {
    slot.comm = nullptr;
    slot.op = nullptr;
  }
}

}  // namespace detail

namespace {

constexpr int kQueryTag = 1, kAnswerTag = 2;

// A question to a peer's watchdog: the group (its identity) and the asking rank's place in it.
std::string make_query(const detail::GroupRecord& group, int asker) {
  std::ostringstream os;
  os << group.name << '\n' << group.ordinal << '\n' << asker;
  for (int r : group.world_ranks) os << ' ' << r;
  return os.str();
}

// The answer: "<collectives entered> <sends to the asker> <receives from it>" (or "absent": this
// rank has no such group), then on the next line what this process is blocked in.
std::string make_answer(const std::string& query) {
  std::istringstream is(query);
  std::string name;
  int ordinal = 0, asker = -1;
  std::getline(is, name);
  is >> ordinal >> asker;
  std::vector<int> ranks;
  for (int r; is >> r;) ranks.push_back(r);
  std::string head = "absent";
  const std::shared_ptr<detail::GroupRecord> group = detail::find_group(name, ranks, ordinal);
  if (group && asker >= 0 && asker < static_cast<int>(ranks.size())) {
    head = std::to_string(group->collectives.load()) + ' ' +
           std::to_string(load(group->sends_to, asker)) + ' ' +
           std::to_string(load(group->recvs_from, asker));
  }
  return head + '\n' + current_ops();
}

}  // namespace

// A private copy of the host world: queries and answers never match the program's messages.
struct CommWatchdog::Channel {
  MPI_Comm comm = MPI_COMM_NULL;
  std::vector<int> rank_of_world;  // world rank -> rank here, -1: not in the host world
  // Sends in flight with their buffers: an answer or a question is only dropped once sent.
  std::list<std::pair<MPI_Request, std::unique_ptr<std::string>>> outgoing;

  void send(int to, int tag, std::string text) {
    outgoing.emplace_back(MPI_REQUEST_NULL, std::make_unique<std::string>(std::move(text)));
    std::string& buffer = *outgoing.back().second;
    if (MPI_Isend(buffer.data(), static_cast<int>(buffer.size()), MPI_CHAR, to, tag, comm,
                  &outgoing.back().first) != MPI_SUCCESS) {
      outgoing.pop_back();
    }
  }

  // A message with `tag` from `from` (MPI_ANY_SOURCE) if one is there; never blocks.
  bool receive(int from, int tag, int* source, std::string* text) {
    int flag = 0;
    MPI_Status status;
    if (MPI_Iprobe(from, tag, comm, &flag, &status) != MPI_SUCCESS || !flag) return false;
    int count = 0;
    MPI_Get_count(&status, MPI_CHAR, &count);
    text->assign(static_cast<size_t>(count), '\0');
    // The message is there (probed), so this returns at once.
    if (MPI_Recv(text->data(), count, MPI_CHAR, status.MPI_SOURCE, tag, comm, MPI_STATUS_IGNORE) !=
        MPI_SUCCESS) {
      return false;
    }
    *source = status.MPI_SOURCE;
    return true;
  }

  // Answers every question waiting, and forgets the sends that completed.
  void serve() {
    int source = -1;
    std::string query;
    while (receive(MPI_ANY_SOURCE, kQueryTag, &source, &query)) {
      send(source, kAnswerTag, make_answer(query));
    }
    for (auto it = outgoing.begin(); it != outgoing.end();) {
      int done = 0;
      if (MPI_Test(&it->first, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS || done) {
        it = outgoing.erase(it);
      } else {
        ++it;
      }
    }
  }

  ~Channel() {
    if (comm == MPI_COMM_NULL || mpi_finalized()) return;
    const auto deadline = Clock::now() + std::chrono::milliseconds(200);
    while (!outgoing.empty() && Clock::now() < deadline) serve();
    // A peer that never received (it exited): MPI may still read the buffer, so it is kept.
    for (auto& [request, text] : outgoing) {
      MPI_Request_free(&request);
      text.release();  // deliberately leaked: MPI may still read it
    }
    MPI_Comm_free(&comm);
  }
};

struct CommWatchdog::Blocked {
  std::string op;  // describe_op
  detail::OpKind kind;
  int peer;
  uint64_t seq;
  int rank;  // this rank in the group
  std::shared_ptr<detail::GroupRecord> group;
  double waited;
};

CommWatchdog::CommWatchdog(Communicator& host_world, double timeout_s,
                           std::function<void(const std::string&)> on_timeout, double poll_s)
    : CommWatchdog(timeout_s, std::move(on_timeout), poll_s) {
  // The thread runs already; it reads channel_ only after the first poll, under mutex_.
  std::unique_ptr<Channel> channel;
  std::string why;
  auto* mpi = dynamic_cast<MpiCommunicator*>(&host_world);
  if (mpi == nullptr) {
    WEFT_CHECK(host_world.size() == 1, "CommWatchdog: the host world must be the MPI world or ",
               "a world of one rank, got the ", host_world.describe());
    why = "no MPI host world";
  } else {
    int provided = MPI_THREAD_SINGLE;
    MPI_Query_thread(&provided);
    // Every rank initialised MPI alike, so every rank takes the same branch (the dup is
    // collective).
    if (provided < MPI_THREAD_MULTIPLE) {
      why = "MPI without MPI_THREAD_MULTIPLE";
    } else {
      MPI_Comm comm = MPI_COMM_NULL;
      WEFT_CHECK_MPI(MPI_Comm_dup(mpi->native(), &comm), "CommWatchdog: copying the host world");
      channel = std::make_unique<Channel>();
      channel->comm = comm;
      MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
      int world_size = 0;
      MPI_Comm_size(MPI_COMM_WORLD, &world_size);
      std::vector<int> world(static_cast<size_t>(world_size));
      for (int i = 0; i < world_size; ++i) world[static_cast<size_t>(i)] = i;
      channel->rank_of_world.assign(world.size(), MPI_UNDEFINED);
      MPI_Group mine = MPI_GROUP_NULL, all = MPI_GROUP_NULL;
      MPI_Comm_group(comm, &mine);
      MPI_Comm_group(MPI_COMM_WORLD, &all);
      MPI_Group_translate_ranks(all, world_size, world.data(), mine, channel->rank_of_world.data());
      MPI_Group_free(&mine);
      MPI_Group_free(&all);
      for (int& r : channel->rank_of_world) r = r == MPI_UNDEFINED ? -1 : r;
    }
  }
  std::lock_guard<std::mutex> lock(mutex_);
  channel_ = std::move(channel);
  no_channel_ = why;
}

CommWatchdog::CommWatchdog(double timeout_s, std::function<void(const std::string&)> on_timeout,
                           double poll_s)
    : timeout_s_(timeout_s),
      poll_s_(poll_s),
      on_timeout_(std::move(on_timeout)),
      no_channel_("the watchdog was given no host world") {
  WEFT_CHECK(timeout_s > 0 && poll_s > 0, "CommWatchdog: timeout (", timeout_s, " s) and poll (",
             poll_s, " s) must be positive");
  if (!on_timeout_) {
    on_timeout_ = [](const std::string& message) {
      std::fprintf(stderr, "%s\n", message.c_str());
      std::fflush(stderr);
    };
  }
  thread_ = std::thread([this] { watch(); });
}

CommWatchdog::~CommWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void CommWatchdog::watch() {
  const auto poll = std::chrono::duration<double>(poll_s_);
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    wake_.wait_for(lock, poll, [this] { return stop_; });
    if (stop_) break;
    // Also after firing: the watchdogs of the peers may fire later and ask this rank.
    if (channel_) channel_->serve();
    if (!fired_) check();
  }
}

void CommWatchdog::check() {
  for (const std::shared_ptr<ThreadSlot>& slot : all_slots()) {
    Blocked blocked;
    Communicator* comm = nullptr;
    uint64_t entry = 0;
    {
      std::lock_guard<std::mutex> slot_lock(slot->mutex);
      if (slot->depth == 0 || slot->comm == nullptr) continue;
      blocked.waited = std::chrono::duration<double>(Clock::now() - slot->since).count();
      if (blocked.waited <= timeout_s_) continue;
      comm = slot->comm;
      entry = slot->entry;
      blocked = Blocked{describe_op(*slot), slot->kind,    slot->peer,    slot->seq,
                        comm->rank(),       comm->record_, blocked.waited};
    }
    // The peers are asked without holding the slot: the operation may end (and its communicator
    // go) meanwhile; what the message needs was copied.
    std::ostringstream os;
    os << "weft watchdog";
    if (error_rank() >= 0) os << " (rank " << error_rank() << ")";
    os << ": " << blocked.op << " has waited " << seconds(blocked.waited)
       << " s, longer than the timeout of " << seconds(timeout_s_)
       << " s (a peer failed, stalled or never called it); " << arrivals(blocked)
       << "; aborting the communicator";
    on_timeout_(os.str());
    fired_ = true;
    std::lock_guard<std::mutex> slot_lock(slot->mutex);
    if (slot->depth > 0 && slot->entry == entry) comm->abort();
    return;
  }
}

std::string CommWatchdog::arrivals(const Blocked& blocked) {
  const detail::GroupRecord& group = *blocked.group;
  const std::string unknown = "which ranks did not arrive is unknown: ";
  if (group.world_ranks.empty()) return unknown + "the group's world ranks are unknown";
  if (!channel_) return unknown + no_channel_;
  // The peers that must have got as far as this rank, and what each must have entered: every
  // member for a collective; the peer of a send or receive; for a group of sends and receives,
  // each peer this rank has sent to or received from, which must have posted the matching
  // receives and sends (a later group counts too: the diagnosis is meant to be read, not exact).
  struct Need {
    int rank;               // in the group
    uint64_t sends, recvs;  // this rank's sends to it and receives from it, to be matched
  };
  std::vector<Need> needs;
  const int size = static_cast<int>(group.world_ranks.size());
  for (int r = 0; r < size; ++r) {
    if (r == blocked.rank) continue;
    if (blocked.kind == detail::OpKind::kCollective) {
      needs.push_back({r, 0, 0});
    } else if (blocked.kind == detail::OpKind::kSend && r == blocked.peer) {
      needs.push_back({r, blocked.seq, 0});
    } else if (blocked.kind == detail::OpKind::kRecv && r == blocked.peer) {
      needs.push_back({r, 0, blocked.seq});
    } else if (blocked.kind == detail::OpKind::kP2pGroup) {
      const uint64_t sends = load(group.sends_to, r), recvs = load(group.recvs_from, r);
      if (sends > 0 || recvs > 0) needs.push_back({r, sends, recvs});
    }
  }
  // Ask them all at once; answer the others meanwhile (their watchdogs may be asking this one).
  const std::string query = make_query(group, blocked.rank);
  std::map<int, int> asked;  // rank here -> group rank
  for (const Need& need : needs) {
    const int world = group.world_ranks[static_cast<size_t>(need.rank)];
    const int here = world < static_cast<int>(channel_->rank_of_world.size())
                         ? channel_->rank_of_world[static_cast<size_t>(world)]
                         : -1;
    if (here < 0) continue;
    channel_->send(here, kQueryTag, query);
    asked[here] = need.rank;
  }
  const double grace = std::max(2.0, 4 * poll_s_);
  const auto deadline = Clock::now() + std::chrono::duration<double>(grace);
  std::map<int, std::string> answers;  // group rank -> answer
  while (answers.size() < asked.size() && Clock::now() < deadline) {
    channel_->serve();
    for (const auto& [here, rank] : asked) {
      int source = -1;
      std::string answer;
      if (answers.count(rank) == 0 && channel_->receive(here, kAnswerTag, &source, &answer)) {
        answers[rank] = answer;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }

  std::vector<int> arrived = {group.world_ranks[static_cast<size_t>(blocked.rank)]};
  std::vector<std::string> missing;
  for (const Need& need : needs) {
    const int world = group.world_ranks[static_cast<size_t>(need.rank)];
    const std::string who = "rank " + std::to_string(world);
    const auto it = answers.find(need.rank);
    if (it == answers.end()) {
      missing.push_back(who + " (no answer within " + seconds(grace) +
                        " s: exited, stopped or unreachable)");
      continue;
    }
    std::istringstream is(it->second);
    std::string head, now;
    std::getline(is, head);
    std::getline(is, now);
    if (head == "absent") {
      missing.push_back(who + " (has no such group: not made yet or already destroyed; now " + now +
                        ")");
      continue;
    }
    uint64_t collectives = 0, sends = 0, recvs = 0;
    std::istringstream(head) >> collectives >> sends >> recvs;
    std::string got;
    if (blocked.kind == detail::OpKind::kCollective) {
      if (collectives >= blocked.seq) {
        arrived.push_back(world);
        continue;
      }
      got = "entered " + std::to_string(collectives) + " collectives on this group";
    } else {
      if (sends >= need.recvs && recvs >= need.sends) {
        arrived.push_back(world);
        continue;
      }
      if (sends < need.recvs) {
        got = "posted " + std::to_string(sends) + " of the " + std::to_string(need.recvs) +
              " sends this rank receives";
      }
      if (recvs < need.sends) {
        got += (got.empty() ? "posted " : ", ") + std::to_string(recvs) + " of the " +
               std::to_string(need.sends) + " receives this rank sends to";
      }
    }
    missing.push_back(who + " (" + got + "; now " + now + ")");
  }
  std::sort(arrived.begin(), arrived.end());
  std::string text = "arrived: world ranks {" + join(arrived) + "}; did not arrive: ";
  if (missing.empty()) return text + "none (the operation may have completed meanwhile)";
  for (size_t i = 0; i < missing.size(); ++i) text += (i ? ", " : "") + missing[i];
  return text;
}

}  // namespace weft
