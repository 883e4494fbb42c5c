//! Memory-mappable vocabularies built on a minimal perfect-hash automaton (`fst` crate).
//!
//! A word list is an `fst::Map` from each word to its *rank* (its position in byte-sorted
//! order), plus two tables: `rank -> row` and `row -> rank` (u32, or u64 when the vocabulary
//! has more than `u32::MAX` words). `word -> row` is one automaton walk and a table read;
//! `row -> word` is a table read and a reverse walk of the same automaton (the values of a
//! map whose values are the ranks grow with the keys, so the key of a rank can be found by
//! always following the transition with the largest output not above the remaining value).
//!
//! Nothing is copied or indexed at open: the automaton and the tables are used in place from
//! the memory map (or from one owned buffer when not mapping). See `docs/FORMAT-vecfusion.md`
//! for the chunk layout and for what is checked at open and at use.

use std::io::Write;
use std::cell::Cell;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use hashbrown::HashMap;

use crate::error::{Error, Result};
use crate::format::{ByteReader, ChunkId, PosWriter};
use crate::storage::FileBytes;
use super::words::INDEX_GROUP as GROUP;

/// Zero bytes written before a table of u64 (or an fst) starting at absolute position `pos`,
/// so that it starts at a multiple of 8: 0 to 7.
#[inline]
pub fn pad8(pos: u64) -> u64 {
    (8 - pos % 8) % 8
}

/// A range of a shared buffer (the memory map of the whole file, or one owned copy of a chunk).
#[derive(Clone)]
pub struct SharedBytes {
    data: FileBytes,
    range: Range<usize>,
}

impl AsRef<[u8]> for SharedBytes {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        // The range was checked against the buffer when it was made.
        self.data.as_slice().get(self.range.clone()).unwrap_or_default()
    }
}

/// A little-endian table of u32 or u64 values, used in place.
#[derive(Clone)]
pub struct Table {
    bytes: SharedBytes,
    width: usize,
    len: usize,
}

impl Table {
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entry `i` (`None` out of range).
    #[inline]
    pub fn get(&self, i: usize) -> Option<u64> {
        if i >= self.len {
            return None;
        }
        let b = self.bytes.as_ref();
        let w = self.width;
        let s = i * w;
        let c = b.get(s..s + w)?;
        let mut a = [0u8; 8];
        a[..w].copy_from_slice(c);
        Some(u64::from_le_bytes(a))
    }
}

/// Run a read of the automaton; a panic inside the `fst` crate (which decodes nodes with
/// checked indexing and so panics, never misbehaves, on a corrupt automaton) becomes an error.
///
/// Such panics are expected on corrupt files and are turned into errors, so the panic hook is
/// told to stay quiet about them (other panics are reported as before).
#[inline]
fn guarded<T>(what: &'static str, f: impl FnOnce() -> T) -> Result<T> {
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let before = QUIET.with(|q| q.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(before));
    r.map_err(|_| malformed(what))
}

static QUIET_HOOK: std::sync::Once = std::sync::Once::new();

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Walks every key of an automaton at most `max_len` bytes long, following at most `budget`
/// transitions in all: a corrupt automaton (a cycle, absurd fan-out) ends the walk with an
/// error instead of a hang or an unbounded stack.
struct Bounded {
    max_len: usize,
    budget: Cell<u64>,
    exhausted: Cell<bool>,
}

impl Bounded {
    fn new(max_len: usize, n_keys: usize) -> Self {
        let budget = (n_keys as u64).saturating_mul(max_len as u64 + 1).saturating_add(1024);
        Bounded { max_len, budget: Cell::new(budget), exhausted: Cell::new(false) }
    }

    fn check(&self, what: &'static str) -> Result<()> {
        if self.exhausted.get() {
            return Err(Error::invalid(what, "corrupt automaton (keys longer or more numerous than the header says)"));
        }
        Ok(())
    }
}

impl fst::Automaton for &Bounded {
    type State = usize;
    fn start(&self) -> usize {
        0
    }
    fn is_match(&self, s: &usize) -> bool {
        *s <= self.max_len
    }
    fn can_match(&self, s: &usize) -> bool {
        if *s > self.max_len {
            self.exhausted.set(true);
            return false;
        }
        !self.exhausted.get()
    }
    fn accept(&self, s: &usize, _byte: u8) -> usize {
        let left = self.budget.get();
        if left == 0 {
            self.exhausted.set(true);
        } else {
            self.budget.set(left - 1);
        }
        s + 1
    }
}

/// Look up a key's value in a raw fst; a corrupt automaton gives an error.
#[inline]
fn fst_get(fst: &fst::raw::Fst<SharedBytes>, key: &[u8], what: &'static str) -> Result<Option<u64>> {
    super::fstwalk::get(fst.as_bytes(), root_addr(fst), key).map_err(|_| malformed(what))
}

fn malformed(what: &'static str) -> Error {
    Error::invalid(what, "corrupt automaton (malformed node)")
}

