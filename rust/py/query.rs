//! Similarity and analogy queries on `Embeddings` (the work is in `crate::query`).

use numpy::{AllowTypeChange, PyArray1, PyArray2, PyArrayLike1, PyArrayLike2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyKeyError, PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyFloat, PyInt, PyList, PyString, PyTuple};

use super::embeddings::{extract_word_buf, PyEmbeddings};
use crate::embeddings::Embeddings;
use crate::query::{Neighbor, Term};

/// `(indices, scores)` of a batch.
type BatchAnswers<'py> = (Bound<'py, PyArray2<i64>>, Bound<'py, PyArray2<f32>>);

/// An int argument (`k`, `topn`, `restrict_vocab`) of any size: ints beyond 128 bits
/// saturate (`2**200` asks for every word, as in gensim; no OverflowError).
#[derive(Clone, Copy)]
pub(crate) struct WideInt(pub(crate) i128);

impl<'a, 'py> FromPyObject<'a, 'py> for WideInt {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        match obj.extract::<i128>() {
            Ok(v) => Ok(WideInt(v)),
            Err(e) if e.is_instance_of::<PyOverflowError>(obj.py()) => {
                Ok(WideInt(if obj.lt(0)? { i128::MIN } else { i128::MAX }))
            }
            Err(e) => Err(e),
        }
    }
}

/// `k` (or `topn`, named by `name`) from Python: a non-negative int; any count beyond the
/// rows means all of them.
fn check_k(k: WideInt, name: &str) -> PyResult<usize> {
    let k = k.0;
    if k < 0 {
        // (beyond 128 bits the number itself is not kept)
        let got = if k == i128::MIN { "a negative int".to_string() } else { k.to_string() };
        return Err(PyValueError::new_err(format!("{name} must be >= 0, got {got}")));
    }
    Ok(usize::try_from(k).unwrap_or(usize::MAX))
}

/// A key of gensim's methods as a word: a str (KeyError for one that is not valid Unicode
/// text, a lone surrogate: no vocabulary holds it) or a row number (gensim's int keys: the
/// word of that row; KeyError beyond the words). `None` for anything else.
fn key_word(emb: &Embeddings, x: &Bound<'_, PyAny>) -> Option<PyResult<String>> {
    if let Ok(s) = x.cast::<PyString>() {
        return Some(s.to_str().map(str::to_string).map_err(|_| PyKeyError::new_err(s.clone().unbind())));
    }
    let row = row_key(x)?;
    Some(match usize::try_from(row).ok().and_then(|r| emb.vocab.word(r)) {
        Some(w) => Ok(w.to_string()),
        None => Err(PyKeyError::new_err(format!("Key '{row}' not present"))),
    })
}

/// `[(word, score), ...]`
fn answers<'py>(py: Python<'py>, emb: &Embeddings, found: Vec<Neighbor>) -> PyResult<Bound<'py, PyList>> {
    let items = found
        .into_iter()
        .map(|nb| {
            let word = emb.vocab.word(nb.index).unwrap_or_default();
            PyTuple::new(py, [PyString::new(py, word).into_any(), nb.score.into_pyobject(py)?.into_any()])
        })
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, items)
}

enum OwnedTerm {
    Word(String),
    Vector(Vec<f32>),
}

impl OwnedTerm {
    fn as_term(&self) -> Term<'_> {
        match self {
            OwnedTerm::Word(s) => Term::Word(s),
            OwnedTerm::Vector(v) => Term::Vector(v),
        }
    }
}

/// A row number given as a key (gensim's int keys): a Python int (not a bool) or a numpy
/// integer scalar.
fn row_key(x: &Bound<'_, PyAny>) -> Option<i128> {
    if x.is_instance_of::<PyBool>() || x.is_instance_of::<PyFloat>() {
        return None;
    }
    if x.is_instance_of::<PyInt>() {
        return x.extract::<i128>().ok();
    }
    // a numpy integer scalar (or 0-d integer array): ndim 0, an `__index__`, no float dtype
    let zero_d = x.getattr("ndim").ok().and_then(|d| d.extract::<usize>().ok()) == Some(0);
    let integral = super::views::dtype_kind(x);
    if zero_d && matches!(integral.as_deref(), Some("i" | "u")) {
        return x.call_method0("__index__").ok().and_then(|i| i.extract::<i128>().ok());
    }
    None
}

