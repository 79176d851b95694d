//! The report of a sweep over backbones. Each backbone's run (`<output>/backbones/<name>/`, see
//! `Job::variants`) reports on its own; this compares them under the job's own `report/`: every
//! experiment of every backbone in one decision table (grouped by backbone, layers, covariance and
//! channels), the best by calibration AUROC across backbones as the headline, and that run's
//! pictures, page and bundle.

use crate::ReportOptions;
use crate::error::{ReportError, table_error};
use crate::stage::{finished_summary, publish_done};
use crate::summary::ReportSummary;
use crate::sweep::{Experiment, SweepSummary, best, experiments_frame, groups, groups_frame};
use crate::tables::put_table;
use padim_core::Progress;
use padim_core::config::Job;
use padim_store::layout::{self, counts};
use padim_store::{DoneMarker, Gate, GateRules, Inputs, Store};
use std::collections::BTreeMap;

/// Runs (or reuses) each backbone's report, then writes the comparison. Redone when the job
/// changed or any backbone's report was redone since.
pub(crate) fn run_backbones_report(
    job: &Job,
    options: &ReportOptions,
    progress: &dyn Progress,
) -> Result<ReportSummary, ReportError> {
    let span = tracing::info_span!("report (backbones)", job = %job.name);
    let _entered = span.enter();
    let variants = job.variants();
    let mut runs = Vec::new();
    for variant in &variants {
        let summary = crate::stage::report_run(variant, options, progress)?;
        let store = Store::open(&variant.output)?;
        let marker = DoneMarker::read(&store, layout::report::DONE)?.ok_or_else(|| ReportError::Table {
            what: store.url_of(layout::report::DONE),
            message: "missing after the report ran".into(),
        })?;
        runs.push((variant, summary, store, marker));
    }
    // The backbones' report markers this comparison is made from, by their run location.
    let made_from: BTreeMap<String, String> =
        runs.iter().map(|(_, _, store, marker)| (store.url_of(layout::report::DONE), marker.run_id.clone())).collect();
    let store = Store::open(&job.output)?;
    let hash = job.hash();
    let rules = GateRules { force: options.force, inputs: Inputs::Exactly(&made_from), refuse_other: false };
    if let Gate::Current(_) = DoneMarker::gate(&store, layout::report::DONE, &hash, rules)?
        && let Some(summary) = finished_summary(&store)?
    {
        return Ok(summary);
    }
    store.delete(layout::report::DONE)?;

    // Every experiment of every backbone, named `backbone/experiment`.
    let mut experiments: Vec<Experiment> = Vec::new();
    for (variant, summary, _, _) in &runs {
        let name = variant.backbone.kind.name();
        for e in summary.sweep.iter().flat_map(|s| &s.experiments) {
            experiments.push(Experiment { id: format!("{name}/{}", e.id), backbone: name.to_string(), ..e.clone() });
        }
    }
    let table = table_error("sweep");
    let mut frame = experiments_frame(&experiments).map_err(&table)?;
    let mut grouped = groups_frame(&frame).map_err(&table)?;
    let groups = groups(&grouped).map_err(&table)?;
    let best_id = best(&experiments);
    // The headline: the backbone of the best experiment, with its run's own headline (the same
    // experiment when that run's `report.model` is `best`).
    let chosen = best_id
        .as_deref()
        .and_then(|id| id.split_once('/'))
        .and_then(|(backbone, _)| runs.iter().position(|(v, _, _, _)| v.backbone.kind.name() == backbone))
        .unwrap_or(0);
    let (variant, best_summary, variant_store, variant_marker) = &runs[chosen];
    let read_chosen = |key: &str| -> Result<Vec<u8>, ReportError> {
        let bytes = variant_store.get(key)?;
        bytes
            .map(|b| b.to_vec())
            .ok_or_else(|| ReportError::Table { what: variant_store.url_of(key), message: "missing".into() })
    };
    let mut summary = best_summary.clone();
    summary.job = job.name.clone();
    summary.config_hash = hash.clone();
    summary.backbone = Some(variant.backbone.kind.name().to_string());
    summary.sweep = Some(SweepSummary { experiments, groups, best: best_id });
    summary.already_done = false;

    let mut files = put_table(&store, "sweep", &mut frame)?;
    files.extend(put_table(&store, "sweep-groups", &mut grouped)?);
    // The chosen run's pictures (its sweep plot replaced by the one over every backbone), page and
    // bundle.
    let mut pictures = Vec::new();
    for key in variant_marker.files.iter().filter(|k| k.ends_with(".png")) {
        let name = key.trim_start_matches("report/").to_string();
        let bytes = if name == "sweep-auroc.png" {
            let groups = &summary.sweep.as_ref().map(|s| s.groups.clone()).unwrap_or_default();
            crate::sweep::auroc_plot(groups)?
        } else {
            read_chosen(key)?
        };
        pictures.push((name, bytes));
    }
    for (name, bytes) in &pictures {
        let key = layout::report::file(name);
        store.put(&key, bytes.clone())?;
        files.push(key);
    }
    let html = crate::html::page(variant, &summary, &pictures);
    store.put(layout::report::HTML, html.into_bytes())?;
    for key in [layout::report::BUNDLE, layout::report::RUN_MANIFEST] {
        store.put(key, read_chosen(key)?)?;
    }
    store.put(layout::report::METRICS, serde_json::to_vec_pretty(&summary).unwrap_or_default())?;
    files.extend(
        [layout::report::HTML, layout::report::BUNDLE, layout::report::RUN_MANIFEST, layout::report::METRICS]
            .map(String::from),
    );
    publish_done(&store, hash, files, (counts::BACKBONES, runs.len()), made_from)?;
    Ok(summary)
}
