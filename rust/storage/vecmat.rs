//! Rows times a matrix, each output value a sum in a fixed order: rebuilding quantized rows
//! (`concat · Pᵀ`) gives the same bits for a row alone or among others.

/// Columns the matrix's rows are padded to (zeros): whole blocks of the kernels' width.
pub const PAD: usize = 16;

/// `out[r·m..][..m] = x[r·k..][..k] · mt` for the `n` rows of `x`, where `mt` is a row-major
/// `k x stride` matrix (`stride >= m`, a multiple of [`PAD`], columns past `m` zeros). Each
/// value is `Σᵢ x[r][i] · mt[i][j]` added in order of `i`, one multiply-add at a time (fused
/// where the CPU has FMA, as everywhere on this CPU), so a row's bits depend neither on `n`
/// nor on the rows beside it. Groups of 4 rows share each load of `mt`.
pub fn rows_times(out: &mut [f32], x: &[f32], n: usize, k: usize, mt: &[f32], m: usize, stride: usize) {
    assert!(stride >= m && stride % PAD == 0, "the matrix's rows are padded to a multiple of {PAD}");
    assert!(out.len() >= n * m && x.len() >= n * k && mt.len() >= k * stride, "slices too short");
    #[cfg(target_arch = "x86_64")]
    {
        use crate::query::Isa;
        match Isa::detect() {
            // SAFETY: the CPU has AVX-512F, as `Isa` detected; sizes checked above.
            Isa::Avx512 => return unsafe { x86::rows_times_avx512(out, x, n, k, mt, m, stride) },
            // SAFETY: the CPU has AVX2 and FMA, as `Isa` detected; sizes checked above.
            Isa::Avx2Fma => return unsafe { x86::rows_times_avx2(out, x, n, k, mt, m, stride) },
            Isa::Baseline => return rows_times_generic::<false>(out, x, n, k, mt, m, stride),
        }
    }
    #[allow(unreachable_code)]
    rows_times_generic::<true>(out, x, n, k, mt, m, stride)
}

/// The portable kernel: each value's sum in order of `i` (fused multiply-adds where `FUSED`).
fn rows_times_generic<const FUSED: bool>(out: &mut [f32], x: &[f32], n: usize, k: usize, mt: &[f32], m: usize, stride: usize) {
    const W: usize = 16;
    for r in 0..n {
        let (xr, or) = (&x[r * k..(r + 1) * k], &mut out[r * m..(r + 1) * m]);
        for c0 in (0..m).step_by(W) {
            let mut acc = [0f32; W];
            for (i, &xi) in xr.iter().enumerate() {
                let p = &mt[i * stride + c0..i * stride + c0 + W];
                for (a, &pv) in acc.iter_mut().zip(p) {
                    *a = if FUSED { xi.mul_add(pv, *a) } else { *a + xi * pv };
                }
            }
            let w = W.min(m - c0);
            or[c0..c0 + w].copy_from_slice(&acc[..w]);
        }
    }
}

