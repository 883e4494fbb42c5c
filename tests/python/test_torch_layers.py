"""vecfusion.torch layers against torch.nn.Embedding / embedding_bag and finalfusion lookups."""

from __future__ import annotations

import itertools
import os
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("VECFUSION_REQUIRE_TORCH") == "1":  # `make test` sets it: torch must be there
    import torch
else:  # a plain `pytest` without torch installed (`make torch-ext` installs it)
    torch = pytest.importorskip("torch", reason="vecfusion.torch needs torch (make torch-ext)")
from torch import nn  # noqa: E402

import vecfusion as vf
from vecfusion.torch import (
    FastEmbedding,
    FastMultiEmbedding,
    SubwordEmbeddingBag,
    compiled_with_cuda,
    has_cuda_kernels,
)
from vecfusion.torch._ops import ops

NUM, DIM = 12, 5


def _indices(shape: str, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    if shape == "1d":
        # repeats (scale_grad_by_freq, atomics), the padding rows 0 and NUM-1, every row hit
        x = torch.cat([torch.arange(NUM), torch.randint(0, NUM, (20,), generator=g), torch.tensor([3, 3, 3])])
    elif shape == "2d":
        x = torch.randint(0, NUM, (4, 6), generator=g)
        x[0, 0] = 0
        x[1, 1] = NUM - 1
    else:
        x = torch.empty((0, 3), dtype=torch.long)
    return x.to(dtype)


def _pair(seed: int = 0, dtype: torch.dtype = torch.float32, **kw):
    torch.manual_seed(seed)
    ref = nn.Embedding(NUM, DIM, dtype=dtype, **kw)
    torch.manual_seed(seed)
    fast = FastEmbedding(NUM, DIM, dtype=dtype, **kw)
    return ref, fast


def _dense(g: torch.Tensor) -> torch.Tensor:
    return g.to_dense() if g.is_sparse else g


def _toolkit_present() -> bool:
    """Whether the extension build (cuda/build.sh) had a CUDA toolkit to compile with."""
    if os.environ.get("VECFUSION_NO_CUDA") == "1":
        return False
    if os.environ.get("CUDA_HOME"):
        return True
    site = Path(sysconfig.get_paths()["purelib"])
    return (site / "nvidia" / "cu13" / "bin" / "nvcc").is_file()


def test_kernels_registered() -> None:
    assert torch._C._dispatch_has_kernel_for_dispatch_key("vecfusion_ops::embedding", "CPU")
    if _toolkit_present():
        # the build found nvcc, so the CUDA kernels must have been compiled and registered
        assert compiled_with_cuda()
        assert has_cuda_kernels()
        for op in ("embedding_dense_backward", "embedding_sparse_backward", "multi_embedding"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"vecfusion_ops::{op}", "CUDA")
    else:
        assert compiled_with_cuda() == has_cuda_kernels()


OPTIONS = list(
    itertools.product(
        [None, 0, -1],  # padding_idx (negative counts from the end)
        [None, 1.0],  # max_norm
        [False, True],  # scale_grad_by_freq
        [False, True],  # sparse
    )
)


@pytest.mark.parametrize("shape", ["1d", "2d", "empty"])
@pytest.mark.parametrize("idx_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("padding_idx,max_norm,scale,sparse", OPTIONS)
def test_equals_nn_embedding(shape, idx_dtype, padding_idx, max_norm, scale, sparse) -> None:
    kw = dict(padding_idx=padding_idx, max_norm=max_norm, scale_grad_by_freq=scale, sparse=sparse)
    ref, fast = _pair(**kw)
    if sparse and scale:
        # nn.Embedding refuses this combination; FastEmbedding supports it: compare to dense
        ref, _ = _pair(**{**kw, "sparse": False})
    assert torch.equal(ref.weight, fast.weight)
    x = _indices(shape, idx_dtype)
    out_r, out_f = ref(x), fast(x)
    assert out_f.shape == (*x.shape, DIM)
    assert torch.equal(out_f, out_r)
    # max_norm renormalized the looked-up rows of the weight in place, like nn.Embedding
    # (the norms from ATen's reduction, the scale rounded as torch rounds it: bit for bit)
    assert torch.equal(fast.weight.detach(), ref.weight.detach())
    if max_norm is not None and x.numel():
        assert fast.weight.detach()[x.long().unique()].norm(dim=1).max() <= max_norm + 1e-5
    upstream = torch.randn(out_r.shape, generator=torch.Generator().manual_seed(3))
    (out_r * upstream).sum().backward()
    (out_f * upstream).sum().backward()
    assert fast.weight.grad.is_sparse == sparse
    if not sparse:  # dense: the same additions in the same order (1/count as a fused multiply-add)
        assert torch.equal(fast.weight.grad, ref.weight.grad)
    torch.testing.assert_close(_dense(fast.weight.grad), _dense(ref.weight.grad), rtol=1e-6, atol=1e-6)
    if padding_idx is not None:
        assert not _dense(fast.weight.grad)[fast.padding_idx].any()


def _layouts(g: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same gradient values in the layouts autograd hands a backward."""
    n, d = g.shape
    wide = torch.zeros(n, d + 5, dtype=g.dtype)
    wide[:, 2 : 2 + d] = g
    return {
        "contiguous": g,
        "column-major": g.t().contiguous().t(),
        "row stride > dim": wide[:, 2 : 2 + d],
        "expanded row": g[:1].expand(n, d),
        "expanded scalar": g[0, 0].expand(n, d),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("scale", [False, True])
def test_dense_backward_reads_any_gradient_layout(dtype, scale) -> None:
    """The backward reads strided and expanded gradients where they lie (no copy): the
    result equals ATen's embedding_dense_backward on a contiguous copy, bit for bit."""
    from vecfusion.torch._ops import ops

    g = torch.Generator().manual_seed(11)
    for dim in (1, 2, 3, 4, 8, 16, 24, 33, 64, 300):  # vector widths and others
        idx = torch.randint(0, 50, (70,), generator=g)
        idx[:5] = 7
        grad = torch.randn(70, dim, generator=g).to(dtype)
        for name, lay in _layouts(grad).items():
            got = ops.embedding_dense_backward(lay, idx, 50, 3, scale)
            assert torch.equal(got, ops.embedding_dense_backward(lay.contiguous(), idx, 50, 3, scale)), (dim, name)
            if dtype != torch.bfloat16:  # (ATen accumulates bf16 gradients in bf16; ours in fp32)
                want = torch.ops.aten.embedding_dense_backward(lay.contiguous(), idx, 50, 3, scale)
                assert torch.equal(got, want), (dim, name)
    # the gradient of out.sum() / out.mean() through the layer (an expanded scalar)
    ref, fast = _pair()
    x = _indices("2d", torch.int64)
    ref(x).mean().backward()
    fast(x).mean().backward()
    assert torch.equal(fast.weight.grad, ref.weight.grad)


@pytest.mark.parametrize("padding_idx", [None, 3])
def test_sparse_gradient_of_any_layout_equals_nn(padding_idx) -> None:
    """The sparse gradient has nn.Embedding's entries (indices and values) for gradients in
    every layout, e.g. the expanded one of out.sum() (taken as a view, as nn does)."""
    x = _indices("2d", torch.int64)
    x[0, 0] = 3
    for name in _layouts(torch.zeros(x.numel(), DIM)):
        torch.manual_seed(0)
        ref = nn.Embedding(NUM, DIM, padding_idx=padding_idx, sparse=True)
        fast = FastEmbedding(NUM, DIM, padding_idx=padding_idx, sparse=True)
        fast.load_state_dict(ref.state_dict())
        g = torch.randn(x.numel(), DIM, generator=torch.Generator().manual_seed(1))
        up = _layouts(g)[name].reshape(*x.shape, DIM)
        ref(x).backward(up)
        fast(x).backward(up)
        gr, gf = ref.weight.grad, fast.weight.grad
        assert gf.is_sparse and torch.equal(gf._indices(), gr._indices()), name
        assert torch.equal(gf._values(), gr._values()), name


def test_multi_backward_reads_any_gradient_layout() -> None:
    from vecfusion.torch._ops import ops

    multi = FastMultiEmbedding(NUMS, DIMS)
    x = _multi_input(40, torch.int64)
    out = multi(x)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
    for name, lay in _layouts(grad).items():
        multi.weight.grad = None
        multi(x).backward(lay)
        got = multi.weight.grad.clone()
        multi.weight.grad = None
        multi(x).backward(lay.contiguous())
        assert torch.equal(got, multi.weight.grad), name
    # separate tables agree for the expanded case too
    torch.manual_seed(5)
    tables = [nn.Embedding(n, d) for n, d in zip(NUMS, DIMS)]
    torch.manual_seed(5)
    multi = FastMultiEmbedding(NUMS, DIMS)
    torch.cat([tab(x[:, t]) for t, tab in enumerate(tables)], dim=1).sum().backward()
    multi(x).sum().backward()
    for t, tab in enumerate(tables):
        n, d = NUMS[t], DIMS[t]
        off = multi._offsets[t]
        assert torch.equal(multi.weight.grad[off : off + n * d].view(n, d), tab.weight.grad)


@pytest.mark.parametrize(
    "dtype,tol",
    [(torch.float32, 1e-6), (torch.float64, 1e-12), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)],
)
@pytest.mark.parametrize("sparse", [False, True])
def test_dtypes(dtype, tol, sparse) -> None:
    ref, fast = _pair(dtype=dtype, padding_idx=2, sparse=sparse)
    x = _indices("1d", torch.int64)
    out_r, out_f = ref(x), fast(x)
    assert out_f.dtype == dtype
    assert torch.equal(out_f, out_r)
    up = torch.randn(out_r.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    (out_r * up).sum().backward()
    (out_f * up).sum().backward()
    assert fast.weight.grad.dtype == dtype
    # fp16/bf16 accumulate in fp32 here, nn.Embedding in the low precision: compare to fp64
    exact = torch.zeros(NUM, DIM, dtype=torch.float64).index_add_(0, x, up.double())
    exact[2] = 0
    torch.testing.assert_close(_dense(fast.weight.grad).double(), exact, rtol=tol, atol=tol)
    torch.testing.assert_close(_dense(ref.weight.grad).double(), exact, rtol=4 * tol, atol=4 * tol)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, 0.5, 0.0, float("inf"), float("-inf")])
@pytest.mark.parametrize(
    "dtype,dim", [(torch.float32, 64), (torch.float32, 300), (torch.float64, 33), (torch.float16, 8), (torch.bfloat16, 8)]
)
def test_max_norm_every_norm_type_bit_for_bit(norm_type, dtype, dim) -> None:
    """p = 0 counts non-zeros and -inf is the smallest |x|, as in torch; every value is
    nn.Embedding's bit for bit, fp16/bf16 included; a non-contiguous weight works too."""
    g = torch.Generator().manual_seed(11)
    w = torch.randn(40, dim, generator=g).to(dtype)
    w[3, ::2] = 0  # zeros matter for p = 0 and -inf
    x = torch.randint(0, 40, (100,), generator=g)
    ref = nn.Embedding.from_pretrained(w.clone(), max_norm=1.0, norm_type=norm_type)
    fast = FastEmbedding.from_pretrained(w.clone(), max_norm=1.0, norm_type=norm_type)
    assert torch.equal(fast(x), ref(x))
    assert torch.equal(fast.weight, ref.weight)
    wt = w.t().contiguous().t()  # same values, column-major
    ref = nn.Embedding(40, dim, _weight=wt.clone(), max_norm=1.0, norm_type=norm_type)
    fast = FastEmbedding(40, dim, _weight=wt.clone(), max_norm=1.0, norm_type=norm_type)
    assert not fast.weight.is_contiguous()
    assert torch.equal(fast(x), ref(x)) and torch.equal(fast.weight, ref.weight)


def test_double_backward() -> None:
    """The backward is differentiable (gradgradcheck), as nn.Embedding's; with
    scale_grad_by_freq the second derivative includes the 1/count that torch's leaves out
    (torch's own gradgradcheck fails there)."""
    x = torch.tensor([[1, 2, 2], [5, 1, 0]])
    for pad, scale in ((-1, False), (2, False), (-1, True), (5, True)):
        w = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradgradcheck(lambda w: ops.embedding(w, x, pad, scale, False), (w,))
        if not scale:
            out_f = ops.embedding(w, x, pad, False, False)
            out_r = nn.functional.embedding(x, w, padding_idx=None if pad < 0 else pad)
            gg = torch.randn(out_f.shape, dtype=torch.float64, requires_grad=True)
            (gf,) = torch.autograd.grad(out_f, w, gg, create_graph=True)
            (gr,) = torch.autograd.grad(out_r, w, gg, create_graph=True)
            v = torch.randn_like(gf)
            assert torch.equal(torch.autograd.grad((gf * v).sum(), gg)[0], torch.autograd.grad((gr * v).sum(), gg)[0])
    m = FastMultiEmbedding([4, 7, 3], [2, 1, 3], dtype=torch.float64)
    xm = torch.tensor([[0, 6, 2], [3, 6, 1], [0, 0, 2]])
    wm = m.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda w: ops.multi_embedding(w, xm, m.table_meta, m.total_dim), (wm,))


