//! Product-quantized matrices (finalfusion's QuantizedArray chunk).
//!
//! A row is rebuilt by concatenating centroid `code[m]` of each subquantizer `m`,
//! multiplying by the transposed projection if there is one, and scaling by the
//! row's norm if norms are stored.

use std::borrow::Cow;
use std::io::Write;
use std::sync::{Arc, OnceLock};

use rayon::prelude::*;

use super::FileBytes;
use crate::error::{Error, Result};
use crate::format::{checked_mul, padding, ByteReader, ChunkId, PosWriter, TYPE_F32, TYPE_U8};

/// Smallest limit on the projected-centroid table (floats, 8 MiB), whatever the caches.
///
/// Rebuilding a row from the table reads `m` scattered rows of `dims` floats; once the
/// table outgrows the last-level cache those reads wait on memory and cost more than the
/// product with Pᵀ (a `dims x dims` matrix that stays in L2), so larger quantizers use the
/// product and the load stays instant.
const PROJECTED_TABLE_MIN_LIMIT: usize = 2 << 20;

/// Largest limit on the projected-centroid table (floats, 32 MiB), whatever the caches.
///
/// A virtual machine may report its host's whole last-level cache (480 MiB seen on a 2-core
/// Xeon VM), of which one core gets a small share: there a 46 MB table (M = 150, D = 300)
/// rebuilt a row in 11.7 µs against 7.0 µs for the product, and batches in 5.9 against
/// 1.1 µs a row, while a 22 MB one (M = 75) still won one row at a time (6.1 against 7.0 µs).
const PROJECTED_TABLE_MAX_LIMIT: usize = 8 << 20;

/// Largest projected-centroid table (floats) built at load: half the last-level cache,
/// within [`PROJECTED_TABLE_MIN_LIMIT`] and [`PROJECTED_TABLE_MAX_LIMIT`]. Measured on a
/// Zen 4 (32 MiB L3, D = 300, OPQ): a 15 MB table (M = 50) rebuilds a row in 3.4 µs against
/// 5.3 µs for the product, a 9 MB one (M = 30) in 2.2 µs; a 23 MB one (M = 75) takes
/// 7.0 µs, the product 5.4 µs.
fn projected_table_limit() -> usize {
    static LIMIT: OnceLock<usize> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        // (`VECFUSION_CENTROID_TABLE=off`: never, for comparisons)
        if std::env::var("VECFUSION_CENTROID_TABLE").is_ok_and(|v| v == "off") {
            return 0;
        }
        let l3 = last_level_cache_bytes().unwrap_or(0);
        (l3 / 2 / std::mem::size_of::<f32>()).clamp(PROJECTED_TABLE_MIN_LIMIT, PROJECTED_TABLE_MAX_LIMIT)
    })
}

/// Whether rows are rebuilt from the projected-centroid table (`m` scattered rows of `dims`
/// floats each) rather than by the product `concat · Pᵀ` (`dims²` floats read in order):
/// when the table fits [`projected_table_limit`]. Measured on a 2-core Xeon VM (OPQ M = 50,
/// 300 dims, 15 MB table), the two trade places with the workload: the benchmark
/// (`bench_quant.py --lookups-only`, cold words of 200k) takes 5.7 µs a known word from the
/// table against 6.6-7.0 by the product (batches 2.8-3.5 against 2.0-2.5 µs a row), a warm
/// loop over 50k words (`bench_rebuild.py`) 4.7-5.0 against 3.7 µs. The table stays, as the
/// quantized-lookup issue asks.
fn use_projected_table(m: usize, k: usize, dims: usize) -> bool {
    m.saturating_mul(k).saturating_mul(dims) <= projected_table_limit()
}

/// Size of the largest CPU cache, from sysfs (`None` where it cannot be read).
fn last_level_cache_bytes() -> Option<usize> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    dir.flatten()
        .filter_map(|e| parse_cache_size(&std::fs::read_to_string(e.path().join("size")).ok()?))
        .max()
}

/// `"32768K"`, `"1M"`, `"512"` -> bytes.
fn parse_cache_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, mult) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1 << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
        b'G' | b'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<usize>().ok()?.checked_mul(mult)
}

/// The u8 codes of a quantized matrix: owned or inside a (memory-mapped) file buffer.
#[derive(Clone)]
pub enum U8Data {
    Owned(Arc<Vec<u8>>),
    Mapped { bytes: FileBytes, offset: usize, len: usize },
}

impl U8Data {
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        match self {
            U8Data::Owned(v) => v,
            U8Data::Mapped { bytes, offset, len } => &bytes.as_slice()[*offset..*offset + *len],
        }
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self, U8Data::Mapped { bytes, .. } if !matches!(bytes, FileBytes::Owned(_)))
    }
}

