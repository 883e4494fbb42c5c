//! Similarity and analogy queries: the nearest words to a word, a vector or a batch of
//! vectors, over dense (owned or memory-mapped) and product-quantized storage.
//!
//! Candidates are the word rows `0..n_words` only (never n-gram rows); the score is the
//! dot product with the query; ties go to the word that sorts first (byte order of the
//! UTF-8 string, the same as Python's `str` order).
//!
//! * Dense storage is scored in place (no copy of the matrix) by a register-tiled dot
//!   product kernel (`3 rows x 4 queries` for batches, `4 rows x 1 query` for one query),
//!   in row blocks processed in parallel with rayon. Every thread keeps a bounded top-k
//!   heap per query, merged at the end, so no score vector is ever materialized.
//!   Each single dot product is computed with the same operations in the same order
//!   whatever the tile or kernel (8 chains of fused multiply-adds, chain `c` over the
//!   dimensions `c, c + 8, ...`, added in a fixed order), so batch and single queries give
//!   bit-identical scores.
//!   On x86-64 the kernel is picked at run time: with AVX-512F, batches of 8 or more
//!   queries are packed in panels of 16 queries (dimension-major) and scored 3 rows x 16
//!   queries per tile, the 8 chains of each of the 48 dot products in registers (an
//!   outer-product kernel: one panel load and 3 broadcasts feed 3 fused multiply-adds of
//!   16 lanes); with AVX2 + FMA (and for single queries) the dot-product tiles above; the
//!   SSE2 baseline otherwise.
//! * Quantized storage is scored against the codes (asymmetric distance): per query, a
//!   lookup table holds the dot product of each query block with each centroid (with a
//!   projection P the query is projected once, `q·P`, since a rebuilt row is `c·Pᵀ`), and a
//!   row's score is the sum of its table entries times the row's norm. The matrix is
//!   never rebuilt. On CPUs with AVX-512 VBMI a conservative byte-table filter
//!   (`crate::fastscan`) skips the rows that cannot reach a query's top-k; the rows it
//!   keeps are scored by the same code (`adc_score`), so the answers are the same bits.

use rayon::prelude::*;

use crate::embeddings::{l2_normalize, Embeddings};
use crate::error::{Error, Result};
use crate::storage::{QuantizedStorage, Storage};
use crate::vocab::WordList;

pub(crate) use kernel::Isa;

/// A term of gensim's `most_similar`: a word (its unit embedding) or a vector as given.
#[derive(Clone, Copy, Debug)]
pub enum Term<'a> {
    Word(&'a str),
    Vector(&'a [f32]),
}

/// One answer of a query: a word row and its score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Neighbor {
    /// The word's row (index in the vocabulary).
    pub index: usize,
    /// Dot product of the (normalized) query with the word's row.
    pub score: f32,
}

/// Queries per chunk of a dense batch: bounds the heaps kept per thread.
const DENSE_QUERY_CHUNK: usize = 2048;
/// Bytes of lookup tables per chunk of a quantized batch.
const TABLE_BUDGET: usize = 8 << 20;
/// Below this many multiply-adds a query runs on the calling thread, without the thread
/// pool. It is above `crate::py::fork::SMALL_WORK`: a call that keeps the GIL must not wait
/// for the pool, which another thread's long call may hold (every Python thread would wait).
pub(crate) const PARALLEL_WORK: usize = 1 << 18;

impl Embeddings {
    /// The `k` words nearest to `word`, best first, skipping `word` itself and the rows
    /// in `skip`. A known word's query is its stored row as is; an unknown word with
    /// n-grams is a query through its (normalized) n-gram embedding.
    /// Errors with [`Error::UnknownWord`] when `word` has no embedding.
    pub fn similar_to_word(&self, word: &str, k: usize, skip: &[usize]) -> Result<Vec<Neighbor>> {
        let mut query = vec![0f32; self.dims()];
        let mut scratch = Vec::new();
        if self.embedding_into(word, &mut query, &mut scratch).is_none() {
            return Err(Error::UnknownWord(word.to_string()));
        }
        // a stored NaN / infinity would silently give no answers: say so, as for vectors
        check_queries(&query, self.dims(), &format!("the embedding of {word:?}"))?;
        let mut skip = skip.to_vec();
        if let Some(i) = self.vocab.word_index(word) {
            skip.push(i);
        }
        Ok(self.search_normalized(&query, 1, k, &skip).pop().unwrap_or_default())
    }

    /// A query vector must have `dims` values, none NaN or infinite.
    fn check_query_vector(&self, query: &[f32]) -> Result<()> {
        if query.len() != self.dims() {
            return Err(Error::argument(format!(
                "query vector has {} values, but the embeddings have {} dimensions",
                query.len(),
                self.dims()
            )));
        }
        check_queries(query, self.dims(), "query vector")
    }

    /// The `k` words nearest to the vector `query` (normalized first; a zero vector stays
    /// zero and scores 0 everywhere), best first, skipping the rows in `skip`.
    pub fn similar_to_vector(&self, query: &[f32], k: usize, skip: &[usize]) -> Result<Vec<Neighbor>> {
        self.check_query_vector(query)?;
        let mut q = query.to_vec();
        l2_normalize(&mut q);
        Ok(self.search_normalized(&q, 1, k, skip).pop().unwrap_or_default())
    }

    /// The embedding of `word` as a unit vector (gensim's `unitvec`; a zero vector stays
    /// zero), or [`Error::UnknownWord`].
    fn unit_embedding(&self, word: &str) -> Result<Vec<f32>> {
        let mut v = vec![0f32; self.dims()];
        let mut scratch = Vec::new();
        if self.embedding_into(word, &mut v, &mut scratch).is_none() {
            return Err(Error::UnknownWord(word.to_string()));
        }
        check_queries(&v, self.dims(), &format!("the embedding of {word:?}"))?;
        l2_normalize(&mut v);
        Ok(v)
    }

    /// Cosine similarity of the embeddings of two words (gensim's `similarity`).
    pub fn similarity(&self, a: &str, b: &str) -> Result<f32> {
        let (u, v) = (self.unit_embedding(a)?, self.unit_embedding(b)?);
        Ok(u.iter().zip(&v).map(|(x, y)| x * y).sum())
    }

