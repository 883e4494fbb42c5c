//! The only place where NumPy arrays borrow memory owned by Rust.
//!
//! A view is created with `borrow_from_array`, its `base` is a Python object that
//! keeps the Rust data (an `Arc`) alive, and it is made read-only immediately.

use numpy::ndarray::{ArrayView1, ArrayView2};
use numpy::{PyArray1, PyArray2};
use pyo3::prelude::*;
use pyo3::types::PyDict;

fn set_readonly(arr: &Bound<'_, PyAny>) -> PyResult<()> {
    let kwargs = PyDict::new(arr.py());
    kwargs.set_item("write", false)?;
    arr.call_method("setflags", (), Some(&kwargs))?;
    Ok(())
}

/// A read-only 2-D view of `data` (`rows x cols`), kept alive by `owner`.
///
/// `data` must be memory that `owner` keeps alive and unchanged for as long as `owner` lives.
pub fn readonly_2d<'py, T: numpy::Element>(
    owner: Bound<'py, PyAny>,
    data: &[T],
    rows: usize,
    cols: usize,
) -> PyResult<Bound<'py, PyArray2<T>>> {
    // (numpy returns no array, which `borrow_from_array` does not expect, for shapes whose
    // bytes exceed isize::MAX, counted one dimension at a time: even with no columns)
    if std::mem::size_of::<T>().checked_mul(rows).and_then(|b| b.checked_mul(cols.max(1))).is_none_or(|b| b > isize::MAX as usize) {
        return Err(pyo3::exceptions::PyValueError::new_err(format!("a {rows} x {cols} array is larger than numpy can make")));
    }
    let view = ArrayView2::from_shape((rows, cols), data)
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
    // SAFETY: `owner` holds an `Arc` of the buffer behind `data` (an owned vector or a
    // read-only memory map); it becomes the array's base, so the memory outlives the array.
    // The buffer is never written while shared, and the array is made read-only below.
    let arr = unsafe { PyArray2::borrow_from_array(&view, owner) };
    set_readonly(arr.as_any())?;
    Ok(arr)
}

/// A read-only 1-D view of `data`, kept alive by `owner` (same contract as [`readonly_2d`]).
pub fn readonly_1d<'py, T: numpy::Element>(owner: Bound<'py, PyAny>, data: &[T]) -> PyResult<Bound<'py, PyArray1<T>>> {
    let view = ArrayView1::from(data);
    // SAFETY: as in `readonly_2d`.
    let arr = unsafe { PyArray1::borrow_from_array(&view, owner) };
    set_readonly(arr.as_any())?;
    Ok(arr)
}

/// numpy's kind letter of an array's or a numpy scalar's dtype ("b", "i", "u", "f", ...), or
/// `None` for anything without a dtype.
pub(crate) fn dtype_kind(x: &Bound<'_, PyAny>) -> Option<String> {
    x.getattr("dtype").and_then(|d| d.getattr("kind")).and_then(|k| k.extract::<String>()).ok()
}