/// A product-quantized `rows x dims` matrix.
#[derive(Clone)]
pub struct QuantizedStorage {
    /// `dims x dims` row-major projection P (encoding used x·P), if any.
    projection: Option<Arc<Vec<f32>>>,
    /// Pᵀ row-major, each row padded with zeros to `projection_t_stride` values
    /// (`vecmat::PAD`): rebuilding a row is `concat · Pᵀ`, read row after row.
    projection_t: Option<Arc<Vec<f32>>>,
    projection_t_stride: usize,
    /// `m x k x (dims / m)` centroids.
    centroids: Arc<Vec<f32>>,
    /// One norm per row, if stored.
    norms: Option<Arc<Vec<f32>>>,
    /// `rows x m` codes.
    codes: U8Data,
    rows: usize,
    dims: usize,
    m: usize,
    k: usize,
    /// With a projection: `m x k x dims`, each centroid already multiplied by its block of Pᵀ,
    /// so that rebuilding a row is `m` vector additions.
    projected: Option<Arc<Vec<f32>>>,
    /// Per row, `‖c·Pᵀ‖` (see [`QuantizedStorage::code_norms`]), made on first use.
    code_norms: Arc<OnceLock<Vec<f32>>>,
}

impl std::fmt::Debug for QuantizedStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantizedStorage")
            .field("rows", &self.rows)
            .field("dims", &self.dims)
            .field("subquantizers", &self.m)
            .field("centroids", &self.k)
            .field("projection", &self.projection.is_some())
            .field("norms", &self.norms.is_some())
            .finish()
    }
}

impl QuantizedStorage {
    /// Assemble a quantized matrix, checking every size.
    pub fn new(
        projection: Option<Vec<f32>>,
        centroids: Vec<f32>,
        norms: Option<Vec<f32>>,
        codes: U8Data,
        rows: usize,
        dims: usize,
        m: usize,
        k: usize,
    ) -> Result<Self> {
        if m == 0 || dims == 0 || dims % m != 0 {
            return Err(Error::invalid(
                "quantizer",
                format!("{m} subquantizers do not divide {dims} dimensions"),
            ));
        }
        if k == 0 || k > 256 {
            return Err(Error::invalid("quantizer", format!("{k} centroids (must be 1 to 256 for u8 codes)")));
        }
        if let Some(p) = &projection {
            if p.len() != dims * dims {
                return Err(Error::invalid("projection", "size is not dims x dims"));
            }
        }
        if centroids.len() != m * k * (dims / m) {
            return Err(Error::invalid("centroids", "size is not subquantizers x centroids x block"));
        }
        if let Some(n) = &norms {
            if n.len() != rows {
                return Err(Error::invalid("quantized norms", "count differs from rows"));
            }
        }
        if codes.as_slice().len() != rows * m {
            return Err(Error::invalid("quantized codes", "size is not rows x subquantizers"));
        }
        // With 256 centroids every u8 code is valid: the check (which would read every code,
        // every page of a memory-mapped file) is needed only for fewer.
        if k < 256 {
            if let Some(&bad) = codes.as_slice().iter().find(|&&c| usize::from(c) >= k) {
                return Err(Error::invalid(
                    "quantized codes",
                    format!("code {bad} refers to a centroid beyond the {k} stored"),
                ));
            }
        }
        // The table costs m·k·dims floats; where it would not win, rows are rebuilt with a product.
        let projected = projection
            .as_ref()
            .filter(|_| use_projected_table(m, k, dims))
            .map(|p| Arc::new(project_centroids(p, &centroids, dims, m, k)));
        let (projection_t, projection_t_stride) = match &projection {
            Some(p) => {
                let (t, stride) = super::vecmat::transpose_padded(p, dims, dims);
                (Some(Arc::new(t)), stride)
            }
            None => (None, 0),
        };
        Ok(QuantizedStorage {
            projection: projection.map(Arc::new),
            projection_t,
            projection_t_stride,
            centroids: Arc::new(centroids),
            norms: norms.map(Arc::new),
            codes,
            rows,
            dims,
            m,
            k,
            projected,
            code_norms: Arc::default(),
        })
    }

