//! A compact word list: all strings in one buffer, a table of end offsets and a
//! hash table of row numbers keyed by the string (no per-word allocation).

use hashbrown::HashTable;

use std::borrow::Cow;

use crate::error::{Error, Result};
use super::fstvocab::FstWords;

/// Words in row order, with word -> row lookup: an in-memory hash table (the standard
/// vocabulary chunks) or an automaton used in place from the file (the fst chunks).
#[derive(Clone)]
pub struct WordList {
    repr: Repr,
}

#[derive(Clone)]
enum Repr {
    Hash(HashWords),
    Fst(FstWords),
}

impl Default for WordList {
    fn default() -> Self {
        WordList { repr: Repr::Hash(HashWords::default()) }
    }
}

/// The hash-table backend: all strings in one buffer plus a table of rows.
#[derive(Clone, Default)]
struct HashWords {
    bytes: Vec<u8>,
    /// `ends[i]` is the end offset of word `i` in `bytes`; word `i` starts at `ends[i-1]`.
    ends: Vec<usize>,
    table: HashTable<Slot>,
    state: foldhash::fast::FixedState,
}

/// A hash-table entry: the word's row and where its bytes are, so that a lookup touches
/// the table and the word's bytes only (no detour through `ends`).
#[derive(Clone, Copy)]
struct Slot {
    start: usize,
    len: u32,
    row: u32,
}

impl std::fmt::Debug for WordList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WordList").field("len", &self.len()).field("fst", &self.is_fst()).finish()
    }
}

#[inline]
fn hash_str(state: &foldhash::fast::FixedState, s: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    state.hash_one(s)
}

impl HashWords {
    /// Build from words in row order. Duplicate words are an error.
    pub fn new<'a, I: IntoIterator<Item = &'a str>>(words: I) -> Result<Self> {
        let it = words.into_iter();
        let mut list = HashWords {
            bytes: Vec::new(),
            ends: Vec::with_capacity(it.size_hint().0),
            table: HashTable::new(),
            state: foldhash::fast::FixedState::with_seed(0x5646_5646),
        };
        for w in it {
            list.bytes.extend_from_slice(w.as_bytes());
            list.ends.push(list.bytes.len());
        }
        list.build_table()?;
        Ok(list)
    }

    /// Build from a buffer of concatenated words and their end offsets (already validated UTF-8).
    pub(crate) fn from_parts(bytes: Vec<u8>, ends: Vec<usize>) -> Result<Self> {
        let mut list = HashWords {
            bytes,
            ends,
            table: HashTable::new(),
            state: foldhash::fast::FixedState::with_seed(0x5646_5646),
        };
        list.build_table()?;
        Ok(list)
    }

    fn build_table(&mut self) -> Result<()> {
        if self.ends.len() > u32::MAX as usize {
            return Err(Error::invalid("vocabulary", "more than 2^32 words"));
        }
        let mut table = HashTable::with_capacity(self.ends.len());
        let bytes = &self.bytes;
        let state = &self.state;
        let slot_bytes = |s: &Slot| &bytes[s.start..s.start + s.len as usize];
        for i in 0..self.ends.len() {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            let w = &bytes[start..self.ends[i]];
            let len = u32::try_from(w.len()).map_err(|_| Error::invalid("vocabulary", "a word longer than 4 GiB"))?;
            let h = hash_str(state, w);
            match table.entry(h, |s: &Slot| slot_bytes(s) == w, |s: &Slot| hash_str(state, slot_bytes(s))) {
                hashbrown::hash_table::Entry::Occupied(e) => {
                    let first = e.get().row;
                    return Err(Error::invalid(
                        "vocabulary",
                        format!(
                            "duplicate word {:?} at rows {first} and {i}",
                            String::from_utf8_lossy(w)
                        ),
                    ));
                }
                hashbrown::hash_table::Entry::Vacant(v) => {
                    v.insert(Slot { start, len, row: i as u32 });
                }
            }
        }
        self.table = table;
        Ok(())
    }

    #[inline]
    fn bytes_of(&self, i: usize) -> &[u8] {
        let s = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[s..self.ends[i]]
    }

    /// Number of words.
    #[inline]
    pub fn len(&self) -> usize {
        self.ends.len()
    }


    /// The word at row `i`.
    #[inline]
    pub fn get(&self, i: usize) -> Option<&str> {
        if i >= self.ends.len() {
            return None;
        }
        // SAFETY-free: the buffer holds only validated UTF-8 words, split at word ends.
        Some(std::str::from_utf8(self.bytes_of(i)).unwrap_or_default())
    }

    /// The row of `word`.
    #[inline]
    pub fn index(&self, word: &str) -> Option<usize> {
        let w = word.as_bytes();
        let h = hash_str(&self.state, w);
        self.table
            .find(h, |s| s.len as usize == w.len() && &self.bytes[s.start..s.start + w.len()] == w)
            .map(|s| s.row as usize)
    }

    /// Total bytes of all words.
    pub fn total_bytes(&self) -> usize {
        self.bytes.len()
    }
}


