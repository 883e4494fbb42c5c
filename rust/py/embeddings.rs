//! The `Embeddings` class.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use numpy::{PyArray1, PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyKeyError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use super::metadata::{py_to_toml, toml_to_py};
use super::storage::PyQuantizedStorage;
use super::views;
use super::vocab::PyVocab;
use crate::embeddings::{Embeddings, OpenMode};
use crate::storage::Storage;

/// Word embeddings: a vocabulary, a storage (dense, memory-mapped or quantized),
/// optional norms and metadata.
#[pyclass(name = "Embeddings", module = "vecfusion._native", frozen)]
pub struct PyEmbeddings {
    pub(crate) inner: Arc<Embeddings>,
    metadata: Mutex<Option<String>>,
}

impl PyEmbeddings {
    /// Wrap core embeddings (used by every loader and converter).
    pub fn from_rust(emb: Embeddings) -> Self {
        let metadata = Mutex::new(emb.metadata.clone());
        PyEmbeddings {
            inner: Arc::new(emb),
            metadata,
        }
    }

    pub fn metadata_text(&self) -> Option<String> {
        self.metadata.lock().map(|m| m.clone()).unwrap_or_default()
    }

    fn word_array<'py>(&self, py: Python<'py>, word: &str) -> Option<Bound<'py, PyArray1<f32>>> {
        let emb = &self.inner;
        let known = emb.known_row(word);
        if let (Some(i), Storage::Array(a)) = (known, &emb.storage) {
            return Some(PyArray1::from_slice(py, a.row(i)));
        }
        // An unknown word's n-grams (or a rebuilt quantized row), summed straight into a
        // new array; a long word, which takes a while, without the GIL (a few microseconds
        // are not worth the release: `detach_if`).
        let arr = PyArray1::<f32>::zeros(py, emb.dims(), false);
        // SAFETY: the array was created just above, is contiguous, and nothing else holds
        // a reference to it (nor can Python code run before the slice's last use).
        let out = unsafe { arr.as_slice_mut() }.ok()?;
        let mut scratch = Vec::with_capacity(crate::embeddings::SCRATCH_ROWS);
        let fill = || match known {
            Some(i) => {
                emb.storage.row_into(i, out);
                Some(())
            }
            None => emb.subword_embedding_into(word, out, &mut scratch).map(|_| ()),
        };
        let found = crate::py::fork::detach_if(py, crate::py::fork::words_work(&[word], emb.dims()), fill);
        found.map(|()| arr)
    }
}

/// Rebuild embeddings pickled by `Embeddings.__reduce__`: a finalfusion file's bytes, and
/// whether the vocabulary's n-grams follow fastText's rule (which a finalfusion chunk does
/// not record). The rebuilt embeddings hold their matrix in memory.
#[pyfunction]
#[pyo3(signature = (data, fasttext_ngrams=false))]
pub fn _embeddings_from_bytes(py: Python<'_>, data: &[u8], fasttext_ngrams: bool) -> PyResult<PyEmbeddings> {
    Ok(PyEmbeddings::from_rust(unpickle(py, data, fasttext_ngrams)?))
}

/// Embeddings from a pickle's finalfusion bytes (read into memory, without the GIL), with
/// the fastText n-gram rule that the chunk does not record set back.
pub(crate) fn unpickle(py: Python<'_>, data: &[u8], fasttext_ngrams: bool) -> PyResult<Embeddings> {
    let mut emb = crate::py::fork::detach(py, || Embeddings::from_bytes(data, None))?;
    if let crate::vocab::Vocab::Subword(s) = &mut emb.vocab {
        s.fasttext_ngrams = fasttext_ngrams;
    }
    Ok(emb)
}

/// An `io::Write` that only counts the bytes written to it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The text of a word argument, or `None` for a str that is not valid Unicode text (a lone
/// surrogate, as `os.fsdecode` makes of undecodable bytes): no vocabulary holds such a word
/// and it has no n-grams, so it is a word without an embedding (KeyError, None or False as
/// for any such word), not a UnicodeEncodeError.
pub(crate) fn word_text<'a>(word: &'a Bound<'_, PyString>) -> Option<&'a str> {
    word.to_str().ok()
}

/// The most room reserved from an iterable's `__len__` before iterating it.
const LEN_HINT_CAP: usize = 1 << 16;

