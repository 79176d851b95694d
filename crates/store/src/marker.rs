//! Done markers: the last object a shard writes, naming the config it was made with and its files.

use crate::{Store, StoreError};
use serde::{Deserialize, Serialize};

/// Per marker key: its run id now (if it exists) and the stale marker upstream of it (if any).
type Checked = std::collections::HashMap<String, (Option<String>, Option<String>)>;

fn check_marker(
    store: &Store,
    key: &str,
    checked: &mut Checked,
) -> Result<(Option<String>, Option<String>), StoreError> {
    if let Some(known) = checked.get(key) {
        return Ok(known.clone());
    }
    let result = match DoneMarker::read(store, key)? {
        None => (None, None),
        Some(marker) => {
            let upstream = marker.stale_among(store, checked)?;
            (Some(marker.run_id), upstream)
        }
    };
    checked.insert(key.to_string(), result.clone());
    Ok(result)
}

/// What [`DoneMarker::publish`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Published {
    /// This marker is the shard's.
    Created,
    /// Another task of the same identity had published the shard first.
    AlreadyDone(DoneMarker),
}

/// Written last by a finished shard of a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DoneMarker {
    pub stage: String,
    /// `index/count`.
    pub shard: String,
    /// The stage identity that produced the outputs (`Job::extract_hash` etc.).
    pub config_hash: String,
    /// SHA-256 of the stage's principal output where later identities cover it (the split
    /// stage's image manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Keys of the outputs, relative to the run location.
    pub files: Vec<String>,
    /// Stage-specific counts (images, skipped, rows, ...).
    pub counts: std::collections::BTreeMap<String, u64>,
    /// This publication's id: unique per run of the stage (the content digest where the outputs are
    /// content-addressed), so that a forced rerun upstream makes what was made from it stale.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub run_id: String,
    /// The markers this shard's outputs were made from: key -> their `run_id`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub made_from: std::collections::BTreeMap<String, String>,
}

impl DoneMarker {
    /// A fresh run id: unique across processes and machines in practice (time, process, a counter
    /// and the host name, hashed).
    pub fn new_run_id() -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let seed = format!("{nanos}/{}/{}/{host}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        padim_core::hash::sha256_hex(seed.as_bytes())[..16].to_string()
    }

    /// The first marker upstream of this one (its `made_from`, and theirs in turn) that is gone or
    /// was republished after what depends on it was made (a forced rerun): then this shard's outputs
    /// are stale. Each marker is read once.
    pub fn stale_input(&self, store: &Store) -> Result<Option<String>, StoreError> {
        let mut checked = std::collections::HashMap::new();
        self.stale_among(store, &mut checked)
    }

    fn stale_among(&self, store: &Store, checked: &mut Checked) -> Result<Option<String>, StoreError> {
        for (key, run_id) in &self.made_from {
            let (now, upstream) = check_marker(store, key, checked)?;
            if now.as_ref() != Some(run_id) {
                return Ok(Some(key.clone()));
            }
            if upstream.is_some() {
                return Ok(upstream);
            }
        }
        Ok(None)
    }

    /// `made_from` entries for the markers at `keys` as they are now.
    pub fn current_ids(
        store: &Store,
        keys: &[String],
    ) -> Result<std::collections::BTreeMap<String, String>, StoreError> {
        let mut ids = std::collections::BTreeMap::new();
        for key in keys {
            let run_id = DoneMarker::read(store, key)?.map(|m| m.run_id).unwrap_or_default();
            ids.insert(key.clone(), run_id);
        }
        Ok(ids)
    }

    /// Reads the marker at `key`, if any.
    pub fn read(store: &Store, key: &str) -> Result<Option<DoneMarker>, StoreError> {
        match store.get(key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| StoreError::Invalid {
                url: store.url_of(key),
                message: format!("corrupt done marker: {e}"),
            }),
        }
    }

    /// Publishes the marker create-only (object_store's `PutMode::Create`, which S3, Azure and local
    /// files honour), so that of two tasks finishing the same shard exactly one marker stands.
    /// A marker already there of the same identity means the shard is done (`Ok`, with that
    /// marker); one of another identity is [`StoreError::Conflict`]: the other task won, and its
    /// marker is left as it is.
    pub fn publish(&self, store: &Store, key: &str) -> Result<Published, StoreError> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| StoreError::Invalid { url: store.url_of(key), message: e.to_string() })?;
        match store.put_if_absent(key, json) {
            Ok(()) => Ok(Published::Created),
            Err(StoreError::AlreadyExists { url }) => match DoneMarker::read(store, key)? {
                Some(existing) if existing.config_hash == self.config_hash => Ok(Published::AlreadyDone(existing)),
                Some(existing) => {
                    Err(StoreError::Conflict { url, found: existing.config_hash, expected: self.config_hash.clone() })
                }
                // Withdrawn between the two requests (a forced rerun elsewhere): try once more.
                None => store
                    .put_if_absent(key, serde_json::to_vec_pretty(self).unwrap_or_default())
                    .map(|()| Published::Created),
            },
            Err(e) => Err(e),
        }
    }

    /// Writes the marker atomically, replacing any marker there.
    pub fn write(&self, store: &Store, key: &str) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| StoreError::Invalid { url: store.url_of(key), message: e.to_string() })?;
        store.put(key, json)
    }
}

