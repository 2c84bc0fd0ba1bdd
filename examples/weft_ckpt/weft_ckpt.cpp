// weft_ckpt: looks into, reshards and converts (Hugging Face) weft GPT checkpoints; no MPI, one
// tensor block in memory.
//
//   weft_ckpt inspect DIR
//   weft_ckpt reshard DIR --tp T --pp P [--virtual-stages V] --out DIR2
//   weft_ckpt export-hf DIR --out HFDIR
//   weft_ckpt import-hf HFDIR --out DIR [--tp T --pp P]
//
// Exit status: 0 done, 1 a bad checkpoint or a failed write (the message names the file, the
// field and the value), 2 a bad command line or a model weft cannot represent (an HF config
// feature weft does not implement, a weft config HF has no name for).
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "common/flags.hpp"
#include "weft/checkpoint.hpp"
#include "weft/checkpoint_store.hpp"
#include "weft/gpt_checkpoint.hpp"
#include "weft/hf_convert.hpp"

namespace {

using weft::examples::UsageError;

constexpr char kUsage[] =
    "usage: weft_ckpt inspect DIR\n"
    "       weft_ckpt reshard DIR --tp T --pp P [--virtual-stages V] --out DIR2\n"
    "       weft_ckpt export-hf DIR --out HFDIR\n"
    "       weft_ckpt import-hf HFDIR --out DIR [--tp T --pp P]\n"
    "DIR: a checkpoint directory, or a checkpoint root (then its latest save); HFDIR: a Hugging\n"
    "Face GPT2LMHeadModel or LlamaForCausalLM directory (config.json, model.safetensors)\n";

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024.0 && u < 4) {
    bytes /= 1024.0;
    ++u;
  }
  char text[32];
  std::snprintf(text, sizeof text, u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
  return text;
}