/// Words copied out of their Python str objects into one buffer (UTF-8, back to back).
///
/// A batch lookup reads each word twice (hash, then compare) on the worker threads; from
/// one compact buffer those reads are sequential, where the str objects of a list lie
/// anywhere in the heap. Copying also means the words no longer depend on the Python
/// objects once the GIL is released.
pub(crate) struct WordBuf {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    /// Positions of the strs that are not valid Unicode text (a lone surrogate), in order:
    /// held as empty words, which callers must treat as words without an embedding.
    invalid: Vec<usize>,
}

impl WordBuf {
    /// The words as string slices into the buffer.
    pub(crate) fn strs(&self) -> Vec<&str> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                let b = &self.bytes[start..end];
                start = end;
                // SAFETY: each piece is the whole UTF-8 text of a Python str (`to_str`
                // validated it), copied byte for byte.
                unsafe { std::str::from_utf8_unchecked(b) }
            })
            .collect()
    }

    /// Positions of the words that are no valid text (see [`word_text`]).
    pub(crate) fn invalid(&self) -> &[usize] {
        &self.invalid
    }

    /// The words that are valid text, in order (for callers that skip the others).
    pub(crate) fn valid_strs(&self) -> Vec<&str> {
        let mut bad = self.invalid.iter().peekable();
        self.strs()
            .into_iter()
            .enumerate()
            .filter(|(i, _)| bad.next_if_eq(&i).is_none())
            .map(|(_, w)| w)
            .collect()
    }

    /// An error naming the first word that is no valid text, if any (for callers that store
    /// the words).
    pub(crate) fn require_valid(&self) -> PyResult<()> {
        match self.invalid.first() {
            Some(i) => Err(pyo3::exceptions::PyValueError::new_err(format!(
                "word {i} is not valid Unicode text (it holds a lone surrogate)"
            ))),
            None => Ok(()),
        }
    }

    fn push(&mut self, w: &Bound<'_, PyAny>) -> PyResult<()> {
        let s = w.cast::<PyString>().map_err(|_| {
            PyTypeError::new_err(format!(
                "words must be str, got {}",
                w.get_type().name().map(|n| n.to_string()).unwrap_or_default()
            ))
        })?;
        match word_text(s) {
            Some(t) => self.bytes.extend_from_slice(t.as_bytes()),
            None => self.invalid.push(self.ends.len()),
        }
        self.ends.push(self.bytes.len());
        Ok(())
    }
}

/// Copy the words of any iterable of str into a [`WordBuf`], in one pass.
pub(crate) fn extract_word_buf(words: &Bound<'_, PyAny>) -> PyResult<WordBuf> {
    if words.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err("expected an iterable of words, got a single str"));
    }
    let mut buf = WordBuf { bytes: Vec::new(), ends: Vec::new(), invalid: Vec::new() };
    if let Ok(list) = words.cast::<PyList>() {
        // A list's str objects lie anywhere in memory: each one's header is prefetched a
        // few items ahead, so that their cache misses overlap (the loop runs with the GIL).
        const AHEAD: usize = 8;
        let n = list.len();
        buf.ends.reserve(n);
        buf.bytes.reserve(n * 12);
        for i in 0..n {
            if i + AHEAD < n {
                // SAFETY: `list` is a live list and the index is in range; PyList_GetItem
                // returns a borrowed pointer (no reference is taken or released, nothing is
                // read through it here); it is only used as a prefetch address, which
                // cannot fault.
                let p = unsafe { pyo3::ffi::PyList_GetItem(list.as_ptr(), (i + AHEAD) as pyo3::ffi::Py_ssize_t) };
                if !p.is_null() {
                    // SAFETY: a prefetch has no visible effect and never faults.
                    crate::storage::prefetch_addr(p.cast::<u8>());
                }
            }
            buf.push(&list.get_item(i)?)?;
        }
        return Ok(buf);
    }
    buf.ends.reserve(words.len().unwrap_or(0).min(LEN_HINT_CAP));
    for w in words.try_iter()? {
        buf.push(&w?)?;
    }
    Ok(buf)
}

#[pymethods]
impl PyEmbeddings {
    /// Number of dimensions.
    #[getter]
    fn dims(&self) -> usize {
        self.inner.dims()
    }

