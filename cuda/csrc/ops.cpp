// vecfusion torch ops: schemas (TORCH_LIBRARY) and the CPU kernels.
//
// CPU kernels are plain C++ loops parallelized with at::parallel_for, without a tensor
// op per row, and deterministic: each weight row is written by exactly one thread, which
// adds the gradients of that row in index order (the order nn.Embedding uses).

#include <ATen/Parallel.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <Python.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "ops.h"

// The extension is importable as a Python module (vecfusion_ops._C); importing it
// registers the ops with the dispatcher.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace vecfusion_ops {

namespace {

// Rows per parallel task so that a task copies or adds about 64 KiB.
int64_t grain_for(int64_t row_bytes) {
  return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(row_bytes, 1));
}

template <typename index_t>
std::pair<int64_t, int64_t> min_max(const index_t* p, int64_t n) {
  int64_t lo = 0, hi = 0;
  if (n > 0) {
    lo = hi = static_cast<int64_t>(p[0]);
    for (int64_t i = 1; i < n; ++i) {
      const int64_t v = static_cast<int64_t>(p[i]);
      lo = v < lo ? v : lo;
      hi = v > hi ? v : hi;
    }
  }
  return {lo, hi};
}

void check_indices_tensor(const at::Tensor& indices) {
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong || indices.scalar_type() == at::kInt,
                   "vecfusion embedding: indices must be int32 or int64, got ", indices.scalar_type());
}

// `g` as `n` rows of `dim` values without a copy wherever a view exists: a gradient that
// autograd expanded from a scalar (the backward of `out.sum()`) has zero strides, and copying it
// to a contiguous tensor would write a batch-sized array of one value. The kernels read the
// rows through the two strides returned.
struct Rows {
  at::Tensor t;
  int64_t s0, s1;
};

Rows rows_of(const at::Tensor& g, int64_t n, int64_t dim) {
  auto t = g.reshape({n, dim});  // a view when the strides allow it, else a contiguous copy
  return {t, t.stride(0), t.stride(1)};
}

typedef float vf_float4 __attribute__((vector_size(16)));
typedef double vf_double2 __attribute__((vector_size(16)));

// `row[j] += g[j·s1]` for j < d (= D when D != 0). With D fixed and a contiguous (s1 = 1) or
// broadcast (s1 = 0, the expanded gradient of `out.sum()`) gradient row of the table's own type,
// 16-byte vectors: the compiler does not vectorize this short loop by itself (the loads might
// depend on the stores). The same IEEE additions, element by element.
template <int64_t D, typename acc_t, typename scalar_t>
inline void add_into(acc_t* row, const scalar_t* g, int64_t s1, int64_t d) {
  if constexpr (D != 0 && std::is_same_v<acc_t, scalar_t> &&
                (std::is_same_v<acc_t, float> || std::is_same_v<acc_t, double>) && (D * sizeof(acc_t)) % 16 == 0) {
    using V = std::conditional_t<std::is_same_v<acc_t, float>, vf_float4, vf_double2>;
    constexpr int64_t L = 16 / sizeof(acc_t);
    if (s1 == 1) {
      for (int64_t j = 0; j < D; j += L) {
        V a, b;
        std::memcpy(&a, row + j, 16);
        std::memcpy(&b, g + j, 16);
        a += b;
        std::memcpy(row + j, &a, 16);
      }
      return;
    }
    if (s1 == 0) {
      const V b = V{} + g[0];
      for (int64_t j = 0; j < D; j += L) {
        V a;
        std::memcpy(&a, row + j, 16);
        a += b;
        std::memcpy(row + j, &a, 16);
      }
      return;
    }
  }
  if constexpr (D != 0) {
    acc_t t[D];
    for (int64_t j = 0; j < D; ++j) t[j] = static_cast<acc_t>(g[j * s1]);
    for (int64_t j = 0; j < D; ++j) row[j] += t[j];
  } else {
    for (int64_t j = 0; j < d; ++j) row[j] += static_cast<acc_t>(g[j * s1]);
  }
}

// Hint that the row at `p` (`bytes` long) is about to be read and written.
inline void prefetch_row(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 1);
}

// One case of the dispatchers below: `f` called with the value as a compile-time constant.
#define VF_CONST_CASE(V) \
  case V:                \
    return f(std::integral_constant<int64_t, V>{});

// Calls `f(std::integral_constant<int64_t, W>{})` with W = `w` when `w` is one of the usual
// row widths and W = 0 otherwise (the kernel then uses the runtime width): the per-row loops of
// the common widths compile with the width as a constant (a few vector moves per row, no
// library call and no dispatch per row).
template <typename F>
inline void with_width(int64_t w, F&& f) {
  switch (w) {
    VF_CONST_CASE(1) VF_CONST_CASE(2) VF_CONST_CASE(4) VF_CONST_CASE(8) VF_CONST_CASE(16) VF_CONST_CASE(32)
    VF_CONST_CASE(64) VF_CONST_CASE(128) VF_CONST_CASE(256) VF_CONST_CASE(300) VF_CONST_CASE(512) VF_CONST_CASE(1024)
    VF_CONST_CASE(1200)
    default:
      return f(std::integral_constant<int64_t, 0>{});
  }
}

// A table larger than this is read from memory rather than the core's caches: the rows a few
// indices ahead are prefetched (below it the hints are pure overhead).
constexpr int64_t kPrefetchBytes = int64_t{1} << 20;

void check_weight(const at::Tensor& weight) {
  TORCH_CHECK_VALUE(weight.dim() == 2, "vecfusion embedding: weight must be 2-D, got ", weight.dim(), "-D");
  TORCH_CHECK_TYPE(at::isFloatingType(weight.scalar_type()),
                   "vecfusion embedding: weight must be floating point, got ", weight.scalar_type());
}

}  // namespace

void check_index_range(const at::Tensor& indices, int64_t num_rows, const char* what) {
  check_indices_tensor(indices);
  const int64_t n = indices.numel();
  if (n == 0) return;
  int64_t lo, hi;
  if (indices.is_cuda()) {
    auto mm = at::aminmax(indices);
    auto both = at::stack({std::get<0>(mm).to(at::kLong), std::get<1>(mm).to(at::kLong)}).cpu();
    lo = both[0].item<int64_t>();
    hi = both[1].item<int64_t>();
  } else {
    auto c = indices.contiguous();
    AT_DISPATCH_INDEX_TYPES(c.scalar_type(), "vecfusion_check_range", [&] {
      std::tie(lo, hi) = min_max(c.const_data_ptr<index_t>(), n);
    });
  }
  TORCH_CHECK_INDEX(lo >= 0 && hi < num_rows, what, ": index out of range (indices span [", lo, ", ", hi,
                    "], table has ", num_rows, " rows)");
}

