//! N-grams of bracketed words and the subword indexers (finalfusion buckets,
//! fastText buckets, explicit n-gram tables, floret hashing).

use hashbrown::HashMap;

/// Byte ranges of the n-grams of `word` bracketed as `bow word eow`, in finalfusion
/// order: for each start position, longest first, lengths `max_n` down to `min_n`.
///
/// Returns the bracketed string and the ranges into it.
pub fn ngram_ranges(word: &str, min_n: usize, max_n: usize, bow: &str, eow: &str) -> (String, Vec<(usize, usize)>) {
    let bracketed = bracket(word, bow, eow);
    let mut out = Vec::new();
    for_each_ngram_range(&bracketed, min_n, max_n, |s, e| out.push((s, e)));
    (bracketed, out)
}

/// `bow word eow` as one string.
pub fn bracket(word: &str, bow: &str, eow: &str) -> String {
    let mut bracketed = String::with_capacity(word.len() + bow.len() + eow.len());
    bracketed.push_str(bow);
    bracketed.push_str(word);
    bracketed.push_str(eow);
    bracketed
}

/// [`ngram_ranges`] of an already bracketed word `b`, one `f(start, end)` at a time (the
/// same order), without collecting them: a very long word costs one offset per character,
/// not one range per n-gram.
pub fn for_each_ngram_range(b: &str, min_n: usize, max_n: usize, mut f: impl FnMut(usize, usize)) {
    if min_n == 0 || min_n > max_n {
        return;
    }
    let mut bounds: Vec<usize> = Vec::with_capacity(b.len() + 1);
    bounds.extend(b.char_indices().map(|(i, _)| i));
    bounds.push(b.len());
    let n_chars = bounds.len() - 1;
    for start in 0..n_chars {
        let longest = max_n.min(n_chars - start);
        if longest < min_n {
            continue;
        }
        for len in (min_n..=longest).rev() {
            f(bounds[start], bounds[start + len]);
        }
    }
}

