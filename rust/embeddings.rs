//! Embeddings: an optional metadata chunk, a vocabulary, a storage and optional norms.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::format::{ByteReader, ChunkId, PosWriter, MAGIC, VERSION};
use crate::storage::{read_norms, write_norms, F32Data, FileBytes, Storage};
use crate::vocab::{Vocab, VocabFormat, WordIndex};

/// A finalfusion embedding: `[Metadata] Vocab Storage [NdNorms]`.
#[derive(Clone, Debug)]
pub struct Embeddings {
    /// The metadata chunk's TOML text, kept verbatim.
    pub metadata: Option<String>,
    pub vocab: Vocab,
    pub storage: Storage,
    /// One norm per word: the L2 norm each word vector had before normalization.
    /// Per-word norms (owned, or in place in the file's buffer when opened from a file).
    pub norms: Option<F32Data>,
    /// With norms, whether the word rows are unit vectors, as finalfusion's convention has it
    /// (and gensim-style cosines may be taken as dot products): see [`Embeddings::unit_rows`].
    unit_rows: std::sync::OnceLock<bool>,
    /// The length of each word row of dense storage, for gensim-style cosines with rows that
    /// are not unit vectors: computed on the first such query and kept (4 bytes a word, as
    /// gensim keeps its norms). See `Embeddings::word_row_lengths` in `query.rs`.
    pub(crate) row_lengths: std::sync::OnceLock<Vec<f32>>,
}

/// Whether `row` is a unit vector or all zeros, as finalfusion stores rows with a norms
/// chunk (a zero row keeps its norm 0). NaN or infinity makes it neither.
///
/// "Unit" is within [`unit_tolerance`] of the row's width: what normalizing in float32 leaves
/// (a sum of `d` squares in float32 is off by about `sqrt(d)` roundings; measured up to 4e-6
/// at 4096 dims with outlier dimensions). Rows taken as unit are searched by plain dot
/// products, so a row that is off by `t` gets a score off by `t` relative: much looser than
/// rounding, that would reorder gensim's answers (a row of length 1.00009 outranked a unit
/// row of a cosine 5e-5 higher). Rows further off are searched with their own lengths.
pub fn is_unit_or_zero(row: &[f32]) -> bool {
    let len = row.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
    len == 0.0 || (len - 1.0).abs() <= unit_tolerance(row.len())
}

/// How far from 1 the length of a row of `dims` values taken as a unit vector may be (see
/// [`is_unit_or_zero`]): `4·sqrt(dims)` float32 epsilons, at least 2e-6 (8e-6 at 300 dims,
/// 3e-5 at 4096).
pub fn unit_tolerance(dims: usize) -> f64 {
    (4.0 * (dims as f64).sqrt() * f64::from(f32::EPSILON)).max(2e-6)
}

/// How to open a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OpenMode {
    /// Read everything into memory.
    #[default]
    Read,
    /// Memory-map the matrix (NdArray data, QuantizedArray codes).
    Mmap,
}

/// Outputs of [`Embeddings::lookup_into`] from this many floats (32 MiB) on are written
/// with non-temporal stores.
const STREAMING_FLOATS: usize = 8 << 20;

/// Room for the n-gram rows of a typical unknown word (scratch buffers start with it).
pub const SCRATCH_ROWS: usize = 64;

/// Widest matrix of no rows accepted (2^24 dimensions; real embeddings have a few hundred).
pub const MAX_DIMS_WITHOUT_ROWS: usize = 1 << 24;

impl Embeddings {
    /// Assemble embeddings, checking that the pieces fit together.
    pub fn new(metadata: Option<String>, vocab: Vocab, storage: Storage, norms: Option<Vec<f32>>) -> Result<Self> {
        Self::with_norms(metadata, vocab, storage, norms.map(F32Data::from))
    }

