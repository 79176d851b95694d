//! Distances of a batch of images to a nearest-training-patch bank (`padim_fit::nearest`): each
//! image's embedding is averaged over 3x3 grid neighbourhoods as the bank's was, and a patch's
//! distance is the Euclidean distance to the nearest of the bank's training patches at its position.
//! Per patch, `|q|^2 - 2 q.b + |b|^2` over all (image, training image) pairs is one GEMM.

use crate::ScoreError;
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};
use padim_fit::model::Model;
use padim_fit::nearest::mean_3x3;
use rayon::prelude::*;
use std::time::{Duration, Instant};

/// [`nearest_distances`] for a nearest-patch model, with the CPU time spent (summed over threads).
pub fn model_nearest_distances(
    model: &Model,
    positions: &[usize],
    channels: &[usize],
    image_ids: &[u32],
    values: &[f32],
) -> Result<(Vec<f32>, Duration), ScoreError> {
    assert!(model.is_nearest(), "a nearest-patch model");
    let grid = (model.info.grid_height, model.info.grid_width);
    nearest_distances(&model.bank, model.n_bank(), positions, grid, image_ids, values).map_err(|e| match e {
        ScoreError::NonFinite { image, channel, patch } => {
            ScoreError::NonFinite { image, channel: channels.get(channel).copied().unwrap_or(channel), patch }
        }
        other => other,
    })
}

