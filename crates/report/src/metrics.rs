//! Detection metrics on score vectors: the exact ROC curve (every distinct threshold), its area,
//! average precision, thresholds by Youden's J, maximum F1 or a target error rate, the confusion
//! matrix, and per-region overlap (PRO) for pixel maps.
//!
//! Conventions (scikit-learn's): an image is predicted anomalous when its score is `>= threshold`;
//! the ROC starts at `(0, 0)` with threshold `+inf` and has one point per distinct score.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricError {
    #[error("{what}: {positives} anomalous and {negatives} normal images; both classes are needed")]
    OneClass { what: String, positives: usize, negatives: usize },
    #[error("{what}: every score is {value}; the model does not separate anything, so no threshold is meaningful")]
    Constant { what: String, value: f64 },
    #[error("{what}: a score is not finite ({value})")]
    NonFinite { what: String, value: f64 },
    #[error("{what}: no threshold has a {rate} of at most {target}")]
    Unreachable { what: String, rate: &'static str, target: f64 },
    #[error(
        "{what}: no threshold does better than flagging nothing ({rule}); the scores do not separate the \
         calibration classes, so there is no meaningful threshold"
    )]
    NoOperatingPoint { what: String, rule: &'static str },
}

/// The exact ROC curve. `thresholds[0]` is `+inf` (nothing predicted anomalous).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Roc {
    pub thresholds: Vec<f64>,
    pub fpr: Vec<f64>,
    pub tpr: Vec<f64>,
    /// True and false positives at each threshold.
    pub tp: Vec<usize>,
    pub fp: Vec<usize>,
    pub positives: usize,
    pub negatives: usize,
}

/// Checks that both classes are present and the scores are finite; `what` names the data in errors.
fn validate(scores: &[f64], anomalous: &[bool], what: &str) -> Result<(usize, usize), MetricError> {
    if let Some(&value) = scores.iter().find(|s| !s.is_finite()) {
        return Err(MetricError::NonFinite { what: what.into(), value });
    }
    let positives = anomalous.iter().filter(|a| **a).count();
    let negatives = anomalous.len() - positives;
    if positives == 0 || negatives == 0 {
        return Err(MetricError::OneClass { what: what.into(), positives, negatives });
    }
    Ok((positives, negatives))
}

impl Roc {
    /// The ROC of `scores` (higher = more anomalous) against the truth `anomalous`.
    pub fn new(scores: &[f64], anomalous: &[bool], what: &str) -> Result<Roc, MetricError> {
        assert_eq!(scores.len(), anomalous.len(), "one label per score");
        let (positives, negatives) = validate(scores, anomalous, what)?;
        // Sorted (score, truth) pairs, highest first: the order within ties does not matter (one
        // point per distinct score). A parallel sort of the values themselves, not of indices into
        // them: pixel ROCs have tens of millions of points.
        let mut order: Vec<(f64, bool)> = scores.iter().copied().zip(anomalous.iter().copied()).collect();
        order.par_sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        let mut roc = Roc {
            thresholds: vec![f64::INFINITY],
            fpr: vec![0.0],
            tpr: vec![0.0],
            tp: vec![0],
            fp: vec![0],
            positives,
            negatives,
        };
        let (mut tp, mut fp) = (0usize, 0usize);
        for (rank, &(score, anomalous)) in order.iter().enumerate() {
            if anomalous {
                tp += 1;
            } else {
                fp += 1;
            }
            // One point per distinct score: after the last of a run of ties.
            let last_of_ties = order.get(rank + 1).is_none_or(|next| next.0 != score);
            if last_of_ties {
                roc.thresholds.push(score);
                roc.tp.push(tp);
                roc.fp.push(fp);
                roc.tpr.push(tp as f64 / positives as f64);
                roc.fpr.push(fp as f64 / negatives as f64);
            }
        }
        Ok(roc)
    }

    /// The area under the curve (trapezoids; ties count one half, as in the Mann-Whitney U).
    pub fn auc(&self) -> f64 {
        self.fpr.windows(2).zip(self.tpr.windows(2)).map(|(f, t)| (f[1] - f[0]) * (t[1] + t[0]) / 2.0).sum()
    }

    /// Index of the point maximising Youden's J = TPR - FPR (the first, i.e. highest threshold, of ties).
    pub fn youden(&self) -> usize {
        argmax((0..self.tpr.len()).map(|i| self.tpr[i] - self.fpr[i]))
    }

    /// Index of the point maximising F1 = 2 TP / (2 TP + FP + FN).
    pub fn max_f1(&self) -> usize {
        argmax((0..self.tp.len()).map(|i| f1(self.tp[i], self.fp[i], self.positives - self.tp[i])))
    }

