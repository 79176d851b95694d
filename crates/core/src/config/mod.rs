//! The job file: one TOML document that fixes every choice of an experiment.
//!
//! Parsing is strict (`deny_unknown_fields`, kebab-case keys) and every error names the file.
//! Relative paths in a job file are resolved against the directory of the job file, so a job can be
//! run from any working directory. The resolved job serialises to canonical JSON whose SHA-256 is the
//! job's identity: outputs record it, and a rerun with another config is detected by it.
//!
//! - `raw`: the document as written; `resolve`: paths, defaults and checks, to a [`Job`];
//! - `settings`: the sections' types the stages read (re-exported here);
//! - `identity`: the stage identities (`Job::split_hash` ... `report_hash`) and [`InputDigests`].

mod identity;
mod raw;
mod resolve;
mod settings;

pub use identity::InputDigests;
pub use resolve::{is_url, normalize};
pub use settings::*;

use serde::Serialize;
use std::path::{Path, PathBuf};

/// Errors from reading or validating a job file. Each names the file and, where it can, the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read job file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid job file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid job file {path}: `{key}` {problem}")]
    Invalid { path: PathBuf, key: &'static str, problem: String },
}

/// A validated job with every path resolved: what the stages receive.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Job {
    pub name: String,
    /// The run prefix: an absolute local path or a URL.
    pub output: String,
    pub dataset: Dataset,
    pub preprocess: Preprocess,
    pub backbone: Backbone,
    pub extract: ExtractSettings,
    pub fit: FitSettings,
    pub score: ScoreSettings,
    pub split: Option<SplitSettings>,
    pub report: ReportSettings,
    /// The sweep that added experiments to `fit.subsets`, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepSettings>,
}

impl Job {
    /// Reads, parses and validates a job file.
    pub fn load(path: &Path) -> Result<Job, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Job::parse(&text, path)
    }

    /// Parses and validates job text; `path` names the file in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Job, ConfigError> {
        let raw: raw::RawJob = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
        let base = std::path::absolute(&base).unwrap_or(base);
        resolve::resolve(raw, &base, path)
    }

    /// Canonical JSON of the resolved job.
    pub fn to_canonical_json(&self) -> String {
        // Serialising a struct is deterministic: fields in declaration order, no maps.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// SHA-256 of the canonical JSON: the job's identity.
    pub fn hash(&self) -> String {
        crate::hash::sha256_hex(self.to_canonical_json().as_bytes())
    }

    /// The runs this job makes: itself, or with `[sweep] backbones` one run per backbone, each this
    /// job with that backbone (and its input size) under `<output>/backbones/<backbone>`: its own
    /// split, extraction, fit and score, reused on rerun like any run's. The job's report compares
    /// them (docs/stages.md "sweeps").
    pub fn variants(&self) -> Vec<Job> {
        let Some(sweep) = self.sweep.as_ref().filter(|s| !s.backbones.is_empty()) else {
            return vec![self.clone()];
        };
        sweep
            .backbones
            .iter()
            .map(|b| {
                let mut job = self.clone();
                let name = b.name.name();
                job.name = format!("{}/{name}", self.name);
                job.output = format!("{}/{}/{name}", self.output.trim_end_matches('/'), BACKBONES_DIR);
                job.backbone = Backbone {
                    kind: b.name,
                    weights: b.weights.clone(),
                    sha256: b.sha256.clone(),
                    tap: b.tap.unwrap_or(self.backbone.tap),
                };
                job.preprocess.resize = b.resize.unwrap_or(self.preprocess.resize);
                job.preprocess.crop = b.crop.unwrap_or(self.preprocess.crop);
                if let Some(sweep) = &mut job.sweep {
                    sweep.backbones.clear();
                }
                job
            })
            .collect()
    }
}

/// Where a backbone sweep's runs live, under the job's output.
pub const BACKBONES_DIR: &str = "backbones";

#[cfg(test)]
mod tests {
    use super::*;

