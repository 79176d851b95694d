//! Mahalanobis distances of a batch of images to every patch's Gaussian, as batched linear algebra:
//! per patch, the deviations of all images form a matrix `D` (`n x k`) and the squared distances are
//! the row sums of `D .* (D P)` with `P` the patch's precision matrix: one GEMM per patch per batch.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};
use padim_fit::model::Model;
use padim_fit::stats::{TRANSPOSE_BLOCK, transpose_block};
use rayon::prelude::*;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScoreError {
    #[error("a batch of {n_images} images of {k} channels and {n_patches} patches needs {expected} values, got {got}")]
    Shape { n_images: usize, k: usize, n_patches: usize, expected: usize, got: usize },
    #[error("image {image}: embedding value at channel {channel}, patch {patch} is not finite")]
    NonFinite { image: u32, channel: usize, patch: usize },
    #[error(
        "model `{model}`, image {image}, patch {patch}: the squared Mahalanobis distance is not finite or \
         clearly negative, so the model's precision matrix there is not positive definite; refit the model"
    )]
    BadDistance { model: String, image: u32, patch: usize },
}

/// A squared distance this far below zero, relative to the magnitude of its terms, is not rounding:
/// the precision matrix is not positive definite (a corrupt or foreign model).
const NEGATIVE_TOLERANCE: f64 = 1e-9;

/// Distances `[n_images, n_patches]` for `values` `[n_images, k, n_patches]` holding the model's
/// channels in the model's order: Mahalanobis, or for a nearest-patch model the distance to the
/// nearest training patch (`crate::nearest`). Computed in f64.
pub fn distances(model: &Model, image_ids: &[u32], values: &[f32]) -> Result<Vec<f32>, ScoreError> {
    let positions: Vec<usize> = (0..model.channels.len()).collect();
    if model.is_nearest() {
        let nearest = crate::nearest::model_nearest_distances(model, &positions, &model.channels, image_ids, values);
        return nearest.map(|(map, _)| map);
    }
    let mut maps = distances_many(&[(model, positions.as_slice())], &model.channels, image_ids, values)?;
    Ok(maps.pop().map(|(map, _)| map).unwrap_or_default())
}

/// Distances of a batch to several models in one pass: `values` is `[n_images, channels.len(),
/// n_patches]` for `channels` (the union of the models' channels, or more); each model comes with
/// the positions of its channels within `channels`, in the model's order. The batch is made
/// patch-major once; per patch, every model's deviations are gathered from that patch's block
/// (which stays in cache) for one GEMM each. Returns per model the maps `[n_images, n_patches]` and
/// the CPU time spent on that model (summed over threads). Computed in f64.
pub fn distances_many(
    models: &[(&Model, &[usize])],
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
        assert!(!model.is_nearest(), "a Gaussian model");
        assert!(model.n_patches() == n_patches && positions.len() == model.channels.len(), "model shape");
        assert!(positions.iter().all(|&p| p < u), "positions within the channels");
    }
    // Blocks of consecutive patches: one task transposes its block of the batch
    // (`[patch][image][channel]`, f64) and scores it with every model while the block is in cache.
    let per_block: Vec<Vec<(Vec<f32>, Duration)>> = (0..n_patches.div_ceil(TRANSPOSE_BLOCK))
        .into_par_iter()
        .map_init(<(Vec<f64>, Scratch)>::default, |(transposed, scratch), block| {
            let first = block * TRANSPOSE_BLOCK;
            let width = TRANSPOSE_BLOCK.min(n_patches - first);
            transposed.clear();
            transposed.resize(width * n * u, 0.0);
            transpose_block(values, n, u, n_patches, first, n, transposed);
            models
                .iter()
                .map(|(model, positions)| {
                    let clock = Instant::now();
                    let mut distances = Vec::with_capacity(width * n);
                    for offset in 0..width {
                        let patch = first + offset;
                        let block = &transposed[offset * n * u..(offset + 1) * n * u];
                        distances.extend(scratch.patch(model, positions, patch, n, block));
                    }
                    (distances, clock.elapsed())
                })
                .collect()
        })
        .collect();
    let mut out: Vec<(Vec<f32>, Duration)> =
        models.iter().map(|_| (vec![0f32; n * n_patches], Duration::ZERO)).collect();
    // A distance that is not a number marks a squared distance that was (see `Scratch::patch`).
    let mut bad: Option<ScoreError> = None;
    for (block, per_model) in per_block.into_iter().enumerate() {
        for (m, ((map, time), (distances, spent))) in out.iter_mut().zip(per_model).enumerate() {
            *time += spent;
            for (offset, column) in distances.chunks_exact(n).enumerate() {
                let patch = block * TRANSPOSE_BLOCK + offset;
                for (image, &distance) in column.iter().enumerate() {
                    map[image * n_patches + patch] = distance;
                    if distance.is_nan() && bad.is_none() {
                        let model = models[m].0.info.subset.clone();
                        bad = Some(ScoreError::BadDistance { model, image: image_ids[image], patch });
                    }
                }
            }
        }
    }
    if let Some(error) = bad {
        return Err(error);
    }
    Ok(out)
}

