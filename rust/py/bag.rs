//! Batch row indices for bag-of-subwords layers (`Vocab.indices_batch`).

use numpy::{PyArray1, PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use rayon::prelude::*;

use super::embeddings::extract_word_buf;
use crate::vocab::INDEX_GROUP;
use super::vocab::PyVocab;

/// The work of [`indices_batch`] for `n` words (a word's n-grams: a few dozen hashes, counted
/// as 64): below [`crate::py::fork::SMALL_WORK`] it keeps the GIL and runs on its thread.
fn indices_work(words: &[&str]) -> u64 {
    (words.len() as u64)
        .saturating_mul(64)
        .saturating_add(crate::py::fork::long_word_work(words.iter().map(|w| w.len()), 1))
}

/// Storage rows of many words: `(rows, offsets, known)`, flattened like `embedding_bag` input.
///
/// The rows of word `i` are `rows[offsets[i]:offsets[i + 1]]`: its own row for a known word
/// (`known[i]` is True), otherwise the rows of its n-grams (repeats kept; empty when it has no
/// embedding at all).
fn indices_batch(vocab: &crate::vocab::Vocab, words: &[&str]) -> (Vec<i64>, Vec<i64>, Vec<bool>) {
    const CHUNK: usize = 1024;
    let part = |chunk: &[&str]| {
        let mut rows = Vec::with_capacity(chunk.len());
        let mut lens = Vec::with_capacity(chunk.len());
        let mut known = Vec::with_capacity(chunk.len());
        let mut scratch = Vec::new();
        // known words a group at a time, their table accesses overlapped
        let mut found = [None; INDEX_GROUP];
        for group in chunk.chunks(INDEX_GROUP) {
            let found = &mut found[..group.len()];
            match vocab.words() {
                Some(list) => list.index_group(group, found, |_| ()),
                None => found.fill(None),
            }
            for (w, f) in group.iter().zip(found.iter()) {
                let before = rows.len();
                if let Some(i) = *f {
                    rows.push(i as i64);
                    known.push(true);
                } else {
                    scratch.clear();
                    vocab.push_subword_indices(w, &mut scratch);
                    rows.extend(scratch.iter().map(|&r| r as i64));
                    known.push(false);
                }
                lens.push((rows.len() - before) as i64);
            }
        }
        (rows, lens, known)
    };
    // (small: on this thread, which holds the GIL then; see `query::PARALLEL_WORK`)
    let parts: Vec<(Vec<i64>, Vec<i64>, Vec<bool>)> = if indices_work(words) < crate::py::fork::SMALL_WORK {
        words.chunks(CHUNK).map(part).collect()
    } else {
        words.par_chunks(CHUNK).map(part).collect()
    };
    let total: usize = parts.iter().map(|p| p.0.len()).sum();
    let mut rows = Vec::with_capacity(total);
    let mut offsets = Vec::with_capacity(words.len() + 1);
    let mut known = Vec::with_capacity(words.len());
    let mut acc = 0i64;
    offsets.push(0);
    for (r, l, k) in parts {
        rows.extend_from_slice(&r);
        for n in l {
            acc += n;
            offsets.push(acc);
        }
        known.extend_from_slice(&k);
    }
    (rows, offsets, known)
}

#[pymethods]
impl PyVocab {
    /// Storage rows of many words in one call: `(rows, offsets, known)` as NumPy arrays
    /// (int64, int64 of length `len(words) + 1`, bool).
    ///
    /// The rows of word `i` are `rows[offsets[i]:offsets[i + 1]]`: its own row when it is a
    /// known word (`known[i]`), else the rows of its n-grams (what `subword_indices` gives;
    /// empty when the word has no embedding).
    #[allow(clippy::type_complexity)]
    fn indices_batch<'py>(
        &self,
        py: Python<'py>,
        words: &Bound<'py, PyAny>,
    ) -> PyResult<(
        Bound<'py, PyArray1<i64>>,
        Bound<'py, PyArray1<i64>>,
        Bound<'py, PyArray1<bool>>,
    )> {
        let words = extract_word_buf(words)?;
        let strs = words.strs();
        let vocab = &self.inner.vocab;
        let work = indices_work(&strs);
        let (mut rows, mut offsets, mut known) = crate::py::fork::detach_if(py, work, || indices_batch(vocab, &strs));
        if !words.invalid().is_empty() {
            // words that are no valid text were taken as empty words: they have no rows
            let mut bad = words.invalid().iter().peekable();
            let (mut kept, mut at) = (Vec::with_capacity(rows.len()), vec![0i64]);
            for (i, span) in offsets.windows(2).enumerate() {
                if bad.next_if_eq(&&i).is_some() {
                    known[i] = false;
                } else {
                    kept.extend_from_slice(&rows[span[0] as usize..span[1] as usize]);
                }
                at.push(kept.len() as i64);
            }
            (rows, offsets) = (kept, at);
        }
        Ok((
            PyArray1::from_vec(py, rows),
            PyArray1::from_vec(py, offsets),
            PyArray1::from_vec(py, known),
        ))
    }
}

/// Normalize each row of `sums` (a C-contiguous float32 (n, dims) array) in place as the core
/// normalizes an unknown word's n-gram sum (`l2_normalize`: the squares added in order in
/// float32, a float64 fallback when that sum overflows or underflows; zero rows stay zero),
/// so that `SubwordEmbeddingBag` gives `lookup`'s values bit for bit. In parallel, without
/// the GIL.
#[pyfunction]
pub fn _normalize_rows_as_lookup(py: Python<'_>, sums: &Bound<'_, PyArray2<f32>>) -> PyResult<()> {
    let dims = sums.shape()[1];
    let mut rw = sums.try_readwrite()?;
    let data = rw
        .as_slice_mut()
        .map_err(|_| pyo3::exceptions::PyValueError::new_err("sums must be a C-contiguous array"))?;
    if dims > 0 {
        if data.len() < crate::query::PARALLEL_WORK {
            // (small: with the GIL, without the thread pool)
            data.chunks_mut(dims).for_each(|row| {
                crate::embeddings::l2_normalize(row);
            });
        } else {
            crate::py::fork::detach(py, || {
                data.par_chunks_mut(dims).with_min_len(256).for_each(|row| {
                    crate::embeddings::l2_normalize(row);
                })
            });
        }
    }
    Ok(())
}