    /// Per row, the length of its rebuilt vector before the stored norm: `‖c·Pᵀ‖`, with `c`
    /// the row's centroids side by side (`‖c‖` without a projection). What a cosine with the
    /// rebuilt row divides by. Made on first use and kept (4 bytes per row). Without a
    /// projection, or with an orthogonal one (OPQ's rotation), it is `sqrt(Σ ‖centroid‖²)`
    /// over the row's subquantizers; otherwise each row is rebuilt.
    ///
    /// Only the first `rows` rows (the word rows: what the searches score). The first call's
    /// rows are kept; a later call that asks for more (another vocabulary over a clone of this
    /// storage) gets its own, not kept. In parallel only when that work is large (see
    /// `query::PARALLEL_WORK`), as a caller that keeps the GIL counts it.
    pub fn code_norms(&self, rows: usize) -> Cow<'_, [f32]> {
        let rows = rows.min(self.rows);
        let kept = super::get_or_compute::<Vec<f32>>(&self.code_norms, || self.compute_code_norms(rows));
        match kept.get(..rows) {
            Some(norms) => Cow::Borrowed(norms),
            None => Cow::Owned(self.compute_code_norms(rows)),
        }
    }

    /// Whether [`Self::code_norms`] has been made (its first call checks the projection,
    /// some `d³` of work, and may rebuild each row).
    pub fn code_norms_made(&self) -> bool {
        self.code_norms.get().is_some()
    }

    /// [`Self::code_norms`] of the first `rows` rows (at most the storage's), computed.
    fn compute_code_norms(&self, rows: usize) -> Vec<f32> {
        let (dims, m, k) = (self.dims, self.m, self.k);
        if rows == 0 || dims == 0 || m == 0 {
            return vec![0f32; rows];
        }
        let ds = dims / m;
        let codes = self.codes();
        let mut out = vec![0f32; rows];
        let orthogonal = self.projection.as_deref().is_none_or(|p| is_orthogonal(p, dims));
        if orthogonal {
            let c2: Vec<f32> = self.centroids.chunks_exact(ds).map(|c| c.iter().map(|x| x * x).sum()).collect();
            let norm = |(i, o): (usize, &mut f32)| {
                let code = &codes[i * m..(i + 1) * m];
                let s: f32 = code.iter().enumerate().map(|(j, &c)| c2[j * k + usize::from(c)]).sum();
                *o = s.sqrt();
            };
            // (small: on this thread, which may hold the GIL; see `query::PARALLEL_WORK`)
            if rows.saturating_mul(m) < crate::query::PARALLEL_WORK {
                out.iter_mut().enumerate().for_each(norm);
            } else {
                out.par_iter_mut().with_min_len(4096).enumerate().for_each(norm);
            }
        } else {
            // c·Pᵀ without the stored norm: the row's centroids side by side, then the
            // product the rebuild uses
            let rebuilt_norm = |(c, x): &mut (Vec<f32>, Vec<f32>), (i, o): (usize, &mut f32)| {
                c.fill(0.0);
                self.add_concat(i, 1.0, c);
                self.times_pt(c, 1, x);
                *o = x.iter().map(|v| v * v).sum::<f32>().sqrt();
            };
            if rows.saturating_mul(dims).saturating_mul(dims) < crate::query::PARALLEL_WORK {
                let mut bufs = (vec![0f32; dims], vec![0f32; dims]);
                out.iter_mut().enumerate().for_each(|item| rebuilt_norm(&mut bufs, item));
            } else {
                out.par_iter_mut().with_min_len(64).enumerate().for_each_init(
                    || (vec![0f32; dims], vec![0f32; dims]),
                    rebuilt_norm,
                );
            }
        }
        out
    }

    #[inline]
    pub fn rows(&self) -> usize {
        self.rows
    }

    #[inline]
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Number of subquantizers.
    pub fn n_subquantizers(&self) -> usize {
        self.m
    }

    /// Centroids per subquantizer.
    pub fn n_centroids(&self) -> usize {
        self.k
    }

    pub fn projection(&self) -> Option<&[f32]> {
        self.projection.as_deref().map(Vec::as_slice)
    }

    pub fn centroids(&self) -> &[f32] {
        &self.centroids
    }

    pub fn norms(&self) -> Option<&[f32]> {
        self.norms.as_deref().map(Vec::as_slice)
    }

    pub fn codes(&self) -> &[u8] {
        self.codes.as_slice()
    }

    pub fn codes_data(&self) -> &U8Data {
        &self.codes
    }

    pub fn is_mapped(&self) -> bool {
        self.codes.is_mapped()
    }

    /// Add the rebuilt row `i` to `out` (`out.len() == dims`).
    #[inline]
    pub fn add_reconstructed(&self, i: usize, out: &mut [f32]) {
        let codes = &self.codes.as_slice()[i * self.m..(i + 1) * self.m];
        let scale = self.norms.as_ref().map_or(1.0, |n| n[i]);
        let ds = self.dims / self.m;
        match &self.projected {
            // m rows of the projected table, summed in registers (no matrix product).
            Some(table) => kernels::add_table_rows(out, table, codes, self.k, self.dims, scale),
            None if self.projection.is_some() => {
                // the kernel `rows_into` rebuilds groups of rows with, so that a row is the
                // same bits one at a time or in a group
                with_buffer(2 * self.dims, |buf| {
                    let (concat, product) = buf.split_at_mut(self.dims);
                    self.add_concat(i, scale, concat);
                    self.times_pt(concat, 1, product);
                    for (o, p) in out.iter_mut().zip(product.iter()) {
                        *o += p;
                    }
                });
            }
            None => {
                for (sub, &c) in codes.iter().enumerate() {
                    let base = (sub * self.k + usize::from(c)) * ds;
                    let dst = &mut out[sub * ds..(sub + 1) * ds];
                    for (o, v) in dst.iter_mut().zip(&self.centroids[base..base + ds]) {
                        *o += scale * v;
                    }
                }
            }
        }
    }

    /// How a row is rebuilt: `"concatenation"` (no projection), `"centroid table"` (the
    /// projected-centroid table built at load: `m` vector additions) or `"product"`
    /// (`concat · Pᵀ`, for quantizers whose table would outgrow the cache).
    pub fn rebuild_method(&self) -> &'static str {
        match (&self.projection, &self.projected) {
            (None, _) => "concatenation",
            (Some(_), Some(_)) => "centroid table",
            (Some(_), None) => "product",
        }
    }

    /// Whether [`QuantizedStorage::rows_into`] rebuilds several rows faster than one at a time
    /// (a projection without the precomputed table).
    pub fn rebuilds_in_batches(&self) -> bool {
        self.projection_t.is_some() && self.projected.is_none()
    }

    /// `out = concat · Pᵀ` for `n` rows of concatenated centroids (`vecmat::rows_times`: a
    /// row's bits do not depend on the rows beside it).
    fn times_pt(&self, concat: &[f32], n: usize, out: &mut [f32]) {
        let pt = self.projection_t.as_deref().map_or(&[][..], Vec::as_slice);
        super::vecmat::rows_times(out, concat, n, self.dims, pt, self.dims, self.projection_t_stride);
    }

    /// Rebuild the rows `rows[t]` that are `Some` into `out[t·dims..][..dims]` (the others are
    /// left as they are). With a projection and no table, the rows' concatenated centroids
    /// are multiplied by Pᵀ a group of rows at a time (single-threaded: callers split the
    /// work), sharing each read of Pᵀ.
    pub fn rows_into(&self, rows: &[Option<usize>], out: &mut [f32]) {
        let dims = self.dims;
        debug_assert_eq!(out.len(), rows.len() * dims);
        let some = rows.iter().flatten().count();
        if !(self.rebuilds_in_batches() && some >= 2 && dims > 0) {
            for (&r, o) in rows.iter().zip(out.chunks_exact_mut(dims.max(1))) {
                if let Some(i) = r {
                    self.reconstruct_into(i, o);
                }
            }
            return;
        }
        let mut concat = vec![0f32; some * dims];
        for (i, c) in rows.iter().flatten().zip(concat.chunks_exact_mut(dims)) {
            self.add_concat(*i, self.norms.as_ref().map_or(1.0, |n| n[*i]), c);
        }
        if some == rows.len() {
            self.times_pt(&concat, some, out);
            return;
        }
        let mut product = vec![0f32; some * dims];
        self.times_pt(&concat, some, &mut product);
        let dst = rows.iter().zip(out.chunks_exact_mut(dims)).filter(|(r, _)| r.is_some());
        for ((_, o), p) in dst.zip(product.chunks_exact(dims)) {
            o.copy_from_slice(p);
        }
    }

    /// Add the sum of the rebuilt rows `rows` to `out` (an unknown word's n-gram rows).
    ///
    /// With a projection and more than a few rows, the rows are summed before the projection
    /// (`Σ_r s_r·concat_r` then one product with Pᵀ, `dims²` operations on a matrix in cache)
    /// instead of adding `rows·m` scattered table rows of `dims` floats, which wait on memory
    /// (measured: 30 n-gram rows at M=25, D=300 cost 17-22 µs through the table, 9-13 µs projected).
    pub fn add_reconstructed_rows(&self, rows: &[usize], out: &mut [f32]) {
        let project_once = self.projection.is_some()
            && (self.projected.is_none() || rows.len().saturating_mul(self.m).saturating_mul(4) > self.dims);
        if !project_once {
            for &r in rows {
                self.add_reconstructed(r, out);
            }
            return;
        }
        with_buffer(self.dims, |concat| {
            for &r in rows {
                let scale = self.norms.as_ref().map_or(1.0, |n| n[r]);
                self.add_concat(r, scale, concat);
            }
            self.add_projected(concat, out);
        });
    }

    /// `concat += scale · (centroid code[m] of each subquantizer m)` (before any projection).
    #[inline]
    fn add_concat(&self, i: usize, scale: f32, concat: &mut [f32]) {
        let codes = &self.codes.as_slice()[i * self.m..(i + 1) * self.m];
        let (cents, k) = (&self.centroids[..], self.k);
        // the usual block widths get a loop of fixed length (unrolled, no bounds checks)
        match self.dims / self.m {
            1 => add_centroid_blocks::<1>(concat, cents, codes, k, scale),
            2 => add_centroid_blocks::<2>(concat, cents, codes, k, scale),
            3 => add_centroid_blocks::<3>(concat, cents, codes, k, scale),
            4 => add_centroid_blocks::<4>(concat, cents, codes, k, scale),
            5 => add_centroid_blocks::<5>(concat, cents, codes, k, scale),
            6 => add_centroid_blocks::<6>(concat, cents, codes, k, scale),
            8 => add_centroid_blocks::<8>(concat, cents, codes, k, scale),
            10 => add_centroid_blocks::<10>(concat, cents, codes, k, scale),
            12 => add_centroid_blocks::<12>(concat, cents, codes, k, scale),
            16 => add_centroid_blocks::<16>(concat, cents, codes, k, scale),
            ds => {
                for (sub, &c) in codes.iter().enumerate() {
                    let base = (sub * k + usize::from(c)) * ds;
                    for (o, v) in concat[sub * ds..(sub + 1) * ds].iter_mut().zip(&cents[base..base + ds]) {
                        *o += scale * v;
                    }
                }
            }
        }
    }

    /// `out += concat · Pᵀ`, i.e. `out_j += Σ_i concat_i P[j][i]` ([`Self::times_pt`]).
    fn add_projected(&self, concat: &[f32], out: &mut [f32]) {
        with_buffer(self.dims, |product| {
            self.times_pt(concat, 1, product);
            for (o, p) in out.iter_mut().zip(product.iter()) {
                *o += p;
            }
        });
    }

    /// Rebuild row `i` into `out`.
    #[inline]
    pub fn reconstruct_into(&self, i: usize, out: &mut [f32]) {
        out.fill(0.0);
        self.add_reconstructed(i, out);
    }

    /// Read the body of a QuantizedArray chunk; map the codes from `map` when given.
    pub fn read_chunk(r: &mut ByteReader<'_>, map: Option<&FileBytes>) -> Result<Self> {
        let has_projection = read_bool(r, "projection flag")?;
        let has_norms = read_bool(r, "norms flag")?;
        let m = r.u32("subquantizer count")? as usize;
        let dims = r.u32("dimensions")? as usize;
        let k = r.u32("centroid count")? as usize;
        let rows = r.u64("rows")?;
        let qty = r.u32("code type")?;
        let rty = r.u32("reconstruction type")?;
        if qty != TYPE_U8 {
            return Err(Error::invalid("code type", format!("type id {qty}, expected {TYPE_U8} (u8)")));
        }
        if rty != TYPE_F32 {
            return Err(Error::invalid("reconstruction type", format!("type id {rty}, expected {TYPE_F32} (f32)")));
        }
        if m == 0 || dims == 0 || dims % m != 0 {
            return Err(Error::invalid("quantizer", format!("{m} subquantizers do not divide {dims} dimensions")));
        }
        if k == 0 || k > 256 {
            return Err(Error::invalid("quantizer", format!("{k} centroids (must be 1 to 256 for u8 codes)")));
        }
        r.skip_padding()?;
        let remaining = r.remaining() as u64;
        let proj_len = if has_projection { checked_mul(dims as u64, dims as u64, "projection size")? } else { 0 };
        let cent_len = checked_mul(k as u64, dims as u64, "centroids size")?;
        let norms_len = if has_norms { rows } else { 0 };
        let codes_len = checked_mul(rows, m as u64, "codes size")?;
        let need = proj_len
            .checked_add(cent_len)
            .and_then(|x| x.checked_add(norms_len))
            .and_then(|x| x.checked_mul(4))
            .and_then(|x| x.checked_add(codes_len))
            .ok_or(Error::Overflow("quantized matrix size"))?;
        if need > remaining {
            return Err(Error::Truncated {
                what: "quantized matrix",
                offset: r.abs_pos(),
                need,
                have: remaining,
            });
        }
        let projection = if has_projection { Some(r.f32_vec(proj_len, "projection")?) } else { None };
        let centroids = r.f32_vec(cent_len, "centroids")?;
        let norms = if has_norms { Some(r.f32_vec(norms_len, "quantized norms")?) } else { None };
        let codes = match map {
            Some(bytes) => {
                let offset = usize::try_from(r.abs_pos()).map_err(|_| Error::Overflow("offset"))?;
                r.bytes(codes_len, "codes")?;
                U8Data::Mapped {
                    bytes: bytes.clone(),
                    offset,
                    len: codes_len as usize,
                }
            }
            None => U8Data::Owned(Arc::new(r.bytes(codes_len, "codes")?.to_vec())),
        };
        QuantizedStorage::new(projection, centroids, norms, codes, rows as usize, dims, m, k)
    }

    /// Write a QuantizedArray chunk (header included).
    pub fn write_chunk<W: Write>(&self, w: &mut PosWriter<W>) -> std::io::Result<()> {
        let to_u32 = |v: usize| u32::try_from(v).map_err(|_| std::io::Error::other("value exceeds u32"));
        w.u32(ChunkId::QuantizedArray as u32)?;
        let pad = padding(w.pos() + 8 + 4 * 5 + 8 + 4 * 2);
        let floats = self.projection().map_or(0, <[f32]>::len) + self.centroids.len() + self.norms().map_or(0, <[f32]>::len);
        let len = 4 * 5 + 8 + 4 * 2 + pad + 4 * floats as u64 + self.codes().len() as u64;
        w.u64(len)?;
        w.u32(u32::from(self.projection.is_some()))?;
        w.u32(u32::from(self.norms.is_some()))?;
        w.u32(to_u32(self.m)?)?;
        w.u32(to_u32(self.dims)?)?;
        w.u32(to_u32(self.k)?)?;
        w.u64(self.rows as u64)?;
        w.u32(TYPE_U8)?;
        w.u32(TYPE_F32)?;
        w.padding()?;
        if let Some(p) = self.projection() {
            w.f32s(p)?;
        }
        w.f32s(&self.centroids)?;
        if let Some(n) = self.norms() {
            w.f32s(n)?;
        }
        w.bytes(self.codes())
    }
}

