//! Vocabularies: plain word lists and subword vocabularies.

pub mod subword;
pub mod words;

use std::io::Write;

pub use subword::{ExplicitNgrams, FloretIndexer, Indexer};
pub use words::WordList;

use crate::error::{Error, Result};
use crate::format::{string_len, ByteReader, ChunkId, PosWriter};

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
        match self {
            Vocab::Simple(_) => ChunkId::SimpleVocab,
            Vocab::Subword(s) => match s.indexer {
                Indexer::Bucket { .. } => ChunkId::BucketSubwordVocab,
                Indexer::FastText { .. } => ChunkId::FastTextSubwordVocab,
                Indexer::Explicit(_) => ChunkId::ExplicitSubwordVocab,
            },
            Vocab::Floret(_) => ChunkId::FloretSubwordVocab,
        }
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
            Vocab::Subword(s) => subword::ngrams(word, s.min_n as usize, s.max_n as usize),
            Vocab::Floret(f) => {
                let (b, r) = subword::ngram_ranges(word, f.min_n as usize, f.max_n as usize, &f.bow, &f.eow);
                r.into_iter().map(|(s, e)| b[s..e].to_string()).collect()
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
        match self {
            Vocab::Simple(_) => {}
            Vocab::Subword(s) => {
                let offset = s.words.len();
                let (b, ranges) = subword::ngram_ranges(word, s.min_n as usize, s.max_n as usize, "<", ">");
                for (st, en) in ranges {
                    if let Some(i) = s.indexer.index(&b[st..en]) {
                        out.push(offset + i as usize);
                    }
                }
            }
            Vocab::Floret(f) => {
                let (b, ranges) =
                    subword::ngram_ranges(word, f.min_n as usize, f.max_n as usize, &f.bow, &f.eow);
                // floret also hashes the whole bracketed word.
                f.indexer.push_indices(&b, out);
                for (st, en) in ranges {
                    if st == 0 && en == b.len() {
                        continue;
                    }
                    f.indexer.push_indices(&b[st..en], out);
                }
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
        match id {
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
                let indexer = if id == ChunkId::BucketSubwordVocab {
                    if buckets > 40 {
                        return Err(Error::invalid(
                            "bucket exponent",
                            format!("2^{buckets} buckets is more than any storage can hold"),
                        ));
                    }
                    Indexer::Bucket { exponent: buckets }
                } else {
                    if buckets == 0 {
                        return Err(Error::invalid("fastText buckets", "bucket count is 0"));
                    }
                    Indexer::FastText { buckets }
                };
                let words = words::read_words(r, n)?;
                Ok(Vocab::Subword(SubwordVocab {
                    words,
                    min_n,
                    max_n,
                    indexer,
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

    /// The length of the chunk body as written.
    pub fn chunk_len(&self) -> u64 {
        let words_len = |w: &WordList| w.iter().map(string_len).sum::<u64>();
        match self {
            Vocab::Simple(w) => 8 + words_len(w),
            Vocab::Subword(s) => match &s.indexer {
                Indexer::Bucket { .. } | Indexer::FastText { .. } => 8 + 12 + words_len(&s.words),
                Indexer::Explicit(e) => {
                    8 + 8 + 8 + words_len(&s.words) + e.ngrams.iter().map(|(g, _)| string_len(g) + 8).sum::<u64>()
                }
            },
            Vocab::Floret(f) => 4 + 4 + 8 + 4 + 4 + string_len(&f.bow) + string_len(&f.eow),
        }
    }

    /// Write the whole chunk (header included).
    pub fn write_chunk<W: Write>(&self, w: &mut PosWriter<W>) -> std::io::Result<()> {
        w.u32(self.chunk_id() as u32)?;
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

fn check_ngram_range(min_n: u32, max_n: u32) -> Result<()> {
    if min_n == 0 || min_n > max_n || max_n > 1024 {
        return Err(Error::invalid(
            "n-gram range",
            format!("min_n {min_n}, max_n {max_n} (need 1 <= min_n <= max_n <= 1024)"),
        ));
    }
    Ok(())
}
