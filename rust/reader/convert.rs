//! Copy or convert float elements between on-disk bytes and an output buffer.
//!
//! float16 -> float32 goes through the `half` crate's slice conversion, which uses
//! F16C (x86-64, detected at run time) or FP16 (aarch64) instructions.

use half::f16;
use half::prelude::*;

use super::npy::DType;
use crate::error::{Error, Result};

/// Elements converted per step of the generic (unaligned or byte-swapped) path.
const STEP: usize = 2048;

/// Convert `src` (elements of `sd`, big-endian when `big_endian`) into `dst` (elements
/// of `dd`, native order). Both must hold the same number of elements.
pub fn convert(src: &[u8], sd: DType, big_endian: bool, dst: &mut [u8], dd: DType) -> Result<()> {
    let n = src.len() / sd.size();
    if src.len() % sd.size() != 0 || dst.len() != n * dd.size() {
        return Err(Error::argument(format!(
            "convert: {} source bytes of {} do not match {} output bytes of {}",
            src.len(),
            sd.code(),
            dst.len(),
            dd.code()
        )));
    }
    let swap = big_endian != cfg!(target_endian = "big");
    if sd == dd && !swap {
        dst.copy_from_slice(src);
        return Ok(());
    }
    if !swap && fast(src, sd, dst, dd) {
        return Ok(());
    }
    // Generic path: decode a step into aligned scratch, convert, encode.
    let mut a16 = [f16::ZERO; STEP];
    let mut a32 = [0f32; STEP];
    let mut a64 = [0f64; STEP];
    let (ss, ds) = (sd.size(), dd.size());
    let mut done = 0;
    while done < n {
        let k = STEP.min(n - done);
        let s = &src[done * ss..(done + k) * ss];
        // decode
        match sd {
            DType::F16 => {
                for (o, c) in a16[..k].iter_mut().zip(s.chunks_exact(2)) {
                    let b = [c[0], c[1]];
                    *o = f16::from_bits(if big_endian {
                        u16::from_be_bytes(b)
                    } else {
                        u16::from_le_bytes(b)
                    });
                }
            }
            DType::F32 => {
                for (o, c) in a32[..k].iter_mut().zip(s.chunks_exact(4)) {
                    let b = [c[0], c[1], c[2], c[3]];
                    *o = if big_endian {
                        f32::from_be_bytes(b)
                    } else {
                        f32::from_le_bytes(b)
                    };
                }
            }
            DType::F64 => {
                for (o, c) in a64[..k].iter_mut().zip(s.chunks_exact(8)) {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    *o = if big_endian {
                        f64::from_be_bytes(b)
                    } else {
                        f64::from_le_bytes(b)
                    };
                }
            }
        }
        // convert into the destination's type
        match (sd, dd) {
            (DType::F16, DType::F32) => {
                a16[..k].convert_to_f32_slice(&mut a32[..k]);
                // SAFETY: f16 is a transparent u16.
                fix_nans_f32(unsafe { a16[..k].align_to::<u16>() }.1, &mut a32[..k]);
            }
            (DType::F16, DType::F64) => {
                a16[..k].convert_to_f64_slice(&mut a64[..k]);
                // SAFETY: f16 is a transparent u16.
                fix_nans_f64(unsafe { a16[..k].align_to::<u16>() }.1, &mut a64[..k]);
            }
            (DType::F32, DType::F16) => a16[..k].convert_from_f32_slice(&a32[..k]),
            (DType::F64, DType::F16) => f64_to_f16_slice(&mut a16[..k], &a64[..k]),
            (DType::F32, DType::F64) => {
                for (o, i) in a64[..k].iter_mut().zip(&a32[..k]) {
                    *o = f64::from(*i);
                }
            }
            (DType::F64, DType::F32) => {
                for (o, i) in a32[..k].iter_mut().zip(&a64[..k]) {
                    *o = *i as f32;
                }
            }
            _ => {}
        }
        // encode natively
        let d = &mut dst[done * ds..(done + k) * ds];
        match dd {
            DType::F16 => {
                for (c, v) in d.chunks_exact_mut(2).zip(&a16[..k]) {
                    c.copy_from_slice(&v.to_bits().to_ne_bytes());
                }
            }
            DType::F32 => {
                for (c, v) in d.chunks_exact_mut(4).zip(&a32[..k]) {
                    c.copy_from_slice(&v.to_ne_bytes());
                }
            }
            DType::F64 => {
                for (c, v) in d.chunks_exact_mut(8).zip(&a64[..k]) {
                    c.copy_from_slice(&v.to_ne_bytes());
                }
            }
        }
        done += k;
    }
    Ok(())
}

