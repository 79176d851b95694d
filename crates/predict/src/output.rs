//! The table `padim predict` writes: JSON lines (for pipes), CSV or Parquet.

use crate::PredictError;
use polars::prelude::*;
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
        OutputFormat::Csv | OutputFormat::Parquet => {
            let mut df = df!(
                "path" => rows.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
                "status" => rows.iter().map(|r| r.status).collect::<Vec<_>>(),
                "score" => rows.iter().map(|r| r.score).collect::<Vec<_>>(),
                "raw_score" => rows.iter().map(|r| r.raw_score).collect::<Vec<_>>(),
                "anomalous" => rows.iter().map(|r| r.anomalous).collect::<Vec<_>>(),
                "threshold" => rows.iter().map(|r| r.threshold).collect::<Vec<_>>(),
                "overlay" => rows.iter().map(|r| r.overlay.clone()).collect::<Vec<_>>(),
                "error" => rows.iter().map(|r| r.error.clone()).collect::<Vec<_>>(),
            )
            .map_err(|e| error(e.to_string()))?;
            let mut out = Vec::new();
            if format == OutputFormat::Csv {
                CsvWriter::new(&mut out).finish(&mut df).map_err(|e| error(e.to_string()))?;
            } else {
                ParquetWriter::new(&mut out).finish(&mut df).map_err(|e| error(e.to_string()))?;
            }
            Ok(out)
        }
    }
}
