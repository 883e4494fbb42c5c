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
            (DType::F16, DType::F32) => a16[..k].convert_to_f32_slice(&mut a32[..k]),
            (DType::F16, DType::F64) => a16[..k].convert_to_f64_slice(&mut a64[..k]),
            (DType::F32, DType::F16) => a16[..k].convert_from_f32_slice(&a32[..k]),
            (DType::F64, DType::F16) => a16[..k].convert_from_f64_slice(&a64[..k]),
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
                return true;
            }
            // SAFETY: f16 is a transparent u16.
            let (_, h, _) = unsafe { s.align_to::<f16>() };
            h.convert_to_f32_slice(d)
        }
        (DType::F16, DType::F64) => view!(src, f16).convert_to_f64_slice(view_mut!(dst, f64)),
        (DType::F32, DType::F16) => view_mut!(dst, f16).convert_from_f32_slice(view!(src, f32)),
        (DType::F64, DType::F16) => view_mut!(dst, f16).convert_from_f64_slice(view!(src, f64)),
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
