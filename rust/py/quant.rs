//! `Embeddings.quantize`: PQ / OPQ training in Rust with the GIL released; progress is
//! polled from a shared counter and reported to Python between short sleeps.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use super::embeddings::PyEmbeddings;
use pyo3::types::PyDict;

use crate::quant::{quantize_with_stats, Progress, QuantizeParams};

/// An int parameter of `quantize` that is no bool (`bits=True` meant 1 bit; a bool is an
/// int to Python, never a count here). The argument's name comes with the error as a note.
#[derive(Clone, Copy)]
struct Count(i128);

impl<'a, 'py> FromPyObject<'a, 'py> for Count {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if obj.is_instance_of::<pyo3::types::PyBool>() {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!("expected an int, got the bool {}", obj.str()?)));
        }
        match obj.extract::<i128>() {
            Ok(v) => Ok(Count(v)),
            // every count here has a small bound: a number beyond 128 bits is out of range
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyOverflowError>(obj.py()) => {
                Err(PyValueError::new_err(format!("{} is out of range", obj.str()?)))
            }
            Err(e) => Err(e),
        }
    }
}

fn non_negative(name: &str, v: i128) -> PyResult<usize> {
    if v < 0 {
        return Err(PyValueError::new_err(format!("{name}={v} must not be negative")));
    }
    usize::try_from(v).map_err(|_| PyValueError::new_err(format!("{name}={v} is out of range")))
}

/// How progress is shown: nothing, a callable `(done, total)`, or a bar object from
/// `vecfusion._progress` (tqdm when installed).
enum Reporter {
    None,
    Callback(Py<PyAny>),
    Bar(Py<PyAny>),
}

impl Reporter {
    fn report(&self, py: Python<'_>, done: u64, total: u64) -> PyResult<()> {
        match self {
            Reporter::None => Ok(()),
            Reporter::Callback(f) => f.call1(py, (done, total)).map(drop),
            Reporter::Bar(b) => b.call_method1(py, "update_to", (done, total)).map(drop),
        }
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        match self {
            Reporter::Bar(b) => b.call_method0(py, "close").map(drop),
            _ => Ok(()),
        }
    }
}