void check_multi_index_range(const at::Tensor& indices, const at::Tensor& meta_cpu) {
  check_indices_tensor(indices);
  TORCH_CHECK_VALUE(indices.dim() == 2, "vecfusion multi-embedding: indices must be 2-D (batch, tables), got ",
                    indices.dim(), "-D");
  const int64_t tables = meta_cpu.size(0);
  TORCH_CHECK_VALUE(indices.size(1) == tables, "vecfusion multi-embedding: indices have ", indices.size(1),
                    " columns for ", tables, " tables");
  if (indices.numel() == 0) return;
  auto rows = meta_cpu.select(1, 0).to(indices.device()).to(indices.scalar_type());
  auto bad = at::logical_or(indices < 0, indices >= rows.unsqueeze(0));
  if (bad.any().item<bool>()) {
    auto pos = at::nonzero(bad).cpu();
    const int64_t b = pos[0][0].item<int64_t>(), t = pos[0][1].item<int64_t>();
    TORCH_CHECK_INDEX(false, "vecfusion multi-embedding: index ", indices[b][t].item<int64_t>(), " at [", b, ", ",
                      t, "] out of range for table ", t, " with ", meta_cpu[t][0].item<int64_t>(), " rows");
  }
}

// (declared in ops.h, where its checks are described)
std::vector<Table> tables_of(const at::Tensor& meta, int64_t numel, int64_t total_dim) {
  TORCH_CHECK_VALUE(meta.dim() == 2 && meta.size(1) == 4 && meta.scalar_type() == at::kLong,
                    "vecfusion multi-embedding: meta must be int64 (tables, 4)");
  auto m = meta.cpu().contiguous();
  const int64_t* p = m.const_data_ptr<int64_t>();
  std::vector<Table> t(static_cast<size_t>(m.size(0)));
  int64_t column = 0;
  for (size_t i = 0; i < t.size(); ++i) {
    const Table tb = {p[4 * i], p[4 * i + 1], p[4 * i + 2], p[4 * i + 3]};
    TORCH_CHECK_VALUE(tb.coff == column, "vecfusion multi-embedding: table ", i, " starts at output column ", tb.coff,
                      ", not ", column, " (each table's columns follow the previous table's)");
    const bool fits = tb.rows >= 0 && tb.dim >= 0 && tb.woff >= 0 && tb.coff >= 0 && tb.woff <= numel &&
                      tb.coff <= total_dim && tb.dim <= total_dim - tb.coff &&
                      (tb.dim == 0 || tb.rows <= (numel - tb.woff) / tb.dim);
    TORCH_CHECK_VALUE(fits, "vecfusion multi-embedding: table ", i, " (", tb.rows, " rows of ", tb.dim,
                      " at weight element ", tb.woff, ", output column ", tb.coff, ") does not fit a weight of ", numel,
                      " elements and ", total_dim, " output columns");
    t[i] = tb;
    column += tb.dim;
  }
  // the output columns are the tables' columns, in table order, with nothing between them
  // (every output element is written; the CUDA kernels find a column's table by its start)
  TORCH_CHECK_VALUE(column == total_dim, "vecfusion multi-embedding: the tables have ", column,
                    " output columns in all, not ", total_dim);
  return t;
}