/// How a stage judges the done marker it finds (see [`DoneMarker::gate`]): the staleness rules of
/// every stage, in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateRules<'a> {
    /// Redo the work whatever the marker says (`--force`).
    pub force: bool,
    /// How the marker's inputs are checked.
    pub inputs: Inputs<'a>,
    /// Whether a marker of another identity is refused ([`Gate::Conflict`]) rather than redone.
    pub refuse_other: bool,
}

/// How a marker's inputs are checked for a rerun upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inputs<'a> {
    /// Not at all: the identity covers them (split, extract).
    Unchecked,
    /// Its `made_from` markers, and theirs in turn, must still carry the run ids it recorded (fit,
    /// report; see [`DoneMarker::stale_input`]).
    Upstream,
    /// Its `made_from` must be exactly these run ids (a score shard: its fit and extract shard).
    Exactly(&'a std::collections::BTreeMap<String, String>),
}

/// What a stage found at its done marker, before any work.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    /// Done with this identity from inputs that are still current: nothing to do.
    Current(DoneMarker),
    /// To do: no marker, a forced rerun, a stale marker (an input was redone since: its key in
    /// `stale`, already logged) or one of another identity that the rules redo. The marker, if any,
    /// is still there; the stage withdraws it ([`Store::delete`]) before it writes.
    Redo { marker: Option<DoneMarker>, stale: Option<String> },
    /// Made by another identity, and not forced: the stage refuses, naming it.
    Conflict(DoneMarker),
}

impl DoneMarker {
    /// Judges the marker at `key` for a stage whose identity is `identity`, by `rules`.
    pub fn gate(store: &Store, key: &str, identity: &str, rules: GateRules) -> Result<Gate, StoreError> {
        let Some(marker) = DoneMarker::read(store, key)? else {
            return Ok(Gate::Redo { marker: None, stale: None });
        };
        if rules.force {
            return Ok(Gate::Redo { marker: Some(marker), stale: None });
        }
        if marker.config_hash != identity {
            return Ok(if rules.refuse_other {
                Gate::Conflict(marker)
            } else {
                Gate::Redo { marker: Some(marker), stale: None }
            });
        }
        let stale = match rules.inputs {
            Inputs::Unchecked => None,
            Inputs::Upstream => marker.stale_input(store)?,
            Inputs::Exactly(made_from) => {
                (&marker.made_from != made_from).then(|| marker.made_from.keys().next().cloned().unwrap_or_default())
            }
        };
        match stale {
            None => Ok(Gate::Current(marker)),
            Some(input) => {
                tracing::warn!(
                    "{} is stale: {} was redone after it was made (a forced rerun); redoing its {} stage",
                    store.url_of(key),
                    if input.is_empty() { "an input".to_string() } else { store.url_of(&input) },
                    marker.stage
                );
                Ok(Gate::Redo { marker: Some(marker), stale: Some(input) })
            }
        }
    }

    /// A count this marker recorded (see [`crate::layout::counts`]); 0 when it has none.
    pub fn count(&self, name: &str) -> u64 {
        self.counts.get(name).copied().unwrap_or(0)
    }
}

