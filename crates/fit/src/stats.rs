//! Per-patch running mean and co-moment matrices, in f64.
//!
//! For a batch B of `n_b` embeddings at one patch with mean `m_b` and co-moment
//! `C_b = sum (x - m_b)(x - m_b)^T`, and the running state (`n_a`, `m_a`, `M_a`), Chan, Golub and
//! LeVeque's pairwise update ("Updating formulae and a pairwise algorithm for computing sample
//! variances", 1979) gives, with `n = n_a + n_b` and `delta = m_b - m_a`:
//!
//! ```text
//! m = m_a + delta * n_b / n
//! M = M_a + C_b + delta delta^T * n_a n_b / n
//! ```
//!
//! The same formula merges two partial states, so shards accumulate separately and combine into the
//! statistics of one pass. Memory is `n_patches * d * (d + 1) * 8` bytes for `d` tracked channels,
//! independent of the number of images.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, ArrayView1, ArrayViewMut1, ArrayViewMut2, Axis, s};
use ndarray_linalg::InverseCInto;
use padim_core::channels::ChannelSubset;
use padim_core::config::{CovarianceEstimator, CovariancePool};
use rayon::prelude::*;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    #[error("image {image}: embedding value {value} at channel {channel}, patch {patch} is not finite")]
    NonFinite { image: u32, channel: usize, patch: usize, value: f32 },
    #[error("a batch of {n_images} images needs {expected} values, got {got}")]
    Shape { n_images: usize, expected: usize, got: usize },
    #[error("cannot merge statistics of different shapes or channels ({0})")]
    Incompatible(String),
    #[error("{0} training image(s): the covariance needs at least 2")]
    TooFewImages(u64),
    #[error("the covariance of patch {patch} is not positive definite; raise epsilon (now {epsilon})")]
    Singular { patch: usize, epsilon: f64 },
    #[error("channel subset is not within the accumulated channels")]
    Subset,
    #[error("a nearest-patch model has no covariance")]
    NotGaussian,
}

/// Streaming statistics of every patch over the tracked channels.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchStats {
    n_patches: usize,
    channels: ChannelSubset,
    count: u64,
    /// `[n_patches, d]`.
    mean: Vec<f64>,
    /// `[n_patches, d, d]`, full symmetric matrices.
    comoment: Vec<f64>,
    /// For statistics pooled over positions ([`PatchStats::pooled`]): each patch's number of
    /// pooled positions, whose co-moments `comoment` sums. `None` for streamed statistics.
    cells: Option<Vec<u32>>,
}

/// Bytes of state for `n_patches` patches and `d` channels.
pub fn state_bytes(n_patches: usize, d: usize) -> u64 {
    (n_patches as u64) * (d as u64) * (d as u64 + 1) * 8
}

impl PatchStats {
    pub fn new(n_patches: usize, channels: ChannelSubset) -> PatchStats {
        let d = channels.len();
        PatchStats {
            n_patches,
            channels,
            count: 0,
            mean: vec![0.0; n_patches * d],
            comoment: vec![0.0; n_patches * d * d],
            cells: None,
        }
    }

    /// Rebuilds a state from its parts (e.g. read back from storage).
    pub fn from_parts(
        n_patches: usize,
        channels: ChannelSubset,
        count: u64,
        mean: Vec<f64>,
        comoment: Vec<f64>,
    ) -> Result<PatchStats, StatsError> {
        let d = channels.len();
        if mean.len() != n_patches * d || comoment.len() != n_patches * d * d {
            return Err(StatsError::Incompatible(format!(
                "{} means and {} co-moments for {n_patches} patches of {d} channels",
                mean.len(),
                comoment.len()
            )));
        }
        Ok(PatchStats { n_patches, channels, count, mean, comoment, cells: None })
    }

    pub fn n_patches(&self) -> usize {
        self.n_patches
    }