/// The key of `value` in an fst whose values are the ranks of the keys (monotone), at most
/// `max_len` bytes long. Bounded: corrupt data cannot loop or grow the key without limit.
fn fst_key_of(fst: &fst::raw::Fst<SharedBytes>, mut value: u64, max_len: usize, key: &mut Vec<u8>) -> Result<bool> {
    guarded("fst vocabulary", || {
        let mut node = fst.root();
        while value != 0 || !node.is_final() {
            if key.len() >= max_len {
                return Err(Error::invalid(
                    "fst vocabulary",
                    format!("a key is longer than the {max_len} bytes the chunk header allows"),
                ));
            }
            let mut best = None;
            for t in node.transitions() {
                if t.out.value() <= value {
                    best = Some(t);
                } else {
                    break;
                }
            }
            match best {
                None => return Ok(false),
                Some(t) => {
                    value -= t.out.value();
                    key.push(t.inp);
                    node = fst.node(t.addr);
                }
            }
        }
        Ok(true)
    })?
}

/// Check an fst's footer ourselves before handing it to `fst` (whose own check can
/// overflow on absurd root addresses), then open it.
fn open_fst(bytes: SharedBytes, n_keys: u64, what: &'static str) -> Result<fst::raw::Fst<SharedBytes>> {
    let b = bytes.as_ref();
    let bad = |m: String| Error::invalid(what, m);
    if b.len() < 36 {
        return Err(bad(format!("automaton of {} bytes is shorter than the 36-byte minimum", b.len())));
    }
    let rd = |s: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[s..s + 8]);
        u64::from_le_bytes(a)
    };
    let version = rd(0);
    if version != 3 {
        return Err(bad(format!("automaton format version {version} (expected 3)")));
    }
    let end = b.len() - 4;
    let root = rd(end - 8);
    let len = rd(end - 16);
    let ok_root = (root == 0 && b.len() == 36) || root.checked_add(21) == Some(b.len() as u64);
    if !ok_root {
        return Err(bad(format!("automaton root address {root} does not fit its {} bytes", b.len())));
    }
    if len != n_keys {
        return Err(bad(format!("automaton holds {len} keys, the chunk header says {n_keys}")));
    }
    fst::raw::Fst::new(bytes).map_err(|e| bad(e.to_string()))
}

/// The root address stored in an automaton's footer (checked by [`open_fst`] to be its last
/// node: the 21 bytes before the end, or 0 for an automaton of nothing but the empty key).
fn root_addr(fst: &fst::raw::Fst<SharedBytes>) -> usize {
    let b = fst.as_bytes();
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[b.len() - 12..b.len() - 4]);
    u64::from_le_bytes(a) as usize
}

/// Interned copies of words read back from the automaton, so that `WordList::get` can keep
/// returning `&str`. Append-only while the word list lives.
#[derive(Default)]
struct Interner {
    words: Mutex<HashMap<usize, Box<str>>>,
}

impl Interner {
    fn get_or_insert(&self, row: usize, make: impl FnOnce() -> Option<String>) -> Option<&str> {
        let mut map = self.words.lock().unwrap_or_else(|p| p.into_inner());
        let ptr: *const str = match map.get(&row) {
            Some(b) => &**b,
            None => {
                let s = make()?.into_boxed_str();
                let p: *const str = &*s;
                map.insert(row, s);
                p
            }
        };
        // SAFETY: the boxed str is owned by `self.words`, whose entries are never removed or
        // replaced while `self` lives (the map only grows; moving a `Box` while the table
        // rehashes does not move the heap string it points to). The returned reference is
        // bounded by the borrow of `self`.
        Some(unsafe { &*ptr })
    }
}

/// A word list backed by the automaton and the two tables.
#[derive(Clone)]
pub struct FstWords {
    fst: fst::raw::Fst<SharedBytes>,
    /// Address of the automaton's root node (from its footer; see [`root_addr`]).
    root: usize,
    rank_to_row: Table,
    row_to_rank: Table,
    max_len: usize,
    /// The whole chunk was verified at open (read into memory): the tables are known to be
    /// inverse permutations, so lookups skip the cross-check.
    verified: bool,
    interned: Arc<Interner>,
}