/// The n-gram strings of `word` bracketed with `<` and `>`.
pub fn ngrams(word: &str, min_n: usize, max_n: usize) -> Vec<String> {
    let (b, r) = ngram_ranges(word, min_n, max_n, "<", ">");
    r.into_iter().map(|(s, e)| b[s..e].to_string()).collect()
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;
const FNV_PRIME_2: u64 = FNV_PRIME.wrapping_mul(FNV_PRIME);
const FNV_PRIME_3: u64 = FNV_PRIME_2.wrapping_mul(FNV_PRIME);
const FNV_PRIME_4: u64 = FNV_PRIME_3.wrapping_mul(FNV_PRIME);
const FNV_PRIME_8: u64 = FNV_PRIME_4.wrapping_mul(FNV_PRIME_4);

/// FNV-1a state `h` after feeding the bytes of `x` (little-endian), where only the low
/// `nonzero` bytes of `x` may be nonzero: a zero byte leaves the xor out, and the
/// multiplications by the prime that follow the last nonzero byte are one multiplication
/// by a power of it.
#[inline(always)]
fn fnv_feed_le(mut h: u64, x: u64, nonzero: u32, tail_power: u64) -> u64 {
    for k in 0..nonzero {
        h = (h ^ ((x >> (8 * k)) & 0xff)).wrapping_mul(FNV_PRIME);
    }
    h.wrapping_mul(tail_power)
}

/// The finalfusion hash state after the character count `n` (a u64, little-endian).
#[inline(always)]
fn finalfusion_hash_count(n: u64) -> u64 {
    if n < 0x100 {
        (FNV_OFFSET ^ n).wrapping_mul(FNV_PRIME_8)
    } else {
        fnv_feed_le(FNV_OFFSET, n, 8, 1)
    }
}

/// The finalfusion hash state `h` after one more character (a u32, little-endian). Most
/// characters have zero high bytes, which cost one multiplication together.
#[inline(always)]
fn finalfusion_hash_char(h: u64, c: u32) -> u64 {
    let c = u64::from(c);
    if c < 0x100 {
        (h ^ c).wrapping_mul(FNV_PRIME_4)
    } else if c < 0x1_0000 {
        fnv_feed_le(h, c, 2, FNV_PRIME_2)
    } else {
        fnv_feed_le(h, c, 3, FNV_PRIME)
    }
}

/// finalfusion's n-gram hash: 64-bit FNV-1a over the character count (u64 LE)
/// and the characters as u32 LE.
pub fn finalfusion_hash(ngram: &str) -> u64 {
    let n = ngram.chars().count() as u64;
    ngram.chars().fold(finalfusion_hash_count(n), |h, c| finalfusion_hash_char(h, c as u32))
}

/// [`finalfusion_hash`] of the n-gram made of the characters `chars` (as u32).
#[inline]
pub fn finalfusion_hash_chars(chars: &[u32]) -> u64 {
    chars.iter().fold(finalfusion_hash_count(chars.len() as u64), |h, &c| finalfusion_hash_char(h, c))
}

/// fastText's n-gram hash: 32-bit FNV-1a over the UTF-8 bytes, each byte
/// sign-extended first (fastText hashes signed chars).
pub fn fasttext_hash(ngram: &str) -> u32 {
    let mut h: u32 = 2_166_136_261;
    for &b in ngram.as_bytes() {
        h ^= (b as i8) as i32 as u32;
        h = h.wrapping_mul(16_777_619);
    }
    h
}

/// MurmurHash3 x64 128 (as the `murmur3` crate returns it: `h2 << 64 | h1`).
pub fn murmur3_x64_128(data: &[u8], seed: u32) -> u128 {
    const C1: u64 = 0x87c3_7b91_1142_53d5;
    const C2: u64 = 0x4cf5_ad43_2745_937f;
    fn fmix(mut k: u64) -> u64 {
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^= k >> 33;
        k
    }
    let mut h1 = u64::from(seed);
    let mut h2 = u64::from(seed);
    let nblocks = data.len() / 16;
    for i in 0..nblocks {
        let b = &data[i * 16..i * 16 + 16];
        let mut k1 = u64::from_le_bytes(b[0..8].try_into().unwrap_or([0; 8]));
        let mut k2 = u64::from_le_bytes(b[8..16].try_into().unwrap_or([0; 8]));
        k1 = k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        h1 ^= k1;
        h1 = h1.rotate_left(27).wrapping_add(h2).wrapping_mul(5).wrapping_add(0x52dc_e729);
        k2 = k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
        h2 ^= k2;
        h2 = h2.rotate_left(31).wrapping_add(h1).wrapping_mul(5).wrapping_add(0x3849_5ab5);
    }
    let tail = &data[nblocks * 16..];
    let mut k1: u64 = 0;
    let mut k2: u64 = 0;
    for (i, &b) in tail.iter().enumerate() {
        if i < 8 {
            k1 |= u64::from(b) << (8 * i);
        } else {
            k2 |= u64::from(b) << (8 * (i - 8));
        }
    }
    if tail.len() > 8 {
        k2 = k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
        h2 ^= k2;
    }
    if !tail.is_empty() {
        k1 = k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        h1 ^= k1;
    }
    let len = data.len() as u64;
    h1 ^= len;
    h2 ^= len;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    h1 = fmix(h1);
    h2 = fmix(h2);
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    (u128::from(h2) << 64) | u128::from(h1)
}

/// How n-grams are mapped to storage rows (after the word rows).
#[derive(Clone, Debug)]
pub enum Indexer {
    /// finalfusion hashing into `2^exponent` buckets.
    Bucket { exponent: u32 },
    /// fastText hashing into `buckets` buckets.
    FastText { buckets: u32 },
    /// An explicit n-gram table; indices are dense (renumbered in order of first appearance).
    Explicit(ExplicitNgrams),
    /// An explicit n-gram table as an automaton used in place (vecfusion fst chunk).
    ExplicitFst(super::fstvocab::FstNgrams),
}

/// The n-gram table of an explicit subword vocabulary.
#[derive(Clone, Debug, Default)]
pub struct ExplicitNgrams {
    /// n-grams in file order with their dense index.
    pub ngrams: Vec<(String, u64)>,
    pub map: HashMap<String, u64>,
    pub n_indices: u64,
}

impl ExplicitNgrams {
    /// Build from `(ngram, index)` pairs, renumbering indices densely in order of first appearance.
    pub fn new(pairs: Vec<(String, u64)>) -> crate::Result<Self> {
        let mut renumber: HashMap<u64, u64> = HashMap::new();
        let mut map = HashMap::with_capacity(pairs.len());
        let mut ngrams = Vec::with_capacity(pairs.len());
        for (ngram, idx) in pairs {
            let next = renumber.len() as u64;
            let dense = *renumber.entry(idx).or_insert(next);
            if map.insert(ngram.clone(), dense).is_some() {
                return Err(crate::Error::invalid(
                    "explicit n-gram table",
                    format!("duplicate n-gram {ngram:?}"),
                ));
            }
            ngrams.push((ngram, dense));
        }
        Ok(ExplicitNgrams {
            ngrams,
            map,
            n_indices: renumber.len() as u64,
        })
    }
}

impl Indexer {
    /// Number of n-gram rows.
    pub fn n_buckets(&self) -> u64 {
        match self {
            Indexer::Bucket { exponent } => 1u64 << exponent,
            Indexer::FastText { buckets } => u64::from(*buckets),
            Indexer::Explicit(e) => e.n_indices,
            Indexer::ExplicitFst(e) => e.n_indices,
        }
    }

    /// Index of an n-gram among the n-gram rows, if it has one.
    #[inline]
    pub fn index(&self, ngram: &str) -> Option<u64> {
        match self {
            Indexer::Bucket { exponent } => {
                let mask = if *exponent >= 64 { u64::MAX } else { (1u64 << exponent) - 1 };
                Some(finalfusion_hash(ngram) & mask)
            }
            Indexer::FastText { buckets } => {
                if *buckets == 0 {
                    None
                } else {
                    Some(u64::from(fasttext_hash(ngram) % buckets))
                }
            }
            Indexer::Explicit(e) => e.map.get(ngram).copied(),
            // A corrupt entry (index out of range) reads as no row; see `try_index`.
            Indexer::ExplicitFst(e) => e.try_index(ngram).ok().flatten(),
        }
    }

    /// Like [`Indexer::index`], but an error for a corrupt fst n-gram table.
    #[inline]
    pub fn try_index(&self, ngram: &str) -> crate::Result<Option<u64>> {
        match self {
            Indexer::ExplicitFst(e) => e.try_index(ngram),
            other => Ok(other.index(ngram)),
        }
    }
}

/// floret's hashing of n-grams into `n_buckets` rows, `n_hashes` rows per n-gram.
#[derive(Clone, Debug)]
pub struct FloretIndexer {
    pub n_buckets: u64,
    pub n_hashes: u32,
    pub seed: u32,
}

impl FloretIndexer {
    /// Push the rows of `ngram` onto `out`.
    pub fn push_indices(&self, ngram: &str, out: &mut Vec<usize>) {
        let h = murmur3_x64_128(ngram.as_bytes(), self.seed);
        let parts = [h as u32, (h >> 32) as u32, (h >> 64) as u32, (h >> 96) as u32];
        for p in parts.iter().take(self.n_hashes as usize) {
            out.push((u64::from(*p) % self.n_buckets) as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngrams_of_test() {
        assert_eq!(
            ngrams("Test", 3, 6),
            vec!["<Test>", "<Test", "<Tes", "<Te", "Test>", "Test", "Tes", "est>", "est", "st>"]
        );
        assert!(ngrams("", 3, 6).is_empty());
        assert_eq!(ngrams("ü", 3, 6), vec!["<ü>"]);
    }

    /// finalfusion's hash as specified: FNV-1a fed one byte at a time.
    fn finalfusion_hash_bytewise(ngram: &str) -> u64 {
        let mut h = FNV_OFFSET;
        let mut feed = |bytes: &[u8]| {
            for &b in bytes {
                h ^= u64::from(b);
                h = h.wrapping_mul(FNV_PRIME);
            }
        };
        feed(&(ngram.chars().count() as u64).to_le_bytes());
        for c in ngram.chars() {
            feed(&(c as u32).to_le_bytes());
        }
        h
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        #[test]
        fn finalfusion_hash_equals_bytewise_fnv(s in "\\PC{0,12}", ascii in "[ -~]{0,8}") {
            // any characters (1- to 4-byte UTF-8: every char class of the shortcut) and ASCII
            for t in [s.as_str(), ascii.as_str()] {
                proptest::prop_assert_eq!(finalfusion_hash(t), finalfusion_hash_bytewise(t));
                let chars: Vec<u32> = t.chars().map(u32::from).collect();
                proptest::prop_assert_eq!(finalfusion_hash_chars(&chars), finalfusion_hash_bytewise(t));
            }
        }
    }

    #[test]
    fn finalfusion_hash_of_long_and_boundary_strings() {
        // 256 and more characters (the count's second byte), and the char-class edges
        let long = "a".repeat(300);
        let edges: String = ['\u{ff}', '\u{100}', '\u{ffff}', '\u{10000}', '\u{10ffff}', '\0'].iter().collect();
        for t in [long.as_str(), &"é".repeat(256), &edges, ""] {
            assert_eq!(finalfusion_hash(t), finalfusion_hash_bytewise(t));
        }
    }

    #[test]
    fn bucket_index_of_tue() {
        // from the reference implementation's tests (ff_buckets.fifu, exponent 10)
        assert_eq!(finalfusion_hash("<tü") & 1023, 818);
    }

    #[test]
    fn murmur_known_values() {
        // Reference values of MurmurHash3_x64_128 (smhasher): empty input, seed 0 -> 0.
        assert_eq!(murmur3_x64_128(b"", 0), 0);
        // "hello", seed 0: h1 = 0xcbd8a7b341bd9b02, h2 = 0x5b1e906a48ae1d19
        let h = murmur3_x64_128(b"hello", 0);
        assert_eq!(h as u64, 0xcbd8_a7b3_41bd_9b02);
        assert_eq!((h >> 64) as u64, 0x5b1e_906a_48ae_1d19);
    }
}
