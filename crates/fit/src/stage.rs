//! The fit stage: accumulate the training images' statistics from every extract shard (one partial
//! state per shard, kept so that a rerun resumes), merge them, and write one model per subset.

use crate::model::{
    ModelError, ModelInfo, decode_bank_partial, decode_partial, encode_bank_partial, encode_nearest, encode_partial,
    model_writer,
};
use crate::nearest::{Bank, BankError};
use crate::stats::{Gaussians, PatchStats, StatsError, state_bytes};
use padim_core::channels::ChannelSubset;
use padim_core::config::{CovarianceEstimator, CovariancePool, Job, SubsetSpec};
use padim_core::{Progress, Shard};
use padim_store::layout::{self, counts};
use padim_store::shards::extract_marker_keys;
use padim_store::{
    DoneMarker, EmbeddingMeta, EmbeddingReader, Gate, GateRules, ImageStatus, Inputs, ShardsError, Store, StoreError,
    read_image_table,
};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, thiserror::Error)]
pub enum FitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{url}: {source}")]
    Stats { url: String, source: StatsError },
    #[error("{url}: {source}")]
    Bank { url: String, source: BankError },
    #[error("{url}: {source}; rerun the fit with --force")]
    Partial { url: String, source: ModelError },
    #[error(transparent)]
    Shards(#[from] ShardsError),
    #[error("the embeddings of {url} differ from the first shard's ({what})")]
    Inconsistent { url: String, what: String },
    #[error(transparent)]
    Subset(#[from] padim_core::channels::SubsetError),
    #[error("{count} training image(s) (labels {labels:?}{split}): the covariance needs at least 2")]
    TooFewImages { count: u64, labels: Vec<String>, split: String },
    #[error(
        "fit would hold {need_gib:.1} GiB (f64 statistics of {channels} channels x {patches} patches, the \
         training patches of nearest-patch models, and the models being inverted and written), over \
         fit.memory-budget-gib = {budget_gib}; fit fewer or smaller channel subsets, or raise the budget"
    )]
    MemoryBudget { need_gib: f64, budget_gib: f64, channels: usize, patches: usize },
    #[error("{url} was made by another fit configuration; use --force to redo it")]
    ConfigMismatch { url: String },
}