impl FstWords {
    #[inline]
    pub fn len(&self) -> usize {
        self.row_to_rank.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size in bytes of the automaton and the tables.
    pub fn size_bytes(&self) -> usize {
        self.fst.as_inner().as_ref().len() + self.rank_to_row.bytes.as_ref().len() + self.row_to_rank.bytes.as_ref().len()
    }

    /// The row of `word`: `Ok(None)` if unknown, an error if the chunk is corrupt.
    #[inline]
    pub fn try_index(&self, word: &str) -> Result<Option<usize>> {
        let rank = match super::fstwalk::get(self.fst.as_bytes(), self.root, word.as_bytes()).map_err(|_| malformed("fst vocabulary"))? {
            Some(r) => r,
            None => return Ok(None),
        };
        let n = self.len() as u64;
        if n == 0 {
            return Ok(None); // (an automaton of no keys holds the empty key, as the fst crate reads it)
        }
        let row = Some(rank)
            .filter(|&r| r < n)
            .and_then(|r| self.rank_to_row.get(r as usize))
            .ok_or_else(|| Error::invalid("fst vocabulary", format!("rank {rank} of {word:?} out of range for {n} words")))?;
        if row >= n || (!self.verified && self.row_to_rank.get(row as usize) != Some(rank)) {
            return Err(Error::invalid(
                "fst vocabulary",
                format!("tables disagree for {word:?}: rank {rank} -> row {row}, but that row does not map back"),
            ));
        }
        Ok(Some(row as usize))
    }

    /// Rows of a group of at most [`GROUP`] words, as [`FstWords::try_index`] gives them but
    /// with the walks interleaved: each round moves every unfinished word one transition on
    /// and prefetches the node it moves to, so that the group's cache misses overlap instead
    /// of following one another (one walk is a chain of dependent reads, ~10 for a 1M-word
    /// automaton). The table reads are prefetched the same way. `candidate(row)` is called for
    /// each likely row before its check, so that the caller can prefetch the row's data.
    /// A word whose entry turns out corrupt reads as unknown (`try_index` gives the error).
    pub fn index_group<S: AsRef<str>>(&self, words: &[S], rows: &mut [Option<usize>], mut candidate: impl FnMut(usize)) {
        debug_assert!(words.len() <= GROUP && rows.len() == words.len());
        let mut ranks = [None::<u64>; GROUP];
        if self.walk_group(words, &mut ranks[..words.len()]).is_err() {
            // a malformed node somewhere in the group: redo the words one by one
            for (r, w) in rows.iter_mut().zip(words) {
                *r = self.try_index(w.as_ref()).ok().flatten();
            }
            return;
        }
        let n = self.len() as u64;
        let r2r = self.rank_to_row.bytes.as_ref().as_ptr();
        for &rank in ranks.iter().take(words.len()).flatten().filter(|&&r| r < n) {
            crate::storage::prefetch_addr(r2r.wrapping_add(rank as usize * self.rank_to_row.width));
        }
        let back = self.row_to_rank.bytes.as_ref().as_ptr();
        let mut cands = [None::<(u64, u64)>; GROUP];
        for (c, rank) in cands.iter_mut().zip(&ranks[..words.len()]) {
            *c = rank.filter(|&r| r < n).and_then(|r| Some((r, self.rank_to_row.get(r as usize)?))).filter(|&(_, row)| row < n);
            if let Some((_, row)) = *c {
                if !self.verified {
                    crate::storage::prefetch_addr(back.wrapping_add(row as usize * self.row_to_rank.width));
                }
                candidate(row as usize);
            }
        }
        for (r, c) in rows.iter_mut().zip(cands) {
            *r = c.filter(|&(rank, row)| self.verified || self.row_to_rank.get(row as usize) == Some(rank)).map(|(_, row)| row as usize);
        }
    }

    /// The ranks of `words` (`None`: not in the automaton), walking the automata of all the
    /// words in turn, one transition per word and round.
    fn walk_group<S: AsRef<str>>(&self, words: &[S], ranks: &mut [Option<u64>]) -> std::result::Result<(), super::fstwalk::Malformed> {
        use super::fstwalk::{final_output, step};
        let data = self.fst.as_bytes();
        let base = data.as_ptr();
        // per word: the address of the node reached, the output so far, bytes consumed
        let mut at = [(self.root, 0u64, 0usize); GROUP];
        let mut live = [0u8; GROUP];
        let mut n_live = 0;
        for (i, r) in ranks.iter_mut().enumerate() {
            *r = None;
            live[n_live] = i as u8;
            n_live += 1;
        }
        while n_live > 0 {
            let mut kept = 0;
            for j in 0..n_live {
                let i = live[j] as usize;
                let key = words[i].as_ref().as_bytes();
                let (addr, out, pos) = at[i];
                let Some(&b) = key.get(pos) else {
                    ranks[i] = final_output(data, addr)?.map(|f| out.wrapping_add(f));
                    continue;
                };
                let Some((next, o)) = step(data, addr, b)? else { continue };
                // a node ends at its address and its transitions lie below it
                crate::storage::prefetch_addr(base.wrapping_add(next));
                crate::storage::prefetch_addr(base.wrapping_add(next).wrapping_sub(64));
                at[i] = (next, out.wrapping_add(o), pos + 1);
                live[kept] = i as u8;
                kept += 1;
            }
            n_live = kept;
        }
        Ok(())
    }

    /// The word at row `i`: `Ok(None)` out of range, an error if the chunk is corrupt.
    pub fn try_get(&self, i: usize) -> Result<Option<String>> {
        let n = self.len();
        if i >= n {
            return Ok(None);
        }
        let rank = self.row_to_rank.get(i).unwrap_or(u64::MAX);
        if rank >= n as u64 || (!self.verified && self.rank_to_row.get(rank as usize) != Some(i as u64)) {
            return Err(Error::invalid(
                "fst vocabulary",
                format!("tables disagree for row {i}: row -> rank {rank}, which does not map back"),
            ));
        }
        let mut key = Vec::new();
        if !fst_key_of(&self.fst, rank, self.max_len, &mut key)? {
            return Err(Error::invalid("fst vocabulary", format!("rank {rank} of row {i} is not in the automaton")));
        }
        String::from_utf8(key).map(Some).map_err(|e| Error::Utf8 {
            what: "fst vocabulary word",
            index: i as u64,
            source: e.utf8_error(),
        })
    }

    /// The word at row `i` as a `&str` kept alive by this list (interned on first use).
    /// A corrupt entry reads as `None`.
    pub fn get_interned(&self, i: usize) -> Option<&str> {
        self.interned.get_or_insert(i, || self.try_get(i).ok().flatten())
    }

    /// All words in row order, as concatenated bytes and end offsets (one pass over the
    /// automaton in key order).
    pub fn materialize(&self) -> Result<(Vec<u8>, Vec<usize>)> {
        use fst::{IntoStreamer, Streamer};
        if !self.verified {
            // all of it is read anyway: the checksum costs little more, and a flipped byte
            // that still decodes would give a wrong word without it
            self.fst
                .verify()
                .map_err(|e| Error::invalid("fst vocabulary", format!("automaton checksum: {e}")))?;
        }
        let n = self.len();
        let mut by_rank: Vec<(usize, usize)> = Vec::with_capacity(n);
        let mut sorted = Vec::new();
        let bound = Bounded::new(self.max_len, n);
        guarded("fst vocabulary", || -> Result<()> {
            let mut s = self.fst.search(&bound).into_stream();
            let mut expect = 0u64;
            while let Some((k, v)) = s.next() {
                if v.value() != expect || by_rank.len() >= n {
                    return Err(Error::invalid("fst vocabulary", format!("automaton value {} where rank {expect} was expected", v.value())));
                }
                let st = sorted.len();
                sorted.extend_from_slice(k);
                by_rank.push((st, sorted.len()));
                expect += 1;
            }
            Ok(())
        })??;
        bound.check("fst vocabulary")?;
        if by_rank.len() != n {
            return Err(Error::invalid("fst vocabulary", format!("automaton has {} keys for {n} words", by_rank.len())));
        }
        let mut bytes = Vec::with_capacity(sorted.len());
        let mut ends = Vec::with_capacity(n);
        for row in 0..n {
            let rank = self.row_to_rank.get(row).unwrap_or(u64::MAX);
            if rank >= n as u64 || self.rank_to_row.get(rank as usize) != Some(row as u64) {
                return Err(Error::invalid("fst vocabulary", format!("tables disagree for row {row}")));
            }
            let (s, e) = by_rank[rank as usize];
            let w = &sorted[s..e];
            std::str::from_utf8(w).map_err(|source| Error::Utf8 {
                what: "fst vocabulary word",
                index: row as u64,
                source,
            })?;
            bytes.extend_from_slice(w);
            ends.push(bytes.len());
        }
        Ok((bytes, ends))
    }

    /// Was the chunk verified in full at open?
    pub(crate) fn is_verified(&self) -> bool {
        self.verified
    }

    /// Full check (used when reading into memory, and before a memory-mapped chunk's words are
    /// written elsewhere): automaton checksum and the two tables being inverse permutations.
    pub(crate) fn verify(&self) -> Result<()> {
        use fst::{IntoStreamer, Streamer};
        self.fst
            .verify()
            .map_err(|e| Error::invalid("fst vocabulary", format!("automaton checksum: {e}")))?;
        check_permutation(&self.rank_to_row, &self.row_to_rank, "fst vocabulary tables")?;
        // Every key within max_word_len, values exactly the ranks 0..n in key order, valid UTF-8.
        let n = self.len();
        let bound = Bounded::new(self.max_len, n);
        let count = guarded("fst vocabulary", || -> Result<u64> {
            let mut s = self.fst.search(&bound).into_stream();
            let mut expect = 0u64;
            while let Some((k, v)) = s.next() {
                if v.value() != expect || expect >= n as u64 {
                    return Err(Error::invalid("fst vocabulary", format!("automaton value {} where rank {expect} was expected", v.value())));
                }
                std::str::from_utf8(k).map_err(|source| Error::Utf8 { what: "fst vocabulary word", index: expect, source })?;
                expect += 1;
            }
            Ok(expect)
        })??;
        bound.check("fst vocabulary")?;
        if count != n as u64 {
            return Err(Error::invalid("fst vocabulary", format!("automaton has {count} keys within the length bound for {n} words")));
        }
        Ok(())
    }
}

/// `a` and `b` (same length n) are inverse permutations of 0..n.
fn check_permutation(a: &Table, b: &Table, what: &'static str) -> Result<()> {
    let n = a.len() as u64;
    for r in 0..a.len() {
        let x = a.get(r).unwrap_or(u64::MAX);
        if x >= n || b.get(x as usize) != Some(r as u64) {
            return Err(Error::invalid(what, format!("entry {r} maps to {x}, which does not map back")));
        }
    }
    Ok(())
}

/// An explicit n-gram table as an automaton from n-gram to its dense index, plus the file
/// order of the n-grams (position -> rank), kept only to write the standard chunk back.
#[derive(Clone)]
pub struct FstNgrams {
    fst: fst::raw::Fst<SharedBytes>,
    order: Table,
    max_len: usize,
    pub n_indices: u64,
}

impl std::fmt::Debug for FstNgrams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FstNgrams").field("ngrams", &self.order.len()).field("n_indices", &self.n_indices).finish()
    }
}

