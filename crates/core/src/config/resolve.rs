//! Resolution of a parsed job file: relative paths against the job file's folder (URLs kept), the
//! dataset's source, defaults filled in, and every setting checked, each error naming the file and
//! the key.

use super::raw::*;
use super::settings::*;
use super::{ConfigError, Job};
use std::path::{Path, PathBuf};

pub(super) fn invalid(path: &Path, key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { path: path.to_path_buf(), key, problem: problem.into() }
}

/// The job of a parsed file: each section resolved and checked in turn.
pub(super) fn resolve(raw: RawJob, base: &Path, path: &Path) -> Result<Job, ConfigError> {
    if raw.run.name.trim().is_empty() {
        return Err(invalid(path, "run.name", "must not be empty"));
    }
    let output = resolve_location(&raw.run.output, base);
    let source = resolve_source(&raw.dataset, base, path)?;
    let pre = raw.preprocess;
    check_sizes(path, "preprocess.crop", pre.resize, pre.crop)?;
    if pre.max_pixels == 0 {
        return Err(invalid(path, "preprocess.max-pixels", "must be positive"));
    }
    check_sha256(path, "backbone.sha256", raw.backbone.sha256.as_deref())?;
    let backbone = Backbone {
        kind: raw.backbone.name,
        weights: resolve_input(&raw.backbone.weights, base),
        sha256: raw.backbone.sha256.map(|s| s.to_lowercase()),
        tap: raw.backbone.tap,
    };
    let mut sweep = raw.sweep;
    if let Some(sweep) = &mut sweep {
        resolve_sweep(sweep, &pre, base, path)?;
    }
    let mut fit = raw.fit;
    if let Some(sweep) = &sweep {
        fit.subsets.extend(sweep.experiments().map_err(|error| invalid(path, "sweep", error.to_string()))?);
    }
    check_fit(&fit, path)?;
    check_score(&raw.score, path)?;
    check_extract(&raw.extract, path)?;
    let mut split = raw.split;
    if let Some(split) = &mut split {
        validate_split(split, path)?;
        if let Some(groups) = &mut split.groups {
            *groups = read_groups(&groups.path, base, path)?;
        }
        // With splits, only the training split trains unless the job says otherwise.
        if fit.train_split.is_none() {
            fit.train_split = Some("train".into());
        }
    }
    if let Some(mask) = &raw.dataset.mask
        && (!mask.contains("{stem}") || mask.contains('/'))
    {
        return Err(invalid(path, "dataset.mask", "must be a file name containing `{stem}`, e.g. \"{stem}.png\""));
    }
    check_report(&raw.report, &fit, path)?;
    Ok(Job {
        name: raw.run.name,
        output,
        dataset: Dataset { source, normal: raw.dataset.normal, mask: raw.dataset.mask },
        preprocess: pre,
        backbone,
        extract: raw.extract,
        fit,
        score: raw.score,
        split,
        report: raw.report,
        sweep,
    })
}

/// The dataset's one source: the first `root` that exists (or a URL), a list, or a manifest.
fn resolve_source(dataset: &RawDataset, base: &Path, path: &Path) -> Result<DatasetSource, ConfigError> {
    let sources = [!dataset.root.is_empty(), dataset.list.is_some(), dataset.manifest.is_some()];
    if sources.iter().filter(|s| **s).count() != 1 {
        return Err(invalid(path, "dataset", "needs exactly one of `root`, `list` or `manifest`"));
    }
    if let Some(list) = &dataset.list {
        return Ok(DatasetSource::List { path: resolve_input(list, base) });
    }
    if let Some(manifest) = &dataset.manifest {
        return Ok(DatasetSource::Manifest { path: resolve_input(manifest, base) });
    }
    let candidates: Vec<PathBuf> = dataset.root.iter().map(|r| resolve_input(r, base)).collect();
    // A URL is taken as it is (listing it needs the network; extract does that).
    let root = candidates.iter().find(|c| is_url(c) || c.is_dir()).cloned().ok_or_else(|| {
        let tried: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
        let hint = if dataset.source_hint.is_empty() { String::new() } else { format!(". {}", dataset.source_hint) };
        invalid(path, "dataset.root", format!("names no existing folder (tried {}){hint}", tried.join(", ")))
    })?;
    let extensions = dataset.extensions.iter().map(|e| e.trim_start_matches('.').to_lowercase()).collect();
    Ok(DatasetSource::Folders { root, labels: dataset.labels.clone(), extensions })
}

