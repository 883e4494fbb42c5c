//! Embedding matrices: dense f32 arrays (owned or memory-mapped), product-quantized
//! arrays, and per-word norms.

mod array;
mod quantized;
pub(crate) mod rowsum;
pub(crate) mod vecmat;

pub use array::{ArrayStorage, F32Data};
pub use quantized::{QuantizedStorage, U8Data};


use std::io::Write;

use crate::error::{Error, Result};
use crate::format::{checked_mul, ByteReader, ChunkId, PosWriter, TYPE_F32};

/// The bytes of a whole file: a read-only memory map or an owned, 8-byte aligned buffer.
///
/// Either way the file's f32 matrices (4-aligned by the format's padding) can be used
/// in place, so reading a file into memory costs one copy and no more than its size.
#[derive(Clone)]
pub enum FileBytes {
    #[cfg(feature = "mmap")]
    Mapped(std::sync::Arc<memmap2::Mmap>),
    Owned(std::sync::Arc<AlignedBytes>),
}

impl FileBytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            #[cfg(feature = "mmap")]
            FileBytes::Mapped(m) => m,
            FileBytes::Owned(v) => v.as_slice(),
        }
    }
}

/// A zeroed `Vec` of `n` values, or [`Error::OutOfMemory`] naming `what` where the global
/// allocator cannot provide it (a plain `vec!` would abort the process).
pub fn try_zeroed_vec<T: bytemuck::Zeroable>(n: usize, what: &'static str) -> Result<Vec<T>> {
    let layout = std::alloc::Layout::array::<T>(n).map_err(|_| Error::Overflow(what))?;
    if layout.size() == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: the layout has a non-zero size.
    let p = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
    if p.is_null() {
        return Err(Error::OutOfMemory { what, bytes: layout.size() as u64 });
    }
    // SAFETY: `p` comes from the global allocator with the layout of `[T; n]` (what a Vec<T>
    // of capacity `n` uses), and all-zero bits are a valid T (`Zeroable`).
    Ok(unsafe { Vec::from_raw_parts(p, n, n) })
}

/// Reserve room for `extra` more values in `v`, or [`Error::OutOfMemory`] naming `what`.
pub fn try_reserve<T>(v: &mut Vec<T>, extra: usize, what: &'static str) -> Result<()> {
    v.try_reserve(extra).map_err(|_| Error::OutOfMemory {
        what,
        bytes: (extra as u64).saturating_mul(std::mem::size_of::<T>() as u64),
    })
}

/// A byte buffer whose start is 8-byte (with `mmap`: page) aligned.
///
/// Large buffers are anonymous mappings advised to use transparent huge pages, which
/// makes filling them and random row access (fewer TLB misses) markedly faster.
pub struct AlignedBytes {
    inner: AlignedInner,
    len: usize,
}

enum AlignedInner {
    Words(Vec<u64>),
    #[cfg(feature = "mmap")]
    Anon(memmap2::MmapMut),
}

impl AlignedBytes {
    /// A zeroed buffer of `len` bytes; [`Error::OutOfMemory`] naming `what` if it cannot be had.
    pub fn zeroed(len: usize, what: &'static str) -> Result<Self> {
        #[cfg(feature = "mmap")]
        if len >= 1 << 21 {
            if let Ok(map) = memmap2::MmapMut::map_anon(len) {
                #[cfg(target_os = "linux")]
                let _ = map.advise(memmap2::Advice::HugePage);
                return Ok(AlignedBytes { inner: AlignedInner::Anon(map), len });
            }
        }
        Ok(AlignedBytes {
            inner: AlignedInner::Words(try_zeroed_vec(len.div_ceil(8), what)?),
            len,
        })
    }

    /// A copy of `data`.
    pub fn copy_from(data: &[u8], what: &'static str) -> Result<Self> {
        let mut b = Self::zeroed(data.len(), what)?;
        b.as_mut_slice().copy_from_slice(data);
        Ok(b)
    }

    pub fn as_slice(&self) -> &[u8] {
        match &self.inner {
            // SAFETY: the u64 buffer holds at least `len` initialized bytes; u8 has alignment 1.
            AlignedInner::Words(w) => unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<u8>(), self.len) },
            #[cfg(feature = "mmap")]
            AlignedInner::Anon(m) => &m[..self.len],
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match &mut self.inner {
            // SAFETY: as in `as_slice`, and we hold the only reference.
            AlignedInner::Words(w) => unsafe { std::slice::from_raw_parts_mut(w.as_mut_ptr().cast::<u8>(), self.len) },
            #[cfg(feature = "mmap")]
            AlignedInner::Anon(m) => &mut m[..self.len],
        }
    }
}

