//! Scoring with fitted PaDiM models (Defard et al. 2020, section 3.3): the Mahalanobis distance of
//! every patch embedding to its patch's Gaussian gives an anomaly map on the feature grid; the map
//! is resized bilinearly to the input size and smoothed with a Gaussian (sigma 4, 33x33 kernel, as
//! MATLAB's example, with its replicate padding); the image score is the map's mean (the example's
//! choice), with its max and min recorded too.
//!
//! The numerics here do no IO.

pub mod kernel;
pub mod mahalanobis;
pub mod maps;
pub mod nearest;
pub mod scorer;
pub mod stage;

pub use mahalanobis::{Gaussian, ScoreError, distances, distances_many};
pub use maps::{MapFilter, MapStats, gaussian_kernel, resize_bilinear, smooth_gaussian};
pub use scorer::Scorer;
pub use stage::{ScoreOptions, ScoreStageError, ScoreSummary, run_score};
