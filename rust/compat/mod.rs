//! Other embedding formats: word2vec binary, text (GloVe, and word2vec text with a
//! `"n d"` header) and fastText `.bin` models.
//!
//! Readers build [`Embeddings`] with a simple vocabulary (fastText: a fastText subword
//! vocabulary). By default rows are L2-normalized and the norms kept, as finalfusion
//! does; `normalize: false` keeps the vectors exactly as stored in the file.
//! Writers write the vectors as the file had them (rows times norms).

pub mod fasttext;
pub mod fmt;
pub mod text;
pub mod word2vec;

use rayon::prelude::*;

use crate::embeddings::{l2_normalize, normalize_by_sum_of_squares, Embeddings};
use crate::error::{Error, Result};
use crate::storage::{ArrayStorage, Storage};
use crate::vocab::{Vocab, WordList};

/// How the bytes of a word become text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Decode {
    /// UTF-8; a word that is not valid UTF-8 is an error.
    #[default]
    Strict,
    /// UTF-8; invalid bytes become U+FFFD (distinct words can become one).
    Lossy,
    /// ISO-8859-1 (Latin-1): every byte is the character of that code point, so every byte
    /// string is a word and distinct byte strings stay distinct (gensim's `encoding='latin-1'`).
    Latin1,
}

impl From<bool> for Decode {
    /// `lossy`: `true` is [`Decode::Lossy`], `false` [`Decode::Strict`].
    fn from(lossy: bool) -> Self {
        if lossy {
            Decode::Lossy
        } else {
            Decode::Strict
        }
    }
}

impl Decode {
    /// Whether a word's text is not its bytes as they are (not strict UTF-8 of those bytes):
    /// true for a Latin-1 word with a byte above 0x7F and for a word with invalid UTF-8.
    pub fn changes(self, raw: &[u8]) -> bool {
        match self {
            Decode::Latin1 => !raw.is_ascii(),
            _ => std::str::from_utf8(raw).is_err(),
        }
    }
}

/// Options shared by the word2vec and text readers.
#[derive(Clone, Copy, Debug)]
pub struct ReadOptions {
    /// How words' bytes are decoded (strict UTF-8 by default).
    pub decode: Decode,
    /// Read at most this many words (the rest of the file is not read).
    pub limit: Option<usize>,
    /// L2-normalize rows and keep the norms (true), or keep rows as stored (false).
    pub normalize: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            decode: Decode::Strict,
            limit: None,
            normalize: true,
        }
    }
}

/// Collects words (as UTF-8 bytes) for a [`WordList`].
#[derive(Default)]
pub(crate) struct WordsBuilder {
    pub bytes: Vec<u8>,
    pub ends: Vec<usize>,
}

