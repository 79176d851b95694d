//! The embeddings table: one row per (image, patch), one float column per stored channel.
//!
//! Columns: `image` (UInt32, the image id), `y` and `x` (UInt16, the patch position on the feature
//! grid), then one column per stored embedding channel, named by its index in the concatenated
//! feature maps (`c0000`, `c0001`, ...): every channel, or only those the job's subsets use. Values
//! are Float16 (Parquet's FLOAT16 logical type) or Float32, PLAIN or BYTE_STREAM_SPLIT, optionally
//! compressed, as the job says. Rows are ordered by image, then `y`, then `x`; row groups hold whole
//! images. A reader takes any subset of channels by column projection without touching the others,
//! and streams images in bounded memory. The file's key-value metadata `padim.embeddings` holds an
//! [`EmbeddingMeta`] as JSON (backbone, weights, layers, grid, value type, stored channels).

mod direct;
mod pages;

use crate::table::Upload;
use crate::{Store, StoreError};
use arrow_array::{Array, Float16Array, Float32Array, UInt32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::StreamExt;
// ParquetObjectReader is deprecated in favour of a hand-written AsyncFileReader over object_store;
// it still does exactly what is needed here (ranged, coalesced GETs), so it stays until it is removed.
#[allow(deprecated)]
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::async_reader::ParquetRecordBatchStream;
use parquet::arrow::{ArrowSchemaConverter, ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::data_type::Int32Type;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::statistics::Statistics;
use parquet::file::writer::SerializedFileWriter;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

pub use padim_core::config::{Compression, FloatEncoding, ValueType};

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
    /// Channels of the embedding (every tapped channel), stored or not.
    pub n_channels: usize,
    /// SHA-256 of the resolved job that wrote the file.
    pub config_hash: String,
    /// `index/count` of the shard that wrote the file.
    pub shard: String,
    /// How the values are stored (format 1 files: f32).
    #[serde(default = "f32_values")]
    pub value_type: ValueType,
    /// The stored channels, ascending; absent when every channel is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_channels: Option<Vec<usize>>,
}

fn f32_values() -> ValueType {
    ValueType::F32
}

impl EmbeddingMeta {
    /// 2: value type and stored channels (format 1 is f32, every channel, and still read).
    pub const FORMAT_VERSION: u32 = 2;

    pub fn n_patches(&self) -> usize {
        self.grid_height * self.grid_width
    }

    /// The stored channels, ascending.
    pub fn stored(&self) -> Vec<usize> {
        self.stored_channels.clone().unwrap_or_else(|| (0..self.n_channels).collect())
    }

    /// Those of `channels` that the file does not store.
    pub fn missing(&self, channels: &[usize]) -> Vec<usize> {
        match &self.stored_channels {
            None => channels.iter().copied().filter(|&c| c >= self.n_channels).collect(),
            Some(stored) => channels.iter().copied().filter(|c| stored.binary_search(c).is_err()).collect(),
        }
    }

    /// How many channels are stored.
    pub fn n_stored(&self) -> usize {
        self.stored_channels.as_ref().map_or(self.n_channels, Vec::len)
    }

    /// The tapped layers as channel ranges of the embedding.
    pub fn layer_channels(&self) -> Vec<padim_core::channels::LayerChannels> {
        self.layers
            .iter()
            .map(|l| padim_core::channels::LayerChannels { first: l.first_channel, count: l.channels })
            .collect()
    }

    /// Stored bytes of one image's values before encoding and compression.
    pub fn value_bytes_per_image(&self) -> usize {
        let width = match self.value_type {
            ValueType::F16 => 2,
            ValueType::F32 => 4,
        };
        self.n_patches() * self.n_stored() * width
    }

    /// The Arrow schema of the table.
    pub fn schema(&self) -> SchemaRef {
        let value_type = match self.value_type {
            ValueType::F16 => DataType::Float16,
            ValueType::F32 => DataType::Float32,
        };
        let mut fields = vec![
            Field::new("image", DataType::UInt32, false),
            Field::new("y", DataType::UInt16, false),
            Field::new("x", DataType::UInt16, false),
        ];
        fields.extend(self.stored().into_iter().map(|c| Field::new(channel_column(c), value_type.clone(), false)));
        Arc::new(Schema::new(fields))
    }
}

/// How embeddings are encoded (the value type and stored channels are in [`EmbeddingMeta`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterSettings {
    pub encoding: FloatEncoding,
    pub compression: Compression,
    /// Approximate size of a row group in bytes; rounded to whole images, at least one.
    pub row_group_bytes: usize,
}

