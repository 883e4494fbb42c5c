//! Text embeddings: one `word v1 v2 ... vd` line per word, fields separated by spaces
//! or tabs; GloVe files have no header, word2vec text files start with `"n d"`.
//!
//! Reading runs on all cores: the file is read in large blocks, each block is cut into
//! line-aligned pieces that are parsed in parallel (numbers with `fast-float2`), and the
//! pieces are appended in order. With a `limit`, lines are streamed one by one and only
//! the lines needed are read. Errors name the 1-based line number.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use rayon::prelude::*;

use super::fmt::push_f32;
use super::{assemble, export_row_checked, known_words, Decode, ReadOptions, WordsBuilder};
use crate::embeddings::{write_atomically, Embeddings};
use crate::error::{Error, Result};

/// Is there a `"n d"` header line?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// Detect it: a first line of exactly two unsigned integers is a header.
    Detect,
    /// The first line is a header (word2vec text).
    Yes,
    /// No header (GloVe).
    No,
}

const BLOCK: usize = 32 << 20;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Read a text embedding file.
pub fn read_text(path: &Path, header: Header, opts: &ReadOptions) -> Result<Embeddings> {
    // (names the file itself)
    super::check_not_compressed(path)?;
    read_text_inner(path, header, opts).map_err(|e| match e {
        // I/O errors name the file already
        e @ Error::Io { .. } => e,
        e => e.context(path.display()),
    })
}

fn line_err(line: u64, msg: impl std::fmt::Display) -> Error {
    Error::invalid("text embeddings", format!("line {line}: {msg}"))
}