impl FstNgrams {
    /// Number of n-grams.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Dense index of `ngram`; an index out of range (corrupt chunk) is an error.
    #[inline]
    pub fn try_index(&self, ngram: &str) -> Result<Option<u64>> {
        match fst_get(&self.fst, ngram.as_bytes(), "fst n-gram table")? {
            None => Ok(None),
            Some(v) if v < self.n_indices => Ok(Some(v)),
            Some(v) => Err(Error::invalid(
                "fst n-gram table",
                format!("index {v} of {ngram:?} out of range for {} n-gram rows", self.n_indices),
            )),
        }
    }

    /// `(ngram, dense index)` pairs in the original file order.
    pub fn pairs(&self) -> Result<Vec<(String, u64)>> {
        use fst::{IntoStreamer, Streamer};
        let mut sorted: Vec<(String, u64)> = Vec::with_capacity(self.len());
        let bound = Bounded::new(self.max_len, self.len());
        guarded("fst n-gram table", || -> Result<()> {
            let mut s = self.fst.search(&bound).into_stream();
            while let Some((k, v)) = s.next() {
                if sorted.len() >= self.order.len() {
                    return Err(Error::invalid("fst n-gram table", "more n-grams than the header says"));
                }
                let k = std::str::from_utf8(k).map_err(|source| Error::Utf8 {
                    what: "fst n-gram",
                    index: sorted.len() as u64,
                    source,
                })?;
                sorted.push((k.to_string(), v.value()));
            }
            Ok(())
        })??;
        bound.check("fst n-gram table")?;
        let n = sorted.len();
        if n != self.len() {
            return Err(Error::invalid("fst n-gram table", format!("automaton has {n} n-grams, header says {}", self.len())));
        }
        let mut seen = vec![false; n];
        let mut out = Vec::with_capacity(n);
        for pos in 0..n {
            let r = self.order.get(pos).unwrap_or(u64::MAX);
            if r >= n as u64 || seen[r as usize] {
                return Err(Error::invalid("fst n-gram order", format!("entry {pos} ({r}) is out of range or repeated")));
            }
            seen[r as usize] = true;
            let (g, v) = &sorted[r as usize];
            if *v >= self.n_indices {
                return Err(Error::invalid("fst n-gram table", format!("index {v} out of range")));
            }
            out.push((g.clone(), *v));
        }
        Ok(out)
    }

