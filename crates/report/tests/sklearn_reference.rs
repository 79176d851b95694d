//! The report's metrics against independent references computed at test time in the project's venv:
//! scikit-learn for ROC, AUC, average precision and the Youden / max-F1 thresholds; a threshold-by-
//! threshold PRO with scipy's connected components (`scripts/metrics_reference.py`).
#![allow(clippy::unwrap_used)]

use padim_report::metrics::{Roc, average_precision, label_regions, pro_auc};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn reference(request: serde_json::Value) -> serde_json::Value {
    let mut child = Command::new(root().join(".venv/bin/python"))
        .arg(root().join("scripts/metrics_reference.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(request.to_string().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A deterministic generator of scores with many ties (values on a coarse grid).
fn scores(n: usize, seed: u64, levels: u64) -> (Vec<f64>, Vec<bool>) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|_| {
            let anomalous = next() % 3 == 0;
            let base = (next() % levels) as f64 / levels as f64;
            (if anomalous { base + 0.3 } else { base }, anomalous)
        })
        .unzip()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * b.abs().max(1.0)
}

#[test]
fn image_metrics_equal_scikit_learn_with_ties() {
    for (n, seed, levels) in [(40, 1, 7), (200, 2, 20), (500, 3, 1000), (31, 4, 3)] {
        let (s, y) = scores(n, seed, levels);
        let want = reference(serde_json::json!({ "kind": "image", "scores": s, "labels": y }));
        let roc = Roc::new(&s, &y, "test").unwrap();
        assert!(close(roc.auc(), want["auc"].as_f64().unwrap()), "AUC {} vs {}", roc.auc(), want["auc"]);
        assert!(close(average_precision(&roc), want["ap"].as_f64().unwrap()), "AP {}", want["ap"]);
        let fpr: Vec<f64> = serde_json::from_value(want["fpr"].clone()).unwrap();
        let tpr: Vec<f64> = serde_json::from_value(want["tpr"].clone()).unwrap();
        assert_eq!(roc.fpr.len(), fpr.len(), "one ROC point per distinct score");
        assert!(roc.fpr.iter().zip(&fpr).all(|(a, b)| close(*a, *b)));
        assert!(roc.tpr.iter().zip(&tpr).all(|(a, b)| close(*a, *b)));
        assert_eq!(roc.thresholds[roc.youden()], want["youden"].as_f64().unwrap(), "Youden threshold, n = {n}");
        let f1_at = |t: f64| padim_report::metrics::Confusion::at(&s, &y, t).f1();
        assert!(close(f1_at(roc.thresholds[roc.max_f1()]), want["max_f1_value"].as_f64().unwrap()));
        assert_eq!(roc.thresholds[roc.max_f1()], want["max_f1"].as_f64().unwrap(), "max-F1 threshold, n = {n}");
        // Target FPR: the lowest threshold within the rate.
        let i = roc.at_fpr(0.1);
        assert!(roc.fpr[i] <= 0.1 && roc.fpr.get(i + 1).is_none_or(|f| *f > 0.1));
    }
}

#[test]
fn pro_equals_a_threshold_by_threshold_reference() {
    // Three 12x12 images: blobs of different sizes (one image with two regions, one without any).
    let (h, w) = (12usize, 12usize);
    let mut masks = vec![vec![false; h * w]; 3];
    for y in 2..6 {
        for x in 3..8 {
            masks[0][y * w + x] = true;
        }
    }
    masks[0][11 * w + 11] = true;
    for y in 7..9 {
        for x in 1..3 {
            masks[1][y * w + x] = true;
        }
    }
    let (s, _) = scores(3 * h * w, 9, 50);
    let mut pixel_scores: Vec<f32> = s.iter().map(|&v| v as f32).collect();
    // Make the defects somewhat more anomalous so the curve is not trivial.
    for (i, m) in masks.iter().flatten().enumerate() {
        if *m {
            pixel_scores[i] += 0.25;
        }
    }
    let mut regions = Vec::new();
    let mut n_regions = 0usize;
    for mask in &masks {
        let (labels, n) = label_regions(mask, h, w);
        regions.extend(labels.into_iter().map(|l| l.map(|l| l + n_regions as u32)));
        n_regions += n;
    }
    assert_eq!(n_regions, 3);
    let ours = pro_auc(&pixel_scores, &regions, n_regions, 0.3).unwrap();
    let grid: Vec<Vec<Vec<bool>>> = masks.iter().map(|m| m.chunks(w).map(|r| r.to_vec()).collect()).collect();
    let score_grid: Vec<Vec<Vec<f64>>> = pixel_scores
        .chunks(h * w)
        .map(|img| img.chunks(w).map(|r| r.iter().map(|&v| v as f64).collect()).collect())
        .collect();
    let want = reference(serde_json::json!({ "kind": "pro", "masks": grid, "scores": score_grid, "max_fpr": 0.3 }));
    assert_eq!(want["regions"].as_u64().unwrap(), 3);
    let theirs = want["pro"].as_f64().unwrap();
    assert!((ours - theirs).abs() < 1e-9, "PRO {ours} vs {theirs}");
}

#[test]
fn the_kde_rule_and_the_forecast_densities_equal_scipy() {
    use padim_core::config::ThresholdRule;
    use padim_report::threshold::{LogScale, Smoothed, choose};
    for (n, seed, levels) in [(200, 5, 1000), (120, 6, 40), (300, 7, 5000)] {
        let (s, y) = scores(n, seed, levels);
        let want = reference(serde_json::json!({ "kind": "kde", "scores": s, "labels": y }));
        let t = choose(ThresholdRule::Kde, &s, &y, 0.05, "test").unwrap();
        let t_want = want["threshold"].as_f64().unwrap();
        // The smoothed J is flat at its maximum: the thresholds agree to the optimisers' tolerance.
        assert!((t - t_want).abs() < 1e-6, "kde threshold {t} vs scipy {t_want} (n = {n})");
        let scale = LogScale::new(&s);
        let (normal, anomalous) = scale.classes(&s, &y);
        let at = want["log_threshold"].as_f64().unwrap();
        let (fpr, tpr) = Smoothed::new(&normal, &anomalous).rates(at);
        assert!((tpr - fpr - want["j"].as_f64().unwrap()).abs() < 1e-9, "smoothed J at scipy's threshold");
        let (fpr, tpr) = Smoothed::variance_corrected(&normal, &anomalous).rates(at);
        let rates: Vec<f64> = serde_json::from_value(want["corrected_rates"].clone()).unwrap();
        assert!((fpr - rates[0]).abs() < 1e-9 && (tpr - rates[1]).abs() < 1e-9, "{fpr} {tpr} vs {rates:?}");
    }
}
