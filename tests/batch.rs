//! The AWS Batch template (`jobs/aws-batch/submit.sh`) run against a local stand-in for Batch
//! (`scripts/batch_local.py`, the `aws` on PATH): every request it makes validates against
//! botocore's Batch model, and running the recorded jobs as Batch would (dependencies first, array
//! children with `AWS_BATCH_JOB_ARRAY_INDEX`, the definition's environment with the submission's
//! overrides, `Ref::` parameters filled in) gives 3 image shards x 2 parts of the models whose report
//! equals an unsharded run's.

use crate::support::{Split, assert_same_metrics, assert_shard_markers, copy_first, padim, root, small_job, stdout};
use std::process::Command;

#[test]
fn pipeline_runs_as_aws_batch_array_jobs() {
    let work = tempfile::tempdir().unwrap();
    let data = root().join("../shared/data/concrete-crack");
    copy_first(&data.join("Negative"), &work.path().join("data/Negative"), 16, "jpg");
    copy_first(&data.join("Positive"), &work.path().join("data/Positive"), 8, "jpg");
    let extra = "[extract]\nthreads = 1\n[fit]\nsubsets = [{ name = \"random40\", count = 40, seed = 0 }, \
                 { name = \"random20\", count = 20, seed = 1 }]";
    let split = || Split { seed: 1, train: 8, calibration: 3 };
    let job = small_job(work.path(), "batch", "batch", "run-batch", split(), extra);

    let python = root().join(".venv/bin/python");
    let emulator = root().join("scripts/batch_local.py");
    let bin = work.path().join("bin");
    let state = work.path().join("state");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let shim = format!("#!/bin/sh\nexec '{}' '{}' aws \"$@\"\n", python.display(), emulator.display());
    std::fs::write(bin.join("aws"), shim).unwrap();
    Command::new("chmod").arg("+x").arg(bin.join("aws")).status().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());

    let submitted = Command::new(root().join("jobs/aws-batch/submit.sh"))
        .args(["queue", job.to_str().unwrap(), "3", "2"])
        .current_dir(work.path())
        .env("PATH", &path)
        .env("BATCH_LOCAL_STATE", &state)
        .output()
        .unwrap();
    assert!(submitted.status.success(), "submit.sh: {}", String::from_utf8_lossy(&submitted.stderr));
    let jobs = std::fs::read_to_string(state.join("jobs.jsonl")).unwrap();
    let names: Vec<String> =
        jobs.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["jobName"].to_string()).collect();
    assert_eq!(
        names.join(" "),
        r#""padim-split" "padim-extract" "padim-fit" "padim-score-0" "padim-score-1" "padim-report""#
    );
    let report: serde_json::Value = serde_json::from_str(jobs.lines().last().unwrap()).unwrap();
    assert_eq!(report["dependsOn"].as_array().unwrap().len(), 2, "the report waits for both score parts");

    let ran = Command::new(&python)
        .arg(&emulator)
        .args(["run", env!("CARGO_BIN_EXE_padim")])
        .current_dir(work.path())
        .env("BATCH_LOCAL_STATE", &state)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&ran.stdout);
    assert!(ran.status.success(), "{log}{}", String::from_utf8_lossy(&ran.stderr));
    assert_eq!(log.lines().count(), 1 + 3 + 1 + 3 * 2 + 1, "one line per task:\n{log}");

    let run = work.path().join("run-batch");
    assert_shard_markers(&run, 3, 2);
    assert!(run.join("report/done.json").is_file());

    let whole = small_job(work.path(), "whole", "batch", "run-whole", split(), extra);
    stdout(&padim(&["run", whole.to_str().unwrap()]));
    assert_same_metrics(&run, &work.path().join("run-whole"), &["random20", "random40"]);
}
