//! Mahalanobis distances of a batch of images to every cell's Gaussian, as batched linear algebra.
//!
//! A model is prepared once: per cell, the lower Cholesky factor `L` of its precision matrix
//! (`P = L L^T`, computed in f64). Per cell and batch, the deviations of all images form a matrix `D`
//! (`n x k`); then `D L` (one triangular matrix product through BLAS, `?trmm`: `n k^2`
//! multiply-adds, half a general product's) holds in row `i` the vector `L^T d_i`, whose squared
//! norm is `d_i^T P d_i`. A sum of squares cannot go negative through rounding, unlike `d^T (P d)`,
//! so single precision suffices: the distances are computed in `score.precision` (f32 by default,
//! or f64), the squares summed in f64. A precision matrix that is not positive definite (a corrupt
//! or foreign model) fails its factorisation when the model is prepared, naming the cell.

use ndarray::ArrayViewMut2;
use ndarray_linalg::{CholeskyInplace, UPLO};
use padim_core::config::ComputePrecision;
use padim_fit::model::Model;
use padim_fit::stats::TRANSPOSE_BLOCK;
use rayon::prelude::*;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScoreError {
    #[error("a batch of {n_images} images of {k} channels and {n_patches} patches needs {expected} values, got {got}")]
    Shape { n_images: usize, k: usize, n_patches: usize, expected: usize, got: usize },
    #[error("image {image}: embedding value at channel {channel}, patch {patch} is not finite")]
    NonFinite { image: u32, channel: usize, patch: usize },
    #[error(
        "model `{model}`, patch {patch}: the precision matrix is not positive definite (or not finite), so \
         no distance to it is one; refit the model"
    )]
    NotPositiveDefinite { model: String, patch: usize },
}

/// The scalar types the distances are computed in: f32 through [`crate::kernel`], f64 through
/// BLAS's triangular product.
trait Real: Copy + Default + Send + Sync + Into<f64> + std::ops::Sub<Output = Self> + 'static {
    fn from_f32(value: f32) -> Self;
    /// Runs `f` with this thread's two scratch buffers (a block of the batch, and deviations),
    /// kept from call to call: megabytes each, which a fresh allocation per block would fault in.
    fn with_scratch<R>(f: impl FnOnce(&mut Vec<Self>, &mut Vec<Self>) -> R) -> R;
    /// The distances of a block's `n` images (`block`: `[image][u]`) to `kernel`'s Gaussian of
    /// `cell` over the channels at `positions`, into `out`; `deviations` is scratch.
    fn cell_distances(
        kernel: &Kernel,
        positions: &[usize],
        cell: usize,
        shape: (usize, usize),
        block: &[Self],
        deviations: &mut Vec<Self>,
        out: &mut [f32],
    );
}

