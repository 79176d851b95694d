//! Threshold rules: each picks a threshold from the calibration split's scores alone.
//!
//! The empirical rules (Youden's J, maximum F1, a target error rate) take a point of the exact ROC,
//! whose threshold is the lowest score it flags: with classes that barely overlap, Youden's J lands
//! on the least anomalous calibration defect, and every unseen defect below it is missed. The
//! interval rules take the middle of the range of thresholds that give the best point instead
//! (`youden-midpoint`: the best J; `eer`: the smallest larger error rate). `kde` smooths the ROC:
//! each class's calibration scores become a Gaussian kernel density (Silverman's bandwidth), and the
//! threshold maximises the smoothed J (where the two densities cross), so the gap between the
//! classes and their spread both count, not only the extreme scores.

use crate::metrics::{MetricError, Roc};
use padim_core::config::ThresholdRule;

/// The threshold `rule` picks on `scores` (higher = more anomalous) with the truth `anomalous`.
/// `target_rate` serves the `fpr` and `fnr` rules; `what` names the data in errors.
pub fn choose(
    rule: ThresholdRule,
    scores: &[f64],
    anomalous: &[bool],
    target_rate: f64,
    what: &str,
) -> Result<f64, MetricError> {
    let roc = Roc::new(scores, anomalous, what)?;
    if scores.iter().all(|&s| s == scores[0]) {
        return Err(MetricError::Constant { what: what.into(), value: scores[0] });
    }
    let none = |rule: &'static str| MetricError::NoOperatingPoint { what: what.into(), rule };
    // A point of the ROC; the first (+inf: nothing flagged) is no operating point.
    let at_point = |point: usize, rule: &'static str| {
        if point == 0 { Err(none(rule)) } else { Ok(roc.thresholds[point]) }
    };
    match rule {
        ThresholdRule::Youden => at_point(roc.youden(), "the best Youden's J is 0"),
        ThresholdRule::MaxF1 => at_point(roc.max_f1(), "the best F1 is 0"),
        ThresholdRule::Fpr => at_point(roc.at_fpr(target_rate), "the target rate allows no flagged image"),
        ThresholdRule::Fnr => {
            let point = roc.at_fnr(target_rate).ok_or_else(|| MetricError::Unreachable {
                what: what.into(),
                rate: "false-negative rate",
                target: target_rate,
            })?;
            at_point(point, "the target rate allows no flagged image")
        }
        ThresholdRule::YoudenMidpoint => {
            let j: Vec<f64> = (0..roc.tpr.len()).map(|i| roc.tpr[i] - roc.fpr[i]).collect();
            let best = j.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if best <= 0.0 {
                return Err(none("the best Youden's J is 0"));
            }
            Ok(widest_midpoint(&roc, |i| j[i] == best))
        }
        ThresholdRule::Eer => {
            let worse: Vec<f64> = (0..roc.tpr.len()).map(|i| roc.fpr[i].max(1.0 - roc.tpr[i])).collect();
            let best = worse.iter().copied().fold(f64::INFINITY, f64::min);
            if best >= 0.5 {
                return Err(none("no threshold keeps both error rates below one half"));
            }
            Ok(widest_midpoint(&roc, |i| worse[i] == best))
        }
        ThresholdRule::Kde => {
            let scale = LogScale::new(scores);
            let (normal, defect) = scale.classes(scores, anomalous);
            let (threshold, j) = Smoothed::new(&normal, &defect).best_j();
            if j <= 0.0 {
                return Err(none("the best smoothed Youden's J is 0"));
            }
            Ok(scale.invert(threshold))
        }
    }
}

/// The middle of the widest range of thresholds that give one of the ROC points `best` selects:
/// point `i` holds for thresholds in `(thresholds[i + 1], thresholds[i]]`; the last point (every
/// image flagged) has no lower end, so its own threshold stands.
fn widest_midpoint(roc: &Roc, best: impl Fn(usize) -> bool) -> f64 {
    let n = roc.thresholds.len();
    let mut chosen: Option<(f64, f64)> = None; // (width, threshold)
    for i in (1..n).filter(|&i| best(i)) {
        let (width, threshold) = match roc.thresholds.get(i + 1) {
            Some(&lower) => (roc.thresholds[i] - lower, (roc.thresholds[i] + lower) / 2.0),
            None => (f64::INFINITY, roc.thresholds[i]),
        };
        if chosen.is_none_or(|(w, _)| width > w) {
            chosen = Some((width, threshold));
        }
    }
    chosen.map_or(roc.thresholds[n - 1], |(_, t)| t)
}

