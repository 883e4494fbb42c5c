"""FastEmbedding, FastMultiEmbedding and SubwordEmbeddingBag (nn.Modules over vecfusion_ops)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._ops import ops


def _matrix_of(emb: Any) -> np.ndarray:
    """The full storage matrix of a vf.Embeddings (words and n-gram rows), as a writable float32 copy."""
    storage = emb.storage
    if hasattr(storage, "reconstruct"):  # QuantizedStorage
        return np.ascontiguousarray(storage.reconstruct(), dtype=np.float32)
    return np.array(storage, dtype=np.float32, copy=True)


class FastEmbedding(nn.Embedding):
    """Drop-in replacement for :class:`torch.nn.Embedding` with the same options and state_dict.

    The forward is a parallel row gather; the backward adds gradients without sorting the
    indices (CPU: each thread owns a range of rows; CUDA: atomic adds with warp-level
    pre-reduction, or a deterministic path under ``torch.use_deterministic_algorithms``).
    ``max_norm`` renormalizes the looked-up rows in place, as nn.Embedding does; ``sparse=True``
    gives nn.Embedding's sparse gradient (also with ``scale_grad_by_freq``). Indices are int32 or int64; an out-of-range index raises
    IndexError.
    """

    def forward(self, input: Tensor) -> Tensor:
        if self.max_norm is not None:
            with torch.no_grad():
                ops.embedding_renorm_(self.weight, input, float(self.max_norm), float(self.norm_type))
        padding = -1 if self.padding_idx is None else int(self.padding_idx)
        return ops.embedding(self.weight, input, padding, bool(self.scale_grad_by_freq), bool(self.sparse))

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        embeddings: Any,
        freeze: bool = True,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
    ) -> FastEmbedding:
        """Create from a 2-D tensor, or from a ``vf.Embeddings`` (all storage rows, words first;
        quantized storage is reconstructed). ``freeze`` as in nn.Embedding.from_pretrained."""
        if not isinstance(embeddings, Tensor):
            if not hasattr(embeddings, "storage"):
                raise TypeError(
                    f"embeddings must be a Tensor or a vecfusion.Embeddings, got {type(embeddings).__name__}"
                )
            embeddings = torch.from_numpy(_matrix_of(embeddings))
        if embeddings.dim() != 2:
            raise ValueError(f"embeddings must be 2-D, got {embeddings.dim()}-D")
        return super().from_pretrained(
            embeddings,
            freeze=freeze,
            padding_idx=padding_idx,
            max_norm=max_norm,
            norm_type=norm_type,
            scale_grad_by_freq=scale_grad_by_freq,
            sparse=sparse,
        )  # type: ignore[return-value]


class FastMultiEmbedding(nn.Module):
    """Many small embedding tables in one flat weight, looked up in one kernel.

    ``FastMultiEmbedding([n1, n2, ...], [d1, d2, ...])`` maps input ``(batch, tables)`` to
    ``(batch, d1 + d2 + ...)``; it equals ``torch.cat([nn.Embedding(n_t, d_t)(x[:, t]) ...], 1)``.
    Table ``t`` is ``weight[offset_t : offset_t + n_t * d_t].view(n_t, d_t)`` (no padding to the
    largest table); :meth:`table` returns that view. Each table is initialized like
    nn.Embedding (N(0, 1)), in order, so the same seed gives the same tables.
    """

    def __init__(
        self,
        num_embeddings: Sequence[int],
        embedding_dims: Sequence[int],
        _weight: Tensor | None = None,
        _freeze: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        nums = [int(n) for n in num_embeddings]
        dims = [int(d) for d in embedding_dims]
        if len(nums) != len(dims):
            raise ValueError(f"{len(nums)} table sizes but {len(dims)} dims")
        if not nums:
            raise ValueError("need at least one table")
        if any(n <= 0 for n in nums) or any(d < 0 for d in dims):
            raise ValueError("table sizes must be positive and dims non-negative")
        self.num_embeddings = nums
        self.embedding_dims = dims
        sizes = [n * d for n, d in zip(nums, dims)]
        woff = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        coff = np.concatenate([[0], np.cumsum(dims)[:-1]]).astype(np.int64)
        meta = np.stack([np.array(nums), np.array(dims), woff, coff], axis=1).astype(np.int64)
        self.total_dim = int(sum(dims))
        self._offsets = [int(o) for o in woff]
        self.register_buffer("meta", torch.from_numpy(meta).to(device), persistent=False)
        numel = int(sum(sizes))
        if _weight is None:
            self.weight = nn.Parameter(
                torch.empty(numel, device=device, dtype=dtype), requires_grad=not _freeze
            )
            self.reset_parameters()
        else:
            if _weight.shape != (numel,):
                raise ValueError(f"_weight must have shape ({numel},), got {tuple(_weight.shape)}")
            self.weight = nn.Parameter(_weight, requires_grad=not _freeze)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for t in range(len(self.num_embeddings)):
                self.table(t).normal_()

    def table(self, t: int) -> Tensor:
        """The weight of table ``t`` as a (rows, dim) view of the flat weight."""
        n, d = self.num_embeddings[t], self.embedding_dims[t]
        return self.weight[self._offsets[t] : self._offsets[t] + n * d].view(n, d)

    @classmethod
    def from_pretrained(cls, tables: Sequence[Tensor], freeze: bool = True) -> FastMultiEmbedding:
        """Create from a list of 2-D tensors (one per table)."""
        if any(t.dim() != 2 for t in tables):
            raise ValueError("every table must be 2-D")
        flat = torch.cat([t.detach().reshape(-1) for t in tables])
        return cls(
            [t.shape[0] for t in tables], [t.shape[1] for t in tables], _weight=flat, _freeze=freeze
        )

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() != 2:
            raise ValueError(f"input must be 2-D (batch, tables), got {input.dim()}-D")
        return ops.multi_embedding(self.weight, input, self.meta, self.total_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dims}"


class SubwordEmbeddingBag(nn.Module):
    """Embeddings of words from a finalfusion vocabulary, trainable end to end.

    A known word is its own row; an unknown word is the sum of its n-gram rows, L2-normalized
    (as finalfusion computes it); a word with neither is zero. The row indices of a whole batch
    come from the Rust vocabulary in one call (``Vocab.indices_batch``) and the sums are an
    ``embedding_bag``, so gradients flow into the word and n-gram rows.

    ``forward(words)`` takes a list of str, giving ``(len(words), dims)``, or a list of token
    lists, giving ``(batch, longest, dims)`` with zero rows after each shorter list.
    """

    def __init__(self, weight: Tensor, vocab: Any, trainable: bool = True) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D, got {weight.dim()}-D")
        self.vocab = vocab
        self.weight = nn.Parameter(weight, requires_grad=trainable)

    @classmethod
    def from_embeddings(cls, emb: Any, trainable: bool = True) -> SubwordEmbeddingBag:
        """Create from a ``vf.Embeddings`` (quantized storage is reconstructed)."""
        return cls(torch.from_numpy(_matrix_of(emb)), emb.vocab, trainable=trainable)

    def indices(self, words: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
        """(rows, offsets, known) of ``words`` as tensors on the weight's device."""
        rows, offsets, known = self.vocab.indices_batch(words)
        dev = self.weight.device
        return (
            torch.from_numpy(rows).to(dev),
            torch.from_numpy(offsets).to(dev),
            torch.from_numpy(known).to(dev),
        )

    def _embed(self, words: Sequence[str]) -> Tensor:
        rows, offsets, known = self.indices(words)
        summed = F.embedding_bag(rows, self.weight, offsets, mode="sum", include_last_offset=True)
        norm = torch.linalg.vector_norm(summed, dim=1, keepdim=True)
        normalized = summed / norm.clamp_min(torch.finfo(summed.dtype).tiny)
        return torch.where(known.unsqueeze(1), summed, normalized)

    def forward(self, words: Sequence[str] | Sequence[Sequence[str]]) -> Tensor:
        if isinstance(words, str):
            raise TypeError("expected a list of words or of token lists, got a single str")
        words = list(words)
        if not words or isinstance(words[0], str):
            return self._embed(words)  # type: ignore[arg-type]
        lens = [len(t) for t in words]
        flat = [w for toks in words for w in toks]
        out = self._embed(flat)
        batch, longest = len(words), max(lens)
        lens_t = torch.tensor(lens, device=out.device)
        mask = torch.arange(longest, device=out.device).unsqueeze(0) < lens_t.unsqueeze(1)
        padded = out.new_zeros((batch, longest, out.shape[1]))
        return padded.masked_scatter(mask.unsqueeze(-1), out)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, {self.weight.shape[1]}, vocab={self.vocab.kind}"
