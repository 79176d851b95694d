//! The split stage: hash every file of the dataset, assign seeded disjoint splits (identical files
//! together) when the job has a `[split]`, and publish the image manifest `split/manifest.csv` with
//! a done marker that records its digest. Every job has one: the manifest numbers the images every
//! stage works on and fixes their content (paths relative to the dataset's base, SHA-256 of each
//! file), so that the later stage identities cover the data by content, not by where it lies.
//!
//! Its own crate, without libtorch: extract makes a missing split itself, and the binary runs it as
//! `padim split`.

use padim_core::Progress;
use padim_core::config::Job;
use padim_core::dataset::{DatasetError, ImageRecord, list_images_in};
use padim_core::split::{ManifestRow, SplitError, SplitInput, assign, manifest_csv, read_manifest_csv};
use padim_store::layout::counts as layout_counts;
use padim_store::layout::split::{
    DONE as SPLIT_DONE_KEY, LISTING as SPLIT_LISTING_KEY, MANIFEST as SPLIT_MANIFEST_KEY,
};
use padim_store::{DoneMarker, Gate, GateRules, InputFiles, Inputs, Published, Store, StoreError};
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

/// How many files (changed, or without a group) an error lists by name.
const LISTED_CHANGES: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum SplitStageError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// (Not a `source`: the message holds it, and an error chain would print it twice.)
    #[error("{job}: {error}")]
    Split { job: String, error: Box<SplitError> },
    #[error("{url} was made by another dataset selection or split configuration; use --force to redo it")]
    ConfigMismatch { url: String },
    #[error("{url} is missing or from another configuration: run `padim split JOB` (or `padim run JOB`) first")]
    NotSplit { url: String },
    #[error(
        "the dataset changed since its split ({url}): {added} file(s) added{added_list}, {removed} removed{removed_list}. \
         Rerun `padim split JOB --force`: extraction and every later stage then redo their work, since their \
         identities cover the manifest"
    )]
    DatasetChanged { url: String, added: usize, added_list: String, removed: usize, removed_list: String },
    #[error(
        "{file} gives no group for {missing} image(s) of the dataset ({list}); split.groups must name every \
         image: add a line `path,group` for each (paths relative to the dataset's base, as split/listing.csv has them)"
    )]
    Ungrouped { file: String, missing: usize, list: String },
    #[error(transparent)]
    ReadManifest(#[from] padim_core::split::ManifestError),
    #[error(
        "another task split the dataset at the same time and saw other files ({url}); rerun `padim split JOB --force`"
    )]
    RacedSplit { url: String },
    #[error(
        "{url} does not match the digest its done marker records (written by another task?); rerun \
         `padim split JOB --force`"
    )]
    ManifestDigest { url: String },
}

impl SplitStageError {
    /// Whether a rerun later may succeed (a storage failure), see [`StoreError::is_transient`].
    pub fn is_transient(&self) -> bool {
        matches!(self, SplitStageError::Store(e) if e.is_transient())
    }
}

/// What the split stage did: images per split and label, and the images no split took.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitSummary {
    pub counts: BTreeMap<String, u64>,
    pub unused: usize,
    pub already_done: bool,
}

/// Choices of one invocation of the split stage.
#[derive(Debug, Clone, Default)]
pub struct SplitOptions {
    /// Redo the split even if it is marked done, or marked done by another configuration.
    pub force: bool,
}

