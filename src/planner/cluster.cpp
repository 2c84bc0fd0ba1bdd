// Clusters for the planner: the built-in DGX descriptions, JSON cluster files, and "this
// machine" calibrated from weft's own bench_gemm and bench_collectives JSON.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "weft/error.hpp"
#include "weft/file_io.hpp"
#include "weft/plan.hpp"

namespace weft::plan {

// Cluster and benchmark JSON files are small; anything larger is not one.
constexpr size_t kJsonFileLimit = size_t{64} << 20;

void Cluster::check() const {
  const std::pair<const char*, double> fields[] = {
      {"peak_tflops_bf16", peak_tflops_bf16},
      {"peak_tflops_f32", peak_tflops_f32},
      {"gemm_efficiency_max", gemm_efficiency_max},
      {"memory_gib", memory_gib},
      {"memory_bandwidth_gbps", memory_bandwidth_gbps},
      {"devices_per_node", static_cast<double>(devices_per_node)},
      {"intra_node.bandwidth_gbps", intra_node.bandwidth_gbps},
      {"inter_node.bandwidth_gbps", inter_node.bandwidth_gbps}};
  for (const auto& [field, value] : fields) {
    WEFT_CHECK(std::isfinite(value) && value > 0, "cluster '", name, "': ", field, " (", value,
               ") must be positive");
  }
  const std::pair<const char*, double> non_negative[] = {
      {"gemm_half_dim", gemm_half_dim},
      {"intra_node.latency_us", intra_node.latency_us},
      {"inter_node.latency_us", inter_node.latency_us},
      {"tp_overlap_efficiency", tp_overlap_efficiency},
      {"attention_efficiency_max", attention_efficiency_max},
      {"attention_half_dim", attention_half_dim}};
  for (const auto& [field, value] : non_negative) {
    WEFT_CHECK(std::isfinite(value) && value >= 0, "cluster '", name, "': ", field, " (", value,
               ") must not be negative");
  }
  WEFT_CHECK(gemm_efficiency_max <= 1 && tp_overlap_efficiency <= 1, "cluster '", name,
             "': gemm_efficiency_max (", gemm_efficiency_max, ") and tp_overlap_efficiency (",
             tp_overlap_efficiency, ") are fractions, at most 1");
  for (size_t i = 0; i < gemm_table.size(); ++i) {
    const GemmTableEntry& e = gemm_table[i];
    WEFT_CHECK(
        std::isfinite(e.m * e.n * e.k * e.tflops) && e.m > 0 && e.n > 0 && e.k > 0 && e.tflops > 0,
        "cluster '", name, "': gemm_table[", i, "] (m ", e.m, ", n ", e.n, ", k ", e.k, ", tflops ",
        e.tflops, ") needs positive m, n, k and tflops");
  }
}

// Hardware facts from the vendors' data sheets; link bandwidths are the bus bandwidths
// nccl-tests reports on these systems (per GPU), latencies per ring step. One GEMM efficiency
// curve per GPU generation: the share of peak a Megatron-era GEMM reaches (large shapes about
// 0.75 on A100 and H100 with cuBLAS(Lt); half of it at a smallest dimension of about 100).
std::vector<std::string> builtin_cluster_names() {
  return {"a100-80g-dgx", "h100-80g-dgx", "v100-32g-dgx2"};
}

Cluster builtin_cluster(const std::string& name) {
  Cluster c;
  c.name = name;
  if (name == "a100-80g-dgx") {
    c.description = "DGX A100 80GB: 8 A100 SXM per node, NVSwitch (NVLink 3), 8x HDR 200 Gb/s";
    c.peak_tflops_bf16 = 312;  // dense bf16/fp16 tensor cores
    c.peak_tflops_f32 = 156;   // TF32 tensor cores
    c.gemm_efficiency_max = 0.75;
    c.gemm_half_dim = 96;
    c.memory_gib = 80;
    c.memory_bandwidth_gbps = 0.8 * 2039;  // HBM2e 2039 GB/s, element-wise kernels reach ~80%
    c.devices_per_node = 8;
    c.intra_node = {230, 3};  // NVLink 3 all-reduce busbw
    c.inter_node = {23, 10};  // one 200 Gb/s HDR port per GPU
    c.tp_overlap_efficiency = 0.8;
  } else if (name == "h100-80g-dgx") {
    c.description = "DGX H100: 8 H100 SXM per node, NVSwitch (NVLink 4), 8x NDR 400 Gb/s";
    c.peak_tflops_bf16 = 989;
    c.peak_tflops_f32 = 494.7;    // TF32
    c.gemm_efficiency_max = 0.8;  // best cuBLASLt bf16 matmul about 795 TFLOP/s
    c.gemm_half_dim = 128;
    c.memory_gib = 80;
    c.memory_bandwidth_gbps = 0.8 * 3350;
    c.devices_per_node = 8;
    c.intra_node = {370, 3};        // NVLink 4 all-gather / reduce-scatter busbw
    c.inter_node = {46, 10};        // one 400 Gb/s NDR port per GPU
    c.tp_overlap_efficiency = 0.8;  // Flux hides about 80% of the all-gather
  } else if (name == "v100-32g-dgx2") {
    c.description = "DGX-2H: 16 V100 SXM3 32GB per node, NVSwitch (NVLink 2), 8x EDR 100 Gb/s";
    c.peak_tflops_bf16 = 125;  // fp16 tensor cores (V100 has no bf16; mixed precision is fp16)
    c.peak_tflops_f32 = 15.7;
    c.gemm_efficiency_max = 0.75;
    c.gemm_half_dim = 96;
    c.memory_gib = 32;
    c.memory_bandwidth_gbps = 0.8 * 900;
    c.devices_per_node = 16;
    c.intra_node = {120, 3};
    c.inter_node = {5.5, 10};  // 8 x 100 Gb/s per 16 GPUs
    c.tp_overlap_efficiency = 0.8;
  } else {
    std::string known;
    for (const std::string& n : builtin_cluster_names()) known += " " + n;
    WEFT_THROW(ErrorCode::kInvalidArgument, "unknown cluster '", name, "': built-ins are", known,
               ", this-machine (with --calibrate DIR), or a JSON file");
  }
  c.check();
  return c;
}

namespace {

double number_field(const nlohmann::json& j, const std::string& key, const std::string& origin) {
  WEFT_CHECK(j.contains(key), "cluster file ", origin, ": missing field '", key, "'");
  WEFT_CHECK(j.at(key).is_number(), "cluster file ", origin, ": field '", key,
             "' must be a number, got ", j.at(key).dump());
  const double v = j.at(key).get<double>();
  WEFT_CHECK(v >= 0, "cluster file ", origin, ": field '", key, "' (", v, ") must not be negative");
  return v;
}

// An optional string field: `fallback` when absent, an error naming it when not a string.
std::string string_field(const nlohmann::json& j, const std::string& key,
                         const std::string& fallback, const std::string& origin) {
  if (!j.contains(key)) return fallback;
  WEFT_CHECK(j.at(key).is_string(), "cluster file ", origin, ": field '", key,
             "' must be a string, got ", j.at(key).dump());
  return j.at(key).get<std::string>();
}

Link link_field(const nlohmann::json& j, const std::string& key, const std::string& origin) {
  WEFT_CHECK(j.contains(key) && j.at(key).is_object(), "cluster file ", origin,
             ": missing object '", key, "' {bandwidth_gbps, latency_us}");
  return {number_field(j.at(key), "bandwidth_gbps", origin + " " + key),
          number_field(j.at(key), "latency_us", origin + " " + key)};
}

}  // namespace

Cluster cluster_from_json(const std::string& json_text, const std::string& origin) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception& e) {
    WEFT_THROW(ErrorCode::kInvalidArgument, "cluster file ", origin,
               " is not valid JSON: ", e.what());
  }
  WEFT_CHECK(j.is_object(), "cluster file ", origin, ": expected a JSON object");
  Cluster c;
  c.name = string_field(j, "name", origin, origin);
  c.description = string_field(j, "description", "", origin);
  c.peak_tflops_bf16 = number_field(j, "peak_tflops_bf16", origin);
  c.peak_tflops_f32 = number_field(j, "peak_tflops_f32", origin);
  c.gemm_efficiency_max = number_field(j, "gemm_efficiency_max", origin);
  c.gemm_half_dim = number_field(j, "gemm_half_dim", origin);
  c.memory_gib = number_field(j, "memory_gib", origin);
  c.memory_bandwidth_gbps = number_field(j, "memory_bandwidth_gbps", origin);
  const double devices = number_field(j, "devices_per_node", origin);
  WEFT_CHECK(devices == std::floor(devices), "cluster file ", origin, ": devices_per_node (",
             devices, ") must be a whole number");
  c.devices_per_node = static_cast<int64_t>(devices);
  c.intra_node = link_field(j, "intra_node", origin);
  c.inter_node = link_field(j, "inter_node", origin);
  c.tp_overlap_efficiency = number_field(j, "tp_overlap_efficiency", origin);
  if (j.contains("shared_node")) {
    WEFT_CHECK(j.at("shared_node").is_boolean(), "cluster file ", origin,
               ": shared_node must be true or false");
    c.shared_node = j.at("shared_node").get<bool>();
  }
  // Optional (calibrated clusters): the attention curve and the measured GEMM table.
  for (const char* key : {"attention_efficiency_max", "attention_half_dim"}) {
    if (j.contains(key)) {
      (std::string(key) == "attention_half_dim" ? c.attention_half_dim
                                                : c.attention_efficiency_max) =
          number_field(j, key, origin);
    }
  }
  if (j.contains("gemm_table")) {
    WEFT_CHECK(j.at("gemm_table").is_array(), "cluster file ", origin,
               ": gemm_table must be an array of {role, dtype, m, n, k, tflops}");
    for (const nlohmann::json& e : j.at("gemm_table")) {
      WEFT_CHECK(e.is_object(), "cluster file ", origin, ": gemm_table entry ", e.dump(),
                 " must be an object {role, dtype, m, n, k, tflops}");
      const std::string role = string_field(e, "role", "", origin + " gemm_table");
      const std::string dtype = string_field(e, "dtype", "", origin + " gemm_table");
      GemmTableEntry entry;
      if (role == "forward") {
        entry.role = GemmRole::kForward;
      } else if (role == "backward_data") {
        entry.role = GemmRole::kBackwardData;
      } else {
        WEFT_CHECK(role == "backward_weight", "cluster file ", origin, ": gemm_table role '", role,
                   "' must be forward, backward_data or backward_weight");
        entry.role = GemmRole::kBackwardWeight;
      }
      WEFT_CHECK(dtype == "f32" || dtype == "bf16", "cluster file ", origin, ": gemm_table dtype '",
                 dtype, "' must be f32 or bf16");
      entry.bf16 = dtype == "bf16";
      const std::string where = origin + " gemm_table";
      entry.m = number_field(e, "m", where);
      entry.n = number_field(e, "n", where);
      entry.k = number_field(e, "k", where);
      entry.tflops = number_field(e, "tflops", where);
      c.gemm_table.push_back(entry);
    }
  }
  c.check();
  return c;
}