namespace {

// ---------------------------------------------------------------- forward (gather)

// out row i = table row ip[i] for i in [b, e), rows of `row_bytes` (= W when W != 0). A plain
// function with everything passed by value: in a lambda's captures the compiler reloads the
// loop's bounds and pointers after every store (they might alias).
template <int64_t W, typename index_t>
void gather_rows(char* __restrict dst, const char* __restrict src, const index_t* __restrict ip, int64_t b,
                 int64_t e, int64_t row_bytes, bool far) {
  const int64_t rb = W != 0 ? W : row_bytes;
  constexpr int64_t AHEAD = 8;
  if (far) {
    for (int64_t i = b; i < e; ++i) {
      if (i + AHEAD < e) {
        const char* next = src + static_cast<int64_t>(ip[i + AHEAD]) * rb;
        for (int64_t off = 0; off < rb; off += 64) __builtin_prefetch(next + off);
      }
      std::memcpy(dst + i * rb, src + static_cast<int64_t>(ip[i]) * rb, static_cast<size_t>(rb));
    }
  } else {
    for (int64_t i = b; i < e; ++i) {
      std::memcpy(dst + i * rb, src + static_cast<int64_t>(ip[i]) * rb, static_cast<size_t>(rb));
    }
  }
}

at::Tensor embedding_cpu(const at::Tensor& weight, const at::Tensor& indices, int64_t /*padding_idx*/,
                         bool /*scale_grad_by_freq*/, bool /*sparse*/) {
  check_weight(weight);
  const int64_t num = weight.size(0), dim = weight.size(1);
  check_index_range(indices, num, "vecfusion embedding");
  auto w = weight.contiguous();
  auto idx = indices.contiguous();
  auto sizes = indices.sizes().vec();
  sizes.push_back(dim);
  auto out = at::empty(sizes, weight.options());
  const int64_t n = idx.numel();
  if (n == 0 || dim == 0) return out;
  const int64_t row_bytes = dim * static_cast<int64_t>(w.element_size());
  const char* src = static_cast<const char*>(w.const_data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  const bool far = num * row_bytes > kPrefetchBytes;
  AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "vecfusion_embedding_cpu", [&] {
    const index_t* ip = idx.const_data_ptr<index_t>();
    // constant widths for short rows only: a long row is copied faster by the C library's
    // memcpy (wide vector moves) than by the compiler's inline expansion
    with_width(row_bytes <= 256 ? row_bytes : 0, [&](auto width) {
      constexpr int64_t W = decltype(width)::value;
      at::parallel_for(0, n, grain_for(row_bytes), [&](int64_t b, int64_t e) {
        gather_rows<W>(dst, src, ip, b, e, row_bytes, far);
      });
    });
  });
  return out;
}

// ---------------------------------------------------------------- dense backward

// Per-row counts of the indices (for scale_grad_by_freq), 0 for rows not hit.
// An index out of [0, num) is an IndexError (it would count outside the table).
template <typename index_t>
std::vector<int32_t> row_counts(const index_t* ip, int64_t n, int64_t num) {
  std::vector<int32_t> counts(static_cast<size_t>(num), 0);
  for (int64_t i = 0; i < n; ++i) {
    const auto r = static_cast<uint64_t>(static_cast<int64_t>(ip[i]));
    TORCH_CHECK_INDEX(r < static_cast<uint64_t>(num), "vecfusion embedding backward: index ",
                      static_cast<int64_t>(ip[i]), " out of range for a table of ", num, " rows");
    counts[static_cast<size_t>(r)]++;
  }
  return counts;
}

// Adds gradient row i (`gp + i·s0`, element stride `s1`) to weight row ip[i] for every i whose
// row lies in [lo, hi) and is not `padding_idx`, in index order; scaled by 1/count when `counts`
// is given (as nn.Embedding: a fused multiply-add). Rows of `dim` (= D when D != 0) values.
// Everything by value and each case its own loop, so the adds are vector instructions and the
// loop keeps its state in registers. In tables larger than the caches (`far`), the rows a few
// indices ahead are prefetched.
template <int64_t D, typename acc_t, typename scalar_t, typename index_t>
void scatter_add_rows(acc_t* __restrict wp, const scalar_t* __restrict gp, const index_t* __restrict ip, int64_t n,
                      int64_t dim, int64_t s0, int64_t s1, int64_t lo, int64_t hi, int64_t padding_idx,
                      const int32_t* __restrict counts, bool far) {
  const int64_t d = D != 0 ? D : dim;
  const int64_t row_bytes = d * static_cast<int64_t>(sizeof(acc_t));
  constexpr int64_t AHEAD = 8;
  auto each = [&](auto&& add) {
    for (int64_t i = 0; i < n; ++i) {
      if (far && i + AHEAD < n) {
        const int64_t ka = static_cast<int64_t>(ip[i + AHEAD]);
        if (ka >= lo && ka < hi) prefetch_row(wp + ka * d, row_bytes);
      }
      const int64_t k = static_cast<int64_t>(ip[i]);
      if (k < lo || k >= hi || k == padding_idx) continue;
      add(wp + k * d, gp + i * s0, k);
    }
  };
  if (counts != nullptr) {
    each([&](acc_t* __restrict row, const scalar_t* __restrict g, int64_t k) {
      const acc_t sc = static_cast<acc_t>(1.0 / static_cast<double>(counts[k]));
      for (int64_t j = 0; j < d; ++j) row[j] = std::fma(static_cast<acc_t>(g[j * s1]), sc, row[j]);
    });
  } else if (s1 == 1) {
    each([&](acc_t* row, const scalar_t* g, int64_t) { add_into<D>(row, g, 1, d); });
  } else {
    each([&](acc_t* row, const scalar_t* g, int64_t) { add_into<D>(row, g, s1, d); });
  }
}

at::Tensor embedding_dense_backward_cpu(const at::Tensor& grad_, const at::Tensor& indices, int64_t num_weights,
                                        int64_t padding_idx, bool scale_grad_by_freq) {
  // (indices come checked from the forward; row_counts, which indexes by them, checks them
  // again: an out-of-range index in a direct call is an IndexError there, and without
  // scale_grad_by_freq its gradient row is dropped, as it lies in no task's rows. A separate
  // pass over the indices cost 6% of a whole training step at dim 8, batch 8192.)
  check_indices_tensor(indices);
  const int64_t dim = grad_.size(-1);
  const int64_t n = indices.numel();
  const auto grad = rows_of(grad_, n, dim);
  auto idx = indices.contiguous();
  const auto acc_t = acc_type_of(grad.t.scalar_type());
  if (n == 0 || dim == 0) return at::zeros({num_weights, dim}, grad.t.options());
  // not zeroed here: each task zeroes its own rows just before adding into them (one pass
  // over the gradient instead of two, and the rows are still in cache when the adds come)
  auto gw = at::empty({num_weights, dim}, grad.t.options().dtype(acc_t));
  const int64_t s0 = grad.s0, s1 = grad.s1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.t.scalar_type(), "vecfusion_dense_bwd", [&] {
    using acc_t = acc_of<scalar_t>;
    const scalar_t* gp = grad.t.const_data_ptr<scalar_t>();
    acc_t* wp = gw.data_ptr<acc_t>();
    AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "vecfusion_dense_bwd_idx", [&] {
      const index_t* ip = idx.const_data_ptr<index_t>();
      std::vector<int32_t> counts;
      if (scale_grad_by_freq) counts = row_counts(ip, n, num_weights);
      const int64_t row_bytes = dim * static_cast<int64_t>(sizeof(acc_t));
      // Each task owns the weight rows [lo, hi) and scans all indices in order.
      const bool far = num_weights * row_bytes > kPrefetchBytes;
      const int32_t* cp = scale_grad_by_freq ? counts.data() : nullptr;
      auto section = [&](int64_t lo, int64_t hi) {
        std::fill(wp + lo * dim, wp + hi * dim, acc_t(0));
        with_width(dim, [&](auto width) {
          constexpr int64_t D = decltype(width)::value;
          scatter_add_rows<D>(wp, gp, ip, n, dim, s0, s1, lo, hi, padding_idx, cp, far);
        });
      };
      if (n * dim < 16384 && num_weights * dim < (int64_t{1} << 16)) {  // too little to share
        section(0, num_weights);
      } else {
        at::parallel_for(0, num_weights, 1, section);
      }
    });
  });
  return acc_t == grad.t.scalar_type() ? gw : gw.to(grad.t.scalar_type());
}

// ---------------------------------------------------------------- sparse backward

// Returns (rows, values) of the sparse gradient as nn.Embedding makes it: one entry per
// index (uncoalesced, no sort), padding_idx left out, values scaled by 1/count when asked.
std::tuple<at::Tensor, at::Tensor> embedding_sparse_backward_cpu(const at::Tensor& grad_, const at::Tensor& indices,
                                                                 int64_t num_weights, int64_t padding_idx,
                                                                 bool scale_grad_by_freq) {
  // (row_counts indexes by every index: one out of range would write outside its table)
  check_index_range(indices, num_weights, "vecfusion embedding backward");
  const int64_t dim = grad_.size(-1);
  const int64_t n = indices.numel();
  auto grad = grad_.contiguous().view({n, dim});
  auto idx = indices.contiguous().view({n}).to(at::kLong);
  if (padding_idx >= 0) {
    auto keep = idx != padding_idx;
    if (!keep.all().item<bool>()) {
      idx = idx.masked_select(keep);
      grad = grad.index({keep});
    }
  }
  // The schema returns new tensors: never views of the inputs (torch.compile and opcheck
  // rely on it; a later in-place change of the indices moved the gradient).
  if (idx.is_alias_of(indices)) idx = idx.clone();
  if (!scale_grad_by_freq) return {idx, grad.is_alias_of(grad_) ? grad.clone() : grad};
  const int64_t m = idx.numel();
  auto vals = at::empty_like(grad);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "vecfusion_sparse_bwd", [&] {
    using acc_t = acc_of<scalar_t>;
    const int64_t* ip = idx.const_data_ptr<int64_t>();
    const auto counts = row_counts(ip, m, num_weights);
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    scalar_t* vp = vals.data_ptr<scalar_t>();
    at::parallel_for(0, m, grain_for(dim * 4), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const acc_t sc = static_cast<acc_t>(1.0 / static_cast<double>(counts[static_cast<size_t>(ip[i])]));
        for (int64_t j = 0; j < dim; ++j) vp[i * dim + j] = static_cast<scalar_t>(static_cast<acc_t>(gp[i * dim + j]) * sc);
      }
    });
  });
  return {idx, vals};
}

// ---------------------------------------------------------------- max_norm renormalization

