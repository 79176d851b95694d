//! The job file: one TOML document that fixes every choice of an experiment.
//!
//! Parsing is strict (`deny_unknown_fields`, kebab-case keys) and every error names the file.
//! Relative paths in a job file are resolved against the directory of the job file, so a job can be
//! run from any working directory. The resolved job serialises to canonical JSON whose SHA-256 is the
//! job's identity: outputs record it, and a rerun with another config is detected by it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Errors from reading or validating a job file. Each names the file and, where it can, the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read job file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid job file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid job file {path}: `{key}` {problem}")]
    Invalid { path: PathBuf, key: &'static str, problem: String },
}

/// The job file as written. See `configs/` for documented examples.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawJob {
    run: RawRun,
    dataset: RawDataset,
    #[serde(default)]
    preprocess: Preprocess,
    backbone: RawBackbone,
    #[serde(default)]
    extract: ExtractSettings,
    #[serde(default)]
    fit: FitSettings,
    #[serde(default)]
    score: ScoreSettings,
    split: Option<SplitSettings>,
    #[serde(default)]
    report: ReportSettings,
    sweep: Option<SweepSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRun {
    /// A short name for the experiment, used in reports.
    name: String,
    /// Where outputs go: a local path (relative to the job file) or a `file://` URL.
    output: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDataset {
    /// Folder whose sub-folders are labels. A list tries each in turn and takes the first that exists.
    #[serde(default)]
    root: Vec<String>,
    /// Text file with one image path per line (relative paths are relative to the list file).
    list: Option<String>,
    /// CSV manifest with a header `path,label[,split]` (relative paths relative to the manifest).
    manifest: Option<String>,
    /// With `root`: the label folders to take; default all sub-folders.
    #[serde(default)]
    labels: Vec<String>,
    /// Labels of the normal (defect-free) class.
    #[serde(default)]
    normal: Vec<String>,
    /// With `root`: file extensions taken as images (case-insensitive).
    #[serde(default = "default_extensions")]
    extensions: Vec<String>,
    /// Shown when the data cannot be found: where to get it and how to lay it out.
    #[serde(default)]
    source_hint: String,
    /// Pixel masks of the defects: a file name pattern in the image's folder, `{stem}` replaced by
    /// the image's file name without extension (e.g. `"{stem}.png"`). Normal images without a mask
    /// file are all-normal; an anomalous image without one has no pixel metrics.
    mask: Option<String>,
}

fn default_extensions() -> Vec<String> {
    ["jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp"].iter().map(|s| s.to_string()).collect()
}

/// How a non-square image reaches the network's square (or any) input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AspectPolicy {
    /// Resize to exactly `resize` (height, width), ignoring the aspect ratio, then centre-crop to `crop`.
    /// The reference recipe's choice; nothing of the image is lost but shapes are distorted.
    Stretch,
    /// Resize so that the shorter side equals the shorter side of `resize`, keeping the aspect ratio,
    /// then centre-crop to `crop` (torchvision's `Resize(int)`); the borders of long images are lost.
    ShorterSide,
}

/// Image pre-processing before the backbone. Missing keys take the recipe's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Preprocess {
    /// Size `[height, width]` to resize to before cropping.
    pub resize: [u32; 2],
    /// Size `[height, width]` of the centre crop fed to the network; at most `resize`.
    pub crop: [u32; 2],
    /// Policy for images whose aspect ratio differs from `resize`'s.
    pub aspect: AspectPolicy,
    /// Images with a side shorter than this many pixels are rejected as bad input.
    pub min_side: u32,
    /// Images with more pixels than this are refused before decoding (decompression bombs).
    pub max_pixels: u64,
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess {
            resize: [256, 256],
            crop: [224, 224],
            aspect: AspectPolicy::Stretch,
            min_side: 32,
            max_pixels: 64 * 1024 * 1024,
        }
    }
}

/// The CNN backbones padim knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackboneKind {
    /// ResNet-18 (He et al. 2016), the reference recipe's backbone: 64 + 128 + 256 = 448 channels.
    Resnet18,
    /// Wide-ResNet-50-2 (Zagoruyko & Komodakis 2016), the PaDiM paper's best: 256 + 512 + 1024 channels.
    WideResnet50_2,
    /// EfficientNet-Lite0 (Tan & Le 2019, Lite variant): 24 + 40 + 112 = 176 channels.
    EfficientnetLite0,
}

impl BackboneKind {
    pub fn name(self) -> &'static str {
        match self {
            BackboneKind::Resnet18 => "resnet18",
            BackboneKind::WideResnet50_2 => "wide-resnet50-2",
            BackboneKind::EfficientnetLite0 => "efficientnet-lite0",
        }
    }
}

