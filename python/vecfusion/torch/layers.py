"""FastEmbedding, FastMultiEmbedding and SubwordEmbeddingBag (nn.Modules over vecfusion_ops)."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .._native import _normalize_rows_as_lookup
from ._ops import ops


def _matrix_of(emb: Any) -> np.ndarray:
    """The full storage matrix of a vf.Embeddings (words and n-gram rows), as a writable float32 copy."""
    storage = emb.storage
    if hasattr(storage, "reconstruct"):  # QuantizedStorage
        return np.ascontiguousarray(storage.reconstruct(), dtype=np.float32)
    return np.array(storage, dtype=np.float32, copy=True)


_INDEX_DTYPES = (torch.int64, torch.int32)


class FastEmbedding(nn.Embedding):
    """Drop-in replacement for :class:`torch.nn.Embedding` with the same options and state_dict.

    The forward is a parallel row gather; the backward adds gradients without sorting the
    indices (CPU: each thread owns a range of rows; CUDA: atomic adds with warp-level
    pre-reduction, or a deterministic path under ``torch.use_deterministic_algorithms``).
    ``max_norm`` renormalizes the looked-up rows in place, as nn.Embedding does. ``sparse=True``
    on CPU is nn.Embedding's own function (a sparse gradient has nothing to reduce), except
    with ``scale_grad_by_freq``, which nn.Embedding refuses with it and this layer supports.
    Indices are int32 or int64; an out-of-range index raises IndexError.
    """

    def forward(self, input: Tensor) -> Tensor:
        weight = self.weight
        if not isinstance(input, Tensor):
            raise TypeError(f"embedding(): argument 'input' must be Tensor, not {type(input).__name__}")
        if (
            input.dtype not in _INDEX_DTYPES
            or not weight.is_floating_point()
            or (self.sparse and not self.scale_grad_by_freq and weight.device.type == "cpu")
        ):
            # what the kernels do not cover (other index dtypes, integer or complex weights)
            # is nn.Embedding's own function: its results and its errors. So is a sparse
            # gradient on CPU (without scale_grad_by_freq, which ATen refuses with it): it is
            # the output gradient's rows with their indices, no reduction for a kernel to
            # speed up, and ATen's generated autograd costs less per step than a custom op's
            # (~9 µs a forward and backward, 15% of a batch-256 step). On CUDA the op stays:
            # ATen's kernel asserts on the device for an out-of-range index, the op raises
            # IndexError.
            return F.embedding(
                input, weight, self.padding_idx, self.max_norm, self.norm_type,
                self.scale_grad_by_freq, self.sparse,
            )
        padding = -1
        if self.padding_idx is not None:
            # as F.embedding (padding_idx may have been set after construction), and checked
            # before the renorm, as there: a failing call leaves the weight as it was
            n = self.weight.size(0)
            padding = int(self.padding_idx)
            if padding < 0:
                assert padding >= -n, "Padding_idx must be within num_embeddings"
                padding += n
            assert padding < n, "Padding_idx must be within num_embeddings"
        if self.max_norm is not None:
            with torch.no_grad():
                ops.embedding_renorm_(weight, input, float(self.max_norm), float(self.norm_type))
        # the overload itself: a call through the packet resolves it each time
        return ops.embedding.default(weight, input, padding, bool(self.scale_grad_by_freq), bool(self.sparse))

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


def _per_table_padding(padding_idx: Any, nums: Sequence[int]) -> list[int | None]:
    """``padding_idx`` as one non-negative row (or None) per table; negative values count from
    each table's end, as in nn.Embedding."""
    if padding_idx is None:
        return [None] * len(nums)
    if isinstance(padding_idx, (str, bytes)):
        raise TypeError(
            "padding_idx must be None, an int or a sequence of them, "
            f"got {type(padding_idx).__name__}"
        )
    if isinstance(padding_idx, Sequence):
        per = list(padding_idx)
        if len(per) != len(nums):
            raise ValueError(f"padding_idx has {len(per)} entries for {len(nums)} tables")
    else:
        per = [padding_idx] * len(nums)
    out: list[int | None] = []
    for t, (p, n) in enumerate(zip(per, nums)):
        if p is None:
            out.append(None)
            continue
        if isinstance(p, bool) or not hasattr(p, "__index__"):
            raise TypeError(
                f"padding_idx of table {t} must be an int or None, got {type(p).__name__}"
            )
        try:
            p = operator.index(p)
        except TypeError:
            raise TypeError(f"padding_idx of table {t} must be an int or None, got {p!r}") from None
        if not -n <= p < n:
            raise ValueError(f"padding_idx {p} is out of range for table {t} with {n} rows")
        out.append(p + n if p < 0 else p)
    return out