    /// [`Embeddings::new`] with norms that may live in a file buffer.
    pub fn with_norms(metadata: Option<String>, vocab: Vocab, storage: Storage, norms: Option<F32Data>) -> Result<Self> {
        let need = vocab.rows();
        let have = storage.rows() as u64;
        if need != have {
            return Err(Error::invalid(
                "storage",
                format!(
                    "{have} rows, but the {} needs {need} ({} words{})",
                    vocab.kind(),
                    vocab.words_len(),
                    if need > vocab.words_len() as u64 { " plus n-gram rows" } else { "" }
                ),
            ));
        }
        // With rows, the matrix itself shows that a row of `dims` values fits in memory; without
        // any, a header's width is all there is, and every lookup or write would allocate a row
        // of it (10^12 dimensions: an abort, not an error).
        if have == 0 && storage.dims() > MAX_DIMS_WITHOUT_ROWS {
            return Err(Error::invalid(
                "storage",
                format!("0 rows of {} dimensions (at most {MAX_DIMS_WITHOUT_ROWS} without any row)", storage.dims()),
            ));
        }
        if let Some(n) = &norms {
            if n.len() != vocab.words_len() {
                return Err(Error::invalid(
                    "norms",
                    format!("{} norms for {} words", n.len(), vocab.words_len()),
                ));
            }
        }
        if let Some(m) = &metadata {
            m.parse::<toml::Table>().map_err(|e| Error::toml(&e))?;
        }
        Ok(Embeddings {
            metadata,
            vocab,
            storage,
            norms,
            unit_rows: std::sync::OnceLock::new(),
            row_lengths: std::sync::OnceLock::new(),
        })
    }

    /// Whether gensim-style cosines with the word rows may be taken as plain dot products:
    /// a norms chunk says the rows were normalized (finalfusion's convention), and every
    /// word row is a unit vector or zero. A file's rows are checked once, on the first
    /// call (a parallel pass over the word rows, as gensim computes its norms once): a
    /// file whose norms chunk comes with rows that are not unit vectors, or that hold NaN
    /// or infinity, is then searched with each row's own length, and gives the answers
    /// its in-memory original gave.
    pub fn unit_rows(&self) -> bool {
        if self.norms.is_none() {
            return false;
        }
        *crate::storage::get_or_compute(&self.unit_rows, || match &self.storage {
            Storage::Array(a) => {
                let d = a.cols();
                let n = self.vocab.words_len().min(a.rows());
                let rows = &a.as_slice()[..n * d];
                // (small: on this thread, as the query that asks; see `query::PARALLEL_WORK`)
                d == 0
                    || if rows.len() < crate::query::PARALLEL_WORK {
                        rows.chunks_exact(d).all(is_unit_or_zero)
                    } else {
                        rows.par_chunks(d * 1024).all(|block| block.chunks_exact(d).all(is_unit_or_zero))
                    }
            }
            // rebuilt rows are only near unit length
            Storage::Quantized(_) => false,
        })
    }

    /// Record whether the word rows are unit vectors (see [`Embeddings::unit_rows`]), for
    /// embeddings built from an array whose rows were just checked.
    pub fn set_unit_rows(&mut self, unit: bool) {
        self.unit_rows = std::sync::OnceLock::from(unit);
    }

    /// Open a finalfusion file.
    pub fn open(path: impl AsRef<Path>, mode: OpenMode) -> Result<Self> {
        let path = path.as_ref();
        let bytes = read_file(path, mode)?;
        // Both ways the matrix is used in place: from the mapping or from the one buffer.
        Self::from_bytes(bytes.as_slice(), Some(&bytes)).map_err(|e| match e {
            Error::Magic { .. } if crate::compat::compression_of(path).is_some() => {
                crate::compat::compressed_error(path, crate::compat::compression_of(path).unwrap_or("gzip"))
            }
            Error::Magic { ref got, .. } => {
                // the loader to use, where the first bytes or lines tell
                let hint = crate::compat::other_format(got)
                    .or_else(|| {
                        crate::compat::looks_like_text(path)
                            .then_some("this looks like text embeddings: read it with vf.load_text")
                    })
                    .or_else(|| {
                        got.first().is_some_and(u8::is_ascii_digit).then_some(
                            "this starts like word2vec (a \"words dims\" header): read it with vf.load_word2vec",
                        )
                    })
                    .unwrap_or(
                        "word2vec, text/GloVe and fastText files open with vf.load_word2vec, vf.load_text and \
                         vf.load_fasttext, or convert them with vf.convert",
                    );
                Error::invalid("file", format!("{e} ({}); {hint}", path.display()))
            }
            e @ (Error::Io { .. } | Error::Invalid { .. }) => e.context(path.display()),
            // not a format error: MemoryError / KeyboardInterrupt / ValueError as they are
            e @ (Error::OutOfMemory { .. } | Error::Interrupted | Error::Argument(_)) => e,
            // name the file in every other format error too
            e => Error::invalid("file", format!("{e} ({})", path.display())),
        })
    }

