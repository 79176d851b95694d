//! The fit stage: accumulate the training images' statistics from every extract shard (one partial
//! state per shard, kept so that a rerun resumes), merge them, and write one model per subset.

use crate::model::{
    ModelError, ModelInfo, decode_bank_partial, decode_partial, encode_bank_partial, encode_model, encode_nearest,
    encode_partial,
};
use crate::nearest::{Bank, BankError};
use crate::stats::{Gaussians, PatchStats, StatsError, state_bytes};
use padim_core::channels::ChannelSubset;
use padim_core::config::{CovariancePool, Job, SubsetSpec};
use padim_core::{Progress, Shard};
use padim_store::layout;
use padim_store::{DoneMarker, EmbeddingMeta, EmbeddingReader, ImageStatus, Store, StoreError, read_image_table};
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
    #[error("no finished extract shards under {url}: run `padim extract` first")]
    NoExtract { url: String },
    #[error(
        "extract is not finished under {url}: shard(s) {missing} of {count} have no done marker; run `padim extract JOB --shard i/{count}` for them"
    )]
    MissingShards { url: String, missing: String, count: u32 },
    #[error(
        "{url} was made from other inputs or settings (extract identity {found}, this job's is {expected}): \
         rerun `padim extract JOB --force` (the data, weights, pre-processing or backbone changed), or use \
         another output location"
    )]
    StaleExtract { url: String, found: String, expected: String },
    #[error("the embeddings of {url} differ from the first shard's ({what})")]
    Inconsistent { url: String, what: String },
    #[error("subset `{name}`: {message}")]
    Subset { name: String, message: String },
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
        matches!(self, FitError::Store(e) if e.is_transient())
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

