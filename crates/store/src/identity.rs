//! The content that stage identities cover in place of paths (see `Job::extract_hash`): the split
//! stage's image manifest, by the digest its done marker records, and the backbone weights, by their
//! SHA-256. The same job run from another folder, mount point or node computes the same digests and
//! so finds its finished shards.

use crate::layout::split::{DONE as SPLIT_DONE_KEY, LISTING as SPLIT_LISTING_KEY, MANIFEST as SPLIT_MANIFEST_KEY};
use crate::{DoneMarker, Store, StoreError};
use padim_core::config::{InputDigests, Job};
use std::path::Path;

/// The job's input digests: the manifest's, from the split stage's done marker (which must be
/// this job's), and the weights'.
pub fn input_digests(job: &Job, store: &Store) -> Result<InputDigests, StoreError> {
    let images = split_digest(job, store)?;
    let weights = weights_digest(&job.backbone.weights, job.backbone.sha256.as_deref())?;
    Ok(InputDigests { images, weights })
}

/// The digest of the job's image manifest, from the split stage's done marker.
pub fn split_digest(job: &Job, store: &Store) -> Result<String, StoreError> {
    let not_ready = || StoreError::NotReady {
        url: store.url_of(SPLIT_DONE_KEY),
        what: "the split stage's manifest of this job's images".into(),
        command: "padim split JOB".into(),
    };
    let marker = DoneMarker::read(store, SPLIT_DONE_KEY)?.ok_or_else(not_ready)?;
    if marker.config_hash != job.split_hash() {
        return Err(not_ready());
    }
    marker.digest.ok_or_else(not_ready)
}

/// The SHA-256 of the weights file: the job's `backbone.sha256` when it states one (the extract
/// stage checks the file against it before loading), else the file's, read through the store's
/// cache for URLs.
pub fn weights_digest(weights: &Path, expected: Option<&str>) -> Result<String, StoreError> {
    if let Some(sha) = expected {
        return Ok(sha.to_lowercase());
    }
    let local = crate::local_copy(weights, None)?;
    padim_core::hash::sha256_file(&local).map_err(|e| StoreError::Local {
        path: weights.to_path_buf(),
        message: format!("cannot read the backbone weights: {e}; run `make weights` or fix `backbone.weights`"),
    })
}

/// Publishes the split stage's outputs: the listing, the manifest (`padim_core::split::manifest_csv`)
/// and last the done marker, create-only, that records the manifest's digest. Returns the digest and
/// what the marker's publication found.
pub fn publish_split(
    store: &Store,
    split_hash: String,
    manifest: Vec<u8>,
    listing: Vec<u8>,
    counts: std::collections::BTreeMap<String, u64>,
) -> Result<(String, crate::Published), StoreError> {
    let digest = padim_core::hash::sha256_hex(&manifest);
    store.put(SPLIT_LISTING_KEY, listing)?;
    store.put(SPLIT_MANIFEST_KEY, manifest)?;
    let marker = DoneMarker {
        stage: "split".into(),
        shard: padim_core::Shard::ALL.to_string(),
        config_hash: split_hash,
        digest: Some(digest.clone()),
        files: vec![SPLIT_MANIFEST_KEY.into(), SPLIT_LISTING_KEY.into()],
        counts,
        // The manifest is its own content: a split redone over the same files changes nothing later.
        run_id: digest.clone(),
        made_from: Default::default(),
    };
    let published = marker.publish(store, SPLIT_DONE_KEY)?;
    Ok((digest, published))
}
