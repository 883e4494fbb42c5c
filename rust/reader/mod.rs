//! Reading large collections of `.npy` embedding files (the engine of Python's
//! `vecfusion.EmbeddingReader`).
//!
//! The Python side lists files and plans which row ranges of which files make up a
//! batch; this module parses headers and fills a batch buffer from local files with
//! parallel positional reads, converting float16 to float32 (or any float type to
//! another) in the same pass. Remote bytes fetched by Python go through [`convert`].

pub mod convert;
pub mod npy;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

pub use convert::convert;
pub use npy::{header_size, parse_header, DType, NpyMatrix};

use crate::error::{Error, Result};

/// Bytes of the per-thread buffer used when converting (fits in L2).
const SCRATCH_BYTES: usize = 256 << 10;

/// Attach the file name to an error about that file.
pub fn in_file(e: Error, path: &Path) -> Error {
    match e {
        e @ Error::Io { .. } => e.context(path.display()),
        Error::Argument(m) => Error::Argument(format!("{}: {m}", path.display())),
        Error::Invalid { what, message } => Error::Invalid {
            what,
            message: format!("{}: {message}", path.display()),
        },
        other => Error::invalid("npy file", format!("{}: {other}", path.display())),
    }
}

/// Positional read of exactly `buf.len()` bytes at `offset`.
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.read_exact_at(buf, offset)
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt;
        let (mut buf, mut offset) = (buf, offset);
        while !buf.is_empty() {
            match file.seek_read(buf, offset) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Read and validate the header of one local `.npy` file.
pub fn read_header(path: &Path) -> Result<NpyMatrix> {
    let go = || -> Result<NpyMatrix> {
        let file = File::open(path).map_err(|e| Error::io("opening npy file", e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("reading npy file size", e))?
            .len();
        if len == 0 {
            return Err(Error::invalid("npy file", "the file is empty (0 bytes)"));
        }
        let mut prefix = vec![0u8; len.min(4096) as usize];
        read_exact_at(&file, &mut prefix, 0).map_err(|e| Error::io("reading npy header", e))?;
        let size = header_size(&prefix)?;
        if size > prefix.len() as u64 && size <= len {
            prefix = vec![0u8; size as usize];
            read_exact_at(&file, &mut prefix, 0).map_err(|e| Error::io("reading npy header", e))?;
        }
        parse_header(&prefix, len)
    };
    go().map_err(|e| in_file(e, path))
}

/// Headers of many local files, read by `threads` threads; results in input order.
pub fn read_headers(paths: &[PathBuf], threads: usize) -> Vec<Result<NpyMatrix>> {
    let next = Mutex::new(0usize);
    let results: Vec<Mutex<Option<Result<NpyMatrix>>>> = paths.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, paths.len().max(1)) {
            s.spawn(|| loop {
                let i = {
                    let Ok(mut n) = next.lock() else { return };
                    let i = *n;
                    *n += 1;
                    i
                };
                let Some(path) = paths.get(i) else { return };
                let r = read_header(path);
                if let Ok(mut slot) = results[i].lock() {
                    *slot = Some(r);
                }
            });
        }
    });
    results
        .into_iter()
        .zip(paths)
        .map(|(m, p)| {
            m.into_inner()
                .ok()
                .flatten()
                .unwrap_or_else(|| Err(Error::invalid("npy file", format!("{}: header not read", p.display()))))
        })
        .collect()
}

/// A contiguous run of elements of one file, and where it goes in the output.
#[derive(Clone, Debug)]
pub struct Piece {
    pub path: PathBuf,
    /// Absolute byte offset in the file.
    pub file_offset: u64,
    /// Number of source bytes (a multiple of the source element size).
    pub src_bytes: u64,
    /// Byte offset in the output buffer.
    pub out_offset: usize,
}

struct Task<'a> {
    path: &'a Path,
    file_offset: u64,
    src_bytes: usize,
    out: &'a mut [u8],
}

