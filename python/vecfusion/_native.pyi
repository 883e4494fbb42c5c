"""Type stubs for the native module vecfusion._native."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal, TypeAlias, TypeVar, final, overload

import numpy as np
import numpy.typing as npt


__version__: str
build_profile: str

_T = TypeVar("_T")
# gensim's query terms: a word, a row number (the word of that row) or a vector; `most_similar`
# also takes (term, weight) pairs
_Term: TypeAlias = str | int | npt.ArrayLike
_Terms: TypeAlias = _Term | Iterable[_Term | tuple[_Term, float]] | None
_CosmulTerms: TypeAlias = _Term | Iterable[_Term] | None

class VecfusionError(Exception):
    """Base class of vecfusion's own errors."""

class FormatError(VecfusionError, ValueError):
    """A file is malformed: corrupt, truncated, of an unknown chunk or version, or inconsistent. Also a ValueError."""

@final
class WordIter:
    def __iter__(self) -> WordIter: ...
    def __next__(self) -> str: ...

@final
class Vocab:
    def __len__(self) -> int: ...
    @overload
    def __getitem__(self, key: int, /) -> str: ...
    @overload
    def __getitem__(self, key: str, /) -> int | list[int]: ...
    def __contains__(self, word: object, /) -> bool: ...
    def __iter__(self) -> WordIter: ...
    def index(self, word: str) -> int | list[int] | None: ...
    def ngrams(self, word: str) -> list[str]: ...
    def subword_indices(self, word: str) -> list[int]: ...
    def indices_batch(
        self, words: Iterable[str]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]]: ...
    @property
    def words(self) -> list[str]: ...
    @property
    def kind(self) -> str: ...
    @property
    def min_n(self) -> int | None: ...
    @property
    def max_n(self) -> int | None: ...
    @property
    def rows(self) -> int: ...
    def detached(self) -> Vocab: ...
    def __reduce__(self) -> tuple[Callable[[bytes], Vocab], tuple[bytes]]: ...

def _vocab_from_bytes(data: bytes, fasttext_ngrams: bool = False) -> Vocab: ...
def _embeddings_from_bytes(data: bytes, fasttext_ngrams: bool = False) -> Embeddings: ...
def _normalize_rows_as_lookup(sums: npt.NDArray[np.float32]) -> None: ...
@final
class QuantizedStorage:
    @property
    def shape(self) -> tuple[int, int]: ...
    def __len__(self) -> int: ...
    @property
    def n_subquantizers(self) -> int: ...
    @property
    def n_centroids(self) -> int: ...
    @property
    def mmapped(self) -> bool: ...
    @property
    def rebuild_method(self) -> Literal["concatenation", "centroid table", "product"]: ...
    @overload
    def reconstruct(self, rows: int) -> npt.NDArray[np.float32]: ...
    @overload
    def reconstruct(
        self, rows: Iterable[int] | Iterable[bool] | npt.NDArray[np.integer[Any]] | npt.NDArray[np.bool_] | None = None
    ) -> npt.NDArray[np.float32]: ...
    @property
    def codes(self) -> npt.NDArray[np.uint8]: ...
    @property
    def centroids(self) -> npt.NDArray[np.float32]: ...
    @property
    def projection(self) -> npt.NDArray[np.float32] | None: ...
    @property
    def norms(self) -> npt.NDArray[np.float32] | None: ...