thread_local! {
    /// A precision matrix being factorised (f64), per thread.
    static FACTOR_SCRATCH: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
    static SCRATCH_F32: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    static SCRATCH_F64: std::cell::RefCell<(Vec<f64>, Vec<f64>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// The deviations `[image][k]` of a block's images (`[image][u]`) at `positions` from `mean`.
fn gather<T: Real>(block: &[T], (n, u): (usize, usize), positions: &[usize], mean: &[T], deviations: &mut Vec<T>) {
    deviations.clear();
    for image in block.chunks_exact(u.max(1)).take(n) {
        deviations.extend(positions.iter().zip(mean).map(|(&p, &m)| image[p] - m));
    }
}

impl Real for f32 {
    fn from_f32(value: f32) -> Self {
        value
    }
    fn with_scratch<R>(f: impl FnOnce(&mut Vec<f32>, &mut Vec<f32>) -> R) -> R {
        SCRATCH_F32.with_borrow_mut(|(block, deviations)| f(block, deviations))
    }
    fn cell_distances(
        kernel: &Kernel,
        positions: &[usize],
        cell: usize,
        shape: (usize, usize),
        block: &[f32],
        deviations: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let Kernel::F32 { mean, packed } = kernel else { unreachable!("an f32 kernel") };
        let (k, (n, u)) = (positions.len(), shape);
        let size = crate::kernel::packed_len(k);
        let (mean, packed) = (&mean[cell * k..(cell + 1) * k], &packed[cell * size..(cell + 1) * size]);
        let _ = deviations; // gathered by the kernel itself
        crate::kernel::distances(&block[..n * u], u, positions, mean, packed, out);
    }
}

impl Real for f64 {
    fn from_f32(value: f32) -> Self {
        value as f64
    }
    fn with_scratch<R>(f: impl FnOnce(&mut Vec<f64>, &mut Vec<f64>) -> R) -> R {
        SCRATCH_F64.with_borrow_mut(|(block, deviations)| f(block, deviations))
    }
    fn cell_distances(
        kernel: &Kernel,
        positions: &[usize],
        cell: usize,
        shape: (usize, usize),
        block: &[f64],
        deviations: &mut Vec<f64>,
        out: &mut [f32],
    ) {
        let Kernel::F64 { mean, factor } = kernel else { unreachable!("an f64 kernel") };
        let k = positions.len();
        gather(block, shape, positions, &mean[cell * k..(cell + 1) * k], deviations);
        padim_fit::blas::dtrmm_right_lower(shape.0, k, &factor[cell * k * k..(cell + 1) * k * k], deviations);
        for (distance, row) in out.iter_mut().zip(deviations.chunks_exact(k.max(1))) {
            *distance = row.iter().map(|&v| v * v).sum::<f64>().sqrt() as f32;
        }
    }
}

/// Per cell, the mean and the lower Cholesky factor of the precision: f32 factors packed for
/// [`crate::kernel::norms`], f64 factors row-major for BLAS.
#[derive(Debug, Clone)]
enum Kernel {
    F32 { mean: Vec<f32>, packed: Vec<f32> },
    F64 { mean: Vec<f64>, factor: Vec<f64> },
}

/// A Gaussian model prepared for scoring (see the module's documentation).
#[derive(Debug, Clone)]
pub struct Gaussian {
    /// The model's subset name, for errors.
    pub subset: String,
    /// The model's channels, in its order.
    pub channels: Vec<usize>,
    k: usize,
    /// The embedding-grid patch where each cell starts, and each patch's cell.
    anchors: Vec<usize>,
    cell_of: Vec<usize>,
    kernel: Kernel,
}

impl Gaussian {
    /// Factorises `model`'s precision matrices (in f64, in parallel over cells) and keeps the
    /// factors and means in `precision`.
    pub fn new(model: &Model, precision: ComputePrecision) -> Result<Gaussian, ScoreError> {
        let k = model.channels.len();
        let matrix = |cell: usize, out: &mut Vec<f64>| {
            out.extend(model.precision[cell * k * k..(cell + 1) * k * k].iter().map(|&v| f64::from(v)));
        };
        Gaussian::with_matrices(model, matrix, precision)
    }

    /// [`Gaussian::new`] for a model decoded by [`padim_fit::model::decode_model_parts`], its
    /// precision matrices read from the file's little-endian bytes.
    pub fn from_le_bytes(model: &Model, bytes: &[u8], precision: ComputePrecision) -> Result<Gaussian, ScoreError> {
        let k = model.channels.len();
        assert_eq!(bytes.len(), model.n_patches() * k * k * 4, "the precision's bytes");
        let matrix = |cell: usize, out: &mut Vec<f64>| {
            let cell_bytes = &bytes[cell * k * k * 4..(cell + 1) * k * k * 4];
            out.extend(cell_bytes.chunks_exact(4).map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))));
        };
        Gaussian::with_matrices(model, matrix, precision)
    }

    /// Factorises the precision matrices `matrix(cell, out)` appends to `out` (row-major, f64).
    fn with_matrices(
        model: &Model,
        matrix: impl Fn(usize, &mut Vec<f64>) + Sync,
        precision: ComputePrecision,
    ) -> Result<Gaussian, ScoreError> {
        assert!(!model.is_nearest(), "a Gaussian model");
        let (k, cells) = (model.channels.len(), model.n_patches());
        let anchors = model.info.anchor_patches();
        // Factorises `cell`'s precision in f64, in place in this thread's buffer, and hands the
        // lower factor (row-major) to `keep`.
        let factor = |cell: usize, keep: &mut dyn FnMut(&[f64])| -> Result<(), ScoreError> {
            let not_pd = || ScoreError::NotPositiveDefinite { model: model.info.subset.clone(), patch: anchors[cell] };
            FACTOR_SCRATCH.with_borrow_mut(|buffer| {
                buffer.clear();
                matrix(cell, buffer);
                let mut matrix = ArrayViewMut2::from_shape((k, k), &mut buffer[..]).expect("k x k");
                matrix.cholesky_inplace(UPLO::Lower).map_err(|_| not_pd())?;
                if !matrix.iter().all(|v| v.is_finite()) {
                    return Err(not_pd());
                }
                keep(matrix.as_slice().expect("a contiguous view"));
                Ok(())
            })
        };
        // Each cell's factor straight into its place in the result (in parallel).
        let kernel = match precision {
            ComputePrecision::F32 => {
                let size = crate::kernel::packed_len(k);
                let mut packed = vec![0f32; cells * size];
                packed.par_chunks_mut(size.max(1)).enumerate().try_for_each(|(cell, out)| {
                    factor(cell, &mut |lower| crate::kernel::pack_into(|r, c| lower[r * k + c] as f32, k, out))
                })?;
                Kernel::F32 { mean: model.mean.clone(), packed }
            }
            ComputePrecision::F64 => {
                let mut all = vec![0f64; cells * k * k];
                all.par_chunks_mut((k * k).max(1)).enumerate().try_for_each(|(cell, out)| {
                    // Zero above the diagonal (the in-place factorisation leaves the input there).
                    factor(cell, &mut |lower| {
                        for (i, (o, &v)) in out.iter_mut().zip(lower).enumerate() {
                            *o = if i % k <= i / k { v } else { 0.0 };
                        }
                    })
                })?;
                Kernel::F64 { mean: model.mean.iter().map(|&v| v as f64).collect(), factor: all }
            }
        };
        Ok(Gaussian {
            subset: model.info.subset.clone(),
            channels: model.channels.clone(),
            k,
            anchors,
            cell_of: model.info.cell_of_patches(),
            kernel,
        })
    }

    /// The patches of the embedding grid it scores.
    pub fn n_patches(&self) -> usize {
        self.cell_of.len()
    }

    /// Its cells (a model on a coarser grid has fewer than patches).
    pub fn n_cells(&self) -> usize {
        self.anchors.len()
    }

    /// Multiply-adds of one image's distances (the triangular products).
    pub fn multiply_adds_per_image(&self) -> u64 {
        (self.n_cells() * self.k * (self.k + 1) / 2) as u64
    }
}

