//! Calibration and evaluation: scores normalised by the calibration maps' range, the threshold by
//! the job's rule on the calibration split only, and the metrics of both splits at it.

use crate::error::ReportError;
use crate::inputs::Scored;
use crate::metrics::{Confusion, MetricError, Roc, average_precision};
use crate::summary::{ModelMetrics, SetMetrics};
use padim_core::config::{Job, ScoreKind, SplitName};
use std::collections::BTreeMap;

pub(crate) fn set_metrics(
    scores: &[f64],
    anomalous: &[bool],
    threshold: f64,
    what: &str,
) -> Result<SetMetrics, ReportError> {
    let roc = Roc::new(scores, anomalous, what).map_err(|source| ReportError::Metric { what: what.into(), source })?;
    let c = Confusion::at(scores, anomalous, threshold);
    Ok(SetMetrics {
        normal: roc.negatives,
        anomalous: roc.positives,
        auroc: roc.auc(),
        aupr: average_precision(&roc),
        confusion: c,
        accuracy: c.accuracy(),
        precision: c.precision(),
        recall: c.recall(),
        specificity: c.specificity(),
        f1: c.f1(),
    })
}

/// Normalised scores and truth of one split.
pub(crate) fn split_scores(
    rows: &[Scored],
    split: SplitName,
    kind: ScoreKind,
    range: [f64; 2],
    normal: &[String],
) -> (Vec<f64>, Vec<bool>) {
    rows.iter()
        .filter(|r| r.split == Some(split))
        .map(|r| ((r.score(kind) - range[0]) / (range[1] - range[0]), !normal.contains(&r.label)))
        .unzip()
}

pub(crate) fn evaluate(
    model: &str,
    rows: &[Scored],
    kind: ScoreKind,
    job: &Job,
    normal: &[String],
    groups: Option<&BTreeMap<String, String>>,
) -> Result<ModelMetrics, ReportError> {
    let what = format!("model {model}, {} score, calibration", kind.name());
    let calibration_rows: Vec<&Scored> = rows.iter().filter(|r| r.split == Some(SplitName::Calibration)).collect();
    let lo = calibration_rows.iter().map(|r| r.min).fold(f64::INFINITY, f64::min);
    let hi = calibration_rows.iter().map(|r| r.max).fold(f64::NEG_INFINITY, f64::max);
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return Err(ReportError::Metric { what: what.clone(), source: MetricError::Constant { what, value: lo } });
    }
    let range = [lo, hi];
    let (cal_scores, cal_truth) = split_scores(rows, SplitName::Calibration, kind, range, normal);
    let threshold =
        crate::threshold::choose(job.report.threshold, &cal_scores, &cal_truth, job.report.target_rate, &what)
            .map_err(|source| ReportError::Metric { what: what.clone(), source })?;
    let calibration = set_metrics(&cal_scores, &cal_truth, threshold, &what)?;
    let (test_scores, test_truth) = split_scores(rows, SplitName::Test, kind, range, normal);
    let test =
        set_metrics(&test_scores, &test_truth, threshold, &format!("model {model}, {} score, test", kind.name()))?;
    let forecast = forecast(&calibration_rows, kind, range, normal, groups, threshold, (test.normal, test.anomalous));
    Ok(ModelMetrics {
        model: model.to_string(),
        score: kind,
        normalisation: range,
        threshold_rule: job.report.threshold,
        threshold,
        calibration,
        test,
        forecast: Some(forecast),
    })
}

/// The forecast at `threshold` for `test` (normal, anomalous) images, from the calibration rows'
/// normalised scores, resampled by image or by group.
fn forecast(
    calibration: &[&Scored],
    kind: ScoreKind,
    range: [f64; 2],
    normal: &[String],
    groups: Option<&BTreeMap<String, String>>,
    threshold: f64,
    test: (usize, usize),
) -> crate::forecast::Forecast {
    let (bad, good): (Vec<&Scored>, Vec<&Scored>) = calibration.iter().partition(|r| !normal.contains(&r.label));
    let values = |set: &[&Scored]| -> Vec<Vec<f64>> {
        crate::choice::units(set, groups)
            .iter()
            .map(|unit| unit.iter().map(|r| (r.score(kind) - range[0]) / (range[1] - range[0])).collect())
            .collect()
    };
    let unit = if groups.is_some() { "groups" } else { "images" };
    crate::forecast::forecast(threshold, &values(&good), &values(&bad), test, unit)
}