/// Where in each stage the features are tapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tap {
    /// The output of the last block of each stage (after the residual add and activation): the
    /// PaDiM paper's and anomalib's choice.
    BlockOutput,
    /// The last batch normalisation of each stage, before the residual add and activation: MATLAB's
    /// example (`bn2b_branch2b` etc.).
    LastBn,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawBackbone {
    /// Which network.
    name: BackboneKind,
    /// Safetensors weights file made by `scripts/export_weights.py` (relative to the job file).
    weights: String,
    /// Expected SHA-256 of the weights file; a mismatch stops the run.
    sha256: Option<String>,
    /// Feature tap point.
    #[serde(default = "default_tap")]
    tap: Tap,
}

fn default_tap() -> Tap {
    Tap::BlockOutput
}

/// Device for the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceChoice {
    /// CUDA when available, else CPU.
    Auto,
    Cpu,
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            other => Err(format!("unknown device `{other}`: use auto, cpu or cuda")),
        }
    }
}

/// Parquet compression of the embeddings (lossless). LZ4 is Parquet's `LZ4_RAW`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    None,
    Snappy,
    Zstd,
    Lz4,
}

/// The value type of stored embeddings. fit and score compute in f64 whatever is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ValueType {
    /// IEEE half precision (Parquet's FLOAT16 logical type): half the bytes, 11 significant bits.
    F16,
    /// IEEE single precision, the network's own output.
    F32,
}

/// Which embedding channels the extract stage stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoredChannels {
    /// Every tapped channel: any later subset or sweep can be fitted without extracting again.
    All,
    /// Only the union of the job's subsets (sweep experiments included): a fit that needs another
    /// channel is refused, naming it.
    Subsets,
}

/// Parquet encoding of the embedding values; both are lossless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FloatEncoding {
    /// The values' bytes as they are.
    Plain,
    /// BYTE_STREAM_SPLIT: the k-th bytes of all values together, which compresses better.
    ByteStreamSplit,
}

/// Settings of the `extract` stage. Missing keys take their defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct ExtractSettings {
    /// Images per forward pass.
    pub batch_size: usize,
    /// Where the backbone runs.
    pub device: DeviceChoice,
    /// CPU threads for the backbone; 0 means all cores. On the CPU, two network workers with half
    /// of them each (one batch each), see `padim_extract::network_workers`.
    pub threads: usize,
    /// Record unreadable images in the output and go on, instead of stopping before publishing.
    pub skip_bad: bool,
    /// Value type of the stored embeddings (part of the extract identity: it changes the values).
    pub dtype: ValueType,
    /// Which channels are stored.
    pub channels: StoredChannels,
    /// Encoding of the embedding columns.
    pub encoding: FloatEncoding,
    /// Compression of the embedding columns.
    pub compression: Compression,
    /// Target size of a Parquet row group in MiB; row groups always hold whole images.
    pub row_group_mib: usize,
}

impl Default for ExtractSettings {
    fn default() -> Self {
        ExtractSettings {
            batch_size: 32,
            device: DeviceChoice::Auto,
            threads: 0,
            skip_bad: false,
            dtype: ValueType::F16,
            channels: StoredChannels::All,
            encoding: FloatEncoding::ByteStreamSplit,
            compression: Compression::Lz4,
            row_group_mib: 64,
        }
    }
}

/// One channel subset to fit a model for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SubsetSpec {
    /// Names the model file (`fit/model-NAME.safetensors`).
    pub name: String,
    /// Number of channels sampled at random without replacement...
    pub count: Option<usize>,
    /// ...with this seed.
    #[serde(default)]
    pub seed: u64,
    /// Or an explicit list of embedding channels.
    pub channels: Option<Vec<usize>>,
    /// Or every channel.
    #[serde(default)]
    pub all: bool,
    /// Take the channels (`count` of them, or all) from these tapped layers only (1-based, in
    /// embedding order); default every layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<usize>>,
}

/// A channel count of a sweep: a number, or `"all"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SweepCount {
    Count(usize),
    All(AllChannels),
}

/// The word `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllChannels {
    All,
}

/// A sweep over channel subsets: every combination of layers, count and seed is one experiment,
/// fitted and scored in the same pass as the others (`fit.subsets` gains one subset per experiment;
/// scoring takes several passes only when the models exceed `score.memory-budget-gib`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SweepSettings {
    /// Channel counts, e.g. `[50, 100, "all"]`.
    pub counts: Vec<SweepCount>,
    /// Seeds of the random subsets, one experiment each (`"all"` takes no seed).
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Layer combinations, e.g. `["1+2+3", "2+3"]`.
    #[serde(default = "default_layers")]
    pub layers: Vec<String>,
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

fn default_layers() -> Vec<String> {
    vec!["1+2+3".into()]
}

