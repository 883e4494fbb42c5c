//! Vocabularies: plain word lists and subword vocabularies.

pub mod fstvocab;
mod fstwalk;
pub mod subword;
pub mod words;

use std::borrow::Cow;
use std::io::Write;

pub use subword::{ExplicitNgrams, FloretIndexer, Indexer};
pub use fstvocab::{FstNgrams, FstWords};
pub use words::{WordList, INDEX_GROUP};

use crate::error::{Error, Result};
use crate::format::{string_len, ByteReader, ChunkId, PosWriter};
use crate::storage::FileBytes;

/// How a vocabulary chunk is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VocabFormat {
    /// finalfusion's chunks (ids 1, 3, 7, 8, 9): readable by every finalfusion reader.
    Standard,
    /// vecfusion's fst chunks (docs/FORMAT-vecfusion.md): memory-mappable, no hash map at open.
    Fst,
}

impl VocabFormat {
    /// Parse "standard" or "fst".
    pub fn parse(s: &str) -> Result<VocabFormat> {
        match s {
            "standard" => Ok(VocabFormat::Standard),
            "fst" => Ok(VocabFormat::Fst),
            other => Err(Error::argument(format!("unknown vocabulary format {other:?} (expected 'standard' or 'fst')"))),
        }
    }
}

/// Where a word's embedding comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WordIndex {
    /// A known word: its row.
    Word(usize),
    /// An unknown word: the rows of its n-grams (repeats kept).
    Subwords(Vec<usize>),
}

/// A subword vocabulary: known words plus an n-gram indexer.
#[derive(Clone, Debug)]
pub struct SubwordVocab {
    pub words: WordList,
    pub min_n: u32,
    pub max_n: u32,
    pub indexer: Indexer,
    /// N-grams as fastText takes them: the single `<` and `>` are left out (with `min_n` 1).
    /// Set for vocabularies read from fastText models; a finalfusion chunk (and a vocabulary
    /// built in Python) follows finalfusion's rule, which keeps them.
    pub fasttext_ngrams: bool,
}

impl SubwordVocab {
    /// The bracketed word and the byte ranges of its n-grams, in finalfusion order.
    ///
    /// A vocabulary read from a fastText model (`fasttext_ngrams`) with `min_n` 1 follows
    /// fastText's rule on top: the single characters `<` and `>` are never n-grams.
    /// (finalfusion keeps them; fastText also gives its end-of-sentence token `</s>` no
    /// n-grams, where finalfusion gives it some: a known word in fastText models.)
    pub fn ngram_ranges(&self, word: &str) -> (String, Vec<(usize, usize)>) {
        let b = subword::bracket(word, "<", ">");
        let mut ranges = Vec::new();
        self.for_each_ngram_range(&b, |s, e| ranges.push((s, e)));
        (b, ranges)
    }

    /// [`SubwordVocab::ngram_ranges`] of the bracketed word `b` (from `subword::bracket`),
    /// one `f(start, end)` at a time, without collecting them.
    pub fn for_each_ngram_range(&self, b: &str, mut f: impl FnMut(usize, usize)) {
        let skip_single = self.fasttext_ngrams && self.min_n <= 1;
        let len = b.len();
        subword::for_each_ngram_range(b, self.min_n as usize, self.max_n as usize, |st, en| {
            if !(skip_single && ((st == 0 && en == 1) || (st == len - 1 && en == len))) {
                f(st, en);
            }
        });
    }
}

