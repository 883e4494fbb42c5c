//! The `QuantizedStorage` class (dense storage is handed out as a NumPy view).

use std::sync::Arc;

use numpy::{PyArray1, PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyIndexError, PyTypeError};
use pyo3::prelude::*;

use super::views;
use crate::embeddings::Embeddings;
use crate::storage::{QuantizedStorage, Storage};

/// Product-quantized storage: codes, centroids, optional projection and norms.
#[pyclass(name = "QuantizedStorage", module = "vecfusion._native", frozen)]
pub struct PyQuantizedStorage {
    pub(crate) inner: Arc<Embeddings>,
}

impl PyQuantizedStorage {
    fn q(&self) -> &QuantizedStorage {
        match &self.inner.storage {
            Storage::Quantized(q) => q,
            Storage::Array(_) => unreachable!("PyQuantizedStorage only wraps quantized storage"),
        }
    }
}

#[pymethods]
impl PyQuantizedStorage {
    /// (rows, dims)
    #[getter]
    fn shape(&self) -> (usize, usize) {
        (self.q().rows(), self.q().dims())
    }

    fn __len__(&self) -> usize {
        self.q().rows()
    }

    /// Number of subquantizers.
    #[getter]
    fn n_subquantizers(&self) -> usize {
        self.q().n_subquantizers()
    }

    /// Centroids per subquantizer.
    #[getter]
    fn n_centroids(&self) -> usize {
        self.q().n_centroids()
    }

    /// True if the codes are memory-mapped.
    #[getter]
    fn mmapped(&self) -> bool {
        self.q().is_mapped()
    }

    /// How a row is rebuilt: ``"concatenation"`` (no projection), ``"centroid table"``
    /// (centroids multiplied by their block of Pᵀ at load; a row is M vector additions) or
    /// ``"product"`` (concatenated centroids times Pᵀ, for quantizers whose table would not
    /// fit in half the last-level cache).
    #[getter]
    fn rebuild_method(&self) -> &'static str {
        self.q().rebuild_method()
    }

    /// Rebuild rows: `rows` is an int, a sequence or array of ints, or None for all rows.
    #[pyo3(signature = (rows=None))]
    fn reconstruct<'py>(&self, py: Python<'py>, rows: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let q = self.q();
        let n_rows = q.rows();
        let check = |i: i64| -> PyResult<usize> {
            let j = if i < 0 { i + n_rows as i64 } else { i };
            if j < 0 || j >= n_rows as i64 {
                Err(PyIndexError::new_err(format!("row {i} out of range for {n_rows} rows")))
            } else {
                Ok(j as usize)
            }
        };
        if let Some(r) = rows {
            if let Ok(i) = r.extract::<i64>() {
                let mut out = vec![0f32; q.dims()];
                q.reconstruct_into(check(i)?, &mut out);
                return Ok(PyArray1::from_vec(py, out).into_any());
            }
        }
        let idx: Vec<usize> = match rows {
            None => (0..n_rows).collect(),
            Some(r) => {
                let v: Vec<i64> = r
                    .extract()
                    .map_err(|_| PyTypeError::new_err("rows must be an int, a sequence of ints or None"))?;
                v.into_iter().map(check).collect::<PyResult<_>>()?
            }
        };
        let dims = q.dims();
        let out = PyArray2::<f32>::zeros(py, [idx.len(), dims], false);
        {
            let mut rw = out.readwrite();
            let s = rw.as_slice_mut().map_err(|e| PyTypeError::new_err(e.to_string()))?;
            if dims > 0 {
                crate::py::fork::detach(py, || {
                    use rayon::prelude::*;
                    const CHUNK: usize = 64;
                    s.par_chunks_mut(CHUNK * dims).zip(idx.par_chunks(CHUNK)).for_each(|(o, rows)| {
                        let rows: Vec<Option<usize>> = rows.iter().copied().map(Some).collect();
                        q.rows_into(&rows, o);
                    });
                });
            }
        }
        Ok(out.into_any())
    }

    /// The codes, a read-only uint8 array (rows, n_subquantizers).
    #[getter]
    fn codes<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyArray2<u8>>> {
        let q = slf.get().q();
        views::readonly_2d(slf.clone().into_any(), q.codes(), q.rows(), q.n_subquantizers())
    }

    /// The centroids, float32 (n_subquantizers, n_centroids, dims / n_subquantizers).
    #[getter]
    fn centroids<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let q = slf.get().q();
        let flat = views::readonly_2d(slf.clone().into_any(), q.centroids(), q.n_subquantizers() * q.n_centroids(), q.dims() / q.n_subquantizers())?;
        let shape = (q.n_subquantizers(), q.n_centroids(), q.dims() / q.n_subquantizers());
        let _ = flat.shape();
        flat.call_method1("reshape", (shape,))
    }

    /// The projection matrix (dims, dims), or None.
    #[getter]
    fn projection<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<Bound<'py, PyArray2<f32>>>> {
        let q = slf.get().q();
        q.projection()
            .map(|p| views::readonly_2d(slf.clone().into_any(), p, q.dims(), q.dims()))
            .transpose()
    }

    /// Per-row norms of the quantized rows, or None.
    #[getter]
    fn norms<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<Bound<'py, PyArray1<f32>>>> {
        let q = slf.get().q();
        q.norms().map(|n| views::readonly_1d(slf.clone().into_any(), n)).transpose()
    }

    fn __repr__(&self) -> String {
        let q = self.q();
        format!(
            "QuantizedStorage(rows={}, dims={}, subquantizers={}, centroids={}, projection={}, norms={}, mmap={})",
            q.rows(),
            q.dims(),
            q.n_subquantizers(),
            q.n_centroids(),
            q.projection().is_some(),
            q.norms().is_some(),
            q.is_mapped()
        )
    }
}
