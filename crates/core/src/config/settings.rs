//! The settings of a job, per section, as the stages read them (most are also the TOML sections'
//! own types), and the resolved dataset and backbone.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

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
    /// EfficientNet-Lite1: Lite0 1.1x deeper (native input 240): 24 + 40 + 112 = 176 channels.
    EfficientnetLite1,
    /// EfficientNet-Lite2: 1.1x wider, 1.2x deeper (native input 260): 24 + 48 + 120 = 192 channels.
    EfficientnetLite2,
}

impl BackboneKind {
    pub fn name(self) -> &'static str {
        match self {
            BackboneKind::Resnet18 => "resnet18",
            BackboneKind::WideResnet50_2 => "wide-resnet50-2",
            BackboneKind::EfficientnetLite0 => "efficientnet-lite0",
            BackboneKind::EfficientnetLite1 => "efficientnet-lite1",
            BackboneKind::EfficientnetLite2 => "efficientnet-lite2",
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

/// Device for the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceChoice {
    /// CUDA when available, else CPU.
    Auto,
    Cpu,
    Cuda,
}

/// A device name that is not `auto`, `cpu` or `cuda`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown device `{0}`: use auto, cpu or cuda")]
pub struct UnknownDevice(pub String);

impl std::str::FromStr for DeviceChoice {
    type Err = UnknownDevice;
    fn from_str(text: &str) -> Result<Self, UnknownDevice> {
        match text {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            other => Err(UnknownDevice(other.to_string())),
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
    /// This subset's covariance estimator; default `fit.covariance`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covariance: Option<CovarianceEstimator>,
    /// Positions whose covariances are pooled (see [`CovariancePool`]); default each position its
    /// own, as the recipe (and then left out of the identity).
    #[serde(default, skip_serializing_if = "CovariancePool::is_none")]
    pub pool: CovariancePool,
}

/// Which grid positions share their covariance. Each position keeps its own mean; its covariance is
/// the pooled within-position covariance of the positions within `radius` cells of it (a square
/// window, cut at the grid's edges), or of every position: the sum of their co-moment matrices
/// divided by `cells x (N - 1)` (OAS counts `cells x N` samples). For textures whose look does not
/// depend on the position (unaligned tiles): the covariance is estimated from many more samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CovariancePool {
    /// Each position its own covariance (the recipe; `pool = 0`).
    #[default]
    None,
    /// The positions within this many cells (`pool = 2`: a 5x5 window).
    Radius(u32),
    /// Every position (`pool = "all"`).
    All,
}

impl CovariancePool {
    pub fn is_none(&self) -> bool {
        *self == CovariancePool::None
    }

    /// The suffix of a sweep experiment's name: empty, `-p2`, `-pall`.
    pub fn suffix(&self) -> String {
        match self {
            CovariancePool::None => String::new(),
            CovariancePool::Radius(r) => format!("-p{r}"),
            CovariancePool::All => "-pall".into(),
        }
    }
}

impl Serialize for CovariancePool {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            CovariancePool::None => serializer.serialize_u32(0),
            CovariancePool::Radius(r) => serializer.serialize_u32(*r),
            CovariancePool::All => serializer.serialize_str("all"),
        }
    }
}

impl<'de> Deserialize<'de> for CovariancePool {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Radius(u32),
            Word(String),
        }
        match Raw::deserialize(deserializer)
            .map_err(|_| serde::de::Error::custom("pool: a radius in grid cells (0, 1, 2, ...) or \"all\""))?
        {
            Raw::Radius(0) => Ok(CovariancePool::None),
            Raw::Radius(r) => Ok(CovariancePool::Radius(r)),
            Raw::Word(word) if word == "all" => Ok(CovariancePool::All),
            Raw::Word(word) => Err(serde::de::Error::custom(format!(
                "pool `{word}`: a radius in grid cells (0, 1, 2, ...) or \"all\""
            ))),
        }
    }
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