    /// Parse a finalfusion file held in memory. With `map`, the matrix is used in place
    /// from `map` (which must hold the same bytes) instead of being copied.
    pub fn from_bytes(data: &[u8], map: Option<&FileBytes>) -> Result<Self> {
        let mut r = ByteReader::new(data);
        let magic = r.bytes(4, "magic")?;
        if magic != MAGIC {
            return Err(Error::Magic {
                format: "finalfusion",
                expected: MAGIC.to_vec(),
                got: magic.to_vec(),
            });
        }
        let version = r.u32("version")?;
        if version != VERSION {
            return Err(Error::Version {
                format: "finalfusion",
                expected: VERSION.to_string(),
                got: version.to_string(),
            });
        }
        let n_chunks = r.u32("chunk count")?;
        if u64::from(n_chunks) > r.remaining() as u64 / 4 {
            return Err(Error::Truncated {
                what: "chunk list",
                offset: r.abs_pos(),
                need: u64::from(n_chunks) * 4,
                have: r.remaining() as u64,
            });
        }
        let mut listed = Vec::with_capacity(n_chunks as usize);
        for _ in 0..n_chunks {
            listed.push(ChunkId::from_u32(r.u32("chunk id")?)?);
        }
        let mut seen = Vec::with_capacity(4);

        // Positional reading, as the reference readers do.
        let (mut id, mut body) = next_chunk(&mut r)?;
        let mut metadata = None;
        if id == ChunkId::Metadata {
            let text = std::str::from_utf8(body.bytes(body.remaining() as u64, "metadata")?)
                .map_err(|source| Error::Utf8 {
                    what: "metadata",
                    index: 0,
                    source,
                })?;
            metadata = Some(text.to_string());
            seen.push(id);
            (id, body) = next_chunk(&mut r)?;
        }
        if !id.is_vocab() {
            return Err(Error::UnexpectedChunk {
                expected: "a vocabulary chunk",
                got: id.name().to_string(),
            });
        }
        let vocab = Vocab::read_chunk_mapped(id, &mut body, map)?;
        finish_chunk(&body, id)?;
        seen.push(id);

        let (id, mut body) = next_chunk(&mut r)?;
        if !id.is_storage() {
            return Err(Error::UnexpectedChunk {
                expected: "a storage chunk",
                got: id.name().to_string(),
            });
        }
        let storage = Storage::read_chunk(id, &mut body, map)?;
        finish_chunk(&body, id)?;
        seen.push(id);

        let mut norms = None;
        if !r.is_empty() {
            let (id, mut body) = next_chunk(&mut r)?;
            if id != ChunkId::NdNorms {
                return Err(Error::UnexpectedChunk {
                    expected: "a norms chunk or the end of the file",
                    got: id.name().to_string(),
                });
            }
            norms = Some(read_norms(&mut body, map)?);
            finish_chunk(&body, id)?;
            seen.push(id);
            // Nothing may follow the norms (after the storage, anything but norms is
            // refused above): a rewrite would silently drop it.
            if !r.is_empty() {
                return Err(Error::invalid(
                    "file",
                    format!("{} bytes follow the norms chunk, the last chunk a file may have", r.remaining()),
                ));
            }
        }
        // A chunk the header lists but the file lacks: the file was cut at a chunk boundary
        // (e.g. before its norms, which would silently change every exported vector).
        if let Some(missing) = listed.iter().find(|id| !seen.contains(id)) {
            return Err(Error::invalid(
                "file",
                format!(
                    "the header lists a {} chunk that the file does not have (a truncated file?)",
                    missing.name()
                ),
            ));
        }
        Embeddings::with_norms(metadata, vocab, storage, norms)
    }

