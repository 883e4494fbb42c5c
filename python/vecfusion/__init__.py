"""vecfusion: fast, memory-frugal embeddings with a Rust core.

Open, write and memory-map finalfusion files; look up known and unknown words.

>>> import vecfusion as vf
>>> emb = vf.load("vectors.fifu", mmap=True)     # doctest: +SKIP
>>> emb["berlin"].shape                           # doctest: +SKIP
(300,)
"""

from __future__ import annotations

import os as _os
from typing import TYPE_CHECKING

from ._native import (
    Embeddings as Embeddings,
    FormatError as FormatError,
    QuantizedStorage as QuantizedStorage,
    VecfusionError as VecfusionError,
    Vocab as Vocab,
    __version__ as __version__,
    build_profile as build_profile,
    load as load,
    load_fasttext as load_fasttext,
    load_text as load_text,
    load_word2vec as load_word2vec,
)
from .convert import convert as convert

if TYPE_CHECKING:  # (imported lazily at run time, below: it pulls in pandas glue)
    from .reader import EmbeddingReader as EmbeddingReader

# rayon's thread pool does not survive fork(): in a child process (multiprocessing's default
# on Linux, torch DataLoader workers) vecfusion's parallel calls run in a pool of the child's own.
if hasattr(_os, "register_at_fork"):
    from ._native import _after_fork_in_child

    _os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = [
    "Embeddings",
    "FormatError",
    "QuantizedStorage",
    "VecfusionError",
    "Vocab",
    "__version__",
    "build_profile",
    "load",
    "convert",
    "load_fasttext",
    "load_text",
    "load_word2vec",
    "EmbeddingReader",
]


def __getattr__(name: str) -> object:
    # EmbeddingReader lives in vecfusion.reader; imported lazily to keep `import vecfusion` light.
    if name == "EmbeddingReader":
        from .reader import EmbeddingReader

        return EmbeddingReader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
