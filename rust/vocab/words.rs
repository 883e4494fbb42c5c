//! A compact word list: all strings in one buffer, a table of end offsets and a
//! hash table of row numbers keyed by the string (no per-word allocation).

use hashbrown::HashTable;

use crate::error::{Error, Result};

/// Words in row order, with word -> row lookup.
#[derive(Clone, Default)]
pub struct WordList {
    bytes: Vec<u8>,
    /// `ends[i]` is the end offset of word `i` in `bytes`; word `i` starts at `ends[i-1]`.
    ends: Vec<usize>,
    table: HashTable<u32>,
    state: foldhash::fast::FixedState,
}

impl std::fmt::Debug for WordList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WordList").field("len", &self.len()).finish()
    }
}

#[inline]
fn hash_str(state: &foldhash::fast::FixedState, s: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    state.hash_one(s)
}

impl WordList {
    /// Build from words in row order. Duplicate words are an error.
    pub fn new<'a, I: IntoIterator<Item = &'a str>>(words: I) -> Result<Self> {
        let it = words.into_iter();
        let mut list = WordList {
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
        let mut list = WordList {
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
        for i in 0..self.ends.len() {
            let w = self.bytes_of(i);
            let h = hash_str(&self.state, w);
            let bytes = &self.bytes;
            let ends = &self.ends;
            let get = |j: u32| {
                let j = j as usize;
                let s = if j == 0 { 0 } else { ends[j - 1] };
                &bytes[s..ends[j]]
            };
            match table.entry(h, |&j| get(j) == w, |&j| hash_str(&self.state, get(j))) {
                hashbrown::hash_table::Entry::Occupied(e) => {
                    let first = *e.get();
                    return Err(Error::invalid(
                        "vocabulary",
                        format!(
                            "duplicate word {:?} at rows {first} and {i}",
                            String::from_utf8_lossy(w)
                        ),
                    ));
                }
                hashbrown::hash_table::Entry::Vacant(v) => {
                    v.insert(i as u32);
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

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
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
            .find(h, |&j| self.bytes_of(j as usize) == w)
            .map(|&j| j as usize)
    }

    /// Iterate words in row order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(move |i| self.get(i).unwrap_or_default())
    }

    /// Total bytes of all words.
    pub fn total_bytes(&self) -> usize {
        self.bytes.len()
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
