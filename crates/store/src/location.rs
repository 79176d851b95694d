//! Locations and the object store behind them.

use crate::StoreError;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::sync::Arc;
use tokio::runtime::Runtime;

/// What [`Store::try_lock`] found.
#[derive(Debug)]
pub enum Lock {
    /// This process holds the lock while the file is open.
    Held(std::fs::File),
    /// Another live process holds it.
    Busy,
    /// The location is an object store: there is nothing to lock (nor staged files to clean).
    NotLocal,
}

/// A run prefix in an object store: local folder or URL. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
    runtime: Arc<Runtime>,
    /// The folder of a local location: where object_store stages its uploads beside the target.
    local_root: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

impl Store {
    /// Opens a location: an absolute or relative local path, a `file://` URL, or an object-store URL
    /// (`s3://bucket/prefix`, `gs://`, `az://`; see the `cloud` module for settings and credentials).
    pub fn open(location: &str) -> Result<Store, StoreError> {
        let location_error = |message: String| StoreError::Location { location: location.to_string(), message };
        let url = if location.contains("://") {
            url::Url::parse(location).map_err(|e| location_error(e.to_string()))?
        } else {
            let path = std::path::absolute(location).map_err(|e| location_error(e.to_string()))?;
            url::Url::from_directory_path(&path).map_err(|()| location_error("not an absolute path".into()))?
        };
        let mut local_root = None;
        let (inner, prefix) = match url.scheme() {
            "file" => {
                let path = url.to_file_path().map_err(|()| location_error("not a local file URL".into()))?;
                local_root = Some(path.clone());
                std::fs::create_dir_all(&path)
                    .map_err(|e| location_error(format!("cannot create {}: {e}", path.display())))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(&path)
                    .map_err(|e| location_error(e.to_string()))?;
                (Arc::new(store) as Arc<dyn ObjectStore>, ObjectPath::default())
            }
            _ => {
                let inner = crate::cloud::open(&url).map_err(location_error)?;
                let key_prefix = url.path().trim_matches('/');
                let prefix = ObjectPath::parse(key_prefix).map_err(|e| location_error(e.to_string()))?;
                (inner, prefix)
            }
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("padim-io")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Runtime(e.to_string()))?;
        // Never keep a password of the URL: the URL names objects in messages and manifests.
        let mut shown = url.clone();
        let _ = shown.set_password(None);
        let url = shown.as_str().trim_end_matches('/').to_string();
        Ok(Store { inner, prefix, url, runtime: Arc::new(runtime), local_root })
    }

    /// The location as given, normalised to a URL (no trailing slash).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of `key` under this location, for messages.
    pub fn url_of(&self, key: &str) -> String {
        format!("{}/{key}", self.url)
    }

    pub(crate) fn object_path(&self, key: &str) -> ObjectPath {
        let mut path = self.prefix.clone();
        for part in key.split('/').filter(|p| !p.is_empty()) {
            path = path.clone().join(part);
        }
        path
    }

    pub(crate) fn inner(&self) -> Arc<dyn ObjectStore> {
        self.inner.clone()
    }

    pub(crate) fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    fn object_error(&self, key: &str, error: object_store::Error) -> StoreError {
        StoreError::of_object_store(self.url_of(key), &error)
    }