int inspect(const std::string& path) {
  const std::string dir = weft::resolve_checkpoint(path);  // a root: its latest save
  const weft::CheckpointInfo info = weft::read_checkpoint_info(dir);
  const std::vector<weft::CheckpointTensor> tensors = weft::list_checkpoint_tensors(dir);
  const nlohmann::json manifest = nlohmann::json::parse(weft::read_file(dir + "/manifest.json"));
  std::printf("checkpoint %s (format version %d)\n", dir.c_str(), info.version);
  std::printf("layout: tp %d, pp %d, virtual stages %d (%d shard files)\n", info.tp, info.pp,
              info.virtual_stages, info.tp * info.pp);
  std::printf("step %lld, optimizer state %s, tokenizer %s\n", static_cast<long long>(info.step),
              info.has_optimizer ? "yes" : "no",
              info.tokenizer.empty() ? "none (bytes)" : info.tokenizer.c_str());
  std::printf("config: %s\n", manifest.at("config").dump().c_str());
  std::printf("%-44s %-5s %-16s %-9s %6s %12s\n", "tensor", "dtype", "global shape", "split",
              "blocks", "stored");
  int64_t parameters = 0, stored = 0;
  for (const weft::CheckpointTensor& t : tensors) {
    const std::string split =
        t.partition_dim < 0 ? "whole" : "dim " + std::to_string(t.partition_dim);
    std::printf("%-44s %-5s %-16s %-9s %6lld %12s\n", t.name.c_str(), weft::dtype_name(t.dtype),
                t.shape.str().c_str(), split.c_str(), static_cast<long long>(t.blocks),
                human_bytes(static_cast<double>(t.stored_bytes)).c_str());
    auto ends_with = [&](const std::string& suffix) {
      return t.name.size() > suffix.size() &&
             t.name.compare(t.name.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    const bool optimizer_state =
        ends_with(".master") || ends_with(".exp_avg") || ends_with(".exp_avg_sq");
    if (!optimizer_state) parameters += t.shape.numel();
    stored += t.stored_bytes;
  }
  std::printf("%zu tensors, %lld parameters, %s in the shard files (replicas included)\n",
              tensors.size(), static_cast<long long>(parameters),
              human_bytes(static_cast<double>(stored)).c_str());
  return 0;
}

int reshard(const std::string& dir, int argc, char** argv) {
  int64_t tp = 0, pp = 0, virtual_stages = 1;
  std::string out;
  weft::examples::Flags flags("weft_ckpt reshard",
                              "Write checkpoint DIR at another layout to --out (a new directory).");
  flags.add("tp", &tp, "tensor-parallel size of the copy", 0, 1 << 20);
  flags.add("pp", &pp, "pipeline-parallel size of the copy", 0, 1 << 20);
  flags.add("virtual-stages", &virtual_stages, "model chunks per pipeline rank of the copy", 1,
            1 << 20);
  flags.add("out", &out, "the new checkpoint directory (must not exist)");
  if (!flags.parse(argc, argv)) {
    std::printf("%s", flags.usage().c_str());
    return 0;
  }
  if (tp <= 0 || pp <= 0 || virtual_stages <= 0 || out.empty()) {
    throw UsageError(
        "weft_ckpt reshard: --tp and --pp (positive) and --out DIR are required, and "
        "--virtual-stages must be positive\n" +
        std::string(kUsage));
  }
  weft::reshard_checkpoint(dir, out, static_cast<int>(tp), static_cast<int>(pp),
                           static_cast<int>(virtual_stages));
  std::printf("wrote %s: tp %lld, pp %lld, virtual stages %lld\n", out.c_str(),
              static_cast<long long>(tp), static_cast<long long>(pp),
              static_cast<long long>(virtual_stages));
  return 0;
}

int convert(const std::string& command, const std::string& dir, int argc, char** argv) {
  const bool import = command == "import-hf";
  int64_t tp = 1, pp = 1;
  std::string out;
  weft::examples::Flags flags(("weft_ckpt " + command).c_str(),
                              import ? "Write Hugging Face model HFDIR as a weft checkpoint."
                                     : "Write weft checkpoint DIR as a Hugging Face model.");
  if (import) {
    flags.add("tp", &tp, "tensor-parallel size of the checkpoint", 1, 1 << 20);
    flags.add("pp", &pp, "pipeline-parallel size of the checkpoint", 1, 1 << 20);
  }
  flags.add("out", &out, "the new directory (must not exist)");
  if (!flags.parse(argc, argv)) {
    std::printf("%s", flags.usage().c_str());
    return 0;
  }
  if (out.empty()) throw UsageError("weft_ckpt " + command + ": --out is required\n" + kUsage);
  try {
    if (import) {
      weft::import_hf_checkpoint(dir, out, static_cast<int>(tp), static_cast<int>(pp));
      std::printf("wrote %s: weft checkpoint of %s at tp %lld, pp %lld\n", out.c_str(), dir.c_str(),
                  static_cast<long long>(tp), static_cast<long long>(pp));
    } else {
      weft::export_hf_checkpoint(dir, out);
      std::printf("wrote %s: Hugging Face model of %s\n", out.c_str(), dir.c_str());
    }
  } catch (const weft::Error& e) {
    // A model the other side cannot represent is the caller's input, as a bad flag is.
    if (e.code() != weft::ErrorCode::kInvalidArgument) throw;
    std::fprintf(stderr, "weft_ckpt: %s\n", e.what());
    return 2;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string command = argc > 1 ? argv[1] : "";
    if (command == "--help" || command == "-h") {
      std::printf("%s", kUsage);
      return 0;
    }
    if (argc < 3 || (command != "inspect" && command != "reshard" && command != "export-hf" &&
                     command != "import-hf")) {
      throw UsageError(std::string("weft_ckpt: expected a command and a directory\n") + kUsage);
    }
    const std::string dir = argv[2];
    if (command == "inspect") {
      if (argc != 3) throw UsageError(std::string("weft_ckpt inspect takes DIR only\n") + kUsage);
      return inspect(dir);
    }
    // The flags after DIR, as the parser sees a command line (argv[0] then flags).
    if (command != "reshard") return convert(command, dir, argc - 2, argv + 2);
    return reshard(dir, argc - 2, argv + 2);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "weft_ckpt: %s\n", e.what());
    return 1;
  }
}
