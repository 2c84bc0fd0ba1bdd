// SelfCommunicator: a group of one rank; collectives are copies and p2p pairs within a group.
#include <cstring>
#include <deque>

#include "weft/comm.hpp"
#include "weft/error.hpp"

namespace weft {

namespace {

void copy_bytes(const TensorView& dst, const TensorView& src) {
  if (dst.data != src.data && src.bytes() > 0) std::memcpy(dst.data, src.data, src.bytes());
}

class SelfCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "self"; }
  DeviceKind buffer_device() const override { return DeviceKind::kCpu; }

  void group_start() override { ++group_depth_; }
  void do_group_end() override {
    WEFT_CHECK(group_depth_ > 0, "group_end without a matching group_start");
    if (--group_depth_ > 0) return;
    // Taken out first, so that a failed group leaves nothing behind for the next one.
    std::deque<TensorView> sends, recvs;
    sends.swap(sends_);
    recvs.swap(recvs_);
    WEFT_CHECK(sends.size() == recvs.size(), "self communicator: group ended with ", sends.size(),
               " sends but ", recvs.size(), " receives");
    for (size_t i = 0; i < sends.size(); ++i) {
      WEFT_CHECK(sends[i].bytes() == recvs[i].bytes(), "self communicator: send ", sends[i].str(),
                 " does not match recv ", recvs[i].str());
    }
    for (size_t i = 0; i < sends.size(); ++i) copy_bytes(recvs[i], sends[i]);
  }
  std::unique_ptr<Communicator> split(int color, int) override {
    WEFT_CHECK(color >= 0, "split: color must be non-negative, got ", color);
    return std::make_unique<SelfCommunicator>();
  }
  void do_barrier() override {}
  void do_abort() noexcept override {}  // nothing can be waiting: later operations throw

 protected:
  void do_all_reduce(TensorView send, TensorView recv, ReduceOp, Stream&) override {
    copy_bytes(recv, send);
  }
  void do_all_gather(TensorView send, TensorView recv, Stream&) override { copy_bytes(recv, send); }
  void do_reduce_scatter(TensorView send, TensorView recv, ReduceOp, Stream&) override {
    copy_bytes(recv, send);
  }
  void do_broadcast(TensorView, int, Stream&) override {}
  void do_send(TensorView buffer, int, Stream&) override {
    WEFT_CHECK(group_depth_ > 0,
               "self communicator: a send to oneself outside a group would never "
               "complete; wrap it in group_start()/group_end()");
    sends_.push_back(buffer);
  }
  void do_recv(TensorView buffer, int, Stream&) override {
    WEFT_CHECK(group_depth_ > 0,
               "self communicator: a recv from oneself outside a group would "
               "never complete; wrap it in group_start()/group_end()");
    recvs_.push_back(buffer);
  }

 private:
  int group_depth_ = 0;
  std::deque<TensorView> sends_, recvs_;
};

}  // namespace

std::unique_ptr<Communicator> make_self_communicator() {
  return std::make_unique<SelfCommunicator>();
}

}  // namespace weft