def test_sparse_gradient_is_differentiable() -> None:
    """A sparse gradient with padding_idx or scale_grad_by_freq comes from the extension's
    own sparse backward: differentiating through it (a gradient penalty) gave a silent zero
    with a warning (the autograd fallback of an op without an autograd kernel). Now its
    second derivative equals the dense layer's, and the op passes gradgradcheck."""
    x = torch.tensor([[1, 1, 2], [0, 5, 1]])
    w = torch.randn(6, 3, dtype=torch.float64)
    for pad in (None, 1):
        for scale in (False, True):
            second = {}
            for sparse in (False, True):
                e = FastEmbedding(6, 3, _weight=w.clone(), padding_idx=pad, scale_grad_by_freq=scale,
                                  sparse=sparse, dtype=torch.float64)
                (gw,) = torch.autograd.grad((e(x) ** 3).sum(), e.weight, create_graph=True)
                (_dense(gw) ** 2).sum().backward()
                second[sparse] = _dense(e.weight.grad)
            assert second[True].abs().sum() > 0
            torch.testing.assert_close(second[True], second[False], rtol=1e-12, atol=1e-12)
    g = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    for pad in (-1, 1):
        for scale in (False, True):
            def values(g: torch.Tensor, pad: int = pad, scale: bool = scale) -> torch.Tensor:
                return ops.embedding_sparse_backward(g, x, 6, pad, scale)[1]

            assert torch.autograd.gradcheck(values, (g,)) and torch.autograd.gradgradcheck(values, (g,))