/// The kernels with AVX-512 and AVX2, made from one template: `R` rows x `V` vectors of sums
/// in registers while `i` runs over the rows of the matrix. One row alone keeps 8 vectors, so
/// that 8 independent sums hide the multiply-add's latency; groups of rows go through the
/// matrix a panel of 2 vectors' columns at a time (it stays in the level-1 cache while every
/// group passes), each panel load shared by the group's rows.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    macro_rules! kernel {
        ($entry:ident, $feature:literal, $lanes:literal, $group:literal, $vec:ty,
         $zero:ident, $load:ident, $splat:ident, $fmadd:ident, $store:ident) => {
            /// # Safety
            #[doc = concat!("The CPU has ", $feature, "; `out`, `x`, `mt` as [`super::rows_times`] checks.")]
            #[target_feature(enable = $feature)]
            pub unsafe fn $entry(out: &mut [f32], x: &[f32], n: usize, k: usize, mt: &[f32], m: usize, stride: usize) {
                /// `R` rows from `r0`, columns `c0..c0 + V·lanes` (those below `m` written).
                #[target_feature(enable = $feature)]
                #[allow(clippy::too_many_arguments)]
                unsafe fn block<const R: usize, const V: usize>(
                    out: &mut [f32], x: &[f32], r0: usize, k: usize, mt: &[f32], m: usize, stride: usize, c0: usize,
                ) {
                    // SAFETY: the features this function is compiled for, which its callers
                    // checked; the slices are as long as `rows_times` checked, and the pointers
                    // stay within them (columns below the stride, rows below n)
                    unsafe {
                        debug_assert!(c0 + $lanes * V <= stride && (r0 + R) * k <= x.len());
                        let mut acc: [[$vec; V]; R] = [[$zero(); V]; R];
                        let (xp, mp) = (x.as_ptr().add(r0 * k), mt.as_ptr().add(c0));
                        for i in 0..k {
                            let row = mp.add(i * stride);
                            let mut p: [$vec; V] = [$zero(); V];
                            for (v, pv) in p.iter_mut().enumerate() {
                                *pv = $load(row.add($lanes * v));
                            }
                            for (r, a) in acc.iter_mut().enumerate() {
                                let xi = $splat(*xp.add(r * k + i));
                                for v in 0..V {
                                    a[v] = $fmadd(xi, p[v], a[v]);
                                }
                            }
                        }
                        for (r, a) in acc.iter().enumerate() {
                            let o = &mut out[(r0 + r) * m..(r0 + r + 1) * m];
                            for (v, av) in a.iter().enumerate() {
                                let c = c0 + $lanes * v;
                                if c >= m {
                                    break;
                                }
                                let mut lanes = [0f32; $lanes];
                                $store(lanes.as_mut_ptr(), *av);
                                let w = ($lanes as usize).min(m - c);
                                o[c..c + w].copy_from_slice(&lanes[..w]);
                            }
                        }
                    }
                }

                /// [`block`] with `v` (at most 7) vectors of columns.
                #[target_feature(enable = $feature)]
                #[allow(clippy::too_many_arguments)]
                unsafe fn block_v<const R: usize>(
                    v: usize, out: &mut [f32], x: &[f32], r0: usize, k: usize, mt: &[f32], m: usize, stride: usize, c0: usize,
                ) {
                    // SAFETY: as the caller's: the same features, columns within the stride
                    unsafe {
                        match v {
                            0 => {}
                            1 => block::<R, 1>(out, x, r0, k, mt, m, stride, c0),
                            2 => block::<R, 2>(out, x, r0, k, mt, m, stride, c0),
                            3 => block::<R, 3>(out, x, r0, k, mt, m, stride, c0),
                            4 => block::<R, 4>(out, x, r0, k, mt, m, stride, c0),
                            5 => block::<R, 5>(out, x, r0, k, mt, m, stride, c0),
                            6 => block::<R, 6>(out, x, r0, k, mt, m, stride, c0),
                            _ => block::<R, 7>(out, x, r0, k, mt, m, stride, c0),
                        }
                    }
                }

                // SAFETY: the features this function is compiled for, which its callers checked;
                // the slices are as long as `rows_times` checked
                unsafe {
                    let groups = n / $group;
                    let mut c0 = 0;
                    while groups > 0 && c0 < stride {
                        let v = ((stride - c0) / $lanes).min(2);
                        for g in 0..groups {
                            block_v::<$group>(v, out, x, g * $group, k, mt, m, stride, c0);
                        }
                        c0 += $lanes * v;
                    }
                    for r0 in groups * $group..n {
                        let mut c0 = 0;
                        while c0 + $lanes * 8 <= stride {
                            block::<1, 8>(out, x, r0, k, mt, m, stride, c0);
                            c0 += $lanes * 8;
                        }
                        block_v::<1>((stride - c0) / $lanes, out, x, r0, k, mt, m, stride, c0);
                    }
                }
            }
        };
    }

    kernel!(rows_times_avx512, "avx512f", 16, 8, __m512, _mm512_setzero_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_storeu_ps);
    kernel!(rows_times_avx2, "avx2,fma", 8, 6, __m256, _mm256_setzero_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_storeu_ps);
}