// Like torch.embedding_renorm_: every distinct row in `indices` whose norm exceeds
// max_norm is scaled by max_norm / (norm + 1e-7), in place. The norms of all those rows
// come from one batched ATen reduction (the same values, bit for bit, as torch's per-row
// `row.norm(norm_type)`: every p, including 0 (count of non-zeros), inf and -inf, and
// rounded to the weight's dtype as torch rounds them); the scaling is a plain loop that
// multiplies as torch's `row *= scale` does. Any strides.
void embedding_renorm_cpu(at::Tensor& weight, const at::Tensor& indices, double max_norm, double norm_type) {
  check_weight(weight);
  const int64_t num = weight.size(0), dim = weight.size(1);
  check_index_range(indices, num, "vecfusion embedding");
  auto idx = indices.contiguous().to(at::kLong);
  const int64_t* ip = idx.const_data_ptr<int64_t>();
  std::vector<int64_t> uniq(ip, ip + idx.numel());
  std::sort(uniq.begin(), uniq.end());
  uniq.erase(std::unique(uniq.begin(), uniq.end()), uniq.end());
  const int64_t u = static_cast<int64_t>(uniq.size());
  if (u == 0 || dim == 0) return;
  auto rows_t = at::from_blob(uniq.data(), {u}, at::TensorOptions().dtype(at::kLong));
  at::Tensor norms_t;
  {
    at::NoGradGuard no_grad;
    if (weight.stride(1) == 1) {
      norms_t = at::linalg_vector_norm(weight.index_select(0, rows_t), norm_type, at::IntArrayRef{1}, false, std::nullopt);
    } else {
      // Rows with a stride: ATen reduces a strided row in another order than a contiguous
      // copy of it; torch reduces each row where it lies, and so does this (rare) path.
      std::vector<at::Tensor> per_row;
      per_row.reserve(static_cast<size_t>(u));
      for (const int64_t k : uniq) per_row.push_back(at::linalg_vector_norm(weight.select(0, k), norm_type));
      norms_t = at::stack(per_row);
    }
    norms_t = norms_t.to(at::kDouble).contiguous();
  }
  const double* norms = norms_t.const_data_ptr<double>();
  const int64_t s0 = weight.stride(0), s1 = weight.stride(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "vecfusion_renorm", [&] {
    using acc_t = acc_of<scalar_t>;
    scalar_t* wp = weight.data_ptr<scalar_t>();
    at::parallel_for(0, u, grain_for(dim * 8), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const double norm = norms[r];
        if (!(norm > max_norm)) continue;
        scalar_t* row = wp + uniq[static_cast<size_t>(r)] * s0;
        // as torch's `row *= scale`: the scale is computed in double and rounded to the
        // weight's dtype (float16/bfloat16 too), the product taken in acc_t
        const acc_t scale = static_cast<acc_t>(static_cast<scalar_t>(max_norm / (norm + 1e-7)));
        for (int64_t j = 0; j < dim; ++j) row[j * s1] = static_cast<scalar_t>(static_cast<acc_t>(row[j * s1]) * scale);
      }
    });
  });
}

// ---------------------------------------------------------------- multi-table

// Calls `f(std::integral_constant<int64_t, B>{})` with B = `bytes` for the row widths of small
// tables (multiples of 4 bytes up to 128), B = 0 otherwise (the runtime width is used).
template <typename F>
inline void with_small_width(int64_t bytes, F&& f) {
  switch (bytes) {
    VF_CONST_CASE(4) VF_CONST_CASE(8) VF_CONST_CASE(12) VF_CONST_CASE(16) VF_CONST_CASE(20) VF_CONST_CASE(24) VF_CONST_CASE(28) VF_CONST_CASE(32) VF_CONST_CASE(36) VF_CONST_CASE(40) VF_CONST_CASE(44)
    VF_CONST_CASE(48) VF_CONST_CASE(52) VF_CONST_CASE(56) VF_CONST_CASE(60) VF_CONST_CASE(64) VF_CONST_CASE(68) VF_CONST_CASE(72) VF_CONST_CASE(76) VF_CONST_CASE(80) VF_CONST_CASE(84) VF_CONST_CASE(88)
    VF_CONST_CASE(92) VF_CONST_CASE(96) VF_CONST_CASE(100) VF_CONST_CASE(104) VF_CONST_CASE(108) VF_CONST_CASE(112) VF_CONST_CASE(116) VF_CONST_CASE(120) VF_CONST_CASE(124) VF_CONST_CASE(128)
    default:
      return f(std::integral_constant<int64_t, 0>{});
  }
}

// One table's slice of the output rows [b, e): `dst + i·stride` = table row `ip[i·nt]`, rows of
// `bytes` (= B when B != 0). By value, as `gather_rows`.
template <int64_t B, typename index_t>
void gather_column(char* __restrict dst, int64_t stride, const char* __restrict src, const index_t* __restrict ip,
                   int64_t nt, int64_t b, int64_t e, int64_t end, int64_t bytes, bool far) {
  const int64_t rb = B != 0 ? B : bytes;
  constexpr int64_t AHEAD = 8;
  for (int64_t i = b; i < e; ++i) {
    // rows ahead up to `end` (the task's last row, past this tile's end `e`)
    if (far && i + AHEAD < end) {
      const char* next = src + static_cast<int64_t>(ip[(i + AHEAD) * nt]) * rb;
      for (int64_t off = 0; off < rb; off += 64) __builtin_prefetch(next + off);
    }
    std::memcpy(dst + i * stride, src + static_cast<int64_t>(ip[i * nt]) * rb, static_cast<size_t>(rb));
  }
}

// Every index of the contiguous (batch, tables) `idx` in range for its table: one plain
// branch-free pass (no tensor ops per call); the slow search for the first bad index (for the
// message) only when there is one.
void check_multi_indices(const at::Tensor& idx, const std::vector<Table>& tabs) {
  const int64_t batch = idx.size(0), nt = idx.size(1);
  AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "vecfusion_multi_check", [&] {
    const index_t* ip = idx.const_data_ptr<index_t>();
    std::vector<uint64_t> rows(static_cast<size_t>(nt));
    for (int64_t t = 0; t < nt; ++t) rows[static_cast<size_t>(t)] = static_cast<uint64_t>(tabs[static_cast<size_t>(t)].rows);
    bool bad = false;
    for (int64_t i = 0; i < batch; ++i) {
      for (int64_t t = 0; t < nt; ++t) {
        // a negative index wraps to a huge unsigned value
        bad |= static_cast<uint64_t>(static_cast<int64_t>(ip[i * nt + t])) >= rows[static_cast<size_t>(t)];
      }
    }
    if (!bad) return;
    for (int64_t i = 0; i < batch; ++i) {
      for (int64_t t = 0; t < nt; ++t) {
        const int64_t k = static_cast<int64_t>(ip[i * nt + t]);
        TORCH_CHECK_INDEX(k >= 0 && k < tabs[static_cast<size_t>(t)].rows, "vecfusion multi-embedding: index ", k,
                          " at [", i, ", ", t, "] out of range for table ", t, " with ",
                          tabs[static_cast<size_t>(t)].rows, " rows");
      }
    }
  });
}

