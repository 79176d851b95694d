//! A `[sweep]` job: every experiment is fitted and scored in one pass, and each experiment's numbers
//! equal those of a job that runs that experiment alone; the decision table aggregates over seeds;
//! scoring split into model parts (`--models`) or memory passes (`score.memory-budget-gib`) writes
//! the same results. `scripts/replicates.py`, the other way to compare settings, tabulates real runs.

use crate::support::{Split, copy_concrete, copy_stages, csv_rows, padim, small_job, stdout};
use std::path::Path;

fn write_job(dir: &Path, name: &str, extra: &str) -> std::path::PathBuf {
    small_job(dir, name, name, name, Split { seed: 4, train: 10, calibration: 4 }, extra)
}

#[test]
fn sweep_experiments_equal_each_experiment_alone() {
    let dir = tempfile::tempdir().unwrap();
    copy_concrete(dir.path(), 20, 10);
    let sweep = write_job(
        dir.path(),
        "sweep",
        "[fit]\nsubsets = []\n[sweep]\ncounts = [20, \"all\"]\nseeds = [0, 1]\nlayers = [\"1+2+3\", \"2+3\"]\n\
         covariances = [\"sample\", \"oas\"]\n[report]\nscore = \"auto\"\n",
    );
    let out = stdout(&padim(&["run", sweep.to_str().unwrap()]));
    assert!(out.contains("fit done: 10 training images, 12 model(s)"), "{out}");

    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("sweep/report/metrics.json")).unwrap()).unwrap();
    let table = &metrics["sweep"];
    let ids: Vec<&str> = table["experiments"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "c020-s0-l123",
            "c020-s1-l123",
            "c020-s0-l123-oas",
            "c020-s1-l123-oas",
            "all-l123",
            "all-l123-oas",
            "c020-s0-l23",
            "c020-s1-l23",
            "c020-s0-l23-oas",
            "c020-s1-l23-oas",
            "all-l23",
            "all-l23-oas"
        ]
    );
    let experiment =
        |id: &str| table["experiments"].as_array().unwrap().iter().find(|e| e["id"] == id).unwrap().clone();
    assert_eq!(experiment("all-l123")["channels"], 176);
    assert_eq!(experiment("all-l23")["channels"], 152, "layers 2 and 3 of Lite0: 40 + 112 channels");
    assert!(experiment("c020-s0-l123")["score-cpu-seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(experiment("all-l23-oas")["covariance"], "oas");
    // Groups: two seeds of 20 channels per layer combination and estimator, one experiment of all
    // channels.
    let groups = table["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 8);
    let pair =
        groups.iter().find(|g| g["layers"] == "2+3" && g["channels"] == 20 && g["covariance"] == "sample").unwrap();
    assert_eq!(pair["experiments"], 2);
    let (a, b) = (
        experiment("c020-s0-l23")["test-auroc"].as_f64().unwrap(),
        experiment("c020-s1-l23")["test-auroc"].as_f64().unwrap(),
    );
    assert!((pair["test-auroc-mean"].as_f64().unwrap() - (a + b) / 2.0).abs() < 1e-12);
    assert!((pair["test-auroc-std"].as_f64().unwrap() - (a - b).abs() / 2f64.sqrt()).abs() < 1e-12);
    // Each experiment classifies with the score `auto` chose on calibration: the mean unless the
    // bootstrap interval of another's AUROC difference lies above zero; its metrics are that score's.
    for choice in metrics["choices"].as_array().unwrap() {
        let e = experiment(choice["model"].as_str().unwrap());
        let candidates = choice["candidates"].as_array().unwrap();
        let clearly: Vec<&serde_json::Value> =
            candidates.iter().filter(|c| c["interval"][0].as_f64().unwrap() > 0.0).collect();
        let expected = clearly
            .iter()
            .max_by(|a, b| {
                a["calibration-auroc"].as_f64().unwrap().total_cmp(&b["calibration-auroc"].as_f64().unwrap())
            })
            .map_or("mean", |c| c["score"].as_str().unwrap());
        assert_eq!(choice["chosen"], expected, "{choice}");
        assert_eq!(e["score"], expected);
        // The candidates' AUROC (Mann-Whitney on raw scores) is the metrics' (ROC of normalised ones).
        let chosen = candidates.iter().find(|c| c["score"] == expected).unwrap()["calibration-auroc"].as_f64().unwrap();
        assert!((e["calibration-auroc"].as_f64().unwrap() - chosen).abs() < 1e-12, "{e} {choice}");
        assert_eq!(e[format!("calibration-auroc-{expected}-score").as_str()], e["calibration-auroc"]);
    }
    // The best experiment is the one with the highest calibration AUROC, and the report's headline.
    let best = table["best"].as_str().unwrap();
    let top = ids.iter().map(|id| experiment(id)["calibration-auroc"].as_f64().unwrap()).fold(0f64, f64::max);
    assert_eq!(experiment(best)["calibration-auroc"].as_f64().unwrap(), top);
    assert_eq!(metrics["headline-model"], best);
    assert_eq!(metrics["headline-score"], experiment(best)["score"]);
    let rows = csv_rows(&dir.path().join("sweep/report/sweep.csv"));
    assert_eq!(rows.len(), 12);
    assert!(dir.path().join("sweep/report/sweep-auroc.png").is_file());

    // Three experiments alone: a random subset of layers 2+3, every channel, and every channel of
    // layers 2+3 with OAS (a job whose fit.covariance is OAS).
    let sweep_metrics = csv_rows(&dir.path().join("sweep/report/metrics.csv"));
    for (id, subset, covariance) in [
        ("c020-s1-l23", "{ name = \"c020-s1-l23\", count = 20, seed = 1, layers = [2, 3] }", "sample"),
        ("all-l123", "{ name = \"all-l123\", all = true }", "sample"),
        ("all-l23-oas", "{ name = \"all-l23-oas\", all = true, layers = [2, 3] }", "oas"),
    ] {
        let fit = format!("[fit]\nsubsets = [{subset}]\ncovariance = \"{covariance}\"\n");
        let alone = write_job(dir.path(), &format!("alone-{id}"), &fit);
        stdout(&padim(&["run", alone.to_str().unwrap()]));
        let metrics = csv_rows(&dir.path().join(format!("alone-{id}/report/metrics.csv")));
        assert_eq!(metrics.len(), 6, "mean, max and top, calibration and test");
        for row in &metrics {
            let theirs = sweep_metrics
                .iter()
                .find(|r| r["model"] == id && r["score"] == row["score"] && r["set"] == row["set"])
                .unwrap();
            for column in ["tp", "fp", "tn", "fn"] {
                assert_eq!(row[column], theirs[column], "{id} {column}");
            }
            for column in ["auroc", "aupr", "threshold", "accuracy", "f1"] {
                let (x, y): (f64, f64) = (row[column].parse().unwrap(), theirs[column].parse().unwrap());
                assert!((x - y).abs() <= 1e-9 * x.abs().max(1.0), "{id} {column}: alone {x}, in the sweep {y}");
            }
        }
        // The image scores too.
        let scores = |path: &Path| -> Vec<(String, f64)> {
            csv_rows(path)
                .into_iter()
                .filter(|r| r["model"] == id)
                .map(|r| (r["path"].clone(), r["mean"].parse().unwrap()))
                .collect()
        };
        let (alone, swept) = (
            scores(&dir.path().join(format!("alone-{id}/report/scores.csv"))),
            scores(&dir.path().join("sweep/report/scores.csv")),
        );
        assert_eq!(alone.len(), swept.len());
        for ((pa, a), (pb, b)) in alone.iter().zip(&swept) {
            assert_eq!(pa, pb);
            assert!((a - b).abs() <= 1e-9 * a.abs(), "{pa}: {a} vs {b}");
        }
    }
}

/// The sweep's experiments scored in `--models` parts (and in two extract shards): the report needs
/// every part, and then equals the one-task report.
#[test]
fn sweep_scored_in_model_parts_or_passes_equals_one_task() {
    let dir = tempfile::tempdir().unwrap();
    copy_concrete(dir.path(), 16, 8);
    // Batches of 5 images: a shard's 12 images in 3 batches, so that the order of rows matters.
    let extra = "[fit]\nsubsets = []\n[sweep]\ncounts = [10, 30]\nseeds = [0, 1]\n[score]\nbatch-images = 5\n";
    let whole = write_job(dir.path(), "whole", extra);
    let parts = write_job(dir.path(), "parts", extra);
    let budget = write_job(dir.path(), "budget", &format!("{extra}memory-budget-gib = 0.03\n"));
    // The runs share the same two extract shards (copied: the same bytes), so that only the
    // scoring differs.
    let whole = whole.to_str().unwrap();
    stdout(&padim(&["split", whole]));
    for i in 0..2 {
        stdout(&padim(&["extract", whole, "--shard", &format!("{i}/2")]));
    }
    stdout(&padim(&["run", whole]));
    let whole_run = dir.path().join("whole");
    copy_stages(&whole_run, &dir.path().join("parts"), &["split", "extract"]);
    copy_stages(&whole_run, &dir.path().join("budget"), &["split", "extract", "fit"]);
    let parts = parts.to_str().unwrap();
    stdout(&padim(&["fit", parts]));
    // Four models in three parts (2, 1, 1), each part over both extract shards.
    for part in ["0/3", "2/3"] {
        let out = stdout(&padim(&["score", parts, "--models", part]));
        assert!(out.contains("score done: 24 images x"), "{out}");
    }
    let refused = padim(&["report", parts]);
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && message.contains("shard(s) 0, 1 of 2"), "{message}");
    stdout(&padim(&["score", parts, "--models", "1/3"]));
    let too_many = padim(&["score", parts, "--models", "0/5"]);
    let message = String::from_utf8_lossy(&too_many.stderr);
    assert!(message.contains("models part 0/5 holds none of the fit's 4 model(s)"), "{message}");
    stdout(&padim(&["report", parts]));
    // Part 0/1 is the whole: the outputs of a score without --models (what templates pass for M = 1).
    stdout(&padim(&["score", parts, "--models", "0/1", "--shard", "0/2"]));
    assert!(dir.path().join("parts/score/done-00000-of-00002.json").is_file());
    assert!(!dir.path().join("parts/score/done-00000-of-00002-models-00000-of-00001.json").exists());
    let read =
        |name: &str, file: &str| std::fs::read_to_string(dir.path().join(name).join("report").join(file)).unwrap();
    for file in ["metrics.csv", "scores.csv", "roc.csv"] {
        assert_eq!(read("whole", file), read("parts", file), "{file}");
    }
    let rows = |name: &str| csv_rows(&dir.path().join(name).join("report/sweep.csv"));
    let (a, b) = (rows("whole"), rows("parts"));
    assert_eq!(a.len(), 4);
    for (x, y) in a.iter().zip(&b) {
        for column in ["id", "channels", "calibration_auroc", "test_auroc", "accuracy", "model_bytes"] {
            assert_eq!(x[column], y[column], "{column}");
        }
        assert!(y["score_cpu_seconds"].parse::<f64>().unwrap() > 0.0);
    }

    // Models that do not fit score.memory-budget-gib together are scored in several passes over
    // the embeddings, to the same files byte for byte (rows are written model by model). The four
    // models are ~1 MB (10 channels) and ~11 MB (30) on the 56x56 grid; 0.03 GiB holds the two small
    // ones together, each large one alone.
    let budget = budget.to_str().unwrap();
    let out = stdout(&padim(&["score", budget]));
    assert!(out.contains("models (3 passes per shard within score.memory-budget-gib)"), "{out}");
    for file in ["scores-00000-of-00002", "maps-00000-of-00002", "scores-00001-of-00002", "maps-00001-of-00002"] {
        let read = |run: &str| std::fs::read(dir.path().join(run).join(format!("score/{file}.parquet"))).unwrap();
        assert!(read("whole") == read("budget"), "{file} differs from the one-pass run");
    }
    // A model that does not fit alone is refused by name, before any work.
    let tiny =
        std::fs::read_to_string(budget).unwrap().replace("memory-budget-gib = 0.03", "memory-budget-gib = 0.001");
    std::fs::write(budget, tiny).unwrap();
    let refused = padim(&["score", budget, "--force"]);
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{message}");
    assert!(message.contains("fit/model-") && message.contains("over score.memory-budget-gib = 0.001"), "{message}");
}

/// A sweep over backbones: one run per backbone under `<output>/backbones/<name>/` (its own
/// extraction at its own input size), and the job's report compares them: every experiment of
/// every backbone, the headline the best by calibration AUROC across them, with its run's bundle.
/// A rerun reuses every stage of every backbone.
#[test]
fn sweep_over_backbones_extracts_each_once_and_compares_them() {
    let dir = tempfile::tempdir().unwrap();
    copy_concrete(dir.path(), 16, 8);
    let weights = |name: &str| crate::support::root().join(format!("weights/{name}.safetensors")).display().to_string();
    let extra = format!(
        "[fit]\nsubsets = []\n[sweep]\ncounts = [\"all\"]\nlayers = [\"1+2+3\", \"2+3\"]\nbackbones = [\n\
         {{ name = \"efficientnet-lite0\", weights = \"{}\" }},\n\
         {{ name = \"efficientnet-lite1\", weights = \"{}\", resize = [272, 272], crop = [240, 240] }},\n]\n\
         [report]\nscore = \"auto\"\n",
        weights("efficientnet-lite0"),
        weights("efficientnet-lite1")
    );
    let job = write_job(dir.path(), "backbones", &extra);
    let out = stdout(&padim(&["run", job.to_str().unwrap()]));
    assert!(
        out.contains("efficientnet-lite0: extract done") && out.contains("efficientnet-lite1: extract done"),
        "{out}"
    );
    let run = dir.path().join("backbones");
    let read = |path: &Path| -> serde_json::Value { serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap() };
    let metrics = read(&run.join("report/metrics.json"));

    // Each backbone's run is a run of its own, at its own input size.
    let header =
        crate::support::safetensors_header(&run.join("backbones/efficientnet-lite1/fit/model-all-l23.safetensors"));
    assert!(header.contains("efficientnet-lite1") && header.contains("input-height\\\":240"), "{header}");

    // Every experiment of every backbone, as its own run's report has it.
    let experiments = metrics["sweep"]["experiments"].as_array().unwrap();
    let ids: Vec<&str> = experiments.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "efficientnet-lite0/all-l123",
            "efficientnet-lite0/all-l23",
            "efficientnet-lite1/all-l123",
            "efficientnet-lite1/all-l23"
        ]
    );
    for e in experiments {
        let (backbone, id) = e["id"].as_str().unwrap().split_once('/').unwrap();
        assert_eq!(e["backbone"], backbone);
        let own = read(&run.join(format!("backbones/{backbone}/report/metrics.json")));
        let theirs = own["sweep"]["experiments"].as_array().unwrap().iter().find(|x| x["id"] == id).unwrap().clone();
        for key in ["calibration-auroc", "test-auroc", "accuracy", "score", "channels"] {
            assert_eq!(e[key], theirs[key], "{backbone}/{id} {key}");
        }
    }
    assert_eq!(metrics["sweep"]["groups"].as_array().unwrap().len(), 4);
    // The headline: the best by calibration AUROC across backbones, with that run's bundle.
    let best = metrics["sweep"]["best"].as_str().unwrap();
    let top = experiments.iter().map(|e| e["calibration-auroc"].as_f64().unwrap()).fold(0f64, f64::max);
    let best_experiment = experiments.iter().find(|e| e["id"] == best).unwrap();
    assert_eq!(best_experiment["calibration-auroc"].as_f64().unwrap(), top);
    let (backbone, model) = best.split_once('/').unwrap();
    assert!(out.contains(&format!("\n{best} (")), "the headline line names {best}: {out}");
    assert_eq!((metrics["backbone"].as_str(), metrics["headline-model"].as_str()), (Some(backbone), Some(model)));
    assert_eq!(metrics["headline-score"], best_experiment["score"]);
    assert_eq!(
        std::fs::read(run.join("report/bundle.safetensors")).unwrap(),
        std::fs::read(run.join(format!("backbones/{backbone}/report/bundle.safetensors"))).unwrap()
    );
    crate::support::assert_page_matches_metrics(&run);

    // A rerun reuses every stage of every backbone and the comparison.
    let again = stdout(&padim(&["run", job.to_str().unwrap()]));
    assert_eq!(again.matches("extract already done").count(), 2, "{again}");
    assert_eq!(again.matches("fit already done").count(), 2, "{again}");
    assert!(again.contains("report already done"), "{again}");
}