/// A batch of embedding values handed to the writer: `[images, stored channels, patches]` in C
/// order, f32 as the network gives them, or f16 already rounded (for f16 storage).
#[derive(Debug, Clone, PartialEq)]
pub enum EmbeddingValues {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
}

impl EmbeddingValues {
    pub fn len(&self) -> usize {
        match self {
            EmbeddingValues::F32(v) => v.len(),
            EmbeddingValues::F16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values `range` (of the flat batch).
    fn part(&self, range: std::ops::Range<usize>) -> pages::Part<'_> {
        match self {
            EmbeddingValues::F32(v) => pages::Part::F32(&v[range]),
            EmbeddingValues::F16(v) => pages::Part::F16(&v[range]),
        }
    }
}

enum Message {
    /// Image ids and their values.
    Batch(Vec<u32>, EmbeddingValues),
    Finish,
}

/// Streams embeddings to a Parquet object on a background IO thread, so that encoding and upload
/// overlap with the network. The object appears only when [`EmbeddingWriter::finish`] succeeds;
/// dropping the writer (on an error elsewhere) aborts the upload.
pub struct EmbeddingWriter {
    meta: EmbeddingMeta,
    sender: Option<SyncSender<Message>>,
    worker: Option<JoinHandle<Result<u64, StoreError>>>,
    url: String,
    rows: u64,
}

impl EmbeddingWriter {
    pub fn create(store: &Store, key: &str, meta: EmbeddingMeta, settings: WriterSettings) -> Result<Self, StoreError> {
        let url = store.url_of(key);
        if let Some(bad) = meta.stored().iter().find(|&&c| c >= meta.n_channels) {
            return Err(StoreError::Format {
                url,
                message: format!("stored channel {bad} of an embedding of {} channels", meta.n_channels),
            });
        }
        let file = RowGroups::new(store, key, &meta, settings)?;
        // Two batches in flight bound the memory of the queue.
        let (sender, receiver) = sync_channel::<Message>(2);
        let worker_url = url.clone();
        let worker = std::thread::Builder::new()
            .name("padim-parquet".into())
            .spawn(move || write_loop(file, receiver, worker_url))
            .map_err(|e| StoreError::Runtime(e.to_string()))?;
        Ok(EmbeddingWriter { meta, sender: Some(sender), worker: Some(worker), url, rows: 0 })
    }

    pub fn meta(&self) -> &EmbeddingMeta {
        &self.meta
    }

