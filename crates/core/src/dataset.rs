//! Listing the images of a dataset: folders whose names are labels, a list of files, or a manifest.
//!
//! The listing is deterministic (sorted by label, then by path) so that image ids and shard
//! assignments are the same on every machine that sees the same files.

use crate::config::{Dataset, DatasetSource};
use std::path::{Path, PathBuf};

/// One image of the dataset. `id` is its position in the sorted listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    pub id: u32,
    pub path: PathBuf,
    pub label: String,
    /// The split named by a manifest, if any.
    pub split: Option<String>,
    /// SHA-256 of the file's content when the split stage recorded it (the images of a job are
    /// taken from its manifest, so the extract stage can tell a replaced file).
    pub sha256: Option<String>,
}

/// Why [`Files`] could not read or list: an IO error, or the storage layer's own error kept whole
/// (so that an outage of an object store stays one, up to the exit code).
pub type FilesError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot read {path}")]
    Io { path: PathBuf, source: FilesError },
    #[error("{path}, line {line}: {problem}")]
    Line { path: PathBuf, line: usize, problem: String },
    #[error("label folder {path} does not exist or holds no files; the job's `dataset.labels` names it")]
    MissingLabel { path: PathBuf },
    #[error("the dataset at {path} holds no images (looked for extensions {extensions:?})")]
    Empty { path: PathBuf, extensions: Vec<String> },
    #[error("{path} is listed twice in the dataset ({first} and {second})")]
    Duplicate { path: PathBuf, first: String, second: String },
}

/// Where the dataset's files are read: the local file system here; object stores through an
/// implementation in padim-store. Paths are local paths or URLs (`s3://bucket/key`).
pub trait Files {
    /// The whole content of `path`.
    fn read(&self, path: &Path) -> Result<Vec<u8>, FilesError>;
    /// Every file under the folder `dir`, at any depth, sorted.
    fn list_files(&self, dir: &Path) -> Result<Vec<PathBuf>, FilesError>;
    /// Whether `path` names a file. Object stores may answer `true` without asking (a missing
    /// object is then reported when it is read).
    fn is_file(&self, path: &Path) -> bool;
    /// Whether `path` is a URL, whose entries in lists are not joined to a base folder.
    fn is_url(&self, path: &Path) -> bool {
        crate::config::is_url(path)
    }
}

/// The local file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalFiles;

impl Files for LocalFiles {
    fn read(&self, path: &Path) -> Result<Vec<u8>, FilesError> {
        std::fs::read(path).map_err(|e| e.into())
    }

    fn list_files(&self, dir: &Path) -> Result<Vec<PathBuf>, FilesError> {
        let mut files = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let failed = |source: std::io::Error| DatasetError::Io { path: dir.clone(), source: source.into() };
            let entries = std::fs::read_dir(&dir).map_err(failed)?;
            for entry in entries {
                let path = entry.map_err(failed)?.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    files.push(path);
                }
            }
        }
        files.sort();
        Ok(files)
    }

    fn is_file(&self, path: &Path) -> bool {
        path.is_file()
    }
}

impl Dataset {
    /// The folder (or URL prefix) that the image paths of the split manifest are relative to: the
    /// root of label folders, or the folder of the list or manifest file. Recording paths relative
    /// to it keeps a run valid when the dataset is moved or mounted elsewhere.
    pub fn base(&self) -> PathBuf {
        match &self.source {
            DatasetSource::Folders { root, .. } => root.clone(),
            DatasetSource::List { path } | DatasetSource::Manifest { path } => {
                path.parent().map(Path::to_path_buf).unwrap_or_default()
            }
        }
    }

    /// The mask file of `image` by the job's `mask` pattern (`{stem}` = the image's file stem, in the
    /// image's folder); `None` without a pattern.
    pub fn mask_path(&self, image: &Path) -> Option<PathBuf> {
        let pattern = self.mask.as_ref()?;
        let stem = image.file_stem()?.to_string_lossy();
        Some(image.with_file_name(pattern.replace("{stem}", &stem)))
    }