    /// Writes `bytes` to `key` atomically, replacing any object there.
    pub fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let path = self.object_path(key);
        self.block_on(self.inner.put(&path, PutPayload::from(bytes))).map(|_| ()).map_err(|e| self.object_error(key, e))
    }

    /// Writes `bytes` to `key` atomically only if nothing is there yet.
    pub fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let path = self.object_path(key);
        let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.block_on(self.inner.put_opts(&path, PutPayload::from(bytes), options)) {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(StoreError::AlreadyExists { url: self.url_of(key) }),
            Err(e) => Err(self.object_error(key, e)),
        }
    }

    /// Reads `key`, or `None` if it does not exist.
    pub fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let path = self.object_path(key);
        self.block_on(async {
            match self.inner.get(&path).await {
                Ok(result) => result.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .map_err(|e| self.object_error(key, e))
    }

    /// Bytes `range` of `key` (which must exist and hold them).
    pub fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes, StoreError> {
        let path = self.object_path(key);
        self.block_on(self.inner.get_range(&path, range)).map_err(|e| self.object_error(key, e))
    }

    /// Byte `ranges` of `key` (which must exist and hold them), nearby ranges fetched together.
    pub fn get_ranges(&self, key: &str, ranges: &[std::ops::Range<u64>]) -> Result<Vec<Bytes>, StoreError> {
        let path = self.object_path(key);
        self.block_on(self.inner.get_ranges(&path, ranges)).map_err(|e| self.object_error(key, e))
    }

    /// The size of `key` in bytes, or `None` if it does not exist.
    pub fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let path = self.object_path(key);
        match self.block_on(self.inner.head(&path)) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.object_error(key, e)),
        }
    }

    /// Whether `key` exists.
    pub fn exists(&self, key: &str) -> Result<bool, StoreError> {
        self.size(key).map(|size| size.is_some())
    }

    /// Keys (relative to this location) of every object under `key_prefix`, sorted.
    pub fn list(&self, key_prefix: &str) -> Result<Vec<String>, StoreError> {
        let path = self.object_path(key_prefix);
        let objects: Vec<object_store::ObjectMeta> =
            self.block_on(self.inner.list(Some(&path)).try_collect()).map_err(|e| self.object_error(key_prefix, e))?;
        let prefix = self.prefix.as_ref();
        let mut keys: Vec<String> = objects
            .into_iter()
            .map(|meta| {
                let full = meta.location.as_ref().to_string();
                full.strip_prefix(prefix).unwrap_or(&full).trim_start_matches('/').to_string()
            })
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// For a local location, an exclusive lock on the file `key`, held by this process until the
    /// returned [`Lock::Held`] is dropped (the kernel releases it when a process dies, however it
    /// dies); [`Lock::Busy`] when another live process holds it; [`Lock::NotLocal`] for object stores.
    pub fn try_lock(&self, key: &str) -> Result<Lock, StoreError> {
        let Some(root) = &self.local_root else { return Ok(Lock::NotLocal) };
        let path = root.join(key);
        let local_error = |e: std::io::Error| StoreError::Local { path: path.clone(), message: e.to_string() };
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder).map_err(local_error)?;
        }
        let file =
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(local_error)?;
        match file.try_lock() {
            Ok(()) => Ok(Lock::Held(file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(Lock::Busy),
            Err(std::fs::TryLockError::Error(e)) => Err(local_error(e)),
        }
    }

    /// Removes what a killed upload of `key` left: object_store stages a local upload as
    /// `KEY#N` beside the target (invisible to listings) and renames it on completion. Call it only
    /// while holding [`Store::try_lock`] for the shard, so that no live upload is removed. Returns
    /// how many were removed. In S3 and Azure an interrupted multipart upload is never visible and
    /// expires by the bucket's lifecycle rule (see docs/operations.md "Identity, reruns and concurrent tasks").
    pub fn clean_staging(&self, key: &str) -> Result<usize, StoreError> {
        let Some(root) = &self.local_root else { return Ok(0) };
        let target = root.join(key);
        let (Some(folder), Some(name)) = (target.parent(), target.file_name()) else { return Ok(0) };
        let staged_prefix = format!("{}#", name.to_string_lossy());
        let entries = match std::fs::read_dir(folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(StoreError::Local { path: folder.to_path_buf(), message: e.to_string() }),
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&staged_prefix) {
                std::fs::remove_file(entry.path())
                    .map_err(|e| StoreError::Local { path: entry.path(), message: e.to_string() })?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Deletes `key`; a missing object is not an error.
    pub fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.object_path(key);
        match self.block_on(self.inner.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.object_error(key, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_list_and_create_if_absent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("run").display().to_string()).unwrap();
        store.put("a/x.json", b"1".to_vec()).unwrap();
        store.put("a/y.json", b"2".to_vec()).unwrap();
        assert_eq!(store.get("a/x.json").unwrap().unwrap().as_ref(), b"1");
        assert!(store.get("a/none").unwrap().is_none());
        assert_eq!(store.list("a").unwrap(), vec!["a/x.json".to_string(), "a/y.json".to_string()]);
        assert!(matches!(store.put_if_absent("a/x.json", b"3".to_vec()), Err(StoreError::AlreadyExists { .. })));
        assert!(dir.path().join("run/a/y.json").is_file());
        let by_url = Store::open(&format!("file://{}", dir.path().join("run").display())).unwrap();
        assert!(by_url.exists("a/y.json").unwrap());
        assert_eq!(by_url.size("a/y.json").unwrap(), Some(1));
        assert_eq!(by_url.size("a/none").unwrap(), None);
        store.put("a/z.bin", b"0123456789".to_vec()).unwrap();
        assert_eq!(store.get_range("a/z.bin", 2..5).unwrap().as_ref(), b"234");
        assert!(Store::open("gopher://x").is_err());
        // What a killed upload leaves beside its target is cleaned, the target and others kept.
        std::fs::write(dir.path().join("run/a/z.bin#3"), b"partial").unwrap();
        std::fs::write(dir.path().join("run/a/y.json#1"), b"partial").unwrap();
        assert_eq!(store.clean_staging("a/z.bin").unwrap(), 1);
        assert!(!dir.path().join("run/a/z.bin#3").exists() && dir.path().join("run/a/y.json#1").exists());
        assert!(store.exists("a/z.bin").unwrap());
        let held = store.try_lock("a/lock").unwrap();
        assert!(matches!(held, Lock::Held(_)));
        assert!(matches!(store.try_lock("a/lock").unwrap(), Lock::Busy), "held through another handle");
        drop(held);
        assert!(matches!(store.try_lock("a/lock").unwrap(), Lock::Held(_)));
    }
}
