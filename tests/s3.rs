//! Scale-out against a real S3-compatible server (moto, started here on 127.0.0.1): the whole
//! pipeline with its inputs and outputs in a bucket, outages of the endpoint in the middle of stages
//! followed by reruns that resume and end with the clean run's results, and a 4-shard run that equals
//! the unsharded one.

use crate::support::s3::{Moto, Proxy};
use crate::support::{csv_rows_of, first_files, padim_with, root, stdout};
use padim_store::{EmbeddingReader, Store, read_scores};
use std::collections::BTreeMap;
use std::path::Path;

const BUCKET: &str = "padim";
const SECRET: &str = "padim-test-secret-never-printed";

/// Real concrete-crack images and the pretrained weights, uploaded to `s3://padim/data/...`.
fn upload_inputs(moto: &Moto, negatives: usize, positives: usize) {
    moto.create_bucket(BUCKET);
    let data = root().join("../shared/data/concrete-crack");
    for (label, n) in [("Negative", negatives), ("Positive", positives)] {
        for file in first_files(&data.join(label), n, "jpg") {
            let name = file.file_name().unwrap().to_string_lossy();
            moto.put_file(BUCKET, &format!("data/{label}/{name}"), &file);
        }
    }
    moto.put_file(BUCKET, "weights/lite0.safetensors", &root().join("weights/efficientnet-lite0.safetensors"));
}

