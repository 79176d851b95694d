//! The sweep's decision table from the evaluated models: per experiment its metrics, model size,
//! scoring time and pixel AUROC where masks exist; written as `report/sweep.*` and
//! `report/sweep-groups.*` (the frames and the plot are [`crate::sweep`]'s).

use crate::error::{ReportError, table_error};
use crate::inputs::{ScoreShard, Scored, load_maps, stored_model_channels};
use crate::pixels::{calibration_pixel_metrics, pixel_metrics};
use crate::summary::ReportSummary;
use crate::tables::put_table;
use padim_core::Progress;
use padim_core::config::{Job, ScoreKind, SplitName, SubsetSpec};
use padim_store::{Store, layout};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The sweep's decision table: per experiment from the evaluated models, model sizes and score
/// times, pixel AUROC where masks exist; aggregated with polars; written as `report/sweep.*` and
/// `report/sweep-groups.*`.
pub(crate) fn sweep_table(
    store: &Store,
    job: &Job,
    shards: &[ScoreShard],
    by_model: &BTreeMap<String, Vec<Scored>>,
    summary: &ReportSummary,
    progress: &dyn Progress,
) -> Result<(crate::sweep::SweepSummary, Vec<String>), ReportError> {
    use crate::sweep::{SweepSummary, best, experiments_frame, groups, groups_frame};
    let Some(sweep) = &job.sweep else {
        return Err(ReportError::Table { what: "sweep".into(), message: "no [sweep]".into() });
    };
    let specs = sweep.experiments().map_err(|e| ReportError::Table { what: "sweep".into(), message: e.to_string() })?;
    let micros = score_micros(shards);
    let mut pixels = ExperimentPixels::new(store, job, shards, by_model, summary, &specs)?;
    let mut experiments = Vec::new();
    for spec in &specs {
        let (channels, model_bytes) = stored_model_channels(store, &layout::fit::model(&spec.name))?;
        let (pixel_auroc, calibration_pixel_auroc) = pixels.aurocs(&spec.name, progress)?;
        let mut experiment = experiment(job, spec, summary, (channels, model_bytes));
        experiment.pixel_auroc = pixel_auroc;
        experiment.calibration_pixel_auroc = calibration_pixel_auroc;
        experiment.score_cpu_seconds = micros.get(&spec.name).copied().unwrap_or(0) as f64 / 1e6;
        experiments.push(experiment);
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

/// Each model's scoring CPU time (microseconds, summed over shards) from the score markers.
fn score_micros(shards: &[ScoreShard]) -> BTreeMap<String, u64> {
    let mut micros: BTreeMap<String, u64> = BTreeMap::new();
    for marker in shards.iter().flat_map(|s| &s.markers) {
        for (name, value) in &marker.counts {
            if let Some(model) = layout::score::micros_model(name) {
                *micros.entry(model.to_string()).or_default() += value;
            }
        }
    }
    micros
}

/// An experiment's row from the report's metrics (its chosen score's, and every score's AUROCs);
/// pixel AUROCs and score time are filled in by the caller.
fn experiment(
    job: &Job,
    spec: &SubsetSpec,
    summary: &ReportSummary,
    (channels, model_bytes): (usize, u64),
) -> crate::sweep::Experiment {
    let metrics_of = |score: ScoreKind| summary.models.iter().find(|m| m.model == spec.name && m.score == score);
    let auroc = |score: ScoreKind, calibration: bool| {
        metrics_of(score).map(|m| if calibration { m.calibration.auroc } else { m.test.auroc })
    };
    let headline = summary.chosen_of(&spec.name);
    let layers = spec.layers.as_ref().map(|l| l.iter().map(|l| l.to_string()).collect::<Vec<_>>().join("+"));
    crate::sweep::Experiment {
        id: spec.name.clone(),
        backbone: String::new(),
        layers: layers.unwrap_or_else(|| "1+2+3".into()),
        covariance: crate::sweep::Covariance { estimator: job.fit.covariance_of(spec), pool: spec.pool },
        count: spec.count,
        channels,
        seed: spec.count.map(|_| spec.seed),
        score: headline.map(|m| m.score),
        calibration_auroc: headline.map(|m| m.calibration.auroc),
        test_auroc: headline.map(|m| m.test.auroc),
        calibration_auroc_mean_score: auroc(ScoreKind::Mean, true),
        calibration_auroc_max_score: auroc(ScoreKind::Max, true),
        calibration_auroc_top_score: auroc(ScoreKind::Top, true),
        test_auroc_mean_score: auroc(ScoreKind::Mean, false),
        test_auroc_max_score: auroc(ScoreKind::Max, false),
        test_auroc_top_score: auroc(ScoreKind::Top, false),
        accuracy: headline.map(|m| m.test.accuracy),
        f1: headline.map(|m| m.test.f1),
        pixel_auroc: None,
        calibration_pixel_auroc: None,
        model_bytes,
        score_cpu_seconds: 0.0,
    }
}

/// The pixel AUROCs of a sweep's experiments (with masks): the headline model's are the summary's
/// (computed with PRO by the stage); every other experiment's test and calibration maps are read
/// in one pass over the maps files.
struct ExperimentPixels<'a> {
    job: &'a Job,
    by_model: &'a BTreeMap<String, Vec<Scored>>,
    summary: &'a ReportSummary,
    maps: HashMap<String, HashMap<u32, Vec<f32>>>,
}

impl<'a> ExperimentPixels<'a> {
    fn new(
        store: &Store,
        job: &'a Job,
        shards: &[ScoreShard],
        by_model: &'a BTreeMap<String, Vec<Scored>>,
        summary: &'a ReportSummary,
        specs: &[SubsetSpec],
    ) -> Result<ExperimentPixels<'a>, ReportError> {
        let mut pixels = ExperimentPixels { job, by_model, summary, maps: HashMap::new() };
        if job.dataset.mask.is_some() {
            let names: Vec<&str> =
                specs.iter().map(|s| s.name.as_str()).filter(|n| pixels.reused(n).is_none()).collect();
            let ids: BTreeSet<u32> = by_model
                .values()
                .flatten()
                .filter(|r| r.split == Some(SplitName::Test) || r.split == Some(SplitName::Calibration))
                .map(|r| r.image)
                .collect();
            pixels.maps = load_maps(store, shards, &names, &ids)?;
        }
        Ok(pixels)
    }

    /// The headline model's (test, calibration) pixel AUROCs, from the summary.
    fn reused(&self, name: &str) -> Option<(f64, Option<f64>)> {
        let test = self.summary.pixel.as_ref().filter(|_| name == self.summary.headline_model)?;
        Some((test.auroc, self.summary.pixel_calibration.as_ref().map(|c| c.auroc)))
    }

    /// `name`'s test and calibration pixel AUROCs (none without masks).
    fn aurocs(&mut self, name: &str, progress: &dyn Progress) -> Result<(Option<f64>, Option<f64>), ReportError> {
        let job = self.job;
        Ok(match (&job.dataset.mask, self.by_model.get(name), self.reused(name)) {
            (Some(_), Some(_), Some((test, calibration))) => (Some(test), calibration),
            (Some(_), Some(rows), None) => {
                let of = |split| rows.iter().filter(|r| r.split == Some(split)).collect::<Vec<&Scored>>();
                let (tests, calibration) = (of(SplitName::Test), of(SplitName::Calibration));
                let maps = self.maps.remove(name).unwrap_or_default();
                let test = pixel_metrics(job, &maps, name, ("test", &tests), false, progress)?.auroc;
                let calibration = calibration_pixel_metrics(job, &maps, name, &calibration, false, progress)?;
                (Some(test), calibration.map(|p| p.auroc))
            }
            _ => (None, None),
        })
    }
}