/// A `[sweep]` that names no valid set of experiments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SweepError {
    #[error("covariances: `{0}` is listed twice")]
    EstimatorTwice(&'static str),
    #[error("pools: `{0}` is listed twice")]
    PoolTwice(String),
    #[error("layers `{0}`: use 1, 2 and 3 joined by +, e.g. \"1+2+3\"")]
    Layers(String),
    #[error("counts must be positive")]
    ZeroCount,
    #[error("names no experiment (empty `counts`, `seeds` or `layers`)")]
    NoExperiment,
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
    /// Covariance estimators, e.g. `["sample", "oas", "nearest"]`; default `fit.covariance` alone. Experiments
    /// of an estimator other than `sample` have its name as a suffix (`all-l23-oas`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub covariances: Vec<CovarianceEstimator>,
    /// Covariance pools of the Gaussian experiments (see [`CovariancePool`]), e.g. `[0, 2, "all"]`;
    /// default each position its own. Experiments with a pool have it as a suffix (`all-l23-p2`,
    /// `all-l23-pall`); nearest-patch experiments have no covariance and are made once, unpooled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<CovariancePool>,
    /// Backbones: each runs every experiment on its own extraction, as a run of its own under
    /// `<output>/backbones/<name>/` (see [`crate::Job::variants`]); the report compares them all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backbones: Vec<SweepBackbone>,
}

/// A backbone of a sweep, with the input size it runs at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SweepBackbone {
    pub name: BackboneKind,
    /// The weights (relative to the job file, or a URL; absolute once resolved).
    pub weights: PathBuf,
    pub sha256: Option<String>,
    /// Default: the job's `backbone.tap`.
    pub tap: Option<Tap>,
    /// Default: the job's `preprocess.resize` and `preprocess.crop`.
    pub resize: Option<[u32; 2]>,
    pub crop: Option<[u32; 2]>,
}

pub(super) fn default_seeds() -> Vec<u64> {
    vec![0]
}

pub(super) fn default_layers() -> Vec<String> {
    vec!["1+2+3".into()]
}

