//! The deployable model bundle: one safetensors file that classifies new images on its own.
//!
//! Tensors as in a model file (`channels` I64 `[k]`, `mean` `[n_patches, k]`, `precision`
//! `[n_patches, k, k]`, F32 or, optionally, F16), and one metadata entry `padim-bundle` holding the
//! JSON of [`BundleInfo`]: the model's provenance (backbone, weights SHA-256, taps, grid), the
//! pre-processing, the map smoothing, the image score and its calibration (normalisation, threshold
//! and the rule that chose it) and the heatmap display range. One file rather than safetensors plus
//! a JSON beside it: nothing to keep together, and the metadata cannot drift from the matrices; the
//! JSON stays readable with any safetensors reader (`safe_open(f).metadata()`).

use crate::model::{Model, ModelError, ModelInfo};
use padim_core::config::{Preprocess, ScoreKind, ScoreSettings, ThresholdRule};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The metadata key of the bundle's JSON.
pub const BUNDLE_KEY: &str = "padim-bundle";

/// Storage type of the bundle's matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MatrixType {
    F32,
    /// Half the size; scores move by what the measurement in the README says.
    F16,
}

/// Everything besides the matrices that classifying an image needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BundleInfo {
    pub format_version: u32,
    pub job: String,
    pub model: ModelInfo,
    /// Where the job read the backbone weights (a hint; the SHA-256 in `model` decides).
    pub weights_location: String,
    pub preprocess: Preprocess,
    pub score_settings: ScoreSettings,
    /// The image score that classifies: the smoothed map's mean or max.
    pub score: ScoreKind,
    /// Raw scores are normalised as (s - lo) / (hi - lo), from the calibration split's maps.
    pub normalisation: [f64; 2],
    pub threshold_rule: ThresholdRule,
    pub target_rate: f64,
    /// On the normalised score: at or above is anomalous.
    pub threshold: f64,
    /// Heatmaps are drawn over this range of raw map values.
    pub display_range: [f64; 2],
    pub matrices: MatrixType,
}

impl BundleInfo {
    pub const FORMAT_VERSION: u32 = 1;
}

/// A bundle read back, with its matrices widened to f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    pub info: BundleInfo,
    pub model: Model,
}

impl Bundle {
    /// The normalised score of a raw image score.
    pub fn normalise(&self, raw: f64) -> f64 {
        let [lo, hi] = self.info.normalisation;
        (raw - lo) / (hi - lo)
    }
}

fn format(message: impl Into<String>) -> ModelError {
    ModelError::Format { kind: "bundle", message: message.into() }
}

/// Encodes `model` (its matrices, optionally as f16) with `info`.
pub fn encode_bundle(model: &Model, info: &BundleInfo) -> Result<Vec<u8>, ModelError> {
    model.validate().map_err(format)?;
    encode_unchecked(model, info)
}

/// [`encode_bundle`] without validating the model first (tests make bad files with it).
fn encode_unchecked(model: &Model, info: &BundleInfo) -> Result<Vec<u8>, ModelError> {
    let (p, k) = (model.n_patches(), model.channels.len());
    if info.matrices == MatrixType::F16 {
        // Finite (validated above), so the largest magnitude is a number.
        let largest = model.mean.iter().chain(&model.precision).fold(0f32, |m, v| m.max(v.abs()));
        if largest > f32::from(half::f16::MAX) {
            return Err(format(format!(
                "the model's largest value ({largest:e}) does not fit in f16 (at most 65504): set \
                 `report.bundle-f16 = false` for an f32 bundle"
            )));
        }
    }
    let json = serde_json::to_string(info).map_err(|e| format(e.to_string()))?;
    let floats = |values: &[f32]| -> (Dtype, Vec<u8>) {
        match info.matrices {
            MatrixType::F32 => (Dtype::F32, values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            MatrixType::F16 => {
                (Dtype::F16, values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect())
            }
        }
    };
    let channels: Vec<u8> = model.channels.iter().flat_map(|&c| (c as i64).to_le_bytes()).collect();
    let (mean_type, mean) = floats(&model.mean);
    let (precision_type, precision) = floats(&model.precision);
    let tensors = [
        ("channels", Dtype::I64, vec![k], channels),
        ("mean", mean_type, vec![p, k], mean),
        ("precision", precision_type, vec![p, k, k], precision),
    ];
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            Ok((*name, TensorView::new(*dtype, shape.clone(), data).map_err(|e| format(e.to_string()))?))
        })
        .collect::<Result<_, ModelError>>()?;
    let metadata = HashMap::from([(BUNDLE_KEY.to_string(), json)]);
    safetensors::tensor::serialize(views, Some(metadata)).map_err(|e| format(e.to_string()))
}