    /// Write the embeddings as a finalfusion file: to a temporary file beside `path`,
    /// then renamed, so that `path` is never left half written.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        self.vocab.verify_fst()?;
        write_atomically(path.as_ref(), |w| self.write_to(w))
    }

    /// Write the embeddings to any writer.
    pub fn write_to<W: Write>(&self, w: W) -> std::io::Result<()> {
        self.write_to_with_metadata(w, self.metadata.as_deref())
    }

    /// Write the embeddings to `path` (atomically) with the vocabulary in format `fmt`
    /// (`None`: the vocabulary's own format) and `metadata` in place of `self.metadata`.
    /// Converting the vocabulary happens before anything is written, so a corrupt fst
    /// vocabulary is reported as a format error and `path` is left untouched.
    pub fn write_with_vocab(&self, path: impl AsRef<Path>, metadata: Option<&str>, fmt: Option<VocabFormat>) -> Result<()> {
        let fmt = fmt.unwrap_or(if self.vocab.is_fst() { VocabFormat::Fst } else { VocabFormat::Standard });
        if fmt == VocabFormat::Fst && matches!(self.vocab, Vocab::Floret(_)) {
            return Err(Error::argument("a floret vocabulary has no words: it has no fst form (use vocab='standard')"));
        }
        self.vocab.verify_fst()?;
        let std_vocab = self.vocab.to_standard()?;
        write_atomically(path.as_ref(), |w| self.write_parts(w, metadata, &std_vocab, fmt))
    }

    /// Write the embeddings to any writer, with `metadata` in place of `self.metadata`.
    pub fn write_to_with_metadata<W: Write>(&self, w: W, metadata: Option<&str>) -> std::io::Result<()> {
        let fmt = if self.vocab.is_fst() { VocabFormat::Fst } else { VocabFormat::Standard };
        self.write_parts(w, metadata, &self.vocab, fmt)
    }

    fn write_parts<W: Write>(&self, w: W, metadata: Option<&str>, vocab: &Vocab, fmt: VocabFormat) -> std::io::Result<()> {
        let mut w = PosWriter::new(w);
        let mut ids = Vec::new();
        if metadata.is_some() {
            ids.push(ChunkId::Metadata);
        }
        ids.push(vocab.chunk_id_as(fmt));
        ids.push(self.storage.chunk_id());
        if self.norms.is_some() {
            ids.push(ChunkId::NdNorms);
        }
        w.bytes(MAGIC)?;
        w.u32(VERSION)?;
        w.u32(ids.len() as u32)?;
        for id in &ids {
            w.u32(*id as u32)?;
        }
        if let Some(m) = metadata {
            w.u32(ChunkId::Metadata as u32)?;
            w.u64(m.len() as u64)?;
            w.bytes(m.as_bytes())?;
        }
        vocab.write_chunk_as(&mut w, fmt)?;
        self.storage.write_chunk(&mut w)?;
        if let Some(n) = &self.norms {
            write_norms(n, &mut w)?;
        }
        w.into_inner().flush()
    }

    /// Number of dimensions.
    #[inline]
    pub fn dims(&self) -> usize {
        self.storage.dims()
    }

    /// Number of known words.
    #[inline]
    pub fn len(&self) -> usize {
        self.vocab.words_len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The norm of known word `i` (1.0 without a norms chunk).
    #[inline]
    pub fn word_norm(&self, i: usize) -> f32 {
        self.norms.as_ref().map_or(1.0, |n| n[i])
    }

    /// The row of known word `word`, its storage row already on its way into the cache:
    /// the row is prefetched as soon as the hash table names it, while the word's bytes
    /// are still being compared.
    #[inline]
    pub fn known_row(&self, word: &str) -> Option<usize> {
        let list = self.vocab.words()?;
        let mut row = [None];
        list.index_group(&[word], &mut row, |i| self.storage.prefetch_row(i));
        row[0]
    }

    /// Write the embedding of `word` into `out` (`dims` long). Returns the norm, or
    /// `None` (leaving `out` unspecified) when the word has no embedding.
    ///
    /// A known word gets its stored row; an unknown word in a subword vocabulary gets
    /// the sum of its n-gram rows, L2-normalized (a zero sum stays zero, norm 0).
    pub fn embedding_into(&self, word: &str, out: &mut [f32], scratch: &mut Vec<usize>) -> Option<f32> {
        if let Some(i) = self.known_row(word) {
            self.storage.row_into(i, out);
            return Some(self.word_norm(i));
        }
        self.subword_embedding_into(word, out, scratch)
    }

    /// The embedding of `word` as an unknown word, written into `out` (`dims` long): the
    /// L2-normalized sum of its n-gram rows (a zero sum stays zero, norm 0). Returns the
    /// norm of the sum, or `None` (leaving `out` unspecified) when `word` has no n-gram
    /// rows. Known words are not looked up ([`Embeddings::embedding_into`] does that first).
    pub fn subword_embedding_into(&self, word: &str, out: &mut [f32], scratch: &mut Vec<usize>) -> Option<f32> {
        // The n-gram rows are added a block at a time, so that a very long word needs no
        // list of all its n-grams. Each row is prefetched as soon as its n-gram is hashed:
        // the loads overlap the hashing of the n-grams after it.
        const BLOCK: usize = 4096;
        scratch.clear();
        out.fill(0.0);
        let mut any = false;
        let mut one = Vec::new();
        let add = |rows: &mut Vec<usize>, out: &mut [f32]| {
            self.storage.add_rows(rows, out);
            rows.clear();
        };
        self.vocab.for_each_subword_index(word, &mut one, |row| {
            any = true;
            self.storage.prefetch_row(row);
            scratch.push(row);
            if scratch.len() == BLOCK {
                add(scratch, out);
            }
        });
        if !any {
            return None;
        }
        add(scratch, out);
        Some(l2_normalize(out))
    }

    /// The embedding of `word` and its norm.
    pub fn embedding_with_norm(&self, word: &str) -> Option<(Vec<f32>, f32)> {
        let mut out = vec![0f32; self.dims()];
        let mut scratch = Vec::with_capacity(SCRATCH_ROWS);
        self.embedding_into(word, &mut out, &mut scratch).map(|n| (out, n))
    }

    /// The embedding of `word`.
    pub fn embedding(&self, word: &str) -> Option<Vec<f32>> {
        self.embedding_with_norm(word).map(|(v, _)| v)
    }

    /// Look up many words at once, in parallel: fills `out` (`words.len() x dims`, row-major)
    /// and `found`; rows of words without an embedding are zero.
    pub fn lookup_into<S: AsRef<str> + Sync>(&self, words: &[S], out: &mut [f32], found: &mut [bool]) {
        self.lookup_into_with(words, out, found, false)
    }

    /// [`Embeddings::lookup_into`]; with `streaming`, a large output (32 MiB or more) is
    /// written with non-temporal stores, which saves memory traffic when `out` is a buffer
    /// already in use (its pages mapped) whose contents are not in the cache anyway. For a
    /// freshly allocated output the kernel zeroes each page on first touch, through the
    /// cache, and plain stores are as fast.
    pub fn lookup_into_with<S: AsRef<str> + Sync>(&self, words: &[S], out: &mut [f32], found: &mut [bool], streaming: bool) {
        let dims = self.dims();
        assert_eq!(out.len(), words.len() * dims);
        assert_eq!(found.len(), words.len());
        if dims == 0 {
            for (f, w) in found.iter_mut().zip(words) {
                *f = self.vocab.idx(w.as_ref()).is_some();
            }
            return;
        }
        // Known words are resolved a group at a time: the group's hash-table entries, then
        // its words' bytes and storage rows are prefetched together, so that the cache
        // misses of a group overlap instead of coming one after another.
        const GROUP: usize = crate::vocab::INDEX_GROUP;
        // An output larger than the caches is written with non-temporal stores.
        let streaming = streaming && out.len() >= STREAMING_FLOATS;
        let fill = |out: &mut [f32], found: &mut [bool], words: &[S]| {
            let mut scratch = Vec::with_capacity(SCRATCH_ROWS);
            let mut rows = [None; GROUP];
            for ((out, found), words) in out.chunks_mut(GROUP * dims).zip(found.chunks_mut(GROUP)).zip(words.chunks(GROUP)) {
                let rows = &mut rows[..words.len()];
                match self.vocab.words() {
                    Some(list) => list.index_group(words, rows, |i| self.storage.prefetch_row(i)),
                    None => rows.fill(None),
                }
                let batched = self.storage.rebuilds_in_batches();
                if batched {
                    self.storage.rows_into(rows, out);
                }
                for (((row, f), w), &r) in out.chunks_exact_mut(dims).zip(found.iter_mut()).zip(words).zip(rows.iter()) {
                    *f = match r {
                        Some(_) if batched => true,
                        Some(i) => {
                            if streaming {
                                self.storage.row_into_streaming(i, row);
                            } else {
                                self.storage.row_into(i, row);
                            }
                            true
                        }
                        // not a known word (the group above looked it up)
                        None => self.subword_embedding_into(w.as_ref(), row, &mut scratch).is_some(),
                    };
                    if !*f {
                        row.fill(0.0);
                    }
                }
            }
        };
        // Small batches are not worth waking the thread pool for.
        const CHUNK: usize = 2048;
        if words.len() <= CHUNK {
            fill(out, found, words);
            crate::storage::stream_fence();
            return;
        }
        out.par_chunks_mut(CHUNK * dims)
            .zip(found.par_chunks_mut(CHUNK))
            .zip(words.par_chunks(CHUNK))
            .for_each(|((out, found), words)| {
                fill(out, found, words);
                crate::storage::stream_fence();
            });
    }

    /// Where the embedding of `word` comes from.
    pub fn idx(&self, word: &str) -> Option<WordIndex> {
        self.vocab.idx(word)
    }
}

