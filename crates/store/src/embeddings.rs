//! The embeddings table: one row per (image, patch), one Float32 column per channel.
//!
//! Columns: `image` (UInt32, the image id), `y` and `x` (UInt16, the patch position on the feature
//! grid), then `c0000`, `c0001`, ... one per embedding channel in the order of the concatenated
//! feature maps. Rows are ordered by image, then `y`, then `x`; row groups hold whole images. A reader
//! takes any subset of channels by column projection without touching the others, and streams
//! images in bounded memory. The file's key-value metadata `padim.embeddings` holds an
//! [`EmbeddingMeta`] as JSON (backbone, weights, layers, grid).

use crate::{Store, StoreError};
use arrow_array::{Array, ArrayRef, Float32Array, RecordBatch, UInt16Array, UInt32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::StreamExt;
// ParquetObjectReader is deprecated in favour of a hand-written AsyncFileReader over object_store;
// it still does exactly what is needed here (ranged, coalesced GETs), so it stays until it is removed.
use object_store::buffered::BufWriter;
#[allow(deprecated)]
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::async_reader::ParquetRecordBatchStream;
use parquet::arrow::{AsyncArrowWriter, ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::basic::{Compression as ParquetCompression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::statistics::Statistics;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Key of the JSON metadata in the Parquet footer.
pub const EMBEDDINGS_META_KEY: &str = "padim.embeddings";

/// The name of embedding channel `index`.
pub fn channel_column(index: usize) -> String {
    format!("c{index:04}")
}

/// One tapped feature map in the concatenated embedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LayerInfo {
    /// Name in the network's state_dict (e.g. `layer2`).
    pub name: String,
    pub channels: usize,
    /// Stride of the map relative to the input.
    pub stride: usize,
    /// Index of its first channel in the embedding.
    pub first_channel: usize,
}

/// What the embeddings are: recorded in every embeddings file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EmbeddingMeta {
    pub format_version: u32,
    pub backbone: String,
    pub weights_sha256: String,
    /// `block-output` or `last-bn`.
    pub tap: String,
    pub layers: Vec<LayerInfo>,
    pub input_height: usize,
    pub input_width: usize,
    pub grid_height: usize,
    pub grid_width: usize,
    pub n_channels: usize,
    /// SHA-256 of the resolved job that wrote the file.
    pub config_hash: String,
    /// `index/count` of the shard that wrote the file.
    pub shard: String,
}

impl EmbeddingMeta {
    pub const FORMAT_VERSION: u32 = 1;

    pub fn n_patches(&self) -> usize {
        self.grid_height * self.grid_width
    }

    /// The Arrow schema of the table.
    pub fn schema(&self) -> SchemaRef {
        let mut fields = vec![
            Field::new("image", DataType::UInt32, false),
            Field::new("y", DataType::UInt16, false),
            Field::new("x", DataType::UInt16, false),
        ];
        fields.extend((0..self.n_channels).map(|c| Field::new(channel_column(c), DataType::Float32, false)));
        Arc::new(Schema::new(fields))
    }
}

/// How embeddings are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterSettings {
    /// `none`, `snappy` or `zstd`.
    pub compression: &'static str,
    /// Approximate size of a row group in bytes; rounded to whole images, at least one.
    pub row_group_bytes: usize,
}

enum Message {
    Batch(RecordBatch),
    Finish,
}

/// Streams embeddings to a Parquet object on a background IO thread, so that encoding and upload
/// overlap with the network. The object appears only when [`EmbeddingWriter::finish`] succeeds;
/// dropping the writer (on an error elsewhere) aborts the upload.
pub struct EmbeddingWriter {
    meta: EmbeddingMeta,
    schema: SchemaRef,
    sender: Option<SyncSender<Message>>,
    worker: Option<JoinHandle<Result<u64, StoreError>>>,
    url: String,
    rows: u64,
}

