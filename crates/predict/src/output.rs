//! The table `padim predict` writes: JSON lines (for pipes), CSV (the `csv` crate) or Parquet
//! (arrow and parquet, as the store's tables).

use crate::PredictError;
use arrow_array::{ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray};
use parquet::arrow::ArrowWriter;
use serde::Serialize;

/// One input's result.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub path: String,
    /// `ok` or `error`.
    pub status: &'static str,
    /// The normalised score; the verdict compares it with `threshold`.
    pub score: Option<f64>,
    pub raw_score: Option<f64>,
    pub anomalous: Option<bool>,
    pub threshold: f64,
    /// The overlay PNG written for this image, if asked for.
    pub overlay: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    JsonLines,
    Csv,
    Parquet,
}

impl OutputFormat {
    /// The format a file name implies (`.csv`, `.parquet`, else JSON lines).
    pub fn of(name: &str) -> OutputFormat {
        let lower = name.to_lowercase();
        if lower.ends_with(".csv") {
            OutputFormat::Csv
        } else if lower.ends_with(".parquet") {
            OutputFormat::Parquet
        } else {
            OutputFormat::JsonLines
        }
    }
}

/// Encodes `rows` in `format`.
pub fn write_rows(rows: &[Row], format: OutputFormat) -> Result<Vec<u8>, PredictError> {
    let error = |e: String| PredictError::Output { what: "the prediction table".into(), message: e };
    match format {
        OutputFormat::JsonLines => {
            let mut out = Vec::new();
            for row in rows {
                serde_json::to_writer(&mut out, row).map_err(|e| error(e.to_string()))?;
                out.push(b'\n');
            }
            Ok(out)
        }
        OutputFormat::Csv => {
            let mut writer = csv::Writer::from_writer(Vec::new());
            for row in rows {
                writer.serialize(row).map_err(|e| error(e.to_string()))?;
            }
            writer.into_inner().map_err(|e| error(e.to_string()))
        }
        OutputFormat::Parquet => parquet_table(rows).map_err(error),
    }
}

/// `rows` as one Parquet file: a column per field, nullable where the field is optional.
fn parquet_table(rows: &[Row]) -> Result<Vec<u8>, String> {
    let strings = |f: &dyn Fn(&Row) -> Option<&str>| -> ArrayRef {
        std::sync::Arc::new(rows.iter().map(f).collect::<StringArray>())
    };
    let floats = |f: &dyn Fn(&Row) -> Option<f64>| -> ArrayRef {
        std::sync::Arc::new(rows.iter().map(f).collect::<Float64Array>())
    };
    let batch = RecordBatch::try_from_iter([
        ("path", strings(&|r| Some(r.path.as_str()))),
        ("status", strings(&|r| Some(r.status))),
        ("score", floats(&|r| r.score)),
        ("raw_score", floats(&|r| r.raw_score)),
        ("anomalous", std::sync::Arc::new(rows.iter().map(|r| r.anomalous).collect::<BooleanArray>()) as ArrayRef),
        ("threshold", floats(&|r| Some(r.threshold))),
        ("overlay", strings(&|r| r.overlay.as_deref())),
        ("error", strings(&|r| r.error.as_deref())),
    ])
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), None).map_err(|e| e.to_string())?;
    writer.write(&batch).map_err(|e| e.to_string())?;
    writer.close().map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;

    fn rows() -> Vec<Row> {
        vec![
            Row {
                path: "a, \"quoted\".jpg".into(),
                status: "ok",
                score: Some(0.25),
                raw_score: Some(12.5),
                anomalous: Some(false),
                threshold: 0.5,
                overlay: Some("file:///o/000000-a.png".into()),
                error: None,
            },
            Row {
                path: "b.jpg".into(),
                status: "error",
                score: None,
                raw_score: None,
                anomalous: None,
                threshold: 0.5,
                overlay: None,
                error: Some("b.jpg: cannot decode\nthe image".into()),
            },
        ]
    }

    #[test]
    fn csv_has_a_header_empty_missing_values_and_quotes_where_needed() {
        let text = String::from_utf8(write_rows(&rows(), OutputFormat::Csv).unwrap()).unwrap();
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
        assert_eq!(header, ["path", "status", "score", "raw_score", "anomalous", "threshold", "overlay", "error"]);
        let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(&records[0][0], "a, \"quoted\".jpg");
        assert_eq!((&records[0][2], &records[0][4], &records[0][7]), ("0.25", "false", ""));
        assert_eq!((&records[1][2], &records[1][4]), ("", ""));
        assert_eq!(&records[1][7], "b.jpg: cannot decode\nthe image");
    }

    #[test]
    fn parquet_reads_back_with_nulls() {
        let bytes = bytes::Bytes::from(write_rows(&rows(), OutputFormat::Parquet).unwrap());
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap();
        let batch = reader.map(Result::unwrap).next().unwrap();
        assert_eq!(batch.num_rows(), 2);
        let score = batch.column_by_name("score").unwrap().as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!((score.value(0), score.is_null(1)), (0.25, true));
        let anomalous = batch.column_by_name("anomalous").unwrap().as_any().downcast_ref::<BooleanArray>().unwrap();
        assert!(!anomalous.value(0) && anomalous.is_null(1));
        let error = batch.column_by_name("error").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        assert!(error.is_null(0) && error.value(1).starts_with("b.jpg"));
    }
}
