//! The split stage: hash every file of the dataset, assign seeded disjoint splits (identical files
//! together), and publish `split/manifest.csv` with a done marker. The extract stage then takes its
//! images, numbered in the manifest's order, from the manifest.

use padim_core::Progress;
use padim_core::config::Job;
use padim_core::dataset::{DatasetError, ImageRecord, list_images_in};
use padim_core::split::{SplitError, SplitInput, assign, manifest_csv, read_manifest_csv};
use padim_store::{DoneMarker, InputFiles, Store, StoreError};
use rayon::prelude::*;
use std::collections::BTreeMap;

pub const MANIFEST_KEY: &str = "split/manifest.csv";
const DONE_KEY: &str = "split/done.json";

#[derive(Debug, thiserror::Error)]
pub enum SplitStageError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{job}: {source}")]
    Split { job: String, source: Box<SplitError> },
    #[error("the job has no [split] section: its dataset names no splits to make")]
    NoSplitSection,
    #[error("{url} was made by another dataset or split configuration; use --force to redo it")]
    ConfigMismatch { url: String },
    #[error(
        "the job splits its dataset, but {url} is missing or from another configuration: run `padim split JOB` first"
    )]
    NotSplit { url: String },
    #[error("{0}")]
    Manifest(String),
}

/// What the split stage did: images per split and label, and the images no split took.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitSummary {
    pub counts: BTreeMap<String, u64>,
    pub unused: usize,
    pub already_done: bool,
}

/// Runs the split stage of the job.
pub fn run_split(job: &Job, force: bool, progress: &dyn Progress) -> Result<SplitSummary, SplitStageError> {
    let span = tracing::info_span!("split", job = %job.name);
    let _entered = span.enter();
    let settings = job.split.as_ref().ok_or(SplitStageError::NoSplitSection)?;
    let store = Store::open(&job.output)?;
    let hash = job.split_hash();
    if let Some(marker) = DoneMarker::read(&store, DONE_KEY)? {
        if marker.config_hash == hash && !force {
            let unused = marker.counts.get("unused").copied().unwrap_or(0) as usize;
            let mut counts = marker.counts;
            counts.remove("unused");
            return Ok(SplitSummary { counts, unused, already_done: true });
        }
        if marker.config_hash != hash && !force {
            return Err(SplitStageError::ConfigMismatch { url: store.url_of(DONE_KEY) });
        }
        store.delete(DONE_KEY)?;
    }
    let images = list_images_in(&job.dataset, &InputFiles)?;
    progress.start("split (hashing)", images.len() as u64);
    let mut inputs: Vec<SplitInput> = Vec::with_capacity(images.len());
    // Read in chunks (object stores: many requests in flight), hashed in parallel.
    for chunk in images.chunks(64) {
        let paths: Vec<&std::path::Path> = chunk.iter().map(|r| r.path.as_path()).collect();
        let contents = padim_store::read_inputs(&paths);
        let hashed: Result<Vec<SplitInput>, StoreError> = chunk
            .par_iter()
            .zip(contents)
            .map(|(record, bytes)| {
                let sha256 = padim_core::hash::sha256_hex(&bytes?);
                Ok(SplitInput { path: record.path.clone(), label: record.label.clone(), sha256 })
            })
            .collect();
        inputs.extend(hashed?);
        progress.advance(chunk.len() as u64);
    }
    progress.finish();
    let assigned = assign(&inputs, settings)
        .map_err(|source| SplitStageError::Split { job: job.name.clone(), source: Box::new(source) })?;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for a in &assigned {
        *counts.entry(format!("{}/{}", a.split, a.label)).or_default() += 1;
    }
    let unused = images.len() - assigned.len();
    store.put(MANIFEST_KEY, manifest_csv(&assigned))?;
    let mut marker_counts = counts.clone();
    marker_counts.insert("unused".into(), unused as u64);
    DoneMarker {
        stage: "split".into(),
        shard: padim_core::Shard::ALL.to_string(),
        config_hash: hash,
        files: vec![MANIFEST_KEY.into()],
        counts: marker_counts,
    }
    .write(&store, DONE_KEY)?;
    tracing::info!(images = assigned.len(), unused, "split done");
    Ok(SplitSummary { counts, unused, already_done: false })
}

/// The images the job's stages work on, numbered: the split manifest's when the job splits its
/// dataset (the split stage must be done), else the sorted listing of the dataset.
pub fn job_images(job: &Job, store: &Store) -> Result<Vec<ImageRecord>, SplitStageError> {
    if job.split.is_none() {
        return Ok(list_images_in(&job.dataset, &InputFiles)?);
    }
    let done = DoneMarker::read(store, DONE_KEY)?.filter(|m| m.config_hash == job.split_hash());
    if done.is_none() {
        return Err(SplitStageError::NotSplit { url: store.url_of(DONE_KEY) });
    }
    let bytes =
        store.get(MANIFEST_KEY)?.ok_or_else(|| SplitStageError::NotSplit { url: store.url_of(MANIFEST_KEY) })?;
    read_manifest_csv(&bytes, &store.url_of(MANIFEST_KEY)).map_err(SplitStageError::Manifest)
}
