//! Small Parquet tables (image tables, scores, maps): encoded in memory and published with one
//! atomic put; read back whole.

use crate::{Store, StoreError};
use arrow_array::RecordBatch;
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
