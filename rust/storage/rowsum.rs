//! Sums of a few dozen scattered rows: an unknown word's n-gram rows, the projected-centroid
//! rows of one quantized row. Both are bound by how many cache lines are in flight, not by
//! the additions.
//!
//! With AVX-512 a whole row of up to 384 columns fits in the accumulator registers, so the
//! rows are read one after another, each from its first line to its last: the L2 streamer
//! follows every row, and the next rows are prefetched while one is added. Without AVX-512
//! the rows are taken a 64-column block at a time (8 AVX registers). Every element gets the
//! same additions in the same order on every path, so the results are the same bits.

/// `out[j] += scale · (rows[0][j] + rows[1][j] + ...)` (the sum taken first, from zero,
/// one row after another; with `scale == 1.0` the product changes nothing).
///
/// Every row holds at least `out.len()` values.
pub fn add_scaled_sum(out: &mut [f32], rows: &[&[f32]], scale: f32) {
    add(out, rows, Mode::Scaled(scale));
}

/// `out[j] = (((out[j] + rows[0][j]) + rows[1][j]) + ...)`: the rows added to `out` one
/// after another. Every row holds at least `out.len()` values.
pub fn add_in_order(out: &mut [f32], rows: &[&[f32]]) {
    add(out, rows, Mode::InOrder);
}

#[derive(Clone, Copy)]
enum Mode {
    InOrder,
    Scaled(f32),
}

fn add(out: &mut [f32], rows: &[&[f32]], mode: Mode) {
    let dims = out.len();
    assert!(rows.iter().all(|r| r.len() >= dims), "a row is shorter than the output");
    #[cfg(target_arch = "x86_64")]
    {
        if crate::query::Isa::detect() == crate::query::Isa::Avx512 {
            // SAFETY: `Isa::Avx512` means the CPU has AVX-512F; every row holds `dims` values.
            unsafe { x86::add(out, rows, mode) };
            return;
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was just detected.
            unsafe { add_blocks_avx2(out, rows, mode) };
            return;
        }
    }
    add_blocks(out, rows, mode);
}

/// # Safety
/// Only call on a CPU with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn add_blocks_avx2(out: &mut [f32], rows: &[&[f32]], mode: Mode) {
    add_blocks(out, rows, mode);
}

