// PipelineTrace: per-rank action timings, idle gaps, the measured bubble and Chrome trace JSON.
#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <sstream>

#include "weft/error.hpp"
#include "weft/file_io.hpp"
#include "weft/pipeline.hpp"

namespace weft {

namespace {

double micros(PipelineTrace::Clock::duration d) {
  return std::chrono::duration<double, std::micro>(d).count();
}

bool is_compute(const std::string& category) {
  return category == "forward" || category == "backward" || category == "recompute";
}

// Events travel as text lines of tab-separated fields (names hold no tabs or newlines).
std::string serialize(const std::vector<PipelineTrace::Event>& events) {
  std::ostringstream os;
  os.precision(17);
  for (const auto& e : events) {
    os << e.name << '\t' << e.category << '\t' << e.detail << '\t' << e.start_us << '\t' << e.end_us
       << '\n';
  }
  return os.str();
}

std::vector<PipelineTrace::Event> deserialize(const std::string& text) {
  std::vector<PipelineTrace::Event> events;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    PipelineTrace::Event e;
    std::string start, end;
    std::getline(fields, e.name, '\t');
    std::getline(fields, e.category, '\t');
    std::getline(fields, e.detail, '\t');
    std::getline(fields, start, '\t');
    std::getline(fields, end, '\t');
    e.start_us = std::stod(start);
    e.end_us = std::stod(end);
    events.push_back(std::move(e));
  }
  return events;
}

// all_gather of host i32 words over `comm`, staged through `backend` for a GPU communicator.
std::vector<int32_t> all_gather_words(Communicator& comm, Backend* backend,
                                      const std::vector<int32_t>& mine) {
  std::vector<int32_t> all(mine.size() * static_cast<size_t>(comm.size()));
  WEFT_CHECK(backend != nullptr || comm.buffer_device() == DeviceKind::kCpu,
             "PipelineTrace: a GPU communicator needs the trace to have recorded a step first "
             "(its backend stages the gather)");
  all_gather_host(
      comm, backend,
      TensorView{const_cast<int32_t*>(mine.data()), Shape({static_cast<int64_t>(mine.size())}),
                 DType::kI32, Device::cpu()},
      TensorView{all.data(), Shape({static_cast<int64_t>(all.size())}), DType::kI32,
                 Device::cpu()});
  return all;
}

}  // namespace

void PipelineTrace::begin_step(Communicator& pp, Backend& backend) {
  backend_ = &backend;
  backend.synchronize();
  if (!started_) {
    pp.barrier();  // every rank's timeline starts at the same moment
    epoch_ = Clock::now();
    started_ = true;
  }
  step_start_ = Clock::now();
  step_first_event_ = events_.size();
}

void PipelineTrace::record(std::string name, std::string category, std::string detail,
                           Clock::time_point start, Clock::time_point end) {
  events_.push_back(Event{std::move(name), std::move(category), std::move(detail),
                          micros(start - epoch_), micros(end - epoch_)});
}

void PipelineTrace::end_step(Clock::time_point end) {
  // Gaps between this step's events (sorted by start; they do not overlap) become "idle".
  std::vector<Event> idle;
  double cursor = micros(step_start_ - epoch_);
  const double step_end = micros(end - epoch_);
  for (size_t i = step_first_event_; i < events_.size(); ++i) {
    if (events_[i].start_us > cursor) {
      idle.push_back(Event{"idle", "idle", "", cursor, events_[i].start_us});
    }
    cursor = std::max(cursor, events_[i].end_us);
  }
  if (step_end > cursor) idle.push_back(Event{"idle", "idle", "", cursor, step_end});
  for (Event& e : idle) events_.push_back(std::move(e));
  step_us_ += micros(end - step_start_);
  ++steps_;
}

double PipelineTrace::compute_time_us() const {
  double total = 0.0;
  for (const Event& e : events_) {
    if (is_compute(e.category)) total += e.end_us - e.start_us;
  }
  return total;
}

double PipelineTrace::measured_bubble_fraction() const {
  if (step_us_ <= 0.0) return 0.0;
  return std::max(0.0, 1.0 - compute_time_us() / step_us_);
}

void PipelineTrace::clear() {
  events_.clear();
  step_first_event_ = 0;
  started_ = false;
  steps_ = 0;
  step_us_ = 0.0;
}

void PipelineTrace::write_chrome_trace(const std::string& path, Communicator& pp) {
  // Sizes first, then every rank's text padded to the longest, as i32 words.
  const std::string text = serialize(events_);
  const int32_t bytes = static_cast<int32_t>(text.size());
  const std::vector<int32_t> sizes = all_gather_words(pp, backend_, {bytes});
  const int32_t longest = *std::max_element(sizes.begin(), sizes.end());
  const size_t words = static_cast<size_t>(longest + 3) / 4 + 1;
  std::vector<int32_t> mine(words, 0);
  std::memcpy(mine.data(), text.data(), text.size());
  const std::vector<int32_t> all = all_gather_words(pp, backend_, mine);
  if (pp.rank() != 0) return;

  nlohmann::json trace_events = nlohmann::json::array();
  for (int r = 0; r < pp.size(); ++r) {
    trace_events.push_back({{"name", "thread_name"},
                            {"ph", "M"},
                            {"pid", 0},
                            {"tid", r},
                            {"args", {{"name", "pp rank " + std::to_string(r)}}}});
    const char* begin = reinterpret_cast<const char*>(all.data() + words * static_cast<size_t>(r));
    for (const Event& e : deserialize(std::string(begin, static_cast<size_t>(sizes[r])))) {
      nlohmann::json event{{"name", e.name},
                           {"cat", e.category},
                           {"ph", "X"},
                           {"ts", e.start_us},
                           {"dur", e.end_us - e.start_us},
                           {"pid", 0},
                           {"tid", r}};
      if (!e.detail.empty()) event["args"] = {{"detail", e.detail}};
      trace_events.push_back(std::move(event));
    }
  }
  const nlohmann::json doc{{"traceEvents", trace_events}, {"displayTimeUnit", "ms"}};
  write_file_atomically(path, doc.dump());
}

}  // namespace weft
