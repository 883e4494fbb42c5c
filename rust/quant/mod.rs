//! Training product quantizers (PQ and OPQ) for embedding matrices.
//!
//! Pure math, no I/O: [`quantize`] turns an [`Embeddings`] with any storage into one with a
//! [`QuantizedStorage`] (finalfusion's QuantizedArray chunk). Multi-threaded with rayon; the
//! matrix products and the SVD use `faer` (pure Rust, no system BLAS/LAPACK).
//!
//! Conventions (FORMAT.md): the encoder sees `x·P` (P = the OPQ rotation), a row is rebuilt as
//! `concat(centroids[code]) · Pᵀ`, then scaled by its stored norm when rows were normalized.

pub mod kmeans;
pub mod linalg;
pub mod opq;
pub mod pq;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rayon::prelude::*;

use crate::embeddings::Embeddings;
use crate::error::{Error, Result};
use crate::storage::{QuantizedStorage, Storage, U8Data};
use linalg::Rng;

/// Shared progress counter of a training run, readable from another thread, with a
/// cancellation flag checked between iterations.
#[derive(Debug, Default)]
pub struct Progress {
    done: AtomicU64,
    total: AtomicU64,
    cancel: AtomicBool,
}

impl Progress {
    /// Units of work done so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Units of work of the whole run (known once the run has started).
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Ask the run to stop at the next check; it then fails with an argument error.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    pub(crate) fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(Error::argument("quantization cancelled"))
        } else {
            Ok(())
        }
    }
}

/// Parameters of [`quantize`].
#[derive(Clone, Debug)]
pub struct QuantizeParams {
    /// Subquantizers M (must divide the dimensions); `None`: [`default_subquantizers`].
    pub n_subquantizers: Option<usize>,
    /// Bits per code: 2^bits centroids per subquantizer, 1 to 8.
    pub bits: u32,
    /// Train an OPQ rotation.
    pub opq: bool,
    /// Lloyd iterations of k-means (and OPQ alternations).
    pub n_iterations: usize,
    /// k-means runs per subquantizer, keeping the best.
    pub n_attempts: usize,
    /// L2-normalize rows before training and store their norms in the chunk.
    pub normalize: bool,
    /// Training rows; `None`: 256 per centroid (faiss's default), at most all rows.
    pub sample: Option<usize>,
    pub seed: u64,
}

impl Default for QuantizeParams {
    fn default() -> Self {
        QuantizeParams {
            n_subquantizers: None,
            bits: 8,
            opq: true,
            n_iterations: 25,
            n_attempts: 1,
            normalize: true,
            sample: None,
            seed: 0,
        }
    }
}

/// Training rows used when no sample size is given: this many per centroid.
pub const POINTS_PER_CENTROID: usize = 256;

/// The default number of subquantizers: the largest divisor of `dims` not above `dims / 4`
/// (about 4 dimensions per one-byte code: 16x smaller than f32), at least 1.
pub fn default_subquantizers(dims: usize) -> usize {
    let target = (dims / 4).max(1);
    (1..=target).rev().find(|m| dims % m == 0).unwrap_or(1)
}

/// Why the default number of subquantizers is a poor choice for `dims`, or `None`.
///
/// When no divisor of `dims` lies near `dims / 4` (a prime such as 101, or 202 = 2 x 101),
/// the default falls far below it and each one-byte code then stands for many dimensions:
/// a coarse reconstruction the caller did not ask for. The note says so and names the
/// divisors on either side, so that the caller can pick `n_subquantizers` knowingly.
pub fn default_subquantizers_note(dims: usize) -> Option<String> {
    let target = (dims / 4).max(1);
    let m = default_subquantizers(dims);
    if m * 2 >= target {
        return None;
    }
    let above = (target + 1..=dims).find(|d| dims % d == 0).unwrap_or(dims);
    Some(format!(
        "no divisor of the {dims} dimensions lies near {target} (about 4 dimensions per subquantizer), \
         so the default n_subquantizers is {m}: {} dimensions per one-byte code, a coarse \
         reconstruction; pass n_subquantizers={m} to accept it, or n_subquantizers={above} \
         ({} per code) for a finer one",
        dims / m,
        dims / above
    ))
}

/// Most k-means iterations (and attempts) a quantizer is trained with.
pub const MAX_ITERATIONS: usize = 1_000_000;

