//! `padim predict`: a calibrated bundle (see `padim_fit::bundle`) scores new images.
//!
//! Per image: the same pre-processing, backbone, Mahalanobis map, resizing and smoothing as the
//! extract and score stages, the bundle's image score (mean or max of the smoothed map), its
//! normalisation and threshold, and optionally the heatmap overlay on the network's view. Images go
//! through the network in batches; a bad image is reported on its own row and does not stop the
//! others.

mod inputs;
mod output;
mod run;

pub use inputs::expand_inputs;
pub use output::{OutputFormat, Row, write_rows};
pub use run::{PredictOptions, PredictSummary, run_predict};

use padim_core::config::{BackboneKind, DeviceChoice, ScoreKind, Tap};
use padim_extract::{Backbone, Preprocessor};
use padim_fit::bundle::{Bundle, decode_bundle};
use padim_score::{MapFilter, MapStats, Scorer};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use tch::Tensor;

#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error("{path}: {message}")]
    Bundle { path: String, message: String },
    #[error(
        "weights file {path} has SHA-256 {actual}, but the bundle was made with weights {expected}; \
         pass the same weights file with --weights"
    )]
    WrongWeights { path: String, actual: String, expected: String },
    #[error(transparent)]
    Weights(#[from] padim_extract::WeightsError),
    #[error(transparent)]
    Store(#[from] padim_store::StoreError),
    #[error(transparent)]
    Device(#[from] padim_extract::DeviceError),
    #[error("{path}: {message}")]
    Image { path: PathBuf, message: String },
    /// An image that could not be read (one row of the table; the batch goes on).
    #[error("{path}: cannot read: {message}")]
    Read { path: PathBuf, message: String },
    #[error("cannot write {what}")]
    Png { what: String, source: padim_image::heatmap::PngError },
    /// An image that cannot be decoded or pre-processed; the error names the file itself.
    #[error(transparent)]
    Prepare(#[from] padim_image::ImageError),
    #[error("{0}")]
    Input(String),
    #[error("cannot list {path}")]
    List { path: PathBuf, source: padim_core::dataset::FilesError },
    #[error("cannot write {what}: {message}")]
    Output { what: String, message: String },
    #[error("loading the bundle {path}")]
    Load {
        path: String,
        #[source]
        source: Box<PredictError>,
    },
    /// The first image that could not be scored, with `--fail-fast`.
    #[error("scoring stopped (--fail-fast)")]
    Stopped(#[source] Box<PredictError>),
    /// Writing an overlay or the table.
    #[error(transparent)]
    Publish(padim_store::StoreError),
}

impl PredictError {
    /// For writing the outputs: whether a rerun later may succeed (a storage failure), see
    /// [`padim_store::StoreError::is_transient`]; `None` for the rest, which the binary treats as
    /// unexpected unless an error underneath says otherwise.
    pub fn is_transient(&self) -> Option<bool> {
        match self {
            PredictError::Publish(e) | PredictError::Store(e) => Some(e.is_transient()),
            PredictError::Stopped(e) => e.is_transient(),
            _ => None,
        }
    }
}

/// What `predict` says of one image.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// The normalised image score (the bundle's score kind).
    pub score: f64,
    /// The raw image score: the smoothed map's mean or max.
    pub raw_score: f64,
    pub anomalous: bool,
    /// The network's view (RGB8, the crop size) and the smoothed map over it, when asked for.
    pub heatmap: Option<(Vec<u8>, Vec<f32>)>,
}

/// A loaded bundle and its backbone, ready to score batches of images.
pub struct Predictor {
    pub bundle: Bundle,
    net: Backbone,
    preprocessor: Preprocessor,
    filter: MapFilter,
    /// The bundle's model, prepared to score as the score stage did (its precision).
    scorer: Scorer,
}

impl Predictor {
    /// Loads the bundle at `bundle_location` and the backbone weights at `weights` (else where the
    /// job read them), which must be the ones the bundle was made with.
    pub fn load(
        bundle_location: &Path,
        weights: Option<&Path>,
        device: DeviceChoice,
        threads: usize,
    ) -> Result<Predictor, PredictError> {
        let bundle_error =
            |message: String| PredictError::Bundle { path: bundle_location.display().to_string(), message };
        let bytes = padim_store::read_input(bundle_location)?;
        let bundle = decode_bundle(&bytes).map_err(|e| bundle_error(e.to_string()))?;
        let info = &bundle.info;
        fn parse<T: serde::de::DeserializeOwned>(what: &str, value: &str) -> Result<T, String> {
            serde_json::from_value(serde_json::Value::String(value.to_string()))
                .map_err(|_| format!("unknown {what} `{value}` (made by a newer padim?)"))
        }
        let kind: BackboneKind = parse("backbone", &info.model.backbone).map_err(bundle_error)?;
        let tap: Tap = parse("tap", &info.model.tap).map_err(bundle_error)?;
        let expected = info.model.weights_sha256.clone();
        let weights_location = weights.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(&info.weights_location));
        let local = padim_store::local_copy(&weights_location, Some(&expected))?;
        let actual = padim_extract::weights::verify_checksum(&local, None).map_err(|e| e.named(&weights_location))?;
        if actual != expected {
            return Err(PredictError::WrongWeights { path: weights_location.display().to_string(), actual, expected });
        }
        let device = padim_extract::select_device(device)?;
        padim_extract::set_threads(threads);
        let net = Backbone::load(kind, &local, tap, device).map_err(|e| e.named(&weights_location))?;
        let (mean, std) = net.normalization();
        let preprocessor = Preprocessor::new(info.preprocess.clone(), mean, std);
        let (model, settings) = (&bundle.info.model, &bundle.info.score_settings);
        let (grid_height, grid_width) = model.embedding_grid();
        let filter = MapFilter::new(
            grid_height,
            grid_width,
            model.input_height,
            model.input_width,
            settings.sigma,
            settings.kernel_size,
        );
        let scorer = Scorer::new(bundle.model.clone(), settings.precision).map_err(|e| PredictError::Bundle {
            path: bundle_location.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(Predictor { bundle, net, preprocessor, filter, scorer })
    }

    /// Scores one batch of encoded images (`path` names each in errors); with `heatmaps`, keeps the
    /// network's view and the smoothed map of each.
    pub fn predict(
        &self,
        batch: &[(PathBuf, Result<bytes::Bytes, padim_store::StoreError>)],
        heatmaps: bool,
    ) -> Vec<Result<Prediction, PredictError>> {
        let preprocessor = &self.preprocessor;
        let prepared: Vec<Result<padim_image::Prepared, PredictError>> = batch
            .par_iter()
            .map(|(path, bytes)| {
                let bytes =
                    bytes.as_ref().map_err(|e| PredictError::Read { path: path.clone(), message: e.to_string() })?;
                preprocessor.prepare(path, bytes).map_err(PredictError::Prepare)
            })
            .collect();
        let good: Vec<usize> = prepared.iter().enumerate().filter(|(_, p)| p.is_ok()).map(|(i, _)| i).collect();
        let mut results: Vec<Option<Result<Prediction, PredictError>>> = Vec::with_capacity(batch.len());
        let mut pixels = Vec::new();
        for result in prepared {
            match result {
                Ok(prepared) => {
                    pixels.extend_from_slice(&prepared.pixels);
                    results.push(None);
                }
                Err(error) => results.push(Some(Err(error))),
            }
        }
        if !good.is_empty() {
            match self.score(&pixels, good.len()) {
                Ok(scored) => {
                    for (&index, (raw, map)) in good.iter().zip(scored) {
                        let score = self.bundle.normalise(raw);
                        let heatmap = heatmaps.then(|| self.view(&batch[index].0, &batch[index].1).map(|v| (v, map)));
                        results[index] = Some(match heatmap.transpose() {
                            Ok(heatmap) => Ok(Prediction {
                                score,
                                raw_score: raw,
                                anomalous: score >= self.bundle.info.threshold,
                                heatmap,
                            }),
                            Err(e) => Err(e),
                        });
                    }
                }
                Err(message) => {
                    for &index in &good {
                        results[index] =
                            Some(Err(PredictError::Image { path: batch[index].0.clone(), message: message.clone() }));
                    }
                }
            }
        }
        results.into_iter().map(|r| r.unwrap_or_else(|| Err(PredictError::Input("not scored".into())))).collect()
    }

    /// Raw image scores and smoothed maps of `n` pre-processed images.
    fn score(&self, pixels: &[f32], n: usize) -> Result<Vec<(f64, Vec<f32>)>, String> {
        let (height, width) = self.preprocessor.input_size();
        let input = Tensor::from_slice(pixels).view([n as i64, 3, height as i64, width as i64]);
        let embedding = self.net.embed(&input);
        let mut all = Vec::<f32>::try_from(embedding.flatten(0, -1)).map_err(|e| e.to_string())?;
        let model = &self.bundle.model;
        if self.bundle.info.embedding_values == padim_core::config::ValueType::F16 {
            // As the extract stage stored them for the fit and the calibration.
            for value in &mut all {
                *value = half::f16::from_f32(*value).to_f32();
            }
        }
        let info = &self.bundle.info;
        let (grid_h, grid_w) = info.model.embedding_grid();
        let n_patches = grid_h * grid_w;
        let channels = info.model.embedding_channels;
        if all.len() != n * channels * n_patches {
            return Err(format!(
                "the backbone gives {} values per image, the bundle expects {channels} channels x {n_patches} patches",
                all.len() / n.max(1)
            ));
        }
        let mut values = Vec::with_capacity(n * model.channels.len() * n_patches);
        for image in 0..n {
            for &c in &model.channels {
                let start = (image * channels + c) * n_patches;
                values.extend_from_slice(&all[start..start + n_patches]);
            }
        }
        let ids: Vec<u32> = (0..n as u32).collect();
        let (maps, _) = self.scorer.distances(&ids, &values).map_err(|e| e.to_string())?;
        let filter = &self.filter;
        Ok(maps
            .par_chunks(n_patches)
            .map(|map| {
                let smooth = filter.apply(map);
                let stats = MapStats::of(&smooth, info.score_settings.top_fraction);
                let raw = match info.score {
                    ScoreKind::Mean => stats.mean,
                    ScoreKind::Max => stats.max as f64,
                    ScoreKind::Top => stats.top,
                };
                (raw, smooth)
            })
            .collect())
    }

    /// The network's view of an image (resized and cropped RGB8), for overlays.
    fn view(
        &self,
        path: &Path,
        bytes: &Result<bytes::Bytes, padim_store::StoreError>,
    ) -> Result<Vec<u8>, PredictError> {
        let bytes =
            bytes.as_ref().map_err(|e| PredictError::Read { path: path.to_path_buf(), message: e.to_string() })?;
        let rgb = padim_image::decode_rgb8(path, bytes, &self.bundle.info.preprocess)?;
        Ok(self.preprocessor.resize_and_crop(path, rgb)?)
    }

    /// The overlay PNG of a prediction's heatmap (the bundle's display range).
    pub fn overlay_png(&self, heatmap: &(Vec<u8>, Vec<f32>)) -> Result<Vec<u8>, padim_image::heatmap::PngError> {
        let (height, width) = (self.bundle.info.model.input_height, self.bundle.info.model.input_width);
        let rgb = padim_image::heatmap::overlay(&heatmap.0, &heatmap.1, self.bundle.info.display_range[1]);
        padim_image::heatmap::encode_png(width as u32, height as u32, rgb)
    }
}
