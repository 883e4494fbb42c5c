//! Bindings of the word2vec, text and fastText readers and writers.


use numpy::PyArray1;
use pyo3::exceptions::{PyAttributeError, PyTypeError, PyValueError};
use pyo3::types::{PyBool, PyInt};
use pyo3::prelude::*;

use super::embeddings::PyEmbeddings;
use crate::compat::text::Header;
use crate::compat::{fasttext, text, word2vec, Decode, ReadOptions};
use crate::embeddings::Embeddings;

/// How words are decoded: `encoding` is UTF-8 (strict, or with U+FFFD for invalid bytes when
/// `lossy`) or Latin-1 (every byte a character; `lossy` changes nothing).
fn decode_of(lossy: bool, encoding: &str) -> PyResult<Decode> {
    match encoding.to_ascii_lowercase().replace('_', "-").as_str() {
        "utf-8" | "utf8" => Ok(Decode::from(lossy)),
        "latin-1" | "latin1" | "iso-8859-1" | "iso8859-1" | "l1" => Ok(Decode::Latin1),
        _ => Err(PyValueError::new_err(format!(
            "encoding must be 'utf-8' or 'latin-1' (ISO-8859-1), got {encoding:?}"
        ))),
    }
}

/// `limit` as a row count: `None` reads everything, an int above any possible row count (a
/// Python int is unbounded) reads everything too; negative or non-int values are refused.
fn options(decode: Decode, limit: Option<&Bound<'_, PyAny>>, normalize: bool) -> PyResult<ReadOptions> {
    let limit = match limit {
        None => None,
        Some(l) => {
            let not_int = || -> PyResult<PyErr> {
                Ok(PyTypeError::new_err(format!("limit must be an int or None, not {}", l.get_type().name()?)))
            };
            if l.is_instance_of::<PyBool>() {
                return Err(not_int()?);
            }
            // Any integer type (Python int, numpy integers): what `operator.index` accepts.
            let l = match l.call_method0("__index__") {
                Ok(i) if i.is_instance_of::<PyInt>() => i,
                Ok(_) => return Err(not_int()?),
                Err(e) if e.is_instance_of::<PyAttributeError>(l.py()) => return Err(not_int()?),
                Err(e) => return Err(e), // raised by the object's own __index__
            };
            if l.lt(0)? {
                return Err(PyValueError::new_err(format!("limit must be >= 0, got {l}")));
            }
            Some(l.extract::<u64>().map_or(usize::MAX, |v| usize::try_from(v).unwrap_or(usize::MAX)))
        }
    };
    Ok(ReadOptions { decode, limit, normalize })
}

/// Read a word2vec binary file. `limit` reads only the first words; `normalize=False`
/// keeps the vectors as stored (no norms); `lossy=True` replaces invalid UTF-8 with U+FFFD;
/// `encoding='latin-1'` reads words as ISO-8859-1 (every byte a character).
#[pyfunction]
#[pyo3(signature = (path, lossy=false, limit=None, normalize=true, encoding="utf-8"))]
pub fn load_word2vec(
    py: Python<'_>,
    path: crate::py::UserPath,
    lossy: bool,
    limit: Option<&Bound<'_, PyAny>>,
    normalize: bool,
    encoding: &str,
) -> PyResult<PyEmbeddings> {
    let opts = options(decode_of(lossy, encoding)?, limit, normalize)?;
    let emb = crate::py::fork::detach_interruptible(py, || {
        crate::compat::check_not_compressed(&path)?;
        word2vec::read_word2vec_binary(&path, &opts).map_err(|e| match e {
            crate::Error::Invalid { what, message } if crate::compat::looks_like_text(&path) => crate::Error::Invalid {
                what,
                message: format!(
                    "{message}; the file looks like text embeddings (word2vec text or GloVe), not \
                     word2vec binary: read it with vf.load_text"
                ),
            },
            e => e,
        })
    })?;
    Ok(PyEmbeddings::from_rust(emb))
}

/// Read a text file (`word v1 ... vd` per line). `dims=None` detects a `"n d"` header line,
/// `dims=True` requires one (word2vec text), `dims=False` reads every line as a vector (GloVe).
/// `encoding='latin-1'` reads words as ISO-8859-1 (every byte a character).
#[pyfunction]
#[pyo3(signature = (path, dims=None, lossy=false, limit=None, normalize=true, encoding="utf-8"))]
pub fn load_text(
    py: Python<'_>,
    path: crate::py::UserPath,
    dims: Option<bool>,
    lossy: bool,
    limit: Option<&Bound<'_, PyAny>>,
    normalize: bool,
    encoding: &str,
) -> PyResult<PyEmbeddings> {
    let opts = options(decode_of(lossy, encoding)?, limit, normalize)?;
    let header = match dims {
        None => Header::Detect,
        Some(true) => Header::Yes,
        Some(false) => Header::No,
    };
    let emb = crate::py::fork::detach_interruptible(py, || {
        text::read_text(&path, header, &opts).map_err(|e| match e {
            crate::Error::Invalid { what, message }
                if message.contains("line 2:")
                    && !message.contains("UTF-8")
                    && !crate::compat::looks_like_text(&path)
                    && is_binary_after_header(&path) =>
            {
                crate::Error::Invalid {
                    what,
                    message: format!(
                        "{message}; the file looks like word2vec binary, not text: read it with vf.load_word2vec"
                    ),
                }
            }
            e => e,
        })
    })?;
    Ok(PyEmbeddings::from_rust(emb))
}

