//! The on-disk finalfusion format: magic, version, chunk identifiers, padding,
//! and bounds-checked little-endian reading and position-tracking writing.
//!
//! ```text
//! "FiFu" | u32 version = 0 | u32 n_chunks | u32 chunk_id x n_chunks
//! chunk: u32 id | u64 len | len bytes
//! ```

use std::io::Write;

use crate::error::{Error, Result};

/// The magic bytes that start every finalfusion file.
pub const MAGIC: &[u8; 4] = b"FiFu";
/// The only finalfusion format version.
pub const VERSION: u32 = 0;
/// Type id of `u8` values inside array chunks.
pub const TYPE_U8: u32 = 1;
/// Type id of `f32` values inside array chunks.
pub const TYPE_F32: u32 = 10;

/// Chunk identifiers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ChunkId {
    SimpleVocab = 1,
    NdArray = 2,
    BucketSubwordVocab = 3,
    QuantizedArray = 4,
    Metadata = 5,
    NdNorms = 6,
    FastTextSubwordVocab = 7,
    ExplicitSubwordVocab = 8,
    FloretSubwordVocab = 9,
    // vecfusion extensions (docs/FORMAT-vecfusion.md): fst (automaton) vocabularies.
    // "VF" in the high half keeps them far from finalfusion's small ids.
    FstSimpleVocab = 0x5646_0001,
    FstBucketSubwordVocab = 0x5646_0003,
    FstFastTextSubwordVocab = 0x5646_0007,
    FstExplicitSubwordVocab = 0x5646_0008,
}

impl ChunkId {
    /// Decode a chunk id.
    pub fn from_u32(id: u32) -> Result<ChunkId> {
        Ok(match id {
            1 => ChunkId::SimpleVocab,
            2 => ChunkId::NdArray,
            3 => ChunkId::BucketSubwordVocab,
            4 => ChunkId::QuantizedArray,
            5 => ChunkId::Metadata,
            6 => ChunkId::NdNorms,
            7 => ChunkId::FastTextSubwordVocab,
            8 => ChunkId::ExplicitSubwordVocab,
            9 => ChunkId::FloretSubwordVocab,
            0x5646_0001 => ChunkId::FstSimpleVocab,
            0x5646_0003 => ChunkId::FstBucketSubwordVocab,
            0x5646_0007 => ChunkId::FstFastTextSubwordVocab,
            0x5646_0008 => ChunkId::FstExplicitSubwordVocab,
            other => return Err(Error::UnknownChunk(other)),
        })
    }

    /// Is this a vocabulary chunk?
    pub fn is_vocab(self) -> bool {
        matches!(
            self,
            ChunkId::SimpleVocab
                | ChunkId::BucketSubwordVocab
                | ChunkId::FastTextSubwordVocab
                | ChunkId::ExplicitSubwordVocab
                | ChunkId::FloretSubwordVocab
        ) || self.is_fst_vocab()
    }

    /// Is this one of vecfusion's fst vocabulary chunks?
    pub fn is_fst_vocab(self) -> bool {
        matches!(
            self,
            ChunkId::FstSimpleVocab
                | ChunkId::FstBucketSubwordVocab
                | ChunkId::FstFastTextSubwordVocab
                | ChunkId::FstExplicitSubwordVocab
        )
    }

    /// Is this a storage chunk?
    pub fn is_storage(self) -> bool {
        matches!(self, ChunkId::NdArray | ChunkId::QuantizedArray)
    }

    /// The chunk's name, as finalfusion calls it.
    pub fn name(self) -> &'static str {
        match self {
            ChunkId::SimpleVocab => "SimpleVocab",
            ChunkId::NdArray => "NdArray",
            ChunkId::BucketSubwordVocab => "BucketSubwordVocab",
            ChunkId::QuantizedArray => "QuantizedArray",
            ChunkId::Metadata => "Metadata",
            ChunkId::NdNorms => "NdNorms",
            ChunkId::FastTextSubwordVocab => "FastTextSubwordVocab",
            ChunkId::ExplicitSubwordVocab => "ExplicitSubwordVocab",
            ChunkId::FloretSubwordVocab => "FloretSubwordVocab",
            ChunkId::FstSimpleVocab => "FstSimpleVocab",
            ChunkId::FstBucketSubwordVocab => "FstBucketSubwordVocab",
            ChunkId::FstFastTextSubwordVocab => "FstFastTextSubwordVocab",
            ChunkId::FstExplicitSubwordVocab => "FstExplicitSubwordVocab",
        }
    }
}

