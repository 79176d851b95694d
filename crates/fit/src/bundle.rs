//! The deployable model bundle: one safetensors file that classifies new images on its own.
//!
//! Tensors as in a model file (`channels` I64 `[k]`, `mean` `[n_patches, k]`, `precision`
//! `[n_patches, k, k]`, F32), or with f16 matrices `mean` and `precision-factor`: each patch's lower
//! Cholesky factor `L` of the precision (`P = L Lᵀ`). Rounding a precision matrix to f16 can make it
//! indefinite (negative squared distances on ill-conditioned patches); rounding its factor cannot,
//! since `L Lᵀ` is positive semi-definite whatever `L` is. A nearest-patch model stores `channels` and
//! its `bank` (`[n_patches, n_train, k]`, F32 or F16) instead. And one metadata entry `padim-bundle` holding the
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
    /// Half the size (the precision stored as its Cholesky factor); scores move by what the
    /// measurement in docs/stages.md ("predict") says.
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
    /// The image score that classifies: the smoothed map's mean, max or top-fraction mean.
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
    /// How the embeddings the model was fitted and calibrated on were stored: `predict` rounds its
    /// embeddings the same way, so that it gives the report's scores (bundles before format 3: f32).
    #[serde(default = "f32_values")]
    pub embedding_values: padim_core::config::ValueType,
}

fn f32_values() -> padim_core::config::ValueType {
    padim_core::config::ValueType::F32
}

impl BundleInfo {
    /// 2: f16 bundles store the precision's Cholesky factor (`precision-factor`); version 1's f16
    /// `precision` is still read. 3: `embedding-values`. 4: a model on a coarser grid
    /// (`ModelInfo::grid_factor`).
    pub const FORMAT_VERSION: u32 = 4;

    /// The format version a bundle of `model` is written with: 4 for a model on a coarser grid
    /// (which an older padim cannot score), else 3.
    pub fn format_for(model: &ModelInfo) -> u32 {
        if model.grid_factor == 1 { 3 } else { 4 }
    }
}

/// The tensor of an f16 bundle's precision factors.
const FACTOR: &str = "precision-factor";

/// Per patch, the lower Cholesky factor of the `[k, k]` precision matrix (row-major, zeros above
/// the diagonal), computed in f64.
fn cholesky_factors(precision: &[f32], k: usize) -> Result<Vec<f32>, ModelError> {
    use ndarray_linalg::{Cholesky, UPLO};
    let mut out = Vec::with_capacity(precision.len());
    for (patch, matrix) in precision.chunks_exact((k * k).max(1)).enumerate() {
        let p = ndarray::Array2::from_shape_fn((k, k), |(i, j)| matrix[i * k + j] as f64);
        let lower = p.cholesky(UPLO::Lower).map_err(|e| {
            format(format!("the precision matrix of patch {patch} is not positive definite ({e}); refit the model"))
        })?;
        out.extend(lower.iter().map(|&v| v as f32));
    }
    Ok(out)
}

/// `L Lᵀ` per patch, accumulated in f64: the precision matrices of stored factors.
fn from_factors(factors: &[f32], k: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(factors.len());
    for lower in factors.chunks_exact((k * k).max(1)) {
        for i in 0..k {
            for j in 0..k {
                // L is lower triangular: the sum runs to min(i, j).
                let sum: f64 = (0..=i.min(j)).map(|t| lower[i * k + t] as f64 * lower[j * k + t] as f64).sum();
                out.push(sum as f32);
            }
        }
    }
    out
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
    model.validate().map_err(|problem| format(problem.to_string()))?;
    encode_unchecked(model, info)
}

