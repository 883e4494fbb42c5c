//! NumPy `.npy` headers: just enough of the format to locate a 2-D float matrix.
//!
//! ```text
//! "\x93NUMPY" | u8 major | u8 minor | header_len (u16 LE for 1.x, u32 LE for 2.x/3.x)
//! | header: a Python dict literal {'descr': '<f2', 'fortran_order': False, 'shape': (n, d), }
//! | data (n * d * itemsize bytes)
//! ```

use crate::error::{Error, Result};

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Header sizes above this are refused (numpy itself caps at 10 kB for reading by default).
pub const MAX_HEADER_LEN: u64 = 1 << 20;

/// Element types the reader understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F16,
    F32,
    F64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F16 => 2,
            DType::F32 => 4,
            DType::F64 => 8,
        }
    }

    /// numpy's short code without byte order: "f2", "f4", "f8".
    pub fn code(self) -> &'static str {
        match self {
            DType::F16 => "f2",
            DType::F32 => "f4",
            DType::F64 => "f8",
        }
    }

    /// Parse "f2"/"f4"/"f8" (also accepts numpy names "float16"...).
    pub fn from_code(code: &str) -> Result<DType> {
        match code {
            "f2" | "float16" | "e" => Ok(DType::F16),
            "f4" | "float32" | "f" => Ok(DType::F32),
            "f8" | "float64" | "d" => Ok(DType::F64),
            other => Err(Error::argument(format!(
                "unsupported dtype {other:?} (expected float16, float32 or float64)"
            ))),
        }
    }
}

/// The parsed header of a `.npy` file holding a 2-D float matrix in C order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpyMatrix {
    pub rows: u64,
    pub dim: u64,
    pub dtype: DType,
    /// The data is stored big-endian (`>f4`); it is byte-swapped while reading.
    pub big_endian: bool,
    /// Byte offset of the first element.
    pub data_offset: u64,
}

impl NpyMatrix {
    /// Bytes of one row on disk.
    pub fn row_bytes(&self) -> Result<u64> {
        self.dim
            .checked_mul(self.dtype.size() as u64)
            .ok_or(Error::Overflow("npy row size"))
    }

    /// Bytes of the whole data section.
    pub fn data_bytes(&self) -> Result<u64> {
        self.row_bytes()?
            .checked_mul(self.rows)
            .ok_or(Error::Overflow("npy data size"))
    }
}

/// Total size of magic + header, given at least the first 12 bytes of the file
/// (fewer are enough for version 1 files: 10).
pub fn header_size(prefix: &[u8]) -> Result<u64> {
    if prefix.is_empty() {
        return Err(Error::invalid("npy file", "the file is empty"));
    }
    if prefix.len() < 10 {
        return Err(Error::Truncated {
            what: "npy preamble",
            offset: 0,
            need: 10,
            have: prefix.len() as u64,
        });
    }
    if &prefix[..6] != MAGIC {
        return Err(Error::Magic {
            format: "npy",
            expected: MAGIC.to_vec(),
            got: prefix[..6].to_vec(),
        });
    }
    let (major, minor) = (prefix[6], prefix[7]);
    let (len, start) = match (major, minor) {
        (1, 0) => (u64::from(u16::from_le_bytes([prefix[8], prefix[9]])), 10u64),
        (2 | 3, 0) => {
            if prefix.len() < 12 {
                return Err(Error::Truncated {
                    what: "npy preamble",
                    offset: 0,
                    need: 12,
                    have: prefix.len() as u64,
                });
            }
            let len = u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]);
            (u64::from(len), 12u64)
        }
        _ => {
            return Err(Error::Version {
                format: "npy",
                expected: "1.0, 2.0 or 3.0".into(),
                got: format!("{major}.{minor}"),
            })
        }
    };
    if len > MAX_HEADER_LEN {
        return Err(Error::invalid(
            "npy header",
            format!("header length {len} is implausibly large"),
        ));
    }
    Ok(start + len)
}

