//! Running `scripts/reference.py` (the PyTorch references) from tests and benchmarks; std only, so
//! that every crate's benchmarks can include it with `#[path]`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `scripts/reference.py ARGS...`: see [`script`].
pub fn reference<S: AsRef<OsStr>>(args: &[S]) -> String {
    script("reference.py", args)
}

/// Runs `scripts/NAME ARGS...` with the project's Python: see [`script_output`]. Panics with its
/// stderr if it fails; returns its stdout.
pub fn script<S: AsRef<OsStr>>(name: &str, args: &[S]) -> String {
    let output = script_output(name, args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `scripts/NAME ARGS...` with the project's Python (`PADIM_PYTHON`, else `.venv/bin/python`)
/// and the same allocator settings as padim's (see `tune_allocator`), so that both sides are
/// measured without glibc's per-batch unmapping; returns how it ended, success or not.
pub fn script_output<S: AsRef<OsStr>>(name: &str, args: &[S]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = std::env::var("PADIM_PYTHON").map(PathBuf::from).unwrap_or_else(|_| root.join(".venv/bin/python"));
    Command::new(&python)
        .arg(root.join("scripts").join(name))
        .args(args)
        .env("MALLOC_MMAP_THRESHOLD_", "1073741824")
        .env("MALLOC_TRIM_THRESHOLD_", "1073741824")
        .output()
        .unwrap()
}
