// Pipeline schedules: per-rank compute orders (GPipe, 1F1B, interleaved 1F1B), the global tick
// simulation that places every transfer in a communication round, layer splits, bubble theory.
#include <algorithm>
#include <map>
#include <numeric>
#include <sstream>
#include <tuple>

#include "weft/error.hpp"
#include "weft/pipeline.hpp"

namespace weft {

ScheduleKind parse_schedule(const std::string& name) {
  if (name == "gpipe") return ScheduleKind::kGPipe;
  if (name == "1f1b") return ScheduleKind::k1F1B;
  if (name == "interleaved") return ScheduleKind::kInterleaved;
  WEFT_THROW(ErrorCode::kInvalidArgument, "unknown pipeline schedule '", name,
             "': expected gpipe, 1f1b or interleaved");
}

const char* schedule_name(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::kGPipe:
      return "gpipe";
    case ScheduleKind::k1F1B:
      return "1f1b";
    case ScheduleKind::kInterleaved:
      return "interleaved";
  }
  return "unknown";
}

const char* action_kind_name(PipelineAction::Kind kind) {
  using K = PipelineAction::Kind;
  switch (kind) {
    case K::kForward:
      return "F";
    case K::kBackward:
      return "B";
    case K::kSendActivation:
      return "send act";
    case K::kRecvActivation:
      return "recv act";
    case K::kSendGrad:
      return "send grad";
    case K::kRecvGrad:
      return "recv grad";
  }
  return "?";
}

std::string to_string(const PipelineAction& a) {
  std::ostringstream os;
  os << action_kind_name(a.kind) << " mb" << a.microbatch << " c" << a.chunk;
  if (!a.is_compute()) os << (a.is_send() ? " -> " : " <- ") << a.peer;
  if (a.round >= 0) os << " @" << a.round;
  return os.str();
}

namespace {

void check_sizes(int stages, int microbatches, int virtual_stages) {
  WEFT_CHECK(stages >= 1, "pipeline: the number of stages (", stages, ") must be positive");
  WEFT_CHECK(microbatches >= 1, "pipeline: the number of micro-batches (", microbatches,
             ") must be positive");
  WEFT_CHECK(virtual_stages >= 1, "pipeline: virtual stages per rank (", virtual_stages,
             ") must be positive");
}

PipelineAction compute(PipelineAction::Kind kind, int microbatch, int chunk) {
  PipelineAction a;
  a.kind = kind;
  a.microbatch = microbatch;
  a.chunk = chunk;
  return a;
}

}  // namespace

std::vector<PipelineAction> pipeline_compute_order(ScheduleKind kind, int stages, int rank,
                                                   int microbatches, int virtual_stages,
                                                   bool forward_only) {
  check_sizes(stages, microbatches, virtual_stages);
  WEFT_CHECK(rank >= 0 && rank < stages, "pipeline: rank ", rank, " is outside the ", stages,
             " stages");
  const int p = stages, m = microbatches, v = virtual_stages;
  using K = PipelineAction::Kind;
  if (kind == ScheduleKind::kInterleaved && v == 1) kind = ScheduleKind::k1F1B;
  WEFT_CHECK(kind == ScheduleKind::kInterleaved || v == 1, "pipeline: ", schedule_name(kind),
             " runs one model chunk per rank, got ", v,
             " virtual stages (use the interleaved schedule)");
  std::vector<PipelineAction> order;
  if (kind != ScheduleKind::kInterleaved) {
    if (forward_only) {
      for (int mb = 0; mb < m; ++mb) order.push_back(compute(K::kForward, mb, 0));
      return order;
    }
    if (kind == ScheduleKind::kGPipe) {
      for (int mb = 0; mb < m; ++mb) order.push_back(compute(K::kForward, mb, 0));
      for (int mb = m - 1; mb >= 0; --mb) order.push_back(compute(K::kBackward, mb, 0));
      return order;
    }
    const int warmup = std::min(p - rank - 1, m);
    for (int mb = 0; mb < warmup; ++mb) order.push_back(compute(K::kForward, mb, 0));
    for (int i = 0; i < m - warmup; ++i) {
      order.push_back(compute(K::kForward, warmup + i, 0));
      order.push_back(compute(K::kBackward, i, 0));
    }
    for (int mb = m - warmup; mb < m; ++mb) order.push_back(compute(K::kBackward, mb, 0));
    return order;
  }

  WEFT_CHECK(m % p == 0, "pipeline: the interleaved schedule needs the number of micro-batches (",
             m, ") to be divisible by the pipeline size (", p, ")");
  const int total = m * v, group = p * v;
  // Megatron's get_model_chunk_id / microbatch id within a chunk.
  auto microbatch_of = [&](int k) { return (k / group) * p + k % p; };
  auto forward_k = [&](int k) { return compute(K::kForward, microbatch_of(k), (k % group) / p); };
  auto backward_k = [&](int k) {
    return compute(K::kBackward, microbatch_of(k), v - 1 - (k % group) / p);
  };
  if (forward_only) {
    for (int k = 0; k < total; ++k) order.push_back(forward_k(k));
    return order;
  }
  const int warmup = m == p ? total : std::min((p - rank - 1) * 2 + (v - 1) * p, total);
  for (int k = 0; k < warmup; ++k) order.push_back(forward_k(k));
  for (int k = 0; k < total - warmup; ++k) {
    order.push_back(forward_k(k + warmup));
    order.push_back(backward_k(k));
  }
  for (int k = total - warmup; k < total; ++k) order.push_back(backward_k(k));
  return order;
}

