//! Cost as the work grows (`cargo bench --workspace --bench growth`, in `make bench`): the real
//! binary on the concrete-crack images and the 10,000 more of `../shared/data/concrete-crack-scale`,
//! 2 cores, EfficientNet-Lite0, the job's default storage.
//! 1. About 1k, 4k and 13k images (half normal; half the normal images train, a tenth of each label
//!    calibrates, the rest is the test), unsharded and as 2 and 4 shards run at once (one thread each
//!    when sharded), model `random40`: per stage seconds, images/s, the largest peak resident memory
//!    of its processes, bytes stored.
//! 2. A learning curve on the main job's calibration and test splits: its 250 training images, then
//!    with 2,250 and 5,000 more normal images of the scale set (all there are), the main job's models
//!    (`random40-seed0`, `all`): test AUROC and accuracy of the `all` model (mean score), and fit's
//!    peak memory, which must not grow with the training images.
//!
//! Environment: PADIM_BENCH_PARTS (`growth,curve`), PADIM_BENCH_SIZES (`1000,4000,13000`),
//! PADIM_BENCH_SHARDS (`1,2,4`).
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

#[path = "../../../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use support::{padim_command, root};

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name).unwrap_or_else(|_| default.into()).split(',').map(str::to_string).collect()
}

/// Runs the commands at once: (wall seconds until the last ends, the largest peak resident bytes).
#[allow(unsafe_code, clippy::zombie_processes)]
fn measured_all(commands: Vec<Command>) -> (f64, u64) {
    let clock = Instant::now();
    let children: Vec<_> =
        commands.into_iter().map(|mut c| c.stdout(std::process::Stdio::null()).spawn().unwrap()).collect();
    let mut peak = 0u64;
    for child in children {
        let pid = child.id() as libc::pid_t;
        let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
        // SAFETY: waits for our own child, once; `status` and `usage` are valid for writes.
        let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        assert!(waited == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "a padim task failed");
        peak = peak.max(usage.ru_maxrss as u64 * 1024);
    }
    (clock.elapsed().as_secs_f64(), peak)
}

fn bytes_of(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .map(|e| e.unwrap())
        .map(|e| if e.path().is_dir() { bytes_of(&e.path()) } else { e.metadata().unwrap().len() })
        .sum()
}

/// Symlinks to both image folders under `dir`, so that a manifest there names every image relatively.
fn link_data(dir: &Path) {
    let shared = root().join("../shared/data");
    for (name, target) in [("cc", "concrete-crack"), ("scale", "concrete-crack-scale")] {
        let target = shared.join(target);
        assert!(target.is_dir(), "{} is missing", target.display());
        std::os::unix::fs::symlink(target, dir.join(name)).unwrap();
    }
}

fn listing(dir: &Path, folder: &str, label: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join(folder).join(label))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().map(|n| format!("{folder}/{label}/{n}")).collect()
}

