//! The report's pictures of the headline model: score histograms, ROC curves, the confusion matrix,
//! montages of true and false positives and negatives (heatmap overlays), the colour bar and the
//! sweep's plot, as (file name, PNG bytes).

use crate::error::ReportError;
use crate::evaluate::split_scores;
use crate::inputs::Scored;
use crate::metrics::Roc;
use crate::pictures::{self, Tile};
use crate::pixels::{map_filter, network_view};
use crate::summary::{ModelMetrics, ReportSummary};
use padim_core::Progress;
use padim_core::config::{Job, SplitName};
use rayon::prelude::*;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// The pictures, in the order the page shows them.
pub(crate) fn pictures(
    job: &Job,
    maps: &HashMap<u32, Vec<f32>>,
    headline: &ModelMetrics,
    rows: &[Scored],
    display_max: f64,
    summary: &ReportSummary,
    progress: &dyn Progress,
) -> Result<Vec<(String, Vec<u8>)>, ReportError> {
    let kind = headline.score;
    let normal = &job.dataset.normal;
    let (cal, cal_truth) = split_scores(rows, SplitName::Calibration, kind, headline.normalisation, normal);
    let (test, test_truth) = split_scores(rows, SplitName::Test, kind, headline.normalisation, normal);
    let mut pictures: Vec<(String, Vec<u8>)> = Vec::new();
    pictures.push((
        "histograms.png".into(),
        pictures::histograms(
            &[("calibration", &cal, &cal_truth), ("test", &test, &test_truth)],
            headline.threshold,
            kind.name(),
        )?,
    ));
    let metric = |what: &'static str| move |source| ReportError::Metric { what: what.to_string(), source };
    let cal_roc = Roc::new(&cal, &cal_truth, "calibration").map_err(metric("calibration"))?;
    let test_roc = Roc::new(&test, &test_truth, "test").map_err(metric("test"))?;
    let cal_point = cal_roc.thresholds.iter().position(|&t| t == headline.threshold).unwrap_or(0);
    let test_point = test_roc.thresholds.iter().rposition(|&t| t >= headline.threshold).unwrap_or(0);
    pictures.push((
        "roc.png".into(),
        pictures::roc_curves(&[("calibration", &cal_roc, cal_point), ("test", &test_roc, test_point)])?,
    ));
    pictures.push((
        "confusion.png".into(),
        pictures::confusion_matrix(
            &headline.test.confusion,
            &format!("test, {} at threshold {:.3}", headline.model, headline.threshold),
        )?,
    ));

    pictures.extend(montages(job, maps, headline, rows, display_max, progress)?);
    pictures.push(("colorbar.png".into(), pictures::colorbar(display_max)?));
    if let Some(sweep) = &summary.sweep {
        pictures.push(("sweep-auroc.png".into(), crate::sweep::auroc_plot(&sweep.groups)?));
    }
    Ok(pictures)
}

/// A montage: file name, title, and the images with their normalised scores.
type Montage<'a> = (&'static str, &'static str, Vec<(&'a Scored, f64)>);

/// The montages of the test split's true and false positives and negatives, as (file name, PNG):
/// the worst mistakes first; the correct ones spread over their score range.
fn montages(
    job: &Job,
    maps: &HashMap<u32, Vec<f32>>,
    headline: &ModelMetrics,
    rows: &[Scored],
    display_max: f64,
    progress: &dyn Progress,
) -> Result<Vec<(String, Vec<u8>)>, ReportError> {
    let normal = &job.dataset.normal;
    let kind = headline.score;
    let mut pictures = Vec::new();
    let tests: Vec<(&Scored, f64, bool)> = rows
        .iter()
        .filter(|r| r.split == Some(SplitName::Test))
        .map(|r| {
            let s =
                (r.score(kind) - headline.normalisation[0]) / (headline.normalisation[1] - headline.normalisation[0]);
            (r, s, !normal.contains(&r.label))
        })
        .collect();
    let n = job.report.montage_images;
    let groups = [
        ("true-positives", "true positives (anomalous, flagged)", true, true),
        ("true-negatives", "true negatives (normal, passed)", false, false),
        ("false-positives", "false positives (normal, flagged)", false, true),
        ("false-negatives", "false negatives (anomalous, passed)", true, false),
    ];
    let mut chosen: Vec<Montage> = Vec::new();
    for (name, title, anomalous, flagged) in groups {
        let mut members: Vec<(&Scored, f64)> = tests
            .iter()
            .filter(|(_, s, a)| *a == anomalous && (*s >= headline.threshold) == flagged)
            .map(|(r, s, _)| (*r, *s))
            .collect();
        // Mistakes: most confident first. Correct: evenly spaced by rank.
        members.sort_by(|a, b| b.1.total_cmp(&a.1));
        if !anomalous && flagged {
            members.truncate(n);
        } else if anomalous && !flagged {
            members.reverse();
            members.truncate(n);
        } else if members.len() > n {
            let step = members.len() as f64 / n as f64;
            members = (0..n).map(|i| members[(i as f64 * step) as usize]).collect();
        }
        chosen.push((name, title, members));
    }
    let wanted: BTreeSet<u32> = chosen.iter().flat_map(|(_, _, m)| m.iter().map(|(r, _)| r.image)).collect();
    let [height, width] = job.preprocess.crop;
    let filter = map_filter(job);
    progress.start("report (montages)", wanted.len() as u64);
    for (name, title, members) in &chosen {
        let tiles: Result<Vec<Tile>, ReportError> = members
            .par_iter()
            .map(|(row, score)| {
                progress.advance(1);
                let rgb = network_view(job, &job.dataset.resolve_path(&row.path))?;
                let map = maps.get(&row.image).map(|g| filter.apply(g)).unwrap_or_default();
                let file =
                    Path::new(&row.path).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                Ok(Tile {
                    rgb: pictures::overlay(&rgb, &map, display_max),
                    width,
                    height,
                    caption: format!("{file}  {score:.3}"),
                })
            })
            .collect();
        let title = format!("{title}: {} of {}", members.len(), count_of(&tests, name, headline.threshold));
        pictures.push((format!("montage-{name}.png"), pictures::montage(&title, &tiles?, 4)?));
    }
    progress.finish();
    Ok(pictures)
}

pub(crate) fn count_of(tests: &[(&Scored, f64, bool)], group: &str, threshold: f64) -> usize {
    tests
        .iter()
        .filter(|(_, s, a)| {
            let flagged = *s >= threshold;
            match group {
                "true-positives" => *a && flagged,
                "true-negatives" => !*a && !flagged,
                "false-positives" => !*a && flagged,
                _ => *a && !flagged,
            }
        })
        .count()
}
