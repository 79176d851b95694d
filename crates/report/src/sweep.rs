//! The decision table of a sweep: one row per experiment (channel subset), aggregated per layer
//! combination, covariance estimator and channel count as mean and standard deviation over seeds (polars), the best
//! experiment by calibration AUROC (never by a test number), and a plot of AUROC against the channel
//! count with error bars, one line per layer combination.

use crate::pictures::{PictureError, render};
use padim_core::config::{CovarianceEstimator, CovariancePool, ScoreKind};
use plotters::prelude::*;
use polars::prelude::*;
use serde::{Deserialize, Serialize};

/// An experiment's covariance: its estimator and pool, written `sample`, `oas`, `nearest`,
/// `sample pool 2`, `oas pool all` in the tables and `metrics.json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Covariance {
    pub estimator: CovarianceEstimator,
    pub pool: CovariancePool,
}

impl std::fmt::Display for Covariance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let estimator = self.estimator.name();
        match self.pool {
            CovariancePool::None => write!(f, "{estimator}"),
            CovariancePool::Radius(r) => write!(f, "{estimator} pool {r}"),
            CovariancePool::All => write!(f, "{estimator} pool all"),
        }
    }
}

impl std::str::FromStr for Covariance {
    type Err = String;
    fn from_str(text: &str) -> Result<Covariance, String> {
        let (estimator, pool) = text.split_once(" pool ").map_or((text, None), |(e, p)| (e, Some(p)));
        let estimator = [CovarianceEstimator::Sample, CovarianceEstimator::Oas, CovarianceEstimator::Nearest]
            .into_iter()
            .find(|e| e.name() == estimator)
            .ok_or_else(|| format!("unknown covariance `{text}`"))?;
        let pool = match pool {
            None => CovariancePool::None,
            Some("all") => CovariancePool::All,
            Some(r) => CovariancePool::Radius(r.parse().map_err(|_| format!("unknown pool in `{text}`"))?),
        };
        Ok(Covariance { estimator, pool })
    }
}

impl Serialize for Covariance {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Covariance {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

/// One experiment's numbers; metrics are of its chosen image score (`score`, by `report.score`)
/// unless named.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Experiment {
    pub id: String,
    /// The backbone of a sweep over backbones (then `id` is `backbone/experiment`); empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backbone: String,
    /// `1+2+3`, `2+3`, ...
    pub layers: String,
    /// The covariance estimator, with its pool if any.
    #[serde(default)]
    pub covariance: Covariance,
    /// The requested count; `None` for all channels of the layers.
    pub count: Option<usize>,
    /// Channels the model uses.
    pub channels: usize,
    pub seed: Option<u64>,
    /// The image score it classifies with; `None` where the calibration split cannot calibrate the
    /// experiment (see `unusable`), like the metrics.
    #[serde(default)]
    pub score: Option<ScoreKind>,
    pub calibration_auroc: Option<f64>,
    pub test_auroc: Option<f64>,
    #[serde(default)]
    pub calibration_auroc_mean_score: Option<f64>,
    #[serde(default)]
    pub calibration_auroc_max_score: Option<f64>,
    #[serde(default)]
    pub calibration_auroc_top_score: Option<f64>,
    pub test_auroc_mean_score: Option<f64>,
    pub test_auroc_max_score: Option<f64>,
    #[serde(default)]
    pub test_auroc_top_score: Option<f64>,
    /// At the threshold calibrated on the calibration split.
    pub accuracy: Option<f64>,
    pub f1: Option<f64>,
    pub pixel_auroc: Option<f64>,
    /// Pixel AUROC on the calibration split (masks of its anomalous images).
    #[serde(default)]
    pub calibration_pixel_auroc: Option<f64>,
    pub model_bytes: u64,
    /// CPU time score spent on this model (distances, resizing and smoothing; summed over threads
    /// and shards), in seconds.
    pub score_cpu_seconds: f64,
}

/// Per layer combination, count and covariance estimator: mean and standard deviation over seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Group {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backbone: String,
    pub layers: String,
    #[serde(default)]
    pub covariance: Covariance,
    pub channels: usize,
    pub experiments: usize,
    pub calibration_auroc_mean: Option<f64>,
    pub calibration_auroc_std: Option<f64>,
    pub test_auroc_mean: Option<f64>,
    pub test_auroc_std: Option<f64>,
    pub accuracy_mean: Option<f64>,
    pub accuracy_std: Option<f64>,
}

