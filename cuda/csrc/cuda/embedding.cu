// CUDA kernels of the vecfusion torch ops.
//
// Forward: a vectorized row gather (16-, 8-, 4- or 2-byte words, whatever the row size
// and alignment allow), dtype-agnostic. Backward: gradients are added with atomics into an
// fp32 (fp64 for double) buffer, so fp16/bf16 weights accumulate in fp32; a warp first
// merges the lanes whose samples hit the same row (__match_any_sync), so a hot row gets
// one atomic per warp instead of 32. With torch.use_deterministic_algorithms(True) the
// backward takes ATen's sort-based deterministic path instead.

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../ops.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 700
#error "vecfusion's CUDA kernels need compute capability 7.0 or newer (__match_any_sync): set TORCH_CUDA_ARCH_LIST"
#endif

namespace vecfusion_ops {
namespace {

constexpr int kWarp = 32;

template <typename word_t, typename index_t>
__global__ void gather_kernel(const word_t* __restrict__ w, const index_t* __restrict__ idx, word_t* __restrict__ out,
                              int64_t n, int64_t words_per_row) {
  const int64_t total = n * words_per_row;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = t / words_per_row, c = t - i * words_per_row;
    out[t] = w[static_cast<int64_t>(idx[i]) * words_per_row + c];
  }
}

int blocks_for(int64_t work, int threads) {
  const int64_t b = (work + threads - 1) / threads;
  const int64_t cap = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
  return static_cast<int>(std::max<int64_t>(1, std::min(b, cap)));
}

template <typename index_t>
void launch_gather(const at::Tensor& w, const at::Tensor& idx, at::Tensor& out, int64_t n, int64_t row_bytes) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto* src = static_cast<const char*>(w.const_data_ptr());
  auto* dst = static_cast<char*>(out.data_ptr());
  const auto addr = reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst);
  const index_t* ip = idx.const_data_ptr<index_t>();
  auto go = [&](auto word) {
    using word_t = decltype(word);
    const int64_t wpr = row_bytes / static_cast<int64_t>(sizeof(word_t));
    const int threads = 256;
    gather_kernel<word_t, index_t><<<blocks_for(n * wpr, threads), threads, 0, stream>>>(
        reinterpret_cast<const word_t*>(src), ip, reinterpret_cast<word_t*>(dst), n, wpr);
  };
  if (row_bytes % 16 == 0 && addr % 16 == 0) {
    go(uint4{});
  } else if (row_bytes % 8 == 0 && addr % 8 == 0) {
    go(uint2{});
  } else if (row_bytes % 4 == 0 && addr % 4 == 0) {
    go(uint32_t{});
  } else if (row_bytes % 2 == 0 && addr % 2 == 0) {
    go(uint16_t{});
  } else {
    go(uint8_t{});  // 1-byte types (float8) in rows of odd length or at odd addresses
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor embedding_cuda(const at::Tensor& weight, const at::Tensor& indices, int64_t, bool, bool) {
  TORCH_CHECK_VALUE(weight.dim() == 2, "vecfusion embedding: weight must be 2-D");
  TORCH_CHECK_VALUE(indices.device() == weight.device(), "vecfusion embedding: indices on ", indices.device(),
                    ", weight on ", weight.device());
  c10::cuda::CUDAGuard guard(weight.device());
  const int64_t num = weight.size(0), dim = weight.size(1);
  check_index_range(indices, num, "vecfusion embedding");
  auto w = weight.contiguous();
  auto idx = indices.contiguous();
  auto sizes = indices.sizes().vec();
  sizes.push_back(dim);
  auto out = at::empty(sizes, weight.options());
  const int64_t n = idx.numel();
  if (n == 0 || dim == 0) return out;
  AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "vecfusion_embedding_cuda", [&] {
    launch_gather<index_t>(w, idx, out, n, dim * static_cast<int64_t>(w.element_size()));
  });
  return out;
}

template <typename index_t>
__global__ void count_kernel(const index_t* __restrict__ idx, int64_t n, int64_t num, int* __restrict__ counts) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
  {
    // an index out of range (a direct call of the backward; the forward checks them) is dropped,
    // as the dense CPU backward drops it
    const int64_t k = static_cast<int64_t>(idx[i]);
    if (static_cast<uint64_t>(k) < static_cast<uint64_t>(num)) atomicAdd(counts + k, 1);
  }
}