/// [`encode_bundle`] without validating the model first (tests make bad files with it).
fn encode_unchecked(model: &Model, info: &BundleInfo) -> Result<Vec<u8>, ModelError> {
    let (p, k) = (model.n_patches(), model.channels.len());
    let (precision_name, stored) = match (info.matrices, model.is_nearest()) {
        // A nearest-patch model's bank, as it is (f16 rounds its values).
        (_, true) => ("bank", model.bank.clone()),
        (MatrixType::F32, false) => ("precision", model.precision.clone()),
        (MatrixType::F16, false) => (FACTOR, cholesky_factors(&model.precision, k)?),
    };
    if info.matrices == MatrixType::F16 {
        // Finite (validated above), so the largest magnitude is a number.
        let largest = model.mean.iter().chain(&stored).fold(0f32, |m, v| m.max(v.abs()));
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
    let (precision_type, precision) = floats(&stored);
    let tensors = match model.is_nearest() {
        true => vec![
            ("channels", Dtype::I64, vec![k], channels),
            (precision_name, precision_type, vec![p, model.n_bank(), k], precision),
        ],
        false => vec![
            ("channels", Dtype::I64, vec![k], channels),
            ("mean", mean_type, vec![p, k], mean),
            (precision_name, precision_type, vec![p, k, k], precision),
        ],
    };
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
    let model = if info.model.covariance.is_nearest() {
        let t = file.tensor("bank").map_err(|e| format(format!("`bank`: {e}")))?.shape().get(1).copied().unwrap_or(0);
        let bank = tensor("bank", &[p, t, k])?;
        Model { info: info.model.clone(), channels, mean: Vec::new(), precision: Vec::new(), bank }
    } else {
        let mean = tensor("mean", &[p, k])?;
        let precision = match file.tensor(FACTOR) {
            Ok(_) => from_factors(&tensor(FACTOR, &[p, k, k])?, k),
            Err(_) => tensor("precision", &[p, k, k])?,
        };
        Model { info: info.model.clone(), channels, mean, precision, bank: Vec::new() }
    };
    model.validate().map_err(|problem| format(problem.to_string()))?;
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
            covariance: Default::default(),
            pool: Default::default(),
            grid_factor: 1,
        };
        let model = Model {
            info: info.clone(),
            channels: vec![0, 2],
            mean: (0..8).map(|i| i as f32 * 0.37 - 1.0).collect(),
            // Symmetric positive definite 2x2 precisions, one per patch.
            precision: (0..4).flat_map(|q| [1.0 + q as f32 * 0.3, 0.2, 0.2, 0.8 + q as f32 * 0.1]).collect(),
            bank: Vec::new(),
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
            embedding_values: padim_core::config::ValueType::F16,
        };
        (model, bundle)
    }

    #[test]
    fn a_nearest_patch_bundle_round_trips_its_bank() {
        let (mut model, mut info) = bundle(MatrixType::F32);
        info.model.covariance = padim_core::config::CovarianceEstimator::Nearest;
        model.info = info.model.clone();
        model.mean.clear();
        model.precision.clear();
        // 4 patches x 3 training images x 2 channels.
        model.bank = (0..24).map(|i| i as f32 * 0.25 - 2.0).collect();
        let back = decode_bundle(&encode_bundle(&model, &info).unwrap()).unwrap();
        assert_eq!((back.info, back.model.clone()), (info.clone(), model.clone()));
        assert_eq!(back.model.n_bank(), 3);
        info.matrices = MatrixType::F16;
        let back = decode_bundle(&encode_bundle(&model, &info).unwrap()).unwrap();
        assert_eq!(back.model.bank, model.bank, "quarters are exact in f16");
        model.bank.pop();
        assert!(encode_bundle(&model, &info).is_err(), "a bank of the wrong size is refused");
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
        for (a, b) in model.mean.iter().zip(&back.model.mean) {
            assert!((a - b).abs() <= a.abs() * 1e-3, "mean {a} vs {b}");
        }
        for (a, b) in model.precision.iter().zip(&back.model.precision) {
            assert!((a - b).abs() <= 2e-3, "precision {a} vs {b} (entries of about 1)");
        }
        assert!(bytes.len() < encode_bundle(&model, &bundle(MatrixType::F32).1).unwrap().len());
    }

    #[test]
    fn f16_keeps_an_ill_conditioned_precision_positive_definite() {
        // Eigenvalues about 5000 and 0.2: rounding the matrix to f16 (3750, 2166, 1250) makes it
        // indefinite; rounding its Cholesky factor cannot.
        let (mut model, info) = bundle(MatrixType::F16);
        model.precision = [3750.125f32, 2165.2, 2165.2, 1250.375].repeat(4);
        let det = |m: &[f32]| m[0] as f64 * m[3] as f64 - m[1] as f64 * m[2] as f64;
        assert!(det(&model.precision) > 0.0);
        let rounded: Vec<f32> = model.precision.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        assert!(det(&rounded) < 0.0, "the old f16 bundle's matrix would be indefinite");
        let back = decode_bundle(&encode_bundle(&model, &info).unwrap()).unwrap();
        for patch in back.model.precision.chunks_exact(4) {
            assert!(det(patch) > 0.0 && patch[0] > 0.0, "{patch:?}");
            for (a, b) in patch.iter().zip(&model.precision) {
                assert!((a - b).abs() <= b.abs() * 2e-3, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn newer_format_and_plain_models_are_clear_errors() {
        let (model, mut info) = bundle(MatrixType::F32);
        info.format_version = BundleInfo::FORMAT_VERSION + 1;
        let message = decode_bundle(&encode_bundle(&model, &info).unwrap()).unwrap_err().to_string();
        assert!(message.contains("newer than this padim"), "{message}");
        let gaussians = crate::stats::Gaussians {
            channels: padim_core::channels::ChannelSubset::all(1),
            n_patches: 1,
            count: 2,
            epsilon: 0.0,
            mean: vec![0.0],
            precision: vec![1.0],
            shrinkage: None,
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
        model.mean[0] = 70_000.0;
        let message = encode_bundle(&model, &info).unwrap_err().to_string();
        assert!(message.contains("does not fit in f16") && message.contains("bundle-f16 = false"), "{message}");
    }
}
