// Checkpoint roots: step directories, the `latest` pointer, retention and stale-file cleanup.
#include "weft/checkpoint_store.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <regex>
#include <tuple>

#include "weft/comm.hpp"
#include "weft/error.hpp"
#include "weft/file_io.hpp"
#include "weft/log.hpp"

namespace weft {

namespace fs = std::filesystem;

namespace {

const char kLatest[] = "latest";
const char kManifest[] = "manifest.json";

// step-<digits>[-<generation>]: the step and the generation (1 when absent).
bool parse_step_name(const std::string& name, int64_t* step, int64_t* generation) {
  static const std::regex pattern(R"(step-([0-9]{1,18})(?:-([0-9]{1,9}))?)");
  std::smatch m;
  if (!std::regex_match(name, m, pattern)) return false;
  *step = std::stoll(m[1].str());
  *generation = m[2].matched ? std::stoll(m[2].str()) : 1;
  return true;
}

std::string step_name(int64_t step) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "step-%08lld", static_cast<long long>(step));
  return buffer;
}

void fsync_directory(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) WEFT_THROW(ErrorCode::kIo, "cannot open directory ", dir.string(), " to sync it");
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) WEFT_THROW(ErrorCode::kIo, "fsync of directory ", dir.string(), " failed");
}

std::string read_latest(const fs::path& root) {
  std::string name = read_file((root / kLatest).string());
  while (!name.empty() && (name.back() == '\n' || name.back() == '\r')) name.pop_back();
  int64_t step = 0, generation = 0;
  if (!parse_step_name(name, &step, &generation))
    WEFT_THROW(ErrorCode::kIo, "checkpoint pointer ", (root / kLatest).string(), " names '", name,
               "', which is not a step directory name (step-<number>[-<number>])");
  return name;
}

// Removes what crashed saves left under `root`: partial step directories and temporary files.
void remove_stale(const fs::path& root) {
  std::error_code ec;
  for (const fs::directory_entry& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    const bool partial = name.size() > 8 && name.rfind(".partial") == name.size() - 8;
    const bool temporary = name.find(".tmp.") != std::string::npos;
    if (partial || temporary) {
      std::error_code remove_ec;
      fs::remove_all(entry.path(), remove_ec);
      if (remove_ec) {
        WEFT_LOG(kWarning, "could not remove ", entry.path().string(), ": ", remove_ec.message());
      }
    }
  }
}

}  // namespace

std::vector<std::string> list_checkpoint_steps(const std::string& root) {
  std::vector<std::tuple<int64_t, int64_t, std::string>> found;
  std::error_code ec;
  for (const fs::directory_entry& entry : fs::directory_iterator(root, ec)) {
    int64_t step = 0, generation = 0;
    const std::string name = entry.path().filename().string();
    if (entry.is_directory() && parse_step_name(name, &step, &generation) &&
        fs::exists(entry.path() / kManifest)) {
      found.emplace_back(step, generation, name);
    }
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> names;
  for (auto& [step, generation, name] : found) names.push_back(name);
  return names;
}

void prepare_checkpoint_root(const std::string& root, Communicator& world, Backend& backend) {
  std::string problem;
  try {
    std::error_code ec;
    fs::create_directories(root, ec);
    if (ec) {
      problem = "cannot create checkpoint directory " + root + ": " + ec.message();
    } else {
      const std::string probe = root + "/.write-check.tmp." + std::to_string(::getpid()) + "." +
                                std::to_string(world.rank());
      write_file_atomically(probe, "weft\n");
      fs::remove(probe, ec);
    }
  } catch (const std::exception& e) {
    problem = std::string("cannot write checkpoints to ") + root + ": " + e.what();
  }
  const float failed =
      all_reduce_scalar(world, backend, problem.empty() ? 0.0f : 1.0f, ReduceOp::kMax);
  if (!problem.empty()) WEFT_THROW(ErrorCode::kIo, problem);
  if (failed != 0.0f)
    WEFT_THROW(ErrorCode::kIo, "another rank cannot write checkpoints to ", root,
               " (its message says why)");
  run_agreed(world, backend, [&] {
    if (world.rank() == 0) remove_stale(root);
  });
}

std::string save_checkpoint_step(const std::string& root, const CheckpointInfo& info,
                                 const std::vector<Parameter*>& params, AdamW* optimizer,
                                 const ParallelGrid& grid, Backend& backend, int keep_last) {
  WEFT_CHECK(keep_last >= 0, "save_checkpoint_step: keep_last ", keep_last, " must be >= 0");
  Communicator& world = grid.world();
  const fs::path root_path(root);
  const std::string partial = (root_path / (step_name(info.step) + ".partial")).string();
  // A step saved before keeps its directory (latest may name it until the new one is in place):
  // the new save takes the next free generation. Every rank decides before anything is renamed.
  std::string final_name = step_name(info.step);
  for (int generation = 2; fs::exists(root_path / final_name); ++generation) {
    final_name = step_name(info.step) + "-" + std::to_string(generation);
  }
  // What rank 0 alone does is agreed on (run_agreed), so that its failure (a full disk) is an
  // error on every rank instead of peers waiting at a barrier.
  run_agreed(world, backend, [&] {
    if (world.rank() != 0) return;
    try {
      fs::create_directories(root_path);
      fs::remove_all(partial);  // an earlier save of this step that a crash interrupted
    } catch (const fs::filesystem_error& e) {
      WEFT_THROW(ErrorCode::kIo, "cannot prepare ", partial, ": ", e.what());
    }
  });
  save_checkpoint(partial, info, params, optimizer, grid, backend);  // agreed on every rank
  run_agreed(world, backend, [&] {
    if (world.rank() != 0) return;
    try {
      fs::rename(partial, root_path / final_name);
      fsync_directory(root_path);
      write_file_atomically((root_path / kLatest).string(), final_name + "\n");
      if (keep_last > 0) {
        const std::vector<std::string> steps = list_checkpoint_steps(root);
        for (size_t i = 0; i + static_cast<size_t>(keep_last) < steps.size(); ++i) {
          if (steps[i] != final_name) fs::remove_all(root_path / steps[i]);
        }
      }
    } catch (const fs::filesystem_error& e) {
      WEFT_THROW(ErrorCode::kIo, "cannot publish checkpoint ", final_name, " in ", root, ": ",
                 e.what());
    }
  });  // every rank returns once the save is published
  return (root_path / final_name).string();
}

std::string resolve_checkpoint(const std::string& path) {
  const fs::path p(path);
  if (fs::exists(p / kManifest)) return path;
  if (!fs::exists(p)) {
    WEFT_THROW(ErrorCode::kIo, "checkpoint ", path, " does not exist");
  }
  if (!fs::exists(p / kLatest))
    WEFT_THROW(ErrorCode::kIo, "checkpoint ", path, " is neither a checkpoint (no ", kManifest,
               ") nor a checkpoint root (no ", kLatest,
               "); an interrupted first save leaves only a .partial directory");
  const std::string name = read_latest(p);
  const fs::path dir = p / name;
  if (!fs::exists(dir / kManifest))
    WEFT_THROW(ErrorCode::kIo, "checkpoint pointer ", (p / kLatest).string(), " names ", name,
               ", which has no ", kManifest);
  return dir.string();
}

}  // namespace weft