def test_padding_idx_set_after_construction() -> None:
    ref, fast = _pair()
    ref.padding_idx = fast.padding_idx = -1  # counts from the end, as in F.embedding
    x = torch.tensor([1, NUM - 1, NUM - 1, 8])
    ref(x).sum().backward()
    fast(x).sum().backward()
    assert torch.equal(fast.weight.grad, ref.weight.grad) and not fast.weight.grad[NUM - 1].any()
    for bad in (NUM, -NUM - 1):
        fast.padding_idx = bad
        with pytest.raises(AssertionError, match="Padding_idx must be within num_embeddings"):
            fast(x)
    # checked before max_norm's renorm, as F.embedding does: the failing call changes nothing
    fast.max_norm = 1e-3
    before, version = fast.weight.detach().clone(), fast.weight._version
    with pytest.raises(AssertionError, match="Padding_idx"):
        fast(x)
    assert torch.equal(fast.weight, before) and fast.weight._version == version


def test_half_accumulates_in_fp32() -> None:
    # 3000 gradients of 0.1 on one row: fp32 accumulation gives ~300 (fp16 adding one at a
    # time would stall at 256 because of rounding)
    w = torch.zeros(4, 3, dtype=torch.float16, requires_grad=True)
    x = torch.zeros(3000, dtype=torch.long)
    out = ops.embedding(w, x, -1, False, False)
    out.backward(torch.full_like(out, 0.1))
    assert abs(float(w.grad[0, 0]) - 300.0) < 0.5


def test_sparse_backward_entries() -> None:
    x = torch.tensor([[7, 2, 7], [0, 2, 9]])
    g = torch.randn(2, 3, DIM, dtype=torch.float64)
    rows, values = ops.embedding_sparse_backward(g, x, NUM, 9, True)
    # one entry per index as nn.Embedding makes them, padding row 9 left out, 1/count scaling
    assert rows.tolist() == [7, 2, 7, 0, 2]
    torch.testing.assert_close(values, torch.stack([g[0, 0] / 2, g[0, 1] / 2, g[0, 2] / 2, g[1, 0], g[1, 1] / 2]))


def test_gradcheck_float64() -> None:
    w = torch.randn(NUM, DIM, dtype=torch.float64, requires_grad=True)
    x = _indices("2d", torch.int64)
    # padding_idx and scale_grad_by_freq change the gradient on purpose: checked against
    # nn.Embedding above; here the true Jacobian of the lookup, with repeated rows
    for xi in (x, x.int()):
        assert torch.autograd.gradcheck(lambda w: ops.embedding(w, xi, -1, False, False), (w,))
    m = FastMultiEmbedding([4, 7, 3], [2, 1, 3], dtype=torch.float64)
    xm = torch.tensor([[0, 6, 2], [3, 6, 1], [0, 0, 2]])
    wm = m.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w: ops.multi_embedding(w, xm, m.table_meta, m.total_dim), (wm,))


# opcheck's aot_dispatch test itself reads .grad of a non-leaf tensor (a torch-internal warning)
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_opcheck() -> None:
    w = torch.randn(NUM, DIM, requires_grad=True)
    x = _indices("2d", torch.int64)
    torch.library.opcheck(ops.embedding, (w, x, -1, False, False))
    torch.library.opcheck(ops.embedding, (w, x.int(), 2, True, False))
    g = torch.randn(*x.shape, DIM)
    torch.library.opcheck(ops.embedding_dense_backward, (g, x, NUM, -1, True))
    # without a padding row among the indices too (then nothing is filtered: the outputs were
    # views of the inputs, against the schema), and with scale_grad_by_freq
    for padding, scale in ((1, False), (-1, False), (-1, True), (NUM - 1, True)):
        torch.library.opcheck(
            ops.embedding_sparse_backward, (g, x, NUM, padding, scale), test_utils=("test_schema", "test_faketensor")
        )
    torch.library.opcheck(ops.embedding_renorm_, (w.detach().clone(), x, 1.0, 2.0))
    m = FastMultiEmbedding([4, 7], [2, 3])
    xm = torch.tensor([[0, 6], [3, 5]])
    torch.library.opcheck(ops.multi_embedding, (m.weight, xm, m.table_meta, m.total_dim))


def test_backward_ops_refuse_indices_out_of_range() -> None:
    """The backward ops called directly with an index beyond the table: an IndexError where
    scale_grad_by_freq counted the rows by it (a segfault) and from the sparse gradient (which
    returned it). (The layers check indices in the forward.)"""
    g = torch.ones(2, 3)
    for bad in (torch.tensor([1, 10**12]), torch.tensor([1, 5]), torch.tensor([-1, 2]), torch.tensor([1, 5], dtype=torch.int32)):
        with pytest.raises(IndexError, match="out of range"):
            ops.embedding_dense_backward(g, bad, 5, -1, True)
        for scale in (False, True):
            with pytest.raises(IndexError, match="out of range"):
                ops.embedding_sparse_backward(g, bad, 5, -1, scale)
    # in range: nn.Embedding's gradient
    ok = torch.tensor([4, 0])
    want = torch.ops.aten.embedding_dense_backward(g, ok, 5, -1, True)
    torch.testing.assert_close(ops.embedding_dense_backward(g, ok, 5, -1, True), want)


