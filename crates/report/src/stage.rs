//! The report stage: from the score tables to calibrated thresholds, test metrics, pictures, tables
//! and one HTML page, under `<run>/report/`.
//!
//! Calibration never looks at the test set: the normalisation (the calibration maps' min and max),
//! the threshold and the heatmap display range all come from the calibration split.

use crate::metrics::{Confusion, MetricError, Roc, average_precision, label_regions, pro_auc};
use crate::pictures::{self, PictureError, Tile};
use padim_core::config::{Job, ScoreKind, ThresholdRule};
use padim_core::{Progress, Shard};
use padim_image::Preprocessor;
use padim_store::{DoneMarker, Store, StoreError, read_maps};
use polars::prelude::*;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Cursor;
use std::path::{Path, PathBuf};

impl ReportError {
    /// Whether a rerun later may succeed (a storage failure), see [`StoreError::is_transient`].
    pub fn is_transient(&self) -> bool {
        match self {
            ReportError::Store(e) => e.is_transient(),
            ReportError::Extract(e) => e.is_transient(),
            _ => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The job's extract shards are missing, incomplete or of another identity.
    #[error(transparent)]
    Extract(#[from] padim_fit::FitError),
    #[error("{url} is stale: {input} was redone after it was made (a forced rerun); run `padim score JOB` first")]
    Stale { url: String, input: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{source}")]
    Metric { what: String, source: MetricError },
    #[error(transparent)]
    Picture(#[from] PictureError),
    #[error("table {what}: {message}")]
    Table { what: String, message: String },
    #[error(
        "score is not finished under {url}: shard(s) {missing} of {count} have no done marker for this configuration \
         (nor `--models` parts that cover every model once); run `padim score JOB`"
    )]
    MissingScores { url: String, missing: String, count: u32 },
    #[error(
        "the report needs a calibration and a test split, but the scores of {url} have {found}: give the job a \
         [split] section (the recipe: train = {{ Negative = 250 }}, calibration = {{ Negative = 100, Positive = 100 }}, \
         test = {{ Negative = 1000, Positive = 1000 }})"
    )]
    NoSplits { url: String, found: String },
    #[error("{path}: {message}")]
    Image { path: PathBuf, message: String },
    #[error("{url} was made by another configuration; use --force to redo it")]
    ConfigMismatch { url: String },
}

fn table_error(what: &str) -> impl Fn(PolarsError) -> ReportError + '_ {
    move |e| ReportError::Table { what: what.to_string(), message: e.to_string() }
}

/// The score of one image under one model, with where the image is.
#[derive(Debug, Clone)]
struct Scored {
    image: u32,
    path: String,
    label: String,
    split: String,
    mean: f64,
    max: f64,
    min: f64,
}

impl Scored {
    fn score(&self, kind: ScoreKind) -> f64 {
        match kind {
            ScoreKind::Mean => self.mean,
            ScoreKind::Max => self.max,
        }
    }
}

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
    pub score: String,
    /// The calibration maps' minimum and maximum: scores are normalised as (s - min) / (max - min).
    pub normalisation: [f64; 2],
    pub threshold_rule: ThresholdRule,
    /// In normalised units.
    pub threshold: f64,
    pub calibration: SetMetrics,
    pub test: SetMetrics,
}

/// Pixel-level metrics of the headline model on the test images that have masks.
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

/// The image tables of the extract shards, in shard order: read once for what the report left out
/// and for the run manifest.
fn image_rows(store: &Store, shards: &[ScoreShard]) -> Result<Vec<padim_store::ImageRow>, ReportError> {
    let mut rows = Vec::new();
    for shard in shards {
        rows.extend(padim_store::read_image_table(store, &format!("extract/images-{}.parquet", shard.shard.tag()))?);
    }
    Ok(rows)
}

/// The images the extract shards skipped.
fn left_out(image_rows: &[padim_store::ImageRow]) -> LeftOut {
    let mut out = LeftOut::default();
    for row in image_rows.iter().filter(|row| row.status == padim_store::ImageStatus::Skipped) {
        let split = row.split.clone().unwrap_or_else(|| "all".into());
        *out.skipped.entry(format!("{split}/{}", row.label)).or_default() += 1;
        out.skipped_files.push(SkippedFile {
            path: row.path.clone(),
            split,
            label: row.label.clone(),
            reason: row.error.clone().unwrap_or_default(),
        });
    }
    out
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
    pub headline_model: String,
    pub headline_score: String,
    pub display_range: [f64; 2],
    pub models: Vec<ModelMetrics>,
    /// Model and score combinations (other than the headline) that cannot be calibrated, and why.
    pub unusable: Vec<Unusable>,
    pub pixel: Option<PixelMetrics>,
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
}