    /// Appends whole images: `embeddings` is `[image_ids.len(), stored channels, grid_height,
    /// grid_width]` in C order (a contiguous NCHW tensor of the stored channels, in
    /// [`EmbeddingMeta::stored`] order). f16 values only for f16 storage.
    pub fn write(&mut self, image_ids: &[u32], embeddings: EmbeddingValues) -> Result<(), StoreError> {
        let n_patches = self.meta.n_patches();
        let n_stored = self.meta.n_stored();
        let expected = image_ids.len() * n_stored * n_patches;
        if matches!(embeddings, EmbeddingValues::F16(_)) && self.meta.value_type == ValueType::F32 {
            return Err(StoreError::Format {
                url: self.url.clone(),
                message: "f16 values cannot be stored as f32 without pretending to a precision they lack".into(),
            });
        }
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
        self.send(Message::Batch(image_ids.to_vec(), embeddings))?;
        self.rows += (image_ids.len() * n_patches) as u64;
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

fn write_loop(mut file: RowGroups, receiver: Receiver<Message>, url: String) -> Result<u64, StoreError> {
    loop {
        match receiver.recv() {
            Ok(Message::Batch(ids, values)) => file.push(ids, values)?,
            Ok(Message::Finish) => return file.finish(),
            // The producer went away without finishing: dropping `file` aborts the upload, so that
            // no partial object appears.
            Err(_) => return Err(StoreError::Parquet { url, message: "aborted before completion".into() }),
        }
    }
}

/// The Parquet file being written: whole images gathered into row groups, each encoded and
/// appended to the upload when full.
struct RowGroups {
    url: String,
    writer: Option<SerializedFileWriter<Upload>>,
    n_stored: usize,
    n_patches: usize,
    grid_width: usize,
    images_per_group: usize,
    pending: Vec<(Vec<u32>, EmbeddingValues)>,
    pending_images: usize,
    encoder: pages::FloatColumnEncoder,
    chunk: Vec<u8>,
    rows: u64,
}

impl RowGroups {
    fn new(store: &Store, key: &str, meta: &EmbeddingMeta, settings: WriterSettings) -> Result<Self, StoreError> {
        let url = store.url_of(key);
        let parquet_error = |e: parquet::errors::ParquetError| StoreError::parquet(&url, e);
        let schema = meta.schema();
        let meta_json =
            serde_json::to_string(meta).map_err(|e| StoreError::Format { url: url.clone(), message: e.to_string() })?;
        // The id and position columns (small, run-length friendly) go through the crate's column
        // writers with chunk statistics (the reader prunes row groups by image id); the float
        // columns are encoded by `pages`.
        let mut properties = WriterProperties::builder()
            .set_compression(pages::FloatColumnEncoder::codec(settings.compression))
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_key_value_metadata(Some(vec![KeyValue::new(EMBEDDINGS_META_KEY.to_string(), meta_json)]))
            .build();
        parquet::arrow::add_encoded_arrow_schema_to_metadata(&schema, &mut properties);
        let descriptor = ArrowSchemaConverter::new().convert(&schema).map_err(parquet_error)?;
        let upload = Upload::new(store, key);
        let writer = SerializedFileWriter::new(upload, descriptor.root_schema_ptr(), Arc::new(properties))
            .map_err(parquet_error)?;
        let images_per_group = (settings.row_group_bytes / meta.value_bytes_per_image().max(1)).max(1);
        Ok(RowGroups {
            url,
            writer: Some(writer),
            n_stored: meta.n_stored(),
            n_patches: meta.n_patches(),
            grid_width: meta.grid_width,
            images_per_group,
            pending: Vec::new(),
            pending_images: 0,
            encoder: pages::FloatColumnEncoder::new(meta.value_type, settings.encoding, settings.compression),
            chunk: Vec::new(),
            rows: 0,
        })
    }

    fn push(&mut self, ids: Vec<u32>, values: EmbeddingValues) -> Result<(), StoreError> {
        self.pending_images += ids.len();
        self.pending.push((ids, values));
        if self.pending_images >= self.images_per_group {
            self.flush_group()?;
        }
        Ok(())
    }

    /// Encodes the pending images as one row group (several when a batch overshoots the size).
    fn flush_group(&mut self) -> Result<(), StoreError> {
        let url = self.url.clone();
        let parquet_error = |e: parquet::errors::ParquetError| StoreError::parquet(&url, e);
        let pending = std::mem::take(&mut self.pending);
        self.pending_images = 0;
        // Whole images of the pending batches, `images_per_group` at a time.
        // (image id, its batch's values, the image's first value in them)
        let per_image = self.n_stored * self.n_patches;
        let images: Vec<(u32, &EmbeddingValues, usize)> = pending
            .iter()
            .flat_map(|(ids, values)| ids.iter().enumerate().map(move |(i, &id)| (id, values, i * per_image)))
            .collect();
        let Some(writer) = self.writer.as_mut() else {
            return Err(StoreError::Parquet { url, message: "the writer is already closed".into() });
        };
        let descriptors: Vec<_> = (0..self.n_stored).map(|k| writer.schema_descr().column(3 + k)).collect();
        for group in images.chunks(self.images_per_group) {
            let n_rows = group.len() * self.n_patches;
            let mut row_group = writer.next_row_group().map_err(parquet_error)?;
            let ids: Vec<i32> =
                group.iter().flat_map(|&(id, _, _)| std::iter::repeat_n(id as i32, self.n_patches)).collect();
            let ys: Vec<i32> = (0..n_rows).map(|row| ((row % self.n_patches) / self.grid_width) as i32).collect();
            let xs: Vec<i32> = (0..n_rows).map(|row| ((row % self.n_patches) % self.grid_width) as i32).collect();
            for column in [&ids, &ys, &xs] {
                let mut writer = row_group
                    .next_column()
                    .map_err(parquet_error)?
                    .ok_or_else(|| StoreError::Parquet { url: url.clone(), message: "missing column".into() })?;
                writer.typed::<Int32Type>().write_batch(column, None, None).map_err(parquet_error)?;
                writer.close().map_err(parquet_error)?;
            }
            for (k, descriptor) in descriptors.iter().enumerate() {
                let parts: Vec<pages::Part> = group
                    .iter()
                    .map(|&(_, values, first)| {
                        let start = first + k * self.n_patches;
                        values.part(start..start + self.n_patches)
                    })
                    .collect();
                let close = self.encoder.encode(descriptor.clone(), &parts, &mut self.chunk).map_err(parquet_error)?;
                let chunk = bytes::Bytes::from(std::mem::take(&mut self.chunk));
                row_group.append_column(&chunk, close).map_err(parquet_error)?;
                // The buffer comes back for the next column when nothing else holds it.
                self.chunk = chunk.try_into_mut().map(Into::into).unwrap_or_default();
            }
            row_group.close().map_err(parquet_error)?;
            self.rows += n_rows as u64;
        }
        Ok(())
    }

    /// Writes what is pending and the footer, and completes the upload: the object appears.
    fn finish(mut self) -> Result<u64, StoreError> {
        if self.pending_images > 0 {
            self.flush_group()?;
        }
        let url = self.url.clone();
        let writer = self
            .writer
            .take()
            .ok_or_else(|| StoreError::Parquet { url: url.clone(), message: "the writer is already closed".into() })?;
        let upload = writer.into_inner().map_err(|e| StoreError::parquet(&url, e))?;
        upload.complete()?;
        Ok(self.rows)
    }
}

/// `[1, 2, 3, 7]` as "1-3, 7".
fn list_channels(channels: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < channels.len() {
        let mut j = i;
        while j + 1 < channels.len() && channels[j + 1] == channels[j] + 1 {
            j += 1;
        }
        parts.push(if j > i { format!("{}-{}", channels[i], channels[j]) } else { channels[i].to_string() });
        i = j + 1;
    }
    parts.join(", ")
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
    /// A batch's values handed back ([`EmbeddingReader::recycle`]), reused for the next batch.
    spare: Vec<f32>,
    /// The float columns read from their pages (the files padim writes); `None`: by the Arrow
    /// stream.
    direct: Option<direct::DirectReader>,
}

/// The embedding metadata in a Parquet footer, of a format this padim reads.
fn footer_meta(metadata: &parquet::file::metadata::ParquetMetaData, url: &str) -> Result<EmbeddingMeta, StoreError> {
    let format_error = |message: String| StoreError::Format { url: url.to_string(), message };
    let meta_json = metadata
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|kv| kv.key == EMBEDDINGS_META_KEY))
        .and_then(|kv| kv.value.clone())
        .ok_or_else(|| format_error(format!("no `{EMBEDDINGS_META_KEY}` metadata")))?;
    let meta: EmbeddingMeta =
        serde_json::from_str(&meta_json).map_err(|e| format_error(format!("bad metadata: {e}")))?;
    if meta.format_version > EmbeddingMeta::FORMAT_VERSION {
        return Err(format_error(format!(
            "format version {} is newer than this padim understands ({})",
            meta.format_version,
            EmbeddingMeta::FORMAT_VERSION
        )));
    }
    Ok(meta)
}

/// The row groups whose image ids (column statistics, `[min, max]`) may hold a wanted image; a
/// row group without statistics must be read to know.
fn wanted_row_groups(
    metadata: &parquet::file::metadata::ParquetMetaData,
    wanted: &dyn Fn(u32, u32) -> bool,
) -> Vec<usize> {
    (0..metadata.num_row_groups())
        .filter(|&g| match metadata.row_group(g).column(0).statistics() {
            Some(Statistics::Int32(stats)) => match (stats.min_opt(), stats.max_opt()) {
                (Some(&min), Some(&max)) => wanted(min as u32, max as u32),
                _ => true,
            },
            _ => true,
        })
        .collect()
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
        let meta = footer_meta(builder.metadata(), &url)?;
        let channels: Vec<usize> = match channels {
            Some(list) => list.to_vec(),
            None => meta.stored(),
        };
        let missing = meta.missing(&channels);
        if !missing.is_empty() {
            return Err(StoreError::MissingChannels {
                url,
                missing: list_channels(&missing),
                stored: meta.n_stored(),
                n_channels: meta.n_channels,
            });
        }
        // Root columns: 0 = image, then the stored channels by name. The projection returns them in
        // file order.
        let fields = builder.parquet_schema().root_schema().get_fields();
        let root_of = |channel: usize| {
            let name = channel_column(channel);
            fields.iter().position(|f| f.name() == name)
        };
        let mut roots = vec![0];
        for &channel in &channels {
            roots.push(root_of(channel).ok_or_else(|| StoreError::Format {
                url: url.clone(),
                message: format!(
                    "the footer lists channel {channel} but the file has no column {}",
                    channel_column(channel)
                ),
            })?);
        }
        roots.sort_unstable();
        roots.dedup();
        let positions = channels
            .iter()
            .map(|&c| root_of(c).and_then(|r| roots.iter().position(|x| *x == r)).unwrap_or(0))
            .collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let groups = match wanted {
            None => (0..builder.metadata().num_row_groups()).collect(),
            Some(wanted) => wanted_row_groups(builder.metadata(), wanted),
        };
        // The schema is flat: a channel's root column is its leaf column.
        let leaves = channels.iter().map(|&c| root_of(c).unwrap_or(0)).collect();
        let direct = direct::DirectReader::new(
            store,
            key,
            &url,
            builder.metadata().clone(),
            groups.clone(),
            leaves,
            meta.n_patches(),
            images_per_batch,
        );
        let builder = builder.with_row_groups(groups);
        let stream = builder
            .with_projection(mask)
            .with_batch_size(images_per_batch.max(1) * meta.n_patches())
            .build()
            .map_err(parquet_error)?;
        Ok(EmbeddingReader { store: store.clone(), url, meta, channels, stream, positions, spare: Vec::new(), direct })
    }

