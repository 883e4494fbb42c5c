//! word2vec binary files.
//!
//! ```text
//! "<n> <dims>\n"  then n times:  word ' ' dims x f32 (little endian) ['\n']
//! ```
//!
//! Whitespace before a word (the newline that ends the previous record) is skipped,
//! as the reference readers do. The file is streamed: only the records that are
//! needed are read (`limit`), and memory holds just the matrix and the words.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use rayon::prelude::*;

use super::{export_row, known_words, normalize_block, ReadOptions, WordsBuilder};
use crate::embeddings::{write_atomically, Embeddings};
use crate::error::{Error, Result};
use crate::storage::{ArrayStorage, Storage};
use crate::vocab::Vocab;

/// The longest word accepted (a bound on the window when no space comes).
const MAX_WORD: usize = 1 << 20;

/// The file is read in windows of this many bytes (at least one record plus
/// [`MAX_WORD`]), two at a time: while the records of one are converted on all cores,
/// the next is read.
const WINDOW: usize = 32 << 20;

/// A window of the file: `buf[..len]` holds the bytes from file offset `start`.
struct Window {
    buf: Vec<u8>,
    start: u64,
    len: usize,
    /// the window reaches the end of the file
    eof: bool,
}

impl Window {
    fn new() -> Self {
        Window {
            buf: Vec::new(),
            start: 0,
            len: 0,
            eof: false,
        }
    }