    pub(crate) fn verify(&self) -> Result<()> {
        self.fst
            .verify()
            .map_err(|e| Error::invalid("fst n-gram table", format!("automaton checksum: {e}")))?;
        // Also checks the order table and the index range.
        self.pairs().map(|_| ())
    }
}

/// What an fst vocabulary chunk holds besides the words.
pub enum FstExtra {
    None,
    Buckets { min_n: u32, max_n: u32, buckets: u32 },
    Explicit { min_n: u32, max_n: u32, ngrams: FstNgrams },
}

/// Width (4 or 8 bytes) of tables indexing `n` items.
fn width_for(n: u64) -> u32 {
    // The fewest bytes that hold every value below `n` (1 to 8): 3 bytes up to 16.7M words.
    let max = n.saturating_sub(1);
    let bits = 64 - max.leading_zeros();
    bits.div_ceil(8).max(1)
}

struct Region {
    start: usize,
    len: usize,
}

/// Reads fields of an fst chunk; `base` is the absolute file offset of the chunk body.
struct ChunkParser<'a, 'b> {
    r: &'b mut ByteReader<'a>,
    /// The buffer regions point into, and the absolute offset of its byte 0.
    data: FileBytes,
    data_base: u64,
}

impl ChunkParser<'_, '_> {
    fn skip_pad8(&mut self) -> Result<()> {
        let n = pad8(self.r.abs_pos());
        let b = self.r.bytes(n, "alignment padding")?;
        if b.iter().any(|&x| x != 0) {
            return Err(Error::invalid("alignment padding", "non-zero padding bytes"));
        }
        Ok(())
    }

    fn region(&mut self, len: u64, what: &'static str) -> Result<Region> {
        let abs = self.r.abs_pos();
        self.r.bytes(len, what)?;
        let start = abs
            .checked_sub(self.data_base)
            .and_then(|s| usize::try_from(s).ok())
            .ok_or(Error::Overflow(what))?;
        let len = usize::try_from(len).map_err(|_| Error::Overflow(what))?;
        let end = start.checked_add(len).ok_or(Error::Overflow(what))?;
        if end > self.data.as_slice().len() {
            return Err(Error::Truncated {
                what,
                offset: abs,
                need: len as u64,
                have: self.data.as_slice().len().saturating_sub(start) as u64,
            });
        }
        Ok(Region { start, len })
    }

    fn shared(&self, reg: &Region) -> SharedBytes {
        SharedBytes {
            data: self.data.clone(),
            range: reg.start..reg.start + reg.len,
        }
    }

    fn fst(&mut self, n_keys: u64, what: &'static str) -> Result<fst::raw::Fst<SharedBytes>> {
        let len = self.r.u64(what)?;
        self.skip_pad8()?;
        let reg = self.region(len, what)?;
        open_fst(self.shared(&reg), n_keys, what)
    }

    fn table(&mut self, n: u64, width: u32, what: &'static str) -> Result<Table> {
        self.skip_pad8()?;
        let bytes = n.checked_mul(u64::from(width)).ok_or(Error::Overflow(what))?;
        let reg = self.region(bytes, what)?;
        Ok(Table {
            bytes: self.shared(&reg),
            width: width as usize,
            len: n as usize,
        })
    }

    fn width(&mut self, n: u64, what: &'static str) -> Result<u32> {
        let w = self.r.u32(what)?;
        if w != width_for(n) {
            return Err(Error::invalid(what, format!("table width {w} bytes (expected {} for {n} entries)", width_for(n))));
        }
        Ok(w)
    }
}

