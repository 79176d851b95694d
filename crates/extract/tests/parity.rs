//! The Rust backbones against PyTorch on the same input tensor, with seeded random weights (and
//! randomised BatchNorm statistics) exported at test time by scripts/export_weights.py.
// Tests may unwrap and print: a failure is the point, and the output is the measurement.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use padim_core::config::{BackboneKind, Tap};
use padim_extract::Backbone;

fn check(kind: BackboneKind, tap: Tap, seed: u64) {
    check_at(kind, tap, seed, 224);
}

/// The backbone against PyTorch on a `size` x `size` input.
fn check_at(kind: BackboneKind, tap: Tap, seed: u64, size: i64) {
    tch::set_num_threads(2);
    let dir = tempfile::tempdir().unwrap();
    let weights = common::random_weights(dir.path(), kind.name(), seed);
    let reference = dir.path().join("reference.safetensors");
    let tap_name = if tap == Tap::LastBn { "last-bn" } else { "block-output" };
    common::run_script(
        "reference.py",
        &[
            "features",
            "--backbone",
            kind.name(),
            "--weights",
            weights.to_str().unwrap(),
            "--tap",
            tap_name,
            "--seed",
            &seed.to_string(),
            "--height",
            &size.to_string(),
            "--width",
            &size.to_string(),
            "--out",
            reference.to_str().unwrap(),
        ],
    );
    let expected = common::read_tensors(&reference);
    let net = Backbone::load(kind, &weights, tap, tch::Device::Cpu).unwrap();
    let input = &expected["input"];
    let padim_extract::backbone::FeatureMaps(maps) = net.features(input);
    for (map, name) in maps.iter().zip(["f1", "f2", "f3"]) {
        let diff = common::max_abs_diff(map, &expected[name]);
        let scale = common::max_abs(&expected[name]);
        eprintln!("{} {tap_name} {name}: max |diff| {diff:.2e} (max |value| {scale:.2})", kind.name());
        assert!(diff <= 1e-4, "{} {tap_name} {name}: max abs difference {diff} > 1e-4", kind.name());
    }
    let embedding = net.embed(input);
    assert!(common::max_abs_diff(&embedding, &expected["embedding"]) <= 1e-4);
    assembled_embedding_equals_upsample_and_concatenate(&net, input);
    if tap == Tap::BlockOutput {
        let logits = net.logits(input);
        let diff = common::max_abs_diff(&logits, &expected["logits"]);
        assert!(diff <= 1e-4, "{} logits: {diff}", kind.name());
    }
}

/// `embed_as` assembles the embedding in one pass (select and cast per map, nearest-neighbour
/// upsampling as a broadcast copy): it must equal, value for value, libtorch's upsampling,
/// concatenation, selection and cast, on the recipe's grid and on one (232 pixels: maps of 58, 29
/// and 15) where the coarsest map does not divide the grid.
fn assembled_embedding_equals_upsample_and_concatenate(net: &Backbone, input: &tch::Tensor) {
    let odd = tch::Tensor::randn([2, 3, 232, 232], tch::kind::FLOAT_CPU);
    for input in [input.shallow_clone(), odd] {
        let padim_extract::backbone::FeatureMaps([first, second, third]) = net.features(&input);
        let grid = [first.size()[2], first.size()[3]];
        let full = tch::Tensor::cat(
            &[first, second.upsample_nearest2d(grid, None, None), third.upsample_nearest2d(grid, None, None)],
            1,
        );
        assert!(net.embed(&input).equal(&full), "{:?}: embed differs on grid {grid:?}", net.kind());
        let n_channels = full.size()[1] as usize;
        let channels: Vec<usize> = (0..n_channels).step_by(7).chain([n_channels - 1]).collect();
        let index = tch::Tensor::from_slice(&channels.iter().map(|&c| c as i64).collect::<Vec<_>>());
        let expected = full.index_select(1, &index);
        for kind in [tch::Kind::Float, tch::Kind::Half] {
            let got = net.embed_as(&input, Some(&channels), kind);
            assert!(got.equal(&expected.to_kind(kind)), "{:?}: {kind:?} subset differs on grid {grid:?}", net.kind());
        }
    }
}

#[test]
fn resnet18_matches_pytorch() {
    check(BackboneKind::Resnet18, Tap::BlockOutput, 1);
}

#[test]
fn resnet18_last_bn_matches_pytorch() {
    check(BackboneKind::Resnet18, Tap::LastBn, 2);
}

#[test]
fn wide_resnet50_2_matches_pytorch() {
    check(BackboneKind::WideResnet50_2, Tap::BlockOutput, 3);
}

#[test]
fn efficientnet_lite0_matches_pytorch() {
    check(BackboneKind::EfficientnetLite0, Tap::BlockOutput, 4);
}

#[test]
fn efficientnet_lite0_last_bn_matches_pytorch() {
    check(BackboneKind::EfficientnetLite0, Tap::LastBn, 5);
}

/// Lite1 at its native input (240: maps of 60, 30 and 15).
#[test]
fn efficientnet_lite1_matches_pytorch() {
    check_at(BackboneKind::EfficientnetLite1, Tap::BlockOutput, 6, 240);
}

/// Lite2 at its native input (260: maps of 65, 33 and 17, upsampled by nearest neighbour), with
/// both taps. (The package pads its convolutions for the model's native size only; padim pads as
/// TensorFlow's SAME for any input, so the two agree at the native size.)
#[test]
fn efficientnet_lite2_matches_pytorch() {
    check_at(BackboneKind::EfficientnetLite2, Tap::BlockOutput, 7, 260);
    check_at(BackboneKind::EfficientnetLite2, Tap::LastBn, 8, 260);
}

#[test]
fn wrong_weights_name_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let weights = common::random_weights(dir.path(), "resnet18", 0);
    let error = Backbone::load(BackboneKind::EfficientnetLite0, &weights, Tap::BlockOutput, tch::Device::Cpu)
        .err()
        .expect("resnet weights must not load as efficientnet")
        .to_string();
    assert!(error.contains(weights.to_str().unwrap()), "{error}");
    assert!(error.contains("missing tensors") && error.contains("_conv_stem.weight"), "{error}");
    assert!(error.contains("unexpected tensors") && error.contains("layer1.0.conv1.weight"), "{error}");
    let missing = dir.path().join("none.safetensors");
    let error =
        Backbone::load(BackboneKind::Resnet18, &missing, Tap::BlockOutput, tch::Device::Cpu).err().unwrap().to_string();
    assert!(error.contains("none.safetensors") && error.contains("make weights"), "{error}");
}
