//! Scale-out benchmark (`cargo bench --workspace --bench scale`, in `make bench`): the real `padim`
//! binary on real concrete-crack images.
//! 1. Extract and fit with every input and output in an S3-compatible server (moto on 127.0.0.1,
//!    started here) against the same with local files: time and the ratio.
//! 2. Two shards in parallel (one thread each, as two array tasks on one 2-core node) against one
//!    process with two threads: extract, and fit's accumulation (two `fit --shard` tasks and the
//!    merge against one fit over the same embeddings).
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

#[path = "../../../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;
use support::s3::Moto;
use support::{copy_first, first_files, root};

const NEGATIVES: usize = 160;
const POSITIVES: usize = 40;

fn job(dir: &Path, name: &str, output: &str, data: &str, weights: &str, threads: usize) -> PathBuf {
    let text = format!(
        r#"
[run]
name = "{name}"
output = "{output}"
[dataset]
root = ["{data}"]
normal = ["Negative"]
[backbone]
name = "efficientnet-lite0"
weights = "{weights}"
[extract]
threads = {threads}
[fit]
subsets = [{{ name = "random40", count = 40, seed = 0 }}, {{ name = "all", all = true }}]
"#
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn padim(args: &[&str], env: &[(&'static str, String)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_padim"));
    command.args(args).arg("--quiet").stdout(Stdio::null()).stderr(Stdio::piped());
    command.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    command
}

/// Runs the commands at once and returns the wall time until the last one ends.
fn timed(commands: Vec<Command>) -> f64 {
    let clock = Instant::now();
    let children: Vec<_> = commands.into_iter().map(|mut c| c.spawn().unwrap()).collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "padim failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    clock.elapsed().as_secs_f64()
}

fn main() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let shared = root().join("../shared/data/concrete-crack");
    copy_first(&shared.join("Negative"), &dir.join("data/Negative"), NEGATIVES, "jpg");
    copy_first(&shared.join("Positive"), &dir.join("data/Positive"), POSITIVES, "jpg");
    let weights = root().join("weights/efficientnet-lite0.safetensors");
    let images = NEGATIVES + POSITIVES;

    // 1. S3 against local files.
    let moto = Moto::start();
    moto.create_bucket("bench");
    for label in ["Negative", "Positive"] {
        for file in first_files(&dir.join("data").join(label), usize::MAX, "jpg") {
            moto.put_file("bench", &format!("data/{label}/{}", file.file_name().unwrap().to_string_lossy()), &file);
        }
    }
    moto.put_file("bench", "weights/lite0.safetensors", &weights);
    let mut s3_env = Moto::env(&moto.endpoint());
    s3_env.retain(|(k, _)| *k != "PADIM_STORE_RETRY_SECONDS");
    let data = dir.join("data").display().to_string();
    let local = job(dir, "local", &dir.join("local").display().to_string(), &data, &weights.display().to_string(), 2);
    let s3 = job(dir, "s3", "s3://bench/run", "s3://bench/data", "s3://bench/weights/lite0.safetensors", 2);
    let stage_times = |job: &Path, env: &[(&'static str, String)]| {
        let job = job.to_str().unwrap();
        let extract = timed(vec![padim(&["extract", job], env)]);
        let fit = timed(vec![padim(&["fit", job], env)]);
        (extract, fit)
    };
    let (local_extract, local_fit) = stage_times(&local, &[]);
    let (s3_extract, s3_fit) = stage_times(&s3, &s3_env);

    // 2. Two shards in parallel (1 thread each) against one process (2 threads).
    let one = job(dir, "one", &dir.join("one").display().to_string(), &data, &weights.display().to_string(), 2);
    let two = job(dir, "two", &dir.join("two").display().to_string(), &data, &weights.display().to_string(), 1);
    let (one, two) = (one.to_str().unwrap(), two.to_str().unwrap());
    let one_extract = timed(vec![padim(&["extract", one], &[])]);
    let two_extract = timed((0..2).map(|i| padim(&["extract", two, "--shard", &format!("{i}/2")], &[])).collect());
    // Fit over the same two-shard embeddings: two tasks in parallel (each one extract shard's partial
    // statistics) and the merge, against one process accumulating both (fit's outputs removed first).
    let two_fit_shards = timed((0..2).map(|i| padim(&["fit", two, "--shard", &format!("{i}/2")], &[])).collect());
    let merge = timed(vec![padim(&["fit", two], &[])]);
    let two_fit = two_fit_shards + merge;
    std::fs::remove_dir_all(dir.join("two/fit")).unwrap();
    let one_fit = timed(vec![padim(&["fit", two], &[])]);

    println!("\nscale-out benchmark: {images} real images (EfficientNet-Lite0, 176 channels, models random40 + all)");
    println!("{:<46} {:>9} {:>9} {:>9}", "", "seconds", "images/s", "ratio");
    let row = |name: &str, seconds: f64, reference: f64| {
        println!("{name:<46} {seconds:>9.2} {:>9.1} {:>9.2}", images as f64 / seconds, reference / seconds);
    };
    row("extract, local files", local_extract, local_extract);
    row("extract, S3 (moto on 127.0.0.1)", s3_extract, local_extract);
    row("fit, local files", local_fit, local_fit);
    row("fit, S3 (moto on 127.0.0.1)", s3_fit, local_fit);
    row("extract, 1 process x 2 threads", one_extract, one_extract);
    row("extract, 2 shards in parallel x 1 thread", two_extract, one_extract);
    row("fit, 1 process over 2 extract shards", one_fit, one_fit);
    row("fit, 2 shard tasks in parallel + merge", two_fit, one_fit);
    println!("{:<46} {merge:>9.2}", "  of which the merge");
    println!("(ratio: the first row of each pair over this row's time; above 1 is faster)");
}
