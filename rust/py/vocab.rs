//! The `Vocab` class: the same API for every vocabulary kind.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use pyo3::exceptions::{PyIndexError, PyKeyError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};

use super::embeddings::{words_list, WordIter};
use crate::embeddings::Embeddings;
use crate::vocab::WordIndex;

/// A vocabulary: known words in row order and, for subword vocabularies, n-gram rows.
#[pyclass(name = "Vocab", module = "vecfusion._native", frozen)]
pub struct PyVocab {
    pub(crate) inner: Arc<Embeddings>,
}

impl PyVocab {
    /// Embeddings with this vocabulary and an empty (`rows x 0`) matrix: what a vocabulary
    /// needs of its embeddings, without keeping their matrix alive.
    fn vocab_only(&self) -> crate::Result<Embeddings> {
        let vocab = self.inner.vocab.clone();
        let rows = usize::try_from(vocab.rows()).map_err(|_| crate::Error::Overflow("vocabulary rows"))?;
        let storage = crate::storage::Storage::Array(crate::storage::ArrayStorage::new(Vec::new(), rows, 0)?);
        Embeddings::new(None, vocab, storage, None)
    }
}

/// Rebuild a vocabulary pickled by `Vocab.__reduce__` (finalfusion bytes, empty matrix, and
/// whether its n-grams follow fastText's rule, which a finalfusion chunk does not record).
#[pyfunction]
#[pyo3(signature = (data, fasttext_ngrams=false))]
pub fn _vocab_from_bytes(py: Python<'_>, data: &[u8], fasttext_ngrams: bool) -> PyResult<PyVocab> {
    Ok(PyVocab { inner: Arc::new(super::embeddings::unpickle(py, data, fasttext_ngrams)?) })
}

#[pymethods]
impl PyVocab {
    /// A vocabulary that answers the same but holds no reference to the embeddings' matrix
    /// (which a vocabulary taken from `emb.vocab` keeps alive).
    fn detached(&self) -> PyResult<PyVocab> {
        Ok(PyVocab { inner: Arc::new(self.vocab_only()?) })
    }

    /// Pickling (and copy.deepcopy): the vocabulary alone, as a finalfusion file with an
    /// empty matrix.
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyAny>, (Bound<'py, PyBytes>, bool))> {
        // a memory-mapped fst chunk is verified before its words are copied
        self.inner.vocab.verify_fst()?;
        let emb = self.vocab_only()?;
        let mut buf = Vec::new();
        emb.write_to(&mut buf).map_err(|e| crate::Error::io("cannot serialize the vocabulary", e))?;
        let fasttext_ngrams = matches!(&emb.vocab, crate::vocab::Vocab::Subword(s) if s.fasttext_ngrams);
        let f = py.import("vecfusion._native")?.getattr("_vocab_from_bytes")?;
        Ok((f, (PyBytes::new(py, &buf), fasttext_ngrams)))
    }

    /// Number of known words.
    fn __len__(&self) -> usize {
        self.inner.vocab.words_len()
    }

    /// `vocab[i]` is the word at row `i` (negative counts from the end);
    /// `vocab[word]` is what `index(word)` returns, KeyError if None.
    fn __getitem__<'py>(&self, py: Python<'py>, key: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if let Ok(word) = key.cast::<PyString>() {
            return match self.index(py, word)? {
                Some(v) => Ok(v),
                None => Err(PyKeyError::new_err(word.clone().unbind())),
            };
        }
        let n = self.inner.vocab.words_len() as isize;
        let i: isize = match key.extract() {
            Ok(i) => i,
            // an int too large for an index is out of range like any other
            Err(_) if key.is_instance_of::<pyo3::types::PyInt>() => {
                return Err(PyIndexError::new_err(format!("word index {key} out of range for {n} words")))
            }
            Err(_) => return Err(PyTypeError::new_err("vocabulary indices must be int or str")),
        };
        let j = if i < 0 { i + n } else { i };
        if j < 0 || j >= n {
            return Err(PyIndexError::new_err(format!("word index {i} out of range for {n} words")));
        }
        let w = self.inner.vocab.try_word(j as usize)?.unwrap_or_default();
        Ok(w.into_pyobject(py)?.into_any())
    }

    /// True if `word` is a known word (in the word list); False for anything not a str.
    fn __contains__(&self, word: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Some(word) = word.cast::<PyString>().ok().and_then(|w| super::embeddings::word_text(w)) else {
            return Ok(false);
        };
        Ok(self.inner.vocab.try_word_index(word)?.is_some())
    }

    fn __iter__(&self) -> WordIter {
        WordIter {
            inner: self.inner.clone(),
            pos: AtomicUsize::new(0),
        }
    }

    /// The row of a known word (int), the n-gram rows of an unknown word (list of int),
    /// or None when the word has no embedding.
    fn index<'py>(&self, py: Python<'py>, word: &Bound<'py, PyString>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(word) = super::embeddings::word_text(word) else {
            return Ok(None);
        };
        Ok(match self.inner.vocab.try_idx(word)? {
            Some(WordIndex::Word(i)) => Some(i.into_pyobject(py)?.into_any()),
            Some(WordIndex::Subwords(v)) => Some(PyList::new(py, v)?.into_any()),
            None => None,
        })
    }

    /// The n-grams of `word` (bracketed with < and >), in finalfusion order.
    fn ngrams(&self, word: &str) -> Vec<String> {
        self.inner.vocab.ngrams(word)
    }

    /// The storage rows of the n-grams of `word` (n-grams without a row are left out).
    fn subword_indices(&self, word: &str) -> PyResult<Vec<usize>> {
        Ok(self.inner.vocab.try_subword_indices(word)?)
    }

    /// All known words in row order.
    #[getter]
    fn words<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        words_list(py, &self.inner)
    }

    /// The vocabulary kind, e.g. "SimpleVocab", "BucketSubwordVocab", "FstSimpleVocab",
    /// "FstBucketSubwordVocab", "FstFastTextSubwordVocab", "FstExplicitSubwordVocab".
    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.vocab.kind()
    }

    /// Smallest n-gram length, or None for a vocabulary without subwords.
    #[getter]
    fn min_n(&self) -> Option<u32> {
        self.inner.vocab.ngram_range().map(|r| r.0)
    }

    /// Largest n-gram length, or None for a vocabulary without subwords.
    #[getter]
    fn max_n(&self) -> Option<u32> {
        self.inner.vocab.ngram_range().map(|r| r.1)
    }

    /// Number of storage rows for words and n-grams together.
    #[getter]
    fn rows(&self) -> u64 {
        self.inner.vocab.rows()
    }

    fn __repr__(&self) -> String {
        format!("Vocab(kind={}, words={}, rows={})", self.inner.vocab.kind(), self.inner.vocab.words_len(), self.inner.vocab.rows())
    }
}
