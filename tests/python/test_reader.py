"""vecfusion.EmbeddingReader: equality with plain numpy/pyarrow reads, remote filesystems,
pickling, a distributed engine, and clear errors on malformed collections."""

from __future__ import annotations

import http.server
import os
import pickle
import re
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vecfusion as vf
from vecfusion.reader import natural_sort_key

DIM = 6
# Row counts per file, in the readers' order: embedding-reader's plain string sort of the
# paths ("part_10" before "part_2"); the names are chosen so that a natural sort would
# give a different order.
ROWS = {"1": 7, "10": 5, "2": 0, "22": 9, "3": 12}


def _matrix(name: str, rows: int, dtype: str) -> np.ndarray:
    rng = np.random.default_rng(int(name))
    return (rng.standard_normal((rows, DIM)) * 10).astype(dtype)


def _truth(dtype: str) -> np.ndarray:
    return np.concatenate([_matrix(n, r, dtype) for n, r in ROWS.items()])


def _captions(name: str, rows: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "caption": [f"file {name} row {k}" for k in range(rows)],
            "url": [f"http://x/{name}/{k}.jpg" for k in range(rows)],
            "score": np.arange(rows, dtype=np.float64) + int(name) * 1000,
        }
    )


@pytest.fixture(scope="module")
def collections(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("collections")
    out = {}
    # float16 npy, little-endian; file names with a non-npy distractor
    f16 = root / "f16"
    f16.mkdir()
    for n, r in ROWS.items():
        np.save(f16 / f"part_{n}.npy", _matrix(n, r, "float16"))
    (f16 / "README.txt").write_text("not an embedding file")
    out["f16"] = f16
    # big-endian float32 npy: read correctly (byte-swapped)
    be = root / "be"
    be.mkdir()
    for n, r in ROWS.items():
        np.save(be / f"part_{n}.npy", _matrix(n, r, "float32").astype(">f4"))
    out["be"] = be
    # parquet with a list column and meta columns, several row groups per file
    par = root / "parquet"
    par.mkdir()
    for n, r in ROWS.items():
        df = _captions(n, r)
        table = pa.table(
            {
                "embedding": pa.array(list(_matrix(n, r, "float32")), type=pa.list_(pa.float32())),
                **{c: pa.array(df[c]) for c in df.columns},
            }
        )
        pq.write_table(table, par / f"part_{n}.parquet", row_group_size=4)
    out["parquet"] = par
    # parquet_npy: metadata parquet files paired with the f16 npy files
    meta = root / "meta"
    meta.mkdir()
    for n, r in ROWS.items():
        pq.write_table(pa.Table.from_pandas(_captions(n, r), preserve_index=False), meta / f"part_{n}.parquet",
                       row_group_size=3)
    out["meta"] = meta
    return out


def _read_all(reader: vf.EmbeddingReader, **kw: object) -> tuple[np.ndarray, pd.DataFrame]:
    kw.setdefault("show_progress", False)
    embs, metas = [], []
    for emb, meta in reader(**kw):  # type: ignore[arg-type]
        assert emb.flags.c_contiguous
        assert len(emb) == len(meta)
        embs.append(emb)
        metas.append(meta)
    emb = np.concatenate(embs) if embs else np.empty((0, reader.dimension))
    meta = pd.concat(metas, ignore_index=True) if metas else pd.DataFrame({"i": []})
    return emb, meta


def test_natural_sort_key() -> None:
    names = ["b10.npy", "a.npy", "b2x.npy", "b2.npy", "b1.npy", "c.npy", "b9_100.npy", "b9_20.npy"]
    assert sorted(names, key=natural_sort_key) == [
        "a.npy", "b1.npy", "b2.npy", "b2x.npy", "b9_20.npy", "b9_100.npy", "b10.npy", "c.npy"
    ]
    # characters that are digits to str.isdigit but no decimal digits ("²") are text;
    # other scripts' decimal digits are numbers
    assert sorted(["a1²", "a1", "a٣", "a2"], key=natural_sort_key) == ["a1", "a1²", "a2", "a٣"]


def test_relative_and_home_paths_are_kept_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative folder is read from where it was when the reader was made, also after a
    chdir and in a worker started elsewhere (it was kept relative: a sibling folder's
    files of the same name were read, silently); ``~`` is the home folder (fsspec and
    embedding-reader expand it)."""
    for name, value in (("one", 1.0), ("two", 2.0)):
        (tmp_path / name / "emb").mkdir(parents=True)
        np.save(tmp_path / name / "emb" / "0.npy", np.full((3, 2), value, np.float32))
    monkeypatch.chdir(tmp_path / "one")
    r = vf.EmbeddingReader("emb")
    clone = pickle.dumps(r)
    monkeypatch.chdir(tmp_path / "two")
    for reader in (r, pickle.loads(clone)):
        (emb, _), = list(reader(batch_size=10))
        np.testing.assert_array_equal(emb, np.ones((3, 2), np.float32))
    monkeypatch.setenv("HOME", str(tmp_path / "one"))
    (emb, _), = list(vf.EmbeddingReader("~/emb")(batch_size=10))
    np.testing.assert_array_equal(emb, np.ones((3, 2), np.float32))


def test_attributes(collections: dict[str, Path]) -> None:
    r = vf.EmbeddingReader(str(collections["f16"]), file_format="npy")
    assert r.count == sum(ROWS.values())
    assert r.dimension == DIM
    assert r.byte_per_item == DIM * 2
    assert r.total_size == r.count * DIM * 2
    assert r.nb_files == len(ROWS) - 1  # the file without rows is not counted
    assert r.max_file_size == max(ROWS.values()) * DIM * 2
    assert r.dtype == np.float16
    p = vf.EmbeddingReader(collections["parquet"], file_format="parquet", meta_columns=["caption"])
    assert (p.count, p.dimension, p.byte_per_item, p.nb_files) == (r.count, DIM, DIM * 4, len(ROWS) - 1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(["f16", "be", "parquet", "parquet_npy"]),
    dtype=st.sampled_from([None, "float16", "float32", "float64"]),
    bounds=st.tuples(st.integers(0, sum(ROWS.values())), st.integers(0, sum(ROWS.values()))),
    batch_size=st.integers(1, 40),
    piece=st.sampled_from([None, 8, 24, 100]),
    threads=st.sampled_from([None, 1, 3]),
)
def test_equals_numpy_read(
    collections: dict[str, Path], kind: str, dtype: str | None, bounds: tuple[int, int],
    batch_size: int, piece: int | None, threads: int | None,
) -> None:
    start, end = min(bounds), max(bounds)
    if kind == "parquet":
        r = vf.EmbeddingReader(collections["parquet"], file_format="parquet", meta_columns=["caption", "score"])
        disk = "float32"
    elif kind == "parquet_npy":
        r = vf.EmbeddingReader(collections["f16"], file_format="parquet_npy", metadata_folder=collections["meta"],
                               meta_columns=["caption", "score"])
        disk = "float16"
    else:
        r = vf.EmbeddingReader(collections[kind])
        disk = "float16" if kind == "f16" else "float32"
    truth = _truth(disk)
    emb, meta = _read_all(r, batch_size=batch_size, start=start, end=end, dtype=dtype,
                          max_piece_size=piece, parallel_pieces=threads)
    want_dtype = np.dtype(dtype or disk)
    if end > start:
        assert emb.dtype == want_dtype
    assert emb.shape == (end - start, DIM)
    np.testing.assert_array_equal(emb, truth[start:end].astype(want_dtype))
    assert meta["i"].tolist() == list(range(start, end))
    if kind.startswith("parquet") and end > start:
        captions = pd.concat([_captions(n, k) for n, k in ROWS.items()], ignore_index=True)
        assert list(meta.columns) == ["caption", "score", "i"]  # embedding-reader's order
        assert meta["caption"].tolist() == captions["caption"][start:end].tolist()
        np.testing.assert_array_equal(meta["score"].to_numpy(), captions["score"][start:end].to_numpy())


def test_batches_are_ordered_and_sized(collections: dict[str, Path]) -> None:
    r = vf.EmbeddingReader(collections["f16"])
    sizes = [(len(e), int(m["i"].iloc[0])) for e, m in r(batch_size=10, show_progress=False)]
    assert sizes == [(10, 0), (10, 10), (10, 20), (3, 30)]


def test_list_of_folders_and_files(collections: dict[str, Path]) -> None:
    f16 = collections["f16"]
    files = [f16 / "part_22.npy", f16 / "part_1.npy"]
    r = vf.EmbeddingReader([str(p) for p in files])
    emb, _ = _read_all(r, dtype=None)
    # all paths sorted together, as embedding-reader does with a list of folders
    np.testing.assert_array_equal(emb, np.concatenate([_matrix("1", 7, "float16"), _matrix("22", 9, "float16")]))
    two = vf.EmbeddingReader([f16, f"file://{f16}"])
    assert two.count == 2 * sum(ROWS.values())
    emb, _ = _read_all(two)
    # the same paths twice, sorted together: each file comes twice in a row
    twice = [_matrix(n, r, "float16") for n, r in ROWS.items() for _ in range(2)]
    np.testing.assert_array_equal(emb, np.concatenate(twice).astype(np.float32))


def test_pickle_and_ranges_in_workers(collections: dict[str, Path]) -> None:
    r = vf.EmbeddingReader(collections["f16"], file_format="parquet_npy", metadata_folder=collections["meta"],
                           meta_columns=["caption"])
    full, full_meta = _read_all(r, batch_size=7)
    clone = pickle.loads(pickle.dumps(r))
    assert (clone.count, clone.dimension, clone.nb_files) == (r.count, r.dimension, r.nb_files)
    cuts = [0, 5, 6, 19, 30, r.count]
    parts = [_read_all(clone, start=a, end=b, batch_size=4) for a, b in zip(cuts, cuts[1:])]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), full)
    assert pd.concat([p[1] for p in parts], ignore_index=True).equals(full_meta)


def test_memory_filesystem(collections: dict[str, Path]) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    for kind in ("f16", "be", "parquet"):
        for p in collections[kind].iterdir():
            fs.pipe(f"/vf_reader_test/{kind}/{p.name}", p.read_bytes())
    try:
        for kind, fmt, disk in (("f16", "npy", "float16"), ("be", "npy", "float32"), ("parquet", "parquet", "float32")):
            r = vf.EmbeddingReader(f"memory://vf_reader_test/{kind}", file_format=fmt)
            assert r.count == sum(ROWS.values())
            # tiny pieces and several threads: many ranges in flight, converted as they land
            emb, meta = _read_all(r, batch_size=11, start=2, end=31, max_piece_size=3, parallel_pieces=3)
            np.testing.assert_array_equal(emb, _truth(disk)[2:31].astype(np.float32))
            assert meta["i"].tolist() == list(range(2, 31))
        # a truncated remote file is refused, naming it
        fs.pipe("/vf_reader_test/bad/0.npy", (collections["f16"] / "part_3.npy").read_bytes()[:-5])
        with pytest.raises(vf.FormatError, match=r"0\.npy.*truncated"):
            vf.EmbeddingReader("memory://vf_reader_test/bad")
    finally:
        fs.rm("/vf_reader_test", recursive=True)


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler plus single-range GET requests (206 Partial Content)."""

    ranges_served = 0

    def log_message(self, *args: object) -> None:
        pass

    def send_head(self):  # type: ignore[no-untyped-def]
        rng = self.headers.get("Range")
        path = self.translate_path(self.path)
        if rng is None or os.path.isdir(path):
            return super().send_head()
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
        if not os.path.isfile(path) or m is None:
            self.send_error(404 if m else 416)
            return None
        size = os.path.getsize(path)
        a = int(m.group(1))
        b = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
        f = open(path, "rb")  # noqa: SIM115 - closed by copyfile's caller
        f.seek(a)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {a}-{b}/{size}")
        self.send_header("Content-Length", str(b - a + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        type(self).ranges_served += 1
        import io

        data = f.read(b - a + 1)
        f.close()
        return io.BytesIO(data)


def test_http_range_reads(collections: dict[str, Path]) -> None:
    root = collections["f16"].parent

    def handler(*args, **kwargs):  # type: ignore[no-untyped-def]
        return _RangeHandler(*args, directory=str(root), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/f16/"
        r = vf.EmbeddingReader(url)
        assert r.count == sum(ROWS.values())
        assert r.nb_files == len(ROWS) - 1  # the file without rows is not counted
        before = _RangeHandler.ranges_served
        emb, meta = _read_all(r, batch_size=8, start=1, end=30, max_piece_size=5, parallel_pieces=4)
        np.testing.assert_array_equal(emb, _truth("float16")[1:30].astype(np.float32))
        assert _RangeHandler.ranges_served > before  # byte ranges, not whole files
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)

    # a server that ignores Range sends whole files: said so (was "got 176 bytes (truncated?)")
    class _Plain(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **k: _Plain(*a, directory=str(root), **k))
    thread = threading.Thread(target=plain.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(vf.FormatError, match=r"\.npy: asked for \d+ bytes .*ignored the byte range"):
            _read_all(vf.EmbeddingReader(f"http://127.0.0.1:{plain.server_address[1]}/f16/"), batch_size=8)
    finally:
        plain.shutdown()
        plain.server_close()
        thread.join(5)


def test_npy_files_without_rows_are_skipped_whatever_their_dtype_and_rank(tmp_path: Path) -> None:
    """An empty shard saved as `np.array([])` is 1-D float64, and one of integers has an
    integer dtype: files without rows are skipped (not counted) whatever their header says;
    a 1-D or integer file with rows is still refused."""
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.save(tmp_path / "0.npy", rows)
    for i, empty in enumerate([np.array([]), np.zeros((0, 3), np.int64), np.zeros((0, 2, 5), np.float32),
                               np.zeros((0,), np.uint8)]):
        np.save(tmp_path / f"1_{i}.npy", empty)
    r = vf.EmbeddingReader(tmp_path)
    assert (r.count, r.dimension, r.nb_files) == (4, 3, 1)
    emb, meta = _read_all(r, batch_size=3)
    np.testing.assert_array_equal(emb, rows)
    np.save(tmp_path / "2.npy", np.zeros((2,), np.float32))
    with pytest.raises(vf.FormatError, match=r"2\.npy.*2-D"):
        vf.EmbeddingReader(tmp_path)
    np.save(tmp_path / "2.npy", np.zeros((2, 3), np.int64))
    with pytest.raises(vf.FormatError, match=r"2\.npy.*not a float type"):
        vf.EmbeddingReader(tmp_path)


def test_dask_distributed_ranges(collections: dict[str, Path]) -> None:
    import distributed
    r = vf.EmbeddingReader(collections["f16"], file_format="parquet_npy", metadata_folder=collections["meta"],
                           meta_columns=["caption"])
    full, full_meta = _read_all(r, batch_size=6)

    def read_range(reader: vf.EmbeddingReader, a: int, b: int) -> tuple[np.ndarray, pd.DataFrame]:
        return _read_all(reader, start=a, end=b, batch_size=5)

    cuts = [0, 8, 17, 33]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        # worker processes: the reader travels pickled
        futures = [client.submit(read_range, r, a, b, pure=False) for a, b in zip(cuts, cuts[1:])]
        parts = client.gather(futures)
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), full)
    assert pd.concat([p[1] for p in parts], ignore_index=True).equals(full_meta)


# -- bad input ---------------------------------------------------------------------------


def _folder(tmp_path: Path, arrays: dict[str, np.ndarray]) -> Path:
    d = tmp_path / "emb"
    d.mkdir(exist_ok=True)
    for name, a in arrays.items():
        np.save(d / name, a)
    return d


GOOD = np.ones((4, DIM), dtype=np.float32)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.ones(5, dtype=np.float32), r"2-D.*1-D"),
        (np.ones((2, 3, DIM), dtype=np.float32), r"2-D.*3-D"),
        (np.ones((4, DIM), dtype=np.int32), r"not a float type"),
        (np.asfortranarray(np.arange(4.0 * DIM, dtype=np.float32).reshape(4, DIM)), r"Fortran"),
        (np.ones((4, DIM + 1), dtype=np.float32), r"mixed dimensions.*b\.npy.*7"),
        (np.ones((4, DIM), dtype=np.float16), r"mixed dtypes.*b\.npy.*float16"),
    ],
)
def test_bad_npy_files(tmp_path: Path, bad: np.ndarray, message: str) -> None:
    d = _folder(tmp_path, {"a.npy": GOOD, "b.npy": bad})
    with pytest.raises(vf.FormatError, match=message) as e:
        vf.EmbeddingReader(d)
    assert "b.npy" in str(e.value)


