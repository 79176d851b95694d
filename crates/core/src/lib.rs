//! Shared vocabulary of the padim pipeline: the job file, the dataset it names, shards, and the
//! progress-reporting trait that library stages call and only the binary implements.
//!
//! This crate does no heavy IO and links no native library; every stage crate depends on it.

pub mod channels;
pub mod config;
pub mod dataset;
pub mod hash;
pub mod progress;
pub mod shard;
pub mod split;

pub use config::{ConfigError, Job};
pub use dataset::{DatasetError, ImageRecord};
pub use progress::{NoProgress, Progress};
pub use shard::Shard;
