"""Product quantization: golden quantized files, training, round trips, bad parameters."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import vecfusion as vf
from vecfusion.cli import main as cli_main


def format_reconstruction(s: vf.QuantizedStorage) -> np.ndarray:
    """All rows rebuilt with NumPy by the rule of FORMAT.md, independently of the Rust code."""
    codes = np.asarray(s.codes)
    rows, m = codes.shape
    cent = np.asarray(s.centroids).reshape(m, s.n_centroids, -1)
    concat = np.concatenate([cent[j][codes[:, j]] for j in range(m)], axis=1).astype(np.float64)
    if s.projection is not None:
        concat = concat @ np.asarray(s.projection, dtype=np.float64).T
    if s.norms is not None:
        concat *= np.asarray(s.norms, dtype=np.float64)[:, None]
    return concat


def clustered(rows: int, m: int, k: int, ds: int, seed: int = 0) -> np.ndarray:
    """Rows made of one of ``k`` patterns per block: exactly representable by a PQ."""
    rng = np.random.default_rng(seed)
    patterns = rng.standard_normal((m, k, ds)).astype(np.float32)
    picks = rng.integers(0, k, size=(rows, m))
    return np.concatenate([patterns[j][picks[:, j]] for j in range(m)], axis=1)


def words(n: int) -> list[str]:
    return [f"w{i}" for i in range(n)]


# --- golden files --------------------------------------------------------------------------


@pytest.mark.parametrize("mmap", [False, True])
def test_python_pq_golden_reconstructs_similarity(ff, mmap):
    pq = vf.load(ff / "python/pq.fifu", mmap=mmap)
    dense = vf.load(ff / "python/similarity.fifu")
    s = pq.storage
    assert isinstance(s, vf.QuantizedStorage)
    assert (s.n_subquantizers, s.n_centroids, s.shape) == (50, 32, (41, 100))
    assert s.mmapped == mmap
    rebuilt = s.reconstruct()
    np.testing.assert_allclose(rebuilt, format_reconstruction(s), atol=1e-5)
    assert np.abs(rebuilt - np.asarray(dense.storage)).max() <= 0.05
    for w in dense.vocab.words:
        np.testing.assert_allclose(pq[w], dense[w], atol=0.05)
    arr, found = pq.lookup(dense.vocab.words)
    assert found.all()
    np.testing.assert_allclose(arr, rebuilt, atol=1e-6)


def test_rust_quantized_golden(ff):
    q = vf.load(ff / "rust/quantized.fifu")
    s = q.storage
    assert (s.n_subquantizers, s.n_centroids, s.shape) == (50, 32, (41, 100))
    assert s.projection is None and s.norms is not None
    rebuilt = s.reconstruct()
    np.testing.assert_allclose(rebuilt, format_reconstruction(s), atol=1e-5)
    # It quantizes the raw city vectors of rust/similarity.fifu.
    dense = np.asarray(vf.load(ff / "rust/similarity.fifu").storage)
    rel = np.linalg.norm(rebuilt - dense) / np.linalg.norm(dense)
    assert rel < 0.08
    np.testing.assert_allclose(np.linalg.norm(rebuilt, axis=1), np.linalg.norm(dense, axis=1), rtol=0.05)


# --- training --------------------------------------------------------------------------------


def test_pq_on_exactly_representable_data_has_near_zero_error():
    # Each 3-dim block of a row is one of 16 patterns: 16 centroids per block suffice.
    x = clustered(600, m=4, k=16, ds=3, seed=1)
    emb = vf.Embeddings(words(len(x)), x)
    q = emb.quantize(n_subquantizers=4, bits=4, opq=False, n_iterations=25, n_attempts=3,
                     normalize=False, progress=False)
    assert q.storage.projection is None and q.storage.norms is None
    rel = np.linalg.norm(q.storage.reconstruct() - x) / np.linalg.norm(x)
    assert rel < 1e-4, rel


def test_opq_on_exactly_representable_data_has_near_zero_error():
    # 16 distinct rows (with different norms): under any rotation, 16 centroids per block
    # represent the normalized rows exactly, and the stored norms restore the scale.
    rng = np.random.default_rng(2)
    protos = rng.standard_normal((16, 12)).astype(np.float32)
    x = protos[rng.integers(0, 16, size=600)] * rng.uniform(0.5, 3.0, size=(600, 1)).astype(np.float32)
    emb = vf.Embeddings(words(len(x)), x)
    q = emb.quantize(n_subquantizers=4, bits=4, opq=True, n_iterations=10, n_attempts=2, progress=False)
    assert q.storage.projection is not None
    np.testing.assert_allclose(q.storage.norms, np.linalg.norm(x, axis=1), rtol=1e-5)
    rel = np.linalg.norm(q.storage.reconstruct() - x) / np.linalg.norm(x)
    assert rel < 1e-4, rel


def test_opq_rotation_is_orthogonal_and_beats_pq_on_correlated_data():
    rng = np.random.default_rng(3)
    # Strongly correlated dimensions: a few directions carry the variance.
    basis = rng.standard_normal((4, 16))
    x = (rng.standard_normal((3000, 4)) * [4.0, 2.0, 1.0, 0.5]) @ basis
    x = (x + 0.05 * rng.standard_normal(x.shape)).astype(np.float32)
    emb = vf.Embeddings(words(len(x)), x)
    kw = dict(n_subquantizers=4, bits=4, n_iterations=15, normalize=False, progress=False)
    pq = emb.quantize(opq=False, **kw)
    opq = emb.quantize(opq=True, **kw)
    p = np.asarray(opq.storage.projection, dtype=np.float64)
    np.testing.assert_allclose(p @ p.T, np.eye(16), atol=1e-4)
    err = lambda e: np.linalg.norm(e.storage.reconstruct() - x) / np.linalg.norm(x)  # noqa: E731
    assert err(opq) < err(pq)


def test_quantize_write_mmap_round_trip(peers, tmp_path):
    emb = vf.load(peers / "ft_skipgram.fifu")  # subword vocab: word rows + n-gram rows
    calls = []
    q = emb.quantize(n_subquantizers=6, bits=6, opq=True, n_iterations=8, seed=5,
                     progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1][0] == calls[-1][1] > 0
    s = q.storage
    assert (s.shape, s.n_subquantizers, s.n_centroids) == (emb.storage.shape, 6, 64)
    assert s.norms is not None
    assert q.vocab.words == emb.vocab.words and q.vocab_kind == emb.vocab_kind
    np.testing.assert_array_equal(q.norms, emb.norms)
    assert q.metadata == emb.metadata

    path = tmp_path / "q.fifu"
    q.write(path)
    back = vf.load(path, mmap=True)
    assert back.storage_kind == "MmapQuantizedArray" and back.storage.mmapped
    # a small OPQ quantizer (6 x 64 x 24 floats) rebuilds rows from its projected-centroid table
    assert back.storage.rebuild_method == s.rebuild_method == "centroid table"
    assert emb.quantize(n_subquantizers=6, bits=2, opq=False, progress=False).storage.rebuild_method == "concatenation"
    rebuilt = back.storage.reconstruct()
    np.testing.assert_array_equal(rebuilt, s.reconstruct())
    np.testing.assert_allclose(rebuilt, format_reconstruction(back.storage), atol=1e-5)

    # Quality: better than the mean vector, and neighbours mostly preserved.
    dense = np.asarray(emb.storage)
    rel = np.linalg.norm(rebuilt - dense) / np.linalg.norm(dense)
    base = np.linalg.norm(dense - dense.mean(0)) / np.linalg.norm(dense)
    assert rel < 0.6 * base, (rel, base)

    # Known words are rows; unknown words are normalized sums of rebuilt n-gram rows.
    known = emb.vocab.words[:50]
    arr, found = back.lookup(known + ["qqxyzzy", "über"])
    assert found.all()
    idx = [back.vocab.index(w) for w in known]
    np.testing.assert_allclose(arr[:50], rebuilt[idx], atol=1e-6)
    for j, w in enumerate(["qqxyzzy", "über"]):
        v = rebuilt[back.vocab.subword_indices(w)].sum(0)
        np.testing.assert_allclose(arr[50 + j], v / np.linalg.norm(v), atol=1e-5)
        np.testing.assert_allclose(back[w], arr[50 + j], atol=1e-6)


def test_seed_makes_training_deterministic():
    x = np.random.default_rng(4).standard_normal((800, 8)).astype(np.float32)
    emb = vf.Embeddings(words(len(x)), x)
    kw = dict(n_subquantizers=2, bits=3, n_iterations=5, progress=False)
    a = emb.quantize(seed=1, **kw).storage
    b = emb.quantize(seed=1, **kw).storage
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.centroids, b.centroids)


def test_requantizing_quantized_storage(ff):
    pq = vf.load(ff / "python/pq.fifu")
    q = pq.quantize(n_subquantizers=25, bits=3, opq=False, n_iterations=5, progress=False)
    assert q.storage.shape == (41, 100) and q.storage.n_centroids == 8


# --- bad parameters ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        (dict(n_subquantizers=7), "does not divide the 20 dimensions"),
        (dict(n_subquantizers=0), "at least 1"),
        (dict(n_subquantizers=-2), "must not be negative"),
        (dict(bits=9), "bits must be 1 to 8"),
        (dict(bits=0), "bits must be 1 to 8"),
        (dict(bits=8), "256 centroids per subquantizer, more than the 100 rows"),
        (dict(bits=4, sample=8), "sample=8 is smaller than the 16 centroids"),
        (dict(bits=4, n_iterations=0), "n_iterations must be 1 to 1000000, got 0"),
        (dict(bits=4, n_attempts=0), "n_attempts must be 1 to 1000000, got 0"),
        # (2 * 2**63 alternations wrapped to 0: OPQ's rotation was skipped without a word)
        (dict(bits=4, opq=True, n_iterations=2**63), "n_iterations must be 1 to 1000000"),
        (dict(bits=4, n_attempts=2**62), "n_attempts must be 1 to 1000000"),
        (dict(bits=4, seed=-1), r"seed must be an integer from 0 to 2\*\*64 - 1, got -1"),
        (dict(bits=4, seed=2**64), "seed must be an integer"),
    ],
)
def test_bad_parameters_raise_value_error(kwargs, reason):
    x = np.random.default_rng(0).standard_normal((100, 20)).astype(np.float32)
    emb = vf.Embeddings(words(100), x)
    with pytest.raises(ValueError, match=reason):
        emb.quantize(progress=False, **kwargs)


def test_progress_callback_errors_propagate():
    x = np.random.default_rng(0).standard_normal((20000, 16)).astype(np.float32)
    emb = vf.Embeddings(words(len(x)), x)

    def boom(done, total):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        emb.quantize(n_subquantizers=4, bits=8, n_iterations=50, sample=20000, progress=boom)


def test_progress_of_another_type_is_refused():
    """progress="off" drew a bar (any truthy value meant a bar, any falsy one none)."""
    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    emb = vf.Embeddings(words(len(x)), x)
    for bad in ("off", 3.5, 1, 0, object()):
        with pytest.raises(TypeError, match="progress must be True, False, None or a callable"):
            emb.quantize(n_subquantizers=2, bits=2, n_iterations=1, progress=bad)
    for ok in (False, np.False_):
        assert emb.quantize(n_subquantizers=2, bits=2, n_iterations=1, progress=ok).storage_kind == "QuantizedArray"


# --- CLI -------------------------------------------------------------------------------------------


def test_cli_quantize(ff, tmp_path, capsys):
    dst = tmp_path / "out.fifu"
    rc = cli_main(["quantize", str(ff / "python/similarity.fifu"), str(dst), "--subquantizers", "20",
                   "--bits", "4", "--iterations", "10", "--quiet"])
    assert rc == 0
    q = vf.load(dst)
    assert q.storage.n_subquantizers == 20 and q.storage.n_centroids == 16
    assert q.storage.projection is not None
    dense = vf.load(ff / "python/similarity.fifu")
    rel = np.linalg.norm(q.storage.reconstruct() - np.asarray(dense.storage)) / np.linalg.norm(dense.storage)
    assert rel < 0.5

    rc = cli_main(["quantize", str(ff / "python/similarity.fifu"), str(dst), "--subquantizers", "7", "--quiet"])
    assert rc == 1
    assert "does not divide" in capsys.readouterr().err

    # a .bin name (word2vec's, for convert) gets a note; the file is finalfusion all the same
    odd = tmp_path / "q.bin"
    rc = cli_main(["quantize", str(ff / "python/similarity.fifu"), str(odd), "-m", "20", "-b", "2",
                   "-i", "2", "--quiet"])
    assert rc == 0 and "written as a finalfusion file" in capsys.readouterr().err
    assert vf.load(odd).storage.n_subquantizers == 20


def test_awkward_dimensions_warn_about_the_default_subquantizers(tmp_path, capsys):
    """101 dimensions have no divisor near 101 / 4: the default M is 1 (one byte for all 101
    dimensions), which is said, with the divisor above it; an explicit M, or dimensions with
    a fitting divisor, say nothing (pytest turns any warning into an error)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 101)).astype(np.float32)
    emb = vf.Embeddings(words(300), x)
    with pytest.warns(UserWarning, match=r"default n_subquantizers is 1: 101 dimensions per one-byte code.*n_subquantizers=101 \(1 per code\)"):
        q = emb.quantize(bits=2, n_iterations=2, progress=False)
    assert q.storage.n_subquantizers == 1
    emb.quantize(n_subquantizers=1, bits=2, n_iterations=2, progress=False)  # chosen: no warning
    vf.Embeddings(words(300), x[:, :100]).quantize(bits=2, n_iterations=2, progress=False)  # M=25

    src, dst = tmp_path / "odd.fifu", tmp_path / "q.fifu"
    emb.write(src)
    capsys.readouterr()
    assert cli_main(["quantize", str(src), str(dst), "-b", "2", "-i", "2", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "vecfusion quantize: note: no divisor of the 101 dimensions" in err
    assert "the default --subquantizers is 1" in err and "--subquantizers 101 (1 per code)" in err
    assert "n_subquantizers" not in err and "UserWarning" not in err
    assert vf.load(dst).storage.n_subquantizers == 1


@pytest.mark.parametrize("scale", [1.0, 1e-5, 1e-30, 1e19])
def test_quantization_does_not_depend_on_the_matrix_magnitude(scale: float) -> None:
    """normalize=False trains on the rows as they are: the error relative to the data is the
    same at every magnitude (faiss's behaviour). An empty cluster's split used to add an
    absolute 1e-6 (5% error at 1e-5, 570% at 1e-7), squared distances overflowed f32 near
    1e19 (codes silently wrong) and OPQ's SVD failed there with a FormatError."""
    rng = np.random.default_rng(7)
    clusters = np.repeat(rng.standard_normal((3, 8)).astype(np.float32), 100, axis=0)
    x = clusters * np.float32(scale)
    words = [f"w{i}" for i in range(len(x))]
    q = vf.Embeddings(words, x).quantize(n_subquantizers=2, bits=2, opq=False, normalize=False, progress=False)
    assert np.abs(q.storage.reconstruct() - x).max() <= 2e-3 * np.abs(x).max()
    noisy = (rng.standard_normal((1000, 16)).astype(np.float32)) * np.float32(scale)
    words = [f"w{i}" for i in range(len(noisy))]
    for opq in (False, True):
        q = vf.Embeddings(words, noisy).quantize(
            n_subquantizers=4, bits=4, opq=opq, normalize=False, n_iterations=8, progress=False
        )
        err = np.linalg.norm((q.storage.reconstruct() - noisy).astype(np.float64))
        assert err <= 0.6 * np.linalg.norm(noisy.astype(np.float64)), (opq, err)


def test_quantize_refuses_rows_whose_norm_float32_cannot_hold() -> None:
    x = np.ones((300, 8), np.float32)
    x[5] = 3e38  # finite values, but the row's length is beyond float32
    words = [f"w{i}" for i in range(len(x))]
    with pytest.raises(ValueError, match="row 5's L2 norm exceeds float32"):
        vf.Embeddings(words, x).quantize(n_subquantizers=2, bits=2, progress=False)


def test_quantize_huge_integer_parameters_are_value_errors_naming_them() -> None:
    emb = vf.Embeddings([f"w{i}" for i in range(300)], np.ones((300, 8), np.float32))
    for name, value in (("bits", 2**70), ("n_subquantizers", 2**70), ("sample", 2**64),
                        ("n_iterations", 2**80), ("n_attempts", 2**64)):
        with pytest.raises(ValueError, match=name):
            emb.quantize(progress=False, **{name: value})


def test_quantize_counts_beyond_128_bits_are_named_as_given() -> None:
    emb = vf.Embeddings([f"w{i}" for i in range(300)], np.ones((300, 8), np.float32))
    for name in ("seed", "n_iterations", "bits"):
        with pytest.raises(ValueError, match=f"^{2**200} is out of range"):
            emb.quantize(progress=False, **{name: 2**200})


def test_quantize_refuses_bools_for_its_counts() -> None:
    """bits=True meant 1 bit, n_subquantizers=True one subquantizer: a bool is an int to
    Python, never a count here (the error notes the argument)."""
    emb = vf.Embeddings([f"w{i}" for i in range(300)], np.ones((300, 8), np.float32))
    for name in ("bits", "n_subquantizers", "n_iterations", "n_attempts", "sample", "seed"):
        with pytest.raises(TypeError, match="got the bool True") as e:
            emb.quantize(progress=False, **{name: True})
        assert f"'{name}'" in " ".join(getattr(e.value, "__notes__", [])), name


def test_quantize_names_the_row_and_word_holding_nan(tmp_path: Path) -> None:
    """A finalfusion file may hold NaN; quantizing it said only that the matrix holds NaN or
    infinity somewhere."""
    x = np.random.default_rng(1).standard_normal((300, 8)).astype(np.float32)
    x[7] = [1, 2, 3, 4, 5, 6, 7, 8.5]
    vf.Embeddings([f"w{i}" for i in range(300)], x).write(tmp_path / "n.fifu")
    data = (tmp_path / "n.fifu").read_bytes()
    row = x[7].tobytes()
    assert data.count(row) == 1
    bad = x[7].copy()
    bad[3] = np.nan
    (tmp_path / "n.fifu").write_bytes(data.replace(row, bad.tobytes()))
    emb = vf.load(tmp_path / "n.fifu")
    with pytest.raises(ValueError, match=r"row 7 of the matrix holds NaN \(at column 3\).*the word \"w7\""):
        emb.quantize(n_subquantizers=2, bits=2, progress=False)


def test_progress_bar_ends_its_line(capsys: pytest.CaptureFixture[str]) -> None:
    """tqdm's bar was drawn with refresh(), which tqdm's close() did not count as drawn: no
    newline, so the next output ran on the bar's line."""
    from vecfusion import _progress

    b = _progress.bar("quantize")
    for i in range(13):
        b.update_to(i, 12)
        time.sleep(0.1)  # past tqdm's 1 s delay: drawn
    b.close()
    err = capsys.readouterr().err
    assert "12/12" in err and err.endswith("\n")


@pytest.mark.parametrize("opq", [False, True])
@pytest.mark.parametrize("distinct", [1, 3])
def test_fewer_distinct_rows_than_centroids_reconstruct_exactly(opq: bool, distinct: int) -> None:
    """With more centroids than distinct rows, every row is a centroid: k-means must return
    the clusters' means, not centroids nudged apart by the repair of empty clusters."""
    rng = np.random.default_rng(5)
    protos = rng.standard_normal((distinct, 8)).astype(np.float32)
    x = protos[rng.integers(0, distinct, size=300)]
    emb = vf.Embeddings(words(len(x)), x)
    for bits, iterations in [(2, 25), (4, 5)]:
        q = emb.quantize(n_subquantizers=2, bits=bits, opq=opq, n_iterations=iterations, normalize=False,
                         progress=False)
        err = np.abs(q.storage.reconstruct() - x).max()
        assert err < 1e-5, (bits, iterations, err)


@pytest.mark.parametrize("seed", range(6))
def test_more_attempts_are_never_worse_than_one(seed: int) -> None:
    """The first of n attempts is the single attempt's run: keeping the best of what each
    attempt returns can only lower the error."""
    x = np.random.default_rng(seed).standard_normal((400, 8)).astype(np.float32)
    emb = vf.Embeddings(words(len(x)), x)
    errs = {}
    for iterations in (1, 2, 3):
        for attempts in (1, 4):
            q = emb.quantize(n_subquantizers=1, bits=5, opq=False, normalize=False, n_iterations=iterations,
                             n_attempts=attempts, seed=seed, progress=False)
            errs[attempts] = float(((q.storage.reconstruct().astype(np.float64) - x) ** 2).sum())
        assert errs[4] <= errs[1] * (1 + 1e-9), (iterations, errs)


def test_cli_quantize_refuses_its_input_and_bad_outputs_before_training(ff, tmp_path, capsys):
    """`vecfusion quantize w.bin ./w.bin` replaced the word2vec input by a lossy quantized
    file (exit 0); a missing output directory was found only after the training."""
    src = tmp_path / "w.bin"
    shutil.copy(ff / "rust/similarity.bin", src)
    before = src.read_bytes()
    assert cli_main(["quantize", str(src), str(tmp_path / "." / "w.bin"), "-b", "2", "-q"]) == 1
    assert "is the input file" in capsys.readouterr().err
    assert src.read_bytes() == before
    for dst, why in ((tmp_path / "nodir" / "q.fifu", "directory does not exist"), (tmp_path, "is a directory"),
                     (f"{tmp_path}/q.fifu/", "ends in a slash")):
        assert cli_main(["quantize", str(src), str(dst), "-b", "2", "-q"]) == 1
        err = capsys.readouterr().err
        assert why in err and "Traceback" not in err
    # an empty name, names of directories and a link that loops were found only after
    # the training
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for dst, why in (("", "path is empty"), (f"{tmp_path}/nodir/.", "a directory's"),
                     (f"{tmp_path}/x/..", "a directory's"), (tmp_path / "loop", "links loop")):
        assert cli_main(["quantize", str(src), str(dst), "-b", "2", "-q"]) == 1
        err = capsys.readouterr().err
        assert why in err and "Traceback" not in err, err
    # another hard link to the input is a name of its own: the output replaces it, and
    # the input keeps its data
    link = tmp_path / "link.bin"
    os.link(src, link)
    assert cli_main(["quantize", str(src), str(link), "-b", "2", "-q", "--iterations", "2"]) == 0
    assert src.read_bytes() == before and vf.load(link).storage_kind == "QuantizedArray"