/// Checked sizes of a run: (subquantizers, centroids, training rows).
pub fn check_params(p: &QuantizeParams, rows: usize, dims: usize) -> Result<(usize, usize, usize)> {
    if dims == 0 {
        return Err(Error::argument("cannot quantize embeddings with 0 dimensions"));
    }
    let m = p.n_subquantizers.unwrap_or_else(|| default_subquantizers(dims));
    if m == 0 {
        return Err(Error::argument("n_subquantizers must be at least 1"));
    }
    if dims % m != 0 {
        return Err(Error::argument(format!(
            "n_subquantizers={m} does not divide the {dims} dimensions (each subquantizer takes dims / M of them)"
        )));
    }
    if !(1..=8).contains(&p.bits) {
        return Err(Error::argument(format!(
            "bits={} is out of range: codes are u8, so bits must be 1 to 8",
            p.bits
        )));
    }
    let k = 1usize << p.bits;
    // (the bounds keep the counts of work done, `2 * m * iterations * attempts`, far from
    // overflowing, which skipped OPQ's rotation without a word at 2^63 iterations)
    if p.n_iterations == 0 || p.n_iterations > MAX_ITERATIONS {
        return Err(Error::argument(format!("n_iterations must be 1 to {MAX_ITERATIONS}, got {}", p.n_iterations)));
    }
    if p.n_attempts == 0 || p.n_attempts > MAX_ITERATIONS {
        return Err(Error::argument(format!("n_attempts must be 1 to {MAX_ITERATIONS}, got {}", p.n_attempts)));
    }
    if rows < k {
        return Err(Error::argument(format!(
            "bits={} means {k} centroids per subquantizer, more than the {rows} rows to train on",
            p.bits
        )));
    }
    let sample = match p.sample {
        Some(s) if s < k => {
            return Err(Error::argument(format!("sample={s} is smaller than the {k} centroids per subquantizer")))
        }
        Some(s) => s.min(rows),
        None => rows.min(POINTS_PER_CENTROID * k),
    };
    Ok((m, k, sample))
}

/// Where the time of a run went.
#[derive(Clone, Debug, Default)]
pub struct QuantizeStats {
    /// Normalization, sampling and training (k-means, OPQ).
    pub train_seconds: f64,
    /// Encoding every row.
    pub encode_seconds: f64,
    /// Rows the quantizer was trained on.
    pub sample_rows: usize,
}

/// Quantize a row-major `rows x dims` matrix (consumed: it is normalized in place).
pub fn quantize_matrix(
    x: Vec<f32>,
    rows: usize,
    dims: usize,
    p: &QuantizeParams,
    progress: &Progress,
) -> Result<QuantizedStorage> {
    quantize_matrix_with_stats(x, rows, dims, p, progress).map(|(q, _)| q)
}

/// [`quantize_matrix`], also returning timings.
pub fn quantize_matrix_with_stats(
    x: Vec<f32>,
    rows: usize,
    dims: usize,
    p: &QuantizeParams,
    progress: &Progress,
) -> Result<(QuantizedStorage, QuantizeStats)> {
    let start = std::time::Instant::now();
    let (m, k, n_sample) = check_params(p, rows, dims)?;
    if x.len() != rows * dims {
        return Err(Error::argument("matrix size is not rows x dims"));
    }
    if let Some(e) = non_finite_error(&x, dims, |_| None) {
        return Err(e);
    }
    train_checked(x, rows, dims, p, progress, start, (m, k, n_sample))
}

/// The error for the first NaN or infinity of the row-major matrix `x`, if it holds one, with
/// `who(row)` (the row's word) after it.
fn non_finite_error(x: &[f32], dims: usize, who: impl Fn(usize) -> Option<String>) -> Option<Error> {
    let at = x.iter().position(|v| !v.is_finite())?;
    let row = at / dims.max(1);
    Some(Error::argument(format!(
        "row {row} of the matrix holds {} (at column {}): NaN and infinity cannot be quantized{}",
        x[at],
        at % dims.max(1),
        who(row).map_or(String::new(), |w| format!(" ({w})"))
    )))
}