/// Fill `out` from local files: every piece is split into sub-pieces of about
/// `chunk_bytes` that `threads` threads read with positional reads, straight into
/// `out` when no conversion is needed, otherwise through a small per-thread buffer
/// and [`convert`]. Pieces must not overlap in `out`.
pub fn read_pieces(
    pieces: &[Piece],
    sd: DType,
    big_endian: bool,
    out: &mut [u8],
    dd: DType,
    threads: usize,
    chunk_bytes: usize,
) -> Result<()> {
    let (ss, ds) = (sd.size(), dd.size());
    let chunk_elems = (chunk_bytes / ss).max(1);
    // Carve `out` into disjoint slices, one per piece (sorted by output offset).
    let mut order: Vec<&Piece> = pieces.iter().collect();
    order.sort_by_key(|p| p.out_offset);
    let mut tasks: Vec<Task<'_>> = Vec::new();
    let mut rest: &mut [u8] = out;
    let mut pos = 0usize;
    for p in order {
        if p.src_bytes % ss as u64 != 0 {
            return Err(Error::argument(format!(
                "piece of {} bytes is not a whole number of {}",
                p.src_bytes,
                sd.code()
            )));
        }
        let n = usize::try_from(p.src_bytes / ss as u64).map_err(|_| Error::Overflow("piece size"))?;
        let out_len = n.checked_mul(ds).ok_or(Error::Overflow("piece size"))?;
        if p.out_offset < pos {
            return Err(Error::argument("pieces overlap in the output"));
        }
        let skip = p.out_offset - pos;
        if skip.checked_add(out_len).map_or(true, |end| end > rest.len()) {
            return Err(Error::argument("piece goes past the end of the output"));
        }
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(skip);
        let (mut mine, tail) = tail.split_at_mut(out_len);
        rest = tail;
        pos = p.out_offset + out_len;
        let mut done = 0usize;
        while done < n {
            let k = chunk_elems.min(n - done);
            let (head, tail) = std::mem::take(&mut mine).split_at_mut(k * ds);
            mine = tail;
            tasks.push(Task {
                path: &p.path,
                file_offset: p.file_offset + (done * ss) as u64,
                src_bytes: k * ss,
                out: head,
            });
            done += k;
        }
    }
    let convert_needed = sd != dd || big_endian != cfg!(target_endian = "big");
    let n_threads = threads.clamp(1, tasks.len().max(1));
    // Every range the tasks will read, in order, for the read-ahead thread below.
    let ranges: Vec<(&Path, u64, u64)> = tasks.iter().map(|t| (t.path, t.file_offset, t.src_bytes as u64)).collect();
    let total: u64 = ranges.iter().map(|r| r.2).sum();
    if n_threads == 1 && total < READ_AHEAD_MIN_BYTES {
        // a small read (a few rows, or one thread asked for): on the calling thread, without
        // the cost of starting one
        let mut scratch: Vec<u64> = Vec::new();
        let mut open: Option<(&Path, File)> = None;
        for task in tasks {
            run_task(task, &mut open, &mut scratch, convert_needed, sd, big_endian, dd)?;
        }
        return Ok(());
    }
    let queue = Mutex::new(tasks.into_iter());
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        if total >= READ_AHEAD_MIN_BYTES {
            // Files read from disk: one thread asks the kernel for every range up front, in
            // the order the readers take them, so that the disk always has many requests
            // queued (the readers' own positional reads, a few MiB each at strides of the
            // thread count, defeat the kernel's sequential read-ahead). Pages already cached
            // cost a lookup; the pages go to the page cache, not to this process's memory.
            s.spawn(|| read_ahead(&ranges, &failed));
        }
        for _ in 0..n_threads {
            s.spawn(|| {
                let mut scratch: Vec<u64> = Vec::new();
                let mut open: Option<(&Path, File)> = None;
                while !failed.load(Ordering::Relaxed) {
                    let task = match queue.lock() {
                        Ok(mut q) => q.next(),
                        Err(_) => None,
                    };
                    let Some(task) = task else { break };
                    let r = run_task(task, &mut open, &mut scratch, convert_needed, sd, big_endian, dd);
                    if let Err(e) = r {
                        failed.store(true, Ordering::Relaxed);
                        if let Ok(mut slot) = first_error.lock() {
                            slot.get_or_insert(e);
                        }
                        break;
                    }
                }
            });
        }
    });
    match first_error.into_inner().ok().flatten() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Reads of at least this many bytes in all get the read-ahead thread of [`read_pieces`].
