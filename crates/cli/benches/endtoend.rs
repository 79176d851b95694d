//! End-to-end benchmark (`make bench-e2e`, which first makes anomalib's venv): the main job's
//! protocol (the seeded split of the 3,000 concrete-crack images: 250 train, 100 + 100 calibration,
//! 1,000 + 1,000 test) run whole, one process each, back to back on this machine's cores:
//! - `padim run`, ResNet-18 with seeded random weights, 100 channels, embeddings stored as the job
//!   says (the shipped ResNet-18 job's storage settings);
//! - `padim run`, EfficientNet-Lite0 (pretrained), the Lite0 job's models (configs/concrete-crack-lite0.toml);
//! - `padim run`, the main job itself (configs/concrete-crack.toml: EfficientNet-Lite1, the whole
//!   image at 240 px);
//! - the plain PyTorch recipe (`scripts/bench_recipe.py torch`, same weights and split);
//! - anomalib 2.7.0's PaDiM model (`scripts/bench_recipe.py anomalib`, ResNet-18, random init, 100
//!   features), and the same through anomalib's `Folder` datamodule and Lightning `Engine` (fit with
//!   validation, then test: `anomalib-engine`), in `.cache/bench/anomalib` (a venv that reuses the
//!   project's torch).
//!
//! Prints wall seconds, peak resident memory (the process's own, from `wait4`), and padim's speed-up
//! against each. Both Python runs get the allocator thresholds padim sets for itself.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

#[path = "../../../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::{measured, root};

const SPLIT: &str = r#"[split]
seed = 0
train = { Negative = 250 }
calibration = { Negative = 100, Positive = 100 }
test = { Negative = 1000, Positive = 1000 }
"#;

