// OneDnn: the CPU backend's oneDNN primitives (matmul with epilogues, GeLU), cached per shape.
#pragma once

#include <memory>
#include <string>

#include "weft/backend.hpp"

namespace weft {

class OneDnn {
 public:
  OneDnn();
  ~OneDnn();
  void matmul(const GemmArgs& args);
  // Vectorized GeLU (tanh) forward and backward for f32 and bf16; false when oneDNN has no
  // kernel for the dtype, so the caller uses its scalar loop.
  bool gelu(TensorView out, TensorView in);
  bool gelu_backward(TensorView grad_in, TensorView grad_out, TensorView input);
  std::string version() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace weft