    pub fn channels(&self) -> &ChannelSubset {
        &self.channels
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    pub fn comoment(&self) -> &[f64] {
        &self.comoment
    }

    /// Adds a batch: `values` is `[image_ids.len(), d, n_patches]` in C order (the tracked channels,
    /// in order). A non-finite value is an error naming the image; the state is then unchanged.
    pub fn update(&mut self, image_ids: &[u32], values: &[f32]) -> Result<(), StatsError> {
        if self.cells.is_some() {
            return Err(StatsError::Incompatible("statistics pooled over positions take no more images".into()));
        }
        let (n, d, n_patches) = (image_ids.len(), self.channels.len(), self.n_patches);
        let expected = n * d * n_patches;
        if values.len() != expected {
            return Err(StatsError::Shape { n_images: n, expected, got: values.len() });
        }
        if let Some(position) = values.iter().position(|v| !v.is_finite()) {
            return Err(StatsError::NonFinite {
                image: image_ids[position / (d * n_patches)],
                channel: self.channels.channels()[(position / n_patches) % d],
                patch: position % n_patches,
                value: values[position],
            });
        }
        if n == 0 {
            return Ok(());
        }
        if d == 0 {
            // No channels (a fit of nearest-patch models only): only the count.
            self.count += n as u64;
            return Ok(());
        }
        let (n_a, n_b) = (self.count as f64, n as f64);
        // One spare row per patch for the correction term below.
        let mut patch_major = patch_major(values, n, d, n_patches, 1);
        self.mean
            .par_chunks_mut(d)
            .zip(self.comoment.par_chunks_mut(d * d))
            .zip(patch_major.par_chunks_mut((n + 1) * d))
            .for_each(|((mean, comoment), x)| {
                let mut x = ArrayViewMut2::from_shape((n + 1, d), x).expect("(n + 1) x d");
                let batch_mean = x.slice(s![..n, ..]).mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(d));
                let mut mean = ArrayViewMut1::from(mean);
                let delta = &batch_mean - &mean;
                // Chan's update as one product: the batch centred on its mean, plus the row
                // sqrt(n_a n_b / n) delta, so that X^T X = C_b + delta delta^T n_a n_b / n, added to M
                // by the GEMM itself (beta = 1).
                let mut centred = x.slice_mut(s![..n, ..]);
                centred -= &batch_mean;
                x.row_mut(n).assign(&(&delta * (n_a * n_b / (n_a + n_b)).sqrt()));
                crate::blas::add_gram(x.as_slice().expect("a contiguous block"), n + 1, d, comoment);
                mean.scaled_add(n_b / (n_a + n_b), &delta);
            });
        self.count += n as u64;
        Ok(())
    }

    /// Merges another partial state over the same patches and channels into this one.
    pub fn merge(&mut self, other: &PatchStats) -> Result<(), StatsError> {
        if self.cells.is_some() || other.cells.is_some() {
            return Err(StatsError::Incompatible("statistics pooled over positions do not merge".into()));
        }
        if self.n_patches != other.n_patches || self.channels != other.channels {
            return Err(StatsError::Incompatible(format!(
                "{} patches x {} channels vs {} x {}",
                self.n_patches,
                self.channels.len(),
                other.n_patches,
                other.channels.len()
            )));
        }
        let d = self.channels.len();
        if other.count == 0 || d == 0 {
            self.count += other.count;
            return Ok(());
        }
        let (n_a, n_b) = (self.count as f64, other.count as f64);
        self.mean
            .par_chunks_mut(d)
            .zip(self.comoment.par_chunks_mut(d * d))
            .zip(other.mean.par_chunks(d).zip(other.comoment.par_chunks(d * d)))
            .for_each(|((mean, comoment), (other_mean, other_comoment))| {
                let other_comoment = Array2::from_shape_vec((d, d), other_comoment.to_vec()).expect("d x d");
                merge_into(
                    ArrayViewMut1::from(mean),
                    ArrayViewMut2::from_shape((d, d), comoment).expect("d x d"),
                    n_a,
                    ArrayView1::from(other_mean),
                    &other_comoment,
                    n_b,
                );
            });
        self.count += other.count;
        Ok(())
    }

    /// The unbiased covariance (divided by N - 1) of one patch over `positions` of the tracked
    /// channels, plus `epsilon` on the diagonal.
    pub fn covariance(&self, patch: usize, positions: &[usize], epsilon: f64) -> Result<Array2<f64>, StatsError> {
        if self.count < 2 {
            return Err(StatsError::TooFewImages(self.count));
        }
        let d = self.channels.len();
        let k = positions.len();
        let base = patch * d * d;
        let scale = 1.0 / (self.cells(patch) * (self.count as f64 - 1.0));
        let mut cov = vec![0f64; k * k];
        for ((i, &pi), out) in positions.iter().enumerate().zip(cov.chunks_exact_mut(k.max(1))) {
            let row = &self.comoment[base + pi * d..base + (pi + 1) * d];
            for (value, &pj) in out.iter_mut().zip(positions) {
                *value = row[pj] * scale;
            }
            out[i] += epsilon;
        }
        let cov = Array2::from_shape_vec((k, k), cov).expect("k x k");
        Ok(cov)
    }

    /// The covariance of one patch over `positions` by `estimator`, plus `epsilon` on the diagonal,
    /// and the shrinkage it applied (0 for the sample covariance). OAS shrinks the maximum
    /// likelihood covariance S (divided by N) toward `mu I`, `mu = tr(S) / k`, by
    /// `rho = min(1, (a + mu^2) / ((N + 1) (a - mu^2 / k)))` with `a` the mean of S's squared
    /// entries, as scikit-learn's `OAS`: a function of the merged statistics alone. Pooled
    /// statistics count `cells x images` samples (scikit-learn's OAS of the samples centred on
    /// their positions' means, `assume_centered`).
    pub fn covariance_by(
        &self,
        patch: usize,
        positions: &[usize],
        epsilon: f64,
        estimator: CovarianceEstimator,
    ) -> Result<(Array2<f64>, f64), StatsError> {
        match estimator {
            CovarianceEstimator::Sample => Ok((self.covariance(patch, positions, epsilon)?, 0.0)),
            CovarianceEstimator::Nearest => Err(StatsError::NotGaussian),
            CovarianceEstimator::Oas => {
                // The unbiased covariance without epsilon, rescaled to the maximum likelihood one.
                let mut cov = self.covariance(patch, positions, 0.0)?;
                let n = self.count as f64;
                cov *= (n - 1.0) / n;
                // Pooled statistics hold `cells` samples per image.
                let n = self.cells(patch) * n;
                let k = positions.len();
                let mu = cov.diag().sum() / k as f64;
                let alpha = cov.iter().map(|v| v * v).sum::<f64>() / (k * k) as f64;
                let den = (n + 1.0) * (alpha - mu * mu / k as f64);
                let rho = if k < 2 {
                    0.0
                } else if den == 0.0 {
                    1.0
                } else {
                    ((alpha + mu * mu) / den).min(1.0)
                };
                cov *= 1.0 - rho;
                cov.diag_mut().mapv_inplace(|v| v + rho * mu + epsilon);
                Ok((cov, rho))
            }
        }
    }