    /// Index of the lowest threshold whose false-positive rate is at most `target`.
    pub fn at_fpr(&self, target: f64) -> usize {
        // The FPR grows along the curve; the point at +inf has FPR 0, so one always qualifies.
        (0..self.fpr.len()).rev().find(|&i| self.fpr[i] <= target).unwrap_or(0)
    }

    /// Index of the highest threshold whose false-negative rate (1 - TPR) is at most `target`.
    pub fn at_fnr(&self, target: f64) -> Option<usize> {
        (0..self.tpr.len()).find(|&i| 1.0 - self.tpr[i] <= target + 1e-12)
    }
}

fn argmax(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

fn f1(tp: usize, fp: usize, fn_: usize) -> f64 {
    if tp == 0 { 0.0 } else { 2.0 * tp as f64 / (2 * tp + fp + fn_) as f64 }
}

/// Average precision: `sum_n (R_n - R_{n-1}) P_n` over the distinct thresholds (scikit-learn's
/// `average_precision_score`, no interpolation).
pub fn average_precision(roc: &Roc) -> f64 {
    let mut previous_recall = 0.0;
    let mut ap = 0.0;
    for i in 1..roc.tp.len() {
        let recall = roc.tpr[i];
        let predicted = roc.tp[i] + roc.fp[i];
        let precision = if predicted == 0 { 1.0 } else { roc.tp[i] as f64 / predicted as f64 };
        ap += (recall - previous_recall) * precision;
        previous_recall = recall;
    }
    ap
}

/// Counts at one threshold, and the rates derived from them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Confusion {
    pub tp: usize,
    pub fp: usize,
    pub tn: usize,
    #[serde(rename = "fn")]
    pub fn_: usize,
}

impl Confusion {
    pub fn at(scores: &[f64], anomalous: &[bool], threshold: f64) -> Confusion {
        let mut c = Confusion { tp: 0, fp: 0, tn: 0, fn_: 0 };
        for (&s, &a) in scores.iter().zip(anomalous) {
            match (s >= threshold, a) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, false) => c.tn += 1,
                (false, true) => c.fn_ += 1,
            }
        }
        c
    }

    fn ratio(a: usize, b: usize) -> f64 {
        if b == 0 { 0.0 } else { a as f64 / b as f64 }
    }

    pub fn accuracy(&self) -> f64 {
        Self::ratio(self.tp + self.tn, self.tp + self.tn + self.fp + self.fn_)
    }
    pub fn precision(&self) -> f64 {
        Self::ratio(self.tp, self.tp + self.fp)
    }
    pub fn recall(&self) -> f64 {
        Self::ratio(self.tp, self.tp + self.fn_)
    }
    pub fn specificity(&self) -> f64 {
        Self::ratio(self.tn, self.tn + self.fp)
    }
    pub fn f1(&self) -> f64 {
        f1(self.tp, self.fp, self.fn_)
    }
}

/// Per-region overlap integrated over the false-positive rate up to `max_fpr`, normalised by
/// `max_fpr` (Bergmann et al., MVTec AD, 2021). `scores` are pixel scores, `region` is the connected
/// defect region of each pixel (`None` for normal pixels), `n_regions` their number.
pub fn pro_auc(scores: &[f32], region: &[Option<u32>], n_regions: usize, max_fpr: f64) -> Result<f64, MetricError> {
    let negatives = region.iter().filter(|r| r.is_none()).count();
    if n_regions == 0 || negatives == 0 {
        return Err(MetricError::OneClass { what: "pixel PRO".into(), positives: n_regions, negatives });
    }
    let mut sizes = vec![0usize; n_regions];
    for r in region.iter().flatten() {
        sizes[*r as usize] += 1;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    // Sweep thresholds from high to low; PRO = mean over regions of their covered fraction.
    let (mut fp, mut covered) = (0usize, 0f64);
    let (mut last_fpr, mut last_pro, mut area) = (0f64, 0f64, 0f64);
    for (rank, &index) in order.iter().enumerate() {
        match region[index] {
            Some(r) => covered += 1.0 / sizes[r as usize] as f64,
            None => fp += 1,
        }
        let last_of_ties = order.get(rank + 1).is_none_or(|&next| scores[next] != scores[index]);
        if !last_of_ties {
            continue;
        }
        let fpr = fp as f64 / negatives as f64;
        let pro = covered / n_regions as f64;
        if fpr >= max_fpr {
            // Interpolate the segment up to exactly max_fpr.
            let t = if fpr > last_fpr { (max_fpr - last_fpr) / (fpr - last_fpr) } else { 0.0 };
            let pro_at = last_pro + t * (pro - last_pro);
            area += (max_fpr - last_fpr) * (last_pro + pro_at) / 2.0;
            return Ok(area / max_fpr);
        }
        area += (fpr - last_fpr) * (last_pro + pro) / 2.0;
        (last_fpr, last_pro) = (fpr, pro);
    }
    Ok(area / max_fpr)
}

/// Connected regions (8-neighbourhood) of a binary `height x width` mask: the region of each pixel.
pub fn label_regions(mask: &[bool], height: usize, width: usize) -> (Vec<Option<u32>>, usize) {
    let mut labels = vec![None; mask.len()];
    let mut count = 0u32;
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || labels[start].is_some() {
            continue;
        }
        labels[start] = Some(count);
        stack.push(start);
        while let Some(p) = stack.pop() {
            let (y, x) = ((p / width) as isize, (p % width) as isize);
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (ny, nx) = (y + dy, x + dx);
                    if ny < 0 || nx < 0 || ny >= height as isize || nx >= width as isize {
                        continue;
                    }
                    let q = ny as usize * width + nx as usize;
                    if mask[q] && labels[q].is_none() {
                        labels[q] = Some(count);
                        stack.push(q);
                    }
                }
            }
        }
        count += 1;
    }
    (labels, count as usize)
}

