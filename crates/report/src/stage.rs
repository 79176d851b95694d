//! The report stage: from the score tables to calibrated thresholds, test metrics, pictures, tables
//! and one HTML page, under `<run>/report/`.
//!
//! Calibration never looks at the test set: the normalisation (the calibration maps' min and max),
//! the threshold and the heatmap display range all come from the calibration split.

use crate::error::ReportError;
use crate::evaluate::{evaluate, percentile};
use crate::inputs::{
    Scored, group_by_model, image_rows, left_out, load_maps, load_scores, score_shards, stored_model_channels,
};
use crate::pixels::{calibration_pixel_metrics, pixel_metrics};
use crate::summary::{ReportSummary, ScoreChoice, Unusable};
use padim_core::config::{BEST_MODEL, Job, ScoreKind};
use padim_core::{Progress, Shard};
use padim_store::{DoneMarker, Store, layout};
use std::collections::{BTreeMap, BTreeSet};

const DONE_KEY: &str = layout::report::DONE;

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
            if let Some(summary) = finished_summary(&store)? {
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
            url: store.url_of(layout::score::DIR),
            found: if splits.iter().all(|s| s.is_empty()) { "no splits".into() } else { format!("splits {splits:?}") },
        });
    }
    let normal = &job.dataset.normal;
    let named = job.report.model.clone().filter(|m| m != BEST_MODEL);
    if let Some(model) = &named
        && !by_model.contains_key(model)
    {
        return Err(ReportError::Table {
            what: store.url_of(layout::score::DIR),
            message: format!("no scores of model `{model}` (report.model); run fit and score again"),
        });
    }
    // Every model with every image score; those the calibration split cannot calibrate are reported
    // as unusable (an error only for a model the job names with its fixed score).
    let mut models = Vec::new();
    let mut unusable = Vec::new();
    let mut choices = Vec::new();
    for (model, rows) in &by_model {
        let mut usable = Vec::new();
        for kind in ScoreKind::ALL {
            match evaluate(model, rows, kind, job, normal) {
                Ok(metrics) => {
                    models.push(metrics);
                    usable.push(kind);
                }
                Err(error) if !(named.as_ref() == Some(model) && Some(kind) == job.report.score.fixed()) => {
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
        let groups = job.split.as_ref().and_then(|split| split.groups.as_ref()).map(|groups| &groups.of);
        let (candidates, resampled) = crate::choice::candidates(rows, &usable, normal, groups);
        let chosen = crate::choice::choose(job.report.score, &candidates);
        if usable.contains(&chosen) {
            choices.push(ScoreChoice { model: model.clone(), rule: job.report.score, chosen, candidates, resampled });
        }
    }
    let chosen_metrics = |model: &str| {
        let choice = choices.iter().find(|c| c.model == model)?;
        models.iter().find(|m| m.model == model && m.score == choice.chosen)
    };
    let headline = match &named {
        Some(model) => chosen_metrics(model).cloned(),
        None => {
            let mut ranked = Vec::new();
            for choice in &choices {
                let (channels, _) = stored_model_channels(&store, &layout::fit::model(&choice.model))?;
                ranked.extend(chosen_metrics(&choice.model).map(|m| (m, channels)));
            }
            crate::choice::best_model(ranked.into_iter()).cloned()
        }
    }
    .ok_or_else(|| ReportError::Table {
        what: store.url_of(layout::score::DIR),
        message: match &named {
            Some(model) => format!("model `{model}` (report.model) has no image score that calibrates"),
            None => "no model has an image score that calibrates".into(),
        },
    })?;
    let headline_model = headline.model.clone();
    let rows = &by_model[&headline_model];
    let calibration: Vec<&Scored> = rows.iter().filter(|r| r.split == "calibration").collect();
    let display_max = percentile(calibration.iter().map(|r| r.max).collect(), job.report.display_percentile);

    // Maps of the headline model for the pictures and pixel metrics (resized and smoothed as in score).
    let tests: Vec<&Scored> = rows.iter().filter(|r| r.split == "test").collect();
    // With masks, the calibration images' maps too: pixel metrics of both splits (a pixel-level
    // setting is chosen on the calibration split's, like everything else).
    let with_masks = job.dataset.mask.is_some();
    let ids: BTreeSet<u32> = rows
        .iter()
        .filter(|r| r.split == "test" || (with_masks && r.split == "calibration"))
        .map(|r| r.image)
        .collect();
    let maps = load_maps(&store, &shards, &[&headline_model], &ids)?.remove(&headline_model).unwrap_or_default();
    let (pixel, pixel_calibration) = if with_masks {
        let test = pixel_metrics(job, &maps, &headline_model, ("test", &tests), true, progress)?;
        let calibration = calibration_pixel_metrics(job, &maps, &headline_model, &calibration, true, progress)?;
        (Some(test), calibration)
    } else {
        (None, None)
    };

    let image_rows = image_rows(&store, &shards)?;
    let mut summary = ReportSummary {
        job: job.name.clone(),
        config_hash: hash.clone(),
        backbone: None,
        headline_model: headline_model.clone(),
        headline_score: headline.score,
        choices,
        display_range: [0.0, display_max],
        models,
        unusable,
        pixel,
        pixel_calibration,
        left_out: left_out(&image_rows),
        sweep: None,
        already_done: false,
    };
    let mut files = crate::tables::write_tables(&store, &by_model, &summary, job)?;
    if job.sweep.is_some() {
        let (sweep, keys) = crate::decision::sweep_table(&store, job, &shards, &by_model, &summary, progress)?;
        summary.sweep = Some(sweep);
        files.extend(keys);
    }
    let pictures = crate::figures::pictures(job, &maps, &headline, rows, display_max, &summary, progress)?;
    let html = crate::html::page(job, &summary, &pictures);
    for (name, bytes) in pictures {
        let key = layout::report::file(&name);
        store.put(&key, bytes)?;
        files.push(key);
    }
    store.put(layout::report::HTML, html.into_bytes())?;
    files.push(layout::report::HTML.into());
    store.put(layout::report::METRICS, serde_json::to_vec_pretty(&summary).unwrap_or_default())?;
    store.put(layout::report::RUN_MANIFEST, crate::manifest::run_manifest(job, &inputs, &image_rows))?;
    store.put(layout::report::BUNDLE, crate::bundle::bundle(&store, job, &headline, &summary)?)?;
    files.extend([layout::report::METRICS, layout::report::RUN_MANIFEST, layout::report::BUNDLE].map(String::from));
    let made_from = DoneMarker::current_ids(&store, &shards.iter().flat_map(|s| s.keys.clone()).collect::<Vec<_>>())?;
    publish_done(&store, hash, files, ("images", rows.len()), made_from)?;
    Ok(summary)
}

/// The summary of a finished report (its `metrics.json`, marked already done); `None` where it
/// cannot be read, and the report is then redone.
pub(crate) fn finished_summary(store: &Store) -> Result<Option<ReportSummary>, ReportError> {
    let bytes = store.get(layout::report::METRICS)?.unwrap_or_default();
    Ok(serde_json::from_slice::<ReportSummary>(&bytes)
        .ok()
        .map(|summary| ReportSummary { already_done: true, ..summary }))
}

/// Publishes the report's done marker, listing `files`, with one count and what it was made from.
pub(crate) fn publish_done(
    store: &Store,
    hash: String,
    files: Vec<String>,
    (counted, count): (&str, usize),
    made_from: BTreeMap<String, String>,
) -> Result<(), ReportError> {
    DoneMarker {
        stage: "report".into(),
        shard: Shard::ALL.to_string(),
        config_hash: hash,
        digest: None,
        files,
        counts: BTreeMap::from([(counted.to_string(), count as u64)]),
        run_id: DoneMarker::new_run_id(),
        made_from,
    }
    .publish(store, DONE_KEY)?;
    Ok(())
}
