//! The score stage: every fitted model on every extract shard's images, one pass over each shard's
//! embeddings reading only the channels the models use.

use crate::mahalanobis::{Gaussian, ScoreError, distances_many};
use crate::maps::{MapFilter, MapStats};
use crate::scorer::Scorer;
use padim_core::config::{ComputePrecision, Job};
use padim_core::{Progress, Shard};
use padim_fit::model::{ModelError, ModelInfo, decode_model_parts};
use padim_store::layout::{self, counts};
use padim_store::{
    DoneMarker, EmbeddingBatch, EmbeddingReader, Gate, GateRules, ImageRow, Inputs, MapsWriter, ScoreRow, ShardsError,
    Store, StoreError, read_image_table, write_scores,
};
use rayon::prelude::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

impl ScoreStageError {
    /// Whether a rerun later may succeed (a storage failure), see [`StoreError::is_transient`].
    pub fn is_transient(&self) -> bool {
        match self {
            ScoreStageError::Store(e) => e.is_transient(),
            ScoreStageError::Shards(e) => e.is_transient(),
            _ => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScoreStageError {
    /// The job's extract shards are missing, incomplete or of another identity.
    #[error(transparent)]
    Shards(#[from] ShardsError),
    #[error("{url} is stale: {input} was redone after it was made (a forced rerun); run `{command}` first")]
    Stale { url: String, input: String, command: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{url}: {source}")]
    Model { url: String, source: ModelError },
    #[error("{url}: {source}")]
    Score { url: String, source: ScoreError },
    #[error("fit is not done under {url} for this job's configuration: run `padim fit JOB` first")]
    NoFit { url: String },
    #[error("models part {part} holds none of the fit's {models} model(s): use at most {models} parts")]
    EmptyPart { part: String, models: usize },
    #[error("model {model} was fitted on {found}, but {url} holds embeddings of {expected}")]
    Mismatch { model: String, url: String, found: String, expected: String },
    #[error("a temporary file for the maps of {url}: {source}; set TMPDIR to a folder with room")]
    Spill { url: String, source: std::io::Error },
    #[error(
        "{url} needs {need_gib:.2} GiB to load and score (its file and the decoded model), over \
         score.memory-budget-gib = {budget_gib}: raise the budget"
    )]
    MemoryBudget { url: String, need_gib: f64, budget_gib: f64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScoreSummary {
    pub images: usize,
    pub models: usize,
    /// Passes over each shard's embeddings: 1 unless the models exceed `score.memory-budget-gib`.
    pub passes: usize,
    pub shards_done: usize,
    pub shards_skipped: usize,
}

/// Choices of one invocation of the score stage.
#[derive(Debug, Clone, Default)]
pub struct ScoreOptions {
    /// Redo shards even if they are marked done.
    pub force: bool,
    /// Score only this shard of the extract shards (default: all).
    pub shard: Option<Shard>,
    /// Score only this part of the fit's models, in their order (default: all; 0/1 is all).
    pub models: Option<Shard>,
}

/// Scores every extract shard (or, with `options.shard`, that shard of the extract shards) with
/// every model of the job's fit (or, with `options.models`, that part of them, in the fit's order:
/// a sweep's experiments sharded across tasks, each reading the embeddings once for its models). A
/// part's outputs carry its tag (`score/scores-TAG-models-J-of-M.parquet`, its own done marker); the
/// report takes, per extract shard, the whole-model marker or parts that together cover every model
/// once. Steps: the fit to score with, the plan of passes within the memory budget, then each
/// shard (its gate, its passes, its outputs and done marker).
pub fn run_score(job: &Job, options: &ScoreOptions, progress: &dyn Progress) -> Result<ScoreSummary, ScoreStageError> {
    let span = tracing::info_span!("score", job = %job.name);
    let _entered = span.enter();
    let store = Store::open(&job.output)?;
    let inputs = padim_store::identity::input_digests(job, &store)?;
    let fit_done = current_fit(&store, &job.fit_hash(&inputs))?;
    let plan = ScorePlan::new(&store, job, &fit_done, options.models)?;
    let score_hash = job.score_hash(&inputs);
    let mut shards = padim_store::extract_shards(&store, &job.extract_hash(&inputs))?;
    if let Some(part) = options.shard {
        shards = shards[part.range(shards.len())].to_vec();
    }
    let mut summary = ScoreSummary {
        images: 0,
        models: plan.files.len(),
        passes: plan.groups.len(),
        shards_done: 0,
        shards_skipped: 0,
    };
    progress.start("score", shards.len() as u64);
    for shard in shards {
        match score_shard(&store, job, &plan, shard, (&score_hash, options.force))? {
            Some(images) => {
                summary.images += images;
                summary.shards_done += 1;
            }
            None => summary.shards_skipped += 1,
        }
        progress.advance(1);
    }
    progress.finish();
    Ok(summary)
}

/// The fit's done marker of this identity, with nothing it was made from redone since.
fn current_fit(store: &Store, fit_hash: &str) -> Result<DoneMarker, ScoreStageError> {
    let fit_done = DoneMarker::read(store, layout::fit::DONE)?
        .filter(|m| m.config_hash == fit_hash)
        .ok_or_else(|| ScoreStageError::NoFit { url: store.url_of(layout::fit::DONE) })?;
    if let Some(input) = fit_done.stale_input(store)? {
        return Err(ScoreStageError::Stale {
            url: store.url_of(layout::fit::DONE),
            input: store.url_of(&input),
            command: "padim fit JOB".into(),
        });
    }
    Ok(fit_done)
}

/// Which models this task scores, and in how many passes over each shard's embeddings.
struct ScorePlan {
    /// The models' keys (the fit's, or one part of them).
    files: Vec<String>,
    /// The `--models` part (none: every model).
    part: Option<Shard>,
    /// Consecutive models read together, within the memory budget.
    groups: Vec<std::ops::Range<usize>>,
    /// With one group, its models, loaded once for every shard.
    resident: Option<Pass>,
}

impl ScorePlan {
    fn new(
        store: &Store,
        job: &Job,
        fit_done: &DoneMarker,
        models: Option<Shard>,
    ) -> Result<ScorePlan, ScoreStageError> {
        // Part 0/1 is every model: the same outputs as no part, so that templates can always pass one.
        let part = models.filter(|p| p.count > 1);
        let files = match part {
            Some(part) => fit_done.files[part.range(fit_done.files.len())].to_vec(),
            None => fit_done.files.clone(),
        };
        if let Some(part) = part
            && files.is_empty()
        {
            return Err(ScoreStageError::EmptyPart { part: part.to_string(), models: fit_done.files.len() });
        }
        // Models in groups that fit the memory budget (one group, read once, unless a sweep's models
        // do not fit together); each further group is one more pass over each shard's embeddings.
        let sizes = files
            .par_iter()
            .map(|key| store.size(key)?.ok_or_else(|| ScoreStageError::NoFit { url: store.url_of(key) }))
            .collect::<Result<Vec<u64>, _>>()?;
        let budget = job.score.memory_budget_gib * (1u64 << 30) as f64;
        let groups = memory_groups(&sizes, budget, rayon::current_num_threads()).map_err(|(index, need)| {
            ScoreStageError::MemoryBudget {
                url: store.url_of(&files[index]),
                need_gib: need / (1u64 << 30) as f64,
                budget_gib: job.score.memory_budget_gib,
            }
        })?;
        if groups.len() > 1 {
            tracing::info!(
                passes = groups.len(),
                models = files.len(),
                "the models exceed score.memory-budget-gib together"
            );
        }
        let resident = match groups.as_slice() {
            [_] => {
                let clock = Instant::now();
                let pass = Pass::load(store, &files, job.score.precision)?;
                tracing::info!(seconds = clock.elapsed().as_secs_f64(), "loaded and prepared the models");
                Some(pass)
            }
            _ => None,
        };
        Ok(ScorePlan { files, part, groups, resident })
    }
}

/// What one shard's scoring gathers, per model in the fit's order: its rows, its maps (spilled to a
/// temporary file, so that memory does not grow with the shard's images) and the CPU time spent on
/// its distances, resizing and smoothing (summed over threads). Rows are written model by model, so
/// that the files do not depend on how the models were grouped.
struct ShardScores {
    names: Vec<String>,
    rows: Vec<Vec<ScoreRow>>,
    spills: Vec<std::io::BufWriter<std::fs::File>>,
    time: Vec<Duration>,
    images: usize,
}

/// Scores one extract shard with the plan's models, unless its done marker is current: `None`
/// when skipped, else the images scored.
fn score_shard(
    store: &Store,
    job: &Job,
    plan: &ScorePlan,
    shard: Shard,
    (score_hash, force): (&str, bool),
) -> Result<Option<usize>, ScoreStageError> {
    let done_key = layout::score::done(shard, plan.part);
    let made_from = DoneMarker::current_ids(store, &[layout::fit::DONE.to_string(), layout::extract::done(shard)])?;
    let rules = GateRules { force, inputs: Inputs::Exactly(&made_from), refuse_other: false };
    if let Gate::Current(_) = DoneMarker::gate(store, &done_key, score_hash, rules)? {
        return Ok(None);
    }
    store.delete(&done_key)?;
    let images: HashMap<u32, ImageRow> =
        read_image_table(store, &layout::extract::images(shard))?.into_iter().map(|row| (row.image, row)).collect();
    let maps_key = layout::score::maps(shard, plan.part);
    let spill_error = |source| ScoreStageError::Spill { url: store.url_of(&maps_key), source };
    let n = plan.files.len();
    let mut out = ShardScores {
        names: vec![String::new(); n],
        rows: vec![Vec::new(); n],
        spills: (0..n)
            .map(|_| tempfile::tempfile().map(std::io::BufWriter::new))
            .collect::<Result<_, _>>()
            .map_err(spill_error)?,
        time: vec![Duration::ZERO; n],
        images: 0,
    };
    for (pass_index, range) in plan.groups.iter().enumerate() {
        let loaded;
        let pass = match &plan.resident {
            Some(pass) => pass,
            None => {
                loaded = Pass::load(store, &plan.files[range.clone()], job.score.precision)?;
                &loaded
            }
        };
        let images_seen = score_pass(store, job, pass, shard, (&images, range.start), &mut out)?;
        if pass_index == 0 {
            out.images = images_seen;
        }
    }
    let scores_key = layout::score::scores(shard, plan.part);
    write_maps_from_spills(store, &maps_key, &out.rows, out.spills).map_err(|e| match e {
        SpillOrStore::Spill(source) => spill_error(source),
        SpillOrStore::Store(e) => ScoreStageError::Store(e),
    })?;
    write_scores(store, &scores_key, &out.rows.concat())?;
    let rows = out.rows.iter().map(Vec::len).sum::<usize>() as u64;
    DoneMarker {
        stage: "score".into(),
        shard: match plan.part {
            Some(part) => format!("{shard}, models {part}"),
            None => shard.to_string(),
        },
        config_hash: score_hash.to_string(),
        digest: None,
        run_id: DoneMarker::new_run_id(),
        made_from,
        files: vec![scores_key, maps_key],
        counts: std::iter::once((counts::ROWS.to_string(), rows))
            .chain(
                out.names
                    .iter()
                    .zip(&out.time)
                    .map(|(name, time)| (layout::score::micros_count(name), time.as_micros() as u64)),
            )
            .collect(),
    }
    .publish(store, &done_key)?;
    Ok(Some(out.images))
}

/// One pass over `shard`'s embeddings with the models of `pass`, which are models `at..` of the
/// plan; their rows, maps and times go to `out`. Returns the images read.
fn score_pass(
    store: &Store,
    job: &Job,
    pass: &Pass,
    shard: Shard,
    (images, at): (&HashMap<u32, ImageRow>, usize),
    out: &mut ShardScores,
) -> Result<usize, ScoreStageError> {
    let embeddings_key = layout::extract::embeddings(shard);
    let url = store.url_of(&embeddings_key);
    let mut reader = EmbeddingReader::open(store, &embeddings_key, Some(&pass.union), job.score.batch_images)?;
    let meta = reader.meta().clone();
    for (name, info, _) in &pass.models {
        let (grid_height, grid_width) = info.embedding_grid();
        if (info.backbone.as_str(), info.weights_sha256.as_str(), grid_height, grid_width)
            != (meta.backbone.as_str(), meta.weights_sha256.as_str(), meta.grid_height, meta.grid_width)
        {
            return Err(ScoreStageError::Mismatch {
                model: name.clone(),
                url,
                found: format!("{} ({grid_height}x{grid_width} grid)", info.backbone),
                expected: format!("{} ({}x{} grid)", meta.backbone, meta.grid_height, meta.grid_width),
            });
        }
    }
    let n_patches = meta.grid_height * meta.grid_width;
    let filter = MapFilter::new(
        meta.grid_height,
        meta.grid_width,
        meta.input_height,
        meta.input_width,
        job.score.sigma,
        job.score.kernel_size,
    );
    for (m, (name, _, _)) in pass.models.iter().enumerate() {
        out.names[at + m] = name.clone();
    }
    // A thread reads and decodes the next batch while this one is scored; the batch buffers go
    // back to it to be refilled.
    let (mut seen, mut read_wait_s, mut distance_s, mut maps_s) = (0, 0f64, 0f64, 0f64);
    std::thread::scope(|scope| -> Result<(), ScoreStageError> {
        let (sender, batches) = std::sync::mpsc::sync_channel::<Result<EmbeddingBatch, StoreError>>(1);
        let (recycle, recycled) = std::sync::mpsc::channel::<Vec<f32>>();
        scope.spawn(move || {
            loop {
                if let Ok(values) = recycled.try_recv() {
                    reader.recycle(values);
                }
                let next = reader.next_batch().transpose();
                let Some(next) = next else { break };
                let failed = next.is_err();
                if sender.send(next).is_err() || failed {
                    break; // the scoring side stopped, or this error ends the stream
                }
            }
        });
        let context = BatchContext { job, pass, images, filter: &filter, n_patches, url: &url, at };
        loop {
            let clock = Instant::now();
            let Ok(batch) = batches.recv() else { break };
            let batch = batch?;
            read_wait_s += clock.elapsed().as_secs_f64();
            let (distances, maps) = score_batch(&context, &batch, out)?;
            (distance_s, maps_s) = (distance_s + distances, maps_s + maps);
            seen += batch.image_ids.len();
            let _ = recycle.send(batch.values);
        }
        Ok(())
    })?;
    tracing::info!(read_wait_s, distance_s, maps_s, images = seen, "scored shard {shard}");
    Ok(seen)
}

/// What scoring a batch needs besides the batch.
struct BatchContext<'a> {
    job: &'a Job,
    pass: &'a Pass,
    images: &'a HashMap<u32, ImageRow>,
    filter: &'a MapFilter,
    n_patches: usize,
    url: &'a str,
    /// The first model of the pass among the plan's models.
    at: usize,
}

/// Scores one batch with the pass's models: distances, then per map its resizing, smoothing and
/// statistics (one map per task), its row and its spilled map. Returns the seconds spent on the
/// distances and on the maps.
fn score_batch(
    context: &BatchContext,
    batch: &EmbeddingBatch,
    out: &mut ShardScores,
) -> Result<(f64, f64), ScoreStageError> {
    let BatchContext { job, pass, images, filter, n_patches, url, at } = *context;
    let clock = Instant::now();
    let maps = batch_maps(pass, batch, url)?;
    let distances = clock.elapsed().as_secs_f64();
    let clock = Instant::now();
    let stats: Vec<(MapStats, Duration)> = maps
        .iter()
        .flat_map(|(maps, _)| maps.chunks(n_patches))
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|map| {
            let clock = Instant::now();
            let stats = MapStats::of(&filter.apply(map), job.score.top_fraction);
            (stats, clock.elapsed())
        })
        .collect();
    let spill_error = |source| ScoreStageError::Spill { url: url.to_string(), source };
    let mut stats = stats.into_iter();
    for (m, (maps, spent)) in maps.into_iter().enumerate() {
        out.time[at + m] += spent;
        for (&id, map) in batch.image_ids.iter().zip(maps.chunks(n_patches)) {
            let (stats, spent) = stats.next().expect("one statistic per map");
            out.time[at + m] += spent;
            let row = images.get(&id);
            out.rows[at + m].push(ScoreRow {
                image: id,
                label: row.map(|r| r.label.clone()).unwrap_or_default(),
                split: row.and_then(|r| r.split.clone()),
                model: out.names[at + m].clone(),
                mean: stats.mean,
                max: stats.max,
                min: stats.min,
                top: stats.top,
            });
            spill_map(&mut out.spills[at + m], map).map_err(spill_error)?;
        }
    }
    Ok((distances, clock.elapsed().as_secs_f64()))
}

/// Every model's distance maps of a batch (`[n_images, n_patches]` each) and the CPU time they
/// took: the Gaussian models in one pass over the batch, nearest-patch models one by one.
fn batch_maps(
    pass: &Pass,
    batch: &padim_store::EmbeddingBatch,
    url: &str,
) -> Result<Vec<(Vec<f32>, Duration)>, ScoreStageError> {
    let score_error = |source| ScoreStageError::Score { url: url.to_string(), source };
    let gaussians: Vec<(&Gaussian, &[usize])> = pass
        .models
        .iter()
        .zip(&pass.positions)
        .filter_map(|((_, _, scorer), p)| match scorer {
            Scorer::Gaussian(g) => Some((g, p.as_slice())),
            Scorer::Nearest(_) => None,
        })
        .collect();
    let mut gaussian_maps =
        distances_many(&gaussians, &pass.union, &batch.image_ids, &batch.values).map_err(score_error)?.into_iter();
    pass.models
        .iter()
        .zip(&pass.positions)
        .map(|((_, _, scorer), positions)| match scorer {
            Scorer::Nearest(_) => {
                scorer.distances_of(positions, &pass.union, &batch.image_ids, &batch.values).map_err(score_error)
            }
            Scorer::Gaussian(_) => Ok(gaussian_maps.next().expect("one map set per Gaussian model")),
        })
        .collect()
}

/// Appends a map's values to a model's spill file (a temporary file of this process: native-endian
/// f32, written and read back as they lie in memory).
fn spill_map(spill: &mut impl std::io::Write, map: &[f32]) -> std::io::Result<()> {
    spill.write_all(bytemuck::cast_slice(map))
}

enum SpillOrStore {
    Spill(std::io::Error),
    Store(StoreError),
}

/// Streams the maps table from the models' spill files, model by model in the fit's order, each
/// model's maps in the order of its score rows.
fn write_maps_from_spills(
    store: &Store,
    key: &str,
    score_rows: &[Vec<ScoreRow>],
    spills: Vec<std::io::BufWriter<std::fs::File>>,
) -> Result<(), SpillOrStore> {
    use std::io::{Read, Seek};
    let mut writer = MapsWriter::create(store, key).map_err(SpillOrStore::Store)?;
    for (rows, spill) in score_rows.iter().zip(spills) {
        let mut file = spill.into_inner().map_err(|e| SpillOrStore::Spill(e.into_error()))?;
        let length = file.stream_position().map_err(SpillOrStore::Spill)? as usize;
        file.rewind().map_err(SpillOrStore::Spill)?;
        let Some(first) = rows.first() else { continue };
        let map_len = length / 4 / rows.len();
        let mut file = std::io::BufReader::new(file);
        // A few MiB at a time.
        let per_chunk = (4 << 20) / (map_len * 4).max(1) + 1;
        let mut values = Vec::new();
        for chunk in rows.chunks(per_chunk) {
            values.resize(chunk.len() * map_len, 0f32);
            file.read_exact(bytemuck::cast_slice_mut(&mut values)).map_err(SpillOrStore::Spill)?;
            let images: Vec<u32> = chunk.iter().map(|r| r.image).collect();
            writer.write(&first.model, &images, &values).map_err(SpillOrStore::Store)?;
        }
    }
    writer.finish().map_err(SpillOrStore::Store)
}

/// Models read, decoded and prepared together (in parallel), with the union of their channels
/// (sorted) and each model's channel positions in it.
struct Pass {
    /// Each model's subset name, metadata and scorer.
    models: Vec<(String, ModelInfo, Scorer)>,
    union: Vec<usize>,
    positions: Vec<Vec<usize>>,
}

impl Pass {
    fn load(store: &Store, keys: &[String], precision: ComputePrecision) -> Result<Pass, ScoreStageError> {
        let models: Vec<(String, ModelInfo, Scorer)> = keys
            .par_iter()
            .map(|key| {
                let url = || store.url_of(key);
                let bytes = store.get(key)?.ok_or_else(|| ScoreStageError::NoFit { url: url() })?;
                let (model, precision_bytes) =
                    decode_model_parts(&bytes).map_err(|source| ScoreStageError::Model { url: url(), source })?;
                let info = model.info.clone();
                let scorer = Scorer::from_parts(model, precision_bytes, precision)
                    .map_err(|source| ScoreStageError::Score { url: url(), source })?;
                Ok((info.subset.clone(), info, scorer))
            })
            .collect::<Result<_, ScoreStageError>>()?;
        let mut union: Vec<usize> = models.iter().flat_map(|(_, _, m)| m.channels().iter().copied()).collect();
        union.sort_unstable();
        union.dedup();
        let positions = models
            .iter()
            .map(|(_, _, m)| m.channels().iter().map(|c| union.binary_search(c).unwrap_or(0)).collect())
            .collect();
        Ok(Pass { models, union, positions })
    }
}

/// Splits models (their file sizes, in order) into consecutive groups whose memory fits `budget`
/// bytes: each decoded model takes about its file's size, and while a group is read up to
/// `threads` files are in memory beside the decoded models. `Err((i, need))`: model `i` alone needs
/// `need` bytes, over the budget.
fn memory_groups(sizes: &[u64], budget: f64, threads: usize) -> Result<Vec<std::ops::Range<usize>>, (usize, f64)> {
    let need = |group: &[u64]| -> f64 {
        let largest = group.iter().copied().max().unwrap_or(0);
        (group.iter().sum::<u64>() + largest * group.len().min(threads.max(1)) as u64) as f64
    };
    let mut groups = Vec::new();
    let mut start = 0;
    for end in 1..=sizes.len() {
        let alone = need(&sizes[end - 1..end]);
        if alone > budget {
            return Err((end - 1, alone));
        }
        if need(&sizes[start..end]) > budget {
            groups.push(start..end - 1);
            start = end - 1;
        }
    }
    if start < sizes.len() {
        groups.push(start..sizes.len());
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::memory_groups;
    use proptest::prelude::*;

    #[test]
    fn groups_of_known_sizes() {
        // 4 threads: a group needs its sizes plus its largest times min(4, len).
        assert_eq!(memory_groups(&[10, 10, 10], 1e9, 4), Ok(std::iter::once(0..3).collect()));
        assert_eq!(memory_groups(&[10, 10, 10], 40.0, 4), Ok(vec![0..2, 2..3]));
        assert_eq!(memory_groups(&[10, 30, 10], 40.0, 4), Err((1, 60.0)));
        assert_eq!(memory_groups(&[10, 30, 10], 60.0, 1), Ok(vec![0..1, 1..2, 2..3]));
    }

    proptest! {
        /// The groups cover every model once, in order; each fits; none could take the next model.
        #[test]
        fn groups_partition_and_fit(sizes in prop::collection::vec(1u64..100, 1..30), budget in 2.0f64..1000.0,
                                    threads in 1usize..6) {
            let need = |g: &[u64]| (g.iter().sum::<u64>() + g.iter().max().unwrap() * g.len().min(threads) as u64) as f64;
            match memory_groups(&sizes, budget, threads) {
                Err((i, alone)) => prop_assert!(alone == need(&sizes[i..i + 1]) && alone > budget),
                Ok(groups) => {
                    prop_assert_eq!(groups.first().unwrap().start, 0);
                    prop_assert_eq!(groups.last().unwrap().end, sizes.len());
                    for pair in groups.windows(2) {
                        prop_assert_eq!(pair[0].end, pair[1].start);
                        prop_assert!(need(&sizes[pair[0].start..pair[0].end + 1]) > budget, "greedy");
                    }
                    for g in &groups {
                        prop_assert!(!g.is_empty() && need(&sizes[g.clone()]) <= budget);
                    }
                }
            }
        }
    }
}
