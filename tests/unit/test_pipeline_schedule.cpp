// Pipeline schedules (tier 1, no MPI): compute-order invariants of GPipe, 1F1B and interleaved
// 1F1B over a table of sizes, the tick simulation and its communication rounds, layer splits.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <map>
#include <set>
#include <tuple>

#include "unit/unit_util.hpp"
#include "weft/pipeline.hpp"

namespace weft::testing {
namespace {

using K = PipelineAction::Kind;

struct Case {
  ScheduleKind kind;
  int p, m, v;
  std::string str() const {
    return std::string(schedule_name(kind)) + " p=" + std::to_string(p) +
           " m=" + std::to_string(m) + " v=" + std::to_string(v);
  }
};

// Every case of the table that a schedule accepts: p in {1,2,4,8}, m in 1..32, v in {1,2,4}
// (v > 1 only interleaved, which needs m divisible by p there).
std::vector<Case> valid_cases() {
  std::vector<Case> cases;
  for (ScheduleKind kind :
       {ScheduleKind::kGPipe, ScheduleKind::k1F1B, ScheduleKind::kInterleaved}) {
    for (int p : {1, 2, 4, 8}) {
      for (int m = 1; m <= 32; ++m) {
        for (int v : {1, 2, 4}) {
          if (v > 1 && (kind != ScheduleKind::kInterleaved || m % p != 0)) continue;
          cases.push_back({kind, p, m, v});
        }
      }
    }
  }
  return cases;
}

// Megatron's warm-up forwards of interleaved rank r (v > 1).
int interleaved_warmup(int p, int m, int v, int r) {
  return m == p ? m * v : std::min((p - r - 1) * 2 + (v - 1) * p, m * v);
}

TEST(PipelineSchedule, ComputeOrdersKeepTheInvariants) {
  for (const Case& c : valid_cases()) {
    SCOPED_TRACE(c.str());
    for (int r = 0; r < c.p; ++r) {
      const std::vector<PipelineAction> order = pipeline_compute_order(c.kind, c.p, r, c.m, c.v);
      ASSERT_EQ(order.size(), static_cast<size_t>(2 * c.m * c.v)) << "rank " << r;
      std::set<std::pair<int, int>> forwarded, backwarded;  // (chunk, mb)
      int in_flight = 0, peak = 0;
      for (const PipelineAction& a : order) {
        ASSERT_TRUE(a.is_compute());
        ASSERT_TRUE(a.chunk >= 0 && a.chunk < c.v && a.microbatch >= 0 && a.microbatch < c.m);
        if (a.kind == K::kForward) {
          ASSERT_TRUE(forwarded.insert({a.chunk, a.microbatch}).second) << to_string(a) << " twice";
          peak = std::max(peak, ++in_flight);
        } else {
          ASSERT_TRUE(forwarded.count({a.chunk, a.microbatch}))
              << to_string(a) << " before its forward on rank " << r;
          ASSERT_TRUE(backwarded.insert({a.chunk, a.microbatch}).second) << to_string(a);
          --in_flight;
          ASSERT_GE(in_flight, 0);
        }
      }
      EXPECT_EQ(in_flight, 0);
      EXPECT_EQ(forwarded.size(), static_cast<size_t>(c.m * c.v));  // m per virtual stage
      EXPECT_EQ(backwarded.size(), static_cast<size_t>(c.m * c.v));
      if (c.kind == ScheduleKind::kGPipe) {
        EXPECT_EQ(peak, c.m) << "rank " << r;
      }
      if (c.kind == ScheduleKind::k1F1B || (c.kind == ScheduleKind::kInterleaved && c.v == 1)) {
        EXPECT_EQ(peak, std::min(c.p - r, c.m)) << "rank " << r;
        EXPECT_LE(peak, c.p);
      }
      if (c.kind == ScheduleKind::kInterleaved && c.v > 1) {
        EXPECT_LE(peak, std::min(interleaved_warmup(c.p, c.m, c.v, r) + 1, c.m * c.v))
            << "rank " << r;
      }
    }
  }
}

TEST(PipelineSchedule, InterleavedWithOneChunkIs1F1B) {
  for (int p : {1, 2, 4, 8}) {
    for (int m = 1; m <= 32; ++m) {
      for (int r = 0; r < p; ++r) {
        EXPECT_EQ(pipeline_compute_order(ScheduleKind::kInterleaved, p, r, m, 1),
                  pipeline_compute_order(ScheduleKind::k1F1B, p, r, m, 1));
      }
    }
  }
}

TEST(PipelineSchedule, InterleavedRejectsMicrobatchesNotDivisibleByStages) {
  for (int p : {2, 4, 8}) {
    for (int v : {2, 4}) {
      for (int m = 1; m <= 32; ++m) {
        if (m % p == 0) continue;
        EXPECT_WEFT_ERROR(build_pipeline_schedule(ScheduleKind::kInterleaved, p, m, v),
                          "micro-batches (" + std::to_string(m) + ")",
                          "pipeline size (" + std::to_string(p) + ")");
      }
    }
  }
  EXPECT_WEFT_ERROR(pipeline_compute_order(ScheduleKind::k1F1B, 2, 0, 4, 2), "1f1b",
                    "2 virtual stages", "interleaved");
  EXPECT_WEFT_ERROR(pipeline_compute_order(ScheduleKind::kGPipe, 2, 0, 4, 2), "gpipe");
  EXPECT_WEFT_ERROR(pipeline_compute_order(ScheduleKind::k1F1B, 2, 2, 4, 1), "rank 2");
  EXPECT_WEFT_ERROR(build_pipeline_schedule(ScheduleKind::k1F1B, 2, 0, 1), "micro-batches (0)");
}

// Checks a simulated schedule: ticks respect the dependencies, every cross-rank dependency is one
// send and one receive in the producer's round, sends and receives pair up round by round and
// in the same order between each pair of ranks.
void check_simulation(const PipelineSchedule& s, const std::string& what) {
  SCOPED_TRACE(what);
  const int p = s.stages, v = s.virtual_stages, m = s.microbatches, S = p * v;
  std::map<std::pair<int, int>, int> f_tick, b_tick;  // (mb, virtual stage) -> tick
  // (round, src, dst) -> ordered transfers (mb, producing virtual stage, gradient?)
  std::map<std::tuple<int, int, int>, std::vector<std::tuple<int, int, bool>>> sends, recvs;
  std::map<std::pair<int, int>, int> act_recv_round, grad_recv_round;  // (mb, consumer vs)
  for (int r = 0; r < p; ++r) {
    int last_round = -1, last_compute = -1;
    bool seen_comm_this_round = false;
    for (const PipelineAction& a : s.actions[static_cast<size_t>(r)]) {
      ASSERT_GE(a.round, last_round) << "actions out of order on rank " << r;
      if (a.round != last_round) seen_comm_this_round = false;
      last_round = a.round;
      ASSERT_LT(a.round, s.ticks);
      const int vs = a.chunk * p + r;
      if (a.is_compute()) {
        ASSERT_FALSE(seen_comm_this_round) << "compute after the round's transfers";
        ASSERT_GT(a.round, last_compute) << "two computes in one tick on rank " << r;
        last_compute = a.round;
        (a.kind == K::kForward ? f_tick : b_tick)[{a.microbatch, vs}] = a.round;
        continue;
      }
      seen_comm_this_round = true;
      ASSERT_NE(a.peer, r);
      const bool grad = a.kind == K::kSendGrad || a.kind == K::kRecvGrad;
      if (a.is_send()) {
        const int to = grad ? vs - 1 : vs + 1;
        ASSERT_EQ(to % p, a.peer) << to_string(a);
        sends[{a.round, r, a.peer}].emplace_back(a.microbatch, vs, grad);
      } else {
        const int from = grad ? vs + 1 : vs - 1;
        ASSERT_EQ(from % p, a.peer) << to_string(a);
        recvs[{a.round, a.peer, r}].emplace_back(a.microbatch, from, grad);
        (grad ? grad_recv_round : act_recv_round)[{a.microbatch, vs}] = a.round;
      }
    }
  }
  EXPECT_EQ(sends, recvs) << "sends and receives must pair up round by round";
  for (int mb = 0; mb < m; ++mb) {
    for (int vs = 0; vs < S; ++vs) {
      ASSERT_TRUE(f_tick.count({mb, vs}));
      const int f = f_tick[{mb, vs}];
      if (vs > 0) {
        EXPECT_GT(f, (f_tick[{mb, vs - 1}]));
        if ((vs - 1) % p != vs % p) {
          ASSERT_TRUE(act_recv_round.count({mb, vs})) << "activation of mb" << mb << " to " << vs;
          EXPECT_EQ((act_recv_round[{mb, vs}]), (f_tick[{mb, vs - 1}]));
        }
      }
      if (s.forward_only) {
        EXPECT_FALSE(b_tick.count({mb, vs}));
        continue;
      }
      ASSERT_TRUE(b_tick.count({mb, vs}));
      const int b = b_tick[{mb, vs}];
      EXPECT_GT(b, f);
      if (vs + 1 < S) {
        EXPECT_GT(b, (b_tick[{mb, vs + 1}]));
        if ((vs + 1) % p != vs % p) {
          ASSERT_TRUE(grad_recv_round.count({mb, vs})) << "gradient of mb" << mb << " to " << vs;
          EXPECT_EQ((grad_recv_round[{mb, vs}]), (b_tick[{mb, vs + 1}]));
        }
      }
    }
  }
}

TEST(PipelineSchedule, SimulationMakesProgressAndPairsTransfersRoundByRound) {
  for (const Case& c : valid_cases()) {
    const PipelineSchedule s = build_pipeline_schedule(c.kind, c.p, c.m, c.v);
    ASSERT_EQ(s.actions.size(), static_cast<size_t>(c.p));
    check_simulation(s, c.str());
    if (::testing::Test::HasFatalFailure()) return;
    // With a tick per chunk forward or backward, each rank computes for 2mv ticks and idles for
    // 2(p - 1): the bubble of the theory, 1/v as long for interleaving (in ticks of 1/v stage).
    EXPECT_EQ(s.ticks, 2 * (c.m * c.v + c.p - 1)) << c.str();
  }
}

TEST(PipelineSchedule, ForwardOnlySchedules) {
  for (const Case& c : valid_cases()) {
    if (c.m > 8) continue;
    const PipelineSchedule s = build_pipeline_schedule(c.kind, c.p, c.m, c.v, true);
    EXPECT_TRUE(s.forward_only);
    check_simulation(s, c.str() + " forward only");
    if (::testing::Test::HasFatalFailure()) return;
    EXPECT_EQ(s.ticks, c.m * c.v + c.p - 1) << c.str();
  }
}

TEST(PipelineSchedule, DeadlockedOrdersAreReported) {
  auto action = [](K kind, int mb) {
    PipelineAction a;
    a.kind = kind;
    a.microbatch = mb;
    return a;
  };
  // Rank 0 wants B mb0 before it ran F mb0.
  const std::vector<std::vector<PipelineAction>> bad{
      {action(K::kBackward, 0), action(K::kForward, 0)},
      {action(K::kForward, 0), action(K::kBackward, 0)}};
  EXPECT_WEFT_ERROR(simulate_pipeline(bad, 2, 1, 1), "schedule cannot make progress",
                    "rank 0 waits at B mb0 c0", "rank 1 waits at F mb0 c0");
  // Each (micro-batch, stage) once.
  const std::vector<std::vector<PipelineAction>> twice{
      {action(K::kForward, 0), action(K::kForward, 0)}, {action(K::kForward, 0)}};
  EXPECT_WEFT_ERROR(simulate_pipeline(twice, 2, 1, 1), "F mb0 c0 2 times");
  const std::vector<std::vector<PipelineAction>> missing{{action(K::kForward, 0)}, {}};
  EXPECT_WEFT_ERROR(simulate_pipeline(missing, 2, 1, 1), "rank 1 computes F mb0 c0 0 times");
  // Any valid order runs, not only the built-in ones: rank 1 runs its micro-batches backwards.
  const std::vector<std::vector<PipelineAction>> odd{
      {action(K::kForward, 0), action(K::kForward, 1), action(K::kBackward, 1),
       action(K::kBackward, 0)},
      {action(K::kForward, 0), action(K::kForward, 1), action(K::kBackward, 1),
       action(K::kBackward, 0)}};
  check_simulation(simulate_pipeline(odd, 2, 1, 2), "custom order");
}

TEST(PipelineSchedule, ActionNames) {
  PipelineAction a;
  a.kind = K::kForward;
  a.microbatch = 3;
  EXPECT_EQ(to_string(a), "F mb3 c0");
  a.kind = K::kRecvGrad;
  a.peer = 1;
  a.round = 5;
  EXPECT_EQ(to_string(a), "recv grad mb3 c0 <- 1 @5");
  EXPECT_STREQ(action_kind_name(K::kSendActivation), "send act");
}

TEST(PipelineSchedule, ParseScheduleNamesTheAcceptedNames) {
  EXPECT_EQ(parse_schedule("gpipe"), ScheduleKind::kGPipe);
  EXPECT_EQ(parse_schedule("1f1b"), ScheduleKind::k1F1B);
  EXPECT_EQ(parse_schedule("interleaved"), ScheduleKind::kInterleaved);
  for (ScheduleKind k : {ScheduleKind::kGPipe, ScheduleKind::k1F1B, ScheduleKind::kInterleaved}) {
    EXPECT_EQ(parse_schedule(schedule_name(k)), k);
  }
  EXPECT_WEFT_ERROR(parse_schedule("zero-bubble"), "'zero-bubble'", "gpipe", "1f1b", "interleaved");
}

TEST(PipelineSchedule, TheoreticalBubble) {
  EXPECT_DOUBLE_EQ(theoretical_bubble_fraction(ScheduleKind::kGPipe, 1, 4), 0.0);
  EXPECT_DOUBLE_EQ(theoretical_bubble_fraction(ScheduleKind::k1F1B, 4, 8), 3.0 / 11.0);
  EXPECT_DOUBLE_EQ(theoretical_bubble_fraction(ScheduleKind::kGPipe, 2, 2), 1.0 / 3.0);
  EXPECT_DOUBLE_EQ(theoretical_bubble_fraction(ScheduleKind::kInterleaved, 4, 8, 2), 1.5 / 11.0);
  EXPECT_WEFT_ERROR(theoretical_bubble_fraction(ScheduleKind::kGPipe, 0, 4), "stages (0)");
}

// Each rank's compute order of `c` with forwards taking `forward_ms(rank)` and backwards twice
// as long.
std::vector<std::vector<PipelineStats::TimedCompute>> timed_orders(
    const Case& c, const std::function<double(int)>& forward_ms) {
  using T = PipelineStats::TimedCompute;
  std::vector<std::vector<T>> computes(static_cast<size_t>(c.p));
  for (int r = 0; r < c.p; ++r) {
    for (const PipelineAction& a : pipeline_compute_order(c.kind, c.p, r, c.m, c.v)) {
      const bool forward = a.kind == K::kForward;
      computes[static_cast<size_t>(r)].push_back({forward ? T::Kind::kForward : T::Kind::kBackward,
                                                  a.microbatch, a.chunk,
                                                  forward_ms(r) * (forward ? 1.0 : 2.0)});
    }
  }
  return computes;
}

TEST(PipelineSchedule, ReplayOfEqualStagesGivesTheTheory) {
  for (const Case& c : valid_cases()) {
    const double step = replay_pipeline_step_ms(timed_orders(c, [](int) { return 1.0; }), c.v);
    const double compute = 3.0 * c.m * c.v;  // per rank
    if (c.v == 1) {
      // GPipe and 1F1B: (m + p - 1) forward-backward pairs, the theory's bubble exactly.
      EXPECT_DOUBLE_EQ(step, 3.0 * (c.m + c.p - 1)) << c.str();
      EXPECT_NEAR(1.0 - compute / step, theoretical_bubble_fraction(c.kind, c.p, c.m), 1e-12)
          << c.str();
    } else {
      // Interleaved: never worse than 1F1B over the same micro-batches, and not below the
      // theory's 1/v of its bubble.
      EXPECT_LE(step, 3.0 * c.v * (c.m + c.p - 1) + 1e-9) << c.str();
      EXPECT_GE(1.0 - compute / step, theoretical_bubble_fraction(c.kind, c.p, c.m, c.v) *
                                              (c.m + c.p - 1.0) / (c.m + (c.p - 1.0) / c.v) -
                                          1e-9)
          << c.str();
    }
  }
}

TEST(PipelineSchedule, ReplayOfASlowLastStage) {
  // 1F1B, p = 2, m = 4: stage 1 takes twice as long, so after stage 0's first forward the step
  // is stage 1's four forward-backward pairs, then stage 0's last backward: 1 + 4 x 6 + 2.
  const Case c{ScheduleKind::k1F1B, 2, 4, 1};
  EXPECT_DOUBLE_EQ(replay_pipeline_step_ms(timed_orders(c, [](int r) { return r + 1.0; }), 1),
                   27.0);
  // A backward before its input exists never runs.
  using T = PipelineStats::TimedCompute;
  const std::vector<std::vector<T>> stuck{{{T::Kind::kBackward, 0, 0, 1.0}},
                                          {{T::Kind::kForward, 0, 0, 1.0}}};
  EXPECT_WEFT_ERROR(replay_pipeline_step_ms(stuck, 1), "rank 0 waits forever at its action 0");
  EXPECT_WEFT_ERROR(replay_pipeline_step_ms({{{T::Kind::kForward, 0, 3, 1.0}}}, 2),
                    "has chunk 3 (of 2)");
}

TEST(PipelineSchedule, SplitLayers) {
  EXPECT_EQ(split_layers(8, 4, {}), (std::vector<int64_t>{2, 2, 2, 2}));
  EXPECT_EQ(split_layers(6, 4, {0, 2, 3, 1}), (std::vector<int64_t>{0, 2, 3, 1}));
  EXPECT_WEFT_ERROR(split_layers(6, 4, {}), "layers (6)", "virtual stages (4)");
  EXPECT_WEFT_ERROR(split_layers(6, 4, {1, 2, 2, 2}), "sum to 7", "6 layers");
  EXPECT_WEFT_ERROR(split_layers(6, 4, {1, 2, 2}), "3 layer counts", "4 virtual stages");
  EXPECT_WEFT_ERROR(split_layers(6, 2, {7, -1}), "virtual stage 1", "negative", "(-1)");
  EXPECT_WEFT_ERROR(split_layers(0, 2, {}), "layers (0)");

  const std::vector<GPTStageLayout> layouts = pipeline_stage_layouts({0, 2, 3, 0});
  ASSERT_EQ(layouts.size(), 4u);
  EXPECT_TRUE(layouts[0].has_embedding && !layouts[0].has_head && layouts[0].layers == 0);
  EXPECT_EQ(layouts[2].first_layer, 2);
  EXPECT_EQ(layouts[2].layers, 3);
  EXPECT_TRUE(layouts[3].has_head && !layouts[3].has_embedding && layouts[3].first_layer == 5);
  const std::vector<GPTStageLayout> whole = pipeline_stage_layouts({4});
  EXPECT_TRUE(whole[0].has_embedding && whole[0].has_head && whole[0].layers == 4);
  EXPECT_WEFT_ERROR(pipeline_stage_layouts({1, 0, 1, 1}), "virtual stage 1",
                    "no layer, embedding or head");
}

}  // namespace
}  // namespace weft::testing
