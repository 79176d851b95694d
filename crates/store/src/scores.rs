//! The score tables: image scores per model, and the raw anomaly maps at grid resolution.
//!
//! Scores: `image` (UInt32), `label` (Utf8), `split` (Utf8, nullable), `model` (Utf8), `mean`
//! (Float64), `max`, `min` (Float32), `top` (Float64, the mean of the map's highest
//! `score.top-fraction`): statistics of the resized, smoothed map.
//! Maps: `image` (UInt32), `model` (Utf8), `map` (`List<Float32>`, row-major `grid-height x grid-width`
//! Mahalanobis distances, before resizing and smoothing), with footer metadata `padim.grid` = `HxW`.

use crate::table::{Upload, get_table, put_table};
use crate::{Store, StoreError};
use arrow_array::builder::{Float32Builder, ListBuilder};
use arrow_array::{Array, ArrayRef, Float32Array, Float64Array, ListArray, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use std::sync::Arc;

/// One image's score under one model.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreRow {
    pub image: u32,
    pub label: String,
    pub split: Option<String>,
    pub model: String,
    pub mean: f64,
    pub max: f32,
    pub min: f32,
    pub top: f64,
}

/// One image's raw map under one model.
#[derive(Debug, Clone, PartialEq)]
pub struct MapRow {
    pub image: u32,
    pub model: String,
    pub map: Vec<f32>,
}

fn batch(key_url: String, schema: Schema, columns: Vec<ArrayRef>) -> Result<RecordBatch, StoreError> {
    RecordBatch::try_new(Arc::new(schema), columns)
        .map_err(|e| StoreError::Parquet { url: key_url, message: e.to_string() })
}

/// Writes the scores table atomically.
pub fn write_scores(store: &Store, key: &str, rows: &[ScoreRow]) -> Result<(), StoreError> {
    let schema = Schema::new(vec![
        Field::new("image", DataType::UInt32, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, true),
        Field::new("model", DataType::Utf8, false),
        Field::new("mean", DataType::Float64, false),
        Field::new("max", DataType::Float32, false),
        Field::new("min", DataType::Float32, false),
        Field::new("top", DataType::Float64, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.image))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.label.as_str()))),
        Arc::new(StringArray::from(rows.iter().map(|r| r.split.clone()).collect::<Vec<_>>())),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.model.as_str()))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.mean))),
        Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.max))),
        Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.min))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.top))),
    ];
    put_table(store, key, &batch(store.url_of(key), schema, columns)?)
}

/// Writes the raw maps table atomically.
pub fn write_maps(store: &Store, key: &str, rows: &[MapRow]) -> Result<(), StoreError> {
    let mut writer = MapsWriter::create(store, key)?;
    for row in rows {
        writer.write(&row.model, &[row.image], &row.map)?;
    }
    writer.finish()
}

/// Maps in one row group: a few MiB at usual grids, so that a writer's memory stays flat however
/// many images a shard holds.
const MAP_ROWS_PER_GROUP: usize = 256;

/// The raw maps table, streamed: rows are encoded a row group at a time and uploaded in parts; the
/// table appears only on [`finish`](Self::finish) (dropped before, nothing appears).
pub struct MapsWriter {
    url: String,
    schema: Arc<Schema>,
    writer: ArrowWriter<Upload>,
}

impl MapsWriter {
    pub fn create(store: &Store, key: &str) -> Result<Self, StoreError> {
        let url = store.url_of(key);
        let schema = Arc::new(Schema::new(vec![
            Field::new("image", DataType::UInt32, false),
            Field::new("model", DataType::Utf8, false),
            Field::new("map", DataType::List(Arc::new(Field::new("item", DataType::Float32, true))), false),
        ]));
        let properties = WriterProperties::builder().set_max_row_group_row_count(Some(MAP_ROWS_PER_GROUP)).build();
        let writer = ArrowWriter::try_new(Upload::new(store, key), schema.clone(), Some(properties))
            .map_err(|e| StoreError::parquet(&url, e))?;
        Ok(MapsWriter { url, schema, writer })
    }

    /// Appends the maps of `images` under `model`: `maps` holds one map per image, each of the
    /// same length, in the images' order.
    pub fn write(&mut self, model: &str, images: &[u32], maps: &[f32]) -> Result<(), StoreError> {
        if images.is_empty() {
            return Ok(());
        }
        let length = maps.len() / images.len();
        if length * images.len() != maps.len() {
            return Err(StoreError::Format {
                url: self.url.clone(),
                message: format!("{} values are not {} maps of one size", maps.len(), images.len()),
            });
        }
        let mut lists = ListBuilder::new(Float32Builder::with_capacity(maps.len()));
        for map in maps.chunks(length.max(1)) {
            lists.values().append_slice(map);
            lists.append(true);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from_iter_values(images.iter().copied())),
            Arc::new(StringArray::from_iter_values(images.iter().map(|_| model))),
            Arc::new(lists.finish()),
        ];
        let batch = batch(self.url.clone(), (*self.schema).clone(), columns)?;
        self.writer.write(&batch).map_err(|e| StoreError::parquet(&self.url, e))
    }

    /// Writes the footer and completes the upload: the table appears.
    pub fn finish(self) -> Result<(), StoreError> {
        let upload = self.writer.into_inner().map_err(|e| StoreError::parquet(&self.url, e))?;
        upload.complete()
    }
}