const DONE_KEY: &str = "report/done.json";
/// The sweep's decision table: per experiment from the evaluated models, model sizes and score
/// times, pixel AUROC where masks exist; aggregated with polars; written as `report/sweep.*` and
/// `report/sweep-groups.*`.
fn sweep_table(
    store: &Store,
    job: &Job,
    shards: &[ScoreShard],
    by_model: &BTreeMap<String, Vec<Scored>>,
    summary: &ReportSummary,
    progress: &dyn Progress,
) -> Result<(crate::sweep::SweepSummary, Vec<String>), ReportError> {
    use crate::sweep::{Experiment, SweepSummary, best, experiments_frame, groups, groups_frame};
    let Some(sweep) = &job.sweep else {
        return Err(ReportError::Table { what: "sweep".into(), message: "no [sweep]".into() });
    };
    let specs = sweep.experiments().map_err(|message| ReportError::Table { what: "sweep".into(), message })?;
    let mut micros: BTreeMap<String, u64> = BTreeMap::new();
    for marker in shards.iter().flat_map(|s| &s.markers) {
        for (name, value) in &marker.counts {
            if let Some(model) = name.strip_prefix(padim_score::stage::MICROS_PREFIX) {
                *micros.entry(model.to_string()).or_default() += value;
            }
        }
    }
    let kind = job.report.score.name();
    let metrics_of = |model: &str, score: &str| summary.models.iter().find(|m| m.model == model && m.score == score);
    // The test maps of every experiment, read in one pass over the maps files (for pixel AUROC).
    let mut maps = match &job.dataset.mask {
        Some(_) => {
            let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            let ids: BTreeSet<u32> =
                by_model.values().flatten().filter(|r| r.split == "test").map(|r| r.image).collect();
            load_maps(store, shards, &names, &ids)?
        }
        None => HashMap::new(),
    };
    let mut experiments = Vec::new();
    for spec in &specs {
        let key = format!("fit/model-{}.safetensors", spec.name);
        let (channels, model_bytes) = stored_model_channels(store, &key)?;
        let pixel_auroc = match (&job.dataset.mask, by_model.get(&spec.name)) {
            (Some(_), Some(rows)) => {
                let tests: Vec<&Scored> = rows.iter().filter(|r| r.split == "test").collect();
                let maps = maps.remove(&spec.name).unwrap_or_default();
                Some(pixel_metrics(job, &maps, &spec.name, &tests, false, progress)?.auroc)
            }
            _ => None,
        };
        let headline = metrics_of(&spec.name, kind);
        let layers = spec.layers.as_ref().map(|l| l.iter().map(|l| l.to_string()).collect::<Vec<_>>().join("+"));
        experiments.push(Experiment {
            id: spec.name.clone(),
            layers: layers.unwrap_or_else(|| "1+2+3".into()),
            count: spec.count,
            channels,
            seed: spec.count.map(|_| spec.seed),
            calibration_auroc: headline.map(|m| m.calibration.auroc),
            test_auroc: headline.map(|m| m.test.auroc),
            test_auroc_mean_score: metrics_of(&spec.name, "mean").map(|m| m.test.auroc),
            test_auroc_max_score: metrics_of(&spec.name, "max").map(|m| m.test.auroc),
            accuracy: headline.map(|m| m.test.accuracy),
            f1: headline.map(|m| m.test.f1),
            pixel_auroc,
            model_bytes,
            score_cpu_seconds: micros.get(&spec.name).copied().unwrap_or(0) as f64 / 1e6,
        });
    }
    let table = table_error("sweep");
    let mut frame = experiments_frame(&experiments).map_err(&table)?;
    let mut grouped = groups_frame(&frame).map_err(&table)?;
    let groups = groups(&grouped).map_err(&table)?;
    let mut keys = put_table(store, "sweep", &mut frame)?;
    keys.extend(put_table(store, "sweep-groups", &mut grouped)?);
    let best = best(&experiments);
    Ok((SweepSummary { experiments, groups, best }, keys))
}

/// The deployable bundle of the headline model (`padim predict --model`).
pub const BUNDLE_KEY: &str = "report/bundle.safetensors";

/// The bundle of the headline model: its matrices as fitted, with the calibration of this report.
fn bundle(store: &Store, job: &Job, headline: &ModelMetrics, summary: &ReportSummary) -> Result<Vec<u8>, ReportError> {
    use padim_fit::bundle::{BundleInfo, MatrixType, encode_bundle};
    let key = format!("fit/model-{}.safetensors", headline.model);
    let bytes =
        store.get(&key)?.ok_or_else(|| ReportError::Table { what: store.url_of(&key), message: "missing".into() })?;
    let bad = |e: padim_fit::model::ModelError| ReportError::Table { what: store.url_of(&key), message: e.to_string() };
    let model = padim_fit::model::decode_model(&bytes).map_err(bad)?;
    let info = BundleInfo {
        format_version: BundleInfo::FORMAT_VERSION,
        job: job.name.clone(),
        model: model.info.clone(),
        weights_location: job.backbone.weights.display().to_string(),
        preprocess: job.preprocess.clone(),
        score_settings: job.score.clone(),
        score: job.report.score,
        normalisation: headline.normalisation,
        threshold_rule: headline.threshold_rule,
        target_rate: job.report.target_rate,
        threshold: headline.threshold,
        display_range: summary.display_range,
        matrices: if job.report.bundle_f16 { MatrixType::F16 } else { MatrixType::F32 },
        embedding_values: job.extract.dtype,
    };
    encode_bundle(&model, &info).map_err(bad)
}