/// Claims the output keys of a shard for one identity before a task writes them: a create-only
/// object at `key` naming the identity. A claim of the same identity is shared (its tasks write the
/// same values, so either's files are right); a claim of another identity, left by a task that is
/// still writing or that died, is [`StoreError::Claimed`] unless `force` takes it over. This keeps a
/// task of another configuration from overwriting files that a finished shard's marker names.
pub fn claim(store: &Store, key: &str, identity: &str, force: bool) -> Result<(), StoreError> {
    let body = serde_json::to_vec_pretty(&serde_json::json!({ "identity": identity })).unwrap_or_default();
    if force {
        return store.put(key, body);
    }
    match store.put_if_absent(key, body) {
        Ok(()) => Ok(()),
        Err(StoreError::AlreadyExists { url }) => {
            let found = store
                .get(key)?
                .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
                .and_then(|v| v.get("identity").and_then(|i| i.as_str()).map(str::to_string))
                .unwrap_or_default();
            if found == identity { Ok(()) } else { Err(StoreError::Claimed { url, found, expected: identity.into() }) }
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(identity: &str) -> DoneMarker {
        DoneMarker {
            stage: "extract".into(),
            shard: "0/1".into(),
            config_hash: identity.into(),
            digest: None,
            files: vec!["x".into()],
            counts: Default::default(),
            run_id: String::new(),
            made_from: Default::default(),
        }
    }

    #[test]
    fn one_marker_stands_and_claims_keep_other_identities_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().display().to_string()).unwrap();
        assert_eq!(marker("a").publish(&store, "done.json").unwrap(), Published::Created);
        assert_eq!(marker("a").publish(&store, "done.json").unwrap(), Published::AlreadyDone(marker("a")));
        let message = marker("b").publish(&store, "done.json").unwrap_err().to_string();
        assert!(message.contains("another task published") && message.contains("done.json"), "{message}");
        assert_eq!(DoneMarker::read(&store, "done.json").unwrap(), Some(marker("a")), "the winner's marker stands");

        claim(&store, "claim.json", "a", false).unwrap();
        claim(&store, "claim.json", "a", false).unwrap();
        let message = claim(&store, "claim.json", "b", false).unwrap_err().to_string();
        assert!(message.contains("claim.json") && message.contains("--force"), "{message}");
        claim(&store, "claim.json", "b", true).unwrap();
        claim(&store, "claim.json", "b", false).unwrap();
    }

    #[test]
    fn concurrent_publishers_agree_on_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().display().to_string()).unwrap();
        let results: Vec<Result<Published, StoreError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let store = store.clone();
                    scope.spawn(move || marker(if i % 2 == 0 { "even" } else { "odd" }).publish(&store, "d.json"))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let created = results.iter().filter(|r| matches!(r, Ok(Published::Created))).count();
        assert_eq!(created, 1, "exactly one task creates the marker");
        let winner = DoneMarker::read(&store, "d.json").unwrap().unwrap().config_hash;
        for (i, result) in results.iter().enumerate() {
            let mine = if i % 2 == 0 { "even" } else { "odd" };
            assert_eq!(result.is_ok(), mine == winner, "task {i}: {result:?}");
        }
    }

    #[test]
    fn the_gate_applies_each_stages_rules() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().display().to_string()).unwrap();
        let rules = GateRules { force: false, inputs: Inputs::Unchecked, refuse_other: true };
        let gate = |identity: &str, rules: GateRules| DoneMarker::gate(&store, "done.json", identity, rules).unwrap();
        assert_eq!(gate("a", rules), Gate::Redo { marker: None, stale: None }, "no marker: to do");
        let mut done = marker("a");
        done.made_from = DoneMarker::current_ids(&store, &["up.json".to_string()]).unwrap();
        done.write(&store, "done.json").unwrap();
        assert_eq!(gate("a", rules), Gate::Current(done.clone()));
        assert_eq!(gate("b", rules), Gate::Conflict(done.clone()), "another identity is refused");
        let redo = Gate::Redo { marker: Some(done.clone()), stale: None };
        assert_eq!(gate("b", GateRules { refuse_other: false, ..rules }), redo, "or redone, by the rules");
        assert_eq!(gate("a", GateRules { force: true, ..rules }), redo, "forced");
        assert_eq!(gate("b", GateRules { force: true, ..rules }), redo, "forced past another identity");
        // An input redone since: stale by the chain upstream, or against the exact run ids.
        DoneMarker { run_id: "r1".into(), ..marker("x") }.write(&store, "up.json").unwrap();
        let stale = Gate::Redo { marker: Some(done.clone()), stale: Some("up.json".into()) };
        assert_eq!(gate("a", GateRules { inputs: Inputs::Upstream, ..rules }), stale);
        assert_eq!(gate("a", rules), Gate::Current(done.clone()), "unchecked inputs are not looked at");
        let now = DoneMarker::current_ids(&store, &["up.json".to_string()]).unwrap();
        assert_eq!(gate("a", GateRules { inputs: Inputs::Exactly(&now), ..rules }), stale);
        assert_eq!(gate("a", GateRules { inputs: Inputs::Exactly(&done.made_from), ..rules }), Gate::Current(done));
    }

    #[test]
    fn a_republished_input_makes_its_outputs_stale() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().display().to_string()).unwrap();
        let upstream = |run_id: String| DoneMarker { run_id, ..marker("x") };
        let first = DoneMarker::new_run_id();
        assert_ne!(first, DoneMarker::new_run_id(), "run ids are unique");
        upstream(first.clone()).write(&store, "up.json").unwrap();
        let mut fit = upstream(DoneMarker::new_run_id());
        fit.made_from = DoneMarker::current_ids(&store, &["up.json".to_string()]).unwrap();
        assert_eq!(fit.made_from["up.json"], first);
        assert_eq!(fit.stale_input(&store).unwrap(), None);
        upstream(DoneMarker::new_run_id()).write(&store, "up.json").unwrap();
        assert_eq!(fit.stale_input(&store).unwrap(), Some("up.json".into()));
        // Transitively: a report made from the fit is stale once the fit's input was redone.
        fit.made_from = DoneMarker::current_ids(&store, &["up.json".to_string()]).unwrap();
        fit.write(&store, "fit.json").unwrap();
        let mut report = upstream(DoneMarker::new_run_id());
        report.made_from = DoneMarker::current_ids(&store, &["fit.json".to_string()]).unwrap();
        assert_eq!(report.stale_input(&store).unwrap(), None);
        upstream(DoneMarker::new_run_id()).write(&store, "up.json").unwrap();
        assert_eq!(report.stale_input(&store).unwrap(), Some("up.json".into()));
        store.delete("up.json").unwrap();
        assert_eq!(fit.stale_input(&store).unwrap(), Some("up.json".into()));
    }
}
