// Unit tests of the guards against hostile input: checked size arithmetic, the planner's memory
// estimate, read_file's limits, and the communicator watchdog.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <fstream>
#include <limits>
#include <mutex>
#include <string>
#include <thread>

#include "common/temp_dir.hpp"
#include "weft/file_io.hpp"
#include "weft/plan.hpp"
#include "weft/watchdog.hpp"
#include "weft/weft.hpp"

namespace weft {
namespace {

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();

// The message of the weft::Error `f` throws ("" when it throws none).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Checked, ArithmeticThrowsNamingTheOperands) {
  EXPECT_EQ(checked_mul(3037000499, 3037000499, "x"), int64_t{3037000499} * 3037000499);
  EXPECT_EQ(checked_add(kMax - 1, 1, "x"), kMax);
  EXPECT_EQ(checked_mul(-4, 5, "x"), -20);
  const std::string mul = error_of([] { checked_mul(int64_t{1} << 32, int64_t{1} << 31, "bytes"); });
  EXPECT_NE(mul.find("bytes: 4294967296 x 2147483648 overflows int64"), std::string::npos) << mul;
  const std::string add = error_of([] { checked_add(kMax, 1, "tokens"); });
  EXPECT_NE(add.find("tokens: 9223372036854775807 + 1 overflows"), std::string::npos) << add;
}

TEST(Checked, NarrowingRefusesWhatDoesNotFit) {
  EXPECT_EQ(checked_narrow<int>(2147483647, "--tp"), 2147483647);
  EXPECT_EQ(checked_narrow<int>(-5, "--tp"), -5);
  const std::string e = error_of([] { checked_narrow<int>(4294967298, "--tp"); });
  EXPECT_NE(e.find("--tp (4294967298) is outside [-2147483648, 2147483647]"), std::string::npos)
      << e;
  EXPECT_NE(error_of([] { checked_narrow<uint16_t>(-1, "x"); }), "");
}

TEST(Checked, ShapesAndTensorsWhoseSizeOverflowsAreRefused) {
  // 4611686018427387905 x 4: numel wraps to 4 in int64 arithmetic.
  const std::string e = error_of([] { Shape({4611686018427387905, 4}); });
  EXPECT_NE(e.find("element count of a shape"), std::string::npos) << e;
  EXPECT_NE(error_of([] { Shape({int64_t{1} << 32, int64_t{1} << 32}); }), "");
  EXPECT_EQ(Shape({int64_t{1} << 31, int64_t{1} << 31}).numel(), int64_t{1} << 62);
  // The element count fits, the byte count does not: refused before the allocator is asked.
  auto cpu = make_cpu_backend();
  const std::string bytes =
      error_of([&] { Tensor t(*cpu, Shape({int64_t{1} << 62}), DType::kF32); });
  EXPECT_NE(bytes.find("byte count of a tensor"), std::string::npos) << bytes;
}

TEST(Checked, GptConfigWhoseSizesOverflowIsRefused) {
  GPTConfig c = GPTConfig::preset("gpt2");
  c.hidden = 4611686018427387904;  // divisible by 4 heads; 4 x hidden overflows
  const std::string e = error_of([&] { c.finalize(1); });
  EXPECT_NE(e.find("overflows int64"), std::string::npos) << e;
  GPTConfig big = GPTConfig::preset("gpt2");
  big.hidden = int64_t{1} << 30;
  big.heads = 1;
  big.layers = int64_t{1} << 30;  // ~12 h^2 per layer x 2^30 layers: past int64
  const std::string p = error_of([&] { big.finalize(1); });
  EXPECT_NE(p.find("GPT parameter count"), std::string::npos) << p;
  GPTConfig ok = GPTConfig::preset("gpt2");
  ok.finalize(2);
  EXPECT_GT(ok.parameter_count(), 0);
}

TEST(Plan, MemoryPerDeviceIsPredictsMemory) {
  plan::Training t;
  t.model = plan::ModelShape::gpt(8, 1024, 16, 512, 50304);
  t.global_batch = 16;
  t.gpus = 4;
  const plan::Cluster c = plan::builtin_cluster("a100-80g-dgx");
  for (plan::Layout l : {plan::Layout{2, 2, 1, 2, 1, true, false, plan::Recompute::kNone},
                         plan::Layout{1, 2, 2, 1, 2, false, false, plan::Recompute::kFull},
                         plan::Layout{4, 1, 1, 4, 1, false, true, plan::Recompute::kSelective}}) {
    const plan::Memory m = plan::memory_per_device(t, l);
    const plan::Prediction p = plan::predict(t, c, l);
    EXPECT_DOUBLE_EQ(m.parameters, p.memory.parameters) << plan::layout_name(l);
    EXPECT_DOUBLE_EQ(m.gradients, p.memory.gradients);
    EXPECT_DOUBLE_EQ(m.optimizer, p.memory.optimizer);
    EXPECT_DOUBLE_EQ(m.activations, p.memory.activations);
    EXPECT_GT(m.total(), 0.0);
  }
  // With a small vocabulary, doubling the layers nearly doubles the per-device parameters.
  t.model.vocab = 256;
  plan::Training deeper = t;
  deeper.model.layers = 16;
  const plan::Layout l{2, 2, 1, 2, 1, false, false, plan::Recompute::kNone};
  EXPECT_GT(plan::memory_per_device(deeper, l).parameters,
            1.9 * plan::memory_per_device(t, l).parameters);
}

TEST(ReadFile, RefusesDevicesFifosDirectoriesAndFilesOverTheLimit) {
  testing::TempDir dir("weft-read-file");
  const std::string zero = error_of([] { read_file("/dev/zero"); });
  EXPECT_NE(zero.find("'/dev/zero' is not a regular file"), std::string::npos) << zero;
  // A symlink to a device is the device.
  const std::string link = dir.file("manifest.json");
  ASSERT_EQ(::symlink("/dev/zero", link.c_str()), 0);
  EXPECT_NE(error_of([&] { read_file(link); }).find("is not a regular file"), std::string::npos);
  // A FIFO without a writer: refused at once, not waited on.
  const std::string fifo = dir.file("fifo");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_NE(error_of([&] { read_file(fifo); }).find("is not a regular file"), std::string::npos);
  EXPECT_NE(error_of([&] { read_file(dir.path()); }).find("is not a regular file"),
            std::string::npos);
  const std::string file = dir.file("data.txt");
  std::ofstream(file) << "0123456789";
  EXPECT_EQ(read_file(file), "0123456789");
  EXPECT_EQ(read_file(file, 10), "0123456789");
  const std::string big = error_of([&] { read_file(file, 9); });
  EXPECT_NE(big.find("holds 10 bytes, more than the limit of 9 bytes"), std::string::npos) << big;
  EXPECT_NE(big.find(file), std::string::npos) << big;
}

// A communicator whose barrier blocks until it is aborted (or released): a peer that never came.
class StuckCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 2; }
  std::string name() const override { return "stuck"; }
  std::string describe() const override { return "stuck group of world ranks {0, 7}"; }
  DeviceKind buffer_device() const override { return DeviceKind::kCpu; }
  void group_start() override {}
  std::unique_ptr<Communicator> split(int, int) override { return nullptr; }

  void release() {
    std::lock_guard<std::mutex> lock(mutex_);
    released_ = true;
    cv_.notify_all();
  }
  int aborts() const { return aborts_.load(); }

 protected:
  void do_all_reduce(TensorView, TensorView, ReduceOp, Stream&) override {}
  void do_all_gather(TensorView, TensorView, Stream&) override {}
  void do_reduce_scatter(TensorView, TensorView, ReduceOp, Stream&) override {}
  void do_broadcast(TensorView, int, Stream&) override {}
  void do_send(TensorView, int, Stream&) override {}
  void do_recv(TensorView, int, Stream&) override {}
  void do_group_end() override {}
  void do_barrier() override {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [this] { return released_; });
    if (aborted()) WEFT_THROW(ErrorCode::kInternal, "barrier aborted");
  }
  void do_abort() noexcept override {
    ++aborts_;
    release();
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool released_ = false;
  std::atomic<int> aborts_{0};
};

