"""FastMultiEmbedding's nn.Embedding options against separate nn.Embedding tables + torch.cat."""

from __future__ import annotations

import itertools
import os
from typing import Any

import pytest

if os.environ.get("VECFUSION_REQUIRE_TORCH") == "1":  # `make test` sets it: torch must be there
    import torch
else:  # a plain `pytest` without torch installed (`make torch-ext` installs it)
    torch = pytest.importorskip("torch", reason="vecfusion.torch needs torch (make torch-ext)")
from torch import nn  # noqa: E402
from torch.autograd.gradcheck import GradcheckError  # noqa: E402

from vecfusion.torch import FastMultiEmbedding  # noqa: E402

# a one-row table (padding 0 and -1 are the same, every lookup is padding) and a 1-D table
NUMS, DIMS = [5, 9, 1, 17], [3, 1, 4, 2]
PER_TABLE = [None, 3, 0, -2]  # one table without padding row, one counted from the end

PADDINGS = [None, 0, -1, PER_TABLE]
OPTIONS = list(
    itertools.product(
        PADDINGS,
        [None, 1.0],  # max_norm
        [False, True],  # scale_grad_by_freq
        [False, True],  # sparse
    )
)


def _per_table(padding_idx) -> list:
    if isinstance(padding_idx, list):
        return padding_idx
    return [padding_idx] * len(NUMS)


