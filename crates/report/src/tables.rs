//! The report's tables (polars, Parquet and CSV): scores per image and model with the verdict,
//! metrics per model, score and split, and every ROC point.

use crate::error::{ReportError, table_error};
use crate::evaluate::split_scores;
use crate::inputs::Scored;
use crate::metrics::{Confusion, Roc};
use crate::summary::{ModelMetrics, ReportSummary, SetMetrics};
use padim_core::config::{Job, ScoreKind, SplitName};
use padim_store::{Store, layout};
use polars::prelude::*;
use std::collections::BTreeMap;

pub(crate) fn to_bytes(df: &mut DataFrame, csv: bool, what: &str) -> Result<Vec<u8>, ReportError> {
    let mut out = Vec::new();
    if csv {
        CsvWriter::new(&mut out).finish(df).map_err(table_error(what))?;
    } else {
        ParquetWriter::new(&mut out).finish(df).map_err(table_error(what))?;
    }
    Ok(out)
}

pub(crate) fn put_table(store: &Store, name: &str, df: &mut DataFrame) -> Result<Vec<String>, ReportError> {
    let mut keys = Vec::new();
    for (ext, csv) in [("parquet", false), ("csv", true)] {
        let key = layout::report::file(&format!("{name}.{ext}"));
        store.put(&key, to_bytes(df, csv, &key)?)?;
        keys.push(key);
    }
    Ok(keys)
}

/// scores (per image and model, normalised, with the verdict), metrics and ROC points, as Parquet and CSV.
pub(crate) fn write_tables(
    store: &Store,
    by_model: &BTreeMap<String, Vec<Scored>>,
    summary: &ReportSummary,
    job: &Job,
) -> Result<Vec<String>, ReportError> {
    // One row per image and calibrated model, with the model's chosen score:
    // (model, row, normalisation, threshold, score).
    let rows: Vec<(&str, &Scored, [f64; 2], f64, ScoreKind)> = summary
        .chosen()
        .flat_map(|m| {
            by_model[&m.model].iter().map(move |r| (m.model.as_str(), r, m.normalisation, m.threshold, m.score))
        })
        .collect();
    let normalised = |v: f64, [lo, hi]: [f64; 2]| (v - lo) / (hi - lo);
    let mut scores = df!(
        "image" => rows.iter().map(|(_, r, _, _, _)| r.image).collect::<Vec<u32>>(),
        "path" => rows.iter().map(|(_, r, _, _, _)| r.path.as_str()).collect::<Vec<&str>>(),
        "label" => rows.iter().map(|(_, r, _, _, _)| r.label.as_str()).collect::<Vec<&str>>(),
        "split" => rows.iter().map(|(_, r, _, _, _)| r.split_text.as_str()).collect::<Vec<&str>>(),
        "model" => rows.iter().map(|(m, _, _, _, _)| *m).collect::<Vec<&str>>(),
        "mean" => rows.iter().map(|(_, r, _, _, _)| r.mean).collect::<Vec<f64>>(),
        "max" => rows.iter().map(|(_, r, _, _, _)| r.max).collect::<Vec<f64>>(),
        "min" => rows.iter().map(|(_, r, _, _, _)| r.min).collect::<Vec<f64>>(),
        "top" => rows.iter().map(|(_, r, _, _, _)| r.top).collect::<Vec<f64>>(),
        "mean_normalised" => rows.iter().map(|(_, r, n, _, _)| normalised(r.mean, *n)).collect::<Vec<f64>>(),
        "max_normalised" => rows.iter().map(|(_, r, n, _, _)| normalised(r.max, *n)).collect::<Vec<f64>>(),
        "top_normalised" => rows.iter().map(|(_, r, n, _, _)| normalised(r.top, *n)).collect::<Vec<f64>>(),
        "score" => rows.iter().map(|(_, _, _, _, k)| k.name()).collect::<Vec<&str>>(),
        "anomalous_predicted" =>
            rows.iter().map(|(_, r, n, t, k)| normalised(r.score(*k), *n) >= *t).collect::<Vec<bool>>(),
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
        "score" => sets.iter().map(|(m, _, _)| m.score.name()).collect::<Vec<&str>>(),
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
        let kind = m.score;
        for split in [SplitName::Calibration, SplitName::Test] {
            let set = split.name();
            let (scores, truth) = split_scores(&by_model[&m.model], split, kind, m.normalisation, &job.dataset.normal);
            let roc =
                Roc::new(&scores, &truth, set).map_err(|source| ReportError::Metric { what: set.into(), source })?;
            for i in 0..roc.fpr.len() {
                points.push((m.model.as_str(), m.score.name(), set, roc.thresholds[i], roc.fpr[i], roc.tpr[i]));
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
