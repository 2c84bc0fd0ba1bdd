// OneDnn: the CPU backend's oneDNN primitives (matmul with epilogues, GeLU, the tile products of
// the fused kernels), cached per shape.
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
  // Vectorized GeLU (tanh) forward and backward; a 16-bit dtype without a oneDNN kernel on this
  // CPU runs the f32 kernel on a widened copy. False when neither exists, so the caller uses its
  // scalar loop.
  bool gelu(TensorView out, TensorView in);
  bool gelu_backward(TensorView grad_in, TensorView grad_out, TensorView input);

  // One product of the fused kernels' tiles (attention): c = alpha * op(a) op(b) + beta * c with
  // op(a) [m, k] and op(b) [k, n]; a is stored [m, k] ([k, m] when ta), b [k, n] ([n, k] when tb),
  // row-major in `dtype` with rows lda and ldb elements apart; c is row-major f32 [m, n] with rows
  // ldc apart. A leading dimension of 0 means dense (the stored row length). With beta 0, c is
  // only written. f32 tiles run through oneDNN's sgemm (no primitive to create or look up: the
  // per-call cost of a cached matmul primitive is a third of a 128 x 128 x 64 product's time);
  // 16-bit tiles through a cached matmul primitive.
  struct Tile {
    int64_t m = 0, n = 0, k = 0;
    bool ta = false, tb = false;
    float alpha = 1.0f, beta = 0.0f;
    DType dtype = DType::kF32;
    int64_t lda = 0, ldb = 0, ldc = 0;
  };
  // Safe to call from the threads of an OpenMP region: each call then runs on its own thread.
  void tile_matmul(const Tile& tile, const void* a, const void* b, float* c);
  // The dtype tiles of `dtype` activations are multiplied in: itself when oneDNN has a native
  // matmul for it on this CPU, else f32 (the caller converts).
  DType tile_dtype(DType dtype);
  std::string version() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace weft
