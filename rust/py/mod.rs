//! Python bindings (only with the `python` feature). Nothing here parses bytes or
//! runs hot loops: it converts arguments, releases the GIL and calls the core.

mod compat;
mod bag;
mod construct;
mod embeddings;
mod errors;
pub(crate) mod fork;
mod metadata;
mod query;
mod reader;
mod quant;
mod storage;
mod views;
mod vocab;

use std::path::{Path, PathBuf};

use pyo3::prelude::*;

pub use embeddings::PyEmbeddings;

/// A file path argument (str, bytes or os.PathLike) with a leading `~` or `~user` expanded
/// as `os.path.expanduser` expands it, as gensim's loaders (smart_open) and the
/// EmbeddingReader do; bytes are decoded as `os.fsdecode` decodes them.
pub(crate) struct UserPath(pub PathBuf);

impl<'a, 'py> FromPyObject<'a, 'py> for UserPath {
    type Error = PyErr;

    fn extract(obj: pyo3::Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let py = obj.py();
        let expanded = py.import("os.path")?.call_method1("expanduser", (obj,))?;
        let text = py.import("os")?.call_method1("fsdecode", (expanded,))?;
        Ok(UserPath(text.extract::<PathBuf>()?))
    }
}

impl AsRef<Path> for UserPath {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for UserPath {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

#[pymodule(gil_used = false)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    fork::start_global_pool();
    errors::register(m)?;
    m.add_class::<embeddings::PyEmbeddings>()?;
    m.add_function(wrap_pyfunction!(fork::_after_fork_in_child, m)?)?;
    m.add_class::<vocab::PyVocab>()?;
    m.add_function(wrap_pyfunction!(vocab::_vocab_from_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(embeddings::_embeddings_from_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(bag::_normalize_rows_as_lookup, m)?)?;
    m.add_class::<storage::PyQuantizedStorage>()?;
    m.add_class::<embeddings::WordIter>()?;
    m.add_function(wrap_pyfunction!(embeddings::load, m)?)?;
    m.add_function(wrap_pyfunction!(compat::load_word2vec, m)?)?;
    m.add_function(wrap_pyfunction!(compat::load_text, m)?)?;
    m.add_function(wrap_pyfunction!(compat::_text_header, m)?)?;
    m.add_function(wrap_pyfunction!(compat::load_fasttext, m)?)?;
    reader::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("build_profile", if cfg!(debug_assertions) { "debug" } else { "release" })?;
    Ok(())
}
