"""Similarity and analogy queries (issue 4) against golden answers and brute force."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import vecfusion as vf

from conftest import FF, PEERS

BERLIN_TOP10 = [
    "Potsdam",
    "Hamburg",
    "Leipzig",
    "Dresden",
    "München",
    "Düsseldorf",
    "Bonn",
    "Stuttgart",
    "Weimar",
    "Berlin-Charlottenburg",
]


def _json(name: str) -> dict:
    return json.loads((PEERS / name).read_text(encoding="utf-8"))


def assert_answers(
    got: list[tuple[str, float]], expected: list[tuple[str, float]], tol: float = 1e-5, rtol: float = 0.0
) -> None:
    """Same words in the same order, scores within `tol` (plus `rtol` relative)."""
    assert [w for w, _ in got] == [w for w, _ in expected]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=tol, rtol=rtol)


def brute_force(
    matrix: np.ndarray, words: list[str], query: np.ndarray, k: int, skip: set[str] = frozenset()
) -> list[tuple[str, float]]:
    """Reference answers: dot products in float64, best first, ties to the word that sorts first."""
    scores = matrix.astype(np.float64) @ query.astype(np.float64)
    order = sorted(
        (i for i in range(len(words)) if words[i] not in skip), key=lambda i: (-scores[i], words[i])
    )
    return [(words[i], float(scores[i])) for i in order[:k]]


def unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


@pytest.fixture(scope="module")
def cities() -> vf.Embeddings:
    return vf.load(FF / "python" / "similarity.fifu")


@pytest.fixture(scope="module")
def w2v() -> vf.Embeddings:
    return vf.load(PEERS / "w2v.fifu")


@pytest.fixture(scope="module")
def ft() -> vf.Embeddings:
    return vf.load(PEERS / "ft_skipgram.fifu")


# --- golden answers -------------------------------------------------------------------


@pytest.mark.parametrize("mmap", [False, True])
def test_berlin_golden_list(mmap: bool) -> None:
    emb = vf.load(FF / "python" / "similarity.fifu", mmap=mmap)
    got = emb.similar("Berlin", k=10)
    assert [w for w, _ in got] == BERLIN_TOP10
    assert got[0][1] == pytest.approx(0.8848505, abs=1e-6)
    assert "Berlin" not in [w for w, _ in got]


def test_berlin_from_raw_rust_file() -> None:
    # rust/similarity.fifu stores the raw (not normalized) vectors; the reference answer is
    # the cosine, i.e. the query over the row-normalized matrix.
    raw = vf.load(FF / "rust" / "similarity.fifu")
    m = np.asarray(raw.storage)
    normalized = vf.Embeddings(list(raw.vocab.words), m / np.linalg.norm(m, axis=1, keepdims=True))
    got = normalized.similar("Berlin", k=10)
    assert [w for w, _ in got] == BERLIN_TOP10
    assert got[0][1] == pytest.approx(0.8848505, abs=1e-6)


def test_raw_storage_scores_are_dot_products() -> None:
    # On a non-normalized matrix a word query is its stored row as is, and the score is
    # the dot product (FORMAT.md "Meaning"); a vector query is normalized.
    raw = vf.load(FF / "rust" / "similarity.fifu")
    m = np.asarray(raw.storage)
    words = list(raw.vocab.words)
    for w in ("Berlin", "Köln", "Weimar"):
        expected = brute_force(m, words, m[words.index(w)], 12, skip={w})
        assert_answers(raw.similar(w, k=12), expected, rtol=1e-6)
    q = m[3] + m[7]
    assert_answers(raw.similar(q, k=41), brute_force(m, words, unit(q), 41))


def test_nearly_unit_rows_with_norms_are_searched_with_their_lengths() -> None:
    """With a norms chunk, rows 1e-4 off unit length were taken as unit (plain dot products):
    a row of length 1.00009 outranked a unit row whose cosine is 5e-5 higher (gensim ranks
    by cosine)."""
    def row(cos: float, other: tuple[float, float], length: float) -> np.ndarray:
        s = np.sqrt(1 - cos * cos)
        return np.array([cos, s * other[0], s * other[1]]) * length

    m = np.array([[1, 0, 0], row(0.9, (1, 0), 1.00009), row(0.90005, (0, 1), 1.0)], np.float32)
    words = ["q", "a", "b"]
    e = vf.Embeddings(words, m, norms=np.ones(3, np.float32))
    # gensim's scores: cosines with each row's own length
    cos = (m[1:] @ m[0]) / np.linalg.norm(m[1:].astype(np.float64), axis=1)
    got = e.most_similar("q", topn=2)
    assert [w for w, _ in got] == ["b", "a"]
    np.testing.assert_allclose([s for _, s in got], [cos[1], cos[0]], rtol=1e-6)


def test_gensim_most_similar(w2v: vf.Embeddings) -> None:
    expected = _json("w2v.expected.json")["most_similar_top10"]
    assert len(expected) >= 8
    for word, answers in expected.items():
        assert_answers(w2v.similar(word, k=10), [(w, s) for w, s in answers])


def test_gensim_style_helpers(w2v: vf.Embeddings) -> None:
    """most_similar / similarity / doesnt_match with gensim's semantics and answers."""
    exp = _json("w2v.expected.json")
    for word, answers in exp["most_similar_top10"].items():
        assert_answers(w2v.most_similar(word, topn=10), [(w, s) for w, s in answers])
        assert_answers(w2v.most_similar(positive=[word], topn=10), [(w, s) for w, s in answers])
    for case in exp["analogy_most_similar"]:
        got = w2v.most_similar(positive=case["positive"], negative=case["negative"], topn=10)
        assert_answers(got, [(w, s) for w, s in case["result"]])
    for word, answers in exp["most_similar_cosmul_top10"].items():
        assert_answers(w2v.most_similar_cosmul(word, topn=10), [(w, s) for w, s in answers], tol=2e-6)
    for case in exp["analogy_most_similar"]:
        if "cosmul" in case:
            got = w2v.most_similar_cosmul(positive=case["positive"], negative=case["negative"], topn=10)
            assert_answers(got, [(w, s) for w, s in case["cosmul"]], tol=2e-6)
    for pair, want in exp["similarity"].items():
        a, b = pair.split("|")
        assert abs(w2v.similarity(a, b) - want) < 1e-6
        assert abs(w2v.similarity(b, a) - want) < 1e-6
    for words, odd in exp["doesnt_match"].items():
        assert w2v.doesnt_match(words.split("|")) == odd
        assert w2v.doesnt_match(words.split("|") + ["no-such-word"]) == odd  # skipped, as in gensim
    with pytest.raises(KeyError, match="no-such-word"):
        w2v.similarity("license", "no-such-word")
    with pytest.raises(KeyError, match="no-such-word"):
        w2v.most_similar(positive=["license"], negative=["no-such-word"])
    with pytest.raises(ValueError, match="none of the words"):
        w2v.doesnt_match(["no-such-word"])
    with pytest.raises(ValueError, match="at least one"):
        w2v.most_similar()
    with pytest.raises(ValueError, match="at least one positive"):
        w2v.most_similar_cosmul(negative=["license"])  # as gensim
    # raw (unnormalized) rows without norms: still gensim's cosines
    raw = vf.load_word2vec(PEERS / "w2v.bin", normalize=False)
    assert raw.norms is None
    for word, answers in exp["most_similar_top10"].items():
        assert_answers(raw.most_similar(word, topn=10), [(w, s) for w, s in answers])
    for word, answers in exp["most_similar_cosmul_top10"].items():
        assert_answers(raw.most_similar_cosmul(word, topn=10), [(w, s) for w, s in answers], tol=2e-6)


