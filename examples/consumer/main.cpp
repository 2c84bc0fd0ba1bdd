// consumer: links an installed weft, shards a ColumnParallelLinear over all ranks and checks its
// gathered output against the same layer unsharded.  mpirun -np 2 ./consumer
#include <cmath>
#include <cstdio>
#include <weft/weft.hpp>

int main(int argc, char** argv) {
  weft::MpiRuntime mpi(&argc, &argv);
  auto mpi_world = weft::make_mpi_world_communicator();
  weft::Runtime rt = weft::make_runtime("cpu", *mpi_world);
  weft::Backend* cpu = rt.backend.get();
  weft::Communicator* world = rt.world.get();
  weft::ParallelGrid grid(*world, world->size());

  weft::ColumnParallelLinearConfig config;
  config.in_features = 32;
  config.out_features = 16 * grid.tp_size();
  config.gather_output = true;
  weft::ColumnParallelLinear sharded({*cpu, grid.tp()}, config);
  auto self = rt.make_self();
  weft::ColumnParallelLinear whole({*cpu, *self}, config);  // same seed: same global weights

  weft::Tensor x(*cpu, weft::Shape({8, config.in_features}), weft::DType::kF32);
  cpu->fill_random(x, weft::RandomFill{weft::Distribution::kNormal, /*seed=*/7});
  weft::Tensor y = sharded.forward(x), y_ref = whole.forward(x);

  double max_diff = 0, max_ref = 0;
  for (int64_t i = 0; i < y.numel(); ++i) {
    max_diff = std::fmax(max_diff, std::fabs(y.as<float>()[i] - y_ref.as<float>()[i]));
    max_ref = std::fmax(max_ref, std::fabs(y_ref.as<float>()[i]));
  }
  const bool ok = max_ref > 0 && max_diff / max_ref <= 1e-5;
  if (world->rank() == 0) {
    std::printf("consumer: weft %s, tp=%d, max relative error %.2e: %s\n", WEFT_VERSION_STRING,
                grid.tp_size(), max_diff / max_ref, ok ? "ok" : "WRONG");
  }
  return ok ? 0 : 1;
}