/// Read an fst vocabulary chunk body. With `map`, everything is used in place from it
/// (nothing per word is read); without, the body is copied into one buffer. Unless `map`
/// is a memory map, the chunk is fully verified (automaton checksums, tables being inverse
/// permutations, n-gram indices).
pub fn read_chunk(id: ChunkId, r: &mut ByteReader<'_>, map: Option<&FileBytes>) -> Result<(FstWords, FstExtra)> {
    let (data, data_base) = match map {
        Some(m) => (m.clone(), 0u64),
        None => {
            // One copy of the rest of the chunk body; regions index into it.
            let mut probe = r.clone();
            let base = probe.abs_pos();
            let rest = probe.bytes(probe.remaining() as u64, "fst vocabulary")?;
            (FileBytes::Owned(Arc::new(crate::storage::AlignedBytes::copy_from(rest, "fst vocabulary")?)), base)
        }
    };
    let mut p = ChunkParser { r, data, data_base };
    let n = p.r.u64("vocabulary length")?;
    let width = p.width(n, "rank table width")?;
    let max_len = p.r.u32("longest word length")? as usize;
    let extra_hdr = match id {
        ChunkId::FstSimpleVocab => None,
        ChunkId::FstBucketSubwordVocab | ChunkId::FstFastTextSubwordVocab => {
            let min_n = p.r.u32("min_n")?;
            let max_n = p.r.u32("max_n")?;
            let buckets = p.r.u32("buckets")?;
            Some((min_n, max_n, buckets, 0u64, 0u64))
        }
        ChunkId::FstExplicitSubwordVocab => {
            let min_n = p.r.u32("min_n")?;
            let max_n = p.r.u32("max_n")?;
            let n_ngrams = p.r.u64("n-gram count")?;
            let n_indices = p.r.u64("n-gram index count")?;
            Some((min_n, max_n, 0, n_ngrams, n_indices))
        }
        other => {
            return Err(Error::UnexpectedChunk {
                expected: "an fst vocabulary chunk",
                got: other.name().to_string(),
            })
        }
    };
    let fst = p.fst(n, "fst vocabulary automaton")?;
    let rank_to_row = p.table(n, width, "rank -> row table")?;
    let row_to_rank = p.table(n, width, "row -> rank table")?;
    let mut words = FstWords {
        root: root_addr(&fst),
        fst,
        rank_to_row,
        row_to_rank,
        max_len,
        verified: false,
        interned: Arc::new(Interner::default()),
    };
    let extra = match (id, extra_hdr) {
        (ChunkId::FstExplicitSubwordVocab, Some((min_n, max_n, _, n_ngrams, n_indices))) => {
            if n_indices > n_ngrams {
                return Err(Error::invalid("n-gram index count", format!("{n_indices} indices for {n_ngrams} n-grams")));
            }
            let owidth = p.width(n_ngrams, "n-gram order table width")?;
            let max_ngram_len = p.r.u32("longest n-gram length")? as usize;
            let gfst = p.fst(n_ngrams, "fst n-gram automaton")?;
            let order = p.table(n_ngrams, owidth, "n-gram order table")?;
            FstExtra::Explicit {
                min_n,
                max_n,
                ngrams: FstNgrams {
                    fst: gfst,
                    order,
                    max_len: max_ngram_len,
                    n_indices,
                },
            }
        }
        (_, Some((min_n, max_n, buckets, _, _))) => FstExtra::Buckets { min_n, max_n, buckets },
        _ => FstExtra::None,
    };
    // A memory map is trusted cheaply (bounds are checked at use); anything read into
    // memory is verified in full, since it costs little next to reading it.
    #[cfg(feature = "mmap")]
    let verify = !matches!(map, Some(FileBytes::Mapped(_)));
    #[cfg(not(feature = "mmap"))]
    let verify = true;
    if verify {
        words.verify()?;
        words.verified = true;
        if let FstExtra::Explicit { ngrams, .. } = &extra {
            ngrams.verify()?;
        }
    }
    Ok((words, extra))
}

/// Build an automaton mapping each key to `value(rank, original position)`; returns the fst
/// bytes and, per original position, the key's rank.
fn build_fst(keys: &[&[u8]], value: impl Fn(usize, usize) -> u64) -> std::io::Result<(Vec<u8>, Vec<u64>)> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_unstable_by(|&a, &b| keys[a].cmp(keys[b]));
    let mut b = fst::raw::Builder::memory();
    let mut rank_of = vec![0u64; keys.len()];
    for (rank, &pos) in order.iter().enumerate() {
        b.insert(keys[pos], value(rank, pos)).map_err(std::io::Error::other)?;
        rank_of[pos] = rank as u64;
    }
    Ok((b.into_inner().map_err(std::io::Error::other)?, rank_of))
}

/// `(min_n, max_n, n-grams in file order with dense indices, number of indices)`.
pub type ExplicitSpec<'a> = (u32, u32, &'a [(String, u64)], u64);

/// The body of an fst vocabulary chunk written at absolute offset `body_pos`.
pub struct FstChunkSpec<'a> {
    pub id: ChunkId,
    /// Words in row order.
    pub words: &'a [&'a str],
    pub subword: Option<(u32, u32, u32)>,
    /// Explicit n-grams in file order with dense indices, and the number of indices.
    pub explicit: Option<ExplicitSpec<'a>>,
}

