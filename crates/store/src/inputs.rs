//! Inputs by location: images, masks, lists and weights named by a local path or by a URL.
//!
//! A location with a scheme (`s3://bucket/key`, `gs://`, `az://`, `file://`) is read through the
//! object store of its bucket, opened once per process and shared; anything else is a local path read
//! with `std::fs`. Locations are carried as `Path`s (a URL is a valid Unix path string), so the rest of
//! padim names inputs the same way whatever holds them.

use crate::{Store, StoreError};
use bytes::Bytes;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

pub use padim_core::config::is_url;

/// The store of a URL's bucket and the key of the URL under it.
fn bucket_and_key(location: &Path) -> Result<(Store, String), StoreError> {
    static STORES: OnceLock<Mutex<HashMap<String, Store>>> = OnceLock::new();
    let text = location.to_str().unwrap_or_default();
    let url = url::Url::parse(text)
        .map_err(|e| StoreError::Location { location: text.to_string(), message: e.to_string() })?;
    let (root, key) = if url.scheme() == "file" {
        let path = url.to_file_path().map_err(|()| StoreError::Location {
            location: text.to_string(),
            message: "not a local file URL".into(),
        })?;
        ("file:///".to_string(), path.to_string_lossy().trim_start_matches('/').to_string())
    } else {
        let root = format!("{}://{}", url.scheme(), &url[url::Position::BeforeUsername..url::Position::AfterPort]);
        (root, url.path().trim_start_matches('/').to_string())
    };
    let mut stores = STORES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    let store = match stores.get(&root) {
        Some(store) => store.clone(),
        None => {
            let store = Store::open(&root)?;
            stores.insert(root, store.clone());
            store
        }
    };
    Ok((store, key))
}

/// Reads the whole input at `location`; a missing input is an error that names it.
pub fn read_input(location: &Path) -> Result<Bytes, StoreError> {
    read_input_opt(location)?
        .ok_or_else(|| StoreError::Invalid { url: location.display().to_string(), message: "no such object".into() })
}