/// One task's buffers, reused from patch to patch.
#[derive(Default)]
struct Scratch {
    deviations: Vec<f64>,
    precision: Vec<f64>,
    projected: Vec<f64>,
}

impl Scratch {
    /// The distances of the `n` images to `model`'s Gaussian at `patch`; `block` holds the images'
    /// values `[image][channel]` of the union, of which the model reads `positions`.
    fn patch<'a>(
        &'a mut self,
        model: &Model,
        positions: &[usize],
        patch: usize,
        n: usize,
        block: &[f64],
    ) -> impl Iterator<Item = f32> + 'a {
        let k = positions.len();
        let u = block.len() / n.max(1);
        let mean = &model.mean[patch * k..(patch + 1) * k];
        self.deviations.clear();
        for image in block.chunks_exact(u) {
            self.deviations.extend(positions.iter().zip(mean).map(|(&p, &m)| image[p] - m as f64));
        }
        self.precision.clear();
        self.precision.extend(model.precision[patch * k * k..(patch + 1) * k * k].iter().map(|&v| v as f64));
        self.projected.clear();
        self.projected.resize(n * k, 0.0);
        let deviations = ArrayView2::from_shape((n, k), &self.deviations).expect("n x k");
        let precision = ArrayView2::from_shape((k, k), &self.precision).expect("k x k");
        let mut projected = ArrayViewMut2::from_shape((n, k), &mut self.projected).expect("n x k");
        general_mat_mul(1.0, &deviations, &precision, 0.0, &mut projected);
        self.deviations.chunks_exact(k.max(1)).zip(self.projected.chunks_exact(k.max(1))).map(|(d, p)| {
            let (squared, magnitude) =
                d.iter().zip(p).fold((0f64, 0f64), |(sum, size), (a, b)| (sum + a * b, size + (a * b).abs()));
            if squared >= 0.0 {
                squared.sqrt() as f32
            } else if squared >= -NEGATIVE_TOLERANCE * magnitude {
                0.0 // rounding below an exact zero
            } else {
                f32::NAN // not finite, or clearly negative: reported by the caller
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use padim_fit::model::ModelInfo;

    fn model(k: usize, n_patches: usize, mean: Vec<f32>, precision: Vec<f32>) -> Model {
        Model {
            info: ModelInfo {
                format_version: 1,
                subset: "t".into(),
                backbone: "b".into(),
                weights_sha256: String::new(),
                tap: String::new(),
                layers: vec![],
                input_height: 4 * n_patches,
                input_width: 4,
                grid_height: n_patches,
                grid_width: 1,
                embedding_channels: k,
                epsilon: 0.0,
                n_train_images: 2,
                config_hash: String::new(),
                covariance: Default::default(),
                pool: Default::default(),
            },
            channels: (0..k).collect(),
            mean,
            precision,
            bank: Vec::new(),
        }
    }

    #[test]
    fn matches_closed_form() {
        // Patch 0: identity precision -> Euclidean distance. Patch 1: diag(4, 1/4) with mean (1, 1).
        let m = model(2, 2, vec![0.0, 0.0, 1.0, 1.0], vec![1.0, 0.0, 0.0, 1.0, 4.0, 0.0, 0.0, 0.25]);
        // One image: patch 0 at (3, 4), patch 1 at (2, 3). Layout [image, channel, patch].
        let values = [3.0, 2.0, 4.0, 3.0];
        let d = distances(&m, &[7], &values).unwrap();
        assert!((d[0] - 5.0).abs() < 1e-6);
        // (2-1)^2 * 4 + (3-1)^2 / 4 = 4 + 1 = 5.
        assert!((d[1] - 5f32.sqrt()).abs() < 1e-6);
        let mut bad = values;
        bad[3] = f32::INFINITY;
        assert!(matches!(distances(&m, &[7], &bad), Err(ScoreError::NonFinite { image: 7, channel: 1, patch: 1 })));
    }

    #[test]
    fn a_precision_that_is_not_positive_definite_is_an_error_not_a_zero() {
        // Patch 1's precision diag(1, -1): (0, 2) has squared distance -4, which used to become 0.
        let m = model(2, 2, vec![0.0; 4], vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, -1.0]);
        let values = [1.0, 0.0, 1.0, 2.0];
        let error = distances(&m, &[9], &values).unwrap_err();
        assert_eq!(error, ScoreError::BadDistance { model: "t".into(), image: 9, patch: 1 });
        assert!(error.to_string().contains("model `t`, image 9, patch 1"), "{error}");
        // A NaN in a precision matrix likewise.
        let m = model(2, 2, vec![0.0; 4], vec![1.0, 0.0, 0.0, 1.0, f32::NAN, 0.0, 0.0, 1.0]);
        assert!(matches!(distances(&m, &[9], &values), Err(ScoreError::BadDistance { patch: 1, .. })));
        // Rounding just below an exact zero stays a zero distance.
        let m = model(2, 2, vec![1.0, 2.0, 1.0, 2.0], vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]);
        assert_eq!(distances(&m, &[9], &[1.0, 1.0, 2.0, 2.0]).unwrap(), vec![0.0, 0.0]);
    }

    #[test]
    fn many_models_in_one_pass_equal_each_alone() {
        // Three models over channels of a 5-channel union, 70 patches (more than one patch block),
        // 3 images; precisions are symmetric positive definite (A A^T + I).
        let (u, n_patches, n) = (5, 70, 3);
        let value = |i: usize| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 4.0;
        let make = |channels: Vec<usize>, salt: usize| {
            let k = channels.len();
            let mean: Vec<f32> = (0..n_patches * k).map(|i| value(i + salt)).collect();
            let mut precision = vec![0f32; n_patches * k * k];
            for patch in 0..n_patches {
                let a: Vec<f32> = (0..k * k).map(|i| value(patch * 31 + i + salt * 3)).collect();
                for i in 0..k {
                    for j in 0..k {
                        let dot: f32 = (0..k).map(|t| a[i * k + t] * a[j * k + t]).sum();
                        precision[(patch * k + i) * k + j] = dot + if i == j { 1.0 } else { 0.0 };
                    }
                }
            }
            let mut m = model(k, n_patches, mean, precision);
            m.channels = channels;
            m
        };
        let models = [make(vec![0, 2, 3], 1), make(vec![0, 1, 2, 3, 4], 2), make(vec![4], 3)];
        let values: Vec<f32> = (0..n * u * n_patches).map(|i| value(i * 3 + 11)).collect();
        let ids = [4, 5, 6];
        let positions: Vec<&[usize]> = models.iter().map(|m| m.channels.as_slice()).collect();
        let with: Vec<(&Model, &[usize])> = models.iter().zip(positions).collect();
        let union: Vec<usize> = (0..u).collect();
        let many = distances_many(&with, &union, &ids, &values).unwrap();
        for (m, (maps, _)) in models.iter().zip(&many) {
            let mut own = Vec::new();
            for image in 0..n {
                for &c in &m.channels {
                    own.extend_from_slice(&values[(image * u + c) * n_patches..][..n_patches]);
                }
            }
            assert_eq!(maps, &distances(m, &ids, &own).unwrap());
        }
    }
}