    /// Patch `patch`'s number of pooled positions (1 unless pooled).
    fn cells(&self, patch: usize) -> f64 {
        self.cells.as_ref().map_or(1.0, |cells| cells[patch] as f64)
    }

    /// These statistics with every patch's co-moment replaced by the sum of the co-moments of the
    /// positions `pool` names on a `grid_height x grid_width` grid (patches in row-major order):
    /// those within `radius` cells in both directions, cut at the edges, or all of them. Means stay
    /// per position, so the covariances become pooled within-position covariances
    /// ([`CovariancePool`]). The result is for fitting only: it neither updates nor merges.
    pub fn pooled(
        &self,
        grid_height: usize,
        grid_width: usize,
        pool: CovariancePool,
    ) -> Result<PatchStats, StatsError> {
        if grid_height * grid_width != self.n_patches || self.cells.is_some() {
            return Err(StatsError::Incompatible(format!(
                "pooling {} patches as a {grid_height} x {grid_width} grid",
                self.n_patches
            )));
        }
        let dd = self.channels.len() * self.channels.len();
        let (comoment, cells) = match pool {
            CovariancePool::None => (self.comoment.clone(), vec![1; self.n_patches]),
            CovariancePool::All => {
                let total = self
                    .comoment
                    .par_chunks(dd.max(1))
                    .fold(
                        || vec![0f64; dd],
                        |mut sum, m| {
                            sum.iter_mut().zip(m).for_each(|(s, v)| *s += v);
                            sum
                        },
                    )
                    .reduce(
                        || vec![0f64; dd],
                        |mut a, b| {
                            a.iter_mut().zip(&b).for_each(|(s, v)| *s += v);
                            a
                        },
                    );
                (total.repeat(self.n_patches), vec![self.n_patches as u32; self.n_patches])
            }
            CovariancePool::Radius(radius) => {
                let r = radius as usize;
                let window = |i: usize, len: usize| i.saturating_sub(r)..(i + r + 1).min(len);
                // Separable: along each row, then along each column of the row sums.
                let mut rows = vec![0f64; self.comoment.len()];
                rows.par_chunks_mut(dd.max(1)).enumerate().for_each(|(patch, out)| {
                    let (y, x) = (patch / grid_width, patch % grid_width);
                    for xx in window(x, grid_width) {
                        let m = &self.comoment[(y * grid_width + xx) * dd..][..dd];
                        out.iter_mut().zip(m).for_each(|(s, v)| *s += v);
                    }
                });
                let mut sums = vec![0f64; self.comoment.len()];
                sums.par_chunks_mut(dd.max(1)).enumerate().for_each(|(patch, out)| {
                    let (y, x) = (patch / grid_width, patch % grid_width);
                    for yy in window(y, grid_height) {
                        let m = &rows[(yy * grid_width + x) * dd..][..dd];
                        out.iter_mut().zip(m).for_each(|(s, v)| *s += v);
                    }
                });
                let cells = (0..self.n_patches)
                    .map(|patch| {
                        let (y, x) = (patch / grid_width, patch % grid_width);
                        (window(y, grid_height).len() * window(x, grid_width).len()) as u32
                    })
                    .collect();
                (sums, cells)
            }
        };
        Ok(PatchStats {
            n_patches: self.n_patches,
            channels: self.channels.clone(),
            count: self.count,
            mean: self.mean.clone(),
            comoment,
            cells: Some(cells),
        })
    }

    /// The Gaussians of `subset` (a subset of the tracked channels): means and inverse covariances
    /// (through a Cholesky factorisation), per patch, in parallel.
    pub fn gaussians(&self, subset: &ChannelSubset, epsilon: f64) -> Result<Gaussians, StatsError> {
        let mut fitted = self.gaussians_many(&[subset], epsilon).map_err(|(_, e)| e)?;
        Ok(fitted.pop().expect("one subset, one result"))
    }

    /// The Gaussians of several subsets in one pass over the patches: each patch's co-moment
    /// matrix is read from memory once for all of them (and then from cache), instead of the
    /// whole state being streamed once per subset. Patches run in parallel. An error comes with
    /// the position in `subsets` of the subset it concerns.
    pub fn gaussians_many(
        &self,
        subsets: &[&ChannelSubset],
        epsilon: f64,
    ) -> Result<Vec<Gaussians>, (usize, StatsError)> {
        self.gaussians_many_by(subsets, epsilon, &vec![CovarianceEstimator::Sample; subsets.len()])
    }

