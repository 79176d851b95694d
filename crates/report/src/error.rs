//! The report stage's errors.

use crate::metrics::MetricError;
use crate::pictures::PictureError;
use padim_store::StoreError;
use polars::prelude::PolarsError;
use std::path::PathBuf;

impl ReportError {
    /// Whether a rerun later may succeed (a storage failure), see [`StoreError::is_transient`].
    pub fn is_transient(&self) -> bool {
        match self {
            ReportError::Store(e) | ReportError::Input { source: e, .. } => e.is_transient(),
            ReportError::Shards(e) => e.is_transient(),
            _ => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The job's extract shards are missing, incomplete or of another identity.
    #[error(transparent)]
    Shards(#[from] padim_store::ShardsError),
    #[error("{url} is stale: {input} was redone after it was made (a forced rerun); run `padim score JOB` first")]
    Stale { url: String, input: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{source}")]
    Metric { what: String, source: MetricError },
    #[error(transparent)]
    Picture(#[from] PictureError),
    #[error("table {what}: {message}")]
    Table { what: String, message: String },
    #[error(
        "score is not finished under {url}: shard(s) {missing} of {count} have no done marker for this configuration \
         (nor `--models` parts that cover every model once); run `padim score JOB`"
    )]
    MissingScores { url: String, missing: String, count: u32 },
    #[error(
        "the report needs a calibration and a test split, but the scores of {url} have {found}: give the job a \
         [split] section (the recipe: train = {{ Negative = 250 }}, calibration = {{ Negative = 100, Positive = 100 }}, \
         test = {{ Negative = 1000, Positive = 1000 }})"
    )]
    NoSplits { url: String, found: String },
    /// An image or mask that could not be read: a storage failure keeps its kind.
    #[error("cannot read {path}")]
    Input { path: PathBuf, source: StoreError },
    /// An image or mask that could not be decoded (the error names the file).
    #[error(transparent)]
    Image(#[from] padim_image::ImageError),
    #[error("{url} was made by another configuration; use --force to redo it")]
    ConfigMismatch { url: String },
}

pub(crate) fn table_error(what: &str) -> impl Fn(PolarsError) -> ReportError + '_ {
    move |e| ReportError::Table { what: what.to_string(), message: e.to_string() }
}
