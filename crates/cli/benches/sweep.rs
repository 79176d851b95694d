//! Sweep benchmark (`cargo bench --workspace --bench sweep`, in `make bench`): fit, score and report
//! of a 12-experiment sweep (counts 25, 50, 100 x seeds 0-3) against one experiment alone, on the
//! same extracted embeddings (extraction excluded: it runs once for both), real concrete-crack
//! images, 2 cores, the real `padim` binary; then the sweep's score again within a memory budget
//! that splits its models into passes, against one pass (time and peak resident memory).
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

#[path = "../../../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::Instant;
use support::{Split, copy_first, copy_stages, padim, root, small_job, stdout};

fn job(dir: &Path, name: &str, body: &str) -> String {
    let split = Split { seed: 0, train: 100, calibration: 20 };
    small_job(dir, name, name, name, split, body).display().to_string()
}

/// Seconds of fit, score and report on a copy of the extracted run.
fn stages(dir: &Path, job: &str, name: &str) -> [f64; 3] {
    copy_stages(&dir.join("extracted"), &dir.join(name), &["split", "extract"]);
    ["fit", "score", "report"].map(|stage| {
        let clock = Instant::now();
        stdout(&padim(&[stage, job]));
        clock.elapsed().as_secs_f64()
    })
}

fn main() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let shared = root().join("../shared/data/concrete-crack");
    copy_first(&shared.join("Negative"), &dir.join("data/Negative"), 200, "jpg");
    copy_first(&shared.join("Positive"), &dir.join("data/Positive"), 100, "jpg");
    let extracted = job(dir, "extracted", "[fit]\nsubsets = [{ name = \"c100-s0\", count = 100, seed = 0 }]\n");
    stdout(&padim(&["split", &extracted]));
    stdout(&padim(&["extract", &extracted]));

    let sweep = job(dir, "sweep", "[fit]\nsubsets = []\n[sweep]\ncounts = [25, 50, 100]\nseeds = [0, 1, 2, 3]\n");
    let one = job(dir, "one", "[fit]\nsubsets = [{ name = \"c100-s0\", count = 100, seed = 0 }]\n");
    let all = job(dir, "all", "[fit]\nsubsets = [{ name = \"all\", all = true }]\n");
    let timings = [
        ("sweep: 12 experiments", stages(dir, &sweep, "sweep")),
        ("one experiment: 100 channels", stages(dir, &one, "one")),
        ("one experiment: all 176 channels", stages(dir, &all, "all")),
    ];
    println!("\nsweep benchmark: 300 real images (100 train, 40 calibration, 160 test), extraction excluded");
    println!("{:<34} {:>8} {:>8} {:>8} {:>8} {:>12}", "", "fit s", "score s", "report s", "total s", "sweep ratio");
    let sweep_total: f64 = timings[0].1.iter().sum();
    for (name, [fit, score, report]) in timings {
        let total = fit + score + report;
        println!("{name:<34} {fit:>8.2} {score:>8.2} {report:>8.2} {total:>8.2} {:>11.2}x", sweep_total / total);
    }
    println!("(sweep ratio: the sweep's total time over this row's; goal under 2x one experiment)");

    // The same scoring within score.memory-budget-gib: the budget is not part of the score's
    // identity, so --force rescoring writes the same files.
    let model_bytes: u64 = std::fs::read_dir(dir.join("sweep/fit"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("model-"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    println!(
        "\nscore of the sweep within score.memory-budget-gib (12 models, {} MiB of model files)",
        model_bytes >> 20
    );
    println!("{:<10} {:>7} {:>8} {:>9} {:>12}", "budget", "passes", "score s", "peak MiB", "time ratio");
    let mut first = None;
    for budget in ["8", "0.5", "0.25"] {
        let text = std::fs::read_to_string(&sweep).unwrap();
        std::fs::write(&sweep, format!("{}\n[score]\nmemory-budget-gib = {budget}\n", text.trim_end())).unwrap();
        let (seconds, peak, out) = measured(&["score", &sweep, "--force"]);
        std::fs::write(&sweep, text).unwrap();
        // "... 12 models (3 passes per shard within ...)" when there are several.
        let passes = out.split_once(" passes per shard").map_or("1", |(head, _)| head.rsplit('(').next().unwrap());
        let base = *first.get_or_insert(seconds);
        println!(
            "{:<10} {passes:>7} {seconds:>8.2} {:>9} {:>11.2}x",
            format!("{budget} GiB"),
            peak >> 20,
            seconds / base
        );
    }
}

/// Seconds, peak resident memory and standard output of one `padim` run.
fn measured(args: &[&str]) -> (f64, u64, String) {
    support::measured(support::padim_command(args))
}