impl SweepSettings {
    /// The experiments, as subsets with stable names derived from their parameters:
    /// `c050-s0-l123` (50 channels, seed 0, layers 1+2+3), `all-l23`.
    pub fn experiments(&self) -> Result<Vec<SubsetSpec>, String> {
        let mut out = Vec::new();
        for combination in &self.layers {
            let mut layers = Vec::new();
            for part in combination.split('+') {
                match part.trim().parse::<usize>() {
                    Ok(layer @ 1..=3) if !layers.contains(&layer) => layers.push(layer),
                    _ => return Err(format!("layers `{combination}`: use 1, 2 and 3 joined by +, e.g. \"1+2+3\"")),
                }
            }
            layers.sort_unstable();
            let tag: String = layers.iter().map(|l| l.to_string()).collect();
            for count in &self.counts {
                match count {
                    SweepCount::All(_) => out.push(SubsetSpec {
                        name: format!("all-l{tag}"),
                        count: None,
                        seed: 0,
                        channels: None,
                        all: true,
                        layers: Some(layers.clone()),
                    }),
                    SweepCount::Count(0) => return Err("counts must be positive".into()),
                    SweepCount::Count(n) => {
                        for &seed in &self.seeds {
                            out.push(SubsetSpec {
                                name: format!("c{n:03}-s{seed}-l{tag}"),
                                count: Some(*n),
                                seed,
                                channels: None,
                                all: false,
                                layers: Some(layers.clone()),
                            });
                        }
                    }
                }
            }
        }
        if out.is_empty() {
            return Err("names no experiment (empty `counts`, `seeds` or `layers`)".into());
        }
        Ok(out)
    }
}

/// Settings of the `fit` stage. Missing keys take their defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct FitSettings {
    /// Added to the covariance diagonal so that it is invertible (the recipe's 0.01).
    pub epsilon: f64,
    /// The models to fit; one pass over the embeddings serves all of them.
    pub subsets: Vec<SubsetSpec>,
    /// Labels of the training images; default the dataset's `normal` labels.
    pub train_labels: Vec<String>,
    /// With a dataset that names splits: only images of this split train.
    pub train_split: Option<String>,
    /// Images read per batch.
    pub batch_images: usize,
    /// Refuse to start when the accumulated statistics would need more memory than this.
    pub memory_budget_gib: f64,
}

impl Default for FitSettings {
    fn default() -> Self {
        FitSettings {
            epsilon: 0.01,
            subsets: vec![SubsetSpec {
                name: "all".into(),
                count: None,
                seed: 0,
                channels: None,
                all: true,
                layers: None,
            }],
            train_labels: Vec::new(),
            train_split: None,
            batch_images: 32,
            memory_budget_gib: 8.0,
        }
    }
}

/// Settings of the `score` stage. Missing keys take the recipe's values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct ScoreSettings {
    /// Standard deviation of the Gaussian that smooths the resized map, in input pixels.
    pub sigma: f64,
    /// Taps of the Gaussian kernel (odd).
    pub kernel_size: usize,
    /// Images read per batch.
    pub batch_images: usize,
    /// The models held in memory at once; a larger set (a sweep's) is scored in several passes over
    /// the embeddings, with the same results. Not part of the score's identity.
    pub memory_budget_gib: f64,
}

impl Default for ScoreSettings {
    fn default() -> Self {
        ScoreSettings { sigma: 4.0, kernel_size: 33, batch_images: 32, memory_budget_gib: 8.0 }
    }
}

/// How many images of one label a split takes: a count, a fraction of the label's images, or
/// `"rest"` (what the other splits leave).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SplitAmount {
    Count(u64),
    Fraction(f64),
    Rest(String),
}

/// The names of the splits, in the order they are filled and listed.
pub const SPLITS: [&str; 3] = ["train", "calibration", "test"];

/// Seeded, disjoint train / calibration / test splits, per label (`padim split`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SplitSettings {
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub train: BTreeMap<String, SplitAmount>,
    #[serde(default)]
    pub calibration: BTreeMap<String, SplitAmount>,
    #[serde(default)]
    pub test: BTreeMap<String, SplitAmount>,
}

impl SplitSettings {
    /// Each split's name and amounts, in [`SPLITS`] order.
    pub fn parts(&self) -> [(&'static str, &BTreeMap<String, SplitAmount>); 3] {
        [("train", &self.train), ("calibration", &self.calibration), ("test", &self.test)]
    }
}

/// Which image score classifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScoreKind {
    /// The mean of the smoothed map (the recipe's choice).
    Mean,
    /// Its maximum.
    Max,
}

impl ScoreKind {
    pub fn name(self) -> &'static str {
        match self {
            ScoreKind::Mean => "mean",
            ScoreKind::Max => "max",
        }
    }
}

