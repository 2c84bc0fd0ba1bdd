// CpuMatmul: GemmArgs on oneDNN's matmul primitive, one primitive cached per shape and epilogue.
#pragma once

#include <memory>
#include <string>

#include "weft/backend.hpp"

namespace weft {

class CpuMatmul {
 public:
  CpuMatmul();
  ~CpuMatmul();
  void run(const GemmArgs& args);
  std::string version() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace weft
