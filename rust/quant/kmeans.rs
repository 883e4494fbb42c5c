//! k-means for product quantization: k-means++ initialisation, Lloyd iterations with the
//! distance computations done as GEMM (‖x‖² − 2x·c + ‖c‖²), faiss-style repair of empty
//! clusters by splitting a large one, several attempts keeping the best.

use faer::Par;
use rayon::prelude::*;

use super::linalg::{gemm_nt, Rng};
use super::Progress;
use crate::error::Result;

/// Rows handled by one rayon task.
const TASK_ROWS: usize = 2048;
/// Rows per GEMM block inside a task (the `rows x k` distance block stays in L2).
const BLOCK_ROWS: usize = 128;

/// The trained centroids (`k x d`, row-major) and the sum of squared distances of the
/// training points to their nearest centroid.
#[derive(Clone, Debug)]
pub struct KMeans {
    pub centroids: Vec<f32>,
    pub objective: f64,
}

/// Squared norms of the rows of a `n x d` matrix.
pub fn row_norms(x: &[f32], d: usize) -> Vec<f32> {
    x.par_chunks(d.max(1) * 1024)
        .flat_map_iter(|c| c.chunks_exact(d).map(|r| r.iter().map(|v| v * v).sum::<f32>()).collect::<Vec<_>>())
        .collect()
}

/// For each row of `x` (`n x d`, row stride `stride`, first row at `x[0]`), the nearest of
/// the `k` centroids and `‖c‖² − 2 x·c` (the squared distance minus ‖x‖²). Sequential;
/// callers parallelize over row ranges. `dots` is scratch space.
#[allow(clippy::too_many_arguments)]
pub fn nearest_block(
    x: &[f32],
    n: usize,
    d: usize,
    stride: usize,
    centroids: &[f32],
    cnorms: &[f32],
    k: usize,
    dots: &mut Vec<f32>,
    mut emit: impl FnMut(usize, usize, f32),
) {
    dots.resize(BLOCK_ROWS * k, 0.0);
    let mut s = 0;
    while s < n {
        let e = (s + BLOCK_ROWS).min(n);
        let rows = e - s;
        gemm_nt(dots, &x[s * stride..], rows, d, stride, centroids, k, Par::Seq);
        for r in 0..rows {
            let row = &mut dots[r * k..(r + 1) * k];
            for (v, &cn) in row.iter_mut().zip(cnorms) {
                *v = cn - 2.0 * *v;
            }
            let (best, best_v) = argmin(row);
            emit(s + r, best, best_v);
        }
        s = e;
    }
}

/// Index and value of the smallest element (the first one on ties); 8 lanes so that the
/// compiler vectorizes the scan.
#[inline]
pub fn argmin(v: &[f32]) -> (usize, f32) {
    const L: usize = 8;
    let mut best = [f32::INFINITY; L];
    let mut idx = [0u32; L];
    let chunks = v.chunks_exact(L);
    let tail = chunks.remainder();
    for (c, chunk) in chunks.enumerate() {
        for l in 0..L {
            let better = chunk[l] < best[l];
            best[l] = if better { chunk[l] } else { best[l] };
            idx[l] = if better { (c * L + l) as u32 } else { idx[l] };
        }
    }
    let mut b = 0usize;
    let mut bv = f32::INFINITY;
    for l in 0..L {
        if best[l] < bv || (best[l] == bv && (idx[l] as usize) < b) {
            bv = best[l];
            b = idx[l] as usize;
        }
    }
    let base = v.len() - tail.len();
    for (i, &x) in tail.iter().enumerate() {
        if x < bv {
            bv = x;
            b = base + i;
        }
    }
    (b, bv)
}

/// Assign every row of `x` (`n x d`) to its nearest centroid; returns the objective.
fn assign(x: &[f32], xnorms: &[f32], d: usize, centroids: &[f32], k: usize, codes: &mut [u32]) -> f64 {
    let cnorms = row_norms(centroids, d);
    codes
        .par_chunks_mut(TASK_ROWS)
        .enumerate()
        .map(|(t, codes)| {
            let s = t * TASK_ROWS;
            let n = codes.len();
            let mut dots = Vec::new();
            let mut obj = 0f64;
            nearest_block(&x[s * d..(s + n) * d], n, d, d, centroids, &cnorms, k, &mut dots, |r, j, v| {
                codes[r] = j as u32;
                obj += f64::from((xnorms[s + r] + v).max(0.0));
            });
            obj
        })
        .sum()
}

