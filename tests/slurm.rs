//! The Slurm template on a real one-node Slurm cluster (Debian's slurm-wlm and munge, started by
//! the test inside a private network namespace by scripts/slurm-cluster.sh): split, a 4-task extract
//! array, a 4-task fit array with the dependent merge, an 8-task score array (4 image shards x 2
//! parts of the models) and the report, chained with `--dependency=afterok`; the results equal an
//! unsharded run's.

use crate::support::{Split, assert_same_metrics, assert_shard_markers, copy_concrete, padim, root, small_job, stdout};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A running test cluster, stopped (daemons killed, namespace deleted) on drop.
struct Cluster {
    dir: PathBuf,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let status = Command::new(root().join("scripts/slurm-cluster.sh")).arg("start").arg(dir).status().unwrap();
        let cluster = Cluster { dir: dir.to_path_buf() };
        assert!(status.success(), "the test cluster did not start (see {}/log)", dir.display());
        cluster
    }

    /// Runs `args` in the cluster's namespace, from `cwd`.
    fn exec(&self, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let mut command = Command::new(root().join("scripts/slurm-cluster.sh"));
        command.arg("exec").arg(&self.dir).args(args).current_dir(cwd);
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/slurm-cluster.sh")).arg("stop").arg(&self.dir).status();
    }
}

fn write_job(dir: &Path, output: &str) -> PathBuf {
    let extra = r#"[extract]
threads = 1
[fit]
subsets = [{ name = "random40", count = 40, seed = 0 }, { name = "random20", count = 20, seed = 1 }]"#;
    small_job(dir, output, "slurm", output, Split { seed: 1, train: 8, calibration: 3 }, extra)
}

#[test]
fn pipeline_runs_as_slurm_array_jobs() {
    let work = tempfile::tempdir().unwrap();
    copy_concrete(work.path(), 16, 8);
    let job = write_job(work.path(), "run-slurm");
    let cluster = Cluster::start(&work.path().join("cluster"));

    let padim_binary = env!("CARGO_BIN_EXE_padim");
    let pipeline = root().join("jobs/slurm/pipeline.sh");
    let submitted = cluster.exec(
        work.path(),
        &[pipeline.to_str().unwrap(), job.to_str().unwrap(), "4", "2"],
        &[("PADIM", padim_binary)],
    );
    let ids = stdout(&submitted);
    assert_eq!(ids.lines().count(), 6, "split, extract[4], fit[4], fit, score[4 x 2], report:\n{ids}");

    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let queue = cluster.exec(work.path(), &["squeue", "-h", "-o", "%i %T %r"], &[]);
        let queue = stdout(&queue);
        if queue.trim().is_empty() {
            break;
        }
        assert!(!queue.contains("DependencyNeverSatisfied"), "a task failed:\n{queue}");
        assert!(Instant::now() < deadline, "the jobs did not finish:\n{queue}");
        std::thread::sleep(Duration::from_millis(500));
    }

    let run = work.path().join("run-slurm");
    let logs: Vec<String> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("slurm-"))
        .map(|p| format!("{}: {}", p.display(), std::fs::read_to_string(&p).unwrap()))
        .collect();
    assert_eq!(logs.len(), 1 + 4 + 4 + 1 + 8 + 1, "one log per task");
    assert!(run.join("report/done.json").is_file(), "the report did not finish; task logs:\n{}", logs.join("\n"));
    // Every array task ran its own shard, taken from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT,
    // and every score task its own (image shard, model part) pair of the 4 x 2.
    assert_shard_markers(&run, 4, 2);
    for i in 0..4 {
        assert!(run.join(format!("fit/partial-done-{i:05}-of-00004.json")).is_file(), "fit task {i}");
    }

    // The same numbers as one unsharded run.
    let whole = write_job(work.path(), "run-whole");
    stdout(&padim(&["run", whole.to_str().unwrap()]));
    assert_same_metrics(&run, &work.path().join("run-whole"), &["random20", "random40"]);
}