/// How the calibration set chooses the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ThresholdRule {
    /// Maximises Youden's J = TPR - FPR (the recipe's choice).
    Youden,
    /// Maximises F1.
    MaxF1,
    /// The lowest threshold whose false-positive rate is at most `report.target-rate`.
    Fpr,
    /// The highest threshold whose false-negative rate is at most `report.target-rate`.
    Fnr,
}

/// Settings of the `report` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct ReportSettings {
    /// The image score that classifies.
    pub score: ScoreKind,
    /// How the calibration set picks the threshold.
    pub threshold: ThresholdRule,
    /// With `threshold = "fpr"` or `"fnr"`: the rate to stay within.
    pub target_rate: f64,
    /// The model (subset name) of the pictures and of the headline numbers; default the first.
    pub model: Option<String>,
    /// Heatmaps share one display range: 0 to this percentile of the calibration images' maxima.
    pub display_percentile: f64,
    /// Images per montage (true positives, true negatives, false positives, false negatives each).
    pub montage_images: usize,
    /// Store the bundle's matrices as f16 (half the size) instead of f32. Left out of the hash when
    /// false, so that runs made before the key existed stay valid.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub bundle_f16: bool,
}

impl Default for ReportSettings {
    fn default() -> Self {
        ReportSettings {
            score: ScoreKind::Mean,
            threshold: ThresholdRule::Youden,
            target_rate: 0.05,
            model: None,
            display_percentile: 80.0,
            montage_images: 12,
            bundle_f16: false,
        }
    }
}

/// Where the images come from, resolved to absolute paths.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum DatasetSource {
    /// Sub-folders of `root` are labels.
    Folders { root: PathBuf, labels: Vec<String>, extensions: Vec<String> },
    /// One image path per line.
    List { path: PathBuf },
    /// CSV `path,label[,split]`.
    Manifest { path: PathBuf },
}

/// The dataset part of a resolved job.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Dataset {
    pub source: DatasetSource,
    pub normal: Vec<String>,
    /// File name pattern of the pixel masks (`{stem}` = the image's file stem), in the image's folder.
    pub mask: Option<String>,
}

/// The backbone part of a resolved job.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Backbone {
    pub kind: BackboneKind,
    pub weights: PathBuf,
    pub sha256: Option<String>,
    pub tap: Tap,
}

/// A validated job with every path resolved: what the stages receive.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Job {
    pub name: String,
    /// The run prefix: an absolute local path or a URL.
    pub output: String,
    pub dataset: Dataset,
    pub preprocess: Preprocess,
    pub backbone: Backbone,
    pub extract: ExtractSettings,
    pub fit: FitSettings,
    pub score: ScoreSettings,
    pub split: Option<SplitSettings>,
    pub report: ReportSettings,
    /// The sweep that added experiments to `fit.subsets`, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepSettings>,
}

