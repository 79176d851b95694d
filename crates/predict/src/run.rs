//! `padim predict` as a whole: expand the inputs, score them in batches, write each overlay as it
//! comes, and publish the table (or hand it back for stdout). The binary parses the arguments and
//! prints what this returns.

use crate::output::{OutputFormat, Row, write_rows};
use crate::{PredictError, Predictor};
use padim_core::config::DeviceChoice;
use padim_store::Store;
use std::path::{Path, PathBuf};

/// What `padim predict` was asked to do.
#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// The bundle (path or URL).
    pub model: PathBuf,
    /// The backbone weights, when not where the bundle's job read them.
    pub weights: Option<PathBuf>,
    /// Files, folders, patterns or URL prefixes.
    pub inputs: Vec<String>,
    /// The table's path or URL (its extension picks the format); none: JSON lines for stdout.
    pub output: Option<String>,
    /// A folder or prefix for the overlay PNGs.
    pub overlays: Option<String>,
    pub batch_size: usize,
    pub device: DeviceChoice,
    pub threads: usize,
    /// Stop at the first image that cannot be scored instead of giving it an error row.
    pub fail_fast: bool,
}

/// What `padim predict` did.
#[derive(Debug, Clone)]
pub struct PredictSummary {
    pub rows: Vec<Row>,
    /// Images that could not be scored (each has an error row).
    pub failed: usize,
    pub anomalous: usize,
    /// The bundle's model (channel subset) and threshold.
    pub model: String,
    pub threshold: f64,
    /// The table as JSON lines, when no output was named (for stdout).
    pub stdout: Option<Vec<u8>>,
}

/// Runs `padim predict`; `warn` is told of each image that could not be scored (unless
/// `fail_fast`, which stops with its error instead).
pub fn run_predict(
    options: &PredictOptions,
    warn: &mut dyn FnMut(&PredictError),
) -> Result<PredictSummary, PredictError> {
    let predictor = Predictor::load(&options.model, options.weights.as_deref(), options.device, options.threads)
        .map_err(|source| PredictError::Load { path: options.model.display().to_string(), source: Box::new(source) })?;
    let images = crate::expand_inputs(&options.inputs)?;
    let overlays = options.overlays.as_deref().map(Store::open).transpose().map_err(PredictError::Publish)?;
    let threshold = predictor.bundle.info.threshold;
    let mut rows = Vec::with_capacity(images.len());
    let mut failed = 0usize;
    for chunk in images.chunks(options.batch_size.max(1)) {
        let paths: Vec<&Path> = chunk.iter().map(PathBuf::as_path).collect();
        let contents = padim_store::read_inputs(&paths);
        let batch: Vec<(PathBuf, Result<_, padim_store::StoreError>)> = chunk.iter().cloned().zip(contents).collect();
        for ((path, _), result) in batch.iter().zip(predictor.predict(&batch, overlays.is_some())) {
            let name = path.display().to_string();
            match result {
                Ok(prediction) => {
                    let mut overlay = None;
                    if let (Some(store), Some(heatmap)) = (&overlays, &prediction.heatmap) {
                        let png = predictor
                            .overlay_png(heatmap)
                            .map_err(|source| PredictError::Png { what: format!("the overlay of {name}"), source })?;
                        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                        let key = format!("{:06}-{stem}.png", rows.len());
                        store.put(&key, png).map_err(PredictError::Publish)?;
                        overlay = Some(store.url_of(&key));
                    }
                    rows.push(Row {
                        path: name,
                        status: "ok",
                        score: Some(prediction.score),
                        raw_score: Some(prediction.raw_score),
                        anomalous: Some(prediction.anomalous),
                        threshold,
                        overlay,
                        error: None,
                    });
                }
                Err(error) if options.fail_fast => return Err(PredictError::Stopped(Box::new(error))),
                Err(error) => {
                    failed += 1;
                    warn(&error);
                    rows.push(Row {
                        path: name,
                        status: "error",
                        score: None,
                        raw_score: None,
                        anomalous: None,
                        threshold,
                        overlay: None,
                        error: Some(error.to_string()),
                    });
                }
            }
        }
    }
    let format = options.output.as_deref().map(OutputFormat::of).unwrap_or(OutputFormat::JsonLines);
    let table = write_rows(&rows, format)?;
    let stdout = match &options.output {
        None => Some(table),
        Some(output) => {
            // Published atomically through the store: a folder (or prefix) and a file name.
            let (parent, name) = output.rsplit_once('/').unwrap_or((".", output.as_str()));
            let parent = if parent.is_empty() { "/" } else { parent };
            Store::open(parent).and_then(|store| store.put(name, table)).map_err(PredictError::Publish)?;
            None
        }
    };
    let anomalous = rows.iter().filter(|r| r.anomalous == Some(true)).count();
    Ok(PredictSummary { rows, failed, anomalous, model: predictor.bundle.info.model.subset.clone(), threshold, stdout })
}