at::Tensor multi_embedding_cpu(const at::Tensor& weight, const at::Tensor& indices, const at::Tensor& meta,
                               int64_t total_dim) {
  TORCH_CHECK_VALUE(weight.dim() == 1, "vecfusion multi-embedding: weight must be 1-D (flat)");
  check_indices_tensor(indices);
  TORCH_CHECK_VALUE(indices.dim() == 2, "vecfusion multi-embedding: indices must be 2-D (batch, tables), got ",
                    indices.dim(), "-D");
  const auto tabs = tables_of(meta, weight.numel(), total_dim);
  TORCH_CHECK_VALUE(indices.size(1) == static_cast<int64_t>(tabs.size()), "vecfusion multi-embedding: indices have ",
                    indices.size(1), " columns for ", tabs.size(), " tables");
  auto w = weight.contiguous();
  auto idx = indices.contiguous();
  const int64_t batch = idx.size(0), nt = idx.size(1);
  check_multi_indices(idx, tabs);
  auto out = at::empty({batch, total_dim}, weight.options());
  if (batch == 0 || total_dim == 0) return out;
  const int64_t es = static_cast<int64_t>(w.element_size());
  const char* src = static_cast<const char*>(w.const_data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "vecfusion_multi_fwd", [&] {
    const index_t* ip = idx.const_data_ptr<index_t>();
    // output rows in tiles of about 16 KiB, so that a tile stays in the core's cache while every
    // table writes its columns of it
    const int64_t tile = std::max<int64_t>(8, (int64_t{1} << 14) / std::max<int64_t>(total_dim * es, 1));
    at::parallel_for(0, batch, grain_for(total_dim * es), [&](int64_t b, int64_t e) {
      for (int64_t tb0 = b; tb0 < e; tb0 += tile) {
        const int64_t tb1 = std::min(e, tb0 + tile);
        // table by table: each inner loop copies rows of one constant width from one table
        for (int64_t t = 0; t < nt; ++t) {
          const Table& tb = tabs[static_cast<size_t>(t)];
          const int64_t bytes = tb.dim * es;
          const bool far = tb.rows * bytes > kPrefetchBytes;
          with_small_width(bytes, [&](auto width) {
            gather_column<decltype(width)::value>(dst + tb.coff * es, total_dim * es, src + tb.woff * es, ip + t, nt,
                                                  tb0, tb1, e, bytes, far);
          });
        }
      }
    });
  });
  return out;
}

// Calls `f(std::integral_constant<int64_t, D>{})` with D = `dim` for the widths of small tables
// (1 to 32), D = 0 otherwise.
template <typename F>
inline void with_small_dim(int64_t dim, F&& f) {
  switch (dim) {
    VF_CONST_CASE(1) VF_CONST_CASE(2) VF_CONST_CASE(3) VF_CONST_CASE(4) VF_CONST_CASE(5) VF_CONST_CASE(6) VF_CONST_CASE(7) VF_CONST_CASE(8) VF_CONST_CASE(9) VF_CONST_CASE(10) VF_CONST_CASE(11) VF_CONST_CASE(12)
    VF_CONST_CASE(13) VF_CONST_CASE(14) VF_CONST_CASE(15) VF_CONST_CASE(16) VF_CONST_CASE(17) VF_CONST_CASE(18) VF_CONST_CASE(19) VF_CONST_CASE(20) VF_CONST_CASE(21) VF_CONST_CASE(22) VF_CONST_CASE(23)
    VF_CONST_CASE(24) VF_CONST_CASE(25) VF_CONST_CASE(26) VF_CONST_CASE(27) VF_CONST_CASE(28) VF_CONST_CASE(29) VF_CONST_CASE(30) VF_CONST_CASE(31) VF_CONST_CASE(32)
    default:
      return f(std::integral_constant<int64_t, 0>{});
  }
}
#undef VF_CONST_CASE

// One piece of a table's part of the multi-table backward: weight row `ip[i·nt]` of the table
// at `w` += gradient slice `g + i·s0` (element stride `s1`) for every batch row i whose row lies
// in [lo, hi), in order. Rows of `dim` (= D when D != 0) values; by value, as `scatter_add_rows`.
template <int64_t D, typename acc_t, typename scalar_t, typename index_t>
void scatter_column(acc_t* __restrict w, const scalar_t* __restrict g, int64_t s0, int64_t s1,
                    const index_t* __restrict ip, int64_t nt, int64_t batch, int64_t dim, int64_t lo, int64_t hi,
                    bool far) {
  const int64_t d = D != 0 ? D : dim;
  constexpr int64_t AHEAD = 8;
  auto each = [&](int64_t s1c) {
    for (int64_t i = 0; i < batch; ++i) {
      if (far && i + AHEAD < batch) {
        // only this piece's rows: the others' are being written by other threads
        const int64_t ka = static_cast<int64_t>(ip[(i + AHEAD) * nt]);
        if (ka >= lo && ka < hi) prefetch_row(w + ka * d, d * static_cast<int64_t>(sizeof(acc_t)));
      }
      const int64_t k = static_cast<int64_t>(ip[i * nt]);
      if (k < lo || k >= hi) continue;
      add_into<D>(w + k * d, g + i * s0, s1c, d);
    }
  };
  if (s1 == 1) {
    each(1);  // the contiguous case with the stride as a constant
  } else {
    each(s1);
  }
}

// A piece of the multi-table backward's work: rows [lo, hi) of table t.
struct Piece {
  int64_t t, lo, hi, cost;
};

// The work of a multi-table backward in pieces, the costliest first, so that threads taking
// them in turn end together. A table costing more than a thread's share of the whole is split by
// rows into pieces of about that share (at most `threads`: each piece reads the table's whole
// index column and passes over the indices of the other pieces).
std::vector<Piece> backward_pieces(const std::vector<Table>& tabs, int64_t batch, int64_t elem, int64_t threads) {
  // zeroing the rows (a fast fill), reading the index column, adding the gradient rows
  auto cost_of = [&](const Table& tb) { return tb.rows * tb.dim * elem / 16 + batch + batch * tb.dim; };
  int64_t total = 0;
  for (const Table& tb : tabs) total += cost_of(tb);
  const int64_t share = std::max<int64_t>(1, total / std::max<int64_t>(threads, 1));
  std::vector<Piece> pieces;
  for (int64_t t = 0; t < static_cast<int64_t>(tabs.size()); ++t) {
    const Table& tb = tabs[static_cast<size_t>(t)];
    if (tb.rows == 0 || tb.dim == 0) continue;  // no rows to zero, nothing to add
    const int64_t cost = cost_of(tb);
    const int64_t n = std::max<int64_t>(1, std::min<int64_t>({threads, tb.rows, (cost + share - 1) / share}));
    for (int64_t p = 0; p < n; ++p) pieces.push_back({t, tb.rows * p / n, tb.rows * (p + 1) / n, cost / n});
  }
  std::stable_sort(pieces.begin(), pieces.end(), [](const Piece& a, const Piece& b) { return a.cost > b.cost; });
  return pieces;
}