/// `scripts/replicates.py` (docs/results.md "Crop or whole image"): every (arm, seed) is an ordinary run of
/// the base job on the replicates' data root with the split redrawn by that seed and the arm's keys
/// replaced; the tables it prints are those runs' own headlines and their mean +- sd and paired
/// wins; a key the base job lacks is refused by name.
#[test]
fn replicates_redraw_the_split_per_seed_and_table_each_runs_headline() {
    let dir = tempfile::tempdir().unwrap();
    copy_concrete(dir.path(), 24, 12);
    let base = write_job(
        dir.path(),
        "base",
        "[preprocess]\nresize = [224, 224]\ncrop = [224, 224]\n\
         [fit]\nsubsets = [{ name = \"all-l23\", all = true, layers = [2, 3] }]\n",
    );
    let reps = dir.path().join("reps");
    let replicates = |arms: &[&[&str]]| {
        let (data, out) = (dir.path().join("data"), reps.to_str().unwrap().to_string());
        let mut args = vec!["--job", base.to_str().unwrap(), "--root", data.to_str().unwrap(), "--seeds", "1", "2"];
        args.extend(["--out", &out, "--padim", env!("CARGO_BIN_EXE_padim")]);
        for arm in arms {
            args.push("--arm");
            args.extend(*arm);
        }
        crate::support::python::script_output("replicates.py", &args)
    };
    let output = replicates(&[&["r224=preprocess.resize=[224, 224]"], &["r256=preprocess.resize=[256, 256]"]]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let out = String::from_utf8_lossy(&output.stdout).into_owned();

    // The generated jobs: the seed and the arm's value replaced, nothing else of the base lost.
    let job = |arm: &str, seed: u32| std::fs::read_to_string(reps.join(format!("{arm}-s{seed}.toml"))).unwrap();
    assert!(job("r256", 2).contains("seed = 2\n") && job("r256", 2).contains("resize = [256, 256]\n"));
    assert!(job("r224", 1).contains("seed = 1\n") && job("r224", 1).contains("crop = [224, 224]\n"));
    // Arms share each seed's split; seeds redraw it.
    let split = |arm: &str, seed: u32| -> Vec<(String, String)> {
        let mut rows: Vec<_> = csv_rows(&reps.join(format!("{arm}-s{seed}/split/manifest.csv")))
            .into_iter()
            .map(|r| (r["path"].clone(), r["split"].clone()))
            .collect();
        rows.sort();
        rows
    };
    assert_eq!(split("r224", 1), split("r256", 1));
    assert_eq!(split("r224", 2), split("r256", 2));
    assert_ne!(split("r224", 1), split("r224", 2));

    // Each row is that run's headline (its report's own model and score choice).
    let headline = |arm: &str, seed: u32| -> (String, f64, f64, f64) {
        let path = reps.join(format!("{arm}-s{seed}/report/metrics.json"));
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let row = m["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["model"] == m["headline-model"] && r["score"] == m["headline-score"])
            .unwrap()
            .clone();
        let value = |split: &str, key: &str| row[split][key].as_f64().unwrap();
        (
            format!("{} ({})", row["model"].as_str().unwrap(), row["score"].as_str().unwrap()),
            value("calibration", "auroc"),
            value("test", "auroc"),
            value("test", "accuracy"),
        )
    };
    for arm in ["r224", "r256"] {
        for seed in [1, 2] {
            let (model, calibration, test, accuracy) = headline(arm, seed);
            let row = format!("| {arm} | {seed} | {model} | {calibration:.4} | {test:.4} | {accuracy:.4} |");
            assert!(out.lines().any(|line| line == row), "no row `{row}` in:\n{out}");
        }
    }
    // The summary: mean +- sample sd over seeds, and the seeds where an arm beats the first arm.
    let spread = |values: [f64; 2]| {
        let mean = (values[0] + values[1]) / 2.0;
        let sd = ((values[0] - mean).powi(2) + (values[1] - mean).powi(2)).sqrt();
        format!("{mean:.4} ± {sd:.4}")
    };
    let (a1, a2, b1, b2) = (headline("r224", 1), headline("r224", 2), headline("r256", 1), headline("r256", 2));
    let wins = (b1.3 > a1.3) as u32 + (b2.3 > a2.3) as u32;
    for (arm, x, y, above) in [("r224", &a1, &a2, "-".to_string()), ("r256", &b1, &b2, format!("{wins} of 2"))] {
        let row =
            format!("| {arm} | {} | {} | {} | {above} |", spread([x.1, y.1]), spread([x.2, y.2]), spread([x.3, y.3]));
        assert!(out.lines().any(|line| line == row), "no row `{row}` in:\n{out}");
    }

    // Threshold rules: each replicate's report redone per rule (the runs above are reused), kept as
    // RUN/rules/RULE.json, and a row per rule of what those reports say; the run's own report is
    // the job's again afterwards.
    let output = {
        let (data, out) = (dir.path().join("data"), reps.to_str().unwrap().to_string());
        let args = [
            "--job",
            base.to_str().unwrap(),
            "--root",
            data.to_str().unwrap(),
            "--seeds",
            "1",
            "2",
            "--out",
            &out,
            "--padim",
            env!("CARGO_BIN_EXE_padim"),
            "--arm",
            "r40=preprocess.resize=[40, 40]",
            "preprocess.crop=[40, 40]",
            "--rules",
            "youden",
            "eer",
        ];
        crate::support::python::script_output("replicates.py", &args)
    };
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    let entry = |path: std::path::PathBuf| -> serde_json::Value {
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let models = m["models"].as_array().unwrap();
        models.iter().find(|r| r["model"] == m["headline-model"] && r["score"] == m["headline-score"]).unwrap().clone()
    };
    for rule in ["youden", "eer"] {
        let entries: Vec<serde_json::Value> =
            (1..=2).map(|seed| entry(reps.join(format!("r40-s{seed}/rules/{rule}.json")))).collect();
        let accuracy: Vec<f64> = entries.iter().map(|e| e["test"]["accuracy"].as_f64().unwrap()).collect();
        assert!(entries.iter().all(|e| e["threshold-rule"] == rule), "{rule}: {entries:?}");
        let rate = |e: &serde_json::Value, bad: &str, good: &str| {
            let c = &e["test"]["confusion"];
            c[bad].as_f64().unwrap() / (c[bad].as_f64().unwrap() + c[good].as_f64().unwrap()).max(1.0)
        };
        let mean = (accuracy[0] + accuracy[1]) / 2.0;
        let sd = ((accuracy[0] - mean).powi(2) + (accuracy[1] - mean).powi(2)).sqrt();
        let tenth = accuracy[0].min(accuracy[1]) + 0.1 * (accuracy[0] - accuracy[1]).abs();
        let fpr = entries.iter().map(|e| rate(e, "fp", "tn")).sum::<f64>() / 2.0;
        let fnr = entries.iter().map(|e| rate(e, "fn", "tp")).sum::<f64>() / 2.0;
        let held = entries
            .iter()
            .zip(&accuracy)
            .filter(|(e, a)| {
                let f = &e["forecast"]["accuracy"];
                f["low"].as_f64().unwrap() <= **a && **a <= f["high"].as_f64().unwrap()
            })
            .count();
        let start = format!("| r40 | {rule} | {mean:.4} | {sd:.4} | {tenth:.4} | {fpr:.4} | {fnr:.4} | ");
        let line = out.lines().find(|l| l.starts_with(&start)).unwrap_or_else(|| panic!("no `{start}` in:\n{out}"));
        assert!(line.contains(&format!("| {held} of 2 |")), "{line}");
    }
    for seed in [1, 2] {
        assert_eq!(entry(reps.join(format!("r40-s{seed}/report/metrics.json")))["threshold-rule"], "kde");
    }

    // An arm that names a key the base job does not have is refused, naming it, before any run.
    std::fs::remove_dir_all(&reps).unwrap();
    let output = replicates(&[&["x=score.top-fraction=0.05"]]);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && err.contains("no `top-fraction` in [score]"), "{err}");
    assert!(!reps.join("x-s1").exists());
}
