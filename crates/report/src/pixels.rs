//! Pixel-level metrics: each image's map resized and smoothed as in score, its mask in the
//! network's geometry, pixel AUROC and PRO; and the image as the network saw it, for the pictures.

use crate::error::ReportError;
use crate::inputs::Scored;
use crate::metrics::{Roc, label_regions, pro_auc};
use crate::summary::PixelMetrics;
use padim_core::Progress;
use padim_core::config::Job;
use padim_image::Preprocessor;
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The score stage's resizing and smoothing of grid maps to the input resolution, for this job.
pub(crate) fn map_filter(job: &Job) -> padim_score::MapFilter {
    let [height, width] = job.preprocess.crop.map(|v| v as usize);
    padim_score::MapFilter::new(height / 4, width / 4, height, width, job.score.sigma, job.score.kernel_size)
}

pub(crate) fn preprocessor(job: &Job) -> Preprocessor {
    Preprocessor::new(job.preprocess.clone(), [0.0; 3], [1.0; 3])
}

/// The image as the network saw it (resized and cropped), RGB8.
pub(crate) fn network_view(job: &Job, path: &Path) -> Result<Vec<u8>, ReportError> {
    let bytes = padim_store::read_input(path).map_err(|source| ReportError::Input { path: path.into(), source })?;
    network_view_of(job, path, &bytes)
}

/// [`network_view`] of the encoded image `bytes` (`path` names it in errors).
pub(crate) fn network_view_of(job: &Job, path: &Path, bytes: &[u8]) -> Result<Vec<u8>, ReportError> {
    let rgb = padim_image::decode_rgb8(path, bytes, &job.preprocess)?;
    Ok(preprocessor(job).resize_and_crop(path, rgb)?)
}

/// The mask file of an image, by the job's pattern.
pub(crate) fn mask_path(job: &Job, image: &Path) -> Option<PathBuf> {
    job.dataset.mask_path(image)
}

/// The mask of an image in the network's geometry (resized and cropped like the image), thresholded
/// at > 127; `None` if the job names no masks or the image has no mask file.
pub(crate) fn network_mask(job: &Job, image: &Path) -> Result<Option<Vec<bool>>, ReportError> {
    let Some(path) = mask_path(job, image) else { return Ok(None) };
    let read_error = |source| ReportError::Input { path: path.clone(), source };
    let Some(bytes) = padim_store::read_input_opt(&path).map_err(read_error)? else { return Ok(None) };
    let rgb = network_view_of(job, &path, &bytes)?;
    Ok(Some(rgb.chunks_exact(3).map(|p| p[0] > 127).collect()))
}

/// [`pixel_metrics`] of the calibration split; `None` where it has no defect pixels (no anomalous
/// image with a mask), other errors as they are.
pub(crate) fn calibration_pixel_metrics(
    job: &Job,
    maps: &HashMap<u32, Vec<f32>>,
    model: &str,
    rows: &[&Scored],
    with_pro: bool,
    progress: &dyn Progress,
) -> Result<Option<PixelMetrics>, ReportError> {
    match pixel_metrics(job, maps, model, ("calibration", rows), with_pro, progress) {
        Ok(metrics) => Ok(Some(metrics)),
        Err(ReportError::Metric { .. }) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Pixel AUROC and, with `with_pro`, PRO (the costly part; the sweep table needs only the AUROC and
/// gets NaN for PRO, which it never shows) of the images `tests` of the split `split`.
pub(crate) fn pixel_metrics(
    job: &Job,
    maps: &HashMap<u32, Vec<f32>>,
    model: &str,
    (split, tests): (&str, &[&Scored]),
    with_pro: bool,
    progress: &dyn Progress,
) -> Result<PixelMetrics, ReportError> {
    let normal = &job.dataset.normal;
    progress.start(&format!("report (pixel metrics, {split})"), tests.len() as u64);
    type MapAndMask = (Vec<f32>, Vec<bool>);
    let filter = map_filter(job);
    let per_image: Result<Vec<Option<MapAndMask>>, ReportError> = tests
        .par_iter()
        .map(|row| {
            progress.advance(1);
            let path = job.dataset.resolve_path(&row.path);
            let Some(grid) = maps.get(&row.image) else { return Ok(None) };
            let mask = match network_mask(job, &path)? {
                Some(mask) => mask,
                // A normal image without a mask file is all normal; an anomalous one has no pixel truth.
                None if normal.contains(&row.label) => vec![false; grid.len() * 16],
                None => return Ok(None),
            };
            Ok(Some((filter.apply(grid), mask)))
        })
        .collect();
    progress.finish();
    let per_image: Vec<MapAndMask> = per_image?.into_iter().flatten().collect();
    let [height, width] = job.preprocess.crop.map(|v| v as usize);
    let mut scores = Vec::with_capacity(per_image.len() * height * width);
    let mut regions = Vec::with_capacity(scores.capacity());
    let mut n_regions = 0usize;
    for (map, mask) in &per_image {
        let (labels, n) = label_regions(mask, height, width);
        regions.extend(labels.into_iter().map(|l| l.map(|l| l + n_regions as u32)));
        n_regions += n;
        scores.extend_from_slice(map);
    }
    let truth: Vec<bool> = regions.iter().map(Option::is_some).collect();
    let as_f64: Vec<f64> = scores.iter().map(|&s| s as f64).collect();
    let what = format!("model {model}, {split} pixels");
    let roc = Roc::new(&as_f64, &truth, &what).map_err(|source| ReportError::Metric { what: what.clone(), source })?;
    let pro = if with_pro {
        pro_auc(&scores, &regions, n_regions, 0.3).map_err(|source| ReportError::Metric { what, source })?
    } else {
        f64::NAN
    };
    let without_mask = tests.len() - per_image.len();
    Ok(PixelMetrics { images: per_image.len(), without_mask, regions: n_regions, auroc: roc.auc(), pro })
}
