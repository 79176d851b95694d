//! The `report` stage of padim: calibration (normalisation and threshold on the calibration split),
//! evaluation on the test split (image and pixel level), pictures, tables and an HTML page.
//!
//! The stage ([`stage`]) reads its inputs ([`inputs`]), calibrates and evaluates every model and
//! score ([`evaluate`], on [`metrics`]), chooses each model's score and the headline model on the
//! calibration split ([`choice`]), measures pixels ([`pixels`]), writes the tables ([`tables`],
//! and for a sweep its decision table, [`decision`] with [`sweep`]'s frames and plot), draws the
//! pictures ([`figures`], on [`pictures`]), renders the page ([`html`]) from the summary
//! ([`summary`], `metrics.json`), and writes the bundle ([`bundle`]) and the run manifest
//! ([`manifest`]). A sweep over backbones reports each backbone's run, then compares them
//! ([`backbones`]). Modules depend downwards only: summary and metrics on nothing of the crate, html
//! on summary, the stage on all.

pub mod backbones;
pub mod bundle;
pub mod choice;
pub mod decision;
pub mod error;
pub mod evaluate;
pub mod figures;
pub mod forecast;
pub mod html;
pub mod inputs;
pub mod manifest;
pub mod metrics;
pub mod pictures;
pub mod pixels;
pub mod stage;
pub mod summary;
pub mod sweep;
pub mod tables;
pub mod threshold;

pub use error::ReportError;

use padim_core::{Job, Progress};

/// Choices of one invocation of the report stage.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// Redo the report even if it is marked done.
    pub force: bool,
}

/// Runs the report stage: of the job's run, or with `[sweep] backbones` of each backbone's run and
/// then their comparison ([`backbones`]).
pub fn run_report(job: &Job, options: &ReportOptions, progress: &dyn Progress) -> Result<ReportSummary, ReportError> {
    if job.sweep.as_ref().is_some_and(|s| !s.backbones.is_empty()) {
        backbones::run_backbones_report(job, options, progress)
    } else {
        stage::report_run(job, options, progress)
    }
}
pub use summary::ReportSummary;
