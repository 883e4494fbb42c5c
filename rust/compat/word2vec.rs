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
use std::io::{Read, Write};
use std::path::Path;

use super::{export_row_checked, known_words, normalize_block, ReadOptions, WordsBuilder};
use crate::embeddings::{write_atomically, Embeddings};
use crate::error::{Error, Result};
use crate::storage::{ArrayStorage, Storage};
use crate::vocab::Vocab;

/// A file read in large chunks into one buffer, parsed in place (one copy from the
/// page cache; the page cache does not count towards the process's memory).
struct Chunked {
    file: File,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    eof: bool,
}

const CHUNK: usize = 8 << 20;

impl Chunked {
    fn new(file: File) -> Result<Self> {
        Ok(Chunked {
            file,
            buf: crate::storage::try_zeroed_vec(CHUNK, "word2vec read buffer")?,
            pos: 0,
            len: 0,
            eof: false,
        })
    }

    #[inline]
    fn avail(&self) -> &[u8] {
        &self.buf[self.pos..self.len]
    }

    /// Skip ASCII whitespace, reading on as needed; stops at the next other byte or at
    /// the end of the file.
    fn skip_whitespace(&mut self) -> std::io::Result<()> {
        self.skip_while(|b| b.is_ascii_whitespace())
    }

    /// Skip the bytes that `skip` accepts, reading on as needed; stops at the next other
    /// byte or at the end of the file.
    fn skip_while(&mut self, skip: impl Fn(u8) -> bool) -> std::io::Result<()> {
        loop {
            let k = self.avail().iter().take_while(|&&b| skip(b)).count();
            self.pos += k;
            if self.pos < self.len || !self.fill(1)? {
                return Ok(());
            }
        }
    }

