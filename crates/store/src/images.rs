//! The image table beside the embeddings: which file each image id is, and what happened to it.
//!
//! Columns: `image` (UInt32), `path` (Utf8, as listed), `label` (Utf8), `split` (Utf8, nullable),
//! `bytes` (UInt64), `sha256` (Utf8, hex; empty when the file could not be read), `width` and
//! `height` (UInt32, of the decoded image; 0 when not decoded), `status` (`ok` or `skipped`) and
//! `error` (Utf8, nullable: why a skipped image was skipped).

use crate::table::{get_table, put_table};
use crate::{Store, StoreError};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageStatus {
    Ok,
    Skipped,
}

impl ImageStatus {
    fn as_str(self) -> &'static str {
        match self {
            ImageStatus::Ok => "ok",
            ImageStatus::Skipped => "skipped",
        }
    }
}

/// One row of the image table.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRow {
    pub image: u32,
    pub path: String,
    pub label: String,
    pub split: Option<String>,
    pub bytes: u64,
    pub sha256: String,
    pub width: u32,
    pub height: u32,
    pub status: ImageStatus,
    pub error: Option<String>,
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("image", DataType::UInt32, false),
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, true),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("sha256", DataType::Utf8, false),
        Field::new("width", DataType::UInt32, false),
        Field::new("height", DataType::UInt32, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, true),
    ]))
}

/// Writes the table to `key` atomically (it is small: encoded in memory, then one put).
pub fn write_image_table(store: &Store, key: &str, rows: &[ImageRow]) -> Result<(), StoreError> {
    let url = store.url_of(key);
    let strings = |f: &dyn Fn(&ImageRow) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<Option<String>>>()))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from(rows.iter().map(|r| r.image).collect::<Vec<_>>())),
        strings(&|r| Some(r.path.clone())),
        strings(&|r| Some(r.label.clone())),
        strings(&|r| r.split.clone()),
        Arc::new(UInt64Array::from(rows.iter().map(|r| r.bytes).collect::<Vec<_>>())),
        strings(&|r| Some(r.sha256.clone())),
        Arc::new(UInt32Array::from(rows.iter().map(|r| r.width).collect::<Vec<_>>())),
        Arc::new(UInt32Array::from(rows.iter().map(|r| r.height).collect::<Vec<_>>())),
        strings(&|r| Some(r.status.as_str().to_string())),
        strings(&|r| r.error.clone()),
    ];
    let batch = RecordBatch::try_new(schema(), columns)
        .map_err(|e| StoreError::Parquet { url: url.clone(), message: e.to_string() })?;
    put_table(store, key, &batch)
}

/// Reads an image table written by [`write_image_table`].
pub fn read_image_table(store: &Store, key: &str) -> Result<Vec<ImageRow>, StoreError> {
    let url = store.url_of(key);
    let format_error = |message: String| StoreError::Format { url: url.clone(), message };
    let mut rows = Vec::new();
    for batch in get_table(store, key)? {
        let column = |name: &str| batch.column_by_name(name).ok_or_else(|| format_error(format!("no column `{name}`")));
        let u32s = |name: &str| -> Result<UInt32Array, StoreError> {
            column(name)?
                .as_any()
                .downcast_ref::<UInt32Array>()
                .cloned()
                .ok_or_else(|| format_error(format!("`{name}` is not UInt32")))
        };
        let strs = |name: &str| -> Result<StringArray, StoreError> {
            column(name)?
                .as_any()
                .downcast_ref::<StringArray>()
                .cloned()
                .ok_or_else(|| format_error(format!("`{name}` is not Utf8")))
        };
        let (image, width, height) = (u32s("image")?, u32s("width")?, u32s("height")?);
        let (path, label, split, sha, status, error) =
            (strs("path")?, strs("label")?, strs("split")?, strs("sha256")?, strs("status")?, strs("error")?);
        let bytes = column("bytes")?
            .as_any()
            .downcast_ref::<UInt64Array>()
            .cloned()
            .ok_or_else(|| format_error("`bytes` is not UInt64".into()))?;
        let optional = |a: &StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_string());
        for i in 0..batch.num_rows() {
            rows.push(ImageRow {
                image: image.value(i),
                path: path.value(i).to_string(),
                label: label.value(i).to_string(),
                split: optional(&split, i),
                bytes: bytes.value(i),
                sha256: sha.value(i).to_string(),
                width: width.value(i),
                height: height.value(i),
                status: if status.value(i) == "ok" { ImageStatus::Ok } else { ImageStatus::Skipped },
                error: optional(&error, i),
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().display().to_string()).unwrap();
        let rows = vec![
            ImageRow {
                image: 0,
                path: "/a/b.jpg".into(),
                label: "good".into(),
                split: None,
                bytes: 10,
                sha256: "ab".into(),
                width: 227,
                height: 227,
                status: ImageStatus::Ok,
                error: None,
            },
            ImageRow {
                image: 1,
                path: "/a/c.jpg".into(),
                label: "bad".into(),
                split: Some("test".into()),
                bytes: 0,
                sha256: String::new(),
                width: 0,
                height: 0,
                status: ImageStatus::Skipped,
                error: Some("empty".into()),
            },
        ];
        write_image_table(&store, "images.parquet", &rows).unwrap();
        assert_eq!(read_image_table(&store, "images.parquet").unwrap(), rows);
    }
}