#[pymethods]
impl PyEmbeddings {
    /// Product-quantize the storage (PQ, or OPQ with a learned rotation).
    ///
    /// Returns new Embeddings with a QuantizedArray storage (finalfusion's chunk); the
    /// vocabulary, metadata and norms are kept. ``n_subquantizers`` (M) must divide ``dims``;
    /// default: the largest divisor of ``dims`` not above ``dims / 4`` (75 for 300 dims;
    /// a UserWarning when no divisor lies near it, as for 101 dims, where it is 1).
    /// Each subquantizer has ``2**bits`` centroids (bits 1 to 8: one u8 code per
    /// subquantizer). ``n_iterations`` Lloyd steps of k-means (k-means++ init, empty
    /// clusters split), best of ``n_attempts`` runs; with ``opq`` the rotation is
    /// fitted by ``2 * n_iterations`` alternations of PQ training and the orthogonal Procrustes
    /// update (50 by default).
    /// ``normalize`` L2-normalizes rows before training and stores their norms in the chunk.
    /// ``sample``: training rows (default 256 per centroid, like faiss; all rows at most).
    /// ``seed``: the random seed (0 to 2**64 - 1); the same seed gives the same codes.
    /// ``progress``: True/None for a bar (tqdm when installed), False for none, or a
    /// callable ``(done, total)`` called about every 0.1 s. Bad parameters raise ValueError.
    /// ``stats``: a dict to fill with ``train_seconds``, ``encode_seconds``, ``sample_rows``.
    /// The work runs in Rust with the GIL released; Ctrl-C cancels it.
    #[pyo3(signature = (n_subquantizers=None, bits=Count(8), opq=true, n_iterations=Count(25), n_attempts=Count(1),
                        normalize=true, sample=None, seed=Count(0), progress=None, stats=None),
               text_signature = "(self, /, n_subquantizers=None, bits=8, opq=True, n_iterations=25, n_attempts=1, normalize=True, sample=None, seed=0, progress=True, stats=None)")]
    #[allow(clippy::too_many_arguments)]
    fn quantize(
        &self,
        py: Python<'_>,
        n_subquantizers: Option<Count>,
        bits: Count,
        opq: bool,
        n_iterations: Count,
        n_attempts: Count,
        normalize: bool,
        sample: Option<Count>,
        seed: Count,
        progress: Option<Bound<'_, PyAny>>,
        stats: Option<Bound<'_, PyDict>>,
    ) -> PyResult<PyEmbeddings> {
        let (n_subquantizers, bits, n_iterations, n_attempts) = (n_subquantizers.map(|c| c.0), bits.0, n_iterations.0, n_attempts.0);
        let (sample, seed) = (sample.map(|c| c.0), seed.0);
        let seed = u64::try_from(seed)
            .map_err(|_| PyValueError::new_err(format!("seed must be an integer from 0 to 2**64 - 1, got {seed}")))?;
        let params = QuantizeParams {
            n_subquantizers: n_subquantizers.map(|m| non_negative("n_subquantizers", m)).transpose()?,
            bits: u32::try_from(bits.clamp(0, 64)).unwrap_or(64),
            opq,
            n_iterations: non_negative("n_iterations", n_iterations)?,
            n_attempts: non_negative("n_attempts", n_attempts)?,
            normalize,
            sample: sample.map(|s| non_negative("sample", s)).transpose()?,
            seed,
        };
        if !(0..=64).contains(&bits) {
            return Err(PyValueError::new_err(format!(
                "bits={bits} is out of range: codes are u8, so bits must be 1 to 8"
            )));
        }
        let (rows, dims) = self.inner.storage.shape();
        crate::quant::check_params(&params, rows, dims)?;
        if params.n_subquantizers.is_none() {
            if let Some(note) = crate::quant::default_subquantizers_note(dims) {
                let msg = std::ffi::CString::new(note).map_err(|e| PyValueError::new_err(e.to_string()))?;
                PyErr::warn(py, &py.get_type::<pyo3::exceptions::PyUserWarning>(), &msg, 1)?;
            }
        }
        // None (the default) means True: a bar.
        let reporter = match progress {
            Some(p) if p.is_callable() => Reporter::Callback(p.unbind()),
            // a bool (numpy's too); any other value is refused rather than read as truthy
            // (`progress="off"` would draw a bar)
            Some(p) if !p.extract::<bool>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "progress must be True, False, None or a callable (done, total), got {} of type {}",
                    p.repr().map_or_else(|_| "?".to_string(), |r| r.to_string()),
                    p.get_type().name().map_or_else(|_| "?".to_string(), |n| n.to_string())
                ))
            })? => Reporter::None,
            _ => {
                let bar = py.import("vecfusion._progress")?.call_method1("bar", ("quantize",))?;
                Reporter::Bar(bar.unbind())
            }
        };
        let emb = Arc::clone(&self.inner);
        let state = Progress::default();
        let mut py_err: Option<PyErr> = None;
        // (plain detach: this thread only polls; the worker below runs the training in the
        // process's pool, so that in a forked child a one-thread pool is not taken by the poll)
        let result = py.detach(|| {
            std::thread::scope(|s| {
                let worker = s.spawn(|| crate::py::fork::in_pool(|| quantize_with_stats(&emb, &params, &state)));
                let mut last = Instant::now();
                while !worker.is_finished() {
                    std::thread::sleep(Duration::from_millis(5));
                    if last.elapsed() < Duration::from_millis(100) {
                        continue;
                    }
                    last = Instant::now();
                    Python::attach(|py| {
                        let r = py.check_signals().and_then(|_| reporter.report(py, state.done(), state.total()));
                        if let Err(e) = r {
                            if py_err.is_none() {
                                py_err = Some(e);
                            }
                            state.cancel();
                        }
                    });
                }
                worker.join()
            })
        });
        let result = match result {
            Ok(r) => r,
            Err(_) => return Err(PyValueError::new_err("quantization failed: a worker thread panicked")),
        };
        if let Some(e) = py_err {
            let _ = reporter.close(py);
            return Err(e);
        }
        let (mut q, st) = result?;
        // the metadata as it is now (it may have been reassigned since loading)
        q.metadata = self.metadata_text();
        if let Some(d) = stats {
            d.set_item("train_seconds", st.train_seconds)?;
            d.set_item("encode_seconds", st.encode_seconds)?;
            d.set_item("sample_rows", st.sample_rows)?;
        }
        let total = state.total();
        reporter.report(py, total, total)?;
        reporter.close(py)?;
        Ok(PyEmbeddings::from_rust(q))
    }
}
