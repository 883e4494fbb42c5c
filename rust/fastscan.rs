//! A fast filter in front of the exact scan of product-quantized rows ("fast scan").
//!
//! The exact score of a row is `norm * sum_m T[m][code[m]]` (see [`crate::query::adc_score`]), one float
//! gather per subquantizer. Here each query's float table `T` (`m x k`) is also quantized
//! to bytes: with `min_m = min_c T[m][c]` and one step `s = max_m (max_c - min_c) / 127`,
//! `Q[m][c] = round((T[m][c] - min_m) / s)`. Then, in exact arithmetic,
//!
//! ```text
//! sum_m T[m][c_m] <= base + s * sum_m Q[m][c_m] + err,   base = sum_m min_m,
//!                                                        err  = sum_m max_c |T - min_m - s Q|
//! ```
//!
//! and a margin of `1e-4 * sum_m max_c |T[m][c]|` covers the float rounding of the exact
//! sum (at most about `m * 2^-24` of that). A row can only enter a query's top-k if its
//! score reaches the heap's threshold `tau`; rows whose byte sum is below the matching
//! 16-bit threshold cannot, and are dropped. The others are scored by the exact code and
//! offered as before, so the answers (rows and score bits) are exactly those of the exact
//! scan.
//!
//! The byte sums use AVX-512 VBMI: 64 rows at a time, their codes are transposed (a 64 x 64
//! byte transpose in registers: register `m` holds code `m` of the 64 rows), each code
//! register is looked up in the 256-byte table of its subquantizer (two `vpermt2b` and a
//! blend on the top bit) and added into 16-bit sums. In a batch each block of rows is
//! transposed once and then scanned by every query (the transposed block stays in L1).
//! Without AVX-512F/BW/VBMI, with more than 257 subquantizers (the sums would not fit 16
//! bits) or with non-finite tables, [`Plan::new`] gives `None` and the exact scan runs.
//! `VECFUSION_FASTSCAN=off` turns the filter off (for comparisons).

// `!(a >= b)` is deliberate: it is also true for NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use crate::query::TopK;
use crate::storage::QuantizedStorage;

/// The largest byte-table entry: two entries add exactly in a byte, so the lookups of two
/// subquantizers are added before they are widened to 16 bits.
const LEVELS: u8 = 127;
/// Most subquantizers whose byte sums fit 16 bits (`257 * 127 < 65535`).
const MAX_SUBQUANTIZERS: usize = 257;
/// Rows per block: one transposed byte register.
const ROWS: usize = 64;
/// Blocks scanned together (their 16-bit sums stay in registers): 512 rows.
const BLOCKS: usize = 8;
/// Rows ahead of the block being transposed whose codes are prefetched.
const PREFETCH: usize = 2048;

/// The filter's per-query data: byte tables and the constants of the bound.
pub(crate) struct Plan {
    m: usize,
    kc: usize,
    /// `nq x m x 256` bytes (entries past `kc` are never read).
    tables8: Vec<u8>,
    bounds: Vec<Bound>,
}

/// `sum_m T[m][c_m] <= base + s * sum_m Q[m][c_m] + slack` for every code.
#[derive(Clone, Copy, Debug)]
struct Bound {
    base: f64,
    inv_s: f64,
    slack: f64,
    /// The table is (nearly) constant: no filtering.
    pass_all: bool,
}

impl Bound {
    /// The smallest byte sum a row needs to possibly score `>= tau`: every row with a
    /// lower sum scores below `tau`. `norm_max` is the largest norm of the rows (all `>= 0`)
    /// when the storage has norms.
    fn u16_threshold(&self, tau: f32, norm_max: Option<f32>) -> u16 {
        if self.pass_all {
            return 0;
        }
        let mut t = f64::from(tau);
        if let Some(n) = norm_max {
            // score = fl(sum * norm) <= sum * n_max * (1 + 2^-24) when sum > 0, and <= 0
            // otherwise: only rows with sum >= tau / (n_max (1 + 1e-6)) can reach tau > 0.
            if !(t > 0.0) {
                return 0;
            }
            t /= f64::from(n) * (1.0 + 1e-6);
        }
        // rows with base + s U + slack < t are out: U < x
        let x = (t - self.base - self.slack) * self.inv_s;
        if !(x >= 1.0) {
            0 // also NaN (tau = -inf before the heap is full)
        } else if x >= 65535.0 {
            65535
        } else {
            x as u16 // floor: conservative
        }
    }

