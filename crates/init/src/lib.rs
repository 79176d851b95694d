//! `padim init DIR`: a job file for a folder of images, and what was guessed on the way and why.
//!
//! The folder's sub-folders are the labels (images at any depth below each, as the job's
//! `dataset.root` reads them). The normal label is the one whose name says so (`good`, `ok`,
//! `normal`, `negative`, `free`, `defect-free`, ...) unless the caller names it. Masks are looked
//! for beside the images under the names data sets use (`{stem}.png`, `{stem}_mask.png`, ...). The
//! split takes the reference recipe's sizes (250 normal images train; 100 + 100 calibrate; 1,000 +
//! 1,000 test), scaled down in proportion when the folder holds fewer, with floors below which the
//! numbers would mean nothing. The rest is the main job's configuration (EfficientNet-Lite1 at
//! 240 px, the whole image, layers 2+3 and all layers, `auto` score, `kde` threshold).
//!
//! What cannot be guessed is refused with what to do: no sub-folders, no label that says it is
//! normal, too few images to split, no weights. The job text is checked by loading it as `padim run`
//! would before it is handed back.

mod labels;
mod split;

use padim_core::Job;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub use labels::is_normal_name;
pub use split::{SplitPlan, plan_split};

/// What the caller decides; everything else is guessed.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// The folder of images, one sub-folder per label.
    pub dir: PathBuf,
    /// Where the job file will be written (relative paths in it are relative to its folder).
    pub job_path: PathBuf,
    /// The normal labels; empty: guessed from the labels' names.
    pub normal: Vec<String>,
    /// The backbone weights; `None`: `weights/efficientnet-lite1.safetensors` under the current
    /// folder.
    pub weights: Option<PathBuf>,
    /// The run location; `None`: `runs/NAME` under the current folder.
    pub output: Option<PathBuf>,
}

/// One thing `init` decided and why, for the user to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guess {
    /// What was decided (`labels`, `normal`, `masks`, `split`, `images`, `backbone`).
    pub what: &'static str,
    /// The decision and the reason, in words.
    pub text: String,
}

/// A job made for a folder: its TOML text and the guesses behind it.
#[derive(Debug, Clone)]
pub struct InitPlan {
    /// The job's name (the folder's name).
    pub name: String,
    /// The job file's text, already loaded once as `padim run` loads it.
    pub job_toml: String,
    pub guesses: Vec<Guess>,
}

/// Why no job could be made. Each names the folder or label and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{dir} is not a folder: give the folder that holds one sub-folder of images per label")]
    NotAFolder { dir: PathBuf },
    #[error("cannot read or write {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot list {path}")]
    List { path: PathBuf, source: padim_core::dataset::FilesError },
    #[error(
        "{dir} has no sub-folder with images{loose}: padim takes the labels from sub-folders; put the \
         defect-free images in one (e.g. {dir}/good) and the defective ones in others (e.g. {dir}/defect)"
    )]
    NoLabels { dir: PathBuf, loose: String },
    #[error(
        "cannot tell which label is normal (defect-free) among {labels}{masks}: pass --normal LABEL (or \
         rename that folder good, ok, normal, negative or defect-free)"
    )]
    NoNormal { labels: String, masks: String },
    #[error("--normal {label}: {dir} has no sub-folder {label} with images (its labels: {labels})")]
    UnknownNormal { label: String, dir: PathBuf, labels: String },
    #[error(
        "every label is normal ({labels}): padim calibrates and tests on defective images too; add a \
         sub-folder of defective images, or name the normal labels with --normal"
    )]
    NoAnomalous { labels: String },
    #[error("{what}: {count} images, too few to split; {needed}")]
    TooFew { what: String, count: usize, needed: String },
    #[error("no backbone weights at {path}: run `make weights` in the padim folder, or pass --weights FILE")]
    NoWeights { path: PathBuf },
    #[error("{path} exists: pass --force to overwrite it, or --output to write another file")]
    Exists { path: PathBuf },
    #[error("the job made for {dir} does not load; please report this")]
    Invalid { dir: PathBuf, source: padim_core::ConfigError },
}

/// The backbone `init` writes: the main job's.
const BACKBONE: &str = "efficientnet-lite1";
/// Its native input, the main job's (the whole image, no crop).
const INPUT: u32 = 240;
/// The default weights, under the current folder (`make weights` writes them there).
const DEFAULT_WEIGHTS: &str = "weights/efficientnet-lite1.safetensors";
/// The image extensions `init` takes (the job's default list).
const EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp"];
/// Mask file names that data sets use, in the image's folder; the first that names a file beside
/// some anomalous image is taken.
const MASK_PATTERNS: [&str; 6] =
    ["{stem}.png", "{stem}_mask.png", "{stem}_gt.png", "{stem}_label.png", "{stem}-mask.png", "{stem}_mask.bmp"];