/// Native-order conversions between aligned buffers, straight from source to
/// destination (no scratch). Returns false when the buffers are not aligned.
fn fast(src: &[u8], sd: DType, dst: &mut [u8], dd: DType) -> bool {
    // SAFETY: f16, f32 and f64 are plain-old-data: every bit pattern is a valid value,
    // so viewing initialized bytes as them is sound; align_to only yields the aligned middle.
    macro_rules! view {
        ($b:expr, $t:ty) => {{
            let (pre, mid, post) = unsafe { $b.align_to::<$t>() };
            if !pre.is_empty() || !post.is_empty() {
                return false;
            }
            mid
        }};
    }
    macro_rules! view_mut {
        ($b:expr, $t:ty) => {{
            let (pre, mid, post) = unsafe { $b.align_to_mut::<$t>() };
            if !pre.is_empty() || !post.is_empty() {
                return false;
            }
            mid
        }};
    }
    match (sd, dd) {
        (DType::F16, DType::F32) => {
            let (s, d) = (view!(src, u16), view_mut!(dst, f32));
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
                // SAFETY: the CPU supports AVX and F16C (checked just above).
                unsafe { f16_to_f32_f16c(s, d) };
                fix_nans_f32(s, d);
                return true;
            }
            // SAFETY: f16 is a transparent u16.
            let (_, h, _) = unsafe { s.align_to::<f16>() };
            h.convert_to_f32_slice(d);
            fix_nans_f32(s, d);
        }
        (DType::F16, DType::F64) => {
            let (s, d) = (view!(src, u16), view_mut!(dst, f64));
            // SAFETY: f16 is a transparent u16.
            let (_, h, _) = unsafe { s.align_to::<f16>() };
            h.convert_to_f64_slice(d);
            fix_nans_f64(s, d);
        }
        (DType::F32, DType::F16) => view_mut!(dst, f16).convert_from_f32_slice(view!(src, f32)),
        (DType::F64, DType::F16) => f64_to_f16_slice(view_mut!(dst, f16), view!(src, f64)),
        (DType::F32, DType::F64) => {
            for (o, i) in view_mut!(dst, f64).iter_mut().zip(view!(src, f32)) {
                *o = f64::from(*i);
            }
        }
        (DType::F64, DType::F32) => {
            for (o, i) in view_mut!(dst, f32).iter_mut().zip(view!(src, f64)) {
                *o = *i as f32;
            }
        }
        _ => return false,
    }
    true
}

/// Is any of the float16 bit patterns `h` a NaN (all-ones exponent, nonzero significand)?
/// One branch-free pass (vectorized).
/// `x` rounded to f32 toward zero, the last bit set when inexact ("round to odd"): an f16
/// rounding of that value is the correct rounding of `x` (f32 carries 13 more bits), where
/// two rounds to nearest (f64 -> f32 -> f16, what the `half` crate and F16C do) are off by
/// one step when the first lands on a tie of the second.
#[inline]
fn f64_to_f32_odd(x: f64) -> f32 {
    let r = x as f32;
    if !r.is_finite() || f64::from(r) == x {
        return r; // exact, NaN, or beyond f32's range (inf in f16 as well)
    }
    let mut bits = r.to_bits();
    if f64::from(r).abs() > x.abs() {
        bits -= 1; // one step toward zero (the magnitude is above 0 here)
    }
    f32::from_bits(bits | 1)
}

/// f64 -> f16 rounded once, to nearest with ties to even (as numpy's `astype`).
fn f64_to_f16_slice(dst: &mut [f16], src: &[f64]) {
    let mut tmp = [0f32; 1024];
    for (d, s) in dst.chunks_mut(tmp.len()).zip(src.chunks(tmp.len())) {
        let t = &mut tmp[..s.len()];
        for (o, &x) in t.iter_mut().zip(s) {
            *o = f64_to_f32_odd(x);
        }
        d.convert_from_f32_slice(t);
    }
}

fn any_nan16(h: &[u16]) -> bool {
    h.iter().fold(0u16, |acc, &b| acc | u16::from((b & 0x7c00) == 0x7c00 && (b & 0x03ff) != 0)) != 0
}

/// NaNs as numpy converts them (its `npy_halfbits_to_floatbits`): the sign and significand
/// bits are kept, so a signaling NaN stays signaling (conversion instructions quiet it).
/// Ordinary values and infinities convert exactly whatever the path, so only NaNs are redone.
fn fix_nans_f32(src: &[u16], dst: &mut [f32]) {
    if !any_nan16(src) {
        return;
    }
    for (&b, o) in src.iter().zip(dst) {
        if (b & 0x7c00) == 0x7c00 && (b & 0x03ff) != 0 {
            *o = f32::from_bits((u32::from(b & 0x8000) << 16) | 0x7f80_0000 | (u32::from(b & 0x03ff) << 13));
        }
    }
}