/// [`quantize_matrix_with_stats`] after its checks (parameters, size, finite values).
fn train_checked(
    mut x: Vec<f32>,
    rows: usize,
    dims: usize,
    p: &QuantizeParams,
    progress: &Progress,
    start: std::time::Instant,
    (m, k, n_sample): (usize, usize, usize),
) -> Result<(QuantizedStorage, QuantizeStats)> {
    let norms = p.normalize.then(|| {
        x.par_chunks_mut(dims)
            .map(crate::embeddings::l2_normalize)
            .collect::<Vec<f32>>()
    });
    if let Some(i) = norms.as_ref().and_then(|n| n.iter().position(|v| !v.is_finite())) {
        return Err(Error::argument(format!(
            "row {i}'s L2 norm exceeds float32's range: it cannot be stored (scale the matrix down)"
        )));
    }
    // Without normalization, train on the rows scaled by a power of two that brings the
    // longest to a length in (1/2, 1]: squared distances and OPQ's Xᵀ·X̂ neither overflow
    // (values near 1e19) nor underflow (near 1e-20) in f32. The scaling is exact, so codes
    // are those of the unscaled rows; the centroids are scaled back below.
    let unscale = if p.normalize { 1.0 } else { power_of_two_scale(&mut x, dims) };
    let rng = Rng::new(p.seed);
    let sample_idx = rng.fork(7).sample_indices(rows, n_sample);
    let owned_sample;
    let sample: &[f32] = if n_sample == rows {
        &x
    } else {
        owned_sample = sample_idx.iter().flat_map(|&i| &x[i * dims..(i + 1) * dims]).copied().collect::<Vec<_>>();
        &owned_sample
    };
    let encode_units = rows.div_ceil(pq::ENCODE_ROWS) as u64;
    let (projection, mut centroids) = if p.opq {
        let units = opq::progress_units(n_sample, m, p.n_iterations, p.n_attempts);
        progress.total.store(units + encode_units, Ordering::Relaxed);
        let o = opq::train(sample, n_sample, dims, m, k, p.n_iterations, p.n_attempts, &rng, progress)?;
        (Some(o.rotation), o.centroids)
    } else {
        let units = (m * p.n_iterations * p.n_attempts) as u64;
        progress.total.store(units + encode_units, Ordering::Relaxed);
        let c = pq::train(sample, n_sample, dims, m, k, p.n_iterations, p.n_attempts, None, &rng, progress)?;
        (None, c)
    };
    let train_seconds = start.elapsed().as_secs_f64();
    let start = std::time::Instant::now();
    let codes = pq::encode(&x, rows, dims, projection.as_deref(), &centroids, m, k, progress)?;
    let encode_seconds = start.elapsed().as_secs_f64();
    drop(x);
    if unscale != 1.0 {
        centroids.par_iter_mut().for_each(|c| *c = (f64::from(*c) * unscale) as f32);
    }
    let q = QuantizedStorage::new(projection, centroids, norms, U8Data::Owned(Arc::new(codes)), rows, dims, m, k)?;
    Ok((q, QuantizeStats { train_seconds, encode_seconds, sample_rows: n_sample }))
}

/// Scale the rows of `x` by the power of two 2^-e that brings the longest row's length into
/// (1/2, 1]; returns 2^e (1 when all rows are zero). Lengths and factors are f64: no overflow,
/// and multiplying by a power of two is exact (barring f32 underflow of values more than
/// 2^126 times smaller than the longest row).
fn power_of_two_scale(x: &mut [f32], dims: usize) -> f64 {
    let longest = x
        .par_chunks(dims.max(1))
        .map(|r| r.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>())
        .reduce(|| 0.0, f64::max)
        .sqrt();
    if longest == 0.0 || !longest.is_finite() {
        return 1.0;
    }
    let e = longest.log2().ceil() as i32;
    if e == 0 {
        return 1.0;
    }
    let down = 2f64.powi(-e);
    x.par_iter_mut().for_each(|v| *v = (f64::from(*v) * down) as f32);
    2f64.powi(e)
}

/// All rows of a storage as a row-major matrix (quantized rows are rebuilt).
pub fn dense_rows(storage: &Storage) -> Vec<f32> {
    match storage {
        Storage::Array(a) => a.as_slice().to_vec(),
        Storage::Quantized(q) => {
            let d = q.dims();
            let mut out = vec![0f32; q.rows() * d];
            const CHUNK: usize = 64;
            out.par_chunks_mut(CHUNK * d.max(1)).enumerate().for_each(|(c, rows)| {
                let n = rows.len() / d.max(1);
                let idx: Vec<Option<usize>> = (c * CHUNK..c * CHUNK + n).map(Some).collect();
                q.rows_into(&idx, rows);
            });
            out
        }
    }
}

/// Quantize the storage of `emb`: same vocabulary, metadata and norms, QuantizedArray storage.
pub fn quantize(emb: &Embeddings, p: &QuantizeParams, progress: &Progress) -> Result<Embeddings> {
    quantize_with_stats(emb, p, progress).map(|(e, _)| e)
}