impl EmbeddingWriter {
    pub fn create(store: &Store, key: &str, meta: EmbeddingMeta, settings: WriterSettings) -> Result<Self, StoreError> {
        let url = store.url_of(key);
        let schema = meta.schema();
        let bytes_per_image = meta.n_patches() * (meta.n_channels * 4 + 8);
        let images_per_group = (settings.row_group_bytes / bytes_per_image.max(1)).max(1);
        let meta_json = serde_json::to_string(&meta)
            .map_err(|e| StoreError::Format { url: url.clone(), message: e.to_string() })?;
        let compression = match settings.compression {
            "snappy" => ParquetCompression::SNAPPY,
            "zstd" => ParquetCompression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()),
            _ => ParquetCompression::UNCOMPRESSED,
        };
        // Float embeddings do not repeat: dictionaries would be built and thrown away. The id and
        // position columns are tiny with run-length/dictionary encoding, so they keep the defaults.
        let mut properties = WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(images_per_group * meta.n_patches()))
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_key_value_metadata(Some(vec![KeyValue::new(EMBEDDINGS_META_KEY.to_string(), meta_json)]));
        for channel in 0..meta.n_channels {
            let column = parquet::schema::types::ColumnPath::from(channel_column(channel));
            // Min/max statistics of embedding values prune nothing and cost a pass over the data.
            properties = properties
                .set_column_dictionary_enabled(column.clone(), false)
                .set_column_statistics_enabled(column.clone(), EnabledStatistics::None)
                .set_column_encoding(column, Encoding::PLAIN);
        }
        let properties = properties.build();
        let object = BufWriter::new(store.inner(), store.object_path(key));
        let writer = AsyncArrowWriter::try_new(object, schema.clone(), Some(properties))
            .map_err(|e| StoreError::parquet(&url, e))?;
        // Two batches in flight bound the memory of the queue.
        let (sender, receiver) = sync_channel::<Message>(2);
        let worker_store = store.clone();
        let worker_url = url.clone();
        let worker = std::thread::Builder::new()
            .name("padim-parquet".into())
            .spawn(move || worker_store.block_on(write_loop(writer, receiver, worker_url)))
            .map_err(|e| StoreError::Runtime(e.to_string()))?;
        Ok(EmbeddingWriter { meta, schema, sender: Some(sender), worker: Some(worker), url, rows: 0 })
    }

    pub fn meta(&self) -> &EmbeddingMeta {
        &self.meta
    }

    /// Appends whole images: `embeddings` is `[image_ids.len(), n_channels, grid_height, grid_width]`
    /// in C order (a contiguous NCHW tensor).
    pub fn write(&mut self, image_ids: &[u32], embeddings: &[f32]) -> Result<(), StoreError> {
        let n_patches = self.meta.n_patches();
        let n_channels = self.meta.n_channels;
        let expected = image_ids.len() * n_channels * n_patches;
        if embeddings.len() != expected {
            return Err(StoreError::Format {
                url: self.url.clone(),
                message: format!(
                    "a batch of {} images needs {expected} values, got {}",
                    image_ids.len(),
                    embeddings.len()
                ),
            });
        }
        let n_rows = image_ids.len() * n_patches;
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(3 + n_channels);
        let ids: Vec<u32> = image_ids.iter().flat_map(|&id| std::iter::repeat_n(id, n_patches)).collect();
        let width = self.meta.grid_width;
        let ys: Vec<u16> = (0..n_rows).map(|row| ((row % n_patches) / width) as u16).collect();
        let xs: Vec<u16> = (0..n_rows).map(|row| ((row % n_patches) % width) as u16).collect();
        columns.push(Arc::new(UInt32Array::from(ids)));
        columns.push(Arc::new(UInt16Array::from(ys)));
        columns.push(Arc::new(UInt16Array::from(xs)));
        for channel in 0..n_channels {
            let mut values = Vec::with_capacity(n_rows);
            for image in 0..image_ids.len() {
                let start = (image * n_channels + channel) * n_patches;
                values.extend_from_slice(&embeddings[start..start + n_patches]);
            }
            columns.push(Arc::new(Float32Array::from(values)));
        }
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| StoreError::Parquet { url: self.url.clone(), message: e.to_string() })?;
        self.send(Message::Batch(batch))?;
        self.rows += n_rows as u64;
        Ok(())
    }

    fn send(&mut self, message: Message) -> Result<(), StoreError> {
        let sent = self.sender.as_ref().map(|s| s.send(message).is_ok()).unwrap_or(false);
        if sent {
            return Ok(());
        }
        // The worker stopped: its result says why.
        Err(self.join().err().unwrap_or_else(|| StoreError::Parquet {
            url: self.url.clone(),
            message: "the Parquet writer stopped unexpectedly".into(),
        }))
    }

    fn join(&mut self) -> Result<u64, StoreError> {
        self.sender = None;
        match self.worker.take() {
            Some(worker) => worker.join().unwrap_or_else(|_| {
                Err(StoreError::Parquet { url: self.url.clone(), message: "the Parquet writer thread panicked".into() })
            }),
            None => Err(StoreError::Parquet { url: self.url.clone(), message: "the writer is already closed".into() }),
        }
    }

    /// Completes the upload; the object becomes visible. Returns the number of rows.
    pub fn finish(mut self) -> Result<u64, StoreError> {
        self.send(Message::Finish)?;
        self.join()?;
        Ok(self.rows)
    }
}

