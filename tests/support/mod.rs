//! Helpers shared by the test binaries at the top of the repository.
#![allow(dead_code)]

pub mod azurite;
pub mod python;
pub mod s3;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Runs the real `padim` binary, quietly.
pub fn padim(args: &[&str]) -> Output {
    padim_with(args, &[])
}

/// Runs the real `padim` binary, quietly, with extra environment variables.
pub fn padim_with(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_padim"));
    command.args(args).arg("--quiet");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

/// A quiet `padim` command with `args`, not yet run.
pub fn padim_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_padim"));
    command.args(args).arg("--quiet");
    command
}

/// Seconds of a successful `padim` run (its output discarded; a failure panics with its stderr).
pub fn timed_padim(args: &[&str]) -> f64 {
    let clock = std::time::Instant::now();
    let output = padim_command(args).stdout(std::process::Stdio::null()).output().unwrap();
    assert!(output.status.success(), "padim {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    clock.elapsed().as_secs_f64()
}

/// Seconds, peak resident memory (bytes, from the kernel's accounting of that process alone) and
/// standard output of `command` run to a successful end. `wait4` is the one call that gives a
/// child's own peak (it reaps the child, so Child::wait is never called).
#[allow(unsafe_code, clippy::zombie_processes)]
pub fn measured(mut command: Command) -> (f64, u64, String) {
    let clock = std::time::Instant::now();
    let child = command.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.unwrap(), &mut out).unwrap();
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    // SAFETY: waits for our own child, once; `status` and `usage` are valid for writes.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert!(waited == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{command:?} failed");
    (clock.elapsed().as_secs_f64(), usage.ru_maxrss as u64 * 1024, out)
}

/// The standard output of a successful run; a failed run fails the test with its standard error.
pub fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "padim failed:\n{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The first `normal` and `anomalous` images of the concrete-crack data in `dir/data/Negative` and
/// `dir/data/Positive` (the layout `small_job` reads).
pub fn copy_concrete(dir: &Path, normal: usize, anomalous: usize) {
    let shared = root().join("../shared/data/concrete-crack");
    copy_first(&shared.join("Negative"), &dir.join("data/Negative"), normal, "jpg");
    copy_first(&shared.join("Positive"), &dir.join("data/Positive"), anomalous, "jpg");
}

/// Copies the finished `stages` (their folders: `split`, `extract`, `fit` ...) of the run in `from` into
/// the run folder `to`, so that a second run starts from the same bytes.
pub fn copy_stages(from: &Path, to: &Path, stages: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for stage in stages {
        let status = Command::new("cp").arg("-r").arg(from.join(stage)).arg(to).status().unwrap();
        assert!(status.success(), "copying {stage} from {}", from.display());
    }
}

