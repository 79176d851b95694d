//! `padim init`: its guesses on each data set in `../shared/data`, its refusals, and a folder of
//! real images taken to a report with two commands (`init`, then `run`).

use crate::support::{copy_first, padim, root, stdout};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn shared(name: &str) -> PathBuf {
    let path = root().join("../shared/data").join(name);
    assert!(path.is_dir(), "{} is absent: the init tests need the shared data sets", path.display());
    path
}

fn weights() -> String {
    root().join("weights/efficientnet-lite1.safetensors").display().to_string()
}

/// `padim init DIR --output JOB --weights W --run-dir RUN` in `cwd`.
fn init(cwd: &Path, dir: &Path, job: &Path, extra: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_padim"));
    command.current_dir(cwd).arg("init").arg(dir).arg("--output").arg(job).args(["--weights", &weights()]);
    command.args(extra).output().unwrap()
}

fn job_toml(job: &Path) -> toml::Table {
    toml::from_str(&std::fs::read_to_string(job).unwrap()).unwrap()
}

fn table_str(table: &toml::Table, section: &str, key: &str) -> toml::Value {
    table[section][key].clone()
}

#[test]
fn init_guesses_each_shared_data_set_and_refuses_what_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();

    // Concrete cracks: Negative is normal by its name; 1,500 + 1,500 images take the recipe's counts.
    let job = cwd.join("concrete.toml");
    let out = stdout(&init(cwd, &shared("concrete-crack"), &job, &["--run-dir", "runs/concrete"]));
    assert!(out.contains("Negative (1500), Positive (1500)"), "{out}");
    assert!(out.contains("normal:   Negative (its name says so); anomalous: Positive"), "{out}");
    assert!(out.contains("train 250 normal; calibration 100 normal + 100 anomalous; test 1000 + 1000"), "{out}");
    assert!(out.contains("227 x 227 px") && out.contains("masks:    none found"), "{out}");
    assert!(out.contains(&format!("next: padim run {}", job.display())), "{out}");
    let table = job_toml(&job);
    assert_eq!(table_str(&table, "dataset", "normal"), toml::Value::from(vec!["Negative"]));
    assert_eq!(table["split"]["test"]["Positive"].as_integer(), Some(1000));
    assert_eq!(table_str(&table, "backbone", "name").as_str(), Some("efficientnet-lite1"));
    // The same folder again: the file exists, so it is refused unless forced.
    let again = init(cwd, &shared("concrete-crack"), &job, &[]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert!(init(cwd, &shared("concrete-crack"), &job, &["--force"]).status.success());

    // 10,000 images: the recipe's counts, the rest unused.
    let out = stdout(&init(cwd, &shared("concrete-crack-scale"), &cwd.join("scale.toml"), &[]));
    assert!(out.contains("test 1000 + 1000 (the reference recipe's sizes, seed 0); 7550 images unused"), "{out}");

    // Magnetic tiles: MT_Free by its name, masks beside the images (not images themselves),
    // non-square tiles stretched, the recipe's proportions scaled to 952 + 392 images.
    let job = cwd.join("tiles.toml");
    let out = stdout(&init(cwd, &shared("magnetic-tile"), &job, &[]));
    assert!(out.contains("normal:   MT_Free (its name says so)"), "{out}");
    assert!(out.contains("`{stem}.png` beside each image") && out.contains("MT_Crack 57"), "{out}");
    assert!(out.contains("train 176 normal; calibration 71 normal + 36 anomalous; test 705 + 356"), "{out}");
    assert!(out.contains("stretched (not square"), "{out}");
    let table = job_toml(&job);
    assert_eq!(table_str(&table, "dataset", "mask").as_str(), Some("{stem}.png"));
    assert_eq!(table_str(&table, "dataset", "extensions"), toml::Value::from(vec!["jpg"]));
    assert_eq!(table["split"]["test"]["MT_Fray"].as_str(), Some("rest"));
    let config = stdout(&padim(&["config", job.to_str().unwrap()]));
    assert!(config.contains("MT_Free"), "the written job loads: {config}");

    // DeepCrack: every image has a crack, its masks lie in sibling folders: no normal label.
    let out = init(cwd, &shared("deepcrack"), &cwd.join("deepcrack.toml"), &[]);
    let message = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{message}");
    assert!(message.contains("which label is normal (defect-free) among test_img (237), train_img (300)"), "{message}");
    assert!(message.contains("test_lab, train_lab") && message.contains("--normal LABEL"), "{message}");
    assert!(!cwd.join("deepcrack.toml").exists());

    // A label that is not there, and a folder of loose images.
    let out = init(cwd, &shared("concrete-crack"), &cwd.join("x.toml"), &["--normal", "Good"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--normal Good: ") && out.status.code() == Some(2));
    let loose = cwd.join("loose");
    copy_first(&shared("concrete-crack").join("Negative"), &loose, 3, "jpg");
    let out = init(cwd, &loose, &cwd.join("loose.toml"), &[]);
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(message.contains("no sub-folder with images (3 images lie directly in it)"), "{message}");
}

#[test]
fn a_folder_of_real_images_reaches_its_report_in_two_commands() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    // Magnetic tiles as a user keeps them: label folders with images and masks in Imgs/.
    let tiles = cwd.join("my-tiles");
    for (label, n) in [("MT_Free", 45), ("MT_Blowhole", 14), ("MT_Crack", 12)] {
        let from = shared("magnetic-tile").join(label).join("Imgs");
        let names = copy_first(&from, &tiles.join(label).join("Imgs"), n, "jpg");
        for name in names {
            let mask = Path::new(&name).with_extension("png");
            std::fs::copy(from.join(&mask), tiles.join(label).join("Imgs").join(&mask)).unwrap();
        }
    }
    // The default job file is my-tiles.toml in the current folder, the run runs/my-tiles.
    let out = Command::new(env!("CARGO_BIN_EXE_padim"))
        .current_dir(cwd)
        .args(["init", "my-tiles", "--weights", &weights()])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(text.contains("train 20 normal; calibration 10 normal + 10 anomalous; test 15 + 16"), "{text}");
    let job = cwd.join("my-tiles.toml");
    let run = Command::new(env!("CARGO_BIN_EXE_padim"))
        .current_dir(cwd)
        .args(["run", "my-tiles.toml", "--quiet"])
        .output()
        .unwrap();
    let text = stdout(&run);
    assert!(text.contains("report done"), "{text}");
    let report = cwd.join("runs/my-tiles/report");
    assert!(report.join("report.html").is_file() && report.join("bundle.safetensors").is_file());
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("metrics.json")).unwrap()).unwrap();
    // Every test image was scored, and the masks (all-zero ones of the normal tiles too) gave pixel metrics.
    let headline = metrics["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == metrics["headline-model"] && m["score"] == metrics["headline-score"])
        .unwrap();
    assert_eq!((headline["test"]["normal"].as_u64(), headline["test"]["anomalous"].as_u64()), (Some(15), Some(16)));
    assert_eq!(metrics["pixel"]["images"].as_u64(), Some(31), "{}", metrics["pixel"]);
    assert!(job.is_file());

    // Concrete cracks as downloaded (Negative/, Positive/), the job written where asked.
    let concrete = cwd.join("cracks");
    copy_first(&shared("concrete-crack").join("Negative"), &concrete.join("Negative"), 40, "jpg");
    copy_first(&shared("concrete-crack").join("Positive"), &concrete.join("Positive"), 20, "jpg");
    let job = cwd.join("jobs/cracks.toml");
    std::fs::create_dir_all(job.parent().unwrap()).unwrap();
    let text = stdout(&init(cwd, &concrete, &job, &[]));
    assert!(text.contains("train 20 normal; calibration 10 normal + 10 anomalous; test 10 + 10"), "{text}");
    let text = stdout(&padim(&["run", job.to_str().unwrap()]));
    let count = |name: &str| -> u32 {
        let at = text.find(&format!("{name} ")).unwrap_or_else(|| panic!("no {name} in {text}")) + name.len() + 1;
        text[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    assert_eq!((count("TP") + count("FN"), count("TN") + count("FP")), (10, 10), "every test image is counted: {text}");
    assert!(
        cwd.join("runs/cracks/report/report.html").is_file(),
        "the run location is runs/NAME of the current folder"
    );
}