/// L2-normalize `v` in place and return its former norm (a zero vector stays zero).
///
/// The squares are summed in f32, in order (finalfusion's arithmetic); only when that
/// sum overflows or underflows (values beyond about 1e19 or below 1e-19) is the norm
/// taken in f64, so such vectors are normalized too instead of becoming zero or staying
/// unscaled.
#[inline]
pub fn l2_normalize(v: &mut [f32]) -> f32 {
    let sum_sq = v.iter().map(|x| x * x).sum::<f32>();
    normalize_by_sum_of_squares(v, sum_sq)
}

/// The second half of [`l2_normalize`], given the f32 sum of the squares of `v` in order.
#[inline]
pub(crate) fn normalize_by_sum_of_squares(v: &mut [f32], sum_sq: f32) -> f32 {
    if sum_sq.is_finite() && sum_sq >= f32::MIN_POSITIVE {
        let norm = sum_sq.sqrt();
        for x in v.iter_mut() {
            *x /= norm;
        }
        return norm;
    }
    if sum_sq == 0.0 && v.iter().all(|&x| x == 0.0) {
        return 0.0;
    }
    normalize_wide(v)
}

/// [`l2_normalize`] with the norm in f64 (out-of-range sums of squares; NaN stays NaN).
#[cold]
fn normalize_wide(v: &mut [f32]) -> f32 {
    let norm = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        for x in v.iter_mut() {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
    norm as f32
}

fn next_chunk<'a>(r: &mut ByteReader<'a>) -> Result<(ChunkId, ByteReader<'a>)> {
    let id = ChunkId::from_u32(r.u32("chunk id")?)?;
    let mut len = r.u64("chunk length")?;
    if id == ChunkId::ExplicitSubwordVocab {
        len = explicit_vocab_len(r, len);
    }
    let start = r.abs_pos();
    let body = r.bytes(len, "chunk")?;
    Ok((id, ByteReader::with_base(body, start)))
}