Cluster load_cluster_file(const std::string& path) {
  return cluster_from_json(read_file(path, kJsonFileLimit), path);
}

std::string cluster_to_json(const Cluster& c) {
  nlohmann::json j{
      {"name", c.name},
      {"description", c.description},
      {"peak_tflops_bf16", c.peak_tflops_bf16},
      {"peak_tflops_f32", c.peak_tflops_f32},
      {"gemm_efficiency_max", c.gemm_efficiency_max},
      {"gemm_half_dim", c.gemm_half_dim},
      {"memory_gib", c.memory_gib},
      {"memory_bandwidth_gbps", c.memory_bandwidth_gbps},
      {"devices_per_node", c.devices_per_node},
      {"intra_node",
       {{"bandwidth_gbps", c.intra_node.bandwidth_gbps}, {"latency_us", c.intra_node.latency_us}}},
      {"inter_node",
       {{"bandwidth_gbps", c.inter_node.bandwidth_gbps}, {"latency_us", c.inter_node.latency_us}}},
      {"tp_overlap_efficiency", c.tp_overlap_efficiency},
      {"shared_node", c.shared_node}};
  if (c.attention_efficiency_max > 0) {
    j["attention_efficiency_max"] = c.attention_efficiency_max;
    j["attention_half_dim"] = c.attention_half_dim;
  }
  if (!c.gemm_table.empty()) {
    nlohmann::json table = nlohmann::json::array();
    for (const GemmTableEntry& e : c.gemm_table) {
      table.push_back({{"role", gemm_role_name(e.role)},
                       {"dtype", e.bf16 ? "bf16" : "f32"},
                       {"m", e.m},
                       {"n", e.n},
                       {"k", e.k},
                       {"tflops", e.tflops}});
    }
    j["gemm_table"] = table;
  }
  return j.dump(2);
}

