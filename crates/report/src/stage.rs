//! The report stage: from the score tables to calibrated thresholds, test metrics, pictures, tables
//! and one HTML page, under `<run>/report/`.
//!
//! Calibration never looks at the test set: the normalisation (the calibration maps' min and max),
//! the threshold and the heatmap display range all come from the calibration split.

use crate::ReportOptions;
use crate::error::ReportError;
use crate::evaluate::evaluate;
use crate::inputs::{
    ScoreShard, Scored, group_by_model, image_rows, left_out, load_maps, load_scores, score_shards,
    stored_model_channels,
};
use crate::metrics::percentile;
use crate::pixels::{calibration_pixel_metrics, pixel_metrics};
use crate::summary::{ModelMetrics, PixelMetrics, ReportSummary, ScoreChoice, Unusable};
use padim_core::config::{BEST_MODEL, Job, ScoreKind, SplitName};
use padim_core::{Progress, Shard};
use padim_store::layout::{self, counts};
use padim_store::{DoneMarker, Gate, GateRules, Inputs, Store};
use std::collections::{BTreeMap, BTreeSet, HashMap};

const DONE_KEY: &str = layout::report::DONE;

/// The report of one run. Steps: the done-marker gate, the scores of every model, each model's
/// metrics and image score, the headline model, its maps and pixel metrics, then the outputs.
pub(crate) fn report_run(
    job: &Job,
    options: &ReportOptions,
    progress: &dyn Progress,
) -> Result<ReportSummary, ReportError> {
    let span = tracing::info_span!("report", job = %job.name);
    let _entered = span.enter();
    let store = Store::open(&job.output)?;
    let inputs = padim_store::identity::input_digests(job, &store)?;
    let hash = job.report_hash(&inputs);
    let rules = GateRules { force: options.force, inputs: Inputs::Upstream, refuse_other: true };
    match DoneMarker::gate(&store, DONE_KEY, &hash, rules)? {
        Gate::Current(_) => {
            if let Some(summary) = finished_summary(&store)? {
                return Ok(summary);
            }
        }
        Gate::Conflict(_) => return Err(ReportError::ConfigMismatch { url: store.url_of(DONE_KEY) }),
        Gate::Redo { .. } => {}
    }
    store.delete(DONE_KEY)?;
    let shards = score_shards(&store, &job.extract_hash(&inputs), &job.score_hash(&inputs))?;
    let by_model = scores_by_model(&store, job, &shards)?;
    let evaluated = evaluate_models(job, &by_model)?;
    let headline = headline_model(&store, job, &evaluated)?;
    let rows = &by_model[&headline.model];
    let calibration: Vec<&Scored> = rows.iter().filter(|r| r.split == Some(SplitName::Calibration)).collect();
    let display_max = percentile(calibration.iter().map(|r| r.max).collect(), job.report.display_percentile);
    let (maps, pixel, pixel_calibration) = headline_maps(&store, job, &shards, (&headline.model, rows), progress)?;
    let image_rows = image_rows(&store, &shards)?;
    let Evaluated { models, unusable, choices } = evaluated;
    let mut summary = ReportSummary {
        job: job.name.clone(),
        config_hash: hash.clone(),
        backbone: None,
        headline_model: headline.model.clone(),
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
    files.extend(write_page(&store, job, &summary, pictures)?);
    store.put(layout::report::RUN_MANIFEST, crate::manifest::run_manifest(job, &inputs, &image_rows))?;
    store.put(layout::report::BUNDLE, crate::bundle::bundle(&store, job, &headline, &summary)?)?;
    files.extend([layout::report::RUN_MANIFEST, layout::report::BUNDLE].map(String::from));
    let made_from = DoneMarker::current_ids(&store, &shards.iter().flat_map(|s| s.keys.clone()).collect::<Vec<_>>())?;
    publish_done(&store, hash, files, (counts::IMAGES, rows.len()), made_from)?;
    Ok(summary)
}

/// Every model's scores (joined with the image table), checked to hold a calibration and a test
/// split and the model the job names.
fn scores_by_model(
    store: &Store,
    job: &Job,
    shards: &[ScoreShard],
) -> Result<BTreeMap<String, Vec<Scored>>, ReportError> {
    let scores = load_scores(store, shards)?;
    let by_model = group_by_model(&scores)?;
    let splits: BTreeSet<SplitName> = by_model.values().flatten().filter_map(|s| s.split).collect();
    if !(splits.contains(&SplitName::Calibration) && splits.contains(&SplitName::Test)) {
        let named: BTreeSet<&str> = by_model.values().flatten().map(|s| s.split_text.as_str()).collect();
        return Err(ReportError::NoSplits {
            url: store.url_of(layout::score::DIR),
            found: if named.iter().all(|s| s.is_empty()) { "no splits".into() } else { format!("splits {named:?}") },
        });
    }
    if let Some(model) = named_model(job)
        && !by_model.contains_key(model)
    {
        return Err(ReportError::Table {
            what: store.url_of(layout::score::DIR),
            message: format!("no scores of model `{model}` (report.model); run fit and score again"),
        });
    }
    Ok(by_model)
}

/// The model `report.model` names, unless it asks for the best.
fn named_model(job: &Job) -> Option<&str> {
    job.report.model.as_deref().filter(|m| *m != BEST_MODEL)
}

/// Every model with every image score, those the calibration split cannot calibrate, and each
/// model's chosen score.
struct Evaluated {
    models: Vec<ModelMetrics>,
    unusable: Vec<Unusable>,
    choices: Vec<ScoreChoice>,
}

/// Calibrates and tests every model with every image score; a combination the calibration split
/// cannot calibrate is unusable (an error only for a model the job names with its fixed score).
fn evaluate_models(job: &Job, by_model: &BTreeMap<String, Vec<Scored>>) -> Result<Evaluated, ReportError> {
    let normal = &job.dataset.normal;
    let named = named_model(job);
    let mut out = Evaluated { models: Vec::new(), unusable: Vec::new(), choices: Vec::new() };
    let groups = job.split.as_ref().and_then(|split| split.groups.as_ref()).map(|groups| &groups.of);
    for (model, rows) in by_model {
        let mut usable = Vec::new();
        for kind in ScoreKind::ALL {
            match evaluate(model, rows, kind, job, normal, groups) {
                Ok(metrics) => {
                    out.models.push(metrics);
                    usable.push(kind);
                }
                Err(error) if !(named == Some(model.as_str()) && Some(kind) == job.report.score.fixed()) => {
                    tracing::warn!(%error, "cannot calibrate");
                    out.unusable.push(Unusable {
                        model: model.clone(),
                        score: kind.name().into(),
                        reason: error.to_string(),
                    });
                }
                Err(error) => return Err(error),
            }
        }
        let (candidates, resampled) = crate::choice::candidates(rows, &usable, normal, groups);
        let chosen = crate::choice::choose(job.report.score, &candidates);
        if usable.contains(&chosen) {
            out.choices.push(ScoreChoice {
                model: model.clone(),
                rule: job.report.score,
                chosen,
                candidates,
                resampled,
            });
        }
    }
    Ok(out)
}

/// The headline: the model the job names, or the best by calibration AUROC (ties: fewer channels),
/// each with its chosen image score.
fn headline_model(store: &Store, job: &Job, evaluated: &Evaluated) -> Result<ModelMetrics, ReportError> {
    let chosen_metrics = |model: &str| {
        let choice = evaluated.choices.iter().find(|c| c.model == model)?;
        evaluated.models.iter().find(|m| m.model == model && m.score == choice.chosen)
    };
    let named = named_model(job);
    let headline = match named {
        Some(model) => chosen_metrics(model).cloned(),
        None => {
            let mut ranked = Vec::new();
            for choice in &evaluated.choices {
                let (channels, _) = stored_model_channels(store, &layout::fit::model(&choice.model))?;
                ranked.extend(chosen_metrics(&choice.model).map(|m| (m, channels)));
            }
            crate::choice::best_model(ranked.into_iter()).cloned()
        }
    };
    headline.ok_or_else(|| ReportError::Table {
        what: store.url_of(layout::score::DIR),
        message: match named {
            Some(model) => format!("model `{model}` (report.model) has no image score that calibrates"),
            None => "no model has an image score that calibrates".into(),
        },
    })
}

/// The headline model's maps (of the test images, and with masks of the calibration images too,
/// whose pixel metrics guide pixel-level choices) and its pixel metrics on both splits.
type HeadlineMaps = (HashMap<u32, Vec<f32>>, Option<PixelMetrics>, Option<PixelMetrics>);

fn headline_maps(
    store: &Store,
    job: &Job,
    shards: &[ScoreShard],
    (model, rows): (&str, &[Scored]),
    progress: &dyn Progress,
) -> Result<HeadlineMaps, ReportError> {
    let with_masks = job.dataset.mask.is_some();
    let in_split = |split| rows.iter().filter(move |r| r.split == Some(split));
    let ids: BTreeSet<u32> = in_split(SplitName::Test)
        .chain(in_split(SplitName::Calibration).filter(|_| with_masks))
        .map(|r| r.image)
        .collect();
    let maps = load_maps(store, shards, &[model], &ids)?.remove(model).unwrap_or_default();
    if !with_masks {
        return Ok((maps, None, None));
    }
    let tests: Vec<&Scored> = in_split(SplitName::Test).collect();
    let calibration: Vec<&Scored> = in_split(SplitName::Calibration).collect();
    let test = pixel_metrics(job, &maps, model, (SplitName::Test.name(), &tests), true, progress)?;
    let calibration = calibration_pixel_metrics(job, &maps, model, &calibration, true, progress)?;
    Ok((maps, Some(test), calibration))
}

/// Writes the pictures, the page and `metrics.json`; returns their keys.
fn write_page(
    store: &Store,
    job: &Job,
    summary: &ReportSummary,
    pictures: Vec<(String, Vec<u8>)>,
) -> Result<Vec<String>, ReportError> {
    let html = crate::html::page(job, summary, &pictures);
    let mut files = Vec::new();
    for (name, bytes) in pictures {
        let key = layout::report::file(&name);
        store.put(&key, bytes)?;
        files.push(key);
    }
    store.put(layout::report::HTML, html.into_bytes())?;
    store.put(layout::report::METRICS, serde_json::to_vec_pretty(summary).unwrap_or_default())?;
    files.extend([layout::report::HTML, layout::report::METRICS].map(String::from));
    Ok(files)
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