/// Recompute centroids as means of their points; returns the cluster sizes.
fn update(x: &[f32], d: usize, codes: &[u32], k: usize, centroids: &mut [f32]) -> Vec<usize> {
    let (sums, counts) = codes
        .par_chunks(TASK_ROWS)
        .enumerate()
        .fold(
            || (vec![0f64; k * d], vec![0usize; k]),
            |(mut sums, mut counts), (t, codes)| {
                let s = t * TASK_ROWS;
                for (r, &c) in codes.iter().enumerate() {
                    let c = c as usize;
                    counts[c] += 1;
                    let row = &x[(s + r) * d..(s + r + 1) * d];
                    for (acc, v) in sums[c * d..(c + 1) * d].iter_mut().zip(row) {
                        *acc += f64::from(*v);
                    }
                }
                (sums, counts)
            },
        )
        .reduce(
            || (vec![0f64; k * d], vec![0usize; k]),
            |(mut a, mut ca), (b, cb)| {
                for (x, y) in a.iter_mut().zip(&b) {
                    *x += y;
                }
                for (x, y) in ca.iter_mut().zip(&cb) {
                    *x += y;
                }
                (a, ca)
            },
        );
    for c in 0..k {
        if counts[c] > 0 {
            let inv = 1.0 / counts[c] as f64;
            for (dst, s) in centroids[c * d..(c + 1) * d].iter_mut().zip(&sums[c * d..(c + 1) * d]) {
                *dst = (s * inv) as f32;
            }
        }
    }
    counts
}

/// faiss's repair of empty clusters: an empty cluster takes over half of a cluster chosen
/// with probability proportional to its size − 1, both centroids nudged apart: scaled by
/// 1 ± 1/1024 as faiss does, plus ± `scale`·1e-6 per coordinate, so that a zero centroid
/// splits too (`scale`: the data's RMS value per coordinate, so the nudge is as small
/// relative to the data whatever its magnitude).
fn split_empty(centroids: &mut [f32], counts: &mut [usize], d: usize, n: usize, scale: f32, rng: &mut Rng) -> usize {
    const EPS: f32 = 1.0 / 1024.0;
    let k = counts.len();
    let mut repaired = 0;
    for ci in 0..k {
        if counts[ci] != 0 {
            continue;
        }
        let denom = n.saturating_sub(k).max(1) as f64;
        let cj = loop {
            let p = rng.f64() * denom;
            let mut acc = 0f64;
            let mut cj = 0;
            while cj < k {
                acc += counts[cj].saturating_sub(1) as f64;
                if acc > p {
                    break;
                }
                cj += 1;
            }
            if cj < k && counts[cj] > 1 {
                break cj;
            }
            if counts.iter().all(|&c| c <= 1) {
                return repaired; // nothing left to split
            }
        };
        let (src, dst) = (cj * d, ci * d);
        for j in 0..d {
            let v = centroids[src + j];
            let tiny = EPS * 1e-3 * scale;
            if j % 2 == 0 {
                centroids[dst + j] = v * (1.0 + EPS) + tiny;
                centroids[src + j] = v * (1.0 - EPS) - tiny;
            } else {
                centroids[dst + j] = v * (1.0 - EPS) - tiny;
                centroids[src + j] = v * (1.0 + EPS) + tiny;
            }
        }
        counts[ci] = counts[cj] / 2;
        counts[cj] -= counts[ci];
        repaired += 1;
    }
    repaired
}

/// k-means++: the first centroid uniformly, each next one with probability proportional to
/// the squared distance to the nearest centroid chosen so far.
fn kmeanspp(x: &[f32], n: usize, d: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
    let mut centroids = vec![0f32; k * d];
    let first = rng.below(n);
    centroids[..d].copy_from_slice(&x[first * d..(first + 1) * d]);
    let mut mind = vec![0f32; n];
    let dist = |r: usize, c: &[f32]| -> f32 {
        x[r * d..(r + 1) * d].iter().zip(c).map(|(a, b)| (a - b) * (a - b)).sum()
    };
    {
        let c0 = &centroids[..d];
        mind.par_chunks_mut(TASK_ROWS).enumerate().for_each(|(t, m)| {
            for (i, v) in m.iter_mut().enumerate() {
                *v = dist(t * TASK_ROWS + i, c0);
            }
        });
    }
    for c in 1..k {
        let total: f64 = mind.par_chunks(TASK_ROWS).map(|m| m.iter().map(|&v| f64::from(v)).sum::<f64>()).sum();
        let pick = if total > 0.0 {
            let target = rng.f64() * total;
            let mut acc = 0f64;
            let mut pick = n - 1;
            for (i, &v) in mind.iter().enumerate() {
                acc += f64::from(v);
                if acc > target {
                    pick = i;
                    break;
                }
            }
            pick
        } else {
            rng.below(n) // all points coincide with centroids already: duplicates are repaired later
        };
        centroids[c * d..(c + 1) * d].copy_from_slice(&x[pick * d..(pick + 1) * d]);
        let cc = &centroids[c * d..(c + 1) * d];
        mind.par_chunks_mut(TASK_ROWS).enumerate().for_each(|(t, m)| {
            for (i, v) in m.iter_mut().enumerate() {
                let nd = dist(t * TASK_ROWS + i, cc);
                if nd < *v {
                    *v = nd;
                }
            }
        });
    }
    centroids
}