def test_files_without_rows_are_skipped_whatever_their_shape(tmp_path: Path) -> None:
    """As embedding-reader: a 0-row file adds nothing, so its width and dtype do not matter."""
    d = _folder(tmp_path, {"a.npy": GOOD, "b.npy": np.zeros((0, 0)), "c.npy": np.zeros((0, DIM), np.float64),
                           "d.npy": GOOD * 2})
    r = vf.EmbeddingReader(d)
    assert (r.count, r.dimension) == (8, DIM)
    emb, meta = _read_all(r, batch_size=3)
    np.testing.assert_array_equal(emb, np.concatenate([GOOD, GOOD * 2]))
    assert meta["i"].tolist() == list(range(8))
    # the first file empty and of another dtype: the data is read as the others' dtype
    for empty in (np.zeros((0, 7), np.float16), np.zeros((0, DIM), np.float64)):
        e = tmp_path / f"first_{empty.dtype}"
        e.mkdir()
        np.save(e / "0.npy", empty)
        np.save(e / "1.npy", GOOD * 3)
        r = vf.EmbeddingReader(e)
        assert (r.count, r.dimension) == (4, DIM)
        emb, _ = _read_all(r, batch_size=3)
        np.testing.assert_array_equal(emb, GOOD * 3)


def test_truncated_empty_and_garbage_files(tmp_path: Path) -> None:
    d = _folder(tmp_path, {"a.npy": GOOD, "b.npy": GOOD})
    data = (d / "b.npy").read_bytes()
    (d / "b.npy").write_bytes(data[:-3])
    with pytest.raises(vf.FormatError, match=r"b\.npy.*truncated npy data"):
        vf.EmbeddingReader(d)
    (d / "b.npy").write_bytes(data + b"xx")
    with pytest.raises(vf.FormatError, match=r"b\.npy.*unexpected bytes"):
        vf.EmbeddingReader(d)
    (d / "b.npy").write_bytes(b"")
    with pytest.raises(vf.FormatError, match=r"b\.npy.*empty"):
        vf.EmbeddingReader(d)
    (d / "b.npy").write_bytes(b"PK\x03\x04 this is a zip")
    with pytest.raises(vf.FormatError, match=r"b\.npy.*magic"):
        vf.EmbeddingReader(d)