impl WordList {
    /// Build from words in row order (hash-table backend). Duplicate words are an error.
    pub fn new<'a, I: IntoIterator<Item = &'a str>>(words: I) -> Result<Self> {
        Ok(WordList { repr: Repr::Hash(HashWords::new(words)?) })
    }

    /// Build from a buffer of concatenated words and their end offsets (already validated UTF-8).
    pub(crate) fn from_parts(bytes: Vec<u8>, ends: Vec<usize>) -> Result<Self> {
        Ok(WordList { repr: Repr::Hash(HashWords::from_parts(bytes, ends)?) })
    }

    /// Wrap an automaton-backed word list.
    pub(crate) fn from_fst(words: FstWords) -> Self {
        WordList { repr: Repr::Fst(words) }
    }

    /// Is this list backed by an fst automaton (read from an fst vocabulary chunk)?
    pub fn is_fst(&self) -> bool {
        matches!(self.repr, Repr::Fst(_))
    }

    /// Number of words.
    #[inline]
    pub fn len(&self) -> usize {
        match &self.repr {
            Repr::Hash(h) => h.len(),
            Repr::Fst(f) => f.len(),
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The word at row `i`. For the fst backend the word is read back from the automaton
    /// and kept (interned) for the lifetime of the list, so that a `&str` can be returned;
    /// prefer [`WordList::get_cow`] in loops over many rows. A corrupt fst entry reads as
    /// `None` (use [`WordList::try_get`] to get the error).
    #[inline]
    pub fn get(&self, i: usize) -> Option<&str> {
        match &self.repr {
            Repr::Hash(h) => h.get(i),
            Repr::Fst(f) => f.get_interned(i),
        }
    }

    /// The word at row `i`, borrowed (hash backend) or freshly decoded (fst backend).
    pub fn get_cow(&self, i: usize) -> Option<Cow<'_, str>> {
        self.try_get(i).ok().flatten()
    }

    /// The word at row `i`; an error if an fst chunk turns out corrupt.
    pub fn try_get(&self, i: usize) -> Result<Option<Cow<'_, str>>> {
        match &self.repr {
            Repr::Hash(h) => Ok(h.get(i).map(Cow::Borrowed)),
            Repr::Fst(f) => Ok(f.try_get(i)?.map(Cow::Owned)),
        }
    }

    /// The row of `word`. A corrupt fst entry (inconsistent tables, rank out of range)
    /// reads as unknown (use [`WordList::try_index`] to get the error).
    #[inline]
    pub fn index(&self, word: &str) -> Option<usize> {
        match &self.repr {
            Repr::Hash(h) => h.index(word),
            Repr::Fst(f) => f.try_index(word).ok().flatten(),
        }
    }

    /// The row of `word`; an error if an fst chunk turns out corrupt.
    #[inline]
    pub fn try_index(&self, word: &str) -> Result<Option<usize>> {
        match &self.repr {
            Repr::Hash(h) => Ok(h.index(word)),
            Repr::Fst(f) => f.try_index(word),
        }
    }

    /// Iterate words in row order (fst backend: interns every word; see [`WordList::get`]).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(move |i| self.get(i).unwrap_or_default())
    }

    /// Total bytes of all words (fst backend: bytes of the automaton and tables).
    pub fn total_bytes(&self) -> usize {
        match &self.repr {
            Repr::Hash(h) => h.total_bytes(),
            Repr::Fst(f) => f.size_bytes(),
        }
    }

    /// An equivalent hash-table-backed list (a copy; the fst backend is decoded in one pass).
    pub fn to_hash(&self) -> Result<WordList> {
        match &self.repr {
            Repr::Hash(_) => Ok(self.clone()),
            Repr::Fst(f) => {
                let (bytes, ends) = f.materialize()?;
                WordList::from_parts(bytes, ends)
            }
        }
    }

    /// All words in row order as borrowed strings (hash backend only; `None` for fst).
    pub(crate) fn hash_words(&self) -> Option<Vec<&str>> {
        match &self.repr {
            Repr::Hash(h) => Some((0..h.len()).map(|i| h.get(i).unwrap_or_default()).collect()),
            Repr::Fst(_) => None,
        }
    }
}

/// Read `n` length-prefixed words from `r` into a [`WordList`].
pub(crate) fn read_words(r: &mut crate::format::ByteReader<'_>, n: u64) -> Result<WordList> {
    // Every word needs at least its 4-byte length: bound `n` by the data left
    // before allocating anything for it.
    let max = r.remaining() as u64 / 4;
    if n > max {
        return Err(Error::Truncated {
            what: "vocabulary words",
            offset: r.abs_pos(),
            need: n.saturating_mul(4),
            have: r.remaining() as u64,
        });
    }
    let n = n as usize;
    let mut ends = Vec::with_capacity(n);
    let mut bytes = Vec::new();
    for i in 0..n {
        let b = r.string_bytes("vocabulary word")?;
        std::str::from_utf8(b).map_err(|source| Error::Utf8 {
            what: "vocabulary word",
            index: i as u64,
            source,
        })?;
        bytes.extend_from_slice(b);
        ends.push(bytes.len());
    }
    bytes.shrink_to_fit();
    WordList::from_parts(bytes, ends)
}