fn read_text_inner(path: &Path, header: Header, opts: &ReadOptions) -> Result<Embeddings> {
    let file = crate::embeddings::open_regular_file(path)?;
    let file_len = file
        .metadata()
        .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?
        .len();
    let io_err = |e: std::io::Error| Error::io(format!("cannot read {}", path.display()), e);
    // (the blocks of the parallel path are read past this buffer, into one of their own;
    // it serves the first line and `limit`'s line-by-line reading. BufReader allocates it
    // infallibly, so it is kept small: a process at its memory limit gets a MemoryError
    // from the allocations that follow, rather than an abort here)
    let mut r = BufReader::with_capacity(64 << 10, file);

    let mut first = Vec::new();
    // (bounded: a file of zero bytes or other binary data with no line break, a failed
    // download, is not read whole into memory to find its first line)
    (&mut r).take(MAX_FIRST_LINE).read_until(b'\n', &mut first).map_err(io_err)?;
    if first.len() as u64 == MAX_FIRST_LINE && !first.ends_with(b"\n") {
        return Err(Error::invalid(
            "text embeddings",
            format!("line 1 has no line break within {} MiB: not a text embedding file", MAX_FIRST_LINE >> 20),
        ));
    }
    // A UTF-8 byte order mark (files saved by Windows editors) is not part of the first word.
    if first.starts_with(UTF8_BOM) {
        first.drain(..UTF8_BOM.len());
    }
    if first.is_empty() && opts.limit != Some(0) {
        // gensim refuses it too: a failed download or a truncated copy is no empty model
        return Err(Error::invalid("text embeddings", "the file is empty"));
    }
    // another format's magic bytes, unless the line reads as text (a GloVe word may be "FiFu")
    if let Some(hint) = super::other_format(&first).filter(|_| !reads_as_text_line(&first)) {
        return Err(Error::invalid("text embeddings", hint));
    }
    let parsed_header = parse_header(&first);
    let shape = match header {
        Header::Yes => Some(parsed_header.ok_or_else(|| {
            line_err(
                1,
                format!(
                    "expected a header \"<words> <dims>\", found {}",
                    super::excerpt(strip_eol(&first))
                ),
            )
        })?),
        Header::No => None,
        Header::Detect => parsed_header,
    };
    let limit = opts.limit.unwrap_or(usize::MAX);
    let mut words = WordsBuilder::default();
    let mut data: Vec<f32> = Vec::new();
    // the line number of the next line to parse
    let mut lineno: u64 = 1;
    let mut dims = shape.map(|(_, d)| d);
    if let Some((n, d)) = shape {
        // each value takes at least two bytes ("0 "): bound the allocation by the file size
        let cap = n.min(limit).saturating_mul(d).min((file_len / 2) as usize);
        crate::storage::try_reserve(&mut data, cap, "text matrix")?;
        crate::storage::try_reserve(&mut words.ends, n.min(limit).min((file_len / 2) as usize), "vocabulary words")?;
        lineno = 2;
    } else if !first.is_empty() && limit > 0 {
        // the first line is a data line: it fixes the dimensions
        let line = strip_eol(&first);
        // (leading blanks are skipped here: " 1 0.1 0.2" is the word "1", as a headerless
        // file's first line cannot tell the empty word's line from an indented one)
        let d = count_values(line, 1)?;
        if d == 0 {
            return Err(line_err(1, "no values after the word"));
        }
        dims = Some(d);
        parse_line(line, d, 1, opts.decode, &mut words, &mut data)?;
        lineno = 2;
    }
    let Some(dims) = dims else {
        // empty file (or limit 0 without a header)
        return assemble(words, data, 0, opts.normalize);
    };

    if opts.limit.is_some() {
        // Stream line by line: read no more than needed.
        // (a header's count is all that is read, as gensim does: `limit` above it reads `n`)
        let stop = shape.map_or(limit, |(n, _)| n.min(limit));
        let mut buf = Vec::new();
        let mut blank = None;
        while words.len() < stop {
            if lineno % 65_536 == 0 {
                crate::cancel::check()?;
            }
            buf.clear();
            let n = r.read_until(b'\n', &mut buf).map_err(io_err)?;
            if n == 0 {
                break;
            }
            let line = strip_eol(&buf);
            if line.is_empty() {
                // blank lines may end the file, not separate records
                blank = blank.or(Some(lineno));
            } else if let Some(b) = blank {
                return Err(line_err(b, "empty line"));
            } else {
                parse_line(line, dims, lineno, opts.decode, &mut words, &mut data)?;
            }
            lineno += 1;
        }
    } else {
        read_parallel(&mut r, dims, &mut lineno, opts.decode, &mut words, &mut data, BLOCK).map_err(|e| match e {
            ParErr::Io(e) => io_err(e),
            ParErr::Format(e) => e,
        })?;
    }

    if let Some((n, _)) = shape {
        let expect = n.min(limit);
        if words.len() != expect {
            return Err(line_err(
                1,
                format!("the header announces {n} words, but the file has {} lines of vectors", words.len()),
            ));
        }
    }
    // the first data line is line 1, or line 2 after a header
    let first_line = if shape.is_some() { 2 } else { 1 };
    assemble(words, data, dims, opts.normalize).map_err(|e| super::duplicate_at(e, first_line, "line"))
}

enum ParErr {
    Io(std::io::Error),
    Format(Error),
}

/// One parsed piece of a block.
#[derive(Default)]
struct Piece {
    words: WordsBuilder,
    data: Vec<f32>,
    lines: u64,
    /// The first of the blank lines that end the piece (piece line number).
    blank: Option<u64>,
    /// Whether the piece holds a line that is not blank (a record, or the line in error).
    nonblank: bool,
    error: Option<Error>,
}

