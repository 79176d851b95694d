//! The job file as written: the TOML document's own shape (strict: unknown keys are errors), before
//! paths are resolved and settings checked. The settings sections that need no resolution are
//! `settings`' types, read as they are.

use super::settings::*;
use serde::Deserialize;

/// The job file as written. See `configs/` for documented examples.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawJob {
    pub(super) run: RawRun,
    pub(super) dataset: RawDataset,
    #[serde(default)]
    pub(super) preprocess: Preprocess,
    pub(super) backbone: RawBackbone,
    #[serde(default)]
    pub(super) extract: ExtractSettings,
    #[serde(default)]
    pub(super) fit: FitSettings,
    #[serde(default)]
    pub(super) score: ScoreSettings,
    pub(super) split: Option<SplitSettings>,
    #[serde(default)]
    pub(super) report: ReportSettings,
    pub(super) sweep: Option<SweepSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawRun {
    /// A short name for the experiment, used in reports.
    pub(super) name: String,
    /// Where outputs go: a local path (relative to the job file) or a `file://` URL.
    pub(super) output: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawDataset {
    /// Folder whose sub-folders are labels. A list tries each in turn and takes the first that exists.
    #[serde(default)]
    pub(super) root: Vec<String>,
    /// Text file with one image path per line (relative paths are relative to the list file).
    pub(super) list: Option<String>,
    /// CSV manifest with a header `path,label[,split]` (relative paths relative to the manifest).
    pub(super) manifest: Option<String>,
    /// With `root`: the label folders to take; default all sub-folders.
    #[serde(default)]
    pub(super) labels: Vec<String>,
    /// Labels of the normal (defect-free) class.
    #[serde(default)]
    pub(super) normal: Vec<String>,
    /// With `root`: file extensions taken as images (case-insensitive).
    #[serde(default = "default_extensions")]
    pub(super) extensions: Vec<String>,
    /// Shown when the data cannot be found: where to get it and how to lay it out.
    #[serde(default)]
    pub(super) source_hint: String,
    /// Pixel masks of the defects: a file name pattern in the image's folder, `{stem}` replaced by
    /// the image's file name without extension (e.g. `"{stem}.png"`). Normal images without a mask
    /// file are all-normal; an anomalous image without one has no pixel metrics.
    pub(super) mask: Option<String>,
}

pub(super) fn default_extensions() -> Vec<String> {
    ["jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp"].iter().map(|s| s.to_string()).collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawBackbone {
    /// Which network.
    pub(super) name: BackboneKind,
    /// Safetensors weights file made by `scripts/export_weights.py` (relative to the job file).
    pub(super) weights: String,
    /// Expected SHA-256 of the weights file; a mismatch stops the run.
    pub(super) sha256: Option<String>,
    /// Feature tap point.
    #[serde(default = "default_tap")]
    pub(super) tap: Tap,
}

pub(super) fn default_tap() -> Tap {
    Tap::BlockOutput
}
