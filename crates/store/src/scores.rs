//! The score tables: image scores per model, and the raw anomaly maps at grid resolution.
//!
//! Scores: `image` (UInt32), `label` (Utf8), `split` (Utf8, nullable), `model` (Utf8), `mean`
//! (Float64), `max`, `min` (Float32): statistics of the resized, smoothed map.
//! Maps: `image` (UInt32), `model` (Utf8), `map` (`List<Float32>`, row-major `grid-height x grid-width`
//! Mahalanobis distances, before resizing and smoothing), with footer metadata `padim.grid` = `HxW`.

use crate::table::{get_table, put_table};
use crate::{Store, StoreError};
use arrow_array::builder::{Float32Builder, ListBuilder};
use arrow_array::{Array, ArrayRef, Float32Array, Float64Array, ListArray, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema};
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
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.image))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.label.as_str()))),
        Arc::new(StringArray::from(rows.iter().map(|r| r.split.clone()).collect::<Vec<_>>())),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.model.as_str()))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.mean))),
        Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.max))),
        Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.min))),
    ];
    put_table(store, key, &batch(store.url_of(key), schema, columns)?)
}

/// Writes the raw maps table atomically.
pub fn write_maps(store: &Store, key: &str, rows: &[MapRow]) -> Result<(), StoreError> {
    let schema = Schema::new(vec![
        Field::new("image", DataType::UInt32, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("map", DataType::List(Arc::new(Field::new("item", DataType::Float32, true))), false),
    ]);
    let mut maps = ListBuilder::new(Float32Builder::new());
    for row in rows {
        maps.values().append_slice(&row.map);
        maps.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.image))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.model.as_str()))),
        Arc::new(maps.finish()),
    ];
    put_table(store, key, &batch(store.url_of(key), schema, columns)?)
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
        for i in 0..batch.num_rows() {
            rows.push(ScoreRow {
                image: image.value(i),
                label: label.value(i).to_string(),
                split: (!split.is_null(i)).then(|| split.value(i).to_string()),
                model: model.value(i).to_string(),
                mean: mean.value(i),
                max: max.value(i),
                min: min.value(i),
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
            ScoreRow { image: 3, label: "ok".into(), split: None, model: "m".into(), mean: 1.5, max: 2.0, min: 0.5 },
            ScoreRow {
                image: 4,
                label: "bad".into(),
                split: Some("test".into()),
                model: "m".into(),
                mean: 9.0,
                max: 9.5,
                min: 8.0,
            },
        ];
        write_scores(&store, "s.parquet", &scores).unwrap();
        assert_eq!(read_scores(&store, "s.parquet").unwrap(), scores);
        let maps = vec![MapRow { image: 3, model: "m".into(), map: vec![1.0, 2.0, 3.0, 4.0] }];
        write_maps(&store, "m.parquet", &maps).unwrap();
        assert_eq!(read_maps(&store, "m.parquet").unwrap(), maps);
    }
}
