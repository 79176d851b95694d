//! The sweep's decision table from the evaluated models: per experiment its metrics, model size,
//! scoring time and pixel AUROC where masks exist; written as `report/sweep.*` and
//! `report/sweep-groups.*` (the frames and the plot are [`crate::sweep`]'s).

use crate::error::{ReportError, table_error};
use crate::inputs::{ScoreShard, Scored, load_maps, stored_model_channels};
use crate::pixels::{calibration_pixel_metrics, pixel_metrics};
use crate::summary::ReportSummary;
use crate::tables::put_table;
use padim_core::Progress;
use padim_core::config::{CovariancePool, Job, ScoreKind};
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
    use crate::sweep::{Experiment, SweepSummary, best, experiments_frame, groups, groups_frame};
    let Some(sweep) = &job.sweep else {
        return Err(ReportError::Table { what: "sweep".into(), message: "no [sweep]".into() });
    };
    let specs = sweep.experiments().map_err(|message| ReportError::Table { what: "sweep".into(), message })?;
    let mut micros: BTreeMap<String, u64> = BTreeMap::new();
    for marker in shards.iter().flat_map(|s| &s.markers) {
        for (name, value) in &marker.counts {
            if let Some(model) = layout::score::micros_model(name) {
                *micros.entry(model.to_string()).or_default() += value;
            }
        }
    }
    let metrics_of =
        |model: &str, score: ScoreKind| summary.models.iter().find(|m| m.model == model && m.score == score);
    // The headline model's pixel metrics are the summary's (computed with PRO by the stage).
    let reused = |name: &str| {
        let test = summary.pixel.as_ref().filter(|_| name == summary.headline_model)?;
        Some((test.auroc, summary.pixel_calibration.as_ref().map(|c| c.auroc)))
    };
    // The test and calibration maps of every other experiment, read in one pass over the maps files
    // (for pixel AUROC).
    let mut maps = match &job.dataset.mask {
        Some(_) => {
            let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).filter(|n| reused(n).is_none()).collect();
            let ids: BTreeSet<u32> = by_model
                .values()
                .flatten()
                .filter(|r| r.split == "test" || r.split == "calibration")
                .map(|r| r.image)
                .collect();
            load_maps(store, shards, &names, &ids)?
        }
        None => HashMap::new(),
    };
    let mut experiments = Vec::new();
    for spec in &specs {
        let key = layout::fit::model(&spec.name);
        let (channels, model_bytes) = stored_model_channels(store, &key)?;
        let pixels = (&job.dataset.mask, by_model.get(&spec.name), reused(&spec.name));
        let (pixel_auroc, calibration_pixel_auroc) = match pixels {
            (Some(_), Some(_), Some((test, calibration))) => (Some(test), calibration),
            (Some(_), Some(rows), None) => {
                let of = |split: &str| rows.iter().filter(|r| r.split == split).collect::<Vec<&Scored>>();
                let (tests, calibration) = (of("test"), of("calibration"));
                let maps = maps.remove(&spec.name).unwrap_or_default();
                let test = pixel_metrics(job, &maps, &spec.name, ("test", &tests), false, progress)?.auroc;
                let calibration = calibration_pixel_metrics(job, &maps, &spec.name, &calibration, false, progress)?;
                (Some(test), calibration.map(|p| p.auroc))
            }
            _ => (None, None),
        };
        let headline = summary.chosen_of(&spec.name);
        let layers = spec.layers.as_ref().map(|l| l.iter().map(|l| l.to_string()).collect::<Vec<_>>().join("+"));
        experiments.push(Experiment {
            id: spec.name.clone(),
            backbone: String::new(),
            layers: layers.unwrap_or_else(|| "1+2+3".into()),
            covariance: {
                let estimator = job.fit.covariance_of(spec).name();
                match spec.pool {
                    CovariancePool::None => estimator.into(),
                    CovariancePool::Radius(r) => format!("{estimator} pool {r}"),
                    CovariancePool::All => format!("{estimator} pool all"),
                }
            },
            count: spec.count,
            channels,
            seed: spec.count.map(|_| spec.seed),
            score: headline.map(|m| m.score.name().to_string()),
            calibration_auroc: headline.map(|m| m.calibration.auroc),
            test_auroc: headline.map(|m| m.test.auroc),
            calibration_auroc_mean_score: metrics_of(&spec.name, ScoreKind::Mean).map(|m| m.calibration.auroc),
            calibration_auroc_max_score: metrics_of(&spec.name, ScoreKind::Max).map(|m| m.calibration.auroc),
            calibration_auroc_top_score: metrics_of(&spec.name, ScoreKind::Top).map(|m| m.calibration.auroc),
            test_auroc_mean_score: metrics_of(&spec.name, ScoreKind::Mean).map(|m| m.test.auroc),
            test_auroc_max_score: metrics_of(&spec.name, ScoreKind::Max).map(|m| m.test.auroc),
            test_auroc_top_score: metrics_of(&spec.name, ScoreKind::Top).map(|m| m.test.auroc),
            accuracy: headline.map(|m| m.test.accuracy),
            f1: headline.map(|m| m.test.f1),
            pixel_auroc,
            calibration_pixel_auroc,
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
