//! Decoding every supported kind of image against PIL, and every kind of bad input through the
//! extract stage: each error names the file, strict mode publishes nothing, `skip-bad` records.
// Tests may unwrap and print: a failure is the point, and the output is the measurement.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use padim_core::NoProgress;
use padim_core::config::{BackboneKind, Job, Preprocess};
use padim_extract::preprocess::decode_rgb8;
use padim_extract::{ExtractError, ExtractOptions, ImageError, run_extract};
use padim_store::{ImageStatus, Store, read_image_table};
use std::path::{Path, PathBuf};

fn fixtures(dir: &Path) -> PathBuf {
    let out = dir.join("fixtures");
    common::run_script("make_fixtures.py", &[out.to_str().unwrap()]);
    out
}

#[test]
fn decodes_every_kind_like_pil() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = fixtures(dir.path());
    let settings = Preprocess::default();
    for name in ["rgb.png", "gray.png", "rgba.png", "gray16.png", "rgb16.png", "rgb.jpg", "gray.jpg", "cmyk.jpg"] {
        let path = fixtures.join(name);
        let ours = decode_rgb8(&path, &std::fs::read(&path).unwrap(), &settings).unwrap();
        let reference_path = fixtures.join(format!("{name}.rgb.png"));
        let reference = image::open(&reference_path).unwrap().to_rgb8();
        assert_eq!(ours.dimensions(), (300, 200), "{name}");
        let diffs: Vec<i32> =
            ours.as_raw().iter().zip(reference.as_raw()).map(|(a, b)| (*a as i32 - *b as i32).abs()).collect();
        let max = *diffs.iter().max().unwrap();
        let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
        eprintln!("{name}: max |diff| {max} levels, mean {mean:.3}");
        if name.ends_with(".png") {
            // Lossless: the same pixels (16-bit samples scale to 8 bits with rounding, PIL truncates).
            assert!(max <= 1, "{name}: max difference {max}");
        } else {
            // JPEG decoders differ in IDCT and chroma upsampling by a few levels.
            assert!(max <= 8 && mean < 1.0, "{name}: max {max}, mean {mean}");
        }
    }
}

/// A 30000x30000 8-bit gray PNG of zeros: a few MB on disk, 900 MB (2.7 GB as RGB) decoded.
fn write_bomb(path: &Path) {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut encoder = png::Encoder::new(file, 30_000, 30_000);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::High);
    let mut writer = encoder.write_header().unwrap().into_stream_writer().unwrap();
    let row = vec![0u8; 30_000];
    for _ in 0..30_000 {
        std::io::Write::write_all(&mut writer, &row).unwrap();
    }
    writer.finish().unwrap();
}

#[test]
fn decompression_bomb_is_refused_by_the_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.png");
    write_bomb(&path);
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() < 8 << 20, "the bomb is small on disk: {}", bytes.len());
    let error = decode_rgb8(&path, &bytes, &Preprocess::default()).unwrap_err();
    assert!(matches!(error, ImageError::TooLarge { width: 30_000, height: 30_000, .. }), "{error}");
    assert!(error.to_string().contains("bomb.png") && error.to_string().contains("max-pixels"), "{error}");
}

/// A dataset folder with good images and one file of each bad kind, and a job over it.
fn bad_dataset(dir: &Path) -> (Job, Vec<(&'static str, &'static str)>) {
    let fixtures = fixtures(dir);
    let good = dir.join("data/good");
    std::fs::create_dir_all(&good).unwrap();
    std::fs::copy(fixtures.join("rgb.jpg"), good.join("a.jpg")).unwrap();
    std::fs::copy(fixtures.join("gray.png"), good.join("b.png")).unwrap();
    let jpeg = std::fs::read(fixtures.join("rgb.jpg")).unwrap();
    std::fs::write(good.join("empty.jpg"), b"").unwrap();
    std::fs::write(good.join("truncated.jpg"), &jpeg[..jpeg.len() / 3]).unwrap();
    std::fs::write(good.join("notes.jpg"), b"this is not an image, just text\n").unwrap();
    image::GrayImage::new(8, 8).save(good.join("tiny.png")).unwrap();
    write_bomb(&good.join("bomb.png"));
    let expected = vec![
        ("empty.jpg", "empty"),
        ("truncated.jpg", "corrupt"),
        ("notes.jpg", "not-an-image"),
        ("tiny.png", "too-small"),
        ("bomb.png", "too-large"),
    ];
    let weights = common::root().join("weights/efficientnet-lite0.safetensors");
    let text = format!(
        r#"
[run]
name = "bad"
output = "out"
[dataset]
root = ["data"]
normal = ["good"]
[backbone]
name = "efficientnet-lite0"
weights = "{}"
[extract]
batch-size = 2
threads = 2
"#,
        weights.display()
    );
    let job_path = dir.join("job.toml");
    std::fs::write(&job_path, text).unwrap();
    assert_eq!(Job::load(&job_path).unwrap().backbone.kind, BackboneKind::EfficientnetLite0);
    (Job::load(&job_path).unwrap(), expected)
}

#[test]
fn bad_images_stop_the_stage_naming_every_file_and_publish_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (job, expected) = bad_dataset(dir.path());
    let error = run_extract(&job, &ExtractOptions::default(), &NoProgress).unwrap_err();
    let message = error.to_string();
    let ExtractError::BadImages { count, errors, .. } = &error else { panic!("unexpected error: {message}") };
    assert_eq!(*count, expected.len(), "{message}");
    for (name, reason) in &expected {
        assert!(message.contains(name), "{name} not named in: {message}");
        assert!(
            errors.iter().any(|e| e.reason() == *reason && e.to_string().contains(name)),
            "{name}: {reason}: {message}"
        );
    }
    assert!(message.contains("--skip-bad"), "{message}");
    // Nothing of the extract stage looks like output (the split it made first is done and whole),
    // and its claim on the shard is withdrawn.
    let store = Store::open(&job.output).unwrap();
    assert_eq!(store.list("extract").unwrap(), Vec::<String>::new());
    assert!(store.exists("split/done.json").unwrap());
}

#[test]
fn skip_bad_records_every_skipped_file() {
    let dir = tempfile::tempdir().unwrap();
    let (mut job, expected) = bad_dataset(dir.path());
    job.extract.skip_bad = true;
    let summary = run_extract(&job, &ExtractOptions::default(), &NoProgress).unwrap();
    assert_eq!((summary.images, summary.skipped), (2, expected.len()));
    let store = Store::open(&job.output).unwrap();
    let rows = read_image_table(&store, &summary.images_key).unwrap();
    assert_eq!(rows.len(), 7);
    for (name, reason) in &expected {
        let row = rows.iter().find(|r| r.path.ends_with(name)).unwrap();
        assert_eq!(row.status, ImageStatus::Skipped);
        assert!(row.error.as_deref().unwrap().starts_with(reason), "{:?}", row.error);
    }
    let ok: Vec<_> = rows.iter().filter(|r| r.status == ImageStatus::Ok).collect();
    assert_eq!(ok.len(), 2);
    assert!(ok.iter().all(|r| r.sha256.len() == 64 && r.width == 300 && r.height == 200));
}
