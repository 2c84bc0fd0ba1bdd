// Argument checks shared by every backend, so that both reject bad calls with the same message.
#pragma once

#include <cstdint>

#include "weft/backend.hpp"

namespace weft {

struct GemmDims {
  int64_t m, n, k;
  int64_t lda, ldb, ldc;  // stored column counts of A, B, C
};

// Validates shapes, dtypes, devices and epilogue operands of a GEMM call; returns its dimensions.
GemmDims check_gemm_args(const GemmArgs& args, Device device);

// The view lives on `device` and has data.
void check_on_device(const TensorView& view, Device device, const char* op, const char* what);
void check_same_layout(const TensorView& a, const TensorView& b, const char* op, const char* what_a,
                       const char* what_b);

// Per-op checks beyond placement (each backend checks placement itself: the CUDA backend's
// copies also accept host memory).
void check_copy_columns_args(const TensorView& dst, int64_t dst_col, const TensorView& src,
                             int64_t src_col, int64_t cols);
// Returns the global row length the window is drawn from.
int64_t check_fill_random_args(const TensorView& dst, const RandomFill& spec);
void check_add_args(const TensorView& out, const TensorView& a, const TensorView& b, Device device);
void check_add_bias_args(const TensorView& out, const TensorView& in, const TensorView& bias,
                         Device device);
void check_gelu_args(const TensorView& out, const TensorView& in, Device device);
void check_gelu_backward_args(const TensorView& grad_in, const TensorView& grad_out,
                              const TensorView& input, Device device);
void check_convert_args(const TensorView& dst, const TensorView& src, Device device);

// WEFT_POISON_ALLOCATIONS=1: backends fill new memory with 0xFF bytes (NaN in every dtype), so an
// op that leaves part of its output unwritten fails any comparison. The tests set it.
bool poison_allocations();

}  // namespace weft
