//! Helpers shared by the extract crate's integration tests: the project's Python (PyTorch reference)
//! and paths of the repository.
// Tests may unwrap and print: a failure is the point, and the output is the measurement.
#![allow(clippy::unwrap_used, clippy::print_stderr, dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

/// The project's virtual environment's Python (made by `make setup`), or `PADIM_PYTHON`.
pub fn python() -> PathBuf {
    let path = std::env::var_os("PADIM_PYTHON").map(PathBuf::from).unwrap_or_else(|| root().join(".venv/bin/python"));
    assert!(path.exists(), "{} not found: run `make setup` to create the project's Python environment", path.display());
    path
}

/// Runs a script of `scripts/` with the project's Python and returns its standard output.
pub fn run_script(script: &str, args: &[&str]) -> String {
    let output =
        Command::new(python()).arg(root().join("scripts").join(script)).args(args).output().expect("run python");
    assert!(output.status.success(), "{script} {args:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Exports seeded random weights of `backbone` into `dir` and returns the file.
pub fn random_weights(dir: &Path, backbone: &str, seed: u64) -> PathBuf {
    let out = dir.join(format!("{backbone}-random-{seed}.safetensors"));
    run_script(
        "export_weights.py",
        &["--backbone", backbone, "--source", "random", "--seed", &seed.to_string(), "--out", out.to_str().unwrap()],
    );
    out
}

/// The shared real data folder beside this checkout (the tests fail without it, naming it).
pub fn shared_data() -> PathBuf {
    let path = root().join("../shared/data");
    assert!(path.is_dir(), "{} is absent: the real-image tests need the shared data", path.display());
    path
}

/// Reads named tensors from a safetensors file.
pub fn read_tensors(path: &Path) -> std::collections::HashMap<String, tch::Tensor> {
    tch::Tensor::read_safetensors(path).expect("read safetensors").into_iter().collect()
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a - b).abs().max().double_value(&[])
}

pub fn max_abs(a: &tch::Tensor) -> f64 {
    a.abs().max().double_value(&[])
}