    /// `path` relative to [`Dataset::base`] when it lies below it (with `/` separators), else as it is.
    pub fn relative_path(&self, path: &Path) -> String {
        let base = self.base();
        let base = base.to_string_lossy();
        let base = base.trim_end_matches('/');
        let text = path.to_string_lossy();
        match text.strip_prefix(base).and_then(|rest| rest.strip_prefix('/')) {
            Some(relative) if !base.is_empty() => relative.to_string(),
            _ => text.into_owned(),
        }
    }

    /// The path of an image recorded as [`Dataset::relative_path`] under the dataset's base now.
    pub fn resolve_path(&self, recorded: &str) -> PathBuf {
        let recorded_path = Path::new(recorded);
        if crate::config::is_url(recorded_path) || recorded_path.is_absolute() {
            return recorded_path.to_path_buf();
        }
        let base = self.base();
        if crate::config::is_url(&base) {
            PathBuf::from(format!("{}/{recorded}", base.to_string_lossy().trim_end_matches('/')))
        } else {
            base.join(recorded)
        }
    }
}

/// Lists the images of `dataset` on the local file system, sorted and numbered.
pub fn list_images(dataset: &Dataset) -> Result<Vec<ImageRecord>, DatasetError> {
    list_images_in(dataset, &LocalFiles)
}

/// Lists the images of `dataset` read through `files`, sorted and numbered.
pub fn list_images_in(dataset: &Dataset, files: &dyn Files) -> Result<Vec<ImageRecord>, DatasetError> {
    let mut entries: Vec<(String, PathBuf, Option<String>, String)> = match &dataset.source {
        DatasetSource::Folders { root, labels, extensions } => {
            without_masks(dataset, list_folders(files, root, labels, extensions)?)
        }
        DatasetSource::List { path } => list_file(files, path)?,
        DatasetSource::Manifest { path } => list_manifest(files, path)?,
    };
    entries.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    for pair in entries.windows(2) {
        if pair[0].1 == pair[1].1 {
            return Err(DatasetError::Duplicate {
                path: pair[0].1.clone(),
                first: pair[0].3.clone(),
                second: pair[1].3.clone(),
            });
        }
    }
    Ok(entries
        .into_iter()
        .enumerate()
        .map(|(id, (label, path, split, _))| ImageRecord { id: id as u32, path, label, split, sha256: None })
        .collect())
}

type Entry = (String, PathBuf, Option<String>, String);

/// Every file under `root` whose first folder below `root` is a label (all, or those of `labels`).
fn list_folders(
    files: &dyn Files,
    root: &Path,
    labels: &[String],
    extensions: &[String],
) -> Result<Vec<Entry>, DatasetError> {
    let io = |source: FilesError| DatasetError::Io { path: root.to_path_buf(), source };
    let root_text = root.to_string_lossy();
    let root_text = root_text.trim_end_matches('/');
    let mut entries = Vec::new();
    let mut seen_labels = std::collections::BTreeSet::new();
    for path in files.list_files(root).map_err(io)? {
        let text = path.to_string_lossy();
        let Some(relative) = text.strip_prefix(root_text).map(|r| r.trim_start_matches('/')) else {
            continue;
        };
        // Files directly under the root have no label folder.
        let Some((label, below)) = relative.split_once('/') else { continue };
        if !labels.is_empty() && !labels.iter().any(|l| l == label) {
            continue;
        }
        seen_labels.insert(label.to_string());
        if has_extension(&path, extensions) {
            let folder = below.rsplit_once('/').map(|(folder, _)| format!("{label}/{folder}")).unwrap_or(label.into());
            let origin = format!("folder {root_text}/{folder}");
            entries.push((label.to_string(), path.clone(), None, origin));
        }
    }
    if let Some(missing) = labels.iter().find(|l| !seen_labels.contains(*l)) {
        return Err(DatasetError::MissingLabel { path: PathBuf::from(format!("{root_text}/{missing}")) });
    }
    if entries.is_empty() {
        return Err(DatasetError::Empty { path: root.to_path_buf(), extensions: extensions.to_vec() });
    }
    Ok(entries)
}

/// The listed files less those that are another listed file's mask (`{stem}_mask.png` beside PNG
/// images has the images' own extension): a mask is never an image of its label.
fn without_masks(dataset: &Dataset, entries: Vec<Entry>) -> Vec<Entry> {
    if dataset.mask.is_none() {
        return entries;
    }
    let masks: std::collections::HashSet<PathBuf> =
        entries.iter().filter_map(|(_, path, _, _)| dataset.mask_path(path).filter(|mask| mask != path)).collect();
    entries.into_iter().filter(|(_, path, _, _)| !masks.contains(path)).collect()
}

