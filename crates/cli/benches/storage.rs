//! Embedding storage benchmark (`cargo bench --workspace --bench storage`, in `make bench`): each
//! way of storing embeddings on the main job's protocol (the seeded split of the 3,000 concrete-crack
//! images: 250 train, 100 + 100 calibration, 1,000 + 1,000 test), for EfficientNet-Lite0 (pretrained)
//! and ResNet-18 (seeded random weights), with the real binary on 2 cores:
//! - per option: bytes per image stored and the whole extract stage's images/s;
//! - per value type: what it does to the results against f32 (a whole `padim run` each): the largest
//!   change of a normalised image score, of test AUROC and accuracy, and how many verdicts changed.
//!
//! Encodings and compression are lossless, so only the value type can change a result.
//! Environment: PADIM_BENCH_BACKBONES (comma-separated; default both).
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

#[path = "../../../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use support::{root, timed_padim as padim};

/// One way of storing the embeddings: (label, dtype, encoding, compression, channels).
type Option5 = (&'static str, &'static str, &'static str, &'static str, &'static str);

const OPTIONS: [Option5; 7] = [
    ("f32 plain", "f32", "plain", "none", "all"),
    ("f32 byte-stream-split + zstd", "f32", "byte-stream-split", "zstd", "all"),
    ("f16 plain", "f16", "plain", "none", "all"),
    ("f16 byte-stream-split", "f16", "byte-stream-split", "none", "all"),
    ("f16 byte-stream-split + lz4", "f16", "byte-stream-split", "lz4", "all"),
    ("f16 byte-stream-split + zstd", "f16", "byte-stream-split", "zstd", "all"),
    ("f16 plain, the subsets' channels only", "f16", "plain", "none", "subsets"),
];

struct Backbone {
    name: &'static str,
    weights: PathBuf,
    subsets: &'static str,
    /// Channels of the embedding and of the subsets' union (when smaller).
    channels: &'static str,
}

fn job(dir: &Path, backbone: &Backbone, option: &Option5, tag: &str) -> PathBuf {
    let (_, dtype, encoding, compression, channels) = option;
    let data = root().join("../shared/data/concrete-crack");
    let text = format!(
        r#"
[run]
name = "storage-{tag}"
output = "{output}"
[dataset]
root = ["{data}"]
labels = ["Negative", "Positive"]
normal = ["Negative"]
[split]
seed = 0
train = {{ Negative = 250 }}
calibration = {{ Negative = 100, Positive = 100 }}
test = {{ Negative = 1000, Positive = 1000 }}
[backbone]
name = "{name}"
weights = "{weights}"
[extract]
dtype = "{dtype}"
encoding = "{encoding}"
compression = "{compression}"
channels = "{channels}"
[fit]
subsets = {subsets}
[report]
score = "mean"
"#,
        output = dir.join(tag).display(),
        data = data.display(),
        name = backbone.name,
        weights = backbone.weights.display(),
        subsets = backbone.subsets,
    );
    let path = dir.join(format!("{tag}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn bytes_under(dir: &Path, prefix: &str) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// `report/scores.csv`: (image, model) -> (mean normalised, max normalised, verdict, split).
fn scores(run: &Path) -> BTreeMap<(String, String), (f64, f64, String, String)> {
    let text = std::fs::read_to_string(run.join("report/scores.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let at = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (image, model, split) = (at("image"), at("model"), at("split"));
    let (mean, max, verdict) = (at("mean_normalised"), at("max_normalised"), at("anomalous_predicted"));
    lines
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            (
                (f[image].to_string(), f[model].to_string()),
                (f[mean].parse().unwrap(), f[max].parse().unwrap(), f[verdict].to_string(), f[split].to_string()),
            )
        })
        .collect()
}

/// Test AUROC and accuracy of each model's mean score, from `report/metrics.json`.
fn metrics(run: &Path) -> BTreeMap<String, (f64, f64)> {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report/metrics.json")).unwrap()).unwrap();
    json["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["score"] == "mean")
        .map(|m| {
            let test = &m["test"];
            (
                m["model"].as_str().unwrap().to_string(),
                (test["auroc"].as_f64().unwrap(), test["accuracy"].as_f64().unwrap()),
            )
        })
        .collect()
}

fn main() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let wanted = std::env::var("PADIM_BENCH_BACKBONES").unwrap_or_else(|_| "efficientnet-lite0,resnet18".into());
    let resnet = dir.join("resnet18-random.safetensors");
    let mut backbones = Vec::new();
    if wanted.contains("efficientnet-lite0") {
        backbones.push(Backbone {
            name: "efficientnet-lite0",
            weights: root().join("weights/efficientnet-lite0.safetensors"),
            subsets: r#"[{ name = "random40-seed0", count = 40, seed = 0 }, { name = "all", all = true }]"#,
            channels: "176",
        });
    }
    if wanted.contains("resnet18") {
        support::python::script(
            "export_weights.py",
            &["--backbone", "resnet18", "--source", "random", "--seed", "0", "--out", resnet.to_str().unwrap()],
        );
        backbones.push(Backbone {
            name: "resnet18",
            weights: resnet.clone(),
            subsets: r#"[{ name = "random100-seed0", count = 100, seed = 0 }]"#,
            channels: "448 (subsets: 100)",
        });
    }
    let images = 2450.0;
    let mut table = Vec::new();
    let mut effects = Vec::new();
    for backbone in &backbones {
        let mut reference: Option<PathBuf> = None;
        for (i, option) in OPTIONS.iter().enumerate() {
            if option.4 == "subsets" && !backbone.channels.contains("subsets") {
                continue; // the subsets' union is every channel: nothing to show
            }
            let tag = format!("{}-{i}", backbone.name);
            let job = job(dir, backbone, option, &tag);
            let job = job.to_str().unwrap();
            padim(&["split", job]);
            let seconds = padim(&["extract", job]);
            let run = dir.join(&tag);
            let bytes = bytes_under(&run.join("extract"), "embeddings-");
            table.push((backbone.name, option.0, bytes as f64 / images, images / seconds));
            eprintln!(
                "{} {}: {:.0} KB/image, {:.1} images/s",
                backbone.name,
                option.0,
                bytes as f64 / images / 1e3,
                images / seconds
            );
            // Results: the f32 reference and the first option of each other value type.
            let first_of_type = OPTIONS[..i].iter().all(|o| o.1 != option.1);
            if first_of_type {
                padim(&["run", job]);
                match &reference {
                    None => reference = Some(run.clone()),
                    Some(reference) => effects.push((backbone.name, option.1, compare(reference, &run))),
                }
            }
            if reference.as_ref() != Some(&run) {
                std::fs::remove_dir_all(&run).unwrap();
            } else {
                std::fs::remove_dir_all(run.join("extract")).unwrap();
            }
        }
    }

    println!("\nembedding storage: the main job's 2,450 images, 2 cores, the whole extract stage");
    println!("{:<20} {:<40} {:>14} {:>10}", "backbone", "stored as", "bytes/image", "images/s");
    for (backbone, option, bytes, rate) in &table {
        println!("{backbone:<20} {option:<40} {:>11.0} KB {rate:>10.1}", bytes / 1e3);
    }
    println!("\neffect on the results against f32 (normalised scores: calibration min-max)");
    println!(
        "{:<20} {:<6} {:>22} {:>22} {:>18} {:>18}",
        "backbone", "values", "largest score change", "test AUROC change", "accuracy change", "verdicts changed"
    );
    for (backbone, dtype, effect) in &effects {
        println!(
            "{backbone:<20} {dtype:<6} {:>22.2e} {:>22.5} {:>18.4} {:>18}",
            effect.score, effect.auroc, effect.accuracy, effect.verdicts
        );
    }
}

struct Effect {
    score: f64,
    auroc: f64,
    accuracy: f64,
    verdicts: String,
}

fn compare(reference: &Path, run: &Path) -> Effect {
    let (a, b) = (scores(reference), scores(run));
    assert_eq!(a.len(), b.len());
    let mut score = 0f64;
    let (mut changed, mut tested) = (0, 0);
    for (key, (mean, max, verdict, split)) in &a {
        let other = &b[key];
        score = score.max((mean - other.0).abs()).max((max - other.1).abs());
        if split == "test" {
            tested += 1;
            changed += usize::from(*verdict != other.2);
        }
    }
    let (ma, mb) = (metrics(reference), metrics(run));
    let (mut auroc, mut accuracy) = (0f64, 0f64);
    for (model, (x, y)) in &ma {
        let (u, v) = mb[model];
        if (u - x).abs() >= auroc.abs() {
            auroc = u - x;
        }
        if (v - y).abs() >= accuracy.abs() {
            accuracy = v - y;
        }
    }
    Effect { score, auroc, accuracy, verdicts: format!("{changed} of {tested}") }
}