    pub fn meta(&self) -> &EmbeddingMeta {
        &self.meta
    }

    /// Hands a batch's values back, for the next batch to be read into.
    pub fn recycle(&mut self, values: Vec<f32>) {
        self.spare = values;
    }

    /// The next batch of whole images, or `None` at the end.
    pub fn next_batch(&mut self) -> Result<Option<EmbeddingBatch>, StoreError> {
        if let Some(direct) = self.direct.as_mut() {
            let mut values = std::mem::take(&mut self.spare);
            let Some(image_ids) = direct.next_batch(&mut values)? else { return Ok(None) };
            return Ok(Some(EmbeddingBatch { image_ids, channels: self.channels.clone(), values }));
        }
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
        // A buffer handed back by `recycle` is refilled: a batch is hundreds of megabytes, which a
        // fresh allocation gets from the kernel as pages to fault in and zero, batch after batch.
        let mut values = std::mem::take(&mut self.spare);
        values.clear();
        values.resize(n_images * self.channels.len() * n_patches, 0.0);
        let mut halves: Vec<f32> = Vec::new();
        for (k, &position) in self.positions.iter().enumerate() {
            let column = batch.column(position);
            if column.null_count() > 0 {
                return Err(format_error(format!("channel {} has nulls", self.channels[k])));
            }
            let column: &[f32] = if let Some(floats) = column.as_any().downcast_ref::<Float32Array>() {
                floats.values()
            } else if let Some(halfs) = column.as_any().downcast_ref::<Float16Array>() {
                halves.resize(halfs.len(), 0.0);
                half::slice::HalfFloatSliceExt::convert_to_f32_slice(&halfs.values()[..], &mut halves);
                &halves
            } else {
                return Err(format_error(format!("column {position} is neither Float32 nor Float16")));
            };
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
            format_version: EmbeddingMeta::FORMAT_VERSION,
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
            value_type: ValueType::F32,
            stored_channels: None,
        }
    }

