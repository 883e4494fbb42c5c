"""Read large collections of embeddings from any filesystem, fast and in order.

:class:`EmbeddingReader` has the interface of the ``embedding-reader`` package (used by
autofaiss and clip-retrieval), so code can switch by changing the import::

    import vecfusion as vf
    reader = vf.EmbeddingReader("embeddings/", file_format="npy")
    for emb, meta in reader(batch_size=10**6, start=0, end=reader.count):
        ...  # emb: (n, reader.dimension) float32 array; meta: DataFrame with column "i"

Formats
-------
``npy``
    A folder of 2-D ``.npy`` files (float16, float32 or float64, either byte order).
``parquet``
    A folder of ``.parquet`` files with a list-of-floats column (``embedding_column``);
    ``meta_columns`` come from the same files.
``parquet_npy``
    Embeddings from the ``.npy`` files of ``embeddings_folder`` and ``meta_columns`` from
    the ``.parquet`` files of ``metadata_folder``: the n-th npy file pairs with the n-th
    parquet file and both must have the same number of rows.

Order
-----
Files are found as embedding-reader finds them (every file with the format's suffix below
each folder, subfolders included) and taken in its order: all paths together (of every
folder of a list, and files given directly), sorted as plain strings, so ``10.npy`` comes
before ``2.npy`` (name files with zero-padded numbers) and the ``"i"`` column of ``meta``,
the global row number, is the same as embedding-reader's. Batches come out in file order,
then row order, whatever the parallelism. (:func:`natural_sort_key` sorts names with digit
runs compared as numbers, for callers who want that order for their own file lists.)

Local files are read by Rust threads with positional reads straight into the batch
array, converting float16 to float32 (F16C) in the same pass, without the GIL. Remote
files (any other fsspec filesystem: ``s3://``, ``gs://``, ``http(s)://``, ``memory://``...)
are fetched as byte ranges by a thread pool and copied or converted by the same Rust code.

Malformed input (1-D/3-D/integer/Fortran-ordered arrays, truncated or empty files, mixed
dimensions or dtypes, mismatched npy/parquet pairs, missing columns) raises
:class:`vecfusion.FormatError` (or ``ValueError`` for arguments and for a folder without
embedding files, ``FileNotFoundError`` for missing paths) naming the file and the problem. Big-endian ``.npy`` files are read
correctly (byte-swapped while converting).

Needs the ``reader`` extra (``pip install vecfusion[reader]``: fsspec, pandas, pyarrow).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, NamedTuple

import numpy as np

from . import _native
from ._native import FormatError

__all__ = ["EmbeddingReader", "natural_sort_key"]

_FORMATS = ("npy", "parquet", "parquet_npy")
# Batches smaller than this are not read ahead (starting the thread costs more).
_READ_AHEAD_MIN = 1 << 20

_DTYPE_CODES: dict[np.dtype, str] = {np.dtype(np.float16): "f2", np.dtype(np.float32): "f4", np.dtype(np.float64): "f8"}
_CODE_DTYPES: dict[str, np.dtype] = {v: k for k, v in _DTYPE_CODES.items()}
_HEADER_PREFIX = 4096
_LOCAL_CHUNK = 4 << 20
_REMOTE_PIECE = 50 * 10**6


def natural_sort_key(name: str) -> list[Any]:
    """Sort key ordering digit runs by value: ``"2.npy" < "10.npy"``."""
    # (isdecimal: `\d` matches decimal digits only; "²" is a digit to isdigit, not to int)
    return [(0, int(t), t) if t.isdecimal() else (1, 0, t) for t in re.split(r"(\d+)", name) if t]


class _Npy(NamedTuple):
    source: int  # index into the folder list (which filesystem)
    path: str
    rows: int
    dim: int
    dtype: str  # "f2" / "f4" / "f8"
    big_endian: bool
    data_offset: int


class _Parquet(NamedTuple):
    source: int
    path: str
    rows: int
    row_groups: tuple[int, ...]  # rows per row group


def _local(path: str) -> str:
    """A local path as the reader keeps it: ``~`` expanded and made absolute (as fsspec's
    local filesystem and embedding-reader do), so that a later ``chdir``, or a worker
    process started elsewhere with a pickled reader, reads the same files."""
    return os.path.abspath(os.path.expanduser(path))


def _split_url(folder: Any) -> tuple[Any, str]:
    """(fsspec filesystem or None for local, path)."""
    if isinstance(folder, os.PathLike):
        folder = os.fspath(folder)
        if not isinstance(folder, str):
            raise TypeError("expected a str path, got a bytes path")
        return None, _local(folder)
    if not isinstance(folder, str):
        raise TypeError(f"expected a path, an fsspec URL or a list of them, got {type(folder).__name__}")
    if "://" not in folder or folder.startswith("file://"):
        return None, _local(folder[len("file://") :] if folder.startswith("file://") else folder)
    import fsspec.core

    fs, path = fsspec.core.url_to_fs(folder)
    if type(fs).__name__ == "LocalFileSystem":
        return None, path
    return fs, path


def _list(fs: Any, folder: str, suffix: str) -> list[tuple[str, int | None]]:
    """Files ending in ``suffix`` below a folder (recursively, as embedding-reader's
    ``**/*.suffix`` glob), or the file itself, with sizes; in no particular order."""
    if fs is None:
        if os.path.isfile(folder):
            return [(folder, os.path.getsize(folder))]
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"embedding folder not found: {folder!r}")
        out: list[tuple[str, int | None]] = []
        def unreadable(e: OSError) -> None:
            # a folder that cannot be listed would silently leave its files out of the rows
            raise OSError(e.errno, f"cannot list a folder of the collection: {e.strerror}", e.filename) from e

        for root, _dirs, names in os.walk(folder, onerror=unreadable):
            for n in names:
                p = os.path.join(root, n)
                if not n.endswith(suffix):
                    continue
                if os.path.isfile(p):
                    out.append((p, os.path.getsize(p)))
                # a broken link or a special file would silently leave its rows out
                elif os.path.islink(p) and not os.path.exists(p):
                    raise FileNotFoundError(errno.ENOENT, "a file of the collection is a broken symbolic link", p)
                else:
                    raise OSError(errno.EINVAL, "a file of the collection is not a regular file", p)
        return out
    if folder.endswith(suffix) and fs.isfile(folder):
        return [(folder, fs.size(folder))]
    if not fs.isdir(folder):
        raise FileNotFoundError(f"embedding folder not found: {folder!r}")
    entries = fs.find(folder, withdirs=False, detail=True)
    return [
        (name, e.get("size"))
        for name, e in sorted(entries.items())
        if e.get("type", "file") == "file" and name.rstrip("/").endswith(suffix)
    ]


def _folders(arg: Any) -> list[Any]:
    if isinstance(arg, (list, tuple)):
        if not arg:
            raise ValueError("the list of embedding folders is empty")
        return list(arg)
    return [arg]


def _collect(folders: list[Any], suffix: str, what: str) -> tuple[list[Any], list[tuple[int, str, int | None]]]:
    fss: list[Any] = []
    files: list[tuple[int, str, int | None]] = []
    for i, folder in enumerate(folders):
        fs, path = _split_url(folder)
        fss.append(fs)
        files.extend((i, p, size) for p, size in _list(fs, path, suffix))
    # embedding-reader's order (its `get_file_list`): the paths of all folders together,
    # sorted as plain strings (local paths made absolute), so that the global row numbers
    # ("i") of the two readers agree.
    files.sort(key=lambda f: f[1])
    if not files:
        raise ValueError(f"no {suffix} files found in {what} {folders if len(folders) > 1 else folders[0]!r}")
    return fss, files


def _fetch(fs: Any, path: str, start: int, end: int) -> bytes:
    data = fs.cat_file(path, start=start, end=end)
    if len(data) < end - start:
        raise FormatError(f"{path}: expected {end - start} bytes at offset {start}, got {len(data)} (truncated?)")
    if len(data) > end - start:
        # (an HTTP server that ignores Range sends the whole file)
        raise FormatError(
            f"{path}: asked for {end - start} bytes at offset {start}, got {len(data)}: the server "
            "ignored the byte range (it must support HTTP Range requests)"
        )
    return bytes(data)


def _npy_headers(fss: list[Any], files: list[tuple[int, str, int | None]], threads: int) -> list[_Npy]:
    out: list[_Npy | None] = [None] * len(files)
    local = [k for k, (src, _, _) in enumerate(files) if fss[src] is None]
    if local:
        heads = _native.read_npy_headers([files[k][1] for k in local], threads)
        for k, fields in zip(local, heads):
            out[k] = _Npy(files[k][0], files[k][1], *fields)
    remote = [k for k, (src, _, _) in enumerate(files) if fss[src] is not None]

    def head(k: int) -> _Npy:
        src, path, size = files[k]
        fs = fss[src]
        if size is None:
            size = fs.size(path)
        if not size:
            raise FormatError(f"invalid npy file: {path}: the file is empty")
        prefix = _fetch(fs, path, 0, min(size, _HEADER_PREFIX))
        need = _native.npy_header_size(prefix, path)
        if len(prefix) < need <= size:
            prefix = _fetch(fs, path, 0, need)
        return _Npy(src, path, *_native.parse_npy_header(prefix, size, path))

    if remote:
        with ThreadPoolExecutor(max_workers=min(16, len(remote))) as pool:
            for k, h in zip(remote, pool.map(head, remote)):
                out[k] = h
    return [h for h in out if h is not None]


@contextlib.contextmanager
def _parquet_errors(path: str) -> Iterator[None]:
    """Arrow's errors on a corrupt parquet file (a bare OSError such as "Couldn't deserialize
    thrift", ArrowInvalid, ...) as FormatError naming the file. Errors of the storage itself
    keep their type: a missing or unreadable file, an OS error with an errno, a network
    error or timeout, and running out of memory (ArrowMemoryError is a MemoryError)."""
    import pyarrow as pa

    try:
        yield
    except (OSError, ValueError, pa.ArrowException) as e:
        storage = (FileNotFoundError, PermissionError, IsADirectoryError, ConnectionError, TimeoutError)
        if isinstance(e, (FormatError, MemoryError, *storage)) or (isinstance(e, OSError) and e.errno is not None):
            raise
        raise FormatError(f"invalid parquet file: {path}: {e}") from e


def _open_parquet(fs: Any, path: str) -> Any:
    import pyarrow.parquet as pq

    with _parquet_errors(path):
        return pq.ParquetFile(path if fs is None else fs.open(path, "rb"))


def _parquet_infos(
    fss: list[Any], files: list[tuple[int, str, int | None]], columns: list[str]
) -> tuple[list[_Parquet], list[Any]]:
    """Row counts of parquet files; checks that every file has ``columns``. Returns the
    arrow schema of every file too."""
    import pyarrow.parquet as pq  # noqa: F401  (fail early without the extra)

    def info(f: tuple[int, str, int | None]) -> tuple[_Parquet, Any]:
        src, path, _ = f
        pf = _open_parquet(fss[src], path)
        schema = pf.schema_arrow
        md = pf.metadata
        # (a file without rows gives no data: its columns do not matter, as in embedding-reader;
        # pandas writes an empty shard's list column as `double`)
        missing = [c for c in columns if c not in schema.names]
        if missing and md.num_rows > 0:
            raise FormatError(f"{path}: missing column(s) {missing} (columns: {schema.names})")
        groups = tuple(md.row_group(g).num_rows for g in range(md.num_row_groups))
        return _Parquet(src, path, md.num_rows, groups), schema

    with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
        results = list(pool.map(info, files))
    return [r[0] for r in results], [r[1] for r in results]


def _list_value_type(schema: Any, column: str, path: str) -> np.dtype:
    import pyarrow as pa

    t = schema.field(column).type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        raise FormatError(f"{path}: column {column!r} is {t}, not a list of floats")
    v = t.value_type
    if not pa.types.is_floating(v):
        raise FormatError(f"{path}: column {column!r} holds {v}, not floats")
    return np.dtype(v.to_pandas_dtype())


def _refcounts(arrays: list[np.ndarray]) -> list[int]:
    """Reference counts of the arrays, measured the same way for the pool and its probe."""
    return [sys.getrefcount(a) for a in arrays]


class EmbeddingReader:
    """A collection of embedding files, read in order, in batches.

    Listing, header parsing and validation happen here, once; calling the reader
    yields ``(embeddings, meta)`` batches. The object pickles (only the arguments and
    the table of files travel), so workers can each read a ``[start, end)`` range.

    Parameters
    ----------
    embeddings_folder:
        A local folder, an fsspec URL (``s3://bucket/emb``, ``http://host/emb/``...) or a
        list of them (taken in the given order). A path to a single file also works.
    file_format:
        ``"npy"``, ``"parquet"`` or ``"parquet_npy"`` (see the module documentation).
    embedding_column:
        The list column holding embeddings (``parquet`` format).
    meta_columns:
        Columns to return in ``meta`` (``parquet`` and ``parquet_npy`` formats).
    metadata_folder:
        The folder of ``.parquet`` files (``parquet_npy`` format).
    """

    def __init__(
        self,
        embeddings_folder: Any,
        file_format: str = "npy",
        embedding_column: str = "embedding",
        meta_columns: Sequence[str] | None = None,
        metadata_folder: Any = None,
    ) -> None:
        if file_format not in _FORMATS:
            raise ValueError(f"unknown file_format {file_format!r} (expected one of {_FORMATS})")
        if isinstance(meta_columns, str):
            raise TypeError("meta_columns must be a list of column names, not a str")
        meta_columns = list(meta_columns or [])
        if file_format == "npy" and meta_columns:
            raise ValueError("meta_columns need a parquet source: use file_format='parquet_npy' or 'parquet'")
        if file_format == "parquet_npy" and metadata_folder is None:
            raise ValueError("file_format='parquet_npy' needs metadata_folder (the .parquet files)")
        if "i" in meta_columns:
            raise ValueError("meta column 'i' is reserved for the global row number")
        self._args: dict[str, Any] = dict(
            embeddings_folder=embeddings_folder,
            file_format=file_format,
            embedding_column=embedding_column,
            meta_columns=meta_columns,
            metadata_folder=metadata_folder,
        )
        self._plan()

    # -- construction ---------------------------------------------------------------

    def _plan(self) -> None:
        a = self._args
        fmt = a["file_format"]
        threads = max(4, os.cpu_count() or 1)
        self._npy: list[_Npy] = []
        self._parquet: list[_Parquet] = []
        emb_fss: list[Any] = []
        meta_fss: list[Any] = []
        if fmt in ("npy", "parquet_npy"):
            emb_fss, files = _collect(_folders(a["embeddings_folder"]), ".npy", "embeddings folder")
            self._npy = _npy_headers(emb_fss, files, threads)
            # files without rows give no data: their shape and dtype do not matter (as in
            # embedding-reader, which skips them)
            full = [h for h in self._npy if h.rows > 0]
            if not full:
                # as embedding-reader ("No embeddings found") and the parquet format here
                raise FormatError(f"every .npy file of {a['embeddings_folder']!r} is empty: no embeddings to read")
            first = full[0]
            for h in full:
                if h.dim != first.dim:
                    raise FormatError(
                        f"mixed dimensions: {h.path} has dimension {h.dim} but {first.path} has {first.dim}"
                    )
                if h.dtype != first.dtype:
                    raise FormatError(
                        f"mixed dtypes: {h.path} is {_CODE_DTYPES[h.dtype]} but {first.path} is "
                        f"{_CODE_DTYPES[first.dtype]}"
                    )
            if first.dim == 0:
                raise FormatError(f"{first.path}: embeddings of dimension 0 (shape ({first.rows}, 0))")
            self._dim = first.dim
            self._disk_dtype = _CODE_DTYPES[first.dtype]
            counts = [h.rows for h in self._npy]
        if fmt == "parquet_npy":
            meta_fss, mfiles = _collect(_folders(a["metadata_folder"]), ".parquet", "metadata folder")
            if len(mfiles) != len(self._npy):
                raise FormatError(
                    f"{len(self._npy)} .npy files but {len(mfiles)} .parquet files: "
                    "parquet_npy needs one parquet file per npy file, in the same order"
                )
            self._parquet, _ = _parquet_infos(meta_fss, mfiles, a["meta_columns"])
            for n, p in zip(self._npy, self._parquet):
                if n.rows != p.rows:
                    raise FormatError(
                        f"row counts differ: {n.path} has {n.rows} rows but {p.path} has {p.rows}"
                    )
        if fmt == "parquet":
            meta_fss, mfiles = _collect(_folders(a["embeddings_folder"]), ".parquet", "embeddings folder")
            col = a["embedding_column"]
            self._parquet, schemas = _parquet_infos(meta_fss, mfiles, [col, *a["meta_columns"]])
            # every file's embedding column must be a list of the same float type (files without
            # rows aside: they give no data, whatever their schema)
            full = [(sch, p) for sch, p in zip(schemas, self._parquet) if p.rows > 0]
            self._dim = self._parquet_dim(meta_fss)
            types = [_list_value_type(sch, col, p.path) for sch, p in full]
            self._disk_dtype = types[0]
            for t, (_, p) in zip(types, full):
                if t != self._disk_dtype:
                    raise FormatError(
                        f"{p.path}: column {col!r} holds {t}, {full[0][1].path} holds {self._disk_dtype}"
                    )
            counts = [p.rows for p in self._parquet]
        self._emb_fss = emb_fss
        self._meta_fss = meta_fss
        self._starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).tolist()

    def _parquet_dim(self, fss: list[Any]) -> int:
        import pyarrow as pa

        col = self._args["embedding_column"]
        for p in self._parquet:
            if p.rows == 0:
                continue
            pf = _open_parquet(fss[p.source], p.path)
            t = pf.schema_arrow.field(col).type
            _list_value_type(pf.schema_arrow, col, p.path)
            if pa.types.is_fixed_size_list(t):
                dim = int(t.list_size)
            else:
                with _parquet_errors(p.path):
                    batch = next(pf.iter_batches(batch_size=1, columns=[col]))
                first = batch.column(0)[0]
                if not first.is_valid:
                    raise FormatError(f"{p.path}: null embedding at row 0")
                dim = len(first)
            if dim == 0:
                raise FormatError(f"{p.path}: the embedding at row 0 is empty (dimension 0)")
            return dim
        raise FormatError(f"every parquet file of {self._args['embeddings_folder']!r} is empty: cannot tell the dimension")

    def __getstate__(self) -> dict[str, Any]:
        # Only plain data: the arguments and the table of files. Filesystems are
        # rebuilt from the arguments on the other side.
        return {
            "args": self._args,
            "npy": [tuple(h) for h in self._npy],
            "parquet": [tuple(p) for p in self._parquet],
            "dim": self._dim,
            "disk_dtype": self._disk_dtype.str,
            "starts": self._starts,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._args = state["args"]
        self._npy = [_Npy(*h) for h in state["npy"]]
        self._parquet = [_Parquet(*p) for p in state["parquet"]]
        self._dim = state["dim"]
        self._disk_dtype = np.dtype(state["disk_dtype"])
        self._starts = state["starts"]
        fmt = self._args["file_format"]
        emb = [_split_url(f)[0] for f in _folders(self._args["embeddings_folder"])]
        meta = [_split_url(f)[0] for f in _folders(self._args["metadata_folder"])] if fmt == "parquet_npy" else []
        self._emb_fss = emb if fmt != "parquet" else []
        self._meta_fss = emb if fmt == "parquet" else meta

    # -- embedding-reader's attributes ----------------------------------------------

    @property
    def embeddings_folder(self) -> Any:
        return self._args["embeddings_folder"]

    @property
    def file_format(self) -> str:
        return str(self._args["file_format"])

    @property
    def count(self) -> int:
        """Total number of embeddings."""
        return int(self._starts[-1])

    @property
    def dimension(self) -> int:
        """Dimension of one embedding."""
        return int(self._dim)

    @property
    def dtype(self) -> np.dtype:
        """The on-disk element type (what ``dtype=None`` yields)."""
        return self._disk_dtype

    @property
    def byte_per_item(self) -> int:
        """Size of one embedding on disk, in bytes."""
        return int(self._dim * self._disk_dtype.itemsize)

    @property
    def total_size(self) -> int:
        """Size of all embeddings on disk, in bytes (data only)."""
        return self.count * self.byte_per_item

    @property
    def nb_files(self) -> int:
        """Number of embedding files with rows (files without rows are skipped, and not
        counted, as embedding-reader counts them)."""
        return int(np.count_nonzero(np.diff(self._starts)))

    @property
    def max_file_size(self) -> int:
        """Largest embedding data of one file, in bytes."""
        counts = np.diff(self._starts)
        return int(counts.max(initial=0)) * self.byte_per_item

    def __repr__(self) -> str:
        return (
            f"EmbeddingReader({self.embeddings_folder!r}, file_format={self.file_format!r}, "
            f"count={self.count}, dimension={self.dimension}, dtype={self._disk_dtype}, files={self.nb_files})"
        )

    # -- reading ----------------------------------------------------------------------

    def __call__(
        self,
        batch_size: int = 10**6,
        start: int = 0,
        end: int | None = None,
        max_piece_size: int | None = None,
        parallel_pieces: int | None = None,
        show_progress: bool = True,
        max_ram_usage_in_bytes: int = 2**32,
        dtype: Any = np.float32,
    ) -> Iterator[tuple[np.ndarray, Any]]:
        """Yield ``(embeddings, meta)`` for rows ``[start, end)`` in batches of ``batch_size``.

        ``embeddings`` is a C-contiguous ``(n, dimension)`` array of ``dtype``
        (``None``: the on-disk dtype, no conversion); ``meta`` is a pandas DataFrame
        with the ``meta_columns`` and then column ``"i"`` (global row number), in
        embedding-reader's order.

        ``max_piece_size`` is the number of embeddings per read (as in embedding-reader;
        default: 4 MiB of data locally, 50 MB remote); ``parallel_pieces`` the number of
        concurrent reads (default: max(4, CPUs) locally, 16 remote). ``end`` beyond
        ``count`` is clamped to ``count`` (as embedding-reader does); ``start`` beyond it
        raises. Memory stays at most about
        ``max_ram_usage_in_bytes``: one batch plus the pieces in flight (parallelism is
        lowered to fit; as in embedding-reader it is a budget for the reads, so a batch
        alone larger than it is still read, one piece at a time). Arguments are checked at
        the call, before the first batch.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        count = self.count
        if end is None:
            end = count
        for name, v in (("start", start), ("end", end)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name} must be an integer, got {v!r}")
        start, end, batch_size = int(start), int(end), int(batch_size)
        if start < 0 or start > count:
            raise ValueError(f"start={start} is outside [0, count={count}]")
        end = min(end, count)
        if end < start:
            raise ValueError(f"end={end} is before start={start}")
        out_dtype = self._disk_dtype if dtype is None else np.dtype(dtype)
        if out_dtype not in _DTYPE_CODES:
            raise ValueError(f"dtype must be float16, float32, float64 or None, got {out_dtype}")
        if max_piece_size is not None and (
            isinstance(max_piece_size, bool) or not isinstance(max_piece_size, (int, np.integer)) or max_piece_size <= 0
        ):
            raise ValueError(f"max_piece_size must be a positive number of embeddings, got {max_piece_size!r}")
        if max_piece_size is not None:
            # (no piece holds more than the whole collection: bounds the byte sizes computed from it)
            max_piece_size = min(int(max_piece_size), max(1, self.count))
        if parallel_pieces is not None and (
            isinstance(parallel_pieces, bool) or not isinstance(parallel_pieces, (int, np.integer)) or parallel_pieces <= 0
        ):
            raise ValueError(f"parallel_pieces must be a positive integer, got {parallel_pieces!r}")
        if isinstance(max_ram_usage_in_bytes, bool) or not isinstance(
            max_ram_usage_in_bytes, (int, float, np.integer, np.floating)
        ):
            raise TypeError(f"max_ram_usage_in_bytes must be a number of bytes, got {max_ram_usage_in_bytes!r}")
        max_ram_usage_in_bytes = int(max_ram_usage_in_bytes) if np.isfinite(max_ram_usage_in_bytes) else 2**62
        batch_bytes = min(batch_size, max(end - start, 0)) * self._dim * out_dtype.itemsize
        import pandas  # noqa: F401  (fail before the first batch without the extra)

        return self._batches(
            batch_size, start, end, max_piece_size, parallel_pieces, show_progress,
            max(0, max_ram_usage_in_bytes - batch_bytes), out_dtype,
        )

    def _batches(
        self,
        batch_size: int,
        start: int,
        end: int,
        max_piece_size: int | None,
        parallel_pieces: int | None,
        show_progress: bool,
        spare_ram: int,
        out_dtype: np.dtype,
    ) -> Iterator[tuple[np.ndarray, Any]]:
        import pandas as pd

        progress = None
        if show_progress:
            try:
                from tqdm.auto import tqdm

                progress = tqdm(total=end - start, unit="emb", unit_scale=True)
            except ImportError:
                progress = None
        # Batch arrays are recycled once the caller holds no reference to them (nothing,
        # not even a view, refers to the array but this pool): reusing memory that is
        # already mapped saves the kernel's page faults and zeroing of a fresh batch.
        pool: list[np.ndarray] = []
        base_refs = _refcounts([np.empty(0)])[0]  # what the pool's own reference amounts to
        side = ThreadPoolExecutor(max_workers=1)
        # per parquet file, the decoded row group a batch ended inside of (the next batch
        # starts in it): a row group holding many batches is decoded once, not per batch
        groups: dict[int, tuple[int, Any]] = {}
        try:
            for b0 in range(start, end, batch_size):
                b1 = min(b0 + batch_size, end)
                shape = (b1 - b0, self._dim)
                out = None
                free = [k for k, refs in enumerate(_refcounts(pool)) if refs <= base_refs]
                for k in free:
                    if out is None and pool[k].shape == shape and pool[k].dtype == out_dtype:
                        out = pool[k]
                pool = [a for k, a in enumerate(pool) if k not in free or a is out]
                if out is None:
                    out = np.empty(shape, dtype=out_dtype)
                    pool = [*pool[-1:], out]
                meta = pd.DataFrame({"i": np.arange(b0, b1, dtype=np.int64)})
                ranges = self._ranges(b0, b1)
                extra = None
                if self._npy and self._parquet:
                    # parquet_npy: metadata (pyarrow) and embeddings (Rust) are read at the
                    # same time; both release the GIL.
                    pending = side.submit(self._read_parquet, out, b0, ranges, parallel_pieces, groups)
                    try:
                        self._fill_npy(out, b0, ranges, max_piece_size, parallel_pieces, spare_ram)
                    finally:
                        extra = pending.result()
                elif self._npy:
                    self._fill_npy(out, b0, ranges, max_piece_size, parallel_pieces, spare_ram)
                else:
                    extra = self._read_parquet(out, b0, ranges, parallel_pieces, groups)
                if extra is not None:
                    # the meta columns, then "i" (embedding-reader's order)
                    meta = pd.concat([extra, meta], axis=1)
                if progress is not None:
                    progress.update(b1 - b0)
                if self._npy and b1 < end:
                    # the kernel reads the next batch's local bytes while the caller works
                    # (a thread per call: not worth it for a small batch)
                    local, _ = self._npy_pieces(self._ranges(b1, min(b1 + batch_size, end)), b1, 0)
                    if sum(n for _, _, n, _ in local) >= _READ_AHEAD_MIN:
                        _native.read_ahead([(h.path, off, n) for h, off, n, _ in local])
                yield out, meta
                del out, meta
        finally:
            side.shutdown(wait=True)
            if progress is not None:
                progress.close()

    def _ranges(self, b0: int, b1: int) -> list[tuple[int, int, int]]:
        """(file index, first row, end row) of the files covering global rows [b0, b1)."""
        out = []
        f = bisect_right(self._starts, b0) - 1
        while b0 < b1:
            lo = b0 - self._starts[f]
            hi = min(b1, self._starts[f + 1]) - self._starts[f]
            if hi > lo:
                out.append((f, lo, hi))
            b0 = self._starts[f] + hi
            f += 1
        return out

    def _npy_pieces(
        self, ranges: list[tuple[int, int, int]], b0: int, out_row: int
    ) -> tuple[list[tuple[_Npy, int, int, int]], list[tuple[_Npy, int, int, int]]]:
        """The local and the remote ``(header, file offset, bytes, output offset)`` pieces
        of ``ranges`` for a batch starting at global row ``b0`` with ``out_row`` bytes a row."""
        row_bytes = self._dim * self._disk_dtype.itemsize
        local: list[tuple[_Npy, int, int, int]] = []
        remote: list[tuple[_Npy, int, int, int]] = []
        for f, lo, hi in ranges:
            h = self._npy[f]
            piece = (h, h.data_offset + lo * row_bytes, (hi - lo) * row_bytes,
                     (self._starts[f] + lo - b0) * out_row)
            (local if self._emb_fss[h.source] is None else remote).append(piece)
        return local, remote

    def _fill_npy(
        self,
        out: np.ndarray,
        b0: int,
        ranges: list[tuple[int, int, int]],
        max_piece_size: int | None,
        parallel_pieces: int | None,
        spare_ram: int,
    ) -> None:
        out_code = _DTYPE_CODES[out.dtype]
        out_bytes = out.reshape(-1).view(np.uint8)
        out_row = self._dim * out.dtype.itemsize
        # the files' common dtype (not the first file's: a file without rows may have any)
        disk_code = _DTYPE_CODES[self._disk_dtype]
        row_bytes = self._dim * self._disk_dtype.itemsize
        local, remote = self._npy_pieces(ranges, b0, out_row)
        # Files agree on dims and dtype but each has its own byte order: the local pieces
        # are read in one call per byte order (almost always a single one).
        for big_endian in (False, True):
            group = [(h.path, off, n, o) for h, off, n, o in local if h.big_endian == big_endian]
            if not group:
                continue
            converting = out_code != disk_code or big_endian != (np.little_endian is False)
            chunk = max_piece_size * row_bytes if max_piece_size else _LOCAL_CHUNK
            threads = parallel_pieces or max(4, os.cpu_count() or 1)
            if converting:  # each thread converts through a 256 KiB buffer
                threads = max(1, min(threads, spare_ram // (256 << 10)))
            _native.read_npy_pieces(
                out_bytes, out_code, group, disk_code, big_endian, threads, chunk
            )
        if remote:
            size = max_piece_size * row_bytes if max_piece_size else _REMOTE_PIECE
            size = max(row_bytes, size - size % row_bytes)
            jobs = []
            for h, off, n, o in remote:
                done = 0
                while done < n:
                    k = min(size, n - done)
                    jobs.append((h, off + done, k, o + done // row_bytes * out_row))
                    done += k
            workers = parallel_pieces or 16
            workers = max(1, min(workers, spare_ram // size, len(jobs)))

            def fetch(job: tuple[_Npy, int, int, int]) -> tuple[bytes, int, bool]:
                h, off, n, o = job
                return _fetch(self._emb_fss[h.source], h.path, off, off + n), o, h.big_endian

            # At most `workers` pieces in flight; each is converted into the batch as it lands.
            with ThreadPoolExecutor(max_workers=workers) as pool:
                pending = set()
                it = iter(jobs)
                for job in it:
                    pending.add(pool.submit(fetch, job))
                    if len(pending) >= workers:
                        break
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        data, o, big_endian = fut.result()
                        _native.convert_into(out_bytes, out_code, o, data, disk_code, big_endian)
                        del data
                        nxt = next(it, None)
                        if nxt is not None:
                            pending.add(pool.submit(fetch, nxt))

    def _read_parquet(
        self,
        out: np.ndarray,
        b0: int,
        ranges: list[tuple[int, int, int]],
        parallel_pieces: int | None,
        groups: dict[int, tuple[int, Any]],
    ) -> Any:
        """Read the meta columns (and, for ``parquet``, the embeddings) of the ranges.
        ``groups`` keeps, per file, the last row group read when the range ended inside it."""
        import pandas as pd
        import pyarrow as pa
        import pyarrow.compute as pc

        fmt = self._args["file_format"]
        col = self._args["embedding_column"]
        meta_cols = self._args["meta_columns"]
        if fmt == "parquet_npy" and not meta_cols:
            return None
        columns = ([col] if fmt == "parquet" else []) + meta_cols

        def part(r: tuple[int, int, int]) -> Any:
            f, lo, hi = r
            p = self._parquet[f]
            starts = np.concatenate([[0], np.cumsum(p.row_groups, dtype=np.int64)])
            g0 = int(np.searchsorted(starts, lo, side="right")) - 1
            g1 = int(np.searchsorted(starts, hi, side="left"))
            kept = groups.pop(f, None)
            tables = []
            first = g0
            if kept is not None and kept[0] == g0:
                tables.append(kept[1])
                first = g0 + 1
            if first < g1:
                pf = _open_parquet(self._meta_fss[p.source], p.path)
                with _parquet_errors(p.path):
                    tables.append(pf.read_row_groups(list(range(first, g1)), columns=columns))
            whole = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
            if hi < int(starts[g1]):
                # the next batch starts in the last row group: keep it (its rows only)
                last_start = int(starts[g1 - 1])
                groups[f] = (g1 - 1, whole.slice(last_start - int(starts[g0])))
            table = whole.slice(lo - int(starts[g0]), hi - lo)
            if table.num_rows != hi - lo:
                raise FormatError(f"{p.path}: expected {hi - lo} rows from row {lo}, got {table.num_rows}")
            if fmt == "parquet":
                arr = table.column(col).combine_chunks()
                if arr.null_count:
                    bad = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
                    raise FormatError(f"{p.path}: null embedding at row {lo + bad}")
                lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
                wrong = np.flatnonzero(lengths != self._dim)
                if wrong.size:
                    k = int(wrong[0])
                    raise FormatError(
                        f"{p.path}: embedding at row {lo + k} has {lengths[k]} values, expected {self._dim}"
                    )
                values = arr.flatten()
                if values.null_count:
                    raise FormatError(f"{p.path}: null values inside embeddings")
                if values.type != pa.from_numpy_dtype(self._disk_dtype):
                    raise FormatError(f"{p.path}: column {col!r} holds {values.type}, other files hold {self._disk_dtype}")
                o = self._starts[f] + lo - b0
                out[o : o + hi - lo] = values.to_numpy(zero_copy_only=False).reshape(hi - lo, self._dim)
            if not meta_cols:
                return None
            # Strings stay Arrow-backed (pandas' "string[pyarrow]"): no Python str per value.
            strings = {pa.string(): pd.StringDtype("pyarrow"), pa.large_string(): pd.StringDtype("pyarrow")}
            meta = table.select(meta_cols)
            # dictionary-encoded columns as their values: a pandas category would turn into
            # object where a batch joins two files with different dictionaries, so the dtype
            # would change from batch to batch
            for k, field in enumerate(meta.schema):
                if pa.types.is_dictionary(field.type):
                    meta = meta.set_column(k, field.name, meta.column(k).cast(field.type.value_type))
            return meta.to_pandas(types_mapper=strings.get)

        workers = max(1, min(parallel_pieces or 8, len(ranges)))
        if workers == 1:
            parts = [part(r) for r in ranges]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                parts = list(pool.map(part, ranges))
        if not meta_cols:
            return None
        return pd.concat(parts, ignore_index=True)