// ---------------------------------------------------------------- calibration

namespace {

nlohmann::json read_json(const std::string& path) {
  const std::string text = read_file(path, kJsonFileLimit);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    WEFT_THROW(ErrorCode::kInvalidArgument, "calibration: '", path,
               "' is not valid JSON: ", e.what());
  }
  return {};
}

// The per-iteration rows of a Google Benchmark JSON file (not the mean/median aggregates, not
// failed runs).
std::vector<nlohmann::json> runs(const nlohmann::json& j, const std::string& path) {
  WEFT_CHECK(j.contains("benchmarks") && j.at("benchmarks").is_array(), "calibration: '", path,
             "' has no benchmarks array (Google Benchmark JSON expected)");
  std::vector<nlohmann::json> out;
  for (const nlohmann::json& b : j.at("benchmarks")) {
    if (b.value("run_type", "iteration") != "iteration" || b.value("error_occurred", false)) {
      continue;
    }
    out.push_back(b);
  }
  return out;
}

// Runs `parse`, turning a JSON type error (a field of an unexpected type) into a weft::Error
// naming the files.
template <typename F>
auto json_errors_named(const std::string& files, F&& parse) {
  try {
    return parse();
  } catch (const nlohmann::json::exception& e) {
    WEFT_THROW(ErrorCode::kInvalidArgument, "calibration: ", files,
               ": a field of an unexpected type: ", e.what());
  }
  return decltype(parse())();
}

