//! `cargo bench --workspace --bench extract`: images/s of each backbone's embedding (the three
//! taps, upsampled and concatenated, copied out to host memory) in Rust and in PyTorch eager on the
//! same input tensors in the same run, on the same number of threads, and their ratio.
//!
//! Inputs are 64 real concrete-crack images pre-processed by padim (random tensors where the shared
//! data is absent). Environment: PADIM_BENCH_THREADS (default 2), PADIM_BENCH_IMAGES (default 64),
//! PADIM_BENCH_BACKBONES (comma-separated; default all three).
#![allow(clippy::print_stdout, clippy::unwrap_used)]

#[path = "../../../tests/support/python.rs"]
mod python;

use padim_core::config::{BackboneKind, Preprocess, Tap};
use padim_extract::{Backbone, Preprocessor};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    padim_extract::tune_allocator();
    let threads = env_usize("PADIM_BENCH_THREADS", 2);
    let n_images = env_usize("PADIM_BENCH_IMAGES", 64);
    let batch = 32usize;
    tch::set_num_threads(threads as i32);
    let dir = tempfile::tempdir().unwrap();
    let wanted =
        std::env::var("PADIM_BENCH_BACKBONES").unwrap_or_else(|_| "efficientnet-lite0,resnet18,wide-resnet50-2".into());

    println!("extract throughput, {threads} threads, batch {batch}, {n_images} images of 224x224 (images/s)");
    println!("{:<20} {:>10} {:>14} {:>16} {:>10}", "backbone", "padim", "torch eager", "torch chan-last", "ratio");
    for kind in [BackboneKind::EfficientnetLite0, BackboneKind::Resnet18, BackboneKind::WideResnet50_2] {
        if !wanted.split(',').any(|w| w == kind.name()) {
            continue;
        }
        let weights = if kind == BackboneKind::EfficientnetLite0 {
            root().join("weights/efficientnet-lite0.safetensors")
        } else {
            let out = dir.path().join(format!("{}.safetensors", kind.name()));
            python::script(
                "export_weights.py",
                &["--backbone", kind.name(), "--source", "random", "--out", out.to_str().unwrap()],
            );
            out
        };
        let net = Backbone::load(kind, &weights, Tap::BlockOutput, tch::Device::Cpu).unwrap();
        let input = inputs(&net, n_images);
        let input_file = dir.path().join("input.safetensors");
        tch::Tensor::write_safetensors(&[("input", &input)], &input_file).unwrap();

        // Warm-up, then one timed pass over all images.
        let _ = net.embed(&input.narrow(0, 0, batch.min(n_images) as i64));
        let start = Instant::now();
        let mut copied = 0usize;
        for first in (0..n_images).step_by(batch) {
            let size = batch.min(n_images - first) as i64;
            let embedding = net.embed(&input.narrow(0, first as i64, size));
            let values = Vec::<f32>::try_from(embedding.flatten(0, -1)).unwrap();
            copied += values.len();
        }
        let rust = n_images as f64 / start.elapsed().as_secs_f64();
        assert!(copied > 0);

        let reference = python::reference(&[
            "bench",
            "--backbone",
            kind.name(),
            "--weights",
            weights.to_str().unwrap(),
            "--input",
            input_file.to_str().unwrap(),
            "--batch",
            &batch.to_string(),
            "--threads",
            &threads.to_string(),
        ]);
        let value = |key: &str| -> f64 {
            let start = reference.find(&format!("\"{key}\": ")).unwrap() + key.len() + 4;
            reference[start..].split([',', '}']).next().unwrap().trim().parse().unwrap()
        };
        let (eager, channels_last) = (value("contiguous"), value("channels_last"));
        let best = eager.max(channels_last);
        println!("{:<20} {rust:>10.1} {eager:>14.1} {channels_last:>16.1} {:>9.2}x", kind.name(), rust / best);
    }
    println!("ratio = padim / the faster PyTorch layout");
}

fn inputs(net: &Backbone, n_images: usize) -> tch::Tensor {
    let (mean, std) = net.normalization();
    let preprocessor = Preprocessor::new(Preprocess::default(), mean, std);
    let data = root().join("../shared/data/concrete-crack/Negative");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&data).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
    files.sort();
    if files.len() < n_images {
        println!("({} absent: random inputs)", data.display());
        return tch::Tensor::randn([n_images as i64, 3, 224, 224], tch::kind::FLOAT_CPU);
    }
    let mut pixels = Vec::new();
    for file in &files[..n_images] {
        pixels.extend(preprocessor.load(file).unwrap().0.pixels);
    }
    tch::Tensor::from_slice(&pixels).view([n_images as i64, 3, 224, 224])
}