impl SweepSettings {
    /// The experiments, as subsets with stable names derived from their parameters:
    /// `c050-s0-l123` (50 channels, seed 0, layers 1+2+3), `all-l23`, with a covariance estimator
    /// other than the sample covariance its name as a suffix (`all-l23-oas`), then the pool's
    /// (`all-l23-oas-pall`).
    pub fn experiments(&self) -> Result<Vec<SubsetSpec>, SweepError> {
        let mut out = Vec::new();
        let estimators: Vec<Option<CovarianceEstimator>> =
            if self.covariances.is_empty() { vec![None] } else { self.covariances.iter().copied().map(Some).collect() };
        for (i, estimator) in estimators.iter().enumerate() {
            if estimators[..i].contains(estimator) {
                return Err(SweepError::EstimatorTwice(estimator.unwrap_or_default().name()));
            }
        }
        let pools = if self.pools.is_empty() { vec![CovariancePool::None] } else { self.pools.clone() };
        for (i, pool) in pools.iter().enumerate() {
            if pools[..i].contains(pool) {
                return Err(SweepError::PoolTwice(serde_json::to_string(pool).unwrap_or_default()));
            }
        }
        for combination in &self.layers {
            let mut layers = Vec::new();
            for part in combination.split('+') {
                match part.trim().parse::<usize>() {
                    Ok(layer @ 1..=3) if !layers.contains(&layer) => layers.push(layer),
                    _ => return Err(SweepError::Layers(combination.clone())),
                }
            }
            layers.sort_unstable();
            let tag: String = layers.iter().map(|l| l.to_string()).collect();
            for count in &self.counts {
                let mut base = Vec::new();
                match count {
                    SweepCount::All(_) => base.push((format!("all-l{tag}"), None, 0, true)),
                    SweepCount::Count(0) => return Err(SweepError::ZeroCount),
                    SweepCount::Count(n) => {
                        for &seed in &self.seeds {
                            base.push((format!("c{n:03}-s{seed}-l{tag}"), Some(*n), seed, false));
                        }
                    }
                }
                for &estimator in &estimators {
                    let suffix = match estimator {
                        Some(e) if !e.is_sample() => format!("-{}", e.name()),
                        _ => String::new(),
                    };
                    // A nearest-patch model has no covariance to pool.
                    let nearest = estimator.is_some_and(|e| e.is_nearest());
                    let pools = if nearest { &[CovariancePool::None][..] } else { &pools[..] };
                    for &pool in pools {
                        for (name, count, seed, all) in &base {
                            out.push(SubsetSpec {
                                name: format!("{name}{suffix}{}", pool.suffix()),
                                count: *count,
                                seed: *seed,
                                channels: None,
                                all: *all,
                                layers: Some(layers.clone()),
                                covariance: estimator,
                                pool,
                            });
                        }
                    }
                }
            }
        }
        if out.is_empty() {
            return Err(SweepError::NoExperiment);
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
    /// How each patch's covariance is estimated from the streamed statistics (or `nearest`: no
    /// Gaussian, the nearest training patch; see [`CovarianceEstimator`]) (`sample`, the
    /// recipe's, is left out of the identity so that runs made before the choice keep theirs).
    #[serde(skip_serializing_if = "CovarianceEstimator::is_sample")]
    pub covariance: CovarianceEstimator,
}

/// The covariance estimator of the fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CovarianceEstimator {
    /// The unbiased sample covariance (divided by N - 1), as the recipe.
    #[default]
    Sample,
    /// Oracle Approximating Shrinkage (Chen et al., 2010, as scikit-learn's `OAS`): the maximum
    /// likelihood covariance S (divided by N) shrunk toward a scaled identity, `(1 - rho) S + rho mu I`
    /// with `mu = tr(S) / p`, `rho` from S alone (so it merges across shards exactly), per patch.
    Oas,
    /// No Gaussian: the model keeps every training image's embedding at every position (each the
    /// mean of its 3x3 grid neighbourhood), and a patch scores its Euclidean distance to the nearest
    /// of them at its position. For textures that look several ways at one position (docs/results.md,
    /// magnetic tile); the model grows with the training images (`n_patches x n_train x k` f32).
    Nearest,
}

impl CovarianceEstimator {
    pub fn is_sample(&self) -> bool {
        *self == CovarianceEstimator::Sample
    }

    /// Whether the model is the nearest training patch rather than a Gaussian.
    pub fn is_nearest(&self) -> bool {
        *self == CovarianceEstimator::Nearest
    }

    pub fn name(self) -> &'static str {
        match self {
            CovarianceEstimator::Sample => "sample",
            CovarianceEstimator::Oas => "oas",
            CovarianceEstimator::Nearest => "nearest",
        }
    }
}

impl FitSettings {
    /// The covariance estimator of `subset`: its own, else `covariance`.
    pub fn covariance_of(&self, subset: &SubsetSpec) -> CovarianceEstimator {
        subset.covariance.unwrap_or(self.covariance)
    }
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
                covariance: None,
                pool: CovariancePool::None,
            }],
            train_labels: Vec::new(),
            train_split: None,
            batch_images: 32,
            memory_budget_gib: 8.0,
            covariance: CovarianceEstimator::Sample,
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
    /// The `top` image score: the mean of this fraction of the smoothed map's highest values
    /// (at least one value).
    pub top_fraction: f64,
    /// The precision of the Mahalanobis distances: `f32` (the default: twice the arithmetic speed,
    /// scores within about 1e-6 of f64, see docs/benchmarks.md) or `f64`. Part of the score's
    /// identity: it shapes the values.
    pub precision: ComputePrecision,
}

