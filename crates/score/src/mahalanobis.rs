//! Mahalanobis distances of a batch of images to every patch's Gaussian, as batched linear algebra:
//! per patch, the deviations of all images form a matrix `D` (`n x k`) and the squared distances are
//! the row sums of `D .* (D P)` with `P` the patch's precision matrix: one GEMM per patch per batch.

use ndarray::{Array1, ArrayView2, ArrayViewMut2, Axis};
use padim_fit::model::Model;
use rayon::prelude::*;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScoreError {
    #[error("a batch of {n_images} images of {k} channels and {n_patches} patches needs {expected} values, got {got}")]
    Shape { n_images: usize, k: usize, n_patches: usize, expected: usize, got: usize },
    #[error("image {image}: embedding value at channel {channel}, patch {patch} is not finite")]
    NonFinite { image: u32, channel: usize, patch: usize },
}

/// Distances `[n_images, n_patches]` for `values` `[n_images, k, n_patches]` holding the model's
/// channels in the model's order. Computed in f64.
pub fn distances(model: &Model, image_ids: &[u32], values: &[f32]) -> Result<Vec<f32>, ScoreError> {
    let (n, k, n_patches) = (image_ids.len(), model.channels.len(), model.n_patches());
    let expected = n * k * n_patches;
    if values.len() != expected {
        return Err(ScoreError::Shape { n_images: n, k, n_patches, expected, got: values.len() });
    }
    if let Some(position) = values.iter().position(|v| !v.is_finite()) {
        return Err(ScoreError::NonFinite {
            image: image_ids[position / (k * n_patches)],
            channel: model.channels[(position / n_patches) % k],
            patch: position % n_patches,
        });
    }
    let mut deviations = padim_fit::stats::patch_major(values, n, k, n_patches);
    let per_patch: Vec<Vec<f64>> = deviations
        .par_chunks_mut(n * k)
        .enumerate()
        .map(|(patch, deviations)| {
            let mut deviations = ArrayViewMut2::from_shape((n, k), deviations).expect("n x k");
            let mean: Array1<f64> = model.mean[patch * k..(patch + 1) * k].iter().map(|&v| v as f64).collect();
            deviations -= &mean;
            let precision: Vec<f64> =
                model.precision[patch * k * k..(patch + 1) * k * k].iter().map(|&v| v as f64).collect();
            let precision = ArrayView2::from_shape((k, k), &precision).expect("k x k");
            let projected = deviations.dot(&precision);
            (&deviations * &projected).sum_axis(Axis(1)).iter().map(|d2| d2.max(0.0).sqrt()).collect()
        })
        .collect();
    let mut out = vec![0f32; n * n_patches];
    for (patch, column) in per_patch.iter().enumerate() {
        for (image, distance) in column.iter().enumerate() {
            out[image * n_patches + patch] = *distance as f32;
        }
    }
    Ok(out)
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
            },
            channels: (0..k).collect(),
            mean,
            precision,
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
}
