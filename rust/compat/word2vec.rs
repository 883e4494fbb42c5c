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
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use super::{assemble, export_row, known_words, read_err, ReadOptions, WordsBuilder};
use crate::embeddings::{write_atomically, Embeddings};
use crate::error::{Error, Result};

/// Read a word2vec binary file.
pub fn read_word2vec_binary(path: &Path, opts: &ReadOptions) -> Result<Embeddings> {
    let file = File::open(path).map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    let file_len = file
        .metadata()
        .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?
        .len();
    let mut r = BufReader::with_capacity(1 << 20, file);

    let mut header = Vec::new();
    (&mut r)
        .take(1024)
        .read_until(b'\n', &mut header)
        .map_err(|e| read_err(path, "word2vec header", e))?;
    let (n, dims) = parse_header(&header)?;

    let rows = opts.limit.map_or(n, |l| l.min(n));
    let row_bytes = dims.checked_mul(4).ok_or(Error::Overflow("word2vec row size"))?;
    // Every record needs at least a one-byte word, a space and its numbers.
    let need = (rows as u64)
        .checked_mul(row_bytes as u64 + 2)
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
    let mut data = vec![0f32; total];
    let mut words = WordsBuilder::default();
    words.ends.reserve(rows);
    let mut word = Vec::with_capacity(64);
    let mut raw = vec![0u8; row_bytes];
    for (i, row) in data.chunks_exact_mut(dims.max(1)).take(rows).enumerate() {
        let record = i + 1;
        skip_whitespace(&mut r).map_err(|e| read_err(path, "word2vec file", e))?;
        word.clear();
        r.read_until(b' ', &mut word)
            .map_err(|e| read_err(path, "word2vec file", e))?;
        if word.last() != Some(&b' ') {
            return Err(Error::invalid(
                "word2vec file",
                format!("record {record} of {n}: the file ends inside the word ({})", path.display()),
            ));
        }
        word.pop();
        words.push(trim_ascii(&word), opts.lossy, || format!("word2vec record {record}"))?;
        if dims > 0 {
            r.read_exact(&mut raw).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    Error::invalid(
                        "word2vec file",
                        format!("record {record} of {n}: the file ends inside the vector ({})", path.display()),
                    )
                } else {
                    Error::io(format!("cannot read {}", path.display()), e)
                }
            })?;
            for (o, c) in row.iter_mut().zip(raw.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }
    if dims == 0 {
        // no rows to iterate over: still read the words
        for i in 0..rows {
            let record = i + 1;
            skip_whitespace(&mut r).map_err(|e| read_err(path, "word2vec file", e))?;
            word.clear();
            r.read_until(b' ', &mut word)
                .map_err(|e| read_err(path, "word2vec file", e))?;
            if word.last() != Some(&b' ') {
                return Err(Error::invalid(
                    "word2vec file",
                    format!("record {record} of {n}: the file ends inside the word"),
                ));
            }
            word.pop();
            words.push(trim_ascii(&word), opts.lossy, || format!("word2vec record {record}"))?;
        }
    }
    drop(raw);
    assemble(words, data, dims, opts.normalize).map_err(|e| e.context(path.display()))
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

fn skip_whitespace<R: BufRead>(r: &mut R) -> std::io::Result<()> {
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        let k = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
        let all = k == buf.len();
        r.consume(k);
        if !all {
            return Ok(());
        }
    }
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