/// Reads the input at `location`, or `None` if there is none.
pub fn read_input_opt(location: &Path) -> Result<Option<Bytes>, StoreError> {
    if !is_url(location) {
        return match std::fs::read(location) {
            Ok(bytes) => Ok(Some(Bytes::from(bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Local { path: location.to_path_buf(), message: e.to_string() }),
        };
    }
    let (store, key) = bucket_and_key(location)?;
    store.get(&key)
}

/// Reads many inputs, up to 32 remote ones at a time; results in the order of `locations`.
pub fn read_inputs(locations: &[&Path]) -> Vec<Result<Bytes, StoreError>> {
    if !locations.iter().any(|l| is_url(l)) {
        return locations.iter().map(|l| read_input(l)).collect();
    }
    // Local paths are read as they come; URLs through their bucket's store, many at a time.
    let opened: Vec<Option<Result<(Store, String), StoreError>>> =
        locations.iter().map(|l| is_url(l).then(|| bucket_and_key(l))).collect();
    let Some(Some(Ok((runtime_store, _)))) = opened.iter().find(|o| matches!(o, Some(Ok(_)))) else {
        return locations.iter().map(|l| read_input(l)).collect();
    };
    let runtime_store = runtime_store.clone();
    let futures = opened.into_iter().zip(locations).map(|(opened, location)| async move {
        let Some(opened) = opened else { return read_input(location) };
        let (store, key) = opened?;
        let path = store.object_path(&key);
        let inner = store.inner();
        let result = match inner.get(&path).await {
            Ok(result) => result.bytes().await,
            Err(e) => Err(e),
        };
        result.map_err(|e| StoreError::of_object_store(location.display().to_string(), &e))
    });
    runtime_store.block_on(futures::stream::iter(futures).buffered(32).collect())
}

/// Every object under the URL `prefix` (a "folder"), as full URLs, sorted.
pub fn list_inputs(prefix: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let (store, key) = bucket_and_key(prefix)?;
    let base = prefix.to_str().unwrap_or_default().trim_end_matches('/');
    let key = key.trim_end_matches('/');
    Ok(store
        .list(key)?
        .into_iter()
        .map(|k| PathBuf::from(format!("{base}/{}", k.strip_prefix(key).unwrap_or(&k).trim_start_matches('/'))))
        .collect())
}

/// The dataset's files, local or in object stores, for `padim_core::dataset::list_images_in`.
#[derive(Debug, Clone, Copy, Default)]
pub struct InputFiles;

use padim_core::dataset::FilesError;

impl padim_core::dataset::Files for InputFiles {
    fn read(&self, path: &Path) -> Result<Vec<u8>, FilesError> {
        read_input(path).map(|b| b.to_vec()).map_err(|e| e.into())
    }

    fn list_files(&self, dir: &Path) -> Result<Vec<PathBuf>, FilesError> {
        if is_url(dir) {
            list_inputs(dir).map_err(|e| e.into())
        } else {
            padim_core::dataset::LocalFiles.list_files(dir)
        }
    }

    fn is_file(&self, path: &Path) -> bool {
        // One request per listed object would be slow; a missing object is reported when read.
        is_url(path) || path.is_file()
    }
}

/// A local copy of the input at `location`: the path itself if local, else a file in padim's cache
/// folder (`PADIM_CACHE`, else `$XDG_CACHE_HOME/padim`, else `~/.cache/padim`) named by the SHA-256
/// of its content. With `expected_sha256`, a cached copy is used without downloading again.
pub fn local_copy(location: &Path, expected_sha256: Option<&str>) -> Result<PathBuf, StoreError> {
    use sha2::{Digest, Sha256};
    if !is_url(location) {
        return Ok(location.to_path_buf());
    }
    let cache = cache_dir().join("inputs");
    let extension = location.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    if let Some(sha) = expected_sha256 {
        let cached = cache.join(format!("{sha}{extension}"));
        if cached.is_file() {
            return Ok(cached);
        }
    }
    let bytes = read_input(location)?;
    let sha = hex::encode(Sha256::digest(&bytes));
    let local_error =
        |path: &Path, e: std::io::Error| StoreError::Local { path: path.to_path_buf(), message: e.to_string() };
    std::fs::create_dir_all(&cache).map_err(|e| local_error(&cache, e))?;
    let target = cache.join(format!("{sha}{extension}"));
    // Written under a unique name and renamed: a reader never sees a partial file.
    let partial = tempfile::NamedTempFile::new_in(&cache).map_err(|e| local_error(&cache, e))?;
    std::fs::write(partial.path(), &bytes).map_err(|e| local_error(partial.path(), e))?;
    partial.persist(&target).map_err(|e| local_error(&target, e.error))?;
    Ok(target)
}

fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PADIM_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("padim");
    }
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir).join(".cache").join("padim")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths() {
        assert!(is_url(Path::new("s3://bucket/a.png")));
        assert!(is_url(Path::new("file:///tmp/a.png")));
        assert!(!is_url(Path::new("/data/a.png")));
        assert!(!is_url(Path::new("relative/a://b")));
    }

    #[test]
    fn reads_local_files_and_file_urls_alike() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        std::fs::write(&path, b"abc").unwrap();
        let url = PathBuf::from(format!("file://{}", path.display()));
        assert_eq!(read_input(&path).unwrap().as_ref(), b"abc");
        assert_eq!(read_input(&url).unwrap().as_ref(), b"abc");
        assert!(read_input_opt(&dir.path().join("none")).unwrap().is_none());
        let both = read_inputs(&[url.as_path(), path.as_path()]);
        assert!(both.iter().all(|r| r.as_ref().unwrap().as_ref() == b"abc"));
        let listed = list_inputs(&PathBuf::from(format!("file://{}", dir.path().display()))).unwrap();
        assert_eq!(listed, vec![url.clone()]);
        let missing = read_input(&PathBuf::from(format!("file://{}/none", dir.path().display()))).unwrap_err();
        assert!(missing.to_string().contains("none"), "{missing}");
    }
}
