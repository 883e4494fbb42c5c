//! A compact word list: all strings in one buffer, a table of end offsets and an
//! open-addressing hash table of row numbers keyed by the string (no per-word allocation).

use std::borrow::Cow;

use super::fstvocab::FstWords;
use crate::error::{Error, Result};

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
        WordList {
            repr: Repr::Hash(HashWords::default()),
        }
    }
}

/// The hash-table backend: all strings in one buffer plus a table of rows.
///
/// The table is open addressing with linear probing, at most 3/4 full. An entry holds
/// 32 bits of the word's hash (a fingerprint), its row, and where its bytes are, so a
/// lookup reads one entry (two for a collision in the same slot run) and the word's
/// bytes, and the entry's address is known from the hash alone: a batch of lookups can
/// prefetch all its entries first, then all the words' bytes and rows (see
/// [`WordList::index_group`]).
#[derive(Clone, Default)]
struct HashWords {
    bytes: Vec<u8>,
    /// `ends[i]` is the end offset of word `i` in `bytes`; word `i` starts at `ends[i-1]`.
    ends: Vec<usize>,
    /// A power of two number of entries (empty for an empty list).
    table: SlotTable,
    state: foldhash::fast::FixedState,
}

/// A hash-table entry (16 bytes): `start_len` packs the start of the word's bytes (low 40
/// bits) and its length (high 24 bits); `EMPTY` marks a free entry.
#[derive(Clone, Copy)]
#[repr(C)]
struct Slot {
    start_len: u64,
    fingerprint: u32,
    row: u32,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 16 && std::mem::align_of::<Slot>() == 8);
// SAFETY: `Slot` is `repr(C)` with three integer fields and no padding (16 bytes, checked
// above): every bit pattern is a valid value, and all-zero is one.
unsafe impl bytemuck::Zeroable for Slot {}
// SAFETY: as above; it is `Copy` and `'static`.
unsafe impl bytemuck::Pod for Slot {}

const EMPTY: u64 = u64::MAX;

/// The entries of a [`HashWords`] table, in a buffer that is backed by transparent huge
/// pages when it is large (see [`crate::storage::AlignedBytes`]). The table is far larger
/// than the cache and read at random: with 4 KiB pages nearly every lookup, and every
/// insertion while it is built, also missed the TLB.
#[derive(Default)]
struct SlotTable(Option<crate::storage::AlignedBytes>);

impl SlotTable {
    /// `n` free entries.
    fn empty_slots(n: usize) -> Result<Self> {
        let bytes = n.checked_mul(std::mem::size_of::<Slot>()).ok_or(Error::Overflow("vocabulary"))?;
        let mut b = crate::storage::AlignedBytes::zeroed(bytes, "vocabulary hash table")?;
        // every byte 0xFF: `start_len == EMPTY` in every entry
        b.as_mut_slice().fill(0xFF);
        Ok(SlotTable(Some(b)))
    }
}

impl Clone for SlotTable {
    fn clone(&self) -> Self {
        // should the copy fail, abort as a failed `Vec` clone would (naming its size)
        SlotTable(self.0.as_ref().map(|b| {
            crate::storage::AlignedBytes::copy_from(b.as_slice(), "vocabulary hash table").unwrap_or_else(|_| {
                let size = std::alloc::Layout::from_size_align(b.as_slice().len(), 8);
                std::alloc::handle_alloc_error(size.unwrap_or(std::alloc::Layout::new::<Slot>()))
            })
        }))
    }
}

impl std::ops::Deref for SlotTable {
    type Target = [Slot];
    #[inline]
    fn deref(&self) -> &[Slot] {
        // The buffer is at least 8-byte aligned and a whole number of entries long.
        self.0.as_ref().map_or(&[], |b| bytemuck::cast_slice(b.as_slice()))
    }
}

