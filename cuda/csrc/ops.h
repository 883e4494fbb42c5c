// Shared declarations of the vecfusion torch ops (CPU kernels in ops.cpp, CUDA in cuda/*.cu).
#pragma once

#include <ATen/ATen.h>

#include <type_traits>
#include <vector>

namespace vecfusion_ops {

// Raise IndexError (never crash) unless every index is in [0, num_rows).
void check_index_range(const at::Tensor& indices, int64_t num_rows, const char* what);

// Raise IndexError unless indices[:, t] is in [0, rows_t) for every table t (meta on CPU).
void check_multi_index_range(const at::Tensor& indices, const at::Tensor& meta_cpu);

// A table of a multi-table layout: meta is int64 (tables, 4), one row per table: rows, dim,
// offset of the table in the flat weight, first output column.
struct Table {
  int64_t rows, dim, woff, coff;
};

// The tables of `meta` (on any device; one on the GPU is copied to the host, which waits for
// the device), each checked to lie inside a flat weight of `numel` elements, their output
// columns one table after another filling exactly `total_dim` columns (ValueError otherwise):
// kernels given these tables never read or write outside the weight or the output, and leave
// no output element unwritten.
std::vector<Table> tables_of(const at::Tensor& meta, int64_t numel, int64_t total_dim);

// The type gradients are accumulated in: float for float/half/bfloat16, double for double.
inline at::ScalarType acc_type_of(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// C++ accumulation type of a scalar type (matches acc_type_of).
template <typename T>
using acc_of = std::conditional_t<std::is_same_v<T, double>, double, float>;

}  // namespace vecfusion_ops