/// Runs the split stage of the job. When it is done already, the dataset is listed again and any
/// file added or removed since is reported (replaced files are found by the extract stage, which
/// checks each file it reads against the manifest's SHA-256). Steps: the gate, hashing, the groups,
/// the manifest, publishing it.
pub fn run_split(job: &Job, options: &SplitOptions, progress: &dyn Progress) -> Result<SplitSummary, SplitStageError> {
    let span = tracing::info_span!("split", job = %job.name);
    let _entered = span.enter();
    let store = Store::open(&job.output)?;
    let hash = job.split_hash();
    let images = list_images_in(&job.dataset, &InputFiles)?;
    let rules = GateRules { force: options.force, inputs: Inputs::Unchecked, refuse_other: true };
    match DoneMarker::gate(&store, SPLIT_DONE_KEY, &hash, rules)? {
        // A marker without the manifest's digest is of an older format: another configuration.
        Gate::Current(marker) if marker.digest.is_some() => {
            check_unchanged(job, &store, &images)?;
            return Ok(summary_of(marker, true));
        }
        Gate::Current(_) | Gate::Conflict(_) => {
            return Err(SplitStageError::ConfigMismatch { url: store.url_of(SPLIT_DONE_KEY) });
        }
        Gate::Redo { marker: Some(_), .. } => store.delete(SPLIT_DONE_KEY)?,
        Gate::Redo { marker: None, .. } => {}
    }
    let mut inputs = hash_images(&images, progress)?;
    let relative = |path: &std::path::Path| job.dataset.relative_path(path);
    let listing: Vec<ManifestRow> = images
        .iter()
        .zip(&inputs)
        .map(|(record, input)| ManifestRow {
            path: relative(&record.path),
            label: record.label.clone(),
            split: record.split.clone(),
            sha256: input.sha256.clone(),
        })
        .collect();
    assign_groups(job, &mut inputs, &listing)?;
    let manifest: Vec<ManifestRow> = match &job.split {
        Some(settings) => assign(&inputs, settings)
            .map_err(|error| SplitStageError::Split { job: job.name.clone(), error: Box::new(error) })?
            .into_iter()
            .map(|a| ManifestRow {
                path: relative(&a.path),
                label: a.label,
                split: Some(a.split.to_string()),
                sha256: a.sha256,
            })
            .collect(),
        // Without a [split] every listed image is used, in listing order.
        None => listing.clone(),
    };
    publish(&store, hash, (&manifest, &listing), images.len())
}

/// Every image's SHA-256, read in chunks (object stores: many requests in flight), hashed in
/// parallel.
fn hash_images(images: &[ImageRecord], progress: &dyn Progress) -> Result<Vec<SplitInput>, SplitStageError> {
    progress.start("split (hashing)", images.len() as u64);
    let mut inputs: Vec<SplitInput> = Vec::with_capacity(images.len());
    for chunk in images.chunks(64) {
        let paths: Vec<&std::path::Path> = chunk.iter().map(|r| r.path.as_path()).collect();
        let contents = padim_store::read_inputs(&paths);
        let hashed: Result<Vec<SplitInput>, StoreError> = chunk
            .par_iter()
            .zip(contents)
            .map(|(record, bytes)| {
                let sha256 = padim_core::hash::sha256_hex(&bytes?);
                Ok(SplitInput { path: record.path.clone(), label: record.label.clone(), sha256, group: None })
            })
            .collect();
        inputs.extend(hashed?);
        progress.advance(chunk.len() as u64);
    }
    progress.finish();
    Ok(inputs)
}