/// Decodes a bundle; one of a newer format version is an error that says so.
pub fn decode_bundle(bytes: &[u8]) -> Result<Bundle, ModelError> {
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| format(e.to_string()))?;
    let json = header.metadata().as_ref().and_then(|m| m.get(BUNDLE_KEY).cloned()).ok_or_else(|| {
        format(format!("no `{BUNDLE_KEY}` metadata (a model file is not a bundle; `padim run` writes one)"))
    })?;
    let version: serde_json::Value = serde_json::from_str(&json).map_err(|e| format(format!("bad metadata: {e}")))?;
    let found = version.get("format-version").and_then(serde_json::Value::as_u64).unwrap_or(0);
    if found > BundleInfo::FORMAT_VERSION as u64 {
        return Err(format(format!(
            "format version {found} is newer than this padim's ({}); use a newer padim",
            BundleInfo::FORMAT_VERSION
        )));
    }
    let info: BundleInfo = serde_json::from_str(&json).map_err(|e| format(format!("bad metadata: {e}")))?;
    let file = SafeTensors::deserialize(bytes).map_err(|e| format(e.to_string()))?;
    let (p, k) = (info.model.grid_height * info.model.grid_width, {
        file.tensor("channels").map_err(|e| format(e.to_string()))?.shape().first().copied().unwrap_or(0)
    });
    let tensor = |name: &str, shape: &[usize]| -> Result<Vec<f32>, ModelError> {
        let view = file.tensor(name).map_err(|e| format(format!("`{name}`: {e}")))?;
        if view.shape() != shape {
            return Err(format(format!("`{name}` has shape {:?}, expected {shape:?}", view.shape())));
        }
        match view.dtype() {
            Dtype::F32 => {
                Ok(view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
            }
            Dtype::F16 => {
                Ok(view.data().chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect())
            }
            other => Err(format(format!("`{name}` is {other:?}, expected F32 or F16"))),
        }
    };
    let channels_view = file.tensor("channels").map_err(|e| format(e.to_string()))?;
    if channels_view.dtype() != Dtype::I64 {
        return Err(format("`channels` is not I64"));
    }
    let channels = channels_view
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
        .collect();
    let mean = tensor("mean", &[p, k])?;
    let precision = tensor("precision", &[p, k, k])?;
    let model = Model { info: info.model.clone(), channels, mean, precision };
    model.validate().map_err(format)?;
    Ok(Bundle { info, model })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(matrices: MatrixType) -> (Model, BundleInfo) {
        let info = ModelInfo {
            format_version: ModelInfo::FORMAT_VERSION,
            subset: "all".into(),
            backbone: "efficientnet-lite0".into(),
            weights_sha256: "ab".repeat(32),
            tap: "block-output".into(),
            layers: vec!["a".into()],
            input_height: 8,
            input_width: 8,
            grid_height: 2,
            grid_width: 2,
            embedding_channels: 3,
            epsilon: 0.01,
            n_train_images: 5,
            config_hash: "cd".repeat(32),
        };
        let model = Model {
            info: info.clone(),
            channels: vec![0, 2],
            mean: (0..8).map(|i| i as f32 * 0.37 - 1.0).collect(),
            precision: (0..16).map(|i| 1.0 / (i as f32 + 1.3)).collect(),
        };
        let bundle = BundleInfo {
            format_version: BundleInfo::FORMAT_VERSION,
            job: "job".into(),
            model: info,
            weights_location: "s3://b/w.safetensors".into(),
            preprocess: Preprocess::default(),
            score_settings: ScoreSettings::default(),
            score: ScoreKind::Mean,
            normalisation: [10.0, 30.0],
            threshold_rule: ThresholdRule::Youden,
            target_rate: 0.05,
            threshold: 0.4,
            display_range: [0.0, 25.0],
            matrices,
        };
        (model, bundle)
    }

    #[test]
    fn round_trip_in_f32_and_f16() {
        let (model, info) = bundle(MatrixType::F32);
        let back = decode_bundle(&encode_bundle(&model, &info).unwrap()).unwrap();
        assert_eq!((back.info, back.model), (info, model.clone()));
        let normalised = Bundle { info: bundle(MatrixType::F32).1, model: model.clone() }.normalise(25.0);
        assert!((normalised - 0.75).abs() < 1e-12);

        let (model, info) = bundle(MatrixType::F16);
        let bytes = encode_bundle(&model, &info).unwrap();
        let back = decode_bundle(&bytes).unwrap();
        for (a, b) in model.precision.iter().chain(&model.mean).zip(back.model.precision.iter().chain(&back.model.mean))
        {
            assert!((a - b).abs() <= a.abs() * 1e-3, "{a} vs {b}");
        }
        assert!(bytes.len() < encode_bundle(&model, &bundle(MatrixType::F32).1).unwrap().len());
    }

    #[test]
    fn newer_format_and_plain_models_are_clear_errors() {
        let (model, mut info) = bundle(MatrixType::F32);
        info.format_version = BundleInfo::FORMAT_VERSION + 1;
        let message = decode_bundle(&encode_bundle(&model, &info).unwrap()).unwrap_err().to_string();
        assert!(message.contains("newer than this padim"), "{message}");
        let gaussians = crate::stats::Gaussians {
            channels: crate::subset::ChannelSubset::all(1),
            n_patches: 1,
            count: 2,
            epsilon: 0.0,
            mean: vec![0.0],
            precision: vec![1.0],
        };
        let plain = crate::model::encode_model(&gaussians, &model.info).unwrap();
        let message = decode_bundle(&plain).unwrap_err().to_string();
        assert!(message.contains("not a bundle"), "{message}");
    }

    #[test]
    fn bad_indices_non_finite_values_and_f16_overflow_are_refused() {
        // Files made elsewhere are checked when loaded (a bad index used to panic predict) ...
        let (mut model, info) = bundle(MatrixType::F32);
        model.channels = vec![0, 3]; // the embedding has 3 channels
        let message = decode_bundle(&encode_unchecked(&model, &info).unwrap()).unwrap_err().to_string();
        assert!(message.contains("channel index 3 is outside"), "{message}");
        let (mut model, info) = bundle(MatrixType::F32);
        model.precision[5] = f32::NAN;
        let message = decode_bundle(&encode_unchecked(&model, &info).unwrap()).unwrap_err().to_string();
        assert!(message.contains("patch 1") && message.contains("not finite"), "{message}");
        let (mut model, info) = bundle(MatrixType::F32);
        model.channels = vec![2, 2];
        let message = decode_bundle(&encode_unchecked(&model, &info).unwrap()).unwrap_err().to_string();
        assert!(message.contains("channel 2 is listed twice"), "{message}");
        // ... and never written.
        assert!(encode_bundle(&model, &info).is_err());
        let (mut model, info) = bundle(MatrixType::F16);
        model.precision[0] = 70_000.0;
        let message = encode_bundle(&model, &info).unwrap_err().to_string();
        assert!(message.contains("does not fit in f16") && message.contains("bundle-f16 = false"), "{message}");
    }
}