impl WordsBuilder {
    /// Append a word given as raw bytes; `where_` describes its position for errors.
    pub fn push(&mut self, raw: &[u8], decode: Decode, where_: impl FnOnce() -> String) -> Result<()> {
        // room first, fallibly (a MemoryError, not an abort, when memory runs out): Latin-1
        // takes up to 2 bytes a byte, U+FFFD 3
        let most = raw.len().saturating_mul(if decode == Decode::Strict { 1 } else { 3 });
        if self.bytes.capacity() - self.bytes.len() < most {
            let extra = most.max(self.bytes.len());
            crate::storage::try_reserve(&mut self.bytes, extra, "vocabulary words")?;
        }
        if self.ends.len() == self.ends.capacity() {
            let extra = self.ends.len().max(64);
            crate::storage::try_reserve(&mut self.ends, extra, "vocabulary words")?;
        }
        if decode == Decode::Latin1 {
            // U+0000..U+00FF: ASCII bytes as they are, the others as two UTF-8 bytes
            for &b in raw {
                let mut buf = [0u8; 2];
                self.bytes.extend_from_slice(char::from(b).encode_utf8(&mut buf).as_bytes());
            }
            self.ends.push(self.bytes.len());
            return Ok(());
        }
        match std::str::from_utf8(raw) {
            Ok(_) => self.bytes.extend_from_slice(raw),
            Err(_) if decode == Decode::Lossy => {
                self.bytes.extend_from_slice(String::from_utf8_lossy(raw).as_bytes());
            }
            Err(e) => {
                let at = where_();
                let at = if at.is_empty() { at } else { format!("{at}: ") };
                return Err(Error::invalid(
                    "UTF-8",
                    format!(
                        "{at}the word {:?} is not valid UTF-8 ({e}); read with encoding='latin-1' if the file is \
                         Latin-1, or lossy=True to replace invalid bytes with U+FFFD",
                        String::from_utf8_lossy(raw)
                    ),
                ));
            }
        }
        self.ends.push(self.bytes.len());
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Append the words of another builder.
    pub fn extend(&mut self, other: &WordsBuilder) -> Result<()> {
        crate::storage::try_reserve(&mut self.bytes, other.bytes.len(), "vocabulary words")?;
        crate::storage::try_reserve(&mut self.ends, other.ends.len(), "vocabulary words")?;
        let base = self.bytes.len();
        self.bytes.extend_from_slice(&other.bytes);
        self.ends.extend(other.ends.iter().map(|e| e + base));
        Ok(())
    }

    pub fn finish(mut self) -> Result<WordList> {
        self.bytes.shrink_to_fit();
        WordList::from_parts(self.bytes, self.ends)
    }
}

/// Norms from normalizing finite rows at load: one beyond float32's range (a row such as
/// `[3e38, 3e38]`, whose length overflows f32) cannot be kept, since the unit row times an
/// infinite norm does not give the row back (writing the file out would write `inf`).
pub(crate) fn check_norms(norms: Option<&[f32]>, words: &WordList) -> Result<()> {
    let Some(i) = norms.and_then(|n| n.iter().position(|x| x.is_infinite())) else {
        return Ok(());
    };
    Err(Error::invalid(
        "vectors",
        format!(
            "the vector of {:?} (row {i}) is longer than float32's range (its norm is above 3.4e38), \
             so it cannot be stored normalized with its norm: load with normalize=False",
            words.get(i).unwrap_or_default()
        ),
    ))
}

/// L2-normalize each `dims`-long row in parallel; returns the former norms.
pub fn normalize_rows(data: &mut [f32], dims: usize) -> Vec<f32> {
    if dims == 0 {
        return Vec::new();
    }
    let mut norms = vec![0f32; data.len() / dims];
    data.par_chunks_mut(dims * 1024)
        .zip(norms.par_chunks_mut(1024))
        .for_each(|(rows, n)| normalize_block(rows, dims, n));
    norms
}

/// L2-normalize the `dims`-long rows of `rows` (serially) and store their former norms
/// in `norms`; bit for bit what [`l2_normalize`] gives for each row.
///
/// `l2_normalize` sums the squares of a row in order, a chain of dependent additions;
/// here eight rows are summed side by side (each still in its own order), which hides
/// the latency of the additions.
pub(crate) fn normalize_block(rows: &mut [f32], dims: usize, norms: &mut [f32]) {
    if dims == 0 {
        norms.fill(l2_normalize(&mut []));
        return;
    }
    let mut groups = rows.chunks_exact_mut(8 * dims);
    let mut norm_groups = norms.chunks_exact_mut(8);
    for (g, ng) in (&mut groups).zip(&mut norm_groups) {
        let sums = sum_squares8(g, dims);
        for ((row, n), s) in g.chunks_exact_mut(dims).zip(ng.iter_mut()).zip(sums) {
            *n = normalize_by_sum_of_squares(row, s);
        }
    }
    for (row, n) in groups.into_remainder().chunks_exact_mut(dims).zip(norm_groups.into_remainder()) {
        *n = l2_normalize(row);
    }
}

/// The sums of squares of 8 consecutive `dims`-long rows, each summed in order from the
/// first element (as `Iterator::sum` does).
#[inline]
fn sum_squares8(g: &[f32], dims: usize) -> [f32; 8] {
    let mut r = g.chunks_exact(dims);
    let (Some(r0), Some(r1), Some(r2), Some(r3), Some(r4), Some(r5), Some(r6), Some(r7)) =
        (r.next(), r.next(), r.next(), r.next(), r.next(), r.next(), r.next(), r.next())
    else {
        return [0.0; 8];
    };
    // (-0.0 + x*x == 0.0 + x*x for every x: starting from 0.0 is what `sum` gives)
    let mut a = [0f32; 8];
    for (((((((x0, x1), x2), x3), x4), x5), x6), x7) in
        r0.iter().zip(r1).zip(r2).zip(r3).zip(r4).zip(r5).zip(r6).zip(r7)
    {
        a[0] += x0 * x0;
        a[1] += x1 * x1;
        a[2] += x2 * x2;
        a[3] += x3 * x3;
        a[4] += x4 * x4;
        a[5] += x5 * x5;
        a[6] += x6 * x6;
        a[7] += x7 * x7;
    }
    a
}

/// Turn little-endian f32 values read from a file into host order (in place; nothing to
/// do on little-endian hosts).
pub(crate) fn le_to_host(data: &mut [f32]) {
    if cfg!(target_endian = "big") {
        for x in data.iter_mut() {
            *x = f32::from_bits(u32::from_le(x.to_bits()));
        }
    }
}

/// Turn the vocabulary's `duplicate word "w" at rows a and b` into positions in the file:
/// `{unit} b+first: duplicate word "w", first at {unit} a+first (...)`; other errors
/// pass unchanged.
pub(crate) fn duplicate_at(e: Error, first: u64, unit: &str) -> Error {
    if let Error::Invalid { what: "vocabulary", message } = &e {
        if let Some(rest) = message.strip_prefix("duplicate word ") {
            if let Some((word, rows)) = rest.rsplit_once(" at rows ") {
                if let Some((a, b)) = rows.split_once(" and ") {
                    if let (Ok(a), Ok(b)) = (a.parse::<u64>(), b.parse::<u64>()) {
                        let what = if unit == "line" { "text embeddings" } else { "word2vec file" };
                        return Error::invalid(
                            what,
                            format!(
                                "{unit} {}: duplicate word {word}, first at {unit} {} (every word may appear only once)",
                                b + first,
                                a + first
                            ),
                        );
                    }
                }
            }
        }
    }
    e
}

/// Simple-vocabulary embeddings from words and a row-major matrix.
pub(crate) fn assemble(words: WordsBuilder, mut data: Vec<f32>, dims: usize, normalize: bool) -> Result<Embeddings> {
    let rows = words.len();
    if rows.checked_mul(dims) != Some(data.len()) {
        return Err(Error::invalid(
            "matrix",
            format!("{} values for {rows} words of {dims} dimensions", data.len()),
        ));
    }
    // (with 0 dims there is nothing to normalize: every norm is 0)
    let norms = if !normalize {
        None
    } else if dims == 0 {
        Some(vec![0f32; rows])
    } else {
        Some(normalize_rows(&mut data, dims))
    };
    let words = words.finish()?;
    check_norms(norms.as_deref(), &words)?;
    let storage = Storage::Array(ArrayStorage::new(data, rows, dims)?);
    Embeddings::new(None, Vocab::Simple(words), storage, norms)
}

/// The vector of known word `i` as it would be written to a file: the stored row
/// times the word's norm (rows of raw embeddings have no norms and stay as they are).
#[inline]
pub(crate) fn export_row(emb: &Embeddings, i: usize, out: &mut [f32]) {
    emb.storage.row_into(i, out);
    if let Some(norms) = &emb.norms {
        let n = norms[i];
        if n != 1.0 {
            for x in out.iter_mut() {
                *x *= n;
            }
        }
    }
}

/// [`export_row`] for a writer of `format` files: an error naming the word when its stored
/// norm is no length (NaN, infinite or negative: a memory-mapped file's norms are not
/// checked at open) or when the vector to be written holds NaN or infinity, which the
/// readers of these formats (vecfusion's among them) refuse.
pub(crate) fn export_row_checked(emb: &Embeddings, words: &WordList, i: usize, out: &mut [f32], format: &str) -> Result<()> {
    let word = || words.get(i).unwrap_or_default();
    if let Some(norms) = &emb.norms {
        let n = norms[i];
        if !(n.is_finite() && n >= 0.0) {
            return Err(Error::invalid(
                "norms",
                format!(
                    "the stored norm of {:?} (row {i}) is {n}, which is no length (a norm is finite and >= 0): \
                     its vector cannot be written as {format}",
                    word()
                ),
            ));
        }
    }
    export_row(emb, i, out);
    if let Some(x) = first_non_finite(out) {
        return Err(Error::invalid(
            "vectors",
            format!("the vector of {:?} (row {i}) holds {x}: {format} files hold finite numbers only", word()),
        ));
    }
    Ok(())
}

/// The first NaN or infinity of `row`, if any.
pub(crate) fn first_non_finite(row: &[f32]) -> Option<f32> {
    // (an exponent of all ones is infinity or NaN; the OR of every value's test vectorizes,
    // the search runs only when there is one)
    let any = row.iter().fold(false, |acc, x| acc | (x.to_bits() & 0x7f80_0000 == 0x7f80_0000));
    if any {
        row.iter().find(|x| !x.is_finite()).copied()
    } else {
        None
    }
}

/// The known words of `emb` (floret vocabularies have none: an error).
pub(crate) fn known_words<'a>(emb: &'a Embeddings, format: &str) -> Result<&'a WordList> {
    let words = emb.vocab.words().ok_or_else(|| {
        Error::argument(format!(
            "a {} has no word list and cannot be written as {format}",
            emb.vocab.kind()
        ))
    })?;
    // the words are about to be copied: a memory-mapped automaton is verified first
    words.verify_fst()?;
    Ok(words)
}

