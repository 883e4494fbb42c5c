//! fastText `.bin` models.
//!
//! ```text
//! u32 magic 793712314 | u32 version (<= 12)
//! 12 x i32 args (dim ws epoch minCount neg wordNgrams loss model bucket minn maxn lrUpdateRate) | f64 t
//! i32 size | i32 nwords | i32 nlabels | i64 ntokens | i64 pruneidx_size
//! size x (NUL-terminated word | i64 count | u8 type)  [pruneidx_size x (i32, i32)]
//! u8 quant | i64 rows | i64 cols | rows x cols f32   (input matrix, rows = nwords + bucket)
//!   or, quantized (.ftz): u8 qnorm | i64 rows | i64 cols | i32 codesize | codes
//!   | product quantizer (i32 dim, nsubq, dsub, lastdsub | dim x 256 f32 centroids)
//!   | [qnorm: rows x u8 norm codes | norm quantizer]; rows = nwords + pruneidx_size if pruned
//! u8 quant | output matrix
//! ```
//!
//! Import (as finalfusion does): each word row becomes the mean of the word row and the
//! rows of its n-grams (what fastText's `get_word_vector` returns), then word rows are
//! L2-normalized and their norms kept; n-gram rows stay as they are. The vocabulary is
//! a fastText subword vocabulary with the file's bucket count. fastText gives the
//! end-of-sentence word `</s>` no n-grams; so does vecfusion. Writing inverts the import.
//! Quantized and pruned models (`.ftz`) are rebuilt as fastText rebuilds them (see
//! `read_compact_model`).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::path::Path;

use rayon::prelude::*;

use super::{normalize_block, normalize_rows, read_err};
use crate::embeddings::{write_atomically, Embeddings};
use crate::error::{Error, Result};
use crate::storage::{prefetch, ArrayStorage, Storage};
use crate::vocab::{Indexer, SubwordVocab, Vocab, WordList};

/// The magic number of fastText model files.
pub const FASTTEXT_MAGIC: u32 = 793_712_314;
/// The newest fastText file version.
pub const FASTTEXT_VERSION: u32 = 12;
/// fastText's end-of-sentence token (it has no n-grams).
pub const EOS: &str = "</s>";

/// The training arguments stored in a fastText model.
#[derive(Clone, Debug, PartialEq)]
pub struct FastTextArgs {
    pub dim: i32,
    pub ws: i32,
    pub epoch: i32,
    pub min_count: i32,
    pub neg: i32,
    pub word_ngrams: i32,
    pub loss: i32,
    pub model: i32,
    pub bucket: i32,
    pub minn: i32,
    pub maxn: i32,
    pub lr_update_rate: i32,
    pub t: f64,
}

impl Default for FastTextArgs {
    fn default() -> Self {
        // fastText's defaults for skipgram with negative sampling
        FastTextArgs {
            dim: 100,
            ws: 5,
            epoch: 5,
            min_count: 5,
            neg: 5,
            word_ngrams: 1,
            loss: 2,
            model: 2,
            bucket: 2_000_000,
            minn: 3,
            maxn: 6,
            lr_update_rate: 100,
            t: 1e-4,
        }
    }
}

const INT_KEYS: [&str; 12] = [
    "dim", "ws", "epoch", "minCount", "neg", "wordNgrams", "loss", "model", "bucket", "minn", "maxn", "lrUpdateRate",
];

impl FastTextArgs {
    fn ints(&self) -> [i32; 12] {
        [
            self.dim,
            self.ws,
            self.epoch,
            self.min_count,
            self.neg,
            self.word_ngrams,
            self.loss,
            self.model,
            self.bucket,
            self.minn,
            self.maxn,
            self.lr_update_rate,
        ]
    }

    fn from_ints(v: [i32; 12], t: f64) -> Self {
        FastTextArgs {
            dim: v[0],
            ws: v[1],
            epoch: v[2],
            min_count: v[3],
            neg: v[4],
            word_ngrams: v[5],
            loss: v[6],
            model: v[7],
            bucket: v[8],
            minn: v[9],
            maxn: v[10],
            lr_update_rate: v[11],
            t,
        }
    }

    /// The `[fasttext]` metadata table.
    fn to_toml(&self, version: u32) -> String {
        let mut s = String::from("[fasttext]\n");
        s.push_str(&format!("version = {version}\n"));
        for (k, v) in INT_KEYS.iter().zip(self.ints()) {
            s.push_str(&format!("{k} = {v}\n"));
        }
        // TOML spells the special values nan, inf and -inf (Rust's `{:?}` gives NaN)
        let t = match self.t {
            t if t.is_nan() => "nan".to_string(),
            t if t.is_infinite() => if t > 0.0 { "inf" } else { "-inf" }.to_string(),
            t => format!("{t:?}"),
        };
        s.push_str(&format!("t = {t}\n"));
        s
    }

    /// Arguments from a `[fasttext]` metadata table, if there is one.
    fn from_metadata(meta: Option<&str>) -> FastTextArgs {
        let args = FastTextArgs::default();
        let Some(table) = meta.and_then(|m| m.parse::<toml::Table>().ok()) else {
            return args;
        };
        let Some(ft) = table.get("fasttext").and_then(|v| v.as_table()) else {
            return args;
        };
        let mut ints = args.ints();
        for (slot, k) in ints.iter_mut().zip(INT_KEYS) {
            if let Some(v) = ft.get(k).and_then(toml::Value::as_integer).and_then(|v| i32::try_from(v).ok()) {
                *slot = v;
            }
        }
        let t = ft.get("t").and_then(toml::Value::as_float).unwrap_or(args.t);
        FastTextArgs::from_ints(ints, t)
    }
}

fn fasttext_hash_bytes(b: &[u8]) -> u32 {
    let mut h: u32 = 2_166_136_261;
    for &c in b {
        h ^= (c as i8) as i32 as u32;
        h = h.wrapping_mul(16_777_619);
    }
    h
}

/// Call `f` with the byte range of every n-gram of `<word>` in fastText's order
/// (for each start character, shortest first), with fastText's rules: n-grams of
/// `minn..=maxn` characters, single `<` or `>` excluded, `</s>` has none.
pub fn for_each_fasttext_ngram(word: &str, minn: usize, maxn: usize, f: impl FnMut(&str)) {
    if word == EOS {
        return;
    }
    let mut s = String::with_capacity(word.len() + 2);
    s.push('<');
    s.push_str(word);
    s.push('>');
    ngrams_of_bracketed(&s, minn, maxn, f);
}

/// The n-grams of `s` = `<word>` (see [`for_each_fasttext_ngram`]).
#[inline]
fn ngrams_of_bracketed(s: &str, minn: usize, maxn: usize, mut f: impl FnMut(&str)) {
    // (n-grams start and end where characters do: at char boundaries of `s`)
    ngram_spans(s.as_bytes(), minn, maxn, |i, j| f(&s[i..j]));
}

/// [`ngrams_of_bracketed`] over bytes, which need not be UTF-8.
fn ngrams_of_bracketed_bytes(b: &[u8], minn: usize, maxn: usize, mut f: impl FnMut(&[u8])) {
    ngram_spans(b, minn, maxn, |i, j| f(&b[i..j]));
}

/// The byte spans `i..j` of the n-grams of the bracketed word `b` (which need not be UTF-8):
/// fastText's own loop, which takes every byte that is not a continuation byte (`10xxxxxx`)
/// as the start of a character.
fn ngram_spans(b: &[u8], minn: usize, maxn: usize, mut f: impl FnMut(usize, usize)) {
    let len = b.len();
    for i in 0..len {
        if (b[i] & 0xC0) == 0x80 {
            continue;
        }
        let mut j = i;
        let mut n = 1;
        while j < len && n <= maxn {
            j += 1;
            while j < len && (b[j] & 0xC0) == 0x80 {
                j += 1;
            }
            if n >= minn && !(n == 1 && (i == 0 || j == len)) {
                f(i, j);
            }
            n += 1;
        }
    }
}

