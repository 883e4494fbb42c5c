//! The `QuantizedStorage` class (dense storage is handed out as a NumPy view).

use std::sync::Arc;

use numpy::{PyArray1, PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyIndexError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyString};

use super::query::WideInt;
use super::views::dtype_kind;
use super::views;
use crate::embeddings::Embeddings;
use crate::storage::{QuantizedStorage, Storage};

/// `i` as a row of `n_rows` (negative: from the end), or IndexError.
fn checked_row(i: i128, n_rows: usize) -> PyResult<usize> {
    let j = if i < 0 { i + n_rows as i128 } else { i };
    if j < 0 || j >= n_rows as i128 {
        // (beyond 128 bits the number itself is not kept)
        let got = match i {
            i128::MIN => "an int of -2**127 or less".to_string(),
            i128::MAX => "an int of 2**127 - 1 or more".to_string(),
            _ => i.to_string(),
        };
        Err(PyIndexError::new_err(format!("row {got} out of range for {n_rows} rows")))
    } else {
        Ok(j as usize)
    }
}

/// A bool where a row number is wanted: numpy reads a bool scalar as a 0-d mask, Python as
/// 0 or 1; neither is meant here.
fn bool_row_error() -> PyErr {
    PyTypeError::new_err("rows must be ints or a boolean mask with one bool per row, not a bool")
}

/// One row number (a Python or numpy integer, any size), `None` for anything else (a
/// sequence); a bool scalar is a TypeError.
fn scalar_row(r: &Bound<'_, PyAny>) -> PyResult<Option<i128>> {
    if r.is_instance_of::<PyBool>() || dtype_kind(r).as_deref() == Some("b") && r.len().is_err() {
        return Err(bool_row_error());
    }
    if r.is_instance_of::<PyInt>() || (r.len().is_err() && r.hasattr("__index__")?) {
        return Ok(Some(r.extract::<WideInt>()?.0));
    }
    Ok(None)
}

/// A boolean mask of the wrong length (numpy's IndexError).
fn mask_error(len: usize, n_rows: usize) -> PyErr {
    PyIndexError::new_err(format!("boolean mask of {len} bools does not match the {n_rows} rows"))
}

/// The rows of a sequence or array of ints, or of a boolean mask (numpy's rule: one bool
/// per row, the rows where it is True).
fn row_list(r: &Bound<'_, PyAny>, n_rows: usize) -> PyResult<Vec<usize>> {
    let type_error = || PyTypeError::new_err("rows must be an int, a sequence of ints, a boolean mask or None");
    if r.is_instance_of::<PyString>() || r.is_instance_of::<PyBytes>() {
        return Err(type_error());
    }
    // a numpy array: read as one typed array, not item by item
    if let Some(kind) = dtype_kind(r) {
        match r.getattr("ndim")?.extract::<usize>()? {
            1 => {}
            // a numpy scalar that is no integer (a float, a str)
            0 => return Err(type_error()),
            _ => return Err(PyTypeError::new_err("rows must be a 1-D array")),
        }
        return match kind.as_str() {
            "b" => {
                let m = r.cast::<PyArray1<bool>>()?.readonly();
                if m.len() != n_rows {
                    return Err(mask_error(m.len(), n_rows));
                }
                Ok(m.as_array().iter().enumerate().filter_map(|(i, &b)| b.then_some(i)).collect())
            }
            "i" => {
                let a = r.call_method1("astype", ("int64",))?;
                let a = a.cast::<PyArray1<i64>>()?.readonly();
                a.as_array().iter().map(|&i| checked_row(i as i128, n_rows)).collect()
            }
            "u" => {
                let a = r.call_method1("astype", ("uint64",))?;
                let a = a.cast::<PyArray1<u64>>()?.readonly();
                a.as_array().iter().map(|&i| checked_row(i as i128, n_rows)).collect()
            }
            _ => Err(type_error()),
        };
    }
    let items: Vec<Bound<'_, PyAny>> = r.try_iter().map_err(|_| type_error())?.collect::<PyResult<_>>()?;
    // Python's bools and numpy's (`list(mask)` holds numpy.bool_ items)
    let is_bool = |x: &Bound<'_, PyAny>| x.is_instance_of::<PyBool>() || dtype_kind(x).as_deref() == Some("b");
    let n_bool = items.iter().filter(|x| is_bool(x)).count();
    if n_bool == items.len() && n_bool > 0 {
        if items.len() != n_rows {
            return Err(mask_error(items.len(), n_rows));
        }
        let mut rows = Vec::new();
        for (i, x) in items.iter().enumerate() {
            if x.is_truthy()? {
                rows.push(i);
            }
        }
        return Ok(rows);
    }
    if n_bool > 0 {
        return Err(bool_row_error());
    }
    items
        .iter()
        .map(|x| {
            if x.is_instance_of::<PyFloat>() || !(x.is_instance_of::<PyInt>() || x.hasattr("__index__")?) {
                return Err(type_error());
            }
            checked_row(x.extract::<WideInt>().map_err(|_| type_error())?.0, n_rows)
        })
        .collect()
}

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

    /// Rebuild rows: `rows` is an int, a sequence or array of ints (negative ints count from
    /// the end), a boolean mask of one bool per row (as in numpy), or None for all rows.
    #[pyo3(signature = (rows=None))]
    fn reconstruct<'py>(&self, py: Python<'py>, rows: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let q = self.q();
        let n_rows = q.rows();
        if let Some(r) = rows {
            if let Some(i) = scalar_row(r)? {
                let mut out = vec![0f32; q.dims()];
                q.reconstruct_into(checked_row(i, n_rows)?, &mut out);
                return Ok(PyArray1::from_vec(py, out).into_any());
            }
        }
        let idx: Vec<usize> = match rows {
            None => (0..n_rows).collect(),
            Some(r) => row_list(r, n_rows)?,
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