/// The log scale the kernel densities live on: `ln(s - shift)`, the shift a hundredth of the
/// scores' range below the lowest score (so that the lowest stays finite).
#[derive(Debug, Clone, Copy)]
pub struct LogScale {
    shift: f64,
}

impl LogScale {
    /// The scale of `scores` (finite, not all equal).
    pub fn new(scores: &[f64]) -> LogScale {
        let lo = scores.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        LogScale { shift: lo - (hi - lo) / 100.0 }
    }

    /// A score on the log scale (`-inf` at or below the shift).
    pub fn apply(self, score: f64) -> f64 {
        if score > self.shift { (score - self.shift).ln() } else { f64::NEG_INFINITY }
    }

    pub fn invert(self, value: f64) -> f64 {
        value.exp() + self.shift
    }

    /// The normal and the anomalous images' scores on this scale.
    pub fn classes(self, scores: &[f64], anomalous: &[bool]) -> (Vec<f64>, Vec<f64>) {
        let pick = |class: bool| {
            scores.iter().zip(anomalous).filter(|(_, a)| **a == class).map(|(&s, _)| self.apply(s)).collect()
        };
        (pick(false), pick(true))
    }
}

/// Two classes' scores as Gaussian kernel densities (one bandwidth per class, Silverman's rule:
/// `0.9 min(sd, IQR / 1.34) n^(-1/5)`).
#[derive(Debug, Clone)]
pub struct Smoothed {
    normal: Vec<f64>,
    anomalous: Vec<f64>,
    bandwidth: [f64; 2],
}

