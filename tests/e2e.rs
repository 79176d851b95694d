//! End to end: the real `padim` binary on real images, two shards, reruns, fit and score against
//! PyTorch, and outputs opened by pyarrow and polars; storage in a real S3-compatible server (`s3`)
//! and in Azure Blob Storage's emulator (`azure`); the Slurm template on a real Slurm cluster
//! (`slurm`) and the AWS Batch and Kubernetes templates run by local stand-ins for their engines
//! (`templates`).
// Tests may unwrap and print: a failure is the point, and the output is the measurement.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod azure;
mod chaos;
mod identity;
mod init;
mod predict;
mod s3;
mod slurm;
mod storage;
mod support;
mod sweep;
mod templates;

use padim_store::{EmbeddingReader, Store};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::{copy_first, csv_rows, padim, root, stdout};

fn write_job(dir: &Path, batch_size: usize) -> PathBuf {
    let text = format!(
        r#"
[run]
name = "e2e"
output = "file://{}/run"
[dataset]
root = ["data"]
normal = ["Negative"]
[backbone]
name = "efficientnet-lite0"
weights = "{}"
sha256 = "f46ec1c3cb680f7b6e592fd971a28f301ca2deef2db22f51ce7d8e69c6b5d28e"
[extract]
batch-size = {batch_size}
threads = 2
"#,
        dir.display(),
        root().join("weights/efficientnet-lite0.safetensors").display()
    );
    let path = dir.join("job.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn two_shards_rerun_and_open_in_pyarrow_and_polars() {
    let shared = root().join("../shared/data/concrete-crack");
    assert!(shared.is_dir(), "{} is absent: the end-to-end test has no real images to run on", shared.display());
    let dir = tempfile::tempdir().unwrap();
    for label in ["Negative", "Positive"] {
        let target = dir.path().join("data").join(label);
        std::fs::create_dir_all(&target).unwrap();
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(shared.join(label)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for file in files.iter().take(5) {
            std::fs::copy(file, target.join(file.file_name().unwrap())).unwrap();
        }
    }
    let job = write_job(dir.path(), 4);
    let job_arg = job.to_str().unwrap();

    let config = stdout(&padim(&["config", job_arg]));
    assert!(config.contains("\"hash\"") && config.contains("efficientnet-lite0"), "{config}");

    for shard in ["0/2", "1/2"] {
        let out = stdout(&padim(&["extract", job_arg, "--shard", shard]));
        assert!(out.contains(&format!("extract {shard} done: 5 images, 0 skipped")), "{out}");
    }
    let again = stdout(&padim(&["extract", job_arg, "--shard", "0/2"]));
    assert!(again.contains("already done"), "{again}");

    // Execution settings are not the shard's identity: another batch size, thread count or device
    // finds the finished shard.
    let batches = write_job(dir.path(), 2);
    let same = stdout(&padim(&["extract", batches.to_str().unwrap(), "--shard", "0/2", "--threads", "1"]));
    assert!(same.contains("already done"), "{same}");
    // Another pre-processing is another identity: refused, then forced.
    let changed = dir.path().join("changed.toml");
    let text = std::fs::read_to_string(&job).unwrap();
    std::fs::write(&changed, format!("{text}[preprocess]\nresize = [240, 240]\n")).unwrap();
    let refused = padim(&["extract", changed.to_str().unwrap(), "--shard", "0/2"]);
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && message.contains("other inputs or settings") && message.contains("--force"),
        "{message}"
    );
    let forced = stdout(&padim(&["extract", changed.to_str().unwrap(), "--shard", "0/2", "--force"]));
    assert!(forced.contains("extract 0/2 done"), "{forced}");

    let run = dir.path().join("run");
    let store = Store::open(run.to_str().unwrap()).unwrap();
    let keys = store.list("extract").unwrap();
    for tag in ["00000-of-00002", "00001-of-00002"] {
        for kind in ["embeddings", "images"] {
            assert!(keys.contains(&format!("extract/{kind}-{tag}.parquet")), "{keys:?}");
        }
        assert!(keys.contains(&format!("extract/done-{tag}.json")), "{keys:?}");
    }

    // pyarrow and polars read the files; their projected channel agrees with padim's own reader.
    let channel = 100usize;
    let embeddings = run.join("extract/embeddings-00001-of-00002.parquet");
    let images = run.join("extract/images-00001-of-00002.parquet");
    let python = root().join(".venv/bin/python");
    let output = Command::new(python)
        .arg(root().join("scripts/inspect_embeddings.py"))
        .args([embeddings.to_str().unwrap(), images.to_str().unwrap(), &channel.to_string()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["rows"], 5 * 56 * 56);
    assert_eq!(summary["columns"], 3 + 176);
    assert_eq!(summary["backbone"], "efficientnet-lite0");
    assert_eq!(summary["grid"], serde_json::json!([56, 56]));
    assert_eq!((summary["max_y"].as_u64(), summary["max_x"].as_u64()), (Some(55), Some(55)));
    assert_eq!(summary["images"], 5);

    let mut reader =
        EmbeddingReader::open(&store, "extract/embeddings-00001-of-00002.parquet", Some(&[channel]), 2).unwrap();
    let mut n_images = 0;
    while let Some(batch) = reader.next_batch().unwrap() {
        for (i, id) in batch.image_ids.iter().enumerate() {
            let ours: f64 = batch.values[i * 3136..(i + 1) * 3136].iter().map(|&v| v as f64).sum();
            let theirs = summary["sums"][id.to_string()].as_f64().unwrap();
            assert!((ours - theirs).abs() <= 1e-6 * ours.abs().max(1.0), "image {id}: {ours} vs {theirs}");
            n_images += 1;
        }
    }
    assert_eq!(n_images, 5);
    // Shard 1 of 2 holds the second half of the sorted listing: ids 5..10 (all Positive).
    assert!(summary["sums"].as_object().unwrap().keys().all(|k| (5..10).contains(&k.parse::<u32>().unwrap())));
}

#[test]
fn bad_job_file_names_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.toml");
    std::fs::write(&path, "[run]\nname = \"x\"\noutput = \"o\"\nbogus = 1\n").unwrap();
    let output = padim(&["extract", path.to_str().unwrap()]);
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(message.contains("job.toml") && message.contains("bogus"), "{message}");
}

#[test]
fn shipped_jobs_are_valid() {
    let data = root().join("../shared/data/concrete-crack");
    assert!(
        data.is_dir() || root().join("data/concrete-crack").is_dir(),
        "no concrete-crack data: the shipped jobs cannot resolve their dataset"
    );
    let mut n_jobs = 0;
    for entry in std::fs::read_dir(root().join("configs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let job = padim_core::Job::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(job.output.contains(&job.name), "{}: output should be named after the job", path.display());
            n_jobs += 1;
        }
    }
    assert!(n_jobs >= 2);
}

/// Extract and fit on a few dozen real images; the model equals a plain PyTorch fit (f64) of the same
/// embeddings, and loads in Python with `safetensors` alone.
#[test]
fn fit_matches_pytorch_on_real_embeddings() {
    let shared = root().join("../shared/data/concrete-crack");
    assert!(shared.is_dir(), "{} is absent: the fit reference test has no real images to run on", shared.display());
    let dir = tempfile::tempdir().unwrap();
    for (label, n) in [("Negative", 24), ("Positive", 4)] {
        let target = dir.path().join("data").join(label);
        std::fs::create_dir_all(&target).unwrap();
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(shared.join(label)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for file in files.iter().take(n) {
            std::fs::copy(file, target.join(file.file_name().unwrap())).unwrap();
        }
    }
    let job = write_job(dir.path(), 8);
    let mut text = std::fs::read_to_string(&job).unwrap();
    text.push_str(
        "[fit]\nepsilon = 0.01\nbatch-images = 5\nsubsets = [{ name = \"r40\", count = 40, seed = 3 }, { name = \"all\", all = true }, \
         { name = \"l23\", all = true, layers = [2, 3] }]\n",
    );
    std::fs::write(&job, text).unwrap();
    let job_arg = job.to_str().unwrap();
    for shard in ["0/2", "1/2"] {
        stdout(&padim(&["extract", job_arg, "--shard", shard]));
    }
    let out = stdout(&padim(&["fit", job_arg]));
    assert!(out.contains("fit done: 24 training images"), "{out}");
    assert!(stdout(&padim(&["fit", job_arg])).contains("already done"));

    let run = dir.path().join("run");
    for subset in ["r40", "all", "l23"] {
        let result = reference_fit(&run, subset, &[]);
        assert_eq!(result["n"], 24);
        // The model stores f32: relative 1e-4 of the largest value bounds f32 rounding.
        assert!(result["mean"].as_f64().unwrap() <= 1e-4, "{result}");
        assert!(result["precision"].as_f64().unwrap() <= 1e-4, "{result}");
    }
    // Layers 2+3 have stride 8 on the stride-4 grid: every 2x2 cell of the 56x56 grid holds one
    // Gaussian (the reference's are equal within each cell, exactly), so the model keeps 28x28 of
    // them, a quarter of the size; the others keep the embedding grid.
    let l23 = reference_fit(&run, "l23", &[]);
    assert_eq!((l23["cells"].as_u64(), l23["cell-spread"].as_f64()), (Some(28 * 28), Some(0.0)), "{l23}");
    let header = support::safetensors_header(&run.join("fit/model-l23.safetensors"));
    assert!(header.contains("\\\"grid-factor\\\":2") && header.contains("[784,152,152]"), "{header}");
    let size = std::fs::metadata(run.join("fit/model-l23.safetensors")).unwrap().len() as f64;
    let full_grid = (3136 * 152 * 152 * 4) as f64;
    assert!((size / full_grid - 0.25).abs() < 0.01, "a quarter of the embedding grid's precisions: {size}");
    assert!(!support::safetensors_header(&run.join("fit/model-all.safetensors")).contains("grid-factor"));

    // Scoring: the maps and image scores equal a plain PyTorch implementation of the recipe (the
    // coarser model's map upsampled as the features were).
    let out = stdout(&padim(&["score", job_arg]));
    assert!(out.contains("score done: 28 images x 3 models in 2 shard(s)"), "{out}");
    assert!(stdout(&padim(&["score", job_arg])).contains("2 shard(s) already done"));
    for subset in ["r40", "all", "l23"] {
        assert_scores_match_reference(&run, subset, &[], 28);
    }

    // A model fitted on another backbone is refused by score, naming both sides.
    let model = run.join("fit/model-r40.safetensors");
    let rewrite = "import json,sys\nfrom safetensors.numpy import load_file, save_file\nfrom safetensors import safe_open\n\
        p=sys.argv[1]\nwith safe_open(p,'np') as f: meta=json.loads(f.metadata()['padim'])\n\
        meta['backbone']='resnet18'\nsave_file(load_file(p), p, metadata={'padim': json.dumps(meta)})\n";
    let status =
        Command::new(root().join(".venv/bin/python")).args(["-c", rewrite, model.to_str().unwrap()]).status().unwrap();
    assert!(status.success());
    let refused = padim(&["score", job_arg, "--force"]);
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{message}");
    assert!(
        message.contains("model r40 was fitted on resnet18") && message.contains("efficientnet-lite0"),
        "{message}"
    );

    // A fit over the memory budget is refused before it starts, with the numbers and the way out.
    let text = std::fs::read_to_string(&job)
        .unwrap()
        .replace("batch-images = 5", "batch-images = 5\nmemory-budget-gib = 0.01");
    std::fs::write(&job, text).unwrap();
    let refused = padim(&["fit", job_arg, "--force"]);
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{message}");
    assert!(message.contains("fit.memory-budget-gib") && message.contains("176 channels x 3136 patches"), "{message}");
}

/// `padim run` on a small real subset: split, extract, fit, score, report; every output exists and
/// parses, the tables agree with metrics.json, and a rerun changes nothing.
#[test]
fn run_all_stages_and_report() {
    let dir = tempfile::tempdir().unwrap();
    support::copy_concrete(dir.path(), 16, 10);
    // One exact duplicate: it must land in the same split as its original.
    let negatives = dir.path().join("data/Negative");
    let first = std::fs::read_dir(&negatives).unwrap().map(|e| e.unwrap().path()).min().unwrap();
    std::fs::copy(&first, negatives.join("zz-duplicate.jpg")).unwrap();
    let job = write_job(dir.path(), 8);
    let mut text = std::fs::read_to_string(&job).unwrap();
    text.push_str(
        "[split]\nseed = 1\ntrain = { Negative = 9 }\ncalibration = { Negative = 4, Positive = 4 }\n\
         test = { Negative = \"rest\", Positive = \"rest\" }\n\
         [fit]\nsubsets = [{ name = \"r40\", count = 40, seed = 0 }, { name = \"all\", all = true }]\n\
         [report]\nmodel = \"r40\"\nmontage-images = 4\n",
    );
    std::fs::write(&job, text).unwrap();
    let job_arg = job.to_str().unwrap();

    // The stages refuse to run out of order, saying what to run (extract makes a missing split itself).
    let early = padim(&["fit", job_arg]);
    let message = String::from_utf8_lossy(&early.stderr);
    assert!(!early.status.success() && message.contains("padim split"), "{message}");

    let out = stdout(&padim(&["run", job_arg]));
    eprintln!("{out}");
    assert!(out.contains("split done: 27 images, 0 unused"), "{out}");
    assert!(out.contains("fit done: 9 training images, 2 model(s)"), "{out}");
    assert!(out.contains("report done"), "{out}");

    let run = dir.path().join("run");
    // The split manifest: disjoint, the duplicate beside its original, training images first.
    let manifest = csv_rows(&run.join("split/manifest.csv"));
    assert_eq!(manifest.len(), 27);
    let split_of =
        |name: &str| manifest.iter().find(|r| r["path"].ends_with(name)).map(|r| r["split"].clone()).unwrap();
    assert_eq!(split_of("zz-duplicate.jpg"), split_of(first.file_name().unwrap().to_str().unwrap()));
    assert!(manifest[..9].iter().all(|r| r["split"] == "train" && r["label"] == "Negative"));

    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("report/metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["headline-model"], "r40");
    let models = metrics["models"].as_array().unwrap();
    assert_eq!(models.len(), 6, "2 models x (mean, max, top)");
    let headline = models.iter().find(|m| m["model"] == "r40" && m["score"] == "mean").unwrap();
    assert_eq!(headline["calibration"]["normal"], 4);
    assert_eq!(headline["test"]["normal"].as_u64().unwrap() + headline["test"]["anomalous"].as_u64().unwrap(), 10);
    for m in models {
        for set in ["calibration", "test"] {
            let auroc = m[set]["auroc"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&auroc), "{m}");
        }
    }

    // The scores table agrees with metrics.json: the verdicts give the reported confusion matrix, and
    // normalised scores use the calibration maps' range.
    let scores = csv_rows(&run.join("report/scores.csv"));
    let test_r40: Vec<_> = scores.iter().filter(|r| r["model"] == "r40" && r["split"] == "test").collect();
    assert_eq!(test_r40.len(), 10);
    let threshold = headline["threshold"].as_f64().unwrap();
    let [lo, hi] = [headline["normalisation"][0].as_f64().unwrap(), headline["normalisation"][1].as_f64().unwrap()];
    let (mut tp, mut tn) = (0, 0);
    for r in &test_r40 {
        let mean: f64 = r["mean"].parse().unwrap();
        let normalised: f64 = r["mean_normalised"].parse().unwrap();
        assert!((normalised - (mean - lo) / (hi - lo)).abs() < 1e-9);
        let flagged = r["anomalous_predicted"] == "true";
        assert_eq!(flagged, normalised >= threshold);
        tp += (flagged && r["label"] == "Positive") as u64;
        tn += (!flagged && r["label"] == "Negative") as u64;
    }
    assert_eq!(headline["test"]["confusion"]["tp"].as_u64().unwrap(), tp);
    assert_eq!(headline["test"]["confusion"]["tn"].as_u64().unwrap(), tn);
    let calibration: Vec<f64> = scores
        .iter()
        .filter(|r| r["model"] == "r40" && r["split"] == "calibration")
        .flat_map(|r| [r["min"].parse::<f64>().unwrap(), r["max"].parse::<f64>().unwrap()])
        .collect();
    assert_eq!(calibration.iter().copied().fold(f64::INFINITY, f64::min), lo);
    assert_eq!(calibration.iter().copied().fold(f64::NEG_INFINITY, f64::max), hi);

    // Pictures are PNG files, embedded in the one-file HTML report; tables also as Parquet.
    for name in ["histograms", "roc", "confusion", "montage-true-positives", "montage-false-negatives", "colorbar"] {
        let bytes = std::fs::read(run.join(format!("report/{name}.png"))).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{name}");
    }
    let html = std::fs::read_to_string(run.join("report/report.html")).unwrap();
    assert!(html.matches("data:image/png;base64,").count() >= 8 && !html.contains("src=\"report/"));
    support::assert_page_matches_metrics(&run);
    for table in ["scores", "metrics", "roc"] {
        assert!(run.join(format!("report/{table}.parquet")).is_file());
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("report/run-manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["inputs"]["images"], 27);
    assert!(manifest["config-hash"].as_str().unwrap().len() == 64);
    // The stage identities it records are the ones the done markers carry.
    let marker =
        |key: &str| -> serde_json::Value { serde_json::from_slice(&std::fs::read(run.join(key)).unwrap()).unwrap() };
    for (stage, key) in [
        ("split", "split/done.json"),
        ("extract", "extract/done-00000-of-00001.json"),
        ("fit", "fit/done.json"),
        ("report", "report/done.json"),
    ] {
        assert_eq!(manifest["identities"][stage], marker(key)["config-hash"], "{stage}");
    }

    // A rerun finds every stage done and gives the same numbers.
    let before = std::fs::read(run.join("report/metrics.json")).unwrap();
    let again = stdout(&padim(&["run", job_arg]));
    for stage in ["split", "extract", "fit", "score", "report"] {
        assert!(again.contains(&format!("{stage} already done")), "{again}");
    }
    assert_eq!(std::fs::read(run.join("report/metrics.json")).unwrap(), before);
    let forced = stdout(&padim(&["report", job_arg, "--force"]));
    assert!(forced.contains("report done"), "{forced}");
    assert_eq!(std::fs::read(run.join("report/metrics.json")).unwrap(), before, "same inputs, same numbers");
}

/// `scripts/reference.py fit` on the run's model `subset` (training label Negative): the plain
/// PyTorch / scikit-learn fit's largest differences from padim's model, as JSON.
fn reference_fit(run: &Path, subset: &str, extra: &[&str]) -> serde_json::Value {
    let args = ["fit", "--run-dir", run.to_str().unwrap(), "--subset", subset, "--normal", "Negative"];
    let result: serde_json::Value =
        serde_json::from_str(&support::python::reference(&[&args[..], extra].concat())).unwrap();
    eprintln!("{subset}: {result}");
    result
}

/// A job over the first `normal` and `anomalous` concrete-crack images in `dir` with the `[fit]`
/// table `fit`, its embeddings extracted as two shards (as an array job would). Returns the job file.
fn extracted_in_two_shards(dir: &Path, normal: usize, anomalous: usize, fit: &str) -> PathBuf {
    support::copy_concrete(dir, normal, anomalous);
    let job = write_job(dir, 8);
    let mut text = std::fs::read_to_string(&job).unwrap();
    text.push_str(fit);
    std::fs::write(&job, text).unwrap();
    for shard in ["0/2", "1/2"] {
        stdout(&padim(&["extract", job.to_str().unwrap(), "--shard", shard]));
    }
    job
}

/// `scripts/reference.py score` on the run's model `subset`: plain PyTorch's maps and image scores of
/// the run's `n` scored images equal padim's, each largest difference within 1e-4.
fn assert_scores_match_reference(run: &Path, subset: &str, extra: &[&str], n: u64) {
    let args = ["score", "--run-dir", run.to_str().unwrap(), "--subset", subset];
    let result: serde_json::Value =
        serde_json::from_str(&support::python::reference(&[&args[..], extra].concat())).unwrap();
    eprintln!("score {subset}: {result}");
    assert_eq!(result["n"], n);
    for key in ["map", "mean", "max", "min", "top"] {
        assert!(result[key].as_f64().unwrap() <= 1e-4, "{subset} {key}: {result}");
    }
}

/// `fit.covariance = "oas"`: per patch, scikit-learn's OAS on the raw training embeddings gives the
/// same shrinkage and, with epsilon, the same inverse covariance, from statistics accumulated over
/// two extract shards and merged; the model records the shrinkage and the estimator.
#[test]
fn oas_covariance_matches_scikit_learn() {
    let dir = tempfile::tempdir().unwrap();
    let job = extracted_in_two_shards(
        dir.path(),
        20,
        2,
        "[fit]\ncovariance = \"oas\"\nbatch-images = 6\n\
         subsets = [{ name = \"r40\", count = 40, seed = 3 }, { name = \"all\", all = true }]\n",
    );
    let job_arg = job.to_str().unwrap();
    assert!(stdout(&padim(&["fit", job_arg])).contains("fit done: 20 training images"));
    let run = dir.path().join("run");
    for subset in ["r40", "all"] {
        let result = reference_fit(&run, subset, &["--covariance", "oas"]);
        assert_eq!(result["n"], 20);
        // Shrinkage stored as f32; the model's matrices as f32 (relative 1e-4 of the largest value).
        assert!(result["shrinkage"].as_f64().unwrap() <= 1e-6, "{result}");
        assert!(result["mean"].as_f64().unwrap() <= 1e-4, "{result}");
        assert!(result["precision"].as_f64().unwrap() <= 1e-4, "{result}");
        // With 20 images and 40 or more channels, OAS does shrink.
        assert!(result["shrinkage-range"][1].as_f64().unwrap() > 0.0, "{result}");
    }
    let header = support::safetensors_header(&run.join("fit/model-all.safetensors"));
    assert!(header.contains("\\\"covariance\\\":\\\"oas\\\"") && header.contains("\"shrinkage\""), "{header}");
}

/// `pool`: covariances pooled over a 3x3 window of positions (with OAS) and over every position,
/// beside an unpooled subset, from statistics of two extract shards: each equals plain PyTorch /
/// scikit-learn on the raw embeddings (every sample centred on its own position's mean; OAS of the
/// window's samples), the model records its pool, and the score stage scores the pooled model as
/// plain PyTorch does.
#[test]
fn pooled_covariances_match_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let job = extracted_in_two_shards(
        dir.path(),
        12,
        3,
        "[fit]\nbatch-images = 5\nsubsets = [\
         { name = \"p1\", count = 30, seed = 1, pool = 1, covariance = \"oas\" }, \
         { name = \"pall\", count = 60, seed = 2, pool = \"all\" }, { name = \"r20\", count = 20, seed = 3 }]\n",
    );
    let job_arg = job.to_str().unwrap();
    assert!(stdout(&padim(&["fit", job_arg])).contains("fit done: 12 training images"));
    let run = dir.path().join("run");
    let p1 = reference_fit(&run, "p1", &["--covariance", "oas", "--pool", "1"]);
    // Corners pool 4 positions, edges 6, the rest 9.
    assert_eq!(p1["cells-range"], serde_json::json!([4, 9]), "{p1}");
    assert!(p1["shrinkage"].as_f64().unwrap() <= 1e-6 && p1["shrinkage-range"][1].as_f64().unwrap() > 0.0, "{p1}");
    let pall = reference_fit(&run, "pall", &["--pool", "all"]);
    assert_eq!(pall["cells-range"], serde_json::json!([3136, 3136]), "{pall}");
    let r20 = reference_fit(&run, "r20", &[]);
    for result in [&p1, &pall, &r20] {
        assert_eq!(result["n"], 12);
        assert!(result["mean"].as_f64().unwrap() <= 1e-4, "{result}");
        assert!(result["precision"].as_f64().unwrap() <= 1e-4, "{result}");
    }
    // Pooling changes the model: the unpooled reference does not match the pooled one.
    let unpooled = reference_fit(&run, "pall", &[]);
    assert!(unpooled["precision"].as_f64().unwrap() > 1e-2, "{unpooled}");
    let header = |name: &str| support::safetensors_header(&run.join(format!("fit/model-{name}.safetensors")));
    assert!(header("p1").contains("\\\"pool\\\":1"), "{}", header("p1"));
    assert!(header("pall").contains("\\\"pool\\\":\\\"all\\\""), "{}", header("pall"));
    assert!(!header("r20").contains("pool"), "{}", header("r20"));

    let out = stdout(&padim(&["score", job_arg]));
    assert!(out.contains("score done: 15 images x 3 models"), "{out}");
    assert_scores_match_reference(&run, "pall", &[], 15);
}

/// `covariance = "nearest"` beside a Gaussian subset, fitted as two shards' partial states (the
/// array-job form) and merged: the nearest-patch maps and image scores equal plain PyTorch's (3x3
/// `avg_pool2d` without padding, then `cdist` to the training images' patches, computed from the
/// raw embeddings), and the Gaussian model beside it still equals the recipe's.
#[test]
fn nearest_patch_scores_match_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let job = extracted_in_two_shards(
        dir.path(),
        14,
        3,
        "[fit]\nbatch-images = 5\n\
         subsets = [{ name = \"nn\", count = 40, seed = 3, covariance = \"nearest\" }, { name = \"r30\", count = 30, seed = 1 }]\n",
    );
    let job_arg = job.to_str().unwrap();
    for shard in ["0/2", "1/2"] {
        stdout(&padim(&["fit", job_arg, "--shard", shard]));
    }
    let run = dir.path().join("run");
    assert!(run.join("fit/partial-bank-00001-of-00002.safetensors").is_file(), "the bank is kept per shard");
    let out = stdout(&padim(&["fit", job_arg]));
    assert!(out.contains("fit done: 14 training images") && out.contains("model-nn.safetensors"), "{out}");
    let header = support::safetensors_header(&run.join("fit/model-nn.safetensors"));
    assert!(header.contains("\\\"covariance\\\":\\\"nearest\\\"") && header.contains("\"bank\""), "{header}");
    assert!(header.contains("[3136,14,40]"), "56x56 patches x 14 training images x 40 channels: {header}");

    let out = stdout(&padim(&["score", job_arg]));
    assert!(out.contains("score done: 17 images x 2 models"), "{out}");
    for subset in ["nn", "r30"] {
        assert_scores_match_reference(&run, subset, &["--normal", "Negative"], 17);
    }
}

/// A magnetic-tile job on 12 defect-free tiles and 6 blowholes (masks beside the images) in `dir`
/// (copied there once), with `report` added to its `[report]` table and `extra` (more sections)
/// appended; returns the job file.
fn tile_job(dir: &Path, report: &str, extra: &str) -> PathBuf {
    let shared = root().join("../shared/data/magnetic-tile");
    assert!(shared.is_dir(), "{} is absent: the pixel-metric tests have no real images to run on", shared.display());
    for (class, n) in [("MT_Free", 12), ("MT_Blowhole", 6)] {
        let to = dir.join("data").join(class).join("Imgs");
        if to.is_dir() {
            continue;
        }
        for name in copy_first(&shared.join(class).join("Imgs"), &to, n, "jpg") {
            let mask = name.replace(".jpg", ".png");
            std::fs::copy(shared.join(class).join("Imgs").join(&mask), to.join(&mask)).unwrap();
        }
    }
    let text = format!(
        r#"
[run]
name = "tiles"
output = "{}/run"
[dataset]
root = ["data"]
normal = ["MT_Free"]
extensions = ["jpg"]
mask = "{{stem}}.png"
[split]
train = {{ MT_Free = 8 }}
calibration = {{ MT_Free = 2, MT_Blowhole = 2 }}
test = {{ MT_Free = "rest", MT_Blowhole = "rest" }}
[preprocess]
resize = [224, 224]
crop = [224, 224]
[backbone]
name = "efficientnet-lite0"
weights = "{}"
[fit]
subsets = [{{ name = "all", all = true }}]
[report]
score = "max"
montage-images = 2
{report}
{extra}
"#,
        dir.display(),
        root().join("weights/efficientnet-lite0.safetensors").display()
    );
    let job = dir.join("job.toml");
    std::fs::write(&job, text).unwrap();
    job
}

/// Magnetic tile: grayscale, non-square images with masks beside them; pixel metrics are reported.
#[test]
fn masks_give_pixel_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let job = tile_job(dir.path(), "", "");
    let out = stdout(&padim(&["run", job.to_str().unwrap()]));
    assert!(out.contains("pixel AUROC"), "{out}");
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("run/report/metrics.json")).unwrap()).unwrap();
    let pixel = &metrics["pixel"];
    assert_eq!(pixel["images"], 6, "{metrics}");
    assert!(pixel["regions"].as_u64().unwrap() >= 4, "{pixel}");
    for key in ["auroc", "pro"] {
        let v = pixel[key].as_f64().unwrap();
        assert!(v > 0.0 && v <= 1.0, "{key}: {pixel}");
    }
    // The calibration split's pixel metrics too (2 normal + 2 blowholes with masks), for choices
    // made at pixel level.
    let calibration = &metrics["pixel-calibration"];
    assert_eq!(calibration["images"], 4, "{metrics}");
    let auroc = calibration["auroc"].as_f64().unwrap();
    assert!(auroc > 0.0 && auroc <= 1.0, "{calibration}");
    support::assert_page_matches_metrics(&dir.path().join("run"));
}