/// The real length of an ExplicitSubwordVocab chunk whose body starts at `r`.
///
/// finalfusion-python 0.7.1 (`ExplicitVocab.write_chunk`, used by its `bucket_to_explicit`
/// script) writes a chunk length that leaves out the u64 index of every n-gram, 8 bytes
/// each; its own reader and finalfusion-rust read the chunk by position and accept such
/// files. When the body, read by position, is exactly that much longer than `declared`,
/// the real length is returned; otherwise `declared` (and the usual checks apply).
fn explicit_vocab_len(r: &ByteReader<'_>, declared: u64) -> u64 {
    let mut s = r.clone();
    let start = s.pos();
    let scan = |s: &mut ByteReader<'_>| -> Result<u64> {
        let n_words = s.u64("vocabulary length")?;
        let n_ngrams = s.u64("n-gram count")?;
        s.u32("min_n")?;
        s.u32("max_n")?;
        // every entry takes at least 4 bytes, so these loops end at the end of the data
        for _ in 0..n_words {
            s.string_bytes("word")?;
        }
        for _ in 0..n_ngrams {
            s.string_bytes("n-gram")?;
            s.u64("n-gram index")?;
        }
        Ok(n_ngrams)
    };
    match scan(&mut s) {
        Ok(n_ngrams) => {
            let actual = (s.pos() - start) as u64;
            if n_ngrams.checked_mul(8).and_then(|x| declared.checked_add(x)) == Some(actual) {
                actual
            } else {
                declared
            }
        }
        Err(_) => declared,
    }
}

