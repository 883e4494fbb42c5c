//! Product quantization: one k-means per block of `d / m` dimensions; encoding picks the
//! nearest centroid of each block.

use faer::Par;
use rayon::prelude::*;

use super::kmeans::{kmeans, nearest_block, row_norms};
use super::linalg::{gemm_nn, Rng};
use super::Progress;
use crate::error::Result;

/// Rows encoded by one rayon task.
pub(crate) const ENCODE_ROWS: usize = 4096;

/// Train `m` subquantizers of `k` centroids on `x` (`n x d`); returns the centroids as
/// `m x k x (d / m)`. `init` (same layout) warm-starts every subquantizer.
#[allow(clippy::too_many_arguments)]
pub fn train(
    x: &[f32],
    n: usize,
    d: usize,
    m: usize,
    k: usize,
    iterations: usize,
    attempts: usize,
    init: Option<&[f32]>,
    rng: &Rng,
    progress: &Progress,
) -> Result<Vec<f32>> {
    let ds = d / m;
    let parts = (0..m)
        .into_par_iter()
        .map(|s| {
            let sub: Vec<f32> = x.chunks_exact(d).flat_map(|r| &r[s * ds..(s + 1) * ds]).copied().collect();
            let mut rng = rng.fork(s as u64);
            let init = init.map(|c| &c[s * k * ds..(s + 1) * k * ds]);
            kmeans(&sub, n, ds, k, iterations, attempts, init, &mut rng, progress).map(|km| km.centroids)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(parts.concat())
}

/// Codes (`n x m`) of the rows of `x` (`n x d`); with a projection `P` (`d x d`) the rows
/// are encoded as `x·P`. Adds 1 to `progress` per block of [`ENCODE_ROWS`] rows.
pub fn encode(
    x: &[f32],
    n: usize,
    d: usize,
    projection: Option<&[f32]>,
    centroids: &[f32],
    m: usize,
    k: usize,
    progress: &Progress,
) -> Result<Vec<u8>> {
    let ds = d / m;
    let cnorms: Vec<Vec<f32>> = (0..m).map(|s| row_norms(&centroids[s * k * ds..(s + 1) * k * ds], ds)).collect();
    let mut codes = vec![0u8; n * m];
    codes
        .par_chunks_mut(ENCODE_ROWS * m)
        .enumerate()
        .try_for_each(|(t, codes)| {
            progress.check()?;
            let s0 = t * ENCODE_ROWS;
            let rows = codes.len() / m;
            let chunk = &x[s0 * d..(s0 + rows) * d];
            let mut projected = Vec::new();
            let xr: &[f32] = match projection {
                Some(p) => {
                    projected.resize(rows * d, 0.0);
                    gemm_nn(&mut projected, chunk, rows, d, p, d, Par::Seq);
                    &projected
                }
                None => chunk,
            };
            let mut dots = Vec::new();
            for s in 0..m {
                let cent = &centroids[s * k * ds..(s + 1) * k * ds];
                nearest_block(&xr[s * ds..], rows, ds, d, cent, &cnorms[s], k, &mut dots, |r, j, _| {
                    codes[r * m + s] = j as u8;
                });
            }
            progress.add(1);
            Ok(())
        })?;
    Ok(codes)
}

/// Rebuild `n x d` rows from codes, without projection (in the encoded space).
pub fn decode(codes: &[u8], m: usize, k: usize, d: usize, centroids: &[f32]) -> Vec<f32> {
    let ds = d / m;
    let n = codes.len() / m;
    let mut out = vec![0f32; n * d];
    out.par_chunks_mut(d).zip(codes.par_chunks(m)).for_each(|(row, code)| {
        for (s, &c) in code.iter().enumerate() {
            let base = (s * k + usize::from(c)) * ds;
            row[s * ds..(s + 1) * ds].copy_from_slice(&centroids[base..base + ds]);
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_representable_data_is_reproduced() {
        // Every row is a concatenation of one of 4 patterns per 2-dim block.
        let (m, k, d) = (3, 4, 6);
        let ds = d / m;
        let mut rng = Rng::new(5);
        let patterns: Vec<f32> = (0..m * k * ds).map(|_| rng.gaussian() as f32).collect();
        let n = 200;
        let mut x = vec![0f32; n * d];
        for r in 0..n {
            for s in 0..m {
                let c = rng.below(k);
                x[r * d + s * ds..r * d + (s + 1) * ds]
                    .copy_from_slice(&patterns[(s * k + c) * ds..(s * k + c + 1) * ds]);
            }
        }
        let p = Progress::default();
        let cent = train(&x, n, d, m, k, 25, 3, None, &rng, &p).unwrap();
        let codes = encode(&x, n, d, None, &cent, m, k, &p).unwrap();
        let y = decode(&codes, m, k, d, &cent);
        let err: f32 = x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum();
        assert!(err < 1e-8, "error {err}");
    }
}