/// The floating-point precision of a computation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ComputePrecision {
    #[default]
    F32,
    F64,
}

impl Default for ScoreSettings {
    fn default() -> Self {
        ScoreSettings {
            sigma: 4.0,
            kernel_size: 33,
            batch_images: 128,
            memory_budget_gib: 8.0,
            top_fraction: 0.01,
            precision: ComputePrecision::F32,
        }
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

/// A split of the protocol: train (the fit), calibration (every choice), test (the outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SplitName {
    Train,
    Calibration,
    Test,
}

impl SplitName {
    /// Every split, in [`SPLITS`] order.
    pub const ALL: [SplitName; 3] = [SplitName::Train, SplitName::Calibration, SplitName::Test];

    /// The split's name as manifests and tables spell it.
    pub fn name(self) -> &'static str {
        match self {
            SplitName::Train => SPLITS[0],
            SplitName::Calibration => SPLITS[1],
            SplitName::Test => SPLITS[2],
        }
    }

    /// The split named `name`; `None` for any other text (a manifest's own split names).
    pub fn from_name(name: &str) -> Option<SplitName> {
        SplitName::ALL.into_iter().find(|s| s.name() == name)
    }
}

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
    /// Images that must stay in one split (the views of one part, the crops of one photograph).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<SplitGroups>,
}

/// `split.groups`: a CSV file with the header `path,group` that gives every image of the dataset
/// (by its path relative to the dataset's base, as `split/manifest.csv` writes it) the group it
/// belongs to; the split never divides a group. The job names the file (relative to the job file);
/// loading the job reads it. Its identity is its content: it serialises as its SHA-256 alone, so
/// that a moved file changes nothing and an edited one changes the split.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SplitGroups {
    /// The file, resolved against the job file.
    pub path: PathBuf,
    /// SHA-256 of its bytes (empty until the job is resolved).
    pub sha256: String,
    /// The group of each image, by relative path.
    pub of: BTreeMap<String, String>,
}

impl Serialize for SplitGroups {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("sha256", &self.sha256)?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for SplitGroups {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let path = PathBuf::deserialize(deserializer)?;
        Ok(SplitGroups { path, ..SplitGroups::default() })
    }
}

impl SplitGroups {
    /// Parses `bytes`, the file at `path`: one line `path,group` per image after the header. Errors
    /// name the file and the line.
    pub fn read(path: PathBuf, bytes: &[u8]) -> Result<SplitGroups, GroupsError> {
        let error = |line: Option<usize>, problem: String| GroupsError { path: path.clone(), line, problem };
        let mut reader = csv::Reader::from_reader(bytes);
        let header = reader.headers().map_err(|e| error(None, e.to_string()))?;
        if header.iter().collect::<Vec<_>>() != ["path", "group"] {
            return Err(error(None, "the header must be `path,group` (one line per image after it)".into()));
        }
        let mut of = BTreeMap::new();
        for (index, record) in reader.records().enumerate() {
            let line = Some(index + 2);
            let record = record.map_err(|e| error(line, e.to_string()))?;
            let (image, group) = (record.get(0).unwrap_or(""), record.get(1).unwrap_or(""));
            if image.is_empty() || group.is_empty() {
                return Err(error(line, "give an image path and a group name".into()));
            }
            if of.insert(image.to_string(), group.to_string()).is_some() {
                return Err(error(line, format!("{image} is named twice; an image has one group")));
            }
        }
        if of.is_empty() {
            return Err(error(None, "names no image".into()));
        }
        Ok(SplitGroups { path, sha256: crate::hash::sha256_hex(bytes), of })
    }
}

/// A `split.groups` file that does not read: the file, the line (if one) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {problem}", path.display(), line.map(|l| format!(", line {l}")).unwrap_or_default())]
pub struct GroupsError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub problem: String,
}