def test_file_changed_after_listing(tmp_path: Path) -> None:
    d = _folder(tmp_path, {"a.npy": GOOD, "b.npy": GOOD})
    r = vf.EmbeddingReader(d)
    data = (d / "b.npy").read_bytes()
    (d / "b.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=r"b\.npy"):
        list(r(show_progress=False))


def test_folders_and_arguments(tmp_path: Path, collections: dict[str, Path]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no \.npy files found"):
        vf.EmbeddingReader(empty)
    with pytest.raises(FileNotFoundError, match="missing"):
        vf.EmbeddingReader(tmp_path / "missing")
    with pytest.raises(ValueError, match="file_format"):
        vf.EmbeddingReader(collections["f16"], file_format="csv")
    r = vf.EmbeddingReader(collections["f16"])
    for kw, pattern in (
        ({"start": r.count + 1}, "start"),
        ({"start": -1}, "start"),
        ({"start": 5, "end": 4}, "end"),
        ({"batch_size": 0}, "batch_size"),
        ({"dtype": np.int8}, "dtype"),
    ):
        with pytest.raises(ValueError, match=pattern):
            r(show_progress=False, **kw)  # type: ignore[arg-type]
    assert list(r(start=r.count, show_progress=False)) == []
    # end past the count is clamped, as in embedding-reader
    emb, _ = _read_all(r, start=30, end=r.count + 100, dtype=None)
    np.testing.assert_array_equal(emb, _truth("float16")[30:])


def test_parquet_npy_mismatches(tmp_path: Path, collections: dict[str, Path]) -> None:
    d = _folder(tmp_path, {"0.npy": GOOD, "1.npy": GOOD})
    meta = tmp_path / "meta"
    meta.mkdir()
    pq.write_table(pa.table({"caption": ["a"] * 4}), meta / "0.parquet")
    with pytest.raises(vf.FormatError, match=r"2 \.npy files but 1 \.parquet"):
        vf.EmbeddingReader(d, file_format="parquet_npy", metadata_folder=meta, meta_columns=["caption"])
    pq.write_table(pa.table({"caption": ["a"] * 3}), meta / "1.parquet")
    with pytest.raises(vf.FormatError, match=r"1\.npy has 4 rows but .*1\.parquet has 3"):
        vf.EmbeddingReader(d, file_format="parquet_npy", metadata_folder=meta, meta_columns=["caption"])
    pq.write_table(pa.table({"caption": ["a"] * 4}), meta / "1.parquet")
    with pytest.raises(vf.FormatError, match=r"missing column.*'url'"):
        vf.EmbeddingReader(d, file_format="parquet_npy", metadata_folder=meta, meta_columns=["caption", "url"])
    with pytest.raises(ValueError, match="metadata_folder"):
        vf.EmbeddingReader(d, file_format="parquet_npy")


def test_bad_parquet_embeddings(tmp_path: Path) -> None:
    d = tmp_path / "p"
    d.mkdir()
    pq.write_table(pa.table({"embedding": pa.array([[1.0, 2.0], [3.0, 4.0]], type=pa.list_(pa.float32()))}),
                   d / "0.parquet")
    with pytest.raises(vf.FormatError, match=r"missing column.*'emb'"):
        vf.EmbeddingReader(d, file_format="parquet", embedding_column="emb")
    pq.write_table(pa.table({"embedding": pa.array([[1.0, 2.0], [3.0]], type=pa.list_(pa.float32()))}),
                   d / "1.parquet")
    r = vf.EmbeddingReader(d, file_format="parquet")
    with pytest.raises(vf.FormatError, match=r"1\.parquet: embedding at row 1 has 1 values, expected 2"):
        list(r(show_progress=False))
    pq.write_table(pa.table({"embedding": pa.array([[1, 2]], type=pa.list_(pa.int64()))}), d / "0.parquet")
    with pytest.raises(vf.FormatError, match=r"0\.parquet.*not floats"):
        vf.EmbeddingReader(d, file_format="parquet")


def test_batches_recycled_only_when_unreferenced(collections: dict[str, Path]) -> None:
    r = vf.EmbeddingReader(collections["f16"])
    truth = _truth("float16")
    copies, views, addresses = [], [], []
    for e, m in r(batch_size=5, dtype=None, show_progress=False):
        copies.append(e.copy())
        if len(views) < 2:
            views.append(e[1:3])  # a view keeps its batch alive: that memory is never reused
        addresses.append(e.ctypes.data)
        del e, m
    np.testing.assert_array_equal(np.concatenate(copies), truth)
    for k, v in enumerate(views):
        np.testing.assert_array_equal(v, truth[5 * k + 1 : 5 * k + 3])
    # batches the caller let go of are refilled in place (the last, shorter one is new)
    assert len(set(addresses[2:-1])) == 1
    assert addresses[2] not in addresses[:2]


def test_tight_memory_budget_still_reads_everything(collections: dict[str, Path]) -> None:
    import fsspec

    budget = 5 * DIM * 4  # exactly one float32 batch of 5 rows: one piece at a time
    r = vf.EmbeddingReader(collections["f16"])
    emb, _ = _read_all(r, batch_size=5, max_ram_usage_in_bytes=budget, parallel_pieces=8)
    np.testing.assert_array_equal(emb, _truth("float16").astype(np.float32))
    fs = fsspec.filesystem("memory")
    for p in collections["f16"].iterdir():
        fs.pipe(f"/vf_reader_budget/{p.name}", p.read_bytes())
    try:
        remote = vf.EmbeddingReader("memory://vf_reader_budget")
        emb, _ = _read_all(remote, batch_size=5, max_ram_usage_in_bytes=budget, max_piece_size=2)
        np.testing.assert_array_equal(emb, _truth("float16").astype(np.float32))
    finally:
        fs.rm("/vf_reader_budget", recursive=True)
    # a budget below one batch is a budget for the reads (as in embedding-reader), not a refusal
    emb, _ = _read_all(r, batch_size=10, max_ram_usage_in_bytes=100)
    np.testing.assert_array_equal(emb, _truth("float16").astype(np.float32))
    emb, _ = _read_all(r, batch_size=10, max_ram_usage_in_bytes=4e9)  # a float, as embedding-reader takes
    np.testing.assert_array_equal(emb, _truth("float16").astype(np.float32))
    with pytest.raises(TypeError, match="max_ram_usage_in_bytes"):
        r(max_ram_usage_in_bytes="1GB", show_progress=False)  # type: ignore[arg-type]


def test_read_ahead_of_the_next_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each batch but the last asks for the next batch's local byte ranges (what the reader
    # will read next, file by file: rows 50-100 then 100-120 of three 40-row files), and the
    # rows are those of a plain read.
    from vecfusion import _native, reader

    a = np.arange(40 * 6, dtype=np.float16).reshape(40, 6)
    for k in range(3):
        np.save(tmp_path / f"{k}.npy", a + 1000 * k)
    asked: list[list[tuple[str, int, int]]] = []
    real = _native.read_ahead
    monkeypatch.setattr(reader._native, "read_ahead", lambda r: (asked.append(list(r)), real(r))[1])
    monkeypatch.setattr(reader, "_READ_AHEAD_MIN", 1)  # (small batches are not read ahead)
    r = vf.EmbeddingReader(str(tmp_path), file_format="npy")
    got = np.concatenate([e for e, _ in r(batch_size=50, show_progress=False, dtype=None)])
    assert np.array_equal(got, np.concatenate([a + 1000 * k for k in range(3)]))
    off = np.load(tmp_path / "0.npy", mmap_mode="r").offset
    row = 6 * 2
    assert asked == [
        [(str(tmp_path / "1.npy"), off + 10 * row, 30 * row), (str(tmp_path / "2.npy"), off, 20 * row)],
        [(str(tmp_path / "2.npy"), off + 20 * row, 20 * row)],
    ]
    monkeypatch.setattr(reader, "_READ_AHEAD_MIN", 1 << 20)
    asked.clear()
    list(r(batch_size=50, show_progress=False))
    assert asked == []  # batches of a few KB: no thread started for them
    # bad ranges are ignored (a hint): missing files, ranges past the end, a folder
    _native.read_ahead([(str(tmp_path / "gone.npy"), 0, 10), (str(tmp_path / "0.npy"), 1 << 40, 1 << 40),
                        (str(tmp_path), 0, 1)])


def test_mixed_byte_orders(tmp_path: Path) -> None:
    """Each file is read with its own byte order (little- and big-endian files mixed)."""
    a = (np.arange(24, dtype=np.float32).reshape(8, 3) - 5) / 4
    np.save(tmp_path / "0.npy", a)
    np.save(tmp_path / "1.npy", (a + 100).astype(">f4"))
    np.save(tmp_path / "2.npy", a * 3)
    want = np.concatenate([a, a + 100, a * 3])
    for dtype in (None, "float32", "float64", "float16"):
        for piece in (None, 2):
            emb, _ = _read_all(vf.EmbeddingReader(tmp_path), batch_size=5, dtype=dtype, max_piece_size=piece)
            np.testing.assert_array_equal(emb, want.astype(dtype or "float32"))
    import fsspec

    fs = fsspec.filesystem("memory")
    for p in tmp_path.iterdir():
        fs.pipe(f"/vf_mixed_endian/{p.name}", p.read_bytes())
    try:
        emb, _ = _read_all(vf.EmbeddingReader("memory://vf_mixed_endian"), batch_size=5)
        np.testing.assert_array_equal(emb, want)
    finally:
        fs.rm("/vf_mixed_endian", recursive=True)


def test_file_order_is_embedding_readers(tmp_path: Path) -> None:
    """Files below the folder, subfolders included, in the plain string order of their
    paths (embedding-reader's `get_file_list`: glob `**/*.npy`, then `sort()`)."""
    names = ["10.npy", "2.npy", "1.npy", "sub/0.npy", "b/9.npy", "a.npy"]
    for k, n in enumerate(names):
        (tmp_path / n).parent.mkdir(exist_ok=True)
        np.save(tmp_path / n, np.full((2, 3), k, np.float32))
    (tmp_path / "sub" / "skip.txt").write_text("not npy")
    order = sorted(str(tmp_path / n) for n in names)
    want = np.concatenate([np.full((2, 3), names.index(os.path.relpath(p, tmp_path)), np.float32) for p in order])
    emb, meta = _read_all(vf.EmbeddingReader(str(tmp_path)), batch_size=3)
    np.testing.assert_array_equal(emb, want)
    assert meta["i"].tolist() == list(range(len(want)))
    try:
        from embedding_reader import EmbeddingReader as PeerReader
    except ImportError:  # a bench dependency; when installed, compare with it directly
        return
    peer = PeerReader(str(tmp_path), file_format="npy")
    got = np.concatenate([e for e, _ in peer(batch_size=3, show_progress=False)])
    np.testing.assert_array_equal(got, want)


def test_parquet_embedding_column_checked_in_every_file(tmp_path: Path) -> None:
    pq.write_table(pa.table({"embedding": pa.array([[1.0, 2.0]], type=pa.list_(pa.float32()))}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"embedding": pa.array(["not a vector"])}), tmp_path / "b.parquet")
    with pytest.raises(vf.FormatError, match=r"b\.parquet: column 'embedding' is string, not a list of floats"):
        vf.EmbeddingReader(tmp_path, file_format="parquet")
    pq.write_table(pa.table({"embedding": pa.array([[1.0, 2.0]], type=pa.list_(pa.float64()))}), tmp_path / "b.parquet")
    with pytest.raises(vf.FormatError, match=r"b\.parquet: column 'embedding' holds float64, .*a\.parquet holds float32"):
        vf.EmbeddingReader(tmp_path, file_format="parquet")


def test_npy_errors_name_the_file_once(tmp_path: Path) -> None:
    import fsspec

    (tmp_path / "0.npy").write_bytes(b"")
    with pytest.raises(vf.FormatError) as info:
        vf.EmbeddingReader(tmp_path)
    assert str(info.value).count("invalid npy file") == 1 and "0.npy" in str(info.value)
    fs = fsspec.filesystem("memory")
    fs.pipe("/vf_bad_npy/0.npy", b"\x93NUMPX" + b"\0" * 100)
    try:
        with pytest.raises(vf.FormatError, match=r"vf_bad_npy/0\.npy"):
            vf.EmbeddingReader("memory://vf_bad_npy")
    finally:
        fs.rm("/vf_bad_npy", recursive=True)


@pytest.mark.parametrize("group", [0, 1])
def test_corrupt_parquet_pages_are_format_errors(tmp_path: Path, group: int) -> None:
    """A damaged data page (of the first row group, read at construction, or of a later one,
    read while iterating) is a FormatError naming the file, never a raw Arrow error."""
    import io

    a = np.arange(40, dtype=np.float32).reshape(10, 4)
    buf = io.BytesIO()
    table = pa.table({"embedding": pa.array(a.tolist(), pa.list_(pa.float32()))})
    pq.write_table(table, buf, row_group_size=5, compression="none")
    base = buf.getvalue()
    col = pq.ParquetFile(io.BytesIO(base)).metadata.row_group(group).column(0)
    folder = tmp_path / "pq"
    folder.mkdir()
    path = folder / "a.parquet"
    outcomes = set()
    for pos in range(col.data_page_offset, col.data_page_offset + col.total_compressed_size):
        bad = bytearray(base)
        bad[pos] ^= 0xFF
        path.write_bytes(bytes(bad))
        try:
            got = [x for x, _ in vf.EmbeddingReader(str(folder), file_format="parquet")(batch_size=3, show_progress=False)]
        except vf.FormatError as e:
            assert "a.parquet" in str(e)
            outcomes.add("error")
        else:
            outcomes.add("read")
            assert sum(len(x) for x in got) == 10
    assert "error" in outcomes


def test_parquet_error_wrapping_keeps_storage_errors() -> None:
    """Only errors about the file's contents become FormatError; running out of memory,
    network errors, timeouts and OS errors with an errno keep their type."""
    import errno

    from vecfusion.reader import _parquet_errors

    for keep in (
        pa.ArrowMemoryError("out of memory"),
        TimeoutError("slow"),
        ConnectionResetError("reset"),
        FileNotFoundError("gone"),
        OSError(errno.EIO, "I/O error"),
    ):
        with pytest.raises(type(keep)), _parquet_errors("x.parquet"):
            raise keep
    for wrap in (OSError("Couldn't deserialize thrift"), pa.ArrowInvalid("bad offsets")):
        with pytest.raises(vf.FormatError, match="invalid parquet file: x.parquet"), _parquet_errors("x.parquet"):
            raise wrap


def _with_header(a: np.ndarray, edit) -> bytes:  # noqa: ANN001
    """`a` saved as npy, with its header text changed by `edit` (the length kept: padded)."""
    import io

    buf = io.BytesIO()
    np.save(buf, a)
    raw = buf.getvalue()
    hlen = int.from_bytes(raw[8:10], "little")
    text = raw[10 : 10 + hlen].decode("latin1").rstrip(" \n")
    new = edit(text)
    assert len(new) + 1 <= hlen
    return raw[:10] + (new.ljust(hlen - 1) + "\n").encode("latin1") + raw[10 + hlen :]


def test_npy_headers_as_strict_as_numpy(tmp_path: Path) -> None:
    """Headers np.load refuses are refused (text after the dict, a minor version, a shape with a
    leading zero); a dtype given by name, which np.load takes, is read."""
    a = np.arange(4 * DIM, dtype=np.float32).reshape(4, DIM)
    cases = {
        "junk": _with_header(a, lambda t: t + " junk"),
        "zero": _with_header(a, lambda t: t.replace("(4, ", "(04, ")),
    }
    minor = bytearray(_with_header(a, lambda t: t))
    minor[7] = 1
    cases["minor"] = bytes(minor)
    for name, data in cases.items():
        (tmp_path / "x.npy").write_bytes(data)
        with pytest.raises(ValueError):
            np.load(tmp_path / "x.npy")
        with pytest.raises(vf.FormatError):
            vf.EmbeddingReader(str(tmp_path))
    named = _with_header(a, lambda t: t.replace("'<f4'", "'float32'"))
    (tmp_path / "x.npy").write_bytes(named)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), a)
    got = np.concatenate([x for x, _ in vf.EmbeddingReader(str(tmp_path))(batch_size=3, show_progress=False)])
    np.testing.assert_array_equal(got, a)