/// [`fix_nans_f32`] for float64 (numpy's `npy_halfbits_to_doublebits`).
fn fix_nans_f64(src: &[u16], dst: &mut [f64]) {
    if !any_nan16(src) {
        return;
    }
    for (&b, o) in src.iter().zip(dst) {
        if (b & 0x7c00) == 0x7c00 && (b & 0x03ff) != 0 {
            *o = f64::from_bits((u64::from(b & 0x8000) << 48) | 0x7ff0_0000_0000_0000 | (u64::from(b & 0x03ff) << 42));
        }
    }
}

/// float16 -> float32 with F16C, 8 elements per instruction, in one inlined loop.
/// Large outputs aligned to 32 bytes use non-temporal stores: the batch is not read
/// back soon, so it need not displace the cache (nor be read before being written).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn f16_to_f32_f16c(src: &[u16], dst: &mut [f32]) {
    use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm256_stream_ps, _mm_loadu_si128, _mm_sfence};
    let n = src.len().min(dst.len());
    let dp0 = dst.as_mut_ptr() as usize;
    // Peel scalars until the destination is 32-byte aligned (f32 pointers are 4-aligned).
    let head = if n >= (1 << 16) { ((32 - dp0 % 32) % 32 / 4).min(n) } else { 0 };
    for k in 0..head {
        dst[k] = f16::from_bits(src[k]).to_f32();
    }
    let (src, dst) = (&src[head..n], &mut dst[head..n]);
    let m = src.len();
    let body = m - m % 8;
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    let stream = head > 0 || (m >= (1 << 16) && (dp as usize) % 32 == 0);
    let mut i = 0;
    // SAFETY: i + 8 <= body <= m for every access; loads are unaligned; streaming stores
    // go to a 32-byte aligned pointer (checked or made so by the peeling) advanced by 32 bytes.
    unsafe {
        if stream && (dp as usize) % 32 == 0 {
            while i < body {
                _mm256_stream_ps(dp.add(i), _mm256_cvtph_ps(_mm_loadu_si128(sp.add(i).cast::<__m128i>())));
                i += 8;
            }
            _mm_sfence();
        } else {
            while i < body {
                _mm256_storeu_ps(dp.add(i), _mm256_cvtph_ps(_mm_loadu_si128(sp.add(i).cast::<__m128i>())));
                i += 8;
            }
        }
    }
    for k in body..m {
        dst[k] = f16::from_bits(src[k]).to_f32();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f64_to_f16_rounds_once() {
        let next = |x: f64, up: bool| {
            let b = x.to_bits();
            f64::from_bits(if (x > 0.0) == up { b + 1 } else { b - 1 })
        };
        let mut xs = Vec::new();
        let mut want = Vec::new();
        // around every midpoint of two neighbouring positive f16 (65520: between the largest
        // finite one and what would follow it, infinity), and the mirror images
        for b in 0..0x7c00u16 {
            let lo = f64::from(f16::from_bits(b));
            let hi = if b == 0x7bff { 65536.0 } else { f64::from(f16::from_bits(b + 1)) };
            let mid = (lo + hi) / 2.0;
            let even = if b % 2 == 0 { b } else { b + 1 };
            for (x, w) in [(mid, even), (next(mid, true), b + 1), (next(mid, false), b)] {
                xs.extend([x, -x]);
                want.extend([w, w | 0x8000]);
            }
        }
        let mut got = vec![f16::ZERO; xs.len()];
        f64_to_f16_slice(&mut got, &xs);
        for ((x, g), w) in xs.iter().zip(&got).zip(&want) {
            assert_eq!(g.to_bits(), *w, "{x:e}");
        }
        let mut special = [f16::ZERO; 4];
        f64_to_f16_slice(&mut special, &[f64::INFINITY, 1e300, 1e-300, -0.0]);
        assert_eq!(special.map(f16::to_bits), [0x7c00, 0x7c00, 0, 0x8000]);
    }

    fn f16_bytes(v: &[f32], be: bool) -> Vec<u8> {
        v.iter()
            .flat_map(|x| {
                let b = f16::from_f32(*x).to_bits();
                if be {
                    b.to_be_bytes()
                } else {
                    b.to_le_bytes()
                }
            })
            .collect()
    }

    #[test]
    fn f16_to_f32_all_paths() {
        let vals: Vec<f32> = (0..5000).map(|i| (i as f32 - 2500.0) / 7.0).collect();
        let expect: Vec<f32> = vals.iter().map(|v| f16::from_f32(*v).to_f32()).collect();
        for be in [false, true] {
            let src = f16_bytes(&vals, be);
            for shift in [0usize, 1] {
                // unaligned source exercises the generic path
                let mut buf = vec![0u8; src.len() + 1];
                buf[shift..shift + src.len()].copy_from_slice(&src);
                let mut out = vec![0f32; vals.len()];
                let dst = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), out.len() * 4) };
                convert(&buf[shift..shift + src.len()], DType::F16, be, dst, DType::F32).unwrap();
                assert_eq!(out, expect);
            }
        }
    }

    /// numpy's rule, written out: every float16 bit pattern to float32 and float64 bits.
    fn numpy_bits(h: u16) -> (u32, u64) {
        let (sign, exp, sig) = (u32::from(h & 0x8000), u32::from(h & 0x7c00), u32::from(h & 0x03ff));
        match exp {
            0x7c00 => ((sign << 16) | 0x7f80_0000 | (sig << 13), (u64::from(sign) << 48) | 0x7ff0_0000_0000_0000 | (u64::from(sig) << 42)),
            _ => {
                let v = f16::from_bits(h);
                (v.to_f32().to_bits(), v.to_f64().to_bits())
            }
        }
    }

    #[test]
    fn every_f16_bit_pattern_converts_as_numpy_does() {
        // signaling NaNs included (0x7c01: numpy gives 0x7f802000; F16C would quiet it)
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let want32: Vec<u32> = all.iter().map(|&h| numpy_bits(h).0).collect();
        let want64: Vec<u64> = all.iter().map(|&h| numpy_bits(h).1).collect();
        assert_eq!(want32[0x7c01], 0x7f80_2000);
        for be in [false, true] {
            let src: Vec<u8> = all.iter().flat_map(|h| if be { h.to_be_bytes() } else { h.to_le_bytes() }).collect();
            for shift in [0usize, 1] {
                // aligned little-endian: the direct paths (F16C, streaming); otherwise the generic one
                let mut buf = vec![0u8; src.len() + 1];
                buf[shift..shift + src.len()].copy_from_slice(&src);
                let s = &buf[shift..shift + src.len()];
                let mut o32 = vec![0f32; all.len()];
                let d = unsafe { std::slice::from_raw_parts_mut(o32.as_mut_ptr().cast::<u8>(), o32.len() * 4) };
                convert(s, DType::F16, be, d, DType::F32).unwrap();
                assert!(o32.iter().map(|v| v.to_bits()).eq(want32.iter().copied()), "f32 be={be} shift={shift}");
                let mut o64 = vec![0f64; all.len()];
                let d = unsafe { std::slice::from_raw_parts_mut(o64.as_mut_ptr().cast::<u8>(), o64.len() * 8) };
                convert(s, DType::F16, be, d, DType::F64).unwrap();
                assert!(o64.iter().map(|v| v.to_bits()).eq(want64.iter().copied()), "f64 be={be} shift={shift}");
            }
        }
    }

    #[test]
    fn f16_to_f32_large_streaming() {
        let n = 70_001usize;
        let vals: Vec<f32> = (0..n).map(|i| ((i % 4099) as f32 - 2000.0) / 3.0).collect();
        let src = f16_bytes(&vals, false);
        let mut out = vec![0f32; n + 8];
        // one of the 8 start offsets is 32-byte aligned: the non-temporal path runs
        for off in 0..8 {
            let dst = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().add(off).cast::<u8>(), n * 4) };
            convert(&src, DType::F16, false, dst, DType::F32).unwrap();
            for (k, v) in out[off..off + n].iter().enumerate() {
                assert_eq!(*v, f16::from_f32(vals[k]).to_f32(), "offset {off} index {k}");
            }
        }
    }

    #[test]
    fn f64_be_to_f32_and_copy() {
        let vals = [1.5f64, -2.25, 1e10];
        let src: Vec<u8> = vals.iter().flat_map(|v| v.to_be_bytes()).collect();
        let mut dst = vec![0u8; 12];
        convert(&src, DType::F64, true, &mut dst, DType::F32).unwrap();
        let got: Vec<f32> = dst
            .chunks_exact(4)
            .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(got, vec![1.5f32, -2.25, 1e10]);
        let mut same = vec![0u8; 24];
        convert(&src, DType::F64, true, &mut same, DType::F64).unwrap();
        let got: Vec<f64> = same
            .chunks_exact(8)
            .map(|c| f64::from_ne_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(got, vals);
        assert!(convert(&src, DType::F64, false, &mut dst[..8], DType::F32).is_err());
    }
}