impl Job {
    /// Reads, parses and validates a job file.
    pub fn load(path: &Path) -> Result<Job, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Job::parse(&text, path)
    }

    /// Parses and validates job text; `path` names the file in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Job, ConfigError> {
        let raw: RawJob = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
        let base = std::path::absolute(&base).unwrap_or(base);
        resolve(raw, &base, path)
    }

    /// Canonical JSON of the resolved job.
    pub fn to_canonical_json(&self) -> String {
        // Serialising a struct is deterministic: fields in declaration order, no maps.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// SHA-256 of the canonical JSON: the job's identity.
    pub fn hash(&self) -> String {
        crate::hash::sha256_hex(self.to_canonical_json().as_bytes())
    }

    /// The dataset part of the identities: which images are taken and how they are labelled, without
    /// the paths where they are found (a moved or remounted dataset is the same dataset; its content
    /// enters through [`InputDigests::images`]).
    fn dataset_identity(&self) -> serde_json::Value {
        let source = match &self.dataset.source {
            DatasetSource::Folders { labels, extensions, .. } => {
                serde_json::json!({ "kind": "folders", "labels": labels, "extensions": extensions })
            }
            DatasetSource::List { .. } => serde_json::json!({ "kind": "list" }),
            DatasetSource::Manifest { .. } => serde_json::json!({ "kind": "manifest" }),
        };
        serde_json::json!({ "source": source, "normal": self.dataset.normal, "mask": self.dataset.mask })
    }

    /// The identity of the split stage's manifest: which images the dataset's listing takes (not
    /// where it is) and the split settings. The files' content is recorded in the manifest itself,
    /// whose digest the later identities cover.
    pub fn split_hash(&self) -> String {
        let upstream = serde_json::json!({ "dataset": self.dataset_identity(), "split": self.split });
        crate::hash::sha256_hex(upstream.to_string().as_bytes())
    }

    /// The identity of the extract stage's outputs: what shapes the embedding values and nothing
    /// else. The images by the digest of their manifest (relative paths, labels, splits, SHA-256 of
    /// every file), the weights by their SHA-256, the pre-processing and the backbone. Execution
    /// settings (threads, device, batch size, `skip-bad`, encoding, compression, row groups, which
    /// channels are stored) and absolute paths are facts of a run, recorded in its manifest, not
    /// part of its identity; skipped images are part of the outputs (the image table). The value
    /// type is part of it when it rounds (f16).
    pub fn extract_hash(&self, inputs: &InputDigests) -> String {
        let upstream = serde_json::json!({
            "dataset": self.dataset_identity(),
            "split": self.split,
            "images": inputs.images,
            "preprocess": self.preprocess,
            "backbone": { "kind": self.backbone.kind, "tap": self.backbone.tap, "weights-sha256": inputs.weights },
        });
        // Rounding to f16 changes the values; f32, the network's own output, adds nothing, so that
        // the identities of runs made before the choice existed stay as they were.
        let mut upstream = upstream;
        if self.extract.dtype != ValueType::F32 {
            upstream["dtype"] = serde_json::json!(self.extract.dtype);
        }
        crate::hash::sha256_hex(upstream.to_string().as_bytes())
    }

    /// The identity of the fit stage's outputs: the extract identity and the fit settings but the
    /// execution settings (memory budget, batch size).
    pub fn fit_hash(&self, inputs: &InputDigests) -> String {
        let upstream = serde_json::json!({
            "extract": self.extract_hash(inputs),
            "fit": without_execution(&self.fit, &["memory-budget-gib", "batch-images"]),
        });
        crate::hash::sha256_hex(upstream.to_string().as_bytes())
    }

    /// The identity of the score stage's outputs: the fit identity and the score settings but the
    /// execution settings (memory budget, batch size).
    pub fn score_hash(&self, inputs: &InputDigests) -> String {
        let upstream = serde_json::json!({
            "fit": self.fit_hash(inputs),
            "score": without_execution(&self.score, &["memory-budget-gib", "batch-images"]),
        });
        crate::hash::sha256_hex(upstream.to_string().as_bytes())
    }

    /// The identity of the report: the score identity and the report settings.
    pub fn report_hash(&self, inputs: &InputDigests) -> String {
        let upstream = serde_json::json!({ "score": self.score_hash(inputs), "report": self.report });
        crate::hash::sha256_hex(upstream.to_string().as_bytes())
    }
}

/// The content of a job's inputs, which the stage identities cover instead of their paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputDigests {
    /// SHA-256 of the split stage's image manifest (relative paths, labels, splits and the SHA-256
    /// of every image).
    pub images: String,
    /// SHA-256 of the backbone weights file.
    pub weights: String,
}

/// A stage's settings as JSON without the named execution settings: a memory budget refuses work
/// or schedules it in passes, a batch size sets how much is read at once; neither changes a result,
/// so neither is part of a stage's identity.
fn without_execution(settings: &impl Serialize, keys: &[&str]) -> serde_json::Value {
    let mut value = serde_json::json!(settings);
    if let Some(map) = value.as_object_mut() {
        for key in keys {
            map.remove(*key);
        }
    }
    value
}

fn invalid(path: &Path, key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { path: path.to_path_buf(), key, problem: problem.into() }
}