impl SubwordVocab {
    /// The n-gram rows (counted from the first n-gram row) of the n-grams of `word`, in
    /// [`SubwordVocab::ngram_ranges`] order, one `f(index)` at a time; n-grams without a
    /// row are left out.
    ///
    /// finalfusion buckets hash the characters of each n-gram: the bracketed word is
    /// decoded once (on the stack when it is short) instead of once per n-gram.
    pub fn for_each_ngram_index(&self, word: &str, mut f: impl FnMut(u64)) {
        let Indexer::Bucket { exponent } = self.indexer else {
            let b = subword::bracket(word, "<", ">");
            self.for_each_ngram_range(&b, |st, en| {
                if let Some(i) = self.indexer.index(&b[st..en]) {
                    f(i);
                }
            });
            return;
        };
        let (min_n, max_n) = (self.min_n as usize, self.max_n as usize);
        if min_n == 0 || min_n > max_n {
            return;
        }
        let mask = if exponent >= 64 { u64::MAX } else { (1u64 << exponent) - 1 };
        let mut stack = [0u32; 64];
        let mut heap = Vec::new();
        let cap = word.len() + 2;
        let buf: &mut [u32] = if cap <= stack.len() {
            &mut stack[..cap]
        } else {
            heap.resize(cap, 0);
            &mut heap
        };
        buf[0] = u32::from('<');
        let mut n = 1;
        for c in word.chars() {
            buf[n] = u32::from(c);
            n += 1;
        }
        buf[n] = u32::from('>');
        n += 1;
        let chars = &buf[..n];
        // as `for_each_ngram_range`: fastText's rule leaves out the single `<` and `>`
        let skip_single = self.fasttext_ngrams && min_n <= 1;
        for start in 0..n {
            let longest = max_n.min(n - start);
            if longest < min_n {
                continue;
            }
            for len in (min_n..=longest).rev() {
                if skip_single && len == 1 && (start == 0 || start == n - 1) {
                    continue;
                }
                f(subword::finalfusion_hash_chars(&chars[start..start + len]) & mask);
            }
        }
    }
}

/// floret's vocabulary: no words, every string is hashed.
#[derive(Clone, Debug)]
pub struct FloretVocab {
    pub min_n: u32,
    pub max_n: u32,
    pub indexer: FloretIndexer,
    pub bow: String,
    pub eow: String,
}

/// Any vocabulary.
#[derive(Clone, Debug)]
pub enum Vocab {
    Simple(WordList),
    Subword(SubwordVocab),
    Floret(FloretVocab),
}

impl Vocab {
    /// The finalfusion chunk this vocabulary is written as.
    pub fn chunk_id(&self) -> ChunkId {
        self.chunk_id_as(if self.is_fst() { VocabFormat::Fst } else { VocabFormat::Standard })
    }

    /// Is this vocabulary backed by fst automata (read from an fst chunk)?
    pub fn is_fst(&self) -> bool {
        match self {
            Vocab::Simple(w) => w.is_fst(),
            Vocab::Subword(s) => s.words.is_fst() || matches!(s.indexer, Indexer::ExplicitFst(_)),
            Vocab::Floret(_) => false,
        }
    }

    /// The chunk this vocabulary is written as in format `fmt` (floret has no fst form).
    pub fn chunk_id_as(&self, fmt: VocabFormat) -> ChunkId {
        let fst = fmt == VocabFormat::Fst;
        match self {
            Vocab::Simple(_) if fst => ChunkId::FstSimpleVocab,
            Vocab::Simple(_) => ChunkId::SimpleVocab,
            Vocab::Subword(s) => match (&s.indexer, fst) {
                (Indexer::Bucket { .. }, false) => ChunkId::BucketSubwordVocab,
                (Indexer::Bucket { .. }, true) => ChunkId::FstBucketSubwordVocab,
                (Indexer::FastText { .. }, false) => ChunkId::FastTextSubwordVocab,
                (Indexer::FastText { .. }, true) => ChunkId::FstFastTextSubwordVocab,
                (Indexer::Explicit(_) | Indexer::ExplicitFst(_), false) => ChunkId::ExplicitSubwordVocab,
                (Indexer::Explicit(_) | Indexer::ExplicitFst(_), true) => ChunkId::FstExplicitSubwordVocab,
            },
            Vocab::Floret(_) => ChunkId::FloretSubwordVocab,
        }
    }

    /// Verify memory-mapped fst chunks in full (automaton checksums, tables, keys): a write
    /// copies every word, and must not carry a corrupt automaton's words into a new file.
    pub fn verify_fst(&self) -> Result<()> {
        // a chunk's words and n-gram table are verified together: at open when it was read
        // into memory (nothing left to do), here when it is memory-mapped
        let Some(words) = self.words().filter(|w| w.needs_verification()) else {
            return Ok(());
        };
        words.verify_fst()?;
        if let Vocab::Subword(SubwordVocab { indexer: Indexer::ExplicitFst(e), .. }) = self {
            e.verify()?;
        }
        Ok(())
    }

