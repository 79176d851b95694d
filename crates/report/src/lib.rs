//! The `report` stage of padim: calibration (normalisation and threshold on the calibration split),
//! evaluation on the test split (image and pixel level), pictures, tables and an HTML page.
//!
//! - [`metrics`]: exact ROC/AUC, average precision, threshold rules, confusion matrix, PRO.
//! - [`pictures`]: histograms, ROC curves, confusion matrix, heatmap overlays and montages (PNG).
//! - [`html`]: the self-contained report page.
//! - [`stage`]: the stage itself.

pub mod html;
pub mod metrics;
pub mod pictures;
pub mod stage;
pub mod sweep;

pub use stage::{ReportError, ReportSummary, run_report};