    /// [`PatchStats::gaussians_many`] with the covariances by `estimator` (see
    /// [`PatchStats::covariance_by`]); a shrinking estimator records each patch's shrinkage.
    pub fn gaussians_many_by(
        &self,
        subsets: &[&ChannelSubset],
        epsilon: f64,
        estimators: &[CovarianceEstimator],
    ) -> Result<Vec<Gaussians>, (usize, StatsError)> {
        let every: Vec<usize> = (0..self.n_patches).collect();
        self.gaussians_at(subsets, epsilon, estimators, &every)
    }

    /// [`PatchStats::gaussians_many_by`] at the patches `cells` only (in that order): the Gaussians
    /// of a model on a coarser grid, one per block of patches (see `ModelInfo::grid_factor`), taken
    /// where each block starts. The result's patches are `cells`.
    pub fn gaussians_at(
        &self,
        subsets: &[&ChannelSubset],
        epsilon: f64,
        estimators: &[CovarianceEstimator],
        cells: &[usize],
    ) -> Result<Vec<Gaussians>, (usize, StatsError)> {
        assert_eq!(subsets.len(), estimators.len(), "one covariance estimator per subset");
        assert!(cells.iter().all(|&c| c < self.n_patches), "cells within the patches");
        let positions: Vec<Vec<usize>> = subsets
            .iter()
            .enumerate()
            .map(|(i, subset)| subset.positions_in(&self.channels).ok_or((i, StatsError::Subset)))
            .collect::<Result<_, _>>()?;
        if self.count < 2 {
            return Err((0, StatsError::TooFewImages(self.count)));
        }
        warm_blas();
        let d = self.channels.len();
        let n_cells = cells.len();
        // Stored as the model file stores them (f32): each inverse is computed in f64 and rounded
        // once, and the fit holds half the memory (fresh memory costs its page faults).
        let mut precisions: Vec<Vec<f32>> = positions.iter().map(|p| vec![0f32; n_cells * p.len() * p.len()]).collect();
        // Cell-major: each cell's shrinkage of every subset.
        let mut shrinkages = vec![0f64; n_cells * subsets.len()];
        // Per cell, its slice of every subset's output.
        let mut per_patch: Vec<Vec<&mut [f32]>> = (0..n_cells).map(|_| Vec::with_capacity(subsets.len())).collect();
        for precision in &mut precisions {
            let size = precision.len() / n_cells.max(1);
            let mut rest: &mut [f32] = precision;
            for slices in &mut per_patch {
                let (out, tail) = std::mem::take(&mut rest).split_at_mut(size);
                slices.push(out);
                rest = tail;
            }
        }
        let shrink_per_patch = shrinkages.par_chunks_mut(subsets.len().max(1));
        per_patch.into_par_iter().zip(shrink_per_patch).zip(cells).try_for_each(|((outputs, shrinks), &patch)| {
            for (index, (((out, positions), shrink), &estimator)) in
                outputs.into_iter().zip(&positions).zip(shrinks).zip(estimators).enumerate()
            {
                let k = positions.len();
                // The matrix is symmetric, so its row-major memory is also its column-major self:
                // handing LAPACK the column-major view spares ndarray-linalg a transposed copy.
                let (cov, rho) = self.covariance_by(patch, positions, epsilon, estimator).map_err(|e| (index, e))?;
                *shrink = rho;
                let cov = cov.reversed_axes();
                let inverse = cov.invc_into().map_err(|_| (index, StatsError::Singular { patch, epsilon }))?;
                let inverse = inverse.as_slice_memory_order().expect("a fresh inverse is contiguous");
                // The inverse is symmetric in exact arithmetic; make it so in floating point.
                for (i, row) in out.chunks_exact_mut(k).enumerate() {
                    for (j, value) in row.iter_mut().enumerate() {
                        *value = (0.5 * (inverse[i * k + j] + inverse[j * k + i])) as f32;
                    }
                }
            }
            Ok::<(), (usize, StatsError)>(())
        })?;
        Ok(subsets
            .iter()
            .zip(positions)
            .zip(precisions)
            .enumerate()
            .map(|(index, ((subset, positions), precision))| {
                let shrinkage = shrinkages.iter().skip(index).step_by(subsets.len()).copied().collect();
                let mut mean = Vec::with_capacity(n_cells * positions.len());
                for &patch in cells {
                    mean.extend(positions.iter().map(|&p| self.mean[patch * d + p]));
                }
                Gaussians {
                    channels: (*subset).clone(),
                    n_patches: n_cells,
                    count: self.count,
                    epsilon,
                    mean,
                    precision,
                    shrinkage: (!estimators[index].is_sample()).then_some(shrinkage),
                }
            })
            .collect())
    }
}

