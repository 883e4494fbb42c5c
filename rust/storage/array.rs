//! Dense f32 matrices, owned or memory-mapped.

use std::io::Write;
use std::sync::Arc;

use super::FileBytes;
use crate::error::{Error, Result};
use crate::format::{checked_mul, f32s_from_le, padding, ByteReader, ChunkId, PosWriter, TYPE_F32};

/// The numbers of a dense matrix.
#[derive(Clone)]
pub enum F32Data {
    /// Owned values.
    Owned(Arc<Vec<f32>>),
    /// Values inside a file buffer (usually a memory map), `len` floats from byte `offset`.
    Mapped { bytes: FileBytes, offset: usize, len: usize },
}

impl std::fmt::Debug for F32Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            F32Data::Owned(v) => write!(f, "Owned({} floats)", v.len()),
            F32Data::Mapped { offset, len, .. } => write!(f, "Mapped({len} floats at {offset})"),
        }
    }
}

impl F32Data {
    /// Values inside `bytes` from `offset`; checks bounds and alignment.
    pub fn mapped(bytes: FileBytes, offset: usize, len: usize) -> Result<Self> {
        let data = bytes.as_slice();
        let nbytes = len.checked_mul(4).ok_or(Error::Overflow("matrix size"))?;
        let end = offset.checked_add(nbytes).ok_or(Error::Overflow("matrix size"))?;
        if end > data.len() {
            return Err(Error::Truncated {
                what: "matrix",
                offset: offset as u64,
                need: nbytes as u64,
                have: data.len().saturating_sub(offset) as u64,
            });
        }
        if (data.as_ptr() as usize + offset) % std::mem::align_of::<f32>() != 0 || cfg!(target_endian = "big") {
            return Err(Error::invalid("matrix", format!("data at offset {offset} is not 4-byte aligned")));
        }
        Ok(F32Data::Mapped { bytes, offset, len })
    }

    #[inline]
    pub fn as_slice(&self) -> &[f32] {
        match self {
            F32Data::Owned(v) => v,
            F32Data::Mapped { bytes, offset, len } => {
                let b = &bytes.as_slice()[*offset..*offset + *len * 4];
                // SAFETY: `mapped` checked that the range lies inside the buffer and that its
                // start is 4-byte aligned (finalfusion pads every f32 array to a 4-aligned file
                // offset, and the mapping itself is page aligned); every bit pattern is a valid
                // f32; the buffer is read-only and kept alive by `bytes` for the slice's lifetime.
                unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<f32>(), *len) }
            }
        }
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self, F32Data::Mapped { bytes, .. } if !matches!(bytes, FileBytes::Owned(_)))
    }
}

impl std::ops::Deref for F32Data {
    type Target = [f32];

    #[inline]
    fn deref(&self) -> &[f32] {
        self.as_slice()
    }
}

/// Equal values (wherever they live).
impl PartialEq for F32Data {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl From<Vec<f32>> for F32Data {
    fn from(v: Vec<f32>) -> Self {
        F32Data::Owned(Arc::new(v))
    }
}

/// A dense row-major `rows x cols` f32 matrix.
#[derive(Clone, Debug)]
pub struct ArrayStorage {
    data: F32Data,
    rows: usize,
    cols: usize,
}

impl ArrayStorage {
    /// An owned matrix; `data.len()` must equal `rows * cols`.
    pub fn new(data: Vec<f32>, rows: usize, cols: usize) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::argument(format!(
                "matrix of {} values cannot have shape ({rows}, {cols})",
                data.len()
            )));
        }
        Ok(ArrayStorage {
            data: F32Data::Owned(Arc::new(data)),
            rows,
            cols,
        })
    }

    pub fn from_data(data: F32Data, rows: usize, cols: usize) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.as_slice().len()) {
            return Err(Error::invalid("matrix", "shape does not match the data"));
        }
        Ok(ArrayStorage { data, rows, cols })
    }

    #[inline]
    pub fn rows(&self) -> usize {
        self.rows
    }

    #[inline]
    pub fn cols(&self) -> usize {
        self.cols
    }

    #[inline]
    pub fn as_slice(&self) -> &[f32] {
        self.data.as_slice()
    }

    pub fn data(&self) -> &F32Data {
        &self.data
    }

    pub fn is_mapped(&self) -> bool {
        self.data.is_mapped()
    }

    /// Row `i` (panics if out of range; callers check).
    #[inline]
    pub fn row(&self, i: usize) -> &[f32] {
        &self.as_slice()[i * self.cols..(i + 1) * self.cols]
    }

    /// An ndarray view.
    pub fn view(&self) -> ndarray::ArrayView2<'_, f32> {
        ndarray::ArrayView2::from_shape((self.rows, self.cols), self.as_slice())
            .expect("shape checked at construction")
    }

    /// Read the body of an NdArray chunk; map the matrix from `map` when given.
    pub fn read_chunk(r: &mut ByteReader<'_>, map: Option<&FileBytes>) -> Result<Self> {
        let rows = r.u64("matrix rows")?;
        let cols = r.u32("matrix columns")?;
        let ty = r.u32("matrix type")?;
        if ty != TYPE_F32 {
            return Err(Error::invalid("matrix type", format!("type id {ty}, expected {TYPE_F32} (f32)")));
        }
        r.skip_padding()?;
        let n = checked_mul(rows, u64::from(cols), "matrix size")?;
        let nbytes = checked_mul(n, 4, "matrix size")?;
        if nbytes > r.remaining() as u64 {
            return Err(Error::Truncated {
                what: "matrix",
                offset: r.abs_pos(),
                need: nbytes,
                have: r.remaining() as u64,
            });
        }
        // (no data bound the rows of a matrix without columns: numpy's limit on an array's
        // bytes, which it applies to each dimension in turn, does)
        if rows > isize::MAX as u64 / 4 {
            return Err(Error::invalid("matrix rows", format!("{rows} rows are more than an array can hold")));
        }
        let (rows, cols, n) = (rows as usize, cols as usize, n as usize);
        let data = match map {
            Some(bytes) => {
                let offset = usize::try_from(r.abs_pos()).map_err(|_| Error::Overflow("offset"))?;
                r.bytes(nbytes, "matrix")?;
                F32Data::mapped(bytes.clone(), offset, n)?
            }
            None => F32Data::Owned(Arc::new(f32s_from_le(r.bytes(nbytes, "matrix")?))),
        };
        Ok(ArrayStorage { data, rows, cols })
    }

    /// Write an NdArray chunk (header included).
    pub fn write_chunk<W: Write>(&self, w: &mut PosWriter<W>) -> std::io::Result<()> {
        w.u32(ChunkId::NdArray as u32)?;
        let pad = padding(w.pos() + 8 + 8 + 4 + 4);
        w.u64(8 + 4 + 4 + pad + 4 * self.as_slice().len() as u64)?;
        w.u64(self.rows as u64)?;
        w.u32(u32::try_from(self.cols).map_err(|_| std::io::Error::other("more than 2^32 columns"))?)?;
        w.u32(TYPE_F32)?;
        w.padding()?;
        w.f32s(self.as_slice())
    }
}