impl std::ops::DerefMut for SlotTable {
    #[inline]
    fn deref_mut(&mut self) -> &mut [Slot] {
        self.0.as_mut().map_or(&mut [], |b| bytemuck::cast_slice_mut(b.as_mut_slice()))
    }
}
const START_BITS: u32 = 40;
const MAX_START: usize = (1 << START_BITS) - 1;
const MAX_LEN: usize = (1 << (64 - START_BITS)) - 2;

impl Slot {
    #[inline]
    fn is_empty(&self) -> bool {
        self.start_len == EMPTY
    }

    #[inline]
    fn start(&self) -> usize {
        (self.start_len & MAX_START as u64) as usize
    }

    #[inline]
    fn len(&self) -> usize {
        (self.start_len >> START_BITS) as usize
    }
}

impl std::fmt::Debug for WordList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WordList")
            .field("len", &self.len())
            .field("fst", &self.is_fst())
            .finish()
    }
}

#[inline]
fn hash_str(state: &foldhash::fast::FixedState, s: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    state.hash_one(s)
}

/// The table position and the fingerprint of a hash.
#[inline]
fn split_hash(h: u64, mask: usize) -> (usize, u32) {
    (h as usize & mask, (h >> 32) as u32)
}

/// Words per group of [`WordList::index_group`].
pub const INDEX_GROUP: usize = 16;

impl HashWords {
    /// Build from words in row order. Duplicate words are an error.
    pub fn new<'a, I: IntoIterator<Item = &'a str>>(words: I) -> Result<Self> {
        let it = words.into_iter();
        let mut list = HashWords {
            bytes: Vec::new(),
            ends: Vec::with_capacity(it.size_hint().0),
            table: SlotTable::default(),
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
            table: SlotTable::default(),
            state: foldhash::fast::FixedState::with_seed(0x5646_5646),
        };
        list.build_table()?;
        Ok(list)
    }

    fn build_table(&mut self) -> Result<()> {
        let n = self.ends.len();
        if n >= u32::MAX as usize {
            return Err(Error::invalid("vocabulary", "2^32 or more words"));
        }
        if self.bytes.len() > MAX_START {
            return Err(Error::invalid("vocabulary", "more than 2^40 bytes of words"));
        }
        if n == 0 {
            self.table = SlotTable::default();
            return Ok(());
        }
        // at most three quarters full (linear probing stays short; 16 bytes per entry)
        let size = (n + n / 3 + 1).checked_next_power_of_two().ok_or(Error::Overflow("vocabulary"))?;
        let mask = size - 1;
        let mut table = SlotTable::empty_slots(size)?;
        let bytes = &self.bytes;
        // Hash every word first (a sequential pass), so that the insertion loop can
        // prefetch the entry it will write `AHEAD` words later: the entries are scattered
        // over a table far larger than the cache, and one miss at a time made the
        // insertions most of the time a memory-mapped file takes to open.
        const AHEAD: usize = 16;
        let mut hashes = crate::storage::try_zeroed_vec::<u64>(n, "vocabulary hashes")?;
        for (i, h) in hashes.iter_mut().enumerate() {
            *h = hash_str(&self.state, self.bytes_of(i));
        }
        for i in 0..n {
            if let Some(&h) = hashes.get(i + AHEAD) {
                crate::storage::prefetch_addr(std::ptr::from_ref(&table[h as usize & mask]).cast::<u8>());
            }
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            let w = &bytes[start..self.ends[i]];
            if w.len() > MAX_LEN {
                return Err(Error::invalid("vocabulary", format!("word {i} is longer than {MAX_LEN} bytes")));
            }
            let (mut pos, fingerprint) = split_hash(hashes[i], mask);
            loop {
                let slot = &table[pos];
                if slot.is_empty() {
                    break;
                }
                if slot.fingerprint == fingerprint && &bytes[slot.start()..slot.start() + slot.len()] == w {
                    return Err(Error::invalid(
                        "vocabulary",
                        format!("duplicate word {:?} at rows {} and {i}", String::from_utf8_lossy(w), slot.row),
                    ));
                }
                pos = (pos + 1) & mask;
            }
            table[pos] = Slot {
                start_len: start as u64 | ((w.len() as u64) << START_BITS),
                fingerprint,
                row: i as u32,
            };
        }
        self.table = table;
        Ok(())
    }