impl Drop for EmbeddingWriter {
    fn drop(&mut self) {
        // Without a Finish message the worker aborts the upload.
        self.sender = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

async fn write_loop(
    mut writer: AsyncArrowWriter<BufWriter>,
    receiver: Receiver<Message>,
    url: String,
) -> Result<u64, StoreError> {
    let parquet_error = |e: parquet::errors::ParquetError| StoreError::parquet(&url, e);
    let mut rows = 0u64;
    loop {
        // The receiver blocks this IO thread only, which has nothing else to do meanwhile.
        match receiver.recv() {
            Ok(Message::Batch(batch)) => {
                rows += batch.num_rows() as u64;
                if let Err(e) = writer.write(&batch).await {
                    let _ = writer.into_inner().abort().await;
                    return Err(parquet_error(e));
                }
            }
            Ok(Message::Finish) => {
                writer.close().await.map_err(parquet_error)?;
                return Ok(rows);
            }
            Err(_) => {
                // The producer went away without finishing: abort so that no partial object appears.
                let _ = writer.into_inner().abort().await;
                return Err(StoreError::Parquet { url, message: "aborted before completion".into() });
            }
        }
    }
}

/// Whole images of a projected embeddings file.
#[derive(Debug, Clone)]
pub struct EmbeddingBatch {
    pub image_ids: Vec<u32>,
    /// Requested channels, in the order asked.
    pub channels: Vec<usize>,
    /// `[image_ids.len(), channels.len(), n_patches]` in C order.
    pub values: Vec<f32>,
}

/// Streams whole images of an embeddings file, reading only the requested channels.
pub struct EmbeddingReader {
    store: Store,
    url: String,
    meta: EmbeddingMeta,
    channels: Vec<usize>,
    #[allow(deprecated)]
    stream: ParquetRecordBatchStream<ParquetObjectReader>,
    /// Column index in the projected batches of each requested channel.
    positions: Vec<usize>,
}

impl EmbeddingReader {
    /// Opens `key`; `channels` selects embedding channels (all when `None`); each batch holds up to
    /// `images_per_batch` images.
    pub fn open(
        store: &Store,
        key: &str,
        channels: Option<&[usize]>,
        images_per_batch: usize,
    ) -> Result<Self, StoreError> {
        Self::open_images(store, key, channels, images_per_batch, None)
    }

    /// As [`open`](Self::open), reading only the row groups whose image ids (from the column
    /// statistics, `[min, max]`) may hold a wanted image: `wanted(min, max)` says so. Batches may still
    /// hold unwanted images of those row groups.
    pub fn open_images(
        store: &Store,
        key: &str,
        channels: Option<&[usize]>,
        images_per_batch: usize,
        wanted: Option<&dyn Fn(u32, u32) -> bool>,
    ) -> Result<Self, StoreError> {
        let url = store.url_of(key);
        let parquet_error = |e: parquet::errors::ParquetError| StoreError::parquet(&url, e);
        // With the size known the footer is read by a bounded range: Azure Blob Storage refuses the
        // suffix range the reader asks for otherwise.
        let size = store
            .size(key)?
            .ok_or_else(|| StoreError::Parquet { url: url.clone(), message: "the file does not exist".into() })?;
        #[allow(deprecated)]
        let reader = ParquetObjectReader::new(store.inner(), store.object_path(key)).with_file_size(size);
        let builder = store.block_on(ParquetRecordBatchStreamBuilder::new(reader)).map_err(parquet_error)?;
        let meta_json = builder
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|kv| kv.key == EMBEDDINGS_META_KEY))
            .and_then(|kv| kv.value.clone())
            .ok_or_else(|| StoreError::Format {
                url: url.clone(),
                message: format!("no `{EMBEDDINGS_META_KEY}` metadata"),
            })?;
        let meta: EmbeddingMeta = serde_json::from_str(&meta_json)
            .map_err(|e| StoreError::Format { url: url.clone(), message: format!("bad metadata: {e}") })?;
        if meta.format_version > EmbeddingMeta::FORMAT_VERSION {
            return Err(StoreError::Format {
                url,
                message: format!(
                    "format version {} is newer than this padim understands ({})",
                    meta.format_version,
                    EmbeddingMeta::FORMAT_VERSION
                ),
            });
        }
        let channels: Vec<usize> = match channels {
            Some(list) => list.to_vec(),
            None => (0..meta.n_channels).collect(),
        };
        if let Some(bad) = channels.iter().find(|&&c| c >= meta.n_channels) {
            return Err(StoreError::Format {
                url,
                message: format!("channel {bad} requested, the file has {}", meta.n_channels),
            });
        }
        // Root columns: 0 = image, then channels at 3 + c. The projection returns them in file order.
        let mut roots: Vec<usize> = channels.iter().map(|c| c + 3).collect();
        roots.push(0);
        roots.sort_unstable();
        roots.dedup();
        let positions = channels.iter().map(|c| roots.iter().position(|r| *r == c + 3).unwrap_or(0)).collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let builder = match wanted {
            None => builder,
            Some(wanted) => {
                let groups: Vec<usize> = (0..builder.metadata().num_row_groups())
                    .filter(|&g| {
                        match builder.metadata().row_group(g).column(0).statistics() {
                            Some(Statistics::Int32(stats)) => match (stats.min_opt(), stats.max_opt()) {
                                (Some(&min), Some(&max)) => wanted(min as u32, max as u32),
                                _ => true,
                            },
                            // Without statistics the row group must be read to know.
                            _ => true,
                        }
                    })
                    .collect();
                builder.with_row_groups(groups)
            }
        };
        let stream = builder
            .with_projection(mask)
            .with_batch_size(images_per_batch.max(1) * meta.n_patches())
            .build()
            .map_err(parquet_error)?;
        Ok(EmbeddingReader { store: store.clone(), url, meta, channels, stream, positions })
    }

