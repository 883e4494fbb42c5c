//! The exception tree and the one conversion from the core error to Python.

use pyo3::create_exception;
use pyo3::exceptions::{
    PyException, PyFileNotFoundError, PyIsADirectoryError, PyKeyError, PyMemoryError, PyOSError, PyPermissionError, PyValueError,
};
use pyo3::prelude::*;

use crate::error::Error;

create_exception!(
    vecfusion._native,
    VecfusionError,
    PyException,
    "Base class of vecfusion's own errors."
);
create_exception!(
    vecfusion._native,
    FormatError,
    VecfusionError,
    "A file is malformed: corrupt, truncated, of an unknown chunk or version, or inconsistent. \
     Also a ValueError."
);

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        let msg = e.to_string();
        match e {
            Error::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
                std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(msg),
                std::io::ErrorKind::IsADirectory => PyIsADirectoryError::new_err(msg),
                _ => PyOSError::new_err(msg),
            },
            Error::Argument(_) => PyValueError::new_err(msg),
            Error::OutOfMemory { .. } => PyMemoryError::new_err(msg),
            Error::UnknownWord(w) => PyKeyError::new_err(w),
            Error::Interrupted => pyo3::exceptions::PyKeyboardInterrupt::new_err(msg),
            _ => FormatError::new_err(msg),
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("VecfusionError", py.get_type::<VecfusionError>())?;
    // A malformed file is also a bad value (as json.JSONDecodeError is a ValueError): code
    // written for other readers (embedding-reader, numpy's loaders) catches ValueError.
    let format_error = py.get_type::<FormatError>();
    format_error.setattr("__bases__", (py.get_type::<VecfusionError>(), py.get_type::<PyValueError>()))?;
    m.add("FormatError", format_error)?;
    Ok(())
}