/// The storage rows (`nwords + hash % bucket`) of the n-grams of `word`, fastText's way.
pub fn fasttext_ngram_rows(word: &str, minn: u32, maxn: u32, bucket: u32, nwords: usize, out: &mut Vec<usize>) {
    if bucket == 0 {
        return;
    }
    for_each_fasttext_ngram(word, minn as usize, maxn as usize, |g| {
        out.push(nwords + (fasttext_hash_bytes(g.as_bytes()) % bucket) as usize);
    });
}

/// (min_n, max_n, buckets) of a fastText subword vocabulary.
fn fasttext_params(vocab: &Vocab) -> Option<(u32, u32, u32)> {
    match vocab {
        Vocab::Subword(SubwordVocab {
            min_n,
            max_n,
            indexer: Indexer::FastText { buckets },
            ..
        }) => Some((*min_n, *max_n, *buckets)),
        _ => None,
    }
}

/// fastText's `get_subwords`: for a known word, the word and its id first, then the
/// n-grams and their rows.
pub fn fasttext_subwords(emb: &Embeddings, word: &str) -> (Vec<String>, Vec<usize>) {
    let mut strings = Vec::new();
    let mut ids = Vec::new();
    if let Some(i) = emb.vocab.word_index(word) {
        strings.push(word.to_string());
        ids.push(i);
    }
    if let Some((minn, maxn, bucket)) = fasttext_params(&emb.vocab) {
        let nwords = emb.vocab.words_len();
        for_each_fasttext_ngram(word, minn as usize, maxn as usize, |g| {
            strings.push(g.to_string());
            ids.push(nwords + (fasttext_hash_bytes(g.as_bytes()) % bucket) as usize);
        });
    }
    (strings, ids)
}

/// Was `emb` converted from a fastText model by finalfusion? Its metadata then holds the
/// training configuration as top-level keys (`model = "SkipGram"`, `loss`, `buckets`,
/// `min_n`, `max_n`, ...) and no `[fasttext]` table (vecfusion's import).
fn is_finalfusion_conversion(emb: &Embeddings) -> bool {
    emb.metadata.as_deref().and_then(|m| m.parse::<toml::Table>().ok()).is_some_and(|t| {
        !t.contains_key("fasttext")
            && ["model", "loss", "buckets", "min_n", "max_n"].iter().all(|k| t.contains_key(*k))
    })
}

/// Are all of `row`'s values +0.0 (the row of a bucket a pruned model dropped)?
fn row_is_unmarked_zero(row: &[f32]) -> bool {
    row.iter().all(|x| x.to_bits() == 0)
}

/// Was `emb` read from a pruned fastText model (its metadata says `pruned_buckets`)?
fn is_pruned(emb: &Embeddings) -> bool {
    emb.metadata
        .as_deref()
        // (parsed only when it can say so: this is asked on every unknown word's vector)
        .filter(|m| m.contains("pruned_buckets"))
        .and_then(|m| m.parse::<toml::Table>().ok())
        .and_then(|t| t.get("fasttext").and_then(|f| f.get("pruned_buckets")).map(|_| ()))
        .is_some()
}

/// `row`, a stored word vector that is the mean of the word's own (fastText input) row and
/// its n-gram rows `idx`, back to that own row: `row * (k + 1) - the k n-gram rows`, in
/// float64, rounded once (a row near float32's limit, whose product with k + 1 would
/// overflow float32, comes back finite). With `exact` (a mean taken as fastText takes it:
/// the own row, plus each n-gram row in turn, times 1 / (k + 1) in float32) a value whose
/// mean misses the stored value is replaced by a float near it whose mean gives that value
/// back bit for bit (see [`own_value_for_mean`]), so that fastText's `get_word_vector` of
/// the written model is the embeddings' vector.
///
/// Returns, with `exact`, the first non-finite value of fastText's mean of the rebuilt row
/// for a finite stored value (finite rows whose sum overflows): fastText and vecfusion's
/// reader would see infinity there.
fn unmean_row(emb: &Embeddings, row: &mut [f32], idx: &[usize], b: &mut UnmeanBuffers, exact: bool) -> Option<f32> {
    if idx.is_empty() {
        return None;
    }
    let dims = row.len();
    b.grams.resize(idx.len() * dims, 0.0);
    for (&r, g) in idx.iter().zip(b.grams.chunks_exact_mut(dims)) {
        emb.storage.row_into(r, g);
    }
    // (row by row over the n-gram rows: the loops over a row vectorize)
    let m = (idx.len() + 1) as f64;
    b.acc.clear();
    b.acc.extend(row.iter().map(|&x| f64::from(x) * m));
    for g in b.grams.chunks_exact(dims) {
        for (a, &v) in b.acc.iter_mut().zip(g) {
            *a -= f64::from(v);
        }
    }
    b.orig.clear();
    if exact {
        b.orig.extend_from_slice(row);
    }
    for (x, &a) in row.iter_mut().zip(b.acc.iter()) {
        *x = a as f32;
    }
    if !exact {
        return None;
    }
    let inv = 1.0 / (idx.len() + 1) as f32;
    // (fastText starts from a zero vector: 0 + w, which turns -0 into +0)
    b.mean.clear();
    b.mean.extend(row.iter().map(|&x| 0.0 + x));
    for g in b.grams.chunks_exact(dims) {
        for (s, &v) in b.mean.iter_mut().zip(g) {
            *s += v;
        }
    }
    let grams = &b.grams;
    let mean = |w: f32, j: usize| grams.chunks_exact(dims).fold(0.0 + w, |s, g| s + g[j]) * inv;
    let mut overflow = None;
    for (j, x) in row.iter_mut().enumerate() {
        let target = b.orig[j];
        if (b.mean[j] * inv).to_bits() != target.to_bits() {
            // the floats between two sums lie about (k + 1) ulps of the target apart, counted
            // in ulps of the own value: the first step of the search
            let ulp = |v: f32| v.abs().next_up() - v.abs();
            let hint = (f64::from(ulp(target)) * m / f64::from(ulp(*x))).clamp(1.0, 1e6) as i64;
            if let Some(w) = own_value_for_mean(*x, target, hint, |w| mean(w, j)) {
                *x = w;
            } else if overflow.is_none() && target.is_finite() {
                // (only a value the search did not meet can have a mean that is not finite)
                overflow = Some(mean(*x, j)).filter(|m| !m.is_finite());
            }
        }
    }
    overflow
}

/// Reusable buffers of [`unmean_row`].
#[derive(Default)]
struct UnmeanBuffers {
    grams: Vec<f32>,
    orig: Vec<f32>,
    mean: Vec<f32>,
    acc: Vec<f64>,
}