    pub fn meta(&self) -> &EmbeddingMeta {
        &self.meta
    }

    /// The next batch of whole images, or `None` at the end.
    pub fn next_batch(&mut self) -> Result<Option<EmbeddingBatch>, StoreError> {
        let store = self.store.clone();
        let Some(batch) = store.block_on(self.stream.next()) else { return Ok(None) };
        let batch = batch.map_err(|e| StoreError::parquet(&self.url, e))?;
        let n_patches = self.meta.n_patches();
        let format_error = |message: String| StoreError::Format { url: self.url.clone(), message };
        if batch.num_rows() % n_patches != 0 {
            return Err(format_error(format!(
                "a batch of {} rows is not whole images of {n_patches} patches",
                batch.num_rows()
            )));
        }
        let n_images = batch.num_rows() / n_patches;
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<UInt32Array>()
            .ok_or_else(|| format_error("column `image` is not UInt32".into()))?;
        let image_ids: Vec<u32> = (0..n_images).map(|i| ids.value(i * n_patches)).collect();
        let mut values = vec![0f32; n_images * self.channels.len() * n_patches];
        for (k, &position) in self.positions.iter().enumerate() {
            let column = batch
                .column(position)
                .as_any()
                .downcast_ref::<Float32Array>()
                .ok_or_else(|| format_error(format!("column {position} is not Float32")))?;
            if column.null_count() > 0 {
                return Err(format_error(format!("channel {} has nulls", self.channels[k])));
            }
            let column = column.values();
            for image in 0..n_images {
                let dst = (image * self.channels.len() + k) * n_patches;
                values[dst..dst + n_patches].copy_from_slice(&column[image * n_patches..(image + 1) * n_patches]);
            }
        }
        Ok(Some(EmbeddingBatch { image_ids, channels: self.channels.clone(), values }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> EmbeddingMeta {
        EmbeddingMeta {
            format_version: 1,
            backbone: "test".into(),
            weights_sha256: "0".repeat(64),
            tap: "block-output".into(),
            layers: vec![LayerInfo { name: "a".into(), channels: 5, stride: 4, first_channel: 0 }],
            input_height: 12,
            input_width: 8,
            grid_height: 3,
            grid_width: 2,
            n_channels: 5,
            config_hash: "h".into(),
            shard: "0/1".into(),
        }
    }

    #[test]
    fn round_trip_with_projection_and_small_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().display().to_string()).unwrap();
        let settings = WriterSettings { compression: "zstd", row_group_bytes: 1 };
        let mut writer = EmbeddingWriter::create(&store, "e/emb.parquet", meta(), settings).unwrap();
        let value = |image: u32, c: usize, p: usize| image as f32 * 100.0 + c as f32 * 10.0 + p as f32;
        for ids in [vec![7u32, 3], vec![11]] {
            let mut data = Vec::new();
            for &id in &ids {
                for c in 0..5 {
                    for p in 0..6 {
                        data.push(value(id, c, p));
                    }
                }
            }
            writer.write(&ids, &data).unwrap();
        }
        assert!(!dir.path().join("e/emb.parquet").exists(), "visible before finish");
        assert_eq!(writer.finish().unwrap(), 18);

        let mut reader = EmbeddingReader::open(&store, "e/emb.parquet", Some(&[4, 1]), 2).unwrap();
        assert_eq!(reader.meta(), &meta());
        let mut seen = Vec::new();
        while let Some(batch) = reader.next_batch().unwrap() {
            for (i, &id) in batch.image_ids.iter().enumerate() {
                for (k, &c) in batch.channels.iter().enumerate() {
                    for p in 0..6 {
                        assert_eq!(batch.values[(i * 2 + k) * 6 + p], value(id, c, p));
                    }
                }
                seen.push(id);
            }
        }
        assert_eq!(seen, vec![7, 3, 11]);
        assert!(EmbeddingReader::open(&store, "e/emb.parquet", Some(&[5]), 2).is_err());
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().display().to_string()).unwrap();
        let settings = WriterSettings { compression: "none", row_group_bytes: 1 };
        let mut writer = EmbeddingWriter::create(&store, "emb.parquet", meta(), settings).unwrap();
        writer.write(&[1], &[0.5; 30]).unwrap();
        assert!(writer.write(&[1], &[0.5; 3]).is_err());
        drop(writer);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(names.is_empty(), "{names:?}");
    }
}