// Each warp takes 32 consecutive samples. Lanes whose samples hit the same row are
// grouped with __match_any_sync; per group, the lanes (now indexing columns) sum the
// group's gradient rows and issue one atomicAdd per column.
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void backward_kernel(const scalar_t* __restrict__ grad, const index_t* __restrict__ idx,
                                const int* __restrict__ counts, acc_t* __restrict__ gw, int64_t n, int64_t dim,
                                int64_t num, int64_t padding_idx) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / kWarp;
  for (int64_t base = warp * kWarp; base < n; base += warps * kWarp) {
    const int64_t i = base + lane;
    const bool valid = i < n;
    const int64_t k = valid ? static_cast<int64_t>(idx[i]) : -1;
    // an index out of range (a direct call; the forward checks them) is dropped, as on the CPU
    const bool live = valid && k != padding_idx && static_cast<uint64_t>(k) < static_cast<uint64_t>(num);
    const unsigned groups = __match_any_sync(0xffffffffu, live ? k : int64_t{-2});
    // leaders: lowest live lane of each group
    const bool leader = live && (__ffs(groups) - 1) == lane;
    unsigned leaders = __ballot_sync(0xffffffffu, leader);
    while (leaders) {
      const int l = __ffs(leaders) - 1;
      leaders &= leaders - 1;
      const unsigned peers = __shfl_sync(0xffffffffu, groups, l);
      const int64_t row = __shfl_sync(0xffffffffu, k, l);
      // (1/count rounded from double, as the CPU kernels take it)
      const acc_t scale = counts ? static_cast<acc_t>(1.0 / static_cast<double>(counts[row])) : acc_t(1);
      for (int64_t j = lane; j < dim; j += kWarp) {
        acc_t s = 0;
        unsigned p = peers;
        while (p) {
          const int q = __ffs(p) - 1;
          p &= p - 1;
          s += static_cast<acc_t>(grad[(base + q) * dim + j]);
        }
        atomicAdd(gw + row * dim + j, s * scale);
      }
    }
  }
}

