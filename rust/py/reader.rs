//! Native helpers of `vecfusion.EmbeddingReader` (python/vecfusion/reader.py):
//! npy header parsing and filling batch arrays, with the GIL released.

use std::path::PathBuf;

use numpy::PyReadwriteArray1;
use pyo3::prelude::*;

use crate::error::Error;
use crate::reader::{self, DType, NpyMatrix, Piece};

type HeaderTuple = (u64, u64, &'static str, bool, u64);

fn header_tuple(m: &NpyMatrix) -> HeaderTuple {
    (m.rows, m.dim, m.dtype.code(), m.big_endian, m.data_offset)
}

/// Size in bytes of the magic and header of a `.npy` file, from its first 12 bytes.
/// Errors name `name` when given.
#[pyfunction]
#[pyo3(signature = (prefix, name=None))]
pub fn npy_header_size(prefix: &[u8], name: Option<&str>) -> PyResult<u64> {
    Ok(reader::header_size(prefix).map_err(|e| match name {
        Some(n) => reader::in_file(e, n.as_ref()),
        None => e,
    })?)
}

/// Parse a `.npy` header: `(rows, dim, dtype, big_endian, data_offset)`.
///
/// `prefix` holds at least the header; `file_len` is the file's size. Errors name `name`.
#[pyfunction]
pub fn parse_npy_header(prefix: &[u8], file_len: u64, name: &str) -> PyResult<HeaderTuple> {
    let m = reader::parse_header(prefix, file_len).map_err(|e| reader::in_file(e, name.as_ref()))?;
    Ok(header_tuple(&m))
}

/// Read the headers of local `.npy` files in parallel; raises for the first bad file.
#[pyfunction]
#[pyo3(signature = (paths, threads=8))]
pub fn read_npy_headers(py: Python<'_>, paths: Vec<PathBuf>, threads: usize) -> PyResult<Vec<HeaderTuple>> {
    let results = crate::py::fork::detach(py, || reader::read_headers(&paths, threads));
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        out.push(header_tuple(&r?));
    }
    Ok(out)
}

/// Fill `out` (the bytes of a C-contiguous batch of `out_dtype`) from local files.
///
/// `pieces` are `(path, file_offset, src_bytes, out_offset)`; they are read by
/// `threads` threads in sub-pieces of about `chunk_bytes`.
#[pyfunction]
#[pyo3(signature = (out, out_dtype, pieces, src_dtype, big_endian, threads, chunk_bytes=4194304))]
#[allow(clippy::too_many_arguments)]
pub fn read_npy_pieces(
    py: Python<'_>,
    mut out: PyReadwriteArray1<'_, u8>,
    out_dtype: &str,
    pieces: Vec<(PathBuf, u64, u64, usize)>,
    src_dtype: &str,
    big_endian: bool,
    threads: usize,
    chunk_bytes: usize,
) -> PyResult<()> {
    let dd = DType::from_code(out_dtype)?;
    let sd = DType::from_code(src_dtype)?;
    let pieces: Vec<Piece> = pieces
        .into_iter()
        .map(|(path, file_offset, src_bytes, out_offset)| Piece {
            path,
            file_offset,
            src_bytes,
            out_offset,
        })
        .collect();
    let buf = out
        .as_slice_mut()
        .map_err(|_| Error::argument("the output array must be contiguous"))?;
    crate::py::fork::detach(py, || reader::read_pieces(&pieces, sd, big_endian, buf, dd, threads, chunk_bytes))?;
    Ok(())
}

/// Copy or convert `src` (raw elements of `src_dtype`) into the bytes of `out`
/// (of `out_dtype`) starting at byte `out_offset`.
#[pyfunction]
pub fn convert_into(
    py: Python<'_>,
    mut out: PyReadwriteArray1<'_, u8>,
    out_dtype: &str,
    out_offset: usize,
    src: &[u8],
    src_dtype: &str,
    big_endian: bool,
) -> PyResult<()> {
    let dd = DType::from_code(out_dtype)?;
    let sd = DType::from_code(src_dtype)?;
    let buf = out
        .as_slice_mut()
        .map_err(|_| Error::argument("the output array must be contiguous"))?;
    if src.len() % sd.size() != 0 {
        return Err(Error::argument(format!("{} bytes are not a whole number of {}", src.len(), sd.code())).into());
    }
    let len = src.len() / sd.size() * dd.size();
    let end = out_offset
        .checked_add(len)
        .filter(|e| *e <= buf.len())
        .ok_or_else(|| Error::argument("the converted data goes past the end of the output"))?;
    let dst = &mut buf[out_offset..end];
    crate::py::fork::detach(py, || reader::convert(src, sd, big_endian, dst, dd))?;
    Ok(())
}

/// Start reading `(path, byte offset, bytes)` ranges of local files into the page cache in a
/// background thread and return at once (Linux; a no-op elsewhere): the reader calls it for
/// the next batch before handing out the current one. A hint: nothing is reported.
#[pyfunction]
pub fn read_ahead(ranges: Vec<(PathBuf, u64, u64)>) {
    if !ranges.is_empty() {
        std::thread::spawn(move || reader::read_ahead(&ranges, &std::sync::atomic::AtomicBool::new(false)));
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(npy_header_size, m)?)?;
    m.add_function(wrap_pyfunction!(parse_npy_header, m)?)?;
    m.add_function(wrap_pyfunction!(read_npy_headers, m)?)?;
    m.add_function(wrap_pyfunction!(read_npy_pieces, m)?)?;
    m.add_function(wrap_pyfunction!(convert_into, m)?)?;
    m.add_function(wrap_pyfunction!(read_ahead, m)?)?;
    Ok(())
}
