//! `padim predict`'s inputs: files, folders (searched at any depth), shell patterns, and object-store
//! URLs (one object, or every image under a prefix).

use crate::PredictError;
use padim_core::dataset::{Files, LocalFiles};
use std::path::{Path, PathBuf};

/// Image extensions taken from folders, patterns and prefixes (files named one by one are taken
/// whatever their extension).
const EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp"];

fn is_image(path: &Path) -> bool {
    path.extension().map(|e| e.to_string_lossy().to_lowercase()).is_some_and(|e| EXTENSIONS.contains(&e.as_str()))
}

/// Every image named by `inputs`, in the order given (folders, patterns and prefixes sorted);
/// an input that names nothing is an error that says which.
pub fn expand_inputs(inputs: &[String]) -> Result<Vec<PathBuf>, PredictError> {
    let mut out = Vec::new();
    for input in inputs {
        let path = PathBuf::from(input);
        let found: Vec<PathBuf> = if padim_store::is_url(&path) {
            let listed: Vec<PathBuf> = padim_store::list_inputs(&path)?.into_iter().filter(|p| is_image(p)).collect();
            if listed.is_empty() && !input.ends_with('/') { vec![path] } else { listed }
        } else if path.is_dir() {
            let files =
                LocalFiles.list_files(&path).map_err(|source| PredictError::List { path: path.clone(), source })?;
            files.into_iter().filter(|p| is_image(p)).collect()
        } else if path.exists() {
            vec![path]
        } else if input.contains(['*', '?', '[']) {
            let pattern = glob::glob(input).map_err(|e| PredictError::Input(format!("pattern `{input}`: {e}")))?;
            let mut matched: Vec<PathBuf> = pattern.filter_map(Result::ok).filter(|p| p.is_file()).collect();
            matched.sort();
            matched
        } else {
            return Err(PredictError::Input(format!("{input}: no such file or folder")));
        };
        if found.is_empty() {
            return Err(PredictError::Input(format!("{input} names no images (extensions {})", EXTENSIONS.join(", "))));
        }
        out.extend(found);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_folders_patterns_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a/1.png", "a/b/2.JPG", "a/notes.txt", "c.jpg"] {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
        let d = dir.path().display();
        let found = expand_inputs(&[format!("{d}/a"), format!("{d}/*.jpg"), format!("{d}/a/notes.txt")]).unwrap();
        let names: Vec<String> =
            found.iter().map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string()).collect();
        assert_eq!(names, ["a/1.png", "a/b/2.JPG", "c.jpg", "a/notes.txt"]);
        let message = expand_inputs(&[format!("{d}/missing.png")]).unwrap_err().to_string();
        assert!(message.contains("missing.png") && message.contains("no such file"), "{message}");
        let message = expand_inputs(&[format!("{d}/*.gif")]).unwrap_err().to_string();
        assert!(message.contains("names no images"), "{message}");
    }
}