/// A sweep's backbones: checksums, input sizes, weights resolved, none twice.
fn resolve_sweep(sweep: &mut SweepSettings, pre: &Preprocess, base: &Path, path: &Path) -> Result<(), ConfigError> {
    let mut seen = Vec::new();
    for b in &mut sweep.backbones {
        check_sha256(path, "sweep.backbones.sha256", b.sha256.as_deref())?;
        b.sha256 = b.sha256.as_ref().map(|s| s.to_lowercase());
        check_sizes(path, "sweep.backbones", b.resize.unwrap_or(pre.resize), b.crop.unwrap_or(pre.crop))?;
        b.weights = resolve_input(&b.weights.to_string_lossy(), base);
        if seen.contains(&b.name) {
            return Err(invalid(path, "sweep.backbones", format!("`{}` is listed twice", b.name.name())));
        }
        seen.push(b.name);
    }
    Ok(())
}

fn check_fit(fit: &FitSettings, path: &Path) -> Result<(), ConfigError> {
    if fit
        .subsets
        .iter()
        .any(|s| s.layers.as_ref().is_some_and(|l| l.is_empty() || l.iter().any(|&l| !(1..=3).contains(&l))))
    {
        return Err(invalid(path, "fit.subsets", "`layers` are 1, 2 or 3"));
    }
    if !(fit.epsilon >= 0.0 && fit.epsilon.is_finite()) {
        return Err(invalid(path, "fit.epsilon", "must be a finite number >= 0"));
    }
    if fit.batch_images == 0 {
        return Err(invalid(path, "fit.batch-images", "must be at least 1"));
    }
    if fit.memory_budget_gib.is_nan() || fit.memory_budget_gib <= 0.0 {
        return Err(invalid(path, "fit.memory-budget-gib", "must be positive"));
    }
    let mut names = std::collections::BTreeSet::new();
    for subset in &fit.subsets {
        let problem = check_subset(fit, subset, &mut names);
        if let Some(problem) = problem {
            return Err(invalid(path, "fit.subsets", problem));
        }
    }
    Ok(())
}

/// What is wrong with one subset (its name unique among `names`), if anything.
fn check_subset(
    fit: &FitSettings,
    subset: &SubsetSpec,
    names: &mut std::collections::BTreeSet<String>,
) -> Option<String> {
    let kinds = [subset.count.is_some(), subset.channels.is_some(), subset.all];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Some(format!(
            "subset `{}` needs exactly one of `count` (with `seed`), `channels` or `all = true`",
            subset.name
        ));
    }
    if subset.name.is_empty() || !subset.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Some(format!("subset name `{}` must be letters, digits, - or _", subset.name));
    }
    if !names.insert(subset.name.clone()) {
        return Some(format!("subset name `{}` is used twice", subset.name));
    }
    if !subset.pool.is_none() && fit.covariance_of(subset).is_nearest() {
        return Some(format!("subset `{}`: a nearest-patch model has no covariance to pool; drop `pool`", subset.name));
    }
    if subset.name == BEST_MODEL {
        return Some(format!("the name `{BEST_MODEL}` is kept for report.model's choice; rename that subset"));
    }
    None
}

fn check_score(score: &ScoreSettings, path: &Path) -> Result<(), ConfigError> {
    if !(score.sigma > 0.0 && score.sigma.is_finite()) {
        return Err(invalid(path, "score.sigma", "must be a positive number"));
    }
    if score.kernel_size.is_multiple_of(2) {
        return Err(invalid(path, "score.kernel-size", "must be odd"));
    }
    if score.batch_images == 0 {
        return Err(invalid(path, "score.batch-images", "must be at least 1"));
    }
    if !(score.top_fraction > 0.0 && score.top_fraction <= 1.0) {
        return Err(invalid(path, "score.top-fraction", "must be in (0, 1]"));
    }
    if score.memory_budget_gib.is_nan() || score.memory_budget_gib <= 0.0 {
        return Err(invalid(path, "score.memory-budget-gib", "must be positive"));
    }
    Ok(())
}

fn check_extract(extract: &ExtractSettings, path: &Path) -> Result<(), ConfigError> {
    if extract.batch_size == 0 {
        return Err(invalid(path, "extract.batch-size", "must be at least 1"));
    }
    if extract.row_group_mib == 0 {
        return Err(invalid(path, "extract.row-group-mib", "must be at least 1"));
    }
    Ok(())
}

