//! The whole pipeline with its outputs in Azure Blob Storage (`az://`), against Azurite, Microsoft's
//! emulator: the same report as a run on local files, every stage's files in the container, and a
//! rerun that finds every stage done.

use crate::support::azurite::Azurite;
use crate::support::{Split, copy_concrete, padim_with, small_job, stdout};

#[test]
fn pipeline_runs_on_azure_blob_storage() {
    let work = tempfile::tempdir().unwrap();
    copy_concrete(work.path(), 16, 8);
    let split = || Split { seed: 2, train: 8, calibration: 3 };
    let extra = "[fit]\nsubsets = [{ name = \"random40\", count = 40, seed = 0 }]";
    let cloud = small_job(work.path(), "cloud", "azure", "az://padim/run", split(), extra);
    let local = small_job(work.path(), "local", "azure", "run-local", split(), extra);

    let azurite = Azurite::start();
    azurite.create_container("padim");
    let env = azurite.env();
    let out = stdout(&padim_with(&["run", cloud.to_str().unwrap()], &env));
    assert!(out.contains("report done -> az://padim/run/report/report.html"), "{out}");
    stdout(&padim_with(&["run", local.to_str().unwrap()], &[]));

    let blobs = azurite.list("padim");
    for key in ["extract/done-00000-of-00001.json", "fit/model-random40.safetensors", "score/done-00000-of-00001.json"]
    {
        assert!(blobs.contains(&format!("run/{key}")), "run/{key} not in {blobs:?}");
    }
    for file in ["metrics.csv", "scores.csv", "roc.csv"] {
        let here = std::fs::read(work.path().join("run-local/report").join(file)).unwrap();
        assert!(
            azurite.get("padim", &format!("run/report/{file}")) == here,
            "report/{file} differs from the local run"
        );
    }
    // The rerun reads every done marker from the container and redoes nothing.
    let again = stdout(&padim_with(&["run", cloud.to_str().unwrap()], &env));
    for stage in ["split", "extract", "fit", "score"] {
        assert!(again.lines().any(|l| l.starts_with(stage) && l.contains("already done")), "{stage}: {again}");
    }
}