/// Turn an I/O error from a reader into the crate error (an unexpected end of file
/// becomes a format error).
pub(crate) fn read_err(path: &std::path::Path, what: &'static str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        // (the reader's caller adds the path, as it does to every format error)
        let _ = path;
        Error::invalid(what, "the file ends early")
    } else {
        Error::io(format!("cannot read {}", path.display()), e)
    }
}

/// The compression format of a file, from its first bytes: `"gzip"`, `"bzip2"`, `"xz"`,
/// `"zstd"` or `"zip"`; None when it does not start like a compressed file (or cannot be read).
/// A text embedding file whose first word merely starts like a compressor's magic bytes (a
/// GloVe word "BZh5") is no compressed file: its first line reads as text.
pub fn compression_of(path: &std::path::Path) -> Option<&'static str> {
    use std::io::Read;
    let mut head = [0u8; 6];
    let mut f = crate::embeddings::open_regular_file(path).ok()?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return None,
        }
    }
    compression_of_bytes(&head[..n]).filter(|_| !first_line_reads_as_text(path))
}

/// Whether the first line of the file at `path` (within its first MiB, or the whole file
/// when it has no line break) reads as a line of a text embedding file; false if it cannot
/// be read. A compressor's header holds control bytes (as does a zip entry stored
/// uncompressed, whose header the text follows); the words of text files do not.
fn first_line_reads_as_text(path: &std::path::Path) -> bool {
    use std::io::{BufRead, BufReader, Read};
    const LIMIT: u64 = 1 << 20;
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let mut line = Vec::new();
    let control = |&b: &u8| (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)) || b == 0x7f;
    match BufReader::new(file).take(LIMIT).read_until(b'\n', &mut line) {
        Ok(n) if line.ends_with(b"\n") || (n as u64) < LIMIT => !line.iter().any(control) && text::reads_as_text_line(&line),
        _ => false,
    }
}