/// Silverman's rule-of-thumb bandwidth of `values` (sorted); `None` when they have no spread.
fn silverman(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len() as f64;
    if sorted.len() < 2 {
        return None;
    }
    let mean = sorted.iter().sum::<f64>() / n;
    let sd = (sorted.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    let quartile = |p: f64| crate::metrics::percentile_sorted(sorted, p);
    let iqr = quartile(75.0) - quartile(25.0);
    let spread = if iqr > 0.0 { sd.min(iqr / 1.34) } else { sd };
    (spread > 0.0).then(|| 0.9 * spread * n.powf(-0.2))
}

/// The standard normal distribution function.
fn phi(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

impl Smoothed {
    /// The densities of `normal` and `anomalous` scores (each class at least one score). A class
    /// without spread (one score, or all equal) takes the other's bandwidth, or a thousandth of the
    /// scores' range when neither has any.
    pub fn new(normal: &[f64], anomalous: &[f64]) -> Smoothed {
        let sorted = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v
        };
        let (normal, anomalous) = (sorted(normal), sorted(anomalous));
        let (lo, hi) = (normal[0].min(anomalous[0]), normal[normal.len() - 1].max(anomalous[anomalous.len() - 1]));
        let fallback = ((hi - lo) / 1000.0).max(f64::MIN_POSITIVE);
        let (h_normal, h_anomalous) = (silverman(&normal), silverman(&anomalous));
        let bandwidth = [h_normal.or(h_anomalous).unwrap_or(fallback), h_anomalous.or(h_normal).unwrap_or(fallback)];
        Smoothed { normal, anomalous, bandwidth }
    }

    /// The variance-corrected densities (Jones 1991): each class's scores drawn towards their mean
    /// by `1 / sqrt(1 + h^2 / var)`, and its bandwidth likewise, so that a density's variance is
    /// its sample's, not the sample's plus `h^2`. A plain kernel density's tails are too heavy by
    /// that much, which rates a threshold between the classes too pessimistically: the forecast's
    /// densities are these.
    pub fn variance_corrected(normal: &[f64], anomalous: &[f64]) -> Smoothed {
        let mut s = Smoothed::new(normal, anomalous);
        let [h_normal, h_anomalous] = &mut s.bandwidth;
        for (scores, h) in [(&mut s.normal, h_normal), (&mut s.anomalous, h_anomalous)] {
            let n = scores.len() as f64;
            if scores.len() < 2 {
                continue;
            }
            let mean = scores.iter().sum::<f64>() / n;
            let variance = scores.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
            if variance > 0.0 {
                let factor = 1.0 / (1.0 + *h * *h / variance).sqrt();
                scores.iter_mut().for_each(|v| *v = mean + (*v - mean) * factor);
                *h *= factor;
            }
        }
        s
    }

    /// The smoothed false-positive and true-positive rates of flagging scores `>= t`.
    pub fn rates(&self, t: f64) -> (f64, f64) {
        let above =
            |scores: &[f64], h: f64| scores.iter().map(|&s| phi((s - t) / h)).sum::<f64>() / scores.len() as f64;
        (above(&self.normal, self.bandwidth[0]), above(&self.anomalous, self.bandwidth[1]))
    }

    fn j(&self, t: f64) -> f64 {
        let (fpr, tpr) = self.rates(t);
        tpr - fpr
    }

    /// The threshold of the largest smoothed J and that J: a grid over the scores' range, then a
    /// golden-section search in the bracket around the grid's best point.
    pub fn best_j(&self) -> (f64, f64) {
        const GRID: usize = 512;
        let lo = self.normal[0].min(self.anomalous[0]);
        let hi = self.normal[self.normal.len() - 1].max(self.anomalous[self.anomalous.len() - 1]);
        let step = (hi - lo) / (GRID - 1) as f64;
        let at = |i: usize| lo + step * i as f64;
        let best =
            (0..GRID).map(|i| (i, self.j(at(i)))).fold((0, f64::NEG_INFINITY), |b, c| if c.1 > b.1 { c } else { b });
        let (mut a, mut b) = (at(best.0.saturating_sub(1)), at((best.0 + 1).min(GRID - 1)));
        let ratio = (5f64.sqrt() - 1.0) / 2.0;
        for _ in 0..60 {
            let (c, d) = (b - ratio * (b - a), a + ratio * (b - a));
            if self.j(c) >= self.j(d) {
                b = d;
            } else {
                a = c;
            }
        }
        let t = (a + b) / 2.0;
        let j = self.j(t);
        if j >= best.1 { (t, j) } else { (at(best.0), best.1) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn truth(normal: usize, anomalous: usize) -> Vec<bool> {
        std::iter::repeat_n(false, normal).chain(std::iter::repeat_n(true, anomalous)).collect()
    }

    #[test]
    fn separated_classes_get_the_middle_of_the_gap_from_the_interval_rules() {
        let scores = [0.1, 0.2, 0.3, 0.7, 0.8, 0.9];
        let truth = truth(3, 3);
        let pick = |rule| choose(rule, &scores, &truth, 0.05, "t").unwrap();
        // Youden's J takes the lowest defect's score; the interval rules the gap's middle.
        assert_eq!(pick(ThresholdRule::Youden), 0.7);
        assert!((pick(ThresholdRule::YoudenMidpoint) - 0.5).abs() < 1e-12);
        assert!((pick(ThresholdRule::Eer) - 0.5).abs() < 1e-12);
        // On the log scale (shift 0.1 - 0.008) the densities cross between the classes.
        let kde = pick(ThresholdRule::Kde);
        assert!(kde > 0.3 && kde < 0.7, "{kde}");
        let scale = LogScale::new(&scores);
        let (normal, defect) = scale.classes(&scores, &truth);
        let (t, _) = Smoothed::new(&normal, &defect).best_j();
        assert!((scale.invert(t) - kde).abs() < 1e-12);
    }

    #[test]
    fn the_midpoint_takes_the_widest_of_tied_intervals() {
        // Normal 0.1, 0.5; anomalous 0.3, 0.9: J = 1/2 at the threshold 0.9 (thresholds in
        // (0.5, 0.9]) and at 0.3 (thresholds in (0.1, 0.3]).
        let scores = [0.1, 0.5, 0.3, 0.9];
        let t = choose(ThresholdRule::YoudenMidpoint, &scores, &truth(2, 2), 0.05, "t").unwrap();
        assert!((t - 0.7).abs() < 1e-12, "{t}");
    }

    #[test]
    fn eer_balances_the_two_error_rates() {
        // Normal 0..10, anomalous 6..16 (step 1): at a threshold of 8 (flag >= 8): FPR 2/10 (8, 9),
        // FNR 2/10 (6, 7); every other threshold makes one of them larger.
        let normal: Vec<f64> = (0..10).map(f64::from).collect();
        let anomalous: Vec<f64> = (6..16).map(f64::from).collect();
        let scores: Vec<f64> = normal.iter().chain(&anomalous).copied().collect();
        let t = choose(ThresholdRule::Eer, &scores, &truth(10, 10), 0.05, "t").unwrap();
        assert!(t > 7.0 && t <= 8.0, "{t}");
    }

    #[test]
    fn a_rule_without_an_operating_point_says_so() {
        // Every defect below every normal image: nothing beats flagging nothing.
        let scores = [0.8, 0.9, 0.1, 0.2];
        for rule in [ThresholdRule::Youden, ThresholdRule::YoudenMidpoint, ThresholdRule::Kde, ThresholdRule::Eer] {
            let e = choose(rule, &scores, &truth(2, 2), 0.05, "calibration").unwrap_err();
            assert!(matches!(e, MetricError::NoOperatingPoint { .. }), "{rule:?}: {e}");
        }
    }

    #[test]
    fn the_log_scale_keeps_the_lowest_score_finite_and_inverts() {
        let scale = LogScale::new(&[-0.2, 0.3, 1.8]);
        assert!((scale.apply(-0.2) - 0.02f64.ln()).abs() < 1e-12);
        for s in [-0.2, 0.0, 0.7, 5.0] {
            assert!((scale.invert(scale.apply(s)) - s).abs() < 1e-12);
        }
        assert_eq!(scale.apply(-0.3), f64::NEG_INFINITY);
    }

    #[test]
    fn smoothed_rates_match_the_closed_form_of_one_kernel() {
        // One normal score at 0 and one defect at 1, both with the fallback bandwidth's
        // neighbour: with two scores per class the bandwidth is Silverman's of the pair.
        let s = Smoothed::new(&[0.0, 0.2], &[1.0, 1.2]);
        let h = 0.9 * (0.2f64 / 2f64.sqrt()).min(0.1 / 1.34) * 2f64.powf(-0.2);
        let (fpr, tpr) = s.rates(0.6);
        let want_fpr = (phi((0.0 - 0.6) / h) + phi((0.2 - 0.6) / h)) / 2.0;
        let want_tpr = (phi((1.0 - 0.6) / h) + phi((1.2 - 0.6) / h)) / 2.0;
        assert!((fpr - want_fpr).abs() < 1e-15 && (tpr - want_tpr).abs() < 1e-15);
        assert!((phi(1.959963984540054) - 0.975).abs() < 1e-12);
    }

    #[test]
    fn variance_corrected_densities_keep_each_sample_variance() {
        // A kernel density's variance is the sample's (n - 1 denominator here) plus h^2; after the
        // correction it is the sample's alone, and the mean stays.
        let normal = [0.0, 0.1, 0.15, 0.4, 0.5, 0.9];
        let anomalous = [2.0, 2.5, 2.6, 3.5];
        let moments = |v: &[f64]| {
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            (mean, v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64)
        };
        let corrected = Smoothed::variance_corrected(&normal, &anomalous);
        for (class, sample) in [(0, &normal[..]), (1, &anomalous[..])] {
            let points = if class == 0 { &corrected.normal } else { &corrected.anomalous };
            let ((m0, v0), (m1, v1)) = (moments(sample), moments(points));
            let h = corrected.bandwidth[class];
            assert!((m0 - m1).abs() < 1e-12);
            assert!((v1 + h * h - v0).abs() < 1e-12, "class {class}: {v1} + {h}^2 against {v0}");
        }
    }

    proptest! {
        /// The smoothed J's maximum is at least the grid's and no threshold on a fine scan beats it.
        #[test]
        fn kde_maximises_the_smoothed_j(
            normal in proptest::collection::vec(0.0f64..1.0, 3..40),
            anomalous in proptest::collection::vec(0.5f64..2.0, 3..40),
        ) {
            let s = Smoothed::new(&normal, &anomalous);
            let (t, j) = s.best_j();
            prop_assert!((s.j(t) - j).abs() < 1e-12);
            let best_scan = (0..=4000).map(|i| s.j(-0.5 + 3.0 * i as f64 / 4000.0)).fold(f64::NEG_INFINITY, f64::max);
            prop_assert!(j >= best_scan - 1e-4, "found {j} at {t}, a scan found {best_scan}");
        }

        /// Every interval rule's threshold gives the confusion counts of its best ROC point.
        #[test]
        fn interval_rules_keep_the_best_points_counts(
            normal in proptest::collection::vec(0u8..50, 2..30),
            anomalous in proptest::collection::vec(20u8..80, 2..30),
        ) {
            let scores: Vec<f64> = normal.iter().chain(&anomalous).map(|&v| f64::from(v)).collect();
            let truth = truth(normal.len(), anomalous.len());
            let roc = Roc::new(&scores, &truth, "t").unwrap();
            let j_at = |t: f64| {
                let c = crate::metrics::Confusion::at(&scores, &truth, t);
                c.tp as f64 / anomalous.len() as f64 - c.fp as f64 / normal.len() as f64
            };
            if let Ok(t) = choose(ThresholdRule::YoudenMidpoint, &scores, &truth, 0.05, "t") {
                let best = (0..roc.tpr.len()).map(|i| roc.tpr[i] - roc.fpr[i]).fold(f64::NEG_INFINITY, f64::max);
                prop_assert!((j_at(t) - best).abs() < 1e-12);
                prop_assert!((j_at(roc.thresholds[roc.youden()]) - best).abs() < 1e-12);
            }
        }
    }
}
