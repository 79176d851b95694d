//! Choices made on the calibration split only: per model the image score (`report.score`, with
//! `auto` keeping the recipe's mean unless another score is clearly better), and the headline model
//! (`report.model = "best"`: the highest calibration AUROC).
//!
//! "Clearly better" is a stratified bootstrap of the calibration images: normal and anomalous
//! images are resampled separately (their counts fixed), every score's AUROC is computed on the same
//! resample, and the 95% percentile interval of the AUROC difference to the mean score must lie
//! above zero. A calibration split of 100 + 100 images can rank rules by chance; the interval says
//! how sure each choice is. With `split.groups` the units resampled are the groups (every image of
//! a drawn group, as many groups as the class has): views of one object are not independent
//! evidence, and counting them as such makes the interval too narrow.

use crate::inputs::Scored;
use crate::summary::{Candidate, ModelMetrics, Resampled};
use padim_core::config::{ScoreKind, ScoreRule, SplitName};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};

/// Bootstrap resamples of the calibration split per model.
pub const RESAMPLES: usize = 2000;
/// The interval's coverage.
pub const CONFIDENCE: f64 = 0.95;
/// The bootstrap stream's seed (fixed: the same scores give the same choice).
const SEED: u64 = 0;

/// AUROC by the Mann-Whitney statistic (ties count a half): the probability that an anomalous
/// image scores above a normal one.
pub fn auroc(anomalous: &[f64], normal: &[f64]) -> f64 {
    let mut all: Vec<(f64, bool)> =
        anomalous.iter().map(|&s| (s, true)).chain(normal.iter().map(|&s| (s, false))).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Sum of the anomalous images' mid-ranks (1-based).
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        let mid = (i + j + 1) as f64 / 2.0;
        rank_sum += mid * all[i..j].iter().filter(|(_, a)| *a).count() as f64;
        i = j;
    }
    let (p, n) = (anomalous.len() as f64, normal.len() as f64);
    (rank_sum - p * (p + 1.0) / 2.0) / (p * n)
}

/// The `[low, high]` percentile interval of `values` at [`CONFIDENCE`].
fn interval(values: Vec<f64>) -> [f64; 2] {
    let tail = (1.0 - CONFIDENCE) / 2.0 * 100.0;
    [crate::metrics::percentile(values.clone(), tail), crate::metrics::percentile(values, 100.0 - tail)]
}

/// The units a bootstrap resamples from `set`: its images in order, or with `groups` (image path to
/// group) the groups in order of first appearance, each with its images (an image without a group
/// is a unit of its own).
pub(crate) fn units<'a>(set: &[&'a Scored], groups: Option<&BTreeMap<String, String>>) -> Vec<Vec<&'a Scored>> {
    let Some(groups) = groups else {
        return set.iter().map(|row| vec![*row]).collect();
    };
    let mut units: Vec<Vec<&Scored>> = Vec::new();
    let mut position: HashMap<&str, usize> = HashMap::new();
    for row in set {
        match groups.get(&row.path) {
            Some(group) => {
                let at = *position.entry(group.as_str()).or_insert_with(|| {
                    units.push(Vec::new());
                    units.len() - 1
                });
                units[at].push(row);
            }
            None => units.push(vec![row]),
        }
    }
    units
}

/// As many units as `units` holds, drawn with replacement, with their images.
fn draw<'a>(units: &[Vec<&'a Scored>], rng: &mut impl Rng) -> Vec<&'a Scored> {
    (0..units.len()).flat_map(|_| units[rng.random_range(0..units.len())].iter().copied()).collect()
}

/// The candidates of one model: every score in `kinds` (those that calibrate; the mean first) with
/// its calibration AUROC and the bootstrap interval of its difference to the mean's, resampling the
/// images, or with `groups` (`split.groups`: image path to group) the groups; and what was resampled.
pub(crate) fn candidates(
    rows: &[Scored],
    kinds: &[ScoreKind],
    normal: &[String],
    groups: Option<&BTreeMap<String, String>>,
) -> (Vec<Candidate>, Resampled) {
    let calibration: Vec<&Scored> = rows.iter().filter(|r| r.split == Some(SplitName::Calibration)).collect();
    let (bad, good): (Vec<&Scored>, Vec<&Scored>) = calibration.into_iter().partition(|r| !normal.contains(&r.label));
    let values = |set: &[&Scored], kind: ScoreKind| set.iter().map(|r| r.score(kind)).collect::<Vec<f64>>();
    let full = |kind: ScoreKind| auroc(&values(&bad, kind), &values(&good, kind));
    let base = full(ScoreKind::Mean);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(SEED);
    let mut differences: Vec<Vec<f64>> = vec![Vec::with_capacity(RESAMPLES); kinds.len()];
    let (bad_units, good_units) = (units(&bad, groups), units(&good, groups));
    if !bad.is_empty() && !good.is_empty() {
        for _ in 0..RESAMPLES {
            let b = draw(&bad_units, &mut rng);
            let g = draw(&good_units, &mut rng);
            let mean = auroc(&values(&b, ScoreKind::Mean), &values(&g, ScoreKind::Mean));
            for (kind, out) in kinds.iter().zip(&mut differences) {
                out.push(auroc(&values(&b, *kind), &values(&g, *kind)) - mean);
            }
        }
    }
    let resampled = Resampled {
        unit: if groups.is_some() { "groups" } else { "images" }.into(),
        anomalous: bad_units.len(),
        normal: good_units.len(),
    };
    let candidates = kinds
        .iter()
        .zip(differences)
        .map(|(&kind, differences)| {
            let auc = full(kind);
            Candidate {
                score: kind,
                calibration_auroc: auc,
                difference: auc - base,
                interval: if kind == ScoreKind::Mean || differences.is_empty() {
                    [0.0, 0.0]
                } else {
                    interval(differences)
                },
            }
        })
        .collect();
    (candidates, resampled)
}