    /// Number of known words (n-gram rows are not counted).
    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// The embedding of `word`; KeyError if it has none.
    fn __getitem__<'py>(&self, py: Python<'py>, word: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyArray1<f32>>> {
        word_text(word)
            .and_then(|w| self.word_array(py, w))
            .ok_or_else(|| PyKeyError::new_err(word.clone().unbind()))
    }

    /// True if `word` has an embedding (a known word, or an unknown word with n-grams).
    /// Anything that is not a str is not in the embeddings (False, like a dict).
    fn __contains__(&self, word: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Ok(word) = word.cast::<PyString>() else {
            return Ok(false);
        };
        // a str that is not valid Unicode text (a lone surrogate) is no word either
        let Ok(word) = word.to_str() else {
            return Ok(false);
        };
        Ok(self.inner.vocab.idx(word).is_some())
    }

    /// Iterate over the known words in row order.
    fn __iter__(&self) -> WordIter {
        WordIter {
            inner: self.inner.clone(),
            pos: AtomicUsize::new(0),
        }
    }

    /// The embedding of `word`, or `default` if it has none.
    #[pyo3(signature = (word, default=None))]
    fn embedding<'py>(&self, py: Python<'py>, word: &Bound<'py, PyString>, default: Option<Bound<'py, PyAny>>) -> Bound<'py, PyAny> {
        match word_text(word).and_then(|w| self.word_array(py, w)) {
            Some(a) => a.into_any(),
            None => default.unwrap_or_else(|| py.None().into_bound(py)),
        }
    }

    /// `(embedding, norm)` of `word`, or None. The norm is the stored norm of a known
    /// word (1.0 without a norms chunk) or the norm of the n-gram sum of an unknown word.
    fn embedding_with_norm<'py>(&self, py: Python<'py>, word: &Bound<'py, PyString>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let Some(w) = word_text(word) else { return Ok(None) };
        let emb = &self.inner;
        // (a long unknown word, which takes a while, without the GIL, as `embedding`)
        let found = crate::py::fork::detach_if(py, crate::py::fork::words_work(&[w], emb.dims()), || emb.embedding_with_norm(w));
        match found {
            Some((v, n)) => Ok(Some(PyTuple::new(py, [PyArray1::from_vec(py, v).into_any(), n.into_pyobject(py)?.into_any()])?)),
            None => Ok(None),
        }
    }

    /// Look up many words in one call: `(float32 array (n, dims), bool array (n,))`.
    /// Rows of words without an embedding are zero and marked False. `out`, a writable
    /// C-contiguous float32 array of shape (n, dims), receives the rows instead of a new
    /// array (and is returned): reusing one buffer across batches saves the kernel's
    /// zeroing of fresh pages.
    #[pyo3(signature = (words, out=None))]
    fn lookup<'py>(
        &self,
        py: Python<'py>,
        words: &Bound<'py, PyAny>,
        out: Option<Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, PyArray2<f32>>, Bound<'py, PyArray1<bool>>)> {
        let dims = self.inner.dims();
        let reused = out.is_some();
        let words = extract_word_buf(words)?;
        let strs = words.strs();
        let n = strs.len();
        let out = match out {
            // np.empty, not np.zeros: every value is written below (a word without an
            // embedding gets zeros), and numpy releases the GIL to zero 1 KiB or more, which
            // a small call should not do (see `detach_if`)
            // SAFETY: an f32 array of `n x dims` values, each written by `lookup_into_with`
            // (or by the fix-up of invalid words) before the array is handed out.
            None => unsafe { PyArray2::<f32>::new(py, [n, dims], false) },
            Some(o) => {
                let arr = o.cast_into::<PyArray2<f32>>().map_err(|e| {
                    let o = e.into_inner();
                    // what it is, briefly: a numpy array's dtype and shape, else the type
                    let what = match (o.getattr("dtype"), o.getattr("shape")) {
                        (Ok(d), Ok(s)) => format!("a {} array of shape {}", d.str().map(|x| x.to_string()).unwrap_or_default(), s.str().map(|x| x.to_string()).unwrap_or_default()),
                        _ => o.get_type().name().map(|n| n.to_string()).unwrap_or_default(),
                    };
                    PyTypeError::new_err(format!("out must be a 2-D float32 numpy array, got {what}"))
                })?;
                if arr.shape() != [n, dims] {
                    let shape = arr.shape().iter().map(usize::to_string).collect::<Vec<_>>().join(", ");
                    return Err(pyo3::exceptions::PyValueError::new_err(format!(
                        "out has shape ({shape}), expected ({n}, {dims})"
                    )));
                }
                if !arr.is_c_contiguous() {
                    return Err(pyo3::exceptions::PyValueError::new_err("out must be C-contiguous"));
                }
                arr
            }
        };
        let found = PyArray1::<bool>::zeros(py, n, false);
        {
            let mut out_rw = out
                .try_readwrite()
                .map_err(|e| pyo3::exceptions::PyValueError::new_err(format!("out must be writable and not in use: {e}")))?;
            let mut found_rw = found.readwrite();
            let out_s = out_rw.as_slice_mut().map_err(|e| PyTypeError::new_err(e.to_string()))?;
            let found_s = found_rw.as_slice_mut().map_err(|e| PyTypeError::new_err(e.to_string()))?;
            let emb = &self.inner;
            // (more than 2048 words go to the thread pool, which a call that keeps the GIL
            // must not wait for: those count more than `SMALL_WORK`)
            let work = crate::py::fork::words_work(&strs, dims);
            crate::py::fork::detach_if(py, work, || emb.lookup_into_with(&strs, out_s, found_s, reused));
            // words that are no valid text were looked up as empty words: no embedding
            for &i in words.invalid() {
                found_s[i] = false;
                out_s[i * dims..(i + 1) * dims].fill(0.0);
            }
        }
        Ok((out, found))
    }

    /// The vocabulary.
    #[getter]
    fn vocab(&self) -> PyVocab {
        PyVocab {
            inner: self.inner.clone(),
        }
    }

    /// The storage: a read-only NumPy view for dense storage (no copy when memory-mapped),
    /// or a QuantizedStorage object.
    #[getter]
    fn storage<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let this = slf.get();
        match &this.inner.storage {
            Storage::Array(a) => Ok(views::readonly_2d(slf.clone().into_any(), a.as_slice(), a.rows(), a.cols())?.into_any()),
            Storage::Quantized(_) => Ok(Bound::new(slf.py(), PyQuantizedStorage { inner: this.inner.clone() })?.into_any()),
        }
    }

    /// Per-word norms (float32 array) or None.
    #[getter]
    fn norms<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<Bound<'py, PyArray1<f32>>>> {
        match &slf.get().inner.norms {
            Some(n) => Ok(Some(views::readonly_1d(slf.clone().into_any(), n)?)),
            None => Ok(None),
        }
    }

    /// The metadata as a dict (parsed from the TOML chunk), or None. Assign a dict or None.
    #[getter]
    fn get_metadata<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match self.metadata_text() {
            Some(t) => Ok(Some(toml_to_py(py, &t)?)),
            None => Ok(None),
        }
    }

    #[setter]
    fn set_metadata(&self, value: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let text = match value {
            None => None,
            Some(v) if v.is_none() => None,
            Some(v) => Some(py_to_toml(v)?),
        };
        *self.metadata.lock().map_err(|_| PyTypeError::new_err("metadata lock poisoned"))? = text;
        Ok(())
    }

    /// Write a finalfusion file (to a temporary name, then renamed).
    ///
    /// `vocab="standard"` (default) writes finalfusion's own vocabulary chunk, readable by
    /// every finalfusion reader; `vocab="fst"` writes vecfusion's memory-mappable automaton
    /// vocabulary (opens with no per-word work; readable only by vecfusion).
    #[pyo3(signature = (path, vocab="standard"))]
    fn write(&self, py: Python<'_>, path: crate::py::UserPath, vocab: &str) -> PyResult<()> {
        let fmt = crate::vocab::VocabFormat::parse(vocab)?;
        let meta = self.metadata_text();
        let emb = &self.inner;
        crate::py::fork::detach_interruptible(py, || emb.write_with_vocab(&path, meta.as_deref(), Some(fmt)))?;
        Ok(())
    }

    /// Name of the vocabulary kind, e.g. "SimpleVocab".
    #[getter]
    fn vocab_kind(&self) -> &'static str {
        self.inner.vocab.kind()
    }

    /// Name of the storage kind: "NdArray", "MmapArray", "QuantizedArray" or "MmapQuantizedArray".
    #[getter]
    fn storage_kind(&self) -> &'static str {
        self.inner.storage.kind()
    }

    /// Pickling: the embeddings as a finalfusion file in memory (vocabulary, matrix, norms
    /// and the current metadata); they come back with their matrix in memory, whatever
    /// storage they had (a memory-mapped file is read, as pickling a numpy memmap does).
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyAny>, (Bound<'py, PyBytes>, bool))> {
        let emb = &self.inner;
        // a memory-mapped fst chunk is verified before its words are copied
        emb.vocab.verify_fst()?;
        let meta = self.metadata_text();
        let write = |w: &mut dyn std::io::Write| {
            emb.write_to_with_metadata(w, meta.as_deref())
                .map_err(|e| crate::Error::io("cannot serialize the embeddings", e))
        };
        // the size first (a pass that copies nothing), so that the bytes object is written
        // in place: no second copy of the matrix
        let mut count = ByteCount(0);
        crate::py::fork::detach(py, || write(&mut count))?;
        let data = PyBytes::new_with(py, count.0, |buf| {
            crate::py::fork::detach(py, || {
                let mut rest: &mut [u8] = buf;
                write(&mut rest)?;
                if rest.is_empty() {
                    Ok(())
                } else {
                    Err(crate::Error::io(
                        "cannot serialize the embeddings",
                        std::io::Error::other("the second pass wrote fewer bytes than the first"),
                    ))
                }
            })
            .map_err(PyErr::from)
        })?;
        let fasttext_ngrams = matches!(&emb.vocab, crate::vocab::Vocab::Subword(s) if s.fasttext_ngrams);
        let f = py.import("vecfusion._native")?.getattr("_embeddings_from_bytes")?;
        Ok((f, (data, fasttext_ngrams)))
    }

    /// `copy.copy`: the same (immutable) vocabulary and matrix, shared; its own metadata.
    fn __copy__(&self) -> PyEmbeddings {
        PyEmbeddings {
            inner: Arc::clone(&self.inner),
            metadata: Mutex::new(self.metadata_text()),
        }
    }

    /// `copy.deepcopy`: as `copy.copy`. Nothing of embeddings can be changed in place but
    /// their metadata, which the copy has its own of, so the matrix is shared, not copied.
    fn __deepcopy__(&self, _memo: &Bound<'_, PyAny>) -> PyEmbeddings {
        self.__copy__()
    }

    fn __repr__(&self) -> String {
        format!(
            "Embeddings(words={}, dims={}, vocab={}, storage={}, norms={})",
            self.inner.len(),
            self.inner.dims(),
            self.inner.vocab.kind(),
            self.inner.storage.kind(),
            self.inner.norms.is_some()
        )
    }
}

