//! The run manifest: resolved config and hash, every stage's identity, versions, and checksums of
//! the inputs.

use padim_core::config::Job;

/// The run manifest: resolved config and hash, versions, and checksums of the inputs.
pub(crate) fn run_manifest(
    job: &Job,
    digests: &padim_core::config::InputDigests,
    image_rows: &[padim_store::ImageRow],
) -> Vec<u8> {
    let mut images: Vec<String> = image_rows.iter().map(|row| format!("{} {}", row.sha256, row.path)).collect();
    images.sort();
    let inputs = padim_core::hash::sha256_hex(images.join("\n").as_bytes());
    let config: serde_json::Value = serde_json::from_str(&job.to_canonical_json()).unwrap_or_default();
    let manifest = serde_json::json!({
        "job": job.name,
        "config-hash": job.hash(),
        "config": config,
        // What each stage's outputs are, by content (docs/operations.md "Identity, reruns and concurrent tasks").
        "identities": {
            "split": job.split_hash(),
            "extract": job.extract_hash(digests),
            "fit": job.fit_hash(digests),
            "score": job.score_hash(digests),
            "report": job.report_hash(digests),
        },
        "versions": { "padim": env!("CARGO_PKG_VERSION"), "libtorch": "2.13.0" },
        "inputs": {
            "weights-sha256": digests.weights,
            "images": images.len(),
            "images-sha256": inputs,
            "split-manifest-sha256": digests.images,
        },
    });
    serde_json::to_vec_pretty(&manifest).unwrap_or_default()
}