impl SplitSettings {
    /// Each split's name and amounts, in [`SPLITS`] order.
    pub fn parts(&self) -> [(&'static str, &BTreeMap<String, SplitAmount>); 3] {
        [("train", &self.train), ("calibration", &self.calibration), ("test", &self.test)]
    }
}

/// An image score: a statistic of the smoothed anomaly map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScoreKind {
    /// The mean of the smoothed map (the recipe's choice).
    Mean,
    /// Its maximum.
    Max,
    /// The mean of its highest `score.top-fraction` of values.
    Top,
}

impl ScoreKind {
    /// Every image score, the recipe's first.
    pub const ALL: [ScoreKind; 3] = [ScoreKind::Mean, ScoreKind::Max, ScoreKind::Top];

    pub fn name(self) -> &'static str {
        match self {
            ScoreKind::Mean => "mean",
            ScoreKind::Max => "max",
            ScoreKind::Top => "top",
        }
    }

    /// The score named `name` (as [`name`](Self::name) spells it).
    pub fn from_name(name: &str) -> Option<ScoreKind> {
        ScoreKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Which image score classifies: one, or the one the calibration split picks per model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScoreRule {
    Mean,
    Max,
    Top,
    /// Per model, the recipe's `mean` unless `max` or `top` has a clearly higher calibration AUROC
    /// (the bootstrap interval of the difference lies above zero).
    Auto,
}

impl ScoreRule {
    pub fn name(self) -> &'static str {
        match self {
            ScoreRule::Auto => "auto",
            ScoreRule::Mean => "mean",
            ScoreRule::Max => "max",
            ScoreRule::Top => "top",
        }
    }

    /// The fixed score of this rule; `None` for `auto`.
    pub fn fixed(self) -> Option<ScoreKind> {
        match self {
            ScoreRule::Mean => Some(ScoreKind::Mean),
            ScoreRule::Max => Some(ScoreKind::Max),
            ScoreRule::Top => Some(ScoreKind::Top),
            ScoreRule::Auto => None,
        }
    }
}

/// The name `report.model` takes for the model with the best calibration AUROC (also its default).
pub const BEST_MODEL: &str = "best";

/// How the calibration set chooses the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ThresholdRule {
    /// Maximises Youden's J = TPR - FPR (the recipe's choice): the lowest score of the best point.
    Youden,
    /// The middle of the range of thresholds with the best Youden's J.
    YoudenMidpoint,
    /// Maximises Youden's J of the smoothed ROC: each class's log scores as a Gaussian kernel
    /// density (the best mean and 10th-percentile test accuracy over 20 replicates).
    Kde,
    /// The middle of the range of thresholds where the larger of FPR and FNR is smallest.
    Eer,
    /// Maximises F1.
    MaxF1,
    /// The lowest threshold whose false-positive rate is at most `report.target-rate`.
    Fpr,
    /// The highest threshold whose false-negative rate is at most `report.target-rate`.
    Fnr,
}

impl ThresholdRule {
    /// The name a job file uses.
    pub fn name(self) -> &'static str {
        match self {
            ThresholdRule::Youden => "youden",
            ThresholdRule::YoudenMidpoint => "youden-midpoint",
            ThresholdRule::Kde => "kde",
            ThresholdRule::Eer => "eer",
            ThresholdRule::MaxF1 => "max-f1",
            ThresholdRule::Fpr => "fpr",
            ThresholdRule::Fnr => "fnr",
        }
    }
}

/// Settings of the `report` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct ReportSettings {
    /// The image score that classifies.
    pub score: ScoreRule,
    /// How the calibration set picks the threshold.
    pub threshold: ThresholdRule,
    /// With `threshold = "fpr"` or `"fnr"`: the rate to stay within.
    pub target_rate: f64,
    /// The model (subset name) of the pictures and of the headline numbers; default (and
    /// `"best"`) the one with the highest calibration AUROC.
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
            score: ScoreRule::Mean,
            threshold: ThresholdRule::Kde,
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