/// See [`compression_of`].
pub fn compression_of_bytes(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Some("gzip")
    } else if head.starts_with(b"BZh") && head.get(3).is_some_and(|c| (b'1'..=b'9').contains(c)) {
        Some("bzip2")
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some("xz")
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("zstd")
    } else if head.starts_with(b"PK\x03\x04") {
        Some("zip")
    } else {
        None
    }
}

/// A format error for a compressed input file, saying how to proceed.
pub fn compressed_error(path: &std::path::Path, kind: &str) -> Error {
    let how = match kind {
        "gzip" => "gunzip",
        "bzip2" => "bunzip2",
        "xz" => "unxz",
        "zstd" => "unzstd",
        _ => "unzip",
    };
    Error::invalid(
        "file",
        format!(
            "{} is {kind}-compressed; vecfusion reads uncompressed files only: decompress it first (e.g. `{how}`)",
            path.display()
        ),
    )
}

/// Refuse a compressed input file with a clear error (instead of failing on its bytes).
pub fn check_not_compressed(path: &std::path::Path) -> Result<()> {
    match compression_of(path) {
        Some(kind) => Err(compressed_error(path, kind)),
        None => Ok(()),
    }
}

/// The start of `bytes` for an error message: at most 60 characters, quoted and escaped,
/// with `...` when there is more.
pub(crate) fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end_matches(|c: char| c.is_ascii_whitespace());
    let short: String = text.chars().take(60).collect();
    // as Rust's `{:?}`, and whitespace other than the space escaped too (a no-break space
    // after a number would look like nothing is wrong with it)
    let mut quoted = String::with_capacity(short.len() + 2);
    quoted.push('"');
    for c in short.chars() {
        if c.is_whitespace() && c != ' ' && !matches!(c, '\t' | '\n' | '\r') {
            quoted.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            quoted.extend(c.escape_debug());
        }
    }
    quoted.push('"');
    if short.len() < text.len() {
        quoted.push_str("...");
    }
    quoted
}

/// If `head` (the first bytes of a file) starts like a file of another format that
/// vecfusion reads, a message that says which loader to use.
pub(crate) fn other_format(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(b"FiFu") {
        Some("this is a finalfusion file: read it with vf.load")
    } else if head.starts_with(&crate::compat::fasttext::FASTTEXT_MAGIC.to_le_bytes()) {
        Some("this is a fastText model: read it with vf.load_fasttext")
    } else if head.starts_with(b"\x93NUMPY") {
        Some("this is a NumPy .npy array, not embeddings with words (a folder of .npy files reads with vf.EmbeddingReader)")
    } else {
        None
    }
}

