// ParallelGrid: rank coordinates and the membership of each axis's communicator.
#include <gtest/gtest.h>

#include "common/test_util.hpp"
#include "dist/dist_env.hpp"

namespace weft::testing {
namespace {

// World ranks of the members of `comm`, in its rank order.
std::vector<int> members(Communicator& comm, int world_rank) {
  std::unique_ptr<Backend> backend = make_test_backend();
  Tensor mine = from_host(*backend, Shape({1}), DType::kF32, [&](int64_t) { return world_rank; });
  Tensor all(*backend, Shape({comm.size()}), DType::kF32);
  backend->fill(all, NAN);
  comm.all_gather(mine, all, backend->stream());
  const std::vector<double> values = to_host(*backend, all);
  return std::vector<int>(values.begin(), values.end());
}

TEST(ParallelGrid, MegatronRankOrderAndAxisGroups) {
  const int world_size = world().size(), rank = world().rank();
  for (int tp : {1, 2, 4}) {
    for (int pp : {1, 2, 4}) {
      if (world_size % (tp * pp) != 0) continue;
      SCOPED_TRACE("tp=" + std::to_string(tp) + " pp=" + std::to_string(pp));
      ParallelGrid grid(world(), tp, pp);
      const int dp = world_size / (tp * pp);
      EXPECT_EQ(grid.dp_size(), dp);
      EXPECT_EQ(grid.tp_rank(), rank % tp);
      EXPECT_EQ(grid.dp_rank(), (rank / tp) % dp);
      EXPECT_EQ(grid.pp_rank(), rank / (tp * dp));
      EXPECT_EQ(grid.rank_of(grid.tp_rank(), grid.dp_rank(), grid.pp_rank()), rank);

      std::vector<int> tp_group = members(grid.tp(), rank), dp_group = members(grid.dp(), rank),
                       pp_group = members(grid.pp(), rank);
      ASSERT_EQ(static_cast<int>(tp_group.size()), tp);
      ASSERT_EQ(static_cast<int>(dp_group.size()), dp);
      ASSERT_EQ(static_cast<int>(pp_group.size()), pp);
      for (int i = 0; i < tp; ++i) {
        EXPECT_EQ(tp_group[i], grid.rank_of(i, grid.dp_rank(), grid.pp_rank()));
      }
      for (int i = 0; i < dp; ++i) {
        EXPECT_EQ(dp_group[i], grid.rank_of(grid.tp_rank(), i, grid.pp_rank()));
      }
      for (int i = 0; i < pp; ++i) {
        EXPECT_EQ(pp_group[i], grid.rank_of(grid.tp_rank(), grid.dp_rank(), i));
      }
      EXPECT_EQ(grid.tp().rank(), grid.tp_rank());
      EXPECT_EQ(grid.dp().rank(), grid.dp_rank());
      EXPECT_EQ(grid.pp().rank(), grid.pp_rank());
    }
  }
}

}  // namespace
}  // namespace weft::testing
