"""The Python API on the golden finalfusion files."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import vecfusion as vf

EMB_NORMS = [
    6.557438373565674,
    8.83176040649414,
    6.164413928985596,
    9.165151596069336,
    7.4833149909973145,
    7.211102485656738,
    7.4833149909973145,
]


@pytest.fixture(params=[False, True], ids=["read", "mmap"])
def mmap(request: pytest.FixtureRequest) -> bool:
    return request.param


def test_version_and_profile() -> None:
    assert isinstance(vf.__version__, str) and vf.__version__.count(".") == 2
    assert vf.build_profile in ("debug", "release")


def test_embeddings_fifu(ff: Path, mmap: bool) -> None:
    emb = vf.load(ff / "python/embeddings.fifu", mmap=mmap)
    assert len(emb) == 7 and emb.dims == 10
    assert list(emb) == ["one", "two", "three", "four", "five", "six", "seven"]
    assert emb.vocab.words == list(emb)
    np.testing.assert_allclose(emb.norms, EMB_NORMS, rtol=0, atol=1e-6)
    raw = {}
    for line in (ff / "python/embeddings.txt").read_text().splitlines():
        w, *xs = line.split()
        raw[w] = np.array(xs, dtype=np.float32)
    for i, (w, v) in enumerate(raw.items()):
        norm = np.linalg.norm(v)
        np.testing.assert_allclose(emb[w], v / norm, atol=1e-6)
        vec, n = emb.embedding_with_norm(w)
        np.testing.assert_allclose(vec, v / norm, atol=1e-6)
        assert n == pytest.approx(EMB_NORMS[i], abs=1e-6)
        assert emb.vocab.index(w) == i and emb.vocab[i] == w and emb.vocab[w] == i
    assert "OOV" not in emb
    assert emb.embedding("OOV") is None
    assert emb.embedding("OOV", default=0) == 0
    assert emb.embedding_with_norm("OOV") is None
    with pytest.raises(KeyError, match="OOV"):
        emb["OOV"]
    assert emb.vocab.index("OOV") is None
    assert emb.vocab.ngrams("one") == [] and emb.vocab.subword_indices("one") == []
    assert emb.vocab_kind == "SimpleVocab"
    assert emb.storage_kind == ("MmapArray" if mmap else "NdArray")


def test_ff_buckets(ff: Path, mmap: bool) -> None:
    emb = vf.load(ff / "python/ff_buckets.fifu", mmap=mmap)
    assert emb.vocab.kind == "BucketSubwordVocab"
    assert (emb.vocab.min_n, emb.vocab.max_n) == (3, 6)
    assert len(emb) == 2 and emb.vocab.words == ["one", "</s>"]
    assert emb.storage.shape == (1026, 5) and emb.vocab.rows == 1026
    idx = emb.vocab.subword_indices("tübingen")
    assert sorted({i - 2 for i in idx}) == [
        12, 67, 72, 122, 166, 179, 195, 244, 248, 274, 298, 306, 323, 414, 547,
        588, 646, 649, 705, 715, 759, 815, 818, 855, 858, 1005,
    ]  # fmt: skip
    assert emb.vocab.index("tübingen") == idx
    ngrams = emb.vocab.ngrams("tübingen")
    assert emb.vocab.subword_indices("<tü")  # any string works as a word
    assert idx[ngrams.index("<tü")] == 818 + 2
    expected = emb.storage[idx].sum(axis=0)
    norm = np.linalg.norm(expected)
    vec, n = emb.embedding_with_norm("tübingen")
    np.testing.assert_allclose(vec, expected / norm, rtol=1e-5, atol=1e-6)
    assert n == pytest.approx(norm, rel=1e-5)
    np.testing.assert_allclose(emb["tübingen"], vec)
    assert "tübingen" in emb and "tübingen" not in emb.vocab
    assert emb.embedding("") is None and "" not in emb
    assert emb.metadata["common_config"]["dims"] == 5
    assert emb.vocab.ngrams("Test") == [
        "<Test>", "<Test", "<Tes", "<Te", "Test>", "Test", "Tes", "est>", "est", "st>",
    ]  # fmt: skip


def test_zero_ngram_sum_stays_zero() -> None:
    words = ["a", "b"]
    matrix = np.zeros((2 + 2**4, 3), dtype=np.float32)
    matrix[:2] = 1
    emb = vf.Embeddings(words, matrix, vocab="bucket", buckets=4)
    vec, norm = emb.embedding_with_norm("zzzz")
    assert norm == 0.0
    assert np.all(vec == 0) and not np.any(np.isnan(vec))


def test_peer_w2v_fifu_matches_finalfusion_python(peers: Path, mmap: bool) -> None:
    expected = json.loads((peers / "finalfusion.expected.json").read_text())["w2v.fifu"]
    emb = vf.load(peers / "w2v.fifu", mmap=mmap)
    assert [len(emb), emb.dims] == expected["shape"]
    for w, v in expected["embedding"].items():
        np.testing.assert_array_equal(emb[w], np.array(v, dtype=np.float32))
    for w, n in expected["norms"].items():
        assert emb.embedding_with_norm(w)[1] == np.float32(n)


def test_peer_ft_skipgram_fifu_matches_finalfusion_python(peers: Path, mmap: bool) -> None:
    expected = json.loads((peers / "finalfusion.expected.json").read_text())["ft_skipgram.fifu"]
    emb = vf.load(peers / "ft_skipgram.fifu", mmap=mmap)
    assert emb.vocab.kind == "FastTextSubwordVocab"
    assert list(emb.storage.shape) == expected["shape"]
    for w, v in expected["embedding_iv"].items():
        np.testing.assert_allclose(emb[w], v, atol=1e-6)
    for w, v in expected["embedding_oov"].items():
        got = emb[w]
        v = np.array(v, dtype=np.float32)
        if np.isnan(v).any():
            # finalfusion-python turns an all-zero n-gram sum into NaN; vecfusion keeps zero.
            assert np.all(got == 0), w
            assert emb.embedding_with_norm(w)[1] == 0.0
        else:
            np.testing.assert_allclose(got, v, atol=1e-6, err_msg=w)


def test_fasttext_subword_ids_match_fasttext(peers: Path) -> None:
    expected = json.loads((peers / "ft_skipgram.expected.json").read_text())["subwords"]
    emb = vf.load(peers / "ft_skipgram.fifu")
    for word, sub in expected.items():
        # fastText lists the word's own id first for known words, then the n-gram rows
        assert sorted(emb.vocab.subword_indices(word)) == sorted(sub["subword_ids_api"]), word
        # the same n-gram strings, each with fastText's row
        got = dict(zip(emb.vocab.ngrams(word), emb.vocab.subword_indices(word)))
        want = {s: i for s, i in zip(sub["subwords"], sub["ids"]) if i >= len(emb)}
        assert got == want, word


def test_lookup_batch(ff: Path, mmap: bool) -> None:
    emb = vf.load(ff / "python/ff_buckets.fifu", mmap=mmap)
    words = ["one", "tübingen", "", "</s>", "x"]  # "" is too short for any n-gram; "<x>" is one
    out, found = emb.lookup(words)
    assert out.dtype == np.float32 and out.shape == (5, 5)
    assert found.dtype == np.bool_ and found.tolist() == [True, True, False, True, True]
    for w, row, f in zip(words, out, found):
        if f:
            np.testing.assert_array_equal(row, emb[w])
        else:
            assert np.all(row == 0)
    out, found = emb.lookup([])
    assert out.shape == (0, 5) and found.shape == (0,)
    out, _ = emb.lookup(w for w in ["one"])  # any iterable
    assert out.shape == (1, 5)
    with pytest.raises(TypeError):
        emb.lookup("one")
    with pytest.raises(TypeError):
        emb.lookup(["one", 3])


def test_lookup_into_out(ff: Path, mmap: bool) -> None:
    emb = vf.load(ff / "python/ff_buckets.fifu", mmap=mmap)
    words = ["one", "tübingen", "", "</s>", "x"] * 700  # > one parallel chunk
    want, want_found = emb.lookup(words)
    buf = np.full((len(words), 5), np.nan, dtype=np.float32)  # stale contents are overwritten
    got, found = emb.lookup(words, out=buf)
    assert got is buf
    np.testing.assert_array_equal(buf, want)
    np.testing.assert_array_equal(found, want_found)
    assert np.all(buf[2] == 0)  # a word without an embedding gets a zero row
    with pytest.raises(ValueError, match=r"shape \(3, 5\), expected \(2, 5\)"):
        emb.lookup(["one", "x"], out=np.zeros((3, 5), np.float32))
    with pytest.raises(TypeError, match="float32"):
        emb.lookup(["one"], out=np.zeros((1, 5), np.float64))
    with pytest.raises(TypeError, match="float32"):
        emb.lookup(["one"], out=[[0.0] * 5])
    with pytest.raises(ValueError, match="C-contiguous"):
        emb.lookup(["one", "x"], out=np.zeros((5, 2), np.float32).T)
    ro = np.zeros((1, 5), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        emb.lookup(["one"], out=ro)
    if isinstance(emb.storage, np.ndarray):  # the storage view is read-only
        with pytest.raises(ValueError, match="writable"):
            emb.lookup(["one"], out=emb.storage[:1])


def test_quantized(ff: Path, mmap: bool) -> None:
    pq = vf.load(ff / "python/pq.fifu", mmap=mmap)
    dense = vf.load(ff / "python/similarity.fifu")
    q = pq.storage
    assert isinstance(q, vf.QuantizedStorage)
    assert q.shape == (41, 100) and len(q) == 41
    assert q.n_subquantizers == 50 and q.n_centroids == 32 and q.mmapped == mmap
    rec = q.reconstruct()
    assert rec.shape == (41, 100)
    assert np.abs(rec - dense.storage).max() < 0.06
    np.testing.assert_array_equal(q.reconstruct([3, -1]), rec[[3, 40]])
    np.testing.assert_array_equal(q.reconstruct(5), rec[5])
    np.testing.assert_array_equal(pq[pq.vocab[7]], rec[7])
    # reconstruction by the format's definition from the exposed arrays
    codes, cents = q.codes, q.centroids
    assert codes.shape == (41, 50) and cents.shape == (50, 32, 2)
    manual = np.concatenate([cents[m, codes[:, m]] for m in range(50)], axis=1)
    if q.projection is not None:
        manual = manual @ q.projection.T
    if q.norms is not None:
        manual *= q.norms[:, None]
    np.testing.assert_allclose(rec, manual, rtol=1e-5, atol=1e-6)
    with pytest.raises(IndexError):
        q.reconstruct(41)
    # numpy's indexing rules: arrays of any integer type, boolean masks, no bool as a row
    np.testing.assert_array_equal(q.reconstruct(np.array([40, 0], np.uint8)), rec[[40, 0]])
    np.testing.assert_array_equal(q.reconstruct(np.array([-41, 2], np.int16)), rec[[0, 2]])
    np.testing.assert_array_equal(q.reconstruct(np.int64(-2)), rec[39])
    mask = np.zeros(41, bool)
    mask[[1, 7, 40]] = True
    np.testing.assert_array_equal(q.reconstruct(mask), rec[mask])
    np.testing.assert_array_equal(q.reconstruct(mask.tolist()), rec[mask])
    assert q.reconstruct(np.zeros(0, np.int64)).shape == (0, 100)
    with pytest.raises(IndexError, match="boolean mask of 2 bools"):
        q.reconstruct([True, False])
    for bad in (True, np.True_, [1, True], np.zeros((2, 2), np.int64), [1.0], "ab"):
        with pytest.raises(TypeError):
            q.reconstruct(bad)
    with pytest.raises(IndexError, match=re.escape("2**127 - 1 or more")):
        q.reconstruct(2**200)
    np.testing.assert_array_equal(q.reconstruct(list(mask)), rec[mask])  # numpy.bool_ items
    with pytest.raises(TypeError, match="must be an int, a sequence of ints"):
        q.reconstruct(np.float64(1))
    with pytest.raises(IndexError, match="row -42 out of range"):
        q.reconstruct([0, -42])
    with pytest.raises(IndexError, match=f"row {2**64 - 1} out of range"):
        q.reconstruct(np.array([2**64 - 1], np.uint64))


def test_rust_quantized_matches_similarity(ff: Path) -> None:
    q = vf.load(ff / "rust/quantized.fifu")
    assert q.storage.shape == (41, 100) and q.storage.n_subquantizers == 50
    dense = vf.load(ff / "rust/similarity.fifu")
    assert q.vocab.words == dense.vocab.words
    rec = q.storage.reconstruct()
    # PQ with norms of the raw (not normalized) vectors: relative error is small
    err = np.linalg.norm(rec - dense.storage) / np.linalg.norm(dense.storage)
    assert err < 0.1


def test_metadata_roundtrip(tmp_path: Path, ff: Path) -> None:
    emb = vf.load(ff / "python/similarity.fifu")
    assert emb.metadata is None
    emb.metadata = {"name": "cities", "dims": 100, "nested": {"lr": 0.05, "ok": True, "tags": ["a", "b"]}}
    out = tmp_path / "m.fifu"
    emb.write(out)
    back = vf.load(out)
    assert back.metadata == emb.metadata
    np.testing.assert_array_equal(back.storage, emb.storage)
    emb.metadata = None
    emb.write(out)
    assert vf.load(out).metadata is None
    with pytest.raises(TypeError):
        emb.metadata = {"x": object()}
    with pytest.raises(TypeError):
        emb.metadata = [1, 2]


def test_write_is_byte_identical(tmp_path: Path, ff: Path, mmap: bool) -> None:
    for name in ["python/similarity.fifu", "python/pq.fifu", "rust/quantized.fifu", "python/simple_vocab.fifu"]:
        out = tmp_path / "x.fifu"
        vf.load(ff / name, mmap=mmap).write(out)
        assert out.read_bytes() == (ff / name).read_bytes(), name
    # files with an unlisted norms chunk gain its id in the header, nothing else
    for name in ["python/embeddings.fifu", "python/ff_buckets.fifu"]:
        out = tmp_path / "y.fifu"
        vf.load(ff / name).write(out)
        a, b = (ff / name).read_bytes(), out.read_bytes()
        assert len(b) == len(a) + 4
        back = vf.load(out)
        np.testing.assert_array_equal(back.norms, vf.load(ff / name).norms)


def test_write_overwrites_the_file_it_was_mapped_from(tmp_path: Path, ff: Path) -> None:
    path = tmp_path / "self.fifu"
    path.write_bytes((ff / "python/similarity.fifu").read_bytes())
    emb = vf.load(path, mmap=True)
    before = np.array(emb.storage)
    emb.write(path)  # renamed over the mapped file: the mapping keeps the old inode
    np.testing.assert_array_equal(emb.storage, before)
    np.testing.assert_array_equal(vf.load(path).storage, before)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_failed_write_leaves_no_file(tmp_path: Path, ff: Path) -> None:
    emb = vf.load(ff / "python/similarity.fifu")
    with pytest.raises(OSError):
        emb.write(tmp_path / "missing-dir" / "x.fifu")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "umask"), reason="POSIX modes")
def test_private_file_stays_private_while_written_over(tmp_path: Path) -> None:
    """The temporary file was created with the default mode (0644 under umask 022) and given
    the old file's 0600 only once written: the contents were readable to others meanwhile."""
    import stat
    import threading

    target = tmp_path / "secret.fifu"
    target.write_bytes(b"old")
    os.chmod(target, 0o600)
    emb = vf.Embeddings([f"w{i}" for i in range(200_000)], np.ones((200_000, 50), np.float32))
    seen: set[int] = set()
    old_umask = os.umask(0o022)
    try:
        for _ in range(10):  # until the watcher has seen the temporary file
            stop = threading.Event()

            def watch() -> None:
                while not stop.is_set():
                    for entry in os.scandir(tmp_path):
                        if entry.name.endswith(".tmp"):
                            try:
                                seen.add(stat.S_IMODE(entry.stat().st_mode))
                            except FileNotFoundError:
                                pass

            t = threading.Thread(target=watch)
            t.start()
            emb.write_text(target)
            stop.set()
            t.join()
            if seen:
                break
    finally:
        os.umask(old_umask)
    assert seen == {0o600}
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX links and FIFOs")
def test_write_through_links_keeps_mode_and_refuses_special_files(tmp_path: Path, ff: Path) -> None:
    emb = vf.load(ff / "python/similarity.fifu")
    real = tmp_path / "real.fifu"
    real.write_bytes(b"old")
    os.chmod(real, 0o600)
    link = tmp_path / "link.fifu"
    link.symlink_to("real.fifu")  # relative link
    emb.write(link)
    assert link.is_symlink() and os.readlink(link) == "real.fifu"  # still a link
    assert (os.stat(real).st_mode & 0o777) == 0o600  # the file keeps its permissions
    np.testing.assert_array_equal(vf.load(real).storage, emb.storage)
    dangling = tmp_path / "dangling.fifu"
    dangling.symlink_to(tmp_path / "made.fifu")
    emb.write(dangling)  # written through, as open() would
    assert dangling.is_symlink() and (tmp_path / "made.fifu").is_file()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        emb.write(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        emb.write_word2vec(fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # untouched
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_write_refuses_a_read_only_file_as_open_does(tmp_path: Path, ff: Path) -> None:
    """The rename would replace a read-only file whatever its mode: write() refuses it with
    PermissionError exactly when ``open(path, "r+b")`` would (root may write it)."""
    emb = vf.load(ff / "python/similarity.fifu")
    ro = tmp_path / "ro.fifu"
    ro.write_bytes(b"old")
    os.chmod(ro, 0o444)
    try:
        open(ro, "r+b").close()
        writable = True
    except PermissionError:
        writable = False
    if writable:
        emb.write(ro)
        assert vf.load(ro).vocab.words == emb.vocab.words
        assert (os.stat(ro).st_mode & 0o777) == 0o444
    else:
        with pytest.raises(PermissionError, match="read-only"):
            emb.write(ro)
        assert ro.read_bytes() == b"old"


def test_buckets_only_with_bucket_vocabularies() -> None:
    m = np.ones((2, 3), dtype=np.float32)
    for vocab, extra in (("simple", {}), ("explicit", {"ngrams": [("<a>", 0)]})):
        with pytest.raises(ValueError, match="buckets is given only with"):
            vf.Embeddings(["a", "b"], m, vocab=vocab, buckets=3, **extra)
    assert vf.Embeddings(["a"], np.ones((3, 3), np.float32), vocab="bucket", buckets=1).vocab_kind == "BucketSubwordVocab"
    # an exponent of 0 would write a file finalfusion-python refuses to load
    with pytest.raises(ValueError, match="must be 1 to 40"):
        vf.Embeddings(["a"], m, vocab="bucket", buckets=0)
    # out-of-range integers are ValueErrors naming the argument (they were OverflowErrors)
    for kwargs, name in (({"vocab": "fasttext", "buckets": -1}, "buckets=-1"),
                         ({"vocab": "fasttext", "buckets": 2**40}, "buckets="),
                         ({"vocab": "bucket", "buckets": 1, "min_n": -3}, "min_n=-3"),
                         ({"vocab": "explicit", "ngrams": [("<a>", -1)]}, "index -1 of n-gram")):
        with pytest.raises(ValueError, match=name):
            vf.Embeddings(["a", "b"], m, **kwargs)


def test_constructor_checks(tmp_path: Path) -> None:
    m = np.ones((3, 4), dtype=np.float32)
    for bad, shown in ((np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "-inf")):
        b = m.copy()
        b[1, 2] = bad
        with pytest.raises(ValueError, match=rf'matrix row 1 \(word "b"\) holds {shown} at column 2'):
            vf.Embeddings(["a", "b", "c"], b)
    for bad, shown in ((np.nan, "NaN"), (np.inf, "inf"), (-1.0, "-1")):
        with pytest.raises(ValueError, match=rf'norms\[2\] \(word "c"\) is {shown}: norms must be finite and >= 0'):
            vf.Embeddings(["a", "b", "c"], m, norms=[1.0, 0.0, bad])
    with pytest.raises(ValueError, match="duplicate"):
        vf.Embeddings(["a", "b", "a"], m)
    with pytest.raises(ValueError, match="rows"):
        vf.Embeddings(["a", "b"], m)
    with pytest.raises(ValueError, match="vocab"):
        vf.Embeddings(["a", "b", "c"], m, vocab="nope")
    # arguments that are no arrays of numbers are named, with what they are (rust-numpy's
    # "dimensionality mismatch: from=2, to=1" named neither)
    for norms, got in (([[1, 2, 3]], "list"), (1.0, "float"), (np.ones((1, 3)), "a 2-D array of float64")):
        with pytest.raises(TypeError, match=rf"^norms must be a 1-D array of numbers, one per word, got {got}$"):
            vf.Embeddings(["a", "b", "c"], m, norms=norms)
    with pytest.raises(TypeError, match=r"^matrix must be a 2-D array of numbers \(rows, dims\), got a 2-D array of <U1$"):
        vf.Embeddings(["a", "b"], np.array([["a", "b"], ["c", "d"]]))
    emb = vf.Embeddings(["a", "b", "c"], m, metadata={"k": "v"})
    emb.write(tmp_path / "c.fifu")
    back = vf.load(tmp_path / "c.fifu", mmap=True)
    assert back.metadata == {"k": "v"} and list(back) == ["a", "b", "c"]


def test_vocab_indexing(ff: Path) -> None:
    v = vf.load(ff / "python/simple_vocab.fifu").vocab
    assert len(v) == 43
    assert v[-1] == v.words[-1] and v[0] == v.words[0]
    with pytest.raises(IndexError):
        v[43]
    with pytest.raises(KeyError):
        v["not a word"]
    with pytest.raises(TypeError):
        v[1.5]
    assert list(iter(v)) == v.words
    assert v.words[3] in v


@pytest.mark.parametrize("scale", [1e20, 1e-25])
def test_unknown_word_of_huge_or_tiny_rows_is_normalized(scale: float) -> None:
    """The f32 sum of squares overflows (underflows) here; the vector is still a unit vector."""
    m = np.vstack([np.zeros((1, 3), np.float32), np.full((4, 3), scale, np.float32)])
    e = vf.Embeddings(["a"], m, vocab="fasttext", buckets=4)
    v, norm = e.embedding_with_norm("xyz")
    np.testing.assert_allclose(v, np.full(3, 3**-0.5, np.float32), rtol=1e-6)
    assert np.isfinite(norm) and norm > 0


def test_an_iterables_len_is_only_a_hint() -> None:
    """A huge or lying __len__ neither panics nor allocates: the words are what iterates."""
    emb = vf.Embeddings(["a", "b"], np.eye(2, dtype=np.float32))

    class Liar:
        def __len__(self) -> int:
            return 2**40

        def __iter__(self):  # noqa: ANN204
            return iter(["b", "x"])

    vectors, found = emb.lookup(Liar())
    assert found.tolist() == [True, False] and vectors.shape == (2, 2)
    assert emb.doesnt_match(Liar()) == "b"
    with pytest.raises(TypeError):
        emb.lookup(range(2**62))  # ints, not words: an error, not a capacity panic


def test_argument_errors_say_what_was_given() -> None:
    with pytest.raises(TypeError, match="matrix must be a 2-D array .* got a 1-D array"):
        vf.Embeddings(["a", "b"], np.ones(2, np.float32))
    emb = vf.Embeddings(["a", "b"], np.eye(2, dtype=np.float32))
    with pytest.raises(TypeError, match=r"got a float64 array of shape \(1, 2\)$"):
        emb.lookup(["a"], out=np.zeros((1, 2), np.float64))


def test_a_lone_surrogate_is_not_in_the_embeddings() -> None:
    """`in` answers False for anything that is not a word, like a dict: a str holding a lone
    surrogate (not valid Unicode text) too (it raised UnicodeEncodeError)."""
    emb = vf.Embeddings(["a", "b"], np.eye(10, 2, dtype=np.float32), vocab="bucket", buckets=3)
    assert "\ud800" not in emb and "a" in emb and 5 not in emb


def test_a_lone_surrogate_is_a_word_without_an_embedding() -> None:
    """A str holding a lone surrogate (os.fsdecode makes them of undecodable bytes) is in no
    vocabulary and has no n-grams: lookups and queries treat it as any word without an
    embedding (KeyError, None, False) where they raised UnicodeEncodeError."""
    bad = "x\udcff"
    emb = vf.Embeddings(["a", "b", "c"], np.eye(3, dtype=np.float32))
    with pytest.raises(KeyError) as e:
        emb[bad]
    assert e.value.args == (bad,)
    assert emb.embedding(bad) is None and emb.embedding(bad, default=7) == 7
    assert emb.embedding_with_norm(bad) is None
    assert emb.vocab.index(bad) is None and bad not in emb.vocab
    with pytest.raises(KeyError):
        emb.vocab[bad]
    for call in (
        lambda: emb.similar(bad),
        lambda: emb.most_similar(bad),
        lambda: emb.most_similar(["a"], [bad]),
        lambda: emb.most_similar_cosmul(bad),
        lambda: emb.similarity("a", bad),
    ):
        with pytest.raises(KeyError):
            call()
    with pytest.raises(KeyError) as e:
        emb.analogy("a", bad, "zz")
    assert e.value.args == ("analogy words b ('x\\udcff'), c ('zz') have no embedding",)
    # a bucket vocabulary gives unknown words n-grams, but not this one
    sub = vf.Embeddings(["a", "b"], np.eye(10, 2, dtype=np.float32), vocab="bucket", buckets=3)
    assert sub.embedding(bad) is None and sub.embedding("xy") is not None
    # batches: such a word is one without an embedding (even where the empty word has one)
    with_empty = vf.Embeddings(["", "a", "b"], np.eye(3, dtype=np.float32))
    for e in (emb, sub, with_empty):
        vecs, found = e.lookup(["a", bad, "b"])
        assert found.tolist() == [True, False, True] and not vecs[1].any()
        np.testing.assert_array_equal(vecs[[0, 2]], e.lookup(["a", "b"])[0])
        rows, offsets, known = e.vocab.indices_batch(["a", bad, "xy", bad])
        want_rows, want_offsets, want_known = e.vocab.indices_batch(["a", "xy"])
        assert known.tolist() == [True, False, want_known[1], False]
        assert rows.tolist() == want_rows.tolist()
        assert np.diff(offsets).tolist() == [1, 0, int(np.diff(want_offsets)[1]), 0]
    assert with_empty.doesnt_match(["a", bad, "b", "c"]) in ("a", "b")
    assert [w for w, _ in with_empty.similar("a", k=3, skip=[bad])] == ["", "b"]
    with pytest.raises(ValueError, match="word 1 is not valid Unicode text"):
        vf.Embeddings(["a", bad], np.eye(2, dtype=np.float32))


def test_similarity_takes_row_numbers_and_counts_take_any_int() -> None:
    """gensim's keys are words or row numbers in similarity too (it took only str), and a
    topn or k beyond 64 bits asks for every word (it was an OverflowError naming no argument)."""
    rng = np.random.default_rng(2)
    emb = vf.Embeddings(["a", "b", "c", "d"], rng.standard_normal((4, 5)).astype(np.float32))
    assert emb.similarity(0, np.int64(2)) == emb.similarity("a", "c")
    with pytest.raises(KeyError):
        emb.similarity(0, 9)
    with pytest.raises(TypeError, match="similarity takes words"):
        emb.similarity("a", 1.5)
    assert len(emb.most_similar("a", topn=2**200)) == 3
    assert len(emb.most_similar_cosmul("a", topn=2**200, restrict_vocab=2**100)) == 3
    assert len(emb.similar("a", k=2**200)) == 3 and len(emb.analogy("a", "b", "c", k=2**70)) == 1
    assert emb.similar_batch(np.ones((1, 5), np.float32), k=2**65)[0].shape == (1, 4)
    assert emb.most_similar("a", topn=-(2**200)) == []
    with pytest.raises(ValueError, match="k must be >= 0"):
        emb.similar("a", k=-(2**200))


_LONG_WORD_SCRIPT = r'''
import resource, numpy as np, vecfusion as vf
rng = np.random.default_rng(0)
e = vf.Embeddings(["a", "b"], rng.standard_normal((2 + 2**10, 8)).astype(np.float32), vocab="bucket", buckets=10)
w = "xyz" * 700_000  # 2.1M characters, 8.4M n-grams: their ranges and rows alone took ~200 MB
e["warm"]
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (96 << 20), resource.RLIM_INFINITY))
v = e[w]
print(round(float(np.linalg.norm(v)), 5), bool(np.isfinite(v).all()))
'''


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and RLIMIT_AS")
def test_a_very_long_unknown_word_takes_memory_per_character_not_per_ngram() -> None:
    """An unknown word's n-gram rows are added a block at a time: a 2.1M-character word
    (8.4M n-grams) is looked up within 96 MB more address space (it listed every n-gram
    range and row first, ~200 MB, and a long enough word aborted the process on allocation)."""
    out = subprocess.run([sys.executable, "-c", _LONG_WORD_SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1.0", "True"]


def test_a_long_unknown_word_sums_every_ngram_row_across_blocks() -> None:
    """More n-grams than one block (4096): the same sum as adding every row of
    vocab.subword_indices in order, then normalizing."""
    rng = np.random.default_rng(1)
    m = rng.standard_normal((2 + 2**10, 8)).astype(np.float32)
    e = vf.Embeddings(["a", "b"], m, vocab="bucket", buckets=10)
    w = "".join(chr(0x61 + int(c)) for c in rng.integers(0, 26, 3000))  # ~12k n-grams
    idx = e.vocab.subword_indices(w)
    assert len(idx) > 2 * 4096
    acc = np.zeros(8, np.float32)
    for i in idx:
        acc += m[i]
    np.testing.assert_allclose(e[w], acc / np.linalg.norm(acc), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(e.lookup([w])[0][0], e[w])


def test_paths_with_a_tilde_name_the_home_directory(tmp_path: Path, ff: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`~` in a path is the home directory, for every loader, writer and convert (as gensim's
    loaders and the EmbeddingReader take it)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    emb = vf.Embeddings(["a", "b", "c"], np.arange(6, dtype=np.float32).reshape(3, 2) + 1)
    emb.write("~/e.fifu")
    emb.write_word2vec("~/e.bin")
    emb.write_text("~/e.txt")
    emb.write_fasttext("~/e.ftbin")
    for name in ("e.fifu", "e.bin", "e.txt", "e.ftbin"):
        assert (tmp_path / name).is_file(), name
    want = vf.load(tmp_path / "e.fifu").vocab.words
    assert vf.load("~/e.fifu").vocab.words == want
    assert vf.load("~/e.fifu", mmap=True).vocab.words == want
    assert vf.load_word2vec(Path("~/e.bin")).vocab.words == want
    assert vf.load_text("~/e.txt").vocab.words == want
    assert vf.load_fasttext("~/e.ftbin").vocab.words[: len(want)] == want
    from vecfusion.convert import detect_format

    assert detect_format("~/e.bin") == "word2vec"
    vf.convert("~/e.txt", "~/c.fifu", progress=False)
    assert vf.load(tmp_path / "c.fifu").vocab.words == want


def _name_of_bytes(n: int, ext: str, unit: str) -> str:
    """A file name of exactly `n` UTF-8 bytes: `unit` repeated, ASCII filling the rest."""
    room = n - len(ext.encode())
    reps = room // len(unit.encode())
    return unit * reps + "n" * (room - reps * len(unit.encode())) + ext


@pytest.mark.parametrize("unit", ["n", "é", "€", "é€"])
@pytest.mark.parametrize("size", [220, 254, 255])
def test_write_to_a_long_file_name(tmp_path: Path, unit: str, size: int) -> None:
    """A file name near the 255-byte limit: the temporary name beside it is cut short, on a
    character boundary whatever the bytes of the characters around the cut."""
    emb = vf.Embeddings(["a", "b"], np.eye(2, dtype=np.float32))
    for ext, write, load in [
        (".txt", emb.write_text, vf.load_text),
        (".fifu", emb.write, vf.load),
        (".bin", emb.write_word2vec, vf.load_word2vec),
    ]:
        target = tmp_path / _name_of_bytes(size, ext, unit)
        assert len(os.fsencode(target.name)) == size
        write(target)
        assert load(target).vocab.words == ["a", "b"]
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_bytes_paths(tmp_path: Path) -> None:
    emb = vf.Embeddings(["a", "b"], np.eye(2, dtype=np.float32))
    p = os.fsencode(tmp_path / "b.fifu")
    emb.write(p)
    assert vf.load(p).vocab.words == ["a", "b"]
    emb.write_text(os.fsencode(tmp_path / "b.txt"))
    assert vf.load_text(os.fsencode(tmp_path / "b.txt")).vocab.words == ["a", "b"]


@pytest.mark.parametrize(
    "name", ["python/embeddings.fifu", "python/ff_buckets.fifu", "python/pq.fifu", "rust/quantized.fifu", "fst"]
)
def test_embeddings_pickle_and_copy(tmp_path: Path, ff: Path, mmap: bool, name: str) -> None:
    """Pickled embeddings come back as the same embeddings (vocabulary, matrix, norms,
    metadata), with their matrix in memory, even after the file they were mapped from is
    gone; copies share the matrix and have their own metadata."""
    import copy
    import pickle

    if name == "fst":
        src = tmp_path / "fst.fifu"
        vf.load(ff / "python/ff_buckets.fifu").write(src, vocab="fst")
    else:
        src = tmp_path / Path(name).name
        src.write_bytes((ff / name).read_bytes())
    emb = vf.load(src, mmap=mmap)
    emb.metadata = {"pickled": True, "name": name}
    data = pickle.dumps(emb, protocol=pickle.HIGHEST_PROTOCOL)
    del emb
    emb = vf.load(src, mmap=mmap)
    os.remove(src)  # the copy no longer needs the file; `emb` keeps its own mapping
    back = pickle.loads(data)
    assert back.metadata == {"pickled": True, "name": name}
    assert (back.vocab_kind, len(back), back.dims) == (emb.vocab_kind, len(emb), emb.dims)
    assert back.storage_kind == {"MmapArray": "NdArray", "MmapQuantizedArray": "QuantizedArray"}.get(emb.storage_kind, emb.storage_kind)
    assert list(back.vocab.words) == list(emb.vocab.words)
    words = list(emb.vocab.words) + ["unknownish", "über", ""]
    got, found = back.lookup(words)
    want, want_found = emb.lookup(words)
    np.testing.assert_array_equal(found, want_found)
    np.testing.assert_array_equal(got, want)  # bit for bit, unknown words included
    if emb.norms is None:
        assert back.norms is None
    else:
        np.testing.assert_array_equal(back.norms, emb.norms)
    # the pickle is the finalfusion file (with the metadata as it was set)
    again = tmp_path / "again.fifu"
    back.write(again)
    np.testing.assert_array_equal(vf.load(again).lookup(words)[0], want)

    for c in (copy.copy(emb), copy.deepcopy(emb)):
        assert c.storage_kind == emb.storage_kind and c.metadata == emb.metadata
        np.testing.assert_array_equal(c.lookup(words)[0], want)
        c.metadata = {"other": 1}
        assert emb.metadata != c.metadata


def test_pickled_fasttext_model_keeps_fasttexts_ngram_rule(peers: Path) -> None:
    """A model read from fastText leaves the single `<` and `>` out of its n-grams (a rule the
    finalfusion chunk does not record): its pickle keeps the rule, and fastText's vectors."""
    import pickle

    ft = vf.load_fasttext(peers / "ft_skipgram.bin")
    back = pickle.loads(pickle.dumps(ft))
    for w in ["a", "über", "zzqx", ft.vocab[3]]:
        assert back.vocab.ngrams(w) == ft.vocab.ngrams(w), w
        assert back.vocab.subword_indices(w) == ft.vocab.subword_indices(w), w
        np.testing.assert_array_equal(back.fasttext_vector(w), ft.fasttext_vector(w))
        np.testing.assert_array_equal(back[w], ft[w])