    fn write_job(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("job.toml");
        std::fs::write(&path, body).unwrap();
        path
    }

    const MINIMAL: &str = r#"
[run]
name = "t"
output = "out"
[dataset]
root = ["missing", "data"]
normal = ["good"]
[backbone]
name = "resnet18"
weights = "w.safetensors"
"#;

    #[test]
    fn resolves_paths_against_the_job_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let job = Job::load(&write_job(dir.path(), MINIMAL)).unwrap();
        let root = std::path::absolute(dir.path()).unwrap();
        assert_eq!(job.output, root.join("out").display().to_string());
        assert_eq!(job.backbone.weights, root.join("w.safetensors"));
        assert!(matches!(&job.dataset.source, DatasetSource::Folders { root: r, .. } if r.ends_with("data")));
        assert_eq!(job.preprocess, Preprocess::default());
        assert_eq!(job.backbone.tap, Tap::BlockOutput);
        assert_eq!(job.hash().len(), 64);
    }

    #[test]
    fn sweep_covariances_multiply_the_experiments() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let sweep = "[fit]\nsubsets = []\n[sweep]\ncounts = [10, \"all\"]\nseeds = [0, 1]\nlayers = [\"2+3\"]\n";
        let body = format!("{MINIMAL}{sweep}covariances = [\"sample\", \"oas\"]\n");
        let job = Job::load(&write_job(dir.path(), &body)).unwrap();
        let names: Vec<(&str, Option<CovarianceEstimator>)> =
            job.fit.subsets.iter().map(|s| (s.name.as_str(), s.covariance)).collect();
        let (sample, oas) = (Some(CovarianceEstimator::Sample), Some(CovarianceEstimator::Oas));
        assert_eq!(
            names,
            [
                ("c010-s0-l23", sample),
                ("c010-s1-l23", sample),
                ("c010-s0-l23-oas", oas),
                ("c010-s1-l23-oas", oas),
                ("all-l23", sample),
                ("all-l23-oas", oas),
            ]
        );
        // Without `covariances` the experiments and their identity are as before the key existed.
        let plain = Job::load(&write_job(dir.path(), &format!("{MINIMAL}{sweep}"))).unwrap();
        assert!(plain.fit.subsets.iter().all(|s| s.covariance.is_none()));
        assert!(!serde_json::to_string(&plain.fit.subsets).unwrap().contains("covariance"));
        let twice = format!("{MINIMAL}{sweep}covariances = [\"oas\", \"oas\"]\n");
        let message = Job::load(&write_job(dir.path(), &twice)).unwrap_err().to_string();
        assert!(message.contains("`oas` is listed twice"), "{message}");
    }

    #[test]
    fn covariance_pools_are_read_named_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let load = |extra: &str| Job::load(&write_job(dir.path(), &format!("{MINIMAL}{extra}")));
        let sweep = "[fit]\nsubsets = []\n[sweep]\ncounts = [\"all\"]\nlayers = [\"2+3\"]\n\
                     covariances = [\"sample\", \"nearest\"]\npools = [0, 2, \"all\"]\n";
        let job = load(sweep).unwrap();
        let names: Vec<(&str, CovariancePool)> = job.fit.subsets.iter().map(|s| (s.name.as_str(), s.pool)).collect();
        // Nearest-patch experiments are made once, without a pool.
        assert_eq!(
            names,
            [
                ("all-l23", CovariancePool::None),
                ("all-l23-p2", CovariancePool::Radius(2)),
                ("all-l23-pall", CovariancePool::All),
                ("all-l23-nearest", CovariancePool::None),
            ]
        );
        // An unpooled subset's identity is as before the key existed; a pooled one names its pool.
        let json = serde_json::to_value(&job.fit.subsets).unwrap();
        assert!(json[0].get("pool").is_none());
        assert_eq!((json[1]["pool"].clone(), json[2]["pool"].clone()), (2.into(), "all".into()));
        let subset = |pool: &str| format!("[fit]\nsubsets = [{{ name = \"a\", all = true, pool = {pool} }}]\n");
        assert_eq!(load(&subset("0")).unwrap().fit.subsets[0].pool, CovariancePool::None);
        assert_eq!(load(&subset("3")).unwrap().fit.subsets[0].pool, CovariancePool::Radius(3));
        for bad in ["\"some\"", "-1", "1.5"] {
            let message = load(&subset(bad)).unwrap_err().to_string();
            assert!(message.contains("a radius in grid cells") && message.contains("\"all\""), "{bad}: {message}");
        }
        let nearest = "[fit]\nsubsets = [{ name = \"nn\", all = true, covariance = \"nearest\", pool = 1 }]\n";
        let message = load(nearest).unwrap_err().to_string();
        assert!(
            message.contains("fit.subsets") && message.contains("`nn`") && message.contains("drop `pool`"),
            "{message}"
        );
        let twice = sweep.replace("[0, 2, \"all\"]", "[2, 2]");
        assert!(load(&twice).unwrap_err().to_string().contains("pools: `2` is listed twice"));
    }

    #[test]
    fn choice_settings_are_checked_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let error =
            |extra: &str| Job::load(&write_job(dir.path(), &format!("{MINIMAL}{extra}"))).unwrap_err().to_string();
        assert!(error("[score]\ntop-fraction = 0\n").contains("score.top-fraction"));
        let message = error("[report]\nmodel = \"nope\"\n");
        assert!(message.contains("report.model") && message.contains("\"best\""), "{message}");
        let message = error("[fit]\nsubsets = [{ name = \"best\", all = true }]\n");
        assert!(message.contains("fit.subsets") && message.contains("`best` is kept"), "{message}");
        let twice = "[sweep]\ncounts = [\"all\"]\nbackbones = [{ name = \"resnet18\", weights = \"a\" }, \
                     { name = \"resnet18\", weights = \"b\" }]\n";
        assert!(error(twice).contains("`resnet18` is listed twice"));
        let odd =
            "[sweep]\ncounts = [\"all\"]\nbackbones = [{ name = \"resnet18\", weights = \"a\", crop = [230, 230] }]\n";
        assert!(error(odd).contains("sweep.backbones"));
        // A sweep's backbones resolve their weights against the job file and run under backbones/.
        let ok = "[sweep]\ncounts = [\"all\"]\nbackbones = [{ name = \"efficientnet-lite1\", weights = \"w1\", \
                  resize = [272, 272], crop = [240, 240] }]\n";
        let job = Job::load(&write_job(dir.path(), &format!("{MINIMAL}{ok}"))).unwrap();
        let variants = job.variants();
        assert_eq!(variants.len(), 1);
        let root = std::path::absolute(dir.path()).unwrap();
        assert_eq!(variants[0].backbone.weights, root.join("w1"));
        assert_eq!(variants[0].output, format!("{}/backbones/efficientnet-lite1", root.join("out").display()));
        assert_eq!((variants[0].preprocess.resize, variants[0].preprocess.crop), ([272, 272], [240, 240]));
        assert!(variants[0].sweep.as_ref().unwrap().backbones.is_empty());
    }

    #[test]
    fn unknown_key_is_an_error_naming_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let body = MINIMAL.replace("[backbone]", "[backbone]\nwieghts = 1");
        let path = write_job(dir.path(), &body);
        let message = Job::load(&path).unwrap_err().to_string();
        assert!(message.contains("job.toml"), "{message}");
        assert!(message.contains("wieghts"), "{message}");
    }

    #[test]
    fn missing_data_lists_candidates_and_hint() {
        let dir = tempfile::tempdir().unwrap();
        let body = MINIMAL.replace("normal =", "source-hint = \"get it from X\"\nnormal =");
        let message = Job::load(&write_job(dir.path(), &body)).unwrap_err().to_string();
        assert!(message.contains("dataset.root"), "{message}");
        assert!(message.contains("missing") && message.contains("get it from X"), "{message}");
    }

    #[test]
    fn crop_larger_than_resize_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let body = format!(
            "{MINIMAL}\n[preprocess]\nresize = [256, 256]\ncrop = [288, 224]\naspect = \"stretch\"\nmin-side = 8\nmax-pixels = 100\n"
        );
        let message = Job::load(&write_job(dir.path(), &body)).unwrap_err().to_string();
        assert!(message.contains("preprocess.crop"), "{message}");
    }

    #[test]
    fn hash_changes_with_any_setting() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let a = Job::load(&write_job(dir.path(), MINIMAL)).unwrap();
        let b = Job::load(&write_job(dir.path(), &format!("{MINIMAL}\n[extract]\nbatch-size = 8\n"))).unwrap();
        assert_eq!(b.extract.batch_size, 8);
        assert_eq!(b.extract.threads, ExtractSettings::default().threads);
        assert_ne!(a.hash(), b.hash());
        let mut c = a.clone();
        c.backbone.tap = Tap::LastBn;
        assert_ne!(a.hash(), c.hash());
    }

    fn digests() -> InputDigests {
        InputDigests { images: "1".repeat(64), weights: "2".repeat(64) }
    }

    #[test]
    fn stage_identities_ignore_execution_settings() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let a = Job::load(&write_job(dir.path(), MINIMAL)).unwrap();
        let execution = "\n[extract]\nthreads = 1\ndevice = \"cpu\"\nbatch-size = 3\nskip-bad = true\n\
                         compression = \"lz4\"\nencoding = \"byte-stream-split\"\nchannels = \"subsets\"\n\
                         row-group-mib = 1\n[fit]\nmemory-budget-gib = 2\nbatch-images = 5\n\
                         [score]\nmemory-budget-gib = 0.5\nbatch-images = 7\n";
        let b = Job::load(&write_job(dir.path(), &format!("{MINIMAL}{execution}"))).unwrap();
        assert_eq!((b.fit.memory_budget_gib, b.score.memory_budget_gib, b.extract.threads), (2.0, 0.5, 1));
        let inputs = digests();
        assert_eq!(a.extract_hash(&inputs), b.extract_hash(&inputs), "threads, device, batches, skip-bad, encoding");
        assert_eq!(a.fit_hash(&inputs), b.fit_hash(&inputs), "a refusal threshold and a batch size only");
        assert_eq!(a.score_hash(&inputs), b.score_hash(&inputs), "scheduling only");
        assert_ne!(a.hash(), b.hash(), "the resolved job still records them");
        let mut e = a.clone();
        e.fit.epsilon = 0.02;
        assert_ne!(a.fit_hash(&inputs), e.fit_hash(&inputs));
        let mut c = a.clone();
        c.score.sigma = 2.0;
        assert_ne!(a.score_hash(&inputs), c.score_hash(&inputs));
        let mut p = a.clone();
        p.preprocess.resize = [300, 300];
        assert_ne!(a.extract_hash(&inputs), p.extract_hash(&inputs));
        // Rounding to f16 changes the values; f32 adds nothing to the identity of the runs made before.
        let mut f = a.clone();
        assert_eq!(f.extract.dtype, ValueType::F16);
        f.extract.dtype = ValueType::F32;
        assert_ne!(a.extract_hash(&inputs), f.extract_hash(&inputs));
        let bad = write_job(dir.path(), &format!("{MINIMAL}\n[score]\nmemory-budget-gib = 0\n"));
        let message = Job::load(&bad).unwrap_err().to_string();
        assert!(message.contains("score.memory-budget-gib") && message.contains("positive"), "{message}");
    }

    #[test]
    fn stage_identities_cover_content_not_paths() {
        // The same job file in two folders, each with its own data and weights paths.
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::create_dir(one.path().join("data")).unwrap();
        std::fs::create_dir(two.path().join("data")).unwrap();
        let a = Job::load(&write_job(one.path(), MINIMAL)).unwrap();
        let b = Job::load(&write_job(two.path(), MINIMAL)).unwrap();
        assert_ne!(a.backbone.weights, b.backbone.weights);
        assert_ne!(a.output, b.output);
        let inputs = digests();
        assert_eq!(a.split_hash(), b.split_hash());
        assert_eq!(a.extract_hash(&inputs), b.extract_hash(&inputs));
        assert_eq!(a.report_hash(&inputs), b.report_hash(&inputs));
        // Other images or other weights are another identity, all the way down.
        let other_images = InputDigests { images: "3".repeat(64), ..digests() };
        let other_weights = InputDigests { weights: "4".repeat(64), ..digests() };
        assert_ne!(a.extract_hash(&inputs), a.extract_hash(&other_images));
        assert_ne!(a.report_hash(&inputs), a.report_hash(&other_weights));
        // Which labels are taken is part of the split's identity.
        let labelled = write_job(one.path(), &MINIMAL.replace("normal =", "labels = [\"good\"]\nnormal ="));
        assert_ne!(a.split_hash(), Job::load(&labelled).unwrap().split_hash());
    }

    #[test]
    fn split_groups_are_read_with_the_job_and_identified_by_content() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let split = "\n[split]\ntrain = { good = 2 }\ngroups = \"groups.csv\"\n";
        let groups = "path,group\ngood/a.png,p1\ngood/b.png,p1\n\"good/c,1.png\",p2\n";
        for dir in [one.path(), two.path()] {
            std::fs::create_dir(dir.join("data")).unwrap();
            std::fs::write(dir.join("groups.csv"), groups).unwrap();
        }
        let a = Job::load(&write_job(one.path(), &format!("{MINIMAL}{split}"))).unwrap();
        let read = a.split.as_ref().and_then(|s| s.groups.as_ref()).unwrap();
        assert_eq!(read.path, one.path().join("groups.csv"));
        assert_eq!(read.of.get("good/c,1.png").map(String::as_str), Some("p2"));
        assert_eq!(read.of.len(), 3);
        // The same content elsewhere is the same split; other content another one; no groups another.
        let b = Job::load(&write_job(two.path(), &format!("{MINIMAL}{split}"))).unwrap();
        assert_eq!(a.split_hash(), b.split_hash());
        std::fs::write(two.path().join("groups.csv"), groups.replace(",p2", ",p1")).unwrap();
        let edited = Job::load(&write_job(two.path(), &format!("{MINIMAL}{split}"))).unwrap();
        assert_ne!(a.split_hash(), edited.split_hash());
        let plain =
            Job::load(&write_job(two.path(), &format!("{MINIMAL}{}", split.replace("groups =", "# ")))).unwrap();
        assert_ne!(a.split_hash(), plain.split_hash());
        // Errors name the key, the file and the line.
        let cases = [
            ("path,part\ngood/a.png,p1\n", "header must be `path,group`"),
            ("path,group\ngood/a.png,p1\ngood/a.png,p2\n", "line 3: good/a.png is named twice"),
            ("path,group\ngood/a.png,\n", "line 2: give an image path and a group name"),
            ("path,group\n", "names no image"),
        ];
        for (text, expected) in cases {
            std::fs::write(two.path().join("groups.csv"), text).unwrap();
            let message = Job::load(&write_job(two.path(), &format!("{MINIMAL}{split}"))).unwrap_err().to_string();
            assert!(
                message.contains("split.groups") && message.contains("groups.csv") && message.contains(expected),
                "{message}"
            );
        }
        std::fs::remove_file(two.path().join("groups.csv")).unwrap();
        let message = Job::load(&write_job(two.path(), &format!("{MINIMAL}{split}"))).unwrap_err().to_string();
        assert!(message.contains("split.groups") && message.contains("cannot read"), "{message}");
    }
}
