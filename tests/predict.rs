//! `padim predict` with the bundle a run wrote: its scores for the run's images equal the report's,
//! bad images get error rows without stopping the others, wrong weights and f16 matrices.

use crate::support::{Split, copy_concrete, csv_rows, csv_rows_of, padim, root, small_job, stdout};
use padim_fit::bundle::{BundleInfo, MatrixType, decode_bundle, encode_bundle};

#[test]
fn predict_agrees_with_the_report() {
    let dir = tempfile::tempdir().unwrap();
    copy_concrete(dir.path(), 16, 8);
    let split = Split { seed: 2, train: 8, calibration: 3 };
    // The bundle classifies with the top-fraction mean (predict computes it like score), with a
    // model of layers 2 and 3 (on their own grid: one Gaussian per 2x2 cell of the embedding's).
    let extra = r#"[fit]
subsets = [{ name = "r40", count = 40, seed = 1, layers = [2, 3] }]
[score]
top-fraction = 0.05
[report]
score = "top""#;
    let job = small_job(dir.path(), "job", "predict", "run", split, extra);
    stdout(&padim(&["run", job.to_str().unwrap()]));
    let run = dir.path().join("run");
    let bundle = run.join("report/bundle.safetensors");
    let report: Vec<_> = csv_rows(&run.join("report/scores.csv"));
    let decoded = decode_bundle(&std::fs::read(&bundle).unwrap()).unwrap();
    let threshold = decoded.info.threshold;
    assert_eq!((decoded.info.model.grid_factor, decoded.info.format_version), (2, 4), "a bundle of the coarser grid");

    // Every image of the run, with a corrupt one among them, as CSV with overlays.
    let corrupt = dir.path().join("data/corrupt.jpg");
    std::fs::write(&corrupt, b"\xff\xd8 not a jpeg").unwrap();
    let table = dir.path().join("predictions.csv");
    let overlays = dir.path().join("overlays");
    let out = padim(&[
        "predict",
        "--model",
        bundle.to_str().unwrap(),
        "--output",
        table.to_str().unwrap(),
        "--overlays",
        overlays.to_str().unwrap(),
        "--batch-size",
        "5",
        dir.path().join("data").to_str().unwrap(),
    ]);
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && message.contains("1 could not be scored"), "{message}");
    let rows = csv_rows(&table);
    assert_eq!(rows.len(), 25);
    let bad = rows.iter().find(|r| r["path"].ends_with("corrupt.jpg")).unwrap();
    assert!(bad["status"] == "error" && bad["error"].contains("corrupt.jpg"), "{bad:?}");
    let mut worst = 0f64;
    for expected in &report {
        // The report names images relative to the dataset's folder; predict as they were given.
        let row = rows.iter().find(|r| r["path"].ends_with(&format!("/{}", expected["path"]))).unwrap();
        let (score, reference): (f64, f64) =
            (row["score"].parse().unwrap(), expected["top_normalised"].parse().unwrap());
        worst = worst.max((score - reference).abs());
        if (reference - threshold).abs() > 1e-6 {
            assert_eq!(row["anomalous"], expected["anomalous_predicted"], "{}", expected["path"]);
        }
        assert!(std::path::Path::new(row["overlay"].trim_start_matches("file://")).is_file());
    }
    eprintln!("predict vs report: largest normalised score difference {worst:e} over {} images", report.len());
    assert!(worst < 1e-6, "predict differs from the report by {worst:e}");

    // JSON lines on stdout for pipes; --fail-fast stops at the corrupt image, naming it.
    let first = dir.path().join("data").join(&report[0]["path"]).display().to_string();
    let lines = stdout(&padim(&["predict", "--model", bundle.to_str().unwrap(), &first]));
    let line: serde_json::Value = serde_json::from_str(lines.trim()).unwrap();
    assert_eq!(line["path"], first.as_str());
    let stopped = padim(&["predict", "--model", bundle.to_str().unwrap(), "--fail-fast", corrupt.to_str().unwrap()]);
    let message = String::from_utf8_lossy(&stopped.stderr);
    assert!(!stopped.status.success() && message.contains("corrupt.jpg"), "{message}");

    // Other weights than the bundle's: refused, saying which.
    let other = dir.path().join("other.safetensors");
    let mut bytes = std::fs::read(root().join("weights/efficientnet-lite0.safetensors")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&other, bytes).unwrap();
    let refused =
        padim(&["predict", "--model", bundle.to_str().unwrap(), "--weights", other.to_str().unwrap(), &first]);
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && message.contains("the bundle was made with weights"), "{message}");

    // The same bundle with f16 matrices: half the size; the effect on scores, measured.
    let decoded = decode_bundle(&std::fs::read(&bundle).unwrap()).unwrap();
    let info = BundleInfo { matrices: MatrixType::F16, ..decoded.info.clone() };
    let half = dir.path().join("bundle-f16.safetensors");
    std::fs::write(&half, encode_bundle(&decoded.model, &info).unwrap()).unwrap();
    let sizes = (std::fs::metadata(&bundle).unwrap().len(), std::fs::metadata(&half).unwrap().len());
    let table16 = dir.path().join("predictions-f16.csv");
    stdout(&padim(&[
        "predict",
        "--model",
        half.to_str().unwrap(),
        "--output",
        table16.to_str().unwrap(),
        dir.path().join("data/Negative").to_str().unwrap(),
        dir.path().join("data/Positive").to_str().unwrap(),
    ]));
    let rows16 = csv_rows_of(&std::fs::read(&table16).unwrap());
    let (mut worst16, mut flips) = (0f64, 0);
    for row in &rows16 {
        let full = rows.iter().find(|r| r["path"] == row["path"]).unwrap();
        assert_eq!(row["status"], "ok", "{row:?}");
        let (a, b): (f64, f64) = (full["score"].parse().unwrap(), row["score"].parse().unwrap());
        worst16 = worst16.max((a - b).abs());
        flips += usize::from(full["anomalous"] != row["anomalous"]);
    }
    eprintln!(
        "f16 bundle: {} of {} bytes; largest normalised score change {worst16:e}, {flips} verdicts changed of {}",
        sizes.1,
        sizes.0,
        rows16.len()
    );
    assert!(sizes.1 * 10 < sizes.0 * 6 && worst16 < 0.05, "f16: {worst16:e}, sizes {sizes:?}");
}