/// Distances `[n_images, n_patches]` for `values` `[n_images, k, n_patches]` holding the model's
/// channels in the model's order.
pub fn distances(model: &Gaussian, image_ids: &[u32], values: &[f32]) -> Result<Vec<f32>, ScoreError> {
    let positions: Vec<usize> = (0..model.channels.len()).collect();
    let mut maps = distances_many(&[(model, positions.as_slice())], &model.channels, image_ids, values)?;
    Ok(maps.pop().map(|(map, _)| map).unwrap_or_default())
}

/// Distances of a batch to several models in one pass: `values` is `[n_images, channels.len(),
/// n_patches]` for `channels` (the union of the models' channels, or more); each model comes with
/// the positions of its channels within `channels`, in the model's order. Blocks of consecutive
/// patches are made patch-major once (in parallel); per patch where a model's cell starts, that
/// model's deviations are gathered from the block (which stays in cache) for one triangular
/// product, and the cell's distance goes to every patch of the cell. Returns per model the maps
/// `[n_images, n_patches]` and the CPU time spent on that model (summed over threads).
pub fn distances_many(
    models: &[(&Gaussian, &[usize])],
    channels: &[usize],
    image_ids: &[u32],
    values: &[f32],
) -> Result<Vec<(Vec<f32>, Duration)>, ScoreError> {
    let (n, u) = (image_ids.len(), channels.len());
    let Some(n_patches) = models.first().map(|(m, _)| m.n_patches()) else { return Ok(Vec::new()) };
    let expected = n * u * n_patches;
    if values.len() != expected {
        return Err(ScoreError::Shape { n_images: n, k: u, n_patches, expected, got: values.len() });
    }
    if let Some(position) = values.iter().position(|v| !v.is_finite()) {
        return Err(ScoreError::NonFinite {
            image: image_ids[position / (u * n_patches)],
            channel: channels[(position / n_patches) % u],
            patch: position % n_patches,
        });
    }
    for (model, positions) in models {
        assert!(model.n_patches() == n_patches && positions.len() == model.k, "model shape");
        assert!(positions.iter().all(|&p| p < u), "positions within the channels");
    }
    let any_f64 = models.iter().any(|(m, _)| matches!(m.kernel, Kernel::F64 { .. }));
    assert!(
        models.iter().all(|(m, _)| matches!(m.kernel, Kernel::F64 { .. }) == any_f64),
        "the models of one pass share a precision"
    );
    // Each model's distances cell-major (`[cell][image]`): a block's cells are a contiguous range.
    let mut by_cell: Vec<Vec<f32>> = models.iter().map(|(m, _)| vec![0f32; m.n_cells() * n]).collect();
    let times = if any_f64 {
        score_blocks::<f64>(models, (n, u, n_patches), values, &mut by_cell)
    } else {
        score_blocks::<f32>(models, (n, u, n_patches), values, &mut by_cell)
    };
    Ok(models
        .iter()
        .zip(by_cell)
        .zip(times)
        .map(|(((model, _), by_cell), time)| (expand_cells(&by_cell, &model.cell_of, n), time))
        .collect())
}