    /// Read up to `want` bytes from `start` (fewer where the file ends).
    fn read(&mut self, file: &File, file_len: u64, start: u64, want: usize) -> std::io::Result<()> {
        let left = file_len.saturating_sub(start);
        let len = want.min(usize::try_from(left).unwrap_or(usize::MAX));
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        crate::embeddings::read_into_at(file, &mut self.buf[..len], start)?;
        self.start = start;
        self.len = len;
        self.eof = len as u64 == left;
        Ok(())
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Read a word2vec binary file.
///
/// The file is read in windows ([`WINDOW`]); in each, the records are found by one
/// serial scan (words collected, vector positions noted), then their vectors are
/// converted and normalized on all cores straight into the matrix, while the next window
/// is read. Memory: the matrix, the words and two windows.
pub fn read_word2vec_binary(path: &Path, opts: &ReadOptions) -> Result<Embeddings> {
    let file = File::open(path).map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    let file_len = file
        .metadata()
        .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?
        .len();
    let io = |e: std::io::Error| Error::io(format!("cannot read {}", path.display()), e);

    let mut head = Window::new();
    head.read(&file, file_len, 0, 1024).map_err(io)?;
    let header_len = match head.bytes().iter().position(|&b| b == b'\n') {
        Some(p) => p + 1,
        None => head.len,
    };
    let header = &head.bytes()[..header_len];
    let (n, dims) = parse_header(header)?;

    let rows = opts.limit.map_or(n, |l| l.min(n));
    let row_bytes = dims.checked_mul(4).ok_or(Error::Overflow("word2vec row size"))?;
    // Every record needs at least a one-byte word, a space and its numbers.
    let need = (rows as u64)
        .checked_mul(row_bytes as u64 + 2)
        .ok_or(Error::Overflow("word2vec file size"))?;
    let have = file_len.saturating_sub(header_len as u64);
    if need > have {
        return Err(Error::invalid(
            "word2vec file",
            format!(
                "the header announces {n} words of {dims} dimensions, which needs at least {need} bytes, but only {have} follow the header ({})",
                path.display()
            ),
        ));
    }
    let total = rows.checked_mul(dims).ok_or(Error::Overflow("matrix size"))?;
    // (4 KiB pages: on a busy machine fresh huge pages can be much slower to fault in)
    let mut data = vec![0f32; total];
    let mut norms = vec![0f32; if opts.normalize { rows } else { 0 }];
    let mut scan = Scanner {
        file: &file,
        file_len,
        path,
        n,
        rows,
        row_bytes,
        lossy: opts.lossy,
        // a window holds at least one whole record (and a word of MAX_WORD bytes)
        window: WINDOW.max(row_bytes.saturating_add(MAX_WORD + 64)),
        words: WordsBuilder::default(),
    };
    scan.words.ends.reserve(rows);

    // Window k's vectors are converted on all cores while window k + 1 is read and
    // scanned.
    let mut cur = Window::new();
    let mut cur_offsets: Vec<usize> = Vec::new(); // vector positions in `cur`
    let mut next = Window::new();
    let mut next_offsets: Vec<usize> = Vec::new();
    let mut resume = scan.read_and_scan(&mut cur, header_len as u64, 0, &mut cur_offsets)?;
    let mut done = 0usize; // records scanned before `cur`
    while !cur_offsets.is_empty() {
        let first = done;
        done += cur_offsets.len();
        let next_start = cur.start + resume as u64;
        let block = &mut data[first * dims..done * dims];
        let block_norms: &mut [f32] = if opts.normalize { &mut norms[first..done] } else { &mut [] };
        let (scanned, ()) = rayon::join(
            || {
                next_offsets.clear();
                if done < rows {
                    scan.read_and_scan(&mut next, next_start, done, &mut next_offsets)
                } else {
                    Ok(0)
                }
            },
            || convert_rows(cur.bytes(), &cur_offsets, block, dims, block_norms, opts.normalize),
        );
        resume = scanned?;
        std::mem::swap(&mut cur, &mut next);
        std::mem::swap(&mut cur_offsets, &mut next_offsets);
    }
    let norms = opts.normalize.then_some(norms);
    let words = scan.words.finish().map_err(|e| e.context(path.display()))?;
    let storage = Storage::Array(ArrayStorage::new(data, rows, dims)?);
    Embeddings::new(None, Vocab::Simple(words), storage, norms).map_err(|e| e.context(path.display()))
}

/// Finds the records of a word2vec file in windows and collects their words.
struct Scanner<'a> {
    file: &'a File,
    file_len: u64,
    path: &'a Path,
    /// words announced by the header
    n: usize,
    /// words to read
    rows: usize,
    row_bytes: usize,
    lossy: bool,
    window: usize,
    words: WordsBuilder,
}

impl Scanner<'_> {
    /// Read `win` from file offset `start` and find the records (from record `done`)
    /// that lie wholly inside it: their words are collected, the positions of their
    /// vectors pushed to `offsets` (at least one record, unless all `rows` are read).
    /// Returns where the next window starts (relative to `win`).
    fn read_and_scan(&mut self, win: &mut Window, mut start: u64, done: usize, offsets: &mut Vec<usize>) -> Result<usize> {
        let io = |e: std::io::Error| Error::io(format!("cannot read {}", self.path.display()), e);
        // bytes worth reading for the records left (windows stay small with `limit`)
        let left = self.rows - done;
        let mut want = self.window.min(left.saturating_mul(self.row_bytes + 64).saturating_add(4096));
        loop {
            win.read(self.file, self.file_len, start, want).map_err(io)?;
            let resume = self.scan(win, done, offsets)?;
            if !offsets.is_empty() || done == self.rows {
                return Ok(resume);
            }
            // no whole record: read on from the record's start with a full-size window
            // (which holds any record whose word has at most MAX_WORD bytes)
            if resume == 0 && win.len >= self.window {
                return Err(Error::invalid("word2vec file", format!("record {} does not fit in a window", done + 1)));
            }
            start = win.start + resume as u64;
            want = self.window;
        }
    }