    /// The same vocabulary with in-memory (standard) backends: borrowed when it already is,
    /// otherwise decoded from the automata in one pass (errors if they turn out corrupt).
    pub fn to_standard(&self) -> Result<Cow<'_, Vocab>> {
        if !self.is_fst() {
            return Ok(Cow::Borrowed(self));
        }
        Ok(Cow::Owned(match self {
            Vocab::Simple(w) => Vocab::Simple(w.to_hash()?),
            Vocab::Subword(s) => Vocab::Subword(SubwordVocab {
                words: s.words.to_hash()?,
                min_n: s.min_n,
                max_n: s.max_n,
                indexer: match &s.indexer {
                    Indexer::ExplicitFst(e) => Indexer::Explicit(ExplicitNgrams::new(e.pairs()?)?),
                    other => other.clone(),
                },
                fasttext_ngrams: s.fasttext_ngrams,
            }),
            Vocab::Floret(f) => Vocab::Floret(f.clone()),
        }))
    }

    /// The row of a known word; an error if an fst chunk turns out corrupt.
    pub fn try_word_index(&self, word: &str) -> Result<Option<usize>> {
        match self.words() {
            Some(w) => w.try_index(word),
            None => Ok(None),
        }
    }

    /// The word at row `i`; an error if an fst chunk turns out corrupt.
    pub fn try_word(&self, i: usize) -> Result<Option<Cow<'_, str>>> {
        match self.words() {
            Some(w) => w.try_get(i),
            None => Ok(None),
        }
    }

    /// Like [`Vocab::subword_indices`], but an error if an fst n-gram table is corrupt.
    pub fn try_subword_indices(&self, word: &str) -> Result<Vec<usize>> {
        if let Vocab::Subword(s) = self {
            if let Indexer::ExplicitFst(_) = s.indexer {
                let offset = s.words.len();
                let (b, ranges) = s.ngram_ranges(word);
                let mut out = Vec::new();
                for (st, en) in ranges {
                    if let Some(i) = s.indexer.try_index(&b[st..en])? {
                        out.push(offset + i as usize);
                    }
                }
                return Ok(out);
            }
        }
        Ok(self.subword_indices(word))
    }

    /// Like [`Vocab::idx`], but an error if an fst chunk turns out corrupt.
    pub fn try_idx(&self, word: &str) -> Result<Option<WordIndex>> {
        if let Some(i) = self.try_word_index(word)? {
            return Ok(Some(WordIndex::Word(i)));
        }
        let sub = self.try_subword_indices(word)?;
        Ok(if sub.is_empty() { None } else { Some(WordIndex::Subwords(sub)) })
    }

    /// A short name of the vocabulary kind.
    pub fn kind(&self) -> &'static str {
        self.chunk_id().name()
    }

    /// The known words (empty for floret).
    pub fn words(&self) -> Option<&WordList> {
        match self {
            Vocab::Simple(w) => Some(w),
            Vocab::Subword(s) => Some(&s.words),
            Vocab::Floret(_) => None,
        }
    }

    /// Number of known words.
    pub fn words_len(&self) -> usize {
        self.words().map_or(0, WordList::len)
    }

    /// Number of storage rows this vocabulary addresses (words + n-gram rows).
    pub fn rows(&self) -> u64 {
        match self {
            Vocab::Simple(w) => w.len() as u64,
            Vocab::Subword(s) => (s.words.len() as u64).saturating_add(s.indexer.n_buckets()),
            Vocab::Floret(f) => f.indexer.n_buckets,
        }
    }

    /// The word at row `i`.
    pub fn word(&self, i: usize) -> Option<&str> {
        self.words().and_then(|w| w.get(i))
    }

    /// The row of a known word.
    #[inline]
    pub fn word_index(&self, word: &str) -> Option<usize> {
        self.words().and_then(|w| w.index(word))
    }

    /// (min_n, max_n) of a subword vocabulary.
    pub fn ngram_range(&self) -> Option<(u32, u32)> {
        match self {
            Vocab::Simple(_) => None,
            Vocab::Subword(s) => Some((s.min_n, s.max_n)),
            Vocab::Floret(f) => Some((f.min_n, f.max_n)),
        }
    }

    /// The n-grams of `word` (bracketed), in finalfusion order. Empty for a simple vocabulary.
    pub fn ngrams(&self, word: &str) -> Vec<String> {
        match self {
            Vocab::Simple(_) => Vec::new(),
            Vocab::Subword(s) => {
                let (b, r) = s.ngram_ranges(word);
                r.into_iter().map(|(st, en)| b[st..en].to_string()).collect()
            }
            Vocab::Floret(f) => {
                // as `subword_indices`: the whole bracketed word first (floret hashes it
                // whatever its length), then the n-grams
                let (b, r) = subword::ngram_ranges(word, f.min_n as usize, f.max_n as usize, &f.bow, &f.eow);
                std::iter::once(b.clone())
                    .chain(r.into_iter().filter(|&(s, e)| !(s == 0 && e == b.len())).map(|(s, e)| b[s..e].to_string()))
                    .collect()
            }
        }
    }

    /// The storage rows of the n-grams of `word` (n-grams without a row are left out).
    pub fn subword_indices(&self, word: &str) -> Vec<usize> {
        let mut out = Vec::new();
        self.push_subword_indices(word, &mut out);
        out
    }

    /// Like [`Vocab::subword_indices`], appending to `out` (no allocation when it has room).
    pub fn push_subword_indices(&self, word: &str, out: &mut Vec<usize>) {
        let mut one = Vec::new();
        self.for_each_subword_index(word, &mut one, |i| out.push(i));
    }

    /// The storage rows of the n-grams of `word`, in [`Vocab::subword_indices`] order, one
    /// `f(row)` at a time: nothing is collected, so the memory a very long word takes is one
    /// offset per character whatever its number of n-grams. `scratch` is a small reusable
    /// buffer (floret's indices of one n-gram).
    pub fn for_each_subword_index(&self, word: &str, scratch: &mut Vec<usize>, mut f: impl FnMut(usize)) {
        match self {
            Vocab::Simple(_) => {}
            Vocab::Subword(s) => {
                let offset = s.words.len();
                s.for_each_ngram_index(word, |i| f(offset + i as usize));
            }
            Vocab::Floret(fl) => {
                let b = subword::bracket(word, &fl.bow, &fl.eow);
                let mut each = |g: &str| {
                    scratch.clear();
                    fl.indexer.push_indices(g, scratch);
                    scratch.iter().for_each(|&i| f(i));
                };
                // floret also hashes the whole bracketed word.
                each(&b);
                subword::for_each_ngram_range(&b, fl.min_n as usize, fl.max_n as usize, |st, en| {
                    if !(st == 0 && en == b.len()) {
                        each(&b[st..en]);
                    }
                });
            }
        }
    }

    /// Where the embedding of `word` comes from, or `None` if it has none.
    pub fn idx(&self, word: &str) -> Option<WordIndex> {
        if let Some(i) = self.word_index(word) {
            return Some(WordIndex::Word(i));
        }
        let sub = self.subword_indices(word);
        if sub.is_empty() {
            None
        } else {
            Some(WordIndex::Subwords(sub))
        }
    }

    /// Read a vocabulary chunk body (after the chunk header).
    pub fn read_chunk(id: ChunkId, r: &mut ByteReader<'_>) -> Result<Vocab> {
        Self::read_chunk_mapped(id, r, None)
    }

    /// Read a vocabulary chunk body. With `map` (the whole file, memory-mapped), an fst chunk
    /// is used in place from the map with no per-word work; without, an fst chunk is copied
    /// into one buffer and fully verified.
    pub fn read_chunk_mapped(id: ChunkId, r: &mut ByteReader<'_>, map: Option<&FileBytes>) -> Result<Vocab> {
        match id {
            ChunkId::FstSimpleVocab
            | ChunkId::FstBucketSubwordVocab
            | ChunkId::FstFastTextSubwordVocab
            | ChunkId::FstExplicitSubwordVocab => {
                let (words, extra) = fstvocab::read_chunk(id, r, map)?;
                let words = WordList::from_fst(words);
                Ok(match extra {
                    fstvocab::FstExtra::None => Vocab::Simple(words),
                    fstvocab::FstExtra::Buckets { min_n, max_n, buckets } => {
                        check_ngram_range(min_n, max_n)?;
                        let indexer = bucket_indexer(id == ChunkId::FstBucketSubwordVocab, buckets)?;
                        Vocab::Subword(SubwordVocab { words, min_n, max_n, indexer, fasttext_ngrams: false })
                    }
                    fstvocab::FstExtra::Explicit { min_n, max_n, ngrams } => {
                        check_ngram_range(min_n, max_n)?;
                        Vocab::Subword(SubwordVocab {
                            words,
                            min_n,
                            max_n,
                            indexer: Indexer::ExplicitFst(ngrams),
                            fasttext_ngrams: false,
                        })
                    }
                })
            }
            ChunkId::SimpleVocab => {
                let n = r.u64("vocabulary length")?;
                Ok(Vocab::Simple(words::read_words(r, n)?))
            }
            ChunkId::BucketSubwordVocab | ChunkId::FastTextSubwordVocab => {
                let n = r.u64("vocabulary length")?;
                let min_n = r.u32("min_n")?;
                let max_n = r.u32("max_n")?;
                let buckets = r.u32("buckets")?;
                check_ngram_range(min_n, max_n)?;
                let indexer = bucket_indexer(id == ChunkId::BucketSubwordVocab, buckets)?;
                let words = words::read_words(r, n)?;
                Ok(Vocab::Subword(SubwordVocab {
                    words,
                    min_n,
                    max_n,
                    indexer,
                    fasttext_ngrams: false,
                }))
            }
            ChunkId::ExplicitSubwordVocab => {
                let n = r.u64("vocabulary length")?;
                let n_ngrams = r.u64("n-gram count")?;
                let min_n = r.u32("min_n")?;
                let max_n = r.u32("max_n")?;
                check_ngram_range(min_n, max_n)?;
                let words = words::read_words(r, n)?;
                // each n-gram entry needs at least 12 bytes
                if n_ngrams > r.remaining() as u64 / 12 {
                    return Err(Error::Truncated {
                        what: "explicit n-grams",
                        offset: r.abs_pos(),
                        need: n_ngrams.saturating_mul(12),
                        have: r.remaining() as u64,
                    });
                }
                let mut pairs = Vec::with_capacity(n_ngrams as usize);
                for i in 0..n_ngrams {
                    let s = r.string("n-gram", i)?.to_string();
                    let idx = r.u64("n-gram index")?;
                    pairs.push((s, idx));
                }
                Ok(Vocab::Subword(SubwordVocab {
                    words,
                    min_n,
                    max_n,
                    indexer: Indexer::Explicit(ExplicitNgrams::new(pairs)?),
                    fasttext_ngrams: false,
                }))
            }
            ChunkId::FloretSubwordVocab => {
                let min_n = r.u32("min_n")?;
                let max_n = r.u32("max_n")?;
                check_ngram_range(min_n, max_n)?;
                let n_buckets = r.u64("floret buckets")?;
                let n_hashes = r.u32("floret hash count")?;
                let seed = r.u32("floret seed")?;
                let bow = r.string("floret bow", 0)?.to_string();
                let eow = r.string("floret eow", 0)?.to_string();
                if n_buckets == 0 {
                    return Err(Error::invalid("floret buckets", "bucket count is 0"));
                }
                for (what, marker) in [("floret bow", &bow), ("floret eow", &eow)] {
                    if marker.len() > MAX_FLORET_MARKER {
                        return Err(Error::invalid(
                            what,
                            format!(
                                "a marker of {} bytes (at most {MAX_FLORET_MARKER}): it is part of every unknown word",
                                marker.len()
                            ),
                        ));
                    }
                }
                if !(1..=4).contains(&n_hashes) {
                    return Err(Error::invalid(
                        "floret hash count",
                        format!("{n_hashes} (must be 1 to 4)"),
                    ));
                }
                Ok(Vocab::Floret(FloretVocab {
                    min_n,
                    max_n,
                    indexer: FloretIndexer {
                        n_buckets,
                        n_hashes,
                        seed,
                    },
                    bow,
                    eow,
                }))
            }
            other => Err(Error::UnexpectedChunk {
                expected: "a vocabulary chunk",
                got: other.name().to_string(),
            }),
        }
    }

    /// The body of this vocabulary as an fst chunk starting at absolute offset `body_pos`
    /// (fst chunks are aligned from absolute offsets, so their length depends on it).
    pub fn fst_chunk_body(&self, body_pos: u64) -> Result<Vec<u8>> {
        let std = self.to_standard()?;
        let words = std
            .words()
            .and_then(WordList::hash_words)
            .ok_or_else(|| Error::argument("a floret vocabulary has no words: it has no fst form"))?;
        let spec = match &*std {
            Vocab::Simple(_) => fstvocab::FstChunkSpec { id: ChunkId::FstSimpleVocab, words: &words, subword: None, explicit: None },
            Vocab::Subword(s) => match &s.indexer {
                Indexer::Bucket { exponent } => fstvocab::FstChunkSpec {
                    id: ChunkId::FstBucketSubwordVocab,
                    words: &words,
                    subword: Some((s.min_n, s.max_n, *exponent)),
                    explicit: None,
                },
                Indexer::FastText { buckets } => fstvocab::FstChunkSpec {
                    id: ChunkId::FstFastTextSubwordVocab,
                    words: &words,
                    subword: Some((s.min_n, s.max_n, *buckets)),
                    explicit: None,
                },
                Indexer::Explicit(e) => fstvocab::FstChunkSpec {
                    id: ChunkId::FstExplicitSubwordVocab,
                    words: &words,
                    subword: None,
                    explicit: Some((s.min_n, s.max_n, &e.ngrams, e.n_indices)),
                },
                Indexer::ExplicitFst(_) => return Err(Error::invalid("vocabulary", "fst n-grams left after conversion")),
            },
            Vocab::Floret(_) => return Err(Error::argument("a floret vocabulary has no words: it has no fst form")),
        };
        fstvocab::chunk_body(&spec, body_pos).map_err(|e| Error::io("cannot build the fst vocabulary", e))
    }

    /// Write the whole chunk (header included) in format `fmt`.
    pub fn write_chunk_as<W: Write>(&self, w: &mut PosWriter<W>, fmt: VocabFormat) -> std::io::Result<()> {
        let bad = |e: Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string());
        match fmt {
            VocabFormat::Fst => {
                let body = self.fst_chunk_body(w.pos() + 12).map_err(bad)?;
                w.u32(self.chunk_id_as(VocabFormat::Fst) as u32)?;
                w.u64(body.len() as u64)?;
                w.bytes(&body)
            }
            VocabFormat::Standard => match self.to_standard().map_err(bad)? {
                Cow::Borrowed(v) => v.write_standard_chunk(w),
                Cow::Owned(v) => v.write_standard_chunk(w),
            },
        }
    }

    /// Write the whole chunk (header included) in the vocabulary's own format.
    pub fn write_chunk<W: Write>(&self, w: &mut PosWriter<W>) -> std::io::Result<()> {
        self.write_chunk_as(w, if self.is_fst() { VocabFormat::Fst } else { VocabFormat::Standard })
    }

    /// The length of the chunk body as written (fst kinds: when written at an 8-aligned offset).
    pub fn chunk_len(&self) -> u64 {
        if self.is_fst() {
            return self.fst_chunk_body(0).map_or(0, |b| b.len() as u64);
        }
        let words_len = |w: &WordList| w.iter().map(string_len).sum::<u64>();
        match self {
            Vocab::Simple(w) => 8 + words_len(w),
            Vocab::Subword(s) => match &s.indexer {
                Indexer::Bucket { .. } | Indexer::FastText { .. } => 8 + 12 + words_len(&s.words),
                Indexer::ExplicitFst(_) => 0,
                Indexer::Explicit(e) => {
                    8 + 8 + 8 + words_len(&s.words) + e.ngrams.iter().map(|(g, _)| string_len(g) + 8).sum::<u64>()
                }
            },
            Vocab::Floret(f) => 4 + 4 + 8 + 4 + 4 + string_len(&f.bow) + string_len(&f.eow),
        }
    }

    /// Write a standard chunk (header included); the vocabulary must have standard backends.
    fn write_standard_chunk<W: Write>(&self, w: &mut PosWriter<W>) -> std::io::Result<()> {
        w.u32(self.chunk_id_as(VocabFormat::Standard) as u32)?;
        w.u64(self.chunk_len())?;
        let write_words = |w: &mut PosWriter<W>, words: &WordList| -> std::io::Result<()> {
            for word in words.iter() {
                w.string(word)?;
            }
            Ok(())
        };
        match self {
            Vocab::Simple(words) => {
                w.u64(words.len() as u64)?;
                write_words(w, words)
            }
            Vocab::Subword(s) => match &s.indexer {
                Indexer::Bucket { exponent } => {
                    w.u64(s.words.len() as u64)?;
                    w.u32(s.min_n)?;
                    w.u32(s.max_n)?;
                    w.u32(*exponent)?;
                    write_words(w, &s.words)
                }
                Indexer::FastText { buckets } => {
                    w.u64(s.words.len() as u64)?;
                    w.u32(s.min_n)?;
                    w.u32(s.max_n)?;
                    w.u32(*buckets)?;
                    write_words(w, &s.words)
                }
                Indexer::ExplicitFst(_) => Err(std::io::Error::other("fst n-grams in a standard chunk")),
                Indexer::Explicit(e) => {
                    w.u64(s.words.len() as u64)?;
                    w.u64(e.ngrams.len() as u64)?;
                    w.u32(s.min_n)?;
                    w.u32(s.max_n)?;
                    write_words(w, &s.words)?;
                    for (g, i) in &e.ngrams {
                        w.string(g)?;
                        w.u64(*i)?;
                    }
                    Ok(())
                }
            },
            Vocab::Floret(f) => {
                w.u32(f.min_n)?;
                w.u32(f.max_n)?;
                w.u64(f.indexer.n_buckets)?;
                w.u32(f.indexer.n_hashes)?;
                w.u32(f.indexer.seed)?;
                w.string(&f.bow)?;
                w.string(&f.eow)
            }
        }
    }
}