    /// Distinct values with fractions that f16 must round (and some that overflow its precision).
    fn value(image: u32, c: usize, p: usize) -> f32 {
        image as f32 * 100.0 + c as f32 * 10.0 + p as f32 + 0.123_456_7 * (c + 1) as f32
    }

    /// Images 7, 3 (one batch) and 11 (another), the stored channels, as f32 values or (`halves`)
    /// rounded to f16 before they are handed over.
    fn write_values(store: &Store, key: &str, meta: EmbeddingMeta, settings: WriterSettings, halves: bool) {
        let stored = meta.stored();
        let mut writer = EmbeddingWriter::create(store, key, meta, settings).unwrap();
        for ids in [vec![7u32, 3], vec![11]] {
            let mut data = Vec::new();
            for &id in &ids {
                for &c in &stored {
                    for p in 0..6 {
                        data.push(value(id, c, p));
                    }
                }
            }
            let values = if halves {
                EmbeddingValues::F16(data.iter().map(|&v| half::f16::from_f32(v)).collect())
            } else {
                EmbeddingValues::F32(data)
            };
            writer.write(&ids, values).unwrap();
        }
        assert_eq!(writer.finish().unwrap(), 18);
    }

    fn write(store: &Store, key: &str, meta: EmbeddingMeta, settings: WriterSettings) {
        write_values(store, key, meta, settings, false);
    }