const READ_AHEAD_MIN_BYTES: u64 = 16 << 20;

/// Ask the kernel to read the `(path, byte offset, bytes)` ranges into the page cache, in
/// order, without waiting for the data (Linux; a no-op elsewhere); stops early once `stop`
/// is set. A hint only: files that cannot be opened and failed requests are skipped.
pub fn read_ahead<P: AsRef<Path>>(ranges: &[(P, u64, u64)], stop: &AtomicBool) {
    let mut open: Option<(&Path, File)> = None;
    for (path, offset, len) in ranges {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let path = path.as_ref();
        if open.as_ref().map_or(true, |(p, _)| *p != path) {
            open = File::open(path).ok().map(|f| (path, f));
        }
        if let Some((_, f)) = &open {
            // Linux reads at most the larger of the device's read-ahead and request sizes
            // per call (often 1-8 MiB): ask 1 MiB at a time
            let mut done = 0;
            while done < *len && !stop.load(Ordering::Relaxed) {
                let k = READ_AHEAD_STEP.min(*len - done);
                will_need(f, offset + done, k);
                done += k;
            }
        }
    }
}

/// Bytes asked of the kernel per read-ahead request.
const READ_AHEAD_STEP: u64 = 1 << 20;

/// Ask the kernel to start reading `len` bytes at `offset` of `file` into the page cache
/// (Linux; a no-op elsewhere). A hint only: its result is ignored.
fn will_need(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return;
        };
        // SAFETY: `file` is an open descriptor for the whole call; posix_fadvise only reads
        // its integer arguments and never touches memory of this process.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), off, len, libc::POSIX_FADV_WILLNEED);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