at::Tensor atomic_backward(const at::Tensor& grad, const at::Tensor& idx, int64_t num_weights, int64_t padding_idx,
                           bool scale_grad_by_freq) {
  const int64_t n = idx.numel(), dim = grad.size(-1);
  const auto acc = acc_type_of(grad.scalar_type());
  auto gw = at::zeros({num_weights, dim}, grad.options().dtype(acc));
  if (n == 0 || dim == 0) return gw;
  const auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor counts;
  AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "vecfusion_bwd_cuda_idx", [&] {
    const index_t* ip = idx.const_data_ptr<index_t>();
    if (scale_grad_by_freq) {
      counts = at::zeros({num_weights}, idx.options().dtype(at::kInt));
      count_kernel<index_t><<<blocks_for(n, 256), 256, 0, stream>>>(ip, n, num_weights, counts.data_ptr<int>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "vecfusion_bwd_cuda", [&] {
      using acc_t = acc_of<scalar_t>;
      const int threads = 256;
      backward_kernel<scalar_t, acc_t, index_t><<<blocks_for(n * kWarp / kWarp, threads), threads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), ip, scale_grad_by_freq ? counts.const_data_ptr<int>() : nullptr,
          gw.data_ptr<acc_t>(), n, dim, num_weights, padding_idx);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return gw;
}

at::Tensor embedding_dense_backward_cuda(const at::Tensor& grad_, const at::Tensor& indices, int64_t num_weights,
                                         int64_t padding_idx, bool scale_grad_by_freq) {
  c10::cuda::CUDAGuard guard(grad_.device());
  TORCH_CHECK_VALUE(indices.device() == grad_.device(), "vecfusion embedding backward: indices on ",
                    indices.device(), ", gradient on ", grad_.device());
  const int64_t dim = grad_.size(-1), n = indices.numel();
  auto grad = grad_.contiguous().view({n, dim});
  auto idx = indices.contiguous();
  if (at::globalContext().deterministicAlgorithms()) {
    return at::embedding_dense_backward(grad, idx, num_weights, padding_idx, scale_grad_by_freq);
  }
  auto gw = atomic_backward(grad, idx, num_weights, padding_idx, scale_grad_by_freq);
  return gw.scalar_type() == grad.scalar_type() ? gw : gw.to(grad.scalar_type());
}

// As on CPU (and as nn.Embedding): one entry per index, uncoalesced, padding left out.
std::tuple<at::Tensor, at::Tensor> embedding_sparse_backward_cuda(const at::Tensor& grad_, const at::Tensor& indices,
                                                                  int64_t num_weights, int64_t padding_idx,
                                                                  bool scale_grad_by_freq) {
  c10::cuda::CUDAGuard guard(grad_.device());
  TORCH_CHECK_VALUE(indices.device() == grad_.device(), "vecfusion embedding backward: indices on ",
                    indices.device(), ", gradient on ", grad_.device());
  // the rows become the sparse gradient's indices: one out of range would make an invalid tensor
  check_index_range(indices, num_weights, "vecfusion embedding backward");
  const int64_t dim = grad_.size(-1), n = indices.numel();
  auto grad = grad_.contiguous().view({n, dim});
  auto idx = indices.contiguous().view({n}).to(at::kLong);
  if (padding_idx >= 0) {
    auto keep = idx != padding_idx;
    idx = idx.masked_select(keep);
    grad = grad.index({keep});
  }
  // The schema returns new tensors: never views of the inputs.
  if (idx.is_alias_of(indices)) idx = idx.clone();
  if (!scale_grad_by_freq) return {idx, grad.is_alias_of(grad_) ? grad.clone() : grad};
  const auto acc = acc_type_of(grad.scalar_type());
  // times 1/count (rounded from double), as the CPU kernel scales: the same bits
  auto inv = at::bincount(idx, {}, num_weights).index_select(0, idx).to(at::kDouble).reciprocal().to(acc);
  return {idx, (grad.to(acc) * inv.unsqueeze(1)).to(grad.scalar_type())};
}

void embedding_renorm_cuda(at::Tensor& weight, const at::Tensor& indices, double max_norm, double norm_type) {
  c10::cuda::CUDAGuard guard(weight.device());
  check_index_range(indices, weight.size(0), "vecfusion embedding");
  at::NoGradGuard no_grad;
  at::embedding_renorm_(weight, indices.contiguous(), max_norm, norm_type);
}

// ---------------------------------------------------------------- multi-table

// meta (tables, 4) int64 on the device: rows, dim, weight offset, output column.
template <typename scalar_t, typename index_t>
__global__ void multi_gather_kernel(const scalar_t* __restrict__ w, const index_t* __restrict__ idx,
                                    const int64_t* __restrict__ meta, scalar_t* __restrict__ out, int64_t batch,
                                    int64_t nt, int64_t total_dim) {
  const int64_t total = batch * total_dim;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = e / total_dim, c = e - b * total_dim;
    int64_t t = 0;
    while (t + 1 < nt && meta[4 * (t + 1) + 3] <= c) ++t;
    const int64_t d = meta[4 * t + 1];
    out[e] = w[meta[4 * t + 2] + static_cast<int64_t>(idx[b * nt + t]) * d + (c - meta[4 * t + 3])];
  }
}

// The layout is not checked on the host here (that would wait for the device every step; the
// forward checked it, and the indices): an element whose index, column or target lies outside
// its table or the weight (only a direct call can give one) is dropped.
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void multi_backward_kernel(const scalar_t* __restrict__ grad, const index_t* __restrict__ idx,
                                      const int64_t* __restrict__ meta, acc_t* __restrict__ gw, int64_t batch,
                                      int64_t nt, int64_t total_dim, int64_t numel) {
  const int64_t total = batch * total_dim;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = e / total_dim, c = e - b * total_dim;
    int64_t t = 0;
    while (t + 1 < nt && meta[4 * (t + 1) + 3] <= c) ++t;
    const int64_t rows = meta[4 * t], d = meta[4 * t + 1], woff = meta[4 * t + 2], j = c - meta[4 * t + 3];
    const int64_t k = static_cast<int64_t>(idx[b * nt + t]);
    if (k < 0 || k >= rows || j < 0 || j >= d || woff < 0) continue;
    const int64_t at = woff + k * d + j;
    if (at >= numel) continue;
    atomicAdd(gw + at, static_cast<acc_t>(grad[e]));
  }
}