/// The portable order: a block of `W` columns in registers while every row passes.
#[inline(always)]
fn add_blocks(out: &mut [f32], rows: &[&[f32]], mode: Mode) {
    const W: usize = 64;
    let dims = out.len();
    let mut c0 = 0;
    while c0 < dims {
        let w = W.min(dims - c0);
        let mut acc = [0f32; W];
        if let Mode::InOrder = mode {
            acc[..w].copy_from_slice(&out[c0..c0 + w]);
        }
        if w == W {
            for r in rows {
                let src: &[f32; W] = r[c0..c0 + W].try_into().expect("a block of W columns");
                for (a, v) in acc.iter_mut().zip(src) {
                    *a += v;
                }
            }
        } else {
            for r in rows {
                for (a, v) in acc[..w].iter_mut().zip(&r[c0..c0 + w]) {
                    *a += v;
                }
            }
        }
        let dst = &mut out[c0..c0 + w];
        match mode {
            Mode::InOrder => dst.copy_from_slice(&acc[..w]),
            Mode::Scaled(s) => {
                for (o, a) in dst.iter_mut().zip(&acc) {
                    *o += s * a;
                }
            }
        }
        c0 += w;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Mode;
    use std::arch::x86_64::*;

    /// Columns per pass: 24 of the 32 registers hold the running sums.
    const PASS: usize = 24 * 16;
    /// Rows ahead whose lines are prefetched while one row is added.
    const AHEAD: usize = 2;

    /// # Safety
    /// The CPU has AVX-512F; every row holds at least `out.len()` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn add(out: &mut [f32], rows: &[&[f32]], mode: Mode) {
        let dims = out.len();
        let mut c0 = 0;
        while c0 < dims {
            let w = PASS.min(dims - c0);
            // SAFETY (all arms): columns c0..c0+w of `out` and of every row exist.
            unsafe {
                match w.div_ceil(16) {
                    1 => pass::<1>(out, rows, c0, w, mode),
                    2 => pass::<2>(out, rows, c0, w, mode),
                    3 => pass::<3>(out, rows, c0, w, mode),
                    4 => pass::<4>(out, rows, c0, w, mode),
                    5 => pass::<5>(out, rows, c0, w, mode),
                    6 => pass::<6>(out, rows, c0, w, mode),
                    7 => pass::<7>(out, rows, c0, w, mode),
                    8 => pass::<8>(out, rows, c0, w, mode),
                    9 => pass::<9>(out, rows, c0, w, mode),
                    10 => pass::<10>(out, rows, c0, w, mode),
                    11 => pass::<11>(out, rows, c0, w, mode),
                    12 => pass::<12>(out, rows, c0, w, mode),
                    13 => pass::<13>(out, rows, c0, w, mode),
                    14 => pass::<14>(out, rows, c0, w, mode),
                    15 => pass::<15>(out, rows, c0, w, mode),
                    16 => pass::<16>(out, rows, c0, w, mode),
                    17 => pass::<17>(out, rows, c0, w, mode),
                    18 => pass::<18>(out, rows, c0, w, mode),
                    19 => pass::<19>(out, rows, c0, w, mode),
                    20 => pass::<20>(out, rows, c0, w, mode),
                    21 => pass::<21>(out, rows, c0, w, mode),
                    22 => pass::<22>(out, rows, c0, w, mode),
                    23 => pass::<23>(out, rows, c0, w, mode),
                    _ => pass::<24>(out, rows, c0, w, mode),
                }
            }
            c0 += w;
        }
    }

    /// Register `z` of `NZ` at `p`: the last one masked by `last`.
    ///
    /// # Safety
    /// AVX-512F; the columns loaded exist.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load<const NZ: usize>(p: *const f32, z: usize, last: __mmask16) -> __m512 {
        // SAFETY: the caller's
        unsafe {
            if z + 1 < NZ {
                _mm512_loadu_ps(p.add(16 * z))
            } else {
                _mm512_maskz_loadu_ps(last, p.add(16 * z))
            }
        }
    }

    /// Store register `z` of `NZ` at `p`, the last one masked by `last`.
    ///
    /// # Safety
    /// AVX-512F; the columns stored exist.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn store<const NZ: usize>(p: *mut f32, z: usize, last: __mmask16, v: __m512) {
        // SAFETY: the caller's
        unsafe {
            if z + 1 < NZ {
                _mm512_storeu_ps(p.add(16 * z), v)
            } else {
                _mm512_mask_storeu_ps(p.add(16 * z), last, v)
            }
        }
    }

    /// Columns `c0..c0 + w` (`w` in `16·(NZ-1)+1 ..= 16·NZ`), each row read front to back.
    ///
    /// # Safety
    /// AVX-512F; columns `c0..c0+w` exist in `out` and in every row.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn pass<const NZ: usize>(out: &mut [f32], rows: &[&[f32]], c0: usize, w: usize, mode: Mode) {
        debug_assert!(w > 16 * (NZ - 1) && w <= 16 * NZ);
        // the last register takes the 1..=16 columns left: a masked load never touches the rest
        let last: __mmask16 = (u32::MAX >> (32 - (w - 16 * (NZ - 1)))) as __mmask16;
        // SAFETY: every load reads columns below c0 + w of a row or of `out` (caller).
        unsafe {
            let load = |p: *const f32, z: usize| load::<NZ>(p, z, last);
            let o = out.as_mut_ptr().add(c0);
            let mut acc = [_mm512_setzero_ps(); NZ];
            if let Mode::InOrder = mode {
                for (z, a) in acc.iter_mut().enumerate() {
                    *a = load(o, z);
                }
            }
            let bytes = w * 4;
            for (i, r) in rows.iter().enumerate() {
                if let Some(next) = rows.get(i + AHEAD) {
                    let p = next.as_ptr().add(c0).cast::<i8>();
                    let mut off = 0;
                    while off < bytes {
                        _mm_prefetch(p.add(off), _MM_HINT_T0);
                        off += 64;
                    }
                }
                let p = r.as_ptr().add(c0);
                for (z, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_add_ps(*a, load(p, z));
                }
            }
            let store = |z: usize, v: __m512| store::<NZ>(o, z, last, v);
            match mode {
                Mode::InOrder => {
                    for (z, a) in acc.iter().enumerate() {
                        store(z, *a);
                    }
                }
                Mode::Scaled(s) => {
                    // o + s·a with two roundings, as the portable `*o += s * a`
                    let s = _mm512_set1_ps(s);
                    for (z, a) in acc.iter().enumerate() {
                        store(z, _mm512_add_ps(load(o, z), _mm512_mul_ps(s, *a)));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows_of<'a>(data: &'a [f32], dims: usize, pick: &[usize]) -> Vec<&'a [f32]> {
        pick.iter().map(|&r| &data[r * dims..(r + 1) * dims]).collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Every path (AVX-512, AVX2, portable) against plain scalar loops, bit for bit, over
    /// widths around the register and pass boundaries.
    #[test]
    fn sums_equal_scalar_loops_bit_for_bit() {
        for dims in [1usize, 5, 15, 16, 17, 31, 64, 65, 300, 383, 384, 385, 512, 769, 1024] {
            let n = 40;
            let data: Vec<f32> = (0..n * dims).map(|i| ((i * 2654435761usize) % 1000) as f32 / 97.0 - 5.0).collect();
            for k in [0usize, 1, 2, 3, 7, 75] {
                let pick: Vec<usize> = (0..k).map(|i| (i * 13 + 5) % n).collect();
                let rows = rows_of(&data, dims, &pick);
                let start: Vec<f32> = (0..dims).map(|j| j as f32 * 0.125 - 3.0).collect();

                let mut want = start.clone();
                for r in &rows {
                    for (o, v) in want.iter_mut().zip(*r) {
                        *o += v;
                    }
                }
                let mut got = start.clone();
                add_in_order(&mut got, &rows);
                assert_eq!(bits(&got), bits(&want), "in order, dims {dims}, {k} rows");
                let mut port = start.clone();
                add_blocks(&mut port, &rows, Mode::InOrder);
                assert_eq!(bits(&port), bits(&want), "portable in order, dims {dims}, {k} rows");

                let scale = 0.37f32;
                let mut want = start.clone();
                for (j, o) in want.iter_mut().enumerate() {
                    let mut s = 0f32;
                    for r in &rows {
                        s += r[j];
                    }
                    *o += scale * s;
                }
                let mut got = start.clone();
                add_scaled_sum(&mut got, &rows, scale);
                assert_eq!(bits(&got), bits(&want), "scaled, dims {dims}, {k} rows");
                let mut port = start.clone();
                add_blocks(&mut port, &rows, Mode::Scaled(scale));
                assert_eq!(bits(&port), bits(&want), "portable scaled, dims {dims}, {k} rows");
            }
        }
    }

    #[test]
    fn longer_rows_use_their_first_columns() {
        let data: Vec<f32> = (0..50).map(|i| i as f32).collect();
        let rows = [&data[..], &data[10..]];
        let mut out = vec![0f32; 20];
        add_in_order(&mut out, &rows);
        assert_eq!(out, (0..20).map(|j| (2 * j + 10) as f32).collect::<Vec<_>>());
    }
}