fn read_bool(r: &mut ByteReader<'_>, what: &'static str) -> Result<bool> {
    match r.u32(what)? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(Error::invalid(what, format!("{v} (must be 0 or 1)"))),
    }
}

/// `concat[s·DS..][..DS] += scale · centroid codes[s] of subquantizer s`, for every s.
#[inline]
fn add_centroid_blocks<const DS: usize>(concat: &mut [f32], cents: &[f32], codes: &[u8], k: usize, scale: f32) {
    for ((sub, &c), dst) in codes.iter().enumerate().zip(concat.chunks_exact_mut(DS)) {
        let base = (sub * k + usize::from(c)) * DS;
        let src: &[f32; DS] = cents[base..base + DS].try_into().expect("a block of DS floats");
        let dst: &mut [f32; DS] = dst.try_into().expect("a block of DS floats");
        for (o, v) in dst.iter_mut().zip(src) {
            *o += scale * v;
        }
    }
}

/// Run `f` on a zeroed scratch vector of `n` floats (on the stack up to 1024).
#[inline]
fn with_buffer(n: usize, f: impl FnOnce(&mut [f32])) {
    const STACK: usize = 1024;
    if n <= STACK {
        let mut buf = [0f32; STACK];
        f(&mut buf[..n]);
    } else {
        f(&mut vec![0f32; n]);
    }
}

