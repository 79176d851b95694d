//! Extraction pipeline benchmark (`cargo bench --workspace --bench pipeline`, in `make bench`): the
//! whole extract stage (`padim extract`, the real binary: process start, weights, reading, decoding,
//! hashing, the network, f16 conversion, Parquet encoding and writing) against the network alone
//! (in this process: the same backbone code on the same images, decoded beforehand, each batch's
//! embedding copied to host memory), on the 1,500 normal concrete-crack images, 2 threads.
//! The goal: the stage at 0.9x the network-only throughput or better.
//! Environment: PADIM_BENCH_BACKBONES (comma-separated; default efficientnet-lite0,resnet18),
//! PADIM_BENCH_IMAGES (default 1500).
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

#[path = "../../../tests/support/mod.rs"]
mod support;

use padim_core::config::{BackboneKind, Preprocess, Tap};
use padim_extract::{Backbone, Preprocessor};
use std::path::{Path, PathBuf};
use std::time::Instant;
use support::{root, timed_padim as padim};

/// Images/s of the network alone over `files`: decoded first, then batches of 32 through the
/// backbone, each embedding copied out as the stage does.
fn network_only(kind: BackboneKind, weights: &Path, files: &[PathBuf]) -> f64 {
    let net = Backbone::load(kind, weights, Tap::BlockOutput, tch::Device::Cpu).unwrap();
    let (mean, std) = net.normalization();
    let preprocessor = Preprocessor::new(Preprocess::default(), mean, std);
    let mut pixels = Vec::new();
    for file in files {
        pixels.extend(preprocessor.load(file).unwrap().0.pixels);
    }
    let input = tch::Tensor::from_slice(&pixels).view([files.len() as i64, 3, 224, 224]);
    drop(pixels);
    let _ = net.embed(&input.narrow(0, 0, 32));
    let clock = Instant::now();
    for first in (0..files.len()).step_by(32) {
        let size = 32.min(files.len() - first) as i64;
        let embedding = net.embed(&input.narrow(0, first as i64, size));
        let values = Vec::<f32>::try_from(embedding.flatten(0, -1)).unwrap();
        assert!(!values.is_empty());
    }
    files.len() as f64 / clock.elapsed().as_secs_f64()
}

/// The shipped jobs' subsets: the main job's for Lite0 (their union is every channel), the recipe's
/// 100 random channels for ResNet-18 (only those are stored).
fn subsets(kind: BackboneKind) -> &'static str {
    match kind {
        BackboneKind::Resnet18 => r#"[{ name = "random100-seed0", count = 100, seed = 0 }]"#,
        _ => r#"[{ name = "random40-seed0", count = 40, seed = 0 }, { name = "all", all = true }]"#,
    }
}

fn main() {
    padim_extract::tune_allocator();
    tch::set_num_threads(2);
    let wanted = std::env::var("PADIM_BENCH_BACKBONES").unwrap_or_else(|_| "efficientnet-lite0,resnet18".into());
    let n_images: usize = std::env::var("PADIM_BENCH_IMAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(1500);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let data = root().join("../shared/data/concrete-crack");
    let files = support::first_files(&data.join("Negative"), n_images, "jpg");
    let mut rows = Vec::new();
    for kind in [BackboneKind::EfficientnetLite0, BackboneKind::Resnet18] {
        if !wanted.split(',').any(|w| w == kind.name()) {
            continue;
        }
        let weights = if kind == BackboneKind::EfficientnetLite0 {
            root().join("weights/efficientnet-lite0.safetensors")
        } else {
            let out = dir.join("resnet18.safetensors");
            support::python::script(
                "export_weights.py",
                &["--backbone", "resnet18", "--source", "random", "--seed", "0", "--out", out.to_str().unwrap()],
            );
            out
        };
        let network = network_only(kind, &weights, &files);
        // The stage over the same images: a job of exactly those files (a list), default storage.
        let list = dir.join("images.txt");
        let paths: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        std::fs::write(&list, paths.join("\n")).unwrap();
        let job = dir.join(format!("{}.toml", kind.name()));
        let text = format!(
            "[run]\nname = \"pipeline\"\noutput = \"{}\"\n[dataset]\nlist = \"{}\"\n[backbone]\nname = \"{}\"\n\
             weights = \"{}\"\n[extract]\nthreads = 2\nchannels = \"subsets\"\n[fit]\nsubsets = {}\n",
            dir.join(kind.name()).display(),
            list.display(),
            kind.name(),
            weights.display(),
            subsets(kind),
        );
        std::fs::write(&job, text).unwrap();
        let job = job.to_str().unwrap();
        padim(&["split", job]);
        let seconds = padim(&["extract", job]);
        let stage = files.len() as f64 / seconds;
        eprintln!("{}: network {network:.1} images/s, stage {stage:.1} images/s", kind.name());
        rows.push((kind.name(), network, stage));
        std::fs::remove_dir_all(dir.join(kind.name())).unwrap();
    }
    println!(
        "\nextract pipeline: {} real images, 2 threads, f16 embeddings of the subsets' channels (Lite0: all 176, \
         ResNet-18: 100 of 448)",
        files.len()
    );
    println!("{:<20} {:>22} {:>22} {:>8}", "backbone", "network only (img/s)", "extract stage (img/s)", "ratio");
    for (name, network, stage) in rows {
        println!("{name:<20} {network:>22.1} {stage:>22.1} {:>7.2}x", stage / network);
    }
}