/// Any embedding matrix.
#[derive(Clone, Debug)]
pub enum Storage {
    Array(ArrayStorage),
    Quantized(QuantizedStorage),
}

impl Storage {
    /// (rows, cols)
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Storage::Array(a) => (a.rows(), a.cols()),
            Storage::Quantized(q) => (q.rows(), q.dims()),
        }
    }

    pub fn rows(&self) -> usize {
        self.shape().0
    }

    pub fn dims(&self) -> usize {
        self.shape().1
    }

    /// The chunk this storage is written as.
    pub fn chunk_id(&self) -> ChunkId {
        match self {
            Storage::Array(_) => ChunkId::NdArray,
            Storage::Quantized(_) => ChunkId::QuantizedArray,
        }
    }

    /// A short description: "NdArray", "NdArray (mmap)", "QuantizedArray", ...
    pub fn kind(&self) -> &'static str {
        match self {
            Storage::Array(a) if a.is_mapped() => "MmapArray",
            Storage::Array(_) => "NdArray",
            Storage::Quantized(q) if q.is_mapped() => "MmapQuantizedArray",
            Storage::Quantized(_) => "QuantizedArray",
        }
    }

    /// Copy (or rebuild) row `i` into `out` (`out.len() == dims`). `i` must be in range.
    #[inline]
    pub fn row_into(&self, i: usize, out: &mut [f32]) {
        match self {
            Storage::Array(a) => out.copy_from_slice(a.row(i)),
            Storage::Quantized(q) => q.reconstruct_into(i, out),
        }
    }

    /// Copy (or rebuild) the rows `rows[t]` that are `Some` into `out[t·dims..][..dims]`;
    /// the others are left as they are. Quantized rows with a projection are rebuilt together
    /// (one matrix product), which is several times faster than row by row.
    pub fn rows_into(&self, rows: &[Option<usize>], out: &mut [f32]) {
        match self {
            Storage::Quantized(q) => q.rows_into(rows, out),
            Storage::Array(a) => {
                let dims = a.cols().max(1);
                for (&r, o) in rows.iter().zip(out.chunks_exact_mut(dims)) {
                    if let Some(i) = r {
                        o.copy_from_slice(a.row(i));
                    }
                }
            }
        }
    }

    /// Whether [`Storage::rows_into`] is faster than row by row.
    pub fn rebuilds_in_batches(&self) -> bool {
        matches!(self, Storage::Quantized(q) if q.rebuilds_in_batches())
    }

    /// [`Storage::row_into`] with non-temporal stores for dense rows (see [`copy_streaming`]).
    #[inline]
    pub fn row_into_streaming(&self, i: usize, out: &mut [f32]) {
        match self {
            Storage::Array(a) => copy_streaming(out, a.row(i)),
            Storage::Quantized(q) => q.reconstruct_into(i, out),
        }
    }

    /// Hint the CPU to start loading row `i` (dense storage; a no-op elsewhere), so that
    /// the memory latency of many rows overlaps. `i` must be in range.
    #[inline]
    pub fn prefetch_row(&self, i: usize) {
        if let Storage::Array(a) = self {
            prefetch_l2(a.row(i));
        }
    }

    /// Add row `i` to `out`.
    #[inline]
    pub fn add_row(&self, i: usize, out: &mut [f32]) {
        match self {
            Storage::Array(a) => {
                for (o, v) in out.iter_mut().zip(a.row(i)) {
                    *o += v;
                }
            }
            Storage::Quantized(q) => q.add_reconstructed(i, out),
        }
    }

    /// Add the sum of rows `rows` to `out` (an unknown word's n-gram rows).
    #[inline]
    pub fn add_rows(&self, rows: &[usize], out: &mut [f32]) {
        match self {
            Storage::Quantized(q) => q.add_reconstructed_rows(rows, out),
            Storage::Array(a) => add_dense_rows(a, rows, out),
        }
    }

    /// Read a storage chunk body. `file` is given when the matrix may be memory-mapped from it.
    pub fn read_chunk(id: ChunkId, r: &mut ByteReader<'_>, map: Option<&FileBytes>) -> Result<Storage> {
        match id {
            ChunkId::NdArray => Ok(Storage::Array(ArrayStorage::read_chunk(r, map)?)),
            ChunkId::QuantizedArray => Ok(Storage::Quantized(QuantizedStorage::read_chunk(r, map)?)),
            other => Err(Error::UnexpectedChunk {
                expected: "a storage chunk",
                got: other.name().to_string(),
            }),
        }
    }

    /// Write the whole chunk (header included) at the writer's position.
    pub fn write_chunk<W: Write>(&self, w: &mut PosWriter<W>) -> std::io::Result<()> {
        match self {
            Storage::Array(a) => a.write_chunk(w),
            Storage::Quantized(q) => q.write_chunk(w),
        }
    }
}