    /// gensim's `most_similar(positive, negative, topn)`: the words nearest (by cosine) to
    /// the mean of the unit embeddings of `positive` minus those of `negative`, skipping
    /// the given words themselves (and `skip`). Embeddings with norms (rows stored as unit
    /// vectors) use the plain dot-product search; without, each dot product is divided by the
    /// row's length ([`Cosines`]).
    pub fn most_similar(&self, positive: &[&str], negative: &[&str], k: usize, skip: &[usize]) -> Result<Vec<Neighbor>> {
        let terms: Vec<(Term<'_>, f32)> = positive
            .iter()
            .map(|w| (Term::Word(w), 1.0))
            .chain(negative.iter().map(|w| (Term::Word(w), -1.0)))
            .collect();
        self.most_similar_terms(&terms, k, skip)
    }

    /// gensim's query of `most_similar` (see [`Embeddings::most_similar_terms`]): the unit
    /// vector and the rows of the words among the terms.
    pub fn terms_query(&self, terms: &[(Term<'_>, f32)]) -> Result<(Vec<f32>, Vec<usize>)> {
        if terms.is_empty() {
            return Err(Error::argument("most_similar needs at least one positive or negative word"));
        }
        // summed in f64 (as gensim, whose weights are f64): large weights cannot overflow
        let mut query = vec![0f64; self.dims()];
        let mut skip = Vec::new();
        for (term, weight) in terms {
            let v = match term {
                Term::Word(w) => {
                    if let Some(i) = self.vocab.word_index(w) {
                        skip.push(i);
                    }
                    self.unit_embedding(w)?
                }
                Term::Vector(v) => {
                    self.check_query_vector(v)?;
                    v.to_vec()
                }
            };
            if !weight.is_finite() {
                return Err(Error::argument(format!("most_similar: weight {weight} is not finite")));
            }
            for (q, x) in query.iter_mut().zip(&v) {
                *q += f64::from(*weight) * f64::from(*x);
            }
        }
        let total: f64 = terms.iter().map(|(_, w)| f64::from(w.abs())).sum();
        let scale = if total > 0.0 { 1.0 / total } else { 1.0 };
        let mut query: Vec<f32> = query.iter().map(|q| (q * scale) as f32).collect();
        l2_normalize(&mut query);
        Ok((query, skip))
    }

    /// gensim's `most_similar` with weighted terms (`(term, weight)`, negative weights for
    /// `negative`): the query is the sum of `weight x` unit word embedding, or `weight x`
    /// vector as given (gensim's `get_mean_vector`), normalized; the words among the terms
    /// are not answers.
    pub fn most_similar_terms(&self, terms: &[(Term<'_>, f32)], k: usize, skip: &[usize]) -> Result<Vec<Neighbor>> {
        self.most_similar_terms_in(terms, k, skip, None)
    }

    /// [`Embeddings::most_similar_terms`] among the first `rows` word rows only when `rows`
    /// is given (gensim's `restrict_vocab`; then by a scan of those rows' cosines).
    pub fn most_similar_terms_in(
        &self,
        terms: &[(Term<'_>, f32)],
        k: usize,
        skip: &[usize],
        rows: Option<usize>,
    ) -> Result<Vec<Neighbor>> {
        let (query, mut skip_all) = self.terms_query(terms)?;
        skip_all.extend_from_slice(skip);
        let skip = skip_all;
        let limit = rows.unwrap_or(usize::MAX);
        if let Storage::Quantized(q) = &self.storage {
            // rebuilt rows are not unit vectors, norms chunk or not: cosines with them
            return Ok(self.quantized_cosines(q, &query, k, &skip, limit));
        }
        if !self.unit_rows() {
            // Without a norms chunk the rows may not be unit vectors (vf.Embeddings from an
            // array, a file read with normalize=False): gensim's cosine divides each dot
            // product by the row's length, which the plain dot-product search does not.
            return Ok(self.scan_cosines(&[&query], k, &skip, limit, |cos| cos[0]));
        }
        Ok(self.search_normalized_in(&query, 1, k, &skip, limit).pop().unwrap_or_default())
    }

    /// The cosine of every word row with the unit vector `query` (0 for a zero row), in row
    /// order: gensim's `most_similar(..., topn=None)`. Quantized rows are scored through their
    /// lookup table over their rebuilt length. In parallel.
    /// Only the first `rows` word rows when given (gensim's `restrict_vocab`).
    pub fn cosines_all(&self, query: &[f32], rows: Option<usize>) -> Vec<f32> {
        self.score_all(&[query], rows, |cos| cos[0])
    }

    /// `score(cosines)` of every word row (the first `rows` when given), in row order, where
    /// `cosines[j]` is the row's cosine with the unit vector `queries[j]` ([`Cosines`]).
    /// In parallel.
    fn score_all<F>(&self, queries: &[&[f32]], rows: Option<usize>, score: F) -> Vec<f32>
    where
        F: Fn(&[f32]) -> f32 + Sync,
    {
        let n = self.vocab.words().map_or(0, |w| w.len()).min(rows.unwrap_or(usize::MAX));
        if self.dims() == 0 {
            // no component: every cosine is 0 (cosmul's score of those is not)
            return vec![score(&vec![0f32; queries.len()]); n];
        }
        let mut out = vec![0f32; n];
        if n == 0 {
            return out;
        }
        const CHUNK: usize = 4096;
        let cosines = Cosines::new(self, queries);
        let fill = |(c, chunk): (usize, &mut [f32])| {
            let start = c * CHUNK;
            cosines.scan(start, start + chunk.len(), |i, cos| chunk[i - start] = score(cos));
        };
        if n.saturating_mul(cosines.work_per_row()) < PARALLEL_WORK {
            out.chunks_mut(CHUNK).enumerate().for_each(fill);
        } else {
            out.par_chunks_mut(CHUNK).enumerate().for_each(fill);
        }
        out
    }

    /// gensim's `most_similar_cosmul` (Levy and Goldberg's 3CosMul): each word row scores
    /// the product over `positive` of `(1 + cos) / 2` divided by that product over
    /// `negative` plus 1e-6; the given words are not answers. `positive` must not be empty
    /// (as in gensim). A word counts by its unit embedding, a vector as given (gensim's
    /// rule: `cos` is then the row's cosine times the vector's length). A full scan of the
    /// rows ([`Cosines`]: quantized rows through lookup tables, never rebuilt), in parallel.
    /// Among the first `rows` word rows only when given (gensim's `restrict_vocab`).
    pub fn most_similar_cosmul(
        &self,
        positive: &[Term<'_>],
        negative: &[Term<'_>],
        k: usize,
        rows: Option<usize>,
    ) -> Result<Vec<Neighbor>> {
        let (vectors, np, skip) = self.cosmul_terms(positive, negative)?;
        let queries: Vec<&[f32]> = vectors.iter().map(Vec::as_slice).collect();
        Ok(self.scan_cosines(&queries, k, &skip, rows.unwrap_or(usize::MAX), |cos| cosmul_score(cos, np)))
    }

    /// The 3CosMul score of [`Embeddings::most_similar_cosmul`] of every word row (the first
    /// `rows` when given), in row order, the given words included (gensim's `topn=None`).
    pub fn cosmul_all(&self, positive: &[Term<'_>], negative: &[Term<'_>], rows: Option<usize>) -> Result<Vec<f32>> {
        let (vectors, np, _) = self.cosmul_terms(positive, negative)?;
        let queries: Vec<&[f32]> = vectors.iter().map(Vec::as_slice).collect();
        Ok(self.score_all(&queries, rows, |cos| cosmul_score(cos, np)))
    }

    /// The query vectors of a 3CosMul query (positive terms first, then negative), the
    /// number of positive ones and the rows of the given known words.
    fn cosmul_terms(&self, positive: &[Term<'_>], negative: &[Term<'_>]) -> Result<(Vec<Vec<f32>>, usize, Vec<usize>)> {
        if positive.is_empty() {
            return Err(Error::argument("most_similar_cosmul needs at least one positive word"));
        }
        let d = self.dims();
        let vectors = positive
            .iter()
            .chain(negative)
            .map(|t| match t {
                Term::Word(w) => self.unit_embedding(w),
                Term::Vector(v) => {
                    if v.len() != d {
                        return Err(Error::argument(format!("a query vector has {} values, but the embeddings have {d} dimensions", v.len())));
                    }
                    check_queries(v, d, "a query vector")?;
                    Ok(v.to_vec())
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let skip = positive
            .iter()
            .chain(negative)
            .filter_map(|t| match t {
                Term::Word(w) => self.vocab.word_index(w),
                Term::Vector(_) => None,
            })
            .collect();
        Ok((vectors, positive.len(), skip))
    }

    /// The `k` best word rows by `score(cosines)`, where `cosines[j]` is the cosine of the
    /// row with the unit vector `queries[j]` ([`Cosines`]); rows in `skip` are not answers.
    /// Works whether or not the stored rows are unit vectors. In parallel.
    fn scan_cosines<F>(&self, queries: &[&[f32]], k: usize, skip: &[usize], rows: usize, score: F) -> Vec<Neighbor>
    where
        F: Fn(&[f32]) -> f32 + Sync,
    {
        let cosines = Cosines::new(self, queries);
        let work = cosines.work_per_row();
        self.best_rows(k, skip, rows, work, 4096, |start, end, top| {
            cosines.scan(start, end, |i, cos| top.offer(i, score(cos)));
        })
    }

    /// The `k` best word rows by cosine of the rebuilt (quantized) row with the unit vector
    /// `query` ([`quantized_cosine`]), rows in `skip` left out. A scan of the codes, in parallel.
    fn quantized_cosines(&self, q: &QuantizedStorage, query: &[f32], k: usize, skip: &[usize], rows: usize) -> Vec<Neighbor> {
        let score = quantized_cosine(q, query, self.vocab.words_len());
        self.best_rows(k, skip, rows, q.n_subquantizers(), 8192, |start, end, top| {
            for i in start..end {
                top.offer(i, score(i));
            }
        })
    }

    /// The `k` best word rows by the scores `scan(start, end, top)` offers to `top` for rows
    /// `start..end` (`top.offer(row, score)`, every row once); rows in `skip` are not answers.
    /// `work` (per row) decides whether the blocks of `block` rows are scanned in parallel.
    /// Only the first `rows` word rows are candidates.
    fn best_rows<B>(&self, k: usize, skip: &[usize], rows: usize, work: usize, block: usize, scan: B) -> Vec<Neighbor>
    where
        B: for<'t, 'w> Fn(usize, usize, &'t mut TopK<'w>) + Sync,
    {
        let Some(words) = self.vocab.words() else {
            return Vec::new();
        };
        let n = words.len().min(rows);
        let k = k.min(n);
        if k == 0 {
            return Vec::new();
        }
        let mut skip = skip.to_vec();
        skip.sort_unstable();
        skip.dedup();
        let skip = &skip[..];
        let new_tops = || vec![TopK::new(k, words, skip)];
        let scan = |tops: &mut [TopK<'_>], start: usize, end: usize| scan(start, end, &mut tops[0]);
        let tops = run_blocks(n, n.saturating_mul(work), block, new_tops, scan);
        tops.into_iter().next().map(TopK::into_sorted).unwrap_or_default()
    }

    /// gensim's `doesnt_match`: of `words` that have an embedding, the one least similar to
    /// the normalized mean of their unit embeddings (ties: the word that sorts first).
    /// `None` when no word has an embedding.
    pub fn doesnt_match<'w>(&self, words: &[&'w str]) -> Result<Option<&'w str>> {
        let mut units = Vec::new();
        for &w in words {
            match self.unit_embedding(w) {
                Ok(v) => units.push((w, v)),
                Err(Error::UnknownWord(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if units.is_empty() {
            return Ok(None);
        }
        let mut mean = vec![0f32; self.dims()];
        for (_, v) in &units {
            for (m, x) in mean.iter_mut().zip(v) {
                *m += x;
            }
        }
        let n = units.len() as f32;
        for m in mean.iter_mut() {
            *m /= n;
        }
        l2_normalize(&mut mean);
        let scored = units.iter().map(|(w, v)| (v.iter().zip(&mean).map(|(x, y)| x * y).sum::<f32>(), *w));
        Ok(scored.min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1))).map(|(_, w)| w))
    }

    /// Number of answers per query of [`Embeddings::similar_batch_into`]: `min(k, words)`.
    pub fn batch_width(&self, k: usize) -> usize {
        k.min(self.len())
    }

    /// The nearest words to each of the `nq` rows of `queries` (`nq x dims`, row-major;
    /// each row is normalized). Writes `nq x w` word rows and scores, best first, where
    /// `w = self.batch_width(k)`. Candidates scoring NaN are never returned; places left
    /// over (only then) hold index -1 and score NaN.
    /// Gives exactly what [`Embeddings::similar_to_vector`] gives for each row.
    pub fn similar_batch_into(
        &self,
        queries: &[f32],
        nq: usize,
        k: usize,
        indices: &mut [i64],
        scores: &mut [f32],
    ) -> Result<()> {
        let d = self.dims();
        if Some(queries.len()) != nq.checked_mul(d) {
            return Err(Error::argument(format!(
                "query matrix has {} values, expected {nq} x {d}",
                queries.len()
            )));
        }
        check_queries(queries, d, "query matrix")?;
        let w = self.batch_width(k);
        if indices.len() != nq * w || scores.len() != nq * w {
            return Err(Error::argument(format!(
                "output buffers hold {} and {} entries, expected {nq} queries x {w}",
                indices.len(),
                scores.len(),
            )));
        }
        if w == 0 || nq == 0 {
            return Ok(());
        }
        let chunk = match &self.storage {
            Storage::Array(_) => DENSE_QUERY_CHUNK,
            Storage::Quantized(q) => (TABLE_BUDGET / (4 * q.n_subquantizers() * q.n_centroids())).max(1),
        };
        let mut normalized = vec![0f32; chunk.min(nq) * d];
        let mut first = 0;
        while first < nq {
            crate::cancel::check()?;
            let count = chunk.min(nq - first);
            let buf = &mut normalized[..count * d];
            buf.copy_from_slice(&queries[first * d..(first + count) * d]);
            if d > 0 {
                for row in buf.chunks_exact_mut(d) {
                    l2_normalize(row);
                }
            }
            let answers = self.search_normalized(buf, count, w, &[]);
            // (a stop during the scan left these answers incomplete)
            crate::cancel::check()?;
            for (j, answer) in answers.into_iter().enumerate() {
                let at = (first + j) * w;
                let (idx, sc) = (&mut indices[at..at + w], &mut scores[at..at + w]);
                idx.fill(-1);
                sc.fill(f32::NAN);
                for (p, nb) in answer.into_iter().enumerate() {
                    idx[p] = nb.index as i64;
                    sc[p] = nb.score;
                }
            }
            first += count;
        }
        Ok(())
    }

    /// Analogy: the `k` words nearest to `normalize(e(b) - e(a) + e(c))`, best first.
    /// `mask[i]` true skips the i-th query word from the answers (when it is a known word).
    /// Errors with [`Error::UnknownWord`] naming every argument without an embedding.
    pub fn analogy(&self, a: &str, b: &str, c: &str, k: usize, mask: [bool; 3]) -> Result<Vec<Neighbor>> {
        let d = self.dims();
        let mut query = vec![0f32; d];
        let mut buf = vec![0f32; d];
        let mut scratch = Vec::new();
        let mut missing = Vec::new();
        for (name, word, sign) in [("a", a, -1f32), ("b", b, 1.0), ("c", c, 1.0)] {
            if self.embedding_into(word, &mut buf, &mut scratch).is_none() {
                missing.push(format!("{name} ({word:?})"));
                continue;
            }
            for (q, v) in query.iter_mut().zip(&buf) {
                *q += sign * v;
            }
        }
        if !missing.is_empty() {
            let (noun, verb) = if missing.len() == 1 { ("word", "has") } else { ("words", "have") };
            return Err(Error::UnknownWord(format!("analogy {noun} {} {verb} no embedding", missing.join(", "))));
        }
        check_queries(&query, d, "analogy query")?;
        l2_normalize(&mut query);
        let skip: Vec<usize> = [a, b, c]
            .iter()
            .zip(mask)
            .filter(|(_, m)| *m)
            .filter_map(|(w, _)| self.vocab.word_index(w))
            .collect();
        Ok(self.search_normalized(&query, 1, k, &skip).pop().unwrap_or_default())
    }

    /// Each word row's length ([`row_norm`]; dense storage, empty for quantized), computed
    /// on the first call (in parallel) and kept: gensim's cosines divide by it.
    fn word_row_lengths(&self) -> &[f32] {
        crate::storage::get_or_compute::<Vec<f32>>(&self.row_lengths, || match &self.storage {
            Storage::Array(a) => {
                let d = a.cols();
                let n = self.vocab.words_len().min(a.rows());
                let mut out = vec![0f32; n];
                if d > 0 {
                    let isa = Isa::detect();
                    let rows = &a.as_slice()[..n * d];
                    if n * d < PARALLEL_WORK {
                        row_norms(isa, rows, d, &mut out);
                    } else {
                        out.par_chunks_mut(1024)
                            .zip(rows.par_chunks(1024 * d))
                            .for_each(|(o, block)| row_norms(isa, block, d, o));
                    }
                }
                out
            }
            Storage::Quantized(_) => Vec::new(),
        })
    }

    /// Top-k of each of the `nq` queries (already normalized, `nq x dims`) over the word
    /// rows, skipping the rows in `skip`; the answers of each query, best first.
    fn search_normalized(&self, queries: &[f32], nq: usize, k: usize, skip: &[usize]) -> Vec<Vec<Neighbor>> {
        self.search_normalized_in(queries, nq, k, skip, usize::MAX)
    }

    /// [`Embeddings::search_normalized`] over the first `rows` word rows only.
    fn search_normalized_in(&self, queries: &[f32], nq: usize, k: usize, skip: &[usize], rows: usize) -> Vec<Vec<Neighbor>> {
        let Some(words) = self.vocab.words() else {
            return vec![Vec::new(); nq];
        };
        let n = words.len().min(rows);
        let k = k.min(n);
        if k == 0 || nq == 0 {
            return vec![Vec::new(); nq];
        }
        let mut skip = skip.to_vec();
        skip.sort_unstable();
        skip.dedup();
        let skip = &skip[..];
        let new_tops = || (0..nq).map(|_| TopK::new(k, words, skip)).collect::<Vec<_>>();
        let d = self.dims();
        let tops = match &self.storage {
            Storage::Array(a) => {
                let mat = &a.as_slice()[..n * d];
                let isa = kernel::Isa::detect();
                let queries = kernel::Queries::new(isa, queries, nq, d);
                let scan = |tops: &mut [TopK<'_>], start: usize, end: usize| {
                    kernel::scan_dense(isa, mat, d, start, end, &queries, tops);
                };
                let work = n.saturating_mul(d).saturating_mul(nq);
                run_blocks(n, work, dense_block_rows(d, nq), new_tops, scan)
            }
            Storage::Quantized(q) => {
                let tables = lookup_tables(q, queries, nq);
                let plan = crate::fastscan::Plan::new(q, &tables, nq);
                let scan = |tops: &mut [TopK<'_>], start: usize, end: usize| match &plan {
                    Some(plan) => plan.scan(q, start, end, &tables, tops),
                    None => scan_quantized(q, start, end, &tables, tops),
                };
                let work = n.saturating_mul(q.n_subquantizers()).saturating_mul(nq);
                run_blocks(n, work, 8192, new_tops, scan)
            }
        };
        tops.into_iter().map(TopK::into_sorted).collect()
    }
}

/// The length of `row`: the f32 sum of squares (32 partial sums, multiplied then added, in a
/// fixed order: the same bits whatever the vector width), or, when that overflows or
/// underflows (values beyond about 1e19 or below 1e-19, in rows stored unnormalized), the
/// f64 one, so that such rows get their true cosine instead of 0.
#[inline(always)]
fn row_norm(row: &[f32]) -> f32 {
    // four independent chains of eight lanes (one chain would wait on each addition)
    let mut acc = [[0f32; 8]; 4];
    let mut chunks = row.chunks_exact(32);
    for c in &mut chunks {
        for (j, a) in acc.iter_mut().enumerate() {
            let c: &[f32; 8] = c[8 * j..8 * j + 8].try_into().expect("8 values");
            for l in 0..8 {
                a[l] += c[l] * c[l];
            }
        }
    }
    for (i, x) in chunks.remainder().iter().enumerate() {
        acc[i / 8][i % 8] += x * x;
    }
    let lane = |l: usize| (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]);
    let sum_sq = ((lane(0) + lane(4)) + (lane(2) + lane(6))) + ((lane(1) + lane(5)) + (lane(3) + lane(7)));
    if sum_sq.is_finite() && sum_sq >= f32::MIN_POSITIVE {
        return sum_sq.sqrt();
    }
    row.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt() as f32
}

/// `out[i]` = [`row_norm`] of row `i` of `rows` (`d` columns each, `d > 0`): with AVX2 where
/// the CPU has it (the same bits).
fn row_norms(isa: Isa, rows: &[f32], d: usize, out: &mut [f32]) {
    #[inline(always)]
    fn all(rows: &[f32], d: usize, out: &mut [f32]) {
        for (o, row) in out.iter_mut().zip(rows.chunks_exact(d)) {
            *o = row_norm(row);
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn all_avx2(rows: &[f32], d: usize, out: &mut [f32]) {
        all(rows, d, out);
    }
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Baseline {
        // SAFETY: the kernels above the baseline are only picked on CPUs with AVX2.
        unsafe { all_avx2(rows, d, out) };
        return;
    }
    let _ = isa;
    all(rows, d, out);
}

/// The cosine of a row of length `norm` whose dot product with a unit query is `dot`: 0 for
/// a zero row, NaN for a row holding NaN (as gensim scores it; the searches leave NaN
/// scores out).
#[inline]
fn cosine_of(dot: f32, norm: f32) -> f32 {
    if norm > 0.0 {
        dot / norm
    } else if norm.is_nan() {
        f32::NAN
    } else {
        0.0
    }
}

/// Rows of a dense cosine scan whose dot products are taken in one go.
const COSINE_BLOCK: usize = 32;

/// The cosines of word rows with a few unit query vectors, for gensim's cosine queries
/// (`most_similar` on rows that are not unit vectors, `most_similar_cosmul`, `topn=None`).
/// Dense rows: the dot products by the search kernel (a block of rows at a time), each over
/// the row's length (kept after the first query, as gensim keeps its norms; 1 for the unit
/// rows of embeddings with norms, as the plain search scores them). Quantized rows: through
/// per-query lookup tables ([`quantized_cosine`]), never rebuilt.
enum Cosines<'a> {
    /// `lengths`: each word row's length, `None` for unit rows (taken as 1).
    Dense { mat: &'a [f32], d: usize, queries: Vec<f32>, nq: usize, lengths: Option<&'a [f32]>, isa: Isa },
    Quantized { m: usize, scorers: Vec<Box<dyn Fn(usize) -> f32 + Sync + 'a>> },
}

impl<'a> Cosines<'a> {
    fn new(emb: &'a Embeddings, queries: &[&[f32]]) -> Self {
        match &emb.storage {
            Storage::Array(a) => Cosines::Dense {
                mat: a.as_slice(),
                d: a.cols(),
                queries: queries.concat(),
                nq: queries.len(),
                lengths: (!emb.unit_rows()).then(|| emb.word_row_lengths()),
                isa: Isa::detect(),
            },
            Storage::Quantized(q) => Cosines::Quantized {
                m: q.n_subquantizers(),
                scorers: queries
                    .iter()
                    .map(|query| Box::new(quantized_cosine(q, query, emb.vocab.words_len())) as Box<dyn Fn(usize) -> f32 + Sync + 'a>)
                    .collect(),
            },
        }
    }

    /// Operations per row (to decide on parallelism).
    fn work_per_row(&self) -> usize {
        match self {
            Cosines::Dense { d, nq, .. } => d.saturating_mul(*nq),
            Cosines::Quantized { m, scorers } => scorers.len().saturating_mul(*m),
        }
    }

    /// `f(i, cosines)` for each word row `i` of `start..end`, in order.
    fn scan(&self, start: usize, end: usize, mut f: impl FnMut(usize, &[f32])) {
        match self {
            Cosines::Dense { mat, d, queries, nq, lengths, isa } if *nq == 1 && *d > 0 => {
                // one query: each dot product straight to `f` (no buffer)
                let length = |i: usize| lengths.map_or(1.0, |l| l[i]);
                kernel::dots_one(*isa, mat, *d, start, end, queries, |i, dot| f(i, &[cosine_of(dot, length(i))]));
            }
            Cosines::Dense { mat, d, queries, nq, lengths, isa } => {
                let (d, nq) = (*d, *nq);
                let mut dots = vec![0f32; COSINE_BLOCK * nq];
                let mut cos = vec![0f32; nq];
                let mut b0 = start;
                while b0 < end {
                    let b1 = (b0 + COSINE_BLOCK).min(end);
                    if d == 0 {
                        dots.fill(0.0);
                    } else {
                        kernel::dots(*isa, mat, d, b0, b1, queries, nq, &mut dots);
                    }
                    for (i, row_dots) in (b0..b1).zip(dots.chunks_exact(nq.max(1))) {
                        let norm = match lengths {
                            Some(l) => l[i],
                            None if d == 0 => 0.0,
                            None => 1.0,
                        };
                        for (c, &dot) in cos.iter_mut().zip(row_dots) {
                            *c = cosine_of(dot, norm);
                        }
                        f(i, &cos);
                    }
                    b0 = b1;
                }
            }
            Cosines::Quantized { scorers, .. } => {
                let mut cos = vec![0f32; scorers.len()];
                for i in start..end {
                    for (c, score) in cos.iter_mut().zip(scorers) {
                        *c = score(i);
                    }
                    f(i, &cos);
                }
            }
        }
    }
}

/// 3CosMul: the product of `(1 + cos) / 2` over the first `np` cosines over that product over
/// the others plus 1e-6 (in f64).
#[inline]
fn cosmul_score(cos: &[f32], np: usize) -> f32 {
    let shifted = |c: &f32| (1.0 + f64::from(*c)) / 2.0;
    let num: f64 = cos[..np].iter().map(shifted).product();
    let den: f64 = cos[np..].iter().map(shifted).product();
    (num / (den + 1e-6)) as f32
}

/// Reject queries of the wrong size or holding NaN / infinity.
fn check_queries(q: &[f32], d: usize, what: &str) -> Result<()> {
    if d == 0 {
        if !q.is_empty() {
            return Err(Error::argument(format!("{what} has {} values, but the embeddings have 0 dimensions", q.len())));
        }
        return Ok(());
    }
    if q.len() % d != 0 {
        return Err(Error::argument(format!("{what} has {} values, expected a multiple of {d} dimensions", q.len())));
    }
    if let Some(pos) = q.iter().position(|x| !x.is_finite()) {
        let (row, col) = (pos / d, pos % d);
        let kind = if q[pos].is_nan() { "NaN" } else { "infinity" };
        return Err(Error::argument(format!("{what} contains {kind} (row {row}, column {col})")));
    }
    Ok(())
}

/// Rows per parallel task of a dense scan (a few MB of matrix per task).
fn dense_block_rows(d: usize, nq: usize) -> usize {
    let bytes_per_row = (4 * d).max(4);
    let target = if nq == 1 { 4 << 20 } else { 1 << 20 };
    // a multiple of 3 (the AVX-512 tile) and 4 (the one-query tile)
    (target / bytes_per_row / 12).max(6) * 12
}

/// Scan word rows `0..n` in blocks of `block` rows: in parallel when the work is large
/// (one set of heaps per rayon fold, merged), else on the calling thread.
fn run_blocks<'a, N, F>(n: usize, work: usize, block: usize, new_tops: N, scan: F) -> Vec<TopK<'a>>
where
    N: Fn() -> Vec<TopK<'a>> + Sync + Send,
    F: Fn(&mut [TopK<'a>], usize, usize) + Sync + Send,
{
    let threads = rayon::current_num_threads();
    if work < PARALLEL_WORK || threads <= 1 || n <= block {
        let mut tops = new_tops();
        scan(&mut tops, 0, n);
        return tops;
    }
    let n_blocks = n.div_ceil(block);
    let min_len = (n_blocks / (threads * 4)).max(1);
    // an interruptible call (similar_batch) stops within a block of rows: the blocks left
    // are skipped, and the caller's next check raises (the answers are then not used)
    let token = crate::cancel::current();
    (0..n_blocks)
        .into_par_iter()
        .with_min_len(min_len)
        .fold(&new_tops, |mut tops, b| {
            if !crate::cancel::stopped(&token) {
                scan(&mut tops, b * block, ((b + 1) * block).min(n));
            }
            tops
        })
        .reduce(&new_tops, |mut a, b| {
            for (x, y) in a.iter_mut().zip(b) {
                x.merge(y);
            }
            a
        })
}

/// A bounded top-k: a binary heap whose root is the worst kept answer.
pub(crate) struct TopK<'a> {
    k: usize,
    heap: Vec<(f32, u32)>,
    /// The root's score once full; -inf before. A candidate below it is rejected at once.
    threshold: f32,
    /// The words, to break ties.
    words: &'a WordList,
    /// Sorted rows that are never answers.
    skip: &'a [usize],
}

impl<'a> TopK<'a> {
    pub(crate) fn new(k: usize, words: &'a WordList, skip: &'a [usize]) -> Self {
        TopK {
            k,
            heap: Vec::new(),
            threshold: f32::NEG_INFINITY,
            words,
            skip,
        }
    }

    /// The score a candidate needs to be considered: the worst kept score once `k`
    /// answers are kept, -inf before.
    #[inline]
    pub(crate) fn threshold(&self) -> f32 {
        self.threshold
    }

    /// Offer row `i` with `score`. NaN never enters.
    #[inline(always)]
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    pub(crate) fn offer(&mut self, i: usize, score: f32) {
        // `!(>=)` also rejects NaN.
        if !(score >= self.threshold) {
            return;
        }
        self.offer_slow(i as u32, score);
    }

    #[inline(never)]
    fn offer_slow(&mut self, i: u32, score: f32) {
        if self.k == 0 || self.skip.binary_search(&(i as usize)).is_ok() {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push((score, i));
            self.sift_up(self.heap.len() - 1);
            if self.heap.len() == self.k {
                self.threshold = self.heap[0].0;
            }
            return;
        }
        if !self.worse(self.heap[0], (score, i)) {
            return;
        }
        self.heap[0] = (score, i);
        self.sift_down(0);
        self.threshold = self.heap[0].0;
    }

    /// True if answer `a` is worse than `b`: a lower score, or the same score and a
    /// word that sorts later.
    #[inline]
    fn worse(&self, a: (f32, u32), b: (f32, u32)) -> bool {
        if a.0 != b.0 {
            return a.0 < b.0;
        }
        let wa = self.words.get(a.1 as usize).unwrap_or_default();
        let wb = self.words.get(b.1 as usize).unwrap_or_default();
        wa > wb || (wa == wb && a.1 > b.1)
    }

    fn sift_up(&mut self, mut pos: usize) {
        while pos > 0 {
            let parent = (pos - 1) / 2;
            if self.worse(self.heap[pos], self.heap[parent]) {
                self.heap.swap(pos, parent);
                pos = parent;
            } else {
                break;
            }
        }
    }

    fn sift_down(&mut self, mut pos: usize) {
        let len = self.heap.len();
        loop {
            let (l, r) = (2 * pos + 1, 2 * pos + 2);
            let mut worst = pos;
            if l < len && self.worse(self.heap[l], self.heap[worst]) {
                worst = l;
            }
            if r < len && self.worse(self.heap[r], self.heap[worst]) {
                worst = r;
            }
            if worst == pos {
                break;
            }
            self.heap.swap(pos, worst);
            pos = worst;
        }
    }

    /// Merge the answers of `other` (the same query over other rows) into `self`.
    fn merge(&mut self, other: TopK<'a>) {
        if self.heap.is_empty() {
            self.heap = other.heap;
            self.threshold = other.threshold;
            return;
        }
        for (s, i) in other.heap {
            self.offer(i as usize, s);
        }
    }

    /// The answers, best first.
    pub(crate) fn into_sorted(self) -> Vec<Neighbor> {
        let mut v = self.heap.clone();
        v.sort_unstable_by(|&a, &b| {
            if self.worse(a, b) {
                std::cmp::Ordering::Greater
            } else if self.worse(b, a) {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Equal
            }
        });
        v.into_iter()
            .map(|(score, i)| Neighbor {
                index: i as usize,
                score,
            })
            .collect()
    }
}

/// The cosine of quantized row `i` with the unit vector `query`, as a function of `i`: the
/// row's lookup-table score over the length of its rebuilt vector before its stored norm
/// ([`QuantizedStorage::code_norms`]); the stored norm cancels but for its sign, and a zero
/// norm or length (a zero row) scores 0.
fn quantized_cosine<'a>(q: &'a QuantizedStorage, query: &[f32], words: usize) -> impl Fn(usize) -> f32 + Sync + 'a {
    let (m, kc) = (q.n_subquantizers(), q.n_centroids());
    let tables = lookup_tables(q, query, 1);
    let lengths = q.code_norms(words);
    let (codes, norms) = (q.codes(), q.norms());
    move |i| {
        let sign = norms.map_or(1.0, |nr| if nr[i] > 0.0 { 1.0 } else if nr[i] < 0.0 { -1.0 } else { 0.0 });
        let len = lengths[i];
        if len > 0.0 && sign != 0.0 {
            sign * adc_score(&codes[i * m..(i + 1) * m], &tables, kc) / len
        } else if len.is_nan() || norms.is_some_and(|nr| nr[i].is_nan()) {
            f32::NAN // (a NaN centroid or norm: left out of the searches, as gensim ranks it)
        } else {
            0.0
        }
    }
}

/// Per query, the dot product of each query block with each centroid: `nq x m x k`.
/// With a projection P the query is projected once (`q·P`): a rebuilt row is `c·Pᵀ`
/// (times its norm), so `q·x = (q·P)·c`.
pub(crate) fn lookup_tables(q: &QuantizedStorage, queries: &[f32], nq: usize) -> Vec<f32> {
    let (d, m, kc) = (q.dims(), q.n_subquantizers(), q.n_centroids());
    let ds = d / m;
    let cent = q.centroids();
    let per = m * kc;
    let mut tables = vec![0f32; nq * per];
    let fill = |(table, query): (&mut [f32], &[f32])| {
        let mut projected = Vec::new();
        let qp: &[f32] = match q.projection() {
            Some(p) => {
                projected.resize(d, 0f32);
                for (j, &qj) in query.iter().enumerate() {
                    for (o, &pv) in projected.iter_mut().zip(&p[j * d..(j + 1) * d]) {
                        *o += qj * pv;
                    }
                }
                &projected
            }
            None => query,
        };
        for s in 0..m {
            let qb = &qp[s * ds..(s + 1) * ds];
            for c in 0..kc {
                let cb = &cent[(s * kc + c) * ds..(s * kc + c + 1) * ds];
                table[s * kc + c] = qb.iter().zip(cb).map(|(a, b)| a * b).sum();
            }
        }
    };
    if nq * per * ds >= PARALLEL_WORK {
        tables.par_chunks_mut(per).zip(queries.par_chunks_exact(d)).for_each(fill);
    } else {
        tables.chunks_mut(per).zip(queries.chunks_exact(d)).for_each(fill);
    }
    tables
}

/// The asymmetric-distance score of one row's `code` (before its norm): the sum of its
/// entries of `table` (`m x kc`) in four partial sums, in a fixed order. Every quantized
/// scan (the exact one below and the filtered one in [`crate::fastscan`]) scores a row with
/// this function, so they give the same bits.
#[inline(always)]
pub(crate) fn adc_score(code: &[u8], table: &[f32], kc: usize) -> f32 {
    // Four partial sums for instruction-level parallelism, in a fixed order.
    let mut acc = [0f32; 4];
    let mut sub = 0;
    for quad in code.chunks_exact(4) {
        for (j, &c) in quad.iter().enumerate() {
            acc[j] += table[(sub + j) * kc + usize::from(c)];
        }
        sub += 4;
    }
    for (j, &c) in code[sub..].iter().enumerate() {
        acc[j] += table[(sub + j) * kc + usize::from(c)];
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

/// Score quantized rows `start..end` against every query through its lookup table.
pub(crate) fn scan_quantized(q: &QuantizedStorage, start: usize, end: usize, tables: &[f32], tops: &mut [TopK<'_>]) {
    const INNER: usize = 2048;
    let (m, kc) = (q.n_subquantizers(), q.n_centroids());
    let per = m * kc;
    let codes = q.codes();
    let norms = q.norms();
    let mut s0 = start;
    while s0 < end {
        let s1 = (s0 + INNER).min(end);
        let block = &codes[s0 * m..s1 * m];
        for (qi, top) in tops.iter_mut().enumerate() {
            let table = &tables[qi * per..(qi + 1) * per];
            for (r, code) in block.chunks_exact(m).enumerate() {
                let row = s0 + r;
                let mut score = adc_score(code, table, kc);
                if let Some(n) = norms {
                    score *= n[row];
                }
                top.offer(row, score);
            }
        }
        s0 = s1;
    }
}

/// The dense dot-product kernel, compiled for the baseline and (on x86-64) for AVX2+FMA.
mod kernel {
    use super::TopK;

    /// Lanes of one accumulator: each dot product keeps 8 partial sums (lane `l` sums the
    /// products of dimensions `l, l+8, l+16, ...`), added up in a fixed order at the end.
    const LANES: usize = 8;

    /// Instruction set chosen at run time.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum Isa {
        Baseline,
        #[cfg(target_arch = "x86_64")]
        Avx2Fma,
        /// AVX-512F (with AVX2 and FMA): batches of 8 or more queries use the AVX-512
        /// kernel, fewer queries the AVX2 one; the scores are the same bit for bit.
        #[cfg(target_arch = "x86_64")]
        Avx512,
    }

    impl Isa {
        /// The best kernel this CPU runs. `VECFUSION_KERNEL=avx2` or `=baseline` picks a
        /// lesser one (for comparisons). The AVX2 and AVX-512 kernels give the same bits;
        /// the baseline on x86-64 multiplies then adds (no fused multiply-add without FMA
        /// hardware), so its scores may differ in the last bit.
        pub(crate) fn detect() -> Isa {
            static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
            *ISA.get_or_init(|| Isa::best(&std::env::var("VECFUSION_KERNEL").unwrap_or_default()))
        }

        fn best(wanted: &str) -> Isa {
            #[cfg(target_arch = "x86_64")]
            {
                let fma = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
                if fma && std::is_x86_feature_detected!("avx512f") && !matches!(wanted, "avx2" | "baseline") {
                    return Isa::Avx512;
                }
                if fma && wanted != "baseline" {
                    return Isa::Avx2Fma;
                }
            }
            let _ = wanted;
            Isa::Baseline
        }
    }

    /// How a product is added to an accumulator.
    trait Madd {
        fn madd(a: f32, b: f32, acc: f32) -> f32;
    }

    /// One rounding (`fma`): only where the CPU has it (else it would be a libm call;
    /// the tests use it so, as the reference of the AVX2 kernel).
    #[cfg_attr(not(any(test, target_arch = "aarch64")), allow(dead_code))]
    struct Fused;
    impl Madd for Fused {
        #[inline(always)]
        fn madd(a: f32, b: f32, acc: f32) -> f32 {
            a.mul_add(b, acc)
        }
    }

    /// Multiply, then add.
    #[allow(dead_code)]
    struct Separate;
    impl Madd for Separate {
        #[inline(always)]
        fn madd(a: f32, b: f32, acc: f32) -> f32 {
            a * b + acc
        }
    }

    /// aarch64 always has a fused multiply-add.
    #[cfg(target_arch = "aarch64")]
    type Native = Fused;
    #[cfg(not(target_arch = "aarch64"))]
    type Native = Separate;

    #[inline(always)]
    fn hsum(a: [f32; LANES]) -> f32 {
        ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
    }

    /// The `c`-th group of `LANES` values of `s` (`s.len() >= (c + 1) * LANES`).
    #[inline(always)]
    fn lanes(s: &[f32], c: usize) -> [f32; LANES] {
        let mut v = [0f32; LANES];
        v.copy_from_slice(&s[c * LANES..(c + 1) * LANES]);
        v
    }

    /// The last `d % LANES` values of `s` (`d` long), zero-padded to `LANES`
    /// (a constant-length loop, so that it compiles to a few moves, not a `memcpy`).
    #[inline(always)]
    fn tail(s: &[f32], d: usize) -> [f32; LANES] {
        let t = d - d % LANES;
        let mut v = [0f32; LANES];
        for (l, x) in v.iter_mut().enumerate() {
            if t + l < d {
                *x = s[t + l];
            }
        }
        v
    }

    /// Dot products of `R` rows with `Q` queries (every slice `d` long): `out[r][q]`.
    /// Each product is computed by the same operations whatever `R` and `Q` are: lane `l`
    /// accumulates dimensions `l, l + LANES, ...` (the tail zero-padded, which leaves the
    /// sums unchanged), then the lanes are added in a fixed order.
    #[inline(always)]
    fn tile<M: Madd, const R: usize, const Q: usize>(rows: [&[f32]; R], qs: [&[f32]; Q], d: usize) -> [[f32; Q]; R] {
        let n = d / LANES;
        let rows: [&[f32]; R] = std::array::from_fn(|r| &rows[r][..d]);
        let qs: [&[f32]; Q] = std::array::from_fn(|q| &qs[q][..d]);
        let mut acc = [[[0f32; LANES]; Q]; R];
        #[inline(always)]
        fn step<M: Madd, const R: usize, const Q: usize>(
            acc: &mut [[[f32; LANES]; Q]; R],
            rv: &[[f32; LANES]; R],
            qs: &[&[f32]; Q],
            load: impl Fn(&[f32]) -> [f32; LANES],
        ) {
            for q in 0..Q {
                let qv = load(qs[q]);
                for r in 0..R {
                    for l in 0..LANES {
                        acc[r][q][l] = M::madd(rv[r][l], qv[l], acc[r][q][l]);
                    }
                }
            }
        }
        for c in 0..n {
            let mut rv = [[0f32; LANES]; R];
            for r in 0..R {
                rv[r] = lanes(rows[r], c);
            }
            step::<M, R, Q>(&mut acc, &rv, &qs, |s| lanes(s, c));
        }
        if d % LANES != 0 {
            let mut rv = [[0f32; LANES]; R];
            for r in 0..R {
                rv[r] = tail(rows[r], d);
            }
            step::<M, R, Q>(&mut acc, &rv, &qs, |s| tail(s, d));
        }
        let mut out = [[0f32; Q]; R];
        for r in 0..R {
            for q in 0..Q {
                out[r][q] = hsum(acc[r][q]);
            }
        }
        out
    }

    /// A way of computing a tile of dot products (see [`tile`] for the contract).
    trait Tiles {
        fn tile<const R: usize, const Q: usize>(rows: [&[f32]; R], qs: [&[f32]; Q], d: usize) -> [[f32; Q]; R];
    }

    /// The portable kernel (vectorized by the compiler as it can).
    struct Portable<M>(std::marker::PhantomData<M>);
    impl<M: Madd> Tiles for Portable<M> {
        #[inline(always)]
        fn tile<const R: usize, const Q: usize>(rows: [&[f32]; R], qs: [&[f32]; Q], d: usize) -> [[f32; Q]; R] {
            tile::<M, R, Q>(rows, qs, d)
        }
    }

    /// The same computation as `Portable<Fused>`, written with AVX2/FMA intrinsics so
    /// that the accumulators surely live in registers. Bit-identical to `Portable<Fused>`:
    /// lane `l` of each accumulator takes the same fused multiply-adds in the same order,
    /// and the lanes are added in the same order as [`hsum`].
    #[cfg(target_arch = "x86_64")]
    struct Avx2Fma;

    #[cfg(target_arch = "x86_64")]
    impl Tiles for Avx2Fma {
        #[inline(always)]
        fn tile<const R: usize, const Q: usize>(rows: [&[f32]; R], qs: [&[f32]; Q], d: usize) -> [[f32; Q]; R] {
            use std::arch::x86_64::*;
            // SAFETY: `Avx2Fma` is only used by `scan_avx2_fma`, which is only called
            // after the CPU was found to support AVX2 and FMA; every load reads 8 floats
            // from a slice checked to hold them, or (the tail) is a masked load whose
            // enabled lanes lie inside the slice (masked-off lanes are not accessed).
            unsafe {
                #[inline(always)]
                unsafe fn load_tail(s: &[f32], d: usize) -> __m256 {
                    let t = d - d % LANES;
                    let rest = &s[t..d];
                    let n = rest.len() as i32;
                    // SAFETY (all three): the caller runs on a CPU with AVX2; lanes `0..n`
                    // of the load are inside `rest`, the others are masked off.
                    let lanes = unsafe { _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7) };
                    // all ones in lanes < n
                    let mask = unsafe { _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lanes) };
                    unsafe { _mm256_maskload_ps(rest.as_ptr(), mask) }
                }
                #[inline(always)]
                unsafe fn load(s: &[f32], c: usize) -> __m256 {
                    let v = &s[c * LANES..(c + 1) * LANES];
                    // SAFETY: `v` holds 8 floats.
                    unsafe { _mm256_loadu_ps(v.as_ptr()) }
                }
                let n = d / LANES;
                let rows: [&[f32]; R] = std::array::from_fn(|r| &rows[r][..d]);
                let qs: [&[f32]; Q] = std::array::from_fn(|q| &qs[q][..d]);
                let mut acc = [[_mm256_setzero_ps(); Q]; R];
                for c in 0..n {
                    let mut rv = [_mm256_setzero_ps(); R];
                    for r in 0..R {
                        rv[r] = load(rows[r], c);
                    }
                    for q in 0..Q {
                        let qv = load(qs[q], c);
                        for r in 0..R {
                            acc[r][q] = _mm256_fmadd_ps(rv[r], qv, acc[r][q]);
                        }
                    }
                }
                if d % LANES != 0 {
                    let mut rv = [_mm256_setzero_ps(); R];
                    for r in 0..R {
                        rv[r] = load_tail(rows[r], d);
                    }
                    for q in 0..Q {
                        let qv = load_tail(qs[q], d);
                        for r in 0..R {
                            acc[r][q] = _mm256_fmadd_ps(rv[r], qv, acc[r][q]);
                        }
                    }
                }
                let mut out = [[0f32; Q]; R];
                for r in 0..R {
                    for q in 0..Q {
                        // [a0+a4, a1+a5, a2+a6, a3+a7]
                        let b = _mm_add_ps(_mm256_castps256_ps128(acc[r][q]), _mm256_extractf128_ps::<1>(acc[r][q]));
                        // [b0+b2, b1+b3, ..]
                        let c = _mm_add_ps(b, _mm_movehl_ps(b, b));
                        // (b0+b2) + (b1+b3)
                        let e = _mm_add_ss(c, _mm_shuffle_ps::<0b01>(c, c));
                        out[r][q] = _mm_cvtss_f32(e);
                    }
                }
                out
            }
        }
    }

    /// Row-block size (rows of the matrix kept in cache while every query of a batch
    /// passes over them): about 128 KiB, a multiple of 3.
    fn inner_rows(d: usize) -> usize {
        ((32 * 1024 / d.max(1)) / 3 * 3).max(3)
    }

    /// Where the scan's dot products go: `put(query, row, dot)`.
    pub(crate) trait Sink {
        fn queries(&self) -> usize;
        fn put(&mut self, q: usize, row: usize, v: f32);
    }

    /// Each query's dot products offered to its top-k.
    impl Sink for [TopK<'_>] {
        #[inline(always)]
        fn queries(&self) -> usize {
            self.len()
        }
        #[inline(always)]
        fn put(&mut self, q: usize, row: usize, v: f32) {
            self[q].offer(row, v);
        }
    }

    /// The dot products of rows `start..` kept row by row: `out[(row - start) * nq + q]`.
    struct Dots<'o> {
        out: &'o mut [f32],
        start: usize,
        nq: usize,
    }

    impl Sink for Dots<'_> {
        #[inline(always)]
        fn queries(&self) -> usize {
            self.nq
        }
        #[inline(always)]
        fn put(&mut self, q: usize, row: usize, v: f32) {
            self.out[(row - self.start) * self.nq + q] = v;
        }
    }

    #[inline(always)]
    fn scan<T: Tiles, S: Sink + ?Sized>(mat: &[f32], d: usize, start: usize, end: usize, queries: &[f32], tops: &mut S) {
        let row = |i: usize| &mat[i * d..(i + 1) * d];
        let nq = tops.queries();
        if nq == 1 {
            let q = &queries[..d];
            let mut i = start;
            while i + 4 <= end {
                let s = T::tile::<4, 1>([row(i), row(i + 1), row(i + 2), row(i + 3)], [q], d);
                for (r, sr) in s.iter().enumerate() {
                    tops.put(0, i + r, sr[0]);
                }
                i += 4;
            }
            while i < end {
                tops.put(0, i, T::tile::<1, 1>([row(i)], [q], d)[0][0]);
                i += 1;
            }
            return;
        }
        let query = |j: usize| &queries[j * d..(j + 1) * d];
        let block = inner_rows(d);
        let mut b0 = start;
        while b0 < end {
            let b1 = (b0 + block).min(end);
            let mut j = 0;
            while j + 4 <= nq {
                let qs = [query(j), query(j + 1), query(j + 2), query(j + 3)];
                let mut i = b0;
                while i + 3 <= b1 {
                    let s = T::tile::<3, 4>([row(i), row(i + 1), row(i + 2)], qs, d);
                    for (r, sr) in s.iter().enumerate() {
                        for (q, &v) in sr.iter().enumerate() {
                            tops.put(j + q, i + r, v);
                        }
                    }
                    i += 3;
                }
                while i < b1 {
                    let s = T::tile::<1, 4>([row(i)], qs, d);
                    for (q, &v) in s[0].iter().enumerate() {
                        tops.put(j + q, i, v);
                    }
                    i += 1;
                }
                j += 4;
            }
            while j < nq {
                let q = query(j);
                let mut i = b0;
                while i + 4 <= b1 {
                    let s = T::tile::<4, 1>([row(i), row(i + 1), row(i + 2), row(i + 3)], [q], d);
                    for (r, sr) in s.iter().enumerate() {
                        tops.put(j, i + r, sr[0]);
                    }
                    i += 4;
                }
                while i < b1 {
                    tops.put(j, i, T::tile::<1, 1>([row(i)], [q], d)[0][0]);
                    i += 1;
                }
                j += 1;
            }
            b0 = b1;
        }
    }

    /// Queries per panel of the AVX-512 batch kernel (lanes of a register).
    const PANEL: usize = 16;

    /// Fewest queries for which the AVX-512 batch kernel is used.
    const AVX512_MIN_QUERIES: usize = 8;

    /// The queries of a search, as given (row-major) and, for the AVX-512 batch kernel,
    /// packed in panels of [`PANEL`] queries: dimension `k` of the panel's queries side by
    /// side (`k * PANEL + lane`), zero-padded, 64-byte aligned.
    pub(crate) struct Queries<'q> {
        rows: &'q [f32],
        d: usize,
        panels: Vec<f32>,
        off: usize,
    }

    impl<'q> Queries<'q> {
        /// `queries` holds `nq x d` values; packed only where `isa` will use the panels.
        pub(crate) fn new(isa: Isa, queries: &'q [f32], nq: usize, d: usize) -> Self {
            let rows = &queries[..nq * d];
            let mut q = Queries { rows, d, panels: Vec::new(), off: 0 };
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Avx512 && nq >= AVX512_MIN_QUERIES && d > 0 {
                let count = nq.div_ceil(PANEL);
                let mut buf = vec![0f32; count * d * PANEL + PANEL];
                let off = buf.as_ptr().align_offset(64).min(PANEL);
                for (j, row) in rows.chunks_exact(d).enumerate() {
                    let base = off + (j / PANEL) * d * PANEL + j % PANEL;
                    for (k, &v) in row.iter().enumerate() {
                        buf[base + k * PANEL] = v;
                    }
                }
                q.panels = buf;
                q.off = off;
            }
            let _ = isa;
            q
        }

        /// Panel `p` (`d * PANEL` values).
        #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
        fn panel(&self, p: usize) -> &[f32] {
            let n = self.d * PANEL;
            &self.panels[self.off + p * n..self.off + (p + 1) * n]
        }
    }

    /// Dot products of `R` rows (`rows[r * d..(r + 1) * d]`) with the 16 queries of
    /// `panel`: register `r` holds row `r`'s score with each query of the panel. Each dot
    /// product is computed exactly as [`tile`] does: 8 chains of fused multiply-adds (chain
    /// `c` over dimensions `c, c + 8, ...`), added in the order of [`hsum`].
    ///
    /// # Safety
    /// Only call on a CPU with AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn tile512<const R: usize>(rows: &[f32], d: usize, panel: &[f32]) -> [std::arch::x86_64::__m512; R] {
        use std::arch::x86_64::*;
        let rows = &rows[..R * d];
        let panel = &panel[..d * PANEL];
        // SAFETY: the caller guarantees AVX-512F; row reads are `rows[r * d + k]` with
        // `r < R`, `k < d`, panel loads read `panel[k * PANEL..(k + 1) * PANEL]` with `k < d`
        // (both lengths checked above).
        unsafe {
            let (rp, pp) = (rows.as_ptr(), panel.as_ptr());
            let mut acc = [[_mm512_setzero_ps(); LANES]; R];
            let full = d / LANES;
            for kb in 0..full {
                for c in 0..LANES {
                    let k = kb * LANES + c;
                    let q = _mm512_loadu_ps(pp.add(k * PANEL));
                    for r in 0..R {
                        acc[r][c] = _mm512_fmadd_ps(_mm512_set1_ps(*rp.add(r * d + k)), q, acc[r][c]);
                    }
                }
            }
            for c in 0..d % LANES {
                let k = full * LANES + c;
                let q = _mm512_loadu_ps(pp.add(k * PANEL));
                for r in 0..R {
                    acc[r][c] = _mm512_fmadd_ps(_mm512_set1_ps(*rp.add(r * d + k)), q, acc[r][c]);
                }
            }
            std::array::from_fn(|r| {
                let a = &acc[r];
                _mm512_add_ps(
                    _mm512_add_ps(_mm512_add_ps(a[0], a[4]), _mm512_add_ps(a[2], a[6])),
                    _mm512_add_ps(_mm512_add_ps(a[1], a[5]), _mm512_add_ps(a[3], a[7])),
                )
            })
        }
    }

    /// The AVX-512 batch scan: for each panel of 16 queries (kept in L1), every row of
    /// `start..end` (kept in L2 across panels) in tiles of 3 rows; a tile's scores are
    /// compared with the panel's thresholds in one go and offered only when one passes.
    ///
    /// # Safety
    /// Only call on a CPU with AVX-512F, AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn scan_avx512(mat: &[f32], d: usize, start: usize, end: usize, queries: &Queries<'_>, tops: &mut [TopK<'_>]) {
        const R: usize = 3;
        // rows per pass over the panels: about 1 MiB, so they stay in L2
        let block = ((1 << 20) / (4 * d.max(1))).max(R);
        let mut b0 = start;
        // Each block is first copied into this thread's buffer (2 MiB, huge pages: physically
        // contiguous, and warm in L2 after the copy), which every panel then reads. Measured
        // on 1M x 300 with 1000 queries: ~15% less CPU for a memory-mapped matrix (scattered
        // 4 KiB pages) and ~3% less for one in memory than reading the rows in place.
        thread_local! {
            static BLOCK_BUF: std::cell::RefCell<Option<crate::storage::AlignedBytes>> =
                const { std::cell::RefCell::new(None) };
        }
        BLOCK_BUF.with(|cell| {
            let mut cell = cell.borrow_mut();
            let need = block * d * 4;
            if cell.as_ref().is_none_or(|b| b.as_slice().len() < need) {
                *cell = crate::storage::AlignedBytes::zeroed(need.max(2 << 20), "query block buffer").ok();
            }
            let Some(buf) = cell.as_mut() else {
                // no buffer to be had (out of memory): the blocks are read where they lie
                while b0 < end {
                    let b1 = (b0 + block).min(end);
                    // SAFETY: forwarded from the caller; `mat` holds rows `b0..b1`.
                    unsafe { scan_avx512_block(mat, d, b0, b1, 0, queries, tops) };
                    b0 = b1;
                }
                return;
            };
            let buf: &mut [f32] = bytemuck::cast_slice_mut(&mut buf.as_mut_slice()[..need]);
            while b0 < end {
                let b1 = (b0 + block).min(end);
                let n = b1 - b0;
                buf[..n * d].copy_from_slice(&mat[b0 * d..b1 * d]);
                // SAFETY: forwarded from the caller; the buffer holds the block's rows.
                unsafe { scan_avx512_block(&buf[..n * d], d, 0, n, b0, queries, tops) };
                b0 = b1;
            }
        });
    }

    /// [`scan_avx512`] over one block of rows.
    ///
    /// # Safety
    /// Only call on a CPU with AVX-512F, AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn scan_avx512_block(
        mat: &[f32],
        d: usize,
        start: usize,
        end: usize,
        base: usize,
        queries: &Queries<'_>,
        tops: &mut [TopK<'_>],
    ) {
        use std::arch::x86_64::*;
        const R: usize = 3;
        let nq = tops.len();
        let mut scores = [[0f32; PANEL]; R];
        for p in 0..nq.div_ceil(PANEL) {
            let panel = queries.panel(p);
            let tops = &mut tops[p * PANEL..(p * PANEL + PANEL).min(nq)];
            // lanes past the last query never accept
            let mut thr = [f32::INFINITY; PANEL];
            for (t, top) in thr.iter_mut().zip(tops.iter()) {
                *t = top.threshold;
            }
            // SAFETY: AVX-512F is enabled here; `thr` holds 16 values.
            let mut t = unsafe { _mm512_loadu_ps(thr.as_ptr()) };
            let mut offer = |i: usize, n: usize, scores: &[[f32; PANEL]; R], t: &mut __m512| {
                for (r, row) in scores[..n].iter().enumerate() {
                    for (top, (&s, th)) in tops.iter_mut().zip(row.iter().zip(thr.iter_mut())) {
                        if s >= *th {
                            top.offer(base + i + r, s);
                            *th = top.threshold;
                        }
                    }
                }
                // SAFETY: as above.
                *t = unsafe { _mm512_loadu_ps(thr.as_ptr()) };
            };
            let mut i = start;
            while i + R <= end {
                // SAFETY: AVX-512F is enabled here; `R` rows of `d` values; stores write
                // 16 floats into a row of `scores`.
                unsafe {
                    let s = tile512::<R>(&mat[i * d..(i + R) * d], d, panel);
                    let hit = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(s[0], t)
                        | _mm512_cmp_ps_mask::<_CMP_GE_OQ>(s[1], t)
                        | _mm512_cmp_ps_mask::<_CMP_GE_OQ>(s[2], t);
                    if hit != 0 {
                        for (r, v) in s.iter().enumerate() {
                            _mm512_storeu_ps(scores[r].as_mut_ptr(), *v);
                        }
                        offer(i, R, &scores, &mut t);
                    }
                }
                i += R;
            }
            while i < end {
                // SAFETY: as above, one row.
                unsafe {
                    let s = tile512::<1>(&mat[i * d..(i + 1) * d], d, panel);
                    if _mm512_cmp_ps_mask::<_CMP_GE_OQ>(s[0], t) != 0 {
                        _mm512_storeu_ps(scores[0].as_mut_ptr(), s[0]);
                        offer(i, 1, &scores, &mut t);
                    }
                }
                i += 1;
            }
        }
    }

    /// # Safety
    /// Only call on a CPU with AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn scan_avx2_fma<S: Sink + ?Sized>(mat: &[f32], d: usize, start: usize, end: usize, queries: &[f32], tops: &mut S) {
        scan::<Avx2Fma, S>(mat, d, start, end, queries, tops);
    }

    fn scan_baseline<S: Sink + ?Sized>(mat: &[f32], d: usize, start: usize, end: usize, queries: &[f32], tops: &mut S) {
        scan::<Portable<Native>, S>(mat, d, start, end, queries, tops);
    }

    /// The dot products of rows `start..end` of `mat` (row-major, `d` columns) with each of
    /// the `nq` queries (`nq x d`, row-major): `out[(i - start) * nq + q]`, the same bits as
    /// [`scan_dense`] gives for them (the one-query-at-a-time tiles; no AVX-512 panels).
    pub(crate) fn dots(isa: Isa, mat: &[f32], d: usize, start: usize, end: usize, queries: &[f32], nq: usize, out: &mut [f32]) {
        assert!(out.len() >= (end - start) * nq);
        scan_into(isa, mat, d, start, end, queries, &mut Dots { out, start, nq });
    }

    /// `put(i, dot)` for each row `i` of `start..end` of `mat`, in order, with its dot
    /// product with the one `query` (the bits of [`dots`]).
    pub(crate) fn dots_one(isa: Isa, mat: &[f32], d: usize, start: usize, end: usize, query: &[f32], put: impl FnMut(usize, f32)) {
        scan_into(isa, mat, d, start, end, query, &mut OneQuery(put));
    }

    /// A sink of one query's dot products, row after row.
    struct OneQuery<F>(F);

    impl<F: FnMut(usize, f32)> Sink for OneQuery<F> {
        #[inline(always)]
        fn queries(&self) -> usize {
            1
        }
        #[inline(always)]
        fn put(&mut self, _q: usize, row: usize, v: f32) {
            (self.0)(row, v);
        }
    }

    /// [`scan_dense`]'s one-query-at-a-time tiles into any sink.
    fn scan_into<S: Sink + ?Sized>(isa: Isa, mat: &[f32], d: usize, start: usize, end: usize, queries: &[f32], sink: &mut S) {
        assert!(queries.len() == sink.queries() * d && mat.len() >= end * d);
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx512` and `Isa::Avx2Fma` are only produced by `Isa::best`
            // after the CPU was found to support AVX2 and FMA.
            Isa::Avx512 | Isa::Avx2Fma => unsafe { scan_avx2_fma(mat, d, start, end, queries, sink) },
            Isa::Baseline => scan_baseline(mat, d, start, end, queries, sink),
        }
    }

    /// Score rows `start..end` of `mat` (row-major, `d` columns) against every query
    /// (`tops.len()` of them) and offer each score to the query's top-k.
    pub(crate) fn scan_dense(
        isa: Isa,
        mat: &[f32],
        d: usize,
        start: usize,
        end: usize,
        queries: &Queries<'_>,
        tops: &mut [TopK<'_>],
    ) {
        assert!(queries.d == d && queries.rows.len() == tops.len() * d);
        let rows = queries.rows;
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx512` is only produced by `Isa::best` after the CPU was found
            // to support AVX-512F, AVX2 and FMA; the panels exist when `Queries::new` was
            // given this ISA and at least `AVX512_MIN_QUERIES` queries.
            Isa::Avx512 if !queries.panels.is_empty() => unsafe { scan_avx512(mat, d, start, end, queries, tops) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as below (AVX-512 implies AVX2 + FMA here).
            Isa::Avx512 => unsafe { scan_avx2_fma(mat, d, start, end, rows, tops) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx2Fma` is only produced by `Isa::detect` after the CPU was
            // found to support AVX2 and FMA.
            Isa::Avx2Fma => unsafe { scan_avx2_fma(mat, d, start, end, rows, tops) },
            Isa::Baseline => scan_baseline(mat, d, start, end, rows, tops),
        }
    }

    /// The AVX2 kernel gives bit for bit what the portable kernel with fused
    /// multiply-adds gives (here through libm's `fmaf`).
    #[cfg(all(test, target_arch = "x86_64"))]
    #[test]
    fn avx2_kernel_is_bit_identical_to_portable_fused() {
        if Isa::best("avx2") != Isa::Avx2Fma {
            return;
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        for d in [1usize, 7, 8, 9, 16, 45, 300] {
            let rows: Vec<f32> = (0..5 * d).map(|_| next()).collect();
            let qs: Vec<f32> = (0..4 * d).map(|_| next()).collect();
            let r = |i: usize| &rows[i * d..(i + 1) * d];
            let q = |j: usize| &qs[j * d..(j + 1) * d];
            let reference = Portable::<Fused>::tile::<3, 4>([r(0), r(1), r(2)], [q(0), q(1), q(2), q(3)], d);
            // SAFETY: AVX2 and FMA were detected above.
            let got = unsafe { avx2_tile_3x4([r(0), r(1), r(2)], [q(0), q(1), q(2), q(3)], d) };
            for (a, b) in reference.iter().flatten().zip(got.iter().flatten()) {
                assert_eq!(a.to_bits(), b.to_bits(), "d = {d}: {a} vs {b}");
            }
            let single = unsafe { avx2_tile_1x1(r(4), q(2), d) };
            assert_eq!(single.to_bits(), Portable::<Fused>::tile::<1, 1>([r(4)], [q(2)], d)[0][0].to_bits());
        }
    }

    #[cfg(all(test, target_arch = "x86_64"))]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2_tile_3x4(rows: [&[f32]; 3], qs: [&[f32]; 4], d: usize) -> [[f32; 4]; 3] {
        Avx2Fma::tile::<3, 4>(rows, qs, d)
    }

    #[cfg(all(test, target_arch = "x86_64"))]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2_tile_1x1(row: &[f32], q: &[f32], d: usize) -> f32 {
        Avx2Fma::tile::<1, 1>([row], [q], d)[0][0]
    }

    /// Every x86-64 kernel (the AVX-512 batch kernel, and the AVX2 kernels it hands small
    /// batches to) gives, through the whole scan, the bits of the portable kernel with fused
    /// multiply-adds, for any dimension, number of queries (partial panels) and row range.
    #[cfg(all(test, target_arch = "x86_64"))]
    #[test]
    fn every_x86_kernel_scores_like_portable_fused() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        let n = 41;
        let names: Vec<String> = (0..n).map(|i| format!("w{i:03}")).collect();
        let words = crate::vocab::WordList::new(names.iter().map(String::as_str)).unwrap();
        for d in [1usize, 7, 8, 9, 16, 45, 300] {
            for nq in [1usize, 3, 8, 15, 16, 17, 33, 40] {
                let mat: Vec<f32> = (0..n * d).map(|_| next()).collect();
                let qs: Vec<f32> = (0..nq * d).map(|_| next()).collect();
                for isa in available().into_iter().filter(|i| *i != Isa::Baseline) {
                    let queries = Queries::new(isa, &qs, nq, d);
                    let mut tops: Vec<TopK<'_>> = (0..nq).map(|_| TopK::new(n, &words, &[])).collect();
                    scan_dense(isa, &mat, d, 2, n, &queries, &mut tops);
                    for (j, top) in tops.into_iter().enumerate() {
                        let got = top.into_sorted();
                        assert_eq!(got.len(), n - 2);
                        for nb in got {
                            let row = &mat[nb.index * d..(nb.index + 1) * d];
                            let want = Portable::<Fused>::tile::<1, 1>([row], [&qs[j * d..(j + 1) * d]], d)[0][0];
                            assert_eq!(nb.score.to_bits(), want.to_bits(), "{isa:?} d={d} nq={nq} query {j} row {}", nb.index);
                        }
                    }
                }
            }
        }
    }

    /// Every available variant (for tests).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Baseline];
        #[cfg(target_arch = "x86_64")]
        for wanted in ["avx2", ""] {
            let isa = Isa::best(wanted);
            if !v.contains(&isa) {
                v.push(isa);
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{ArrayStorage, U8Data};
    use crate::vocab::Vocab;
    use std::sync::Arc;

    /// A small deterministic generator (xorshift64*), values in [-1, 1).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.next()).collect()
        }
    }

    fn words(n: usize) -> Vocab {
        let w: Vec<String> = (0..n).map(|i| format!("w{i:06}")).collect();
        Vocab::Simple(WordList::new(w.iter().map(String::as_str)).unwrap())
    }

    fn dense(n: usize, d: usize, seed: u64) -> Embeddings {
        let m = Rng(seed).vec(n * d);
        Embeddings::new(None, words(n), Storage::Array(ArrayStorage::new(m, n, d).unwrap()), None).unwrap()
    }

    /// Reference: f64 dot products with every row, best first, ties to the lower word.
    fn reference(rows: &[Vec<f32>], q: &[f32], k: usize, skip: &[usize]) -> Vec<(usize, f64)> {
        let mut s: Vec<(usize, f64)> = rows
            .iter()
            .enumerate()
            .filter(|(i, _)| !skip.contains(i))
            .map(|(i, r)| (i, r.iter().zip(q).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum()))
            .collect();
        s.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        s.truncate(k);
        s
    }

    fn rows_of(emb: &Embeddings) -> Vec<Vec<f32>> {
        let d = emb.dims();
        (0..emb.len())
            .map(|i| {
                let mut v = vec![0f32; d];
                emb.storage.row_into(i, &mut v);
                v
            })
            .collect()
    }

    fn unit(v: &[f32]) -> Vec<f32> {
        let mut v = v.to_vec();
        l2_normalize(&mut v);
        v
    }

    fn check(got: &[Neighbor], want: &[(usize, f64)], tol: f64) {
        assert_eq!(got.len(), want.len());
        if let Some(p) = got.iter().zip(want).position(|(g, w)| g.index != w.0) {
            panic!("answer {p}: row {} ({}), expected row {} ({})", got[p].index, got[p].score, want[p].0, want[p].1);
        }
        for (g, w) in got.iter().zip(want) {
            assert!((f64::from(g.score) - w.1).abs() <= tol, "{} vs {}", g.score, w.1);
        }
    }

    #[test]
    fn dense_matches_reference_for_many_shapes() {
        for (n, d) in [(1, 1), (5, 3), (17, 8), (100, 19), (3000, 64), (20_000, 37)] {
            let emb = dense(n, d, 42 + n as u64);
            let rows = rows_of(&emb);
            let mut rng = Rng(9);
            // every word only for small n, where f32 and f64 orders cannot disagree
            let ks = if n <= 100 { vec![1, 3, 10, n + 2] } else { vec![1, 3, 10] };
            for k in ks {
                let q = rng.vec(d);
                check(&emb.similar_to_vector(&q, k, &[]).unwrap(), &reference(&rows, &unit(&q), k, &[]), 1e-5);
                let w = emb.vocab.word(n / 2).unwrap().to_string();
                check(&emb.similar_to_word(&w, k, &[]).unwrap(), &reference(&rows, &rows[n / 2], k, &[n / 2]), 1e-5);
            }
        }
    }

    #[test]
    fn batch_is_bit_identical_to_single() {
        for (n, d, nq) in [(50, 5, 3), (2000, 24, 9), (30_000, 41, 6)] {
            let emb = dense(n, d, 7);
            let qs = Rng(11).vec(nq * d);
            let w = emb.batch_width(12);
            let (mut idx, mut sc) = (vec![0i64; nq * w], vec![0f32; nq * w]);
            emb.similar_batch_into(&qs, nq, 12, &mut idx, &mut sc).unwrap();
            for j in 0..nq {
                let single = emb.similar_to_vector(&qs[j * d..(j + 1) * d], 12, &[]).unwrap();
                assert_eq!(single.len(), w);
                for (p, nb) in single.iter().enumerate() {
                    assert_eq!(idx[j * w + p], nb.index as i64);
                    assert_eq!(sc[j * w + p].to_bits(), nb.score.to_bits());
                }
            }
        }
    }

    #[test]
    fn kernel_variants_agree() {
        let (n, d) = (257, 45);
        let emb = dense(n, d, 3);
        let Storage::Array(a) = &emb.storage else { unreachable!() };
        let Some(words) = emb.vocab.words() else { unreachable!() };
        let qs = Rng(5).vec(6 * d);
        let mut results = Vec::new();
        for isa in kernel::available() {
            let mut tops: Vec<TopK<'_>> = (0..6).map(|_| TopK::new(10, words, &[])).collect();
            kernel::scan_dense(isa, a.as_slice(), d, 0, n, &kernel::Queries::new(isa, &qs, 6, d), &mut tops);
            results.push(tops.into_iter().map(TopK::into_sorted).collect::<Vec<_>>());
        }
        let rows = rows_of(&emb);
        for r in &results {
            for (j, answer) in r.iter().enumerate() {
                check(answer, &reference(&rows, &qs[j * d..(j + 1) * d], 10, &[]), 1e-4);
            }
        }
    }

    #[test]
    fn quantized_with_projection_and_norms_matches_reconstruction() {
        let (n, d, m, k) = (300, 12, 4, 16);
        let mut rng = Rng(77);
        let projection = rng.vec(d * d);
        let centroids = rng.vec(m * k * (d / m));
        let norms: Vec<f32> = (0..n).map(|_| 1.0 + rng.next().abs()).collect();
        let codes: Vec<u8> = (0..n * m).map(|_| ((rng.next() + 1.0) * 8.0) as u8 % 16).collect();
        for (proj, nrm) in [(true, true), (true, false), (false, true), (false, false)] {
            let q = QuantizedStorage::new(
                proj.then(|| projection.clone()),
                centroids.clone(),
                nrm.then(|| norms.clone()),
                U8Data::Owned(Arc::new(codes.clone())),
                n,
                d,
                m,
                k,
            )
            .unwrap();
            let emb = Embeddings::new(None, words(n), Storage::Quantized(q), None).unwrap();
            let rows = rows_of(&emb);
            let query = rng.vec(d);
            check(&emb.similar_to_vector(&query, 10, &[]).unwrap(), &reference(&rows, &unit(&query), 10, &[]), 1e-4);
            check(&emb.similar_to_word("w000007", 10, &[3]).unwrap(), &reference(&rows, &rows[7], 10, &[3, 7]), 1e-4);
            let qs = rng.vec(5 * d);
            let (mut idx, mut sc) = (vec![0i64; 50], vec![0f32; 50]);
            emb.similar_batch_into(&qs, 5, 10, &mut idx, &mut sc).unwrap();
            for j in 0..5 {
                let single = emb.similar_to_vector(&qs[j * d..(j + 1) * d], 10, &[]).unwrap();
                assert_eq!(single.iter().map(|s| s.index as i64).collect::<Vec<_>>(), idx[j * 10..(j + 1) * 10]);
            }
        }
    }

    #[test]
    fn subword_rows_are_never_candidates() {
        let (n_words, d) = (5, 4);
        let w: Vec<String> = (0..n_words).map(|i| format!("word{i}")).collect();
        let vocab = Vocab::Subword(crate::vocab::SubwordVocab {
            words: WordList::new(w.iter().map(String::as_str)).unwrap(),
            min_n: 3,
            max_n: 6,
            indexer: crate::vocab::Indexer::Bucket { exponent: 4 },
            fasttext_ngrams: false,
        });
        let mut m = Rng(1).vec((n_words + 16) * d);
        // make the n-gram rows far better matches than any word row
        for x in &mut m[n_words * d..] {
            *x = 100.0;
        }
        let emb = Embeddings::new(None, vocab, Storage::Array(ArrayStorage::new(m, n_words + 16, d).unwrap()), None).unwrap();
        let got = emb.similar_to_vector(&[1.0; 4], 100, &[]).unwrap();
        assert_eq!(got.len(), n_words);
        assert!(got.iter().all(|g| g.index < n_words));
        // an unknown word is a query through its n-grams
        assert_eq!(emb.similar_to_word("unknown", 3, &[]).unwrap().len(), 3);
    }

    #[test]
    fn errors_and_edges() {
        let emb = dense(10, 3, 1);
        assert!(matches!(emb.similar_to_word("nope", 3, &[]), Err(Error::UnknownWord(w)) if w == "nope"));
        match emb.analogy("w000001", "x", "y", 3, [true; 3]) {
            Err(Error::UnknownWord(msg)) => {
                assert!(msg.contains("b (\"x\")") && msg.contains("c (\"y\")") && !msg.contains("w000001"), "{msg}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(emb.similar_to_vector(&[f32::NAN, 0.0, 0.0], 3, &[]), Err(Error::Argument(_))));
        assert!(matches!(emb.similar_to_vector(&[1.0, 0.0], 3, &[]), Err(Error::Argument(_))));
        assert!(emb.similar_to_vector(&[1.0, 0.0, 0.0], 0, &[]).unwrap().is_empty());
        // a zero query: every score is 0, the words in sorted order
        let zero = emb.similar_to_vector(&[0.0; 3], 4, &[]).unwrap();
        assert_eq!(zero.iter().map(|n| n.index).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert!(zero.iter().all(|n| n.score == 0.0));
        // skip and the analogy mask
        let all = emb.similar_to_vector(&[1.0, 2.0, 3.0], 10, &[]).unwrap();
        let skipped = emb.similar_to_vector(&[1.0, 2.0, 3.0], 10, &[all[0].index, 99]).unwrap();
        assert_eq!(skipped.len(), 9);
        assert_eq!(skipped[0], all[1]);
        let masked = emb.analogy("w000001", "w000002", "w000003", 10, [false; 3]).unwrap();
        assert_eq!(masked.len(), 10);
        let unmasked = emb.analogy("w000001", "w000002", "w000003", 10, [true; 3]).unwrap();
        assert_eq!(unmasked.len(), 7);
    }
}
