//! Done markers: the last object a shard writes, naming the config it was made with and its files.

use crate::{Store, StoreError};
use serde::{Deserialize, Serialize};

/// Written last by a finished shard of a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DoneMarker {
    pub stage: String,
    /// `index/count`.
    pub shard: String,
    /// SHA-256 of the resolved job that produced the outputs.
    pub config_hash: String,
    /// Keys of the outputs, relative to the run location.
    pub files: Vec<String>,
    /// Stage-specific counts (images, skipped, rows, ...).
    pub counts: std::collections::BTreeMap<String, u64>,
}

impl DoneMarker {
    /// Reads the marker at `key`, if any.
    pub fn read(store: &Store, key: &str) -> Result<Option<DoneMarker>, StoreError> {
        match store.get(key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| StoreError::Object {
                url: store.url_of(key),
                message: format!("corrupt done marker: {e}"),
            }),
        }
    }

    /// Writes the marker atomically.
    pub fn write(&self, store: &Store, key: &str) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| StoreError::Object { url: store.url_of(key), message: e.to_string() })?;
        store.put(key, json)
    }
}