TEST(Watchdog, AbortsTheCommunicatorOfAnOperationPastTheTimeout) {
  StuckCommunicator comm;
  std::string message;
  std::mutex message_mutex;
  const auto start = std::chrono::steady_clock::now();
  {
    CommWatchdog watchdog(
        0.2,
        [&](const std::string& m) {
          std::lock_guard<std::mutex> lock(message_mutex);
          message = m;
        },
        0.02);
    EXPECT_THROW(comm.barrier(), Error);  // blocks until the watchdog aborts it
    EXPECT_TRUE(watchdog.fired());
  }
  const double s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GE(s, 0.2);
  EXPECT_LT(s, 5.0);
  EXPECT_EQ(comm.aborts(), 1);
  EXPECT_TRUE(comm.aborted());
  EXPECT_NE(message.find("barrier #1 on stuck group of world ranks {0, 7}"), std::string::npos)
      << message;
  // A watchdog of this process alone cannot ask the peers, and says so.
  EXPECT_NE(message.find("which ranks did not arrive is unknown: the group's world ranks are "
                         "unknown"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("timeout of 0.2 s"), std::string::npos) << message;
  // Aborted: every later operation throws at once instead of waiting.
  const std::string later = error_of([&] { comm.barrier(); });
  EXPECT_NE(later.find("barrier after the communicator was aborted"), std::string::npos) << later;
}

TEST(Watchdog, LeavesOperationsShorterThanTheTimeoutAlone) {
  StuckCommunicator comm;
  CommWatchdog watchdog(2.0, [](const std::string&) {}, 0.02);
  std::thread releaser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    comm.release();
  });
  comm.barrier();  // waits 0.2 s, well inside the timeout
  releaser.join();
  auto self = make_self_communicator();
  float x = 1.0f;
  TensorView v{&x, Shape({1}), DType::kF32, Device::cpu()};
  for (int i = 0; i < 100; ++i) self->all_reduce(v, v, ReduceOp::kSum, host_stream());
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_FALSE(watchdog.fired());
  EXPECT_EQ(comm.aborts(), 0);
  EXPECT_FALSE(comm.aborted());
}

TEST(Watchdog, RefusesANonPositiveTimeout) {
  EXPECT_THROW(CommWatchdog(0.0), Error);
  EXPECT_THROW(CommWatchdog(-1.0), Error);
}

}  // namespace
}  // namespace weft