/// `mat` (row-major `rows x cols`) transposed, its rows padded with zeros to a multiple of
/// [`PAD`] columns: `(mᵀ, stride)`.
pub fn transpose_padded(mat: &[f32], rows: usize, cols: usize) -> (Vec<f32>, usize) {
    let stride = rows.div_ceil(PAD) * PAD;
    let mut t = vec![0f32; cols * stride];
    for (j, row) in mat.chunks_exact(cols.max(1)).take(rows).enumerate() {
        for (i, &v) in row.iter().enumerate() {
            t[i * stride + j] = v;
        }
    }
    (t, stride)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + seed as f32) * 0.7311).sin() * 3.0).collect()
    }

    #[test]
    fn rows_alone_or_in_groups_give_the_same_bits_and_the_sums() {
        for (k, m) in [(1, 1), (3, 5), (17, 16), (64, 64), (300, 300), (70, 129), (8, 200)] {
            let mat = values(m * k, 1); // m x k: the product takes its transpose
            let (mt, stride) = transpose_padded(&mat, m, k);
            let n = 19; // groups of 8 (AVX-512) or 6 (AVX2), and rows left over
            let x = values(n * k, 2);
            let mut all = vec![0f32; n * m];
            rows_times(&mut all, &x, n, k, &mt, m, stride);
            #[cfg(target_arch = "x86_64")]
            if crate::query::Isa::detect() != crate::query::Isa::Baseline {
                // (the baseline kernel multiplies, then adds: other bits)
                let mut avx2 = vec![0f32; n * m];
                // SAFETY: a kernel beyond the baseline means AVX2 and FMA; sizes as checked above.
                unsafe { x86::rows_times_avx2(&mut avx2, &x, n, k, &mt, m, stride) };
                assert_eq!(avx2, all, "k {k} m {m}: AVX2 and the kernel in use");
            }
            for r in 0..n {
                let mut one = vec![0f32; m];
                rows_times(&mut one, &x[r * k..(r + 1) * k], 1, k, &mt, m, stride);
                assert_eq!(one, all[r * m..(r + 1) * m], "k {k} m {m} row {r}");
                if crate::query::Isa::detect() != crate::query::Isa::Baseline {
                    // the SIMD kernels and the portable one with fused multiply-adds agree
                    let mut portable = vec![0f32; m];
                    rows_times_generic::<true>(&mut portable, &x[r * k..(r + 1) * k], 1, k, &mt, m, stride);
                    assert_eq!(one, portable, "k {k} m {m} row {r}");
                }
                for j in 0..m {
                    let want: f64 = (0..k).map(|i| f64::from(x[r * k + i]) * f64::from(mat[j * k + i])).sum();
                    let scale: f64 = (0..k).map(|i| (f64::from(x[r * k + i]) * f64::from(mat[j * k + i])).abs()).sum();
                    assert!((f64::from(one[j]) - want).abs() <= 1e-5 * scale.max(1.0), "k {k} m {m}: {} vs {want}", one[j]);
                }
            }
        }
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// `cargo test --release vecmat_timing -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn vecmat_timing() {
        let (k, m, n) = (300, 300, 256);
        let mat: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let (mt, stride) = transpose_padded(&mat, m, k);
        let plain: Vec<f32> = (0..k * m).map(|i| mt[(i / m) * stride + i % m]).collect();
        let x: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut out = vec![0f32; n * m];
        for _ in 0..8 {
            let t = std::time::Instant::now();
            for r in 0..n {
                rows_times(&mut out[r * m..(r + 1) * m], &x[r * k..(r + 1) * k], 1, k, &mt, m, stride);
            }
            let one = t.elapsed().as_secs_f64() / n as f64;
            let t = std::time::Instant::now();
            rows_times(&mut out, &x, n, k, &mt, m, stride);
            let grp = t.elapsed().as_secs_f64() / n as f64;
            let t = std::time::Instant::now();
            crate::quant::linalg::gemm_nn(&mut out, &x, n, k, &plain, m, faer::Par::Seq);
            let faer_b = t.elapsed().as_secs_f64() / n as f64;
            let t = std::time::Instant::now();
            for r in 0..n {
                crate::quant::linalg::gemm_nn(&mut out[r * m..(r + 1) * m], &x[r * k..(r + 1) * k], 1, k, &plain, m, faer::Par::Seq);
            }
            let faer_1 = t.elapsed().as_secs_f64() / n as f64;
            println!("one {:.2} us, grouped {:.2} us/row, faer batch {:.2} us/row, faer one {:.2} us", one * 1e6, grp * 1e6, faer_b * 1e6, faer_1 * 1e6);
        }
    }
}