/// A sweep with masks: every experiment's pixel AUROC (both splits) in the sweep table equals the
/// pixel metrics the report stage gives that experiment as the headline model (the headline's own
/// row is taken from those, the others are computed by the table).
#[test]
fn sweep_pixel_aurocs_equal_each_experiment_as_headline() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = "[sweep]\ncounts = [40, \"all\"]\nseeds = [0]\nlayers = [\"1+2+3\", \"2+3\"]";
    let job = tile_job(dir.path(), "", sweep);
    stdout(&padim(&["run", job.to_str().unwrap()]));
    let read_metrics = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.path().join("run/report/metrics.json")).unwrap()).unwrap()
    };
    let metrics = read_metrics();
    let experiments = metrics["sweep"]["experiments"].as_array().unwrap().clone();
    assert_eq!(experiments.len(), 4, "{metrics}");
    let headline = metrics["headline-model"].as_str().unwrap().to_string();
    assert!(experiments.iter().any(|e| e["id"] == headline.as_str()), "{metrics}");
    for experiment in &experiments {
        let id = experiment["id"].as_str().unwrap();
        let job = tile_job(dir.path(), &format!("model = \"{id}\""), sweep);
        stdout(&padim(&["report", job.to_str().unwrap(), "--force"]));
        let alone = read_metrics();
        assert_eq!(alone["headline-model"], id);
        assert_eq!(experiment["pixel-auroc"], alone["pixel"]["auroc"], "{id}: {experiment} vs {}", alone["pixel"]);
        assert_eq!(
            experiment["calibration-pixel-auroc"], alone["pixel-calibration"]["auroc"],
            "{id}: {experiment} vs {}",
            alone["pixel-calibration"]
        );
        let auroc = experiment["pixel-auroc"].as_f64().unwrap();
        assert!(auroc > 0.5 && auroc <= 1.0, "{experiment}");
    }
}

/// The Kubernetes and AWS Batch templates validate against the engines' schemas (offline:
/// kubernetes-validate's OpenAPI schemas, botocore's Batch service model), and a broken copy does not.
#[test]
fn scheduler_templates_match_their_schemas() {
    let python = root().join(".venv/bin/python");
    let script = root().join("scripts/validate_templates.py");
    let output = Command::new(&python).arg(&script).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(text.lines().filter(|l| l.starts_with("ok ")).count(), 6, "{text}");

    let dir = tempfile::tempdir().unwrap();
    support::copy_templates(dir.path());
    let yaml = dir.path().join("jobs/kubernetes/extract.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap().replace("completions: 4", "completion: 4");
    std::fs::write(&yaml, text).unwrap();
    let json = dir.path().join("jobs/aws-batch/job-definition.json");
    let text = std::fs::read_to_string(&json).unwrap().replace("\"attempts\": 3", "\"attempts\": \"three\"");
    std::fs::write(&json, text).unwrap();
    let output = Command::new(&python).arg(&script).arg(dir.path()).output().unwrap();
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(errors.contains("extract.yaml") && errors.contains("completion"), "{errors}");
    assert!(errors.contains("job-definition.json") && errors.contains("attempts"), "{errors}");
}