def test_most_similar_weighted_terms_and_vectors(w2v: vf.Embeddings) -> None:
    """gensim's forms: (word, weight) pairs and raw vectors among the terms; the query is
    sum(weight * unit word vector or raw vector), normalized; words among the terms skipped.
    As in gensim, a pair's weight is used as given, also among `negative`."""
    m = np.asarray(w2v.storage, np.float64)
    rows = m / np.linalg.norm(m, axis=1, keepdims=True)
    words = list(w2v)
    unit = lambda w: rows[words.index(w)]  # noqa: E731
    vec = (m[words.index("window")] * 0.3).astype(np.float32)
    q = 2.0 * unit("license") + vec + 0.5 * unit("software") - unit("gnu")
    q /= np.linalg.norm(q)
    scores = rows @ q
    order = [i for i in np.argsort(-scores, kind="stable") if words[i] not in ("license", "software", "gnu")][:10]
    want = [(words[i], float(scores[i])) for i in order]
    got = w2v.most_similar(positive=[("license", 2.0), vec], negative=[("software", 0.5), "gnu"], topn=10)
    assert_answers(got, want, tol=1e-5)
    # a single vector as `positive`, and a vector equal to a word's row finds that word first
    got = w2v.most_similar(positive=m[words.index("gpl")].astype(np.float32), topn=1)
    assert got[0][0] == "gpl" and abs(got[0][1] - 1.0) < 1e-5
    with pytest.raises(TypeError, match="not bytes"):
        w2v.most_similar(positive=[b"license"])
    with pytest.raises(ValueError, match="dimensions"):
        w2v.most_similar(positive=[np.ones(3, np.float32)])
    # a pair given as a list, as gensim takes it
    pairs = w2v.most_similar(positive=[("license", 2.0), vec], negative=[("software", 0.5), "gnu"], topn=10)
    assert w2v.most_similar(positive=[["license", 2.0], vec], negative=[["software", 0.5], "gnu"], topn=10) == pairs
    # weights that are not finite numbers are refused, not answered with garbage
    for bad in (float("nan"), float("inf"), -float("inf"), 1e39):
        with pytest.raises(ValueError, match="weight"):
            w2v.most_similar(positive=[("license", 1.0), ("gnu", bad)])
    # huge but finite weights do not overflow the sum
    big = w2v.most_similar(positive=[("license", 3e38), ("software", 3e38)], topn=3)
    assert [w for w, _ in big] == [w for w, _ in w2v.most_similar(positive=["license", "software"], topn=3)]
    # gensim: topn below 1 gives no answers
    assert w2v.most_similar("license", topn=-3) == [] and w2v.most_similar_cosmul("license", topn=-3) == []