/// Reads a scores table.
pub fn read_scores(store: &Store, key: &str) -> Result<Vec<ScoreRow>, StoreError> {
    let url = store.url_of(key);
    let format = |message: String| StoreError::Format { url: url.clone(), message };
    let mut rows = Vec::new();
    for batch in get_table(store, key)? {
        macro_rules! column {
            ($name:literal, $type:ty) => {
                batch
                    .column_by_name($name)
                    .and_then(|c| c.as_any().downcast_ref::<$type>())
                    .ok_or_else(|| format(format!("column `{}` missing or mistyped", $name)))?
            };
        }
        let image = column!("image", UInt32Array);
        let label = column!("label", StringArray);
        let split = column!("split", StringArray);
        let model = column!("model", StringArray);
        let mean = column!("mean", Float64Array);
        let max = column!("max", Float32Array);
        let min = column!("min", Float32Array);
        let top = column!("top", Float64Array);
        for i in 0..batch.num_rows() {
            rows.push(ScoreRow {
                image: image.value(i),
                label: label.value(i).to_string(),
                split: (!split.is_null(i)).then(|| split.value(i).to_string()),
                model: model.value(i).to_string(),
                mean: mean.value(i),
                max: max.value(i),
                min: min.value(i),
                top: top.value(i),
            });
        }
    }
    Ok(rows)
}

/// Reads a maps table.
pub fn read_maps(store: &Store, key: &str) -> Result<Vec<MapRow>, StoreError> {
    let url = store.url_of(key);
    let format = |message: String| StoreError::Format { url: url.clone(), message };
    let mut rows = Vec::new();
    for batch in get_table(store, key)? {
        let image = batch.column(0).as_any().downcast_ref::<UInt32Array>().ok_or_else(|| format("`image`".into()))?;
        let model = batch.column(1).as_any().downcast_ref::<StringArray>().ok_or_else(|| format("`model`".into()))?;
        let maps = batch.column(2).as_any().downcast_ref::<ListArray>().ok_or_else(|| format("`map`".into()))?;
        for i in 0..batch.num_rows() {
            let values = maps.value(i);
            let values = values.as_any().downcast_ref::<Float32Array>().ok_or_else(|| format("`map` items".into()))?;
            rows.push(MapRow {
                image: image.value(i),
                model: model.value(i).to_string(),
                map: values.values().to_vec(),
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
        let scores = vec![
            ScoreRow {
                image: 3,
                label: "ok".into(),
                split: None,
                model: "m".into(),
                mean: 1.5,
                max: 2.0,
                min: 0.5,
                top: 1.9,
            },
            ScoreRow {
                image: 4,
                label: "bad".into(),
                split: Some("test".into()),
                model: "m".into(),
                mean: 9.0,
                max: 9.5,
                min: 8.0,
                top: 9.25,
            },
        ];
        write_scores(&store, "s.parquet", &scores).unwrap();
        assert_eq!(read_scores(&store, "s.parquet").unwrap(), scores);
        let maps = vec![MapRow { image: 3, model: "m".into(), map: vec![1.0, 2.0, 3.0, 4.0] }];
        write_maps(&store, "m.parquet", &maps).unwrap();
        assert_eq!(read_maps(&store, "m.parquet").unwrap(), maps);
    }

    /// The streamed maps table holds what was written, in order, in row groups of bounded size
    /// (its memory does not grow with the rows), and nothing appears until it is finished.
    #[test]
    fn maps_stream_in_bounded_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().display().to_string()).unwrap();
        let n_images = MAP_ROWS_PER_GROUP as u32 * 2 + 17;
        let images: Vec<u32> = (0..n_images).map(|i| i * 3).collect();
        let mut expected = Vec::new();
        let mut writer = MapsWriter::create(&store, "maps.parquet").unwrap();
        for (m, model) in ["b", "a"].iter().enumerate() {
            let maps: Vec<f32> = (0..images.len() * 6).map(|v| (v * (m + 1)) as f32 * 0.5).collect();
            // In uneven pieces, as a stage writes batches.
            for (ids, values) in images.chunks(100).zip(maps.chunks(600)) {
                writer.write(model, ids, values).unwrap();
            }
            for (&image, map) in images.iter().zip(maps.chunks(6)) {
                expected.push(MapRow { image, model: model.to_string(), map: map.to_vec() });
            }
        }
        assert_eq!(store.size("maps.parquet").unwrap(), None, "visible before it is finished");
        writer.finish().unwrap();
        assert_eq!(read_maps(&store, "maps.parquet").unwrap(), expected);
        let bytes = store.get("maps.parquet").unwrap().unwrap();
        let reader = parquet::file::serialized_reader::SerializedFileReader::new(bytes).unwrap();
        use parquet::file::reader::FileReader;
        let groups = reader.metadata().row_groups();
        assert_eq!(groups.len(), (2 * n_images as usize).div_ceil(MAP_ROWS_PER_GROUP));
        assert!(groups.iter().all(|g| g.num_rows() as usize <= MAP_ROWS_PER_GROUP));
        // A writer dropped before finishing publishes nothing.
        let mut dropped = MapsWriter::create(&store, "dropped.parquet").unwrap();
        dropped.write("a", &[1], &[1.0]).unwrap();
        drop(dropped);
        assert_eq!(store.size("dropped.parquet").unwrap(), None);
    }
}