fn finish_chunk(body: &ByteReader<'_>, id: ChunkId) -> Result<()> {
    if body.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid(
            "chunk length",
            format!("{} chunk has {} bytes after its content", id.name(), body.remaining()),
        ))
    }
}

/// Open a file for reading, refusing what is not a regular file (after symlinks) before it
/// is opened: a directory is an `IsADirectory` error; a pipe, socket or device an
/// `InvalidInput` one. The readers take a file's size from its metadata (a pipe has none)
/// and opening a FIFO without a writer would block forever.
pub fn open_regular_file(path: &Path) -> Result<File> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    if meta.is_dir() {
        return Err(Error::io(
            format!("cannot read {}", path.display()),
            std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory"),
        ));
    }
    if !meta.is_file() {
        return Err(Error::io(
            format!("cannot read {}", path.display()),
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file (a pipe, socket or device): save the data to a file first",
            ),
        ));
    }
    File::open(path).map_err(|e| Error::io(format!("cannot open {}", path.display()), e))
}

/// The bytes of a file: memory-mapped (a read-only private mapping) with
/// [`OpenMode::Mmap`], else read into one aligned buffer (a single copy, no page-cache
/// mapping counted twice in the process's memory).
pub fn read_file(path: &Path, mode: OpenMode) -> Result<FileBytes> {
    let file = open_regular_file(path)?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?;
    let len = usize::try_from(meta.len()).map_err(|_| Error::Overflow("file size"))?;
    #[cfg(feature = "mmap")]
    if mode == OpenMode::Mmap && len > 0 {
        // SAFETY: the mapping is private and read-only; a file changed by another process
        // while mapped is outside what this library can guard against (documented).
        let map = unsafe { memmap2::MmapOptions::new().map_copy_read_only(&file) };
        if let Ok(map) = map {
            return Ok(FileBytes::Mapped(std::sync::Arc::new(map)));
        }
    }
    let _ = mode;
    let mut buf = crate::storage::AlignedBytes::zeroed(len, "file contents")
        .map_err(|e| e.context(format!("reading {}", path.display())))?;
    read_into(&file, buf.as_mut_slice()).map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    Ok(FileBytes::Owned(std::sync::Arc::new(buf)))
}

/// Fill `buf` from the start of `file`: positional reads of 64 MiB pieces on all cores
/// (on Unix), so that page-cache copies and page faults are spread over the threads.
fn read_into(file: &File, buf: &mut [u8]) -> std::io::Result<()> {
    read_into_at(file, buf, 0, 64 << 20)
}

/// Fill `buf` from byte `offset` of `file` with positional reads of `piece` bytes on all
/// cores (as [`read_into`]); a file that ends early is an `UnexpectedEof` error. Does not
/// use or move the file's cursor on Unix (elsewhere it seeks and reads serially).
pub(crate) fn read_into_at(file: &File, buf: &mut [u8], offset: u64, piece: usize) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        let piece = piece.max(1);
        let stop = crate::cancel::current();
        buf.par_chunks_mut(piece).enumerate().try_for_each(|(i, chunk)| {
            if crate::cancel::stopped(&stop) {
                return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "interrupted"));
            }
            file.read_exact_at(chunk, offset + (i * piece) as u64)
        })
    }
    #[cfg(not(unix))]
    {
        use std::io::{Read, Seek, SeekFrom};
        let _ = piece;
        let mut f = file;
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(buf)
    }
}

