//! Loading a safetensors export of a PyTorch `state_dict` by name, strictly.
//!
//! Every tensor the network asks for must be present with the right shape, and every tensor in the
//! file must be used (BatchNorm's `num_batches_tracked` counters aside, which inference ignores).
//! All problems are collected and reported together, by name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot read weights file {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error(
        "weights file {path} does not fit the {network} network:{missing}{unexpected}{shapes}\n\
         Export the weights with scripts/export_weights.py for this backbone."
    )]
    Mismatch { path: PathBuf, network: String, missing: String, unexpected: String, shapes: String },
    #[error("weights file {path} has SHA-256 {actual}, but the job expects {expected}")]
    Checksum { path: PathBuf, actual: String, expected: String },
}

impl WeightsError {
    /// The same error naming `location` (the URL a local cached copy was made from).
    pub fn named(self, location: &Path) -> WeightsError {
        if location.to_str().is_none_or(|l| !l.contains("://")) {
            return self;
        }
        let path = location.to_path_buf();
        match self {
            WeightsError::Read { message, .. } => WeightsError::Read { path, message },
            WeightsError::Mismatch { network, missing, unexpected, shapes, .. } => {
                WeightsError::Mismatch { path, network, missing, unexpected, shapes }
            }
            WeightsError::Checksum { actual, expected, .. } => WeightsError::Checksum { path, actual, expected },
        }
    }
}

/// The named tensors of a weights file, handed out once each to the network being built.
pub struct Weights {
    path: PathBuf,
    tensors: BTreeMap<String, Tensor>,
    device: Device,
    missing: Vec<String>,
    shapes: Vec<String>,
}

impl Weights {
    /// Reads a safetensors file onto `device`, as f32.
    pub fn load(path: &Path, device: Device) -> Result<Weights, WeightsError> {
        let read_error = |message: String| WeightsError::Read { path: path.to_path_buf(), message };
        if !path.is_file() {
            return Err(read_error(
                "no such file; run `make weights` (or scripts/export_weights.py) to create it".into(),
            ));
        }
        let tensors = Tensor::read_safetensors(path).map_err(|e| read_error(e.to_string()))?;
        let tensors = tensors.into_iter().map(|(name, tensor)| (name, tensor.to_kind(Kind::Float))).collect();
        Ok(Weights { path: path.to_path_buf(), tensors, device, missing: Vec::new(), shapes: Vec::new() })
    }

    /// Takes the tensor `name`, which must have `shape`. On a problem, records it and returns zeros so
    /// that building continues and every problem is reported at once by [`Weights::finish`].
    pub fn take(&mut self, name: &str, shape: &[i64]) -> Tensor {
        match self.tensors.remove(name) {
            Some(tensor) if tensor.size() == shape => tensor.to_device(self.device),
            Some(tensor) => {
                self.shapes.push(format!("{name}: file has {:?}, network needs {shape:?}", tensor.size()));
                Tensor::zeros(shape, (Kind::Float, self.device))
            }
            None => {
                self.missing.push(name.to_string());
                Tensor::zeros(shape, (Kind::Float, self.device))
            }
        }
    }

    /// Fails if any tensor was missing, misshapen, or left unused.
    pub fn finish(self, network: &str) -> Result<(), WeightsError> {
        let unexpected: BTreeSet<&String> =
            self.tensors.keys().filter(|name| !name.ends_with("num_batches_tracked")).collect();
        if self.missing.is_empty() && unexpected.is_empty() && self.shapes.is_empty() {
            return Ok(());
        }
        let list = |title: &str, items: Vec<String>| {
            if items.is_empty() {
                String::new()
            } else {
                let shown: Vec<String> = items.iter().take(20).cloned().collect();
                let more = if items.len() > 20 { format!(" and {} more", items.len() - 20) } else { String::new() };
                format!("\n  {title} ({}): {}{more}", items.len(), shown.join(", "))
            }
        };
        Err(WeightsError::Mismatch {
            path: self.path,
            network: network.to_string(),
            missing: list("missing tensors", self.missing),
            unexpected: list("unexpected tensors", unexpected.into_iter().cloned().collect()),
            shapes: list("wrong shapes", self.shapes),
        })
    }
}

/// Checks a file's SHA-256 against the expected one and returns the actual digest.
pub fn verify_checksum(path: &Path, expected: Option<&str>) -> Result<String, WeightsError> {
    let actual = padim_core::hash::sha256_file(path)
        .map_err(|e| WeightsError::Read { path: path.to_path_buf(), message: e.to_string() })?;
    match expected {
        Some(expected) if expected != actual => {
            Err(WeightsError::Checksum { path: path.to_path_buf(), actual, expected: expected.to_string() })
        }
        _ => Ok(actual),
    }
}