/// The sweep part of `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SweepSummary {
    pub experiments: Vec<Experiment>,
    pub groups: Vec<Group>,
    /// The experiment with the highest calibration AUROC (ties: fewer channels, then id).
    pub best: Option<String>,
}

/// The per-experiment table.
pub fn experiments_frame(experiments: &[Experiment]) -> PolarsResult<DataFrame> {
    df!(
        "id" => experiments.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        "backbone" => experiments.iter().map(|e| e.backbone.as_str()).collect::<Vec<_>>(),
        "layers" => experiments.iter().map(|e| e.layers.as_str()).collect::<Vec<_>>(),
        "covariance" => experiments.iter().map(|e| e.covariance.to_string()).collect::<Vec<_>>(),
        "count" => experiments.iter().map(|e| e.count.map(|c| c as u32)).collect::<Vec<_>>(),
        "channels" => experiments.iter().map(|e| e.channels as u32).collect::<Vec<_>>(),
        "seed" => experiments.iter().map(|e| e.seed).collect::<Vec<_>>(),
        "score" => experiments.iter().map(|e| e.score.map(ScoreKind::name)).collect::<Vec<_>>(),
        "calibration_auroc" => experiments.iter().map(|e| e.calibration_auroc).collect::<Vec<_>>(),
        "test_auroc" => experiments.iter().map(|e| e.test_auroc).collect::<Vec<_>>(),
        "calibration_auroc_mean_score" => experiments.iter().map(|e| e.calibration_auroc_mean_score).collect::<Vec<_>>(),
        "calibration_auroc_max_score" => experiments.iter().map(|e| e.calibration_auroc_max_score).collect::<Vec<_>>(),
        "calibration_auroc_top_score" => experiments.iter().map(|e| e.calibration_auroc_top_score).collect::<Vec<_>>(),
        "test_auroc_mean_score" => experiments.iter().map(|e| e.test_auroc_mean_score).collect::<Vec<_>>(),
        "test_auroc_max_score" => experiments.iter().map(|e| e.test_auroc_max_score).collect::<Vec<_>>(),
        "test_auroc_top_score" => experiments.iter().map(|e| e.test_auroc_top_score).collect::<Vec<_>>(),
        "accuracy" => experiments.iter().map(|e| e.accuracy).collect::<Vec<_>>(),
        "f1" => experiments.iter().map(|e| e.f1).collect::<Vec<_>>(),
        "pixel_auroc" => experiments.iter().map(|e| e.pixel_auroc).collect::<Vec<_>>(),
        "calibration_pixel_auroc" => experiments.iter().map(|e| e.calibration_pixel_auroc).collect::<Vec<_>>(),
        "model_bytes" => experiments.iter().map(|e| e.model_bytes).collect::<Vec<_>>(),
        "score_cpu_seconds" => experiments.iter().map(|e| e.score_cpu_seconds).collect::<Vec<_>>(),
    )
}

/// Mean and standard deviation (ddof 1) over seeds per layer combination, channel count and
/// covariance estimator.
// polars marks eager group-by aggregations deprecated in favour of its lazy API; the report builds
// polars without `lazy` (a large part of its compile time) and these few rows need nothing more.
#[allow(deprecated)]
pub fn groups_frame(experiments: &DataFrame) -> PolarsResult<DataFrame> {
    let metrics = ["calibration_auroc", "test_auroc", "accuracy"];
    let keys = ["backbone", "layers", "covariance", "channels"];
    let grouped = || experiments.group_by_stable(keys).map(|g| g.select(metrics));
    let mean = grouped()?.mean()?;
    let mut std = grouped()?.std(1)?;
    for metric in metrics {
        std.rename(&format!("{metric}_agg_std"), format!("{metric}_std").into())?;
    }
    let mut count = experiments.group_by_stable(keys)?.select(["id"]).count()?;
    count.rename("id_count", "experiments".into())?;
    let mut out = mean.join(&std, keys, keys, JoinArgs::new(JoinType::Inner), None)?;
    out = out.join(&count, keys, keys, JoinArgs::new(JoinType::Inner), None)?;
    out.sort(keys, SortMultipleOptions::default())
}

