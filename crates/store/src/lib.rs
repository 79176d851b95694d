//! The one crate of padim that talks to object storage and encodes Parquet.
//!
//! Every output is addressed by a location (a local path or a URL) and a relative key under it.
//! Single objects are written with atomic puts; Parquet files are streamed with multipart uploads
//! that become visible only when complete (object_store stages local files and renames them). A stage
//! marks a shard finished with a done marker written last, so a reader that finds the marker finds
//! every file it lists complete.

mod cloud;
mod embeddings;
pub mod identity;
mod images;
mod inputs;
pub mod layout;
mod location;
mod marker;
mod scores;
pub mod shards;
mod table;

pub use embeddings::{
    Compression, EMBEDDINGS_META_KEY, EmbeddingBatch, EmbeddingMeta, EmbeddingReader, EmbeddingValues, EmbeddingWriter,
    FloatEncoding, LayerInfo, ValueType, WriterSettings, channel_column,
};
pub use images::{ImageRow, ImageStatus, read_image_table, write_image_table};
pub use inputs::{InputFiles, is_url, list_inputs, local_copy, read_input, read_input_opt, read_inputs};
pub use location::{Lock, Store};
pub use marker::{DoneMarker, Gate, GateRules, Inputs, Published, claim};
pub use scores::{MapRow, MapsWriter, ScoreRow, read_maps, read_scores, write_maps, write_scores};
pub use shards::{ShardsError, extract_shards};

use std::path::PathBuf;

impl StoreError {
    /// An object_store error at `url`, classified: the answers no retry changes (not found,
    /// permission, credentials, a bad path, an unsupported request) are [`StoreError::Invalid`];
    /// the rest failed as requests after the retries and are [`StoreError::Object`].
    pub(crate) fn of_object_store(url: String, error: &object_store::Error) -> StoreError {
        use object_store::Error as E;
        let message = error.to_string();
        match error {
            E::NotFound { .. }
            | E::PermissionDenied { .. }
            | E::Unauthenticated { .. }
            | E::InvalidPath { .. }
            | E::NotSupported { .. }
            | E::NotImplemented { .. }
            | E::UnknownConfigurationKey { .. } => StoreError::Invalid { url, message },
            _ => StoreError::Object { url, message },
        }
    }

    /// A Parquet error of the object at `url`: a failed request underneath (object_store's, passed
    /// through Parquet) is a storage error, which a later rerun may get past; anything else is the
    /// file's.
    pub(crate) fn parquet(url: &str, error: parquet::errors::ParquetError) -> StoreError {
        if let parquet::errors::ParquetError::External(inner) = &error
            && from_object_store(inner.as_ref())
        {
            return StoreError::Object { url: url.to_string(), message: error.to_string() };
        }
        StoreError::Parquet { url: url.to_string(), message: error.to_string() }
    }

    /// Whether the failure is the storage's, not the input's: a request that failed after the
    /// retries (network, throttling, an outage). A rerun later may succeed; a bad location, a corrupt
    /// or foreign file or a conflict between configurations will not.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Object { .. } | StoreError::Runtime(_))
    }
}

/// Whether `error` is, or wraps, an object_store error (through an `io::Error`, as Parquet's
/// buffered writer passes them on, or as a source).
fn from_object_store(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.downcast_ref::<object_store::Error>().is_some() {
            return true;
        }
        if let Some(inner) = error.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref)
            && from_object_store(inner)
        {
            return true;
        }
        current = error.source();
    }
    false
}

/// Storage and Parquet errors; each names the object (or file) involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid storage location `{location}`: {message}")]
    Location { location: String, message: String },
    /// A request that failed after the retries: the network, throttling, an outage.
    #[error("storage error at {url}: {message}")]
    Object { url: String, message: String },
    /// What no retry mends: a missing or corrupt object, a refused permission, a bad path.
    #[error("{url}: {message}")]
    Invalid { url: String, message: String },
    #[error("Parquet error in {url}: {message}")]
    Parquet { url: String, message: String },
    #[error("{url} is not a padim embeddings file: {message}")]
    Format { url: String, message: String },
    #[error("{url} is missing or was made by another configuration: {what} is needed; run `{command}` first")]
    NotReady { url: String, what: String, command: String },
    #[error(
        "another task published {url} first, with identity {found} (this task's is {expected}); its outputs \
         stand and this task's were not published. Run one configuration per output location, or --force"
    )]
    Conflict { url: String, found: String, expected: String },
    #[error(
        "{url} claims this shard for identity {found} (this task's is {expected}): a task of another \
         configuration is writing it, or died writing it. Wait for it, use another output location, or --force"
    )]
    Claimed { url: String, found: String, expected: String },
    #[error(
        "{url} stores {stored} of the {n_channels} embedding channels (extract.channels = \"subsets\" when it \
         was made) and not channel(s) {missing}, which this job's subsets need: rerun `padim extract JOB --force` \
         (with extract.channels = \"all\" to keep every channel for later subsets and sweeps)"
    )]
    MissingChannels { url: String, missing: String, stored: usize, n_channels: usize },
    #[error("{url} already exists")]
    AlreadyExists { url: String },
    #[error("cannot create the IO runtime: {0}")]
    Runtime(String),
    #[error("local file {path}: {message}")]
    Local { path: PathBuf, message: String },
}