class _MultiEmbeddingWithOptions(torch.autograd.Function):
    """``ops.multi_embedding`` with nn.Embedding's gradient options (padding rows get no gradient,
    ``scale_grad_by_freq``, sparse gradient of the flat weight). The forward is the op itself.

    ``aux`` holds the module's index buffers: ``row_base`` (first row of each table in the
    concatenated rows), ``pad_elems`` (the flat positions of all padding rows), ``col_table`` and
    ``col_j`` (table of each output column and the column's position in its table's row).
    ``layout`` is ``(padding row or None, dim, first output column)`` per table and
    ``total_rows`` the number of rows of all tables (Python values, so the backward does not wait
    for the device).
    """

    @staticmethod
    def forward(
        ctx: Any,
        weight: Tensor,
        input: Tensor,
        meta: Tensor,
        total_dim: int,
        aux: tuple[Tensor, ...],
        layout: list[tuple[int | None, int, int, int, int]],
        total_rows: int,
        scale_grad_by_freq: bool,
        sparse: bool,
    ) -> Tensor:
        ctx.save_for_backward(input, meta, *aux)
        ctx.numel = weight.numel()
        ctx.layout = layout
        ctx.total_rows = total_rows
        ctx.scale = scale_grad_by_freq
        ctx.sparse = sparse
        return ops.multi_embedding(weight, input, meta, total_dim)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        # (differentiable itself: every step is a differentiable op, so double backward works)
        input, meta, row_base, pad_elems, col_table, col_j = ctx.saved_tensors
        padded = any(p is not None for p, *_ in ctx.layout)
        x = input.long()
        batch = x.shape[0]
        if ctx.scale and not ctx.sparse:
            # table by table through the one-table C++ backward, which scales as nn.Embedding
            # does (a fused multiply-add by 1/count into each row, in index order): the same
            # bits as a list of nn.Embedding (dividing the gradient first differed in the last)
            gw = grad.new_zeros(ctx.numel)
            # (sizes and offsets from the layout's Python ints: nothing read from the device)
            for t, (p, d, c, n, off) in enumerate(ctx.layout):
                if d == 0 or n == 0:
                    continue
                part = ops.embedding_dense_backward(
                    grad[:, c : c + d], input[:, t], n, -1 if p is None else p, True
                )
                gw[off : off + n * d] = part.reshape(-1)
            return gw, None, None, None, None, None, None, None, None
        if ctx.scale:
            # divide each output row's gradient by how often its index occurs in its table's column
            ids = x + row_base
            counts = torch.zeros(ctx.total_rows, dtype=torch.long, device=x.device)
            counts.index_add_(0, ids.reshape(-1), torch.ones_like(ids).reshape(-1))
            ct = torch.promote_types(grad.dtype, torch.float32)
            per_pair = counts.index_select(0, ids.reshape(-1)).view(ids.shape).to(ct)
            per_col = torch.gather(per_pair, 1, col_table.expand(batch, -1))
            grad = (grad.to(ct) / per_col).to(grad.dtype)
        if not ctx.sparse:
            gw = ops.multi_embedding_backward(grad, input, meta, ctx.numel)
            if padded:
                gw.index_fill_(0, pad_elems, 0)
            return gw, None, None, None, None, None, None, None, None
        # One entry per looked-up element of the flat weight (duplicates are summed when used),
        # padding rows left out as in nn.Embedding's sparse gradient.
        start = x * meta[:, 1] + meta[:, 2]  # flat position of each looked-up row
        if not padded:
            elems = torch.gather(start, 1, col_table.expand(batch, -1)).add_(col_j).reshape(-1)
            values = grad.reshape(-1)
        else:  # per table (tables are few): leave out the lookups of the padding row
            parts_e, parts_v = [x.new_empty(0)], [grad.new_empty(0)]
            for t, (p, d, c, _, _) in enumerate(ctx.layout):
                if d == 0:
                    continue
                j, g, st = col_j[c : c + d], grad[:, c : c + d], start[:, t]
                if p is not None:
                    rows = (x[:, t] != p).nonzero().squeeze(1)
                    g, st = g.index_select(0, rows), st.index_select(0, rows)
                parts_e.append((st.unsqueeze(1) + j).reshape(-1))
                parts_v.append(g.reshape(-1))
            elems, values = torch.cat(parts_e), torch.cat(parts_v)
        # the indices are in range: the forward checked every index against its table
        gw = torch.sparse_coo_tensor(
            elems.unsqueeze(0), values, (ctx.numel,), check_invariants=False
        )
        return gw, None, None, None, None, None, None, None, None