// rate(d) = peak d / (d + half_dim), fitted to measured rates by their smallest dimension with
// relative errors weighing every point alike: for each half_dim on a grid (or the one given) the
// best peak is a closed-form least squares.
struct RateCurve {
  double peak_gflops = 0, half_dim = 0;
};
RateCurve fit_rate_curve(const std::vector<GemmRate>& pts, double only_half = -1) {
  RateCurve best;
  double best_residual = std::numeric_limits<double>::infinity();
  for (double half = std::max(0.0, only_half); half <= (only_half >= 0 ? only_half : 4096);
       half += 1) {
    double num = 0, den = 0;  // minimise sum ((A x - y) / y)^2
    for (const GemmRate& g : pts) {
      const double x = g.smallest_dim / (g.smallest_dim + half) / g.gflops;
      num += x;
      den += x * x;
    }
    const double a = num / den;
    double residual = 0;
    for (const GemmRate& g : pts) {
      const double r = a * g.smallest_dim / (g.smallest_dim + half) / g.gflops - 1;
      residual += r * r;
    }
    if (residual < best_residual - 1e-15) {
      best_residual = residual;
      best = {a, half};
    }
  }
  return best;
}

}  // namespace

Cluster calibrate_from_samples(const std::vector<GemmRate>& gemms,
                               const std::vector<CollectiveSample>& collectives,
                               double memory_bandwidth_gbps, double memory_gib,
                               const std::string& description) {
  Cluster c;
  c.name = "this-machine";
  c.description = description;
  c.shared_node = true;
  c.memory_gib = memory_gib;
  c.memory_bandwidth_gbps = memory_bandwidth_gbps;
  c.devices_per_node = 1024;  // every rank on this node
  c.tp_overlap_efficiency = 0.5;

  // The curve is the forward GEMMs' (every shaped rate also goes to the table); its peak is this
  // machine's (efficiency 1 at large d), slightly above the best rate measured.
  std::vector<GemmRate> f32, bf16;
  for (const GemmRate& g : gemms) {
    if (g.role == GemmRole::kForward) (g.bf16 ? bf16 : f32).push_back(g);
    if (g.m > 0 && g.n > 0 && g.k > 0) {
      c.gemm_table.push_back({g.role, g.bf16, g.m, g.n, g.k, g.gflops / 1e3});
    }
  }
  WEFT_CHECK(!f32.empty(), "calibration: no f32 forward GEMM rates measured");
  const RateCurve curve = fit_rate_curve(f32);
  c.peak_tflops_f32 = curve.peak_gflops / 1e3;
  c.gemm_half_dim = curve.half_dim;
  c.peak_tflops_bf16 =
      bf16.empty() ? c.peak_tflops_f32 : fit_rate_curve(bf16, c.gemm_half_dim).peak_gflops / 1e3;
  c.gemm_efficiency_max = 1;

  // Collectives: time = steps x latency + factor x bytes / bandwidth, least squares relative to
  // each time (small and large messages weigh alike).
  double a11 = 0, a12 = 0, a22 = 0, r1 = 0, r2 = 0;
  for (const CollectiveSample& s : collectives) {
    const double n = static_cast<double>(s.n);
    // The model's own steps and factor: the time of 1 byte-per-bandwidth and 1 latency.
    const double steps = collective_time_s(s.kind, 0, s.n, Link{1, 1e6});
    const double factor = collective_time_s(s.kind, 1e9, s.n, Link{1, 0});
    WEFT_CHECK(n >= 2 && s.seconds > 0 && s.bytes > 0,
               "calibration: a collective sample needs "
               "n >= 2 (",
               n, "), bytes (", s.bytes, ") and seconds (", s.seconds, ") > 0");
    const double x1 = steps / s.seconds, x2 = factor * s.bytes / s.seconds;
    a11 += x1 * x1;
    a12 += x1 * x2;
    a22 += x2 * x2;
    r1 += x1;
    r2 += x2;
  }
  if (collectives.empty()) {
    c.intra_node = {memory_bandwidth_gbps, 0};
  } else {
    const double det = a11 * a22 - a12 * a12;
    double alpha = det > 0 ? (r1 * a22 - r2 * a12) / det : -1;
    double inv_bw = det > 0 ? (a11 * r2 - a12 * r1) / det : 0;
    if (alpha < 0 || inv_bw <= 0) {  // one size, or a degenerate fit: bandwidth alone
      alpha = 0;
      inv_bw = r2 / a22;
    }
    c.intra_node = {1e-9 / inv_bw, alpha * 1e6};
  }
  c.inter_node = c.intra_node;
  c.check();
  return c;
}

