//! Chaos: each stage in turn killed with SIGKILL at 20 seeded random moments, each kill followed by
//! a plain rerun. After every kill nothing half-written is visible (every Parquet, safetensors and
//! JSON file under the run is whole, every done marker's files exist), and the final tables equal a
//! clean run's byte for byte. (Cutting the S3 endpoint mid-stage is `s3::outage_...`'s part.)

use crate::support::{Split, copy_concrete, padim, small_job, stdout};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const KILLS: usize = 20;
const STAGES: [&str; 5] = ["split", "extract", "fit", "score", "report"];

/// A seeded uniform number in [0, 1) (xorshift64*), so that every run kills at the same moments.
fn uniform(state: &mut u64) -> f64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() { stack.push(path) } else { out.push(path) }
        }
    }
    out.sort();
    out
}

/// Nothing half-written is visible: staging files (`KEY#N`) are not outputs; every other Parquet file
/// has its footer, every safetensors file its whole header and data, every JSON file parses, and the
/// files a done marker lists exist.
fn assert_nothing_half_written(run: &Path, moment: &str) {
    for path in files_under(run) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.contains('#') {
            continue; // object_store's staging files, invisible to every listing
        }
        let bytes = std::fs::read(&path).unwrap();
        let what = format!("{} after {moment}", path.display());
        if name.ends_with(".parquet") {
            assert!(bytes.len() >= 8 && bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"), "{what}: not whole");
        } else if name.ends_with(".safetensors") {
            let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            let json: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header]).unwrap();
            let end = json.as_object().unwrap().values().filter_map(|t| t["data_offsets"][1].as_u64()).max();
            assert_eq!(8 + header + end.unwrap_or(0) as usize, bytes.len(), "{what}: not whole");
        } else if name.ends_with(".json") {
            let value: serde_json::Value =
                serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{what}: not whole JSON: {e}"));
            if name.starts_with("done") || name.starts_with("partial-done") {
                for file in value["files"].as_array().unwrap() {
                    assert!(run.join(file.as_str().unwrap()).is_file(), "{what}: names a missing {file}");
                }
            }
        }
    }
}

#[test]
fn stages_killed_at_random_moments_rerun_to_the_clean_tables() {
    let dir = tempfile::tempdir().unwrap();
    copy_concrete(dir.path(), 200, 100);
    let split = Split { seed: 3, train: 100, calibration: 25 };
    // A 128x128 input and one 40-channel model: every stage does all of its work, four times faster
    // than at 224 (the kills and reruns are the subject here, not the resolution).
    let small = "[preprocess]\nresize = [144, 144]\ncrop = [128, 128]\n\
                 [fit]\nsubsets = [{ name = \"c40\", count = 40, seed = 0 }]\n";
    let clean = small_job(dir.path(), "clean", "chaos", "run-clean", split, small);
    let chaos = small_job(dir.path(), "chaos", "chaos", "run-chaos", split, small);
    let (clean, chaos) = (clean.to_str().unwrap(), chaos.to_str().unwrap());

    for stage in STAGES {
        stdout(&padim(&[stage, clean]));
    }

    let mut state = 0x5EED_0013_u64;
    let run = dir.path().join("run-chaos");
    for stage in STAGES {
        // The stage done once, so that each kill interrupts a redo; timed, and the time stretched by
        // any slower rerun, so that the kills fall within the stage's run however loaded the machine.
        let clock = Instant::now();
        stdout(&padim(&[stage, chaos]));
        let mut duration = clock.elapsed();
        let mut interrupted = 0;
        for kill in 0..KILLS {
            let at = duration.mul_f64(uniform(&mut state));
            let mut child = Command::new(env!("CARGO_BIN_EXE_padim"))
                .args([stage, chaos, "--force", "--quiet"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(at);
            let killed = child.try_wait().unwrap().is_none();
            if killed {
                child.kill().unwrap(); // SIGKILL
                interrupted += 1;
            }
            child.wait().unwrap();
            let moment = format!("{stage} killed at {:.2} s (kill {kill})", at.as_secs_f64());
            assert_nothing_half_written(&run, &moment);
            let clock = Instant::now();
            let rerun = padim(&[stage, chaos]);
            assert!(rerun.status.success(), "{moment}, then the rerun: {}", String::from_utf8_lossy(&rerun.stderr));
            duration = duration.max(clock.elapsed()); // slower now: the machine is busier
        }
        // The moments fall within the stage's run: most kills interrupt it.
        assert!(interrupted >= KILLS / 4, "{stage}: only {interrupted} of {KILLS} kills interrupted it");
        eprintln!("chaos: {stage} killed mid-run {interrupted} times of {KILLS}");
    }
    // Everything downstream of the last forced stage is current; the tables equal the clean run's.
    let last = stdout(&padim(&["run", chaos]));
    assert!(last.contains("report already done"), "{last}");
    let clean_run = dir.path().join("run-clean");
    let mut compared = 0;
    for path in files_under(&clean_run) {
        let key = path.strip_prefix(&clean_run).unwrap();
        let name = key.to_string_lossy();
        let table = name.ends_with(".parquet") || name.ends_with(".csv") || name.starts_with("fit/model-");
        if table || name == "report/metrics.json" {
            let theirs = std::fs::read(run.join(key)).unwrap_or_else(|e| panic!("{name} in the chaos run: {e}"));
            assert!(std::fs::read(&path).unwrap() == theirs, "{name} differs from the clean run's");
            compared += 1;
        }
    }
    assert!(compared >= 12, "compared {compared} files");
}