/// A job over the manifest `manifest` (in `dir`); `extra` follows its `[fit]` table's subsets (more
/// of that table, then other tables).
fn job(dir: &Path, name: &str, manifest: &str, extra: &str, subsets: &str, threads: usize) -> PathBuf {
    let text = format!(
        "[run]\nname = \"{name}\"\noutput = \"{}\"\n[dataset]\nmanifest = \"{manifest}\"\nnormal = [\"Negative\"]\n\
         [backbone]\nname = \"efficientnet-lite0\"\nweights = \"{}\"\n[extract]\nthreads = {threads}\n[fit]\nsubsets = {subsets}\n{extra}",
        dir.join(name).display(),
        root().join("weights/efficientnet-lite0.safetensors").display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn sharded(stage: &str, job: &str, shards: u32) -> Vec<Command> {
    (0..shards)
        .map(|i| {
            let mut args = vec![stage, job];
            let shard = format!("{i}/{shards}");
            if shards > 1 {
                args.extend(["--shard", &shard]);
            }
            padim_command(&args)
        })
        .collect()
}

fn growth(dir: &Path) {
    let negatives: Vec<String> = [listing(dir, "cc", "Negative"), listing(dir, "scale", "Negative")].concat();
    let positives: Vec<String> = [listing(dir, "cc", "Positive"), listing(dir, "scale", "Positive")].concat();
    let mut rows = Vec::new();
    for size in env_list("PADIM_BENCH_SIZES", "1000,4000,13000") {
        let size: usize = size.parse().unwrap();
        let half = (size / 2).min(negatives.len()).min(positives.len());
        let mut manifest = String::from("path,label\n");
        for path in negatives[..half].iter().chain(&positives[..half]) {
            let label = if path.contains("/Negative/") { "Negative" } else { "Positive" };
            manifest.push_str(&format!("{path},{label}\n"));
        }
        let manifest_file = format!("images-{size}.csv");
        std::fs::write(dir.join(&manifest_file), manifest).unwrap();
        let images = 2 * half;
        for shards in env_list("PADIM_BENCH_SHARDS", "1,2,4") {
            let shards: u32 = shards.parse().unwrap();
            let name = format!("growth-{size}-{shards}");
            let threads = (2 / shards as usize).max(1);
            let subsets = r#"[{ name = "random40", count = 40, seed = 0 }]"#;
            // Half the normal images train; a tenth of each label calibrates; the rest is the test.
            let split = "[split]\nseed = 0\ntrain = { Negative = 0.5 }\ncalibration = { Negative = 0.1, Positive = 0.1 }\n\
                         test = { Negative = \"rest\", Positive = \"rest\" }\n";
            let job = job(dir, &name, &manifest_file, split, subsets, threads);
            let job = job.to_str().unwrap();
            measured_all(vec![padim_command(&["split", job])]);
            let run = dir.join(&name);
            let mut record = |stage: &str, (seconds, peak): (f64, u64), folder: &str| {
                let bytes = bytes_of(&run.join(folder));
                eprintln!("{images} images, {shards} shard(s), {stage}: {seconds:.1} s, {} MiB", peak >> 20);
                rows.push((images, shards, stage.to_string(), seconds, peak, bytes));
            };
            record("extract", measured_all(sharded("extract", job, shards)), "extract");
            let fit = if shards > 1 {
                // Each fit task accumulates one extract shard's partial state; the merge writes the models.
                let (seconds, peak) = measured_all(sharded("fit", job, shards));
                let (merge, merge_peak) = measured_all(vec![padim_command(&["fit", job])]);
                (seconds + merge, peak.max(merge_peak))
            } else {
                measured_all(vec![padim_command(&["fit", job])])
            };
            record("fit", fit, "fit");
            record("score", measured_all(sharded("score", job, shards)), "score");
            record("report", measured_all(vec![padim_command(&["report", job])]), "report");
            std::fs::remove_dir_all(&run).unwrap();
        }
    }
    println!(
        "\ncost as the work grows: EfficientNet-Lite0, model random40, 2 cores (shards run at once, 1 thread each)"
    );
    println!(
        "{:>7} {:>7} {:<8} {:>9} {:>9} {:>11} {:>12} {:>14}",
        "images", "shards", "stage", "seconds", "images/s", "ms/image", "peak MiB", "stored MB"
    );
    for (images, shards, stage, seconds, peak, bytes) in &rows {
        println!(
            "{images:>7} {shards:>7} {stage:<8} {seconds:>9.1} {:>9.1} {:>11.2} {:>12} {:>14.1}",
            *images as f64 / seconds,
            seconds * 1000.0 / *images as f64,
            peak >> 20,
            *bytes as f64 / 1e6
        );
    }
}

/// The main job's split (made by padim on concrete-crack with the main job's settings) with
/// `extra` more normal training images from the scale set.
fn curve(dir: &Path) {
    // The main job's split manifest, from a split of the main job itself.
    let main = root().join("configs/concrete-crack-lite0.toml");
    let text = std::fs::read_to_string(&main).unwrap();
    let split_start = text.find("[split]").unwrap();
    let split_end = text[split_start..].find("\n[").map_or(text.len(), |i| split_start + i + 1);
    let split = &text[split_start..split_end];
    let reference = dir.join("main-split");
    std::fs::create_dir_all(&reference).unwrap();
    let main_job = format!(
        "[run]\nname = \"main-split\"\noutput = \"{}\"\n[dataset]\nroot = [\"{}\"]\nlabels = [\"Negative\", \"Positive\"]\n\
         normal = [\"Negative\"]\n{split}[backbone]\nname = \"efficientnet-lite0\"\nweights = \"{}\"\n",
        reference.join("run").display(),
        dir.join("cc").display(),
        root().join("weights/efficientnet-lite0.safetensors").display()
    );
    std::fs::write(reference.join("job.toml"), main_job).unwrap();
    measured_all(vec![padim_command(&["split", reference.join("job.toml").to_str().unwrap()])]);
    let rows = support::csv_rows(&reference.join("run/split/manifest.csv"));
    let scale = listing(dir, "scale", "Negative");
    let mut results = Vec::new();
    for extra in [0usize, 2250, 5000] {
        let mut manifest = String::from("path,label,split\n");
        for row in rows.iter().filter(|r| !r["split"].is_empty()) {
            manifest.push_str(&format!("cc/{},{},{}\n", row["path"], row["label"], row["split"]));
        }
        for path in &scale[..extra.min(scale.len())] {
            manifest.push_str(&format!("{path},Negative,train\n"));
        }
        let file = format!("curve-{extra}.csv");
        std::fs::write(dir.join(&file), manifest).unwrap();
        let name = format!("curve-{extra}");
        let subsets = r#"[{ name = "random40-seed0", count = 40, seed = 0 }, { name = "all", all = true }]"#;
        // The manifest names the splits; only the training split trains.
        let job = job(dir, &name, &file, "train-split = \"train\"\n", subsets, 2);
        let job = job.to_str().unwrap();
        measured_all(vec![padim_command(&["split", job])]);
        measured_all(vec![padim_command(&["extract", job])]);
        let (fit_seconds, fit_peak) = measured_all(vec![padim_command(&["fit", job])]);
        measured_all(vec![padim_command(&["score", job])]);
        measured_all(vec![padim_command(&["report", job])]);
        let metrics: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(&name).join("report/metrics.json")).unwrap()).unwrap();
        let all =
            metrics["models"].as_array().unwrap().iter().find(|m| m["model"] == "all" && m["score"] == "mean").unwrap();
        let (auroc, accuracy) = (all["test"]["auroc"].as_f64().unwrap(), all["test"]["accuracy"].as_f64().unwrap());
        eprintln!(
            "{} training images: test AUROC {auroc:.4}, accuracy {accuracy:.4}, fit {fit_seconds:.1} s, {} MiB",
            250 + extra,
            fit_peak >> 20
        );
        results.push((250 + extra, auroc, accuracy, fit_seconds, fit_peak));
        std::fs::remove_dir_all(dir.join(&name)).unwrap();
    }
    println!(
        "\nlearning curve: the main job's calibration and test splits, EfficientNet-Lite0, model `all`, mean score"
    );
    println!(
        "{:>16} {:>11} {:>10} {:>8} {:>14} {:>10}",
        "training images", "test AUROC", "accuracy", "fit s", "fit peak MiB", "peak ratio"
    );
    let first_peak = results[0].4 as f64;
    for (train, auroc, accuracy, seconds, peak) in results {
        println!(
            "{train:>16} {auroc:>11.4} {accuracy:>10.4} {seconds:>8.1} {:>14} {:>9.3}x",
            peak >> 20,
            peak as f64 / first_peak
        );
    }
}

fn main() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    link_data(dir);
    let parts = env_list("PADIM_BENCH_PARTS", "growth,curve");
    if parts.iter().any(|p| p == "growth") {
        growth(dir);
    }
    if parts.iter().any(|p| p == "curve") {
        curve(dir);
    }
}