/// For each subquantizer `s` and centroid `c`, the contribution of that centroid to the
/// rebuilt row: `centroid · Pᵀ[block s]`, a `dims`-vector.
fn project_centroids(p: &[f32], centroids: &[f32], dims: usize, m: usize, k: usize) -> Vec<f32> {
    let ds = dims / m;
    let mut out = vec![0f32; m * k * dims];
    for s in 0..m {
        for c in 0..k {
            let cent = &centroids[(s * k + c) * ds..(s * k + c + 1) * ds];
            let dst = &mut out[(s * k + c) * dims..(s * k + c + 1) * dims];
            // x̂_j = Σ_i c_i · P[j][i] over the block's i
            for (j, o) in dst.iter_mut().enumerate() {
                let prow = &p[j * dims + s * ds..j * dims + (s + 1) * ds];
                *o = kernels::dot(cent, prow);
            }
        }
    }
    out
}

/// Hot loops of the lookups, compiled twice: generic and with AVX2 + FMA (chosen at run time).
mod kernels {
    /// `out += scale · Σ_s table[(s·k + codes[s])·dims ..][..dims]`.
    #[inline]
    pub fn add_table_rows(out: &mut [f32], table: &[f32], codes: &[u8], k: usize, dims: usize, scale: f32) {
        const GROUP: usize = 256;
        let mut rows: [&[f32]; GROUP] = [&[]; GROUP];
        let mut acc_all = None;
        for (g, group) in codes.chunks(GROUP).enumerate() {
            // every row's lines are requested (into L2) before the sum starts, so that the
            // table's scattered rows come in together rather than a couple at a time
            for (i, (r, &c)) in rows.iter_mut().zip(group).enumerate() {
                let base = ((g * GROUP + i) * k + usize::from(c)) * dims;
                *r = &table[base..base + dims];
                crate::storage::prefetch_l2(r);
            }
            if codes.len() <= GROUP {
                crate::storage::rowsum::add_scaled_sum(out, &rows[..group.len()], scale);
                return;
            }
            // more than GROUP subquantizers: one sum over all groups, then scaled once
            let acc = acc_all.get_or_insert_with(|| vec![0f32; dims]);
            crate::storage::rowsum::add_in_order(acc, &rows[..group.len()]);
        }
        if let Some(acc) = acc_all {
            for (o, a) in out.iter_mut().zip(&acc) {
                *o += scale * a;
            }
        }
    }