/// Train `k` centroids on `x` (`n x d`, row-major, `n >= k`) with `iterations` Lloyd steps,
/// keeping the best of `attempts` runs. With `init`, the first attempt starts from those
/// centroids instead of k-means++. Each Lloyd step of each attempt adds 1 to `progress`.
#[allow(clippy::too_many_arguments)]
pub fn kmeans(
    x: &[f32],
    n: usize,
    d: usize,
    k: usize,
    iterations: usize,
    attempts: usize,
    init: Option<&[f32]>,
    rng: &mut Rng,
    progress: &Progress,
) -> Result<KMeans> {
    debug_assert!(n >= k && k > 0 && x.len() == n * d);
    let xnorms = row_norms(x, d);
    // RMS value per coordinate (the scale of the nudge that splits a cluster)
    let scale = (xnorms.iter().map(|&v| f64::from(v)).sum::<f64>() / (n.max(1) * d.max(1)) as f64).sqrt() as f32;
    let mut codes = vec![0u32; n];
    let mut best: Option<KMeans> = None;
    for attempt in 0..attempts.max(1) {
        let mut centroids = match (attempt, init) {
            (0, Some(c)) => c.to_vec(),
            _ => kmeanspp(x, n, d, k, rng),
        };
        let mut prev_codes: Option<Vec<u32>> = None;
        let mut last_objective = f64::INFINITY;
        let mut converged = false;
        for it in 0..iterations {
            progress.check()?;
            last_objective = assign(x, &xnorms, d, &centroids, k, &mut codes);
            progress.add(1);
            if prev_codes.as_deref() == Some(&codes[..]) {
                progress.add((iterations - it - 1) as u64);
                converged = true;
                break; // converged: the centroids would not move
            }
            let mut counts = update(x, d, &codes, k, &mut centroids);
            if it + 1 < iterations {
                // (not after the last update: its centroids are returned as they are)
                split_empty(&mut centroids, &mut counts, d, n, scale, rng);
            }
            match &mut prev_codes {
                Some(p) => p.copy_from_slice(&codes),
                None => prev_codes = Some(codes.clone()),
            }
        }
        if converged {
            // The centroids returned are the means of their points (exact for data with fewer
            // distinct rows than centroids): the update before a converged assignment may have
            // been followed by a split, whose nudged centroids would be returned. (A loop run
            // to its end did its last update without a split.)
            update(x, d, &codes, k, &mut centroids);
        }
        // Several attempts are compared by the score of the centroids each returns, their own
        // assignment (the loop's is that of the centroids before the last update); a single
        // attempt keeps the loop's, an upper bound, and saves the pass.
        let objective = if attempts > 1 || iterations == 0 {
            assign(x, &xnorms, d, &centroids, k, &mut codes)
        } else {
            last_objective
        };
        if best.as_ref().is_none_or(|b| objective < b.objective) {
            best = Some(KMeans { centroids, objective });
        }
    }
    Ok(best.expect("at least one attempt"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_separated_clusters() {
        let (k, d, per) = (8, 3, 50);
        let mut rng = Rng::new(1);
        let centers: Vec<f32> = (0..k * d).map(|_| (rng.gaussian() * 10.0) as f32).collect();
        let mut x = Vec::new();
        for c in 0..k {
            for _ in 0..per {
                for j in 0..d {
                    x.push(centers[c * d + j] + (rng.gaussian() * 0.01) as f32);
                }
            }
        }
        let n = k * per;
        let km = kmeans(&x, n, d, k, 20, 3, None, &mut rng, &Progress::default()).unwrap();
        // within-cluster noise only: 3 dims x 0.01² per point
        assert!(km.objective / n as f64 <= 1e-3, "objective {}", km.objective);
        for c in 0..k {
            let want = &centers[c * d..(c + 1) * d];
            let found = km.centroids.chunks_exact(d).any(|got| got.iter().zip(want).all(|(a, b)| (a - b).abs() < 0.01));
            assert!(found, "cluster {c} not recovered");
        }
    }

    #[test]
    fn argmin_matches_scalar_scan() {
        let mut rng = Rng::new(4);
        for len in [1, 7, 8, 9, 31, 256] {
            let mut v: Vec<f32> = (0..len).map(|_| (rng.below(5) as f32) - 2.0).collect();
            let want = v.iter().enumerate().fold((0, f32::INFINITY), |b, (i, &x)| if x < b.1 { (i, x) } else { b });
            assert_eq!(argmin(&v), want, "{v:?}");
            v[len - 1] = -100.0;
            assert_eq!(argmin(&v), (len - 1, -100.0));
        }
    }

    #[test]
    fn empty_clusters_are_split() {
        let d = 2;
        let mut centroids = vec![0.0, 0.0, 5.0, 5.0, 100.0, 100.0];
        let mut counts = vec![10, 4, 0];
        let mut rng = Rng::new(0);
        assert_eq!(split_empty(&mut centroids, &mut counts, d, 14, 1.0, &mut rng), 1);
        assert_eq!(counts.iter().sum::<usize>(), 14);
        assert!(counts.iter().all(|&c| c > 0));
        assert_ne!(&centroids[4..6], &[100.0, 100.0]);
    }
}