/// Gives every image its `split.groups` group; an image the file does not name is an error.
fn assign_groups(job: &Job, inputs: &mut [SplitInput], listing: &[ManifestRow]) -> Result<(), SplitStageError> {
    let Some(groups) = job.split.as_ref().and_then(|s| s.groups.as_ref()) else { return Ok(()) };
    let mut missing = Vec::new();
    for (input, row) in inputs.iter_mut().zip(listing) {
        input.group = groups.of.get(&row.path).cloned();
        if input.group.is_none() {
            missing.push(row.path.as_str());
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let more = if missing.len() > LISTED_CHANGES { ", ..." } else { "" };
    let list = missing.iter().take(LISTED_CHANGES).copied().collect::<Vec<_>>().join(", ");
    Err(SplitStageError::Ungrouped {
        file: groups.path.display().to_string(),
        missing: missing.len(),
        list: format!("{list}{more}"),
    })
}

/// Publishes the manifest and the listing under a done marker with the counts per split and label.
fn publish(
    store: &Store,
    hash: String,
    (manifest, listing): (&[ManifestRow], &[ManifestRow]),
    listed: usize,
) -> Result<SplitSummary, SplitStageError> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for row in manifest {
        *counts.entry(layout_counts::split_label(row.split.as_deref().unwrap_or("all"), &row.label)).or_default() += 1;
    }
    let unused = listed - manifest.len();
    let mut marker_counts = counts.clone();
    marker_counts.insert(layout_counts::UNUSED.into(), unused as u64);
    let (digest, published) = padim_store::identity::publish_split(
        store,
        hash,
        manifest_csv(manifest),
        manifest_csv(listing),
        marker_counts,
    )?;
    if let Published::AlreadyDone(other) = published
        && other.digest.as_deref() != Some(digest.as_str())
    {
        // Another task split other files at the same moment: the manifest is now one of the two.
        return Err(SplitStageError::RacedSplit { url: store.url_of(SPLIT_DONE_KEY) });
    }
    tracing::info!(images = manifest.len(), unused, "split done");
    Ok(SplitSummary { counts, unused, already_done: false })
}

fn summary_of(marker: DoneMarker, already_done: bool) -> SplitSummary {
    let unused = marker.count(layout_counts::UNUSED) as usize;
    let mut counts = marker.counts;
    counts.remove(layout_counts::UNUSED);
    SplitSummary { counts, unused, already_done }
}

/// Compares the dataset's listing now with the one recorded by the split: files added or removed
/// (by path relative to the dataset's base, and label) are an error that names them.
fn check_unchanged(job: &Job, store: &Store, images: &[ImageRecord]) -> Result<(), SplitStageError> {
    let url = store.url_of(SPLIT_LISTING_KEY);
    let bytes = store.get(SPLIT_LISTING_KEY)?.ok_or_else(|| SplitStageError::NotSplit { url: url.clone() })?;
    let recorded: BTreeSet<(String, String)> = read_manifest_csv(&bytes, &url)
        .map_err(SplitStageError::ReadManifest)?
        .into_iter()
        .map(|row| (row.path, row.label))
        .collect();
    let now: BTreeSet<(String, String)> =
        images.iter().map(|r| (job.dataset.relative_path(&r.path), r.label.clone())).collect();
    let added: Vec<&(String, String)> = now.difference(&recorded).collect();
    let removed: Vec<&(String, String)> = recorded.difference(&now).collect();
    if added.is_empty() && removed.is_empty() {
        return Ok(());
    }
    let names = |files: &[&(String, String)]| {
        if files.is_empty() {
            return String::new();
        }
        let shown: Vec<&str> = files.iter().take(LISTED_CHANGES).map(|(path, _)| path.as_str()).collect();
        let more = if files.len() > LISTED_CHANGES { ", ..." } else { "" };
        format!(" ({}{more})", shown.join(", "))
    };
    Err(SplitStageError::DatasetChanged {
        url: store.url_of(SPLIT_DONE_KEY),
        added: added.len(),
        added_list: names(&added),
        removed: removed.len(),
        removed_list: names(&removed),
    })
}

/// The images the job's stages work on, numbered: the split manifest's, resolved under the
/// dataset's base as the job names it now. The split stage must be done (the extract stage makes
/// it when it is missing).
pub fn job_images(job: &Job, store: &Store) -> Result<Vec<ImageRecord>, SplitStageError> {
    let done = padim_store::identity::split_digest(job, store)?;
    let url = store.url_of(SPLIT_MANIFEST_KEY);
    let bytes = store.get(SPLIT_MANIFEST_KEY)?.ok_or_else(|| SplitStageError::NotSplit { url: url.clone() })?;
    if padim_core::hash::sha256_hex(&bytes) != done {
        return Err(SplitStageError::ManifestDigest { url });
    }
    let rows = read_manifest_csv(&bytes, &url).map_err(SplitStageError::ReadManifest)?;
    Ok(rows
        .into_iter()
        .enumerate()
        .map(|(id, row)| ImageRecord {
            id: id as u32,
            path: job.dataset.resolve_path(&row.path),
            label: row.label,
            split: row.split,
            sha256: Some(row.sha256),
        })
        .collect())
}

/// Makes the split when it is missing (a job run stage by stage, or an array task that starts
/// before anyone split): concurrent tasks hash the same files and agree on one manifest.
pub fn ensure_split(job: &Job, store: &Store, progress: &dyn Progress) -> Result<(), SplitStageError> {
    let done = DoneMarker::read(store, SPLIT_DONE_KEY)?;
    if done.is_none() {
        run_split(job, &SplitOptions::default(), progress)?;
    }
    Ok(())
}