at::Tensor multi_embedding_cuda(const at::Tensor& weight, const at::Tensor& indices, const at::Tensor& meta,
                                int64_t total_dim) {
  TORCH_CHECK_VALUE(weight.dim() == 1, "vecfusion multi-embedding: weight must be 1-D (flat)");
  TORCH_CHECK_VALUE(indices.device() == weight.device(), "vecfusion multi-embedding: indices on ", indices.device(),
                    ", weight on ", weight.device());
  c10::cuda::CUDAGuard guard(weight.device());
  tables_of(meta, weight.numel(), total_dim);  // the layout fits the weight and the output
  check_multi_index_range(indices, meta);
  auto w = weight.contiguous();
  auto idx = indices.contiguous();
  auto m = meta.to(weight.device()).contiguous();
  const int64_t batch = idx.size(0), nt = idx.size(1);
  auto out = at::empty({batch, total_dim}, weight.options());
  if (batch == 0 || total_dim == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "vecfusion_multi_fwd_cuda_idx", [&] {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "vecfusion_multi_fwd_cuda", [&] {
      multi_gather_kernel<scalar_t, index_t><<<blocks_for(batch * total_dim, 256), 256, 0, stream>>>(
          w.const_data_ptr<scalar_t>(), idx.const_data_ptr<index_t>(), m.const_data_ptr<int64_t>(),
          out.data_ptr<scalar_t>(), batch, nt, total_dim);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor multi_embedding_backward_cuda(const at::Tensor& grad_, const at::Tensor& indices, const at::Tensor& meta,
                                         int64_t numel) {
  TORCH_CHECK_VALUE(grad_.dim() == 2, "vecfusion multi-embedding backward: the gradient must be 2-D");
  TORCH_CHECK_VALUE(indices.device() == grad_.device(), "vecfusion multi-embedding backward: indices on ",
                    indices.device(), ", gradient on ", grad_.device());
  c10::cuda::CUDAGuard guard(grad_.device());
  // shapes only: reading the layout or the indices on the host would wait for the device
  TORCH_CHECK_VALUE(meta.dim() == 2 && meta.size(1) == 4 && meta.scalar_type() == at::kLong,
                    "vecfusion multi-embedding: meta must be int64 (tables, 4)");
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong || indices.scalar_type() == at::kInt,
                   "vecfusion embedding: indices must be int32 or int64, got ", indices.scalar_type());
  TORCH_CHECK_VALUE(indices.dim() == 2 && indices.size(1) == meta.size(0),
                    "vecfusion multi-embedding backward: indices must be (batch, ", meta.size(0), " tables)");
  TORCH_CHECK_VALUE(numel >= 0, "vecfusion multi-embedding backward: numel must not be negative");
  auto grad = grad_.contiguous();
  auto idx = indices.contiguous();
  const int64_t batch = idx.size(0), nt = idx.size(1), total_dim = grad.size(1);
  const auto acc = acc_type_of(grad.scalar_type());
  if (at::globalContext().deterministicAlgorithms()) {
    const auto tabs = tables_of(meta, numel, total_dim);  // (this path waits for the device anyway)
    check_multi_index_range(indices, meta);
    // per table, ATen's deterministic (sort-based) backward into the table's region
    // (added, not copied: tables that share elements, possible in a direct call, sum)
    auto gw = at::zeros({numel}, grad.options());
    for (int64_t t = 0; t < nt; ++t) {
      const Table& tb = tabs[static_cast<size_t>(t)];
      if (tb.rows == 0 || tb.dim == 0) continue;
      auto g = at::embedding_dense_backward(grad.narrow(1, tb.coff, tb.dim).contiguous(),
                                            idx.select(1, t).contiguous(), tb.rows, -1, false);
      gw.narrow(0, tb.woff, tb.rows * tb.dim).add_(g.view({tb.rows * tb.dim}));
    }
    return gw;
  }
  auto gw = at::zeros({numel}, grad.options().dtype(acc));
  if (batch == 0 || total_dim == 0) return gw.to(grad.scalar_type());
  auto m = meta.to(grad.device()).contiguous();
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "vecfusion_multi_bwd_cuda_idx", [&] {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "vecfusion_multi_bwd_cuda", [&] {
      using acc_t = acc_of<scalar_t>;
      multi_backward_kernel<scalar_t, acc_t, index_t><<<blocks_for(batch * total_dim, 256), 256, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), idx.const_data_ptr<index_t>(), m.const_data_ptr<int64_t>(),
          gw.data_ptr<acc_t>(), batch, nt, total_dim, numel);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return gw.scalar_type() == grad.scalar_type() ? gw : gw.to(grad.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(vecfusion_ops, CUDA, m) {
  m.impl("embedding", &embedding_cuda);
  m.impl("embedding_dense_backward", &embedding_dense_backward_cuda);
  m.impl("embedding_sparse_backward", &embedding_sparse_backward_cuda);
  m.impl("embedding_renorm_", &embedding_renorm_cuda);
  m.impl("multi_embedding", &multi_embedding_cuda);
  m.impl("multi_embedding_backward", &multi_embedding_backward_cuda);
}

}  // namespace vecfusion_ops