/// The patch-major copy `[n_patches][n + spare][d]` (f64) of `values` `[n][d][n_patches]` (f32), the
/// `spare` rows of each patch zero, transposed in parallel blocks of [`TRANSPOSE_BLOCK`] patches
/// (see [`transpose_block`]).
fn patch_major(values: &[f32], n: usize, d: usize, n_patches: usize, spare: usize) -> Vec<f64> {
    let rows = n + spare;
    let mut out = vec![0f64; n_patches * rows * d];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(TRANSPOSE_BLOCK * rows * d).enumerate().for_each(|(block, out)| {
        transpose_block(values, n, d, n_patches, block * TRANSPOSE_BLOCK, rows, out);
    });
    out
}

/// Patches per block of [`transpose_block`]: 64 patches read four cache lines per page they touch
/// (rows are `n_patches` apart), so TLB misses stay few (16 thrashed the TLB).
pub const TRANSPOSE_BLOCK: usize = 64;

/// Writes patches `first..first + out.len() / (rows * d)` of `values` (`[n][d][n_patches]`, f32) into
/// `out` as `[patch][row][channel]` (f64) with `rows >= n` rows per patch (the rows after `n` are
/// left as they are). Every read is a run of contiguous values (a per-patch gather would touch one
/// cache line per image and channel for every patch). Shared by fit's updates and score's distances.
pub fn transpose_block(
    values: &[f32],
    n: usize,
    d: usize,
    n_patches: usize,
    first: usize,
    rows: usize,
    out: &mut [f64],
) {
    let width = out.len() / (rows * d).max(1);
    for image in 0..n {
        for channel in 0..d {
            let row = &values[(image * d + channel) * n_patches + first..][..width];
            for (offset, &value) in row.iter().enumerate() {
                out[(offset * rows + image) * d + channel] = value as f64;
            }
        }
    }
}

/// Chan's pairwise update of one patch's (mean, co-moment) with another's.
fn merge_into(
    mut mean: ArrayViewMut1<f64>,
    mut comoment: ArrayViewMut2<f64>,
    n_a: f64,
    other_mean: ArrayView1<f64>,
    other_comoment: &Array2<f64>,
    n_b: f64,
) {
    let n = n_a + n_b;
    let delta = &other_mean - &mean;
    let weight = n_a * n_b / n;
    comoment += other_comoment;
    for (mut row, &delta_i) in comoment.outer_iter_mut().zip(&delta) {
        row.scaled_add(delta_i * weight, &delta);
    }
    mean.scaled_add(n_b / n, &delta);
}

/// Runs one matrix product through BLAS on every thread of the pool. OpenBLAS's Cholesky
/// factorisation and inverse can round differently (in the last bit of a few entries) depending on
/// whether its GEMM has run before in the process, which a fit that accumulates its statistics has
/// done and a fit that resumes from saved partial statistics has not: warmed alike, both give the
/// same models byte for byte.
fn warm_blas() {
    rayon::broadcast(|_| {
        let a = Array2::<f64>::from_shape_fn((32, 176), |(r, c)| ((r * 7 + c * 3) % 13) as f64);
        let mut product = Array2::<f64>::zeros((176, 176));
        general_mat_mul(1.0, &a.t(), &a, 0.0, &mut product);
    });
}