/// Reads the groups back out of the polars table.
pub fn groups(frame: &DataFrame) -> PolarsResult<Vec<Group>> {
    let strings = |name: &str| -> PolarsResult<Vec<String>> {
        Ok(frame.column(name)?.str()?.iter().map(|v| v.unwrap_or_default().to_string()).collect())
    };
    let floats = |name: &str| -> PolarsResult<Vec<Option<f64>>> {
        Ok(frame.column(name)?.cast(&DataType::Float64)?.f64()?.iter().collect())
    };
    let counts = |name: &str| -> PolarsResult<Vec<usize>> {
        Ok(frame.column(name)?.cast(&DataType::UInt64)?.u64()?.iter().map(|v| v.unwrap_or(0) as usize).collect())
    };
    let (layers, channels, n) = (strings("layers")?, counts("channels")?, counts("experiments")?);
    let (covariance, backbone) = (strings("covariance")?, strings("backbone")?);
    let (cal_mean, cal_std) = (floats("calibration_auroc_mean")?, floats("calibration_auroc_std")?);
    let (test_mean, test_std) = (floats("test_auroc_mean")?, floats("test_auroc_std")?);
    let (acc_mean, acc_std) = (floats("accuracy_mean")?, floats("accuracy_std")?);
    (0..frame.height())
        .map(|i| {
            Ok(Group {
                backbone: backbone[i].clone(),
                layers: layers[i].clone(),
                covariance: covariance[i].parse().map_err(|e: String| PolarsError::ComputeError(e.into()))?,
                channels: channels[i],
                experiments: n[i],
                calibration_auroc_mean: cal_mean[i],
                calibration_auroc_std: cal_std[i],
                test_auroc_mean: test_mean[i],
                test_auroc_std: test_std[i],
                accuracy_mean: acc_mean[i],
                accuracy_std: acc_std[i],
            })
        })
        .collect()
}

/// The best experiment by calibration AUROC; ties go to fewer channels, then to the smaller id.
pub fn best(experiments: &[Experiment]) -> Option<String> {
    ranked(experiments).first().map(|e| e.id.clone())
}

/// The experiments that could be calibrated, best first: by calibration AUROC, ties to fewer
/// channels, then to the smaller id (never by a test number).
fn ranked(experiments: &[Experiment]) -> Vec<&Experiment> {
    let mut ranked: Vec<(f64, &Experiment)> =
        experiments.iter().filter_map(|e| e.calibration_auroc.map(|auc| (auc, e))).collect();
    ranked.sort_by(|(a, x), (b, y)| b.total_cmp(a).then(x.channels.cmp(&y.channels)).then(x.id.cmp(&y.id)));
    ranked.into_iter().map(|(_, e)| e).collect()
}

/// The sweep's leaderboard: the best `n` experiments by calibration AUROC, each with what sets it
/// apart from the best one (backbone, layers, covariance, channels, seed, image score), in words.
pub fn leaderboard(experiments: &[Experiment], n: usize) -> Vec<(&Experiment, String)> {
    let ranked = ranked(experiments);
    let Some(&leader) = ranked.first() else { return Vec::new() };
    ranked.into_iter().take(n).map(|e| (e, apart(leader, e))).collect()
}

