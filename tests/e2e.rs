//! End to end: the real `padim` binary on real images, two shards, reruns, fit and score against
//! PyTorch, and outputs opened by pyarrow and polars.
// Tests may unwrap and print: a failure is the point, and the output is the measurement.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use padim_store::{EmbeddingReader, Store};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn padim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_padim")).args(args).arg("--quiet").output().unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "padim failed:\n{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

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
    if !shared.is_dir() {
        eprintln!("{} is absent: the end-to-end test has no real images to run on", shared.display());
        return;
    }
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

    // Another configuration at the same location is refused, then forced.
    let changed = write_job(dir.path(), 2);
    let refused = padim(&["extract", changed.to_str().unwrap(), "--shard", "0/2"]);
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && message.contains("another job configuration") && message.contains("--force"),
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
    if !root().join("../shared/data/concrete-crack").is_dir() && !root().join("data/concrete-crack").is_dir() {
        eprintln!("no concrete-crack data: the shipped jobs cannot resolve their dataset here");
        return;
    }
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
    if !shared.is_dir() {
        eprintln!("{} is absent: the fit reference test has no real images to run on", shared.display());
        return;
    }
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
        "[fit]\nepsilon = 0.01\nbatch-images = 5\nsubsets = [{ name = \"r40\", count = 40, seed = 3 }, { name = \"all\", all = true }]\n",
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
    for subset in ["r40", "all"] {
        let output = Command::new(root().join(".venv/bin/python"))
            .arg(root().join("scripts/reference.py"))
            .args(["fit", "--run-dir", run.to_str().unwrap(), "--subset", subset, "--normal", "Negative"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        eprintln!("{subset}: {result}");
        assert_eq!(result["n"], 24);
        // The model stores f32: relative 1e-4 of the largest value bounds f32 rounding.
        assert!(result["mean"].as_f64().unwrap() <= 1e-4, "{result}");
        assert!(result["precision"].as_f64().unwrap() <= 1e-4, "{result}");
    }

    // Scoring: the maps and image scores equal a plain PyTorch implementation of the recipe.
    let out = stdout(&padim(&["score", job_arg]));
    assert!(out.contains("score done: 28 images x 2 models in 2 shard(s)"), "{out}");
    assert!(stdout(&padim(&["score", job_arg])).contains("2 shard(s) already done"));
    for subset in ["r40", "all"] {
        let output = Command::new(root().join(".venv/bin/python"))
            .arg(root().join("scripts/reference.py"))
            .args(["score", "--run-dir", run.to_str().unwrap(), "--subset", subset])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        eprintln!("score {subset}: {result}");
        assert_eq!(result["n"], 28);
        for key in ["map", "mean", "max", "min"] {
            assert!(result[key].as_f64().unwrap() <= 1e-4, "{subset} {key}: {result}");
        }
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