/// Number of zero bytes written before an array of `f32` that would start at
/// absolute file position `pos`: 1 to 4, never 0 (finalfusion's rule).
#[inline]
pub fn padding(pos: u64) -> u64 {
    4 - (pos % 4)
}

/// A bounds-checked little-endian reader over a byte slice.
///
/// `base` is the absolute file offset of `data[0]`, so that padding is
/// computed from absolute positions as the format requires.
#[derive(Clone)]
pub struct ByteReader<'a> {
    data: &'a [u8],
    pos: usize,
    base: u64,
}

impl<'a> ByteReader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        ByteReader {
            data,
            pos: 0,
            base: 0,
        }
    }

    /// A reader over `data` whose first byte is at absolute offset `base`.
    pub fn with_base(data: &'a [u8], base: u64) -> Self {
        ByteReader { data, pos: 0, base }
    }

    /// Absolute position in the file.
    #[inline]
    pub fn abs_pos(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Position relative to the start of the slice.
    #[inline]
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes remaining.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Take the next `n` bytes.
    pub fn bytes(&mut self, n: u64, what: &'static str) -> Result<&'a [u8]> {
        let have = self.remaining() as u64;
        if n > have {
            return Err(Error::Truncated {
                what,
                offset: self.abs_pos(),
                need: n,
                have,
            });
        }
        let n = n as usize;
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Skip the f32 padding at the current absolute position; the padding must be zeros
    /// only in strict mode, so it is just skipped (the reference readers do the same).
    pub fn skip_padding(&mut self) -> Result<()> {
        let n = padding(self.abs_pos());
        self.bytes(n, "padding")?;
        Ok(())
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(self.bytes(1, what)?[0])
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64> {
        let b = self.bytes(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    pub fn i64(&mut self, what: &'static str) -> Result<i64> {
        Ok(self.u64(what)? as i64)
    }

    pub fn f32(&mut self, what: &'static str) -> Result<f32> {
        Ok(f32::from_bits(self.u32(what)?))
    }

    pub fn f64(&mut self, what: &'static str) -> Result<f64> {
        Ok(f64::from_bits(self.u64(what)?))
    }

    /// A `u32`-length-prefixed string's raw bytes.
    pub fn string_bytes(&mut self, what: &'static str) -> Result<&'a [u8]> {
        let len = self.u32(what)?;
        self.bytes(u64::from(len), what)
    }

    /// A `u32`-length-prefixed UTF-8 string.
    pub fn string(&mut self, what: &'static str, index: u64) -> Result<&'a str> {
        let b = self.string_bytes(what)?;
        std::str::from_utf8(b).map_err(|source| Error::Utf8 {
            what,
            index,
            source,
        })
    }

    /// Read `n` little-endian f32 values into a new vector (checked against the data first).
    pub fn f32_vec(&mut self, n: u64, what: &'static str) -> Result<Vec<f32>> {
        let nbytes = n.checked_mul(4).ok_or(Error::Overflow(what))?;
        let b = self.bytes(nbytes, what)?;
        Ok(f32s_from_le(b))
    }
}

/// Decode little-endian f32 values.
pub fn f32s_from_le(b: &[u8]) -> Vec<f32> {
    let mut out = vec![0f32; b.len() / 4];
    if cfg!(target_endian = "little") {
        // SAFETY-free path: copy bytes into the f32 buffer through a byte view.
        let dst = f32s_as_bytes_mut(&mut out);
        dst.copy_from_slice(&b[..dst.len()]);
    } else {
        for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
    }
    out
}

/// View f32 values as bytes (native order; callers only use this on little-endian targets).
pub fn f32s_as_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no invalid bit patterns and no padding; u8 has alignment 1,
    // and the length covers exactly the same memory.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

fn f32s_as_bytes_mut(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: as in `f32s_as_bytes`; every byte pattern is a valid f32.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// A writer that knows its absolute position, so that padding can be computed.
pub struct PosWriter<W: Write> {
    inner: W,
    pos: u64,
}

impl<W: Write> PosWriter<W> {
    pub fn new(inner: W) -> Self {
        PosWriter { inner, pos: 0 }
    }

    /// A writer whose first byte will land at absolute offset `pos`.
    pub fn at(inner: W, pos: u64) -> Self {
        PosWriter { inner, pos }
    }

    pub fn pos(&self) -> u64 {
        self.pos
    }

    pub fn into_inner(self) -> W {
        self.inner
    }

    pub fn bytes(&mut self, b: &[u8]) -> std::io::Result<()> {
        // A large write (a matrix) goes in pieces, with a look for Ctrl-C between them.
        const PIECE: usize = 16 << 20;
        if b.len() <= PIECE {
            self.inner.write_all(b)?;
        } else {
            for piece in b.chunks(PIECE) {
                crate::cancel::check_io()?;
                self.inner.write_all(piece)?;
            }
        }
        self.pos += b.len() as u64;
        Ok(())
    }

    pub fn u8(&mut self, v: u8) -> std::io::Result<()> {
        self.bytes(&[v])
    }

    pub fn u32(&mut self, v: u32) -> std::io::Result<()> {
        self.bytes(&v.to_le_bytes())
    }

    pub fn u64(&mut self, v: u64) -> std::io::Result<()> {
        self.bytes(&v.to_le_bytes())
    }

    pub fn i64(&mut self, v: i64) -> std::io::Result<()> {
        self.bytes(&v.to_le_bytes())
    }

    pub fn f64(&mut self, v: f64) -> std::io::Result<()> {
        self.bytes(&v.to_le_bytes())
    }

    /// A `u32`-length-prefixed string.
    pub fn string(&mut self, s: &str) -> std::io::Result<()> {
        let len = u32::try_from(s.len()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "string longer than 4 GiB")
        })?;
        self.u32(len)?;
        self.bytes(s.as_bytes())
    }

    /// Write the zero padding for an f32 array starting here; returns its length.
    pub fn padding(&mut self) -> std::io::Result<u64> {
        let n = padding(self.pos);
        self.bytes(&[0u8; 4][..n as usize])?;
        Ok(n)
    }

    /// Little-endian f32 values.
    pub fn f32s(&mut self, v: &[f32]) -> std::io::Result<()> {
        if cfg!(target_endian = "little") {
            self.bytes(f32s_as_bytes(v))
        } else {
            for x in v {
                self.bytes(&x.to_le_bytes())?;
            }
            Ok(())
        }
    }
}

/// The length in bytes of a `u32`-length-prefixed string.
#[inline]
pub fn string_len(s: &str) -> u64 {
    4 + s.len() as u64
}

/// Checked multiplication of sizes read from a file.
#[inline]
pub fn checked_mul(a: u64, b: u64, what: &'static str) -> Result<u64> {
    a.checked_mul(b).ok_or(Error::Overflow(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_one_to_four() {
        assert_eq!(padding(0), 4);
        assert_eq!(padding(1), 3);
        assert_eq!(padding(2), 2);
        assert_eq!(padding(3), 1);
        assert_eq!(padding(4), 4);
        assert_eq!(padding(33), 3);
    }

    #[test]
    fn reader_reports_truncation() {
        let mut r = ByteReader::with_base(&[1, 0, 0], 10);
        let e = r.u32("field").unwrap_err();
        assert!(matches!(
            e,
            Error::Truncated {
                offset: 10,
                need: 4,
                have: 3,
                ..
            }
        ));
    }

    #[test]
    fn writer_tracks_position_and_pads() {
        let mut w = PosWriter::at(Vec::new(), 5);
        w.u32(7).unwrap();
        assert_eq!(w.pos(), 9);
        assert_eq!(w.padding().unwrap(), 3);
        assert_eq!(w.pos() % 4, 0);
        w.string("ab").unwrap();
        assert_eq!(w.into_inner(), vec![7, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, b'a', b'b']);
    }
}
