//! A run's identity is its content: execution flags, `--skip-bad`, a moved dataset and racing
//! tasks never strand finished work or clobber it; changed inputs are reported by name.

use crate::support::{Split, copy_concrete, padim, root, small_job, stdout};
use padim_store::{DoneMarker, EmbeddingReader, Store};
use std::path::Path;
use std::process::Command;

const SPLIT: Split = Split { seed: 0, train: 8, calibration: 3 };

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Adds a truncated JPEG and a text file named `.jpg` among the normal images.
fn add_bad_images(data: &Path) {
    let negative = data.join("Negative");
    let mut files: Vec<_> = std::fs::read_dir(&negative).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let bytes = std::fs::read(&files[0]).unwrap();
    std::fs::write(negative.join("zz-truncated.jpg"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(negative.join("zz-text.jpg"), b"this is not an image\n").unwrap();
}

#[test]
fn flags_skip_bad_and_a_moved_dataset_find_finished_work() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    copy_concrete(&first, 16, 8);
    add_bad_images(&first.join("data"));
    let output = dir.path().join("run").display().to_string();
    let extra = "[extract]\nbatch-size = 4\n";
    let job = small_job(&first, "job", "identity", &output, SPLIT, extra);
    let job = job.to_str().unwrap();

    // A bad job file is exit 2 (fix it; a scheduler must not retry), naming the file and key.
    let typo = first.join("typo.toml");
    std::fs::write(&typo, std::fs::read_to_string(job).unwrap().replace("batch-size", "batch-sise")).unwrap();
    let refused = padim(&["run", typo.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("typo.toml") && stderr(&refused).contains("batch-sise"));

    // Strict: both bad files named, nothing published, and the way out is named.
    let strict = padim(&["extract", job, "--threads", "1"]);
    let message = stderr(&strict);
    assert_eq!(strict.status.code(), Some(2), "bad input: not for a scheduler to retry: {message}");
    assert!(message.contains("zz-truncated.jpg") && message.contains("zz-text.jpg"), "{message}");
    assert!(message.contains("--skip-bad"), "{message}");
    // Doing exactly what it says, with other execution flags, then the rest of the pipeline.
    let skipped = stdout(&padim(&["extract", job, "--threads", "1", "--skip-bad"]));
    assert!(skipped.contains("done: 24 images, 2 skipped"), "{skipped}");
    let again = stdout(&padim(&["extract", job, "--threads", "2", "--device", "cpu"]));
    assert!(again.contains("already done"), "{again}");
    let run = stdout(&padim(&["run", job, "--threads", "2"]));
    for stage in ["split already done", "extract already done", "fit done", "report done"] {
        assert!(run.contains(stage), "`{stage}` in:\n{run}");
    }
    let metrics = std::fs::read(dir.path().join("run/report/metrics.json")).unwrap();
    // The report counts what it left out, in metrics.json and at the top of the page.
    let summary: serde_json::Value = serde_json::from_slice(&metrics).unwrap();
    let skipped = summary["left-out"]["skipped"].as_object().unwrap();
    assert_eq!(skipped.values().map(|v| v.as_u64().unwrap()).sum::<u64>(), 2, "{skipped:?}");
    let mut files: Vec<&str> =
        summary["left-out"]["skipped-files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    files.sort();
    assert_eq!(files, ["Negative/zz-text.jpg", "Negative/zz-truncated.jpg"]);
    let html = std::fs::read_to_string(dir.path().join("run/report/report.html")).unwrap();
    assert!(html.contains("Left out of the metrics: <b>2</b> image(s) skipped"), "the page says what it left out");

    // The dataset moves (another mount point, another node): the same job there finds every stage
    // done, and the report redrawn from the new place gives the same numbers.
    std::fs::create_dir_all(&second).unwrap();
    std::fs::rename(first.join("data"), second.join("data")).unwrap();
    let moved = small_job(&second, "job", "identity", &output, SPLIT, extra);
    let moved = moved.to_str().unwrap();
    let rerun = stdout(&padim(&["run", moved]));
    for stage in ["split already done", "extract already done", "fit already done", "report already done"] {
        assert!(rerun.contains(stage), "`{stage}` in:\n{rerun}");
    }
    stdout(&padim(&["report", moved, "--force"]));
    let redrawn = std::fs::read(dir.path().join("run/report/metrics.json")).unwrap();
    assert!(redrawn == metrics, "the report redrawn from the new place gives the same metrics.json");

    // A forced stage makes what was made from it stale: the next stage says so and redoes its work,
    // and so on down (with the same numbers: the inputs did not change).
    // (The first extraction ran on one thread: libtorch's sums depend on the thread count, in the
    // last bits, so the same one gives the same numbers bit for bit.)
    stdout(&padim(&["extract", moved, "--skip-bad", "--force", "--threads", "1"]));
    let fit = padim(&["fit", moved]);
    assert!(stdout(&fit).contains("fit done"), "{}", stdout(&fit));
    assert!(stderr(&fit).contains("is stale") && stderr(&fit).contains("extract/done-"), "{}", stderr(&fit));
    let report_first = padim(&["report", moved]);
    assert!(!report_first.status.success(), "the scores were made from the old fit");
    assert!(stderr(&report_first).contains("is stale") && stderr(&report_first).contains("padim score JOB"));
    let rerun = stdout(&padim(&["run", moved]));
    assert!(rerun.contains("fit already done") && rerun.contains("report done"), "{rerun}");
    let redone = std::fs::read(dir.path().join("run/report/metrics.json")).unwrap();
    assert!(redone == metrics, "the same numbers after the forced extraction");

    // An image added after the split is reported by name, with what to rerun.
    let data = second.join("data");
    let extra_image = root().join("../shared/data/concrete-crack/Positive");
    let mut spare: Vec<_> = std::fs::read_dir(&extra_image).unwrap().map(|e| e.unwrap().path()).collect();
    spare.sort();
    let added = data.join("Positive/added-later.jpg");
    std::fs::copy(spare.last().unwrap(), &added).unwrap();
    let refused = padim(&["run", moved]);
    let message = stderr(&refused);
    assert_eq!(refused.status.code(), Some(2), "{message}");
    assert!(message.contains("1 file(s) added") && message.contains("Positive/added-later.jpg"), "{message}");
    assert!(message.contains("padim split JOB --force"), "{message}");
    std::fs::remove_file(&added).unwrap();
    // A file replaced in place is found when it is read again: named, with what to rerun.
    let mut positives: Vec<_> = std::fs::read_dir(data.join("Positive")).unwrap().map(|e| e.unwrap().path()).collect();
    positives.sort();
    std::fs::copy(spare.last().unwrap(), &positives[0]).unwrap();
    let replaced = padim(&["extract", moved, "--skip-bad", "--force"]);
    let message = stderr(&replaced);
    assert!(!replaced.status.success(), "{message}");
    let name = positives[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(message.contains(&name) && message.contains("changed after the split"), "{message}");
}

#[test]
fn racing_tasks_of_one_shard_leave_one_winner_intact() {
    let dir = tempfile::tempdir().unwrap();
    copy_concrete(dir.path(), 6, 6);
    let output = dir.path().join("run").display().to_string();
    let a = small_job(dir.path(), "a", "race", &output, SPLIT_SMALL, "");
    let b = small_job(dir.path(), "b", "race", &output, SPLIT_SMALL, "[preprocess]\nresize = [240, 240]\n");
    let spawn = |job: &Path| {
        Command::new(env!("CARGO_BIN_EXE_padim"))
            .args(["extract", job.to_str().unwrap(), "--shard", "0/1", "--threads", "1", "--quiet"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Two configurations at once: exactly one wins; the other fails and says why.
    let (task_a, task_b) = (spawn(&a), spawn(&b));
    let (out_a, out_b) = (task_a.wait_with_output().unwrap(), task_b.wait_with_output().unwrap());
    assert_ne!(out_a.status.success(), out_b.status.success(), "{}\n{}", stderr(&out_a), stderr(&out_b));
    let loser = if out_a.status.success() { stderr(&out_b) } else { stderr(&out_a) };
    assert!(
        loser.contains("claims this shard") || loser.contains("other inputs or settings"),
        "the loser names the conflict: {loser}"
    );
    // The winner's marker and files stand together.
    let store = Store::open(&output).unwrap();
    let marker = DoneMarker::read(&store, "extract/done-00000-of-00001.json").unwrap().unwrap();
    let reader = EmbeddingReader::open(&store, "extract/embeddings-00000-of-00001.parquet", Some(&[]), 1).unwrap();
    assert_eq!(reader.meta().config_hash, marker.config_hash);
    assert!(!store.exists("extract/claim-00000-of-00001.json").unwrap(), "the winner withdrew its claim");
    // The same configuration twice at once: both report the shard as done.
    let other = dir.path().join("other-run").display().to_string();
    let c = small_job(dir.path(), "c", "race", &other, SPLIT_SMALL, "");
    let (task_1, task_2) = (spawn(&c), spawn(&c));
    for out in [task_1.wait_with_output().unwrap(), task_2.wait_with_output().unwrap()] {
        assert!(out.status.success(), "{}", stderr(&out));
    }
}

const SPLIT_SMALL: Split = Split { seed: 0, train: 3, calibration: 1 };

#[test]
fn split_groups_keep_parts_together_and_name_missing_images() {
    let dir = tempfile::tempdir().unwrap();
    copy_concrete(dir.path(), 16, 8);
    let names = |label: &str| {
        let mut files: Vec<String> = std::fs::read_dir(dir.path().join("data").join(label))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        files
    };
    // Normal parts of 4 views, defective parts of 2, interleaved so that path order divides them.
    let mut groups = String::from("path,group\n");
    for (i, name) in names("Negative").iter().enumerate() {
        groups += &format!("Negative/{name},normal-{}\n", i % 4);
    }
    for (i, name) in names("Positive").iter().enumerate() {
        groups += &format!("Positive/{name},defect-{}\n", i % 4);
    }
    std::fs::write(dir.path().join("groups.csv"), &groups).unwrap();
    let split = Split { seed: 0, train: 8, calibration: 4 };
    let job = small_job(dir.path(), "job", "groups", "run", split, "[report]\nscore = \"auto\"\n");
    let text = std::fs::read_to_string(&job).unwrap().replace("test = {", "groups = \"groups.csv\"\ntest = {");
    std::fs::write(&job, text).unwrap();
    let job = job.to_str().unwrap();

    let done = stdout(&padim(&["split", job]));
    assert!(done.contains("train/Negative 8") && done.contains("0 unused"), "{done}");
    let group_of: std::collections::HashMap<String, String> =
        groups.lines().skip(1).map(|l| l.split_once(',').unwrap()).map(|(p, g)| (p.into(), g.into())).collect();
    let mut split_of: std::collections::HashMap<String, String> = Default::default();
    let rows = crate::support::csv_rows(&dir.path().join("run/split/manifest.csv"));
    assert_eq!(rows.len(), 24);
    for row in &rows {
        let group = &group_of[&row["path"]];
        let previous = split_of.insert(group.clone(), row["split"].clone());
        assert!(previous.is_none_or(|p| p == row["split"]), "group {group} is in two splits");
    }
    let count = |split: &str| rows.iter().filter(|r| r["split"] == split).count();
    assert_eq!((count("train"), count("calibration"), count("test")), (8, 8, 8));
    // The report's bootstrap resamples the calibration split's groups whole: its 4 defect-free
    // images are one group, its 4 defective ones two.
    let out = stdout(&padim(&["run", job]));
    assert!(out.contains("report done"), "{out}");
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("run/report/metrics.json")).unwrap()).unwrap();
    let choices = metrics["choices"].as_array().unwrap();
    assert!(!choices.is_empty(), "{metrics}");
    for choice in choices {
        let expected = serde_json::json!({ "unit": "groups", "anomalous": 2, "normal": 1 });
        assert_eq!(choice["resampled"], expected, "{choice}");
    }

    // The groups are part of the split's identity by content: other groups are another split.
    std::fs::write(dir.path().join("groups.csv"), groups.replace(",normal-3", ",normal-2")).unwrap();
    let refused = padim(&["split", job]);
    assert!(stderr(&refused).contains("another dataset selection or split configuration"), "{}", stderr(&refused));
    // An image without a group is named, and nothing is published.
    let missing = groups.lines().filter(|l| !l.starts_with("Positive/")).collect::<Vec<_>>().join("\n");
    std::fs::write(dir.path().join("groups.csv"), missing + "\n").unwrap();
    let refused = padim(&["split", job, "--force"]);
    let message = stderr(&refused);
    assert_eq!(refused.status.code(), Some(2), "{message}");
    assert!(message.contains("groups.csv gives no group for 8 image(s)"), "{message}");
    assert!(message.contains(&format!("Positive/{}", names("Positive")[0])), "{message}");
    assert!(!dir.path().join("run/split/done.json").exists(), "a refused split publishes nothing");
}