fn run_task<'a>(
    task: Task<'a>,
    open: &mut Option<(&'a Path, File)>,
    scratch: &mut Vec<u64>,
    convert_needed: bool,
    sd: DType,
    big_endian: bool,
    dd: DType,
) -> Result<()> {
    if open.as_ref().map_or(true, |(p, _)| *p != task.path) {
        let f = File::open(task.path).map_err(|e| in_file(Error::io("opening npy file", e), task.path))?;
        *open = Some((task.path, f));
    }
    let Some((_, file)) = open.as_ref() else {
        return Err(Error::argument("no open file"));
    };
    let io_err = |e: std::io::Error| in_file(Error::io("reading npy data (did the file change?)", e), task.path);
    if !convert_needed {
        return read_exact_at(file, task.out, task.file_offset).map_err(io_err);
    }
    // Read through a small buffer that stays in L2, converting each step straight into
    // the output: the source bytes cross main memory once.
    let step = (SCRATCH_BYTES / sd.size() / dd.size() * sd.size() * dd.size()).max(sd.size() * dd.size());
    if scratch.len() < step / 8 + 1 {
        scratch.resize(step / 8 + 1, 0);
    }
    // SAFETY: u64 -> u8 view of initialized memory; u8 has no alignment or validity needs.
    let bytes = unsafe { std::slice::from_raw_parts_mut(scratch.as_mut_ptr().cast::<u8>(), step) };
    let (ss, ds) = (sd.size(), dd.size());
    let mut done = 0usize;
    while done < task.src_bytes {
        let k = step.min(task.src_bytes - done);
        let src = &mut bytes[..k];
        read_exact_at(file, src, task.file_offset + done as u64).map_err(io_err)?;
        let o = done / ss * ds;
        convert(src, sd, big_endian, &mut task.out[o..o + k / ss * ds], dd)?;
        done += k;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Reads large enough for the read-ahead thread (over 16 MiB, two files, pieces out of
    /// file order) give the same bytes, copied as they are and converted.
    #[test]
    fn large_reads_with_read_ahead_are_exact() {
        let dir = tempfile::tempdir().unwrap();
        let n = 3 << 20; // f32 values per file: 12 MiB each
        let mut paths = Vec::new();
        let mut all = Vec::new();
        for k in 0..2u32 {
            let vals: Vec<f32> = (0..n as u32).map(|i| (i ^ (k << 20)) as f32).collect();
            let path = dir.path().join(format!("{k}.bin"));
            std::fs::write(&path, vals.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
            paths.push(path);
            all.push(vals);
        }
        assert!((2 * n * 4) as u64 >= READ_AHEAD_MIN_BYTES);
        // file 1 first, then file 0 starting 100 values in
        let pieces = vec![
            Piece { path: paths[1].clone(), file_offset: 0, src_bytes: (n * 4) as u64, out_offset: 0 },
            Piece { path: paths[0].clone(), file_offset: 400, src_bytes: ((n - 100) * 4) as u64, out_offset: n * 4 },
        ];
        let want: Vec<f32> = all[1].iter().chain(&all[0][100..]).copied().collect();
        let mut out = vec![0u8; want.len() * 4];
        read_pieces(&pieces, DType::F32, false, &mut out, DType::F32, 4, 1 << 20).unwrap();
        assert!(out.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).eq(want.iter().copied()));
        let mut out = vec![0u8; want.len() * 8];
        let doubled: Vec<Piece> = pieces.iter().map(|p| Piece { out_offset: p.out_offset * 2, ..p.clone() }).collect();
        read_pieces(&doubled, DType::F32, false, &mut out, DType::F64, 4, 1 << 20).unwrap();
        assert!(out.chunks_exact(8).map(|c| f64::from_ne_bytes(c.try_into().unwrap())).eq(want.iter().map(|&v| f64::from(v))));
    }

    #[test]
    fn reads_pieces_in_parallel() {
        let dir = tempfile::tempdir().unwrap();
        let rows = 1000usize;
        let dim = 3usize;
        let vals: Vec<f32> = (0..rows * dim).map(|i| i as f32 * 0.5).collect();
        let mut header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000, 3), }".to_string();
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let off = 10 + header.len() as u64;
        let path = dir.path().join("a.npy");
        let mut f = File::create(&path).unwrap();
        f.write_all(b"\x93NUMPY\x01\x00").unwrap();
        f.write_all(&(header.len() as u16).to_le_bytes()).unwrap();
        f.write_all(header.as_bytes()).unwrap();
        for v in &vals {
            f.write_all(&v.to_le_bytes()).unwrap();
        }
        drop(f);
        let m = read_header(&path).unwrap();
        assert_eq!((m.rows, m.dim, m.data_offset), (1000, 3, off));
        // rows 10..510 then rows 0..10, as f64, in chunks of 1024 elements
        let row = 12u64;
        let pieces = vec![
            Piece {
                path: path.clone(),
                file_offset: off + 10 * row,
                src_bytes: 500 * row,
                out_offset: 0,
            },
            Piece {
                path: path.clone(),
                file_offset: off,
                src_bytes: 10 * row,
                out_offset: 500 * 24,
            },
        ];
        let mut out = vec![0u8; 510 * 24];
        read_pieces(&pieces, DType::F32, false, &mut out, DType::F64, 3, 4096).unwrap();
        let got: Vec<f64> = out
            .chunks_exact(8)
            .map(|c| f64::from_ne_bytes(c.try_into().unwrap()))
            .collect();
        let want: Vec<f64> = vals[30..1530]
            .iter()
            .chain(&vals[..30])
            .map(|v| f64::from(*v))
            .collect();
        assert_eq!(got, want);
        // overlapping or out-of-bounds pieces are refused
        assert!(read_pieces(&pieces, DType::F32, false, &mut out[..100], DType::F64, 2, 4096).is_err());
        // a missing file names the file
        let gone = vec![Piece {
            path: dir.path().join("gone.npy"),
            file_offset: 0,
            src_bytes: 4,
            out_offset: 0,
        }];
        let e = read_pieces(&gone, DType::F32, false, &mut out[..4], DType::F32, 1, 4096).unwrap_err();
        assert!(e.to_string().contains("gone.npy"), "{e}");
    }
}