/// Runs the report stage.
pub fn run_report(job: &Job, force: bool, progress: &dyn Progress) -> Result<ReportSummary, ReportError> {
    let span = tracing::info_span!("report", job = %job.name);
    let _entered = span.enter();
    let store = Store::open(&job.output)?;
    let inputs = padim_store::identity::input_digests(job, &store)?;
    let hash = job.report_hash(&inputs);
    if let Some(marker) = DoneMarker::read(&store, DONE_KEY)? {
        let stale = if marker.config_hash == hash && !force { marker.stale_input(&store)? } else { None };
        if let Some(input) = &stale {
            tracing::warn!(
                "{} is stale: {} was redone after it was made (a forced rerun); redoing the report",
                store.url_of(DONE_KEY),
                store.url_of(input)
            );
        } else if marker.config_hash == hash && !force {
            let bytes = store.get("report/metrics.json")?.unwrap_or_default();
            if let Ok(mut summary) = serde_json::from_slice::<ReportSummary>(&bytes) {
                summary.already_done = true;
                return Ok(summary);
            }
        } else if marker.config_hash != hash && !force {
            return Err(ReportError::ConfigMismatch { url: store.url_of(DONE_KEY) });
        }
        store.delete(DONE_KEY)?;
    }
    let shards = score_shards(&store, &job.extract_hash(&inputs), &job.score_hash(&inputs))?;
    let scores = load_scores(&store, &shards)?;
    let by_model = group_by_model(&scores)?;
    let splits: BTreeSet<&str> = by_model.values().flatten().map(|s| s.split.as_str()).collect();
    if !(splits.contains("calibration") && splits.contains("test")) {
        return Err(ReportError::NoSplits {
            url: store.url_of("score"),
            found: if splits.iter().all(|s| s.is_empty()) { "no splits".into() } else { format!("splits {splits:?}") },
        });
    }
    let normal = &job.dataset.normal;
    let headline_model = job.report.model.clone().unwrap_or_else(|| job.fit.subsets[0].name.clone());

    if !by_model.contains_key(&headline_model) {
        return Err(ReportError::Table {
            what: store.url_of("score"),
            message: format!("no scores of model `{headline_model}` (report.model); run fit and score again"),
        });
    }
    // The headline model and score must calibrate; the others are reported as unusable if they cannot.
    let mut models = Vec::new();
    let mut unusable = Vec::new();
    for (model, rows) in &by_model {
        for kind in [ScoreKind::Mean, ScoreKind::Max] {
            match evaluate(model, rows, kind, job, normal) {
                Ok(metrics) => models.push(metrics),
                Err(error) if !(model == &headline_model && kind == job.report.score) => {
                    tracing::warn!(%error, "cannot calibrate");
                    unusable.push(Unusable {
                        model: model.clone(),
                        score: kind.name().into(),
                        reason: error.to_string(),
                    });
                }
                Err(error) => return Err(error),
            }
        }
    }
    let headline =
        models.iter().find(|m| m.model == headline_model && m.score == job.report.score.name()).cloned().ok_or_else(
            || ReportError::Table { what: "scores".into(), message: format!("no model `{headline_model}`") },
        )?;
    let rows = &by_model[&headline_model];
    let calibration: Vec<&Scored> = rows.iter().filter(|r| r.split == "calibration").collect();
    let display_max = percentile(calibration.iter().map(|r| r.max).collect(), job.report.display_percentile);

    // Maps of the headline model for the pictures and pixel metrics (resized and smoothed as in score).
    let tests: Vec<&Scored> = rows.iter().filter(|r| r.split == "test").collect();
    let test_ids: BTreeSet<u32> = tests.iter().map(|r| r.image).collect();
    let maps = load_maps(&store, &shards, &[&headline_model], &test_ids)?.remove(&headline_model).unwrap_or_default();
    let pixel = if job.dataset.mask.is_some() {
        Some(pixel_metrics(job, &maps, &headline_model, &tests, true, progress)?)
    } else {
        None
    };

    let image_rows = image_rows(&store, &shards)?;
    let mut summary = ReportSummary {
        job: job.name.clone(),
        config_hash: hash.clone(),
        headline_model: headline_model.clone(),
        headline_score: job.report.score.name().to_string(),
        display_range: [0.0, display_max],
        models,
        unusable,
        pixel,
        left_out: left_out(&image_rows),
        sweep: None,
        already_done: false,
    };
    let mut files = write_tables(&store, &by_model, &summary, job)?;
    if job.sweep.is_some() {
        let (sweep, keys) = sweep_table(&store, job, &shards, &by_model, &summary, progress)?;
        summary.sweep = Some(sweep);
        files.extend(keys);
    }
    files.extend(write_pictures(&store, job, &maps, &headline, rows, display_max, &summary, progress)?);
    store.put("report/metrics.json", serde_json::to_vec_pretty(&summary).unwrap_or_default())?;
    store.put("report/run-manifest.json", run_manifest(job, &inputs, &image_rows))?;
    store.put(BUNDLE_KEY, bundle(&store, job, &headline, &summary)?)?;
    files.extend(["report/metrics.json".to_string(), "report/run-manifest.json".to_string(), BUNDLE_KEY.to_string()]);
    DoneMarker {
        stage: "report".into(),
        shard: Shard::ALL.to_string(),
        config_hash: hash,
        digest: None,
        files,
        counts: BTreeMap::from([("images".to_string(), rows.len() as u64)]),
        run_id: DoneMarker::new_run_id(),
        made_from: DoneMarker::current_ids(&store, &shards.iter().flat_map(|s| s.keys.clone()).collect::<Vec<_>>())?,
    }
    .publish(&store, DONE_KEY)?;
    Ok(summary)
}

/// One extract shard's score outputs: its whole-model done marker, or the markers of `--models`
/// parts that together cover every model once.
struct ScoreShard {
    shard: Shard,
    markers: Vec<DoneMarker>,
    /// The keys of `markers`.
    keys: Vec<String>,
}

impl ScoreShard {
    /// The files of its markers whose keys start with `prefix` (`score/scores-`, `score/maps-`).
    fn files<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.markers.iter().flat_map(|m| m.files.iter()).filter(move |f| f.starts_with(prefix))
    }

    /// Whether its outputs hold `model` (its markers count each model's time).
    fn marker_has(marker: &DoneMarker, model: &str) -> bool {
        marker.counts.contains_key(&format!("{}{model}", padim_score::stage::MICROS_PREFIX))
    }
}

/// The extract shards' score outputs; every shard must be scored with every model of this
/// configuration.
fn score_shards(store: &Store, extract_hash: &str, score_hash: &str) -> Result<Vec<ScoreShard>, ReportError> {
    let shards = padim_fit::stage::extract_shards(store, extract_hash)?;
    let count = shards.first().map_or(0, |s| s.count);
    let models: Vec<String> = DoneMarker::read(store, "fit/done.json")?
        .map(|m| m.files)
        .unwrap_or_default()
        .iter()
        .filter_map(|f| f.strip_prefix("fit/model-").and_then(|f| f.strip_suffix(".safetensors")).map(String::from))
        .collect();
    let parts: Vec<String> = store
        .list("score")?
        .into_iter()
        .filter(|k| k.starts_with("score/done-") && k.contains(padim_score::stage::MODELS_INFIX))
        .collect();
    let (mut out, mut missing) = (Vec::new(), Vec::new());
    for index in 0..count {
        let shard = Shard { index, count };
        let tag = shard.tag();
        let whole_key = format!("score/done-{tag}.json");
        let whole = DoneMarker::read(store, &whole_key)?.filter(|m| m.config_hash == score_hash);
        let markers = match whole {
            Some(marker) => Some(vec![(whole_key, marker)]),
            None => model_parts(store, &tag, score_hash, &models, &parts)?,
        };
        match markers {
            Some(markers) => {
                for (key, marker) in &markers {
                    if let Some(input) = marker.stale_input(store)? {
                        return Err(ReportError::Stale { url: store.url_of(key), input: store.url_of(&input) });
                    }
                }
                let (keys, markers) = markers.into_iter().unzip();
                out.push(ScoreShard { shard, markers, keys })
            }
            None => missing.push(index.to_string()),
        }
    }
    if count == 0 || !missing.is_empty() {
        return Err(ReportError::MissingScores {
            url: store.url_of("score"),
            missing: if count == 0 { "all".into() } else { missing.join(", ") },
            count,
        });
    }
    Ok(out)
}