    /// Make at least `n` bytes available, unless the file ends first.
    fn fill(&mut self, n: usize) -> std::io::Result<bool> {
        if self.len - self.pos >= n {
            return Ok(true);
        }
        // keep what is left at the front, then read on
        self.buf.copy_within(self.pos..self.len, 0);
        self.len -= self.pos;
        self.pos = 0;
        if self.buf.len() < n {
            self.buf.resize(n.max(CHUNK), 0);
        }
        while self.len < n && !self.eof {
            // read as much as fits (at least n), in large reads
            match self.file.read(&mut self.buf[self.len..]) {
                Ok(0) => self.eof = true,
                Ok(k) => self.len += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.len >= n)
    }
}

/// The longest word accepted (a bound on the buffer when no space comes).
const MAX_WORD: usize = 1 << 20;

/// Read a word2vec binary file.
pub fn read_word2vec_binary(path: &Path, opts: &ReadOptions) -> Result<Embeddings> {
    read_word2vec_inner(path, opts).map_err(|e| match e {
        // I/O errors name the file already, and so do the messages that end with it
        e @ Error::Io { .. } => e,
        Error::Invalid { ref message, .. } if message.ends_with(&format!("({})", path.display())) => e,
        e => e.context(path.display()),
    })
}

fn read_word2vec_inner(path: &Path, opts: &ReadOptions) -> Result<Embeddings> {
    let file = crate::embeddings::open_regular_file(path)?;
    let file_len = file
        .metadata()
        .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?
        .len();
    let io = |e: std::io::Error| Error::io(format!("cannot read {}", path.display()), e);
    let mut r = Chunked::new(file)?;

    r.fill(1024).map_err(io)?;
    let header_len = match r.avail().iter().position(|&b| b == b'\n') {
        Some(p) => p + 1,
        None => r.avail().len().min(1024),
    };
    let header = r.avail()[..header_len].to_vec();
    let (n, dims) = parse_header(&header).map_err(|e| match super::other_format(r.avail()) {
        Some(hint) => Error::invalid("word2vec header", hint),
        None => e,
    })?;
    r.pos += header_len;

    let rows = opts.limit.map_or(n, |l| l.min(n));
    let row_bytes = dims.checked_mul(4).ok_or(Error::Overflow("word2vec row size"))?;
    // Every record needs at least a space and its numbers (the word may be empty).
    let need = (rows as u64)
        .checked_mul(row_bytes as u64 + 1)
        .ok_or(Error::Overflow("word2vec file size"))?;
    let have = file_len.saturating_sub(header.len() as u64);
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
    let mut data = crate::storage::try_zeroed_vec::<f32>(total, "word2vec matrix")?;
    let mut norms = crate::storage::try_zeroed_vec::<f32>(if opts.normalize { rows } else { 0 }, "word2vec norms")?;
    let mut words = WordsBuilder::default();
    words.ends.reserve(rows);
    let ends_early = |record: usize, inside: &str| {
        Error::invalid(
            "word2vec file",
            format!("record {record} of {n}: the file ends inside the {inside} ({})", path.display()),
        )
    };
    // The matrix is filled part by part (PART_ROWS rows). A second thread faults each
    // part's fresh pages in before handing it over, so that the page faults (a good part
    // of the work) run beside the parsing; a third normalizes each part once it is full
    // (just written, still in cache), so that the parsing thread only parses.
    std::thread::scope(|s| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel::<&mut [f32]>();
        let parts = data.chunks_mut((PART_ROWS * dims).max(1));
        s.spawn(move || {
            for part in parts {
                crate::storage::touch_pages(part);
                if tx.send(part).is_err() {
                    break; // the reader stopped (an error)
                }
            }
        });
        let (full_tx, full_rx) = std::sync::mpsc::channel::<(&mut [f32], &mut [f32])>();
        s.spawn(move || {
            for (rows, norms) in full_rx {
                normalize_block(rows, dims, norms);
            }
        });
        let mut norm_parts = norms.chunks_mut(PART_ROWS);
        let mut part: &mut [f32] = &mut [];
        let mut norm_part: &mut [f32] = &mut [];
        let mut k = 0; // rows filled in `part`
        for i in 0..rows {
            if i % 65_536 == 0 {
                crate::cancel::check()?;
            }
            let record = i + 1;
            // skip the line breaks (the previous record's) before the word, and only them: as
            // gensim reads, a word is every byte up to the next space (a tab in it is kept; a
            // record starting with the space is the empty word). gensim skips only `\n`; a
            // `\r` is skipped too, so that records ending in `\r\n` read clean words.
            r.skip_while(|b| b == b'\n' || b == b'\r').map_err(io)?;
            // the word, up to a space
            let mut scanned = 0;
            let word_len = loop {
                if let Some(p) = r.avail()[scanned..].iter().position(|&b| b == b' ') {
                    break scanned + p;
                }
                scanned = r.avail().len();
                if scanned > MAX_WORD {
                    return Err(Error::invalid(
                        "word2vec file",
                        format!("record {record} of {n}: no space within {MAX_WORD} bytes after the word starts"),
                    ));
                }
                if !r.fill(scanned + 1).map_err(io)? {
                    return Err(ends_early(record, "word"));
                }
            };
            let word = &r.buf[r.pos..r.pos + word_len];
            words.push(word, opts.decode, || format!("word2vec record {record}"))?;
            r.pos += word_len + 1;
            // the vector
            if !r.fill(row_bytes).map_err(io)? {
                return Err(ends_early(record, "vector"));
            }
            if i == 0 && looks_like_text_numbers(&r.buf[r.pos..r.pos + row_bytes]) {
                // gensim reads such a file and returns floats made of the digits' bytes
                // (values like 1e-19): a text file, not a silently wrong matrix
                return Err(Error::invalid(
                    "word2vec file",
                    format!(
                        "record 1's vector is text ({:?}), not {dims} binary float32 values ({})",
                        String::from_utf8_lossy(&r.buf[r.pos..r.pos + row_bytes]),
                        path.display()
                    ),
                ));
            }
            if dims > 0 {
                if k * dims == part.len() {
                    part = rx
                        .recv()
                        .map_err(|_| Error::invalid("word2vec file", "internal error: a part of the matrix is missing"))?;
                    norm_part = norm_parts.next().unwrap_or_default();
                    k = 0;
                }
                let row = &mut part[k * dims..(k + 1) * dims];
                for (o, c) in row.iter_mut().zip(r.buf[r.pos..r.pos + row_bytes].chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
                if let Some(col) = row.iter().position(|v| !v.is_finite()) {
                    return Err(Error::invalid(
                        "word2vec file",
                        format!("record {record} of {n}: value {} is {}, not a finite number ({})", col + 1, row[col], path.display()),
                    ));
                }
                k += 1;
                if opts.normalize && (k * dims == part.len() || i + 1 == rows) {
                    // hand the full part (and its norms) to the normalizing thread
                    let full = std::mem::take(&mut part);
                    let full_norms = std::mem::take(&mut norm_part);
                    let filled = k * dims;
                    let (rows_done, rest) = full.split_at_mut(filled);
                    let (norms_done, norms_rest) = full_norms.split_at_mut(k);
                    part = rest;
                    norm_part = norms_rest;
                    k = 0;
                    if full_tx.send((rows_done, norms_done)).is_err() {
                        return Err(Error::invalid("word2vec file", "internal error: the normalizing thread stopped"));
                    }
                }
            }
            r.pos += row_bytes;
        }
        Ok(())
    })?;
    if opts.limit.is_none() {
        // Without a limit, all records announced are read: anything but whitespace after them means the
        // header disagrees with the file (as the text reader says too).
        r.skip_whitespace().map_err(io)?;
        if r.pos < r.len {
            return Err(Error::invalid(
                "word2vec file",
                format!(
                    "the header announces {n} words, but more data follows record {n}: a wrong header \
                     (limit={n} reads only the announced words) ({})",
                    path.display()
                ),
            ));
        }
    }
    if dims == 0 {
        // what normalizing an empty row gives (-0.0), as before
        norms.fill(crate::embeddings::l2_normalize(&mut []));
    }
    let norms = opts.normalize.then_some(norms);
    // (word2vec records count from 1)
    let words = words.finish().map_err(|e| super::duplicate_at(e, 1, "record").context(path.display()))?;
    super::check_norms(norms.as_deref(), &words).map_err(|e| e.context(path.display()))?;
    let storage = Storage::Array(ArrayStorage::new(data, rows, dims)?);
    Embeddings::new(None, Vocab::Simple(words), storage, norms).map_err(|e| e.context(path.display()))
}

/// Rows of the matrix handed over at a time by the thread that faults them in.
const PART_ROWS: usize = 256;

/// Are these bytes of a binary vector written numbers (what a text file's first line after its
/// header holds, read as a binary record)?
///
/// Every byte is a digit, a sign, a point, an exponent or a blank, and every piece between
/// blanks is a number; the last piece counts only when a blank follows it (it may be cut in
/// the middle: "1e" of "1e-05", "-" of "-0.5"), unless it is the only one. The top byte of
/// a positive float32 is in that set only for values of about 1e-19 (a blank), 1e-11 to 2e-4
/// ('+', '-', '.', '0' to '9'), 2048 to 8191 ('E') or about 1e22 ('e'), and never for a
/// negative one; the values of an embedding, 1e-3 to 10, have top bytes of 0x3a to 0x41 or
/// 0xba to 0xc1 (':', '<', '?', 'A', ... outside the set). Every byte of a whole record must
/// be in the set, and form numbers between blanks: a record such as b"1.392.18" (1.7e-4,
/// 4.2e-5) is not one number and loads. (A record whose bytes all are digits, b"12345678",
/// is taken for text: vanishingly rare in a real file.)
fn looks_like_text_numbers(bytes: &[u8]) -> bool {
    let is_blank = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    if !bytes.iter().all(|&b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E') || is_blank(&b)) {
        return false;
    }
    let pieces: Vec<&[u8]> = bytes.split(is_blank).filter(|p| !p.is_empty()).collect();
    let Some((&last, whole)) = pieces.split_last() else {
        return false;
    };
    let number = |p: &&[u8]| fast_float2::parse::<f64, _>(*p).is_ok();
    let last_ok = if bytes.last().is_some_and(is_blank) {
        number(&last)
    } else {
        // cut where the record ends: the start of a number (with a digit if it is all there is)
        number_prefix(last) && (!whole.is_empty() || last.iter().any(u8::is_ascii_digit))
    };
    last_ok && whole.iter().all(number)
}

/// Could `p` be the start of a written number (`[+-]digits[.digits][e[+-]digits]`, any part
/// cut off)?
fn number_prefix(p: &[u8]) -> bool {
    let mut i = 0;
    let skip = |i: &mut usize, f: &dyn Fn(u8) -> bool| {
        while *i < p.len() && f(p[*i]) {
            *i += 1;
        }
    };
    if i < p.len() && matches!(p[i], b'+' | b'-') {
        i += 1;
    }
    let start = i;
    skip(&mut i, &|b| b.is_ascii_digit());
    if i < p.len() && p[i] == b'.' {
        i += 1;
        skip(&mut i, &|b| b.is_ascii_digit());
    }
    let digits = p[start..i].iter().any(u8::is_ascii_digit);
    if digits && i < p.len() && matches!(p[i], b'e' | b'E') {
        i += 1;
        if i < p.len() && matches!(p[i], b'+' | b'-') {
            i += 1;
        }
        skip(&mut i, &|b| b.is_ascii_digit());
    }
    i == p.len()
}

fn parse_header(line: &[u8]) -> Result<(usize, usize)> {
    let bad = || {
        Error::invalid(
            "word2vec header",
            format!("expected a first line \"<words> <dims>\", found {}", super::excerpt(line)),
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

/// Write the known words of `emb` as a word2vec binary file (rows times norms).
pub fn write_word2vec_binary(emb: &Embeddings, path: &Path) -> Result<()> {
    let words = known_words(emb, "word2vec")?;
    for w in words.iter() {
        // gensim and vecfusion read the bytes up to the first space as the word, after
        // skipping line breaks: a word with a space, or starting with a line break, would not
        // read back (the empty word and other whitespace do, as gensim writes them)
        if w.contains(' ') || w.starts_with(['\n', '\r']) {
            return Err(Error::argument(format!(
                "the word {w:?} contains a space or starts with a line break and cannot be written as word2vec"
            )));
        }
    }
    let dims = emb.dims();
    write_atomically(path, |w| {
        writeln!(w, "{} {}", words.len(), dims)?;
        let mut row = vec![0f32; dims];
        let mut bytes = Vec::with_capacity(dims * 4 + 64);
        for (i, word) in words.iter().enumerate() {
            if i % 65_536 == 0 {
                crate::cancel::check_io()?;
            }
            export_row_checked(emb, words, i, &mut row, "word2vec").map_err(std::io::Error::other)?;
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