/// Parse and validate a header. `prefix` must hold at least [`header_size`] bytes;
/// `file_len` is the size of the whole file, checked against the shape.
pub fn parse_header(prefix: &[u8], file_len: u64) -> Result<NpyMatrix> {
    let size = header_size(prefix)?;
    let start = if prefix[6] == 1 { 10 } else { 12 };
    if (prefix.len() as u64) < size {
        return Err(Error::Truncated {
            what: "npy header",
            offset: start as u64,
            need: size - start as u64,
            have: prefix.len() as u64 - start as u64,
        });
    }
    let text = std::str::from_utf8(&prefix[start..size as usize])
        .map_err(|e| Error::invalid("npy header", format!("not valid text: {e}")))?;
    let dict = parse_dict(text)?;
    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    for (key, value) in dict {
        match (key.as_str(), value) {
            ("descr", Value::Str(s)) => descr = Some(s),
            ("descr", _) => {
                return Err(Error::invalid(
                    "npy header",
                    "structured dtypes are not supported (need a plain float array)",
                ))
            }
            ("fortran_order", Value::Bool(b)) => fortran = Some(b),
            ("shape", Value::Tuple(t)) => shape = Some(t),
            (k, _) => return Err(Error::invalid("npy header", format!("unexpected entry {k:?}"))),
        }
    }
    let (Some(descr), Some(fortran), Some(mut shape)) = (descr, fortran, shape) else {
        return Err(Error::invalid(
            "npy header",
            "missing 'descr', 'fortran_order' or 'shape'",
        ));
    };
    let (order, code) = match descr.as_bytes().first() {
        Some(b'<' | b'>' | b'=' | b'|') => descr.split_at(1),
        _ => ("=", descr.as_str()),
    };
    // A file without rows (shape (0,), (0, d), ...) is skipped by the reader, whatever its
    // dtype and rank (an empty shard saved as `np.array([])` is 1-D float64): only its
    // header and size are checked.
    let empty = shape.first() == Some(&0);
    let dtype = match code {
        // (numpy writes '<f4'; np.load also takes dtype names)
        "f2" | "e" | "float16" => DType::F16,
        "f4" | "f" | "float32" => DType::F32,
        "f8" | "d" | "float64" => DType::F64,
        _ if empty => DType::F32,
        _ => {
            return Err(Error::invalid(
                "npy dtype",
                format!("dtype {descr:?} is not a float type (float16, float32 or float64 expected)"),
            ))
        }
    };
    let big_endian = match order {
        ">" => true,
        "<" => false,
        // '=' and '|' mean native order of the writer; numpy always writes an explicit order
        // for multi-byte types, so treat them as this machine's order.
        _ => cfg!(target_endian = "big"),
    };
    if empty && shape.len() != 2 {
        shape = vec![0, 0];
    }
    if shape.len() != 2 {
        return Err(Error::invalid(
            "npy shape",
            format!(
                "expected a 2-D array (rows, dimension), got {}-D shape {shape:?}",
                shape.len()
            ),
        ));
    }
    let (rows, dim) = (shape[0], shape[1]);
    if fortran && rows > 1 && dim > 1 {
        return Err(Error::invalid(
            "npy layout",
            "Fortran-ordered (column-major) arrays are not supported: save with np.ascontiguousarray",
        ));
    }
    let m = NpyMatrix {
        rows,
        dim,
        dtype,
        big_endian,
        data_offset: size,
    };
    let need = size
        .checked_add(m.data_bytes()?)
        .ok_or(Error::Overflow("npy file size"))?;
    if file_len < need {
        return Err(Error::Truncated {
            what: "npy data",
            offset: size,
            need: need - size,
            have: file_len.saturating_sub(size),
        });
    }
    if file_len > need {
        return Err(Error::invalid(
            "npy file",
            format!(
                "{} unexpected bytes after the array data (shape {shape:?})",
                file_len - need
            ),
        ));
    }
    Ok(m)
}

#[derive(Debug)]
enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<u64>),
}