fn resolve(raw: RawJob, base: &Path, path: &Path) -> Result<Job, ConfigError> {
    if raw.run.name.trim().is_empty() {
        return Err(invalid(path, "run.name", "must not be empty"));
    }
    let output = resolve_location(&raw.run.output, base);

    let sources = [!raw.dataset.root.is_empty(), raw.dataset.list.is_some(), raw.dataset.manifest.is_some()];
    if sources.iter().filter(|s| **s).count() != 1 {
        return Err(invalid(path, "dataset", "needs exactly one of `root`, `list` or `manifest`"));
    }
    let source = if !raw.dataset.root.is_empty() {
        let candidates: Vec<PathBuf> = raw.dataset.root.iter().map(|r| resolve_input(r, base)).collect();
        // A URL is taken as it is (listing it needs the network; extract does that).
        let root = candidates.iter().find(|c| is_url(c) || c.is_dir()).cloned().ok_or_else(|| {
            let tried: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
            let hint = if raw.dataset.source_hint.is_empty() {
                String::new()
            } else {
                format!(". {}", raw.dataset.source_hint)
            };
            invalid(path, "dataset.root", format!("names no existing folder (tried {}){hint}", tried.join(", ")))
        })?;
        let extensions = raw.dataset.extensions.iter().map(|e| e.trim_start_matches('.').to_lowercase()).collect();
        DatasetSource::Folders { root, labels: raw.dataset.labels.clone(), extensions }
    } else if let Some(list) = &raw.dataset.list {
        DatasetSource::List { path: resolve_input(list, base) }
    } else if let Some(manifest) = &raw.dataset.manifest {
        DatasetSource::Manifest { path: resolve_input(manifest, base) }
    } else {
        unreachable!("exactly one source was checked above")
    };

    let pre = raw.preprocess;
    if pre.resize.contains(&0) || pre.crop.contains(&0) {
        return Err(invalid(path, "preprocess", "sizes must be positive"));
    }
    if pre.crop[0] > pre.resize[0] || pre.crop[1] > pre.resize[1] {
        return Err(invalid(path, "preprocess.crop", format!("{:?} is larger than resize {:?}", pre.crop, pre.resize)));
    }
    if !pre.crop[0].is_multiple_of(32) || !pre.crop[1].is_multiple_of(32) {
        return Err(invalid(
            path,
            "preprocess.crop",
            format!(
                "{:?} must be a multiple of 32 in both sides so that the feature grids of all stages align",
                pre.crop
            ),
        ));
    }
    if pre.max_pixels == 0 {
        return Err(invalid(path, "preprocess.max-pixels", "must be positive"));
    }

    if let Some(sha) = &raw.backbone.sha256
        && (sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(invalid(path, "backbone.sha256", "must be 64 hexadecimal digits"));
    }
    let backbone = Backbone {
        kind: raw.backbone.name,
        weights: resolve_input(&raw.backbone.weights, base),
        sha256: raw.backbone.sha256.map(|s| s.to_lowercase()),
        tap: raw.backbone.tap,
    };

    let mut fit = raw.fit;
    if let Some(sweep) = &raw.sweep {
        fit.subsets.extend(sweep.experiments().map_err(|message| invalid(path, "sweep", message))?);
    }
    if fit
        .subsets
        .iter()
        .any(|s| s.layers.as_ref().is_some_and(|l| l.is_empty() || l.iter().any(|&l| !(1..=3).contains(&l))))
    {
        return Err(invalid(path, "fit.subsets", "`layers` are 1, 2 or 3"));
    }
    if !(fit.epsilon >= 0.0 && fit.epsilon.is_finite()) {
        return Err(invalid(path, "fit.epsilon", "must be a finite number >= 0"));
    }
    if fit.batch_images == 0 {
        return Err(invalid(path, "fit.batch-images", "must be at least 1"));
    }
    if fit.memory_budget_gib.is_nan() || fit.memory_budget_gib <= 0.0 {
        return Err(invalid(path, "fit.memory-budget-gib", "must be positive"));
    }
    let mut names = std::collections::BTreeSet::new();
    for subset in &fit.subsets {
        let kinds = [subset.count.is_some(), subset.channels.is_some(), subset.all];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(invalid(
                path,
                "fit.subsets",
                format!(
                    "subset `{}` needs exactly one of `count` (with `seed`), `channels` or `all = true`",
                    subset.name
                ),
            ));
        }
        if subset.name.is_empty() || !subset.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(invalid(
                path,
                "fit.subsets",
                format!("subset name `{}` must be letters, digits, - or _", subset.name),
            ));
        }
        if !names.insert(subset.name.clone()) {
            return Err(invalid(path, "fit.subsets", format!("subset name `{}` is used twice", subset.name)));
        }
    }
    let score = raw.score;
    if !(score.sigma > 0.0 && score.sigma.is_finite()) {
        return Err(invalid(path, "score.sigma", "must be a positive number"));
    }
    if score.kernel_size.is_multiple_of(2) {
        return Err(invalid(path, "score.kernel-size", "must be odd"));
    }
    if score.batch_images == 0 {
        return Err(invalid(path, "score.batch-images", "must be at least 1"));
    }
    if score.memory_budget_gib.is_nan() || score.memory_budget_gib <= 0.0 {
        return Err(invalid(path, "score.memory-budget-gib", "must be positive"));
    }
    let extract = raw.extract;
    if extract.batch_size == 0 {
        return Err(invalid(path, "extract.batch-size", "must be at least 1"));
    }
    if extract.row_group_mib == 0 {
        return Err(invalid(path, "extract.row-group-mib", "must be at least 1"));
    }

    if let Some(split) = &raw.split {
        validate_split(split, path)?;
        // With splits, only the training split trains unless the job says otherwise.
        if fit.train_split.is_none() {
            fit.train_split = Some("train".into());
        }
    }
    if let Some(mask) = &raw.dataset.mask
        && (!mask.contains("{stem}") || mask.contains('/'))
    {
        return Err(invalid(path, "dataset.mask", "must be a file name containing `{stem}`, e.g. \"{stem}.png\""));
    }
    let report = raw.report;
    if !(report.target_rate > 0.0 && report.target_rate < 1.0) {
        return Err(invalid(path, "report.target-rate", "must be between 0 and 1"));
    }
    if !(report.display_percentile > 0.0 && report.display_percentile <= 100.0) {
        return Err(invalid(path, "report.display-percentile", "must be in (0, 100]"));
    }
    if let Some(model) = &report.model
        && !fit.subsets.iter().any(|s| &s.name == model)
    {
        return Err(invalid(path, "report.model", format!("names no subset of `fit.subsets` (`{model}`)")));
    }

    Ok(Job {
        name: raw.run.name,
        output,
        dataset: Dataset { source, normal: raw.dataset.normal, mask: raw.dataset.mask },
        preprocess: pre,
        backbone,
        extract,
        fit,
        score,
        split: raw.split,
        report,
        sweep: raw.sweep,
    })
}