fn read_parallel<R: Read>(
    r: &mut R,
    dims: usize,
    lineno: &mut u64,
    decode: Decode,
    words: &mut WordsBuilder,
    data: &mut Vec<f32>,
    block: usize,
) -> Result<(), ParErr> {
    let mut buf: Vec<u8> = Vec::new();
    crate::storage::try_reserve(&mut buf, block + (1 << 20), "text read buffer").map_err(ParErr::Format)?;
    let mut eof = false;
    let pieces_per_block = rayon::current_num_threads() * 4;
    // the first of the blank lines read last (absolute): fine at the end of the file only
    let mut blank: Option<u64> = None;
    while !eof {
        crate::cancel::check().map_err(ParErr::Format)?;
        // fill the buffer up to BLOCK bytes (it may already hold a partial line)
        let start = buf.len();
        buf.resize(start + block, 0);
        let mut filled = start;
        while filled < buf.len() {
            let n = r.read(&mut buf[filled..]).map_err(ParErr::Io)?;
            if n == 0 {
                eof = true;
                break;
            }
            filled += n;
        }
        buf.truncate(filled);
        // complete lines only, unless at the end of the file
        let cut = if eof {
            buf.len()
        } else {
            match memchr_last(&buf) {
                Some(p) => p + 1,
                // a line longer than the block: read on
                None => continue,
            }
        };
        let region = &buf[..cut];
        let bounds = split_lines(region, pieces_per_block);
        let pieces: Vec<Piece> = bounds
            .par_windows(2)
            .map(|w| parse_piece(&region[w[0]..w[1]], dims, decode))
            .collect();
        for p in pieces {
            // blank lines before this piece, then anything but blank lines: the first of them
            // is the error (whatever this piece's own error, further down)
            if let (Some(b), true) = (blank, p.nonblank) {
                return Err(ParErr::Format(line_err(b, "empty line")));
            }
            if let Some(e) = p.error {
                return Err(ParErr::Format(renumber(e, *lineno)));
            }
            if let Some(b) = p.blank {
                blank = blank.or(Some(*lineno + b - 1));
            }
            words.extend(&p.words).map_err(ParErr::Format)?;
            // the matrix grows piece by piece (a file without a header says no size up front)
            crate::storage::try_reserve(data, p.data.len(), "text matrix").map_err(ParErr::Format)?;
            data.extend_from_slice(&p.data);
            *lineno += p.lines;
        }
        buf.drain(..cut);
    }
    Ok(())
}

/// Errors from pieces carry a line number relative to the piece start (1-based);
/// make it absolute.
fn renumber(e: Error, base: u64) -> Error {
    match e {
        Error::Invalid { what, message } => match message.strip_prefix("piece line ") {
            Some(rest) => {
                let (num, tail) = rest.split_once(':').unwrap_or((rest, ""));
                let local: u64 = num.parse().unwrap_or(1);
                Error::Invalid {
                    what,
                    message: format!("line {}:{tail}", base + local - 1),
                }
            }
            None => Error::Invalid { what, message },
        },
        other => other,
    }
}

fn parse_piece(bytes: &[u8], dims: usize, decode: Decode) -> Piece {
    let mut p = Piece::default();
    let mut est = 0;
    if dims > 0 {
        // rough capacity estimate: ~8 bytes per value
        est = bytes.len() / 8;
    }
    // (fallible, as every large allocation of a reader: a MemoryError, not an abort)
    if let Err(e) = crate::storage::try_reserve(&mut p.data, est, "text matrix piece") {
        p.error = Some(e);
        return p;
    }
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        p.lines += 1;
        let local = p.lines;
        let line = strip_eol(line);
        if line.is_empty() {
            // blank lines may end the file, not separate records
            p.blank = p.blank.or(Some(local));
            continue;
        }
        p.nonblank = true;
        if let Some(b) = p.blank {
            p.error = Some(Error::invalid("text embeddings", format!("piece line {b}: empty line")));
            return p;
        }
        if let Err(e) = parse_line_piece(line, dims, local, decode, &mut p.words, &mut p.data) {
            p.error = Some(e);
            return p;
        }
    }
    p
}

fn parse_line_piece(
    line: &[u8],
    dims: usize,
    local: u64,
    decode: Decode,
    words: &mut WordsBuilder,
    data: &mut Vec<f32>,
) -> Result<()> {
    parse_line_with(line, dims, decode, words, data, |msg| {
        Error::invalid("text embeddings", format!("piece line {local}: {msg}"))
    })
}

fn parse_line(line: &[u8], dims: usize, lineno: u64, decode: Decode, words: &mut WordsBuilder, data: &mut Vec<f32>) -> Result<()> {
    parse_line_with(line, dims, decode, words, data, |msg| line_err(lineno, msg))
}