Cluster calibrate_cluster(const std::string& bench_gemm_json, const std::string& collectives_json,
                          double memory_bandwidth_gbps, double memory_gib,
                          const std::vector<AttentionSample>& attention) {
  return json_errors_named(bench_gemm_json + ", " + collectives_json, [&] {
    // GEMMs: bench_gemm's weft rows BM_GemmCpu/weft/<dtype>/T<tokens>_h<h>_tp<tp>/<op>[/real_time],
    // the best repetition of each. The op's suffix is its role; the counters m, n, k its shape
    // (files without them give the curve only).
    const nlohmann::json gemm = read_json(bench_gemm_json);
    const std::regex name(R"(BM_Gemm\w+/weft/(\w+)/T(\d+)_h(\d+)_tp(\d+)/(\w+)(/real_time)?)");
    std::map<std::string, GemmRate> best;  // by name
    for (const nlohmann::json& b : runs(gemm, bench_gemm_json)) {
      std::smatch match;
      const std::string n = b.value("name", "");
      if (!std::regex_match(n, match, name) || !b.contains("GFLOP/s")) continue;
      const double tokens = std::stod(match[2]), h = std::stod(match[3]), tp = std::stod(match[4]);
      const std::string op = match[5];
      const auto ends_with = [&op](const std::string& suffix) {
        return op.size() >= suffix.size() &&
               op.compare(op.size() - suffix.size(), suffix.size(), suffix) == 0;
      };
      const double wide = (op == "qkv_fwd" ? 3 : 4) * h / tp;  // the split dimension
      GemmRate& g = best[n];
      g.bf16 = match[1] == "bf16";
      g.smallest_dim = std::min({tokens, h, wide});
      g.gflops = std::max(g.gflops, b.at("GFLOP/s").get<double>());
      g.role = ends_with("_wgrad")   ? GemmRole::kBackwardWeight
               : ends_with("_dgrad") ? GemmRole::kBackwardData
                                     : GemmRole::kForward;
      if (b.contains("m") && b.contains("n") && b.contains("k")) {
        g.m = b.at("m").get<double>();
        g.n = b.at("n").get<double>();
        g.k = b.at("k").get<double>();
      }
    }
    std::vector<GemmRate> rates;
    for (const auto& [n, g] : best) rates.push_back(g);
    WEFT_CHECK(!rates.empty(), "calibration: '", bench_gemm_json,
               "' holds no weft GEMM rows (run bench_gemm)");
    const int64_t cpus = gemm.contains("context") ? gemm.at("context").value("num_cpus", 0) : 0;

    // Collectives: bench_collectives' MPI rows.
    const nlohmann::json coll = read_json(collectives_json);
    const int64_t n =
        coll.contains("context") ? std::stoll(coll.at("context").value("ranks", "0")) : 0;
    WEFT_CHECK(n >= 2, "calibration: '", collectives_json, "' was measured on ", n,
               " rank(s); run bench_collectives on 2 or more");
    std::vector<CollectiveSample> samples;
    for (const nlohmann::json& b : runs(coll, collectives_json)) {
      const std::string nm = b.value("name", "");
      if (nm.find("/mpi/") == std::string::npos || !b.contains("size")) continue;
      CollectiveSample s;
      s.kind = nm.rfind("BM_AllReduce", 0) == 0   ? Collective::kAllReduce
               : nm.rfind("BM_AllGather", 0) == 0 ? Collective::kAllGather
                                                  : Collective::kReduceScatter;
      s.bytes = b.at("size").get<double>();
      s.n = n;
      const std::string unit = b.value("time_unit", "ns");
      s.seconds = b.at("real_time").get<double>() * (unit == "us"   ? 1e-6
                                                     : unit == "ms" ? 1e-3
                                                     : unit == "s"  ? 1.0
                                                                    : 1e-9);
      samples.push_back(s);
    }
    WEFT_CHECK(samples.size() >= 2, "calibration: '", collectives_json,
               "' holds fewer than 2 MPI collective rows");
    Cluster c = calibrate_from_samples(
        rates, samples, memory_bandwidth_gbps, memory_gib,
        "this machine, calibrated from " + bench_gemm_json + " and " + collectives_json +
            (attention.empty() ? "" : " and bench_gpt_layer's attention"));
    if (cpus > 0) c.devices_per_node = cpus;

    fit_attention(c, attention);
    c.check();
    return c;
  });
}

