//! A forecast of the test accuracy, false-positive and false-negative rates at the chosen
//! threshold, from the calibration split alone.
//!
//! The threshold is fixed; what is uncertain is how often images to come fall on the wrong side of
//! it. Each class's calibration scores, as kernel densities on the log scale of the threshold rule
//! `kde` (variance-corrected, so that their tails are not too heavy), give a smoothed rate for each
//! side; a bootstrap resamples the calibration
//! images (or, with `split.groups`, the groups) of each class, and each resample's densities rate
//! the threshold again. Each resample then draws the test split's counts of normal and anomalous
//! images from those rates (binomially), so the interval holds both what 100 + 100 calibration
//! images cannot pin down and the test split's own sampling noise. Smoothing matters: with classes
//! that barely overlap, a calibration split often has no error at all on one side, and the plain
//! bootstrap of a count of zero is an interval of zero width.

use crate::threshold::{LogScale, Smoothed};
use rand::SeedableRng;
use rand_distr::{Binomial, Distribution};
use serde::{Deserialize, Serialize};

/// Bootstrap resamples of a forecast.
pub const RESAMPLES: usize = 2000;
/// The intervals' coverage.
pub const CONFIDENCE: f64 = 0.9;
/// The resamples' seed (fixed: the same scores give the same forecast).
const SEED: u64 = 0;

/// A percentile interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

impl Interval {
    fn of(values: &mut [f64]) -> Interval {
        values.sort_by(f64::total_cmp);
        let tail = (1.0 - CONFIDENCE) / 2.0 * 100.0;
        Interval {
            low: crate::metrics::percentile_sorted(values, tail),
            high: crate::metrics::percentile_sorted(values, 100.0 - tail),
        }
    }

    pub fn contains(&self, value: f64) -> bool {
        self.low <= value && value <= self.high
    }
}

/// The forecast for one model and score at its threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Forecast {
    /// Each interval's coverage.
    pub confidence: f64,
    pub accuracy: Interval,
    pub fpr: Interval,
    pub fnr: Interval,
    /// The images the accuracy is forecast for: the test split's counts (the class mix weighs the
    /// two error rates).
    pub normal: usize,
    pub anomalous: usize,
    pub resamples: usize,
    /// What was resampled: `images`, or `groups` with `split.groups`.
    pub unit: String,
}