#[inline]
fn is_sep(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Parse `word v1 ... vd` (without the line end) and append it.
fn parse_line_with(
    line: &[u8],
    dims: usize,
    decode: Decode,
    words: &mut WordsBuilder,
    data: &mut Vec<f32>,
    err: impl Fn(String) -> Error,
) -> Result<()> {
    // gensim takes the bytes before the first space as the word: a line that starts with one
    // space and then holds exactly `dims` values is the empty word's (gensim writes it so).
    // Other leading blanks are skipped.
    let empty_word = dims > 0
        && line.first() == Some(&b' ')
        && line.get(1).is_some_and(|&b| !is_sep(b))
        && line[1..].split(|&b| is_sep(b)).filter(|f| !f.is_empty()).count() == dims;
    let mut i = 0;
    if !empty_word {
        while i < line.len() && is_sep(line[i]) {
            i += 1;
        }
        if i == line.len() {
            return Err(err("empty line".into()));
        }
    }
    let ws = i;
    while !empty_word && i < line.len() && !is_sep(line[i]) {
        i += 1;
    }
    let word = &line[ws..i];
    let before = data.len();
    let mut count = 0usize;
    loop {
        while i < line.len() && is_sep(line[i]) {
            i += 1;
        }
        if i == line.len() {
            break;
        }
        let rest = &line[i..];
        // As gensim reads a value: parsed as a float64, then rounded to float32 (two
        // roundings: a decimal halfway between two float32 values, such as an f64 mean of
        // two f32s, goes where numpy's cast puts it, one ulp from a direct f32 parse).
        let parsed = fast_float2::parse_partial::<f64, _>(rest)
            .ok()
            .filter(|&(_, n)| n > 0 && (n == rest.len() || is_sep(rest[n])))
            .or_else(|| number_in_unicode_blanks(rest, decode))
            .map(|(v, n)| (v as f32, n));
        let (problem, len) = match parsed {
            Some((v, n)) => {
                if v.is_finite() {
                    count += 1;
                    if count <= dims {
                        if data.len() == data.capacity() {
                            // (fallible: a MemoryError, not an abort, when memory runs out;
                            // no more than the rest of the line can hold, whatever a header
                            // says the dims are)
                            let extra = data.len().max(dims.min(rest.len() / 2 + 1));
                            crate::storage::try_reserve(data, extra, "text matrix")?;
                        }
                        data.push(v);
                    }
                    i += n;
                    continue;
                }
                // nan, inf, or a value beyond float32's range (1e39 reads as inf)
                ("not a finite float32", n)
            }
            _ => ("not a number", rest.iter().position(|&b| is_sep(b)).unwrap_or(rest.len())),
        };
        data.truncate(before);
        return Err(err(format!(
            "value {} of {} is {problem}: {}",
            count + 1,
            super::excerpt(word),
            super::excerpt(&rest[..len])
        )));
    }
    if count != dims {
        data.truncate(before);
        return Err(err(format!(
            "expected {dims} values after the word {}, found {count} (ragged rows or a wrong header)",
            super::excerpt(word)
        )));
    }
    words.push(word, decode, String::new).map_err(|e| match e {
        Error::Invalid { message, .. } => err(message),
        e => e,
    })
}

/// `word v1 ... vd` (without the line break) onto `out`, as the text writer writes it.
fn push_line(out: &mut Vec<u8>, word: &str, row: &[f32]) {
    out.extend_from_slice(word.as_bytes());
    for &x in row {
        out.push(b' ');
        push_f32(out, x);
    }
}

/// Whether `line` is a header or `word v1 ... vd` with numbers for values.
pub(crate) fn reads_as_text_line(line: &[u8]) -> bool {
    if parse_header(line).is_some() {
        return true;
    }
    let mut fields = strip_eol(line).split(|&b| is_sep(b)).filter(|f| !f.is_empty()).skip(1).peekable();
    fields.peek().is_some() && fields.all(|v| fast_float2::parse::<f64, _>(v).is_ok())
}

/// The value at the start of `rest` (up to the next separator) and its length in bytes,
/// where the number is surrounded by Unicode whitespace (a no-break space, U+3000, ...):
/// gensim parses each field with Python's `float()`, which strips exactly the characters of
/// Unicode's White_Space property (`char::is_whitespace`). `None` if it is no number that way
/// either. Only tried after the plain parse failed.
fn number_in_unicode_blanks(rest: &[u8], decode: Decode) -> Option<(f64, usize)> {
    let len = rest.iter().position(|&b| is_sep(b)).unwrap_or(rest.len());
    let field: std::borrow::Cow<'_, str> = match decode {
        Decode::Latin1 => rest[..len].iter().map(|&b| char::from(b)).collect::<String>().into(),
        _ => std::str::from_utf8(&rest[..len]).ok()?.into(),
    };
    let trimmed = field.trim_matches(char::is_whitespace);
    if trimmed.len() == field.len() || trimmed.is_empty() {
        return None;
    }
    fast_float2::parse::<f64, _>(trimmed).ok().map(|v| (v, len))
}