impl FitError {
    /// Whether a rerun later may succeed (a storage failure), see [`StoreError::is_transient`].
    pub fn is_transient(&self) -> bool {
        match self {
            FitError::Store(e) => e.is_transient(),
            FitError::Shards(e) => e.is_transient(),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct FitOptions {
    pub force: bool,
    /// Accumulate only this shard of the extract shards (their partial states) and stop: the
    /// array-job form of the fit. Without it, missing partial states are accumulated, all are
    /// merged and the models are written.
    pub shard: Option<Shard>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FitSummary {
    pub n_train: u64,
    pub models: Vec<String>,
    pub already_done: bool,
    /// The extract shards whose partial states this run accumulated or found (a `--shard` run).
    pub partials: usize,
}

const DONE_KEY: &str = layout::fit::DONE;

/// Runs the fit stage: every extract shard must be done. Steps: the done-marker gate, the plan
/// (shards, training images, subsets, the memory budget), the accumulation (a partial state per
/// extract shard), then the models and the done marker.
pub fn run_fit(job: &Job, options: &FitOptions, progress: &dyn Progress) -> Result<FitSummary, FitError> {
    let span = tracing::info_span!("fit", job = %job.name);
    let _entered = span.enter();
    let store = Store::open(&job.output)?;
    let inputs = padim_store::identity::input_digests(job, &store)?;
    let fit_hash = job.fit_hash(&inputs);
    let rules = GateRules { force: options.force, inputs: Inputs::Upstream, refuse_other: true };
    // A finished fit that is to be redone is withdrawn after the checks of the plan, by a merging run.
    let withdraw = match DoneMarker::gate(&store, DONE_KEY, &fit_hash, rules)? {
        Gate::Current(marker) => return Ok(FitSummary::already_done(marker)),
        Gate::Conflict(_) => return Err(FitError::ConfigMismatch { url: store.url_of(DONE_KEY) }),
        Gate::Redo { marker, .. } => marker.is_some() && options.shard.is_none(),
    };
    let plan = FitPlan::new(&store, job, &job.extract_hash(&inputs), options.shard)?;
    plan.check_memory(job)?;
    if withdraw {
        store.delete(DONE_KEY)?;
    }
    let (total, total_bank) = accumulate(&store, job, &plan, &fit_hash, options, progress)?;
    if options.shard.is_some() {
        return Ok(FitSummary {
            n_train: total.count(),
            models: Vec::new(),
            already_done: false,
            partials: plan.shards.len(),
        });
    }
    if total.count() < 2 {
        let split = job.fit.train_split.as_ref().map(|s| format!(", split {s}")).unwrap_or_default();
        return Err(FitError::TooFewImages { count: total.count(), labels: train_labels(job), split });
    }
    let clock = std::time::Instant::now();
    let gaussians = write_gaussians(&store, job, &plan, &total, &fit_hash)?;
    let nearest = write_nearest(&store, job, &plan, total_bank.as_ref(), (total.count(), &fit_hash))?;
    // The models in the subsets' order.
    let models: Vec<String> = plan
        .subsets
        .iter()
        .map(|s| layout::fit::model(&s.name))
        .filter(|key| gaussians.contains(key) || nearest.contains(key))
        .collect();
    tracing::info!(seconds = clock.elapsed().as_secs_f64(), "fitted and wrote the models");
    DoneMarker {
        stage: "fit".into(),
        shard: Shard::ALL.to_string(),
        config_hash: fit_hash,
        digest: None,
        files: models.clone(),
        counts: BTreeMap::from([(counts::TRAIN_IMAGES.to_string(), total.count())]),
        run_id: DoneMarker::new_run_id(),
        made_from: DoneMarker::current_ids(&store, &extract_marker_keys(&plan.all_shards))?,
    }
    .publish(&store, DONE_KEY)?;
    tracing::info!(train = total.count(), models = models.len(), "fit done");
    Ok(FitSummary { n_train: total.count(), models, already_done: false, partials: plan.shards.len() })
}

impl FitSummary {
    /// The summary of a finished fit, from its done marker.
    fn already_done(marker: DoneMarker) -> FitSummary {
        FitSummary {
            n_train: marker.count(counts::TRAIN_IMAGES),
            models: marker.files,
            already_done: true,
            partials: 0,
        }
    }
}

/// One subset to fit, with its estimator, pool and grid resolved.
#[derive(Debug, Clone)]
struct PlannedSubset {
    name: String,
    channels: ChannelSubset,
    estimator: CovarianceEstimator,
    pool: CovariancePool,
    /// Embedding-grid cells per model cell along each axis (see `ModelInfo::grid_factor`).
    grid_factor: usize,
}

/// The grid a subset's model can live on without changing a value: `factor` when the subset's
/// finest layer has `factor` times the embedding grid's stride and the grid divides into such
/// blocks exactly (then every block holds copies of one upsampled feature vector: same values,
/// same Gaussian, same distance). A nearest-patch model (its patches average their 3x3
/// neighbourhood) and covariances pooled over a window of cells differ within a block, so they keep
/// the embedding grid; pooling over every cell is the same everywhere and does not.
fn grid_factor(
    meta: &EmbeddingMeta,
    channels: &ChannelSubset,
    estimator: CovarianceEstimator,
    pool: CovariancePool,
) -> usize {
    if estimator.is_nearest() || matches!(pool, CovariancePool::Radius(_)) {
        return 1;
    }
    let Some(grid_stride) = meta.layers.iter().map(|l| l.stride).min() else { return 1 };
    let finest = meta
        .layers
        .iter()
        .filter(|l| channels.channels().iter().any(|c| (l.first_channel..l.first_channel + l.channels).contains(c)))
        .map(|l| l.stride)
        .min()
        .unwrap_or(grid_stride);
    let factor = finest / grid_stride.max(1);
    let exact = factor > 1 && meta.grid_height.is_multiple_of(factor) && meta.grid_width.is_multiple_of(factor);
    if exact { factor } else { 1 }
}

/// What the fit reads and makes, decided before any statistic is accumulated.
struct FitPlan {
    /// Every extract shard of the job's layout, and those this run accumulates.
    all_shards: Vec<Shard>,
    shards: Vec<Shard>,
    /// Ids of the training images.
    train: BTreeSet<u32>,
    /// The first extract shard's embedding metadata (every shard must agree with it).
    meta: EmbeddingMeta,
    /// Every subset, in the job's order.
    subsets: Vec<PlannedSubset>,
    /// The Gaussian subsets, pool by pool (one pooled copy of the statistics per pool).
    gaussian: Vec<PlannedSubset>,
    /// The nearest-patch subsets, from the bank.
    nearest: Vec<PlannedSubset>,
    /// The channels of the statistics, of the bank (with nearest-patch subsets), and of both.
    stats_union: ChannelSubset,
    bank_union: Option<ChannelSubset>,
    union: ChannelSubset,
}

impl FitPlan {
    fn new(store: &Store, job: &Job, extract_hash: &str, shard: Option<Shard>) -> Result<FitPlan, FitError> {
        let all_shards = padim_store::extract_shards(store, extract_hash)?;
        let shards = match shard {
            Some(fit_shard) => all_shards[fit_shard.range(all_shards.len())].to_vec(),
            None => all_shards.clone(),
        };
        let train = training_images(store, job, &shards)?;
        let first_key = layout::extract::embeddings(all_shards[0]);
        let meta = EmbeddingReader::open(store, &first_key, Some(&[]), 1)?.meta().clone();
        let subsets: Vec<PlannedSubset> = resolve_subsets(&job.fit.subsets, &meta)?
            .into_iter()
            .map(|(name, channels)| {
                let spec = job.fit.subsets.iter().find(|s| s.name == name);
                let estimator = spec.map_or(job.fit.covariance, |s| job.fit.covariance_of(s));
                let pool = spec.map_or(CovariancePool::None, |s| s.pool);
                let grid_factor = grid_factor(&meta, &channels, estimator, pool);
                PlannedSubset { estimator, pool, grid_factor, name, channels }
            })
            .collect();
        let (nearest, mut gaussian): (Vec<_>, Vec<_>) = subsets.iter().cloned().partition(|s| s.estimator.is_nearest());
        gaussian.sort_by_key(|s| (s.pool, s.grid_factor));
        let stats_union = ChannelSubset::union(gaussian.iter().map(|s| &s.channels));
        let bank_union = (!nearest.is_empty()).then(|| ChannelSubset::union(nearest.iter().map(|s| &s.channels)));
        let union = ChannelSubset::union(subsets.iter().map(|s| &s.channels));
        // Every shard must store the channels the subsets need (`extract.channels = "subsets"` keeps
        // only the union of the subsets it was extracted for): checked on the footers, before any work.
        for shard in &all_shards {
            EmbeddingReader::open(store, &layout::extract::embeddings(*shard), Some(union.channels()), 1)?;
        }
        Ok(FitPlan { all_shards, shards, train, meta, subsets, gaussian, nearest, stats_union, bank_union, union })
    }

    /// Refuses a fit whose statistics, bank and models in flight exceed `fit.memory-budget-gib`.
    fn check_memory(&self, job: &Job) -> Result<(), FitError> {
        let n_patches = self.meta.n_patches();
        // The statistics, plus the larger of a batch being accumulated and the models in flight (a
        // group being inverted, one queued for the writer, one being encoded: see `model_groups`).
        let batch = (job.fit.batch_images * self.union.len() * n_patches * 8) as u64;
        let largest = self.gaussian.iter().map(|s| s.precision_bytes(n_patches)).max().unwrap_or(0);
        let group = self
            .model_groups()
            .iter()
            .map(|g| g.iter().map(|s| s.precision_bytes(n_patches)).sum::<u64>())
            .max()
            .unwrap_or(0);
        // A bank holds every training image's values (f32); writing a nearest-patch model (after the
        // Gaussians) lays out its channels again and encodes them: twice the largest such model.
        let per_channel = (self.train.len() * n_patches * 4) as u64;
        let bank_bytes = self.bank_union.as_ref().map_or(0, |u| u.len() as u64 * per_channel);
        let writing = 2 * self.nearest.iter().map(|s| s.channels.len() as u64 * per_channel).max().unwrap_or(0);
        // Pooling makes a second copy of the co-moments (and a third while it sums them).
        let pooling = if self.gaussian.iter().any(|s| !s.pool.is_none()) { 2 } else { 0 };
        let need = state_bytes(n_patches, self.stats_union.len()) * (1 + pooling)
            + bank_bytes
            + batch.max(group + largest * 5 / 2).max(writing);
        let budget = job.fit.memory_budget_gib * (1u64 << 30) as f64;
        if need as f64 > budget {
            return Err(FitError::MemoryBudget {
                need_gib: need as f64 / (1u64 << 30) as f64,
                budget_gib: job.fit.memory_budget_gib,
                channels: self.stats_union.len(),
                patches: n_patches,
            });
        }
        Ok(())
    }

    /// The Gaussian subsets in groups inverted together: within one pool and grid, at most
    /// [`GROUP_BYTES`] of precision matrices each.
    fn model_groups(&self) -> Vec<&[PlannedSubset]> {
        let n_patches = self.meta.n_patches();
        self.gaussian
            .chunk_by(|a, b| (a.pool, a.grid_factor) == (b.pool, b.grid_factor))
            .flat_map(|g| model_groups(g, n_patches))
            .collect()
    }

    /// The metadata of `subset`'s model.
    fn model_info(&self, job: &Job, subset: &PlannedSubset, n_train: u64, fit_hash: &str) -> ModelInfo {
        let meta = &self.meta;
        let factor = subset.grid_factor;
        ModelInfo {
            format_version: ModelInfo::format_for(factor),
            subset: subset.name.clone(),
            backbone: meta.backbone.clone(),
            weights_sha256: meta.weights_sha256.clone(),
            tap: meta.tap.clone(),
            layers: meta.layers.iter().map(|l| l.name.clone()).collect(),
            input_height: meta.input_height,
            input_width: meta.input_width,
            grid_height: meta.grid_height / factor,
            grid_width: meta.grid_width / factor,
            embedding_channels: meta.n_channels,
            epsilon: job.fit.epsilon,
            n_train_images: n_train,
            config_hash: fit_hash.to_string(),
            covariance: subset.estimator,
            pool: subset.pool,
            grid_factor: factor,
        }
    }
}

/// The statistics (and bank) of the plan's shards: one partial state per extract shard, merged.
fn accumulate(
    store: &Store,
    job: &Job,
    plan: &FitPlan,
    fit_hash: &str,
    options: &FitOptions,
    progress: &dyn Progress,
) -> Result<(PatchStats, Option<Bank>), FitError> {
    let meta = &plan.meta;
    let mut total = PatchStats::new(meta.n_patches(), plan.stats_union.clone());
    let mut total_bank = plan.bank_union.as_ref().map(|u| Bank::new(meta.grid_height, meta.grid_width, u.clone()));
    progress.start("fit", plan.train.len() as u64);
    // A partial state is kept per extract shard so that a rerun resumes, unless the fit is one
    // shard in one process: then there is nothing to resume between.
    let keep = plan.all_shards.len() > 1 || options.shard.is_some();
    let context = AccumulateContext {
        job,
        fit_hash,
        first_meta: meta,
        union: &plan.stats_union,
        bank_union: plan.bank_union.as_ref(),
        train: &plan.train,
    };
    for shard in &plan.shards {
        let (partial, bank) = accumulate_shard(store, &context, *shard, options.force, keep, progress)?;
        if total.count() == 0 {
            total = partial;
        } else {
            total.merge(&partial).map_err(|source| FitError::Stats { url: store.url_of("fit"), source })?;
        }
        if let (Some(total_bank), Some(bank)) = (total_bank.as_mut(), bank) {
            total_bank.merge(bank).map_err(|source| FitError::Bank { url: store.url_of("fit"), source })?;
        }
    }
    progress.finish();
    Ok((total, total_bank))
}

/// Inverts the Gaussian subsets' covariances group by group (one pass over the statistics per
/// group; pooled statistics made once per pool) while a second thread encodes and writes each model.
/// Returns the keys written.
fn write_gaussians(
    store: &Store,
    job: &Job,
    plan: &FitPlan,
    total: &PatchStats,
    fit_hash: &str,
) -> Result<Vec<String>, FitError> {
    let meta = &plan.meta;
    let info = |subset: &PlannedSubset| plan.model_info(job, subset, total.count(), fit_hash);
    let stats_error = |name: &str, source| FitError::Stats { url: store.url_of(&layout::fit::model(name)), source };
    std::thread::scope(|scope| -> Result<Vec<String>, FitError> {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Gaussians>(1);
        let writer = scope.spawn(|| -> Result<Vec<String>, FitError> {
            let mut written = Vec::new();
            for gaussians in receiver {
                let subset = &plan.gaussian[written.len()];
                let key = layout::fit::model(&subset.name);
                store.put_streamed(&key, model_writer(&gaussians, &info(subset))?)?;
                written.push(key);
            }
            Ok(written)
        });
        let mut fitted_all = Ok(());
        // The statistics pooled as the current group's subsets ask.
        let mut pooled: Option<(CovariancePool, PatchStats)> = None;
        'groups: for group in plan.model_groups() {
            let clock = std::time::Instant::now();
            let members: Vec<&ChannelSubset> = group.iter().map(|s| &s.channels).collect();
            let estimators: Vec<CovarianceEstimator> = group.iter().map(|s| s.estimator).collect();
            let group_pool = group[0].pool;
            let cells = plan.model_info(job, &group[0], total.count(), fit_hash).anchor_patches();
            let stats = if group_pool.is_none() {
                total
            } else {
                if pooled.as_ref().is_none_or(|(p, _)| *p != group_pool) {
                    drop(pooled.take()); // free the previous pool's copy first
                    match total.pooled(meta.grid_height, meta.grid_width, group_pool) {
                        Ok(stats) => pooled = Some((group_pool, stats)),
                        Err(source) => {
                            fitted_all = Err(stats_error(&group[0].name, source));
                            break;
                        }
                    }
                }
                &pooled.as_ref().expect("pooled just above").1
            };
            let fitted = match stats.gaussians_at(&members, job.fit.epsilon, &estimators, &cells) {
                Ok(fitted) => fitted,
                Err((index, source)) => {
                    fitted_all = Err(stats_error(&group[index].name, source));
                    break;
                }
            };
            tracing::debug!(seconds = clock.elapsed().as_secs_f64(), subsets = group.len(), "inverted the covariances");
            for gaussians in fitted {
                if sender.send(gaussians).is_err() {
                    break 'groups; // the writer failed: its error is reported below
                }
            }
        }
        drop(sender);
        let written = writer.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        fitted_all.map(|()| written)
    })
}

/// Writes the nearest-patch models: each subset's channels of the bank, laid out patch-major.
fn write_nearest(
    store: &Store,
    job: &Job,
    plan: &FitPlan,
    bank: Option<&Bank>,
    (n_train, fit_hash): (u64, &str),
) -> Result<Vec<String>, FitError> {
    let info = |subset: &PlannedSubset| plan.model_info(job, subset, n_train, fit_hash);
    let mut written = Vec::new();
    if let Some(bank) = bank {
        for subset in &plan.nearest {
            let laid = bank.patch_major(&subset.channels).expect("nearest subsets are within the bank's union");
            let key = layout::fit::model(&subset.name);
            store.put(&key, encode_nearest(&subset.channels, &laid, &info(subset))?)?;
            written.push(key);
        }
    }
    Ok(written)
}

/// Most bytes of precision matrices (f32) one group of subsets may hold while it is inverted.
const GROUP_BYTES: u64 = 1 << 28;

impl PlannedSubset {
    /// Bytes of the subset's precision matrices (f32) on its grid, of an embedding of `n_patches`.
    fn precision_bytes(&self, n_patches: usize) -> u64 {
        let k = self.channels.len();
        (n_patches / (self.grid_factor * self.grid_factor) * k * k * 4) as u64
    }
}

/// Consecutive subsets in groups of at most [`GROUP_BYTES`] of precision matrices (a larger subset
/// is a group of its own).
fn model_groups(subsets: &[PlannedSubset], n_patches: usize) -> Vec<&[PlannedSubset]> {
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, subset) in subsets.iter().enumerate() {
        let size = subset.precision_bytes(n_patches);
        if i > start && bytes + size > GROUP_BYTES {
            groups.push(&subsets[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < subsets.len() {
        groups.push(&subsets[start..]);
    }
    groups
}

fn train_labels(job: &Job) -> Vec<String> {
    if job.fit.train_labels.is_empty() { job.dataset.normal.clone() } else { job.fit.train_labels.clone() }
}

/// Ids of the training images: extracted without error, of a training label (and split).
fn training_images(store: &Store, job: &Job, shards: &[Shard]) -> Result<BTreeSet<u32>, FitError> {
    let labels = train_labels(job);
    let mut train = BTreeSet::new();
    for shard in shards {
        for row in read_image_table(store, &layout::extract::images(*shard))? {
            let split_ok = match &job.fit.train_split {
                Some(split) => row.split.as_deref() == Some(split.as_str()),
                None => true,
            };
            if row.status == ImageStatus::Ok && labels.contains(&row.label) && split_ok {
                train.insert(row.image);
            }
        }
    }
    Ok(train)
}

fn resolve_subsets(specs: &[SubsetSpec], meta: &EmbeddingMeta) -> Result<Vec<(String, ChannelSubset)>, FitError> {
    padim_core::channels::resolve_subsets(specs, &meta.layer_channels(), meta.n_channels).map_err(FitError::Subset)
}

/// What every shard's accumulation shares.
struct AccumulateContext<'a> {
    job: &'a Job,
    fit_hash: &'a str,
    first_meta: &'a EmbeddingMeta,
    /// The channels of the statistics.
    union: &'a ChannelSubset,
    /// The channels of the nearest-patch bank, if any subset is one.
    bank_union: Option<&'a ChannelSubset>,
    train: &'a BTreeSet<u32>,
}

/// The statistics (and nearest-patch bank) of one extract shard's training images: a kept partial
/// state of this configuration, or a pass over the shard's embeddings (kept as a partial state if
/// `keep`).
fn accumulate_shard(
    store: &Store,
    context: &AccumulateContext,
    shard: Shard,
    force: bool,
    keep: bool,
    progress: &dyn Progress,
) -> Result<(PatchStats, Option<Bank>), FitError> {
    let done_key = layout::fit::partial_done(shard);
    let made_from = DoneMarker::current_ids(store, &extract_marker_keys(&[shard]))?;
    let rules = GateRules { force, inputs: Inputs::Exactly(&made_from), refuse_other: false };
    if let Gate::Current(_) = DoneMarker::gate(store, &done_key, context.fit_hash, rules)?
        && let Some((stats, bank)) = kept_partial(store, context, shard)?
    {
        progress.advance(stats.count());
        return Ok((stats, bank));
    }
    store.delete(&done_key)?;
    let (stats, bank) = accumulate_pass(store, context, shard, progress)?;
    if keep {
        keep_partial(store, context, shard, (&stats, bank.as_ref()), made_from)?;
    }
    Ok((stats, bank))
}

/// The partial state kept for `shard`, if it is whole and holds this fit's channels (and bank).
fn kept_partial(
    store: &Store,
    context: &AccumulateContext,
    shard: Shard,
) -> Result<Option<(PatchStats, Option<Bank>)>, FitError> {
    let (partial_key, bank_key) = (layout::fit::partial(shard), layout::fit::partial_bank(shard));
    let Some(bytes) = store.get(&partial_key)? else { return Ok(None) };
    let (stats, _) = decode_partial(&bytes, context.first_meta.n_patches())
        .map_err(|source| FitError::Partial { url: store.url_of(&partial_key), source })?;
    let bank = match context.bank_union {
        None => Some(None),
        Some(bank_union) => match store.get(&bank_key)? {
            Some(bytes) => {
                let (bank, _) = decode_bank_partial(&bytes)
                    .map_err(|source| FitError::Partial { url: store.url_of(&bank_key), source })?;
                (bank.channels() == bank_union && bank.len() as u64 == stats.count()).then_some(Some(bank))
            }
            None => None,
        },
    };
    Ok(bank.filter(|_| stats.channels() == context.union).map(|bank| (stats, bank)))
}

/// One pass over `shard`'s embeddings: the training images' statistics (and bank).
fn accumulate_pass(
    store: &Store,
    context: &AccumulateContext,
    shard: Shard,
    progress: &dyn Progress,
) -> Result<(PatchStats, Option<Bank>), FitError> {
    let AccumulateContext { job, first_meta, union, bank_union, train, .. } = *context;
    let n_patches = first_meta.n_patches();
    let embeddings_key = layout::extract::embeddings(shard);
    let url = store.url_of(&embeddings_key);
    // Only the row groups that hold training images are read (with splits, the manifest puts the
    // training images first, so that is a small prefix of the file).
    let wanted = |min: u32, max: u32| train.range(min..=max).next().is_some();
    // The channels read: the statistics' and the bank's.
    let read = ChannelSubset::union([union].into_iter().chain(bank_union));
    let mut reader = EmbeddingReader::open_images(
        store,
        &embeddings_key,
        Some(read.channels()),
        job.fit.batch_images,
        Some(&wanted),
    )?;
    check_consistent(reader.meta(), first_meta, &url)?;
    let mut stats = PatchStats::new(n_patches, union.clone());
    let mut bank = bank_union.map(|u| Bank::new(first_meta.grid_height, first_meta.grid_width, u.clone()));
    let per_image = read.len() * n_patches;
    // Where each of the statistics' and the bank's channels is among those read.
    let stats_positions = union.positions_in(&read).expect("within the channels read");
    let bank_positions = bank_union.map(|u| u.positions_in(&read).expect("within the channels read"));
    let gather = |values: &[f32], n: usize, positions: &[usize]| -> Vec<f32> {
        if positions.len() == read.len() {
            return values.to_vec();
        }
        let mut out = Vec::with_capacity(n * positions.len() * n_patches);
        for image in values.chunks_exact(per_image) {
            for &p in positions {
                out.extend_from_slice(&image[p * n_patches..(p + 1) * n_patches]);
            }
        }
        out
    };
    let (mut read_s, mut update_s) = (0f64, 0f64);
    loop {
        let clock = std::time::Instant::now();
        let Some(batch) = reader.next_batch()? else { break };
        read_s += clock.elapsed().as_secs_f64();
        let clock = std::time::Instant::now();
        let mut ids = Vec::with_capacity(batch.image_ids.len());
        let mut values = Vec::with_capacity(batch.values.len());
        for (i, id) in batch.image_ids.iter().enumerate() {
            if train.contains(id) {
                ids.push(*id);
                values.extend_from_slice(&batch.values[i * per_image..(i + 1) * per_image]);
            }
        }
        let for_stats = gather(&values, ids.len(), &stats_positions);
        stats.update(&ids, &for_stats).map_err(|source| FitError::Stats { url: url.clone(), source })?;
        if let (Some(bank), Some(positions)) = (bank.as_mut(), &bank_positions) {
            let for_bank = gather(&values, ids.len(), positions);
            bank.update(&ids, &for_bank).map_err(|source| FitError::Bank { url: url.clone(), source })?;
        }
        update_s += clock.elapsed().as_secs_f64();
        progress.advance(ids.len() as u64);
    }
    tracing::info!(read_s, update_s, images = stats.count(), "accumulated shard {shard}");
    Ok((stats, bank))
}

/// Every extract shard must hold the first one's embedding (backbone, weights, channels, grid).
fn check_consistent(meta: &EmbeddingMeta, first: &EmbeddingMeta, url: &str) -> Result<(), FitError> {
    let shape =
        |m: &EmbeddingMeta| (m.backbone.clone(), m.n_channels, m.grid_height, m.grid_width, m.weights_sha256.clone());
    if shape(meta) != shape(first) {
        return Err(FitError::Inconsistent {
            url: url.to_string(),
            what: "backbone, weights, channels or grid".into(),
        });
    }
    Ok(())
}

/// Keeps `shard`'s partial state (and bank) under a done marker, so that a rerun resumes.
fn keep_partial(
    store: &Store,
    context: &AccumulateContext,
    shard: Shard,
    (stats, bank): (&PatchStats, Option<&Bank>),
    made_from: BTreeMap<String, String>,
) -> Result<(), FitError> {
    let (partial_key, bank_key) = (layout::fit::partial(shard), layout::fit::partial_bank(shard));
    let metadata = serde_json::json!({ "config-hash": context.fit_hash, "shard": shard.to_string() }).to_string();
    store.put(&partial_key, encode_partial(stats, metadata.clone())?)?;
    let mut files = vec![partial_key];
    if let Some(bank) = bank {
        store.put(&bank_key, encode_bank_partial(bank, metadata))?;
        files.push(bank_key);
    }
    DoneMarker {
        stage: "fit-partial".into(),
        shard: shard.to_string(),
        config_hash: context.fit_hash.to_string(),
        digest: None,
        files,
        counts: BTreeMap::from([(counts::TRAIN_IMAGES.to_string(), stats.count())]),
        run_id: DoneMarker::new_run_id(),
        made_from,
    }
    .publish(store, &layout::fit::partial_done(shard))?;
    Ok(())
}