/// Runs the fit stage: every extract shard must be done.
pub fn run_fit(job: &Job, options: &FitOptions, progress: &dyn Progress) -> Result<FitSummary, FitError> {
    let span = tracing::info_span!("fit", job = %job.name);
    let _entered = span.enter();
    let store = Store::open(&job.output)?;
    let inputs = padim_store::identity::input_digests(job, &store)?;
    let fit_hash = job.fit_hash(&inputs);
    // Whether a finished fit of this location is to be withdrawn and redone (after the checks).
    let mut redo = false;
    if let Some(marker) = DoneMarker::read(&store, DONE_KEY)? {
        let current = marker.config_hash == fit_hash && !options.force;
        let stale = if current { marker.stale_input(&store)? } else { None };
        if let Some(input) = &stale {
            tracing::warn!(
                "{} is stale: {} was redone after it was made (a forced rerun); redoing the fit",
                store.url_of(DONE_KEY),
                store.url_of(input)
            );
        } else if current {
            return Ok(FitSummary {
                n_train: marker.counts.get("train-images").copied().unwrap_or(0),
                models: marker.files,
                already_done: true,
                partials: 0,
            });
        }
        if marker.config_hash != fit_hash && !options.force {
            return Err(FitError::ConfigMismatch { url: store.url_of(DONE_KEY) });
        }
        redo = options.shard.is_none();
    }

    let all_shards = extract_shards(&store, &job.extract_hash(&inputs))?;
    let shards: Vec<Shard> = match options.shard {
        Some(fit_shard) => all_shards[fit_shard.range(all_shards.len())].to_vec(),
        None => all_shards.clone(),
    };
    let train = training_images(&store, job, &shards)?;
    let first_key = layout::extract::embeddings(all_shards[0]);
    let meta = EmbeddingReader::open(&store, &first_key, Some(&[]), 1)?.meta().clone();
    let subsets = resolve_subsets(&job.fit.subsets, &meta)?;
    // Each subset's covariance estimator (its own, else the job's) and pool.
    let estimator = |name: &str| {
        job.fit.subsets.iter().find(|s| s.name == name).map_or(job.fit.covariance, |s| job.fit.covariance_of(s))
    };
    let pool = |name: &str| job.fit.subsets.iter().find(|s| s.name == name).map_or(CovariancePool::None, |s| s.pool);
    // Gaussian subsets come from the statistics, nearest-patch subsets from the bank.
    let (nearest, mut gaussian): (Vec<_>, Vec<_>) =
        subsets.iter().cloned().partition(|(name, _)| estimator(name).is_nearest());
    // Subsets of one pool are fitted together from one pooled copy of the statistics.
    gaussian.sort_by_key(|(name, _)| pool(name));
    let stats_union = ChannelSubset::union(gaussian.iter().map(|(_, s)| s));
    let bank_union = (!nearest.is_empty()).then(|| ChannelSubset::union(nearest.iter().map(|(_, s)| s)));
    let union = ChannelSubset::union(subsets.iter().map(|(_, s)| s));
    // Every shard must store the channels the subsets need (`extract.channels = "subsets"` keeps
    // only the union of the subsets it was extracted for): checked on the footers, before any work.
    for shard in &all_shards {
        EmbeddingReader::open(&store, &layout::extract::embeddings(*shard), Some(union.channels()), 1)?;
    }
    if redo {
        store.delete(DONE_KEY)?;
    }
    let n_patches = meta.n_patches();
    // The statistics, plus the larger of a batch being accumulated and the models in flight (a
    // group being inverted, one queued for the writer, one being encoded: see `model_groups`).
    let batch = (job.fit.batch_images * union.len() * n_patches * 8) as u64;
    let largest = gaussian.iter().map(|(_, s)| precision_bytes(n_patches, s.len())).max().unwrap_or(0);
    let groups: Vec<_> =
        gaussian.chunk_by(|a, b| pool(&a.0) == pool(&b.0)).flat_map(|g| model_groups(g, n_patches)).collect();
    let group = groups
        .iter()
        .map(|g| g.iter().map(|(_, s)| precision_bytes(n_patches, s.len())).sum::<u64>())
        .max()
        .unwrap_or(0);
    // A bank holds every training image's values (f32); writing a nearest-patch model (after the
    // Gaussians) lays out its channels again and encodes them: twice the largest such model.
    let per_channel = (train.len() * n_patches * 4) as u64;
    let bank_bytes = bank_union.as_ref().map_or(0, |u| u.len() as u64 * per_channel);
    let writing = 2 * nearest.iter().map(|(_, s)| s.len() as u64 * per_channel).max().unwrap_or(0);
    // Pooling makes a second copy of the co-moments (and a third while it sums them).
    let pooling = if gaussian.iter().any(|(name, _)| !pool(name).is_none()) { 2 } else { 0 };
    let need = state_bytes(n_patches, stats_union.len()) * (1 + pooling)
        + bank_bytes
        + batch.max(group + largest * 5 / 2).max(writing);
    let budget = job.fit.memory_budget_gib * (1u64 << 30) as f64;
    if need as f64 > budget {
        return Err(FitError::MemoryBudget {
            need_gib: need as f64 / (1u64 << 30) as f64,
            budget_gib: job.fit.memory_budget_gib,
            channels: stats_union.len(),
            patches: n_patches,
        });
    }

    // One partial state per extract shard; a finished one is reused.
    let mut total = PatchStats::new(n_patches, stats_union.clone());
    let mut total_bank = bank_union.as_ref().map(|u| Bank::new(meta.grid_height, meta.grid_width, u.clone()));
    let n_train_listed = train.len() as u64;
    progress.start("fit", n_train_listed);
    // A partial state is kept per extract shard so that a rerun resumes, unless the fit is one
    // shard in one process: then there is nothing to resume between.
    let keep_partials = all_shards.len() > 1 || options.shard.is_some();
    for shard in &shards {
        let (partial, bank) = accumulate_shard(
            &store,
            &AccumulateContext {
                job,
                fit_hash: &fit_hash,
                first_meta: &meta,
                union: &stats_union,
                bank_union: bank_union.as_ref(),
                train: &train,
            },
            *shard,
            options.force,
            keep_partials,
            progress,
        )?;
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
    if options.shard.is_some() {
        return Ok(FitSummary {
            n_train: total.count(),
            models: Vec::new(),
            already_done: false,
            partials: shards.len(),
        });
    }
    if total.count() < 2 {
        let split = job.fit.train_split.as_ref().map(|s| format!(", split {s}")).unwrap_or_default();
        return Err(FitError::TooFewImages { count: total.count(), labels: train_labels(job), split });
    }

    let clock = std::time::Instant::now();
    let info = |name: &str| ModelInfo {
        format_version: ModelInfo::FORMAT_VERSION,
        subset: name.to_string(),
        backbone: meta.backbone.clone(),
        weights_sha256: meta.weights_sha256.clone(),
        tap: meta.tap.clone(),
        layers: meta.layers.iter().map(|l| l.name.clone()).collect(),
        input_height: meta.input_height,
        input_width: meta.input_width,
        grid_height: meta.grid_height,
        grid_width: meta.grid_width,
        embedding_channels: meta.n_channels,
        epsilon: job.fit.epsilon,
        n_train_images: total.count(),
        config_hash: fit_hash.clone(),
        covariance: estimator(name),
        pool: pool(name),
    };
    let model_key = layout::fit::model;
    // Subsets are inverted in groups of at most GROUP_BYTES of f64 precision matrices (one pass over
    // the statistics per group), and a second thread encodes and writes each model while the next
    // group is inverted.
    let models = std::thread::scope(|scope| -> Result<Vec<String>, FitError> {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Gaussians>(1);
        let writer = scope.spawn(|| -> Result<Vec<String>, FitError> {
            let mut written = Vec::new();
            for gaussians in receiver {
                let name = &gaussian[written.len()].0;
                let key = model_key(name);
                store.put(&key, encode_model(&gaussians, &info(name))?)?;
                written.push(key);
            }
            Ok(written)
        });
        let mut fitted_all = Ok(());
        // The statistics pooled as the current group's subsets ask (made once per pool: the
        // groups come pool by pool).
        let mut pooled: Option<(CovariancePool, PatchStats)> = None;
        'groups: for group in groups {
            let clock = std::time::Instant::now();
            let members: Vec<&ChannelSubset> = group.iter().map(|(_, subset)| subset).collect();
            let estimators: Vec<padim_core::config::CovarianceEstimator> =
                group.iter().map(|(name, _)| estimator(name)).collect();
            let group_pool = pool(&group[0].0);
            let stats = if group_pool.is_none() {
                &total
            } else {
                if pooled.as_ref().is_none_or(|(p, _)| *p != group_pool) {
                    drop(pooled.take()); // free the previous pool's copy first
                    match total.pooled(meta.grid_height, meta.grid_width, group_pool) {
                        Ok(stats) => pooled = Some((group_pool, stats)),
                        Err(source) => {
                            fitted_all = Err(FitError::Stats { url: store.url_of(&model_key(&group[0].0)), source });
                            break;
                        }
                    }
                }
                &pooled.as_ref().expect("pooled just above").1
            };
            let fitted = match stats.gaussians_many_by(&members, job.fit.epsilon, &estimators) {
                Ok(fitted) => fitted,
                Err((index, source)) => {
                    fitted_all = Err(FitError::Stats { url: store.url_of(&model_key(&group[index].0)), source });
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
    })?;
    // The nearest-patch models: each subset's channels of the bank, laid out patch-major.
    let mut nearest_models = Vec::new();
    if let Some(bank) = &total_bank {
        for (name, subset) in &nearest {
            let laid = bank.patch_major(subset).expect("nearest subsets are within the bank's union");
            let key = model_key(name);
            store.put(&key, encode_nearest(subset, &laid, &info(name))?)?;
            nearest_models.push(key);
        }
    }
    // The models in the subsets' order.
    let models: Vec<String> = subsets
        .iter()
        .map(|(name, _)| model_key(name))
        .filter(|key| models.contains(key) || nearest_models.contains(key))
        .collect();
    tracing::info!(seconds = clock.elapsed().as_secs_f64(), "fitted and wrote the models");
    let marker = DoneMarker {
        stage: "fit".into(),
        shard: Shard::ALL.to_string(),
        config_hash: fit_hash,
        digest: None,
        files: models.clone(),
        counts: BTreeMap::from([("train-images".to_string(), total.count())]),
        run_id: DoneMarker::new_run_id(),
        made_from: DoneMarker::current_ids(&store, &extract_marker_keys(&all_shards))?,
    };
    marker.publish(&store, DONE_KEY)?;
    tracing::info!(train = total.count(), models = models.len(), "fit done");
    Ok(FitSummary { n_train: total.count(), models, already_done: false, partials: shards.len() })
}

/// Most bytes of f64 precision matrices one group of subsets may hold while it is inverted.
const GROUP_BYTES: u64 = 1 << 28;

/// Bytes of one subset's f64 precision matrices.
fn precision_bytes(n_patches: usize, k: usize) -> u64 {
    (n_patches * k * k * 8) as u64
}

/// Consecutive subsets in groups of at most [`GROUP_BYTES`] of precision matrices (a larger subset
/// is a group of its own).
fn model_groups(subsets: &[(String, ChannelSubset)], n_patches: usize) -> Vec<&[(String, ChannelSubset)]> {
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, (_, subset)) in subsets.iter().enumerate() {
        let size = precision_bytes(n_patches, subset.len());
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

/// The done markers of `shards` of the extract stage.
fn extract_marker_keys(shards: &[Shard]) -> Vec<String> {
    shards.iter().map(|&shard| layout::extract::done(shard)).collect()
}

/// Every shard named by an `extract/done-*.json` marker, whatever its count.
pub fn extract_done_shards(store: &Store) -> Result<Vec<Shard>, StoreError> {
    Ok(store.list(layout::extract::DIR)?.iter().filter_map(|key| layout::extract::done_shard(key)).collect())
}

/// The extract shards of this job: the layout (shard count) whose every shard has a done marker of
/// `extract_hash`, the current extract identity (the largest such count when the same extraction
/// exists in several layouts). Markers of other identities (an older configuration, other data) or
/// layouts with missing shards are never mixed in: fit, score and report all read through this.
pub fn extract_shards(store: &Store, extract_hash: &str) -> Result<Vec<Shard>, FitError> {
    let found = extract_done_shards(store)?;
    let mut counts: Vec<u32> = found.iter().map(|s| s.count).collect();
    counts.sort_unstable();
    counts.dedup();
    if counts.is_empty() {
        return Err(FitError::NoExtract { url: store.url().to_string() });
    }
    // Per layout, from the largest: its markers of this identity, and the first of another.
    let mut best: Option<(u32, Vec<u32>)> = None;
    let mut other: Option<(String, String)> = None;
    for &count in counts.iter().rev() {
        let mut current = Vec::new();
        for shard in found.iter().filter(|s| s.count == count) {
            let key = layout::extract::done(*shard);
            match DoneMarker::read(store, &key)? {
                Some(marker) if marker.config_hash == extract_hash => current.push(shard.index),
                Some(marker) => {
                    other.get_or_insert((store.url_of(&key), marker.config_hash));
                }
                None => {}
            }
        }
        if current.len() == count as usize {
            return Ok((0..count).map(|index| Shard { index, count }).collect());
        }
        if best.as_ref().is_none_or(|(_, b)| current.len() > b.len()) && !current.is_empty() {
            best = Some((count, current));
        }
    }
    match (best, other) {
        (Some((count, present)), _) => {
            let missing: Vec<String> = (0..count).filter(|i| !present.contains(i)).map(|i| i.to_string()).collect();
            Err(FitError::MissingShards { url: store.url().to_string(), missing: missing.join(", "), count })
        }
        (None, Some((url, found))) => Err(FitError::StaleExtract { url, found, expected: extract_hash.to_string() }),
        (None, None) => Err(FitError::NoExtract { url: store.url().to_string() }),
    }
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
    padim_core::channels::resolve_subsets(specs, &meta.layer_channels(), meta.n_channels)
        .map_err(|(name, message)| FitError::Subset { name, message })
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
    let AccumulateContext { job, fit_hash, first_meta, union, bank_union, train } = *context;
    let partial_key = layout::fit::partial(shard);
    let bank_key = layout::fit::partial_bank(shard);
    let done_key = layout::fit::partial_done(shard);
    let n_patches = first_meta.n_patches();
    let made_from = DoneMarker::current_ids(store, &extract_marker_keys(&[shard]))?;
    if !force
        && let Some(marker) = DoneMarker::read(store, &done_key)?
        && marker.config_hash == fit_hash
        && marker.made_from == made_from
        && let Some(bytes) = store.get(&partial_key)?
    {
        let (stats, _) = decode_partial(&bytes, n_patches)
            .map_err(|source| FitError::Partial { url: store.url_of(&partial_key), source })?;
        let bank = match bank_union {
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
        if stats.channels() == union
            && let Some(bank) = bank
        {
            progress.advance(stats.count());
            return Ok((stats, bank));
        }
    }
    store.delete(&done_key)?;
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
    let meta = reader.meta();
    if (meta.backbone.as_str(), meta.n_channels, meta.grid_height, meta.grid_width, meta.weights_sha256.as_str())
        != (
            first_meta.backbone.as_str(),
            first_meta.n_channels,
            first_meta.grid_height,
            first_meta.grid_width,
            first_meta.weights_sha256.as_str(),
        )
    {
        return Err(FitError::Inconsistent { url, what: "backbone, weights, channels or grid".into() });
    }
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
    if !keep {
        return Ok((stats, bank));
    }
    let metadata = serde_json::json!({ "config-hash": fit_hash, "shard": shard.to_string() }).to_string();
    store.put(&partial_key, encode_partial(&stats, metadata.clone())?)?;
    let mut files = vec![partial_key];
    if let Some(bank) = &bank {
        store.put(&bank_key, encode_bank_partial(bank, metadata))?;
        files.push(bank_key);
    }
    DoneMarker {
        stage: "fit-partial".into(),
        shard: shard.to_string(),
        config_hash: fit_hash.to_string(),
        digest: None,
        files,
        counts: BTreeMap::from([("train-images".to_string(), stats.count())]),
        run_id: DoneMarker::new_run_id(),
        made_from,
    }
    .publish(store, &done_key)?;
    Ok((stats, bank))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(store: &Store, shard: Shard, identity: &str) {
        DoneMarker {
            stage: "extract".into(),
            shard: shard.to_string(),
            config_hash: identity.into(),
            digest: None,
            files: vec![],
            counts: BTreeMap::new(),
            run_id: DoneMarker::new_run_id(),
            made_from: BTreeMap::new(),
        }
        .write(store, &layout::extract::done(shard))
        .unwrap();
    }

    #[test]
    fn the_extract_layout_is_the_one_of_this_identity() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().display().to_string()).unwrap();
        assert!(matches!(extract_shards(&store, "a"), Err(FitError::NoExtract { .. })));
        // Two shards of an older configuration, then one shard of this one (not the largest count).
        mark(&store, Shard { index: 0, count: 2 }, "old");
        mark(&store, Shard { index: 1, count: 2 }, "old");
        assert!(matches!(extract_shards(&store, "new"), Err(FitError::StaleExtract { .. })));
        mark(&store, Shard { index: 0, count: 1 }, "new");
        assert_eq!(extract_shards(&store, "new").unwrap(), vec![Shard { index: 0, count: 1 }]);
        assert_eq!(extract_shards(&store, "old").unwrap().len(), 2);
        // Three shards of this one, one missing: named, never mixed with the others.
        mark(&store, Shard { index: 0, count: 3 }, "three");
        mark(&store, Shard { index: 2, count: 3 }, "three");
        match extract_shards(&store, "three") {
            Err(FitError::MissingShards { missing, count: 3, .. }) => assert_eq!(missing, "1"),
            other => panic!("{other:?}"),
        }
    }
}