    /// Quantize one query's float table (`m x kc`, rows of `kc`) into `out` (`m x 256`). `None` when the
    /// table holds a non-finite or huge value.
    fn quantize(table: &[f32], kc: usize, out: &mut [u8]) -> Option<Bound> {
        let mut base = 0f64;
        let mut magnitude = 0f64;
        let mut range = 0f64;
        for row in table.chunks_exact(kc) {
            let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
            for &v in row {
                if !v.is_finite() {
                    return None;
                }
                lo = lo.min(f64::from(v));
                hi = hi.max(f64::from(v));
            }
            base += lo;
            magnitude += lo.abs().max(hi.abs());
            range = range.max(hi - lo);
        }
        if !(magnitude < 1e30) {
            return None;
        }
        let s = range / f64::from(LEVELS);
        // the rounding of the exact float sum (<= ~m 2^-24 of `magnitude`) and more
        let margin = 1e-4 * magnitude + 1e-30;
        if !(s > 1e-30) {
            out.fill(0);
            return Some(Bound {
                base,
                inv_s: 0.0,
                slack: margin,
                pass_all: true,
            });
        }
        let mut err = 0f64;
        for (row, dst) in table.chunks_exact(kc).zip(out.chunks_exact_mut(256)) {
            let lo = row.iter().fold(f64::INFINITY, |a, &v| a.min(f64::from(v)));
            let mut worst = 0f64;
            for (o, &v) in dst.iter_mut().zip(row) {
                let d = f64::from(v) - lo;
                let q = (d / s).round().clamp(0.0, f64::from(LEVELS));
                *o = q as u8;
                worst = worst.max((d - s * q).abs());
            }
            dst[kc..].fill(LEVELS);
            err += worst;
        }
        Some(Bound {
            base,
            inv_s: 1.0 / s,
            slack: err + margin,
            pass_all: false,
        })
    }
}

/// The largest norm of a block's rows, or `None` if one is negative or NaN (then the
/// block is not filtered).
fn block_norm(norms: &[f32]) -> Option<f32> {
    let mut max = 0f32;
    for &n in norms {
        if !(n >= 0.0) {
            return None;
        }
        max = max.max(n);
    }
    Some(max)
}

/// Whether this CPU runs the filter (and it is not turned off).
fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        let off = std::env::var("VECFUSION_FASTSCAN").is_ok_and(|v| v == "off" || v == "0");
        !off && cpu_supported()
    })
}