/// The maps `[n_images, patches]` from distances `[cell][image]`: every patch takes its cell's
/// distance. Blocks of images in parallel; within a block, each cell's distances of the block's
/// images are one cache line, read once per patch and written to the block's rows.
fn expand_cells(by_cell: &[f32], cell_of: &[usize], n: usize) -> Vec<f32> {
    const IMAGES: usize = 16;
    let n_patches = cell_of.len();
    let mut maps = vec![0f32; n * n_patches];
    maps.par_chunks_mut((IMAGES * n_patches).max(1)).enumerate().for_each(|(block, rows)| {
        let first = block * IMAGES;
        let count = rows.len() / n_patches.max(1);
        for (patch, &cell) in cell_of.iter().enumerate() {
            let distances = &by_cell[cell * n + first..][..count];
            for (image, &d) in distances.iter().enumerate() {
                rows[image * n_patches + patch] = d;
            }
        }
    });
    maps
}

/// Blocks of consecutive patches, in parallel: each task transposes its block of the batch into
/// `[patch][image][channel]` (in `T`) and scores it with every model while it is in cache, writing
/// the distances of the cells that start in the block into `by_cell`. Returns each model's CPU time.
fn score_blocks<T: Real>(
    models: &[(&Gaussian, &[usize])],
    (n, u, n_patches): (usize, usize, usize),
    values: &[f32],
    by_cell: &mut [Vec<f32>],
) -> Vec<Duration> {
    let n_blocks = n_patches.div_ceil(TRANSPOSE_BLOCK);
    // Per block, per model, its slice of the model's output: the cells whose first patch is in the
    // block (anchors ascend with the cells, so they are consecutive).
    let mut outputs: Vec<Vec<(usize, &mut [f32])>> = (0..n_blocks).map(|_| Vec::with_capacity(models.len())).collect();
    for ((model, _), out) in models.iter().zip(by_cell.iter_mut()) {
        let mut rest: &mut [f32] = out;
        let mut start = 0;
        for (block, slices) in outputs.iter_mut().enumerate() {
            let end = model.anchors.partition_point(|&a| a < (block + 1) * TRANSPOSE_BLOCK);
            let (mine, tail) = std::mem::take(&mut rest).split_at_mut((end - start) * n);
            slices.push((start, mine));
            (rest, start) = (tail, end);
        }
    }
    let per_block: Vec<Vec<Duration>> = outputs
        .into_par_iter()
        .enumerate()
        .map(|(block, slices)| {
            T::with_scratch(|transposed, deviations| {
                let first = block * TRANSPOSE_BLOCK;
                let width = TRANSPOSE_BLOCK.min(n_patches - first);
                transposed.clear();
                transposed.resize(width * n * u, T::default());
                transpose::<T>(values, (n, u, n_patches), first, transposed);
                models
                    .iter()
                    .zip(slices)
                    .map(|((model, positions), (start, out))| {
                        let clock = Instant::now();
                        for (offset, distances) in out.chunks_exact_mut(n.max(1)).enumerate() {
                            let cell = start + offset;
                            let at = model.anchors[cell] - first;
                            let block = &transposed[at * n * u..(at + 1) * n * u];
                            T::cell_distances(&model.kernel, positions, cell, (n, u), block, deviations, distances);
                        }
                        clock.elapsed()
                    })
                    .collect()
            })
        })
        .collect();
    (0..models.len()).map(|m| per_block.iter().map(|times| times[m]).sum()).collect()
}