/// Folder names that hold masks, not images of a label.
const MASK_FOLDER_WORDS: [&str; 7] = ["mask", "masks", "lab", "label", "labels", "gt", "ground_truth"];
/// How many image headers are read for the size summary.
const SIZE_SAMPLE: usize = 64;

/// One label folder's files.
#[derive(Debug)]
struct LabelFolder {
    name: String,
    files: Vec<PathBuf>,
}

/// Makes the job for `options.dir` (local folders only). Reads the folder listing, the headers of a
/// few images and the weights (for their SHA-256); writes nothing.
pub fn plan(options: &InitOptions) -> Result<InitPlan, InitError> {
    let dir = &options.dir;
    if !dir.is_dir() {
        return Err(InitError::NotAFolder { dir: dir.clone() });
    }
    let dir_abs = absolute(dir).map_err(|source| InitError::Io { path: dir.clone(), source })?;
    let name = job_name(&dir_abs);
    let mut guesses = Vec::new();

    let (folders, mask_folders, loose) = label_folders(dir)?;
    if folders.is_empty() {
        let loose = if loose > 0 { format!(" ({loose} images lie directly in it)") } else { String::new() };
        return Err(InitError::NoLabels { dir: dir.clone(), loose });
    }
    let masks = find_masks(&folders);
    let images: Vec<(String, Vec<PathBuf>)> = folders
        .iter()
        .map(|f| (f.name.clone(), f.files.iter().filter(|p| !masks.files.contains(*p)).cloned().collect()))
        .collect();
    let counts: BTreeMap<String, usize> = images.iter().map(|(l, f)| (l.clone(), f.len())).collect();
    let labels_text = counts.iter().map(|(l, n)| format!("{l} ({n})")).collect::<Vec<_>>().join(", ");
    let mut text = format!("{labels_text}: the sub-folders of {} that hold images", dir.display());
    if !mask_folders.is_empty() {
        text.push_str(&format!("; {} left out (their names say masks)", mask_folders.join(", ")));
    }
    guesses.push(Guess { what: "labels", text });

    let normal = normal_labels(options, dir, &counts, &mask_folders)?;
    let anomalous: Vec<String> = counts.keys().filter(|l| !normal.contains(l)).cloned().collect();
    if anomalous.is_empty() {
        return Err(InitError::NoAnomalous { labels: counts.keys().cloned().collect::<Vec<_>>().join(", ") });
    }
    let why = if options.normal.is_empty() { "its name says so" } else { "as --normal says" };
    guesses.push(Guess {
        what: "normal",
        text: format!("{} ({why}); anomalous: {}", normal.join(", "), anomalous.join(", ")),
    });

    let extensions = image_extensions(&images);
    guesses.push(Guess { what: "masks", text: masks.describe() });

    let normal_counts: BTreeMap<String, usize> =
        counts.iter().filter(|(l, _)| normal.contains(l)).map(|(l, n)| (l.clone(), *n)).collect();
    let anomalous_counts: BTreeMap<String, usize> =
        counts.iter().filter(|(l, _)| !normal.contains(l)).map(|(l, n)| (l.clone(), *n)).collect();
    let split = plan_split(&normal_counts, &anomalous_counts)?;
    guesses.push(Guess { what: "split", text: split.describe() });

    guesses.push(Guess { what: "images", text: size_summary(&images) });

    let job_parent = options.job_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let job_dir = absolute(job_parent).map_err(|source| InitError::Io { path: options.job_path.clone(), source })?;
    let weights = options.weights.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_WEIGHTS));
    let weights = absolute(&weights).unwrap_or(weights);
    if !weights.is_file() {
        return Err(InitError::NoWeights { path: weights });
    }
    let sha256 =
        padim_core::hash::sha256_file(&weights).map_err(|source| InitError::Io { path: weights.clone(), source })?;
    let weights_text = relative_to(&weights, &job_dir);
    guesses.push(Guess {
        what: "backbone",
        text: format!(
            "{BACKBONE} (ImageNet-pretrained) at {INPUT}x{INPUT}, the whole image, layers 2+3 and all layers: \
             the main job's configuration; weights {weights_text}"
        ),
    });
    let output = options.output.clone().unwrap_or_else(|| PathBuf::from("runs").join(&name));
    let output = absolute(&output).unwrap_or(output);

    let job_toml = job_text(&JobParts {
        name: &name,
        output: &relative_to(&output, &job_dir),
        root: &relative_to(&dir_abs, &job_dir),
        labels: counts.keys().cloned().collect(),
        normal: &normal,
        extensions,
        mask: masks.pattern,
        split: &split,
        weights: &weights_text,
        sha256: &sha256,
    });
    Job::parse(&job_toml, &options.job_path).map_err(|source| InitError::Invalid { dir: dir.clone(), source })?;
    Ok(InitPlan { name, job_toml, guesses })
}

