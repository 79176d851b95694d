//! `padim predict` benchmark (`cargo bench --workspace --bench predict`, in `make bench`): a bundle
//! from a real run (EfficientNet-Lite0, 40 random channels), then on 100 real concrete-crack images,
//! 2 threads: single-image latency (p50, p95; each image read, decoded, embedded and scored alone) and
//! the throughput of batches of 16, beside the plain PyTorch pipeline of the same recipe with the same
//! bundle (`scripts/reference.py bench-predict`, PIL decoding), whose scores must agree.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

#[path = "../../../tests/support/mod.rs"]
mod support;

use padim_core::config::DeviceChoice;
use padim_predict::Predictor;
use std::path::PathBuf;
use std::time::Instant;
use support::{copy_first, first_files, padim, root, stdout};

const IMAGES: usize = 100;
const BATCH: usize = 16;

fn main() {
    padim_extract::tune_allocator();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let shared = root().join("../shared/data/concrete-crack");
    copy_first(&shared.join("Negative"), &dir.join("data/Negative"), 120, "jpg");
    copy_first(&shared.join("Positive"), &dir.join("data/Positive"), 60, "jpg");
    let weights = root().join("weights/efficientnet-lite0.safetensors");
    let job = dir.join("job.toml");
    std::fs::write(
        &job,
        format!(
            "[run]\nname = \"bench-predict\"\noutput = \"run\"\n[dataset]\nroot = [\"data\"]\nnormal = [\"Negative\"]\n\
             [split]\nseed = 0\ntrain = {{ Negative = 60 }}\ncalibration = {{ Negative = 20, Positive = 20 }}\n\
             test = {{ Negative = \"rest\", Positive = \"rest\" }}\n[backbone]\nname = \"efficientnet-lite0\"\n\
             weights = \"{}\"\n[fit]\nsubsets = [{{ name = \"random40\", count = 40, seed = 0 }}]\n",
            weights.display()
        ),
    )
    .unwrap();
    stdout(&padim(&["run", job.to_str().unwrap()]));
    let bundle = dir.join("run/report/bundle.safetensors");

    let mut images: Vec<PathBuf> = first_files(&dir.join("data/Negative"), 50, "jpg");
    images.extend(first_files(&dir.join("data/Positive"), IMAGES - images.len(), "jpg"));

    let predictor = Predictor::load(&bundle, Some(&weights), DeviceChoice::Cpu, 2).unwrap();
    let read = |paths: &[PathBuf]| -> Vec<(PathBuf, Result<bytes::Bytes, padim_store::StoreError>)> {
        paths.iter().map(|p| (p.clone(), padim_store::read_input(p))).collect()
    };
    predictor.predict(&read(&images[..1]), false); // warm-up
    let mut latencies = Vec::with_capacity(IMAGES);
    let mut ours = Vec::with_capacity(IMAGES);
    for image in &images {
        let clock = Instant::now();
        let result = predictor.predict(&read(std::slice::from_ref(image)), false).pop().unwrap().unwrap();
        latencies.push(clock.elapsed().as_secs_f64());
        ours.push(result.score);
    }
    let clock = Instant::now();
    for chunk in images.chunks(BATCH) {
        for result in predictor.predict(&read(chunk), false) {
            result.unwrap();
        }
    }
    let throughput = IMAGES as f64 / clock.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| latencies[((q * IMAGES as f64) as usize).min(IMAGES - 1)];

    let mut args = vec![
        "bench-predict".to_string(),
        "--bundle".into(),
        bundle.display().to_string(),
        "--weights".into(),
        weights.display().to_string(),
        "--threads".into(),
        "2".into(),
        "--batch".into(),
        BATCH.to_string(),
    ];
    args.extend(images.iter().map(|p| p.display().to_string()));
    let reference: serde_json::Value = serde_json::from_str(&support::python::reference(&args)).unwrap();
    let worst = images
        .iter()
        .zip(&ours)
        .map(|(p, s)| (reference["scores"][p.display().to_string()].as_f64().unwrap() - s).abs())
        .fold(0f64, f64::max);
    let (p50, p95, batch) = (
        reference["p50"].as_f64().unwrap(),
        reference["p95"].as_f64().unwrap(),
        reference["throughput"].as_f64().unwrap(),
    );

    println!("\npredict benchmark: {IMAGES} real images, EfficientNet-Lite0, random40 bundle, 2 threads");
    println!("{:<34} {:>10} {:>10} {:>8}", "", "padim", "PyTorch", "ratio");
    println!(
        "{:<34} {:>10.1} {:>10.1} {:>7.2}x",
        "latency p50 (ms, one image)",
        pick(0.5) * 1e3,
        p50 * 1e3,
        p50 / pick(0.5)
    );
    println!(
        "{:<34} {:>10.1} {:>10.1} {:>7.2}x",
        "latency p95 (ms, one image)",
        pick(0.95) * 1e3,
        p95 * 1e3,
        p95 / pick(0.95)
    );
    println!(
        "{:<34} {:>10.1} {:>10.1} {:>7.2}x",
        format!("throughput (images/s, batch {BATCH})"),
        throughput,
        batch,
        throughput / batch
    );
    println!("largest normalised score difference to PyTorch (PIL decoding and resizing): {worst:.2e}");
}