fn put_table<W: Write>(w: &mut PosWriter<W>, vals: &[u64], width: u32) -> std::io::Result<()> {
    w.bytes(&vec![0u8; pad8(w.pos()) as usize])?;
    let mut buf = Vec::with_capacity(vals.len() * width as usize);
    for &v in vals {
        buf.extend_from_slice(&v.to_le_bytes()[..width as usize]);
    }
    w.bytes(&buf)
}

fn put_fst<W: Write>(w: &mut PosWriter<W>, fst: &[u8]) -> std::io::Result<()> {
    w.u64(fst.len() as u64)?;
    w.bytes(&vec![0u8; pad8(w.pos()) as usize])?;
    w.bytes(fst)
}

/// Serialize an fst vocabulary chunk body, to start at absolute file offset `body_pos`.
pub fn chunk_body(spec: &FstChunkSpec<'_>, body_pos: u64) -> std::io::Result<Vec<u8>> {
    let n = spec.words.len() as u64;
    let width = width_for(n);
    let keys: Vec<&[u8]> = spec.words.iter().map(|w| w.as_bytes()).collect();
    let (fst_bytes, rank_of) = build_fst(&keys, |rank, _| rank as u64)?;
    let mut rank_to_row = vec![0u64; keys.len()];
    for (row, &rank) in rank_of.iter().enumerate() {
        rank_to_row[rank as usize] = row as u64;
    }
    let max_len = spec.words.iter().map(|w| w.len()).max().unwrap_or(0);
    let max_len = u32::try_from(max_len)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "word longer than 4 GiB"))?;
    let mut w = PosWriter::at(Vec::new(), body_pos);
    w.u64(n)?;
    w.u32(width)?;
    w.u32(max_len)?;
    if let Some((min_n, max_n, buckets)) = spec.subword {
        w.u32(min_n)?;
        w.u32(max_n)?;
        w.u32(buckets)?;
    }
    if let Some((min_n, max_n, ngrams, n_indices)) = spec.explicit {
        w.u32(min_n)?;
        w.u32(max_n)?;
        w.u64(ngrams.len() as u64)?;
        w.u64(n_indices)?;
    }
    put_fst(&mut w, &fst_bytes)?;
    drop(fst_bytes);
    put_table(&mut w, &rank_to_row, width)?;
    put_table(&mut w, &rank_of, width)?;
    if let Some((_, _, ngrams, _)) = spec.explicit {
        let gkeys: Vec<&[u8]> = ngrams.iter().map(|(g, _)| g.as_bytes()).collect();
        let (gfst, grank_of) = build_fst(&gkeys, |_, pos| ngrams[pos].1)?;
        let gwidth = width_for(ngrams.len() as u64);
        let max_glen = ngrams.iter().map(|(g, _)| g.len()).max().unwrap_or(0);
        w.u32(gwidth)?;
        w.u32(u32::try_from(max_glen).map_err(|_| std::io::Error::other("n-gram longer than 4 GiB"))?)?;
        put_fst(&mut w, &gfst)?;
        put_table(&mut w, &grank_of, gwidth)?;
    }
    Ok(w.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(v: Vec<u8>) -> SharedBytes {
        let len = v.len();
        SharedBytes { data: FileBytes::Owned(Arc::new(crate::storage::AlignedBytes::copy_from(&v, "test").unwrap())), range: 0..len }
    }

    #[test]
    fn pad8_aligns_from_absolute_offsets() {
        assert_eq!(pad8(0), 0);
        assert_eq!(pad8(1), 7);
        assert_eq!(pad8(13), 3);
        for p in 0..64 {
            assert_eq!((p + pad8(p)) % 8, 0);
            assert!(pad8(p) < 8);
        }
    }

    #[test]
    fn tables_of_both_widths_read_in_place() {
        let vals = [0u64, 7, u64::from(u32::MAX), (1 << 40) + 3];
        let mut b8 = Vec::new();
        for v in vals {
            b8.extend_from_slice(&v.to_le_bytes());
        }
        let t8 = Table { bytes: shared(b8), width: 8, len: 4 };
        assert_eq!((0..5).map(|i| t8.get(i)).collect::<Vec<_>>(), vec![Some(0), Some(7), Some(u64::from(u32::MAX)), Some((1 << 40) + 3), None]);
        let mut b4 = Vec::new();
        for v in &vals[..3] {
            b4.extend_from_slice(&(*v as u32).to_le_bytes());
        }
        let t4 = Table { bytes: shared(b4), width: 4, len: 3 };
        assert_eq!(t4.get(2), Some(u64::from(u32::MAX)));
        assert_eq!(t4.get(3), None);
        let mut b3 = Vec::new();
        for v in [5u64, 0xff_ffff, 70_000] {
            b3.extend_from_slice(&v.to_le_bytes()[..3]);
        }
        let t3 = Table { bytes: shared(b3), width: 3, len: 3 };
        assert_eq!((0..4).map(|i| t3.get(i)).collect::<Vec<_>>(), vec![Some(5), Some(0xff_ffff), Some(70_000), None]);
        // the fewest bytes holding every value below n
        assert_eq!(width_for(0), 1);
        assert_eq!(width_for(256), 1);
        assert_eq!(width_for(257), 2);
        assert_eq!(width_for(1 << 24), 3);
        assert_eq!(width_for((1 << 24) + 1), 4);
        assert_eq!(width_for(u64::from(u32::MAX) + 1), 4);
        assert_eq!(width_for(u64::from(u32::MAX) + 2), 5);
        assert_eq!(width_for(u64::MAX), 8);
    }

    #[test]
    fn reverse_walk_is_bounded_by_max_len() {
        let mut b = fst::raw::Builder::memory();
        for (i, k) in ["a", "abc", "b"].iter().enumerate() {
            b.insert(k, i as u64).unwrap();
        }
        let f = open_fst(shared(b.into_inner().unwrap()), 3, "test").unwrap();
        let mut key = Vec::new();
        assert!(fst_key_of(&f, 1, 3, &mut key).unwrap());
        assert_eq!(key, b"abc");
        key.clear();
        // A header claiming shorter words than the automaton holds is reported, not followed.
        assert!(fst_key_of(&f, 1, 2, &mut key).is_err());
        key.clear();
        assert!(!fst_key_of(&f, 3, 3, &mut key).unwrap());
        // Key count must match the header.
        let mut b = fst::raw::Builder::memory();
        b.insert("x", 0).unwrap();
        assert!(open_fst(shared(b.into_inner().unwrap()), 2, "test").is_err());
        assert!(open_fst(shared(vec![0; 10]), 0, "test").is_err());
    }

    /// Words in row order, as an automaton-backed list (tables of 2-byte entries).
    fn fst_words(words: &[&str], verified: bool, tweak: impl Fn(&mut Vec<u64>)) -> FstWords {
        let mut sorted: Vec<(&str, usize)> = words.iter().copied().zip(0..).collect();
        sorted.sort_unstable();
        let mut b = fst::raw::Builder::memory();
        let mut rank_to_row = vec![0u64; words.len()];
        let mut row_to_rank = vec![0u64; words.len()];
        for (rank, &(w, row)) in sorted.iter().enumerate() {
            b.insert(w, rank as u64).unwrap();
            rank_to_row[rank] = row as u64;
            row_to_rank[row] = rank as u64;
        }
        tweak(&mut rank_to_row);
        let table = |v: &[u64]| Table { bytes: shared(v.iter().flat_map(|x| (*x as u16).to_le_bytes()).collect()), width: 2, len: v.len() };
        let fst = open_fst(shared(b.into_inner().unwrap()), words.len() as u64, "test").unwrap();
        FstWords {
            root: root_addr(&fst),
            fst,
            rank_to_row: table(&rank_to_row),
            row_to_rank: table(&row_to_rank),
            max_len: words.iter().map(|w| w.len()).max().unwrap_or(0),
            verified,
            interned: Arc::default(),
        }
    }

    #[test]
    fn interleaved_group_walks_agree_with_single_lookups() {
        // pseudo-random words over a small alphabet, so that many share prefixes
        let mut x: u64 = 12345;
        let mut words: Vec<String> = (0..3000)
            .map(|_| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                let len = 1 + (x >> 60) as usize;
                (0..len).map(|k| ["a", "b", "é", "東"][((x >> (4 * k)) & 3) as usize]).collect()
            })
            .collect();
        words.sort_unstable();
        words.dedup();
        // row order differs from the sorted order
        words.reverse();
        words.swap(0, 7);
        let refs: Vec<&str> = words.iter().map(String::as_str).collect();
        let mut probes: Vec<String> = words.iter().step_by(3).cloned().collect();
        probes.extend(words.iter().take(200).map(|w| format!("{w}a"))); // often another word
        probes.extend(words.iter().take(200).map(|w| w[..w.len() - w.chars().last().unwrap().len_utf8()].to_string()));
        probes.extend(["", "zzz", "a", "東東東東東東東東東東東東東東東東東"].map(String::from));
        for verified in [false, true] {
            let f = fst_words(&refs, verified, |_| ());
            let mut seen = Vec::new();
            for g in probes.chunks(GROUP).chain(probes.chunks(5)).chain(probes.chunks(1)) {
                let mut rows = vec![Some(usize::MAX); g.len()];
                seen.clear();
                f.index_group(g, &mut rows, |r| seen.push(r));
                let want: Vec<Option<usize>> = g.iter().map(|w| f.try_index(w).unwrap()).collect();
                assert_eq!(rows, want, "{g:?}");
                assert_eq!(seen, want.iter().flatten().copied().collect::<Vec<_>>());
            }
            let empty = fst_words(&[], verified, |_| ());
            let mut rows = [Some(0); 2];
            empty.index_group(&["", "a"], &mut rows, |_| panic!("no candidates"));
            assert_eq!(rows, [None, None]);
        }
        // Two ranks mapping to one row (unverified, memory-mapped): the word whose row does not
        // map back reads as unknown in a group, as `try_index` reports it corrupt.
        let f = fst_words(&refs, false, |t| t[1] = t[0]);
        let mut by_rank = refs.clone();
        by_rank.sort_unstable();
        let mut rows = [None; 2];
        f.index_group(&by_rank[..2], &mut rows, |_| ());
        assert_eq!(rows, [Some(f.try_index(by_rank[0]).unwrap().unwrap()), None]);
        assert!(f.try_index(by_rank[1]).is_err());
    }
}