/// Iterator over the words of an embedding or vocabulary.
#[pyclass(module = "vecfusion._native", frozen)]
pub struct WordIter {
    pub(crate) inner: Arc<Embeddings>,
    pub(crate) pos: AtomicUsize,
}

#[pymethods]
impl WordIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self) -> PyResult<Option<String>> {
        let i = self.pos.fetch_add(1, Ordering::Relaxed);
        Ok(self.inner.vocab.try_word(i)?.map(|w| w.into_owned()))
    }
}

/// Open a finalfusion file. With `mmap=True` the matrix is memory-mapped, not read.
#[pyfunction]
#[pyo3(signature = (path, mmap=false))]
pub fn load(py: Python<'_>, path: crate::py::UserPath, mmap: bool) -> PyResult<PyEmbeddings> {
    let emb = if mmap {
        crate::py::fork::detach(py, || Embeddings::open(&path, OpenMode::Mmap))?
    } else {
        // reading a large file takes seconds: Ctrl-C stops it
        crate::py::fork::detach_interruptible(py, || Embeddings::open(&path, OpenMode::Read))?
    };
    Ok(PyEmbeddings::from_rust(emb))
}

/// All known words as a Python list (backs `Vocab.words`).
pub(crate) fn words_list<'py>(py: Python<'py>, emb: &Embeddings) -> PyResult<Bound<'py, PyList>> {
    match emb.vocab.words() {
        Some(w) if !w.is_fst() => PyList::new(py, w.iter()),
        Some(w) => {
            // Decode the automaton once in key order instead of one reverse walk per row.
            let h = crate::py::fork::detach(py, || w.to_hash())?;
            PyList::new(py, h.iter())
        }
        None => Ok(PyList::empty(py)),
    }
}