    #[inline]
    fn bytes_of(&self, i: usize) -> &[u8] {
        let s = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[s..self.ends[i]]
    }

    #[inline]
    fn slot_bytes(&self, slot: &Slot) -> &[u8] {
        &self.bytes[slot.start()..slot.start() + slot.len()]
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
        if self.table.is_empty() {
            return None;
        }
        let w = word.as_bytes();
        let h = hash_str(&self.state, w);
        self.confirm(w, h, self.next_candidate(w, h, None)?)
    }

    /// The first entry at or after `w`'s home position (or after `after`, an entry already
    /// known not to hold `w`) whose fingerprint and length match, or `None` when an empty
    /// entry comes first (then `w` is not in the table).
    #[inline]
    fn next_candidate(&self, w: &[u8], h: u64, after: Option<usize>) -> Option<usize> {
        let mask = self.table.len() - 1;
        let (home, fingerprint) = split_hash(h, mask);
        let mut pos = after.map_or(home, |p| (p + 1) & mask);
        loop {
            let slot = &self.table[pos];
            if slot.is_empty() {
                return None;
            }
            if slot.fingerprint == fingerprint && slot.len() == w.len() {
                return Some(pos);
            }
            pos = (pos + 1) & mask;
        }
    }

    /// The row of `w` (hash `h`), starting from candidate entry `pos`: its bytes are
    /// compared, and on a mismatch (a fingerprint collision) the probe goes on.
    #[inline]
    fn confirm(&self, w: &[u8], h: u64, mut pos: usize) -> Option<usize> {
        loop {
            let slot = &self.table[pos];
            if self.slot_bytes(slot) == w {
                return Some(slot.row as usize);
            }
            pos = self.next_candidate(w, h, Some(pos))?;
        }
    }