/// [`quantize`], also returning timings.
pub fn quantize_with_stats(emb: &Embeddings, p: &QuantizeParams, progress: &Progress) -> Result<(Embeddings, QuantizeStats)> {
    let (rows, dims) = emb.storage.shape();
    let checked = check_params(p, rows, dims)?;
    let x = dense_rows(&emb.storage);
    // a matrix holding NaN or infinity: its first such row named with its word (here, where
    // the words are known; the matrix is scanned once)
    let who = |row| match emb.vocab.word(row) {
        Some(w) => Some(format!("the word {w:?}")),
        None => Some("an n-gram row".to_string()),
    };
    if let Some(e) = non_finite_error(&x, dims, who) {
        return Err(e);
    }
    let start = std::time::Instant::now();
    let (q, stats) = train_checked(x, rows, dims, p, progress, start, checked)?;
    let e = Embeddings::with_norms(emb.metadata.clone(), emb.vocab.clone(), Storage::Quantized(q), emb.norms.clone())?;
    Ok((e, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_subquantizers_divide_dims() {
        assert_eq!(default_subquantizers(300), 75);
        assert_eq!(default_subquantizers(100), 25);
        assert_eq!(default_subquantizers(50), 10);
        assert_eq!(default_subquantizers(3), 1);
        for d in 1..200 {
            assert_eq!(d % default_subquantizers(d), 0);
        }
    }

    #[test]
    fn awkward_dims_get_a_note_on_the_default() {
        // dims with a divisor near dims / 4: no note
        for d in [1, 2, 3, 4, 7, 8, 50, 64, 100, 128, 300, 768] {
            assert_eq!(default_subquantizers_note(d), None, "dims {d}");
        }
        let n = default_subquantizers_note(101).unwrap();
        assert!(n.contains("default n_subquantizers is 1: 101 dimensions"), "{n}");
        assert!(n.contains("n_subquantizers=101 (1 per code)"), "{n}");
        let n = default_subquantizers_note(202).unwrap();
        assert!(n.contains("is 2: 101 dimensions") && n.contains("n_subquantizers=101 (2 per code)"), "{n}");
        // 13: target 3, default 1 (13 per code); the next divisor is 13 itself
        assert!(default_subquantizers_note(13).unwrap().contains("n_subquantizers=13"));
    }

    #[test]
    fn bad_parameters_are_rejected_with_reasons() {
        let p = |f: fn(&mut QuantizeParams)| {
            let mut p = QuantizeParams::default();
            f(&mut p);
            p
        };
        let msg = |p: QuantizeParams, rows| check_params(&p, rows, 100).unwrap_err().to_string();
        assert!(msg(p(|p| p.n_subquantizers = Some(3)), 1000).contains("does not divide"));
        assert!(msg(p(|p| p.bits = 9), 1000).contains("bits=9"));
        assert!(msg(p(|p| p.bits = 0), 1000).contains("bits=0"));
        assert!(msg(p(|_| {}), 100).contains("256 centroids"));
        assert!(msg(p(|p| p.sample = Some(10)), 1000).contains("sample=10"));
        assert!(msg(p(|p| p.n_iterations = 0), 1000).contains("n_iterations"));
    }

    #[test]
    fn quantized_rows_match_reconstruction_convention() {
        // Clustered data with norms: after quantization, reconstruct_into gives back rows.
        let (rows, dims) = (300, 8);
        let mut rng = Rng::new(11);
        let protos: Vec<f32> = (0..4 * dims).map(|_| rng.gaussian() as f32).collect();
        let mut x = vec![0f32; rows * dims];
        for r in 0..rows {
            let c = r % 4;
            let scale = 1.0 + (r % 7) as f32;
            for j in 0..dims {
                x[r * dims + j] = protos[c * dims + j] * scale;
            }
        }
        for opq in [false, true] {
            let params = QuantizeParams { n_subquantizers: Some(2), bits: 2, opq, ..Default::default() };
            let q = quantize_matrix(x.clone(), rows, dims, &params, &Progress::default()).unwrap();
            let mut out = vec![0f32; dims];
            for r in 0..rows {
                q.reconstruct_into(r, &mut out);
                for j in 0..dims {
                    assert!((out[j] - x[r * dims + j]).abs() < 1e-3, "opq={opq} row {r}: {:?}", &out);
                }
            }
        }
    }
}