/// Read the body of an NdNorms chunk. With `map` (the buffer holding the file) the norms
/// are used in place, like the matrix: opening a memory-mapped file reads none of them.
pub fn read_norms(r: &mut ByteReader<'_>, map: Option<&FileBytes>) -> Result<F32Data> {
    let n = r.u64("norms length")?;
    let ty = r.u32("norms type")?;
    if ty != TYPE_F32 {
        return Err(Error::invalid("norms type", format!("type id {ty}, expected {TYPE_F32} (f32)")));
    }
    r.skip_padding()?;
    let nbytes = checked_mul(n, 4, "norms size")?;
    if let Some(bytes) = map {
        let offset = usize::try_from(r.abs_pos()).map_err(|_| Error::Overflow("offset"))?;
        let len = usize::try_from(n).map_err(|_| Error::Overflow("norms size"))?;
        r.bytes(nbytes, "norms")?;
        // A file whose norms are not 4-byte aligned (not written by a finalfusion writer)
        // is still read: by copying.
        return F32Data::mapped(bytes.clone(), offset, len).or_else(|_| {
            let b = &bytes.as_slice()[offset..offset + len * 4];
            Ok(F32Data::from(crate::format::f32s_from_le(b)))
        });
    }
    Ok(F32Data::from(r.f32_vec(n, "norms")?))
}

/// Write an NdNorms chunk (header included).
pub fn write_norms<W: Write>(norms: &[f32], w: &mut PosWriter<W>) -> std::io::Result<()> {
    w.u32(ChunkId::NdNorms as u32)?;
    let pad = crate::format::padding(w.pos() + 8 + 8 + 4);
    w.u64(8 + 4 + pad + 4 * norms.len() as u64)?;
    w.u64(norms.len() as u64)?;
    w.u32(TYPE_F32)?;
    w.padding()?;
    w.f32s(norms)
}

/// Add rows `rows` of `a` to `out`, one after another (each element gets the same
/// additions in the same order as adding the rows one by one), a group of rows at a time.
fn add_dense_rows(a: &ArrayStorage, rows: &[usize], out: &mut [f32]) {
    const GROUP: usize = 64;
    let dims = out.len();
    let mut srcs: [&[f32]; GROUP] = [&[]; GROUP];
    for group in rows.chunks(GROUP) {
        for (s, &r) in srcs.iter_mut().zip(group) {
            *s = &a.row(r)[..dims];
        }
        rowsum::add_in_order(out, &srcs[..group.len()]);
    }
}

/// Copy `src` into `dst` (same length) with non-temporal stores where possible (x86-64,
/// `dst` 16-byte aligned): the destination lines are written without first being read
/// into the cache, which saves a third of the memory traffic of a large gather whose
/// output does not fit in the cache anyway. Elsewhere, or unaligned, a plain copy. Call
/// [`stream_fence`] before the written data is handed to another thread.
#[inline]
pub fn copy_streaming(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len());
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_loadu_ps, _mm_stream_ps};
        if dst.as_ptr() as usize % 16 == 0 {
            let n4 = dst.len() / 4 * 4;
            let (d4, dt) = dst.split_at_mut(n4);
            let (s4, st) = src.split_at(n4);
            for (d, s) in d4.chunks_exact_mut(4).zip(s4.chunks_exact(4)) {
                // SAFETY: SSE is part of x86-64; `s` holds 4 floats (unaligned load); `d` holds
                // 4 floats and is 16-byte aligned (`dst` is, and every chunk starts 16 bytes on).
                unsafe { _mm_stream_ps(d.as_mut_ptr(), _mm_loadu_ps(s.as_ptr())) };
            }
            dt.copy_from_slice(st);
            return;
        }
    }
    dst.copy_from_slice(src);
}

/// Write to each 4 KiB page of `v` (fresh, lazily zeroed memory), so that its page
/// faults happen here, e.g. on another thread ahead of the writer; the values stay zero.
pub fn touch_pages(v: &mut [f32]) {
    let zero = std::hint::black_box(0f32);
    for x in v.iter_mut().step_by(1024) {
        *x = zero;
    }
}