/// Writes the plan's job file at `path`: whole or not at all (a temporary file renamed), and over
/// an existing file only when `force`.
pub fn write_job(plan: &InitPlan, path: &Path, force: bool) -> Result<(), InitError> {
    if path.exists() && !force {
        return Err(InitError::Exists { path: path.to_path_buf() });
    }
    let temporary = path.with_extension("toml.partial");
    let io = |source| InitError::Io { path: path.to_path_buf(), source };
    std::fs::write(&temporary, &plan.job_toml).map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)
}

/// `path` made absolute against the current folder, `.` and `..` removed.
fn absolute(path: &Path) -> std::io::Result<PathBuf> {
    std::path::absolute(path).map(|p| padim_core::config::normalize(&p))
}

/// The folder's name as a job name (the default job file is `NAME.toml`): letters, digits, `-` and `_` kept, anything else `-`.
pub fn job_name(dir: &Path) -> String {
    let raw = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "images".into());
    let name: String =
        raw.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect();
    if name.trim_matches('-').is_empty() { "images".into() } else { name }
}

fn is_image(path: &Path) -> bool {
    path.extension().map(|e| e.to_string_lossy().to_lowercase()).is_some_and(|e| EXTENSIONS.contains(&e.as_str()))
}

/// The label folders (sub-folders with image files at any depth), the sub-folders left out as mask
/// folders, and how many images lie directly in `dir`.
fn label_folders(dir: &Path) -> Result<(Vec<LabelFolder>, Vec<String>, usize), InitError> {
    let io = |source| InitError::Io { path: dir.to_path_buf(), source };
    let mut folders = Vec::new();
    let mut mask_folders = Vec::new();
    let mut loose = 0;
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(io)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>().map_err(io)?;
    entries.sort();
    for path in entries {
        if !path.is_dir() {
            loose += usize::from(is_image(&path));
            continue;
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        let files = files_below(&path)?;
        if files.iter().any(|p| is_image(p)) {
            if labels::words(&name).iter().any(|w| MASK_FOLDER_WORDS.contains(&w.as_str())) {
                mask_folders.push(name);
            } else {
                folders.push(LabelFolder { name, files: files.into_iter().filter(|p| is_image(p)).collect() });
            }
        }
    }
    Ok((folders, mask_folders, loose))
}

/// Every file below `dir`, at any depth, sorted (as the job's listing reads folders).
fn files_below(dir: &Path) -> Result<Vec<PathBuf>, InitError> {
    use padim_core::dataset::Files;
    padim_core::dataset::LocalFiles
        .list_files(dir)
        .map_err(|source| InitError::List { path: dir.to_path_buf(), source })
}

/// The masks found beside the images.
#[derive(Debug, Default)]
struct Masks {
    /// The job's `dataset.mask`.
    pattern: Option<String>,
    /// The mask files (not images of their label).
    files: BTreeSet<PathBuf>,
    /// How many images have one, per label.
    per_label: BTreeMap<String, usize>,
}

impl Masks {
    fn describe(&self) -> String {
        match &self.pattern {
            None => format!(
                "none found beside the images (looked for {}); image metrics only",
                MASK_PATTERNS.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", ")
            ),
            Some(pattern) => format!(
                "`{pattern}` beside each image ({}): pixel AUROC and PRO in the report; mask files are not images",
                self.per_label.iter().map(|(l, n)| format!("{l} {n}")).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// The mask pattern that names the most files beside the images (a mask file is never its own
/// image), if any names one.
fn find_masks(folders: &[LabelFolder]) -> Masks {
    let mut best = Masks::default();
    let mut best_count = 0;
    for pattern in MASK_PATTERNS {
        let mut masks = Masks { pattern: Some(pattern.to_string()), ..Masks::default() };
        for folder in folders {
            let present: BTreeSet<&PathBuf> = folder.files.iter().collect();
            for image in &folder.files {
                let (Some(parent), Some(stem)) = (image.parent(), image.file_stem()) else { continue };
                let mask = parent.join(pattern.replace("{stem}", &stem.to_string_lossy()));
                if &mask != image && present.contains(&mask) && !masks.files.contains(image) {
                    masks.files.insert(mask);
                    *masks.per_label.entry(folder.name.clone()).or_default() += 1;
                }
            }
        }
        let count = masks.files.len();
        if count > best_count {
            best = masks;
            best_count = count;
        }
    }
    best
}

/// The normal labels: the caller's, checked, or those whose names say so.
fn normal_labels(
    options: &InitOptions,
    dir: &Path,
    counts: &BTreeMap<String, usize>,
    mask_folders: &[String],
) -> Result<Vec<String>, InitError> {
    let labels = counts.iter().map(|(l, n)| format!("{l} ({n})")).collect::<Vec<_>>().join(", ");
    if !options.normal.is_empty() {
        for label in &options.normal {
            if !counts.contains_key(label) {
                return Err(InitError::UnknownNormal { label: label.clone(), dir: dir.to_path_buf(), labels });
            }
        }
        return Ok(options.normal.clone());
    }
    let normal: Vec<String> = counts.keys().filter(|l| is_normal_name(l)).cloned().collect();
    if normal.is_empty() {
        let masks = if mask_folders.is_empty() {
            String::new()
        } else {
            format!(
                " (with masks in {}: if every image has a defect, there is no normal label to train on; padim \
                 needs defect-free images)",
                mask_folders.join(", ")
            )
        };
        return Err(InitError::NoNormal { labels, masks });
    }
    Ok(normal)
}

/// The lower-case extensions of the images, sorted (mask files excluded).
fn image_extensions(images: &[(String, Vec<PathBuf>)]) -> Vec<String> {
    let set: BTreeSet<String> = images
        .iter()
        .flat_map(|(_, files)| files.iter())
        .filter_map(|p| p.extension().map(|e| e.to_string_lossy().to_lowercase()))
        .collect();
    set.into_iter().collect()
}

/// The range of image sizes over a sample of headers, and how the job brings them to the network.
fn size_summary(images: &[(String, Vec<PathBuf>)]) -> String {
    let all: Vec<&PathBuf> = images.iter().flat_map(|(_, f)| f.iter()).collect();
    let step = all.len().div_ceil(SIZE_SAMPLE).max(1);
    let mut sizes = Vec::new();
    let mut unreadable = 0;
    for path in all.iter().step_by(step) {
        match padim_image::header_size(path) {
            Ok(size) => sizes.push(size),
            Err(_) => unreadable += 1,
        }
    }
    let mut text = match (sizes.iter().map(|s| s.0).min(), sizes.iter().map(|s| s.0).max()) {
        (Some(w0), Some(w1)) => {
            let (h0, h1) = (sizes.iter().map(|s| s.1).min().unwrap_or(0), sizes.iter().map(|s| s.1).max().unwrap_or(0));
            let range = |a: u32, b: u32| if a == b { a.to_string() } else { format!("{a}-{b}") };
            let square = sizes.iter().all(|(w, h)| w == h);
            format!(
                "{} x {} px (width x height, {} of {} headers read); each is {} to {INPUT}x{INPUT}, the network's input",
                range(w0, w1),
                range(h0, h1),
                sizes.len(),
                all.len(),
                if square { "resized" } else { "stretched (not square: nothing is cropped away)" }
            )
        }
        _ => "no image header could be read".to_string(),
    };
    if unreadable > 0 {
        text.push_str(&format!(
            "; {unreadable} sampled files are not readable images (extract stops on them; `skip-bad = true` records and skips them)"
        ));
    }
    let short = sizes.iter().map(|(w, h)| (*w).min(*h)).max().unwrap_or(0);
    if short > 4 * INPUT {
        text.push_str(&format!(
            "; images this large shrink {}-fold, and a defect a few pixels wide may vanish",
            short / INPUT
        ));
    }
    text
}

/// `path` relative to `base` (with `/` separators) when it lies at most two folders up, so that a
/// project moved as a whole keeps its job working; else absolute.
fn relative_to(path: &Path, base: &Path) -> String {
    let relative = pathdiff::diff_paths(path, base)
        .filter(|r| r.components().take_while(|c| *c == std::path::Component::ParentDir).count() <= 2)
        .unwrap_or_else(|| path.to_path_buf());
    let text = relative.to_string_lossy().replace('\\', "/");
    if text.is_empty() { ".".into() } else { text }
}

/// The pieces of the job text.
struct JobParts<'a> {
    name: &'a str,
    output: &'a str,
    root: &'a str,
    labels: Vec<String>,
    normal: &'a [String],
    extensions: Vec<String>,
    mask: Option<String>,
    split: &'a SplitPlan,
    weights: &'a str,
    sha256: &'a str,
}

/// A TOML string (basic string, escaped).
fn quoted(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn list(items: &[String]) -> String {
    format!("[{}]", items.iter().map(|s| quoted(s)).collect::<Vec<_>>().join(", "))
}

fn job_text(p: &JobParts) -> String {
    let mask = match &p.mask {
        Some(pattern) => format!("mask = {}    # pixel masks beside the images (> 127 = defect)\n", quoted(pattern)),
        None => String::new(),
    };
    format!(
        r#"# Written by `padim init` for {root}; edit freely (docs/configuration.md lists every key).
# The configuration is the main job's (EfficientNet-Lite1 at 240 px, the whole image, layers 2+3
# and all layers, the image score and threshold chosen on the calibration split).
# Relative paths are relative to this file.

[run]
name = {name}
output = {output}

[dataset]
root = [{root_q}]
labels = {labels}
normal = {normal}
extensions = {extensions}
{mask}
# {split_comment}
[split]
seed = 0
train = {train}
calibration = {calibration}
test = {test}

[preprocess]
resize = [{input}, {input}]
crop = [{input}, {input}]
aspect = "stretch"

[backbone]
name = "{backbone}"
weights = {weights}
sha256 = "{sha256}"

[fit]
subsets = [
    {{ name = "all-l23", all = true, layers = [2, 3] }},
    {{ name = "all", all = true }},
]

[report]
score = "auto"
threshold = "kde"
model = "best"
"#,
        root = p.root,
        name = quoted(p.name),
        output = quoted(p.output),
        root_q = quoted(p.root),
        labels = list(&p.labels),
        normal = list(p.normal),
        extensions = list(&p.extensions),
        split_comment = p.split.comment(),
        train = p.split.table(split::Part::Train),
        calibration = p.split.table(split::Part::Calibration),
        test = p.split.table(split::Part::Test),
        input = INPUT,
        backbone = BACKBONE,
        weights = quoted(p.weights),
        sha256 = p.sha256,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }

    #[test]
    fn masks_beside_images_are_found_and_are_not_images() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for i in 0..3 {
            touch(&root.join(format!("good/Imgs/g{i}.jpg")));
            touch(&root.join(format!("good/Imgs/g{i}.png")));
            touch(&root.join(format!("bad/Imgs/b{i}.jpg")));
            touch(&root.join(format!("bad/Imgs/b{i}.png")));
        }
        touch(&root.join("masks/b0.png"));
        let (folders, mask_folders, loose) = label_folders(root).unwrap();
        assert_eq!(folders.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["bad", "good"]);
        assert_eq!((mask_folders, loose), (vec!["masks".to_string()], 0));
        let masks = find_masks(&folders);
        assert_eq!(masks.pattern.as_deref(), Some("{stem}.png"));
        assert_eq!(masks.files.len(), 6);
        assert!(masks.files.iter().all(|p| p.extension().unwrap() == "png"));

        // Masks with the images' own extension, by a suffix.
        let other = tempfile::tempdir().unwrap();
        touch(&other.path().join("ok/a.png"));
        touch(&other.path().join("ng/b.png"));
        touch(&other.path().join("ng/b_mask.png"));
        let (folders, _, _) = label_folders(other.path()).unwrap();
        let masks = find_masks(&folders);
        assert_eq!(masks.pattern.as_deref(), Some("{stem}_mask.png"));
        assert_eq!(masks.files.iter().collect::<Vec<_>>(), [&other.path().join("ng/b_mask.png")]);
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(quoted(r#"a "b" \c"#), r#""a \"b\" \\c""#);
        assert_eq!(list(&["x".into(), "y".into()]), r#"["x", "y"]"#);
        assert_eq!(job_name(Path::new("/data/my set (2)")), "my-set--2-");
        assert_eq!(relative_to(Path::new("/p/data/x"), Path::new("/p")), "data/x");
        assert_eq!(relative_to(Path::new("/shared/data/x"), Path::new("/p/main")), "../../shared/data/x");
        assert_eq!(relative_to(Path::new("/work/data/x"), Path::new("/tmp/a/b")), "/work/data/x");
    }
}