/// The score a model classifies with under `rule`: the fixed one, or for `auto` the candidate with
/// the highest calibration AUROC among those clearly better than the mean (interval above zero),
/// else the mean (else, where the mean cannot calibrate, the candidate with the highest AUROC).
pub fn choose(rule: ScoreRule, candidates: &[Candidate]) -> ScoreKind {
    if let Some(kind) = rule.fixed() {
        return kind;
    }
    let highest = |c: &mut dyn Iterator<Item = &Candidate>| {
        c.max_by(|a, b| a.calibration_auroc.total_cmp(&b.calibration_auroc)).map(|c| c.score)
    };
    let mean = candidates.iter().any(|c| c.score == ScoreKind::Mean);
    highest(&mut candidates.iter().filter(|c| c.interval[0] > 0.0))
        .or(mean.then_some(ScoreKind::Mean))
        .or_else(|| highest(&mut candidates.iter()))
        .unwrap_or(ScoreKind::Mean)
}

/// The best model by calibration AUROC (each with its chosen score); ties go to fewer channels,
/// then to the earlier name.
pub fn best_model<'a>(chosen: impl Iterator<Item = (&'a ModelMetrics, usize)>) -> Option<&'a ModelMetrics> {
    chosen
        .max_by(|(a, ca), (b, cb)| {
            a.calibration.auroc.total_cmp(&b.calibration.auroc).then(cb.cmp(ca)).then(b.model.cmp(&a.model))
        })
        .map(|(m, _)| m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Roc;

    fn scored(label: &str, mean: f64, max: f64, top: f64) -> Scored {
        Scored {
            image: 0,
            path: String::new(),
            label: label.into(),
            split: Some(SplitName::Calibration),
            split_text: SplitName::Calibration.name().into(),
            mean,
            max,
            min: 0.0,
            top,
        }
    }

    #[test]
    fn auroc_equals_the_roc_curve_area_with_ties() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..50 {
            let n = rng.random_range(2..60);
            // Few distinct values: many ties, within and across the classes.
            let scores: Vec<f64> = (0..n).map(|_| rng.random_range(0..6) as f64).collect();
            let mut truth: Vec<bool> = (0..n).map(|_| rng.random_bool(0.5)).collect();
            truth[0] = true;
            truth[1] = false;
            let roc = Roc::new(&scores, &truth, "t").unwrap();
            let of = |class: bool| scores.iter().zip(&truth).filter(|(_, t)| **t == class).map(|(s, _)| *s).collect();
            let (bad, good): (Vec<f64>, Vec<f64>) = (of(true), of(false));
            let a = auroc(&bad, &good);
            assert!((a - roc.auc()).abs() < 1e-12, "{a} vs {}", roc.auc());
        }
    }

    #[test]
    fn auto_keeps_the_mean_unless_another_score_is_clearly_better() {
        let normal = vec!["ok".to_string()];
        // max separates perfectly, mean at chance (AUROC 0.5), top ranked apart from the mean and
        // barely better (0.53).
        let mut rows = Vec::new();
        for i in 0..100 {
            let (rank, other) = (i as f64 / 100.0, (i * 37 % 100) as f64 / 100.0);
            rows.push(scored("ok", rank, rank, other));
            rows.push(scored("bad", rank, 1.0 + rank, other + 0.03));
        }
        let kinds = ScoreKind::ALL;
        let (c, resampled) = candidates(&rows, &kinds, &normal, None);
        assert_eq!(resampled, Resampled { unit: "images".into(), anomalous: 100, normal: 100 });
        assert_eq!(c.iter().map(|c| c.score).collect::<Vec<_>>(), ScoreKind::ALL);
        assert_eq!(c[0].interval, [0.0, 0.0]);
        assert_eq!(c[1].calibration_auroc, 1.0);
        assert!(c[1].interval[0] > 0.3, "{:?}", c[1]);
        assert!(c[1].interval[0] <= c[1].difference && c[1].difference <= c[1].interval[1]);
        assert_eq!(choose(ScoreRule::Auto, &c), ScoreKind::Max);
        assert_eq!(choose(ScoreRule::Top, &c), ScoreKind::Top);
        // Without max, top's small and uncertain gain does not displace the mean.
        let c = candidates(&rows, &[ScoreKind::Mean, ScoreKind::Top], &normal, None).0;
        assert!(c[1].difference > 0.0 && c[1].interval[0] <= 0.0 && c[1].interval[1] > 0.0, "{:?}", c[1]);
        assert_eq!(choose(ScoreRule::Auto, &c), ScoreKind::Mean);
        // The same scores give the same intervals.
        assert_eq!(c, candidates(&rows, &[ScoreKind::Mean, ScoreKind::Top], &normal, None).0);
    }

    #[test]
    fn groups_are_resampled_whole() {
        let normal = vec!["ok".to_string()];
        // 12 objects per class, each photographed 6 times with the same scores: top is ahead of the
        // mean on most objects, behind on a few.
        let object = |label: &str, i: usize| {
            let x = i as f64 / 12.0;
            let shift = if label == "bad" { 0.3 } else { 0.0 };
            let top = if i.is_multiple_of(4) { x } else { x + 2.0 * shift };
            scored(label, x + shift, x, top)
        };
        let (mut views, mut objects, mut groups) = (Vec::new(), Vec::new(), BTreeMap::new());
        for label in ["bad", "ok"] {
            for i in 0..12 {
                objects.push(Scored { path: format!("{label}{i}"), ..object(label, i) });
                for view in 0..6 {
                    let path = format!("{label}{i}/{view}");
                    groups.insert(path.clone(), format!("{label}{i}"));
                    views.push(Scored { path, ..object(label, i) });
                }
            }
        }
        let kinds = [ScoreKind::Mean, ScoreKind::Top];
        // Whole groups of identical views resample like the objects themselves: the same draws
        // and the same AUROCs (replicating every image alike leaves an AUROC unchanged).
        let (grouped, resampled) = candidates(&views, &kinds, &normal, Some(&groups));
        assert_eq!(resampled, Resampled { unit: "groups".into(), anomalous: 12, normal: 12 });
        assert_eq!(grouped, candidates(&objects, &kinds, &normal, None).0);
        // Counting the views as independent images narrows the interval.
        let (by_image, resampled) = candidates(&views, &kinds, &normal, None);
        assert_eq!(resampled, Resampled { unit: "images".into(), anomalous: 72, normal: 72 });
        assert_eq!(by_image[1].difference, grouped[1].difference);
        let width = |c: &Candidate| c.interval[1] - c.interval[0];
        assert!(width(&by_image[1]) < 0.6 * width(&grouped[1]), "{:?} vs {:?}", by_image[1], grouped[1]);
        // An image the groups do not name is a unit of its own.
        let mut partial = groups.clone();
        partial.retain(|path, _| !path.starts_with("ok"));
        let (ok_alone, resampled) = candidates(&views, &kinds, &normal, Some(&partial));
        assert_eq!(resampled, Resampled { unit: "groups".into(), anomalous: 12, normal: 72 });
        assert_ne!(ok_alone, grouped);
        assert_ne!(ok_alone, by_image);
    }

    #[test]
    fn the_test_split_plays_no_part_in_the_choice() {
        let normal = vec!["ok".to_string()];
        // On calibration the mean separates and max does not; on test the reverse, more strongly
        // and with ten times the images.
        let mut rows = Vec::new();
        for i in 0..100 {
            let x = i as f64 / 100.0;
            rows.push(scored("ok", x, 1.0 - x, x));
            rows.push(scored("bad", x + 0.5, 1.0 - x, x + 0.5));
        }
        let calibration_only = candidates(&rows, &ScoreKind::ALL, &normal, None);
        for i in 0..1000 {
            let x = i as f64 / 1000.0;
            for (label, shift) in [("ok", 0.0), ("bad", 1.0)] {
                rows.push(Scored { split: Some(SplitName::Test), ..scored(label, 1.0 - x, x + shift, 1.0 - x) });
            }
        }
        let with_test = candidates(&rows, &ScoreKind::ALL, &normal, None);
        assert_eq!(with_test, calibration_only);
        assert_eq!(choose(ScoreRule::Auto, &with_test.0), ScoreKind::Mean);
    }
}