fn validate_split(split: &SplitSettings, path: &Path) -> Result<(), ConfigError> {
    let mut any = false;
    for (name, amounts) in split.parts() {
        for (label, amount) in amounts {
            any = true;
            let ok = match amount {
                SplitAmount::Count(n) => *n > 0,
                SplitAmount::Fraction(f) => *f > 0.0 && *f <= 1.0,
                SplitAmount::Rest(word) => word == "rest",
            };
            if !ok {
                return Err(invalid(
                    path,
                    "split",
                    format!("`{name}.{label}` must be a positive count, a fraction in (0, 1] or \"rest\""),
                ));
            }
        }
    }
    if !any {
        return Err(invalid(path, "split", "names no images: give counts per label, e.g. train = { good = 250 }"));
    }
    Ok(())
}

/// A location is kept as a URL when it has a scheme, else made an absolute local path.
fn resolve_location(location: &str, base: &Path) -> String {
    if location.contains("://") {
        location.to_string()
    } else {
        let joined = base.join(location);
        let joined = std::path::absolute(&joined).unwrap_or(joined);
        normalize(&joined).display().to_string()
    }
}

/// Whether `path` is a URL (`s3://bucket/key`, `file:///...`) rather than a local path.
pub fn is_url(path: &Path) -> bool {
    path.to_str().is_some_and(|s| {
        s.split_once("://").is_some_and(|(scheme, _)| {
            !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-')
        })
    })
}

/// An input named in the job: a URL as it is, a local path relative to the job file's folder.
fn resolve_input(input: &str, base: &Path) -> PathBuf {
    if is_url(Path::new(input)) { PathBuf::from(input) } else { base.join(input) }
}

/// Removes `.` and `..` components lexically, so that recorded paths are readable.
pub fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_job(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("job.toml");
        std::fs::write(&path, body).unwrap();
        path
    }

    const MINIMAL: &str = r#"
