//! Stage identities: per stage, a SHA-256 over what shapes its values and nothing else (the inputs
//! by content, the settings without execution settings), each covering the one before.

use super::Job;
use super::settings::{DatasetSource, ValueType};
use serde::Serialize;

impl Job {
    /// The dataset part of the identities: which images are taken and how they are labelled, without
    /// the paths where they are found (a moved or remounted dataset is the same dataset; its content
    /// enters through [`InputDigests::images`]).
    fn dataset_identity(&self) -> serde_json::Value {
        let source = match &self.dataset.source {
            DatasetSource::Folders { labels, extensions, .. } => {
                serde_json::json!({ "kind": "folders", "labels": labels, "extensions": extensions })
            }
            DatasetSource::List { .. } => serde_json::json!({ "kind": "list" }),
            DatasetSource::Manifest { .. } => serde_json::json!({ "kind": "manifest" }),
        };
        serde_json::json!({ "source": source, "normal": self.dataset.normal, "mask": self.dataset.mask })
    }

    /// The identity of the split stage's manifest: which images the dataset's listing takes (not
    /// where it is) and the split settings. The files' content is recorded in the manifest itself,
    /// whose digest the later identities cover.
    pub fn split_hash(&self) -> String {
        let upstream = serde_json::json!({ "dataset": self.dataset_identity(), "split": self.split });
        crate::hash::sha256_hex(upstream.to_string().as_bytes())
    }

    /// The identity of the extract stage's outputs: what shapes the embedding values and nothing
    /// else. The images by the digest of their manifest (relative paths, labels, splits, SHA-256 of
    /// every file), the weights by their SHA-256, the pre-processing and the backbone. Execution
    /// settings (threads, device, batch size, `skip-bad`, encoding, compression, row groups, which
    /// channels are stored) and absolute paths are facts of a run, recorded in its manifest, not
    /// part of its identity; skipped images are part of the outputs (the image table). The value
    /// type is part of it when it rounds (f16).
    pub fn extract_hash(&self, inputs: &InputDigests) -> String {
        let upstream = serde_json::json!({
            "dataset": self.dataset_identity(),
            "split": self.split,
            "images": inputs.images,
            "preprocess": self.preprocess,
            "backbone": { "kind": self.backbone.kind, "tap": self.backbone.tap, "weights-sha256": inputs.weights },
        });
        // Rounding to f16 changes the values; f32, the network's own output, adds nothing, so that
        // the identities of runs made before the choice existed stay as they were.
        let mut upstream = upstream;
        if self.extract.dtype != ValueType::F32 {
            upstream["dtype"] = serde_json::json!(self.extract.dtype);
        }
        crate::hash::sha256_hex(upstream.to_string().as_bytes())
    }

    /// The identity of the fit stage's outputs: the extract identity and the fit settings but the
    /// execution settings (memory budget, batch size).
    pub fn fit_hash(&self, inputs: &InputDigests) -> String {
        let upstream = serde_json::json!({
            "extract": self.extract_hash(inputs),
            "fit": without_execution(&self.fit, &["memory-budget-gib", "batch-images"]),
        });
        crate::hash::sha256_hex(upstream.to_string().as_bytes())
    }

    /// The identity of the score stage's outputs: the fit identity and the score settings but the
    /// execution settings (memory budget, batch size).
    pub fn score_hash(&self, inputs: &InputDigests) -> String {
        let upstream = serde_json::json!({
            "fit": self.fit_hash(inputs),
            "score": without_execution(&self.score, &["memory-budget-gib", "batch-images"]),
        });
        crate::hash::sha256_hex(upstream.to_string().as_bytes())
    }

    /// The identity of the report: the score identity and the report settings.
    pub fn report_hash(&self, inputs: &InputDigests) -> String {
        let upstream = serde_json::json!({ "score": self.score_hash(inputs), "report": self.report });
        crate::hash::sha256_hex(upstream.to_string().as_bytes())
    }
}

/// The content of a job's inputs, which the stage identities cover instead of their paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputDigests {
    /// SHA-256 of the split stage's image manifest (relative paths, labels, splits and the SHA-256
    /// of every image).
    pub images: String,
    /// SHA-256 of the backbone weights file.
    pub weights: String,
}

/// A stage's settings as JSON without the named execution settings: a memory budget refuses work
/// or schedules it in passes, a batch size sets how much is read at once; neither changes a result,
/// so neither is part of a stage's identity.
pub(super) fn without_execution(settings: &impl Serialize, keys: &[&str]) -> serde_json::Value {
    let mut value = serde_json::json!(settings);
    if let Some(map) = value.as_object_mut() {
        for key in keys {
            map.remove(*key);
        }
    }
    value
}