fn job(dir: &Path, name: &str, backbone: &str, weights: &Path, body: &str) -> PathBuf {
    let data = root().join("../shared/data/concrete-crack");
    let text = format!(
        "[run]\nname = \"{name}\"\noutput = \"{}\"\n[dataset]\nroot = [\"{}\"]\nlabels = [\"Negative\", \"Positive\"]\n\
         normal = [\"Negative\"]\n{SPLIT}[backbone]\nname = \"{backbone}\"\nweights = \"{}\"\n{body}",
        dir.join(name).display(),
        data.display(),
        weights.display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// The `[preprocess]`, `[extract]`, `[fit]`, `[score]` and `[report]` tables of a shipped job (its
/// `[backbone]`, between them, is the caller's).
fn settings_of(config: &str) -> String {
    let text = std::fs::read_to_string(root().join("configs").join(config)).unwrap();
    // A table's header starts a line (comments may name tables too).
    let table = |name: &str| text.find(&format!("\n[{name}]\n")).unwrap_or_else(|| panic!("{config}: no [{name}]")) + 1;
    let (preprocess, backbone, extract) = (table("preprocess"), table("backbone"), table("extract"));
    assert!(preprocess < backbone && backbone < extract, "{config}: tables out of the expected order");
    format!("{}{}", &text[preprocess..backbone], &text[extract..])
}

fn python(venv: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(venv.join("bin/python"));
    command.arg(root().join("scripts/bench_recipe.py")).args(args);
    command.env("MALLOC_MMAP_THRESHOLD_", "1073741824").env("MALLOC_TRIM_THRESHOLD_", "1073741824");
    command
}

fn main() {
    let anomalib = root().join(".cache/bench/anomalib");
    assert!(
        anomalib.join("bin/python").is_file(),
        "{} is missing: run `make bench-e2e`, which makes it (anomalib 2.7.0 over the project's torch)",
        anomalib.display()
    );
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let resnet = dir.join("resnet18-random.safetensors");
    support::python::script(
        "export_weights.py",
        &["--backbone", "resnet18", "--source", "random", "--seed", "0", "--out", resnet.to_str().unwrap()],
    );
    let lite0 = root().join("weights/efficientnet-lite0.safetensors");
    let r18 = job(dir, "resnet18", "resnet18", &resnet, &settings_of("concrete-crack-resnet18.toml"));
    let l0 = job(dir, "lite0", "efficientnet-lite0", &lite0, &settings_of("concrete-crack-lite0.toml"));
    let lite1 = root().join("weights/efficientnet-lite1.safetensors");
    let main_job = job(dir, "main", "efficientnet-lite1", &lite1, &settings_of("concrete-crack.toml"));
    let padim = |job: &Path| support::padim_command(&["run", job.to_str().unwrap()]);
    let mut rows = Vec::new();
    let (seconds, peak, out) = measured(padim(&r18));
    eprintln!("{out}");
    rows.push(("padim run, ResNet-18 (random), 100 channels", seconds, peak, headline(&dir.join("resnet18"))));
    let (seconds, peak, out) = measured(padim(&l0));
    eprintln!("{out}");
    rows.push(("padim run, EfficientNet-Lite0 job", seconds, peak, headline(&dir.join("lite0"))));
    let (seconds, peak, out) = measured(padim(&main_job));
    eprintln!("{out}");
    rows.push(("padim run, the main job (Lite1, whole image 240 px)", seconds, peak, headline(&dir.join("main"))));

    let manifest = dir.join("resnet18/split/manifest.csv");
    let data = root().join("../shared/data/concrete-crack");
    let common = ["--manifest", manifest.to_str().unwrap(), "--base", data.to_str().unwrap(), "--channels", "100"];
    let venv = root().join(".venv");
    let mut torch = vec!["torch", "--backbone", "resnet18", "--weights", resnet.to_str().unwrap()];
    torch.extend(common);
    let (seconds, peak, out) = measured(python(&venv, &torch));
    rows.push(("plain PyTorch recipe, ResNet-18 (random), 100 channels", seconds, peak, json_headline(&out)));
    let mut anomalib_args = vec!["anomalib"];
    anomalib_args.extend(common);
    let (seconds, peak, out) = measured(python(&anomalib, &anomalib_args));
    rows.push(("anomalib 2.7.0 PaDiM model, ResNet-18 (random), 100 features", seconds, peak, json_headline(&out)));
    anomalib_args[0] = "anomalib-engine";
    let (seconds, peak, out) = measured(python(&anomalib, &anomalib_args));
    rows.push(("anomalib 2.7.0 Folder + Padim + Engine fit and test", seconds, peak, json_headline(&out)));

    let padim_r18 = rows[0].1;
    println!("\nend to end: the main job's split (2,450 images), one process each, 2 cores");
    println!(
        "{:<60} {:>9} {:>10} {:>16} {:>10} {:>9}",
        "run", "wall s", "peak MiB", "padim R18 is", "test AUROC", "accuracy"
    );
    for (name, seconds, peak, (auroc, accuracy)) in &rows {
        println!(
            "{name:<60} {seconds:>9.1} {:>10.0} {:>15.2}x {auroc:>10.4} {:>9}",
            *peak as f64 / (1u64 << 20) as f64,
            seconds / padim_r18,
            accuracy.map_or("n/a".to_string(), |a| format!("{a:.4}"))
        );
    }
}

/// The headline model's test AUROC and accuracy from a padim run's `report/metrics.json`.
fn headline(run: &Path) -> (f64, Option<f64>) {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("report/metrics.json")).unwrap()).unwrap();
    let model = json["headline-model"].clone();
    let score = json["headline-score"].clone();
    let m = json["models"].as_array().unwrap().iter().find(|m| m["model"] == model && m["score"] == score).unwrap();
    (m["test"]["auroc"].as_f64().unwrap(), m["test"]["accuracy"].as_f64())
}

/// Test AUROC and accuracy (absent for anomalib's Engine, whose test reports no accuracy).
fn json_headline(out: &str) -> (f64, Option<f64>) {
    let json: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    (json["test-auroc"].as_f64().unwrap(), json["accuracy"].as_f64())
}