    /// The scan of [`Scanner::read_and_scan`].
    fn scan(&mut self, win: &Window, done: usize, offsets: &mut Vec<usize>) -> Result<usize> {
        let (n, row_bytes) = (self.n, self.row_bytes);
        let path = self.path;
        let ends_early = |record: usize, inside: &str| {
            Error::invalid(
                "word2vec file",
                format!("record {record} of {n}: the file ends inside the {inside} ({})", path.display()),
            )
        };
        let buf = win.bytes();
        let mut pos = 0usize; // after the last whole record
        while done + offsets.len() < self.rows {
            let record = done + offsets.len() + 1;
            // skip the whitespace (the previous record's newline) before the word
            let start = pos + buf[pos..].iter().take_while(|b| b.is_ascii_whitespace()).count();
            // the word, up to a space
            let Some(word_len) = buf[start..].iter().position(|&b| b == b' ') else {
                if buf.len() - start > MAX_WORD {
                    return Err(Error::invalid(
                        "word2vec file",
                        format!("record {record} of {n}: no space within {MAX_WORD} bytes after the word starts"),
                    ));
                }
                if win.eof {
                    return Err(ends_early(record, "word"));
                }
                return Ok(start); // the record goes on in the next window
            };
            let vec_at = start + word_len + 1;
            if buf.len() - vec_at < row_bytes {
                if win.eof {
                    return Err(ends_early(record, "vector"));
                }
                return Ok(start);
            }
            self.words
                .push(trim_ascii(&buf[start..start + word_len]), self.lossy, || format!("word2vec record {record}"))?;
            offsets.push(vec_at);
            pos = vec_at + row_bytes;
        }
        Ok(pos)
    }
}

/// Records converted by one task.
const CONVERT_BLOCK: usize = 512;

/// Copy the little-endian vectors at `offsets` of `buf` into the rows of `out`, on all
/// cores, normalizing them (norms into `norms`) when `normalize`.
fn convert_rows(buf: &[u8], offsets: &[usize], out: &mut [f32], dims: usize, norms: &mut [f32], normalize: bool) {
    if dims == 0 {
        return;
    }
    let row_bytes = dims * 4;
    let convert = |rows: &mut [f32], offs: &[usize]| {
        for (row, &at) in rows.chunks_exact_mut(dims).zip(offs) {
            for (o, c) in row.iter_mut().zip(buf[at..at + row_bytes].chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    };
    if normalize {
        out.par_chunks_mut(CONVERT_BLOCK * dims)
            .zip(offsets.par_chunks(CONVERT_BLOCK))
            .zip(norms.par_chunks_mut(CONVERT_BLOCK))
            .for_each(|((rows, offs), n)| {
                convert(rows, offs);
                normalize_block(rows, dims, n);
            });
    } else {
        out.par_chunks_mut(CONVERT_BLOCK * dims)
            .zip(offsets.par_chunks(CONVERT_BLOCK))
            .for_each(|(rows, offs)| convert(rows, offs));
    }
}

fn parse_header(line: &[u8]) -> Result<(usize, usize)> {
    let bad = || {
        Error::invalid(
            "word2vec header",
            format!(
                "expected a first line \"<words> <dims>\", found {:?}",
                String::from_utf8_lossy(line).trim_end()
            ),
        )
    };
    let text = std::str::from_utf8(line).map_err(|_| bad())?;
    let mut parts = text.split_ascii_whitespace();
    let n = parts.next().and_then(|p| p.parse::<usize>().ok()).ok_or_else(bad)?;
    let d = parts.next().and_then(|p| p.parse::<usize>().ok()).ok_or_else(bad)?;
    if parts.next().is_some() || !line.ends_with(b"\n") {
        return Err(bad());
    }
    Ok((n, d))
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let s = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let e = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(s, |p| p + 1);
    &b[s..e.max(s)]
}

/// Write the known words of `emb` as a word2vec binary file (rows times norms).
pub fn write_word2vec_binary(emb: &Embeddings, path: &Path) -> Result<()> {
    let words = known_words(emb, "word2vec")?;
    for w in words.iter() {
        if w.bytes().any(|b| b == b' ') {
            return Err(Error::argument(format!(
                "the word {w:?} contains a space and cannot be written as word2vec"
            )));
        }
    }
    let dims = emb.dims();
    write_atomically(path, |w| {
        writeln!(w, "{} {}", words.len(), dims)?;
        let mut row = vec![0f32; dims];
        let mut bytes = Vec::with_capacity(dims * 4 + 64);
        for (i, word) in words.iter().enumerate() {
            export_row(emb, i, &mut row);
            bytes.clear();
            bytes.extend_from_slice(word.as_bytes());
            bytes.push(b' ');
            for x in &row {
                bytes.extend_from_slice(&x.to_le_bytes());
            }
            bytes.push(b'\n');
            w.write_all(&bytes)?;
        }
        Ok(())
    })
}