def test_torch_compile_forward_backward() -> None:
    ref, fast = _pair(padding_idx=1, scale_grad_by_freq=True)
    x = _indices("2d", torch.int64)
    compiled = torch.compile(fast, backend="aot_eager", fullgraph=True)
    out = compiled(x)
    torch.testing.assert_close(out, ref(x))
    out.sum().backward()
    ref(x).sum().backward()
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad)


@pytest.mark.parametrize("padding_idx", [-1, 3])
def test_sparse_op_equals_nn_embedding(padding_idx: int) -> None:
    """The C++ op's sparse gradient (what FastEmbedding(sparse=True) uses on CUDA; on CPU the
    layer is F.embedding itself) equals nn.Embedding's."""
    torch.manual_seed(0)
    w = torch.randn(20, 8, requires_grad=True)
    ref = w.detach().clone().requires_grad_()
    x = torch.tensor([[1, 3, 3], [0, 19, 3]])
    up = torch.randn(2, 3, 8)
    (ops.embedding(w, x, padding_idx, False, True) * up).sum().backward()
    nn_pad = None if padding_idx < 0 else padding_idx
    (torch.nn.functional.embedding(x, ref, padding_idx=nn_pad, sparse=True) * up).sum().backward()
    assert w.grad.is_sparse
    torch.testing.assert_close(w.grad.to_dense(), ref.grad.to_dense(), rtol=0, atol=0)