/// How `e` differs from `leader`: `the best` for the leader itself, else each differing parameter.
fn apart(leader: &Experiment, e: &Experiment) -> String {
    if std::ptr::eq(leader, e) {
        return "the best".into();
    }
    let mut parts = Vec::new();
    if e.backbone != leader.backbone {
        parts.push(format!("backbone {}", e.backbone));
    }
    if e.layers != leader.layers {
        parts.push(format!("layers {}", e.layers));
    }
    if e.covariance != leader.covariance {
        parts.push(format!("covariance {}", e.covariance));
    }
    if e.count != leader.count || e.channels != leader.channels {
        parts.push(match e.count {
            Some(_) => format!("{} random channels", e.channels),
            None => format!("all {} channels", e.channels),
        });
    }
    if e.seed != leader.seed && e.count.is_some() {
        parts.push(format!("seed {}", e.seed.unwrap_or_default()));
    }
    if e.score != leader.score {
        parts.push(format!("{} score", e.score.map_or("-", ScoreKind::name)));
    }
    if parts.is_empty() { "the same settings".into() } else { parts.join(", ") }
}

/// Test AUROC (mean over seeds, with one standard deviation as error bars) against channels, one
/// line per layer combination; calibration AUROC dashed.
pub fn auroc_plot(groups: &[Group]) -> Result<Vec<u8>, PictureError> {
    let max_channels = groups.iter().map(|g| g.channels).max().unwrap_or(1) as f64;
    let values = groups.iter().flat_map(|g| {
        [g.test_auroc_mean, g.calibration_auroc_mean]
            .into_iter()
            .flatten()
            .map(move |m| m - g.test_auroc_std.unwrap_or(0.0).max(g.calibration_auroc_std.unwrap_or(0.0)))
    });
    let low = values.fold(1.0f64, f64::min).clamp(0.0, 0.99);
    let low = (low * 50.0).floor() / 50.0;
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(255, 127, 14),
        RGBColor(140, 86, 75),
    ];
    // One line per backbone, layer combination and estimator (the estimator named unless it is
    // `sample`).
    let label = |g: &Group| {
        let layers = match g.covariance {
            Covariance { estimator: CovarianceEstimator::Sample, pool: CovariancePool::None } => g.layers.clone(),
            other => format!("{} {other}", g.layers),
        };
        if g.backbone.is_empty() {
            layers
        } else {
            format!("{} {layers}", g.backbone.trim_start_matches("efficientnet-"))
        }
    };
    let mut combinations: Vec<String> = groups.iter().map(label).collect();
    combinations.dedup();
    render("sweep", (640, 440), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("AUROC against channels (mean ± sd over seeds)", ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..max_channels * 1.05, low..1.0)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("channels")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc("AUROC")
            .draw()
            .map_err(|e| e.to_string())?;
        for (combination, color) in combinations.iter().zip(colors.iter().cycle()) {
            let color = *color;
            let members: Vec<&Group> = groups.iter().filter(|g| label(g) == *combination).collect();
            let test: Vec<(f64, f64, f64)> = members
                .iter()
                .filter_map(|g| g.test_auroc_mean.map(|m| (g.channels as f64, m, g.test_auroc_std.unwrap_or(0.0))))
                .collect();
            chart
                .draw_series(LineSeries::new(test.iter().map(|(x, y, _)| (*x, *y)), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(format!("layers {combination}: test"))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 12, y)], color.stroke_width(2)));
            chart
                .draw_series(
                    test.iter().map(|(x, y, sd)| ErrorBar::new_vertical(*x, y - sd, *y, y + sd, color.filled(), 8)),
                )
                .map_err(|e| e.to_string())?;
            let calibration: Vec<(f64, f64)> =
                members.iter().filter_map(|g| g.calibration_auroc_mean.map(|m| (g.channels as f64, m))).collect();
            chart
                .draw_series(DashedLineSeries::new(calibration, 6, 4, color.mix(0.6).stroke_width(1)))
                .map_err(|e| e.to_string())?
                .label(format!("layers {combination}: calibration"))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 12, y)], color.mix(0.6).stroke_width(1)));
        }
        crate::pictures::legend(&mut chart, SeriesLabelPosition::LowerRight)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn experiment(id: &str, layers: &str, channels: usize, seed: u64, cal: f64, test: f64) -> Experiment {
        Experiment {
            id: id.into(),
            backbone: String::new(),
            layers: layers.into(),
            covariance: Covariance::default(),
            count: Some(channels),
            channels,
            seed: Some(seed),
            score: Some(ScoreKind::Mean),
            calibration_auroc: Some(cal),
            test_auroc: Some(test),
            calibration_auroc_mean_score: Some(cal),
            calibration_auroc_max_score: None,
            calibration_auroc_top_score: None,
            test_auroc_mean_score: Some(test),
            test_auroc_max_score: None,
            test_auroc_top_score: None,
            accuracy: Some(test - 0.1),
            f1: None,
            pixel_auroc: None,
            calibration_pixel_auroc: None,
            model_bytes: 1,
            score_cpu_seconds: 0.5,
        }
    }

    #[test]
    fn groups_are_mean_and_sample_std_over_seeds_and_best_is_by_calibration() {
        let experiments = vec![
            experiment("c010-s0-l123", "1+2+3", 10, 0, 0.90, 0.80),
            experiment("c010-s1-l123", "1+2+3", 10, 1, 0.92, 0.84),
            experiment("c010-s2-l123", "1+2+3", 10, 2, 0.94, 0.88),
            experiment("c020-s0-l23", "2+3", 20, 0, 0.94, 0.99),
        ];
        let frame = experiments_frame(&experiments).unwrap();
        let groups = groups(&groups_frame(&frame).unwrap()).unwrap();
        assert_eq!(groups.len(), 2);
        let first = &groups[0];
        assert_eq!((first.layers.as_str(), first.channels, first.experiments), ("1+2+3", 10, 3));
        assert!((first.test_auroc_mean.unwrap() - 0.84).abs() < 1e-12);
        assert!((first.test_auroc_std.unwrap() - 0.04).abs() < 1e-12, "{:?}", first.test_auroc_std);
        assert!((first.calibration_auroc_std.unwrap() - 0.02).abs() < 1e-12);
        assert_eq!(groups[1].test_auroc_std, None, "one seed has no standard deviation");
        // A tie on calibration AUROC goes to fewer channels; the test AUROC plays no part.
        assert_eq!(best(&experiments).as_deref(), Some("c010-s2-l123"));
        crate::pictures::ensure_font().unwrap();
        assert!(auroc_plot(&groups).unwrap().starts_with(b"\x89PNG"));
    }

    #[test]
    fn the_leaderboard_ranks_by_calibration_and_says_what_differs_from_the_best() {
        let mut oas = experiment("all-l23-oas", "2+3", 152, 0, 0.93, 0.95);
        (oas.count, oas.seed) = (None, None);
        oas.covariance = Covariance { estimator: CovarianceEstimator::Oas, pool: CovariancePool::None };
        let mut top = experiment("c010-s1-l123", "1+2+3", 10, 1, 0.92, 0.99);
        top.score = Some(ScoreKind::Top);
        let mut uncalibrated = experiment("c010-s9-l123", "1+2+3", 10, 9, 0.0, 0.0);
        uncalibrated.calibration_auroc = None;
        let experiments = vec![
            experiment("c010-s0-l123", "1+2+3", 10, 0, 0.90, 0.80),
            top,
            experiment("c010-s2-l123", "1+2+3", 10, 2, 0.94, 0.88),
            oas,
            uncalibrated,
            experiment("c020-s0-l23", "2+3", 20, 0, 0.94, 0.99),
        ];
        let board = leaderboard(&experiments, 4);
        let rows: Vec<(&str, &str)> = board.iter().map(|(e, why)| (e.id.as_str(), why.as_str())).collect();
        assert_eq!(
            rows,
            [
                ("c010-s2-l123", "the best"),
                ("c020-s0-l23", "layers 2+3, 20 random channels, seed 0"),
                ("all-l23-oas", "layers 2+3, covariance oas, all 152 channels"),
                ("c010-s1-l123", "seed 1, top score"),
            ]
        );
        assert_eq!(best(&experiments).as_deref(), Some(rows[0].0));
        assert_eq!(leaderboard(&experiments, 100).len(), 5, "the uncalibrated experiment is not ranked");
    }
}