/// Order the non-temporal stores of [`copy_streaming`] before later stores (x86-64).
#[inline]
pub fn stream_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86-64; a fence has no other effect.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// `cell`'s value, computed by `f` outside the cell's lock when it is not there yet (two
/// racing callers may both compute it; one value is kept). A parallel `f` must not run
/// inside `OnceLock::get_or_init`: a rayon worker waiting in `f`'s join may pick up another
/// caller's queued job that needs the same cell, which then waits, on that same thread,
/// for the initialization it is part of (a deadlock seen in forked children, whose calls
/// run on the pool's workers).
pub(crate) fn get_or_compute<T>(cell: &std::sync::OnceLock<T>, f: impl FnOnce() -> T) -> &T {
    if let Some(v) = cell.get() {
        return v;
    }
    let v = f();
    cell.get_or_init(|| v)
}

/// The cache level a prefetch fills: the level-1 cache (and those below it), or the level-2.
#[derive(Clone, Copy)]
enum Level {
    L1,
    L2,
}

/// Ask the CPU to pull the cache line at `p` into the cache `level` (x86-64; elsewhere a
/// no-op). Any address will do: a prefetch never faults.
#[inline(always)]
fn prefetch_line(p: *const u8, level: Level) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
        // SAFETY: a prefetch never faults and has no visible effect, whatever the address.
        unsafe {
            match level {
                Level::L1 => _mm_prefetch(p.cast::<i8>(), _MM_HINT_T0),
                Level::L2 => _mm_prefetch(p.cast::<i8>(), _MM_HINT_T1),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, level);
}

/// Ask the CPU to pull the cache line at `p` into the cache (x86-64; elsewhere a no-op).
/// Any address will do: a prefetch never faults.
#[inline]
pub fn prefetch_addr(p: *const u8) {
    prefetch_line(p, Level::L1);
}

/// Ask the CPU to pull the cache line at `p` into the level-2 cache (x86-64; elsewhere a
/// no-op). For data wanted a little later and in quantity (many storage rows): such a
/// prefetch does not wait for one of the few level-1 miss buffers, so more lines are on
/// their way at once (on the development machine an unknown word's 33 n-gram rows came in
/// a quarter sooner than with level-1 prefetches).
#[inline]
pub fn prefetch_addr_l2(p: *const u8) {
    prefetch_line(p, Level::L2);
}

/// Ask the CPU to pull `data` into the cache (x86-64; elsewhere a no-op).
#[inline]
pub fn prefetch<T>(data: &[T]) {
    prefetch_with(data, prefetch_addr);
}

/// [`prefetch`] into the level-2 cache (see [`prefetch_addr_l2`]).
#[inline]
pub fn prefetch_l2<T>(data: &[T]) {
    prefetch_with(data, prefetch_addr_l2);
}

#[inline(always)]
fn prefetch_with<T>(data: &[T], line: fn(*const u8)) {
    // every cache line the data touches: from the line of its first byte (data need not
    // start on a line boundary) to the line of its last
    let p = data.as_ptr().cast::<u8>();
    let skew = p as usize % 64;
    let size = std::mem::size_of_val(data);
    let line0 = p.wrapping_sub(skew);
    for off in (0..size + skew).step_by(64) {
        line(line0.wrapping_add(off));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_rows_equals_adding_row_by_row_bit_for_bit() {
        for dims in [1usize, 5, 31, 32, 33, 64, 300] {
            let rows = 40;
            let data: Vec<f32> = (0..rows * dims).map(|i| ((i * 2654435761usize) % 1000) as f32 / 97.0 - 5.0).collect();
            let st = Storage::Array(ArrayStorage::new(data, rows, dims).unwrap());
            let mut pick = vec![3usize, 0, 39, 3, 17, 8, 8, 21];
            pick.extend((0..150).map(|i| (i * 7) % rows)); // more than one group of rows
            let mut want = vec![0.25f32; dims];
            for &r in &pick {
                st.add_row(r, &mut want);
            }
            let mut got = vec![0.25f32; dims];
            st.add_rows(&pick, &mut got);
            assert_eq!(got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "dims {dims}");
        }
    }

    #[test]
    fn copy_streaming_copies_exactly_at_any_alignment_and_length() {
        let src: Vec<f32> = (0..1031).map(|i| i as f32 * 0.5 - 7.0).collect();
        let mut buf = vec![f32::NAN; 1040];
        for off in 0..4 {
            for len in [0usize, 1, 3, 4, 5, 300, 1027] {
                buf.fill(f32::NAN);
                copy_streaming(&mut buf[off..off + len], &src[..len]);
                stream_fence();
                assert_eq!(&buf[off..off + len], &src[..len], "offset {off}, length {len}");
                assert!(buf[..off].iter().chain(&buf[off + len..]).all(|x| x.is_nan()), "wrote outside the range");
            }
        }
    }
}
