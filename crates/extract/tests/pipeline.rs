//! The whole pre-processing + embedding path on real images against a PyTorch pipeline built from
//! torchvision transforms (PIL decoding and resizing), and the pretrained EfficientNet-Lite0, -Lite1
//! and -Lite2 on real photographs.
// Tests may unwrap and print: a failure is the point, and the output is the measurement.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use padim_core::config::{BackboneKind, Preprocess, Tap};
use padim_extract::{Backbone, Preprocessor};
use std::path::PathBuf;

fn lite0_weights() -> PathBuf {
    let path = common::root().join("weights/efficientnet-lite0.safetensors");
    assert!(path.is_file(), "{} missing: run `make setup`", path.display());
    path
}

fn rust_inputs(preprocessor: &Preprocessor, paths: &[PathBuf]) -> tch::Tensor {
    let (h, w) = preprocessor.input_size();
    let mut pixels = Vec::new();
    for path in paths {
        pixels.extend(preprocessor.load(path).unwrap().0.pixels);
    }
    tch::Tensor::from_slice(&pixels).view([paths.len() as i64, 3, h as i64, w as i64])
}

#[test]
fn concrete_crack_embeddings_match_torchvision_pipeline() {
    let data = common::shared_data();
    tch::set_num_threads(2);
    let mut paths = Vec::new();
    for label in ["Negative", "Positive"] {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(data.join("concrete-crack").join(label)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        paths.extend(files.into_iter().take(4));
    }
    let weights = lite0_weights();
    let net = Backbone::load(BackboneKind::EfficientnetLite0, &weights, Tap::BlockOutput, tch::Device::Cpu).unwrap();
    let (mean, std) = net.normalization();
    let preprocessor = Preprocessor::new(Preprocess::default(), mean, std);
    let level = 1.0 / 255.0 / std[0] as f64;
    let dir = tempfile::tempdir().unwrap();

    // 1. Resizing and cropping alone: PIL decodes the JPEGs and writes lossless PNGs that both sides
    //    read exactly. fast_image_resize reproduces Pillow's bilinear filter up to 8-bit rounding.
    let png_dir = dir.path().join("png");
    std::fs::create_dir(&png_dir).unwrap();
    let mut args = vec!["png", "--out-dir", png_dir.to_str().unwrap()];
    args.extend(paths.iter().map(|p| p.to_str().unwrap()));
    common::run_script("reference.py", &args);
    let pngs: Vec<PathBuf> = paths.iter().map(|p| png_dir.join(p.with_extension("png").file_name().unwrap())).collect();
    let (png_input, png_expected) = run_both(&preprocessor, &weights, &pngs, dir.path());
    let resize_diff = common::max_abs_diff(&png_input, &png_expected["input"]);
    eprintln!("resize+crop on lossless input: max |diff| {:.2} levels", resize_diff / level);
    assert!(resize_diff <= 1.0 * level + 1e-6, "resize differs from Pillow's by {resize_diff} (> 1 level)");

    // 2. The network on the same tensor is exact up to f32 rounding of the fused BatchNorm: relative
    //    1e-5 of the largest feature (pretrained features reach tens, so 1e-4 absolute is below f32's
    //    resolution after 11 blocks).
    let scale = common::max_abs(&png_expected["embedding"]);
    let exact = common::max_abs_diff(&net.embed(&png_expected["input"]), &png_expected["embedding"]);
    eprintln!("embedding of the same tensor: max |diff| {exact:.2e} (max |value| {scale:.1})");
    assert!(exact <= 1e-5 * scale.max(1.0), "pretrained Lite0 on the same tensor differs by {exact}");

    // 3. The whole path from the JPEG files. JPEG decoders (zune-jpeg here, libjpeg-turbo in PIL)
    //    differ by a level or so in a few pixels. The pretrained network amplifies such noise:
    //    measured in PyTorch alone, +-1 level in 5% of the pixels moves the embedding by 5% of its
    //    mean magnitude on average. So the bound is 4 levels per pixel, 0.1 level on average, and the
    //    embedding within 10% of its mean magnitude on average.
    let (input, expected) = run_both(&preprocessor, &weights, &paths, dir.path());
    let pixel_diff = common::max_abs_diff(&input, &expected["input"]);
    let mean_pixel_diff = (&input - &expected["input"]).abs().mean(tch::Kind::Double).double_value(&[]);
    eprintln!("JPEG input: max |diff| {:.1} levels, mean {:.3} levels", pixel_diff / level, mean_pixel_diff / level);
    assert!(pixel_diff <= 4.0 * level, "pre-processing differs by {pixel_diff} (> 4 levels)");
    assert!(mean_pixel_diff <= 0.1 * level, "mean pre-processing difference {mean_pixel_diff}");
    let embedding = net.embed(&input);
    let mean_diff = (&embedding - &expected["embedding"]).abs().mean(tch::Kind::Double).double_value(&[]);
    let mean_value = expected["embedding"].abs().mean(tch::Kind::Double).double_value(&[]);
    eprintln!("JPEG embedding: mean |diff| {mean_diff:.3} = {:.1}% of mean |value|", 100.0 * mean_diff / mean_value);
    assert!(mean_diff <= 0.1 * mean_value, "mean embedding difference {mean_diff} vs mean value {mean_value}");
}

/// Rust's input tensor for `paths`, and PyTorch's input and embedding.
fn run_both(
    preprocessor: &Preprocessor,
    weights: &std::path::Path,
    paths: &[PathBuf],
    dir: &std::path::Path,
) -> (tch::Tensor, std::collections::HashMap<String, tch::Tensor>) {
    let out = dir.join("pipeline.safetensors");
    let mut args = vec![
        "pipeline",
        "--backbone",
        "efficientnet-lite0",
        "--weights",
        weights.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(paths.iter().map(|p| p.to_str().unwrap()));
    common::run_script("reference.py", &args);
    (rust_inputs(preprocessor, paths), common::read_tensors(&out))
}

/// Each pretrained EfficientNet-Lite at its native input size (the TensorFlow builder's evaluation
/// pre-processing: resize to the size + 32, centre crop) names the photographs' subjects in its top 5.
#[test]
fn pretrained_lites_recognise_real_photographs() {
    let photos = common::root().join(".cache/photos");
    assert!(
        photos.join("eagle.jpg").is_file(),
        "{} missing: run `make setup` (Debian's darknet package ships them)",
        photos.display()
    );
    tch::set_num_threads(2);
    // ImageNet-1k class ids. The photographs' subjects that ImageNet has a class for: a dog
    // (ids 151-268 are dog breeds), a bald eagle (22), a beach kite-flying scene (seashore 978 or
    // parachute 701), a person with a dog (a dog breed). ImageNet has no giraffe or generic horse.
    let dogs: Vec<i64> = (151..=268).collect();
    let cases: [(&str, Vec<i64>); 4] =
        [("dog.jpg", dogs.clone()), ("eagle.jpg", vec![22]), ("kite.jpg", vec![978, 701]), ("person.jpg", dogs)];
    for (kind, size) in [
        (BackboneKind::EfficientnetLite0, 224),
        (BackboneKind::EfficientnetLite1, 240),
        (BackboneKind::EfficientnetLite2, 260),
    ] {
        let weights = common::root().join(format!("weights/{}.safetensors", kind.name()));
        assert!(weights.is_file(), "{} missing: run `make setup`", weights.display());
        let net = Backbone::load(kind, &weights, Tap::BlockOutput, tch::Device::Cpu).unwrap();
        let (mean, std) = net.normalization();
        let preprocess = Preprocess { resize: [size + 32; 2], crop: [size; 2], ..Preprocess::default() };
        let preprocessor = Preprocessor::new(preprocess, mean, std);
        for (name, accepted) in &cases {
            let input = rust_inputs(&preprocessor, &[photos.join(name)]);
            let top5: Vec<i64> = Vec::try_from(net.logits(&input).topk(5, 1, true, true).1.flatten(0, -1)).unwrap();
            eprintln!("{} {name}: top-5 {top5:?}", kind.name());
            assert!(
                top5.iter().any(|c| accepted.contains(c)),
                "{} {name}: top-5 {top5:?} has none of {accepted:?}",
                kind.name()
            );
        }
    }
}