fn check_report(report: &ReportSettings, fit: &FitSettings, path: &Path) -> Result<(), ConfigError> {
    if !(report.target_rate > 0.0 && report.target_rate < 1.0) {
        return Err(invalid(path, "report.target-rate", "must be between 0 and 1"));
    }
    if !(report.display_percentile > 0.0 && report.display_percentile <= 100.0) {
        return Err(invalid(path, "report.display-percentile", "must be in (0, 100]"));
    }
    if let Some(model) = &report.model
        && model != BEST_MODEL
        && !fit.subsets.iter().any(|s| &s.name == model)
    {
        return Err(invalid(
            path,
            "report.model",
            format!("names no subset of `fit.subsets` (`{model}`); name one, or \"{BEST_MODEL}\""),
        ));
    }
    Ok(())
}

/// Sizes are positive, the crop fits in the resize and is a multiple of 4.
fn check_sizes(path: &Path, key: &'static str, resize: [u32; 2], crop: [u32; 2]) -> Result<(), ConfigError> {
    if resize.contains(&0) || crop.contains(&0) {
        return Err(invalid(path, key, "sizes must be positive"));
    }
    if crop[0] > resize[0] || crop[1] > resize[1] {
        return Err(invalid(path, key, format!("{:?} is larger than resize {:?}", crop, resize)));
    }
    // The embedding grid is a quarter of the input; with multiples of 16 the stride-8 and stride-16
    // maps divide it exactly, otherwise they are upsampled to it by nearest neighbour (as anomalib).
    if !crop[0].is_multiple_of(4) || !crop[1].is_multiple_of(4) {
        return Err(invalid(
            path,
            key,
            format!(
                "{:?} must be a multiple of 4 in both sides (the embedding grid is a quarter of the input; \
                 multiples of 16 align the three feature maps exactly)",
                crop
            ),
        ));
    }
    Ok(())
}

fn check_sha256(path: &Path, key: &'static str, sha: Option<&str>) -> Result<(), ConfigError> {
    match sha {
        Some(sha) if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) => {
            Err(invalid(path, key, "must be 64 hexadecimal digits"))
        }
        _ => Ok(()),
    }
}

pub(super) fn validate_split(split: &SplitSettings, path: &Path) -> Result<(), ConfigError> {
    let mut any = false;
    for (name, amounts) in split.parts() {
        for (label, amount) in amounts {
            any = true;
            let ok = match amount {
                SplitAmount::Count(n) => *n > 0,
                SplitAmount::Fraction(f) => *f > 0.0 && *f <= 1.0,
                SplitAmount::Rest(word) => word == "rest",
            };
            if !ok {
                return Err(invalid(
                    path,
                    "split",
                    format!("`{name}.{label}` must be a positive count, a fraction in (0, 1] or \"rest\""),
                ));
            }
        }
    }
    if !any {
        return Err(invalid(path, "split", "names no images: give counts per label, e.g. train = { good = 250 }"));
    }
    Ok(())
}

/// Reads `split.groups`, a local file named relative to the job file.
fn read_groups(named: &Path, base: &Path, path: &Path) -> Result<SplitGroups, ConfigError> {
    let key = "split.groups";
    if named.to_string_lossy().contains("://") {
        return Err(invalid(path, key, "must be a local file (keep it beside the job file)"));
    }
    let file = normalize(&base.join(named));
    let bytes = std::fs::read(&file).map_err(|e| invalid(path, key, format!("cannot read {}: {e}", file.display())))?;
    SplitGroups::read(file, &bytes).map_err(|error| invalid(path, key, error.to_string()))
}

/// A location is kept as a URL when it has a scheme, else made an absolute local path.
pub(super) fn resolve_location(location: &str, base: &Path) -> String {
    if location.contains("://") {
        location.to_string()
    } else {
        let joined = base.join(location);
        let joined = std::path::absolute(&joined).unwrap_or(joined);
        normalize(&joined).display().to_string()
    }
}

/// Whether `path` is a URL (`s3://bucket/key`, `file:///...`) rather than a local path.
pub fn is_url(path: &Path) -> bool {
    path.to_str().is_some_and(|s| {
        s.split_once("://").is_some_and(|(scheme, _)| {
            !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-')
        })
    })
}

/// An input named in the job: a URL as it is, a local path relative to the job file's folder.
pub(super) fn resolve_input(input: &str, base: &Path) -> PathBuf {
    if is_url(Path::new(input)) { PathBuf::from(input) } else { base.join(input) }
}

/// Removes `.` and `..` components lexically, so that recorded paths are readable.
pub fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}
