//! The score stage: every fitted model on every extract shard's images, one pass over each shard's
//! embeddings reading only the channels the models use.

use crate::mahalanobis::{ScoreError, distances_many};
use crate::maps::{MapFilter, MapStats};
use padim_core::config::Job;
use padim_core::{Progress, Shard};
use padim_fit::model::{Model, ModelError, decode_model};
use padim_store::{
    DoneMarker, EmbeddingReader, ImageRow, MapRow, ScoreRow, Store, StoreError, read_image_table, write_maps,
    write_scores,
};
use rayon::prelude::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ScoreStageError {
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
}

/// Between an extract shard's tag and a model part's tag in score file names.
pub const MODELS_INFIX: &str = "-models-";

/// Done-marker counts with this prefix hold each model's scoring CPU time (distances, resizing and
/// smoothing, summed over threads) in microseconds.
pub const MICROS_PREFIX: &str = "micros/";

#[derive(Debug, Clone, PartialEq)]
pub struct ScoreSummary {
    pub images: usize,
    pub models: usize,
    pub shards_done: usize,
    pub shards_skipped: usize,
}

/// Scores every extract shard (or, with `shard`, that shard of the extract shards) with every model
/// of the job's fit (or, with `models`, that part of them, in the fit's order: a sweep's experiments
/// sharded across tasks, each reading the embeddings once for its models). A part's outputs carry
/// its tag (`score/scores-TAG-models-J-of-M.parquet`, its own done marker); the report takes, per
/// extract shard, the whole-model marker or parts that together cover every model once.
pub fn run_score(
    job: &Job,
    force: bool,
    shard: Option<Shard>,
    models: Option<Shard>,
    progress: &dyn Progress,
) -> Result<ScoreSummary, ScoreStageError> {
    let span = tracing::info_span!("score", job = %job.name);
    let _entered = span.enter();
    let store = Store::open(&job.output)?;
    let fit_done = DoneMarker::read(&store, "fit/done.json")?
        .filter(|m| m.config_hash == job.fit_hash())
        .ok_or_else(|| ScoreStageError::NoFit { url: store.url_of("fit/done.json") })?;
    let part = models;
    let files = match part {
        Some(part) => &fit_done.files[part.range(fit_done.files.len())],
        None => &fit_done.files[..],
    };
    if let Some(part) = part
        && files.is_empty()
    {
        return Err(ScoreStageError::EmptyPart { part: part.to_string(), models: fit_done.files.len() });
    }
    let suffix = part.map(|p| format!("{MODELS_INFIX}{}", p.tag())).unwrap_or_default();
    // Models are read and decoded in parallel (a sweep's can be hundreds of megabytes).
    let models: Vec<(String, Model)> = files
        .par_iter()
        .map(|key| {
            let bytes = store.get(key)?.ok_or_else(|| ScoreStageError::NoFit { url: store.url_of(key) })?;
            let model =
                decode_model(&bytes).map_err(|source| ScoreStageError::Model { url: store.url_of(key), source })?;
            Ok((model.info.subset.clone(), model))
        })
        .collect::<Result<_, ScoreStageError>>()?;
    let mut union: Vec<usize> = models.iter().flat_map(|(_, m)| m.channels.iter().copied()).collect();
    union.sort_unstable();
    union.dedup();
    let positions: Vec<Vec<usize>> =
        models.iter().map(|(_, m)| m.channels.iter().map(|c| union.binary_search(c).unwrap_or(0)).collect()).collect();
    let score_hash = job.score_hash();
    let mut shards = padim_fit::stage::latest_extract_shards(&store)?;
    if let Some(part) = shard {
        shards = shards[part.range(shards.len())].to_vec();
    }
    let mut summary = ScoreSummary { images: 0, models: models.len(), shards_done: 0, shards_skipped: 0 };
    progress.start("score", shards.len() as u64);
    for shard in shards {
        let tag = shard.tag();
        let done_key = format!("score/done-{tag}{suffix}.json");
        if !force && DoneMarker::read(&store, &done_key)?.is_some_and(|m| m.config_hash == score_hash) {
            summary.shards_skipped += 1;
            progress.advance(1);
            continue;
        }
        store.delete(&done_key)?;
        let images: HashMap<u32, ImageRow> = read_image_table(&store, &format!("extract/images-{tag}.parquet"))?
            .into_iter()
            .map(|row| (row.image, row))
            .collect();
        let embeddings_key = format!("extract/embeddings-{tag}.parquet");
        let url = store.url_of(&embeddings_key);
        let mut reader = EmbeddingReader::open(&store, &embeddings_key, Some(&union), job.score.batch_images)?;
        let meta = reader.meta().clone();
        for (name, model) in &models {
            let info = &model.info;
            if (info.backbone.as_str(), info.weights_sha256.as_str(), info.grid_height, info.grid_width)
                != (meta.backbone.as_str(), meta.weights_sha256.as_str(), meta.grid_height, meta.grid_width)
            {
                return Err(ScoreStageError::Mismatch {
                    model: name.clone(),
                    url,
                    found: format!("{} ({}x{} grid)", info.backbone, info.grid_height, info.grid_width),
                    expected: format!("{} ({}x{} grid)", meta.backbone, meta.grid_height, meta.grid_width),
                });
            }
        }
        let (grid_h, grid_w) = (meta.grid_height, meta.grid_width);
        let n_patches = grid_h * grid_w;
        let (mut score_rows, mut map_rows) = (Vec::new(), Vec::new());
        let filter =
            MapFilter::new(grid_h, grid_w, meta.input_height, meta.input_width, job.score.sigma, job.score.kernel_size);
        let with_positions: Vec<(&Model, &[usize])> =
            models.iter().zip(&positions).map(|((_, model), p)| (model, p.as_slice())).collect();
        // Per model: CPU time spent on its distances, resizing and smoothing (summed over threads).
        let mut model_time = vec![Duration::ZERO; models.len()];
        while let Some(batch) = reader.next_batch()? {
            let n = batch.image_ids.len();
            let maps = distances_many(&with_positions, &union, &batch.image_ids, &batch.values)
                .map_err(|source| ScoreStageError::Score { url: url.clone(), source })?;
            // Resizing and smoothing are independent per map: one map per task.
            let stats: Vec<(MapStats, Duration)> = maps
                .iter()
                .flat_map(|(maps, _)| maps.chunks(n_patches))
                .collect::<Vec<_>>()
                .into_par_iter()
                .map(|map| {
                    let clock = Instant::now();
                    let stats = MapStats::of(&filter.apply(map));
                    (stats, clock.elapsed())
                })
                .collect();
            let mut stats = stats.into_iter();
            for (((name, _), (maps, spent)), time) in models.iter().zip(maps).zip(&mut model_time) {
                *time += spent;
                for (&id, map) in batch.image_ids.iter().zip(maps.chunks(n_patches)) {
                    let (stats, spent) = stats.next().expect("one statistic per map");
                    *time += spent;
                    let row = images.get(&id);
                    score_rows.push(ScoreRow {
                        image: id,
                        label: row.map(|r| r.label.clone()).unwrap_or_default(),
                        split: row.and_then(|r| r.split.clone()),
                        model: name.clone(),
                        mean: stats.mean,
                        max: stats.max,
                        min: stats.min,
                    });
                    map_rows.push(MapRow { image: id, model: name.clone(), map: map.to_vec() });
                }
            }
            summary.images += n;
        }
        let scores_key = format!("score/scores-{tag}{suffix}.parquet");
        let maps_key = format!("score/maps-{tag}{suffix}.parquet");
        write_scores(&store, &scores_key, &score_rows)?;
        write_maps(&store, &maps_key, &map_rows)?;
        DoneMarker {
            stage: "score".into(),
            shard: match part {
                Some(part) => format!("{shard}, models {part}"),
                None => shard.to_string(),
            },
            config_hash: score_hash.clone(),
            files: vec![scores_key, maps_key],
            counts: std::iter::once(("rows".to_string(), score_rows.len() as u64))
                .chain(
                    models
                        .iter()
                        .zip(&model_time)
                        .map(|((name, _), time)| (format!("{MICROS_PREFIX}{name}"), time.as_micros() as u64)),
                )
                .collect(),
        }
        .write(&store, &done_key)?;
        summary.shards_done += 1;
        progress.advance(1);
    }
    progress.finish();
    Ok(summary)
}