// The weight elements [from, to) of the tables that have any, sorted by their start.
std::vector<std::pair<int64_t, int64_t>> weight_spans(const std::vector<Table>& tabs) {
  std::vector<std::pair<int64_t, int64_t>> spans;
  for (const Table& tb : tabs) {
    if (tb.rows > 0 && tb.dim > 0) spans.emplace_back(tb.woff, tb.woff + tb.rows * tb.dim);
  }
  std::sort(spans.begin(), spans.end());
  return spans;
}

// True when no two of the sorted `spans` share an element (the layout FastMultiEmbedding
// builds): the backward's pieces may then each zero and fill their own rows at the same time.
bool spans_disjoint(const std::vector<std::pair<int64_t, int64_t>>& spans) {
  for (size_t i = 1; i < spans.size(); ++i) {
    if (spans[i].first < spans[i - 1].second) return false;
  }
  return true;
}

at::Tensor multi_embedding_backward_cpu(const at::Tensor& grad_, const at::Tensor& indices, const at::Tensor& meta,
                                        int64_t numel) {
  TORCH_CHECK_VALUE(grad_.dim() == 2, "vecfusion multi-embedding backward: the gradient must be 2-D");
  const auto tabs = tables_of(meta, numel, grad_.size(1));
  check_indices_tensor(indices);
  TORCH_CHECK_VALUE(indices.dim() == 2 && indices.size(1) == static_cast<int64_t>(tabs.size()),
                    "vecfusion multi-embedding backward: indices must be (batch, ", tabs.size(), " tables)");
  auto idx = indices.contiguous();
  check_multi_indices(idx, tabs);
  const int64_t batch = idx.size(0), nt = idx.size(1), total_dim = grad_.size(1);
  const auto grad = rows_of(grad_, batch, total_dim);
  const int64_t s0 = grad.s0, s1 = grad.s1;
  const auto acc_t = acc_type_of(grad.t.scalar_type());
  // Tables that share weight elements (only a direct call can give such a layout) are summed
  // one after another into a zeroed gradient; otherwise every piece zeroes its own rows just
  // before adding into them (one pass over the gradient instead of two, the rows still in cache)
  // and only elements outside every table are zeroed here.
  const auto spans = weight_spans(tabs);
  const bool disjoint = spans_disjoint(spans);
  auto gw = disjoint ? at::empty({numel}, grad.t.options().dtype(acc_t))
                     : at::zeros({numel}, grad.t.options().dtype(acc_t));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.t.scalar_type(), "vecfusion_multi_bwd", [&] {
    using acc_t = acc_of<scalar_t>;
    const scalar_t* gp = grad.t.const_data_ptr<scalar_t>();
    acc_t* wp = gw.data_ptr<acc_t>();
    if (disjoint) {  // elements outside every table (a layout with gaps) are zero
      int64_t at = 0;
      for (const auto& [from, to] : spans) {
        if (from > at) std::fill(wp + at, wp + from, acc_t(0));
        at = std::max(at, to);
      }
      if (numel > at) std::fill(wp + at, wp + numel, acc_t(0));
    }
    if (batch == 0 && !disjoint) return;
    AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "vecfusion_multi_bwd_idx", [&] {
      const index_t* ip = idx.const_data_ptr<index_t>();
      auto run = [&](const Table& tb, int64_t t, int64_t lo, int64_t hi) {
        acc_t* w = wp + tb.woff;
        if (disjoint) std::fill(w + lo * tb.dim, w + hi * tb.dim, acc_t(0));
        if (batch == 0) return;
        const bool far = (hi - lo) * tb.dim * static_cast<int64_t>(sizeof(acc_t)) > kPrefetchBytes;
        with_small_dim(tb.dim, [&](auto width) {
          scatter_column<decltype(width)::value>(w, gp + tb.coff * s1, s0, s1, ip + t, nt, batch, tb.dim, lo, hi,
                                                 far);
        });
      };
      if (!disjoint) {  // one table after another: tables that overlap must not add at once
        for (int64_t t = 0; t < nt; ++t) run(tabs[static_cast<size_t>(t)], t, 0, tabs[static_cast<size_t>(t)].rows);
        return;
      }
      // Each piece owns its rows (a region of the weight) and adds the gradient rows in index
      // order, so the result does not depend on which thread takes which piece.
      const int64_t threads = at::get_num_threads();
      const auto pieces = backward_pieces(tabs, batch, static_cast<int64_t>(sizeof(acc_t)), threads);
      std::atomic<size_t> next{0};
      at::parallel_for(0, std::min<int64_t>(threads, static_cast<int64_t>(pieces.size())), 1,
                       [&](int64_t, int64_t) {
                         for (size_t p = next++; p < pieces.size(); p = next++) {
                           const Piece& pc = pieces[p];
                           run(tabs[static_cast<size_t>(pc.t)], pc.t, pc.lo, pc.hi);
                         }
                       });
    });
  });
  return acc_t == grad.t.scalar_type() ? gw : gw.to(grad.t.scalar_type());
}

// ---------------------------------------------------------------- autograd (C++, no Python per call)

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

c10::OperatorHandle op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

// The ops that the autograd functions below call (resolved once).
const c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymInt, int64_t, bool)>& dense_backward_op() {
  static auto op = op_handle("vecfusion_ops::embedding_dense_backward").typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymInt, int64_t, bool)>();
  return op;
}

const c10::TypedOperatorHandle<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, c10::SymInt,
                                                                  int64_t, bool)>&
sparse_backward_op() {
  static auto op = op_handle("vecfusion_ops::embedding_sparse_backward")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, c10::SymInt,
                                                                 int64_t, bool)>();
  return op;
}

const c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::SymInt)>& multi_embedding_op() {
  static auto op = op_handle("vecfusion_ops::multi_embedding").typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::SymInt)>();
  return op;
}

const c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::SymInt)>& multi_backward_op() {
  static auto op = op_handle("vecfusion_ops::multi_embedding_backward").typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::SymInt)>();
  return op;
}