fn bucket_indexer(finalfusion: bool, buckets: u32) -> Result<Indexer> {
    if finalfusion {
        if buckets > 40 {
            return Err(Error::invalid(
                "bucket exponent",
                format!("2^{buckets} buckets is more than any storage can hold"),
            ));
        }
        Ok(Indexer::Bucket { exponent: buckets })
    } else {
        if buckets == 0 {
            return Err(Error::invalid("fastText buckets", "bucket count is 0"));
        }
        Ok(Indexer::FastText { buckets })
    }
}

/// The longest n-grams accepted. finalfusion and fastText set no limit, but the n-grams of a
/// word of `L` characters number up to `L * (max_n - min_n + 1)`, each hashed over its length:
/// without a bound, a file with a huge `max_n` makes a long unknown word cost time quadratic
/// (or worse) in its length. The constructors refuse the same, so every file vecfusion writes
/// reads back.
pub const MAX_NGRAM_LEN: u32 = 1024;

/// The longest floret word-boundary marker (`bow`, `eow`) read: floret writes one character,
/// and a long one would make every unknown word as long (a 20 kB marker: seconds a word).
pub const MAX_FLORET_MARKER: usize = 64;

/// finalfusion's n-gram lengths: `1 <= min_n <= max_n <= MAX_NGRAM_LEN`.
pub fn check_ngram_range(min_n: u32, max_n: u32) -> Result<()> {
    if min_n == 0 || min_n > max_n || max_n > MAX_NGRAM_LEN {
        return Err(Error::invalid(
            "n-gram range",
            format!("min_n {min_n}, max_n {max_n} (need 1 <= min_n <= max_n <= {MAX_NGRAM_LEN})"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every n-gram of the bracketed word, hashed one string at a time (the generic path).
    fn indices_by_ranges(v: &SubwordVocab, word: &str) -> Vec<u64> {
        let (b, ranges) = v.ngram_ranges(word);
        ranges.into_iter().filter_map(|(s, e)| v.indexer.index(&b[s..e])).collect()
    }

    #[test]
    fn bucket_ngram_indices_equal_hashing_each_ngram_string() {
        let words = ["", "a", "ab", "Test", "tüß", "日本語の単語", "😀x😀", &"long".repeat(30)];
        for (min_n, max_n) in [(1, 1), (1, 3), (3, 6), (2, 2), (4, 3), (5, 40)] {
            for fasttext_ngrams in [false, true] {
                for exponent in [0, 10, 21, 63, 64] {
                    let v = SubwordVocab {
                        words: WordList::new(["known"]).expect("word list"),
                        min_n,
                        max_n,
                        indexer: Indexer::Bucket { exponent },
                        fasttext_ngrams,
                    };
                    for w in words {
                        let mut got = Vec::new();
                        v.for_each_ngram_index(w, |i| got.push(i));
                        assert_eq!(got, indices_by_ranges(&v, w), "{w:?} n {min_n}..{max_n} fastText {fasttext_ngrams} 2^{exponent}");
                    }
                }
            }
        }
    }
}