def test_torch_compile_sparse_without_padding_needs_no_graph_break() -> None:
    """The sparse backward's fake kernel gave a data-dependent size even without a padding
    row (where it is the number of indices): the default torch.compile (aot autograd without
    dynamic output shapes) broke the graph there. With a padding row the size depends on the
    data, and the graph breaks as nn.Embedding's does (its aten.nonzero)."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    fast = FastEmbedding.from_pretrained(torch.randn(10, 4), freeze=False, sparse=True, scale_grad_by_freq=True)
    ref = nn.Embedding.from_pretrained(fast.weight.detach().clone(), freeze=False, scale_grad_by_freq=True)
    x = torch.tensor([[1, 2, 2], [3, 1, 0]])
    torch._dynamo.reset()
    counters.clear()
    torch.compile(fast, backend="aot_eager")(x).sum().backward()
    assert not counters["unimplemented"] and not counters["graph_break"], dict(counters)
    assert counters["aot_autograd"]["ok"] == 1
    ref(x).sum().backward()
    assert fast.weight.grad.is_sparse
    torch.testing.assert_close(fast.weight.grad.to_dense(), ref.weight.grad, rtol=0, atol=0)


def test_torch_compile_sparse_with_a_changing_batch() -> None:
    """A second batch size makes dynamo recompile with a symbolic batch; the C++ sparse
    backward asked for concrete sizes ("Cannot call numel() on tensor with symbolic sizes").
    Both of its branches: the op called directly (no padding, no scale: FastEmbedding's CUDA
    path) and the layer with scale_grad_by_freq (against nn.Embedding's dense gradient, as
    nn.Embedding refuses a sparse one with it)."""
    torch.manual_seed(0)
    w = torch.randn(20, 8, requires_grad=True)
    direct = torch.compile(lambda x: ops.embedding(w, x, -1, False, True).sum(), backend="aot_eager")
    fast = FastEmbedding(20, 8, sparse=True, scale_grad_by_freq=True)
    ref = nn.Embedding(20, 8, scale_grad_by_freq=True)
    ref.weight.data.copy_(fast.weight.data)
    layer = torch.compile(lambda x: (fast(x) ** 2).sum(), backend="aot_eager")
    for b in (4, 7, 9):
        x = torch.randint(0, 20, (b,))
        w.grad = fast.weight.grad = ref.weight.grad = None
        direct(x).backward()
        want = torch.zeros(20, 8).index_add_(0, x, torch.ones(b, 8))
        torch.testing.assert_close(w.grad.to_dense(), want)
        layer(x).backward()
        (ref(x) ** 2).sum().backward()
        assert fast.weight.grad.is_sparse
        torch.testing.assert_close(fast.weight.grad.to_dense(), ref.weight.grad)


@pytest.mark.parametrize("multi", [False, True])
def test_max_norm_bumps_the_weight_version_as_nn_embedding(multi: bool) -> None:
    """max_norm rewrites rows of the weight in place: like nn.Embedding, the weight's version
    goes up, so a backward through a graph that saved the weight before the renorm (tied
    weights: h @ weight.t() and a lookup in one step) raises instead of using the new values."""
    torch.manual_seed(0)
    if multi:
        layer = FastMultiEmbedding([3, 4], [5, 2], max_norm=1.0)
        x = torch.tensor([[1, 2], [2, 3]])
    else:
        layer = FastEmbedding(3, 5, max_norm=1.0)
        x = torch.tensor([1, 2])
    ref = nn.Embedding(3, 5, max_norm=1.0)
    for module, idx in ((layer, x), (ref, torch.tensor([1, 2]))):
        with torch.no_grad():
            module.weight.mul_(10)  # every row beyond max_norm
        saved = module.weight * module.weight  # the product saves the weight for its backward
        before = module.weight._version
        out = module(idx)
        assert module.weight._version > before
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            (saved.sum() + out.sum()).backward()


def test_non_tensor_input_is_a_type_error_as_nn_embedding() -> None:
    fast, multi = FastEmbedding(5, 3), FastMultiEmbedding([5], [3])
    for module, x in ((nn.Embedding(5, 3), [1, 2]), (fast, [1, 2]), (multi, [[1]])):
        with pytest.raises(TypeError, match="must be Tensor, not list"):
            module(x)


@pytest.mark.parametrize("bad", [NUM, -1, 10**9])
def test_out_of_range_raises_index_error(bad) -> None:
    fast = FastEmbedding(NUM, DIM)
    with pytest.raises(IndexError, match="out of range"):
        fast(torch.tensor([0, bad]))
    with pytest.raises(IndexError):
        FastEmbedding(NUM, DIM, max_norm=1.0)(torch.tensor([bad]))
    m = FastMultiEmbedding([3, 5], [2, 2])
    with pytest.raises(IndexError, match="table 1"):
        m(torch.tensor([[0, 0], [2, 5 if bad == NUM else bad]]))


def test_other_index_and_weight_dtypes_behave_as_nn_embedding() -> None:
    ref, fast = _pair()
    for bad in (torch.tensor([0.0, 1.0]), torch.tensor([0, 1], dtype=torch.uint8), torch.tensor([True, False])):
        with pytest.raises(RuntimeError) as want:
            ref(bad)
        with pytest.raises(RuntimeError) as got:
            fast(bad)
        assert str(got.value) == str(want.value)
    w = torch.arange(6).view(3, 2)  # integer weights: a lookup table, as nn.Embedding allows
    x = torch.tensor([2, 0])
    assert torch.equal(FastEmbedding.from_pretrained(w)(x), nn.Embedding.from_pretrained(w)(x))
    # the op itself says what it takes
    with pytest.raises(TypeError, match="int32 or int64"):
        ops.embedding(fast.weight, torch.tensor([0.0, 1.0]), -1, False, False)


def test_state_dict_interchangeable() -> None:
    ref, fast = _pair(padding_idx=0)
    assert list(fast.state_dict()) == list(ref.state_dict()) == ["weight"]
    other = nn.Embedding(NUM, DIM, padding_idx=0)
    other.load_state_dict(fast.state_dict())
    assert torch.equal(other.weight, fast.weight)
    f2 = FastEmbedding(NUM, DIM)
    f2.load_state_dict(ref.state_dict())
    assert torch.equal(f2.weight, ref.weight)
    assert isinstance(fast, nn.Embedding)
    assert repr(fast) == repr(ref).replace("Embedding", "FastEmbedding")


def test_from_pretrained_tensor() -> None:
    w = torch.randn(NUM, DIM)
    fast = FastEmbedding.from_pretrained(w, padding_idx=-2)
    ref = nn.Embedding.from_pretrained(w, padding_idx=-2)
    assert not fast.weight.requires_grad and fast.padding_idx == ref.padding_idx == NUM - 2
    x = _indices("1d", torch.int64)
    assert torch.equal(fast(x), ref(x))
    assert FastEmbedding.from_pretrained(w, freeze=False).weight.requires_grad
    with pytest.raises(TypeError):
        FastEmbedding.from_pretrained([[1.0]])


def test_from_pretrained_finalfusion(ff: Path) -> None:
    emb = vf.load(ff / "python" / "similarity.fifu", mmap=True)
    fast = FastEmbedding.from_pretrained(emb)
    words = ["Berlin", "Potsdam", "Bonn"]
    rows = torch.tensor([emb.vocab.index(w) for w in words])
    np.testing.assert_array_equal(fast(rows).numpy(), emb.lookup(words)[0])
    q = vf.load(ff / "python" / "pq.fifu")
    fq = FastEmbedding.from_pretrained(q)
    assert tuple(fq.weight.shape) == q.storage.shape
    np.testing.assert_array_equal(fq(rows).numpy(), q.storage.reconstruct(rows.numpy()))
    np.testing.assert_array_equal(fq(rows).numpy(), q.lookup(words)[0])


# ---------------------------------------------------------------- FastMultiEmbedding

NUMS, DIMS = [5, 9, 1, 17], [3, 1, 4, 2]


def _multi_input(batch: int, dtype=torch.int64) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    cols = [torch.randint(0, n, (batch,), generator=g) for n in NUMS]
    x = torch.stack(cols, dim=1)
    if batch > 2:
        x[:3] = x[0]  # repeated rows
    return x.to(dtype)


@pytest.mark.parametrize("idx_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("batch", [0, 1, 40])
def test_multi_equals_separate_tables(idx_dtype, batch) -> None:
    torch.manual_seed(5)
    tables = [nn.Embedding(n, d) for n, d in zip(NUMS, DIMS)]
    torch.manual_seed(5)
    multi = FastMultiEmbedding(NUMS, DIMS)
    # same seed, same initialization, no padding between tables
    assert multi.weight.shape == (sum(n * d for n, d in zip(NUMS, DIMS)),)
    for t, tab in enumerate(tables):
        assert torch.equal(multi.table(t), tab.weight)
    x = _multi_input(batch, idx_dtype)
    ref = torch.cat([tab(x[:, t]) for t, tab in enumerate(tables)], dim=1)
    out = multi(x)
    assert out.shape == (batch, sum(DIMS))
    assert torch.equal(out, ref)
    up = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2))
    (ref * up).sum().backward()
    (out * up).sum().backward()
    for t, tab in enumerate(tables):
        n, d = NUMS[t], DIMS[t]
        off = multi._offsets[t]
        torch.testing.assert_close(multi.weight.grad[off : off + n * d].view(n, d), tab.weight.grad)


def test_multi_table_with_no_rows() -> None:
    """A 0-row table is allowed, as nn.Embedding(0, d); any index into it is out of range."""
    m = FastMultiEmbedding([0, 3], [2, 2])
    assert m.weight.shape == (6,)
    assert m(torch.zeros((0, 2), dtype=torch.long)).shape == (0, 4)
    with pytest.raises(IndexError, match="table 0 with 0 rows"):
        m(torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="must not be negative"):
        FastMultiEmbedding([-1, 3], [2, 2])


def test_multi_from_pretrained_and_dtypes() -> None:
    tabs = [torch.randn(n, d, dtype=torch.float64) for n, d in zip(NUMS, DIMS)]
    m = FastMultiEmbedding.from_pretrained(tabs)
    assert not m.weight.requires_grad and m.weight.dtype == torch.float64
    x = _multi_input(10)
    assert torch.equal(m(x), torch.cat([tabs[t][x[:, t]] for t in range(len(tabs))], 1))
    h = FastMultiEmbedding(NUMS, DIMS, dtype=torch.bfloat16)
    out = h(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert h.weight.grad.dtype == torch.bfloat16
    with pytest.raises(ValueError):
        FastMultiEmbedding([3], [2, 2])
    with pytest.raises(ValueError):
        m(x[:, 0])


# ---------------------------------------------------------------- SubwordEmbeddingBag


def _bucket_embeddings(normalized: bool) -> vf.Embeddings:
    rng = np.random.default_rng(4)
    words = ["one", "two", "three", "tübingen"]
    mat = rng.normal(size=(len(words) + 2**10, 6)).astype(np.float32) * 3
    if normalized:
        mat[: len(words)] /= np.linalg.norm(mat[: len(words)], axis=1, keepdims=True)
    return vf.Embeddings(words, mat, vocab="bucket", buckets=10)


QUERY = ["one", "tübingen", "Tübingen", "unknownword", "x", "", "one", "zwei"]


def test_indices_batch_matches_vocab() -> None:
    emb = _bucket_embeddings(False)
    rows, offsets, known = emb.vocab.indices_batch(QUERY)
    assert rows.dtype == np.int64 and offsets.dtype == np.int64 and known.dtype == np.bool_
    assert len(offsets) == len(QUERY) + 1
    for i, w in enumerate(QUERY):
        idx = emb.vocab.index(w)
        got = rows[offsets[i] : offsets[i + 1]].tolist()
        if isinstance(idx, int):
            assert known[i] and got == [idx]
        else:
            assert not known[i] and got == emb.vocab.subword_indices(w) == (idx or [])
    with pytest.raises(TypeError):
        emb.vocab.indices_batch("one")


@pytest.mark.parametrize("normalized", [False, True])
def test_bag_equals_lookup(normalized) -> None:
    emb = _bucket_embeddings(normalized)
    bag = SubwordEmbeddingBag.from_embeddings(emb)
    out = bag(QUERY)
    ref, found = emb.lookup(QUERY)
    np.testing.assert_array_equal(out.detach().numpy(), ref)
    assert not found[QUERY.index("")]  # no n-grams: zero row
    assert not out[QUERY.index("")].any()


@pytest.mark.parametrize("scale", [1.0, 1e20, 1e-25])
def test_bag_equals_lookup_bit_for_bit_at_300_dims(scale: float) -> None:
    """torch's vector norm adds the squares in another order than the Rust core: a third of
    the unknown words at 300 dims were 1-2 ulp off emb.lookup; and rows near 1e20 (the sum of
    squares overflows) came out zero, rows near 1e-25 (it underflows) unnormalized. The
    gradient is still that of sum / norm."""
    rng = np.random.default_rng(4)
    words = [f"w{i}" for i in range(50)]
    m = (rng.standard_normal((50 + 2**8, 300)) * scale).astype(np.float32)
    emb = vf.Embeddings(words, m, vocab="bucket", buckets=8)
    bag = SubwordEmbeddingBag.from_embeddings(emb)
    query = ["".join(rng.choice(list("abcdefghij"), rng.integers(1, 12))) + "q" for _ in range(300)] + words[:5]
    out = bag(query)
    ref, found = emb.lookup(query)
    assert found.all()
    np.testing.assert_array_equal(out.detach().numpy(), ref)
    up = torch.from_numpy(rng.standard_normal(out.shape).astype(np.float32))
    (out * up).sum().backward()
    w = bag.weight.detach().clone().requires_grad_(True)
    sums = torch.stack([w[torch.tensor(emb.vocab.subword_indices(q))].sum(0) for q in query[:300]])
    ref_out = sums / (sums.double().norm(dim=1, keepdim=True)).float()
    (ref_out * up[:300]).sum().backward()
    torch.testing.assert_close(bag.weight.grad[50:], w.grad[50:], rtol=1e-4, atol=1e-6 / scale)


def test_bag_under_torch_func_and_with_array_token_lists() -> None:
    """torch.func's grad runs the layer on tensors without storage (the exact-values step read
    them through numpy and failed); token lists may be any sized iterable of str."""
    from torch.func import functional_call, grad

    emb = _bucket_embeddings(False)
    bag = SubwordEmbeddingBag.from_embeddings(emb)
    words = ["two", "unknownword", "xyz"]
    w = bag.weight.detach().clone()
    g = grad(lambda p: functional_call(bag, p, (words,)).pow(2).sum())({"weight": w})["weight"]
    w.requires_grad_(True)
    bag.weight.grad = None
    bag(words).pow(2).sum().backward()
    torch.testing.assert_close(g, bag.weight.grad)
    out = bag([np.array(["one", "tübingen"]), ("zwei",)])
    np.testing.assert_array_equal(out[0].detach().numpy(), emb.lookup(["one", "tübingen"])[0])


def test_bag_golden_files(ff: Path) -> None:
    for name in ["ff_buckets.fifu", "similarity.fifu", "pq.fifu"]:
        emb = vf.load(ff / "python" / name)
        words = emb.vocab.words[:3] + ["tübingen", "Berlinn", ""]
        bag = SubwordEmbeddingBag.from_embeddings(emb, trainable=False)
        assert not bag.weight.requires_grad
        ref, _ = emb.lookup(words)
        np.testing.assert_array_equal(bag(words).numpy(), ref)


def test_bag_gradients_flow_to_word_and_ngram_rows() -> None:
    emb = _bucket_embeddings(False)
    bag = SubwordEmbeddingBag.from_embeddings(emb)
    words = ["two", "unknownword", "two"]
    up = torch.randn(len(words), 6, generator=torch.Generator().manual_seed(9))
    (bag(words) * up).sum().backward()
    # reference: the same function written with plain torch ops on a copy of the weight
    w = bag.weight.detach().clone().requires_grad_(True)
    outs = []
    for word in words:
        idx = emb.vocab.index(word)
        if isinstance(idx, int):
            outs.append(w[idx])
        else:
            s = w[torch.tensor(idx)].sum(0)
            outs.append(s / s.norm())
    (torch.stack(outs) * up).sum().backward()
    torch.testing.assert_close(bag.weight.grad, w.grad)
    touched = set(np.flatnonzero(bag.weight.grad.abs().sum(1).numpy()).tolist())
    expected = {emb.vocab.index("two"), *emb.vocab.subword_indices("unknownword")}
    assert touched == expected


def test_bag_token_lists() -> None:
    emb = _bucket_embeddings(False)
    bag = SubwordEmbeddingBag.from_embeddings(emb)
    batch = [["one", "tübingen"], [], ["zwei", "one", "x"]]
    out = bag(batch)
    assert out.shape == (3, 3, 6)
    for b, toks in enumerate(batch):
        if toks:
            np.testing.assert_array_equal(out[b, : len(toks)].detach().numpy(), emb.lookup(toks)[0])
        assert not out[b, len(toks) :].any()
    with pytest.raises(TypeError):
        bag("one")
    with pytest.raises(TypeError, match="not a mix"):
        bag([["one"], "two"])  # a bare str among token lists is not a list of characters
    # bytes or None are neither words nor token lists (bytes read as lists of ints)
    with pytest.raises(TypeError, match=r"got bytes \(decode bytes to str\)"):
        bag([b"one"])
    with pytest.raises(TypeError, match="got NoneType"):
        bag([None])


def test_bag_zero_sum_has_a_finite_gradient() -> None:
    """An unknown word whose n-gram rows are all zero embeds to zero (never NaN) and its
    gradient is finite: the normalization is the identity at zero, so zero rows learn."""
    emb = _bucket_embeddings(False)
    bag = SubwordEmbeddingBag.from_embeddings(emb)
    with torch.no_grad():
        bag.weight[len(emb):] = 0
    out = bag(["zzzqqq"] * 4)
    assert not out.any()
    out.sum().backward()
    grad = bag.weight.grad
    assert torch.isfinite(grad).all()
    rows = emb.vocab.subword_indices("zzzqqq")
    counts = torch.bincount(torch.tensor(rows), minlength=grad.shape[0]).to(grad.dtype)
    torch.testing.assert_close(grad, 4 * counts.unsqueeze(1).expand_as(grad))


def test_bag_copies_and_pickles_with_its_vocabulary_only(tmp_path: Path) -> None:
    import copy

    emb = _bucket_embeddings(False)
    bag = SubwordEmbeddingBag.from_embeddings(emb)
    words = ["one", "tübingen", "", "xyz", "two"]
    want = bag(words)
    assert torch.equal(copy.deepcopy(bag)(words), want)
    torch.save(bag, tmp_path / "bag.pt")
    assert torch.equal(torch.load(tmp_path / "bag.pt", weights_only=False)(words), want)
    # the layer holds (and pickles) the vocabulary alone, not the embeddings' matrix
    import pickle

    assert bag.vocab.rows == emb.vocab.rows and bag.vocab.words == emb.vocab.words
    assert len(pickle.dumps(bag.vocab)) < 200 + emb.vocab.rows * 8 < emb.storage.nbytes


# ---------------------------------------------------------------- CUDA (run whenever a GPU is present)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("padding_idx,max_norm,scale,sparse", OPTIONS)
def test_cuda_equals_nn_embedding(dtype, padding_idx, max_norm, scale, sparse) -> None:
    kw = dict(padding_idx=padding_idx, max_norm=max_norm, scale_grad_by_freq=scale, sparse=sparse)
    ref, fast = _pair(dtype=dtype, **kw)
    ref, fast = ref.cuda(), fast.cuda()
    g = torch.Generator().manual_seed(0)
    # hot rows: half the batch on one id, a quarter on the next, ...
    x = torch.cat([torch.full((2**k,), k % NUM) for k in range(9)] + [torch.randint(0, NUM, (300,), generator=g)])
    x = x[torch.randperm(len(x), generator=g)].cuda()
    out_r, out_f = ref(x), fast(x)
    assert torch.equal(out_f, out_r)
    torch.testing.assert_close(fast.weight.detach(), ref.weight.detach())
    up = torch.randn(out_r.shape, generator=g).to(dtype).cuda()
    (out_r * up).sum().backward()
    (out_f * up).sum().backward()
    tol = {torch.float16: 5e-2, torch.bfloat16: 3e-1}.get(dtype, 1e-4)
    torch.testing.assert_close(_dense(fast.weight.grad).double(), _dense(ref.weight.grad).double(), rtol=tol, atol=tol)


@pytest.mark.cuda
@cuda
# opcheck's aot_dispatch test itself reads .grad of a non-leaf tensor (a torch-internal warning)
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_cuda_deterministic_and_multi() -> None:
    ref, fast = _pair(padding_idx=1)
    ref, fast = ref.cuda(), fast.cuda()
    x = torch.randint(0, NUM, (5000,), device="cuda")
    torch.use_deterministic_algorithms(True)
    try:
        grads = []
        for _ in range(2):
            fast.weight.grad = None
            fast(x).sum().backward()
            grads.append(fast.weight.grad.clone())
        assert torch.equal(grads[0], grads[1])
    finally:
        torch.use_deterministic_algorithms(False)
    ref(x).sum().backward()
    torch.testing.assert_close(grads[0], ref.weight.grad)
    torch.manual_seed(5)
    tables = [nn.Embedding(n, d).cuda() for n, d in zip(NUMS, DIMS)]
    torch.manual_seed(5)
    multi = FastMultiEmbedding(NUMS, DIMS).cuda()
    xm = _multi_input(300).cuda()
    ref_out = torch.cat([tab(xm[:, t]) for t, tab in enumerate(tables)], 1)
    assert torch.equal(multi(xm), ref_out)
    multi(xm).sum().backward()
    ref_out.sum().backward()
    for t, tab in enumerate(tables):
        torch.testing.assert_close(multi.table(t).grad if False else multi.weight.grad[multi._offsets[t] : multi._offsets[t] + NUMS[t] * DIMS[t]].view(NUMS[t], DIMS[t]), tab.weight.grad)
    with pytest.raises(IndexError):
        fast(torch.tensor([NUM], device="cuda"))
    torch.library.opcheck(ops.embedding, (fast.weight, x, -1, False, False))


@cuda
def test_cuda_ops_refuse_what_would_fault_the_device() -> None:
    """Checks that keep a bad direct call (or a module fed indices on another device) an
    exception instead of an illegal memory access that breaks the CUDA context."""
    multi = FastMultiEmbedding(NUMS, DIMS).cuda()
    with pytest.raises(ValueError, match="indices on cpu"):
        multi(_multi_input(4))
    w = multi.weight.detach()
    meta = multi.table_meta
    x = _multi_input(4).cuda()
    with pytest.raises(ValueError, match="output columns in all"):
        ops.multi_embedding(w, x, meta, multi.total_dim + 5)
    bad_meta = meta.clone()
    bad_meta[-1, 2] = w.numel()  # the last table past the weight's end
    with pytest.raises(ValueError, match="does not fit"):
        ops.multi_embedding(w, x, bad_meta, multi.total_dim)
    # the backward does not read the layout on the host (that would wait for the device every
    # step): what falls outside the weight is dropped
    g = ops.multi_embedding_backward(torch.ones(4, multi.total_dim, device="cuda"), x, bad_meta, w.numel())
    torch.cuda.synchronize()
    assert g.shape == (w.numel(),) and bool(torch.isfinite(g).all())
    with pytest.raises(ValueError, match="indices on cpu"):
        ops.multi_embedding_backward(torch.ones(4, multi.total_dim, device="cuda"), x.cpu(), meta, w.numel())
    # the dense backward drops an out-of-range row (as on the CPU), the sparse one refuses it
    grad = torch.ones(3, 2, device="cuda")
    idx = torch.tensor([0, 5, -1], device="cuda")
    for scale in (False, True):
        got = ops.embedding_dense_backward(grad, idx, 4, -1, scale)
        assert got.tolist() == [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    with pytest.raises(IndexError):
        ops.embedding_sparse_backward(grad, idx, 4, -1, False)
    # 1-byte floats in rows of odd length: every byte gathered
    if hasattr(torch, "float8_e4m3fn"):
        w8 = torch.randn(9, 3).to(torch.float8_e4m3fn)
        i8 = torch.tensor([8, 0, 4])
        got = ops.embedding(w8.cuda(), i8.cuda(), -1, False, False).cpu()
        assert torch.equal(got.view(torch.uint8), w8[i8].view(torch.uint8))


def test_max_norm_on_a_weight_made_in_inference_mode() -> None:
    """A layer built (or loaded) under torch.inference_mode and used outside it renormalizes
    its weight as nn.Embedding does (the version bump of an inference tensor raised)."""
    idx = torch.tensor([1, 2, 1, 7])
    with torch.inference_mode():
        fast = FastEmbedding(12, 4, max_norm=1.0)
        ref = nn.Embedding(12, 4, max_norm=1.0)
        ref.weight.copy_(fast.weight)
    for grad_mode in (torch.no_grad, torch.enable_grad):
        with grad_mode():
            assert torch.equal(fast(idx), ref(idx))
    assert torch.equal(fast.weight, ref.weight)
    assert float(fast.weight[1].norm()) <= 1.0 + 1e-6


# ---------------------------------------------------------------- threads


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.skipif(
    not (sys.platform.startswith("linux") and "OpenMP" in torch.__config__.parallel_info()),
    reason="the extension is built with OpenMP where torch is (its Linux wheels)",
)
def test_cpu_kernels_run_on_torch_threads(two_threads) -> None:
    """The extension is built with OpenMP: without it ATen's parallel loops in our kernels run
    on the calling thread only, whatever torch.set_num_threads says; with another OpenMP runtime
    than torch's they would not follow torch.set_num_threads."""
    from vecfusion.torch import parallel_threads

    assert parallel_threads() == 2
    torch.set_num_threads(1)
    assert parallel_threads() == 1
    torch.set_num_threads(2)
    assert parallel_threads() == 2