class EmbeddingFn : public torch::autograd::Function<EmbeddingFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& weight, const at::Tensor& indices,
                            int64_t padding_idx, bool scale_grad_by_freq, bool sparse) {
    static auto op = op_handle("vecfusion_ops::embedding")
                         .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, bool, bool)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto out = op.call(weight, indices, padding_idx, scale_grad_by_freq, sparse);
    ctx->save_for_backward({indices});
    ctx->saved_data["num_weights"] = weight.sym_size(0);
    ctx->saved_data["padding_idx"] = padding_idx;
    ctx->saved_data["scale"] = scale_grad_by_freq;
    ctx->saved_data["sparse"] = sparse;
    return out;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto indices = ctx->get_saved_variables()[0];
    const auto& grad = grads[0];
    const c10::SymInt num_weights = ctx->saved_data["num_weights"].toSymInt();
    const int64_t padding_idx = ctx->saved_data["padding_idx"].toInt();
    const bool scale = ctx->saved_data["scale"].toBool();
    at::Tensor gw;
    if (ctx->saved_data["sparse"].toBool() && padding_idx < 0 && !scale) {
      // one entry per index, values = the output gradient's rows as they lie (as
      // nn.Embedding: an expanded gradient, e.g. of out.sum(), stays a view, not a copy)
      // (symbolic sizes throughout: under torch.compile the batch may be a SymInt)
      const c10::SymInt n = indices.sym_numel();
      const c10::SymInt d = grad.sym_size(-1);
      gw = at::_sparse_coo_tensor_unsafe_symint(indices.reshape_symint({1, n}).to(at::kLong),
                                                grad.reshape_symint({n, d}), {num_weights, d});
    } else if (ctx->saved_data["sparse"].toBool()) {
      // (through the dispatcher: its autograd kernel makes the gradient differentiable)
      auto [rows, values] = sparse_backward_op().call(grad, indices, num_weights, padding_idx, scale);
      gw = at::_sparse_coo_tensor_unsafe_symint(rows.unsqueeze(0), values, {num_weights, grad.sym_size(-1)});
    } else {
      const auto& op = dense_backward_op();
      gw = op.call(grad, indices, num_weights, padding_idx, scale);
    }
    return {gw, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// The dense backward is linear in `grad`; this makes it differentiable (double backward,
// gradgradcheck): its adjoint gathers the rows of the incoming gradient, leaving out
// padding_idx and scaling by 1/count as the backward does.
class DenseBackwardFn : public torch::autograd::Function<DenseBackwardFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& indices,
                            c10::SymInt num_weights, int64_t padding_idx, bool scale_grad_by_freq) {
    const auto& op = dense_backward_op();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto out = op.call(grad, indices, num_weights, padding_idx, scale_grad_by_freq);
    ctx->save_for_backward({indices});
    ctx->saved_data["grad_sizes"] = grad.sym_sizes().vec();
    ctx->saved_data["num_weights"] = num_weights;
    ctx->saved_data["padding_idx"] = padding_idx;
    ctx->saved_data["scale"] = scale_grad_by_freq;
    return out;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto flat = ctx->get_saved_variables()[0].reshape({-1}).to(at::kLong);
    const int64_t padding_idx = ctx->saved_data["padding_idx"].toInt();
    auto g = grads[0].index_select(0, flat);
    if (padding_idx >= 0) g = g.masked_fill((flat == padding_idx).unsqueeze(1), 0);
    if (ctx->saved_data["scale"].toBool()) {
      const int64_t nw = ctx->saved_data["num_weights"].toSymInt().guard_int(__FILE__, __LINE__);
      auto counts = at::bincount(flat, {}, nw).index_select(0, flat).to(g.scalar_type());
      g = g / counts.unsqueeze(1);
    }
    return {g.view_symint(ctx->saved_data["grad_sizes"].toSymIntVector()), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

class MultiEmbeddingFn : public torch::autograd::Function<MultiEmbeddingFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& weight, const at::Tensor& indices,
                            const at::Tensor& meta, c10::SymInt total_dim) {
    const auto& op = multi_embedding_op();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto out = op.call(weight, indices, meta, total_dim);
    ctx->save_for_backward({indices, meta});
    ctx->saved_data["numel"] = weight.sym_numel();
    return out;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto& op = multi_backward_op();
    const auto saved = ctx->get_saved_variables();
    auto gw = op.call(grads[0], saved[0], saved[1], ctx->saved_data["numel"].toSymInt());
    return {gw, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// The multi-table backward is linear in `grad`; its adjoint is the forward gather.
class MultiBackwardFn : public torch::autograd::Function<MultiBackwardFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& indices,
                            const at::Tensor& meta, c10::SymInt numel) {
    const auto& op = multi_backward_op();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto out = op.call(grad, indices, meta, numel);
    ctx->save_for_backward({indices, meta});
    ctx->saved_data["total_dim"] = grad.sym_size(1);
    return out;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto& op = multi_embedding_op();
    const auto saved = ctx->get_saved_variables();
    auto g = op.call(grads[0], saved[0], saved[1], ctx->saved_data["total_dim"].toSymInt());
    return {g, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor embedding_autograd(const at::Tensor& weight, const at::Tensor& indices, int64_t padding_idx,
                              bool scale_grad_by_freq, bool sparse) {
  return EmbeddingFn::apply(weight, indices, padding_idx, scale_grad_by_freq, sparse);
}

at::Tensor multi_embedding_autograd(const at::Tensor& weight, const at::Tensor& indices, const at::Tensor& meta,
                                    c10::SymInt total_dim) {
  return MultiEmbeddingFn::apply(weight, indices, meta, std::move(total_dim));
}

// A plain backward (no create_graph) goes straight to the kernel: no autograd node.
at::Tensor dense_backward_autograd(const at::Tensor& grad, const at::Tensor& indices, c10::SymInt num_weights,
                                   int64_t padding_idx, bool scale_grad_by_freq) {
  if (!at::GradMode::is_enabled() || !grad.requires_grad()) {
    const auto& op = dense_backward_op();
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(grad, indices, std::move(num_weights), padding_idx, scale_grad_by_freq);
  }
  return DenseBackwardFn::apply(grad, indices, std::move(num_weights), padding_idx, scale_grad_by_freq);
}

// The sparse backward is linear in `grad` too: its values are the rows of `grad` at the
// kept indices (padding_idx left out), times 1/count with scale_grad_by_freq. Its adjoint
// puts the incoming values' gradient back at those rows (zero at padding_idx), scaled the
// same way, so a double backward through a sparse gradient is exact instead of a zero
// (the autograd fallback's silent answer for an op without an autograd kernel).
class SparseBackwardFn : public torch::autograd::Function<SparseBackwardFn> {
 public:
  static tensor_list forward(AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& indices,
                             c10::SymInt num_weights, int64_t padding_idx, bool scale_grad_by_freq) {
    const auto& op = sparse_backward_op();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [rows, values] = op.call(grad, indices, num_weights, padding_idx, scale_grad_by_freq);
    ctx->mark_non_differentiable({rows});
    ctx->save_for_backward({indices});
    ctx->saved_data["grad_sizes"] = grad.sym_sizes().vec();
    ctx->saved_data["num_weights"] = num_weights;
    ctx->saved_data["padding_idx"] = padding_idx;
    ctx->saved_data["scale"] = scale_grad_by_freq;
    return {rows, values};
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto none = at::Tensor();
    const auto& gv = grads[1];
    if (!gv.defined()) return {none, none, none, none, none};
    const auto flat = ctx->get_saved_variables()[0].reshape({-1}).to(at::kLong);
    const int64_t padding_idx = ctx->saved_data["padding_idx"].toInt();
    // (no data-dependent shapes: torch.compile traces this; the values' row count is the
    // number of kept indices, which only the data knows)
    at::Tensor g = gv;
    at::Tensor keep;
    if (padding_idx >= 0) {
      // index i's row is the values' row (kept indices before it); a padding index takes a
      // zero row appended after the values
      keep = flat != padding_idx;
      const auto before = keep.cumsum(0) - 1;
      const auto rows = at::where(keep, before, keep.sum());
      const auto zero = at::zeros_symint({1, gv.sym_size(-1)}, gv.options());
      g = at::cat({gv, zero}, 0).index_select(0, rows);
    }
    if (ctx->saved_data["scale"].toBool()) {
      const int64_t nw = ctx->saved_data["num_weights"].toSymInt().guard_int(__FILE__, __LINE__);
      // times 1/count, the count of kept indices of the row (rounded from double, as the
      // forward takes it)
      const auto ones = keep.defined() ? keep.to(at::kDouble) : at::ones_like(flat, flat.options().dtype(at::kDouble));
      auto counts = at::zeros({nw}, ones.options()).index_add(0, flat, ones).index_select(0, flat).clamp_min(1);
      g = g * counts.reciprocal().to(g.scalar_type()).unsqueeze(1);
    }
    return {g.view_symint(ctx->saved_data["grad_sizes"].toSymIntVector()), none, none, none, none};
  }
};

std::tuple<at::Tensor, at::Tensor> sparse_backward_autograd(const at::Tensor& grad, const at::Tensor& indices,
                                                            c10::SymInt num_weights, int64_t padding_idx,
                                                            bool scale_grad_by_freq) {
  if (!at::GradMode::is_enabled() || !grad.requires_grad()) {
    const auto& op = sparse_backward_op();
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(grad, indices, std::move(num_weights), padding_idx, scale_grad_by_freq);
  }
  auto out = SparseBackwardFn::apply(grad, indices, std::move(num_weights), padding_idx, scale_grad_by_freq);
  return {out[0], out[1]};
}

at::Tensor multi_backward_autograd(const at::Tensor& grad, const at::Tensor& indices, const at::Tensor& meta,
                                   c10::SymInt numel) {
  if (!at::GradMode::is_enabled() || !grad.requires_grad()) {
    const auto& op = multi_backward_op();
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(grad, indices, meta, std::move(numel));
  }
  return MultiBackwardFn::apply(grad, indices, meta, std::move(numel));
}

// embedding_renorm_ writes the weight in place: like ATen's in-place ops (and
// torch.embedding_renorm_, which nn.Embedding's max_norm calls), bump its version counter, so
// that autograd refuses a backward through a graph that saved the weight before the renorm
// instead of computing it with the new values. Views (FastMultiEmbedding's tables) share
// their base's counter.
void embedding_renorm_inplace_or_view(c10::DispatchKeySet ks, at::Tensor& weight, const at::Tensor& indices,
                                      double max_norm, double norm_type) {
  static auto op = op_handle("vecfusion_ops::embedding_renorm_")
                       .typed<void(at::Tensor&, const at::Tensor&, double, double)>();
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.redispatch(ks & c10::after_ADInplaceOrView_keyset, weight, indices, max_norm, norm_type);
  }
  // An inference tensor (made under torch.inference_mode) has no version counter: bumping it
  // raises outside inference mode, where nn.Embedding renormalizes it without complaint.
  if (!weight.is_inference()) torch::autograd::impl::bump_version(weight);
}

bool compiled_with_cuda() {
#ifdef VECFUSION_WITH_CUDA
  return true;
#else
  return false;
#endif
}


// How many threads the CPU kernels' `at::parallel_for` runs on now: the size of the OpenMP team
// that runs a parallel loop long enough to give every thread of torch's a part (the team of the
// OpenMP runtime this extension is linked with, which is not torch's if the two differ). 1 for
// an extension compiled without OpenMP, whose parallel loops all run on the calling thread.
int64_t parallel_threads() {
  std::atomic<int64_t> team{1};
  const int64_t n = std::max<int64_t>(2, 4 * at::get_num_threads());
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) {
#ifdef _OPENMP
    const int64_t here = omp_in_parallel() ? omp_get_num_threads() : 1;
    int64_t seen = team.load();
    while (here > seen && !team.compare_exchange_weak(seen, here)) {
    }
#endif
  });
  return team.load();
}

}  // namespace