    /// Reads `channels` back in batches of two images: (image ids, value of (image, channel, patch)).
    fn read(store: &Store, key: &str, channels: &[usize]) -> Vec<(u32, usize, usize, f32)> {
        let mut reader = EmbeddingReader::open(store, key, Some(channels), 2).unwrap();
        let mut seen = Vec::new();
        while let Some(batch) = reader.next_batch().unwrap() {
            for (i, &id) in batch.image_ids.iter().enumerate() {
                for (k, &c) in batch.channels.iter().enumerate() {
                    for p in 0..6 {
                        seen.push((id, c, p, batch.values[(i * channels.len() + k) * 6 + p]));
                    }
                }
            }
        }
        seen
    }

    #[test]
    fn round_trip_of_every_value_type_encoding_and_compression() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().display().to_string()).unwrap();
        for value_type in [ValueType::F32, ValueType::F16] {
            for encoding in [FloatEncoding::Plain, FloatEncoding::ByteStreamSplit] {
                for compression in [Compression::None, Compression::Snappy, Compression::Zstd, Compression::Lz4] {
                    let key = format!("e/{value_type:?}-{encoding:?}-{compression:?}.parquet");
                    // Row groups of one image: the pages of a column chunk are written per group.
                    let settings = WriterSettings { encoding, compression, row_group_bytes: 1 };
                    write(&store, &key, EmbeddingMeta { value_type, ..meta() }, settings);
                    let reader = EmbeddingReader::open(&store, &key, None, 2).unwrap();
                    assert_eq!(reader.meta().value_type, value_type);
                    let seen = read(&store, &key, &[4, 1]);
                    assert_eq!(seen.len(), 3 * 2 * 6, "{key}");
                    for (id, c, p, got) in seen {
                        let exact = value(id, c, p);
                        let expected = match value_type {
                            ValueType::F32 => exact,
                            ValueType::F16 => half::f16::from_f32(exact).to_f32(),
                        };
                        assert_eq!(got, expected, "{key}: image {id} channel {c} patch {p}");
                        if value_type == ValueType::F16 {
                            assert!(((got - exact) / exact).abs() <= 1.0 / 2048.0, "{key}: {got} vs {exact}");
                        }
                    }
                    if value_type == ValueType::F16 {
                        // Values rounded by the caller (as libtorch does) give the same file.
                        let again = format!("{key}.halves");
                        write_values(&store, &again, EmbeddingMeta { value_type, ..meta() }, settings, true);
                        assert!(store.get(&key).unwrap() == store.get(&again).unwrap(), "{key}");
                    }
                }
            }
        }
    }

    #[test]
    fn pages_read_directly_equal_the_arrow_reader() {
        // 23,000 images of 6 patches in one row group: a column's pages (128 Ki values) end inside
        // images, so runs of patches split across pages. Read directly (whole row groups fit a
        // batch) and by the Arrow reader (they do not), the batches hold the same images and values.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().display().to_string()).unwrap();
        let n = 23_000u32;
        let v = |id: u32, c: usize, p: usize| ((id as usize * 7 + c * 13 + p) % 1000) as f32 * 0.01 - 3.0;
        for (value_type, encoding, compression) in [
            (ValueType::F16, FloatEncoding::ByteStreamSplit, Compression::Lz4),
            (ValueType::F32, FloatEncoding::Plain, Compression::None),
            (ValueType::F32, FloatEncoding::ByteStreamSplit, Compression::Zstd),
            (ValueType::F16, FloatEncoding::Plain, Compression::Snappy),
        ] {
            let key = format!("e/{value_type:?}-{encoding:?}-{compression:?}.parquet");
            let settings = WriterSettings { encoding, compression, row_group_bytes: 1 << 30 };
            let mut writer =
                EmbeddingWriter::create(&store, &key, EmbeddingMeta { value_type, ..meta() }, settings).unwrap();
            let ids: Vec<u32> = (0..n).map(|i| (i * 31) % n).collect();
            for chunk in ids.chunks(4096) {
                let data: Vec<f32> =
                    chunk.iter().flat_map(|&id| (0..5).flat_map(move |c| (0..6).map(move |p| v(id, c, p)))).collect();
                writer.write(chunk, EmbeddingValues::F32(data)).unwrap();
            }
            writer.finish().unwrap();
            let all = |per_batch: usize| {
                let mut reader = EmbeddingReader::open(&store, &key, Some(&[4, 0, 2]), per_batch).unwrap();
                let direct = reader.direct.is_some();
                let (mut ids, mut values) = (Vec::new(), Vec::new());
                while let Some(batch) = reader.next_batch().unwrap() {
                    assert!(batch.image_ids.len() <= per_batch);
                    ids.extend(batch.image_ids);
                    values.extend(batch.values);
                }
                (direct, ids, values)
            };
            let (direct, ids_direct, values_direct) = all(n as usize);
            let (arrow, ids_arrow, values_arrow) = all(1000);
            assert!(direct && !arrow, "{key}: the direct reader reads when a row group fits a batch");
            assert_eq!(ids_direct, ids, "{key}");
            assert_eq!(ids_arrow, ids, "{key}");
            assert!(values_direct == values_arrow, "{key}");
            let expected = |i: usize| {
                let (id, k, p) = (ids[i / 18], [4, 0, 2][(i / 6) % 3], i % 6);
                match value_type {
                    ValueType::F32 => v(id, k, p),
                    ValueType::F16 => half::f16::from_f32(v(id, k, p)).to_f32(),
                }
            };
            assert!((0..values_direct.len()).all(|i| values_direct[i] == expected(i)), "{key}");
        }
    }

    #[test]
    fn projection_order_and_visibility() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().display().to_string()).unwrap();
        let settings =
            WriterSettings { encoding: FloatEncoding::Plain, compression: Compression::Zstd, row_group_bytes: 1 };
        let mut writer = EmbeddingWriter::create(&store, "e/emb.parquet", meta(), settings).unwrap();
        writer.write(&[7], EmbeddingValues::F32(vec![1.0; 30])).unwrap();
        let halves = EmbeddingValues::F16(vec![half::f16::ONE; 30]);
        assert!(writer.write(&[8], halves).is_err(), "f16 values are not f32 storage's");
        assert!(!dir.path().join("e/emb.parquet").exists(), "visible before finish");
        writer.finish().unwrap();
        assert_eq!(EmbeddingReader::open(&store, "e/emb.parquet", None, 1).unwrap().meta(), &meta());
        write(&store, "e/emb.parquet", meta(), settings);
        let ids: Vec<u32> = read(&store, "e/emb.parquet", &[2]).iter().step_by(6).map(|r| r.0).collect();
        assert_eq!(ids, vec![7, 3, 11], "rows keep the written order");
        assert!(matches!(
            EmbeddingReader::open(&store, "e/emb.parquet", Some(&[5]), 2),
            Err(StoreError::MissingChannels { .. })
        ));
    }

    #[test]
    fn a_subset_of_channels_is_stored_and_the_others_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().display().to_string()).unwrap();
        let settings = WriterSettings {
            encoding: FloatEncoding::ByteStreamSplit,
            compression: Compression::None,
            row_group_bytes: 64,
        };
        let subset = EmbeddingMeta { stored_channels: Some(vec![1, 3, 4]), value_type: ValueType::F16, ..meta() };
        write(&store, "s.parquet", subset.clone(), settings);
        let reader = EmbeddingReader::open(&store, "s.parquet", None, 2).unwrap();
        assert_eq!(reader.meta(), &subset);
        assert_eq!(reader.meta().schema().fields().len(), 3 + 3);
        for (id, c, p, got) in read(&store, "s.parquet", &[4, 1]) {
            assert_eq!(got, half::f16::from_f32(value(id, c, p)).to_f32());
        }
        match EmbeddingReader::open(&store, "s.parquet", Some(&[0, 1, 2, 3]), 2) {
            Err(error @ StoreError::MissingChannels { .. }) => {
                let message = error.to_string();
                assert!(message.contains("not channel(s) 0, 2") && message.contains("stores 3 of the 5"), "{message}");
                assert!(message.contains("padim extract JOB --force"), "{message}");
            }
            other => panic!("{:?}", other.map(|r| r.meta().clone())),
        }
        assert_eq!(list_channels(&[1, 2, 3, 7, 9, 10]), "1-3, 7, 9-10");
    }

    #[test]
    fn format_1_files_of_f32_columns_still_read() {
        // What padim wrote before format 2: Float32 columns for every channel through the arrow
        // writer, and a footer without the value type or stored channels.
        use arrow_array::{ArrayRef, UInt16Array};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().display().to_string()).unwrap();
        let mut footer = serde_json::to_value(EmbeddingMeta { format_version: 1, ..meta() }).unwrap();
        let object = footer.as_object_mut().unwrap();
        object.remove("value-type");
        object.remove("stored-channels");
        let schema = meta().schema();
        let ids = [7u32, 3, 11];
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from(ids.iter().flat_map(|&i| [i; 6]).collect::<Vec<_>>())),
            Arc::new(UInt16Array::from([0u16, 0, 1, 1, 2, 2].repeat(3))),
            Arc::new(UInt16Array::from([0u16, 1].repeat(9))),
        ];
        for c in 0..5 {
            let values: Vec<f32> = ids.iter().flat_map(|&i| (0..6).map(move |p| value(i, c, p))).collect();
            columns.push(Arc::new(Float32Array::from(values)));
        }
        let properties = WriterProperties::builder()
            .set_key_value_metadata(Some(vec![KeyValue::new(EMBEDDINGS_META_KEY.into(), footer.to_string())]))
            .build();
        let mut bytes = Vec::new();
        let mut writer = parquet::arrow::ArrowWriter::try_new(&mut bytes, schema.clone(), Some(properties)).unwrap();
        writer.write(&arrow_array::RecordBatch::try_new(schema, columns).unwrap()).unwrap();
        writer.close().unwrap();
        store.put("old.parquet", bytes).unwrap();
        let reader = EmbeddingReader::open(&store, "old.parquet", None, 2).unwrap();
        assert_eq!(reader.meta(), &EmbeddingMeta { format_version: 1, ..meta() });
        for (id, c, p, got) in read(&store, "old.parquet", &[0, 4]) {
            assert_eq!(got, value(id, c, p));
        }
    }

    #[test]
    fn values_beyond_f16_are_an_error_and_nothing_appears() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().display().to_string()).unwrap();
        let settings =
            WriterSettings { encoding: FloatEncoding::Plain, compression: Compression::None, row_group_bytes: 1 };
        let f16 = EmbeddingMeta { value_type: ValueType::F16, ..meta() };
        let mut writer = EmbeddingWriter::create(&store, "big.parquet", f16, settings).unwrap();
        let mut values = vec![1.0f32; 30];
        values[17] = 70_000.0;
        let error = writer.write(&[1], EmbeddingValues::F32(values)).and_then(|()| writer.finish()).unwrap_err();
        assert!(error.to_string().contains("extract.dtype = \"f32\""), "{error}");
        assert!(store.get("big.parquet").unwrap().is_none());
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().display().to_string()).unwrap();
        let settings =
            WriterSettings { encoding: FloatEncoding::Plain, compression: Compression::None, row_group_bytes: 1 };
        let mut writer = EmbeddingWriter::create(&store, "emb.parquet", meta(), settings).unwrap();
        writer.write(&[1], EmbeddingValues::F32(vec![0.5; 30])).unwrap();
        assert!(writer.write(&[1], EmbeddingValues::F32(vec![0.5; 3])).is_err());
        drop(writer);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(names.is_empty(), "{names:?}");
    }
}