def _tables(seed: int = 0, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # large enough that max_norm=1.0 renormalizes most rows
    return [(torch.randn(n, d, generator=g) * 2).to(dtype) for n, d in zip(NUMS, DIMS)]


def _batch(batch: int, seed: int = 11, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Random rows, a hot row repeated, each table's padding rows (0, last, PER_TABLE)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.stack([torch.randint(0, n, (batch,), generator=g) for n in NUMS], dim=1)
    special = [
        [2, 4, 0, 7],  # hot row
        [0] * len(NUMS),
        [n - 1 for n in NUMS],
        [0 if p is None else p % n for p, n in zip(PER_TABLE, NUMS)],
    ]
    for i in range(min(batch, 16)):
        x[i] = torch.tensor(special[0] if i < 8 else special[1 + i % 3])
    return x.to(dtype)


def _pair(tables, padding_idx, max_norm, scale, sparse, norm_type=2.0):
    """(FastMultiEmbedding, [nn.Embedding per table]) from the same pretrained tables."""
    multi = FastMultiEmbedding.from_pretrained(
        tables,
        freeze=False,
        padding_idx=padding_idx,
        max_norm=max_norm,
        norm_type=norm_type,
        scale_grad_by_freq=scale,
        sparse=sparse,
    )
    refs = [
        nn.Embedding.from_pretrained(
            tab.clone(),
            freeze=False,
            padding_idx=p,
            max_norm=max_norm,
            norm_type=norm_type,
            scale_grad_by_freq=scale,
            # nn.Embedding refuses sparse + scale_grad_by_freq: compare to its dense gradient
            sparse=sparse and not scale,
        )
        for tab, p in zip(tables, _per_table(padding_idx))
    ]
    return multi, refs


def _ref_forward(refs, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([emb(x[:, t]) for t, emb in enumerate(refs)], dim=1)


def _dense(g: torch.Tensor) -> torch.Tensor:
    return g.to_dense() if g.is_sparse else g


def _assert_tables_close(multi: FastMultiEmbedding, refs, what: str = "weight", **tol) -> None:
    for t, emb in enumerate(refs):
        if what == "weight":
            mine, theirs = multi.table(t).detach(), emb.weight.detach()
        else:
            assert multi.weight.grad is not None and emb.weight.grad is not None
            n, d, off = multi.num_embeddings[t], multi.embedding_dims[t], multi._offsets[t]
            mine = _dense(multi.weight.grad)[off : off + n * d].view(n, d)
            theirs = _dense(emb.weight.grad)

        def msg(m: str, t: int = t) -> str:
            return f"table {t} {what}: {m}"

        torch.testing.assert_close(mine, theirs, msg=msg, **tol)


@pytest.mark.parametrize("batch", [0, 1, 40])
@pytest.mark.parametrize("idx_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("padding_idx,max_norm,scale,sparse", OPTIONS)
def test_equals_separate_nn_embeddings(
    padding_idx, max_norm, scale, sparse, idx_dtype, batch
) -> None:
    tables = _tables()
    multi, refs = _pair(tables, padding_idx, max_norm, scale, sparse)
    assert multi.padding_idx == [refs[t].padding_idx for t in range(len(NUMS))]
    x = _batch(batch, dtype=idx_dtype)
    out, ref = multi(x), _ref_forward(refs, x)
    assert out.shape == (batch, sum(DIMS))
    if max_norm is None:
        assert torch.equal(out, ref)
        assert torch.equal(multi.weight.detach(), torch.cat([t.reshape(-1) for t in tables]))
    else:  # the row norms may be summed in another order: equal up to rounding
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-7)
    # max_norm renormalized the looked-up rows of every table in place, like nn.Embedding
    _assert_tables_close(multi, refs, rtol=1e-6, atol=1e-7)
    if max_norm is not None and batch:
        assert not torch.equal(multi.weight.detach(), torch.cat([t.reshape(-1) for t in tables]))
        for t in range(len(NUMS)):
            rows = x[:, t].long().unique()
            assert multi.table(t).detach()[rows].norm(dim=1).max() <= max_norm + 1e-5

    up = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    (out * up).sum().backward()
    (ref * up).sum().backward()
    assert multi.weight.grad.is_sparse == sparse
    assert multi.weight.grad.shape == multi.weight.shape
    # dense gradients are nn.Embedding's bits (scale_grad_by_freq included: a multiply-add by
    # 1/count, as ATen does); sparse ones are summed when made dense, in some order
    exact = {"rtol": 0, "atol": 0} if not sparse else {"rtol": 1e-6, "atol": 1e-6}
    _assert_tables_close(multi, refs, "grad", **exact)
    for t, p in enumerate(multi.padding_idx):
        if p is not None:
            off, d = multi._offsets[t], DIMS[t]
            assert not _dense(multi.weight.grad)[off + p * d : off + (p + 1) * d].any()
    if batch == 40:
        # the options matter for this batch: without them the gradient would differ
        plain, plain_refs = _pair(tables, None, max_norm, False, False)
        (plain(x) * up).sum().backward()
        if padding_idx is not None or scale:
            assert not torch.allclose(_dense(multi.weight.grad), plain.weight.grad)

    # a few SGD steps on different batches (sparse gradients are added into the dense weight)
    opt = torch.optim.SGD(multi.parameters(), lr=0.3)
    opt_ref = torch.optim.SGD([p for emb in refs for p in emb.parameters()], lr=0.3)
    for step in range(3):
        xs = _batch(max(batch, 1) + step, seed=20 + step, dtype=idx_dtype)
        opt.zero_grad()
        opt_ref.zero_grad()
        loss = (multi(xs) ** 2).sum()
        loss_ref = (_ref_forward(refs, xs) ** 2).sum()
        torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-5)
        loss.backward()
        loss_ref.backward()
        opt.step()
        opt_ref.step()
    _assert_tables_close(multi, refs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sparse", [False, True])
def test_zero_dim_table(sparse) -> None:
    g = torch.Generator().manual_seed(8)
    tables = [torch.randn(4, 3, generator=g), torch.zeros(3, 0), torch.randn(5, 2, generator=g)]
    multi, refs = _pair(tables, [1, 1, None], None, True, sparse)
    x = torch.tensor([[1, 1, 4], [0, 2, 4], [1, 0, 0], [3, 1, 4]])
    out, ref = multi(x), _ref_forward(refs, x)
    assert out.shape == (4, 5) and torch.equal(out, ref)
    up = torch.randn(out.shape, generator=g)
    (out * up).sum().backward()
    (ref * up).sum().backward()
    assert multi.weight.grad.is_sparse == sparse
    _assert_tables_close(multi, refs, "grad", rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("padding_idx", [None, PER_TABLE])
@pytest.mark.parametrize("max_norm", [None, 1.5])
def test_sparse_adam_equals_nn_embedding(padding_idx, max_norm) -> None:
    tables = _tables(1)
    multi, refs = _pair(tables, padding_idx, max_norm, False, True)
    opt = torch.optim.SparseAdam(multi.parameters(), lr=0.05)
    opt_ref = torch.optim.SparseAdam([p for emb in refs for p in emb.parameters()], lr=0.05)
    seen = torch.zeros(NUMS[3], dtype=torch.bool)
    for step in range(4):
        xs = _batch(20, seed=40 + step)
        seen[xs[:, 3]] = True
        opt.zero_grad()
        opt_ref.zero_grad()
        target = torch.randn(20, sum(DIMS), generator=torch.Generator().manual_seed(step))
        ((multi(xs) - target) ** 2).sum().backward()
        ((_ref_forward(refs, xs) - target) ** 2).sum().backward()
        opt.step()
        opt_ref.step()
    _assert_tables_close(multi, refs, rtol=1e-5, atol=1e-6)
    # SparseAdam moved the looked-up rows only (the element indices cover whole rows)
    assert (~seen).any() and seen.any()
    assert torch.equal(multi.table(3).detach()[~seen], tables[3][~seen])
    moved = (multi.table(3).detach() != tables[3]).any(dim=1)
    if padding_idx is None and max_norm is None:
        assert torch.equal(moved, seen)


@pytest.mark.parametrize("norm_type", [1.0, 3.0, float("inf")])
def test_norm_type(norm_type) -> None:
    tables = _tables(2)
    multi, refs = _pair(tables, None, 1.0, False, False, norm_type=norm_type)
    x = _batch(30)
    torch.testing.assert_close(multi(x), _ref_forward(refs, x), rtol=1e-6, atol=1e-7)
    _assert_tables_close(multi, refs, rtol=1e-6, atol=1e-7)
    assert f"norm_type={norm_type}" in repr(multi)


def test_default_init_zeros_padding_rows() -> None:
    torch.manual_seed(5)
    refs = [nn.Embedding(n, d, padding_idx=p) for n, d, p in zip(NUMS, DIMS, PER_TABLE)]
    torch.manual_seed(5)
    multi = FastMultiEmbedding(NUMS, DIMS, padding_idx=PER_TABLE)
    assert multi.padding_idx == [None, 3, 0, 15]
    _assert_tables_close(multi, refs, rtol=0, atol=0)
    for t, p in enumerate(multi.padding_idx):
        if p is not None:
            assert not multi.table(t)[p].any()
    assert multi.table(0).detach().abs().sum(dim=1).all()  # table 0 has no padding row
    with torch.no_grad():
        multi.weight.fill_(1.0)
    multi.reset_parameters()
    assert not multi.table(3)[15].any() and multi.table(3)[14].any()
    # an int applies to every table
    every = FastMultiEmbedding(NUMS, DIMS, padding_idx=-1)
    assert every.padding_idx == [n - 1 for n in NUMS]
    assert all(not every.table(t)[n - 1].any() for t, n in enumerate(NUMS))


def test_from_pretrained_keeps_padding_rows_and_freeze() -> None:
    tables = _tables(3)
    multi = FastMultiEmbedding.from_pretrained(tables, padding_idx=PER_TABLE)
    assert not multi.weight.requires_grad
    for t, tab in enumerate(tables):
        assert torch.equal(multi.table(t), tab)
    assert multi.table(3)[15].any()
    x = _batch(12)
    # frozen: the lookup still renormalizes, and outputs the padding rows' values
    frozen = FastMultiEmbedding.from_pretrained(tables, padding_idx=PER_TABLE, max_norm=1.0)
    refs = [
        nn.Embedding.from_pretrained(tab.clone(), padding_idx=p, max_norm=1.0)
        for tab, p in zip(tables, PER_TABLE)
    ]
    torch.testing.assert_close(frozen(x), _ref_forward(refs, x), rtol=1e-6, atol=1e-7)
    _assert_tables_close(frozen, refs, rtol=1e-6, atol=1e-7)
    assert FastMultiEmbedding.from_pretrained(tables, freeze=False).weight.requires_grad
    with pytest.raises(ValueError, match="table 1 is 1-D"):
        FastMultiEmbedding.from_pretrained([tables[0], torch.zeros(3)])
    with pytest.raises(TypeError, match="table 0"):
        FastMultiEmbedding.from_pretrained([[[1.0]]])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="at least one table"):
        FastMultiEmbedding.from_pretrained([])


@pytest.mark.parametrize(
    "padding_idx,exc,match",
    [
        (5, ValueError, "table 0 with 5 rows"),
        (-6, ValueError, "table 0 with 5 rows"),
        (-2, ValueError, "table 2 with 1 rows"),
        ([None, 9, 0, 0], ValueError, "padding_idx 9 .*table 1 with 9 rows"),
        ([None, 0, 0, -18], ValueError, "table 3 with 17 rows"),
        ([0, 0, 0], ValueError, "3 entries for 4 tables"),
        ([None, 1.5, 0, 0], TypeError, "table 1"),
        ([True, 0, 0, 0], TypeError, "table 0"),
        ("0", TypeError, "padding_idx"),
    ],
)
def test_bad_padding_idx(padding_idx, exc, match) -> None:
    with pytest.raises(exc, match=match):
        FastMultiEmbedding(NUMS, DIMS, padding_idx=padding_idx)
    with pytest.raises(exc, match=match):
        FastMultiEmbedding.from_pretrained(_tables(), padding_idx=padding_idx)
    m = FastMultiEmbedding(NUMS, DIMS)
    with pytest.raises(exc, match=match):
        m.padding_idx = padding_idx
    assert m.padding_idx == [None] * len(NUMS)  # a refused value leaves the old one


def test_padding_idx_settable() -> None:
    tables = _tables(4)
    multi, refs = _pair(tables, None, None, False, False)
    multi.padding_idx = [1, None, None, 2]
    for emb, p in zip(refs, [1, None, None, 2]):
        emb.padding_idx = p
    x = torch.tensor([[1, 1, 0, 2], [1, 2, 0, 2], [0, 8, 0, 16]])
    out, ref = multi(x), _ref_forward(refs, x)
    assert torch.equal(out, ref)
    out.sum().backward()
    ref.sum().backward()
    _assert_tables_close(multi, refs, "grad", rtol=0, atol=0)
    assert not multi.weight.grad[multi._offsets[0] + 3 : multi._offsets[0] + 6].any()
    assert multi.weight.grad[multi._offsets[0] : multi._offsets[0] + 3].any()


def test_gradcheck_float64() -> None:
    tables = _tables(5, torch.float64)
    # The options change the gradient of padding rows and repeated rows on purpose (checked
    # against nn.Embedding above); with neither in the batch it is the true Jacobian, which
    # checks the layout of the options' backward. (The one-row table repeats its row in any
    # batch of two or more: scale_grad_by_freq gets one row. gradcheck refuses sparse gradients
    # of a strided input: the sparse ones are compared to nn.Embedding's above.)
    x = torch.tensor([[0, 6, 0, 3], [4, 1, 0, 9], [2, 0, 0, 0]])
    wx = torch.cat([t.reshape(-1) for t in tables]).requires_grad_(True)
    for scale, xi in ((False, x), (False, x.int()), (True, x[1:2])):
        m = FastMultiEmbedding.from_pretrained(
            tables, freeze=False, padding_idx=[None, 3, None, -2], scale_grad_by_freq=scale
        )

        def f(w, m=m, xi=xi):
            return torch.func.functional_call(m, {"weight": w}, (xi,))

        assert torch.autograd.gradcheck(f, (wx,))
    # the padding rows do get the true Jacobian's gradient where the options are ignored
    m = FastMultiEmbedding.from_pretrained(tables, freeze=False, padding_idx=[None, 3, None, -2])
    with pytest.raises(GradcheckError):
        xp = torch.tensor([[0, 3, 0, 0]])
        torch.autograd.gradcheck(lambda w: torch.func.functional_call(m, {"weight": w}, (xp,)), wx)


def test_state_dict_round_trip() -> None:
    tables = _tables(6)
    kw: dict[str, Any] = dict(
        padding_idx=PER_TABLE, max_norm=1.0, scale_grad_by_freq=True, sparse=True
    )
    multi = FastMultiEmbedding.from_pretrained(tables, freeze=False, **kw)
    x = _batch(25)
    multi(x).sum().backward()
    torch.optim.SGD(multi.parameters(), lr=0.5).step()
    sd = multi.state_dict()
    assert list(sd) == ["weight"]
    other = FastMultiEmbedding(NUMS, DIMS, **kw)
    assert not torch.equal(other.weight, multi.weight)
    other.load_state_dict(sd)
    assert torch.equal(other.weight, multi.weight)
    assert other.padding_idx == multi.padding_idx
    assert torch.equal(other(x), multi(x))
    # the tables load into separate nn.Embedding state_dicts
    for t, p in enumerate(PER_TABLE):
        emb = nn.Embedding(NUMS[t], DIMS[t], padding_idx=p)
        emb.load_state_dict({"weight": other.table(t)})
        assert torch.equal(emb(x[:, t]), multi(x)[:, sum(DIMS[:t]) : sum(DIMS[: t + 1])])


def test_repr_shows_non_default_options() -> None:
    assert repr(FastMultiEmbedding(NUMS, DIMS)) == "FastMultiEmbedding([5, 9, 1, 17], [3, 1, 4, 2])"
    m = FastMultiEmbedding(
        NUMS, DIMS, padding_idx=PER_TABLE, max_norm=2, scale_grad_by_freq=True, sparse=True
    )
    assert repr(m) == (
        "FastMultiEmbedding([5, 9, 1, 17], [3, 1, 4, 2], padding_idx=[None, 3, 0, 15], "
        "max_norm=2.0, scale_grad_by_freq=True, sparse=True)"
    )


def test_errors_name_the_table() -> None:
    m = FastMultiEmbedding(NUMS, DIMS, max_norm=1.0, padding_idx=0)
    with pytest.raises(IndexError, match="table 3"):
        m(torch.tensor([[0, 0, 0, 17]]))
    with pytest.raises(IndexError, match="table 1"):
        m(torch.tensor([[0, -1, 0, 0]]))
    with pytest.raises(ValueError, match="3 columns for 4 tables"):
        m(torch.zeros(2, 3, dtype=torch.long))
    # other index dtypes: the error of a list of nn.Embedding tables, type and message
    tables = [nn.Embedding(n, d) for n, d in zip(NUMS, DIMS)]
    for bad in (torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.int16), torch.zeros(2, 4, dtype=torch.uint8),
                torch.zeros(2, 4, dtype=torch.bool), torch.zeros(2, 4, dtype=torch.complex64)):
        with pytest.raises(RuntimeError) as want:
            torch.cat([tab(bad[:, t]) for t, tab in enumerate(tables)], 1)
        with pytest.raises(RuntimeError) as got:
            m(bad)
        assert str(got.value) == str(want.value), bad.dtype
    # the op itself says what it takes
    with pytest.raises(TypeError, match="int32 or int64"):
        op_multi = torch.ops.vecfusion_ops.multi_embedding
        op_multi(m.weight, torch.zeros(2, 4), m.table_meta, m.total_dim)


def test_low_precision_and_no_grad() -> None:
    tables = _tables(7)
    x = _batch(30)
    for dtype in (torch.bfloat16, torch.float16):
        multi = FastMultiEmbedding.from_pretrained(
            [t.to(dtype) for t in tables],
            freeze=False,
            padding_idx=PER_TABLE,
            scale_grad_by_freq=True,
        )
        out = multi(x)
        assert out.dtype == dtype
        out.float().sum().backward()
        assert multi.weight.grad is not None and multi.weight.grad.dtype == dtype
        _, refs = _pair(tables, PER_TABLE, None, True, False)
        _ref_forward(refs, x).sum().backward()
        _assert_tables_close(multi, refs, "grad", rtol=1e-2, atol=1e-2, check_dtype=False)
    multi, _ = _pair(tables, PER_TABLE, None, True, True)
    with torch.no_grad():
        out = multi(x)
    plain_refs = _pair(tables, None, None, False, False)[1]
    assert not out.requires_grad and torch.equal(out, _ref_forward(plain_refs, x))


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("padding_idx,max_norm,scale,sparse", OPTIONS[::3])
def test_cuda_equals_separate_nn_embeddings(padding_idx, max_norm, scale, sparse) -> None:
    tables = _tables()
    multi, refs = _pair(tables, padding_idx, max_norm, scale, sparse)
    multi, refs = multi.cuda(), [emb.cuda() for emb in refs]
    x = _batch(300).cuda()
    out, ref = multi(x), _ref_forward(refs, x)
    torch.testing.assert_close(out, ref)
    _assert_tables_close(multi, refs)
    up = torch.randn(out.shape, device="cuda")
    (out * up).sum().backward()
    (ref * up).sum().backward()
    assert multi.weight.grad.is_sparse == sparse
    _assert_tables_close(multi, refs, "grad", rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fullgraph", [False, True])
def test_scale_grad_by_freq_compiles_with_a_changing_batch(fullgraph: bool) -> None:
    """The dense scale_grad_by_freq backward goes table by table with the sizes kept as Python
    ints (reading them from the `meta` tensor broke torch.compile(fullgraph=True) and meta
    tensors); exact against a list of nn.Embedding."""
    torch.manual_seed(0)
    m = FastMultiEmbedding([5, 7], [3, 2], scale_grad_by_freq=True, padding_idx=[None, 1])
    refs = [
        nn.Embedding.from_pretrained(m.table(t).detach().clone(), freeze=False, scale_grad_by_freq=True, padding_idx=p)
        for t, p in enumerate([None, 1])
    ]
    f = torch.compile(m, backend="aot_eager", fullgraph=fullgraph)
    for b in (4, 6, 9):
        x = torch.stack([torch.randint(0, 5, (b,)), torch.randint(0, 7, (b,))], 1)
        m.weight.grad = None
        for r in refs:
            r.weight.grad = None
        (f(x) ** 2).sum().backward()
        (torch.cat([refs[t](x[:, t]) for t in range(2)], 1) ** 2).sum().backward()
        assert torch.equal(m.weight.grad, torch.cat([r.weight.grad.reshape(-1) for r in refs]))
    meta = FastMultiEmbedding([5, 7], [3, 2], scale_grad_by_freq=True, device="meta")
    out = meta(torch.zeros(4, 2, dtype=torch.long, device="meta"))
    out.sum().backward()
    assert meta.weight.grad is not None and meta.weight.grad.shape == (29,)


def test_torch_export_round_trips() -> None:
    """torch.export's GraphModule has a `meta` attribute: a buffer of that name made
    `.module()` fail ("attribute 'meta' already exists")."""
    m = FastMultiEmbedding([5, 6], [2, 3])
    x = torch.tensor([[0, 5], [4, 1], [2, 2]])
    exported = torch.export.export(m, (x,)).module()
    assert torch.equal(exported(x), m(x))
    # a module pickled before the buffer was renamed still loads and runs
    state = m.__getstate__()
    state["_buffers"] = {("meta" if k == "table_meta" else k): v for k, v in state["_buffers"].items()}
    old = FastMultiEmbedding.__new__(FastMultiEmbedding)
    old.__setstate__(state)
    assert torch.equal(old(x), m(x))


def test_layout_survives_to_empty_type_and_rejects_a_wrong_weight() -> None:
    """The table layout lives in buffers that are not saved: `skip_init` / `to_empty` (which
    leave buffers uninitialized) and `.type()` (which makes them float) rebuild them from the
    sizes, so a module set up the meta-device way and loaded from a state dict equals the
    original (it read garbage offsets and crashed). A weight of the wrong size, and a layout
    that does not fit the weight (the op called directly), are errors, not reads out of range."""
    src = FastMultiEmbedding([5, 9, 1000], [3, 1, 4], padding_idx=[1, None, 7])
    m = torch.nn.utils.skip_init(FastMultiEmbedding, [5, 9, 1000], [3, 1, 4], padding_idx=[1, None, 7])
    m.load_state_dict(src.state_dict())
    assert m.table_meta.tolist() == [[5, 3, 0, 0], [9, 1, 15, 3], [1000, 4, 24, 4]]
    assert torch.equal(m._pad_elems, src._pad_elems)
    x = torch.tensor([[1, 2, 999], [0, 8, 7]])
    assert torch.equal(m(x), src(x))
    ref = [nn.Embedding(5, 3, padding_idx=1), nn.Embedding(9, 1), nn.Embedding(1000, 4, padding_idx=7)]
    for t, e in enumerate(ref):
        e.weight.data.copy_(src.table(t))
    m.type(torch.float64)
    assert m.table_meta.dtype == torch.int64 and m.weight.dtype == torch.float64
    out = m(x)
    want = torch.cat([e(x[:, t]) for t, e in enumerate(ref)], 1).double()
    assert torch.equal(out, want)
    out.sum().backward()  # the padding options' path uses the rebuilt buffers too
    g = m.weight.grad
    assert g is not None and m._pad_elems.tolist() == [3, 4, 5, 52, 53, 54, 55]
    assert float(g[m._pad_elems].abs().sum()) == 0.0 and float(g[0:3].sum()) == 1.0 * 3
    with pytest.raises(RuntimeError, match="'weight' must be 1-D with 576015 elements"):
        torch.func.functional_call(FastMultiEmbedding([5, 9000], [3, 64]), {"weight": torch.randn(4)},
                                   (torch.tensor([[1, 2]]),))
    op = torch.ops.vecfusion_ops
    with pytest.raises(ValueError, match="does not fit a weight of 10 elements"):
        op.multi_embedding(torch.randn(10), torch.tensor([[1]]), torch.tensor([[5, 3, 0, 0]]), 3)
    with pytest.raises(ValueError, match="starts at output column 1, not 0"):
        op.multi_embedding(torch.randn(100), torch.tensor([[1]]), torch.tensor([[2, 3, 0, 1]]), 3)
    # the output has exactly the tables' columns (none left unwritten, none past a table)
    with pytest.raises(ValueError, match="does not fit a weight of 100 elements and 2 output columns"):
        op.multi_embedding(torch.randn(100), torch.tensor([[1]]), torch.tensor([[2, 3, 0, 0]]), 2)
    with pytest.raises(ValueError, match="the tables have 3 output columns in all, not 5"):
        op.multi_embedding(torch.randn(100), torch.tensor([[1]]), torch.tensor([[2, 3, 0, 0]]), 5)
    with pytest.raises(ValueError, match="3 output columns in all, not 4"):
        op.multi_embedding_backward(torch.randn(1, 4), torch.tensor([[1]]), torch.tensor([[2, 3, 0, 0]]), 6)
    with pytest.raises(IndexError, match="index 7"):
        op.multi_embedding_backward(torch.randn(1, 3), torch.tensor([[7]]), torch.tensor([[5, 3, 0, 0]]), 15)


@pytest.mark.parametrize("pad", [None, [1, None], [0, 4], [None, 1]])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("scale", [False, True])
def test_double_backward_with_options(pad: Any, sparse: bool, scale: bool) -> None:
    """The options' backward is differentiable (it was once_differentiable: a second
    derivative through it was None or an error). With padding rows and sparse gradients it
    equals a list of nn.Embedding's; with scale_grad_by_freq (dense) it equals a list of the
    one-table FastEmbedding's, which includes the 1/count that torch's own leaves out."""
    if pad is None and not (sparse or scale):
        pytest.skip("no options: the C++ backward (tested elsewhere)")
    if scale and sparse:
        pytest.skip("nn.Embedding has no second derivative for sparse scaled gradients")
    from vecfusion.torch import FastEmbedding

    torch.manual_seed(0)
    x = torch.tensor([[0, 2], [3, 4], [0, 1], [4, 1], [0, 2]])
    m = FastMultiEmbedding([5, 9], [3, 2], padding_idx=pad, sparse=sparse, scale_grad_by_freq=scale, dtype=torch.float64)
    kind = FastEmbedding if scale else nn.Embedding
    ref = [
        kind(n, d, padding_idx=None if pad is None else pad[t], sparse=sparse, scale_grad_by_freq=scale,
             dtype=torch.float64)
        for t, (n, d) in enumerate([(5, 3), (9, 2)])
    ]
    for t, e in enumerate(ref):
        e.weight.data.copy_(m.table(t))
    go = torch.randn(5, 5, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(m(x), m.weight, go, create_graph=True)
    (gg,) = torch.autograd.grad((g.to_dense() if g.is_sparse else g).pow(3).sum(), go)
    out = torch.cat([e(x[:, t]) for t, e in enumerate(ref)], 1)
    grads = torch.autograd.grad(out, [e.weight for e in ref], go, create_graph=True)
    (want,) = torch.autograd.grad(sum((h.to_dense() if h.is_sparse else h).pow(3).sum() for h in grads), go)
    torch.testing.assert_close(gg, want, rtol=1e-12, atol=1e-12)


def test_meta_device_module_loaded_with_assign() -> None:
    """Built on the meta device and loaded with `load_state_dict(assign=True)` (the weight is
    then a CPU tensor while the layout buffers stayed on meta): the layout follows the weight
    and the output is the source module's (it was uninitialized memory)."""
    src = FastMultiEmbedding([5, 9], [3, 2], padding_idx=[None, 1])
    with torch.device("meta"):
        m = FastMultiEmbedding([5, 9], [3, 2], padding_idx=[None, 1])
    m.load_state_dict(src.state_dict(), assign=True)
    x = torch.tensor([[1, 2], [4, 1]])
    assert torch.equal(m(x), src(x))
    m(x).sum().backward()  # the padding option's backward uses the layout too
    assert m.weight.grad is not None and float(m.weight.grad[15 + 2 : 15 + 4].abs().sum()) == 0.0


def test_a_module_pickled_before_the_buffer_rename_keeps_its_state_dict() -> None:
    """A module pickled when the layout buffer was named `meta` loads with it renamed and
    still non-persistent: its state_dict is the weight alone, loadable into a new module."""
    import pickle

    m = FastMultiEmbedding([5, 9], [3, 2])
    state = m.__getstate__() if hasattr(m, "__getstate__") else m.__dict__
    state = dict(state)
    state["_buffers"] = {("meta" if k == "table_meta" else k): v for k, v in state["_buffers"].items()}
    state["_non_persistent_buffers_set"] = {("meta" if k == "table_meta" else k) for k in state["_non_persistent_buffers_set"]}
    old = FastMultiEmbedding.__new__(FastMultiEmbedding)
    old.__setstate__(state)
    old = pickle.loads(pickle.dumps(old))
    assert list(old.state_dict()) == ["weight"]
    fresh = FastMultiEmbedding([5, 9], [3, 2])
    fresh.load_state_dict(old.state_dict())
    x = torch.tensor([[1, 2]])
    assert torch.equal(fresh(x), m(x))


@pytest.mark.parametrize("options", [{}, {"padding_idx": 0}, {"max_norm": 1.0, "scale_grad_by_freq": True}])
def test_built_or_cast_under_inference_mode_still_trains(options: dict[str, Any]) -> None:
    """The layout buffers were rebuilt as inference tensors under `inference_mode` (at
    construction, `.float()`, `.to()`, setting `padding_idx`), and a forward that records a
    graph refused to save them; a list of nn.Embedding trains the same way."""
    x = torch.tensor([[1, 2], [3, 1]])
    torch.manual_seed(0)
    with torch.inference_mode():
        built = FastMultiEmbedding([4, 3], [2, 3], **options)
    cast = FastMultiEmbedding([4, 3], [2, 3], **options)
    with torch.inference_mode():
        cast.float()
        cast.padding_idx = cast.padding_idx
    for m in (built, cast):
        ref = [nn.Embedding.from_pretrained(t.detach().clone(), freeze=False, **options) for t in (m.table(0), m.table(1))]
        m(x).pow(2).sum().backward()
        torch.cat([e(x[:, i]) for i, e in enumerate(ref)], 1).pow(2).sum().backward()
        torch.testing.assert_close(m.weight.grad, torch.cat([e.weight.grad.reshape(-1) for e in ref]))


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_trace_and_export(tmp_path: Any) -> None:
    """As the README says: without options the layer traces and saves; with padding rows
    (a Python autograd.Function) torch.export captures it."""
    x = torch.tensor([[1, 2], [3, 1]])
    plain = FastMultiEmbedding([4, 3], [2, 3])
    torch.jit.save(torch.jit.trace(plain, (x,)), str(tmp_path / "m.pt"))
    assert torch.equal(torch.jit.load(str(tmp_path / "m.pt"))(x), plain(x))
    padded = FastMultiEmbedding([4, 3], [2, 3], padding_idx=0)
    y = torch.tensor([[0, 2], [3, 0]])
    assert torch.equal(torch.export.export(padded, (y,)).module()(y), padded(y))
