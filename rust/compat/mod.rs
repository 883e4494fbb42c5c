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

use crate::embeddings::{l2_normalize, Embeddings};
use crate::error::{Error, Result};
use crate::storage::{ArrayStorage, Storage};
use crate::vocab::{Vocab, WordList};

/// Options shared by the word2vec and text readers.
#[derive(Clone, Copy, Debug)]
pub struct ReadOptions {
    /// Replace invalid UTF-8 in words with U+FFFD instead of failing.
    pub lossy: bool,
    /// Read at most this many words (the rest of the file is not read).
    pub limit: Option<usize>,
    /// L2-normalize rows and keep the norms (true), or keep rows as stored (false).
    pub normalize: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            lossy: false,
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
    pub fn push(&mut self, raw: &[u8], lossy: bool, where_: impl FnOnce() -> String) -> Result<()> {
        match std::str::from_utf8(raw) {
            Ok(_) => self.bytes.extend_from_slice(raw),
            Err(_) if lossy => {
                self.bytes.extend_from_slice(String::from_utf8_lossy(raw).as_bytes());
            }
            Err(e) => {
                let at = where_();
                let at = if at.is_empty() { at } else { format!("{at}: ") };
                return Err(Error::invalid(
                    "UTF-8",
                    format!(
                        "{at}the word {:?} is not valid UTF-8 ({e}); read with lossy=True to replace invalid bytes with U+FFFD",
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
    pub fn extend(&mut self, other: &WordsBuilder) {
        let base = self.bytes.len();
        self.bytes.extend_from_slice(&other.bytes);
        self.ends.extend(other.ends.iter().map(|e| e + base));
    }

    pub fn finish(mut self) -> Result<WordList> {
        self.bytes.shrink_to_fit();
        WordList::from_parts(self.bytes, self.ends)
    }
}

/// L2-normalize each `dims`-long row in parallel; returns the former norms.
pub fn normalize_rows(data: &mut [f32], dims: usize) -> Vec<f32> {
    if dims == 0 {
        return Vec::new();
    }
    let mut norms = vec![0f32; data.len() / dims];
    data.par_chunks_mut(dims)
        .zip(norms.par_iter_mut())
        .with_min_len(1024)
        .for_each(|(row, n)| *n = l2_normalize(row));
    norms
}

/// Simple-vocabulary embeddings from words, a row-major matrix and norms already
/// computed (the rows then are normalized already).
pub(crate) fn assemble_normalized(words: WordsBuilder, data: Vec<f32>, dims: usize, norms: Option<Vec<f32>>) -> Result<Embeddings> {
    let rows = words.len();
    if rows.checked_mul(dims) != Some(data.len()) {
        return Err(Error::invalid(
            "matrix",
            format!("{} values for {rows} words of {dims} dimensions", data.len()),
        ));
    }
    // (word2vec records count from 1)
    let words = words.finish().map_err(|e| duplicate_at(e, 1, "record"))?;
    let storage = Storage::Array(ArrayStorage::new(data, rows, dims)?);
    Embeddings::new(None, Vocab::Simple(words), storage, norms)
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

/// The known words of `emb` (floret vocabularies have none: an error).
pub(crate) fn known_words<'a>(emb: &'a Embeddings, format: &str) -> Result<&'a WordList> {
    emb.vocab.words().ok_or_else(|| {
        Error::argument(format!(
            "a {} has no word list and cannot be written as {format}",
            emb.vocab.kind()
        ))
    })
}

/// Turn an I/O error from a reader into the crate error (an unexpected end of file
/// becomes a format error).
pub(crate) fn read_err(path: &std::path::Path, what: &'static str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::invalid(what, format!("the file ends early ({})", path.display()))
    } else {
        Error::io(format!("cannot read {}", path.display()), e)
    }
}

/// The compression format of a file, from its first bytes: `"gzip"`, `"bzip2"`, `"xz"`,
/// `"zstd"` or `"zip"`; None when it does not start like a compressed file (or cannot be read).
pub fn compression_of(path: &std::path::Path) -> Option<&'static str> {
    use std::io::Read;
    let mut head = [0u8; 6];
    let mut f = std::fs::File::open(path).ok()?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return None,
        }
    }
    compression_of_bytes(&head[..n])
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

/// Do the first lines after the first one look like text embeddings (`word v1 v2 ...`)?
/// Used to explain an error when a text file is read as word2vec binary or the reverse.
pub fn looks_like_text(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut head = Vec::new();
    let Ok(f) = std::fs::File::open(path) else {
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