    /// Rows of up to [`INDEX_GROUP`] words, with their memory accesses overlapped: all
    /// hashes and table entries first, then every candidate's bytes (and, through
    /// `candidate(row)`, whatever the caller wants loaded, e.g. the storage row), then the
    /// comparisons.
    fn index_group<S: AsRef<str>>(&self, words: &[S], rows: &mut [Option<usize>], mut candidate: impl FnMut(usize)) {
        debug_assert!(words.len() <= INDEX_GROUP && rows.len() == words.len());
        if self.table.is_empty() {
            rows.fill(None);
            return;
        }
        let mask = self.table.len() - 1;
        let mut hashes = [0u64; INDEX_GROUP];
        for (h, w) in hashes.iter_mut().zip(words) {
            *h = hash_str(&self.state, w.as_ref().as_bytes());
            crate::storage::prefetch(std::slice::from_ref(&self.table[*h as usize & mask]));
        }
        let mut cands = [None; INDEX_GROUP];
        for ((c, w), &h) in cands.iter_mut().zip(words).zip(&hashes) {
            *c = self.next_candidate(w.as_ref().as_bytes(), h, None);
            if let Some(pos) = *c {
                let slot = &self.table[pos];
                crate::storage::prefetch(self.slot_bytes(slot));
                candidate(slot.row as usize);
            }
        }
        for (((r, w), &h), c) in rows.iter_mut().zip(words).zip(&hashes).zip(cands) {
            *r = c.and_then(|pos| self.confirm(w.as_ref().as_bytes(), h, pos));
        }
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

    /// Verify an automaton-backed list in full unless that was done at open (a memory-mapped
    /// chunk): checksum, tables, keys. Nothing to do for the other kinds.
    pub fn verify_fst(&self) -> Result<()> {
        match &self.repr {
            Repr::Fst(f) if !f.is_verified() => f.verify(),
            _ => Ok(()),
        }
    }

    /// Is this an automaton-backed list that was not verified at open (memory-mapped)?
    pub fn needs_verification(&self) -> bool {
        matches!(&self.repr, Repr::Fst(f) if !f.is_verified())
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

    /// Rows of up to [`INDEX_GROUP`] words (`rows.len() == words.len()`). The hash backend
    /// overlaps the group's memory accesses and calls `candidate(row)` for each likely row
    /// before it is confirmed, so that the caller can prefetch the row's data meanwhile.
    pub fn index_group<S: AsRef<str>>(&self, words: &[S], rows: &mut [Option<usize>], candidate: impl FnMut(usize)) {
        match &self.repr {
            Repr::Hash(h) => h.index_group(words, rows, candidate),
            Repr::Fst(f) => f.index_group(words, rows, candidate),
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

/// Check that every word of a concatenation (`ends`: word end offsets) is valid UTF-8.
///
/// One pass over the whole buffer (the standard library's check runs fastest over long
/// ASCII stretches) plus a look at each boundary: when the buffer is valid and no word
/// ends inside a character, every word is valid. Only on failure are the words checked
/// one by one, to name the first bad one.
pub(crate) fn validate_words_utf8(bytes: &[u8], ends: &[usize]) -> Result<()> {
    // A continuation byte (0b10xx_xxxx) right after a word end means a character spans it.
    let split = |&e: &usize| bytes.get(e).is_some_and(|&b| (b as i8) < -64);
    if std::str::from_utf8(bytes).is_ok() && !ends.iter().any(split) {
        return Ok(());
    }
    let mut start = 0;
    for (i, &end) in ends.iter().enumerate() {
        std::str::from_utf8(&bytes[start..end]).map_err(|source| Error::Utf8 {
            what: "vocabulary word",
            index: i as u64,
            source,
        })?;
        start = end;
    }
    Ok(())
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
    let mut ends = Vec::new();
    crate::storage::try_reserve(&mut ends, n, "vocabulary word ends")?;
    let mut bytes = Vec::new();
    for _ in 0..n {
        let b = r.string_bytes("vocabulary word")?;
        crate::storage::try_reserve(&mut bytes, b.len(), "vocabulary words")?;
        bytes.extend_from_slice(b);
        ends.push(bytes.len());
    }
    validate_words_utf8(&bytes, &ends)?;
    bytes.shrink_to_fit();
    WordList::from_parts(bytes, ends)
}


#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize) -> Vec<String> {
        // short, long, unicode and prefix-sharing words (many share lengths and prefixes)
        (0..n)
            .map(|i| match i % 4 {
                0 => format!("w{i}"),
                1 => format!("{}{i}", "x".repeat(i % 50)),
                2 => format!("über-{i}-ß"),
                _ => format!("{i}"),
            })
            .collect()
    }

    #[test]
    fn index_finds_every_word_and_no_other() {
        for n in [0usize, 1, 2, 3, 17, 1000, 40_000] {
            let ws = words(n);
            let list = WordList::new(ws.iter().map(String::as_str)).unwrap();
            assert_eq!(list.len(), n);
            for (i, w) in ws.iter().enumerate() {
                assert_eq!(list.index(w), Some(i), "{w}");
                assert_eq!(list.get(i), Some(w.as_str()));
            }
            for probe in ["", "w", "x", "über", "über-1-", "nope", "w00", "1x"] {
                assert_eq!(list.index(probe), ws.iter().position(|w| w == probe), "{probe:?}");
            }
        }
    }

    #[test]
    fn index_group_equals_index() {
        let ws = words(5000);
        let list = WordList::new(ws.iter().map(String::as_str)).unwrap();
        let mut queries: Vec<String> = ws.iter().step_by(7).cloned().collect();
        queries.extend((0..300).map(|i| format!("unknown{i}")));
        queries.extend(ws.iter().take(40).map(|w| format!("{w}!")));
        queries.push(String::new());
        for group in queries.chunks(INDEX_GROUP) {
            let mut rows = vec![Some(usize::MAX); group.len()];
            let mut seen = Vec::new();
            list.index_group(group, &mut rows, |r| seen.push(r));
            for (w, r) in group.iter().zip(&rows) {
                assert_eq!(*r, list.index(w), "{w}");
                if let Some(r) = r {
                    assert!(seen.contains(r), "the found row was announced");
                }
            }
        }
        let empty = WordList::new(std::iter::empty()).unwrap();
        let mut rows = [Some(0); 2];
        empty.index_group(&["a", ""], &mut rows, |_| panic!("no candidates"));
        assert_eq!(rows, [None, None]);
    }

    /// An entry whose fingerprint and length match but whose bytes differ (a 32-bit
    /// fingerprint collision) is skipped, by `index` and by `index_group`.
    #[test]
    fn fingerprint_collisions_are_resolved_by_the_bytes() {
        let mut h = HashWords::new(["ab", "cd", "ef"]).unwrap();
        let mask = h.table.len() - 1;
        let hash = hash_str(&h.state, b"ab");
        let (home, fingerprint) = split_hash(hash, mask);
        // move "ab" two entries on, and put a decoy (the bytes of "cd", same length,
        // same fingerprint) at its home, with the entry between them filled too
        let real = h.table.iter().position(|s| !s.is_empty() && s.row == 0).unwrap();
        let mut slots: Vec<Slot> = h.table.to_vec();
        slots[real] = Slot { start_len: EMPTY, fingerprint: 0, row: 0 };
        let others: Vec<Slot> = slots.iter().filter(|s| !s.is_empty()).copied().collect();
        for s in slots.iter_mut() {
            *s = Slot { start_len: EMPTY, fingerprint: 0, row: 0 };
        }
        let cd = others.iter().find(|s| s.row == 1).copied().unwrap();
        slots[home] = Slot { fingerprint, ..cd };
        slots[(home + 1) & mask] = others.iter().find(|s| s.row == 2).copied().unwrap();
        slots[(home + 2) & mask] = h.table[real];
        h.table.copy_from_slice(&slots);
        assert_eq!(h.index("ab"), Some(0));
        let mut rows = [None; 2];
        h.index_group(&["ab", "zz"], &mut rows, |_| ());
        assert_eq!(rows, [Some(0), None]);
    }

    /// The one-pass check accepts exactly what checking each word would: a character
    /// split across two words is refused although the concatenation is valid.
    #[test]
    fn words_utf8_is_checked_word_by_word() {
        let bad_at = |bytes: &[u8], ends: &[usize]| match validate_words_utf8(bytes, ends) {
            Ok(()) => None,
            Err(Error::Utf8 { index, .. }) => Some(index),
            Err(e) => panic!("unexpected error {e}"),
        };
        let e_acute = "a\u{e9}b".as_bytes(); // 61 c3 a9 62
        assert_eq!(bad_at(e_acute, &[1, 4]), None);
        assert_eq!(bad_at(e_acute, &[2, 4]), Some(0)); // "a\xc3" | "\xa9b"
        assert_eq!(bad_at(e_acute, &[0, 1, 1, 3, 4]), None); // empty words
        assert_eq!(bad_at(e_acute, &[0, 1, 1, 2, 4]), Some(3));
        assert_eq!(bad_at(b"ab\xff", &[1, 2, 3]), Some(2));
        assert_eq!(bad_at(b"", &[0, 0]), None);
        // the same answers for every split of a mixed buffer
        let text = "x\u{e9}\u{20ac}y\u{1f600}".as_bytes();
        for cut in 0..=text.len() {
            let want = [&text[..cut], &text[cut..]].iter().position(|w| std::str::from_utf8(w).is_err());
            assert_eq!(bad_at(text, &[cut, text.len()]), want.map(|i| i as u64), "cut {cut}");
        }
    }

    #[test]
    fn duplicates_are_an_error_naming_both_rows() {
        let err = WordList::new(["a", "b", "c", "b"]).unwrap_err().to_string();
        assert!(err.contains("duplicate word \"b\" at rows 1 and 3"), "{err}");
        let err = WordList::new(["", "x", ""]).unwrap_err().to_string();
        assert!(err.contains("rows 0 and 2"), "{err}");
    }
}