/// Whether the CPU has the instructions of the filter's kernels (AVX-512 F, BW and VBMI).
fn cpu_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vbmi")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl Plan {
    /// The filter for the `nq` float tables `tables` (`nq x m x k`) of `q`, or `None` when
    /// it cannot run (CPU, shape or values): then use the exact scan.
    pub(crate) fn new(q: &QuantizedStorage, tables: &[f32], nq: usize) -> Option<Plan> {
        if !available() {
            return None;
        }
        Plan::build(q, tables, nq)
    }

    fn build(q: &QuantizedStorage, tables: &[f32], nq: usize) -> Option<Plan> {
        let (m, kc) = (q.n_subquantizers(), q.n_centroids());
        if m == 0 || m > MAX_SUBQUANTIZERS || kc == 0 || kc > 256 || tables.len() != nq * m * kc {
            return None;
        }
        let mut tables8 = vec![0u8; nq * m * 256];
        let mut bounds = Vec::with_capacity(nq);
        for (t, out) in tables.chunks_exact(m * kc).zip(tables8.chunks_exact_mut(m * 256)) {
            bounds.push(Bound::quantize(t, kc, out)?);
        }
        Some(Plan { m, kc, tables8, bounds })
    }

    /// Score rows `start..end` of `q` against every query (`tables` as given to
    /// [`Plan::new`], one [`TopK`] per query): exactly what the exact scan gives.
    pub(crate) fn scan(&self, q: &QuantizedStorage, start: usize, end: usize, tables: &[f32], tops: &mut [TopK<'_>]) {
        assert_eq!(tops.len(), self.bounds.len());
        assert_eq!(q.n_subquantizers(), self.m);
        assert_eq!(q.n_centroids(), self.kc);
        assert!(end <= q.rows() && start <= end);
        #[cfg(target_arch = "x86_64")]
        {
            let wide = self.kc > 128;
            // SAFETY: a Plan is only made (Plan::new) when the CPU has AVX-512F, BW and
            // VBMI; the tests that call Plan::build check `available()` first.
            unsafe {
                if wide {
                    x86::scan::<true>(self, q, start, end, tables, tops);
                } else {
                    x86::scan::<false>(self, q, start, end, tables, tops);
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (start, end, tables);
            unreachable!("no fast scan on this architecture");
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Rows scored exactly by this thread (to check that the filter filters).
    static RESCORED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{block_norm, Plan, BLOCKS, PREFETCH, ROWS};
    use crate::query::{adc_score, TopK};
    use crate::storage::QuantizedStorage;
    use std::arch::x86_64::*;

    /// One 64-byte register's worth of memory, aligned for aligned loads and stores.
    #[derive(Clone, Copy)]
    #[repr(C, align(64))]
    pub(super) struct Z(pub(super) [u8; 64]);

    /// Transpose the codes of 64 rows (`src[r * m..r * m + m]`, row `r < 64`) into `dst`
    /// (`m` registers): byte `r` of `dst[s]` is code `s` of row `r`.
    ///
    /// Register `i` starts as row `i`; 6 stages, each swapping one bit of the register
    /// number with the same bit of the byte lane, transpose the 64 x 64 bytes. The stages
    /// of bits 32 and 16 are done by the loads (register `i`'s 16-byte chunk `c` is row
    /// `(i & 15) | (c << 4)`, bytes `16 ((i >> 4) & 3)..`), the stages 8, 4, 2 and 1 by
    /// [`rounds`] (four rounds of byte unpacks). These only mix registers with the same `i >> 4`, so they run
    /// on groups of 16 registers (held in registers), and groups without a wanted output
    /// are skipped.
    ///
    /// # Safety
    /// Only call on a CPU with AVX-512F, BW and VBMI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(super) unsafe fn transpose(src: &[u8], m: usize, dst: &mut [Z]) {
        let tiles = m.div_ceil(64);
        assert!(dst.len() >= m);
        // the last byte read: row 63, tile `tiles - 1`, byte 63 of the tile
        assert!(src.len() >= 63 * m + 64 * tiles);
        let p = src.as_ptr();
        for t in 0..tiles {
            for g in 0..4 {
                let first = 64 * t + 16 * g;
                if first >= m {
                    break;
                }
                let want = (m - first).min(16);
                // SAFETY: forwarded (features); `group` reads 16 bytes at `row * m + first`
                // with `row < 64` and `first + 16 <= 64 * tiles`, within `src` (length
                // checked above), and writes `dst[first..first + want]`.
                unsafe {
                    let (p, d) = (p.add(first), dst[first..first + want].as_mut_ptr());
                    match want {
                        1 => group::<1>(p, m, d),
                        2 => group::<2>(p, m, d),
                        3 => group::<3>(p, m, d),
                        4 => group::<4>(p, m, d),
                        5 => group::<5>(p, m, d),
                        6 => group::<6>(p, m, d),
                        7 => group::<7>(p, m, d),
                        8 => group::<8>(p, m, d),
                        9 => group::<9>(p, m, d),
                        10 => group::<10>(p, m, d),
                        11 => group::<11>(p, m, d),
                        12 => group::<12>(p, m, d),
                        13 => group::<13>(p, m, d),
                        14 => group::<14>(p, m, d),
                        15 => group::<15>(p, m, d),
                        _ => group::<16>(p, m, d),
                    }
                }
            }
        }
    }

    /// Sixteen copies of `body` with `i` bound to 0, 1, ..., 15 (unrolled for certain).
    macro_rules! for16 {
        ($i:ident in $body:block) => {
            for16!(@ $i $body; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15)
        };
        (@ $i:ident $body:block; $($n:literal)*) => {
            $({
                let $i: usize = $n;
                $body
            })*
        };
    }

    /// One group of the transpose: the 16 columns from `p` (row `r` at `p + r * m`) of 64
    /// rows, of which the first `WANT` are written to `dst[0..WANT]`.
    ///
    /// # Safety
    /// Only call on a CPU with AVX-512F, BW and VBMI; 16 bytes are read at `p + r * m`
    /// for `r < 64`; `dst` holds `WANT` registers.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    #[inline]
    unsafe fn group<const WANT: usize>(p: *const u8, m: usize, dst: *mut Z) {
        let mut r = [_mm512_setzero_si512(); 16];
        // SAFETY: the loads are in bounds (the caller's contract).
        unsafe {
            for16!(j in {
                let at = |c: usize| _mm_loadu_si128(p.add((j | (c << 4)) * m) as *const __m128i);
                let v = _mm512_castsi128_si512(at(0));
                let v = _mm512_inserti32x4::<1>(v, at(1));
                let v = _mm512_inserti32x4::<2>(v, at(2));
                r[j] = _mm512_inserti32x4::<3>(v, at(3));
            });
        }
        let need = const { needed(WANT) };
        macro_rules! round {
            ($k:literal) => {
                let b = 8usize >> $k;
                let out = need[$k + 1];
                for16!(i in {
                    if i & b == 0 {
                        let (x, y) = (r[i], r[i | b]);
                        if out >> i & 1 != 0 {
                            r[i] = _mm512_unpacklo_epi8(x, y);
                        }
                        if out >> (i | b) & 1 != 0 {
                            r[i | b] = _mm512_unpackhi_epi8(x, y);
                        }
                    }
                });
            };
        }
        round!(0);
        round!(1);
        round!(2);
        round!(3);
        for16!(o in {
            if o < WANT {
                // SAFETY: `dst` holds `WANT` aligned registers (the caller's contract).
                unsafe { _mm512_store_si512(dst.add(o).cast(), r[o]) };
            }
        });
    }

    /// The registers needed after each round (bit masks) for the first `want` outputs.
    const fn needed(want: usize) -> [u32; 5] {
        let mut need = [0u32; 5];
        need[4] = (1u32 << want) - 1;
        let mut k = 4;
        while k > 0 {
            k -= 1;
            let b = 8 >> k;
            let mut i = 0;
            while i < 16 {
                if need[k + 1] >> i & 1 != 0 {
                    need[k] |= 1 << (i & !b) | 1 << (i | b);
                }
                i += 1;
            }
        }
        need
    }

    /// The byte-table sums of `BLOCKS` transposed blocks (`trans[b * m + s]`: code `s` of
    /// block `b`) with one query's byte table `t8` (`m x 256`): for block `b`, the sums of
    /// its even rows (16-bit lanes `j`: row `2j`) and of its odd rows (row `2j + 1`).
    /// `WIDE`: codes up to 255 (else below 128).
    ///
    /// # Safety
    /// Only call on a CPU with AVX-512F, BW and VBMI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(super) unsafe fn sums<const WIDE: bool>(t8: &[u8], trans: &[Z], m: usize) -> [(__m512i, __m512i); BLOCKS] {
        let t8 = &t8[..m * 256];
        let trans = &trans[..BLOCKS * m];
        // SAFETY: the features are enabled; table loads read `t8[s * 256..s * 256 + 256]`
        // and code loads `trans[b * m + s]` (aligned), with `s < m`, `b < BLOCKS` (lengths
        // checked above).
        unsafe {
            let (tp, cp) = (t8.as_ptr(), trans.as_ptr());
            let mut all = [_mm512_setzero_si512(); BLOCKS];
            let mut odd = [_mm512_setzero_si512(); BLOCKS];
            let tables = |s: usize| {
                let t = tp.add(s * 256);
                let t0 = _mm512_loadu_si512(t.cast());
                let t1 = _mm512_loadu_si512(t.add(64).cast());
                if WIDE {
                    (t0, t1, _mm512_loadu_si512(t.add(128).cast()), _mm512_loadu_si512(t.add(192).cast()))
                } else {
                    (t0, t1, t0, t1)
                }
            };
            macro_rules! look {
                ($t:expr, $idx:expr) => {{
                    let (t0, t1, t2, t3) = $t;
                    let idx = $idx;
                    let v = _mm512_permutex2var_epi8(t0, idx, t1);
                    if WIDE {
                        let high = _mm512_permutex2var_epi8(t2, idx, t3);
                        _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), v, high)
                    } else {
                        v
                    }
                }};
            }
            // two subquantizers at a time: their entries (<= 127) add exactly in a byte
            for s in (0..m).step_by(2) {
                let pair = s + 1 < m;
                let ta = tables(s);
                let tb = if pair { tables(s + 1) } else { ta };
                for b in 0..BLOCKS {
                    let mut v = look!(ta, _mm512_load_si512(cp.add(b * m + s).cast()));
                    if pair {
                        v = _mm512_add_epi8(v, look!(tb, _mm512_load_si512(cp.add(b * m + s + 1).cast())));
                    }
                    // `all` adds whole 16-bit lanes (even byte + 256 x odd byte, mod 2^16)
                    all[b] = _mm512_add_epi16(all[b], v);
                    odd[b] = _mm512_add_epi16(odd[b], _mm512_srli_epi16::<8>(v));
                }
            }
            // even sums (< 2^16) = all - 256 odd, mod 2^16
            std::array::from_fn(|b| (_mm512_sub_epi16(all[b], _mm512_slli_epi16::<8>(odd[b])), odd[b]))
        }
    }

    /// See [`Plan::scan`].
    ///
    /// # Safety
    /// Only call on a CPU with AVX-512F, BW and VBMI; `WIDE` unless every code is below 128.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(super) unsafe fn scan<const WIDE: bool>(
        plan: &Plan,
        q: &QuantizedStorage,
        start: usize,
        end: usize,
        tables: &[f32],
        tops: &mut [TopK<'_>],
    ) {
        let (m, kc) = (plan.m, plan.kc);
        let per = m * kc;
        let codes = q.codes();
        let norms = q.norms();
        let mut trans = vec![Z([0; 64]); BLOCKS * m];
        let mut pad: Vec<u8> = Vec::new();
        let mut c0 = start;
        while c0 < end {
            let mut valid = [0u64; BLOCKS];
            let mut norm_max = [None; BLOCKS];
            for (b, dst) in trans.chunks_exact_mut(m).enumerate() {
                let r0 = c0 + b * ROWS;
                if r0 >= end {
                    dst.fill(Z([0; 64]));
                    continue;
                }
                let rows = (end - r0).min(ROWS);
                // the codes of the block `PREFETCH` rows ahead, towards L1
                let ahead = r0 + PREFETCH;
                if ahead < end {
                    let to = ((ahead + ROWS) * m).min(codes.len());
                    for at in (ahead * m..to).step_by(64) {
                        // SAFETY: `at < codes.len()`; a prefetch reads nothing.
                        unsafe { _mm_prefetch::<_MM_HINT_T0>(codes.as_ptr().add(at).cast()) };
                    }
                }
                valid[b] = if rows == ROWS { !0 } else { (1u64 << rows) - 1 };
                // 64 rows and 64 bytes more from the first code: in place when the codes
                // hold them, else from a zero-padded copy.
                let src = if (r0 + ROWS) * m + 64 <= codes.len() {
                    &codes[r0 * m..]
                } else {
                    pad.clear();
                    pad.extend_from_slice(&codes[r0 * m..(r0 + rows) * m]);
                    pad.resize(ROWS * m + 64, 0);
                    &pad[..]
                };
                // SAFETY: forwarded from the caller.
                unsafe { transpose(src, m, dst) };
                if let Some(n) = norms {
                    norm_max[b] = block_norm(&n[r0..r0 + rows]);
                }
            }
            for (qi, top) in tops.iter_mut().enumerate() {
                let bound = &plan.bounds[qi];
                let table = &tables[qi * per..(qi + 1) * per];
                // SAFETY: forwarded from the caller.
                let sums = unsafe { sums::<WIDE>(&plan.tables8[qi * m * 256..(qi + 1) * m * 256], &trans, m) };
                for (b, &(even, odd)) in sums.iter().enumerate() {
                    if valid[b] == 0 {
                        continue;
                    }
                    let tau = top.threshold();
                    let thr = match (norms, norm_max[b]) {
                        (None, _) => bound.u16_threshold(tau, None),
                        (Some(_), Some(n)) => bound.u16_threshold(tau, Some(n)),
                        (Some(_), None) => 0,
                    };
                    let r0 = c0 + b * ROWS;
                    let mut offer = |lane: usize| {
                        let row = r0 + lane;
                        let mut score = adc_score(&codes[row * m..(row + 1) * m], table, kc);
                        if let Some(n) = norms {
                            score *= n[row];
                        }
                        #[cfg(test)]
                        super::RESCORED.with(|c| c.set(c.get() + 1));
                        top.offer(row, score);
                    };
                    if thr == 0 {
                        let mut mask = valid[b];
                        while mask != 0 {
                            offer(mask.trailing_zeros() as usize);
                            mask &= mask - 1;
                        }
                        continue;
                    }
                    let t = _mm512_set1_epi16(thr as i16);
                    let (me, mo) = (_mm512_cmpge_epu16_mask(even, t), _mm512_cmpge_epu16_mask(odd, t));
                    let mut me = u64::from(me);
                    while me != 0 {
                        let lane = 2 * me.trailing_zeros() as usize;
                        if valid[b] >> lane & 1 != 0 {
                            offer(lane);
                        }
                        me &= me - 1;
                    }
                    let mut mo = u64::from(mo);
                    while mo != 0 {
                        let lane = 2 * mo.trailing_zeros() as usize + 1;
                        if valid[b] >> lane & 1 != 0 {
                            offer(lane);
                        }
                        mo &= mo - 1;
                    }
                }
            }
            c0 += BLOCKS * ROWS;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embeddings::Embeddings;
    use crate::query::{adc_score, lookup_tables, scan_quantized, Neighbor};
    use crate::storage::{Storage, U8Data};
    use crate::vocab::{Vocab, WordList};
    use std::sync::Arc;

    /// xorshift64*
    struct Rng(u64);
    impl Rng {
        fn u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.u64() >> 33) as usize % n
        }
        /// In [-1, 1).
        fn f32(&mut self) -> f32 {
            ((self.u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.f32()).collect()
        }
    }

    #[test]
    fn bound_holds_for_every_code_and_thresholds_are_conservative() {
        let mut rng = Rng(3);
        for (m, kc) in [(1, 1), (3, 16), (50, 256), (257, 256)] {
            let table = rng.vec(m * kc);
            let mut t8 = vec![0u8; m * 256];
            let b = Bound::quantize(&table, kc, &mut t8).unwrap();
            assert!(!b.pass_all || kc == 1);
            for _ in 0..200 {
                let code: Vec<u8> = (0..m).map(|_| rng.below(kc) as u8).collect();
                let exact: f64 = code.iter().enumerate().map(|(s, &c)| f64::from(table[s * kc + usize::from(c)])).sum();
                let u: u32 = code.iter().enumerate().map(|(s, &c)| u32::from(t8[s * 256 + usize::from(c)])).sum();
                let f = adc_score(&code, &table, kc);
                if b.pass_all {
                    continue;
                }
                let ub = b.base + f64::from(u) / b.inv_s + b.slack;
                assert!(exact <= ub && f64::from(f) <= ub, "{exact} {f} {ub}");
                // a row whose score reaches tau passes the u16 threshold, with and without norms
                for tau in [f - 1e-3, f, f + 1e-7, f.next_up()] {
                    if f >= tau {
                        assert!(u >= u32::from(b.u16_threshold(tau, None)));
                    }
                    for n in [0.0f32, 0.5, 1.0, 3.0] {
                        if f * n >= tau {
                            assert!(u >= u32::from(b.u16_threshold(tau, Some(n.max(0.25)))));
                        }
                    }
                }
            }
            // the bound is tight enough to filter: a threshold above the largest score
            // rejects every row
            let best: f32 = table.chunks_exact(kc).map(|r| r.iter().cloned().fold(f32::MIN, f32::max)).sum();
            if !b.pass_all {
                let worst: f32 = table.chunks_exact(kc).map(|r| r.iter().cloned().fold(f32::MAX, f32::min)).sum();
                let thr = b.u16_threshold(best + 0.05 * (best - worst).abs() + 0.01, None);
                assert!(usize::from(thr) > usize::from(LEVELS) * m / 2, "m {m}: {thr}");
            }
        }
        // constant tables and non-finite values
        let mut t8 = vec![0u8; 2 * 256];
        assert!(Bound::quantize(&[0.5; 8], 4, &mut t8).unwrap().pass_all);
        assert!(Bound::quantize(&[0.5, f32::NAN, 0.0, 1.0], 2, &mut t8).is_none());
        assert!(Bound::quantize(&[0.5, f32::INFINITY, 0.0, 1.0], 2, &mut t8).is_none());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn transpose_and_byte_sums_match_scalar() {
        if !cpu_supported() {
            return;
        }
        let mut rng = Rng(11);
        for m in [1, 3, 16, 50, 63, 64, 65, 75, 130, 257] {
            let src: Vec<u8> = (0..64 * m + 64).map(|_| rng.u64() as u8).collect();
            let mut trans = vec![x86::Z([0; 64]); BLOCKS * m];
            for b in 0..BLOCKS {
                // SAFETY: the CPU has the features (checked above).
                unsafe { x86::transpose(&src[..63 * m + 64 * m.div_ceil(64)], m, &mut trans[b * m..(b + 1) * m]) };
            }
            for s in 0..m {
                for r in 0..64 {
                    assert_eq!(trans[s].0[r], src[r * m + s], "m {m}, code {s}, row {r}");
                }
            }
            for wide in [false, true] {
                let t8: Vec<u8> = (0..m * 256)
                    .map(|i| if m == 257 && i % 7 == 0 { LEVELS } else { rng.u64() as u8 & LEVELS })
                    .collect();
                // codes below 128 for the narrow lookup
                let mut blocks = trans.clone();
                if !wide {
                    for z in &mut blocks {
                        for x in &mut z.0 {
                            *x &= 127;
                        }
                    }
                }
                // SAFETY: as above.
                let sums = unsafe {
                    if wide {
                        x86::sums::<true>(&t8, &blocks, m)
                    } else {
                        x86::sums::<false>(&t8, &blocks, m)
                    }
                };
                for (b, (even, odd)) in sums.iter().enumerate() {
                    let (mut e, mut o) = ([0u16; 32], [0u16; 32]);
                    // SAFETY: as above; 32 u16 lanes each.
                    unsafe {
                        std::arch::x86_64::_mm512_storeu_si512(e.as_mut_ptr().cast(), *even);
                        std::arch::x86_64::_mm512_storeu_si512(o.as_mut_ptr().cast(), *odd);
                    }
                    for r in 0..64 {
                        let want: u32 =
                            (0..m).map(|s| u32::from(t8[s * 256 + usize::from(blocks[b * m + s].0[r])])).sum();
                        let got = if r % 2 == 0 { e[r / 2] } else { o[r / 2] };
                        assert_eq!(u32::from(got), want, "m {m}, wide {wide}, block {b}, row {r}");
                    }
                }
            }
        }
    }

    fn words(n: usize) -> WordList {
        let w: Vec<String> = (0..n).map(|i| format!("w{i:06}")).collect();
        WordList::new(w.iter().map(String::as_str)).unwrap()
    }

    /// A random storage; about a quarter of the rows repeat an earlier row's codes (and
    /// norm), so exact ties occur.
    fn storage(n: usize, d: usize, m: usize, k: usize, proj: bool, norms: bool, seed: u64) -> QuantizedStorage {
        let mut rng = Rng(seed);
        let projection = proj.then(|| rng.vec(d * d));
        let centroids = rng.vec(m * k * (d / m));
        let mut codes: Vec<u8> = (0..n * m).map(|_| rng.below(k) as u8).collect();
        let mut nrm: Vec<f32> = (0..n).map(|_| 0.5 + rng.f32().abs() * 2.0).collect();
        for i in 1..n {
            if rng.below(4) == 0 {
                let j = rng.below(i);
                codes.copy_within(j * m..(j + 1) * m, i * m);
                nrm[i] = nrm[j];
            }
        }
        QuantizedStorage::new(projection, centroids, norms.then_some(nrm), U8Data::Owned(Arc::new(codes)), n, d, m, k)
            .unwrap()
    }

    /// Every row's exact score, best first (ties: the lower word, here the lower row).
    fn brute_force(q: &QuantizedStorage, table: &[f32], k: usize) -> Vec<(usize, u32)> {
        let (m, kc) = (q.n_subquantizers(), q.n_centroids());
        let mut all: Vec<(usize, f32)> = (0..q.rows())
            .map(|i| {
                let mut s = adc_score(&q.codes()[i * m..(i + 1) * m], table, kc);
                if let Some(n) = q.norms() {
                    s *= n[i];
                }
                (i, s)
            })
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        all.into_iter().map(|(i, s)| (i, s.to_bits())).collect()
    }

    fn bits(v: &[Neighbor]) -> Vec<(usize, u32)> {
        v.iter().map(|n| (n.index, n.score.to_bits())).collect()
    }

    #[test]
    fn filtered_scan_is_exactly_the_exact_scan() {
        if !cpu_supported() {
            return;
        }
        let mut case = 0u64;
        for (n, d, m, kc) in [
            (200, 4, 1, 16),
            (777, 6, 3, 256),
            (5000, 50, 50, 256),
            (3001, 64, 64, 16),
            (1500, 75, 75, 256),
            (700, 150, 75, 16),
        ] {
            for (proj, nrm) in [(false, false), (true, true), (false, true)] {
                case += 1;
                let q = storage(n, d, m, kc, proj, nrm, case);
                let wl = words(n);
                let nq = 4;
                let queries: Vec<f32> = Rng(100 + case).vec(nq * d);
                let tables = lookup_tables(&q, &queries, nq);
                let plan = Plan::build(&q, &tables, nq).unwrap();
                for k in [1, 10, n] {
                    let new = || (0..nq).map(|_| TopK::new(k, &wl, &[])).collect::<Vec<_>>();
                    let mut exact = new();
                    scan_quantized(&q, 0, n, &tables, &mut exact);
                    let mut fast = new();
                    RESCORED.with(|c| c.set(0));
                    // in two ranges, as the parallel scan splits rows
                    let cut = (n / 3) | 1;
                    plan.scan(&q, 0, cut, &tables, &mut fast);
                    plan.scan(&q, cut, n, &tables, &mut fast);
                    let rescored = RESCORED.with(|c| c.get());
                    if k == 10 && n >= 3000 {
                        assert!(rescored < nq * n / 4, "the filter passed {rescored} of {} rows", nq * n);
                    }
                    // one query at a time gives the same
                    for (j, (e, f)) in exact.into_iter().zip(fast).enumerate() {
                        let (e, f) = (bits(&e.into_sorted()), bits(&f.into_sorted()));
                        assert_eq!(e, f, "n {n} m {m} kc {kc} proj {proj} norms {nrm} k {k} query {j}");
                        let table = &tables[j * m * kc..(j + 1) * m * kc];
                        assert_eq!(f, brute_force(&q, table, k), "brute force, query {j}");
                        let mut single = vec![TopK::new(k, &wl, &[])];
                        let one = Plan::build(&q, table, 1).unwrap();
                        one.scan(&q, 0, n, table, &mut single);
                        assert_eq!(bits(&single.pop().unwrap().into_sorted()), f, "single query {j}");
                    }
                }
            }
        }
    }

    #[test]
    fn public_queries_agree_with_brute_force() {
        if !cpu_supported() {
            return;
        }
        // large enough for the parallel scan; n not a multiple of 64
        let (n, d, m, kc) = (70_001, 32, 16, 256);
        for nrm in [false, true] {
            let q = storage(n, d, m, kc, false, nrm, 9);
            let emb = Embeddings::new(None, Vocab::Simple(words(n)), Storage::Quantized(q.clone()), None).unwrap();
            let nq = 5;
            let queries = Rng(5).vec(nq * d);
            let (mut idx, mut sc) = (vec![0i64; nq * 10], vec![0f32; nq * 10]);
            emb.similar_batch_into(&queries, nq, 10, &mut idx, &mut sc).unwrap();
            for j in 0..nq {
                let single = emb.similar_to_vector(&queries[j * d..(j + 1) * d], 10, &[]).unwrap();
                let mut unit = queries[j * d..(j + 1) * d].to_vec();
                crate::embeddings::l2_normalize(&mut unit);
                let table = lookup_tables(&q, &unit, 1);
                let want = brute_force(&q, &table, 10);
                assert_eq!(bits(&single), want);
                let got: Vec<(usize, u32)> =
                    (0..10).map(|p| (idx[j * 10 + p] as usize, sc[j * 10 + p].to_bits())).collect();
                assert_eq!(got, want);
            }
        }
    }
}
