//! Small wrappers over faer's GEMM and SVD on row-major `f32` slices, plus a seeded RNG.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatMut, MatRef, Par};

use crate::error::{Error, Result};

/// `out (n x m) = a (n x k, row stride lda) · bᵀ` where `b` is `m x k` row-major.
#[allow(clippy::too_many_arguments)]
pub fn gemm_nt(out: &mut [f32], a: &[f32], n: usize, k: usize, lda: usize, b: &[f32], m: usize, par: Par) {
    debug_assert!(out.len() >= n * m);
    let a = MatRef::from_row_major_slice_with_stride(&a[..row_span(n, k, lda)], n, k, lda);
    let b = MatRef::from_row_major_slice(&b[..m * k], m, k);
    let dst = MatMut::from_row_major_slice_mut(&mut out[..n * m], n, m);
    matmul(dst, Accum::Replace, a, b.transpose(), 1.0f32, par);
}

/// `out (n x m) = a (n x k, row-major) · b (k x m, row-major)`.
pub fn gemm_nn(out: &mut [f32], a: &[f32], n: usize, k: usize, b: &[f32], m: usize, par: Par) {
    let a = MatRef::from_row_major_slice(&a[..n * k], n, k);
    let b = MatRef::from_row_major_slice(&b[..k * m], k, m);
    let dst = MatMut::from_row_major_slice_mut(&mut out[..n * m], n, m);
    matmul(dst, Accum::Replace, a, b, 1.0f32, par);
}

/// `aᵀ (k x n) · b (n x m)` as a row-major `k x m` f64 matrix (computed in f32, summed in blocks).
pub fn gemm_tn_f64(a: &[f32], n: usize, k: usize, b: &[f32], m: usize) -> Vec<f64> {
    let mut acc = vec![0f64; k * m];
    let mut part = vec![0f32; k * m];
    const BLOCK: usize = 16384;
    let mut s = 0;
    while s < n {
        let e = (s + BLOCK).min(n);
        let ab = MatRef::from_row_major_slice(&a[s * k..e * k], e - s, k);
        let bb = MatRef::from_row_major_slice(&b[s * m..e * m], e - s, m);
        let dst = MatMut::from_row_major_slice_mut(&mut part, k, m);
        matmul(dst, Accum::Replace, ab.transpose(), bb, 1.0f32, Par::rayon(0));
        for (x, y) in acc.iter_mut().zip(&part) {
            *x += f64::from(*y);
        }
        s = e;
    }
    acc
}

fn row_span(n: usize, k: usize, lda: usize) -> usize {
    if n == 0 {
        0
    } else {
        (n - 1) * lda + k
    }
}

/// The orthogonal matrix closest to `m` (`d x d`, row-major): `U Vᵀ` from `m = U Σ Vᵀ`
/// (the solution of the orthogonal Procrustes problem `min ‖X R − Y‖` for `m = Xᵀ Y`).
pub fn polar_orthogonal(m: &[f64], d: usize) -> Result<Vec<f32>> {
    let mat = Mat::<f64>::from_fn(d, d, |i, j| m[i * d + j]);
    let svd = mat
        .svd()
        .map_err(|e| {
            Error::argument(format!(
                "OPQ training failed: the SVD of the rotation update did not converge ({e:?}); try opq=False"
            ))
        })?;
    let r = svd.U() * svd.V().transpose();
    let mut out = vec![0f32; d * d];
    for i in 0..d {
        for j in 0..d {
            out[i * d + j] = r[(i, j)] as f32;
        }
    }
    if out.iter().any(|v| !v.is_finite()) {
        return Err(Error::argument("OPQ training failed: the SVD of the rotation update gave non-finite values; try opq=False"));
    }
    Ok(out)
}

/// A small, fast, seeded generator (SplitMix64); good enough for sampling and initialisation.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    /// A generator for a sub-task, independent of the others.
    pub fn fork(&self, stream: u64) -> Self {
        let mut r = Rng(self.0 ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17));
        r.next_u64();
        r
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    #[inline]
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in 0..n (n > 0).
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Standard normal (Box-Muller).
    pub fn gaussian(&mut self) -> f64 {
        let u1 = self.f64().max(f64::MIN_POSITIVE);
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// `s` distinct indices of `0..n`, sorted (partial Fisher-Yates).
    pub fn sample_indices(&mut self, n: usize, s: usize) -> Vec<usize> {
        if s >= n {
            return (0..n).collect();
        }
        let mut idx: Vec<usize> = (0..n).collect();
        for i in 0..s {
            let j = i + self.below(n - i);
            idx.swap(i, j);
        }
        idx.truncate(s);
        idx.sort_unstable();
        idx
    }
}

/// A Haar-random `d x d` orthogonal matrix (polar factor of a Gaussian matrix).
pub fn random_orthogonal(d: usize, rng: &mut Rng) -> Result<Vec<f32>> {
    let g: Vec<f64> = (0..d * d).map(|_| rng.gaussian()).collect();
    polar_orthogonal(&g, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_matches_naive() {
        let (n, k, m) = (7, 5, 3);
        let a: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut out = vec![0f32; n * m];
        gemm_nt(&mut out, &a, n, k, k, &b, m, Par::Seq);
        for i in 0..n {
            for j in 0..m {
                let want: f32 = (0..k).map(|t| a[i * k + t] * b[j * k + t]).sum();
                assert!((out[i * m + j] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn polar_factor_is_orthogonal_and_solves_procrustes() {
        let d = 6;
        let mut rng = Rng::new(3);
        let r = random_orthogonal(d, &mut rng).unwrap();
        // RᵀR = I
        for i in 0..d {
            for j in 0..d {
                let dot: f32 = (0..d).map(|t| r[t * d + i] * r[t * d + j]).sum();
                assert!((dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-5);
            }
        }
        // Y = X R exactly: Procrustes on Xᵀ Y recovers R.
        let n = 40;
        let x: Vec<f32> = (0..n * d).map(|_| rng.gaussian() as f32).collect();
        let mut y = vec![0f32; n * d];
        gemm_nn(&mut y, &x, n, d, &r, d, Par::Seq);
        let m = gemm_tn_f64(&x, n, d, &y, d);
        let r2 = polar_orthogonal(&m, d).unwrap();
        for (a, b) in r.iter().zip(&r2) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }
}
