//! Calibration and evaluation: scores normalised by the calibration maps' range, the threshold by
//! the job's rule on the calibration split only, and the metrics of both splits at it.

use crate::error::ReportError;
use crate::inputs::Scored;
use crate::metrics::{Confusion, MetricError, Roc, average_precision};
use crate::summary::{ModelMetrics, SetMetrics};
use padim_core::config::{Job, ScoreKind, SplitName, ThresholdRule};

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
) -> Result<ModelMetrics, ReportError> {
    let what = format!("model {model}, {} score, calibration", kind.name());
    let calibration: Vec<&Scored> = rows.iter().filter(|r| r.split == Some(SplitName::Calibration)).collect();
    let lo = calibration.iter().map(|r| r.min).fold(f64::INFINITY, f64::min);
    let hi = calibration.iter().map(|r| r.max).fold(f64::NEG_INFINITY, f64::max);
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return Err(ReportError::Metric { what: what.clone(), source: MetricError::Constant { what, value: lo } });
    }
    let range = [lo, hi];
    let (cal_scores, cal_truth) = split_scores(rows, SplitName::Calibration, kind, range, normal);
    let roc = Roc::new(&cal_scores, &cal_truth, &what)
        .map_err(|source| ReportError::Metric { what: what.clone(), source })?;
    if cal_scores.iter().all(|&s| s == cal_scores[0]) {
        return Err(ReportError::Metric {
            what: what.clone(),
            source: MetricError::Constant { what: what.clone(), value: cal_scores[0] },
        });
    }
    let point = match job.report.threshold {
        ThresholdRule::Youden => roc.youden(),
        ThresholdRule::MaxF1 => roc.max_f1(),
        ThresholdRule::Fpr => roc.at_fpr(job.report.target_rate),
        ThresholdRule::Fnr => roc.at_fnr(job.report.target_rate).ok_or_else(|| ReportError::Metric {
            what: what.clone(),
            source: MetricError::Unreachable {
                what: what.clone(),
                rate: "false-negative rate",
                target: job.report.target_rate,
            },
        })?,
    };
    if point == 0 {
        // The +inf point: nothing would ever be flagged.
        let rule = match job.report.threshold {
            ThresholdRule::Youden => "the best Youden's J is 0",
            ThresholdRule::MaxF1 => "the best F1 is 0",
            ThresholdRule::Fpr | ThresholdRule::Fnr => "the target rate allows no flagged image",
        };
        return Err(ReportError::Metric { what: what.clone(), source: MetricError::NoOperatingPoint { what, rule } });
    }
    let threshold = roc.thresholds[point];
    let calibration = set_metrics(&cal_scores, &cal_truth, threshold, &what)?;
    let (test_scores, test_truth) = split_scores(rows, SplitName::Test, kind, range, normal);
    let test =
        set_metrics(&test_scores, &test_truth, threshold, &format!("model {model}, {} score, test", kind.name()))?;
    Ok(ModelMetrics {
        model: model.to_string(),
        score: kind,
        normalisation: range,
        threshold_rule: job.report.threshold,
        threshold,
        calibration,
        test,
    })
}

/// The `p`-th percentile (linear interpolation between order statistics, NumPy's default).
pub fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = p / 100.0 * (values.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    values[low] + (values[high] - values[low]) * (rank - low as f64)
}