    /// Dot product with 8 independent accumulators (vectorizes without fast-math).
    #[inline]
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                return unsafe { dot_avx2(a, b) };
            }
        }
        dot_generic(a, b)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        dot_generic(a, b)
    }

    #[inline(always)]
    fn dot_generic(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 16];
        let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
        let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
        for (x, y) in ca.zip(cb) {
            for l in 0..16 {
                acc[l] += x[l] * y[l];
            }
        }
        acc.iter().sum::<f32>() + tail
    }
}

/// Is the `d x d` row-major matrix `p` orthogonal (`PPᵀ = I`, hence `PᵀP = I`, within float32
/// rounding)? `PPᵀ` a block of rows at a time, by the matrix product (the check costs `d³`:
/// some 0.1 s at 1024 dims, where dot products one at a time took 1 s).
fn is_orthogonal(p: &[f32], d: usize) -> bool {
    if p.len() != d * d {
        return false;
    }
    const BLOCK: usize = 64;
    let mut block = vec![0f32; BLOCK.min(d) * d];
    // (on this thread: once per storage, and its caller may hold the GIL, which must not
    // wait for a pool another thread keeps busy)
    (0..d).step_by(BLOCK).all(|i0| {
        let n = BLOCK.min(d - i0);
        crate::quant::linalg::gemm_nt(&mut block, &p[i0 * d..], n, d, d, p, d, faer::Par::Seq);
        block[..n * d].chunks_exact(d).enumerate().all(|(r, row)| {
            row.iter().enumerate().all(|(j, &v)| (f64::from(v) - if i0 + r == j { 1.0 } else { 0.0 }).abs() < 1e-4)
        })
    })
}

