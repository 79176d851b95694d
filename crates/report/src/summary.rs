//! What the report found, as `report/metrics.json` holds it: per model and image score the
//! calibration and test metrics, the pixel metrics of the headline model, what was left out, and the
//! sweep's decision table.

use crate::metrics::Confusion;
use padim_core::config::{ScoreKind, ScoreRule, ThresholdRule};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Metrics of one image-score set (calibration or test).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SetMetrics {
    pub normal: usize,
    pub anomalous: usize,
    pub auroc: f64,
    pub aupr: f64,
    pub confusion: Confusion,
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub specificity: f64,
    pub f1: f64,
}

/// Results of one model with one image score.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ModelMetrics {
    pub model: String,
    pub score: ScoreKind,
    /// The calibration maps' minimum and maximum: scores are normalised as (s - min) / (max - min).
    pub normalisation: [f64; 2],
    pub threshold_rule: ThresholdRule,
    /// In normalised units.
    pub threshold: f64,
    pub calibration: SetMetrics,
    pub test: SetMetrics,
    /// The test accuracy and error rates at the threshold forecast from the calibration split
    /// alone (absent in reports written before forecasts).
    #[serde(default)]
    pub forecast: Option<crate::forecast::Forecast>,
}

/// One image score of one model on the calibration split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Candidate {
    pub score: ScoreKind,
    pub calibration_auroc: f64,
    /// Its calibration AUROC minus the mean score's.
    pub difference: f64,
    /// The 95% bootstrap interval of `difference`; `[0, 0]` for the mean itself.
    pub interval: [f64; 2],
}

/// The image score a model classifies with, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ScoreChoice {
    pub model: String,
    /// The job's `report.score`.
    pub rule: ScoreRule,
    pub chosen: ScoreKind,
    /// Every score that calibrates, the recipe's mean first.
    pub candidates: Vec<Candidate>,
    /// What the bootstrap of the intervals resampled.
    #[serde(default)]
    pub resampled: Resampled,
}

/// The units a bootstrap resampled, per class of the calibration split: its images, or with
/// `split.groups` its groups (views of one object count once).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Resampled {
    /// `images` or `groups`.
    pub unit: String,
    pub anomalous: usize,
    pub normal: usize,
}

/// Pixel-level metrics of the headline model on the images of one split that have masks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PixelMetrics {
    pub images: usize,
    /// Anomalous test images without a mask file: no pixel truth, so left out of these metrics.
    #[serde(default)]
    pub without_mask: usize,
    pub regions: usize,
    pub auroc: f64,
    /// Per-region overlap integrated to FPR 0.3, normalised.
    pub pro: f64,
}

/// Images left out of every metric: skipped by extract, per `split/label`, and each file with why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LeftOut {
    pub skipped: BTreeMap<String, u64>,
    pub skipped_files: Vec<SkippedFile>,
}

/// An image the extract stage skipped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SkippedFile {
    pub path: String,
    pub split: String,
    pub label: String,
    pub reason: String,
}

/// A model and score that the calibration split cannot calibrate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Unusable {
    pub model: String,
    pub score: String,
    pub reason: String,
}

/// Everything `metrics.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ReportSummary {
    pub job: String,
    pub config_hash: String,
    /// In a sweep over backbones: the headline's backbone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backbone: Option<String>,
    pub headline_model: String,
    pub headline_score: ScoreKind,
    pub display_range: [f64; 2],
    pub models: Vec<ModelMetrics>,
    /// Per model, the image score it classifies with and the calibration evidence for it.
    #[serde(default)]
    pub choices: Vec<ScoreChoice>,
    /// Model and score combinations (other than the headline) that cannot be calibrated, and why.
    pub unusable: Vec<Unusable>,
    pub pixel: Option<PixelMetrics>,
    /// The same on the calibration split (for choices made at pixel level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pixel_calibration: Option<PixelMetrics>,
    /// Images the metrics could not count: skipped as unreadable by the extract stage (`skip-bad`).
    #[serde(default)]
    pub left_out: LeftOut,
    /// The decision table of the job's `[sweep]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<crate::sweep::SweepSummary>,
    #[serde(skip, default)]
    pub already_done: bool,
}

impl ReportSummary {
    /// The headline model with the headline score.
    pub fn headline(&self) -> Option<&ModelMetrics> {
        self.models.iter().find(|m| m.model == self.headline_model && m.score == self.headline_score)
    }

    /// Each model's metrics with the image score it classifies with (see `choices`).
    pub fn chosen(&self) -> impl Iterator<Item = &ModelMetrics> {
        self.choices.iter().filter_map(|c| self.models.iter().find(|m| m.model == c.model && m.score == c.chosen))
    }

    /// `model`'s metrics with the image score it classifies with.
    pub fn chosen_of(&self, model: &str) -> Option<&ModelMetrics> {
        self.chosen().find(|m| m.model == model)
    }
}