/// gensim's `most_similar` terms: None, one word, one row number, one 1-D vector, or an
/// iterable of words, row numbers (gensim's int keys: the word of that row), vectors and,
/// with `pairs`, `(term, weight)` pairs; a plain term weighs `sign` (+1 for `positive`, -1
/// for `negative`), a pair its own weight as given, also among `negative` (gensim's rule).
/// `what` names the method in errors.
fn terms_arg(
    emb: &Embeddings,
    arg: Option<&Bound<'_, PyAny>>,
    sign: f32,
    pairs: bool,
    what: &str,
) -> PyResult<Vec<(OwnedTerm, f32)>> {
    let Some(arg) = arg.filter(|a| !a.is_none()) else {
        return Ok(Vec::new());
    };
    let takes = if pairs { "words (str), row numbers, 1-D vectors or (word, weight) pairs" } else { "words (str), row numbers or 1-D vectors" };
    let one = |x: &Bound<'_, PyAny>| -> PyResult<OwnedTerm> {
        if let Some(word) = key_word(emb, x) {
            return word.map(OwnedTerm::Word);
        }
        if x.is_instance_of::<PyBytes>() || x.is_instance_of::<PyByteArray>() {
            return Err(PyTypeError::new_err(format!("{what} takes {takes}, not bytes")));
        }
        let v: PyArrayLike1<'_, f32, AllowTypeChange> = x.extract().map_err(|_| {
            PyTypeError::new_err(format!(
                "{what} takes {takes}, got {}",
                x.get_type().name().map(|n| n.to_string()).unwrap_or_default()
            ))
        })?;
        Ok(OwnedTerm::Vector(v.as_array().to_vec()))
    };
    if arg.is_instance_of::<PyString>()
        || row_key(arg).is_some()
        || arg.getattr("ndim").ok().and_then(|d| d.extract::<usize>().ok()) == Some(1)
    {
        return Ok(vec![(one(arg)?, sign)]);
    }
    let mut out = Vec::new();
    for item in arg.try_iter()? {
        let item = item?;
        // a (word, weight) pair: a tuple, or a list whose first item is a word (as gensim)
        let pair = match item.cast::<PyTuple>() {
            Ok(t) if pairs && t.len() == 2 => Some((t.get_item(0)?, t.get_item(1)?)),
            _ => match item.cast::<PyList>() {
                Ok(l) if pairs && l.len() == 2 && {
                    let first = l.get_item(0)?;
                    first.is_instance_of::<PyString>() || row_key(&first).is_some()
                } =>
                {
                    Some((l.get_item(0)?, l.get_item(1)?))
                }
                _ => None,
            },
        };
        if let Some((term, weight)) = pair {
            if !weight.is_instance_of::<PyString>() {
                if let Ok(w) = weight.extract::<f64>() {
                    if !w.is_finite() || w.abs() > f64::from(f32::MAX) {
                        return Err(PyValueError::new_err(format!(
                            "{what}: the weight {w} of term {} is not a finite float32 number",
                            out.len()
                        )));
                    }
                    out.push((one(&term)?, w as f32));
                    continue;
                }
            }
        }
        out.push((one(&item)?, sign));
    }
    Ok(out)
}