@pytest.fixture
def nan_filled_empty():
    """at::empty fills new tensors with NaN (deterministic mode), so that an element a kernel
    leaves unwritten shows, instead of reading as the zero of fresh pages."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(before, warn_only=warn_only)
    torch.utils.deterministic.fill_uninitialized_memory = fill


def _threads_agree(f) -> None:
    """f() gives the same bits on one thread and on two (each task owns its rows)."""
    torch.set_num_threads(1)
    one = f()
    torch.set_num_threads(2)
    two = f()
    assert torch.equal(one, two)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dense_backward_is_the_same_on_any_thread_count(dtype, two_threads, nan_filled_empty) -> None:
    g = torch.Generator().manual_seed(11)
    cases = [(50_000, 8, 9000), (3000, 64, 700), (7, 3, 5000), (50_000, 8, 100), (20_000, 4, 3)]
    for num, dim, n in cases:
        x = torch.randint(0, num, (n,), generator=g)
        x[: n // 3] = 5 % num  # a hot row
        # small integers: sums exact in float32 whatever the order (float16 accumulates in float32)
        grad = torch.randint(-4, 5, (n, dim), generator=g).to(dtype)
        for padding, scale in [(-1, False), (5 % num, False), (-1, True), (5 % num, True)]:
            got = ops.embedding_dense_backward(grad, x, num, padding, scale)
            w = grad.double()
            if scale:
                w = w / torch.bincount(x, minlength=num).double()[x].unsqueeze(1)
            if padding >= 0:
                w = w * (x != padding).unsqueeze(1)
            ref = torch.zeros(num, dim, dtype=torch.float64).index_add_(0, x, w)
            assert got.dtype == dtype
            torch.testing.assert_close(got.double(), ref.to(dtype).double(), rtol=1e-3, atol=1e-6)
        noisy = torch.randn(n, dim, generator=g).to(dtype)
        _threads_agree(lambda: ops.embedding_dense_backward(noisy, x, num, -1, False))


def _multi_reference(grad: torch.Tensor, x: torch.Tensor, meta: torch.Tensor, numel: int) -> torch.Tensor:
    """Table by table into one zeroed flat gradient (tables may share elements)."""
    out = torch.zeros(numel, dtype=torch.float64)
    for t, (rows, dim, woff, coff) in enumerate(meta.tolist()):
        if rows and dim:
            view = out[woff : woff + rows * dim].view(rows, dim)
            view.index_add_(0, x[:, t], grad[:, coff : coff + dim].double())
    return out


@pytest.mark.parametrize(
    "layout",
    [
        # rows, dim, first weight element, first output column
        "packed",  # as FastMultiEmbedding lays tables out
        "gaps",  # elements outside every table stay zero
        "overlap",  # two tables sharing elements add into them
        "one big table",  # split by rows among threads
        "empty tables",  # tables of no rows or no columns
    ],
)
def test_multi_backward_any_table_layout(layout: str, two_threads, nan_filled_empty) -> None:
    g = torch.Generator().manual_seed(12)
    tables = {
        "packed": ([(300, 4), (20, 9), (4000, 2), (1, 5)], [0, 1200, 1380, 9380], 9385),
        "gaps": ([(300, 4), (20, 9)], [7, 1300], 1500),
        "overlap": ([(300, 4), (20, 9)], [0, 1000], 1200),
        "one big table": ([(60_000, 8), (10, 3)], [0, 480_000], 480_030),
        "empty tables": ([(0, 4), (30, 0), (40, 2)], [0, 0, 5], 90),  # and a gap in front, one behind
    }[layout]
    shapes, woffs, numel = tables
    coffs = np.cumsum([0] + [d for _, d in shapes])[:-1].tolist()
    meta = torch.tensor([[r, d, w, c] for (r, d), w, c in zip(shapes, woffs, coffs)])
    total = sum(d for _, d in shapes)
    for batch in (0, 3, 5000):
        if layout == "empty tables" and batch:
            continue  # a table of no rows takes no index
        x = torch.stack([torch.randint(0, max(r, 1), (batch,), generator=g) for r, _ in shapes], 1)
        # small integers: every sum is exact in float32, whatever the order of the adds
        grad = torch.randint(-8, 9, (batch, total), generator=g).float()
        got = ops.multi_embedding_backward(grad, x, meta, numel)
        assert torch.equal(got.double(), _multi_reference(grad, x, meta, numel)), (layout, batch)
        noisy = torch.randn(batch, total, generator=g)
        _threads_agree(lambda: ops.multi_embedding_backward(noisy, x, meta, numel))


@pytest.mark.parametrize("scale", [False, True])
def test_sparse_backward_adjoint_compiles(scale: bool) -> None:
    """The sparse backward's adjoint has no data-dependent shapes: a fullgraph compile that
    differentiates the op with padding_idx (a boolean-mask index_put and numel() failed to
    trace) gives eager's gradient."""
    x = torch.tensor([1, 2, 2, 3, 4, 2])

    def values(g: torch.Tensor) -> torch.Tensor:
        return ops.embedding_sparse_backward(g, x, 10, 2, scale)[1]

    weights = None
    for compiled in (False, True):
        g = torch.randn(6, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
        f = torch.compile(values, fullgraph=True, dynamic=True, backend="aot_eager") if compiled else values
        out = f(g)
        (out * torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
        if weights is None:
            weights = g.grad
        else:
            assert torch.equal(g.grad, weights)
    assert weights is not None and weights[[1, 2, 5]].abs().sum() == 0  # padding rows get nothing
