//! Parquet tables: small ones (image tables, scores) encoded in memory and published with one
//! atomic put, read back whole; and [`Upload`], the streaming write of a large one (embeddings,
//! maps) that becomes visible only when complete.

use crate::{Store, StoreError};
use arrow_array::RecordBatch;
use object_store::buffered::BufWriter;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Encodes `batch` as a Parquet file and puts it at `key` atomically.
pub(crate) fn put_table(store: &Store, key: &str, batch: &RecordBatch) -> Result<(), StoreError> {
    let url = store.url_of(key);
    let error = |e: parquet::errors::ParquetError| StoreError::parquet(&url, e);
    let mut buffer = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buffer, batch.schema(), None).map_err(error)?;
    writer.write(batch).map_err(error)?;
    writer.close().map_err(error)?;
    store.put(key, buffer)
}

/// Reads every record batch of the Parquet file at `key`.
pub(crate) fn get_table(store: &Store, key: &str) -> Result<Vec<RecordBatch>, StoreError> {
    let url = store.url_of(key);
    let error = |message: String| StoreError::Parquet { url: url.clone(), message };
    let bytes = store.get(key)?.ok_or_else(|| StoreError::Invalid { url: url.clone(), message: "not found".into() })?;
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(bytes).and_then(|b| b.build()).map_err(|e| error(e.to_string()))?;
    reader.map(|batch| batch.map_err(|e| error(e.to_string()))).collect()
}

impl Store {
    /// Writes the object at `key` as `write` streams it (in parts: an object of hundreds of
    /// megabytes is never held whole). It appears only when `write` and the upload succeed; a
    /// failed request underneath keeps its kind (transient or not).
    pub fn put_streamed(
        &self,
        key: &str,
        write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> Result<(), StoreError> {
        let mut upload = Upload::new(self, key);
        write(&mut upload).map_err(|e| {
            let url = self.url_of(key);
            match e.get_ref().and_then(|inner| inner.downcast_ref::<object_store::Error>()) {
                Some(inner) => StoreError::of_object_store(url, inner),
                None => StoreError::Object { url, message: e.to_string() },
            }
        })?;
        upload.complete()
    }
}

/// The object being uploaded, as the `Write` the Parquet file writer needs: bytes are gathered into
/// parts and put from the calling thread (the IO thread). Dropped before [`Upload::complete`], it
/// aborts the upload and nothing appears.
pub(crate) struct Upload {
    store: Store,
    url: String,
    object: Option<BufWriter>,
    buffer: Vec<u8>,
}

/// Bytes gathered before a part is handed to object_store (which uploads parts of its own size).
const UPLOAD_PART: usize = 8 << 20;

impl Upload {
    pub(crate) fn new(store: &Store, key: &str) -> Self {
        Upload {
            store: store.clone(),
            url: store.url_of(key),
            object: Some(BufWriter::new(store.inner(), store.object_path(key))),
            buffer: Vec::with_capacity(UPLOAD_PART),
        }
    }

    fn put_buffer(&mut self) -> Result<(), object_store::Error> {
        let Some(object) = self.object.as_mut() else { return Ok(()) };
        let bytes = bytes::Bytes::from(std::mem::replace(&mut self.buffer, Vec::with_capacity(UPLOAD_PART)));
        self.store.block_on(object.put(bytes))
    }

    pub(crate) fn complete(mut self) -> Result<(), StoreError> {
        let object_error = |url: &str, e: &object_store::Error| StoreError::of_object_store(url.to_string(), e);
        self.put_buffer().map_err(|e| object_error(&self.url, &e))?;
        if let Some(mut object) = self.object.take() {
            let store = self.store.clone();
            store
                .block_on(tokio::io::AsyncWriteExt::shutdown(&mut object))
                .map_err(|e| StoreError::Object { url: self.url.clone(), message: e.to_string() })?;
        }
        Ok(())
    }
}

impl std::io::Write for Upload {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= UPLOAD_PART {
            self.put_buffer().map_err(std::io::Error::other)?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(mut object) = self.object.take() {
            let _ = self.store.block_on(object.abort());
        }
    }
}
