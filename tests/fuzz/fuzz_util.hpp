// Helpers of the fuzz targets: inputs that the code under test only takes as files.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <string>

namespace weft::fuzz {

// A directory of this process for input files, removed at exit.
struct InputDir {
  InputDir() {
    char pattern[] = "/tmp/weft-fuzz-XXXXXX";
    if (mkdtemp(pattern) == nullptr) throw std::runtime_error("mkdtemp failed");
    path = pattern;
  }
  ~InputDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string path;
};

// Writes the input to `name` in the process's input directory and returns its path.
inline std::string write_input(const std::string& name, const uint8_t* data, size_t size) {
  static const InputDir dir;
  const std::string path = dir.path + "/" + name;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) throw std::runtime_error("cannot write " + path);
  if (size > 0 && std::fwrite(data, 1, size, f) != size) throw std::runtime_error("short write");
  std::fclose(f);
  return path;
}

}  // namespace weft::fuzz