class FastMultiEmbedding(nn.Module):
    """Many small embedding tables in one flat weight, looked up in one kernel.

    ``FastMultiEmbedding([n1, n2, ...], [d1, d2, ...])`` maps input ``(batch, tables)`` (int32 or
    int64) to ``(batch, d1 + d2 + ...)``; it equals ``torch.cat([emb_t(x[:, t]) ...], 1)`` for
    separate ``nn.Embedding(n_t, d_t, **options)`` tables ``emb_t``, with nn.Embedding's options:

    - ``padding_idx``: None, an int for every table, or a sequence with one int or None per table
      (negative values count from each table's end; stored per table as non-negative rows).
      The padding row is zeroed at initialization and gets no gradient from the lookup; its
      output is the row's current value.
    - ``max_norm`` / ``norm_type``: before each lookup, the looked-up rows of every table whose
      ``norm_type``-norm exceeds ``max_norm`` are renormalized in place.
    - ``scale_grad_by_freq``: a row's gradient is divided by how often its index occurs in its
      table's column of the mini-batch.
    - ``sparse``: the weight's gradient is a 1-D ``torch.sparse_coo`` tensor of element indices
      of the flat weight (one entry per looked-up element, padding rows left out), usable by
      ``torch.optim.SGD`` and ``torch.optim.SparseAdam``; also with ``scale_grad_by_freq``
      (which nn.Embedding refuses).

    Table ``t`` is ``weight[offset_t : offset_t + n_t * d_t].view(n_t, d_t)`` (no padding to the
    largest table); :meth:`table` returns that view. Each table is initialized like
    nn.Embedding (N(0, 1), then its padding row zeroed), in order, so the same seed gives the same
    tables. Without padding rows, ``scale_grad_by_freq`` and ``sparse`` (or without autograd)
    the backward is the C++ one; with them a thin autograd.Function adjusts its gradient.
    """

    meta: Tensor
    _row_base: Tensor
    _col_table: Tensor
    _col_j: Tensor
    _pad_elems: Tensor

    def __init__(
        self,
        num_embeddings: Sequence[int],
        embedding_dims: Sequence[int],
        padding_idx: int | Sequence[int | None] | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
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
        if any(n < 0 for n in nums) or any(d < 0 for d in dims):
            raise ValueError("table sizes and dims must not be negative")
        self.num_embeddings = nums
        self.embedding_dims = dims
        self.max_norm = None if max_norm is None else float(max_norm)
        self.norm_type = float(norm_type)
        self.scale_grad_by_freq = bool(scale_grad_by_freq)
        self.sparse = bool(sparse)
        sizes = [n * d for n, d in zip(nums, dims)]
        self.total_dim = int(sum(dims))
        self._offsets = [int(o) for o in np.concatenate([[0], np.cumsum(sizes)[:-1]])]
        self._columns = [int(c) for c in np.concatenate([[0], np.cumsum(dims)[:-1]])]
        self._total_rows = int(sum(nums))
        self._numel = numel = int(sum(sizes))
        empty = torch.empty(0, dtype=torch.long, device=device)
        for name in self._LAYOUT_BUFFERS:
            self.register_buffer(name, empty, persistent=False)
        self._padding: list[int | None] = [None] * len(nums)
        self.padding_idx = padding_idx  # (builds the layout buffers)
        if _weight is None:
            self.weight = nn.Parameter(
                torch.empty(numel, device=device, dtype=dtype), requires_grad=not _freeze
            )
            self.reset_parameters()
        else:
            if _weight.shape != (numel,):
                raise ValueError(f"_weight must have shape ({numel},), got {tuple(_weight.shape)}")
            self.weight = nn.Parameter(_weight, requires_grad=not _freeze)

    # The table layout, as int64 buffers that move with the module (not saved: they follow
    # from the sizes). `table_meta` is (rows, dim, first weight element, first output column)
    # per table (not named `meta`: torch.export's GraphModule has an attribute of that name);
    # for the gradient options, `_row_base` is the first row of each table in the concatenated
    # rows (counts for scale_grad_by_freq), `_col_table` and `_col_j` the table of each output
    # column and its position in the table's row (sparse gradient indices), `_pad_elems` the
    # weight elements of the padding rows.
    _LAYOUT_BUFFERS = ("table_meta", "_row_base", "_col_table", "_col_j", "_pad_elems")

    def _set_layout(self, device: torch.device) -> None:
        """(Re)build the layout buffers on ``device`` from the table sizes and padding rows."""
        nums, dims = np.array(self.num_embeddings, np.int64), np.array(self.embedding_dims, np.int64)
        coff = np.array(self._columns, np.int64)
        meta = np.stack([nums, dims, np.array(self._offsets, np.int64), coff], axis=1)
        col_table = np.repeat(np.arange(len(nums)), dims).astype(np.int64)
        pad = [
            self._offsets[t] + p * d + j
            for t, (p, d) in enumerate(zip(self._padding, self.embedding_dims))
            if p is not None
            for j in range(d)
        ]
        arrays = {
            "table_meta": meta,
            "_row_base": np.concatenate([[0], np.cumsum(nums)[:-1]]).astype(np.int64),
            "_col_table": col_table,
            "_col_j": (np.arange(self.total_dim) - coff[col_table]).astype(np.int64),
            "_pad_elems": np.array(pad, np.int64),
        }
        # never inference tensors (a module built, moved or cast under `inference_mode`):
        # the forward saves some of them for backward, which an inference tensor refuses
        with torch.inference_mode(False):
            for name, arr in arrays.items():
                self._buffers[name] = torch.from_numpy(arr).to(device)

    def _apply(self, fn: Any, recurse: bool = True) -> FastMultiEmbedding:
        # `.to(device)`, `.cuda()`, `.to_empty()` (meta-device init, `skip_init`) and `.type()`
        # also transform the layout buffers: build them afresh where they went, as int64 with
        # the right values (`to_empty` leaves them uninitialized, `.type()` makes them float).
        super()._apply(fn, recurse)
        self._set_layout(self.table_meta.device)
        return self

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        buffers = self.__dict__.get("_buffers", {})
        if "meta" in buffers and "table_meta" not in buffers:  # pickled before the rename
            buffers["table_meta"] = buffers.pop("meta")
            non_persistent = self.__dict__.get("_non_persistent_buffers_set", set())
            if "meta" in non_persistent:
                non_persistent.discard("meta")
                non_persistent.add("table_meta")
        if "_numel" not in self.__dict__:  # pickled before it was kept
            self._numel = int(sum(n * d for n, d in zip(self.num_embeddings, self.embedding_dims)))

    @property
    def padding_idx(self) -> list[int | None]:
        """The padding row of each table (non-negative) or None; settable like at construction."""
        return list(self._padding)

    @padding_idx.setter
    def padding_idx(self, value: int | Sequence[int | None] | None) -> None:
        per = _per_table_padding(value, self.num_embeddings)
        self._padding = per
        self._padded = any(p is not None for p in per)
        # per table: padding row, dim, first output column, rows, first element of the weight
        self._layout = list(
            zip(per, self.embedding_dims, self._columns, self.num_embeddings, self._offsets)
        )
        self._set_layout(self.table_meta.device)

    def reset_parameters(self) -> None:
        """Each table N(0, 1), in order, then its padding row zeroed (as nn.Embedding)."""
        with torch.no_grad():
            for t in range(len(self.num_embeddings)):
                self.table(t).normal_()
            self._fill_padding_idx_with_zero()

    def _fill_padding_idx_with_zero(self) -> None:
        with torch.no_grad():
            for t, p in enumerate(self._padding):
                if p is not None:
                    self.table(t)[p].fill_(0)

    def table(self, t: int) -> Tensor:
        """The weight of table ``t`` as a (rows, dim) view of the flat weight."""
        n, d = self.num_embeddings[t], self.embedding_dims[t]
        return self.weight[self._offsets[t] : self._offsets[t] + n * d].view(n, d)

    @classmethod
    def from_pretrained(
        cls,
        tables: Sequence[Tensor],
        freeze: bool = True,
        padding_idx: int | Sequence[int | None] | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
    ) -> FastMultiEmbedding:
        """Create from a list of 2-D tensors (one per table), copied into one flat weight.

        The options are those of the constructor and ``freeze`` that of
        nn.Embedding.from_pretrained; as there, the padding rows keep their pretrained values.
        """
        tables = list(tables)
        for t, tab in enumerate(tables):
            if not isinstance(tab, Tensor):
                raise TypeError(f"table {t} must be a Tensor, got {type(tab).__name__}")
            if tab.dim() != 2:
                raise ValueError(f"every table must be 2-D, table {t} is {tab.dim()}-D")
        if not tables:
            raise ValueError("need at least one table")
        flat = torch.cat([t.detach().reshape(-1) for t in tables])
        return cls(
            [t.shape[0] for t in tables],
            [t.shape[1] for t in tables],
            padding_idx=padding_idx,
            max_norm=max_norm,
            norm_type=norm_type,
            scale_grad_by_freq=scale_grad_by_freq,
            sparse=sparse,
            _weight=flat,
            _freeze=freeze,
        )

    def _renorm(self, input: Tensor) -> None:
        """Renormalize the looked-up rows of each table in place (``max_norm``)."""
        max_norm, norm_type = float(self.max_norm), float(self.norm_type)  # type: ignore[arg-type]
        with torch.no_grad():
            for t in range(len(self.num_embeddings)):
                try:
                    ops.embedding_renorm_(self.table(t), input[:, t], max_norm, norm_type)
                except IndexError as e:
                    raise IndexError(f"{e} in table {t}") from None

    def forward(self, input: Tensor) -> Tensor:
        if not isinstance(input, Tensor):
            raise TypeError(f"multi_embedding(): argument 'input' must be Tensor, not {type(input).__name__}")
        if input.dim() != 2:
            raise ValueError(f"input must be 2-D (batch, tables), got {input.dim()}-D")
        if input.shape[1] != len(self.num_embeddings):
            raise ValueError(
                f"input has {input.shape[1]} columns for {len(self.num_embeddings)} tables"
            )
        if input.dtype not in _INDEX_DTYPES:
            # nn.Embedding's own check: for other index dtypes the error (a RuntimeError) and
            # message a list of nn.Embedding tables gives; a dtype it would accept is read as int64
            F.embedding(input[:0, 0], self.weight.detach()[:0].view(0, 1))
            input = input.long()
        weight = self.weight
        if weight.dim() != 1 or weight.shape[0] != self._numel:
            raise RuntimeError(
                f"'weight' must be 1-D with {self._numel} elements (the tables back to back), "
                f"got shape {tuple(weight.shape)}"
            )
        if self.table_meta.device != weight.device:
            # a weight assigned on another device (meta-device set-up with
            # `load_state_dict(assign=True)`): the layout follows it
            self._set_layout(weight.device)
        if self.max_norm is not None:
            self._renorm(input)
        adjusted = self._padded or self.scale_grad_by_freq or self.sparse
        if not (adjusted and self.weight.requires_grad and torch.is_grad_enabled()):
            return ops.multi_embedding(self.weight, input, self.table_meta, self.total_dim)
        aux = (self._row_base, self._pad_elems, self._col_table, self._col_j)
        return _MultiEmbeddingWithOptions.apply(
            self.weight,
            input,
            self.table_meta,
            self.total_dim,
            aux,
            self._layout,
            self._total_rows,
            bool(self.scale_grad_by_freq),
            bool(self.sparse),
        )

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dims}"
        if self._padded:
            s += f", padding_idx={self._padding}"
        if self.max_norm is not None:
            s += f", max_norm={self.max_norm}"
        if self.norm_type != 2:
            s += f", norm_type={self.norm_type}"
        if self.scale_grad_by_freq:
            s += ", scale_grad_by_freq=True"
        if self.sparse:
            s += ", sparse=True"
        return s


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
        """Create from a ``vf.Embeddings`` (quantized storage is reconstructed). The layer
        keeps the vocabulary only (``Vocab.detached``): not a second copy of the matrix."""
        return cls(torch.from_numpy(_matrix_of(emb)), emb.vocab.detached(), trainable=trainable)

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
        # The length is taken over the row scaled by its largest magnitude (the scale is a
        # constant for autograd): sums of squares of rows near 1e20 or 1e-25 neither
        # overflow nor underflow (they gave zero or unnormalized rows).
        if summed.shape[1]:
            scale = summed.detach().abs().amax(dim=1, keepdim=True)
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        else:
            scale = summed.new_ones((summed.shape[0], 1))
        norm = scale * torch.linalg.vector_norm(summed / scale, dim=1, keepdim=True)
        # A zero sum stays zero; dividing it by 1 (not by a tiny clamp) keeps its gradient
        # finite: the identity, so that zero n-gram rows can still learn.
        normalized = summed / torch.where(norm > 0, norm, torch.ones_like(norm))
        if normalized.device.type == "cpu" and normalized.dtype == torch.float32 and normalized.numel():
            # The values exactly as the Rust core (emb.lookup) gives them, the gradient of the
            # expression above: torch's norm adds the squares in another order (1-2 ulp off
            # for a third of the rows at 300 dims). `a + (b - a)` is `b` exactly here: the two
            # agree to a few ulp, so that the difference is exact (Sterbenz). Tensors without
            # storage (torch.func's grad and vmap) keep torch's values.
            try:
                plain = summed.detach().numpy()
            except (RuntimeError, TypeError):
                plain = None
            if plain is not None:
                exact = plain.copy()
                _normalize_rows_as_lookup(exact)  # the Rust core's own normalization
                exact = torch.from_numpy(exact)
                normalized = normalized + (exact - normalized).detach()
        return torch.where(known.unsqueeze(1), summed, normalized)

    def forward(self, words: Sequence[str] | Sequence[Sequence[str]]) -> Tensor:
        if isinstance(words, str):
            raise TypeError("expected a list of words or of token lists, got a single str")
        words = list(words)
        if not words or isinstance(words[0], str):
            return self._embed(words)  # type: ignore[arg-type]
        if any(isinstance(t, str) for t in words):
            raise TypeError("expected a list of words or a list of token lists, not a mix of both")
        for t in words:
            # a token list is a sized iterable of str (bytes would iterate as ints)
            bytes_like = isinstance(t, (bytes, bytearray))
            if bytes_like or not (hasattr(t, "__len__") and hasattr(t, "__iter__")):
                hint = " (decode bytes to str)" if bytes_like else ""
                raise TypeError(f"expected words (str) or token lists, got {type(t).__name__}{hint}")
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