/// The forecast at `threshold` (normalised units) from the calibration split's `normal` and
/// `anomalous` units (each unit's scores: one image, or a group's images), for `test` = (normal,
/// anomalous) images.
pub fn forecast(
    threshold: f64,
    normal: &[Vec<f64>],
    anomalous: &[Vec<f64>],
    test: (usize, usize),
    unit: &str,
) -> Forecast {
    let all: Vec<f64> = normal.iter().chain(anomalous).flatten().copied().collect();
    let scale = LogScale::new(&all);
    let at = scale.apply(threshold);
    let on_scale = |units: &[Vec<f64>]| -> Vec<Vec<f64>> {
        units.iter().map(|u| u.iter().map(|&s| scale.apply(s)).collect()).collect()
    };
    let (normal, anomalous) = (on_scale(normal), on_scale(anomalous));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(SEED);
    let (mut accuracy, mut fpr, mut fnr) = (Vec::new(), Vec::new(), Vec::new());
    let draw = |units: &[Vec<f64>], rng: &mut rand_chacha::ChaCha8Rng| -> Vec<f64> {
        use rand::Rng;
        (0..units.len()).flat_map(|_| units[rng.random_range(0..units.len())].iter().copied()).collect()
    };
    let binomial = |n: usize, p: f64, rng: &mut rand_chacha::ChaCha8Rng| -> usize {
        Binomial::new(n as u64, p.clamp(0.0, 1.0)).map_or(0, |b| b.sample(rng) as usize)
    };
    for _ in 0..RESAMPLES {
        let (n, a) = (draw(&normal, &mut rng), draw(&anomalous, &mut rng));
        let (false_positive, true_positive) = Smoothed::variance_corrected(&n, &a).rates(at);
        let fp = binomial(test.0, false_positive, &mut rng);
        let fn_ = binomial(test.1, 1.0 - true_positive, &mut rng);
        accuracy.push(1.0 - (fp + fn_) as f64 / (test.0 + test.1).max(1) as f64);
        fpr.push(fp as f64 / test.0.max(1) as f64);
        fnr.push(fn_ as f64 / test.1.max(1) as f64);
    }
    Forecast {
        confidence: CONFIDENCE,
        accuracy: Interval::of(&mut accuracy),
        fpr: Interval::of(&mut fpr),
        fnr: Interval::of(&mut fnr),
        normal: test.0,
        anomalous: test.1,
        resamples: RESAMPLES,
        unit: unit.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_distr::Normal;

    fn units(values: &[f64]) -> Vec<Vec<f64>> {
        values.iter().map(|&v| vec![v]).collect()
    }

    /// Normal scores `exp(N(0, 0.3))`, anomalous `exp(N(1.5, 0.3))`, `n` of each.
    fn draw(rng: &mut rand_chacha::ChaCha8Rng, n: usize) -> (Vec<f64>, Vec<f64>) {
        let (normal, anomalous) = (Normal::new(0.0, 0.3).unwrap(), Normal::new(1.5, 0.3).unwrap());
        (
            (0..n).map(|_| f64::exp(normal.sample(rng))).collect(),
            (0..n).map(|_| f64::exp(anomalous.sample(rng))).collect(),
        )
    }

    #[test]
    fn the_intervals_hold_the_rates_of_images_to_come() {
        // Classes of known distributions: 100 + 100 calibration images, the threshold where the
        // log-normal densities cross (0.75 on the log scale); over 40 draws, the 90% accuracy
        // interval must hold the accuracy on 1,000 + 1,000 new images in at least 80% of them
        // (the binomial spread of 40 trials at 90% reaches down to 83%).
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let threshold = 0.75f64.exp();
        let mut held = 0;
        for _ in 0..40 {
            let (normal, anomalous) = draw(&mut rng, 100);
            let f = forecast(threshold, &units(&normal), &units(&anomalous), (1000, 1000), "images");
            let (test_normal, test_anomalous) = draw(&mut rng, 1000);
            let errors = test_normal.iter().filter(|&&s| s >= threshold).count()
                + test_anomalous.iter().filter(|&&s| s < threshold).count();
            held += usize::from(f.accuracy.contains(1.0 - errors as f64 / 2000.0));
            assert!(f.accuracy.low <= f.accuracy.high && f.fpr.low <= f.fpr.high && f.fnr.low <= f.fnr.high);
        }
        assert!(held >= 32, "the 90% interval held the new images' accuracy in {held} of 40 draws");
    }

    #[test]
    fn a_calibration_split_without_errors_still_forecasts_some() {
        // Separated classes: no calibration error on either side, yet the densities' tails put
        // a little mass across the threshold, and the interval is not the single point 1.
        let normal: Vec<f64> = (0..100).map(|i| 1.0 + 0.01 * f64::from(i)).collect();
        let anomalous: Vec<f64> = (0..100).map(|i| 2.1 + 0.01 * f64::from(i)).collect();
        let f = forecast(2.05, &units(&normal), &units(&anomalous), (1000, 1000), "images");
        assert!(f.accuracy.high <= 1.0 && f.accuracy.low < 1.0, "{f:?}");
        assert!(f.accuracy.low > 0.9, "{f:?}");
    }

    #[test]
    fn groups_are_drawn_whole_and_the_same_scores_give_the_same_forecast() {
        // Three views of each of 20 objects per class: as images, 60 units that look independent;
        // as groups, 20, and the densities' part of the spread grows by about the square root of 3
        // (the test split's binomial part stays).
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (normal, anomalous) = draw(&mut rng, 20);
        let views = |v: &[f64]| v.iter().flat_map(|&s| [s, s, s]).collect::<Vec<f64>>();
        let grouped = |v: &[f64]| v.iter().map(|&s| vec![s, s, s]).collect::<Vec<_>>();
        let (normal_views, anomalous_views) = (views(&normal), views(&anomalous));
        let by_image = forecast(2.1, &units(&normal_views), &units(&anomalous_views), (5000, 5000), "images");
        let by_group = forecast(2.1, &grouped(&normal), &grouped(&anomalous), (5000, 5000), "groups");
        assert_eq!(by_image, forecast(2.1, &units(&normal_views), &units(&anomalous_views), (5000, 5000), "images"));
        let width = |f: &Forecast| f.accuracy.high - f.accuracy.low;
        assert!(width(&by_group) > 1.3 * width(&by_image), "{by_group:?} vs {by_image:?}");
        assert_eq!(by_group.unit, "groups");
    }
}