/// The `--models` part markers of the extract shard `tag` (of this configuration, from one split
/// J/M) that cover `models` exactly once, if there are such.
fn model_parts(
    store: &Store,
    tag: &str,
    score_hash: &str,
    models: &[String],
    keys: &[String],
) -> Result<Option<Vec<(String, DoneMarker)>>, ReportError> {
    let prefix = format!("score/done-{tag}{}", padim_score::stage::MODELS_INFIX);
    // Per split (the part's count, the key's `-of-M` tail): its markers.
    let mut splits: BTreeMap<String, Vec<(String, DoneMarker)>> = BTreeMap::new();
    for key in keys.iter().filter(|k| k.starts_with(&prefix)) {
        let Some(marker) = DoneMarker::read(store, key)?.filter(|m| m.config_hash == score_hash) else { continue };
        let split = key.rsplit_once("-of-").map(|(_, m)| m.to_string()).unwrap_or_default();
        splits.entry(split).or_default().push((key.clone(), marker));
    }
    for markers in splits.into_values() {
        let covered: Vec<&String> = models
            .iter()
            .filter(|m| markers.iter().filter(|(_, k)| ScoreShard::marker_has(k, m)).count() == 1)
            .collect();
        let scored: usize = markers
            .iter()
            .map(|(_, k)| k.counts.keys().filter(|c| c.starts_with(padim_score::stage::MICROS_PREFIX)).count())
            .sum();
        if !models.is_empty() && covered.len() == models.len() && scored == models.len() {
            return Ok(Some(markers));
        }
    }
    Ok(None)
}

fn read_parquet(store: &Store, key: &str) -> Result<DataFrame, ReportError> {
    let bytes =
        store.get(key)?.ok_or_else(|| ReportError::Table { what: store.url_of(key), message: "missing".into() })?;
    ParquetReader::new(Cursor::new(bytes.to_vec())).finish().map_err(table_error(&store.url_of(key)))
}

/// The scores of every shard joined with the image table's paths (polars).
fn load_scores(store: &Store, shards: &[ScoreShard]) -> Result<DataFrame, ReportError> {
    let mut scores: Option<DataFrame> = None;
    let mut images: Option<DataFrame> = None;
    for shard in shards {
        let tag = shard.shard.tag();
        for key in shard.files("score/scores-") {
            let s = read_parquet(store, key)?;
            scores = Some(match scores {
                None => s,
                Some(all) => all.vstack(&s).map_err(table_error("scores"))?,
            });
        }
        let i = read_parquet(store, &format!("extract/images-{tag}.parquet"))?
            .select(["image", "path"])
            .map_err(table_error("image table"))?;
        images = Some(match images {
            None => i,
            Some(all) => all.vstack(&i).map_err(table_error("image table"))?,
        });
    }
    let (Some(scores), Some(images)) = (scores, images) else {
        return Err(ReportError::Table { what: "scores".into(), message: "no shards".into() });
    };
    scores
        .join(&images, ["image"], ["image"], JoinArgs::new(JoinType::Left), None)
        .and_then(|joined| joined.sort(["model", "image"], SortMultipleOptions::default()))
        .map_err(table_error("scores joined with images"))
}

fn group_by_model(df: &DataFrame) -> Result<BTreeMap<String, Vec<Scored>>, ReportError> {
    let e = table_error("scores");
    let image = df.column("image").map_err(&e)?.u32().map_err(&e)?.clone();
    let strings = |name: &str| -> Result<Vec<String>, ReportError> {
        Ok(df.column(name).map_err(&e)?.str().map_err(&e)?.iter().map(|v| v.unwrap_or_default().to_string()).collect())
    };
    // `mean` is Float64, `max` and `min` Float32 in the score tables.
    let floats = |name: &str| -> Result<Vec<f64>, ReportError> {
        let column = df.column(name).map_err(&e)?.cast(&DataType::Float64).map_err(&e)?;
        Ok(column.f64().map_err(&e)?.iter().map(|v| v.unwrap_or(f64::NAN)).collect())
    };
    let (path, label, split, model) = (strings("path")?, strings("label")?, strings("split")?, strings("model")?);
    let (mean, max, min) = (floats("mean")?, floats("max")?, floats("min")?);
    let mut out: BTreeMap<String, Vec<Scored>> = BTreeMap::new();
    for (i, id) in image.iter().enumerate() {
        out.entry(model[i].clone()).or_default().push(Scored {
            image: id.unwrap_or_default(),
            path: path[i].clone(),
            label: label[i].clone(),
            split: split[i].clone(),
            mean: mean[i],
            max: max[i],
            min: min[i],
        });
    }
    Ok(out)
}

fn set_metrics(scores: &[f64], anomalous: &[bool], threshold: f64, what: &str) -> Result<SetMetrics, ReportError> {
    let roc = Roc::new(scores, anomalous, what).map_err(|source| ReportError::Metric { what: what.into(), source })?;
    let c = Confusion::at(scores, anomalous, threshold);
    Ok(SetMetrics {
        normal: roc.negatives,
        anomalous: roc.positives,
        auroc: roc.auc(),
        aupr: average_precision(&roc),
        confusion: c,
        accuracy: c.accuracy(),
        precision: c.precision(),
        recall: c.recall(),
        specificity: c.specificity(),
        f1: c.f1(),
    })
}