/// A `"n d"` header line followed by bytes that are not UTF-8 text (word2vec binary).
/// The `(words, dims)` header line of a text file as `load_text` detects it, or None (GloVe).
#[pyfunction]
pub fn _text_header(py: Python<'_>, path: crate::py::UserPath) -> PyResult<Option<(usize, usize)>> {
    Ok(py.detach(|| text::file_header(&path))?)
}

fn is_binary_after_header(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut head = Vec::new();
    let Ok(f) = crate::embeddings::open_regular_file(path) else {
        return false;
    };
    if f.take(4096).read_to_end(&mut head).is_err() {
        return false;
    }
    let Some(nl) = head.iter().position(|&b| b == b'\n') else {
        return false;
    };
    let header = String::from_utf8_lossy(&head[..nl]);
    let mut parts = header.split_ascii_whitespace();
    let is_header = parts.next().is_some_and(|p| p.parse::<u64>().is_ok())
        && parts.next().is_some_and(|p| p.parse::<u64>().is_ok())
        && parts.next().is_none();
    let rest = &head[nl + 1..];
    is_header
        && (rest.contains(&0)
            || std::str::from_utf8(rest).is_err_and(|e| e.error_len().is_some() || e.valid_up_to() + 4 < rest.len()))
}

/// Read a fastText `.bin` model or a quantized (and pruned) `.ftz` model.
/// With `normalize` (the default) word rows are L2-normalized and their norms kept, as
/// finalfusion does; `normalize=False` keeps each word row exactly fastText's vector.
/// `encoding='latin-1'` reads words as ISO-8859-1 (their rows are fastText's, from the n-grams
/// of the file's bytes; an unknown word asked for later is hashed as its UTF-8 bytes).
#[pyfunction]
#[pyo3(signature = (path, lossy=false, normalize=true, encoding="utf-8"))]
pub fn load_fasttext(py: Python<'_>, path: crate::py::UserPath, lossy: bool, normalize: bool, encoding: &str) -> PyResult<PyEmbeddings> {
    let decode = decode_of(lossy, encoding)?;
    let emb = crate::py::fork::detach_interruptible(py, || {
        crate::compat::check_not_compressed(&path)?;
        fasttext::read_fasttext(&path, decode, normalize)
    })?;
    Ok(PyEmbeddings::from_rust(emb))
}

impl PyEmbeddings {
    /// The core embeddings with the (possibly reassigned) metadata.
    fn with_current_metadata(&self) -> std::borrow::Cow<'_, Embeddings> {
        let meta = self.metadata_text();
        if meta == self.inner.metadata {
            std::borrow::Cow::Borrowed(&*self.inner)
        } else {
            let mut e = (*self.inner).clone();
            e.metadata = meta;
            std::borrow::Cow::Owned(e)
        }
    }
}

#[pymethods]
impl PyEmbeddings {
    /// Write the known words as a word2vec binary file (vectors as in the source file:
    /// rows times norms).
    fn write_word2vec(&self, py: Python<'_>, path: crate::py::UserPath) -> PyResult<()> {
        let emb = &self.inner;
        crate::py::fork::detach_interruptible(py, || word2vec::write_word2vec_binary(emb, &path))?;
        Ok(())
    }

    /// Write the known words as text, with a `"n d"` header line when `dims` is true
    /// (word2vec text) and without (GloVe). Numbers use the shortest exact digits.
    #[pyo3(signature = (path, dims=true))]
    fn write_text(&self, py: Python<'_>, path: crate::py::UserPath, dims: bool) -> PyResult<()> {
        let emb = &self.inner;
        crate::py::fork::detach_interruptible(py, || text::write_text(emb, &path, dims))?;
        Ok(())
    }

    /// Write a fastText `.bin` model that fastText itself loads (fastText subword or
    /// simple vocabularies).
    fn write_fasttext(&self, py: Python<'_>, path: crate::py::UserPath) -> PyResult<()> {
        let emb = self.with_current_metadata();
        let emb = &*emb;
        crate::py::fork::detach_interruptible(py, || fasttext::write_fasttext(emb, &path))?;
        Ok(())
    }

    /// The vector fastText's `get_word_vector` gives: unnormalized; for an unknown word
    /// the mean of its n-gram rows; zeros when the word has no n-grams.
    fn fasttext_vector<'py>(&self, py: Python<'py>, word: &str) -> Bound<'py, PyArray1<f32>> {
        let emb = &self.inner;
        let work = crate::py::fork::words_work(&[word], emb.dims());
        let v = crate::py::fork::detach_if(py, work, || fasttext::fasttext_vector(emb, word));
        PyArray1::from_vec(py, v)
    }

    /// fastText's `get_subwords`: `(strings, ids)`; a known word comes first with its row.
    fn fasttext_subwords(&self, word: &str) -> (Vec<String>, Vec<usize>) {
        fasttext::fasttext_subwords(&self.inner, word)
    }
}