def test_a_row_group_is_decoded_once_for_all_its_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches much smaller than a row group reuse the decoded group (it was decoded again for
    every batch: quadratic in the group's size), and the rows are those of one plain read."""
    from vecfusion import reader

    d = tmp_path / "pq"
    d.mkdir()
    rng = np.random.default_rng(3)
    want = []
    for k, (n, group) in enumerate([(230, 100), (57, 1000)]):
        e = rng.standard_normal((n, DIM)).astype(np.float32)
        want.append(e)
        t = pa.table({"embedding": pa.array(list(e), type=pa.list_(pa.float32())), "id": np.arange(n) + 1000 * k})
        pq.write_table(t, d / f"{k}.parquet", row_group_size=group)
    reads: list[list[int]] = []
    real = reader._open_parquet

    def counting(fs, path):  # noqa: ANN001, ANN202
        pf = real(fs, path)
        orig = pf.read_row_groups
        pf.read_row_groups = lambda gs, **kw: (reads.append(list(gs)), orig(gs, **kw))[1]
        return pf

    monkeypatch.setattr(reader, "_open_parquet", counting)
    r = vf.EmbeddingReader(d, file_format="parquet", meta_columns=["id"])
    for bs in (7, 30, 100, 1000):
        reads.clear()
        emb, meta = _read_all(r, batch_size=bs)
        np.testing.assert_array_equal(emb, np.concatenate(want))
        assert meta["id"].tolist() == list(range(230)) + list(range(1000, 1057))
        decoded = [g for gs in reads for g in gs]
        assert len(decoded) == 4 if bs < 1000 else len(decoded) <= 4, (bs, reads)  # groups 0-2 and 0


def test_dictionary_meta_columns_keep_one_dtype_across_batches(tmp_path: Path) -> None:
    """A dictionary-encoded (categorical) meta column came back as a pandas category, except
    in a batch joining two files with different dictionaries (then object): its values now
    come back as the dictionary's value type in every batch."""
    for name, vals in (("a", ["x", "y", "x"]), ("b", ["z", "q", "z"])):
        pq.write_table(
            pa.table({"embedding": pa.array([[1.0, 2.0]] * 3, pa.list_(pa.float32())),
                      "c": pa.array(vals).dictionary_encode()}),
            tmp_path / f"{name}.parquet",
        )
    r = vf.EmbeddingReader(str(tmp_path), file_format="parquet", meta_columns=["c"])
    batches = [m for _, m in r(2, show_progress=False)]
    assert len({str(m["c"].dtype) for m in batches}) == 1
    assert [v for m in batches for v in m["c"]] == ["x", "y", "x", "z", "q", "z"]


def test_a_folder_of_empty_npy_files_is_an_error(tmp_path: Path) -> None:
    """As embedding-reader ("No embeddings found") and as this reader's parquet format."""
    np.save(tmp_path / "a.npy", np.zeros((0, 4), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError, match="is empty: no embeddings"):
        vf.EmbeddingReader(str(tmp_path))


def test_empty_parquet_shards_are_skipped_whatever_their_schema(tmp_path: Path) -> None:
    """pandas writes an empty shard's list column as `double`; a shard may also lack the
    column: with no rows neither matters (embedding-reader reads such folders too)."""
    pd.DataFrame({"embedding": [[1.0, 2.0], [3.0, 4.0]], "caption": ["a", "b"]}).to_parquet(tmp_path / "0.parquet")
    pd.DataFrame({"embedding": []}).to_parquet(tmp_path / "1.parquet")
    pd.DataFrame({"other": []}).to_parquet(tmp_path / "2.parquet")
    pd.DataFrame({"embedding": [[5.0, 6.0]], "caption": ["c"]}).to_parquet(tmp_path / "3.parquet")
    r = vf.EmbeddingReader(str(tmp_path), file_format="parquet", meta_columns=["caption"])
    assert (r.count, r.dimension) == (3, 2)
    batches = list(r(batch_size=2, show_progress=False))
    np.testing.assert_array_equal(np.concatenate([e for e, _ in batches]), [[1, 2], [3, 4], [5, 6]])
    assert pd.concat([m for _, m in batches])["caption"].tolist() == ["a", "b", "c"]
    # a shard with rows still needs the column and a list type
    pd.DataFrame({"embedding": [1.0]}).to_parquet(tmp_path / "4.parquet")
    with pytest.raises(vf.FormatError, match="4.parquet: column 'embedding' is double"):
        vf.EmbeddingReader(str(tmp_path), file_format="parquet")


def test_dimension_zero_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "0.npy", np.zeros((5, 0), np.float32))
    with pytest.raises(vf.FormatError, match="dimension 0"):
        vf.EmbeddingReader(str(tmp_path))
    (tmp_path / "p").mkdir()
    pd.DataFrame({"embedding": [[], [1.0, 2.0]]}).to_parquet(tmp_path / "p" / "0.parquet")
    with pytest.raises(vf.FormatError, match="row 0 is empty"):
        vf.EmbeddingReader(str(tmp_path / "p"), file_format="parquet")


def test_a_huge_max_piece_size_is_bounded(tmp_path: Path) -> None:
    np.save(tmp_path / "0.npy", np.arange(4 * 512, dtype=np.float32).reshape(4, 512))
    got = list(vf.EmbeddingReader(str(tmp_path))(batch_size=3, max_piece_size=10**17, show_progress=False))
    np.testing.assert_array_equal(np.concatenate([e for e, _ in got]), np.arange(4 * 512).reshape(4, 512))


def test_bools_are_no_piece_counts(tmp_path: Path) -> None:
    """parallel_pieces=True read with one thread and max_piece_size=True meant pieces of one
    embedding; batch_size, start and end already refused bools."""
    np.save(tmp_path / "0.npy", np.ones((4, 8), np.float32))
    r = vf.EmbeddingReader(str(tmp_path))
    for kw in ({"parallel_pieces": True}, {"max_piece_size": True}, {"parallel_pieces": False}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            list(r(batch_size=2, show_progress=False, **kw))


def test_float64_to_float16_rounds_as_numpy(tmp_path: Path) -> None:
    """One rounding (to nearest, ties to even), not two through float32: values just off the
    midpoint of two float16 neighbours, where f64 -> f32 lands on the tie."""
    h = np.arange(0, 0x7BFF, 7, dtype=np.uint16).view(np.float16).astype(np.float64)
    nxt = (np.arange(0, 0x7BFF, 7, dtype=np.uint16) + 1).view(np.float16).astype(np.float64)
    mid = (h + nxt) / 2
    x = np.concatenate([mid, np.nextafter(mid, np.inf), np.nextafter(mid, -np.inf), mid * (1 + 2**-40)])
    x = np.concatenate([x, -x])
    x = x[: len(x) // 4 * 4].reshape(-1, 4)
    np.save(tmp_path / "0.npy", x)
    got = np.concatenate([e for e, _ in vf.EmbeddingReader(str(tmp_path))(batch_size=1000, dtype=np.float16, show_progress=False)])
    np.testing.assert_array_equal(got.view(np.uint16), x.astype(np.float16).view(np.uint16))


def test_a_folder_that_cannot_be_listed_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A subfolder that cannot be listed (no read permission) left its files out of the
    collection silently (os.walk's default); it raises, naming the folder."""
    np.save(tmp_path / "0.npy", np.ones((2, 3), np.float32))
    (tmp_path / "sub").mkdir()
    np.save(tmp_path / "sub" / "1.npy", np.ones((2, 3), np.float32))
    real = os.scandir

    def scandir(path):  # type: ignore[no-untyped-def]
        if os.fspath(path).endswith("sub"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(PermissionError, match=r"cannot list a folder of the collection.*sub"):
        vf.EmbeddingReader(tmp_path)
    monkeypatch.undo()
    assert vf.EmbeddingReader(tmp_path).count == 4


def test_a_broken_link_or_special_file_in_the_collection_is_an_error(tmp_path: Path) -> None:
    """A broken symbolic link named *.npy was left out silently (its rows missing from
    count and from the row numbers; embedding-reader fails on it): an error naming it. A
    link to a file is read as that file; a FIFO named *.npy is refused too."""
    np.save(tmp_path / "a.npy", np.ones((3, 2), np.float32))
    (tmp_path / "b.npy").symlink_to(tmp_path / "moved_away.npy")
    with pytest.raises(FileNotFoundError, match=r"broken symbolic link.*b\.npy"):
        vf.EmbeddingReader(tmp_path)
    (tmp_path / "b.npy").unlink()
    os.mkfifo(tmp_path / "c.npy")
    with pytest.raises(OSError, match=r"not a regular file.*c\.npy"):
        vf.EmbeddingReader(tmp_path)
    (tmp_path / "c.npy").unlink()
    (tmp_path / "b.npy").symlink_to(tmp_path / "a.npy")
    assert vf.EmbeddingReader(tmp_path).count == 6


def test_npy_version_is_named_as_major_minor(tmp_path: Path) -> None:
    (tmp_path / "v.npy").write_bytes(b"\x93NUMPY\x04\x00" + b"\x00" * 100)
    with pytest.raises(vf.FormatError, match=r"unsupported npy version 4\.0 \(supported: 1\.0, 2\.0 or 3\.0\)"):
        vf.EmbeddingReader(tmp_path).count