/// A float32 `w` near `start` whose `mean(w)` is `target` bit for bit, for a `mean` that does
/// not fall as `w` grows (a sum with other values, times a positive factor, each step
/// rounded): found by doubling steps from `start` (the first `first_step` floats) until the
/// target is passed, then bisection, over the finite floats in order (-0 before +0; a mean
/// that overflows counts as the infinity it is). `None` when no float gives the target.
fn own_value_for_mean(start: f32, target: f32, first_step: i64, mean: impl Fn(f32) -> f32) -> Option<f32> {
    if !target.is_finite() {
        return None;
    }
    // finite floats in order as integers: -0 is -1, +0 is 0
    let key = |w: f32| {
        let b = w.to_bits();
        if b >> 31 == 1 { -i64::from(b & 0x7fff_ffff) - 1 } else { i64::from(b) }
    };
    let float = |k: i64| {
        if k < 0 {
            f32::from_bits(((-k - 1) as u32) | 0x8000_0000)
        } else {
            f32::from_bits(k as u32)
        }
    };
    let (lowest, highest) = (key(f32::MIN), key(f32::MAX));
    // the mean as an ordered value: -0 below +0; NaN has no place (None)
    let order = |m: f32| (!m.is_nan()).then(|| if m == 0.0 { key(m) as f64 } else { f64::from(m) * 2f64.powi(200) });
    let at = |k: i64| order(mean(float(k)));
    let want = order(target)?;
    let k0 = key(if start.is_finite() { start } else { f32::MAX.copysign(start) });
    let got = at(k0)?;
    if got == want {
        return Some(float(k0));
    }
    // a bracket: at(lo) < want <= at(hi)
    let (mut lo, mut hi) = (k0, k0);
    let mut step = first_step.max(1);
    loop {
        if got < want {
            if hi == highest {
                return None;
            }
            hi = k0.saturating_add(step).min(highest);
            if at(hi)? >= want {
                break;
            }
            lo = hi;
        } else {
            if lo == lowest {
                return None;
            }
            lo = k0.saturating_sub(step).max(lowest);
            let m = at(lo)?;
            if m == want {
                return Some(float(lo));
            }
            if m < want {
                break;
            }
            hi = lo;
        }
        step = step.saturating_mul(2);
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if at(mid)? >= want {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    (at(hi)? == want).then(|| float(hi))
}

/// What fastText's `get_word_vector` returns: a known word's vector before
/// normalization (row times norm); for an unknown word the mean of its n-gram rows
/// (zero without n-grams).
///
/// A model converted by finalfusion stores each word averaged with finalfusion's n-grams
/// of it, which differ from fastText's for `</s>` (fastText gives it none) and, with
/// `min_n` 1, by the single `<` and `>`: such a word's own row is recovered (as
/// [`write_fasttext`] does) and averaged with fastText's n-grams instead.
pub fn fasttext_vector(emb: &Embeddings, word: &str) -> Vec<f32> {
    let dims = emb.dims();
    let mut out = vec![0f32; dims];
    if let Some(i) = emb.vocab.word_index(word) {
        super::export_row(emb, i, &mut out);
        // (finalfusion's n-grams differ from fastText's only for `</s>` and, with min_n 1, by
        // the single `<` and `>`: the metadata is parsed only then)
        let may_differ = |&(minn, _, _): &(u32, u32, u32)| (word == EOS || minn <= 1) && is_finalfusion_conversion(emb);
        if let Some((minn, maxn, bucket)) = fasttext_params(&emb.vocab).filter(may_differ) {
            let (mut theirs, mut ours) = (Vec::new(), Vec::new());
            emb.vocab.push_subword_indices(word, &mut theirs);
            fasttext_ngram_rows(word, minn, maxn, bucket, emb.vocab.words_len(), &mut ours);
            let (mut a, mut b) = (theirs.clone(), ours.clone());
            a.sort_unstable();
            b.sort_unstable();
            if a != b {
                let _ = unmean_row(emb, &mut out, &theirs, &mut UnmeanBuffers::default(), false);
                // fastText: the sum of the word's row and its n-gram rows, times 1 / count
                for &r in &ours {
                    emb.storage.add_row(r, &mut out);
                }
                let inv = (1.0 / (ours.len() + 1) as f64) as f32;
                for x in out.iter_mut() {
                    *x *= inv;
                }
            }
        }
        return out;
    }
    let mut rows = Vec::new();
    match fasttext_params(&emb.vocab) {
        Some((minn, maxn, bucket)) => fasttext_ngram_rows(word, minn, maxn, bucket, emb.vocab.words_len(), &mut rows),
        None => emb.vocab.push_subword_indices(word, &mut rows),
    }
    if is_pruned(emb) {
        // a pruned model (.ftz) keeps rows for some buckets only; the others (rows of +0.0
        // here; a kept row of zeros holds a -0.0, see `read_compact_model`) are left out of
        // the mean, as fastText drops their n-grams
        let mut row = vec![0f32; dims];
        rows.retain(|&r| {
            emb.storage.row_into(r, &mut row);
            !row_is_unmarked_zero(&row)
        });
    }
    if rows.is_empty() {
        return out;
    }
    for &r in &rows {
        emb.storage.add_row(r, &mut out);
    }
    let inv = 1.0 / rows.len() as f32;
    for x in out.iter_mut() {
        *x *= inv;
    }
    out
}

struct Reader<R> {
    r: R,
}

impl<R: BufRead> Reader<R> {
    fn i32(&mut self, path: &Path, what: &'static str) -> Result<i32> {
        let mut b = [0u8; 4];
        self.r.read_exact(&mut b).map_err(|e| read_err(path, what, e))?;
        Ok(i32::from_le_bytes(b))
    }
    fn i64(&mut self, path: &Path, what: &'static str) -> Result<i64> {
        let mut b = [0u8; 8];
        self.r.read_exact(&mut b).map_err(|e| read_err(path, what, e))?;
        Ok(i64::from_le_bytes(b))
    }
    fn f64(&mut self, path: &Path, what: &'static str) -> Result<f64> {
        Ok(f64::from_bits(self.i64(path, what)? as u64))
    }
    fn u8(&mut self, path: &Path, what: &'static str) -> Result<u8> {
        let mut b = [0u8; 1];
        self.r.read_exact(&mut b).map_err(|e| read_err(path, what, e))?;
        Ok(b[0])
    }
}

/// Read a fastText `.bin` model.
///
/// With `normalize`, word rows are L2-normalized and their norms kept (finalfusion's
/// import); without, each word row stays fastText's own vector (the mean of the word row
/// and its n-gram rows, summed in fastText's order: `get_word_vector` bit for bit) and
/// there are no norms.
pub fn read_fasttext(path: &Path, decode: impl Into<super::Decode>, normalize: bool) -> Result<Embeddings> {
    read_fasttext_inner(path, decode.into(), normalize).map_err(|e| match e {
        // I/O errors name the file already
        e @ Error::Io { .. } => e,
        e => e.context(path.display()),
    })
}

fn read_fasttext_inner(path: &Path, decode: super::Decode, normalize: bool) -> Result<Embeddings> {
    let file = crate::embeddings::open_regular_file(path)?;
    let file_len = file
        .metadata()
        .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?
        .len();
    let mut r = Reader {
        r: BufReader::with_capacity(1 << 20, file),
    };
    let magic = r.i32(path, "fastText magic")? as u32;
    if magic != FASTTEXT_MAGIC {
        let head = magic.to_le_bytes();
        let hint = super::other_format(&head)
            .or_else(|| super::looks_like_text(path).then_some("this looks like text embeddings: read it with vf.load_text"))
            .or_else(|| {
                head[0].is_ascii_digit().then_some("this starts like word2vec (a \"words dims\" header): read it with vf.load_word2vec")
            });
        if let Some(hint) = hint {
            return Err(Error::invalid("fastText model", hint));
        }
        return Err(Error::invalid(
            "fastText model",
            format!("not a fastText file: magic bytes {head:02x?}, expected {:02x?}", FASTTEXT_MAGIC.to_le_bytes()),
        ));
    }
    let version = r.i32(path, "fastText version")?;
    if !(0..=FASTTEXT_VERSION as i32).contains(&version) {
        return Err(Error::Version {
            format: "fastText",
            expected: format!("<= {FASTTEXT_VERSION}"),
            got: version.to_string(),
        });
    }
    let mut ints = [0i32; 12];
    for (slot, k) in ints.iter_mut().zip(INT_KEYS) {
        *slot = r.i32(path, k)?;
    }
    let t = r.f64(path, "t")?;
    let mut args = FastTextArgs::from_ints(ints, t);
    if version == 11 && args.model == 3 {
        // old supervised models: fastText ignores their n-grams
        args.maxn = 0;
    }
    if args.dim <= 0 || args.bucket < 0 || args.minn < 0 || args.maxn < 0 {
        return Err(Error::invalid(
            "fastText arguments",
            format!(
                "dim {}, bucket {}, minn {}, maxn {} (dim must be positive, the others not negative)",
                args.dim, args.bucket, args.minn, args.maxn
            ),
        ));
    }
    // (see MAX_NGRAM_LEN: fastText has no limit, but a huge one makes long words quadratic)
    if args.maxn as u32 > crate::vocab::MAX_NGRAM_LEN {
        return Err(Error::invalid(
            "fastText arguments",
            format!("maxn {} is more than vecfusion takes ({})", args.maxn, crate::vocab::MAX_NGRAM_LEN),
        ));
    }
    let dims = args.dim as usize;

    // dictionary
    let size = r.i32(path, "dictionary size")?;
    let nwords = r.i32(path, "word count")?;
    let nlabels = r.i32(path, "label count")?;
    let _ntokens = r.i64(path, "token count")?;
    let pruneidx_size = r.i64(path, "pruneidx size")?;
    if size < 0 || nwords < 0 || nlabels < 0 || i64::from(nwords) + i64::from(nlabels) != i64::from(size) {
        return Err(Error::invalid(
            "fastText dictionary",
            format!("size {size} is not words {nwords} + labels {nlabels}"),
        ));
    }
    // every entry needs at least 10 bytes
    if (size as u64).saturating_mul(10) > file_len {
        return Err(Error::invalid(
            "fastText dictionary",
            format!("{size} entries do not fit in a file of {file_len} bytes"),
        ));
    }
    let nwords = nwords as usize;
    let mut words = super::WordsBuilder::default();
    words.ends.reserve(nwords);
    let mut buf = Vec::with_capacity(64);
    let mut raw: Vec<(usize, Vec<u8>)> = Vec::new();
    for i in 0..size as usize {
        if i % (1 << 16) == 0 {
            crate::cancel::check()?;
        }
        buf.clear();
        r.r.read_until(0, &mut buf).map_err(|e| read_err(path, "fastText dictionary", e))?;
        if buf.last() != Some(&0) {
            return Err(Error::invalid("fastText dictionary", format!("the file ends inside entry {i}")));
        }
        buf.pop();
        let _count = r.i64(path, "word count")?;
        let ty = r.u8(path, "entry type")?;
        match ty {
            0 if i < nwords => {
                if decode != super::Decode::Strict && decode.changes(&buf) {
                    raw.push((i, buf.clone()));
                }
                words.push(&buf, decode, || format!("fastText dictionary entry {i}"))?;
            }
            1 if i >= nwords => {} // a label: not part of the input matrix
            _ => {
                return Err(Error::invalid(
                    "fastText dictionary",
                    format!("entry {i} has type {ty}, but the first {nwords} entries must be words (0) and the rest labels (1)"),
                ))
            }
        }
    }
    // A pruned dictionary (`fasttext quantize -cutoff`): only the n-gram buckets listed
    // keep a row, the k-th listed one at row words + k.
    let pruned = if pruneidx_size >= 0 {
        if (pruneidx_size as u64).saturating_mul(8) > file_len {
            return Err(Error::invalid(
                "fastText dictionary",
                format!("{pruneidx_size} pruned buckets do not fit in a file of {file_len} bytes"),
            ));
        }
        let mut pairs = Vec::with_capacity(pruneidx_size as usize);
        for _ in 0..pruneidx_size {
            let h = r.i32(path, "pruned bucket")?;
            let k = r.i32(path, "pruned bucket row")?;
            if h < 0 || h >= args.bucket || k < 0 || i64::from(k) >= pruneidx_size {
                return Err(Error::invalid(
                    "fastText dictionary",
                    format!("pruned bucket {h} -> row {k} is out of range ({} buckets, {pruneidx_size} rows)", args.bucket),
                ));
            }
            pairs.push((h as usize, k as usize));
        }
        Some(pairs)
    } else {
        None
    };
    let quant = r.u8(path, "quantization flag")? != 0;
    if quant || pruned.is_some() {
        let words = words.finish()?;
        return read_compact_model(r, path, &args, version, words, &raw, pruned, quant, normalize, file_len);
    }
    let rows = r.i64(path, "matrix rows")?;
    let cols = r.i64(path, "matrix columns")?;
    let bucket = args.bucket as usize;
    if rows < 0 || rows as u64 != nwords as u64 + bucket as u64 || cols != i64::from(args.dim) {
        return Err(Error::invalid(
            "fastText input matrix",
            format!("shape ({rows}, {cols}), expected ({}, {dims}) = (words + buckets, dim)", nwords + bucket),
        ));
    }
    let rows = rows as usize;
    let n = rows.checked_mul(dims).ok_or(Error::Overflow("matrix size"))?;
    let nbytes = (n as u64).checked_mul(4).ok_or(Error::Overflow("matrix size"))?;
    // the matrix starts here (the reader's position, its buffer accounted for)
    let offset = r
        .r
        .stream_position()
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    if nbytes > file_len.saturating_sub(offset) {
        return Err(Error::invalid(
            "fastText input matrix",
            format!(
                "{rows} x {dims} floats at byte {offset} do not fit in a file of {file_len} bytes: the file ends early"
            ),
        ));
    }
    // (the matrix is read by position below: the reader goes on after it)
    r.r.seek(std::io::SeekFrom::Start(offset + nbytes)).map_err(|e| read_err(path, "fastText output matrix", e))?;
    check_output_matrix(&mut r, path, file_len, false)?;
    let words = words.finish()?;
    // fastText uses n-grams whenever maxn > 0 (and minn <= maxn): lengths start at 1, so
    // minn 0 (the supervised default, with -maxn given) means the same as minn 1.
    let subwords = args.maxn > 0 && bucket > 0 && args.maxn >= args.minn;
    let minn = args.minn.max(1);
    // without n-grams only the word rows matter: the bucket rows are not read
    let keep_rows = if subwords { rows } else { nwords };
    let keep = keep_rows * dims;
    let file = r.r.into_inner();
    let metadata = Some(args.to_toml(version as u32));
    // (memory that the system zeroes lazily, in 4 KiB pages: on a busy machine fresh
    // huge pages can be much slower to fault in)
    let mut data = crate::storage::try_zeroed_vec::<f32>(keep, "fastText matrix")?;
    let (word_part, ngram_part) = data.split_at_mut(nwords * dims);
    let word_bytes = (word_part.len() as u64) * 4;
    let read_rows = |buf: &mut [f32], at: u64, piece: usize| -> Result<()> {
        crate::embeddings::read_into_at(&file, bytemuck::cast_slice_mut(buf), at, piece)
            .map_err(|e| read_err(path, "fastText input matrix", e))?;
        super::le_to_host(buf);
        Ok(())
    };
    let norms = if subwords {
        // the n-gram rows first, in parallel; each word row is read by the task that
        // imports it, just before (so it is in cache)
        read_rows(ngram_part, offset + word_bytes, 64 << 20)?;
        let ngrams = NgramParams {
            minn: minn as usize,
            maxn: args.maxn as usize,
            bucket: args.bucket as u32,
            kept: None,
            raw: &raw,
        };
        if !cfg!(unix) {
            read_rows(word_part, offset, 64 << 20)?;
        }
        import_word_rows(word_part, ngram_part, dims, &words, ngrams, normalize, |first_row, block| {
            if cfg!(unix) {
                // (one positional read; reads of other blocks go on beside it)
                read_rows(block, offset + first_row as u64 * dims as u64 * 4, usize::MAX)
            } else {
                Ok(())
            }
        })?
    } else {
        read_rows(word_part, offset, 64 << 20)?;
        normalize.then(|| normalize_rows(word_part, dims))
    };
    drop(file);
    check_finite_rows(&data, dims, &words)?;
    super::check_norms(norms.as_deref(), &words)?;
    let storage = Storage::Array(ArrayStorage::new(data, keep_rows, dims)?);
    Embeddings::new(metadata, model_vocab(words, subwords, minn, &args), storage, norms)
}

/// The vocabulary of an imported model: fastText's buckets with n-grams of `minn..=maxn`
/// characters, or the words alone.
fn model_vocab(words: WordList, subwords: bool, minn: i32, args: &FastTextArgs) -> Vocab {
    if subwords {
        Vocab::Subword(SubwordVocab {
            words,
            min_n: minn as u32,
            max_n: args.maxn as u32,
            indexer: Indexer::FastText { buckets: args.bucket as u32 },
            fasttext_ngrams: true,
        })
    } else {
        Vocab::Simple(words)
    }
}

#[derive(Clone, Copy)]
struct NgramParams<'a> {
    minn: usize,
    maxn: usize,
    bucket: u32,
    /// For a pruned model, which buckets kept a row (fastText drops the others' n-grams).
    kept: Option<&'a [bool]>,
    /// The file's bytes of the words whose text is not those bytes (invalid UTF-8 read with
    /// `lossy`, non-ASCII read as Latin-1), by row: their n-grams are those fastText takes
    /// from these bytes, not from the decoded text.
    raw: &'a [(usize, Vec<u8>)],
}

/// A quantized (`.ftz`) or pruned model, read from `r` just after the quantization flag:
/// the input matrix is rebuilt as fastText rebuilds its rows (centroids times the row's
/// quantized norm, per element), pruned buckets are spread back to their bucket rows
/// (the others stay zero) and the import then goes as for a `.bin` model, with fastText's
/// rule that an n-gram of a pruned-away bucket does not count.
#[allow(clippy::too_many_arguments)]
fn read_compact_model(
    mut r: Reader<BufReader<File>>,
    path: &Path,
    args: &FastTextArgs,
    version: i32,
    words: WordList,
    raw: &[(usize, Vec<u8>)],
    pruned: Option<Vec<(usize, usize)>>,
    quant: bool,
    normalize: bool,
    file_len: u64,
) -> Result<Embeddings> {
    let dims = args.dim as usize;
    let nwords = words.len();
    let bucket = args.bucket as usize;
    let stored = nwords + pruned.as_ref().map_or(bucket, Vec::len);
    let src = if quant {
        read_quantized_matrix(&mut r, path, stored, dims, file_len)?
    } else {
        let rows = r.i64(path, "matrix rows")?;
        let cols = r.i64(path, "matrix columns")?;
        if rows != stored as i64 || cols != i64::from(args.dim) {
            return Err(Error::invalid(
                "fastText input matrix",
                format!("shape ({rows}, {cols}), expected ({stored}, {dims})"),
            ));
        }
        read_f32s(&mut r, path, stored * dims, file_len, "fastText input matrix")?
    };
    check_output_matrix(&mut r, path, file_len, quant)?;
    // (a pruned model that kept no bucket still has n-grams: they all count for nothing, so an
    // unknown word is a zero vector as in fastText, not a missing word)
    let subwords = args.maxn > 0 && bucket > 0 && args.maxn >= args.minn;
    let minn = args.minn.max(1);
    let rows = if subwords { nwords + bucket } else { nwords };
    let mut kept = None;
    let mut data = match &pruned {
        // all rows are in the file: used as they are (the word rows only without n-grams)
        None => {
            let mut src = src;
            src.truncate(rows * dims);
            src
        }
        // kept buckets go back to their bucket rows; the others stay zero (memory the
        // system zeroes lazily: a bucket table the file does not hold is allocated, so a
        // corrupt bucket count is an error here, not an abort)
        Some(pairs) => {
            let n = rows.checked_mul(dims).ok_or(Error::Overflow("matrix size"))?;
            let mut data = try_zeroed_f32(n, "fastText input matrix")?;
            data[..nwords * dims].copy_from_slice(&src[..nwords * dims]);
            if subwords {
                let mut keep = vec![false; bucket];
                for &(h, k) in pairs {
                    let at = (nwords + h) * dims;
                    let from = (nwords + k) * dims;
                    let row = &mut data[at..at + dims];
                    row.copy_from_slice(&src[from..from + dims]);
                    // A kept bucket whose row is all zeros still counts in fastText's means:
                    // marked by a negative zero (the same value in every sum), so that
                    // `fasttext_vector` tells it from the buckets pruned away (+0.0 bits).
                    if let Some(first) = row.first_mut().filter(|_| row_is_unmarked_zero(&src[from..from + dims])) {
                        *first = -0.0;
                    }
                    keep[h] = true;
                }
                kept = Some(keep);
            }
            data
        }
    };
    let (word_part, ngram_part) = data.split_at_mut(nwords * dims);
    let norms = if subwords {
        let p = NgramParams {
            minn: minn as usize,
            maxn: args.maxn as usize,
            bucket: args.bucket as u32,
            kept: kept.as_deref(),
            raw,
        };
        import_word_rows(word_part, ngram_part, dims, &words, p, normalize, |_, _| Ok(()))?
    } else {
        normalize.then(|| normalize_rows(word_part, dims))
    };
    let mut metadata = args.to_toml(version as u32);
    metadata.push_str(&format!("quantized = {quant}\n"));
    if let Some(p) = &pruned {
        // (`fasttext_vector` leaves the pruned-away buckets out of an unknown word's mean)
        metadata.push_str(&format!("pruned_buckets = {}\n", p.len()));
    }
    check_finite_rows(&data, dims, &words)?;
    super::check_norms(norms.as_deref(), &words)?;
    let storage = Storage::Array(ArrayStorage::new(data, rows, dims)?);
    Embeddings::new(Some(metadata), model_vocab(words, subwords, minn, args), storage, norms)
}

/// A FormatError naming the first row of an imported matrix (word rows, then n-gram rows)
/// that holds NaN or infinity, as the word2vec and text readers refuse them: such a row can
/// be neither normalized nor compared, and an unknown word using it would be NaN. Word rows
/// are checked after the import, so a mean that overflows float32 is caught too. One pass,
/// in parallel, without early exit within a block (so that it vectorizes).
fn check_finite_rows(data: &[f32], dims: usize, words: &WordList) -> Result<()> {
    if dims == 0 {
        return Ok(());
    }
    const BLOCK_ROWS: usize = 1024;
    let bad = |x: &f32| x.to_bits() & 0x7f80_0000 == 0x7f80_0000;
    let first = data
        .par_chunks(BLOCK_ROWS * dims)
        .enumerate()
        .filter(|(_, c)| c.iter().fold(false, |acc, x| acc | bad(x)))
        .map(|(b, c)| b * BLOCK_ROWS + c.iter().position(bad).unwrap_or(0) / dims)
        .min();
    let Some(row) = first else {
        return Ok(());
    };
    let nwords = words.len();
    let which = if row < nwords {
        format!("word {:?}", words.get(row).unwrap_or_default())
    } else {
        format!("n-gram bucket {}", row - nwords)
    };
    Err(Error::invalid(
        "fastText input matrix",
        format!(
            "row {row} ({which}) holds NaN or infinity (or, for a word, the mean of its word and n-gram rows \
             overflows float32): not a finite number"
        ),
    ))
}

/// `n` zeros, or a FormatError when the system cannot provide the memory (rather than
/// the abort of `vec![0.0; n]`): used where a header sets a size the file does not hold.
fn try_zeroed_f32(n: usize, what: &'static str) -> Result<Vec<f32>> {
    crate::storage::try_zeroed_vec(n, what).map_err(|e| match e {
        Error::OutOfMemory { .. } => Error::invalid(
            what,
            format!("{n} floats ({} MiB) cannot be allocated: a corrupt header?", (n as u64 * 4) >> 20),
        ),
        other => other,
    })
}

/// `n` little-endian f32 values from `r` (bounded by the file's size first).
fn read_f32s(r: &mut Reader<BufReader<File>>, path: &Path, n: usize, file_len: u64, what: &'static str) -> Result<Vec<f32>> {
    if (n as u64).saturating_mul(4) > file_len {
        return Err(Error::invalid(what, format!("{n} floats do not fit in a file of {file_len} bytes")));
    }
    let mut out = crate::storage::try_zeroed_vec::<f32>(n, what)?;
    r.r.read_exact(bytemuck::cast_slice_mut(&mut out)).map_err(|e| read_err(path, what, e))?;
    super::le_to_host(&mut out);
    Ok(out)
}

/// fastText's `ProductQuantizer` (8 bits: 256 centroids per subquantizer).
struct FtPq {
    nsubq: usize,
    dsub: usize,
    lastdsub: usize,
    centroids: Vec<f32>,
}

impl FtPq {
    fn read(r: &mut Reader<BufReader<File>>, path: &Path, dims: usize, file_len: u64) -> Result<FtPq> {
        let dim = r.i32(path, "quantizer dim")?;
        let nsubq = r.i32(path, "quantizer subquantizers")?;
        let dsub = r.i32(path, "quantizer dsub")?;
        let lastdsub = r.i32(path, "quantizer last dsub")?;
        let ok = dim as i64 == dims as i64
            && nsubq > 0
            && dsub > 0
            && lastdsub > 0
            && i64::from(nsubq - 1) * i64::from(dsub) + i64::from(lastdsub) == i64::from(dim);
        if !ok {
            return Err(Error::invalid(
                "fastText quantizer",
                format!("dim {dim}, {nsubq} subquantizers of {dsub} (last {lastdsub}) for {dims} dimensions"),
            ));
        }
        let centroids = read_f32s(r, path, dims * 256, file_len, "fastText quantizer centroids")?;
        Ok(FtPq { nsubq: nsubq as usize, dsub: dsub as usize, lastdsub: lastdsub as usize, centroids })
    }

    /// fastText's `get_centroids(m, i)`.
    fn centroid(&self, m: usize, i: u8) -> &[f32] {
        let i = usize::from(i);
        if m + 1 == self.nsubq {
            let at = m * 256 * self.dsub + i * self.lastdsub;
            &self.centroids[at..at + self.lastdsub]
        } else {
            let at = (m * 256 + i) * self.dsub;
            &self.centroids[at..at + self.dsub]
        }
    }
}

/// fastText's output matrix, which ends the file: read far enough (headers; the data
/// skipped) to know that it is whole and that nothing follows it. Nothing of it is kept, but
/// a file whose input matrix was read with the wrong layout (a flag byte flipped) ends
/// elsewhere, so this is where such damage shows, as fastText itself refuses such files.
///
/// As fastText reads it, the output matrix is quantized only when the input matrix is and the
/// output's flag is set (`-qout` sets it for any command: a dense model may carry it).
fn check_output_matrix(r: &mut Reader<BufReader<File>>, path: &Path, file_len: u64, quantized_input: bool) -> Result<()> {
    let bad = |why: String| Error::invalid("fastText output matrix", why);
    let mut skip = |r: &mut Reader<BufReader<File>>, bytes: u64| -> Result<()> {
        let at = r.r.stream_position().map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        if bytes > file_len.saturating_sub(at) {
            return Err(bad(format!("{bytes} bytes at byte {at} do not fit in a file of {file_len} bytes: the file ends early")));
        }
        r.r.seek_relative(bytes as i64).map_err(|e| read_err(path, "fastText output matrix", e))
    };
    let shape = |r: &mut Reader<BufReader<File>>| -> Result<(u64, u64)> {
        let (m, n) = (r.i64(path, "output matrix rows")?, r.i64(path, "output matrix columns")?);
        if m < 0 || n < 0 {
            return Err(bad(format!("shape ({m}, {n})")));
        }
        Ok((m as u64, n as u64))
    };
    let quantizer = |r: &mut Reader<BufReader<File>>, skip: &mut dyn FnMut(&mut Reader<BufReader<File>>, u64) -> Result<()>, dims: u64| -> Result<()> {
        let dim = r.i32(path, "output quantizer dim")?;
        for what in ["output quantizer subquantizers", "output quantizer dsub", "output quantizer last dsub"] {
            r.i32(path, what)?;
        }
        if i64::from(dim) != dims as i64 {
            return Err(bad(format!("a quantizer of {dim} dimensions for {dims}")));
        }
        skip(r, dims * 256 * 4)
    };
    let flag = r.u8(path, "output quantization flag")?;
    match u8::from(quantized_input && flag != 0) {
        0 => {
            let (m, n) = shape(r)?;
            let bytes = m.checked_mul(n).and_then(|x| x.checked_mul(4)).ok_or_else(|| bad(format!("shape ({m}, {n})")))?;
            skip(r, bytes)?;
        }
        1 => {
            let qnorm = match r.u8(path, "output quantized norm flag")? {
                0 => false,
                1 => true,
                other => return Err(bad(format!("quantized norm flag {other} (0 or 1)"))),
            };
            let (m, n) = shape(r)?;
            let codesize = r.i32(path, "output code size")?;
            if codesize < 0 {
                return Err(bad(format!("{codesize} bytes of codes")));
            }
            skip(r, codesize as u64)?;
            quantizer(r, &mut skip, n)?;
            if qnorm {
                skip(r, m)?;
                quantizer(r, &mut skip, 1)?;
            }
        }
        _ => unreachable!("0 or 1"),
    }
    let end = r.r.stream_position().map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    if end != file_len {
        return Err(bad(format!("it ends at byte {end}, but the file has {file_len} bytes: something follows it")));
    }
    Ok(())
}

/// A fastText `QuantMatrix` (`rows` x `dims`) rebuilt row by row: element j of row i is
/// `alpha * c[j]` with alpha the row's quantized norm (or 1), as fastText's `addcode`.
fn read_quantized_matrix(r: &mut Reader<BufReader<File>>, path: &Path, rows: usize, dims: usize, file_len: u64) -> Result<Vec<f32>> {
    let qnorm = r.u8(path, "quantized norm flag")? != 0;
    let m = r.i64(path, "quantized matrix rows")?;
    let n = r.i64(path, "quantized matrix columns")?;
    let codesize = r.i32(path, "code size")?;
    if m != rows as i64 || n != dims as i64 {
        return Err(Error::invalid("fastText quantized matrix", format!("shape ({m}, {n}), expected ({rows}, {dims})")));
    }
    if codesize < 0 || codesize as u64 > file_len {
        return Err(Error::invalid("fastText quantized matrix", format!("{codesize} bytes of codes in a file of {file_len} bytes")));
    }
    let mut codes = vec![0u8; codesize as usize];
    r.r.read_exact(&mut codes).map_err(|e| read_err(path, "fastText quantized codes", e))?;
    let pq = FtPq::read(r, path, dims, file_len)?;
    if codes.len() != rows * pq.nsubq {
        return Err(Error::invalid(
            "fastText quantized matrix",
            format!("{} bytes of codes for {rows} rows of {} subquantizers", codes.len(), pq.nsubq),
        ));
    }
    let norms = if qnorm {
        let mut norm_codes = vec![0u8; rows];
        r.r.read_exact(&mut norm_codes).map_err(|e| read_err(path, "fastText norm codes", e))?;
        let npq = FtPq::read(r, path, 1, file_len)?;
        Some(norm_codes.iter().map(|&c| npq.centroid(0, c)[0]).collect::<Vec<f32>>())
    } else {
        None
    };
    let mut out = try_zeroed_f32(rows.checked_mul(dims).ok_or(Error::Overflow("matrix size"))?, "fastText quantized matrix")?;
    for (i, (row, code)) in out.chunks_exact_mut(dims).zip(codes.chunks_exact(pq.nsubq)).enumerate() {
        let alpha = norms.as_ref().map_or(1.0, |n| n[i]);
        for (m, &c) in code.iter().enumerate() {
            let cent = pq.centroid(m, c);
            for (o, &v) in row[m * pq.dsub..m * pq.dsub + cent.len()].iter_mut().zip(cent) {
                *o = alpha * v;
            }
        }
    }
    Ok(out)
}

/// Words handled by one task of the import.
const IMPORT_BLOCK: usize = 256;

/// finalfusion's import of fastText word rows, fused with normalization (`fill(first
/// row, rows)` first fills each block of word rows, or does nothing): each word row
/// becomes the mean of itself and its n-gram rows (fastText's order of summation), then,
/// with `normalize`, is L2-normalized while still in cache; returns the norms (`None`
/// without `normalize`). While one word is summed,
/// the rows of the next word's n-grams are prefetched.
fn import_word_rows<F>(
    word_part: &mut [f32],
    ngram_part: &[f32],
    dims: usize,
    words: &WordList,
    p: NgramParams,
    normalize: bool,
    fill: F,
) -> Result<Option<Vec<f32>>>
where
    F: Fn(usize, &mut [f32]) -> Result<()> + Sync,
{
    let nwords = word_part.len() / dims.max(1);
    let mut norms = vec![0f32; nwords];
    if dims == 0 {
        return Ok(normalize.then_some(norms));
    }
    let stop = crate::cancel::current();
    word_part
        .par_chunks_mut(IMPORT_BLOCK * dims)
        .zip(norms.par_chunks_mut(IMPORT_BLOCK))
        .enumerate()
        .try_for_each(|(b, (block, block_norms))| -> Result<()> {
            if crate::cancel::stopped(&stop) {
                return Err(Error::Interrupted);
            }
            let first = b * IMPORT_BLOCK;
            fill(first, block)?;
            let mut scratch = Vec::new();
            let mut cur: Vec<usize> = Vec::new();
            let mut next: Vec<usize> = Vec::new();
            let ngram_rows = |i: usize, scratch: &mut Vec<u8>, out: &mut Vec<usize>| {
                out.clear();
                let word = match p.raw.binary_search_by_key(&i, |(row, _)| *row) {
                    Ok(k) => &p.raw[k].1[..],
                    Err(_) => words.get(i).unwrap_or_default().as_bytes(),
                };
                ngram_rows_into(word, p, scratch, out);
            };
            let count = block_norms.len();
            ngram_rows(first, &mut scratch, &mut next);
            for (k, row) in block.chunks_exact_mut(dims).enumerate() {
                std::mem::swap(&mut cur, &mut next);
                if k + 1 < count {
                    ngram_rows(first + k + 1, &mut scratch, &mut next);
                    for &g in &next {
                        prefetch(&ngram_part[g * dims..(g + 1) * dims]);
                    }
                }
                // fastText adds the word's row to a zero vector: 0 + w (-0 becomes +0)
                for o in row.iter_mut() {
                    *o += 0.0;
                }
                if !cur.is_empty() {
                    for &g in &cur {
                        for (o, v) in row.iter_mut().zip(&ngram_part[g * dims..(g + 1) * dims]) {
                            *o += v;
                        }
                    }
                    let inv = 1.0 / (cur.len() + 1) as f32;
                    for o in row.iter_mut() {
                        *o *= inv;
                    }
                }
            }
            if normalize {
                normalize_block(block, dims, block_norms);
            }
            Ok(())
        })?;
    Ok(normalize.then_some(norms))
}

/// [`fasttext_ngram_rows`] relative to the first bucket row, with a reusable buffer.
fn ngram_rows_into(word: &[u8], p: NgramParams, scratch: &mut Vec<u8>, out: &mut Vec<usize>) {
    if word == EOS.as_bytes() || p.bucket == 0 {
        return;
    }
    scratch.clear();
    scratch.push(b'<');
    scratch.extend_from_slice(word);
    scratch.push(b'>');
    ngrams_of_bracketed_bytes(scratch, p.minn, p.maxn, |g| {
        let h = (fasttext_hash_bytes(g) % p.bucket) as usize;
        if p.kept.is_none_or(|k| k[h]) {
            out.push(h);
        }
    });
}

/// Write `emb` as a fastText `.bin` model that fastText loads: word rows are turned back
/// into fastText's own rows (inverting the import), n-gram rows are written as they are,
/// the dictionary has no pruning (`pruneidx_size = -1`), and the output matrix is zero.
/// Word counts are not kept by vecfusion and are written as 1.
///
/// Works for fastText subword vocabularies and simple vocabularies (written without
/// n-grams: minn = maxn = bucket = 0); other subword vocabularies are refused.
pub fn write_fasttext(emb: &Embeddings, path: &Path) -> Result<()> {
    if emb.dims() == 0 {
        return Err(Error::argument("0-dimensional embeddings cannot be written as fastText (fastText needs dim > 0)"));
    }
    let (words, minn, maxn, bucket): (&WordList, u32, u32, u32) = match &emb.vocab {
        Vocab::Simple(w) => (w, 0, 0, 0),
        Vocab::Subword(s) => match s.indexer {
            Indexer::FastText { buckets } => (&s.words, s.min_n, s.max_n, buckets),
            _ => {
                return Err(Error::argument(format!(
                    "the {} cannot be written as fastText: its n-grams are not indexed with fastText's hash",
                    emb.vocab.kind()
                )))
            }
        },
        Vocab::Floret(_) => {
            return Err(Error::argument(
                "a FloretSubwordVocab cannot be written as fastText (.bin); floret models are not fastText models",
            ))
        }
    };
    words.verify_fst()?;
    for w in words.iter() {
        if w.is_empty() || w.bytes().any(|b| b == 0 || b.is_ascii_whitespace()) {
            return Err(Error::argument(format!(
                "the word {w:?} is empty or contains whitespace or NUL and cannot be written as fastText"
            )));
        }
    }
    let dims = emb.dims();
    let nwords = words.len();
    let to_i32 = |v: usize, what: &str| {
        i32::try_from(v).map_err(|_| Error::argument(format!("{what} {v} is too large for a fastText file")))
    };
    let mut args = FastTextArgs::from_metadata(emb.metadata.as_deref());
    args.dim = to_i32(dims, "dims")?;
    args.bucket = to_i32(bucket as usize, "bucket count")?;
    args.minn = minn as i32;
    args.maxn = maxn as i32;
    if !matches!(args.model, 1 | 2) {
        args.model = 2; // labels are not kept: write a skipgram model
    }
    if !matches!(args.loss, 1..=4) {
        args.loss = 2; // hs, ns, softmax and ova are kept (fastText loads each with a skipgram model)
    }
    let nwords_i32 = to_i32(nwords, "word count")?;
    // A model read from a pruned .ftz keeps rows for some buckets only: fastText reads a
    // pruned dictionary only with a quantized matrix (which is not written here), and an
    // unpruned copy would put the zero rows of the pruned buckets into its means.
    if is_pruned(emb) {
        return Err(Error::argument(
            "these embeddings come from a pruned fastText model (.ftz): fastText takes a pruned \
             dictionary only with a quantized matrix, which vecfusion does not write; write them \
             as finalfusion (which keeps the pruning for fasttext_vector), as text or as word2vec instead",
        ));
    }
    let rows = nwords + bucket as usize;
    // Which n-grams each stored word row was averaged with: finalfusion's conversion (its
    // metadata: top-level `model`, `loss`, `buckets`, `min_n`, `max_n`) used the vocabulary's
    // own for every word, `</s>` included; vecfusion's import and anything else fastText's
    // (none for `</s>`, no single `<`/`>`), so that fastText's vectors are the embeddings.
    let fasttext_import = !is_finalfusion_conversion(emb);

    write_atomically(path, |w| {
        w.write_all(&(FASTTEXT_MAGIC as i32).to_le_bytes())?;
        w.write_all(&(FASTTEXT_VERSION as i32).to_le_bytes())?;
        for v in args.ints() {
            w.write_all(&v.to_le_bytes())?;
        }
        w.write_all(&args.t.to_le_bytes())?;
        w.write_all(&nwords_i32.to_le_bytes())?; // size
        w.write_all(&nwords_i32.to_le_bytes())?; // nwords
        w.write_all(&0i32.to_le_bytes())?; // nlabels
        w.write_all(&(nwords as i64).to_le_bytes())?; // ntokens
        w.write_all(&(-1i64).to_le_bytes())?; // pruneidx_size
        for word in words.iter() {
            w.write_all(word.as_bytes())?;
            w.write_all(&[0])?;
            w.write_all(&1i64.to_le_bytes())?;
            w.write_all(&[0])?;
        }
        w.write_all(&[0])?; // not quantized
        w.write_all(&(rows as i64).to_le_bytes())?;
        w.write_all(&(dims as i64).to_le_bytes())?;
        // word rows: fastText's row = mean * (1 + k) - sum of its k n-gram rows
        const GROUP: usize = 8192;
        let mut start = 0;
        while start < nwords {
            let end = (start + GROUP).min(nwords);
            let mut block = vec![0f32; (end - start) * dims];
            if dims > 0 {
                block
                    .par_chunks_mut(dims)
                    .enumerate()
                    .with_min_len(64)
                    .try_for_each_init(<(Vec<usize>, UnmeanBuffers)>::default, |(idx, bufs), (k, row)| {
                        let i = start + k;
                        super::export_row_checked(emb, words, i, row, "fastText")?;
                        idx.clear();
                        let word = words.get(i).unwrap_or_default();
                        if fasttext_import {
                            fasttext_ngram_rows(word, minn, maxn, bucket, nwords, idx);
                        } else {
                            emb.vocab.push_subword_indices(word, idx);
                        }
                        let overflow = unmean_row(emb, row, idx, bufs, fasttext_import);
                        if let Some(x) = overflow {
                            return Err(Error::invalid(
                                "vectors",
                                format!(
                                    "the vector of {word:?} (row {i}) has no fastText input row whose mean with its \
                                     n-gram rows stays finite (the sum reaches {x}): fastText files hold finite \
                                     vectors only"
                                ),
                            ));
                        }
                        // (finite rows can sum past float32's range)
                        if let Some(x) = super::first_non_finite(row) {
                            return Err(Error::invalid(
                                "vectors",
                                format!(
                                    "the fastText input row of {word:?} (row {i}), its vector times {} less its \
                                     n-gram rows, holds {x}: fastText files hold finite numbers only",
                                    idx.len() + 1
                                ),
                            ));
                        }
                        Ok::<(), Error>(())
                    })
                    .map_err(std::io::Error::other)?;
            }
            write_f32s(w, &block)?;
            start = end;
        }
        // n-gram rows as they are
        let mut row = vec![0f32; dims];
        let mut bytes = Vec::with_capacity(dims * 4);
        for r in nwords..rows {
            if r % 4096 == 0 {
                crate::cancel::check_io()?;
            }
            emb.storage.row_into(r, &mut row);
            if let Some(x) = super::first_non_finite(&row) {
                return Err(std::io::Error::other(Error::invalid(
                    "vectors",
                    format!("n-gram row {} (row {r}) holds {x}: fastText files hold finite numbers only", r - nwords),
                )));
            }
            bytes.clear();
            for x in &row {
                bytes.extend_from_slice(&x.to_le_bytes());
            }
            w.write_all(&bytes)?;
        }
        // output matrix: zeros, nwords x dims (its shape for skipgram/cbow)
        w.write_all(&[0])?;
        w.write_all(&(nwords as i64).to_le_bytes())?;
        w.write_all(&(dims as i64).to_le_bytes())?;
        let zeros = vec![0u8; 1 << 20];
        let mut left = (nwords as u64) * (dims as u64) * 4;
        while left > 0 {
            crate::cancel::check_io()?;
            let k = left.min(zeros.len() as u64) as usize;
            w.write_all(&zeros[..k])?;
            left -= k as u64;
        }
        Ok(())
    })
}

fn write_f32s<W: Write>(w: &mut W, v: &[f32]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(v.len().min(1 << 16) * 4);
    for c in v.chunks(1 << 16) {
        crate::cancel::check_io()?;
        bytes.clear();
        for x in c {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        w.write_all(&bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_own_value_is_found_for_every_mean_that_has_one() {
        // means of an own value with n-gram values far larger or smaller than it, started
        // from estimates off by many ulps: the value found gives the mean back exactly
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        };
        for case in 0..2000 {
            let k = 1 + case % 40;
            let scale = [1e-4f32, 1.0, 1e3][case % 3];
            let grams: Vec<f32> = (0..k).map(|_| rnd() * scale).collect();
            let w = rnd() * [1e-3f32, 1.0, 10.0][(case / 3) % 3];
            let inv = 1.0 / (k + 1) as f32;
            let mean = |w: f32| grams.iter().fold(w, |s, g| s + g) * inv;
            let target = mean(w);
            let estimate = ((f64::from(target) * (k + 1) as f64) - grams.iter().map(|&g| f64::from(g)).sum::<f64>()) as f32;
            let start = f32::from_bits(estimate.to_bits().wrapping_add((case % 7) as u32 * 3));
            let found = own_value_for_mean(start, target, 1, mean).expect("w itself gives the target");
            assert_eq!(mean(found), target, "case {case}");
        }
        // a target no value gives: None
        assert_eq!(own_value_for_mean(1.0, 0.75, 1, |w| (w * 4.0).round() / 4.0 + 0.1), None);
        // near float32's limit (an estimate past it, a step past it) and far from the start
        let grams = [0.0f32, 0.0];
        let mean = |w: f32| grams.iter().fold(0.0 + w, |s, g| s + g) * (1.0 / 3.0f32);
        let t = mean(f32::MAX);
        let below = f32::from_bits(f32::MAX.to_bits() - 5);
        assert_eq!(own_value_for_mean(below, t, 8, mean).map(mean), Some(t));
        assert_eq!(own_value_for_mean(f32::INFINITY, t, 1, mean).map(mean), Some(t));
        let ones = |w: f32| [1.0f32; 3].iter().fold(0.0 + w, |s, g| s + g) * 0.25;
        assert_eq!(own_value_for_mean(f32::MIN_POSITIVE, 1e30, 1, ones).map(ones), Some(1e30));
        // signed zeros are told apart: a +0 target is not met by a -0 mean
        let tiny = |w: f32| (0.0 + w + 1e-40) * 0.5;
        let w = own_value_for_mean(0.0, 0.0, 1, tiny).expect("some w gives +0");
        assert_eq!(tiny(w).to_bits(), 0.0f32.to_bits());
    }

    #[test]
    fn ngrams_in_fasttext_order() {
        let mut got = Vec::new();
        for_each_fasttext_ngram("vim", 3, 6, |g| got.push(g.to_string()));
        assert_eq!(got, ["<vi", "<vim", "<vim>", "vim", "vim>", "im>"]);
        got.clear();
        for_each_fasttext_ngram("ab", 1, 2, |g| got.push(g.to_string()));
        // single '<' and '>' are left out
        assert_eq!(got, ["<a", "a", "ab", "b", "b>"]);
        got.clear();
        for_each_fasttext_ngram(EOS, 3, 6, |g| got.push(g.to_string()));
        assert!(got.is_empty());
    }

    #[test]
    fn hash_matches_vocab_hash() {
        for g in ["<vi", "über", "日本>", "a"] {
            assert_eq!(fasttext_hash_bytes(g.as_bytes()), crate::vocab::subword::fasttext_hash(g));
        }
    }
}