/// Fitted per-patch Gaussians of one channel subset.
#[derive(Debug, Clone, PartialEq)]
pub struct Gaussians {
    pub channels: ChannelSubset,
    pub n_patches: usize,
    pub count: u64,
    pub epsilon: f64,
    /// `[n_patches, k]`.
    pub mean: Vec<f64>,
    /// `[n_patches, k, k]`: inverse covariances (computed in f64, stored as the model file holds
    /// them).
    pub precision: Vec<f32>,
    /// `[n_patches]`: the shrinkage of each patch's covariance, with a shrinking estimator.
    pub shrinkage: Option<Vec<f64>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Two-pass reference: mean, then the sum of outer products of deviations.
    fn two_pass(values: &[f32], n: usize, d: usize, n_patches: usize, patch: usize) -> (Vec<f64>, Vec<f64>) {
        let x = |i: usize, c: usize| values[(i * d + c) * n_patches + patch] as f64;
        let mean: Vec<f64> = (0..d).map(|c| (0..n).map(|i| x(i, c)).sum::<f64>() / n as f64).collect();
        let mut comoment = vec![0.0; d * d];
        for i in 0..n {
            for a in 0..d {
                for b in 0..d {
                    comoment[a * d + b] += (x(i, a) - mean[a]) * (x(i, b) - mean[b]);
                }
            }
        }
        (mean, comoment)
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-9 * scale)
    }

    /// Equal to f32 rounding: values computed in f64 by two routes and each rounded once.
    fn close_f32(a: &[f32], b: &[f32]) -> bool {
        let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 4.0 * f32::EPSILON * scale)
    }

    fn widened(values: &[f32]) -> Vec<f64> {
        values.iter().map(|&v| f64::from(v)).collect()
    }

    fn data(n: usize, d: usize, n_patches: usize, seed: u64) -> Vec<f32> {
        // A deterministic generator with an offset, so that the mean is far from zero (the case
        // where naive sums lose precision).
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n * d * n_patches)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                100.0 + ((state >> 33) as f32 / (1u64 << 31) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Any split of the images into batches, accumulated in any grouping and merged in any
        /// order, equals the two-pass statistics.
        #[test]
        fn merging_in_any_grouping_equals_one_pass(
            n in 2usize..24, d in 1usize..6, n_patches in 1usize..4, seed in 0u64..1000,
            cuts in proptest::collection::vec(0usize..24, 0..5), reverse in any::<bool>(),
        ) {
            let values = data(n, d, n_patches, seed);
            let ids: Vec<u32> = (0..n as u32).collect();
            let channels = ChannelSubset::all(d);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % n).chain([0, n]).collect();
            cuts.sort_unstable();
            cuts.dedup();
            let mut parts: Vec<PatchStats> = cuts.windows(2).map(|w| {
                let mut part = PatchStats::new(n_patches, channels.clone());
                let slice = &values[w[0] * d * n_patches..w[1] * d * n_patches];
                part.update(&ids[w[0]..w[1]], slice).unwrap();
                part
            }).collect();
            if reverse { parts.reverse(); }
            let mut merged = PatchStats::new(n_patches, channels.clone());
            for part in &parts { merged.merge(part).unwrap(); }
            let mut one_pass = PatchStats::new(n_patches, channels);
            one_pass.update(&ids, &values).unwrap();
            prop_assert_eq!(merged.count(), n as u64);
            for patch in 0..n_patches {
                let (mean, comoment) = two_pass(&values, n, d, n_patches, patch);
                for state in [&merged, &one_pass] {
                    prop_assert!(close(&state.mean()[patch * d..(patch + 1) * d], &mean));
                    prop_assert!(close(&state.comoment()[patch * d * d..(patch + 1) * d * d], &comoment));
                }
            }
        }

        /// OAS from two merged shards equals OAS computed from the raw samples in two passes
        /// (scikit-learn's formula: the maximum likelihood covariance shrunk toward mu I), and its
        /// shrinkage lies in [0, 1]; the precision is that covariance's inverse.
        #[test]
        fn oas_of_merged_shards_equals_two_pass_oas(
            n in 3usize..20, d in 2usize..7, n_patches in 1usize..3, cut in 1usize..19, seed in 0u64..1000,
        ) {
            let cut = 1 + cut % (n - 1);
            let values = data(n, d, n_patches, seed);
            let ids: Vec<u32> = (0..n as u32).collect();
            let channels = ChannelSubset::all(d);
            let mut merged = PatchStats::new(n_patches, channels.clone());
            for (range, part_ids) in [(0..cut, &ids[..cut]), (cut..n, &ids[cut..])] {
                let mut part = PatchStats::new(n_patches, channels.clone());
                part.update(part_ids, &values[range.start * d * n_patches..range.end * d * n_patches]).unwrap();
                merged.merge(&part).unwrap();
            }
            let positions: Vec<usize> = (0..d).collect();
            let fitted = merged.gaussians_many_by(&[&channels], 0.01, &[CovarianceEstimator::Oas]).unwrap().remove(0);
            for patch in 0..n_patches {
                let (_, comoment) = two_pass(&values, n, d, n_patches, patch);
                let s: Vec<f64> = comoment.iter().map(|c| c / n as f64).collect();
                let mu = (0..d).map(|i| s[i * d + i]).sum::<f64>() / d as f64;
                let alpha = s.iter().map(|v| v * v).sum::<f64>() / (d * d) as f64;
                let rho = ((alpha + mu * mu) / ((n as f64 + 1.0) * (alpha - mu * mu / d as f64))).min(1.0);
                let expected: Vec<f64> = (0..d * d)
                    .map(|i| (1.0 - rho) * s[i] + if i % (d + 1) == 0 { rho * mu + 0.01 } else { 0.0 })
                    .collect();
                let (cov, shrinkage) = merged.covariance_by(patch, &positions, 0.01, CovarianceEstimator::Oas).unwrap();
                prop_assert!(close(cov.as_slice().unwrap(), &expected), "{:?} vs {:?}", cov, expected);
                prop_assert!((shrinkage - rho).abs() <= 1e-9 && (0.0..=1.0).contains(&shrinkage));
                prop_assert_eq!(fitted.shrinkage.as_ref().unwrap()[patch], shrinkage);
                // precision x covariance = I.
                let precision = Array2::from_shape_vec((d, d), widened(&fitted.precision[patch * d * d..(patch + 1) * d * d])).unwrap();
                let identity = precision.dot(&cov);
                for i in 0..d {
                    for j in 0..d {
                        let want = if i == j { 1.0 } else { 0.0 };
                        prop_assert!((identity[[i, j]] - want).abs() < 1e-5, "{identity:?}");
                    }
                }
            }
            // The sample estimator records no shrinkage and keeps the unbiased covariance.
            let sample = merged.gaussians_many_by(&[&channels], 0.01, &[CovarianceEstimator::Sample]).unwrap().remove(0);
            prop_assert!(sample.shrinkage.is_none());
            prop_assert_eq!(sample, merged.gaussians(&channels, 0.01).unwrap());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// A pooled covariance is, from the raw samples, the sum over the window's positions (within
        /// `radius` cells in both directions, cut at the edges; or every position) of the outer
        /// products of each sample's deviation from its own position's mean, over
        /// `cells x (n - 1)`; OAS shrinks the same sum over `cells x n` with `cells x n` samples.
        /// The means stay per position, and pooling the statistics merged from two shards gives
        /// the same Gaussians as pooling the one-pass statistics.
        #[test]
        fn pooled_covariance_is_the_window_definition(
            n in 3usize..9, d in 1usize..4, height in 1usize..5, width in 1usize..6, radius in 0u32..4,
            all in any::<bool>(), cut in 1usize..8, seed in 0u64..1000,
        ) {
            let n_patches = height * width;
            let values = data(n, d, n_patches, seed);
            let ids: Vec<u32> = (0..n as u32).collect();
            let channels = ChannelSubset::all(d);
            let mut one_pass = PatchStats::new(n_patches, channels.clone());
            one_pass.update(&ids, &values).unwrap();
            let cut = 1 + cut % (n - 1);
            let mut merged = PatchStats::new(n_patches, channels.clone());
            for range in [0..cut, cut..n] {
                let mut part = PatchStats::new(n_patches, channels.clone());
                part.update(&ids[range.clone()], &values[range.start * d * n_patches..range.end * d * n_patches]).unwrap();
                merged.merge(&part).unwrap();
            }
            let pool = match (all, radius) {
                (true, _) => CovariancePool::All,
                (false, 0) => CovariancePool::None,
                (false, r) => CovariancePool::Radius(r),
            };
            let pooled = one_pass.pooled(height, width, pool).unwrap();
            let positions: Vec<usize> = (0..d).collect();
            let x = |i: usize, c: usize, p: usize| values[(i * d + c) * n_patches + p] as f64;
            for patch in 0..n_patches {
                let (y0, x0) = ((patch / width) as i64, (patch % width) as i64);
                let within = |p: usize| {
                    let r = if all { i64::MAX / 2 } else { radius as i64 };
                    ((p / width) as i64 - y0).abs() <= r && ((p % width) as i64 - x0).abs() <= r
                };
                let window: Vec<usize> = (0..n_patches).filter(|&p| within(p)).collect();
                let cells = window.len() as f64;
                let mut sum = vec![0f64; d * d];
                for &p in &window {
                    let mean: Vec<f64> = (0..d).map(|c| (0..n).map(|i| x(i, c, p)).sum::<f64>() / n as f64).collect();
                    for i in 0..n {
                        for a in 0..d {
                            for b in 0..d {
                                sum[a * d + b] += (x(i, a, p) - mean[a]) * (x(i, b, p) - mean[b]);
                            }
                        }
                    }
                }
                let sample: Vec<f64> = (0..d * d)
                    .map(|i| sum[i] / (cells * (n as f64 - 1.0)) + if i % (d + 1) == 0 { 0.01 } else { 0.0 })
                    .collect();
                let (cov, rho) = pooled.covariance_by(patch, &positions, 0.01, CovarianceEstimator::Sample).unwrap();
                prop_assert!(close(cov.as_slice().unwrap(), &sample), "{:?} vs {:?}", cov, sample);
                prop_assert_eq!(rho, 0.0);
                // OAS, as scikit-learn's on the cells x n samples centred on their positions' means.
                let samples = cells * n as f64;
                let s: Vec<f64> = sum.iter().map(|v| v / samples).collect();
                let mu = (0..d).map(|i| s[i * d + i]).sum::<f64>() / d as f64;
                let alpha = s.iter().map(|v| v * v).sum::<f64>() / (d * d) as f64;
                let den = (samples + 1.0) * (alpha - mu * mu / d as f64);
                let rho = if d < 2 { 0.0 } else if den == 0.0 { 1.0 } else { ((alpha + mu * mu) / den).min(1.0) };
                let oas: Vec<f64> = (0..d * d)
                    .map(|i| (1.0 - rho) * s[i] + if i % (d + 1) == 0 { rho * mu + 0.01 } else { 0.0 })
                    .collect();
                let (cov, shrinkage) = pooled.covariance_by(patch, &positions, 0.01, CovarianceEstimator::Oas).unwrap();
                prop_assert!(close(cov.as_slice().unwrap(), &oas), "{:?} vs {:?}", cov, oas);
                prop_assert!((shrinkage - rho).abs() <= 1e-9);
            }
            prop_assert_eq!(pooled.mean(), one_pass.mean());
            let from_merged = merged.pooled(height, width, pool).unwrap().gaussians(&channels, 0.01).unwrap();
            let from_one_pass = pooled.gaussians(&channels, 0.01).unwrap();
            prop_assert!(close_f32(&from_merged.precision, &from_one_pass.precision));
        }
    }

    #[test]
    fn pooled_statistics_neither_update_nor_merge_and_check_the_grid() {
        let (n, d, n_patches) = (3, 2, 6);
        let values = data(n, d, n_patches, 1);
        let mut stats = PatchStats::new(n_patches, ChannelSubset::all(d));
        stats.update(&[0, 1, 2], &values).unwrap();
        assert!(matches!(stats.pooled(2, 4, CovariancePool::All), Err(StatsError::Incompatible(_))));
        let mut pooled = stats.pooled(2, 3, CovariancePool::Radius(1)).unwrap();
        assert!(matches!(pooled.pooled(2, 3, CovariancePool::All), Err(StatsError::Incompatible(_))));
        assert!(matches!(pooled.update(&[0, 1, 2], &values), Err(StatsError::Incompatible(_))));
        assert!(matches!(pooled.merge(&stats), Err(StatsError::Incompatible(_))));
        assert!(matches!(stats.clone().merge(&pooled), Err(StatsError::Incompatible(_))));
    }

    #[test]
    fn epsilon_makes_rank_deficient_covariances_invertible() {
        // 3 images, 5 channels: rank at most 2. Plus one constant patch.
        let (n, d, n_patches) = (3, 5, 2);
        let mut values = data(n, d, n_patches, 3);
        for image in 0..n {
            for channel in 0..d {
                values[(image * d + channel) * n_patches + 1] = 0.5;
            }
        }
        let mut stats = PatchStats::new(n_patches, ChannelSubset::all(d));
        stats.update(&[0, 1, 2], &values).unwrap();
        assert!(matches!(stats.gaussians(&ChannelSubset::all(d), 0.0), Err(StatsError::Singular { .. })));
        let fitted = stats.gaussians(&ChannelSubset::all(d), 0.01).unwrap();
        for patch in 0..n_patches {
            let cov = stats.covariance(patch, &[0, 1, 2, 3, 4], 0.01).unwrap();
            let precision =
                Array2::from_shape_vec((d, d), widened(&fitted.precision[patch * d * d..(patch + 1) * d * d])).unwrap();
            let identity = cov.dot(&precision);
            for i in 0..d {
                for j in 0..d {
                    let want = if i == j { 1.0 } else { 0.0 };
                    // The precision is rounded to f32: the identity holds to f32's precision.
                    assert!((identity[[i, j]] - want).abs() < 1e-5, "patch {patch}: {identity}");
                }
            }
        }
        // The constant patch: covariance exactly epsilon * I, precision 100 * I.
        assert!((f64::from(fitted.precision[d * d]) - 100.0).abs() < 1e-9);
    }

    #[test]
    fn non_finite_values_name_the_image() {
        let (d, n_patches) = (2, 3);
        let mut values = vec![1.0f32; 2 * d * n_patches];
        values[d * n_patches + n_patches + 2] = f32::NAN; // image index 1, channel 1, patch 2
        let mut stats = PatchStats::new(n_patches, ChannelSubset::explicit(vec![4, 9], 10).unwrap());
        let error = stats.update(&[17, 42], &values).unwrap_err();
        assert!(matches!(error, StatsError::NonFinite { image: 42, channel: 9, patch: 2, .. }), "{error}");
        assert!(error.to_string().contains("image 42"));
        assert_eq!(stats.count(), 0);
    }

    #[test]
    fn subset_covariance_is_the_sub_matrix() {
        let (n, d, n_patches) = (10, 4, 1);
        let values = data(n, d, n_patches, 9);
        let ids: Vec<u32> = (0..n as u32).collect();
        let mut full = PatchStats::new(n_patches, ChannelSubset::all(d));
        full.update(&ids, &values).unwrap();
        // Accumulating only channels 1 and 3 gives the same covariance as the sub-matrix.
        let subset = ChannelSubset::explicit(vec![1, 3], d).unwrap();
        let mut projected = Vec::new();
        for image in 0..n {
            for &channel in subset.channels() {
                projected.push(values[(image * d + channel) * n_patches]);
            }
        }
        let mut small = PatchStats::new(n_patches, subset.clone());
        small.update(&ids, &projected).unwrap();
        let a = full.gaussians(&subset, 0.01).unwrap();
        let b = small.gaussians(&subset, 0.01).unwrap();
        assert!(close(&a.mean, &b.mean) && close_f32(&a.precision, &b.precision));
    }

    #[test]
    fn many_subsets_at_once_equal_each_alone() {
        let (n, d, n_patches) = (12, 6, 70);
        let values = data(n, d, n_patches, 4);
        let ids: Vec<u32> = (0..n as u32).collect();
        let mut stats = PatchStats::new(n_patches, ChannelSubset::all(d));
        stats.update(&ids, &values).unwrap();
        let subsets = [
            ChannelSubset::explicit(vec![0, 2, 5], d).unwrap(),
            ChannelSubset::all(d),
            ChannelSubset::explicit(vec![4], d).unwrap(),
        ];
        let members: Vec<&ChannelSubset> = subsets.iter().collect();
        let many = stats.gaussians_many(&members, 0.01).unwrap();
        for (subset, fitted) in subsets.iter().zip(&many) {
            assert_eq!(fitted, &stats.gaussians(subset, 0.01).unwrap());
        }
        // A subset outside the tracked channels is named by its position.
        let small = PatchStats::new(n_patches, ChannelSubset::explicit(vec![0, 2, 5], d).unwrap());
        assert!(matches!(small.gaussians_many(&[&subsets[0], &subsets[1]], 0.01), Err((1, StatsError::Subset))));
    }
}