def test_most_similar_topn_none_gives_every_cosine(w2v: vf.Embeddings, cities: vf.Embeddings) -> None:
    """gensim's `topn=None`: the cosine with every word row, in row order, the given words
    included; on dense rows with and without norms, and on quantized rows (rebuilt)."""
    raw = vf.Embeddings(list(cities.vocab.words), np.asarray(cities.storage) * 3.0)  # rows not unit
    quant = cities.quantize(n_subquantizers=cities.dims // 4, bits=4, opq=True, progress=False)
    for emb, words in ((w2v, ["license", "software"]), (raw, ["Berlin", "Potsdam"]), (quant, ["Berlin", "Potsdam"])):
        m = emb.storage.reconstruct() if emb is quant else np.asarray(emb.storage)
        m = m.astype(np.float64)
        lengths = np.linalg.norm(m, axis=1)
        rows = m / np.where(lengths > 0, lengths, 1)[:, None]
        vocab = list(emb.vocab.words)
        q = rows[vocab.index(words[0])] - rows[vocab.index(words[1])]
        q /= np.linalg.norm(q)
        got = emb.most_similar(positive=[words[0]], negative=[words[1]], topn=None)
        assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (len(emb),)
        np.testing.assert_allclose(got, rows @ q, atol=2e-5)
        # the top of the array is the ranked answer (without the given words)
        ranked = emb.most_similar(positive=[words[0]], negative=[words[1]], topn=5)
        order = [vocab[i] for i in np.argsort(-got, kind="stable") if vocab[i] not in words][:5]
        assert [w for w, _ in ranked] == order


def test_gensim_similar_by_vector(w2v: vf.Embeddings) -> None:
    case = _json("w2v.expected.json")["similar_by_vector"]["window+license"]
    vec = np.array(case["vector"], dtype=np.float32)  # not normalized: similar() normalizes
    assert_answers(w2v.similar(vec, k=10), [(w, s) for w, s in case["top10"]])
    # a list of floats works as well
    assert_answers(w2v.similar(case["vector"], k=10), [(w, s) for w, s in case["top10"]])
    # bytes are neither a word nor a vector
    for q in (b"license", bytearray(b"x" * w2v.dims)):
        with pytest.raises(TypeError, match="decode it to str"):
            w2v.similar(q, k=2)


def test_gensim_analogies(w2v: vf.Embeddings) -> None:
    cases = _json("w2v.expected.json")["analogy_most_similar"]
    assert cases
    for case in cases:
        (pos1, pos2), (neg,) = case["positive"], case["negative"]
        # gensim: pos1 - neg + pos2; ours: analogy(a, b, c) = b - a + c
        got = w2v.analogy(neg, pos1, pos2, k=10)
        assert_answers(got, [(w, s) for w, s in case["result"]])


def test_finalfusion_python_answers(w2v: vf.Embeddings) -> None:
    expected = _json("finalfusion.expected.json")["w2v.fifu"]
    for word, answers in expected["word_similarity_k10"].items():
        assert_answers(w2v.similar(word, k=10), [(w, s) for w, s in answers])
    for case in expected["analogy_k10"]:
        assert_answers(w2v.analogy(*case["query"], k=10), [(w, s) for w, s in case["result"]])


def test_fasttext_nearest_neighbors(ft: vf.Embeddings) -> None:
    # fastText ranks its own word vectors (mean of word and n-gram rows), normalized; the
    # finalfusion conversion stores exactly those rows, and an unknown word's query is the
    # normalized n-gram sum, the same direction as fastText's n-gram mean.
    expected = _json("ft_skipgram.expected.json")["nearest_neighbors_k10"]
    oov = [w for w in expected if ft.vocab.index(w) is None or isinstance(ft.vocab.index(w), list)]
    assert oov, "the fixture has unknown query words (über, softwares)"
    for word, answers in expected.items():
        assert_answers(ft.similar(word, k=10), [(w, s) for s, w in answers])


def test_fasttext_analogies(ft: vf.Embeddings) -> None:
    for case in _json("ft_skipgram.expected.json")["analogies_k10"]:
        a, b, c = case["query"]  # fastText: vec(a) - vec(b) + vec(c)
        assert_answers(ft.analogy(b, a, c, k=10), [(w, s) for s, w in case["result"]])


def test_candidates_are_word_rows_only(ft: vf.Embeddings) -> None:
    emb = vf.load(FF / "python" / "ff_buckets.fifu")
    assert emb.vocab.rows > len(emb)
    got = emb.similar(np.ones(emb.dims, dtype=np.float32), k=100)
    assert sorted(w for w, _ in got) == sorted(emb.vocab.words)
    idx, _ = ft.similar_batch(np.ones((2, ft.dims), dtype=np.float32), k=len(ft) + 50)
    assert idx.shape == (2, len(ft)) and idx.max() < len(ft)


# --- quantized storage ----------------------------------------------------------------


@pytest.mark.parametrize("path", [FF / "python" / "pq.fifu", FF / "rust" / "quantized.fifu"])
@pytest.mark.parametrize("mmap", [False, True])
def test_quantized_equals_brute_force_over_reconstruction(path: Path, mmap: bool) -> None:
    emb = vf.load(path, mmap=mmap)
    assert emb.storage_kind.endswith("QuantizedArray")
    recon = emb.storage.reconstruct()
    words = list(emb.vocab.words)
    for w in ("Berlin", "Potsdam", "Weimar"):
        q = recon[words.index(w)]
        # rust/quantized.fifu is not normalized (scores in the hundreds): relative tolerance
        assert_answers(emb.similar(w, k=15), brute_force(recon, words, q, 15, skip={w}), rtol=1e-6)
    rng = np.random.default_rng(7)
    queries = rng.standard_normal((9, emb.dims)).astype(np.float32)
    idx, scores = emb.similar_batch(queries, k=6)
    for i, q in enumerate(queries):
        expected = brute_force(recon, words, unit(q), 6)
        assert [words[j] for j in idx[i]] == [w for w, _ in expected]
        np.testing.assert_allclose(scores[i], [s for _, s in expected], atol=1e-5)
        assert_answers(emb.similar(q, k=6), expected)
    a, b, c = "Berlin", "Potsdam", "Hamburg"
    q = unit(recon[words.index(b)] - recon[words.index(a)] + recon[words.index(c)])
    assert_answers(emb.analogy(a, b, c, k=5), brute_force(recon, words, q, 5, skip={a, b, c}))


@pytest.mark.parametrize("source", ["python/pq.fifu", "rust/quantized.fifu", "pq", "opq", "pq+norms", "opq+norms"])
def test_quantized_most_similar_is_gensim_over_the_rebuilt_rows(cities: vf.Embeddings, source: str) -> None:
    """gensim's most_similar on the rebuilt matrix: cosines (rebuilt rows are not unit
    vectors, whether or not the file has a norms chunk), not dot products."""
    if source.startswith(("pq", "opq")):
        src = cities
        if source.endswith("+norms"):  # a norms chunk: the stored rows were unit vectors
            m = np.asarray(cities.storage)
            n = np.linalg.norm(m, axis=1)
            src = vf.Embeddings(list(cities.vocab.words), m / n[:, None], norms=n)
        emb = src.quantize(n_subquantizers=src.dims // 4, bits=4, opq=source.startswith("opq"), progress=False)
        assert (emb.norms is not None) == source.endswith("+norms")
    else:
        emb = vf.load(FF / source)
    recon = emb.storage.reconstruct().astype(np.float64)
    lengths = np.linalg.norm(recon, axis=1)
    assert np.ptp(lengths) > 1e-3  # (rows of different lengths: dot products would rank differently)
    rows = recon / np.where(lengths > 0, lengths, 1)[:, None]
    words = list(emb.vocab.words)
    for pos, neg in ((["Berlin"], []), (["Berlin", "Potsdam"], ["Hamburg"])):
        q = sum(rows[words.index(w)] for w in pos) - sum(rows[words.index(w)] for w in neg)
        want = brute_force(rows, words, unit(q), 10, skip=set(pos) | set(neg))
        assert_answers(emb.most_similar(positive=pos, negative=neg, topn=10), want, tol=2e-5)


def test_quantized_close_to_dense(cities: vf.Embeddings) -> None:
    pq = vf.load(FF / "python" / "pq.fifu")
    dense = [w for w, _ in cities.similar("Berlin", k=5)]
    approx = [w for w, _ in pq.similar("Berlin", k=5)]
    assert len(set(dense) & set(approx)) >= 3


# --- batch, edge cases ----------------------------------------------------------------


def test_batch_equals_single(w2v: vf.Embeddings) -> None:
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((37, w2v.dims)).astype(np.float32)
    queries[5] = np.asarray(w2v.storage)[17]
    idx, scores = w2v.similar_batch(queries, k=12)
    assert idx.dtype == np.int64 and scores.dtype == np.float32 and idx.shape == (37, 12)
    words = w2v.vocab.words
    for i, q in enumerate(queries):
        single = w2v.similar(q, k=12)
        assert [words[j] for j in idx[i]] == [w for w, _ in single]
        assert scores[i].tolist() == [s for _, s in single]  # bit-identical


def test_large_random_matrix_against_numpy() -> None:
    # Big enough for the parallel row blocks, 37 dims to exercise the kernel's tail.
    rng = np.random.default_rng(3)
    n, d = 40_000, 37
    m = rng.standard_normal((n, d)).astype(np.float32)
    words = [f"w{i:05d}" for i in range(n)]
    emb = vf.Embeddings(words, m)
    queries = rng.standard_normal((7, d)).astype(np.float32)
    idx, scores = emb.similar_batch(queries, k=20)
    for i, q in enumerate(queries):
        u = unit(q.astype(np.float64))
        ref = m.astype(np.float64) @ u
        top = np.argsort(-ref, kind="stable")[:20]
        assert idx[i].tolist() == top.tolist()
        np.testing.assert_allclose(scores[i], ref[top], atol=1e-5)
        single = emb.similar(q, k=20)
        assert [words[j] for j in idx[i]] == [w for w, _ in single]
        assert scores[i].tolist() == [s for _, s in single]
    got = emb.similar(words[123], k=5)
    ref = m.astype(np.float64) @ m[123].astype(np.float64)
    ref[123] = -np.inf
    assert [w for w, _ in got] == [words[j] for j in np.argsort(-ref, kind="stable")[:5]]


def test_ties_go_to_the_word_that_sorts_first() -> None:
    words = ["delta", "Alpha", "charlie", "bravo", "über", "echo"]
    m = np.tile(np.array([[1.0, 0.0, 0.0]], dtype=np.float32), (6, 1))
    m[5] = [0.0, 1.0, 0.0]
    emb = vf.Embeddings(words, m)
    got = emb.similar(np.array([1.0, 0.0, 0.0]), k=4)
    assert [w for w, _ in got] == ["Alpha", "bravo", "charlie", "delta"]
    assert emb.similar("delta", k=10)[:4] == [("Alpha", 1.0), ("bravo", 1.0), ("charlie", 1.0), ("über", 1.0)]
    idx, _ = emb.similar_batch(np.array([[2.0, 0.0, 0.0]] * 5), k=5)
    assert [[words[j] for j in row] for row in idx] == [["Alpha", "bravo", "charlie", "delta", "über"]] * 5


def test_k_larger_than_vocabulary_and_k_zero(cities: vf.Embeddings) -> None:
    n = len(cities)
    got = cities.similar("Berlin", k=10_000)
    assert len(got) == n - 1 and "Berlin" not in [w for w, _ in got]
    assert len(cities.similar(cities["Berlin"], k=n + 5)) == n
    idx, scores = cities.similar_batch(np.stack([cities["Bonn"]] * 3), k=n + 100)
    assert idx.shape == scores.shape == (3, n)
    assert sorted(idx[0].tolist()) == list(range(n))
    assert cities.similar("Berlin", k=0) == []
    assert cities.analogy("Berlin", "Potsdam", "Hamburg", k=0) == []
    idx, scores = cities.similar_batch(np.ones((4, cities.dims)), k=0)
    assert idx.shape == scores.shape == (4, 0)
    idx, scores = cities.similar_batch(np.ones((0, cities.dims)), k=3)
    assert idx.shape == scores.shape == (0, 3)
    with pytest.raises(ValueError, match="k"):
        cities.similar("Berlin", k=-1)


def test_zero_vector(cities: vf.Embeddings) -> None:
    zero = np.zeros(cities.dims, dtype=np.float32)
    got = cities.similar(zero, k=5)
    assert [s for _, s in got] == [0.0] * 5
    assert [w for w, _ in got] == sorted(cities.vocab.words)[:5]
    idx, scores = cities.similar_batch(np.zeros((2, cities.dims)), k=5)
    assert (scores == 0).all()
    assert [cities.vocab[int(j)] for j in idx[1]] == [w for w, _ in got]


def test_bad_query_vectors(cities: vf.Embeddings) -> None:
    v = np.array(cities["Bonn"])
    v[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cities.similar(v)
    m = np.stack([cities["Bonn"]] * 3)
    m[2, 7] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cities.similar_batch(m)
    v[3] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        cities.similar(v)
    with pytest.raises(ValueError, match="dimensions"):
        cities.similar(np.ones(cities.dims + 1, dtype=np.float32))
    with pytest.raises(ValueError, match="columns"):
        cities.similar_batch(np.ones((2, cities.dims - 1), dtype=np.float32))
    with pytest.raises(TypeError):
        cities.similar(np.ones((2, cities.dims), dtype=np.float32))
    with pytest.raises(TypeError):
        cities.similar(12)
    with pytest.raises(TypeError):
        cities.similar("Berlin", skip="Potsdam")


def test_unknown_words(cities: vf.Embeddings, ft: vf.Embeddings) -> None:
    with pytest.raises(KeyError, match="Atlantis"):
        cities.similar("Atlantis")
    with pytest.raises(KeyError) as e:
        cities.analogy("Berlin", "Atlantis", "Hamburg")
    msg = str(e.value)
    assert "Atlantis" in msg and " b " in msg and "Hamburg" not in msg
    with pytest.raises(KeyError) as e:
        cities.analogy("Mu", "Berlin", "Lemuria")
    msg = str(e.value)
    assert "a ('Mu')" in msg.replace('"', "'") and "c ('Lemuria')" in msg.replace('"', "'")
    # an unknown word with n-grams works as a query; one too short for any n-gram does not
    assert ft.similar("softwarez", k=3)
    with pytest.raises(KeyError):
        ft.similar("", k=3)


def test_skip_and_mask(cities: vf.Embeddings) -> None:
    m = np.asarray(cities.storage)
    words = list(cities.vocab.words)
    skip = {"Potsdam", "Hamburg", "nowhere"}
    got = cities.similar("Berlin", k=8, skip=skip)
    assert_answers(got, brute_force(m, words, m[words.index("Berlin")], 8, skip={"Berlin"} | skip))
    a, b, c = "Berlin", "Potsdam", "Hamburg"
    q = unit(m[words.index(b)] - m[words.index(a)] + m[words.index(c)])
    for mask in [(True, True, True), (False, True, True), (True, False, False), (False, False, False)]:
        skipped = {w for w, on in zip((a, b, c), mask) if on}
        assert_answers(cities.analogy(a, b, c, k=6, mask=mask), brute_force(m, words, q, 6, skip=skipped))


def test_mmap_equals_memory() -> None:
    path = PEERS / "w2v.fifu"
    a, b = vf.load(path), vf.load(path, mmap=True)
    assert b.storage_kind == "MmapArray"
    assert a.similar("license", k=20) == b.similar("license", k=20)
    q = np.random.default_rng(5).standard_normal((6, a.dims)).astype(np.float32)
    for x, y in zip(a.similar_batch(q, k=7), b.similar_batch(q, k=7)):
        np.testing.assert_array_equal(x, y)
    assert a.analogy("insert", "mode", "normal") == b.analogy("insert", "mode", "normal")


def test_queries_from_threads(w2v: vf.Embeddings) -> None:
    expected = {w: w2v.similar(w, k=5) for w in ("license", "window", "vim", "the")}
    results: dict[str, list] = {}

    def work(word: str) -> None:
        for _ in range(20):
            results[word] = w2v.similar(word, k=5)

    threads = [threading.Thread(target=work, args=(w,)) for w in expected]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == expected


# --- CLI ------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vecfusion", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_similar() -> None:
    r = _cli("similar", str(FF / "python" / "similarity.fifu"), "Berlin", "-k", "3")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == BERLIN_TOP10[:3]
    assert float(lines[0].split("\t")[1]) == pytest.approx(0.8848505, abs=1e-6)
    r = _cli("similar", str(FF / "python" / "similarity.fifu"), "Berlin", "--mmap")
    assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 10
    r = _cli("similar", str(FF / "python" / "similarity.fifu"), "Atlantis")
    assert r.returncode == 1 and "Atlantis" in r.stderr


def test_cli_analogy(w2v: vf.Embeddings) -> None:
    r = _cli("analogy", str(PEERS / "w2v.fifu"), "insert", "mode", "normal", "-k", "4")
    assert r.returncode == 0, r.stderr
    got = [line.split("\t")[0] for line in r.stdout.strip().splitlines()]
    assert got == [w for w, _ in w2v.analogy("insert", "mode", "normal", k=4)]
    r = _cli("analogy", str(PEERS / "w2v.fifu"), "insert", "nosuchword", "normal")
    assert r.returncode == 1 and "nosuchword" in r.stderr and " B " in r.stderr


def test_batch_accepts_any_layout_and_dtype(w2v: vf.Embeddings) -> None:
    rng = np.random.default_rng(11)
    q = rng.standard_normal((5, w2v.dims)).astype(np.float32)
    idx, scores = w2v.similar_batch(q, k=4)
    for variant in (np.asfortranarray(q), q.astype(np.float64), np.repeat(q, 2, axis=0)[::2], q.tolist()):
        i2, s2 = w2v.similar_batch(variant, k=4)
        np.testing.assert_array_equal(i2, idx)
        np.testing.assert_allclose(s2, scores, atol=1e-6)
    single = w2v.similar(np.repeat(q[0], 2)[::2], k=4)
    assert [w for w, _ in single] == [w2v.vocab[int(j)] for j in idx[0]]


def test_any_huge_k_means_every_word() -> None:
    """k beyond the vocabulary gives every word, however large (2**63 and up were
    OverflowErrors); a negative k stays a ValueError naming it."""
    e = vf.Embeddings(["a", "b", "c"], np.eye(3, dtype=np.float32))
    for k in (2**63, 2**70):
        assert [w for w, _ in e.similar("a", k)] == ["b", "c"]
        assert [w for w, _ in e.most_similar("a", topn=k)] == ["b", "c"]
        assert [w for w, _ in e.analogy("a", "b", "c", k)] == []
    assert e.most_similar("a", topn=-1) == []  # gensim's rule for topn < 1
    with pytest.raises(ValueError, match="k must be >= 0"):
        e.similar("a", -1)


def test_gensim_int_keys_and_cosmul_vectors(w2v: vf.Embeddings) -> None:
    """gensim's int keys (a row number stands for the word of that row, also as a numpy
    integer; a number without a row is a KeyError as in gensim), and most_similar_cosmul with
    vectors (used as given, gensim's rule) and topn=None (every row's score), checked against
    gensim's formula computed with numpy."""
    words = list(w2v.vocab.words)
    i = words.index("license")
    assert w2v.most_similar(positive=[i], negative=[np.int64(words.index("gnu"))], topn=5) == w2v.most_similar(
        positive=["license"], negative=["gnu"], topn=5
    )
    assert w2v.most_similar(i, topn=3) == w2v.most_similar("license", topn=3)
    assert w2v.most_similar_cosmul(positive=[i], topn=3) == w2v.most_similar_cosmul(positive=["license"], topn=3)
    for bad in (len(words), -1, 2**70):
        with pytest.raises(KeyError, match=f"Key '{bad}' not present"):
            w2v.most_similar(positive=[bad])
    with pytest.raises(TypeError):
        w2v.most_similar(positive=[True])  # a bool is no row number
    with pytest.raises(TypeError, match="not bytes"):
        w2v.most_similar_cosmul(positive=[b"license"])
    with pytest.raises(TypeError, match="most_similar_cosmul takes"):
        w2v.most_similar_cosmul(positive=[("license", 2.0)])  # no weights in 3CosMul

    # gensim's 3CosMul with numpy: rows over their norms, words as unit vectors, vectors as given
    m = np.asarray(w2v.storage, np.float64)[: len(words)]
    norms = np.linalg.norm(m, axis=1)
    unit = lambda w: np.asarray(w2v[w], np.float64) / np.linalg.norm(w2v[w])  # noqa: E731
    vec = np.asarray(w2v["software"], np.float64) * 0.7 + np.asarray(w2v["vim"], np.float64) * 0.2
    pos, neg = [unit("license"), vec], [unit("gnu")]
    shifted = lambda t: (1 + m @ t / norms) / 2  # noqa: E731
    want = np.prod([shifted(t) for t in pos], axis=0) / (np.prod([shifted(t) for t in neg], axis=0) + 1e-6)
    terms = dict(positive=["license", vec.astype(np.float32)], negative=["gnu"])
    allv = w2v.most_similar_cosmul(**terms, topn=None)
    assert allv.dtype == np.float32 and allv.shape == (len(words),)
    np.testing.assert_allclose(allv, want, rtol=2e-5, atol=1e-6)
    top = w2v.most_similar_cosmul(**terms, topn=5)
    order = [j for j in np.argsort(-want, kind="stable") if words[j] not in ("license", "gnu")][:5]
    assert [w for w, _ in top] == [words[j] for j in order]
    np.testing.assert_allclose([s for _, s in top], want[order], rtol=2e-5)


def test_cosines_of_huge_and_tiny_unnormalized_rows(tmp_path: Path) -> None:
    """Rows kept unnormalized (normalize=False) whose f32 sum of squares overflows (1e20) or
    underflows (1e-25) get their true cosine in most_similar and most_similar_cosmul (they
    scored 0)."""
    for scale in (1e20, 1e-25):
        p = tmp_path / "t.txt"
        p.write_text(f"a {scale!r} {scale * 2!r}\nb 1 2\nc 2 -1\n")
        e = vf.load_text(p, dims=False, normalize=False)
        np.testing.assert_allclose(e.most_similar(positive=["b"], topn=None), [1.0, 1.0, 0.0], atol=1e-6)
        (word, score), = e.most_similar(positive=["b"], topn=1)
        assert word == "a" and abs(score - 1.0) < 1e-6
        np.testing.assert_allclose(e.most_similar_cosmul(positive=["b"], topn=None), [1.0, 1.0, 0.5], rtol=1e-5)


def test_zero_dimensional_rows_score_alike_in_both_cosmul_paths() -> None:
    """Rows without components have cosine 0 with everything: 3CosMul scores each
    (1 + 0) / 2 / (1 + 1e-6) with topn=None as with topn=k (topn=None gave 0)."""
    e = vf.Embeddings(["a", "b", "c"], np.zeros((3, 0), np.float32))
    want = 0.5 / (1 + 1e-6)
    np.testing.assert_allclose(e.most_similar_cosmul(["a"], topn=None), [want] * 3, rtol=1e-6)
    assert [w for w, _ in e.most_similar_cosmul(["a"], topn=3)] == ["b", "c"]
    np.testing.assert_allclose([s for _, s in e.most_similar_cosmul(["a"], topn=3)], [want] * 2, rtol=1e-6)
    np.testing.assert_array_equal(e.most_similar(["a"], topn=None), [0.0] * 3)


def test_a_list_pair_with_a_row_number(w2v: vf.Embeddings) -> None:
    """gensim reads a two-item list as (key, weight), an int key too: [5, 2.0] is row 5
    weighted 2 (it was taken as a 2-value vector)."""
    word = w2v.vocab[5]
    assert w2v.most_similar(positive=[[5, 2.0], "gnu"], topn=3) == w2v.most_similar(
        positive=[(word, 2.0), "gnu"], topn=3
    )


def test_restrict_vocab(w2v: vf.Embeddings) -> None:
    """gensim's restrict_vocab=N: only the first N word rows are searched (and scored, with
    topn=None), in most_similar and most_similar_cosmul, on dense and quantized storage."""
    words = list(w2v.vocab.words)
    n = len(words) // 3
    quant = w2v.quantize(n_subquantizers=w2v.dims // 4, bits=4, opq=False, progress=False)
    for emb in (w2v, quant):
        full = emb.most_similar(positive=["license"], negative=["gnu"], topn=None)
        part = emb.most_similar(positive=["license"], negative=["gnu"], topn=None, restrict_vocab=n)
        np.testing.assert_array_equal(part, full[:n])
        order = [j for j in np.argsort(-full[:n], kind="stable") if words[j] not in ("license", "gnu")][:5]
        got = emb.most_similar(positive=["license"], negative=["gnu"], topn=5, restrict_vocab=n)
        assert [w for w, _ in got] == [words[j] for j in order]
        np.testing.assert_allclose([s for _, s in got], full[order], rtol=1e-5, atol=1e-6)
        cos_full = emb.most_similar_cosmul(["license", "software"], ["gnu"], None)
        np.testing.assert_array_equal(emb.most_similar_cosmul(["license", "software"], ["gnu"], None, n), cos_full[:n])
        top = emb.most_similar_cosmul(["license", "software"], ["gnu"], 3, restrict_vocab=n)
        assert all(words.index(w) < n for w, _ in top) and len(top) == 3
        # 0 restricts nothing (gensim: `if restrict_vocab:`)
        assert emb.most_similar("license", restrict_vocab=0) == emb.most_similar("license")
        assert emb.most_similar_cosmul("license", restrict_vocab=0) == emb.most_similar_cosmul("license")
        assert emb.most_similar("license", topn=3, restrict_vocab=2**70) == emb.most_similar("license", topn=3)
        with pytest.raises(ValueError, match="restrict_vocab must be >= 0"):
            emb.most_similar("license", restrict_vocab=-1)


@pytest.mark.parametrize("mmap", [False, True])
def test_batch_rows_with_fewer_answers_end_in_minus_one(tmp_path: Path, mmap: bool) -> None:
    """A word row holding NaN (possible in a file) scores NaN and is never an answer: a batch
    row with fewer answers than its width is filled up with index -1 and score NaN, the
    rest equal to `similar`'s answers."""
    words = ["a", "b", "c", "d"]
    m = np.array([[1, 0, 0], [0.375, 0.125, 0.25], [0, 0, 1], [0.6, 0.8, 0]], np.float32)
    good = tmp_path / "g.fifu"
    vf.Embeddings(words, m).write(good)
    data = good.read_bytes()
    at = data.index(m[1].tobytes())
    (tmp_path / "nan.fifu").write_bytes(data[:at] + np.float32(np.nan).tobytes() + data[at + 4:])
    emb = vf.load(tmp_path / "nan.fifu", mmap=mmap)
    q = np.ones((2, 3), np.float32)
    idx, scores = emb.similar_batch(q, k=4)
    single = emb.similar(q[0], k=4)
    assert [w for w, _ in single] == ["d", "a", "c"]  # not "b"
    np.testing.assert_array_equal(idx, [[3, 0, 2, -1]] * 2)
    np.testing.assert_allclose(scores[:, :3], [[s for _, s in single]] * 2, rtol=1e-6)
    assert np.isnan(scores[:, 3]).all()


@pytest.mark.parametrize("kind", ["raw", "quantized"])
def test_cosine_queries_match_brute_force(kind: str) -> None:
    """most_similar on rows that are not unit vectors, most_similar_cosmul and topn=None
    (the cosine scans, dense by the search kernel with each row's length, quantized through
    lookup tables without rebuilding rows) give numpy's cosines of the rows (rebuilt rows
    for quantized storage), and the same order."""
    rng = np.random.default_rng(5)
    n, d = 3000, 40
    m = (rng.standard_normal((n, d)) * rng.uniform(0.1, 10, (n, 1))).astype(np.float32)
    m[7] = 0  # a zero row scores 0
    words = [f"w{i:04d}" for i in range(n)]
    emb = vf.Embeddings(words, m)
    if kind == "quantized":
        emb = emb.quantize(n_subquantizers=10, bits=6, opq=True, n_iterations=3, progress=False)
    rows = emb.storage.reconstruct(np.arange(n)) if kind == "quantized" else m
    lens = np.linalg.norm(rows.astype(np.float64), axis=1)
    unit = rows / np.where(lens > 0, lens, 1)[:, None]

    def q(w: str) -> np.ndarray:
        v = emb[w].astype(np.float64)
        return v / np.linalg.norm(v)

    cos = {w: unit @ q(w) for w in ("w0001", "w0002", "w0003")}
    np.testing.assert_allclose(emb.most_similar("w0001", topn=None), cos["w0001"], atol=2e-6)
    query = q("w0001") + q("w0002")  # most_similar's query: the mean of the unit vectors
    want = unit @ (query / np.linalg.norm(query))
    got = emb.most_similar(positive=["w0001", "w0002"], topn=10)
    order = [j for j in np.argsort(-want, kind="stable") if j not in (1, 2)][:10]
    assert [w for w, _ in got] == [words[j] for j in order]
    np.testing.assert_allclose([s for _, s in got], want[order], atol=2e-6)
    shifted = {w: (1 + c) / 2 for w, c in cos.items()}
    mul = shifted["w0001"] * shifted["w0002"] / (shifted["w0003"] + 1e-6)
    np.testing.assert_allclose(emb.most_similar_cosmul(["w0001", "w0002"], ["w0003"], topn=None), mul, rtol=1e-5)
    got = emb.most_similar_cosmul(["w0001", "w0002"], ["w0003"], topn=5)
    order = [j for j in np.argsort(-mul, kind="stable") if j not in (1, 2, 3)][:5]
    assert [w for w, _ in got] == [words[j] for j in order]
    assert emb.most_similar("w0001", topn=None)[7] == 0.0
