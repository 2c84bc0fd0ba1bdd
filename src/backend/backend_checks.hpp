// The building blocks of the ops' argument checks (each op's own check sits beside it, in
// <family>_ops.cpp), and what every backend shares about new memory.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "weft/backend.hpp"

namespace weft {

// The view lives on `device` and has data.
void check_on_device(const TensorView& view, Device device, const char* op, const char* what);
// The view is in host memory or on `device` and has data (the copy ops of a device backend).
void check_host_or_device(const TensorView& view, Device device, const char* op, const char* what);
void check_same_layout(const TensorView& a, const TensorView& b, const char* op, const char* what_a,
                       const char* what_b);
// A named operand of an op, for the checks over several at once.
struct Operand {
  const TensorView& view;
  const char* name;
};
// Each operand, in order, lives on `device` and has data (check_on_device).
void check_on_device(Device device, const char* op, std::initializer_list<Operand> operands);
// Each operand, in order, has `like`'s shape and dtype (check_same_layout).
void check_same_layout(const Operand& like, const char* op,
                       std::initializer_list<Operand> operands);
void check_floating(const TensorView& v, const char* op, const char* what);
void check_dtype(const TensorView& v, DType dtype, const char* op, const char* what);
// `v` has `count` elements of `dtype` (per-row statistics, parameter vectors).
void check_vector(const TensorView& v, int64_t count, DType dtype, const char* op,
                  const char* what);
// `v` is a [rows, cols] matrix (leading dims folded) of `dtype`.
void check_matrix(const TensorView& v, int64_t rows, int64_t cols, DType dtype, const char* op,
                  const char* what);
void check_has_rows(const TensorView& v, const char* op, const char* what);

// WEFT_POISON_ALLOCATIONS=1: backends fill new memory with 0xFF bytes (NaN in every dtype), so an
// op that leaves part of its output unwritten fails any comparison. The tests set it.
bool poison_allocations();

}  // namespace weft