TORCH_LIBRARY(vecfusion_ops, m) {
  m.def("embedding(Tensor weight, Tensor indices, int padding_idx, bool scale_grad_by_freq, bool sparse) -> Tensor");
  m.def(
      "embedding_dense_backward(Tensor grad, Tensor indices, SymInt num_weights, int padding_idx, "
      "bool scale_grad_by_freq) -> Tensor");
  m.def(
      "embedding_sparse_backward(Tensor grad, Tensor indices, SymInt num_weights, int padding_idx, "
      "bool scale_grad_by_freq) -> (Tensor, Tensor)");
  m.def("embedding_renorm_(Tensor(a!) weight, Tensor indices, float max_norm, float norm_type) -> ()");
  m.def("multi_embedding(Tensor weight, Tensor indices, Tensor meta, SymInt total_dim) -> Tensor");
  m.def("multi_embedding_backward(Tensor grad, Tensor indices, Tensor meta, SymInt numel) -> Tensor");
  m.def("compiled_with_cuda() -> bool");
  m.impl("compiled_with_cuda", &compiled_with_cuda);
  m.def("parallel_threads() -> int");
  m.impl("parallel_threads", &parallel_threads);
}

TORCH_LIBRARY_IMPL(vecfusion_ops, Autograd, m) {
  m.impl("embedding", &embedding_autograd);
  m.impl("multi_embedding", &multi_embedding_autograd);
  m.impl("embedding_dense_backward", &dense_backward_autograd);
  m.impl("embedding_sparse_backward", &sparse_backward_autograd);
  m.impl("multi_embedding_backward", &multi_backward_autograd);
}

TORCH_LIBRARY_IMPL(vecfusion_ops, ADInplaceOrView, m) {
  m.impl("embedding_renorm_", TORCH_FN(embedding_renorm_inplace_or_view));
}

TORCH_LIBRARY_IMPL(vecfusion_ops, CPU, m) {
  m.impl("embedding", &embedding_cpu);
  m.impl("embedding_dense_backward", &embedding_dense_backward_cpu);
  m.impl("embedding_sparse_backward", &embedding_sparse_backward_cpu);
  m.impl("embedding_renorm_", &embedding_renorm_cpu);
  m.impl("multi_embedding", &multi_embedding_cpu);
  m.impl("multi_embedding_backward", &multi_embedding_backward_cpu);
}

}  // namespace vecfusion_ops