/// Number of value fields in a line (`skip` leading fields not counted).
fn count_values(line: &[u8], skip: usize) -> Result<usize> {
    let n = line.split(|&b| is_sep(b)).filter(|f| !f.is_empty()).count();
    if n == 0 {
        return Err(line_err(1, "empty line"));
    }
    Ok(n.saturating_sub(skip))
}

/// The line without its end and the whitespace before it (as gensim's `line.rstrip()`: the
/// whitespace of Python's `bytes.rstrip()`: space, `\t`, `\n`, `\r`, `\x0b`, `\x0c`; gensim reads
/// the file as bytes).
fn strip_eol(line: &[u8]) -> &[u8] {
    let keep = line.iter().rposition(|&b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c));
    &line[..keep.map_or(0, |k| k + 1)]
}

/// The longest first line read (a line of 1M values has about 12 MiB; a longer one, or a
/// file of exactly this size holding one line without a final line break, is refused).
const MAX_FIRST_LINE: u64 = 64 << 20;

/// The `"<words> <dims>"` header of a text file, as the reader detects it (`dims=None`), or
/// `None` when its first line is a record (GloVe).
pub fn file_header(path: &Path) -> Result<Option<(usize, usize)>> {
    let file = crate::embeddings::open_regular_file(path)?;
    let mut first = Vec::new();
    BufReader::with_capacity(64 << 10, file)
        .take(1 << 16)
        .read_until(b'\n', &mut first)
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    Ok(parse_header(first.strip_prefix(UTF8_BOM).unwrap_or(&first)))
}

/// `"n d"`: exactly two unsigned integers.
fn parse_header(line: &[u8]) -> Option<(usize, usize)> {
    let text = std::str::from_utf8(strip_eol(line)).ok()?;
    let mut parts = text.split_ascii_whitespace();
    let n = parts.next()?.parse::<usize>().ok()?;
    let d = parts.next()?.parse::<usize>().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((n, d))
}

fn memchr_last(b: &[u8]) -> Option<usize> {
    b.iter().rposition(|&c| c == b'\n')
}

/// Cut `region` (complete lines) into about `n` pieces at line boundaries.
fn split_lines(region: &[u8], n: usize) -> Vec<usize> {
    let mut bounds = vec![0];
    let step = (region.len() / n.max(1)).max(1 << 16);
    let mut pos = 0;
    while pos < region.len() {
        let target = (pos + step).min(region.len());
        let end = if target >= region.len() {
            region.len()
        } else {
            match region[target..].iter().position(|&b| b == b'\n') {
                Some(k) => target + k + 1,
                None => region.len(),
            }
        };
        bounds.push(end);
        pos = end;
    }
    bounds
}