/// Copies the Kubernetes and AWS Batch templates into `root/jobs`, for tests that alter them.
pub fn copy_templates(root_dir: &Path) {
    for engine in ["kubernetes", "aws-batch"] {
        let to = root_dir.join("jobs").join(engine);
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(root().join("jobs").join(engine)).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

/// The first `n` files (sorted by name) with extension `ext` in `from`.
pub fn first_files(from: &Path, n: usize, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(from)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files.truncate(n);
    files
}

/// Copies the first `n` files with extension `ext` of `from` into `to`, and returns their names.
pub fn copy_first(from: &Path, to: &Path, n: usize, ext: &str) -> Vec<String> {
    std::fs::create_dir_all(to).unwrap();
    first_files(from, n, ext)
        .iter()
        .map(|f| {
            std::fs::copy(f, to.join(f.file_name().unwrap())).unwrap();
            f.file_name().unwrap().to_string_lossy().into_owned()
        })
        .collect()
}

/// The JSON header of the safetensors file at `path` (a model, a bundle), as text.
pub fn safetensors_header(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    String::from_utf8_lossy(&bytes[8..8 + len]).into_owned()
}

/// The rows of a CSV file, as header -> value maps.
pub fn csv_rows(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    csv_rows_of(&std::fs::read(path).unwrap())
}

/// The rows of CSV bytes, as header -> value maps.
pub fn csv_rows_of(bytes: &[u8]) -> Vec<std::collections::HashMap<String, String>> {
    let mut reader = csv::Reader::from_reader(bytes);
    let headers = reader.headers().unwrap().clone();
    reader
        .records()
        .map(|r| headers.iter().zip(r.unwrap().iter()).map(|(h, v)| (h.to_string(), v.to_string())).collect())
        .collect()
}

/// The split of a small concrete-crack job: `train` normal images, `calibration` of each label,
/// the rest test.
#[derive(Debug, Clone, Copy)]
pub struct Split {
    pub seed: u64,
    pub train: usize,
    pub calibration: usize,
}

/// Writes `DIR/FILE.toml`: a job named `name` writing to `output` (relative to DIR), over
/// `DIR/data/{Negative,Positive}` with `split`, on the Lite0 weights, with `extra` TOML after it
/// (its `[fit]`, `[sweep]`, `[extract]` ...). Returns the file's path.
pub fn small_job(dir: &Path, file: &str, name: &str, output: &str, split: Split, extra: &str) -> PathBuf {
    let Split { seed, train, calibration } = split;
    let text = format!(
        "[run]\nname = \"{name}\"\noutput = \"{output}\"\n[dataset]\nroot = [\"data\"]\nnormal = [\"Negative\"]\n\
         [split]\nseed = {seed}\ntrain = {{ Negative = {train} }}\n\
         calibration = {{ Negative = {calibration}, Positive = {calibration} }}\n\
         test = {{ Negative = \"rest\", Positive = \"rest\" }}\n\
         [backbone]\nname = \"efficientnet-lite0\"\nweights = \"{}\"\n{extra}\n",
        root().join("weights/efficientnet-lite0.safetensors").display()
    );
    let path = dir.join(format!("{file}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Two runs' `report/metrics.csv` agree: the same rows (of exactly `models`) with the same
/// thresholded counts and AUROC within 1e-9 (a sharded run sums in another order).
pub fn assert_same_metrics(run: &Path, reference: &Path, models: &[&str]) {
    let (a, b) = (csv_rows(&run.join("report/metrics.csv")), csv_rows(&reference.join("report/metrics.csv")));
    assert_eq!(a.len(), b.len());
    let seen: std::collections::BTreeSet<&str> = a.iter().map(|r| r["model"].as_str()).collect();
    assert_eq!(seen, models.iter().copied().collect(), "every model reported");
    for (ra, rb) in a.iter().zip(&b) {
        for column in ["model", "score", "set", "tp", "fp", "tn", "fn"] {
            assert_eq!(ra[column], rb[column], "{column}");
        }
        let (x, y): (f64, f64) = (ra["auroc"].parse().unwrap(), rb["auroc"].parse().unwrap());
        assert!((x - y).abs() < 1e-9, "auroc {x} vs {y}");
    }
}

/// The done markers of a run whose extract ran as `shards` tasks and whose score ran as `shards` x
/// `parts` tasks (`--shard i/N --models j/M`): each names its own shard and part, and no task scored
/// every model.
pub fn assert_shard_markers(run: &Path, shards: u32, parts: u32) {
    let marker = |key: &str| -> serde_json::Value {
        let bytes = std::fs::read(run.join(key)).unwrap_or_else(|e| panic!("{key}: {e}"));
        serde_json::from_slice(&bytes).unwrap()
    };
    for i in 0..shards {
        let tag = format!("{i:05}-of-{shards:05}");
        assert_eq!(marker(&format!("extract/done-{tag}.json"))["shard"], format!("{i}/{shards}"));
        assert!(!run.join(format!("score/done-{tag}.json")).exists(), "score ran whole-model tasks");
        for j in 0..parts {
            let key = format!("score/done-{tag}-models-{j:05}-of-{parts:05}.json");
            assert_eq!(marker(&key)["shard"], format!("{i}/{shards}, models {j}/{parts}"), "{key}");
        }
    }
}

/// The run's HTML page against its `metrics.json`: every embedded picture decodes as a PNG, and
/// every number of the headline section (each a `data-metric` element, naming its entry of
/// `models` by `data-model` and `data-score`, or of the summary) is the file's, as printed; the
/// headline names at least the headline model's threshold, test AUROC, accuracy and confusion counts.
pub fn assert_page_matches_metrics(run: &Path) {
    use base64::Engine;
    let html = std::fs::read_to_string(run.join("report/report.html")).unwrap();
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("report/metrics.json")).unwrap()).unwrap();
    let pictures: Vec<&str> = html.split("src=\"data:image/png;base64,").skip(1).collect();
    assert!(!pictures.is_empty(), "no embedded pictures");
    for encoded in pictures {
        let encoded = &encoded[..encoded.find('"').unwrap()];
        let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap();
        let picture = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).unwrap();
        assert!(picture.width() > 0 && picture.height() > 0);
    }
    let start = html.find("<section id=\"headline\">").expect("the page starts with its headline section");
    let section = &html[start..start + html[start..].find("</section>").unwrap()];
    let attribute = |tag: &str, name: &str| -> Option<String> {
        let from = tag.find(&format!("{name}=\""))? + name.len() + 2;
        Some(tag[from..from + tag[from..].find('"')?].to_string())
    };
    let mut seen = Vec::new();
    for element in section.split("<b ").skip(1) {
        let (tag, rest) = element.split_once('>').unwrap();
        let text = &rest[..rest.find("</b>").unwrap()];
        let metric = attribute(tag, "data-metric").unwrap();
        let entry = match (attribute(tag, "data-model"), attribute(tag, "data-score")) {
            (Some(model), Some(score)) => metrics["models"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["model"] == model.as_str() && m["score"] == score.as_str())
                .unwrap_or_else(|| panic!("no model {model} ({score} score) in metrics.json")),
            _ => &metrics,
        };
        let value = metric.split('.').fold(entry, |v, key| &v[key]);
        let expected = match value.as_u64() {
            Some(count) => count.to_string(),
            None => format!("{:.4}", value.as_f64().unwrap_or_else(|| panic!("{metric}: {value}"))),
        };
        assert_eq!(text, expected, "headline {metric} of {tag}");
        if attribute(tag, "data-model").as_deref() == metrics["headline-model"].as_str() {
            seen.push(metric);
        }
    }
    for metric in [
        "threshold",
        "test.auroc",
        "test.accuracy",
        "test.confusion.tp",
        "test.confusion.fn",
        "forecast.accuracy.low",
        "forecast.accuracy.high",
    ] {
        assert!(seen.iter().any(|m| m == metric), "the headline lacks {metric}: {section}");
    }
    // A sweep's leaderboard comes before the pictures: at most ten experiments, the best (by
    // metrics.json) first, calibration AUROC never rising down the table.
    if let Some(best) = metrics["sweep"]["best"].as_str() {
        let start = html.find("<section id=\"leaderboard\">").expect("a sweep's page has a leaderboard");
        assert!(start < html.find("<h2>Pictures</h2>").unwrap(), "the leaderboard comes before the pictures");
        let board = &html[start..start + html[start..].find("</section>").unwrap()];
        let rows: Vec<Vec<&str>> = board
            .split("<tr><td>")
            .skip(1)
            .map(|row| row.split("</td><td").map(|cell| cell.rsplit('>').next().unwrap_or(cell)).collect())
            .collect();
        let experiments = metrics["sweep"]["experiments"].as_array().unwrap().len();
        assert_eq!(rows.len(), experiments.min(10), "{board}");
        assert_eq!(rows[0][1], best, "{board}");
        let calibration: Vec<f64> = rows.iter().map(|r| r[3].parse().unwrap()).collect();
        assert!(calibration.windows(2).all(|w| w[0] >= w[1]), "{calibration:?}");
    }
}