/// Writes patches `first..` of `values` (`[n][u][n_patches]`, f32) into `out` as
/// `[patch][image][channel]` in `T`. Per image, its `u` rows of the block (a few tens of kilobytes)
/// stay in cache while they are written out patch by patch, so both sides run contiguously.
fn transpose<T: Real>(values: &[f32], (n, u, n_patches): (usize, usize, usize), first: usize, out: &mut [T]) {
    let width = out.len() / (n * u).max(1);
    for image in 0..n {
        let rows = &values[image * u * n_patches..(image + 1) * u * n_patches];
        for offset in 0..width {
            let target = &mut out[(offset * n + image) * u..][..u];
            for (channel, value) in target.iter_mut().enumerate() {
                *value = T::from_f32(rows[channel * n_patches + first + offset]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_expand_to_every_patch_of_every_image() {
        // 37 images (blocks of 16 and a remainder), 3 cells over 7 patches.
        let (n, cell_of) = (37, vec![0, 0, 1, 2, 1, 2, 0]);
        let by_cell: Vec<f32> = (0..3 * n).map(|i| i as f32).collect();
        let maps = expand_cells(&by_cell, &cell_of, n);
        for image in 0..n {
            for (patch, &cell) in cell_of.iter().enumerate() {
                assert_eq!(maps[image * 7 + patch], by_cell[cell * n + image]);
            }
        }
    }
    use padim_fit::model::ModelInfo;
    use proptest::prelude::*;

    fn model(k: usize, (height, width, factor): (usize, usize, usize), mean: Vec<f32>, precision: Vec<f32>) -> Model {
        Model {
            info: ModelInfo {
                format_version: ModelInfo::format_for(factor),
                subset: "t".into(),
                backbone: "b".into(),
                weights_sha256: String::new(),
                tap: String::new(),
                layers: vec![],
                input_height: 4 * height * factor,
                input_width: 4 * width * factor,
                grid_height: height,
                grid_width: width,
                embedding_channels: k,
                epsilon: 0.0,
                n_train_images: 2,
                config_hash: String::new(),
                covariance: Default::default(),
                pool: Default::default(),
                grid_factor: factor,
            },
            channels: (0..k).collect(),
            mean,
            precision,
            bank: Vec::new(),
        }
    }

    /// A symmetric positive definite k x k matrix (A A^T + I) from `seed`.
    fn spd(k: usize, seed: usize) -> Vec<f32> {
        let a: Vec<f64> = (0..k * k).map(|i| (((i + seed) * 7919 % 1013) as f64 / 1013.0 - 0.5) * 2.0).collect();
        let mut out = vec![0f32; k * k];
        for i in 0..k {
            for j in 0..k {
                let dot: f64 = (0..k).map(|t| a[i * k + t] * a[j * k + t]).sum();
                out[i * k + j] = (dot + if i == j { 1.0 } else { 0.0 }) as f32;
            }
        }
        out
    }

    /// sqrt(d^T P d) in f64, from the definition.
    fn direct(x: &[f64], mean: &[f32], precision: &[f32]) -> f64 {
        let k = x.len();
        let d: Vec<f64> = x.iter().zip(mean).map(|(a, &m)| a - m as f64).collect();
        let mut sum = 0.0;
        for i in 0..k {
            for j in 0..k {
                sum += d[i] * precision[i * k + j] as f64 * d[j];
            }
        }
        sum.sqrt()
    }

    #[test]
    fn matches_closed_form() {
        // Patch 0: identity precision -> Euclidean distance. Patch 1: diag(4, 1/4) with mean (1, 1).
        let m = model(2, (2, 1, 1), vec![0.0, 0.0, 1.0, 1.0], vec![1.0, 0.0, 0.0, 1.0, 4.0, 0.0, 0.0, 0.25]);
        // One image: patch 0 at (3, 4), patch 1 at (2, 3). Layout [image, channel, patch].
        let values = [3.0, 2.0, 4.0, 3.0];
        for precision in [ComputePrecision::F32, ComputePrecision::F64] {
            let g = Gaussian::new(&m, precision).unwrap();
            let d = distances(&g, &[7], &values).unwrap();
            assert!((d[0] - 5.0).abs() < 1e-6);
            // (2-1)^2 * 4 + (3-1)^2 / 4 = 4 + 1 = 5.
            assert!((d[1] - 5f32.sqrt()).abs() < 1e-6);
            let mut bad = values;
            bad[3] = f32::INFINITY;
            assert!(matches!(distances(&g, &[7], &bad), Err(ScoreError::NonFinite { image: 7, channel: 1, patch: 1 })));
        }
    }

    #[test]
    fn a_precision_that_is_not_positive_definite_is_refused_naming_the_model_and_patch() {
        // Patch 1's precision diag(1, -1): no Cholesky factor, so no distance.
        let m = model(2, (2, 1, 1), vec![0.0; 4], vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, -1.0]);
        let error = Gaussian::new(&m, ComputePrecision::F32).unwrap_err();
        assert_eq!(error, ScoreError::NotPositiveDefinite { model: "t".into(), patch: 1 });
        assert!(error.to_string().contains("model `t`, patch 1"), "{error}");
        // A NaN likewise; on a coarser grid the patch named is where the cell starts.
        let m = model(2, (1, 2, 2), vec![0.0; 4], vec![1.0, 0.0, 0.0, 1.0, f32::NAN, 0.0, 0.0, 1.0]);
        assert_eq!(
            Gaussian::new(&m, ComputePrecision::F64).unwrap_err(),
            ScoreError::NotPositiveDefinite { model: "t".into(), patch: 2 }
        );
        // A zero distance stays zero.
        let m = model(2, (2, 1, 1), vec![1.0, 2.0, 1.0, 2.0], vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]);
        let g = Gaussian::new(&m, ComputePrecision::F32).unwrap();
        assert_eq!(distances(&g, &[9], &[1.0, 1.0, 2.0, 2.0]).unwrap(), vec![0.0, 0.0]);
    }

    #[test]
    fn a_coarse_model_gives_every_patch_of_a_cell_its_distance() {
        // A 2x3 grid of cells of 2x2 patches (4x6 patches), 3 channels; the fine model holds each
        // cell's Gaussian at each of its patches.
        let (k, (h, w), f) = (3, (2, 3), 2);
        let cells = h * w;
        let mean: Vec<f32> = (0..cells * k).map(|i| (i % 7) as f32 * 0.3).collect();
        let precision: Vec<f32> = (0..cells).flat_map(|c| spd(k, c * 11)).collect();
        let coarse = model(k, (h, w, f), mean.clone(), precision.clone());
        let cell_of = coarse.info.cell_of_patches();
        let (mut fine_mean, mut fine_precision) = (Vec::new(), Vec::new());
        for &cell in &cell_of {
            fine_mean.extend_from_slice(&mean[cell * k..(cell + 1) * k]);
            fine_precision.extend_from_slice(&precision[cell * k * k..(cell + 1) * k * k]);
        }
        let fine = model(k, (h * f, w * f, 1), fine_mean, fine_precision);
        let n_patches = h * f * w * f;
        // Two images whose values repeat within each cell, as an upsampled feature's do.
        let values: Vec<f32> = (0..2 * k * n_patches)
            .map(|i| {
                let (image_channel, patch) = (i / n_patches, i % n_patches);
                ((image_channel * 31 + cell_of[patch] * 17) % 23) as f32 * 0.25
            })
            .collect();
        for precision in [ComputePrecision::F32, ComputePrecision::F64] {
            let a = distances(&Gaussian::new(&coarse, precision).unwrap(), &[0, 1], &values).unwrap();
            let b = distances(&Gaussian::new(&fine, precision).unwrap(), &[0, 1], &values).unwrap();
            assert_eq!(a, b, "{precision:?}");
        }
        assert_eq!(coarse.info.anchor_patches(), vec![0, 2, 4, 12, 14, 16]);
    }

    proptest! {
        /// Random Gaussians over channels of a union, several models in one pass, on more patches
        /// than one block: each model's distances equal the definition (f64 to the f32 rounding of
        /// the stored distance, f32 to 1e-5 relative) and the same model scored alone.
        #[test]
        fn many_models_in_one_pass_match_the_definition(seed in 0usize..1000, n in 1usize..5) {
            let (u, n_patches) = (5, 70);
            let value = |i: usize| ((((i + seed) * 7919) % 1013) as f32 / 1013.0 - 0.5) * 4.0;
            let make = |channels: Vec<usize>, salt: usize| {
                let k = channels.len();
                let mean: Vec<f32> = (0..n_patches * k).map(|i| value(i + salt)).collect();
                let precision: Vec<f32> = (0..n_patches).flat_map(|p| spd(k, p * 31 + salt * 3 + seed)).collect();
                let mut m = model(k, (n_patches, 1, 1), mean, precision);
                m.channels = channels;
                m
            };
            let models = [make(vec![0, 2, 3], 1), make(vec![0, 1, 2, 3, 4], 2), make(vec![4], 3)];
            let values: Vec<f32> = (0..n * u * n_patches).map(|i| value(i * 3 + 11)).collect();
            let ids: Vec<u32> = (0..n as u32).collect();
            let union: Vec<usize> = (0..u).collect();
            for (precision, tolerance) in [(ComputePrecision::F64, 1.2e-7), (ComputePrecision::F32, 1e-5)] {
                let prepared: Vec<Gaussian> = models.iter().map(|m| Gaussian::new(m, precision).unwrap()).collect();
                let with: Vec<(&Gaussian, &[usize])> = prepared.iter().zip(&models).map(|(g, m)| (g, m.channels.as_slice())).collect();
                let many = distances_many(&with, &union, &ids, &values).unwrap();
                for ((m, g), (maps, _)) in models.iter().zip(&prepared).zip(&many) {
                    let k = m.channels.len();
                    let mut own = Vec::new();
                    for image in 0..n {
                        for &c in &m.channels {
                            own.extend_from_slice(&values[(image * u + c) * n_patches..][..n_patches]);
                        }
                    }
                    prop_assert_eq!(maps, &distances(g, &ids, &own).unwrap());
                    for image in 0..n {
                        for patch in 0..n_patches {
                            let x: Vec<f64> = m.channels.iter().map(|&c| values[(image * u + c) * n_patches + patch] as f64).collect();
                            let expected = direct(&x, &m.mean[patch * k..(patch + 1) * k], &m.precision[patch * k * k..(patch + 1) * k * k]);
                            let got = maps[image * n_patches + patch] as f64;
                            prop_assert!((got - expected).abs() <= tolerance * expected.max(1.0), "{got} vs {expected}");
                        }
                    }
                }
            }
        }
    }
}