fn has_extension(path: &Path, extensions: &[String]) -> bool {
    path.extension().map(|e| e.to_string_lossy().to_lowercase()).is_some_and(|e| extensions.contains(&e))
}

/// The label of a listed file is the name of the folder that holds it.
fn parent_label(path: &Path) -> String {
    path.parent().and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// A file named in a list or manifest: a URL as it is, a path relative to the list's folder.
fn entry_path(files: &dyn Files, base: &Path, entry: &str) -> PathBuf {
    if files.is_url(Path::new(entry)) {
        PathBuf::from(entry)
    } else if files.is_url(base) {
        PathBuf::from(format!("{}/{entry}", base.to_string_lossy().trim_end_matches('/')))
    } else {
        crate::config::normalize(&base.join(entry))
    }
}

fn read_text(files: &dyn Files, path: &Path) -> Result<String, DatasetError> {
    let bytes = files.read(path).map_err(|source| DatasetError::Io { path: path.to_path_buf(), source })?;
    String::from_utf8(bytes).map_err(|_| DatasetError::Io {
        path: path.to_path_buf(),
        source: Box::new(std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text")),
    })
}

fn list_file(files: &dyn Files, list: &Path) -> Result<Vec<Entry>, DatasetError> {
    let text = read_text(files, list)?;
    let base = list.parent().unwrap_or(Path::new("."));
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let path = entry_path(files, base, line);
        if !files.is_file(&path) {
            return Err(DatasetError::Line {
                path: list.to_path_buf(),
                line: index + 1,
                problem: format!("{} is not a file", path.display()),
            });
        }
        let origin = format!("{} line {}", list.display(), index + 1);
        entries.push((parent_label(&path), path, None, origin));
    }
    if entries.is_empty() {
        return Err(DatasetError::Empty { path: list.to_path_buf(), extensions: vec![] });
    }
    Ok(entries)
}

fn list_manifest(files: &dyn Files, manifest: &Path) -> Result<Vec<Entry>, DatasetError> {
    let text = read_text(files, manifest)?;
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(text.as_bytes());
    let line_error = |line: usize, problem: String| DatasetError::Line { path: manifest.to_path_buf(), line, problem };
    let headers = reader.headers().map_err(|e| line_error(1, e.to_string()))?.clone();
    let column = |name: &str| headers.iter().position(|h| h == name);
    let path_col = column("path").ok_or_else(|| line_error(1, "the header has no `path` column".into()))?;
    let label_col = column("label").ok_or_else(|| line_error(1, "the header has no `label` column".into()))?;
    let split_col = column("split");
    let base = manifest.parent().unwrap_or(Path::new("."));
    let mut entries = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let line = index + 2;
        let record = record.map_err(|e| line_error(line, e.to_string()))?;
        let field = |col: usize| record.get(col).unwrap_or("").to_string();
        let path = entry_path(files, base, &field(path_col));
        if !files.is_file(&path) {
            return Err(line_error(line, format!("{} is not a file", path.display())));
        }
        let label = field(label_col);
        if label.is_empty() {
            return Err(line_error(line, "the label is empty".into()));
        }
        let split = split_col.map(field).filter(|s| !s.is_empty());
        let origin = format!("{} line {line}", manifest.display());
        entries.push((label, path, split, origin));
    }
    if entries.is_empty() {
        return Err(DatasetError::Empty { path: manifest.to_path_buf(), extensions: vec![] });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    fn folders(root: &Path, labels: &[&str]) -> Dataset {
        Dataset {
            source: DatasetSource::Folders {
                root: root.to_path_buf(),
                labels: labels.iter().map(|s| s.to_string()).collect(),
                extensions: vec!["jpg".into(), "png".into()],
            },
            normal: vec!["good".into()],
            mask: None,
        }
    }

    #[test]
    fn masks_named_like_images_are_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["good/a.png", "bad/b.png", "bad/b_mask.png", "bad/c_mask.png", "bad/d.png", "bad/d.jpg"] {
            touch(&dir.path().join(name));
        }
        let listed = |mask: Option<&str>| {
            let dataset = Dataset { mask: mask.map(str::to_string), ..folders(dir.path(), &[]) };
            let images = list_images(&dataset).unwrap();
            images.iter().map(|r| r.path.strip_prefix(dir.path()).unwrap().display().to_string()).collect::<Vec<_>>()
        };
        // b_mask.png is b.png's mask; c_mask.png names no image, so it stays an image.
        assert_eq!(
            listed(Some("{stem}_mask.png")),
            ["bad/b.png", "bad/c_mask.png", "bad/d.jpg", "bad/d.png", "good/a.png"]
        );
        // d.png is d.jpg's mask, but a.png is not its own mask.
        assert_eq!(
            listed(Some("{stem}.png")),
            ["bad/b.png", "bad/b_mask.png", "bad/c_mask.png", "bad/d.jpg", "good/a.png"]
        );
        assert_eq!(listed(None).len(), 6);
    }

    #[test]
    fn folders_are_labels_sorted_and_numbered() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["good/b.jpg", "good/a.JPG", "bad/z.png", "bad/sub/y.jpg", "bad/notes.txt"] {
            touch(&dir.path().join(name));
        }
        let images = list_images(&folders(dir.path(), &[])).unwrap();
        let names: Vec<(u32, String, String)> = images
            .iter()
            .map(|r| (r.id, r.label.clone(), r.path.strip_prefix(dir.path()).unwrap().display().to_string()))
            .collect();
        assert_eq!(
            names,
            vec![
                (0, "bad".into(), "bad/sub/y.jpg".into()),
                (1, "bad".into(), "bad/z.png".into()),
                (2, "good".into(), "good/a.JPG".into()),
                (3, "good".into(), "good/b.jpg".into()),
            ]
        );
        assert!(matches!(list_images(&folders(dir.path(), &["nope"])), Err(DatasetError::MissingLabel { .. })));
    }

    #[test]
    fn relative_paths_resolve_under_a_moved_base() {
        let here = folders(Path::new("/data/v1"), &[]);
        let there = folders(Path::new("/mnt/other/"), &[]);
        assert_eq!(here.relative_path(Path::new("/data/v1/good/a.jpg")), "good/a.jpg");
        assert_eq!(there.resolve_path("good/a.jpg"), Path::new("/mnt/other/good/a.jpg"));
        // Outside the base (a list naming other folders): kept absolute.
        assert_eq!(here.relative_path(Path::new("/data/v10/a.jpg")), "/data/v10/a.jpg");
        assert_eq!(there.resolve_path("/data/v10/a.jpg"), Path::new("/data/v10/a.jpg"));
        let bucket = folders(Path::new("s3://bucket/data"), &[]);
        assert_eq!(bucket.relative_path(Path::new("s3://bucket/data/good/a.jpg")), "good/a.jpg");
        assert_eq!(bucket.resolve_path("good/a.jpg"), Path::new("s3://bucket/data/good/a.jpg"));
    }

    #[test]
    fn manifest_errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("x/a.jpg"));
        let manifest = dir.path().join("m.csv");
        std::fs::write(&manifest, "path,label,split\nx/a.jpg,good,train\nx/missing.jpg,good,test\n").unwrap();
        let dataset = Dataset { source: DatasetSource::Manifest { path: manifest }, normal: vec![], mask: None };
        let message = list_images(&dataset).unwrap_err().to_string();
        assert!(message.contains("m.csv, line 3") && message.contains("missing.jpg"), "{message}");
    }

    #[test]
    fn list_labels_by_parent_folder_and_rejects_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("ok/a.jpg"));
        let list = dir.path().join("files.txt");
        std::fs::write(&list, "# comment\nok/a.jpg\n\n").unwrap();
        let dataset = Dataset { source: DatasetSource::List { path: list.clone() }, normal: vec![], mask: None };
        let images = list_images(&dataset).unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].label, "ok");
        std::fs::write(&list, "ok/a.jpg\nok/../ok/a.jpg\n").unwrap();
        let message = list_images(&dataset).unwrap_err().to_string();
        assert!(message.contains("listed twice"), "{message}");
    }
}