/// Distances `[n_images, n_patches]` for `values` `[n_images, u, n_patches]` (C order, patch = y *
/// width + x) to `bank` (`[n_patches][t][k]`, as `Bank::patch_major` lays it out), whose `k` channels
/// are at `positions` within the `u` channels of `values` (an error's channel is such a position),
/// with the CPU time spent (summed over threads). Computed in f64.
pub fn nearest_distances(
    bank: &[f32],
    t: usize,
    positions: &[usize],
    (height, width): (usize, usize),
    image_ids: &[u32],
    values: &[f32],
) -> Result<(Vec<f32>, Duration), ScoreError> {
    let (n, k, n_patches) = (image_ids.len(), positions.len(), height * width);
    let u = values.len().checked_div(n * n_patches).unwrap_or(0);
    let expected = n * u * n_patches;
    if values.len() != expected || n == 0 || u == 0 {
        return Err(ScoreError::Shape { n_images: n, k: u, n_patches, expected, got: values.len() });
    }
    if let Some(position) = values.iter().position(|v| !v.is_finite()) {
        return Err(ScoreError::NonFinite {
            image: image_ids[position / (u * n_patches)],
            channel: (position / n_patches) % u,
            patch: position % n_patches,
        });
    }
    assert!(t > 0 && bank.len() == n_patches * t * k, "bank shape");
    assert!(positions.iter().all(|&p| p < u), "positions within the channels");
    let clock = Instant::now();
    let averaged = mean_3x3(values, height, width);
    let mut spent = clock.elapsed();
    let per_patch: Vec<(Vec<f32>, Duration)> = (0..n_patches)
        .into_par_iter()
        .map_init(
            || (vec![0f64; n * k], vec![0f64; t * k], vec![0f64; n * t]),
            |(query, train, dot), patch| {
                let clock = Instant::now();
                for image in 0..n {
                    for (c, &p) in positions.iter().enumerate() {
                        query[image * k + c] = averaged[(image * u + p) * n_patches + patch] as f64;
                    }
                }
                for (slot, &value) in train.iter_mut().zip(&bank[patch * t * k..(patch + 1) * t * k]) {
                    *slot = value as f64;
                }
                let q = ArrayView2::from_shape((n, k), &query[..]).expect("n x k");
                let b = ArrayView2::from_shape((t, k), &train[..]).expect("t x k");
                let mut g = ArrayViewMut2::from_shape((n, t), &mut dot[..]).expect("n x t");
                general_mat_mul(1.0, &q, &b.t(), 0.0, &mut g);
                let norms = |rows: &[f64]| -> Vec<f64> {
                    rows.chunks_exact(k.max(1)).map(|r| r.iter().map(|v| v * v).sum()).collect()
                };
                let (q_norms, b_norms) = (norms(query), norms(train));
                let distances = (0..n)
                    .map(|image| {
                        let nearest = dot[image * t..(image + 1) * t]
                            .iter()
                            .zip(&b_norms)
                            .map(|(g, b)| q_norms[image] - 2.0 * g + b)
                            .fold(f64::INFINITY, f64::min);
                        // Rounding can take an exact zero slightly below it.
                        nearest.max(0.0).sqrt() as f32
                    })
                    .collect();
                (distances, clock.elapsed())
            },
        )
        .collect();
    let mut maps = vec![0f32; n * n_patches];
    for (patch, (distances, time)) in per_patch.into_iter().enumerate() {
        spent += time;
        for (image, distance) in distances.into_iter().enumerate() {
            maps[image * n_patches + patch] = distance;
        }
    }
    Ok((maps, spent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use padim_core::channels::ChannelSubset;
    use padim_fit::nearest::Bank;
    use proptest::prelude::*;

    proptest! {
        /// Against the definition, computed directly: the 3x3 means of the image, and per patch the
        /// smallest Euclidean distance to any training image's 3x3 mean there.
        #[test]
        fn equals_the_smallest_direct_distance(
            (height, width) in (1usize..5, 1usize..5),
            (t, n) in (1usize..6, 1usize..4),
            seed in any::<u64>(),
        ) {
            let (u, n_patches) = (4, height * width);
            let channels = ChannelSubset::explicit(vec![0, 2, 3], u).unwrap();
            let mut state = seed | 1;
            let mut next = || { state ^= state << 13; state ^= state >> 7; state ^= state << 17; (state % 2000) as f32 / 100.0 - 10.0 };
            let train: Vec<f32> = (0..t * u * n_patches).map(|_| next()).collect();
            let mut values: Vec<f32> = (0..n * u * n_patches).map(|_| next()).collect();
            // The last image is a training image: its distances are zero.
            values[(n - 1) * u * n_patches..].copy_from_slice(&train[..u * n_patches]);
            let kept: Vec<f32> = (0..t)
                .flat_map(|i| channels.channels().iter().flat_map(move |&c| (0..n_patches).map(move |p| (i, c, p))))
                .map(|(i, c, p)| train[(i * u + c) * n_patches + p])
                .collect();
            let mut bank = Bank::new(height, width, channels.clone());
            bank.update(&(0..t as u32).collect::<Vec<_>>(), &kept).unwrap();
            let laid = bank.patch_major(&channels).unwrap();
            let ids: Vec<u32> = (100..100 + n as u32).collect();
            let (maps, _) = nearest_distances(&laid, t, &[0, 2, 3], (height, width), &ids, &values).unwrap();

            let query = mean_3x3(&values, height, width);
            let reference = mean_3x3(&train, height, width);
            for image in 0..n {
                for patch in 0..n_patches {
                    let direct = (0..t)
                        .map(|i| {
                            channels.channels().iter().map(|&c| {
                                let a = query[(image * u + c) * n_patches + patch] as f64;
                                let b = reference[(i * u + c) * n_patches + patch] as f64;
                                (a - b) * (a - b)
                            }).sum::<f64>().sqrt()
                        })
                        .fold(f64::INFINITY, f64::min);
                    let got = maps[image * n_patches + patch] as f64;
                    prop_assert!((got - direct).abs() <= 1e-4 * (1.0 + direct), "{got} vs {direct}");
                }
            }
            prop_assert!(maps[(n - 1) * n_patches..].iter().all(|&d| d < 1e-3));
        }
    }

    #[test]
    fn bad_values_are_errors_naming_the_image() {
        let mut bank = Bank::new(1, 2, ChannelSubset::all(1));
        bank.update(&[0], &[1.0, 2.0]).unwrap();
        let laid = bank.patch_major(&ChannelSubset::all(1)).unwrap();
        let error = nearest_distances(&laid, 1, &[0], (1, 2), &[7, 8], &[1.0, 2.0, 3.0, f32::NAN]).unwrap_err();
        assert_eq!(error, ScoreError::NonFinite { image: 8, channel: 0, patch: 1 });
        assert!(matches!(
            nearest_distances(&laid, 1, &[0], (1, 2), &[7, 8], &[1.0, 2.0, 3.0]),
            Err(ScoreError::Shape { .. })
        ));
        // Closed form: a 1x2 grid averages both cells, (1 + 2) / 2 = 1.5 in the bank; the image's
        // cells (3, 5) average 4: distance 2.5 at both patches.
        assert_eq!(nearest_distances(&laid, 1, &[0], (1, 2), &[7], &[3.0, 5.0]).unwrap().0, vec![2.5, 2.5]);
    }
}
