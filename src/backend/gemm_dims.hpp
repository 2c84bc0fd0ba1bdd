// GemmDims: the dimensions of a GEMM call, derived from its (checked) GemmArgs.
#pragma once

#include <cstdint>

#include "weft/backend.hpp"

namespace weft {

struct GemmDims {
  int64_t m, n, k;
  int64_t lda, ldb, ldc;  // stored column counts of A, B, C
};

// Assumes A, B and C are 2D (Backend::gemm has checked them).
inline GemmDims gemm_dims(const GemmArgs& args) {
  GemmDims d;
  d.m = args.transpose_a ? args.a.shape[1] : args.a.shape[0];
  d.k = args.transpose_a ? args.a.shape[0] : args.a.shape[1];
  d.n = args.transpose_b ? args.b.shape[0] : args.b.shape[1];
  d.lda = args.a.shape[1];
  d.ldb = args.b.shape[1];
  d.ldc = args.c.shape[1];
  return d;
}

}  // namespace weft