/// Parse the small subset of Python literals that npy headers use.
fn parse_dict(text: &str) -> Result<Vec<(String, Value)>> {
    let bad = |m: &str| Error::invalid("npy header", format!("{m} in {:?}", text.trim_end()));
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    p.ws();
    if !p.eat(b'{') {
        return Err(bad("expected '{'"));
    }
    let mut out = Vec::new();
    loop {
        p.ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string().ok_or_else(|| bad("expected a quoted key"))?;
        p.ws();
        if !p.eat(b':') {
            return Err(bad("expected ':'"));
        }
        p.ws();
        let value = match p.peek() {
            Some(b'\'' | b'"') => Value::Str(p.string().ok_or_else(|| bad("bad string"))?),
            Some(b'(') => Value::Tuple(p.tuple().ok_or_else(|| bad("bad shape tuple"))?),
            Some(b'T') if p.word("True") => Value::Bool(true),
            Some(b'F') if p.word("False") => Value::Bool(false),
            Some(b'[') => {
                return Err(Error::invalid(
                    "npy header",
                    "structured dtypes are not supported (need a plain float array)",
                ))
            }
            _ => return Err(bad("unexpected value")),
        };
        out.push((key, value));
        p.ws();
        if !p.eat(b',') {
            p.ws();
            if !p.eat(b'}') {
                return Err(bad("expected ',' or '}'"));
            }
            break;
        }
    }
    // numpy pads the dict with spaces up to a newline; anything else is not a header it reads
    p.ws();
    if p.i != p.s.len() {
        return Err(bad("unexpected text after the header dict"));
    }
    Ok(out)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn word(&mut self, w: &str) -> bool {
        if self.s[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            true
        } else {
            false
        }
    }
    fn string(&mut self) -> Option<String> {
        let q = self.peek().filter(|c| *c == b'\'' || *c == b'"')?;
        self.i += 1;
        let start = self.i;
        while self.peek()? != q {
            self.i += 1;
        }
        let s = std::str::from_utf8(&self.s[start..self.i]).ok()?.to_string();
        self.i += 1;
        Some(s)
    }
    fn tuple(&mut self) -> Option<Vec<u64>> {
        if !self.eat(b'(') {
            return None;
        }
        let mut out = Vec::new();
        loop {
            self.ws();
            if self.eat(b')') {
                return Some(out);
            }
            let start = self.i;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.i += 1;
            }
            // no digits, or a leading zero (not a Python integer literal: np.load refuses it)
            if start == self.i || (self.i - start > 1 && self.s[start] == b'0') {
                return None;
            }
            let n = std::str::from_utf8(&self.s[start..self.i]).ok()?.parse::<u64>().ok()?;
            out.push(n);
            self.eat(b'L');
            self.ws();
            if !self.eat(b',') {
                self.ws();
                return if self.eat(b')') { Some(out) } else { None };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(header: &str, data_len: usize) -> Vec<u8> {
        let mut h = header.to_string();
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend_from_slice(&(h.len() as u16).to_le_bytes());
        v.extend_from_slice(h.as_bytes());
        v.extend(std::iter::repeat(0u8).take(data_len));
        v
    }

    #[test]
    fn parses_plain_header() {
        let f = npy("{'descr': '<f2', 'fortran_order': False, 'shape': (3, 4), }", 24);
        let m = parse_header(&f, f.len() as u64).unwrap();
        assert_eq!((m.rows, m.dim, m.dtype, m.big_endian), (3, 4, DType::F16, false));
        assert_eq!(m.data_offset, f.len() as u64 - 24);
        assert_eq!(m.data_offset % 64, 0);
    }

    #[test]
    fn refuses_bad_shapes_and_types() {
        for (h, len) in [
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", 12),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 3), }", 24),
            ("{'descr': '<i4', 'fortran_order': False, 'shape': (3, 1), }", 12),
            ("{'descr': '<f4', 'fortran_order': True, 'shape': (3, 2), }", 24),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }", 23),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }", 25),
            ("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (3,), }", 12),
        ] {
            let f = npy(h, len);
            assert!(parse_header(&f, f.len() as u64).is_err(), "{h} {len}");
        }
        assert!(header_size(b"").is_err());
        assert!(header_size(b"\x93NUMPY\x09\x00\x00\x00").is_err());
    }

    #[test]
    fn big_endian_and_v2() {
        let mut f = npy("{'descr': '>f8', 'fortran_order': False, 'shape': (2, 1), }", 16);
        let m = parse_header(&f, f.len() as u64).unwrap();
        assert!(m.big_endian);
        assert_eq!(m.dtype, DType::F64);
        // version 2: 4-byte header length
        let h = f[10..m.data_offset as usize].to_vec();
        let mut g = b"\x93NUMPY\x02\x00".to_vec();
        g.extend_from_slice(&(h.len() as u32).to_le_bytes());
        g.extend_from_slice(&h);
        g.extend(std::iter::repeat(0u8).take(16));
        let m2 = parse_header(&g, g.len() as u64).unwrap();
        assert_eq!(m2.data_offset, m.data_offset + 2);
        f.truncate(5);
        assert!(matches!(header_size(&f), Err(Error::Truncated { .. })));
    }
}
