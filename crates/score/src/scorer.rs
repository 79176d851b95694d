//! A fitted model ready to score: a Gaussian (its precision factorised, see [`crate::mahalanobis`])
//! or a nearest-patch bank ([`crate::nearest`]).

use crate::ScoreError;
use crate::mahalanobis::Gaussian;
use padim_core::config::ComputePrecision;
use padim_fit::model::Model;
use std::time::Duration;

#[derive(Debug, Clone)]
pub enum Scorer {
    Gaussian(Gaussian),
    Nearest(Model),
}

impl Scorer {
    /// Prepares `model` to score in `precision` (a nearest-patch model is used as it is).
    pub fn new(model: Model, precision: ComputePrecision) -> Result<Scorer, ScoreError> {
        if model.is_nearest() {
            Ok(Scorer::Nearest(model))
        } else {
            Gaussian::new(&model, precision).map(Scorer::Gaussian)
        }
    }

    /// [`Scorer::new`] for a model decoded by [`padim_fit::model::decode_model_parts`] with its
    /// precision's bytes.
    pub fn from_parts(model: Model, precision_bytes: &[u8], precision: ComputePrecision) -> Result<Scorer, ScoreError> {
        if model.is_nearest() {
            Ok(Scorer::Nearest(model))
        } else {
            Gaussian::from_le_bytes(&model, precision_bytes, precision).map(Scorer::Gaussian)
        }
    }

    /// The model's channels, in its order.
    pub fn channels(&self) -> &[usize] {
        match self {
            Scorer::Gaussian(g) => &g.channels,
            Scorer::Nearest(m) => &m.channels,
        }
    }

    /// Distances `[n_images, n_patches]` for `values` `[n_images, k, n_patches]` holding the
    /// model's channels in its order, and the CPU time they took.
    pub fn distances(&self, image_ids: &[u32], values: &[f32]) -> Result<(Vec<f32>, Duration), ScoreError> {
        let positions: Vec<usize> = (0..self.channels().len()).collect();
        self.distances_of(&positions, self.channels(), image_ids, values)
    }

    /// Distances for `values` `[n_images, channels.len(), n_patches]` of `channels`, the model's
    /// channels being at `positions` of them.
    pub fn distances_of(
        &self,
        positions: &[usize],
        channels: &[usize],
        image_ids: &[u32],
        values: &[f32],
    ) -> Result<(Vec<f32>, Duration), ScoreError> {
        match self {
            Scorer::Gaussian(g) => {
                let mut maps = crate::mahalanobis::distances_many(&[(g, positions)], channels, image_ids, values)?;
                Ok(maps.pop().unwrap_or_default())
            }
            Scorer::Nearest(m) => crate::nearest::model_nearest_distances(m, positions, channels, image_ids, values),
        }
    }
}