@final
class Embeddings:
    def __new__(
        cls,
        words: Iterable[str],
        matrix: npt.ArrayLike,
        *,
        norms: npt.ArrayLike | None = None,
        metadata: dict[str, Any] | None = None,
        vocab: str = "simple",
        min_n: int = 3,
        max_n: int = 6,
        buckets: int | None = None,
        ngrams: Iterable[tuple[str, int] | list[str | int]] | None = None,
    ) -> Embeddings: ...
    @property
    def dims(self) -> int: ...
    def __len__(self) -> int: ...
    def __copy__(self) -> Embeddings: ...
    def __deepcopy__(self, _memo: dict[int, Any]) -> Embeddings: ...
    def __getitem__(self, word: str, /) -> npt.NDArray[np.float32]: ...
    def __contains__(self, word: object, /) -> bool: ...
    def __iter__(self) -> WordIter: ...
    @overload
    def embedding(self, word: str) -> npt.NDArray[np.float32] | None: ...
    @overload
    def embedding(self, word: str, default: _T) -> npt.NDArray[np.float32] | _T: ...
    def embedding_with_norm(self, word: str) -> tuple[npt.NDArray[np.float32], float] | None: ...
    def lookup(
        self, words: Iterable[str], out: npt.NDArray[np.float32] | None = None
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """Rows of many words at once: ``(float32 (n, dims), bool found (n,))``; rows of words
        without an embedding are zero. ``out``: a writable C-contiguous float32 ``(n, dims)``
        array to fill and return instead of a new one."""
    @property
    def vocab(self) -> Vocab: ...
    @property
    def storage(self) -> npt.NDArray[np.float32] | QuantizedStorage: ...
    @property
    def norms(self) -> npt.NDArray[np.float32] | None: ...
    @property
    def metadata(self) -> dict[str, Any] | None:
        """The metadata chunk's TOML as a dict (a fresh copy on every access: changes to it
        are kept only when the dict is assigned back), or None."""
    @metadata.setter
    def metadata(self, value: dict[str, Any] | None) -> None: ...
    def write(self, path: str | os.PathLike[str], vocab: str = "standard") -> None:
        """Write a finalfusion file; ``vocab="fst"`` writes vecfusion's memory-mappable
        automaton vocabulary (readable only by vecfusion), ``"standard"`` finalfusion's own."""
    @property
    def vocab_kind(self) -> str: ...
    @property
    def storage_kind(self) -> str: ...
    # queries (issue 4)
    def similar(
        self,
        query: str | npt.ArrayLike,
        k: int = 10,
        skip: Iterable[str] | None = None,
    ) -> list[tuple[str, float]]: ...
    def similar_batch(
        self, matrix: npt.ArrayLike, k: int = 10
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Nearest words to each row of ``matrix`` (rows are L2-normalized):
        ``(indices int64 (n, w), scores float32 (n, w))``, ``w = min(k, len(self))``, best
        first; row ``i`` equals ``similar(matrix[i], k)``. A row with fewer than ``w`` answers
        (word rows scoring NaN are never answers) is filled up with index -1 and score NaN:
        mask with ``indices >= 0`` (-1 is a valid Python index)."""
        ...
    def analogy(
        self,
        a: str,
        b: str,
        c: str,
        k: int = 10,
        mask: Sequence[bool] = (True, True, True),
    ) -> list[tuple[str, float]]: ...
    # gensim-style helpers
    def similarity(self, a: str | int, b: str | int) -> float: ...
    @overload
    def most_similar(
        self, positive: _Terms = None, negative: _Terms = None, topn: int = 10, *, restrict_vocab: int | None = None
    ) -> list[tuple[str, float]]: ...
    @overload
    def most_similar(
        self, positive: _Terms, negative: _Terms, topn: None, *, restrict_vocab: int | None = None
    ) -> npt.NDArray[np.float32]: ...
    @overload
    def most_similar(
        self, positive: _Terms = None, negative: _Terms = None, *, topn: None, restrict_vocab: int | None = None
    ) -> npt.NDArray[np.float32]: ...
    @overload
    def most_similar_cosmul(
        self, positive: _CosmulTerms = None, negative: _CosmulTerms = None, topn: int = 10, restrict_vocab: int | None = None
    ) -> list[tuple[str, float]]: ...
    @overload
    def most_similar_cosmul(
        self, positive: _CosmulTerms, negative: _CosmulTerms, topn: None, restrict_vocab: int | None = None
    ) -> npt.NDArray[np.float32]: ...
    @overload
    def most_similar_cosmul(
        self, positive: _CosmulTerms = None, negative: _CosmulTerms = None, *, topn: None, restrict_vocab: int | None = None
    ) -> npt.NDArray[np.float32]: ...
    def doesnt_match(self, words: Iterable[str]) -> str: ...
    # word2vec, text and fastText formats (issue 5)
    def write_word2vec(self, path: str | os.PathLike[str]) -> None: ...
    def write_text(self, path: str | os.PathLike[str], dims: bool = True) -> None: ...
    def write_fasttext(self, path: str | os.PathLike[str]) -> None: ...
    def fasttext_vector(self, word: str) -> npt.NDArray[np.float32]: ...
    def fasttext_subwords(self, word: str) -> tuple[list[str], list[int]]: ...
    # --- issue 6: product quantization ---
    def quantize(
        self,
        n_subquantizers: int | None = None,
        bits: int = 8,
        opq: bool = True,
        n_iterations: int = 25,
        n_attempts: int = 1,
        normalize: bool = True,
        sample: int | None = None,
        seed: int = 0,
        progress: bool | Callable[[int, int], object] | None = True,
        stats: dict[str, Any] | None = None,
    ) -> Embeddings:
        """Product-quantize the storage (PQ, or OPQ with a learned rotation).

        Returns new Embeddings with a QuantizedArray storage (finalfusion's chunk); the
        vocabulary, metadata and norms are kept. ``n_subquantizers`` (M) must divide ``dims``;
        default: the largest divisor of ``dims`` not above ``dims / 4`` (75 for 300 dims;
        a UserWarning when no divisor lies near it, as for 101 dims, where it is 1).
        Each subquantizer has ``2**bits`` centroids (bits 1 to 8: one u8 code per
        subquantizer). ``n_iterations`` Lloyd steps of k-means (k-means++ init, empty
        clusters split), best of ``n_attempts`` runs; with ``opq`` the rotation is
        fitted by ``2 * n_iterations`` alternations of PQ training and the orthogonal Procrustes
        update (50 by default).
        ``normalize`` L2-normalizes rows before training and stores their norms in the chunk.
        ``sample``: training rows (default 256 per centroid, like faiss; all rows at most).
        ``progress``: True/None for a bar (tqdm when installed), False for none, or a
        callable ``(done, total)`` called about every 0.1 s. Bad parameters raise ValueError.
        ``stats``: a dict to fill with ``train_seconds``, ``encode_seconds``, ``sample_rows``.
        The work runs in Rust with the GIL released; Ctrl-C cancels it.
        """

def load(path: str | os.PathLike[str], mmap: bool = False) -> Embeddings: ...
def _after_fork_in_child() -> None: ...

# --- word2vec, text and fastText formats (issue 5) ---

def load_word2vec(
    path: str | os.PathLike[str],
    lossy: bool = False,
    limit: int | None = None,
    normalize: bool = True,
    encoding: str = "utf-8",
) -> Embeddings: ...
def load_text(
    path: str | os.PathLike[str],
    dims: bool | None = None,
    lossy: bool = False,
    limit: int | None = None,
    normalize: bool = True,
    encoding: str = "utf-8",
) -> Embeddings: ...
def load_fasttext(
    path: str | os.PathLike[str], lossy: bool = False, normalize: bool = True, encoding: str = "utf-8"
) -> Embeddings: ...
def _text_header(path: str | os.PathLike[str]) -> tuple[int, int] | None: ...
# -- EmbeddingReader helpers (rust/py/reader.rs; used by vecfusion.reader) -------------

def npy_header_size(prefix: bytes, name: str | None = None) -> int: ...
def parse_npy_header(prefix: bytes, file_len: int, name: str) -> tuple[int, int, str, bool, int]: ...
def read_npy_headers(
    paths: Sequence[str | os.PathLike[str]], threads: int = 8
) -> list[tuple[int, int, str, bool, int]]: ...
def read_npy_pieces(
    out: npt.NDArray[np.uint8],
    out_dtype: str,
    pieces: Sequence[tuple[str | os.PathLike[str], int, int, int]],
    src_dtype: str,
    big_endian: bool,
    threads: int,
    chunk_bytes: int = 4194304,
) -> None: ...
def read_ahead(ranges: Sequence[tuple[str | os.PathLike[str], int, int]]) -> None: ...
def convert_into(
    out: npt.NDArray[np.uint8],
    out_dtype: str,
    out_offset: int,
    src: bytes,
    src_dtype: str,
    big_endian: bool,
) -> None: ...
