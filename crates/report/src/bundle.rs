//! The deployable bundle of the headline model (`padim predict --model`): its matrices as fitted,
//! with this report's calibration.

use crate::error::ReportError;
use crate::summary::{ModelMetrics, ReportSummary};
use padim_core::config::Job;
use padim_store::{Store, layout};

/// The bundle of the headline model: its matrices as fitted, with the calibration of this report.
pub(crate) fn bundle(
    store: &Store,
    job: &Job,
    headline: &ModelMetrics,
    summary: &ReportSummary,
) -> Result<Vec<u8>, ReportError> {
    use padim_fit::bundle::{BundleInfo, MatrixType, encode_bundle};
    let key = layout::fit::model(&headline.model);
    let bytes =
        store.get(&key)?.ok_or_else(|| ReportError::Table { what: store.url_of(&key), message: "missing".into() })?;
    let bad = |e: padim_fit::model::ModelError| ReportError::Table { what: store.url_of(&key), message: e.to_string() };
    let model = padim_fit::model::decode_model(&bytes).map_err(bad)?;
    let info = BundleInfo {
        format_version: BundleInfo::format_for(&model.info),
        job: job.name.clone(),
        model: model.info.clone(),
        weights_location: job.backbone.weights.display().to_string(),
        preprocess: job.preprocess.clone(),
        score_settings: job.score.clone(),
        score: headline.score,
        normalisation: headline.normalisation,
        threshold_rule: headline.threshold_rule,
        target_rate: job.report.target_rate,
        threshold: headline.threshold,
        display_range: summary.display_range,
        matrices: if job.report.bundle_f16 { MatrixType::F16 } else { MatrixType::F32 },
        embedding_values: job.extract.dtype,
    };
    encode_bundle(&model, &info).map_err(bad)
}