/// Do the first lines after the first one look like text embeddings (`word v1 v2 ...`)?
/// Used to explain an error when a text file is read as word2vec binary or the reverse.
pub fn looks_like_text(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut head = Vec::new();
    let Ok(f) = crate::embeddings::open_regular_file(path) else {
        return false;
    };
    if f.take(1 << 16).read_to_end(&mut head).is_err() {
        return false;
    }
    let mut lines = head.split(|&b| b == b'\n').skip(1).take(3).peekable();
    if lines.peek().is_none() {
        return false;
    }
    let mut complete = 0;
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Ok(text) = std::str::from_utf8(line) else {
            return false;
        };
        let mut fields = text.split([' ', '\t']).filter(|f| !f.is_empty());
        if fields.next().is_none() {
            continue;
        }
        let mut values = 0;
        for f in fields {
            if f.parse::<f32>().is_err() {
                return false;
            }
            values += 1;
        }
        if values == 0 {
            return false;
        }
        complete += 1;
    }
    complete > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_beyond_the_f32_range_of_squares_are_normalized() {
        for scale in [1e20f32, 3e38, 1e-25, 1e-37] {
            let mut v = [scale, -scale, scale, 0.0];
            let norm = l2_normalize(&mut v);
            let want_norm = (3.0f64).sqrt() * f64::from(scale);
            assert!(((f64::from(norm) - want_norm) / want_norm).abs() < 1e-6 || (want_norm > f64::from(f32::MAX) && norm.is_infinite()), "{scale}: {norm}");
            let unit = 1.0 / 3f32.sqrt();
            for (x, w) in v.iter().zip([unit, -unit, unit, 0.0]) {
                assert!((x - w).abs() < 1e-6, "{scale}: {v:?}");
            }
            // the block version (8 rows side by side) agrees
            let mut rows: Vec<f32> = [scale, -scale, scale, 0.0].repeat(9);
            let mut norms = [0f32; 9];
            normalize_block(&mut rows, 4, &mut norms);
            assert!(rows.chunks_exact(4).all(|r| r.iter().zip(&v).all(|(a, b)| a.to_bits() == b.to_bits())), "{scale}");
            assert!(norms.iter().all(|n| n.to_bits() == norm.to_bits()));
        }
        let mut zero = [0f32, -0.0];
        assert_eq!(l2_normalize(&mut zero), 0.0);
        assert_eq!(zero, [0.0, -0.0]);
    }

    #[test]
    fn normalize_block_is_l2_normalize_bit_for_bit() {
        // no dimensions: every norm is what an empty row gives
        let mut norms = [1f32; 3];
        normalize_block(&mut [], 0, &mut norms);
        assert!(norms.iter().all(|n| n.to_bits() == l2_normalize(&mut []).to_bits()));
        let specials = [0.0, -0.0, 1e-40, -3e-39, f32::MAX, f32::MIN_POSITIVE, 1.5, -2.25, f32::INFINITY, f32::NAN];
        for dims in [1usize, 3, 8, 300] {
            for rows in [0usize, 1, 7, 8, 9, 17, 40] {
                let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ (dims * 131 + rows) as u64;
                let mut data: Vec<f32> = (0..rows * dims)
                    .map(|i| {
                        s ^= s << 13;
                        s ^= s >> 7;
                        s ^= s << 17;
                        if i % 11 == 0 {
                            specials[(s % specials.len() as u64) as usize]
                        } else {
                            ((s >> 40) as f32 / 16_777_216.0 - 0.5) * 2f32.powi((s % 40) as i32 - 20)
                        }
                    })
                    .collect();
                if rows > 2 {
                    data[dims..2 * dims].iter_mut().for_each(|x| *x = 0.0); // a zero row
                }
                let original = data.clone();
                let mut want = data.clone();
                let want_norms: Vec<f32> = want.chunks_exact_mut(dims).map(l2_normalize).collect();
                let mut norms = vec![0f32; rows];
                normalize_block(&mut data, dims, &mut norms);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&data), bits(&want), "dims {dims} rows {rows}");
                assert_eq!(bits(&norms), bits(&want_norms), "dims {dims} rows {rows}");
                // and the parallel version over many rows
                let mut par = original.clone();
                let par_norms = normalize_rows(&mut par, dims);
                assert_eq!(bits(&par), bits(&want), "dims {dims} rows {rows}");
                assert_eq!(bits(&par_norms), bits(&want_norms), "dims {dims} rows {rows}");
            }
        }
    }
}