[run]
name = "t"
output = "out"
[dataset]
root = ["missing", "data"]
normal = ["good"]
[backbone]
name = "resnet18"
weights = "w.safetensors"
"#;

    #[test]
    fn resolves_paths_against_the_job_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let job = Job::load(&write_job(dir.path(), MINIMAL)).unwrap();
        let root = std::path::absolute(dir.path()).unwrap();
        assert_eq!(job.output, root.join("out").display().to_string());
        assert_eq!(job.backbone.weights, root.join("w.safetensors"));
        assert!(matches!(&job.dataset.source, DatasetSource::Folders { root: r, .. } if r.ends_with("data")));
        assert_eq!(job.preprocess, Preprocess::default());
        assert_eq!(job.backbone.tap, Tap::BlockOutput);
        assert_eq!(job.hash().len(), 64);
    }

    #[test]
    fn unknown_key_is_an_error_naming_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let body = MINIMAL.replace("[backbone]", "[backbone]\nwieghts = 1");
        let path = write_job(dir.path(), &body);
        let message = Job::load(&path).unwrap_err().to_string();
        assert!(message.contains("job.toml"), "{message}");
        assert!(message.contains("wieghts"), "{message}");
    }

    #[test]
    fn missing_data_lists_candidates_and_hint() {
        let dir = tempfile::tempdir().unwrap();
        let body = MINIMAL.replace("normal =", "source-hint = \"get it from X\"\nnormal =");
        let message = Job::load(&write_job(dir.path(), &body)).unwrap_err().to_string();
        assert!(message.contains("dataset.root"), "{message}");
        assert!(message.contains("missing") && message.contains("get it from X"), "{message}");
    }

    #[test]
    fn crop_larger_than_resize_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let body = format!(
            "{MINIMAL}\n[preprocess]\nresize = [256, 256]\ncrop = [288, 224]\naspect = \"stretch\"\nmin-side = 8\nmax-pixels = 100\n"
        );
        let message = Job::load(&write_job(dir.path(), &body)).unwrap_err().to_string();
        assert!(message.contains("preprocess.crop"), "{message}");
    }

    #[test]
    fn hash_changes_with_any_setting() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let a = Job::load(&write_job(dir.path(), MINIMAL)).unwrap();
        let b = Job::load(&write_job(dir.path(), &format!("{MINIMAL}\n[extract]\nbatch-size = 8\n"))).unwrap();
        assert_eq!(b.extract.batch_size, 8);
        assert_eq!(b.extract.threads, ExtractSettings::default().threads);
        assert_ne!(a.hash(), b.hash());
        let mut c = a.clone();
        c.backbone.tap = Tap::LastBn;
        assert_ne!(a.hash(), c.hash());
    }

    fn digests() -> InputDigests {
        InputDigests { images: "1".repeat(64), weights: "2".repeat(64) }
    }

    #[test]
    fn stage_identities_ignore_execution_settings() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let a = Job::load(&write_job(dir.path(), MINIMAL)).unwrap();
        let execution = "\n[extract]\nthreads = 1\ndevice = \"cpu\"\nbatch-size = 3\nskip-bad = true\n\
                         compression = \"lz4\"\nencoding = \"byte-stream-split\"\nchannels = \"subsets\"\n\
                         row-group-mib = 1\n[fit]\nmemory-budget-gib = 2\nbatch-images = 5\n\
                         [score]\nmemory-budget-gib = 0.5\nbatch-images = 7\n";
        let b = Job::load(&write_job(dir.path(), &format!("{MINIMAL}{execution}"))).unwrap();
        assert_eq!((b.fit.memory_budget_gib, b.score.memory_budget_gib, b.extract.threads), (2.0, 0.5, 1));
        let inputs = digests();
        assert_eq!(a.extract_hash(&inputs), b.extract_hash(&inputs), "threads, device, batches, skip-bad, encoding");
        assert_eq!(a.fit_hash(&inputs), b.fit_hash(&inputs), "a refusal threshold and a batch size only");
        assert_eq!(a.score_hash(&inputs), b.score_hash(&inputs), "scheduling only");
        assert_ne!(a.hash(), b.hash(), "the resolved job still records them");
        let mut e = a.clone();
        e.fit.epsilon = 0.02;
        assert_ne!(a.fit_hash(&inputs), e.fit_hash(&inputs));
        let mut c = a.clone();
        c.score.sigma = 2.0;
        assert_ne!(a.score_hash(&inputs), c.score_hash(&inputs));
        let mut p = a.clone();
        p.preprocess.resize = [300, 300];
        assert_ne!(a.extract_hash(&inputs), p.extract_hash(&inputs));
        // Rounding to f16 changes the values; f32 adds nothing to the identity of the runs made before.
        let mut f = a.clone();
        assert_eq!(f.extract.dtype, ValueType::F16);
        f.extract.dtype = ValueType::F32;
        assert_ne!(a.extract_hash(&inputs), f.extract_hash(&inputs));
        let bad = write_job(dir.path(), &format!("{MINIMAL}\n[score]\nmemory-budget-gib = 0\n"));
        let message = Job::load(&bad).unwrap_err().to_string();
        assert!(message.contains("score.memory-budget-gib") && message.contains("positive"), "{message}");
    }

    #[test]
    fn stage_identities_cover_content_not_paths() {
        // The same job file in two folders, each with its own data and weights paths.
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::create_dir(one.path().join("data")).unwrap();
        std::fs::create_dir(two.path().join("data")).unwrap();
        let a = Job::load(&write_job(one.path(), MINIMAL)).unwrap();
        let b = Job::load(&write_job(two.path(), MINIMAL)).unwrap();
        assert_ne!(a.backbone.weights, b.backbone.weights);
        assert_ne!(a.output, b.output);
        let inputs = digests();
        assert_eq!(a.split_hash(), b.split_hash());
        assert_eq!(a.extract_hash(&inputs), b.extract_hash(&inputs));
        assert_eq!(a.report_hash(&inputs), b.report_hash(&inputs));
        // Other images or other weights are another identity, all the way down.
        let other_images = InputDigests { images: "3".repeat(64), ..digests() };
        let other_weights = InputDigests { weights: "4".repeat(64), ..digests() };
        assert_ne!(a.extract_hash(&inputs), a.extract_hash(&other_images));
        assert_ne!(a.report_hash(&inputs), a.report_hash(&other_weights));
        // Which labels are taken is part of the split's identity.
        let labelled = write_job(one.path(), &MINIMAL.replace("normal =", "labels = [\"good\"]\nnormal ="));
        assert_ne!(a.split_hash(), Job::load(&labelled).unwrap().split_hash());
    }
}