/// Write through `f` into a temporary file beside `path`, sync it and rename it to `path`.
/// On any error the temporary file is removed and `path` is untouched.
pub fn write_atomically<F>(path: &Path, f: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<&File>) -> std::io::Result<()>,
{
    let shown = path;
    // Through symbolic links to the file they name, so that the link stays a link.
    let path = &resolve_links(path)?;
    let old = match std::fs::metadata(path) {
        // (a directory fails at the rename, as IsADirectoryError)
        Ok(m) if !m.is_file() && !m.is_dir() => {
            return Err(Error::argument(format!(
                "cannot write {}: it exists and is not a regular file (a device, FIFO or socket)",
                shown.display()
            )))
        }
        Ok(m) => Some(m.permissions()),
        Err(_) => None,
    };
    if old.is_some() {
        // The rename would replace the file whatever its mode or owner: refuse when
        // `open(path, "wb")` would (probed by opening it for writing, which changes nothing;
        // root may write anything).
        if let Err(e) = std::fs::OpenOptions::new().write(true).open(path) {
            match e.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    return Err(Error::io(
                        format!("cannot write {} (the file is read-only to this process)", shown.display()),
                        e,
                    ))
                }
                // refused now, not after the whole file is written
                std::io::ErrorKind::IsADirectory => {
                    return Err(Error::io(format!("cannot write {}", shown.display()), e))
                }
                _ => {}
            }
        }
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::argument(format!("not a file path: {}", shown.display())))?;
    let suffix = format!(
        ".{}.{}.tmp",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    // ".{name}{suffix}", the name cut short where the whole would pass the 255 bytes a file
    // name may have (a valid name of 220 to 255 bytes would fail with "File name too long")
    let stem = name.to_string_lossy();
    let mut cut = stem.len().min(255usize.saturating_sub(1 + suffix.len()));
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    let tmp = dir.join(format!(".{}{suffix}", &stem[..cut]));
    let result = (|| {
        // Created new (never through a link planted at the name) and, over an existing
        // file, with that file's mode from the start: a private file's contents are never
        // readable to others while they are written (its mode was set only at the end).
        let mut open = std::fs::OpenOptions::new();
        open.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            open.mode(old.as_ref().map_or(0o666, |p| p.mode() & 0o7777));
        }
        let file = open.open(&tmp)?;
        {
            let mut w = BufWriter::with_capacity(1 << 20, &file);
            f(&mut w)?;
            w.flush()?;
        }
        file.sync_all()?;
        // a file written over keeps its permissions
        if let Some(perm) = old {
            std::fs::set_permissions(&tmp, perm)?;
        }
        std::fs::rename(&tmp, path)
    })();
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            // an error of the data being written (carried through `io::Error::other`) is
            // returned as it is, not as a failure to write the file
            match e.downcast::<Error>() {
                Ok(data_error) => Err(data_error),
                Err(e) => Err(Error::io(format!("cannot write {}", shown.display()), e)),
            }
        }
    }
}

/// `path` with symbolic links followed to the path they finally name (which need not
/// exist yet: a dangling link is written through, as `open` would).
fn resolve_links(path: &Path) -> Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&p).map_err(|e| Error::io(format!("cannot read link {}", p.display()), e))?;
                p = match p.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
            }
            _ => return Ok(p),
        }
    }
    Err(Error::argument(format!("cannot write {}: too many levels of symbolic links", path.display())))
}

#[cfg(test)]
mod unit_row_tests {
    use super::*;

    /// A deterministic pseudo-random value in [-1, 1).
    fn noise(i: u64) -> f32 {
        let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    #[test]
    fn rows_normalized_in_float32_are_unit_and_rows_further_off_are_not() {
        // the library's own normalizer, on wide rows with a few outlier dimensions (as
        // language-model embeddings have): every row counts as unit (4e-6 was measured at
        // 4096 dims, beyond a fixed 2e-6)
        for dims in [3usize, 300, 4096, 16384] {
            for r in 0..200u64 {
                let mut row: Vec<f32> = (0..dims as u64).map(|j| noise(r * 100_003 + j)).collect();
                for x in row.iter_mut().take(8) {
                    *x *= 50.0;
                }
                l2_normalize(&mut row);
                assert!(is_unit_or_zero(&row), "dims {dims} row {r}");
                // off by a hundred times the bound: searched with its own length
                let off = 1.0 + 100.0 * unit_tolerance(dims) as f32;
                let far: Vec<f32> = row.iter().map(|x| x * off).collect();
                assert!(!is_unit_or_zero(&far), "dims {dims} row {r}");
            }
        }
        // a row of length 1.00009 is no unit vector (it outranked a row of a higher cosine)
        let s = 1.00009f32 / 3f32.sqrt();
        assert!(!is_unit_or_zero(&[s, s, s]));
        assert!(is_unit_or_zero(&[0.0; 5]) && !is_unit_or_zero(&[f32::NAN, 0.0]));
    }
}