PipelineSchedule simulate_pipeline(const std::vector<std::vector<PipelineAction>>& compute_lists,
                                   int stages, int virtual_stages, int microbatches) {
  check_sizes(stages, microbatches, virtual_stages);
  const int p = stages, v = virtual_stages, m = microbatches, S = p * v;
  WEFT_CHECK(static_cast<int>(compute_lists.size()) == p, "pipeline: ", compute_lists.size(),
             " compute orders for ", p, " stages");
  using K = PipelineAction::Kind;

  // Each (micro-batch, virtual stage) forward once, and backward once unless forward-only.
  std::vector<int> forward_tick(static_cast<size_t>(m * S), -1);
  std::vector<int> backward_tick(static_cast<size_t>(m * S), -1);
  std::vector<int> forwards(static_cast<size_t>(m * S), 0), backwards(forwards);
  bool any_backward = false;
  for (int r = 0; r < p; ++r) {
    for (const PipelineAction& a : compute_lists[static_cast<size_t>(r)]) {
      WEFT_CHECK(a.is_compute(), "pipeline: rank ", r, "'s compute order holds ", to_string(a));
      WEFT_CHECK(a.microbatch >= 0 && a.microbatch < m && a.chunk >= 0 && a.chunk < v,
                 "pipeline: rank ", r, "'s ", to_string(a), " is outside ", m, " micro-batches x ",
                 v, " chunks");
      const size_t i = static_cast<size_t>(a.microbatch * S + a.chunk * p + r);
      if (a.kind == K::kForward) {
        ++forwards[i];
      } else {
        ++backwards[i];
        any_backward = true;
      }
    }
  }
  for (int mb = 0; mb < m; ++mb) {
    for (int s = 0; s < S; ++s) {
      const size_t i = static_cast<size_t>(mb * S + s);
      WEFT_CHECK(forwards[i] == 1 && (!any_backward || backwards[i] == 1), "pipeline: rank ", s % p,
                 " computes F mb", mb, " c", s / p, " ", forwards[i], " times and B ", backwards[i],
                 " times; each must run once");
    }
  }

  // The tick simulation.
  std::vector<size_t> next(static_cast<size_t>(p), 0);
  std::vector<std::vector<std::pair<int, PipelineAction>>> placed(static_cast<size_t>(p));
  size_t remaining = 0;
  for (const auto& list : compute_lists) remaining += list.size();
  int tick = 0;
  auto done_before = [&](const std::vector<int>& ticks, int mb, int s, int t) {
    const int at = ticks[static_cast<size_t>(mb * S + s)];
    return at >= 0 && at < t;
  };
  // What an action waits for, for the error message.
  auto needs = [&](const PipelineAction& a, int r) {
    const int s = a.chunk * p + r;
    std::ostringstream os;
    if (a.kind == K::kForward) {
      os << "F mb" << a.microbatch << " of virtual stage " << s - 1;
    } else if (s == S - 1) {
      os << "F mb" << a.microbatch << " of virtual stage " << s;
    } else {
      os << "B mb" << a.microbatch << " of virtual stage " << s + 1;
    }
    return os.str();
  };
  while (remaining > 0) {
    bool progressed = false;
    for (int r = 0; r < p; ++r) {
      const auto& list = compute_lists[static_cast<size_t>(r)];
      size_t& n = next[static_cast<size_t>(r)];
      if (n == list.size()) continue;
      const PipelineAction& a = list[n];
      const int s = a.chunk * p + r, mb = a.microbatch;
      bool ready;
      if (a.kind == K::kForward) {
        ready = s == 0 || done_before(forward_tick, mb, s - 1, tick);
      } else {
        ready = s == S - 1 ? done_before(forward_tick, mb, s, tick)
                           : done_before(backward_tick, mb, s + 1, tick);
      }
      if (!ready) continue;
      (a.kind == K::kForward ? forward_tick : backward_tick)[static_cast<size_t>(mb * S + s)] =
          tick;
      placed[static_cast<size_t>(r)].emplace_back(tick, a);
      ++n;
      --remaining;
      progressed = true;
    }
    if (!progressed) {
      std::ostringstream blocked;
      for (int r = 0; r < p; ++r) {
        const auto& list = compute_lists[static_cast<size_t>(r)];
        const size_t n = next[static_cast<size_t>(r)];
        if (n == list.size()) continue;
        blocked << "; rank " << r << " waits at " << to_string(list[n]) << " for "
                << needs(list[n], r);
      }
      WEFT_THROW(ErrorCode::kInvalidArgument, "pipeline: schedule cannot make progress at tick ",
                 tick, blocked.str());
    }
    ++tick;
  }

  // The transfers: data produced at tick t crosses to another rank in round t. Key for the
  // round's global order: (round, producing virtual stage, micro-batch, gradient?).
  using Key = std::tuple<int, int, int, int, int>;  // round, 1 (after compute), s, mb, grad
  std::vector<std::vector<std::pair<Key, PipelineAction>>> lists(static_cast<size_t>(p));
  for (int r = 0; r < p; ++r) {
    for (const auto& [t, a] : placed[static_cast<size_t>(r)]) {
      PipelineAction c = a;
      c.round = t;
      c.peer = -1;
      lists[static_cast<size_t>(r)].emplace_back(Key{t, 0, 0, 0, 0}, c);
      const int s = a.chunk * p + r;
      const bool forward = a.kind == K::kForward;
      const int to = forward ? s + 1 : s - 1;
      if (to < 0 || to >= S || to % p == r) continue;  // no consumer, or a local handoff
      const Key key{t, 1, s, a.microbatch, forward ? 0 : 1};
      PipelineAction send, recv;
      send.kind = forward ? K::kSendActivation : K::kSendGrad;
      recv.kind = forward ? K::kRecvActivation : K::kRecvGrad;
      send.microbatch = recv.microbatch = a.microbatch;
      send.chunk = a.chunk;
      recv.chunk = to / p;
      send.peer = to % p;
      recv.peer = r;
      send.round = recv.round = t;
      lists[static_cast<size_t>(r)].emplace_back(key, send);
      lists[static_cast<size_t>(to % p)].emplace_back(key, recv);
    }
  }
  PipelineSchedule schedule;
  schedule.stages = p;
  schedule.virtual_stages = v;
  schedule.microbatches = m;
  schedule.forward_only = !any_backward;
  schedule.ticks = tick;
  schedule.actions.resize(static_cast<size_t>(p));
  for (int r = 0; r < p; ++r) {
    auto& list = lists[static_cast<size_t>(r)];
    std::stable_sort(list.begin(), list.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    for (auto& entry : list) schedule.actions[static_cast<size_t>(r)].push_back(entry.second);
  }
  return schedule;
}

PipelineSchedule build_pipeline_schedule(ScheduleKind kind, int stages, int microbatches,
                                         int virtual_stages, bool forward_only) {
  check_sizes(stages, microbatches, virtual_stages);
  std::vector<std::vector<PipelineAction>> compute_lists;
  for (int r = 0; r < stages; ++r) {
    compute_lists.push_back(
        pipeline_compute_order(kind, stages, r, microbatches, virtual_stages, forward_only));
  }
  return simulate_pipeline(compute_lists, stages, virtual_stages, microbatches);
}

std::vector<int64_t> split_layers(int64_t layers, int virtual_stages,
                                  const std::vector<int64_t>& explicit_counts) {
  WEFT_CHECK(layers > 0, "pipeline: the model's layers (", layers, ") must be positive");
  WEFT_CHECK(virtual_stages > 0, "pipeline: the number of virtual stages (", virtual_stages,
             ") must be positive");
  if (explicit_counts.empty()) {
    WEFT_CHECK(layers % virtual_stages == 0, "pipeline: the model's layers (", layers,
               ") are not divisible by the number of virtual stages (", virtual_stages,
               "); give explicit layer counts per stage");
    return std::vector<int64_t>(static_cast<size_t>(virtual_stages), layers / virtual_stages);
  }
  WEFT_CHECK(static_cast<int64_t>(explicit_counts.size()) == virtual_stages,
             "pipeline: ", explicit_counts.size(), " layer counts given for ", virtual_stages,
             " virtual stages (pipeline size x virtual stages per rank)");
  for (size_t s = 0; s < explicit_counts.size(); ++s) {
    WEFT_CHECK(explicit_counts[s] >= 0, "pipeline: virtual stage ", s, " has a negative count (",
               explicit_counts[s], ") of layers");
  }
  const int64_t sum = std::accumulate(explicit_counts.begin(), explicit_counts.end(), int64_t{0});
  WEFT_CHECK(sum == layers, "pipeline: the layer counts per stage sum to ", sum,
             " but the model has ", layers, " layers");
  return explicit_counts;
}

std::vector<GPTStageLayout> pipeline_stage_layouts(const std::vector<int64_t>& layer_counts) {
  const size_t stages = layer_counts.size();
  WEFT_CHECK(stages > 0, "pipeline: no stages");
  std::vector<GPTStageLayout> layouts;
  int64_t first = 0;
  for (size_t s = 0; s < stages; ++s) {
    GPTStageLayout layout;
    layout.first_layer = first;
    layout.layers = layer_counts[s];
    layout.has_embedding = s == 0;
    layout.has_head = s + 1 == stages;
    WEFT_CHECK(layout.layers > 0 || layout.has_embedding || layout.has_head,
               "pipeline: virtual stage ", s, " of ", stages,
               " would hold no layer, embedding or head; give it at least one layer");
    first += layer_counts[s];
    layouts.push_back(layout);
  }
  return layouts;
}

double theoretical_bubble_fraction(ScheduleKind kind, int stages, int64_t microbatches,
                                   int virtual_stages) {
  WEFT_CHECK(stages >= 1 && microbatches >= 1 && virtual_stages >= 1, "pipeline: stages (", stages,
             "), micro-batches (", microbatches, ") and virtual stages (", virtual_stages,
             ") must be positive");
  const double p = stages, m = static_cast<double>(microbatches);
  const double bubble = (p - 1.0) / (m + p - 1.0);
  return kind == ScheduleKind::kInterleaved ? bubble / virtual_stages : bubble;
}

double replay_pipeline_step_ms(
    const std::vector<std::vector<PipelineStats::TimedCompute>>& computes, int virtual_stages) {
  using Kind = PipelineStats::TimedCompute::Kind;
  const int p = static_cast<int>(computes.size()), v = virtual_stages, S = p * v;
  WEFT_CHECK(p >= 1 && v >= 1, "replay_pipeline_step_ms: ", p, " ranks and ", v,
             " virtual stages (both must be positive)");
  // When F and B of (micro-batch, virtual stage) end in the replay.
  std::map<std::pair<int, int>, double> forward_end, backward_end;
  std::vector<size_t> next(static_cast<size_t>(p), 0);
  std::vector<double> free_at(static_cast<size_t>(p), 0.0);
  for (bool progress = true; progress;) {
    progress = false;
    for (int r = 0; r < p; ++r) {
      const std::vector<PipelineStats::TimedCompute>& list = computes[static_cast<size_t>(r)];
      size_t& i = next[static_cast<size_t>(r)];
      double& free = free_at[static_cast<size_t>(r)];
      for (; i < list.size(); ++i) {
        const PipelineStats::TimedCompute& a = list[i];
        WEFT_CHECK(a.chunk >= 0 && a.chunk < v && a.ms >= 0.0, "replay_pipeline_step_ms: rank ", r,
                   "'s action ", i, " has chunk ", a.chunk, " (of ", v, ") and ", a.ms, " ms");
        const int s = a.chunk * p + r;
        double ready = free;
        const bool needs_forward = a.kind == Kind::kForward && s > 0;
        const bool needs_backward = a.kind == Kind::kBackward && s < S - 1;
        if (needs_forward || needs_backward) {
          const auto& ends = needs_forward ? forward_end : backward_end;
          const auto input = ends.find({a.microbatch, needs_forward ? s - 1 : s + 1});
          if (input == ends.end()) break;  // its input is not computed yet
          ready = std::max(ready, input->second);
        }
        free = ready + a.ms;
        if (a.kind == Kind::kForward) forward_end[{a.microbatch, s}] = free;
        if (a.kind == Kind::kBackward) backward_end[{a.microbatch, s}] = free;
        progress = true;
      }
    }
  }
  for (int r = 0; r < p; ++r) {
    WEFT_CHECK(next[static_cast<size_t>(r)] == computes[static_cast<size_t>(r)].size(),
               "replay_pipeline_step_ms: rank ", r, " waits forever at its action ",
               next[static_cast<size_t>(r)], " (its input is never computed)");
  }
  return *std::max_element(free_at.begin(), free_at.end());
}

}  // namespace weft