#[cfg(test)]
mod lookup_tests {
    use super::*;

    #[test]
    fn cache_sizes_parse_as_sysfs_writes_them() {
        assert_eq!(parse_cache_size("32768K\n"), Some(32 << 20));
        assert_eq!(parse_cache_size("1M"), Some(1 << 20));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size(""), None);
        assert_eq!(parse_cache_size("K"), None);
        assert_eq!(parse_cache_size("lots"), None);
        assert!(projected_table_limit() >= PROJECTED_TABLE_MIN_LIMIT);
    }

    fn storage(with_table: bool) -> QuantizedStorage {
        let (rows, dims, m, k) = (20, 70, 7, 4);
        let f = |i: usize| ((i as f32) * 0.731).sin();
        // An orthogonal projection: a permutation with signs.
        let mut p = vec![0f32; dims * dims];
        for j in 0..dims {
            p[j * dims + (j * 3) % dims] = if j % 2 == 0 { 1.0 } else { -1.0 };
        }
        let centroids: Vec<f32> = (0..m * k * dims / m).map(f).collect();
        let norms: Vec<f32> = (0..rows).map(|i| 0.5 + i as f32 * 0.1).collect();
        let codes: Vec<u8> = (0..rows * m).map(|i| ((i * 7 + i / 3) % k) as u8).collect();
        let mut q = QuantizedStorage::new(Some(p), centroids, Some(norms), U8Data::Owned(Arc::new(codes)), rows, dims, m, k).unwrap();
        if !with_table {
            q.projected = None;
        }
        q
    }

    #[test]
    fn product_rebuilds_a_row_alike_alone_and_in_groups() {
        // a dense projection (every output sums dims products): one row alone and the same
        // row in a group of any size must be the same bits
        for (dims, m) in [(7, 7), (70, 7), (300, 75), (512, 128)] {
            let (rows, k) = (130, 16);
            let f = |i: usize| ((i as f32) * 0.731 + 0.2).sin();
            let p: Vec<f32> = (0..dims * dims).map(|i| f(i * 13 + 5)).collect();
            let centroids: Vec<f32> = (0..k * dims).map(f).collect();
            let norms: Vec<f32> = (0..rows).map(|i| 0.5 + i as f32 * 0.1).collect();
            let codes: Vec<u8> = (0..rows * m).map(|i| ((i * 7 + i / 3) % k) as u8).collect();
            let mut q =
                QuantizedStorage::new(Some(p), centroids, Some(norms), U8Data::Owned(Arc::new(codes)), rows, dims, m, k).unwrap();
            q.projected = None;
            assert_eq!(q.rebuild_method(), "product");
            let mut one = vec![0f32; dims];
            for group in [2usize, 3, 17, 64, rows] {
                let ids: Vec<Option<usize>> = (0..group).map(|t| (t % 5 != 4).then_some((t * 31 + group) % rows)).collect();
                let mut out = vec![0f32; group * dims];
                q.rows_into(&ids, &mut out);
                for (id, o) in ids.iter().zip(out.chunks_exact(dims)) {
                    match id {
                        Some(i) => {
                            q.reconstruct_into(*i, &mut one);
                            assert_eq!(o, &one[..], "dims {dims}, group {group}, row {i}");
                        }
                        None => assert!(o.iter().all(|&v| v == 0.0)),
                    }
                }
            }
        }
    }

    #[test]
    fn code_norms_are_the_rebuilt_lengths_before_the_norm() {
        // the orthogonal projection (the shortcut) and a skewed one (rows rebuilt)
        let orth = storage(true);
        let dims = orth.dims;
        let mut p = orth.projection().unwrap().to_vec();
        for (t, v) in p.iter_mut().enumerate() {
            *v = *v * 1.5 + ((t % 7) as f32) * 0.01;
        }
        let skew = QuantizedStorage::new(
            Some(p),
            orth.centroids().to_vec(),
            orth.norms().map(<[f32]>::to_vec),
            U8Data::Owned(Arc::new(orth.codes().to_vec())),
            orth.rows,
            dims,
            orth.m,
            orth.k,
        )
        .unwrap();
        assert!(is_orthogonal(orth.projection().unwrap(), dims));
        assert!(!is_orthogonal(skew.projection().unwrap(), dims));
        for q in [&orth, &skew] {
            // the first call keeps one row; a later, longer call still gets every row
            let first = q.code_norms(1).into_owned();
            let lengths = q.code_norms(q.rows());
            assert_eq!(lengths.len(), q.rows);
            assert_eq!(first[..], lengths[..1]);
            assert_eq!(q.code_norms(q.rows() + 5).len(), q.rows);
            let mut x = vec![0f32; dims];
            for (i, &len) in lengths.iter().enumerate() {
                q.reconstruct_into(i, &mut x);
                let want = x.iter().map(|v| v * v).sum::<f32>().sqrt() / q.norms().unwrap()[i];
                assert!((len - want).abs() <= 1e-5 * want.max(1.0), "row {i}: {len} vs {want}");
            }
        }
    }

    #[test]
    fn table_and_product_paths_agree_with_the_format_rule() {
        let (a, b) = (storage(true), storage(false));
        assert!(a.projected.is_some());
        let dims = a.dims;
        let (m, k, ds) = (a.m, a.k, dims / a.m);
        let p = a.projection().unwrap();
        for i in 0..a.rows {
            // the format's rule, written out
            let codes = &a.codes()[i * m..(i + 1) * m];
            let concat: Vec<f32> = (0..dims)
                .map(|t| a.centroids()[(t / ds * k + usize::from(codes[t / ds])) * ds + t % ds])
                .collect();
            let want: Vec<f32> = (0..dims)
                .map(|j| a.norms().unwrap()[i] * (0..dims).map(|t| concat[t] * p[j * dims + t]).sum::<f32>())
                .collect();
            let (mut x, mut y) = (vec![0f32; dims], vec![0f32; dims]);
            a.reconstruct_into(i, &mut x);
            b.reconstruct_into(i, &mut y);
            for j in 0..dims {
                assert!((x[j] - want[j]).abs() < 1e-5 && (y[j] - want[j]).abs() < 1e-5);
            }
        }
        // Summing many rows: the project-once path equals the sum of rebuilt rows.
        let rows: Vec<usize> = (0..a.rows).chain([3, 3, 5]).collect();
        let (mut x, mut want) = (vec![0f32; dims], vec![0f32; dims]);
        a.add_reconstructed_rows(&rows, &mut x);
        for &r in &rows {
            a.add_reconstructed(r, &mut want);
        }
        for j in 0..dims {
            assert!((x[j] - want[j]).abs() < 1e-4, "{} vs {}", x[j], want[j]);
        }
    }

    /// Rows rebuilt together (one matrix product) equal rows rebuilt one by one; rows
    /// without an index are left untouched.
    #[test]
    fn batched_rebuild_equals_row_by_row() {
        for with_table in [false, true] {
            let q = storage(with_table);
            assert_eq!(q.rebuilds_in_batches(), !with_table);
            let dims = q.dims;
            for picks in [vec![Some(3)], vec![Some(0), Some(19), Some(7)], vec![Some(2), None, Some(2), None, Some(11)]] {
                let mut got = vec![7f32; picks.len() * dims];
                q.rows_into(&picks, &mut got);
                for (p, g) in picks.iter().zip(got.chunks_exact(dims)) {
                    match p {
                        Some(i) => {
                            let mut want = vec![0f32; dims];
                            q.reconstruct_into(*i, &mut want);
                            for (a, b) in g.iter().zip(&want) {
                                assert!((a - b).abs() < 1e-5, "row {i}: {a} vs {b}");
                            }
                        }
                        None => assert!(g.iter().all(|&v| v == 7.0)),
                    }
                }
            }
        }
    }
}