/// Normalised scores and truth of one split.
fn split_scores(
    rows: &[Scored],
    split: &str,
    kind: ScoreKind,
    range: [f64; 2],
    normal: &[String],
) -> (Vec<f64>, Vec<bool>) {
    rows.iter()
        .filter(|r| r.split == split)
        .map(|r| ((r.score(kind) - range[0]) / (range[1] - range[0]), !normal.contains(&r.label)))
        .unzip()
}

fn evaluate(
    model: &str,
    rows: &[Scored],
    kind: ScoreKind,
    job: &Job,
    normal: &[String],
) -> Result<ModelMetrics, ReportError> {
    let what = format!("model {model}, {} score, calibration", kind.name());
    let calibration: Vec<&Scored> = rows.iter().filter(|r| r.split == "calibration").collect();
    let lo = calibration.iter().map(|r| r.min).fold(f64::INFINITY, f64::min);
    let hi = calibration.iter().map(|r| r.max).fold(f64::NEG_INFINITY, f64::max);
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return Err(ReportError::Metric { what: what.clone(), source: MetricError::Constant { what, value: lo } });
    }
    let range = [lo, hi];
    let (cal_scores, cal_truth) = split_scores(rows, "calibration", kind, range, normal);
    let roc = Roc::new(&cal_scores, &cal_truth, &what)
        .map_err(|source| ReportError::Metric { what: what.clone(), source })?;
    if cal_scores.iter().all(|&s| s == cal_scores[0]) {
        return Err(ReportError::Metric {
            what: what.clone(),
            source: MetricError::Constant { what: what.clone(), value: cal_scores[0] },
        });
    }
    let point = match job.report.threshold {
        ThresholdRule::Youden => roc.youden(),
        ThresholdRule::MaxF1 => roc.max_f1(),
        ThresholdRule::Fpr => roc.at_fpr(job.report.target_rate),
        ThresholdRule::Fnr => roc.at_fnr(job.report.target_rate).ok_or_else(|| ReportError::Metric {
            what: what.clone(),
            source: MetricError::Unreachable {
                what: what.clone(),
                rate: "false-negative rate",
                target: job.report.target_rate,
            },
        })?,
    };
    if point == 0 {
        // The +inf point: nothing would ever be flagged.
        let rule = match job.report.threshold {
            ThresholdRule::Youden => "the best Youden's J is 0",
            ThresholdRule::MaxF1 => "the best F1 is 0",
            ThresholdRule::Fpr | ThresholdRule::Fnr => "the target rate allows no flagged image",
        };
        return Err(ReportError::Metric { what: what.clone(), source: MetricError::NoOperatingPoint { what, rule } });
    }
    let threshold = roc.thresholds[point];
    let calibration = set_metrics(&cal_scores, &cal_truth, threshold, &what)?;
    let (test_scores, test_truth) = split_scores(rows, "test", kind, range, normal);
    let test =
        set_metrics(&test_scores, &test_truth, threshold, &format!("model {model}, {} score, test", kind.name()))?;
    Ok(ModelMetrics {
        model: model.to_string(),
        score: kind.name().to_string(),
        normalisation: range,
        threshold_rule: job.report.threshold,
        threshold,
        calibration,
        test,
    })
}

/// The `p`-th percentile (linear interpolation between order statistics, NumPy's default).
pub fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = p / 100.0 * (values.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    values[low] + (values[high] - values[low]) * (rank - low as f64)
}

