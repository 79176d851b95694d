//! `cargo bench --workspace --bench stages`: the fit and score stages against the plain PyTorch
//! recipe (`scripts/reference.py bench-fit|bench-score`, f64 like padim) on the same embeddings file,
//! in the same run, on the same number of threads; k channel subsets in one pass against k passes;
//! and the peak memory of `fit` on few and many training images.
//!
//! The embeddings are synthetic (EfficientNet-Lite0's shape: 176 channels on a 56x56 grid), written
//! with padim's own writer: throughput and memory do not depend on the values. Both sides time the
//! whole stage from the Parquet file to the fitted model or the image scores. Environment:
//! PADIM_BENCH_THREADS (default 2), PADIM_BENCH_TRAIN (training images, default 250),
//! PADIM_BENCH_EXTRA (anomalous images also scored, default 50), PADIM_BENCH_LARGE (training images of
//! the memory run, default 2000; 0 skips it).
#![allow(clippy::print_stdout, clippy::unwrap_used)]

#[path = "../../../tests/support/python.rs"]
mod python;

/// The padim binary's allocator, so that the stages run as they do there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use padim_core::split::{ManifestRow, manifest_csv};
use padim_core::{Job, NoProgress};
use padim_fit::stage::{FitOptions, run_fit};
use padim_score::stage::{ScoreOptions, run_score};
use padim_store::{
    DoneMarker, EmbeddingMeta, EmbeddingWriter, ImageRow, ImageStatus, LayerInfo, Store, WriterSettings,
    write_image_table,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const GRID: usize = 56;
const CHANNELS: usize = 176;
const SHA: &str = "f46ec1c3cb680f7b6e592fd971a28f301ca2deef2db22f51ce7d8e69c6b5d28e";
/// Set in the child process that measures the peak memory of one fit.
const CHILD_ENV: &str = "PADIM_BENCH_FIT_CHILD";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A job at `dir/job.toml` writing to `dir/run`, fitting `subsets` (TOML inline tables).
fn write_job(dir: &Path, subsets: &[String]) -> Job {
    // One (empty) dataset folder for every job, so that their extract identities are equal.
    let data = dir.parent().unwrap().join("data");
    std::fs::create_dir_all(data.join("Negative")).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let text = format!(
        r#"
[run]
name = "bench"
output = "{}"
[dataset]
root = ["{}"]
normal = ["Negative"]
[backbone]
name = "efficientnet-lite0"
weights = "{}"
sha256 = "{SHA}"
[extract]
compression = "none"
[fit]
memory-budget-gib = 16
subsets = [{}]
"#,
        dir.join("run").display(),
        data.display(),
        root().join("weights/efficientnet-lite0.safetensors").display(),
        subsets.join(", ")
    );
    let path = dir.join("job.toml");
    std::fs::write(&path, text).unwrap();
    Job::load(&path).unwrap()
}

fn random_subset(name: &str, count: usize, seed: u64) -> String {
    format!(r#"{{ name = "{name}", count = {count}, seed = {seed} }}"#)
}

/// Writes one extract shard of synthetic embeddings (`normal` Negative then `anomalous` Positive
/// images) as padim's extract stage would: embeddings, image table, done marker.
fn write_embeddings(job: &Job, normal: usize, anomalous: usize) {
    let store = Store::open(&job.output).unwrap();
    // The split stage's manifest of the synthetic images: the stage identities cover its digest.
    let manifest: Vec<ManifestRow> = (0..normal + anomalous)
        .map(|image| ManifestRow {
            path: format!("{image}.jpg"),
            label: if image < normal { "Negative".into() } else { "Positive".into() },
            split: None,
            sha256: padim_core::hash::sha256_hex(&image.to_le_bytes()),
        })
        .collect();
    let csv = manifest_csv(&manifest);
    padim_store::identity::publish_split(&store, job.split_hash(), csv.clone(), csv, BTreeMap::new()).unwrap();
    let inputs = padim_store::identity::input_digests(job, &store).unwrap();
    let layer =
        |name: &str, channels, stride, first_channel| LayerInfo { name: name.into(), channels, stride, first_channel };
    let meta = EmbeddingMeta {
        format_version: EmbeddingMeta::FORMAT_VERSION,
        backbone: "efficientnet-lite0".into(),
        weights_sha256: SHA.into(),
        tap: "block-output".into(),
        layers: vec![layer("blocks.2", 24, 4, 0), layer("blocks.4", 40, 8, 24), layer("blocks.10", 112, 16, 64)],
        input_height: 224,
        input_width: 224,
        grid_height: GRID,
        grid_width: GRID,
        n_channels: CHANNELS,
        config_hash: job.extract_hash(&inputs),
        shard: "0/1".into(),
        value_type: job.extract.dtype,
        stored_channels: None,
    };
    let settings = WriterSettings {
        encoding: job.extract.encoding,
        compression: job.extract.compression,
        row_group_bytes: 64 << 20,
    };
    let key = "extract/embeddings-00000-of-00001.parquet";
    let mut writer = EmbeddingWriter::create(&store, key, meta, settings).unwrap();
    let per_image = CHANNELS * GRID * GRID;
    let total = normal + anomalous;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut rows = Vec::new();
    for first in (0..total).step_by(32) {
        let ids: Vec<u32> = (first..(first + 32).min(total)).map(|i| i as u32).collect();
        // Channel c: an offset of c, a shared per-image-and-patch factor, and uniform noise.
        let mut values = vec![0f32; ids.len() * per_image];
        for (image, chunk) in values.chunks_mut(per_image).enumerate() {
            let shift = if ids[image] as usize >= normal { 3.0 } else { 0.0 };
            for (c, channel) in chunk.chunks_mut(GRID * GRID).enumerate() {
                for value in channel.iter_mut() {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    *value = c as f32 * 0.01 + shift + (state >> 40) as f32 / (1u64 << 24) as f32;
                }
            }
        }
        writer.write(&ids, padim_store::EmbeddingValues::F32(values)).unwrap();
        rows.extend(ids.iter().map(|&image| ImageRow {
            image,
            path: format!("{image}.jpg"),
            label: if (image as usize) < normal { "Negative".into() } else { "Positive".into() },
            split: None,
            bytes: 0,
            sha256: String::new(),
            width: 224,
            height: 224,
            status: ImageStatus::Ok,
            error: None,
        }));
    }
    writer.finish().unwrap();
    write_image_table(&store, "extract/images-00000-of-00001.parquet", &rows).unwrap();
    DoneMarker {
        stage: "extract".into(),
        shard: "0/1".into(),
        config_hash: job.extract_hash(&inputs),
        digest: None,
        files: vec![key.into(), "extract/images-00000-of-00001.parquet".into()],
        counts: BTreeMap::from([("images".to_string(), total as u64)]),
        run_id: DoneMarker::new_run_id(),
        made_from: BTreeMap::new(),
    }
    .write(&store, "extract/done-00000-of-00001.json")
    .unwrap();
}

/// A job in `dir` that shares `source`'s extract outputs (hard links) and fits `subsets`.
fn job_sharing_embeddings(source: &Path, dir: &Path, subsets: &[String]) -> Job {
    let job = write_job(dir, subsets);
    let extract = dir.join("run/extract");
    std::fs::create_dir_all(&extract).unwrap();
    for entry in std::fs::read_dir(source.join("run/extract")).unwrap() {
        let entry = entry.unwrap();
        std::fs::hard_link(entry.path(), extract.join(entry.file_name())).unwrap();
    }
    job
}

fn seconds<T>(f: impl FnOnce() -> T) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64()
}

fn fit(job: &Job) -> f64 {
    seconds(|| run_fit(job, &FitOptions { force: true, shard: None }, &NoProgress).unwrap())
}

fn score(job: &Job) -> f64 {
    seconds(|| run_score(job, &ScoreOptions { force: true, ..ScoreOptions::default() }, &NoProgress).unwrap())
}

/// Seconds the PyTorch reference takes for `command` (bench-fit or bench-score) with `job`'s models.
fn reference(command: &str, job: &Job, threads: usize) -> f64 {
    let run = PathBuf::from(&job.output);
    // The model files first: `--normal` takes one or more values and would swallow them.
    let mut args = vec![command.to_string()];
    for spec in &job.fit.subsets {
        args.push(run.join(format!("fit/model-{}.safetensors", spec.name)).display().to_string());
    }
    args.extend(["--run-dir".into(), run.display().to_string(), "--threads".into(), threads.to_string()]);
    if command == "bench-fit" {
        args.extend(["--patches".into(), (GRID * GRID).to_string(), "--normal".into(), "Negative".into()]);
    }
    let result: serde_json::Value = serde_json::from_str(&python::reference(&args)).unwrap();
    result["seconds"].as_f64().unwrap()
}

/// Peak resident memory (KiB) of a fresh process that runs the fit of the job at `path`.
fn fit_peak_rss(path: &Path) -> u64 {
    let output = Command::new(std::env::current_exe().unwrap()).env(CHILD_ENV, path).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().parse().unwrap()
}

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn main() {
    // As the padim binary does: BLAS single-threaded per call, parallel over patches. OpenBLAS reads
    // the variable when it loads, so the bench re-executes itself with it.
    if std::env::var_os("OPENBLAS_NUM_THREADS").is_none() {
        use std::os::unix::process::CommandExt;
        let error = Command::new(std::env::current_exe().unwrap())
            .args(std::env::args_os().skip(1))
            .env("OPENBLAS_NUM_THREADS", "1")
            .exec();
        panic!("cannot re-execute the bench: {error}");
    }
    let threads = env_usize("PADIM_BENCH_THREADS", 2);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().unwrap();
    if let Ok(path) = std::env::var(CHILD_ENV) {
        let job = Job::load(Path::new(&path)).unwrap();
        fit(&job);
        println!("{}", vm_hwm_kib());
        return;
    }
    let n_train = env_usize("PADIM_BENCH_TRAIN", 250);
    let n_extra = env_usize("PADIM_BENCH_EXTRA", 50);
    let n_large = env_usize("PADIM_BENCH_LARGE", 2000);
    let n_scored = n_train + n_extra;
    let dir = tempfile::tempdir().unwrap();

    let main_dir = dir.path().join("main");
    let recipe = [random_subset("random40-seed0", 40, 0), r#"{ name = "all", all = true }"#.to_string()];
    let job = write_job(&main_dir, &recipe);
    write_embeddings(&job, n_train, n_extra);
    let r40_dir = dir.path().join("r40");
    let job_r40 = job_sharing_embeddings(&main_dir, &r40_dir, &recipe[..1]);

    println!(
        "fit and score, {threads} threads, {n_train} training images, {n_scored} scored, {CHANNELS} channels on a \
         {GRID}x{GRID} grid (seconds; ratio = PyTorch time / padim time)"
    );
    println!("{:<44} {:>9} {:>9} {:>8} {:>12}", "stage (subsets)", "padim", "pytorch", "ratio", "padim img/s");
    let row = |name: &str, ours: f64, theirs: f64, images: usize| {
        println!("{name:<44} {ours:>9.2} {theirs:>9.2} {:>7.2}x {:>12.1}", theirs / ours, images as f64 / ours);
    };
    for (name, job) in [("fit (random40 + all 176)", &job), ("fit (random40)", &job_r40)] {
        let ours = fit(job);
        row(name, ours, reference("bench-fit", job, threads), n_train);
    }
    for (name, job) in [("score (random40 + all 176)", &job), ("score (random40)", &job_r40)] {
        let ours = score(job);
        row(name, ours, reference("bench-score", job, threads), n_scored);
    }

    // k subsets: one job that fits and scores all of them against k jobs of one subset each.
    let k = 4;
    let subsets: Vec<String> = (0..k).map(|seed| random_subset(&format!("random40-seed{seed}"), 40, seed)).collect();
    let together = job_sharing_embeddings(&main_dir, &dir.path().join("together"), &subsets);
    let separate: Vec<Job> = subsets
        .iter()
        .enumerate()
        .map(|(i, s)| job_sharing_embeddings(&main_dir, &dir.path().join(format!("alone{i}")), std::slice::from_ref(s)))
        .collect();
    let fit_one = fit(&together);
    let fit_k: f64 = separate.iter().map(fit).sum();
    let score_one = score(&together);
    let score_k: f64 = separate.iter().map(score).sum();
    println!();
    println!("{k} subsets of 40 channels: one pass against {k} passes (seconds)");
    println!("{:<10} {:>9} {:>9} {:>8}", "stage", "one pass", "k passes", "saving");
    println!("{:<10} {fit_one:>9.2} {fit_k:>9.2} {:>7.2}x", "fit", fit_k / fit_one);
    println!("{:<10} {score_one:>9.2} {score_k:>9.2} {:>7.2}x", "score", score_k / score_one);

    if n_large > 0 {
        let all = [r#"{ name = "all", all = true }"#.to_string()];
        let small_dir = dir.path().join("small");
        job_sharing_embeddings(&main_dir, &small_dir, &all);
        let large_dir = dir.path().join("large");
        let large = write_job(&large_dir, &all);
        write_embeddings(&large, n_large, 0);
        let (rss_small, rss_large) =
            (fit_peak_rss(&small_dir.join("job.toml")), fit_peak_rss(&large_dir.join("job.toml")));
        println!();
        println!("peak resident memory of `fit` (all {CHANNELS} channels), fresh process each");
        println!("{:<24} {:>10}", "training images", "peak MiB");
        println!("{n_train:<24} {:>10.0}", rss_small as f64 / 1024.0);
        println!("{n_large:<24} {:>10.0}", rss_large as f64 / 1024.0);
        println!("ratio {n_large}/{n_train}: {:.3}", rss_large as f64 / rss_small as f64);
    }
}