/// Write the known words of `emb` as text, `word v1 ... vd` per line, with a
/// `"n d"` header line when `header` is true. Values are printed with the shortest
/// digits that read back to the same f32, without exponent.
pub fn write_text(emb: &Embeddings, path: &Path, header: bool) -> Result<()> {
    let words = known_words(emb, "text")?;
    for (i, w) in words.iter().enumerate() {
        if w.is_empty() && emb.dims() > 0 && (header || i > 0) {
            // a line of " v1 v2 ...", as gensim writes the empty word and both read it back
            // (after a header or a first line; a headerless file's indented first line keeps
            // its first field as the word)
            continue;
        }
        // (with no values after it, a word's trailing whitespace would be read as the line end)
        let trailing = emb.dims() == 0 && strip_eol(w.as_bytes()).len() != w.len();
        if w.is_empty() || trailing || w.bytes().any(|b| b == b' ' || b == b'\t' || b == b'\n') {
            return Err(Error::argument(format!(
                "the word {w:?} is empty or contains whitespace and cannot be written as text"
            )));
        }
    }
    if let Some(w) = words.iter().next().filter(|w| !header && w.starts_with('\u{feff}')) {
        // (a byte order mark opening a file is not part of its first word when read back)
        return Err(Error::argument(format!(
            "the first word {w:?} starts with U+FEFF, which reads back as a byte order mark: write with a header"
        )));
    }
    let dims = emb.dims();
    if dims == 0 && !header && !words.is_empty() {
        return Err(Error::argument(
            "0-dimensional embeddings cannot be written as GloVe text (lines of only a word do not read back): write them with a header",
        ));
    }
    let n = words.len();
    if !header && n > 0 {
        // a 1-dimensional row of a number word can print as "2 1", which a reader that
        // detects headers (vecfusion's and vf.convert's default) takes for one
        let mut row = vec![0f32; dims];
        export_row_checked(emb, words, 0, &mut row, "text")?;
        let mut line = Vec::new();
        push_line(&mut line, words.get(0).unwrap_or_default(), &row);
        if parse_header(&line).is_some() {
            return Err(Error::argument(format!(
                "the first line {} would read back as a header \"<words> <dims>\" (a number word with \
                 one whole-number value): write it with a header (dims=True)",
                super::excerpt(&line)
            )));
        }
    }
    write_atomically(path, |w| {
        if header {
            writeln!(w, "{n} {dims}")?;
        }
        const ROWS: usize = 256;
        const GROUP: usize = ROWS * 64;
        let mut start = 0;
        while start < n {
            crate::cancel::check_io()?;
            let end = (start + GROUP).min(n);
            let bufs: Vec<Vec<u8>> = (start..end)
                .into_par_iter()
                .step_by(ROWS)
                .map(|s| {
                    let e = (s + ROWS).min(end);
                    let mut out = Vec::with_capacity((e - s) * (dims * 11 + 16));
                    let mut row = vec![0f32; dims];
                    for i in s..e {
                        export_row_checked(emb, words, i, &mut row, "text")?;
                        push_line(&mut out, words.get(i).unwrap_or_default(), &row);
                        out.push(b'\n');
                    }
                    Ok(out)
                })
                .collect::<Result<_>>()
                .map_err(std::io::Error::other)?;
            for b in bufs {
                w.write_all(&b)?;
            }
            start = end;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_line_ends() {
        let text = b"a 1\nb 2\nc 3\n".repeat(100_000);
        let b = split_lines(&text, 7);
        assert_eq!(*b.last().unwrap(), text.len());
        for w in b.windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[1] == text.len() || text[w[1] - 1] == b'\n');
        }
    }

    fn parse_blocks(text: &[u8], block: usize) -> Result<(WordsBuilder, Vec<f32>, u64)> {
        let mut words = WordsBuilder::default();
        let mut data = Vec::new();
        let mut lineno = 1;
        let mut r = std::io::Cursor::new(text);
        read_parallel(&mut r, 2, &mut lineno, Decode::Strict, &mut words, &mut data, block).map_err(|e| match e {
            ParErr::Io(e) => Error::io("read", e),
            ParErr::Format(e) => e,
        })?;
        Ok((words, data, lineno))
    }

    #[test]
    fn small_blocks_and_long_lines() {
        let mut text = Vec::new();
        for i in 0..5000 {
            text.extend_from_slice(format!("w{i} {i} -{i}.5\n").as_bytes());
        }
        // no newline at the end of the last line
        text.extend_from_slice(b"last 1 2");
        for block in [7, 100, 4096, 1 << 20] {
            let (words, data, lineno) = parse_blocks(&text, block).unwrap();
            assert_eq!(words.len(), 5001);
            assert_eq!(lineno, 5002);
            assert_eq!(&data[2 * 4321..2 * 4321 + 2], &[4321.0, -4321.5]);
            assert_eq!(&data[data.len() - 2..], &[1.0, 2.0]);
            let list = words.finish().unwrap();
            assert_eq!(list.get(4999), Some("w4999"));
        }
        let mut bad = text.clone();
        let pos = bad.windows(7).position(|w| w == b"\nw3000 ").unwrap();
        bad[pos + 7] = b'x';
        for block in [7, 100, 4096, 1 << 20] {
            let e = parse_blocks(&bad, block).err().unwrap().to_string();
            assert!(e.contains("line 3001:"), "{block}: {e}");
        }
    }

    #[test]
    fn blank_lines_end_a_file_but_do_not_separate_records() {
        let mut text = Vec::new();
        for i in 0..3000 {
            text.extend_from_slice(format!("w{i} {i} 2\x0c\r\n").as_bytes());
        }
        let mut good = text.clone();
        good.extend_from_slice(b"\n  \t\r\n\x0c\n\n");
        for block in [7, 100, 4096, 1 << 20] {
            let (words, data, _) = parse_blocks(&good, block).unwrap();
            assert_eq!(words.len(), 3000);
            assert_eq!(&data[2 * 2999..], &[2999.0, 2.0]);
        }
        // a blank line (line 1501) between records, whatever the block size
        let mut bad = text[..text.len() / 2].to_vec();
        let cut = bad.iter().rposition(|&b| b == b'\n').unwrap() + 1;
        bad.truncate(cut);
        let before = bad.iter().filter(|&&b| b == b'\n').count();
        bad.extend_from_slice(b" \n\n");
        bad.extend_from_slice(&text[cut..]);
        for block in [7, 100, 4096, 1 << 20] {
            let e = parse_blocks(&bad, block).err().unwrap().to_string();
            assert!(e.contains(&format!("line {}: empty line", before + 1)), "{block}: {e}");
        }
        // a run of blank lines across pieces (64 KiB or more each), then a record or a bad line:
        // the first blank line is the error, not one in a later piece or that piece's own error
        for tail in [&b"w 1 2\n"[..], b"bad 1\n"] {
            let mut long = text.clone();
            long.extend_from_slice(&b"\n".repeat(200_000));
            long.extend_from_slice(tail);
            for block in [4096, 1 << 20] {
                let e = parse_blocks(&long, block).err().unwrap().to_string();
                assert!(e.contains("line 3001: empty line"), "{block}: {e}");
            }
        }
    }

    #[test]
    fn line_errors() {
        let mut words = WordsBuilder::default();
        let mut data = Vec::new();
        let e = parse_line(b"w 1 x 3", 3, 7, Decode::Strict, &mut words, &mut data).unwrap_err();
        assert!(e.to_string().contains("line 7"), "{e}");
        let e = parse_line(b"w 1 2", 3, 8, Decode::Strict, &mut words, &mut data).unwrap_err();
        assert!(e.to_string().contains("line 8") && e.to_string().contains("found 2"), "{e}");
        let e = parse_line(b"", 3, 9, Decode::Strict, &mut words, &mut data).unwrap_err();
        assert!(e.to_string().contains("line 9: empty line"), "{e}");
        parse_line(b"w 1 -2.5e1 3 ", 3, 10, Decode::Strict, &mut words, &mut data).unwrap();
        assert_eq!(data, vec![1.0, -25.0, 3.0]);
    }
}
