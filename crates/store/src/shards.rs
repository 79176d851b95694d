//! Which extract shards a job's later stages read: the layout (shard count) whose every shard has
//! a done marker of the current extract identity. fit, score and report all read through this.

use crate::{DoneMarker, Store, StoreError, layout};
use padim_core::Shard;

/// Why the job has no complete extract layout to read.
#[derive(Debug, thiserror::Error)]
pub enum ShardsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no finished extract shards under {url}: run `padim extract` first")]
    NoExtract { url: String },
    #[error(
        "extract is not finished under {url}: shard(s) {missing} of {count} have no done marker; run `padim extract JOB --shard i/{count}` for them"
    )]
    MissingShards { url: String, missing: String, count: u32 },
    #[error(
        "{url} was made from other inputs or settings (extract identity {found}, this job's is {expected}): \
         rerun `padim extract JOB --force` (the data, weights, pre-processing or backbone changed), or use \
         another output location"
    )]
    StaleExtract { url: String, found: String, expected: String },
}

impl ShardsError {
    /// Whether a rerun later may succeed (a storage failure).
    pub fn is_transient(&self) -> bool {
        matches!(self, ShardsError::Store(e) if e.is_transient())
    }
}

/// The done markers of `shards` of the extract stage.
pub fn extract_marker_keys(shards: &[Shard]) -> Vec<String> {
    shards.iter().map(|&shard| layout::extract::done(shard)).collect()
}

/// Every shard named by an `extract/done-*.json` marker, whatever its count.
pub fn extract_done_shards(store: &Store) -> Result<Vec<Shard>, StoreError> {
    Ok(store.list(layout::extract::DIR)?.iter().filter_map(|key| layout::extract::done_shard(key)).collect())
}

/// The extract shards of this job: the layout (shard count) whose every shard has a done marker of
/// `extract_hash`, the current extract identity (the largest such count when the same extraction
/// exists in several layouts). Markers of other identities (an older configuration, other data) or
/// layouts with missing shards are never mixed in: fit, score and report all read through this.
pub fn extract_shards(store: &Store, extract_hash: &str) -> Result<Vec<Shard>, ShardsError> {
    let found = extract_done_shards(store)?;
    let mut counts: Vec<u32> = found.iter().map(|s| s.count).collect();
    counts.sort_unstable();
    counts.dedup();
    if counts.is_empty() {
        return Err(ShardsError::NoExtract { url: store.url().to_string() });
    }
    // Per layout, from the largest: its markers of this identity, and the first of another.
    let mut best: Option<(u32, Vec<u32>)> = None;
    let mut other: Option<(String, String)> = None;
    for &count in counts.iter().rev() {
        let mut current = Vec::new();
        for shard in found.iter().filter(|s| s.count == count) {
            let key = layout::extract::done(*shard);
            match DoneMarker::read(store, &key)? {
                Some(marker) if marker.config_hash == extract_hash => current.push(shard.index),
                Some(marker) => {
                    other.get_or_insert((store.url_of(&key), marker.config_hash));
                }
                None => {}
            }
        }
        if current.len() == count as usize {
            return Ok((0..count).map(|index| Shard { index, count }).collect());
        }
        if best.as_ref().is_none_or(|(_, b)| current.len() > b.len()) && !current.is_empty() {
            best = Some((count, current));
        }
    }
    match (best, other) {
        (Some((count, present)), _) => {
            let missing: Vec<String> = (0..count).filter(|i| !present.contains(i)).map(|i| i.to_string()).collect();
            Err(ShardsError::MissingShards { url: store.url().to_string(), missing: missing.join(", "), count })
        }
        (None, Some((url, found))) => Err(ShardsError::StaleExtract { url, found, expected: extract_hash.to_string() }),
        (None, None) => Err(ShardsError::NoExtract { url: store.url().to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn mark(store: &Store, shard: Shard, identity: &str) {
        DoneMarker {
            stage: "extract".into(),
            shard: shard.to_string(),
            config_hash: identity.into(),
            digest: None,
            files: vec![],
            counts: BTreeMap::new(),
            run_id: DoneMarker::new_run_id(),
            made_from: BTreeMap::new(),
        }
        .write(store, &layout::extract::done(shard))
        .unwrap();
    }

    #[test]
    fn the_extract_layout_is_the_one_of_this_identity() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().display().to_string()).unwrap();
        assert!(matches!(extract_shards(&store, "a"), Err(ShardsError::NoExtract { .. })));
        // Two shards of an older configuration, then one shard of this one (not the largest count).
        mark(&store, Shard { index: 0, count: 2 }, "old");
        mark(&store, Shard { index: 1, count: 2 }, "old");
        assert!(matches!(extract_shards(&store, "new"), Err(ShardsError::StaleExtract { .. })));
        mark(&store, Shard { index: 0, count: 1 }, "new");
        assert_eq!(extract_shards(&store, "new").unwrap(), vec![Shard { index: 0, count: 1 }]);
        assert_eq!(extract_shards(&store, "old").unwrap().len(), 2);
        // Three shards of this one, one missing: named, never mixed with the others.
        mark(&store, Shard { index: 0, count: 3 }, "three");
        mark(&store, Shard { index: 2, count: 3 }, "three");
        match extract_shards(&store, "three") {
            Err(ShardsError::MissingShards { missing, count: 3, .. }) => assert_eq!(missing, "1"),
            other => panic!("{other:?}"),
        }
    }
}