/// The raw grid maps of each of `models` for the images in `wanted`, from every shard, reading each
/// maps file once for all of them.
fn load_maps(
    store: &Store,
    shards: &[ScoreShard],
    models: &[&str],
    wanted: &BTreeSet<u32>,
) -> Result<HashMap<String, HashMap<u32, Vec<f32>>>, ReportError> {
    let mut out: HashMap<String, HashMap<u32, Vec<f32>>> = HashMap::new();
    for shard in shards {
        for marker in shard.markers.iter().filter(|m| models.iter().any(|model| ScoreShard::marker_has(m, model))) {
            for key in marker.files.iter().filter(|f| f.starts_with("score/maps-")) {
                for row in read_maps(store, key)? {
                    if models.contains(&row.model.as_str()) && wanted.contains(&row.image) {
                        out.entry(row.model).or_default().insert(row.image, row.map);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The channel count (from the safetensors header) and size of a stored model.
fn stored_model_channels(store: &Store, key: &str) -> Result<(usize, u64), ReportError> {
    let error = |message: String| ReportError::Table { what: store.url_of(key), message };
    let size = store.size(key)?.ok_or_else(|| error("missing".into()))?;
    let length: [u8; 8] =
        store.get_range(key, 0..8.min(size))?.as_ref().try_into().map_err(|_| error("not a model file".into()))?;
    let end = 8u64.saturating_add(u64::from_le_bytes(length));
    if end > size {
        return Err(error("not a model file (header longer than the file)".into()));
    }
    let header = store.get_range(key, 8..end)?;
    let channels = padim_fit::model::channels_in_header(&header).map_err(|e| error(e.to_string()))?;
    Ok((channels, size))
}

/// The score stage's resizing and smoothing of grid maps to the input resolution, for this job.
fn map_filter(job: &Job) -> padim_score::MapFilter {
    let [height, width] = job.preprocess.crop.map(|v| v as usize);
    padim_score::MapFilter::new(height / 4, width / 4, height, width, job.score.sigma, job.score.kernel_size)
}

fn preprocessor(job: &Job) -> Preprocessor {
    Preprocessor::new(job.preprocess.clone(), [0.0; 3], [1.0; 3])
}

/// The image as the network saw it (resized and cropped), RGB8.
fn network_view(job: &Job, path: &Path) -> Result<Vec<u8>, ReportError> {
    let bytes =
        padim_store::read_input(path).map_err(|e| ReportError::Image { path: path.into(), message: e.to_string() })?;
    network_view_of(job, path, &bytes)
}

/// [`network_view`] of the encoded image `bytes` (`path` names it in errors).
fn network_view_of(job: &Job, path: &Path, bytes: &[u8]) -> Result<Vec<u8>, ReportError> {
    let rgb = padim_image::decode_rgb8(path, bytes, &job.preprocess)
        .map_err(|e| ReportError::Image { path: path.into(), message: e.to_string() })?;
    preprocessor(job)
        .resize_and_crop(path, rgb)
        .map_err(|e| ReportError::Image { path: path.into(), message: e.to_string() })
}

/// The mask file of an image, by the job's pattern.
fn mask_path(job: &Job, image: &Path) -> Option<PathBuf> {
    let pattern = job.dataset.mask.as_ref()?;
    let stem = image.file_stem()?.to_string_lossy();
    Some(image.with_file_name(pattern.replace("{stem}", &stem)))
}

/// The mask of an image in the network's geometry (resized and cropped like the image), thresholded
/// at > 127; `None` if the job names no masks or the image has no mask file.
fn network_mask(job: &Job, image: &Path) -> Result<Option<Vec<bool>>, ReportError> {
    let Some(path) = mask_path(job, image) else { return Ok(None) };
    let read_error = |e: padim_store::StoreError| ReportError::Image { path: path.clone(), message: e.to_string() };
    let Some(bytes) = padim_store::read_input_opt(&path).map_err(read_error)? else { return Ok(None) };
    let rgb = network_view_of(job, &path, &bytes)?;
    Ok(Some(rgb.chunks_exact(3).map(|p| p[0] > 127).collect()))
}

/// Pixel AUROC and, with `with_pro`, PRO (the costly part; the sweep table needs only the AUROC and
/// gets NaN for PRO, which it never shows).
fn pixel_metrics(
    job: &Job,
    maps: &HashMap<u32, Vec<f32>>,
    model: &str,
    tests: &[&Scored],
    with_pro: bool,
    progress: &dyn Progress,
) -> Result<PixelMetrics, ReportError> {
    let normal = &job.dataset.normal;
    progress.start("report (pixel metrics)", tests.len() as u64);
    type MapAndMask = (Vec<f32>, Vec<bool>);
    let filter = map_filter(job);
    let per_image: Result<Vec<Option<MapAndMask>>, ReportError> = tests
        .par_iter()
        .map(|row| {
            progress.advance(1);
            let path = job.dataset.resolve_path(&row.path);
            let Some(grid) = maps.get(&row.image) else { return Ok(None) };
            let mask = match network_mask(job, &path)? {
                Some(mask) => mask,
                // A normal image without a mask file is all normal; an anomalous one has no pixel truth.
                None if normal.contains(&row.label) => vec![false; grid.len() * 16],
                None => return Ok(None),
            };
            Ok(Some((filter.apply(grid), mask)))
        })
        .collect();
    progress.finish();
    let per_image: Vec<MapAndMask> = per_image?.into_iter().flatten().collect();
    let [height, width] = job.preprocess.crop.map(|v| v as usize);
    let mut scores = Vec::with_capacity(per_image.len() * height * width);
    let mut regions = Vec::with_capacity(scores.capacity());
    let mut n_regions = 0usize;
    for (map, mask) in &per_image {
        let (labels, n) = label_regions(mask, height, width);
        regions.extend(labels.into_iter().map(|l| l.map(|l| l + n_regions as u32)));
        n_regions += n;
        scores.extend_from_slice(map);
    }
    let truth: Vec<bool> = regions.iter().map(Option::is_some).collect();
    let as_f64: Vec<f64> = scores.iter().map(|&s| s as f64).collect();
    let what = format!("model {model}, test pixels");
    let roc = Roc::new(&as_f64, &truth, &what).map_err(|source| ReportError::Metric { what: what.clone(), source })?;
    let pro = if with_pro {
        pro_auc(&scores, &regions, n_regions, 0.3).map_err(|source| ReportError::Metric { what, source })?
    } else {
        f64::NAN
    };
    let without_mask = tests.len() - per_image.len();
    Ok(PixelMetrics { images: per_image.len(), without_mask, regions: n_regions, auroc: roc.auc(), pro })
}

fn to_bytes(df: &mut DataFrame, csv: bool, what: &str) -> Result<Vec<u8>, ReportError> {
    let mut out = Vec::new();
    if csv {
        CsvWriter::new(&mut out).finish(df).map_err(table_error(what))?;
    } else {
        ParquetWriter::new(&mut out).finish(df).map_err(table_error(what))?;
    }
    Ok(out)
}

fn put_table(store: &Store, name: &str, df: &mut DataFrame) -> Result<Vec<String>, ReportError> {
    let mut keys = Vec::new();
    for (ext, csv) in [("parquet", false), ("csv", true)] {
        let key = format!("report/{name}.{ext}");
        store.put(&key, to_bytes(df, csv, &key)?)?;
        keys.push(key);
    }
    Ok(keys)
}

/// scores (per image and model, normalised, with the verdict), metrics and ROC points, as Parquet and CSV.
fn write_tables(
    store: &Store,
    by_model: &BTreeMap<String, Vec<Scored>>,
    summary: &ReportSummary,
    job: &Job,
) -> Result<Vec<String>, ReportError> {
    let kind = job.report.score;
    // One row per image and calibrated model: (model, row, normalisation, threshold).
    let rows: Vec<(&str, &Scored, [f64; 2], f64)> = summary
        .models
        .iter()
        .filter(|m| m.score == kind.name())
        .flat_map(|m| by_model[&m.model].iter().map(move |r| (m.model.as_str(), r, m.normalisation, m.threshold)))
        .collect();
    let normalised = |v: f64, [lo, hi]: [f64; 2]| (v - lo) / (hi - lo);
    let mut scores = df!(
        "image" => rows.iter().map(|(_, r, _, _)| r.image).collect::<Vec<u32>>(),
        "path" => rows.iter().map(|(_, r, _, _)| r.path.as_str()).collect::<Vec<&str>>(),
        "label" => rows.iter().map(|(_, r, _, _)| r.label.as_str()).collect::<Vec<&str>>(),
        "split" => rows.iter().map(|(_, r, _, _)| r.split.as_str()).collect::<Vec<&str>>(),
        "model" => rows.iter().map(|(m, _, _, _)| *m).collect::<Vec<&str>>(),
        "mean" => rows.iter().map(|(_, r, _, _)| r.mean).collect::<Vec<f64>>(),
        "max" => rows.iter().map(|(_, r, _, _)| r.max).collect::<Vec<f64>>(),
        "min" => rows.iter().map(|(_, r, _, _)| r.min).collect::<Vec<f64>>(),
        "mean_normalised" => rows.iter().map(|(_, r, n, _)| normalised(r.mean, *n)).collect::<Vec<f64>>(),
        "max_normalised" => rows.iter().map(|(_, r, n, _)| normalised(r.max, *n)).collect::<Vec<f64>>(),
        "anomalous_predicted" =>
            rows.iter().map(|(_, r, n, t)| normalised(r.score(kind), *n) >= *t).collect::<Vec<bool>>(),
    )
    .map_err(table_error("report scores"))?;
    let mut keys = put_table(store, "scores", &mut scores)?;

    let sets: Vec<(&ModelMetrics, &str, &SetMetrics)> =
        summary.models.iter().flat_map(|m| [(m, "calibration", &m.calibration), (m, "test", &m.test)]).collect();
    let numbers = |f: &dyn Fn(&SetMetrics) -> f64| sets.iter().map(|(_, _, s)| f(s)).collect::<Vec<f64>>();
    let counts =
        |f: &dyn Fn(&Confusion) -> usize| sets.iter().map(|(_, _, s)| f(&s.confusion) as u64).collect::<Vec<u64>>();
    let mut metrics = df!(
        "model" => sets.iter().map(|(m, _, _)| m.model.as_str()).collect::<Vec<&str>>(),
        "score" => sets.iter().map(|(m, _, _)| m.score.as_str()).collect::<Vec<&str>>(),
        "set" => sets.iter().map(|(_, set, _)| *set).collect::<Vec<&str>>(),
        "threshold" => sets.iter().map(|(m, _, _)| m.threshold).collect::<Vec<f64>>(),
        "auroc" => numbers(&|s| s.auroc),
        "aupr" => numbers(&|s| s.aupr),
        "accuracy" => numbers(&|s| s.accuracy),
        "precision" => numbers(&|s| s.precision),
        "recall" => numbers(&|s| s.recall),
        "specificity" => numbers(&|s| s.specificity),
        "f1" => numbers(&|s| s.f1),
        "tp" => counts(&|c| c.tp),
        "fp" => counts(&|c| c.fp),
        "tn" => counts(&|c| c.tn),
        "fn" => counts(&|c| c.fn_),
    )
    .map_err(table_error("metrics"))?;
    keys.extend(put_table(store, "metrics", &mut metrics)?);

    // Every ROC point of every model, score and set.
    let mut points: Vec<(&str, &str, &str, f64, f64, f64)> = Vec::new();
    for m in &summary.models {
        let kind = if m.score == "mean" { ScoreKind::Mean } else { ScoreKind::Max };
        for set in ["calibration", "test"] {
            let (scores, truth) = split_scores(&by_model[&m.model], set, kind, m.normalisation, &job.dataset.normal);
            let roc =
                Roc::new(&scores, &truth, set).map_err(|source| ReportError::Metric { what: set.into(), source })?;
            for i in 0..roc.fpr.len() {
                points.push((m.model.as_str(), m.score.as_str(), set, roc.thresholds[i], roc.fpr[i], roc.tpr[i]));
            }
        }
    }
    let mut roc = df!(
        "model" => points.iter().map(|p| p.0).collect::<Vec<&str>>(),
        "score" => points.iter().map(|p| p.1).collect::<Vec<&str>>(),
        "set" => points.iter().map(|p| p.2).collect::<Vec<&str>>(),
        "threshold" => points.iter().map(|p| p.3).collect::<Vec<f64>>(),
        "fpr" => points.iter().map(|p| p.4).collect::<Vec<f64>>(),
        "tpr" => points.iter().map(|p| p.5).collect::<Vec<f64>>(),
    )
    .map_err(table_error("roc"))?;
    keys.extend(put_table(store, "roc", &mut roc)?);
    Ok(keys)
}

#[allow(clippy::too_many_arguments)]
fn write_pictures(
    store: &Store,
    job: &Job,
    maps: &HashMap<u32, Vec<f32>>,
    headline: &ModelMetrics,
    rows: &[Scored],
    display_max: f64,
    summary: &ReportSummary,
    progress: &dyn Progress,
) -> Result<Vec<String>, ReportError> {
    let kind = job.report.score;
    let normal = &job.dataset.normal;
    let (cal, cal_truth) = split_scores(rows, "calibration", kind, headline.normalisation, normal);
    let (test, test_truth) = split_scores(rows, "test", kind, headline.normalisation, normal);
    let mut pictures: Vec<(String, Vec<u8>)> = Vec::new();
    pictures.push((
        "histograms.png".into(),
        pictures::histograms(
            &[("calibration", &cal, &cal_truth), ("test", &test, &test_truth)],
            headline.threshold,
            kind.name(),
        )?,
    ));
    let metric = |what: &'static str| move |source| ReportError::Metric { what: what.to_string(), source };
    let cal_roc = Roc::new(&cal, &cal_truth, "calibration").map_err(metric("calibration"))?;
    let test_roc = Roc::new(&test, &test_truth, "test").map_err(metric("test"))?;
    let cal_point = cal_roc.thresholds.iter().position(|&t| t == headline.threshold).unwrap_or(0);
    let test_point = test_roc.thresholds.iter().rposition(|&t| t >= headline.threshold).unwrap_or(0);
    pictures.push((
        "roc.png".into(),
        pictures::roc_curves(&[("calibration", &cal_roc, cal_point), ("test", &test_roc, test_point)])?,
    ));
    pictures.push((
        "confusion.png".into(),
        pictures::confusion_matrix(
            &headline.test.confusion,
            &format!("test, {} at threshold {:.3}", headline.model, headline.threshold),
        )?,
    ));

    // Montages: the worst mistakes first; the correct ones spread over their score range.
    let tests: Vec<(&Scored, f64, bool)> = rows
        .iter()
        .filter(|r| r.split == "test")
        .map(|r| {
            let s =
                (r.score(kind) - headline.normalisation[0]) / (headline.normalisation[1] - headline.normalisation[0]);
            (r, s, !normal.contains(&r.label))
        })
        .collect();
    let n = job.report.montage_images;
    let groups = [
        ("true-positives", "true positives (anomalous, flagged)", true, true),
        ("true-negatives", "true negatives (normal, passed)", false, false),
        ("false-positives", "false positives (normal, flagged)", false, true),
        ("false-negatives", "false negatives (anomalous, passed)", true, false),
    ];
    /// A montage: file name, title, and the images with their normalised scores.
    type Montage<'a> = (&'static str, &'static str, Vec<(&'a Scored, f64)>);
    let mut chosen: Vec<Montage> = Vec::new();
    for (name, title, anomalous, flagged) in groups {
        let mut members: Vec<(&Scored, f64)> = tests
            .iter()
            .filter(|(_, s, a)| *a == anomalous && (*s >= headline.threshold) == flagged)
            .map(|(r, s, _)| (*r, *s))
            .collect();
        // Mistakes: most confident first. Correct: evenly spaced by rank.
        members.sort_by(|a, b| b.1.total_cmp(&a.1));
        if !anomalous && flagged {
            members.truncate(n);
        } else if anomalous && !flagged {
            members.reverse();
            members.truncate(n);
        } else if members.len() > n {
            let step = members.len() as f64 / n as f64;
            members = (0..n).map(|i| members[(i as f64 * step) as usize]).collect();
        }
        chosen.push((name, title, members));
    }
    let wanted: BTreeSet<u32> = chosen.iter().flat_map(|(_, _, m)| m.iter().map(|(r, _)| r.image)).collect();
    let [height, width] = job.preprocess.crop;
    let filter = map_filter(job);
    progress.start("report (montages)", wanted.len() as u64);
    for (name, title, members) in &chosen {
        let tiles: Result<Vec<Tile>, ReportError> = members
            .par_iter()
            .map(|(row, score)| {
                progress.advance(1);
                let rgb = network_view(job, &job.dataset.resolve_path(&row.path))?;
                let map = maps.get(&row.image).map(|g| filter.apply(g)).unwrap_or_default();
                let file =
                    Path::new(&row.path).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                Ok(Tile {
                    rgb: pictures::overlay(&rgb, &map, display_max),
                    width,
                    height,
                    caption: format!("{file}  {score:.3}"),
                })
            })
            .collect();
        let title = format!("{title}: {} of {}", members.len(), count_of(&tests, name, headline.threshold));
        pictures.push((format!("montage-{name}.png"), pictures::montage(&title, &tiles?, 4)?));
    }
    progress.finish();
    pictures.push(("colorbar.png".into(), pictures::colorbar(display_max)?));
    if let Some(sweep) = &summary.sweep {
        pictures.push(("sweep-auroc.png".into(), crate::sweep::auroc_plot(&sweep.groups)?));
    }

    let html = crate::html::page(job, summary, &pictures);
    let mut keys = Vec::new();
    for (name, bytes) in pictures {
        let key = format!("report/{name}");
        store.put(&key, bytes)?;
        keys.push(key);
    }
    store.put("report/report.html", html.into_bytes())?;
    keys.push("report/report.html".into());
    Ok(keys)
}

fn count_of(tests: &[(&Scored, f64, bool)], group: &str, threshold: f64) -> usize {
    tests
        .iter()
        .filter(|(_, s, a)| {
            let flagged = *s >= threshold;
            match group {
                "true-positives" => *a && flagged,
                "true-negatives" => !*a && !flagged,
                "false-positives" => !*a && flagged,
                _ => *a && !flagged,
            }
        })
        .count()
}

/// The run manifest: resolved config and hash, versions, and checksums of the inputs.
fn run_manifest(
    job: &Job,
    digests: &padim_core::config::InputDigests,
    image_rows: &[padim_store::ImageRow],
) -> Vec<u8> {
    let mut images: Vec<String> = image_rows.iter().map(|row| format!("{} {}", row.sha256, row.path)).collect();
    images.sort();
    let inputs = padim_core::hash::sha256_hex(images.join("\n").as_bytes());
    let config: serde_json::Value = serde_json::from_str(&job.to_canonical_json()).unwrap_or_default();
    let manifest = serde_json::json!({
        "job": job.name,
        "config-hash": job.hash(),
        "config": config,
        // What each stage's outputs are, by content (README "Identity, reruns and concurrent tasks").
        "identities": {
            "split": job.split_hash(),
            "extract": job.extract_hash(digests),
            "fit": job.fit_hash(digests),
            "score": job.score_hash(digests),
            "report": job.report_hash(digests),
        },
        "versions": { "padim": env!("CARGO_PKG_VERSION"), "libtorch": "2.13.0" },
        "inputs": {
            "weights-sha256": digests.weights,
            "images": images.len(),
            "images-sha256": inputs,
            "split-manifest-sha256": digests.images,
        },
    });
    serde_json::to_vec_pretty(&manifest).unwrap_or_default()
}
