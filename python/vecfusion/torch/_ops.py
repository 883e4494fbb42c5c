"""Loads the compiled ops (``torch.ops.vecfusion_ops``) and registers their fake kernels (their
autograd is registered in C++, cuda/csrc/ops.cpp).

The ops come from the ``vecfusion_ops`` package that ``make torch-ext`` (cuda/build.sh) builds and
installs. Without it, in a source checkout, the cuda/ sources are JIT-compiled with
torch.utils.cpp_extension (CUDA sources too when a toolkit is found, see cuda/setup.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

_CUDA_DIR = Path(__file__).resolve().parents[3] / "cuda"


def _jit_build() -> None:
    from torch.utils import cpp_extension

    csrc = _CUDA_DIR / "csrc"
    sources = sorted(str(p) for p in csrc.glob("*.cpp"))
    if not sources:
        raise ImportError(
            "vecfusion.torch needs the compiled extension: run `make torch-ext` "
            "(or `pip install --no-build-isolation ./cuda`)"
        )
    with_cuda = os.environ.get("FORCE_CUDA") == "1" or cpp_extension.CUDA_HOME is not None
    # OpenMP: without it ATen's at::parallel_for runs serially (see cuda/setup.py)
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    flags = ["-O3", *openmp]
    if with_cuda:
        sources += sorted(str(p) for p in (csrc / "cuda").glob("*.cu"))
        flags.append("-DVECFUSION_WITH_CUDA=1")
    cpp_extension.load(
        name="vecfusion_ops_jit",
        sources=sources,
        extra_cflags=flags,
        extra_cuda_cflags=["-O3", "--expt-relaxed-constexpr", "-DVECFUSION_WITH_CUDA=1"],
        extra_ldflags=openmp,
        is_python_module=False,
    )


try:
    import vecfusion_ops  # noqa: F401  (registers torch.ops.vecfusion_ops)
except ImportError:  # pragma: no cover - exercised only without `make torch-ext`
    _jit_build()

ops = torch.ops.vecfusion_ops


def compiled_with_cuda() -> bool:
    """True if the loaded extension was compiled with its CUDA kernels."""
    return bool(ops.compiled_with_cuda())


def parallel_threads() -> int:
    """How many threads the extension's CPU kernels run on now (``torch.get_num_threads()``
    when it was built with OpenMP, as ``make torch-ext`` builds it; 1 otherwise)."""
    return int(ops.parallel_threads())


def has_cuda_kernels() -> bool:
    """True if the CUDA kernels are registered with the dispatcher."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("vecfusion_ops::embedding", "CUDA")


# ---------------------------------------------------------------- fake (meta) kernels


@torch.library.register_fake("vecfusion_ops::embedding")
def _embedding_fake(weight, indices, padding_idx, scale_grad_by_freq, sparse):
    return weight.new_empty((*indices.shape, weight.shape[1]))


@torch.library.register_fake("vecfusion_ops::embedding_dense_backward")
def _dense_backward_fake(grad, indices, num_weights, padding_idx, scale_grad_by_freq):
    return grad.new_empty((num_weights, grad.shape[-1]))


@torch.library.register_fake("vecfusion_ops::embedding_sparse_backward")
def _sparse_backward_fake(grad, indices, num_weights, padding_idx, scale_grad_by_freq):
    # one gradient row per index, less those of the padding row: a size known only from the
    # data when there is a padding row (torch.compile without capture_dynamic_output_shape_ops
    # then breaks the graph there), else the number of indices
    u = torch.library.get_ctx().new_dynamic_size() if padding_idx >= 0 else indices.numel()
    return indices.new_empty((u,), dtype=torch.int64), grad.new_empty((u, grad.shape[-1]))


@torch.library.register_fake("vecfusion_ops::embedding_renorm_")
def _renorm_fake(weight, indices, max_norm, norm_type):
    return None


@torch.library.register_fake("vecfusion_ops::multi_embedding")
def _multi_fake(weight, indices, meta, total_dim):
    return weight.new_empty((indices.shape[0], total_dim))


@torch.library.register_fake("vecfusion_ops::multi_embedding_backward")
def _multi_backward_fake(grad, indices, meta, numel):
    return grad.new_empty((numel,))


# Autograd is registered in C++ (cuda/csrc/ops.cpp, Autograd dispatch key), so a training step
# runs no Python besides the module's forward.
