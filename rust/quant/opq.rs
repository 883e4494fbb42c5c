//! Optimized product quantization (Ge et al. 2013, non-parametric variant): alternate PQ
//! training on the rotated data `X·R` with the orthogonal Procrustes update of `R`
//! (`R = U Vᵀ` from the SVD of `Xᵀ·Ŷ`, Ŷ the PQ reconstruction of `X·R`).

use faer::Par;

use super::linalg::{gemm_nn, gemm_tn_f64, polar_orthogonal, random_orthogonal, Rng};
use super::{pq, Progress};
use crate::error::Result;

/// Lloyd steps per subquantizer in each OPQ iteration after the first (warm-started).
pub const INNER_ITERATIONS: usize = 4;

/// A trained OPQ quantizer: the rotation `R` (`d x d`, encode `x·R`) and the centroids
/// (`m x k x d/m`) of the PQ in the rotated space.
pub struct Opq {
    pub rotation: Vec<f32>,
    pub centroids: Vec<f32>,
}

/// OPQ alternations for `iterations` k-means iterations: twice as many (50 by default, as faiss).
pub fn alternations(iterations: usize) -> usize {
    2 * iterations.max(1)
}

/// Progress units [`train`] reports for `n` rows.
pub fn progress_units(n: usize, m: usize, iterations: usize, attempts: usize) -> u64 {
    let encode_blocks = n.div_ceil(pq::ENCODE_ROWS) as u64;
    let alt = alternations(iterations);
    let kmeans_steps = attempts * iterations + (alt - 1) * INNER_ITERATIONS + iterations;
    (m * kmeans_steps) as u64 + alt as u64 * encode_blocks
}

/// Train OPQ on `x` (`n x d`): [`alternations`] rounds (the first trains the PQ from
/// scratch with `iterations` Lloyd steps and `attempts` attempts, the others refine it with
/// [`INNER_ITERATIONS`] steps), then a final refinement of the PQ for the last rotation.
#[allow(clippy::too_many_arguments)]
pub fn train(
    x: &[f32],
    n: usize,
    d: usize,
    m: usize,
    k: usize,
    iterations: usize,
    attempts: usize,
    rng: &Rng,
    progress: &Progress,
) -> Result<Opq> {
    let mut rotation = random_orthogonal(d, &mut rng.fork(u64::MAX))?;
    let mut centroids: Option<Vec<f32>> = None;
    let mut xr = vec![0f32; n * d];
    for it in 0..alternations(iterations) {
        progress.check()?;
        gemm_nn(&mut xr, x, n, d, &rotation, d, Par::rayon(0));
        let (steps, tries) = if it == 0 { (iterations, attempts) } else { (INNER_ITERATIONS, 1) };
        let cent = pq::train(&xr, n, d, m, k, steps, tries, centroids.as_deref(), &rng.fork(it as u64), progress)?;
        let codes = pq::encode(&xr, n, d, None, &cent, m, k, progress)?;
        let y = pq::decode(&codes, m, k, d, &cent);
        let cross = gemm_tn_f64(x, n, d, &y, d);
        rotation = polar_orthogonal(&cross, d)?;
        centroids = Some(cent);
    }
    gemm_nn(&mut xr, x, n, d, &rotation, d, Par::rayon(0));
    let centroids = pq::train(&xr, n, d, m, k, iterations, 1, centroids.as_deref(), &rng.fork(1 << 40), progress)?;
    Ok(Opq { rotation, centroids })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data whose blocks are exactly representable only after an (unknown) rotation: OPQ
    /// must do much better than PQ on it.
    #[test]
    fn opq_beats_pq_on_rotated_structured_data() {
        let (m, k, d, n) = (2, 4, 4, 400);
        let ds = d / m;
        let mut rng = Rng::new(9);
        let patterns: Vec<f32> = (0..m * k * ds).map(|_| (rng.gaussian() * 3.0) as f32).collect();
        let mut z = vec![0f32; n * d];
        for r in 0..n {
            for s in 0..m {
                let c = rng.below(k);
                z[r * d + s * ds..r * d + (s + 1) * ds]
                    .copy_from_slice(&patterns[(s * k + c) * ds..(s * k + c + 1) * ds]);
            }
        }
        let q = random_orthogonal(d, &mut rng).unwrap();
        let mut x = vec![0f32; n * d];
        gemm_nn(&mut x, &z, n, d, &q, d, Par::Seq); // x = z·Q, so x·Qᵀ is representable
        let p = Progress::default();
        let err = |proj: Option<&[f32]>, cent: &[f32]| -> f32 {
            let codes = pq::encode(&x, n, d, proj, cent, m, k, &p).unwrap();
            let y = pq::decode(&codes, m, k, d, cent);
            let mut back = vec![0f32; n * d];
            match proj {
                Some(r) => {
                    // back = y·Rᵀ
                    let mut rt = vec![0f32; d * d];
                    for i in 0..d {
                        for j in 0..d {
                            rt[i * d + j] = r[j * d + i];
                        }
                    }
                    gemm_nn(&mut back, &y, n, d, &rt, d, Par::Seq);
                }
                None => back = y,
            }
            x.iter().zip(&back).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() / x.iter().map(|a| a * a).sum::<f32>()
        };
        let plain = pq::train(&x, n, d, m, k, 25, 3, None, &rng, &p).unwrap();
        let opq = train(&x, n, d, m, k, 25, 3, &rng, &p).unwrap();
        let (e_pq, e_opq) = (err(None, &plain), err(Some(&opq.rotation), &opq.centroids));
        assert!(e_opq < 0.5 * e_pq, "opq {e_opq} vs pq {e_pq}");
    }
}