/// A job whose dataset, weights and outputs are all in the bucket.
fn write_job(dir: &Path, name: &str, train: usize) -> std::path::PathBuf {
    let text = format!(
        r#"
[run]
name = "{name}"
output = "s3://{BUCKET}/runs/{name}"
[dataset]
root = ["s3://{BUCKET}/data"]
labels = ["Negative", "Positive"]
normal = ["Negative"]
[split]
seed = 3
train = {{ Negative = {train} }}
calibration = {{ Negative = 4, Positive = 4 }}
test = {{ Negative = "rest", Positive = "rest" }}
[backbone]
name = "efficientnet-lite0"
weights = "s3://{BUCKET}/weights/lite0.safetensors"
sha256 = "f46ec1c3cb680f7b6e592fd971a28f301ca2deef2db22f51ce7d8e69c6b5d28e"
[extract]
batch-size = 8
threads = 1
[fit]
subsets = [{{ name = "random40", count = 40, seed = 0 }}]
"#
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn run(job: &Path, endpoint: &str, args: &[&str]) -> std::process::Output {
    let mut all = args.to_vec();
    all.insert(1, job.to_str().unwrap());
    padim_with(&all, &Moto::env(endpoint))
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A full run in the bucket; the endpoint goes away in the middle of extract's multipart upload and
/// again in the middle of score. Each failed run names the object, leaves nothing that looks
/// complete and keeps what finished; the last rerun skips the finished stages and ends with results
/// identical to those of an uninterrupted run. No credential appears in any output or message.
#[test]
fn pipeline_in_a_bucket_resumes_after_outages() {
    let moto = Moto::start();
    upload_inputs(&moto, 20, 12);
    let dir = tempfile::tempdir().unwrap();

    let clean = write_job(dir.path(), "clean", 12);
    let out = stdout(&run(&clean, &moto.endpoint(), &["run"]));
    assert!(out.contains("report done -> s3://padim/runs/clean/report/report.html"), "{out}");

    let job = write_job(dir.path(), "outage", 12);
    let mut proxy = Proxy::new(moto.port);

    // 1. Down during extract's multipart upload of the embeddings (at the first part).
    proxy.start(Some("uploadId="));
    let failed = run(&job, &proxy.endpoint(), &["run"]);
    let message = stderr(&failed);
    assert!(!failed.status.success() && proxy.tripped(), "{message}");
    assert_eq!(failed.status.code(), Some(75), "a storage outage is transient for schedulers: {message}");
    assert!(message.contains("extract of job `outage`") && message.contains("s3://padim/runs/outage"), "{message}");
    assert!(!message.contains(SECRET), "{message}");
    let keys = moto.list(BUCKET, "runs/outage/");
    assert!(keys.contains(&"runs/outage/split/done.json".to_string()), "{keys:?}");
    // Nothing but, at most, the task's claim on the shard (withdrawn when the storage answers; it
    // holds this job's identity, so the rerun shares it).
    assert!(
        !keys.iter().any(|k| k.contains("/extract/") && !k.contains("/extract/claim-")),
        "a failed extract left {keys:?}"
    );

    // 2. Down in the middle of score, when it publishes its first table.
    proxy.start(Some("PUT /padim/runs/outage/score/"));
    let failed = run(&job, &proxy.endpoint(), &["run"]);
    let (out, message) = (String::from_utf8_lossy(&failed.stdout).into_owned(), stderr(&failed));
    assert!(!failed.status.success() && proxy.tripped(), "{message}");
    assert_eq!(failed.status.code(), Some(75), "{message}");
    assert!(out.contains("split already done") && out.contains("extract done") && out.contains("fit done"), "{out}");
    assert!(message.contains("score of job `outage`"), "{message}");
    let keys = moto.list(BUCKET, "runs/outage/");
    assert!(keys.contains(&"runs/outage/fit/done.json".to_string()), "{keys:?}");
    assert!(!keys.iter().any(|k| k.contains("/score/done")), "{keys:?}");

    // 3. Back up: the rerun resumes and completes.
    proxy.start(None);
    let out = stdout(&run(&job, &proxy.endpoint(), &["run"]));
    for finished in ["split already done", "extract already done", "fit already done", "score done", "report done"] {
        assert!(out.contains(finished), "`{finished}` missing in:\n{out}");
    }

    // Identical results: the report's tables byte for byte, and the score tables.
    for key in ["report/metrics.csv", "report/scores.csv", "report/roc.csv", "fit/model-random40.safetensors"] {
        let a = moto.get(BUCKET, &format!("runs/clean/{key}")).unwrap();
        let b = moto.get(BUCKET, &format!("runs/outage/{key}")).unwrap();
        if key.ends_with(".safetensors") {
            // The model records its run's config hash; its tensors must be equal.
            let (ma, mb) = (padim_fit::model::decode_model(&a).unwrap(), padim_fit::model::decode_model(&b).unwrap());
            assert!(ma.mean == mb.mean && ma.precision == mb.precision && ma.channels == mb.channels);
        } else {
            assert!(a == b, "{key} differs between the clean and the interrupted run");
        }
    }
    let rows = csv_rows_of(&moto.get(BUCKET, "runs/outage/report/scores.csv").unwrap());
    assert_eq!(rows.len(), 32, "every image is scored once");
    // Images are named relative to the dataset's base URL (s3://padim/data), as the manifest has them.
    assert!(
        rows.iter().all(|r| r["path"].starts_with("Negative/") || r["path"].starts_with("Positive/")),
        "inputs are named relative to the dataset's URL"
    );

    // No credential anywhere in the outputs.
    for key in moto.list(BUCKET, "runs/") {
        if key.ends_with(".json") || key.ends_with(".csv") || key.ends_with(".html") {
            let text = String::from_utf8_lossy(&moto.get(BUCKET, &key).unwrap()).into_owned();
            assert!(!text.contains(SECRET) && !text.contains("padim-test-key-id"), "{key} holds a credential");
        }
    }
}

/// Copies the objects under `prefix` into a local folder, to read them with padim's readers.
fn download(moto: &Moto, prefix: &str, to: &Path) {
    for key in moto.list(BUCKET, prefix) {
        let path = to.join(key.strip_prefix(prefix).unwrap());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, moto.get(BUCKET, &key).unwrap()).unwrap();
    }
}

fn scores_by_image(store: &Store) -> BTreeMap<u32, (f64, f32)> {
    let mut out = BTreeMap::new();
    for key in store.list("score").unwrap().iter().filter(|k| k.contains("/scores-")) {
        for row in read_scores(store, key).unwrap() {
            assert!(out.insert(row.image, (row.mean, row.max)).is_none(), "image {} scored twice", row.image);
        }
    }
    out
}

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(1e-300)
}

/// Four shards of extract (in parallel, as an array job runs them), of fit's accumulation and of
/// score, then fit's merge and the report, equal one unsharded run: the merged statistics equal a
/// two-pass f64 computation over every training image to 1e-12, the models and scores agree to f32
/// rounding, and the report's numbers are the same.
#[test]
fn four_shards_equal_one() {
    let moto = Moto::start();
    upload_inputs(&moto, 20, 12);
    let dir = tempfile::tempdir().unwrap();
    let endpoint = moto.endpoint();

    let whole = write_job(dir.path(), "whole", 12);
    stdout(&run(&whole, &endpoint, &["run"]));

    let sharded = write_job(dir.path(), "sharded", 12);
    stdout(&run(&sharded, &endpoint, &["split"]));
    let children: Vec<std::process::Child> = (0..4)
        .map(|i| {
            let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_padim"));
            command.args(["extract", sharded.to_str().unwrap(), "--quiet"]);
            // The shard index as an array job gives it (AWS Batch), the count from PADIM_SHARDS.
            command.env("AWS_BATCH_JOB_ARRAY_INDEX", i.to_string()).env("PADIM_SHARDS", "4");
            command
                .envs(Moto::env(&endpoint))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            command.spawn().unwrap()
        })
        .collect();
    for child in children {
        stdout(&child.wait_with_output().unwrap());
    }
    // Fit's array form: each task accumulates one extract shard's partial statistics; then the merge.
    for i in 0..4 {
        stdout(&run(&sharded, &endpoint, &["fit", "--shard", &format!("{i}/4")]));
    }
    stdout(&run(&sharded, &endpoint, &["fit"]));
    for i in 0..4 {
        stdout(&run(&sharded, &endpoint, &["score", "--shard", &format!("{i}/4")]));
    }
    stdout(&run(&sharded, &endpoint, &["report"]));

    let (whole_dir, sharded_dir) = (dir.path().join("whole"), dir.path().join("sharded"));
    download(&moto, "runs/whole/", &whole_dir);
    download(&moto, "runs/sharded/", &sharded_dir);
    let whole_store = Store::open(whole_dir.to_str().unwrap()).unwrap();
    let sharded_store = Store::open(sharded_dir.to_str().unwrap()).unwrap();
    assert_eq!(sharded_store.list("extract").unwrap().iter().filter(|k| k.contains("/done-")).count(), 4);

    // The merged f64 statistics of the four partial states against a two-pass computation over the
    // training images' embeddings of the unsharded run.
    let n_patches = 56 * 56;
    let mut merged: Option<padim_fit::PatchStats> = None;
    for key in sharded_store.list("fit").unwrap().iter().filter(|k| k.contains("/partial-0")) {
        let (stats, _) =
            padim_fit::model::decode_partial(&sharded_store.get(key).unwrap().unwrap(), n_patches).unwrap();
        match &mut merged {
            None => merged = Some(stats),
            Some(total) => total.merge(&stats).unwrap(),
        }
    }
    let merged = merged.expect("partial states of the four shards");
    let manifest = std::fs::read(whole_dir.join("split/manifest.csv")).unwrap();
    let train: Vec<u32> =
        csv_rows_of(&manifest).iter().filter(|r| r["split"] == "train").map(|r| r["image"].parse().unwrap()).collect();
    assert_eq!(merged.count(), train.len() as u64);
    let channels = merged.channels().channels().to_vec();
    let d = channels.len();
    let mut reader =
        EmbeddingReader::open(&whole_store, "extract/embeddings-00000-of-00001.parquet", Some(&channels), 64).unwrap();
    let mut images: Vec<Vec<f64>> = Vec::new();
    while let Some(batch) = reader.next_batch().unwrap() {
        let per_image = d * n_patches;
        for (i, id) in batch.image_ids.iter().enumerate() {
            if train.contains(id) {
                images.push(batch.values[i * per_image..(i + 1) * per_image].iter().map(|&v| v as f64).collect());
            }
        }
    }
    let n = images.len() as f64;
    let (mut worst_mean, mut worst_cov) = (0f64, 0f64);
    for p in (0..n_patches).step_by(97) {
        let value = |img: &Vec<f64>, c: usize| img[c * n_patches + p];
        let mean: Vec<f64> = (0..d).map(|c| images.iter().map(|img| value(img, c)).sum::<f64>() / n).collect();
        let mut scale = 0f64;
        let mut covariance = vec![0f64; d * d];
        for a in 0..d {
            for b in 0..d {
                let sum: f64 = images.iter().map(|img| (value(img, a) - mean[a]) * (value(img, b) - mean[b])).sum();
                covariance[a * d + b] = sum;
                scale = scale.max(sum.abs());
            }
        }
        let mean_scale = mean.iter().fold(0f64, |m, v| m.max(v.abs()));
        for (merged, reference) in merged.mean()[p * d..(p + 1) * d].iter().zip(&mean) {
            worst_mean = worst_mean.max((merged - reference).abs() / mean_scale);
        }
        for (i, reference) in covariance.iter().enumerate() {
            worst_cov = worst_cov.max((merged.comoment()[p * d * d + i] - reference).abs() / scale);
        }
    }
    eprintln!("merged statistics vs two-pass: mean {worst_mean:e}, co-moment {worst_cov:e}");
    assert!(worst_mean < 1e-12 && worst_cov < 1e-12, "mean {worst_mean:e}, co-moment {worst_cov:e}");

    // Models (stored as f32) and scores agree to f32 rounding; the report's numbers are the same.
    let decode = |store: &Store| {
        padim_fit::model::decode_model(&store.get("fit/model-random40.safetensors").unwrap().unwrap()).unwrap()
    };
    let (a, b) = (decode(&whole_store), decode(&sharded_store));
    assert_eq!(a.channels, b.channels);
    // Norm-wise: the largest difference over the largest magnitude, per patch's precision matrix.
    let worst_of = |x: &[f32], y: &[f32], block: usize| {
        x.chunks(block).zip(y.chunks(block)).fold(0f64, |worst, (x, y)| {
            let scale = x.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
            let diff = x.iter().zip(y).fold(0f32, |m, (a, b)| m.max((a - b).abs())) as f64;
            worst.max(diff / scale)
        })
    };
    let k = a.channels.len();
    let (worst_mean, worst_precision) = (worst_of(&a.mean, &b.mean, k), worst_of(&a.precision, &b.precision, k * k));
    eprintln!("models: mean {worst_mean:e}, precision {worst_precision:e} (norm-wise)");
    assert!(worst_mean < 1e-6 && worst_precision < 1e-6, "models differ: {worst_mean:e}, {worst_precision:e}");
    let (sa, sb) = (scores_by_image(&whole_store), scores_by_image(&sharded_store));
    assert_eq!(sa.len(), 32);
    assert_eq!(sa.keys().collect::<Vec<_>>(), sb.keys().collect::<Vec<_>>());
    for (image, (mean, max)) in &sa {
        let (mean_b, max_b) = sb[image];
        assert!(relative(*mean, mean_b) < 1e-5 && relative(*max as f64, max_b as f64) < 1e-5, "image {image}");
    }
    let metrics = |d: &Path| csv_rows_of(&std::fs::read(d.join("report/metrics.csv")).unwrap());
    let (ma, mb) = (metrics(&whole_dir), metrics(&sharded_dir));
    assert_eq!(ma.len(), mb.len());
    for (ra, rb) in ma.iter().zip(&mb) {
        for column in ["model", "score", "set", "tp", "fp", "tn", "fn"] {
            assert_eq!(ra[column], rb[column], "{column}");
        }
        for column in ["auroc", "aupr", "accuracy", "f1", "threshold"] {
            let (x, y): (f64, f64) = (ra[column].parse().unwrap(), rb[column].parse().unwrap());
            assert!(relative(x, y) < 1e-5, "{column}: {x} vs {y}");
        }
    }
}

/// The report reads images and masks from the bucket: an outage then is a storage failure (exit
/// 75, which the Batch and Slurm templates retry), never bad input (exit 2), and the rerun completes.
#[test]
fn report_outage_reading_masks_or_images_is_transient() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let tiles = root().join("../shared/data/magnetic-tile");
    for (label, n) in [("MT_Free", 16), ("MT_Blowhole", 8)] {
        let folder = tiles.join(label).join("Imgs");
        for image in first_files(&folder, n, "jpg") {
            for file in [image.clone(), image.with_extension("png")] {
                let name = file.file_name().unwrap().to_string_lossy();
                moto.put_file(BUCKET, &format!("tiles/{label}/Imgs/{name}"), &file);
            }
        }
    }
    moto.put_file(BUCKET, "weights/lite0.safetensors", &root().join("weights/efficientnet-lite0.safetensors"));
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("masks.toml");
    std::fs::write(
        &job,
        format!(
            r#"
[run]
name = "masks"
output = "s3://{BUCKET}/runs/masks"
[dataset]
root = ["s3://{BUCKET}/tiles"]
labels = ["MT_Free", "MT_Blowhole"]
normal = ["MT_Free"]
extensions = ["jpg"]
mask = "{{stem}}.png"
[split]
train = {{ MT_Free = 8 }}
calibration = {{ MT_Free = 4, MT_Blowhole = 4 }}
test = {{ MT_Free = "rest", MT_Blowhole = "rest" }}
[backbone]
name = "efficientnet-lite0"
weights = "s3://{BUCKET}/weights/lite0.safetensors"
[extract]
batch-size = 8
threads = 1
[fit]
subsets = [{{ name = "random20", count = 20, seed = 0 }}]
"#
        ),
    )
    .unwrap();
    let mut proxy = Proxy::new(moto.port);
    proxy.start(None);
    for stage in ["split", "extract", "fit", "score"] {
        stdout(&run(&job, &proxy.endpoint(), &[stage]));
    }
    // Down at the first mask the report reads (pixel metrics), then at the first image (montages).
    for (trigger, what) in [(".png HTTP/1.1", "a mask"), (".jpg HTTP/1.1", "an image")] {
        proxy.start(Some(trigger));
        let failed = run(&job, &proxy.endpoint(), &["report"]);
        let message = stderr(&failed);
        assert!(proxy.tripped(), "the report read no {what} through the proxy: {message}");
        assert_eq!(failed.status.code(), Some(75), "an outage while reading {what} is transient: {message}");
        assert!(message.contains("report of job `masks`") && message.contains("s3://padim/tiles/"), "{message}");
        assert!(moto.get(BUCKET, "runs/masks/report/done.json").is_none(), "a failed report is not marked done");
    }
    proxy.start(None);
    let out = stdout(&run(&job, &proxy.endpoint(), &["report"]));
    assert!(out.contains("report done") && out.contains("pixel AUROC"), "{out}");
}