/// `mask` from Python: any sequence (tuple, list, array) of three booleans.
fn analogy_mask(mask: &Bound<'_, PyAny>) -> PyResult<[bool; 3]> {
    let bad = || PyTypeError::new_err("mask must be a sequence of three booleans, e.g. (True, True, True)");
    if mask.is_instance_of::<PyString>() {
        return Err(bad());
    }
    let items = mask
        .try_iter()
        .map_err(|_| bad())?
        .map(|x| x.and_then(|x| x.is_truthy()))
        .collect::<PyResult<Vec<bool>>>()
        .map_err(|_| bad())?;
    <[bool; 3]>::try_from(items).map_err(|items| {
        PyValueError::new_err(format!("mask must have three booleans (for a, b, c), got {}", items.len()))
    })
}

#[pymethods]
impl PyEmbeddings {
    /// The `k` words nearest to `query`, best first, as a list of `(word, score)`.
    ///
    /// `query` is a word or a vector. A word is skipped from its own answers; an unknown
    /// word with n-grams works through its subword embedding; a word without an embedding
    /// raises KeyError. A vector is L2-normalized first (a zero vector stays zero); NaN or
    /// infinity raise ValueError. The score is the dot product with each word row (the
    /// cosine for normalized rows); ties go to the word that sorts first. `skip` is an
    /// iterable of words never to return. `k` larger than the vocabulary returns every word.
    #[pyo3(signature = (query, k=WideInt(10), skip=None), text_signature = "(self, /, query, k=10, skip=None)")]
    fn similar<'py>(
        &self,
        py: Python<'py>,
        query: &Bound<'py, PyAny>,
        k: WideInt,
        skip: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let k = check_k(k, "k")?;
        let emb = &self.inner;
        let mut skip_rows = Vec::new();
        if let Some(s) = skip.filter(|s| !s.is_none()) {
            skip_rows.extend(extract_word_buf(s)?.valid_strs().into_iter().filter_map(|w| emb.vocab.word_index(w)));
        }
        let found = if let Ok(word) = query.cast::<PyString>() {
            let Some(word) = super::embeddings::word_text(word) else {
                return Err(PyKeyError::new_err(word.clone().unbind()));
            };
            let work = scan_work(emb, 1).saturating_add(crate::py::fork::long_word_work([word.len()], emb.dims()));
            crate::py::fork::detach_if(py, work, || emb.similar_to_word(word, k, &skip_rows))?
        } else {
            if query.is_instance_of::<PyBytes>() || query.is_instance_of::<PyByteArray>() {
                return Err(PyTypeError::new_err(format!(
                    "query must be a word (str) or a 1-D vector of {} floats, got {} (decode it to str)",
                    emb.dims(),
                    query.get_type().name()?
                )));
            }
            let vec: PyArrayLike1<'py, f32, AllowTypeChange> = query.extract().map_err(|_| {
                PyTypeError::new_err(format!(
                    "query must be a word (str) or a 1-D vector of {} floats",
                    emb.dims()
                ))
            })?;
            let owned;
            let slice = match vec.as_slice() {
                Ok(s) => s,
                Err(_) => {
                    owned = vec.as_array().to_vec();
                    &owned
                }
            };
            crate::py::fork::detach_if(py, scan_work(emb, 1), || emb.similar_to_vector(slice, k, &skip_rows))?
        };
        answers(py, emb, found)
    }

    /// Nearest words to each row of `matrix` (`(n, dims)`; rows are L2-normalized):
    /// `(indices int64 (n, w), scores float32 (n, w))` with `w = min(k, len(self))`, best
    /// first; row `i` equals `similar(matrix[i], k)`. Indices are word rows (`vocab[i]`).
    /// A row with fewer than `w` answers (a word row scoring NaN, as a row holding NaN from
    /// a file does, is never an answer) is filled up with index -1 and score NaN: -1 is a
    /// valid Python index (the last word), so mask with `indices >= 0`.
    #[pyo3(signature = (matrix, k=WideInt(10)), text_signature = "(self, /, matrix, k=10)")]
    fn similar_batch<'py>(
        &self,
        py: Python<'py>,
        matrix: &Bound<'py, PyAny>,
        k: WideInt,
    ) -> PyResult<BatchAnswers<'py>> {
        let k = check_k(k, "k")?;
        let emb = &self.inner;
        let m: PyArrayLike2<'py, f32, AllowTypeChange> = matrix.extract().map_err(|_| {
            PyTypeError::new_err(format!("matrix must be a 2-D array of shape (n, {})", emb.dims()))
        })?;
        let (n, cols) = (m.shape()[0], m.shape()[1]);
        if cols != emb.dims() {
            return Err(PyValueError::new_err(format!(
                "matrix has {cols} columns, but the embeddings have {} dimensions",
                emb.dims()
            )));
        }
        // `as_slice` also accepts Fortran order (column-major memory): take only C order
        // as is, copy anything else in logical (row-major) order.
        let owned;
        let slice = match m.as_slice() {
            Ok(s) if m.is_c_contiguous() => s,
            _ => {
                owned = m.as_array().iter().copied().collect::<Vec<f32>>();
                &owned
            }
        };
        let w = emb.batch_width(k);
        let indices = PyArray2::<i64>::zeros(py, [n, w], false);
        let scores = PyArray2::<f32>::zeros(py, [n, w], false);
        {
            let mut idx_rw = indices.readwrite();
            let mut sc_rw = scores.readwrite();
            let idx = idx_rw.as_slice_mut().map_err(|e| PyTypeError::new_err(e.to_string()))?;
            let sc = sc_rw.as_slice_mut().map_err(|e| PyTypeError::new_err(e.to_string()))?;
            // (a batch scanning more than ~2^28 values is stoppable with Ctrl-C; a smaller one
            // is not worth the worker thread that takes)
            let work = (n as u64).saturating_mul(emb.storage.rows() as u64).saturating_mul(emb.dims() as u64);
            if work >= 1 << 28 {
                crate::py::fork::detach_interruptible(py, || emb.similar_batch_into(slice, n, k, idx, sc))?;
            } else {
                crate::py::fork::detach_if(py, work, || emb.similar_batch_into(slice, n, k, idx, sc))?;
            }
        }
        Ok((indices, scores))
    }

    /// Cosine similarity of the embeddings of two words (gensim's `similarity`); a key is
    /// a word or a row number, as in gensim. KeyError for a word without an embedding.
    fn similarity(&self, py: Python<'_>, a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<f32> {
        let emb = &self.inner;
        let key = |x: &Bound<'_, PyAny>| {
            key_word(emb, x).unwrap_or_else(|| {
                Err(PyTypeError::new_err(format!(
                    "similarity takes words (str) or row numbers, got {}",
                    x.get_type().name().map(|n| n.to_string()).unwrap_or_default()
                )))
            })
        };
        let (a, b) = (key(a)?, key(b)?);
        let work = crate::py::fork::words_work(&[&a, &b], emb.dims());
        Ok(crate::py::fork::detach_if(py, work, || emb.similarity(&a, &b))?)
    }

    /// gensim's `most_similar`: the `topn` words nearest to the mean of the unit embeddings
    /// of `positive` minus those of `negative`, without the given words, as `(word, score)`.
    /// KeyError for a word without an embedding.
    /// `topn=None` returns the cosine of the query with every word row instead (a float32
    /// array in row order, the given words included), as gensim does. `restrict_vocab=N`
    /// searches (and scores) the first N word rows only.
    #[pyo3(signature = (positive=None, negative=None, topn=Some(WideInt(10)), *, restrict_vocab=None),
               text_signature = "(self, /, positive=None, negative=None, topn=10, *, restrict_vocab=None)")]
    fn most_similar<'py>(
        &self,
        py: Python<'py>,
        positive: Option<&Bound<'py, PyAny>>,
        negative: Option<&Bound<'py, PyAny>>,
        topn: Option<WideInt>,
        restrict_vocab: Option<WideInt>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let emb = &self.inner;
        // (0 restricts nothing: gensim tests `if restrict_vocab:`)
        let rows = restrict_vocab.filter(|r| r.0 != 0).map(|r| check_k(r, "restrict_vocab")).transpose()?;
        if topn.is_some_and(|t| t.0 < 1) {
            return Ok(PyList::empty(py).into_any()); // gensim: no answers for topn < 1
        }
        let k = topn.map(|t| usize::try_from(t.0).unwrap_or(usize::MAX));
        let mut owned = terms_arg(emb, positive, 1.0, true, "most_similar")?;
        owned.extend(terms_arg(emb, negative, -1.0, true, "most_similar")?);
        let terms: Vec<(Term<'_>, f32)> = owned.iter().map(|(t, w)| (t.as_term(), *w)).collect();
        let work = cosine_scan_work(emb, 1).saturating_add(terms_work(emb, terms.iter().map(|(t, _)| t)));
        let Some(k) = k else {
            let all = crate::py::fork::detach_if(py, work, || {
                emb.terms_query(&terms).map(|(q, _)| emb.cosines_all(&q, rows))
            })?;
            return Ok(PyArray1::from_vec(py, all).into_any());
        };
        let found = crate::py::fork::detach_if(py, work, || emb.most_similar_terms_in(&terms, k, &[], rows))?;
        Ok(answers(py, emb, found)?.into_any())
    }

    /// gensim's `most_similar_cosmul` (3CosMul): the `topn` words whose product of
    /// `(1 + cos) / 2` over `positive`, divided by the product over `negative` (+ 1e-6),
    /// is highest, without the given words, as `(word, score)`. Terms are words, row
    /// numbers or vectors (used as given, as gensim does). `topn=None` returns the score of
    /// every word row instead (a float32 array in row order); `topn < 1` gives `[]`.
    /// `restrict_vocab=N` searches (and scores) the first N word rows only. A full scan of
    /// the rows.
    #[pyo3(signature = (positive=None, negative=None, topn=Some(WideInt(10)), restrict_vocab=None),
               text_signature = "(self, /, positive=None, negative=None, topn=10, restrict_vocab=None)")]
    fn most_similar_cosmul<'py>(
        &self,
        py: Python<'py>,
        positive: Option<&Bound<'py, PyAny>>,
        negative: Option<&Bound<'py, PyAny>>,
        topn: Option<WideInt>,
        restrict_vocab: Option<WideInt>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let emb = &self.inner;
        // (0 restricts nothing: gensim tests `if restrict_vocab:`)
        let rows = restrict_vocab.filter(|r| r.0 != 0).map(|r| check_k(r, "restrict_vocab")).transpose()?;
        if topn.is_some_and(|t| t.0 < 1) {
            return Ok(PyList::empty(py).into_any()); // gensim: no answers for topn < 1
        }
        let name = "most_similar_cosmul";
        let (pos, neg) = (terms_arg(emb, positive, 1.0, false, name)?, terms_arg(emb, negative, -1.0, false, name)?);
        let pos: Vec<Term<'_>> = pos.iter().map(|(t, _)| t.as_term()).collect();
        let neg: Vec<Term<'_>> = neg.iter().map(|(t, _)| t.as_term()).collect();
        let work = cosine_scan_work(emb, pos.len() + neg.len()).saturating_add(terms_work(emb, pos.iter().chain(&neg)));
        let Some(k) = topn.map(|t| usize::try_from(t.0).unwrap_or(usize::MAX)) else {
            let all = crate::py::fork::detach_if(py, work, || emb.cosmul_all(&pos, &neg, rows))?;
            return Ok(PyArray1::from_vec(py, all).into_any());
        };
        let found = crate::py::fork::detach_if(py, work, || emb.most_similar_cosmul(&pos, &neg, k, rows))?;
        Ok(answers(py, emb, found)?.into_any())
    }

    /// gensim's `doesnt_match`: of `words` (those with an embedding), the one least similar
    /// to the mean of their unit embeddings. ValueError if no word has an embedding.
    fn doesnt_match(&self, py: Python<'_>, words: &Bound<'_, PyAny>) -> PyResult<String> {
        let words = extract_word_buf(words)?;
        let strs = words.valid_strs();
        let emb = &self.inner;
        let work = crate::py::fork::words_work(&strs, emb.dims());
        match crate::py::fork::detach_if(py, work, || emb.doesnt_match(&strs))? {
            Some(w) => Ok(w.to_string()),
            None => Err(PyValueError::new_err("doesnt_match: none of the words has an embedding")),
        }
    }

    /// Analogy: the `k` words nearest to `normalize(e(b) - e(a) + e(c))` ("a is to b as
    /// c is to ?"), best first, as `(word, score)`. `mask[i]` True skips the i-th query
    /// word from the answers. KeyError names each argument that has no embedding.
    #[pyo3(signature = (a, b, c, k=WideInt(10), mask=None), text_signature = "(self, /, a, b, c, k=10, mask=(True, True, True))")]
    fn analogy<'py>(
        &self,
        py: Python<'py>,
        a: &Bound<'py, PyString>,
        b: &Bound<'py, PyString>,
        c: &Bound<'py, PyString>,
        k: WideInt,
        mask: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let k = check_k(k, "k")?;
        let mask = match mask {
            Some(m) if !m.is_none() => analogy_mask(m)?,
            _ => [true; 3],
        };
        let emb = &self.inner;
        let text = |w| super::embeddings::word_text(w);
        let (Some(a), Some(b), Some(c)) = (text(a), text(b), text(c)) else {
            // a str that is no valid text (a lone surrogate) has no embedding: named with
            // the other words without one, as the core names them
            let missing = [("a", a), ("b", b), ("c", c)]
                .iter()
                .filter(|(_, w)| text(w).is_none_or(|t| emb.vocab.idx(t).is_none()))
                .map(|(name, w)| Ok(format!("{name} ({})", w.repr()?)))
                .collect::<PyResult<Vec<_>>>()?;
            let (noun, verb) = if missing.len() == 1 { ("word", "has") } else { ("words", "have") };
            return Err(PyKeyError::new_err(format!("analogy {noun} {} {verb} no embedding", missing.join(", "))));
        };
        let work = scan_work(emb, 1).saturating_add(crate::py::fork::long_word_work([a.len(), b.len(), c.len()], emb.dims()));
        let found = crate::py::fork::detach_if(py, work, || emb.analogy(a, b, c, k, mask))?;
        answers(py, emb, found)
    }
}

