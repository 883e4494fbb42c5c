"""Torch layers of vecfusion (needs torch and the compiled ``vecfusion_ops`` extension).

>>> from vecfusion.torch import FastEmbedding, FastMultiEmbedding, SubwordEmbeddingBag
"""

from __future__ import annotations

from ._ops import compiled_with_cuda, has_cuda_kernels, parallel_threads
from .layers import FastEmbedding, FastMultiEmbedding, SubwordEmbeddingBag

__all__ = [
    "FastEmbedding",
    "FastMultiEmbedding",
    "SubwordEmbeddingBag",
    "compiled_with_cuda",
    "has_cuda_kernels",
    "parallel_threads",
]