std::vector<AttentionSample> load_attention_samples(const std::string& bench_gpt_layer_json) {
  return json_errors_named(bench_gpt_layer_json, [&] {
    const std::string& path = bench_gpt_layer_json;
    const nlohmann::json j = read_json(path);
    std::map<std::string, AttentionSample> by_case;
    for (const nlohmann::json& b : runs(j, path)) {
      const std::string n = b.value("name", "");
      if (n.find("/f32/") == std::string::npos || n.find("_tp1/") == std::string::npos ||
          !b.contains("hidden") || !b.contains("heads") || !b.contains("seq") ||
          !b.contains("batch") || !b.contains("attn_ms")) {
        continue;
      }
      AttentionSample s;
      s.hidden = static_cast<int64_t>(b.at("hidden").get<double>());
      s.heads = static_cast<int64_t>(b.at("heads").get<double>());
      s.seq_len = static_cast<int64_t>(b.at("seq").get<double>());
      s.micro_batch = static_cast<int64_t>(b.at("batch").get<double>());
      s.seconds = b.at("attn_ms").get<double>() * 1e-3;
      auto [it, fresh] = by_case.emplace(n, s);
      if (!fresh) it->second.seconds = std::min(it->second.seconds, s.seconds);
    }
    WEFT_CHECK(!by_case.empty(), "calibration: '", path,
               "' holds no f32 tp-1 rows with their shape and attn_ms (run bench_gpt_layer)");
    std::vector<AttentionSample> out;
    for (const auto& [n, s] : by_case) out.push_back(s);
    return out;
  });
}

void fit_attention(Cluster& c, const std::vector<AttentionSample>& samples) {
  if (samples.empty()) return;
  std::vector<GemmRate> rates;  // fitted like the GEMM curve, in the model's FLOPs
  for (const AttentionSample& s : samples) {
    WEFT_CHECK(s.seconds > 0 && s.hidden > 0 && s.heads > 0 && s.hidden % s.heads == 0 &&
                   s.seq_len > 0 && s.micro_batch > 0,
               "calibration: an attention sample needs positive sizes, heads dividing hidden, "
               "and seconds (hidden ",
               s.hidden, ", heads ", s.heads, ", seq ", s.seq_len, ", batch ", s.micro_batch,
               ", seconds ", s.seconds, ")");
    ModelShape m = ModelShape::gpt(1, s.hidden, s.heads, s.seq_len, 1);
    // Forward + backward: three forwards' FLOPs (full s^2, as the model counts them).
    const double flops =
        3 * 2 * 2 * static_cast<double>(s.micro_batch * s.seq_len * s.seq_len * s.hidden);
    GemmRate r;
    r.smallest_dim = static_cast<double>(m.head_dim());
    r.gflops = flops / s.seconds / 1e9;
    rates.push_back(r);
  }
  const RateCurve curve = fit_rate_curve(rates);
  c.attention_efficiency_max = curve.peak_gflops / 1e3 / c.peak_tflops_f32;
  c.attention_half_dim = curve.half_dim;
}

}  // namespace weft::plan