/// [`crate::py::fork::long_word_work`] of the words among query terms.
fn terms_work<'t>(emb: &Embeddings, terms: impl Iterator<Item = &'t Term<'t>>) -> u64 {
    let lens = terms.filter_map(|t| match t {
        Term::Word(w) => Some(w.len()),
        Term::Vector(_) => None,
    });
    crate::py::fork::long_word_work(lens, emb.dims())
}

/// About how many values a scan of every word row with `queries` queries reads (for
/// [`crate::py::fork::detach_if`]).
fn scan_work(emb: &crate::embeddings::Embeddings, queries: usize) -> u64 {
    (emb.vocab.words_len() as u64)
        .saturating_mul(emb.dims().max(1) as u64)
        .saturating_mul(queries.max(1) as u64)
}

/// [`scan_work`] of gensim's cosine queries (`most_similar`, `most_similar_cosmul`): on
/// quantized storage with a projection the first one also checks the projection (`d³`) and
/// may rebuild each word row (`d²` each) to learn the rows' lengths.
fn cosine_scan_work(emb: &crate::embeddings::Embeddings, queries: usize) -> u64 {
    let (words, d) = (emb.vocab.words_len() as u64, emb.dims().max(1) as u64);
    let first = match &emb.storage {
        crate::storage::Storage::Quantized(q) if q.projection().is_some() && !q.code_norms_made() => {
            d.saturating_mul(d).saturating_mul(d.saturating_add(words))
        }
        _ => 0,
    };
    scan_work(emb, queries).saturating_add(first)
}
