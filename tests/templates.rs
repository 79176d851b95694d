//! The AWS Batch and Kubernetes templates run by local stand-ins for their engines, splitting
//! score into image shards x parts of the models, with the same report as an unsharded run (the
//! Slurm template runs on a real cluster: `slurm`).
//!
//! Batch: `jobs/aws-batch/submit.sh` against `scripts/batch_local.py` (the `aws` on PATH): every
//! request it makes validates against botocore's Batch model, and the recorded jobs run as Batch
//! would (dependencies first, array children with `AWS_BATCH_JOB_ARRAY_INDEX`, the definition's
//! environment with the submission's overrides, `Ref::` parameters filled in). Kubernetes:
//! `jobs/kubernetes/*.yaml`, edited as a user would for 3 shards x 2 model parts and validated against
//! the schemas, run by `scripts/k8s_local.py` (run.sh's order, Indexed Jobs' `JOB_COMPLETION_INDEX`,
//! the containers' commands and environment, the job mounted at `/jobs`).

use crate::support::{
    Split, assert_same_metrics, assert_shard_markers, copy_concrete, copy_templates, padim, root, small_job, stdout,
};
use std::path::Path;
use std::process::Command;

const EXTRA: &str = "[extract]\nthreads = 1\n[fit]\nsubsets = [{ name = \"random40\", count = 40, seed = 0 }, \
                     { name = \"random20\", count = 20, seed = 1 }]";

fn split() -> Split {
    Split { seed: 1, train: 8, calibration: 3 }
}

/// An unsharded run of the same job in `dir/run-whole`, and the sharded run's report against it.
fn assert_equals_one_run(dir: &Path, run: &Path) {
    let whole = small_job(dir, "whole", "whole", "run-whole", split(), EXTRA);
    stdout(&padim(&["run", whole.to_str().unwrap()]));
    assert_same_metrics(run, &dir.join("run-whole"), &["random20", "random40"]);
}

#[test]
fn pipeline_runs_as_aws_batch_array_jobs() {
    let work = tempfile::tempdir().unwrap();
    copy_concrete(work.path(), 16, 8);
    let job = small_job(work.path(), "batch", "batch", "run-batch", split(), EXTRA);

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
        .env("PADIM_IMAGE", "registry.example.com/team/padim:0.1.0")
        .output()
        .unwrap();
    assert!(submitted.status.success(), "submit.sh: {}", String::from_utf8_lossy(&submitted.stderr));
    let definition: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("definition.json")).unwrap()).unwrap();
    assert_eq!(definition["containerProperties"]["image"], "registry.example.com/team/padim:0.1.0");
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
    assert_equals_one_run(work.path(), &run);
}

#[test]
fn pipeline_runs_as_kubernetes_indexed_jobs() {
    let work = tempfile::tempdir().unwrap();
    // The ConfigMap mounted at /jobs: the job file, with the data beside it.
    let jobs = work.path().join("jobs");
    copy_concrete(&jobs, 16, 8);
    std::fs::rename(small_job(&jobs, "job", "k8s", "run-k8s", split(), EXTRA), jobs.join("job.toml")).unwrap();

    // The templates as a user sets them for 3 shards (extract, score) x 2 model parts (score).
    let templates = work.path().join("templates");
    copy_templates(&templates);
    let kubernetes = templates.join("jobs/kubernetes");
    let edit = |file: &str, edits: &[(&str, &str)]| {
        let mut text = std::fs::read_to_string(kubernetes.join(file)).unwrap();
        for (from, to) in edits {
            assert!(text.contains(from), "{file} has no `{from}`");
            text = text.replace(from, to);
        }
        std::fs::write(kubernetes.join(file), text).unwrap();
    };
    edit("extract.yaml", &[("completions: 4", "completions: 3"), ("value: \"4\"", "value: \"3\"")]);
    edit(
        "score.yaml",
        &[("completions: 4", "completions: 6"), ("value: \"4\"", "value: \"3\""), ("value: \"1\"", "value: \"2\"")],
    );
    let python = root().join(".venv/bin/python");
    let validated =
        Command::new(&python).arg(root().join("scripts/validate_templates.py")).arg(&templates).output().unwrap();
    assert!(validated.status.success(), "{}", String::from_utf8_lossy(&validated.stderr));

    let ran = Command::new(&python)
        .arg(root().join("scripts/k8s_local.py"))
        .arg(&kubernetes)
        .arg(&jobs)
        .arg(env!("CARGO_BIN_EXE_padim"))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&ran.stdout);
    assert!(ran.status.success(), "{log}{}", String::from_utf8_lossy(&ran.stderr));
    assert_eq!(log.lines().count(), 1 + 3 + 1 + 3 * 2 + 1, "one line per pod:\n{log}");
    let run = jobs.join("run-k8s");
    assert_shard_markers(&run, 3, 2);
    assert!(run.join("report/done.json").is_file());
    assert_equals_one_run(&jobs, &run);
}
