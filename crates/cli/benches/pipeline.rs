//! Extraction pipeline benchmark (`cargo bench --workspace --bench pipeline`, in `make bench`): the
//! whole extract stage (`padim extract`, the real binary: process start, weights, reading, decoding,
//! hashing, the network, f16 conversion, Parquet encoding and writing) against the network alone
//! (in this process: the same backbone code on the same images, decoded beforehand, each batch's
//! f16 embedding copied to host memory, after a warm-up batch), on the 1,500 normal concrete-crack
//! images, 2 threads: as one batch at a time on both threads (`1x2`) and as the stage runs it, two
//! single-threaded workers with a batch each (`2x1`).
//! The goal: the stage at 0.9x the network-only throughput or better. The stage is also run over the
//! first 32 images alone: the difference gives its rate beyond the fixed cost of a process (start,
//! libtorch, weights, the first batch), the rate a long shard runs at.
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
/// backbone, each embedding (the `stored` channels) copied out as the stage does. `workers` networks of `2 / workers`
/// libtorch threads each take every `workers`-th batch.
fn network_only(
    kind: BackboneKind,
    weights: &Path,
    files: &[PathBuf],
    stored: Option<&[usize]>,
    workers: usize,
) -> f64 {
    let net = Backbone::load(kind, weights, Tap::BlockOutput, tch::Device::Cpu).unwrap();
    let (mean, std) = net.normalization();
    let preprocessor = Preprocessor::new(Preprocess::default(), mean, std);
    let mut pixels = Vec::new();
    for file in files {
        pixels.extend(preprocessor.load(file).unwrap().0.pixels);
    }
    drop(net);
    let n = files.len();
    let pixels = &pixels;
    let run = |worker: usize| {
        tch::set_num_threads((2 / workers) as i32);
        let net = Backbone::load(kind, weights, Tap::BlockOutput, tch::Device::Cpu).unwrap();
        let input = tch::Tensor::from_slice(pixels).view([n as i64, 3, 224, 224]);
        let _ = net.embed_as(&input.narrow(0, 0, 32), stored, tch::Kind::Half);
        move || {
            for first in (worker * 32..n).step_by(32 * workers) {
                let size = 32.min(n - first) as i64;
                let embedding = net.embed_as(&input.narrow(0, first as i64, size), stored, tch::Kind::Half);
                let values = Vec::<half::f16>::try_from(embedding.flatten(0, -1)).unwrap();
                assert!(!values.is_empty());
            }
        }
    };
    if workers == 1 {
        let work = run(0);
        let clock = Instant::now();
        work();
        return n as f64 / clock.elapsed().as_secs_f64();
    }
    // Each worker loads and warms up its network, then all start together.
    let start = std::sync::Barrier::new(workers);
    let start = &start;
    let seconds = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                scope.spawn(move || {
                    let work = run(worker);
                    start.wait();
                    let clock = Instant::now();
                    work();
                    clock.elapsed().as_secs_f64()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).fold(0f64, f64::max)
    });
    n as f64 / seconds
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
        // The stage over the same images: a job of exactly those files (a list), default storage;
        // then over the first batch of them alone, whose time is the stage's fixed cost (process
        // start, libtorch, weights, the first batch), to give the stage's rate beyond it.
        let extract = |name: &str, files: &[PathBuf]| {
            let list = dir.join(format!("{name}.txt"));
            let paths: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            std::fs::write(&list, paths.join("\n")).unwrap();
            let job = dir.join(format!("{name}.toml"));
            let text = format!(
                "[run]\nname = \"pipeline\"\noutput = \"{}\"\n[dataset]\nlist = \"{}\"\n[backbone]\nname = \"{}\"\n\
                 weights = \"{}\"\n[extract]\nthreads = 2\nchannels = \"subsets\"\n[fit]\nsubsets = {}\n",
                dir.join(name).display(),
                list.display(),
                kind.name(),
                weights.display(),
                subsets(kind),
            );
            std::fs::write(&job, text).unwrap();
            let job = job.to_str().unwrap();
            padim(&["split", job]);
            padim(&["extract", job])
        };
        let seconds = extract(kind.name(), &files);
        let first = extract("first-batch", &files[..32]);
        let stage = files.len() as f64 / seconds;
        let beyond = (files.len() - 32) as f64 / (seconds - first);
        // The network alone on the same images, keeping the channels the stage stored.
        let output = padim_store::Store::open(&dir.join(kind.name()).display().to_string()).unwrap();
        let reader =
            padim_store::EmbeddingReader::open(&output, "extract/embeddings-00000-of-00001.parquet", None, 1).unwrap();
        let stored = reader.meta().stored_channels.clone();
        let network = network_only(kind, &weights, &files, stored.as_deref(), 1);
        let workers = network_only(kind, &weights, &files, stored.as_deref(), 2);
        eprintln!(
            "{}: network {network:.1} / {workers:.1} images/s, stage {stage:.1} images/s ({beyond:.1} beyond its first \
             batch, {first:.2} s)",
            kind.name()
        );
        rows.push((kind.name(), network, workers, stage, beyond));
        std::fs::remove_dir_all(dir.join(kind.name())).unwrap();
        std::fs::remove_dir_all(dir.join("first-batch")).unwrap();
    }
    println!(
        "\nextract pipeline: {} real images, 2 threads, f16 embeddings of the subsets' channels (Lite0: all 176, \
         ResNet-18: 100 of 448)",
        files.len()
    );
    println!(
        "{:<20} {:>16} {:>16} {:>14} {:>10} {:>10} {:>20} {:>10}",
        "backbone",
        "net 1x2 (img/s)",
        "net 2x1 (img/s)",
        "stage (img/s)",
        "vs 1x2",
        "vs 2x1",
        "beyond first batch",
        "vs 2x1"
    );
    for (name, network, workers, stage, beyond) in rows {
        println!(
            "{name:<20} {network:>16.1} {workers:>16.1} {stage:>14.1} {:>9.2}x {:>9.2}x {beyond:>20.1} {:>9.2}x",
            stage / network,
            stage / workers,
            beyond / workers
        );
    }
}