/// The `p`-th percentile (linear interpolation between order statistics, NumPy's default).
pub fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile_sorted(&values, p)
}

/// [`percentile`] of values already sorted.
pub fn percentile_sorted(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let rank = p / 100.0 * (values.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    values[low] + (values[high] - values[low]) * (rank - low as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roc_with_ties_by_hand() {
        // Scores 0.9(a) 0.8(a) 0.8(n) 0.3(n) 0.1(a): distinct thresholds inf, .9, .8, .3, .1.
        let scores = [0.9, 0.8, 0.8, 0.3, 0.1];
        let labels = [true, true, false, false, true];
        let roc = Roc::new(&scores, &labels, "t").unwrap();
        assert_eq!(roc.thresholds, vec![f64::INFINITY, 0.9, 0.8, 0.3, 0.1]);
        assert_eq!(roc.tp, vec![0, 1, 2, 2, 3]);
        assert_eq!(roc.fp, vec![0, 0, 1, 2, 2]);
        // Pairs (a, n): a > n in 0.9>0.8, 0.9>0.3, 0.8>0.3 = 3, tie 0.8=0.8 = 0.5; of 3 x 2 = 6.
        assert!((roc.auc() - 3.5 / 6.0).abs() < 1e-12);
        // J = 0, 1/3, 2/3 - 1/2, 2/3 - 1, 0: the point at 0.9.
        assert_eq!(roc.youden(), 1);
        // F1 = 0, 2/5, 4/7, 4/8, 6/8: the lowest threshold.
        assert_eq!(roc.max_f1(), 4);
        assert!((average_precision(&roc) - (1.0 / 3.0 + 1.0 / 3.0 * 2.0 / 3.0 + 1.0 / 3.0 * 3.0 / 5.0)).abs() < 1e-12);
    }

    #[test]
    fn degenerate_inputs_are_errors() {
        assert!(matches!(Roc::new(&[1.0, 2.0], &[true, true], "cal"), Err(MetricError::OneClass { .. })));
        assert!(matches!(Roc::new(&[1.0, f64::NAN], &[true, false], "cal"), Err(MetricError::NonFinite { .. })));
    }

    #[test]
    fn pro_of_a_perfect_and_of_a_blind_map() {
        // Two regions of one pixel each and eight normal pixels.
        let mut region = vec![None; 10];
        region[0] = Some(0);
        region[5] = Some(1);
        let perfect: Vec<f32> = (0..10).map(|i| if i == 0 || i == 5 { 1.0 } else { 0.0 }).collect();
        assert!((pro_auc(&perfect, &region, 2, 0.3).unwrap() - 1.0).abs() < 1e-12);
        let constant = vec![0.5f32; 10];
        // All thresholds at once: FPR jumps 0 -> 1 and PRO 0 -> 1; up to FPR 0.3 the line gives
        // PRO = FPR, area 0.045, normalised 0.15.
        assert!((pro_auc(&constant, &region, 2, 0.3).unwrap() - 0.15).abs() < 1e-12);
    }

    #[test]
    fn regions_are_eight_connected() {
        #[rustfmt::skip]
        let mask = [
            true, false, false, true,
            false, true, false, false,
            false, false, false, true,
        ];
        let (labels, n) = label_regions(&mask, 3, 4);
        assert_eq!(n, 3);
        assert_eq!(labels[0], labels[5]);
        assert_ne!(labels[3], labels[11]);
    }
}
