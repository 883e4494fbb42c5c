//! Building embeddings from NumPy arrays.

use numpy::{AllowTypeChange, PyArrayLike1, PyArrayLike2, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use super::embeddings::{extract_word_buf, PyEmbeddings};
use super::metadata::py_to_toml;
use crate::embeddings::Embeddings;
use crate::storage::{ArrayStorage, Storage};
use crate::vocab::{ExplicitNgrams, Indexer, SubwordVocab, Vocab, WordList};

#[pymethods]
impl PyEmbeddings {
    /// Build embeddings from words and a matrix (any real dtype or nested lists; stored as
    /// float32).
    ///
    /// `vocab` is "simple" (one row per word), "bucket" (finalfusion hashing into
    /// 2**buckets n-gram rows), "fasttext" (fastText hashing into `buckets` rows) or
    /// "explicit" (an explicit n-gram table: `ngrams` is a list of `(ngram, index)` pairs;
    /// indices are renumbered densely in order of first appearance);
    /// subword vocabularies need `len(words) + n_buckets` matrix rows, word rows first.
    #[new]
    #[pyo3(signature = (words, matrix, *, norms=None, metadata=None, vocab="simple", min_n=3, max_n=6, buckets=None, ngrams=None))]
    #[allow(clippy::too_many_arguments)]
    fn py_new(
        py: Python<'_>,
        words: &Bound<'_, PyAny>,
        matrix: &Bound<'_, PyAny>,
        norms: Option<&Bound<'_, PyAny>>,
        metadata: Option<&Bound<'_, PyAny>>,
        vocab: &str,
        min_n: i128,
        max_n: i128,
        buckets: Option<i128>,
        ngrams: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let ngrams = ngrams.map(extract_ngrams).transpose()?;
        // (wide integers: an out-of-range value is a ValueError naming it, not an OverflowError)
        let in_range = |name: &str, v: i128, max: u64| -> PyResult<u64> {
            u64::try_from(v)
                .ok()
                .filter(|&x| x <= max)
                .ok_or_else(|| PyValueError::new_err(format!("{name}={v} is out of range (0 to {max})")))
        };
        let min_n = in_range("min_n", min_n, u64::from(u32::MAX))? as u32;
        let max_n = in_range("max_n", max_n, u64::from(u32::MAX))? as u32;
        let buckets = buckets.map(|b| in_range("buckets", b, u64::from(u32::MAX)).map(|b| b as u32)).transpose()?;
        if ngrams.is_some() != (vocab == "explicit") {
            return Err(PyValueError::new_err("ngrams is given exactly when vocab='explicit'"));
        }
        if buckets.is_some() && !matches!(vocab, "bucket" | "fasttext") {
            return Err(PyValueError::new_err(format!(
                "buckets is given only with vocab='bucket' or vocab='fasttext' (vocab={vocab:?} has no buckets)"
            )));
        }
        let words = extract_word_buf(words)?;
        words.require_valid()?;
        let strs = words.strs();
        let matrix: PyArrayLike2<'_, f32, AllowTypeChange> = matrix
            .extract()
            .map_err(|_| PyTypeError::new_err(format!("matrix must be a 2-D array of numbers (rows, dims), got {}", what_array(matrix))))?;
        let (rows, cols) = (matrix.shape()[0], matrix.shape()[1]);
        let data = matrix.as_array().iter().copied().collect::<Vec<f32>>();
        // NaN or infinity would make every query skip (or rank arbitrarily) that row
        if let Some(at) = data.iter().position(|x| !x.is_finite()) {
            let (r, c) = (at / cols.max(1), at % cols.max(1));
            let row = match strs.get(r) {
                Some(w) => format!("row {r} (word {w:?})"),
                None => format!("row {r} (an n-gram row)"),
            };
            return Err(PyValueError::new_err(format!("matrix {row} holds {} at column {c}", data[at])));
        }
        let norms = norms
            .map(|n| {
                n.extract::<PyArrayLike1<'_, f32, AllowTypeChange>>()
                    .map(|a| a.as_array().to_vec())
                    .map_err(|_| PyTypeError::new_err(format!("norms must be a 1-D array of numbers, one per word, got {}", what_array(n))))
            })
            .transpose()?;
        if let Some(at) = norms.as_deref().and_then(|n| n.iter().position(|x| !x.is_finite() || *x < 0.0)) {
            let v = norms.as_deref().map_or(0.0, |n| n[at]);
            let word = strs.get(at).map(|w| format!(" (word {w:?})")).unwrap_or_default();
            return Err(PyValueError::new_err(format!("norms[{at}]{word} is {v}: norms must be finite and >= 0")));
        }
        // With norms, finalfusion's convention has the word rows unit vectors (the rows stored
        // normalized, the norms their former lengths); gensim-style searches then take cosines
        // as dot products. Rows that are not (raw rows, or rows rebuilt from a quantizer) are
        // searched with their own lengths instead.
        let unit_rows = norms.is_some()
            && (cols == 0 || data[..strs.len().min(rows) * cols].chunks_exact(cols).all(crate::embeddings::is_unit_or_zero));
        let metadata = match metadata {
            Some(m) if !m.is_none() => Some(py_to_toml(m)?),
            _ => None,
        };
        let vocab_kind = vocab.to_string();
        let emb = crate::py::fork::detach(py, move || -> crate::Result<Embeddings> {
            let list = WordList::new(strs.iter().copied())?;
            let vocab = match vocab_kind.as_str() {
                "simple" => Vocab::Simple(list),
                "explicit" => {
                    if min_n == 0 || min_n > max_n || max_n > crate::vocab::MAX_NGRAM_LEN {
                        return Err(crate::Error::argument(format!(
                            "bad n-gram range min_n={min_n}, max_n={max_n} (need 1 <= min_n <= max_n <= {})",
                            crate::vocab::MAX_NGRAM_LEN
                        )));
                    }
                    let ngrams = ngrams.unwrap_or_default();
                    // (finalfusion-python refuses to load a table of no n-grams)
                    if ngrams.is_empty() {
                        return Err(crate::Error::argument(
                            "vocab='explicit' needs at least one n-gram (use vocab='simple' for words without n-grams)",
                        ));
                    }
                    let table = ExplicitNgrams::new(ngrams).map_err(|e| crate::Error::argument(e.to_string()))?;
                    Vocab::Subword(SubwordVocab {
                        words: list,
                        min_n,
                        max_n,
                        indexer: Indexer::Explicit(table),
                        fasttext_ngrams: false,
                    })
                }
                "bucket" | "fasttext" => {
                    if min_n == 0 || min_n > max_n || max_n > crate::vocab::MAX_NGRAM_LEN {
                        return Err(crate::Error::argument(format!(
                            "bad n-gram range min_n={min_n}, max_n={max_n} (need 1 <= min_n <= max_n <= {})",
                            crate::vocab::MAX_NGRAM_LEN
                        )));
                    }
                    let indexer = if vocab_kind == "bucket" {
                        let exponent = buckets.unwrap_or(21);
                        // (finalfusion-python refuses to load an exponent of 0)
                        if exponent == 0 || exponent > 40 {
                            return Err(crate::Error::argument(format!(
                                "buckets={exponent}: the bucket exponent (2**buckets n-gram rows) must be 1 to 40"
                            )));
                        }
                        Indexer::Bucket { exponent }
                    } else {
                        let buckets = buckets.unwrap_or(2_000_000);
                        if buckets == 0 {
                            return Err(crate::Error::argument("fastText buckets must be positive"));
                        }
                        Indexer::FastText { buckets }
                    };
                    Vocab::Subword(SubwordVocab { words: list, min_n, max_n, indexer, fasttext_ngrams: false })
                }
                other => {
                    return Err(crate::Error::argument(format!(
                        "unknown vocab kind {other:?} (expected 'simple', 'bucket', 'fasttext' or 'explicit')"
                    )))
                }
            };
            let storage = Storage::Array(ArrayStorage::new(data, rows, cols)?);
            let mut emb = Embeddings::new(metadata, vocab, storage, norms).map_err(|e| match e {
                crate::Error::Invalid { message, .. } => crate::Error::argument(message),
                e => e,
            })?;
            emb.set_unit_rows(unit_rows);
            Ok(emb)
        });
        emb.map(PyEmbeddings::from_rust).map_err(|e| PyValueError::new_err(e.to_string()))
    }
}

/// What an argument that should have been an array of numbers is: its dimensions and dtype
/// when it has them (`a 2-D array of <U1`), else its type.
fn what_array(v: &Bound<'_, PyAny>) -> String {
    let ndim = v.getattr("ndim").ok().and_then(|d| d.extract::<usize>().ok());
    let dtype = v.getattr("dtype").ok().and_then(|d| d.str().ok()).map(|d| d.to_string());
    match (ndim, dtype) {
        (Some(n), Some(d)) => format!("a {n}-D array of {d}"),
        (Some(n), None) => format!("a {n}-D array"),
        _ => v.get_type().name().map(|n| n.to_string()).unwrap_or_default(),
    }
}

/// `ngrams=` of `vf.Embeddings`: `(n-gram, index)` pairs of a str and an int, each problem
/// named (an item of another kind, an n-gram that is no valid Unicode, an index outside
/// 0 to 2**64 - 1).
fn extract_ngrams(g: &Bound<'_, PyAny>) -> PyResult<Vec<(String, u64)>> {
    let type_name = |o: &Bound<'_, PyAny>| o.get_type().name().map_or_else(|_| "?".to_string(), |n| n.to_string());
    let shape = "ngrams must be a list of (n-gram, index) pairs of a str and an int";
    let not_a_list = || PyTypeError::new_err(format!("{shape}, got {}", type_name(g)));
    if g.is_instance_of::<pyo3::types::PyString>() || g.is_instance_of::<pyo3::types::PyBytes>() {
        return Err(not_a_list());
    }
    let items = g.try_iter().map_err(|_| not_a_list())?;
    let mut out = Vec::new();
    for item in items {
        let item = item?;
        let bad_item = || {
            let repr = item.repr().map_or_else(|_| "?".to_string(), |r| r.to_string());
            PyTypeError::new_err(format!("{shape}, got {} holding {repr}", type_name(g)))
        };
        // a tuple, or a list of two (as JSON gives them)
        let (gram, index) = match item.cast::<pyo3::types::PyList>() {
            Ok(l) if l.len() == 2 => (l.get_item(0)?, l.get_item(1)?),
            _ => item.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>().map_err(|_| bad_item())?,
        };
        let gram = gram.cast::<pyo3::types::PyString>().map_err(|_| bad_item())?;
        let text = gram.to_str().map_err(|_| {
            PyValueError::new_err(format!(
                "n-gram {} is not valid Unicode (a lone surrogate)",
                gram.repr().map_or_else(|_| "?".to_string(), |r| r.to_string())
            ))
        })?;
        // an int or what stands for one (numpy's integers: `__index__`), not a bool
        if index.is_instance_of::<pyo3::types::PyBool>() {
            return Err(bad_item());
        }
        let index = match index.extract::<u64>() {
            Ok(i) => i,
            Err(_) if index.call_method0("__index__").is_ok() => {
                return Err(PyValueError::new_err(format!(
                    "the index {index} of n-gram {text:?} is out of range (0 to 2**64 - 1)"
                )))
            }
            Err(_) => return Err(bad_item()),
        };
        out.push((text.to_string(), index));
    }
    Ok(out)
}
