//! CNN backbones on libtorch, written out so that PaDiM can tap intermediate stages.
//!
//! Variable names mirror the PyTorch `state_dict` of torchvision's ResNets and of the
//! `efficientnet-lite-pytorch` package, so that a safetensors export loads by name. At load time each
//! convolution is fused with the batch normalisation that follows it (inference only: `y = W'x + b'`
//! with `W' = W * gamma / sqrt(var + eps)` and `b' = beta - mean * gamma / sqrt(var + eps)`), which
//! removes a full pass over every activation map. The fused output equals the BatchNorm output, so
//! the "last BN" tap point of MATLAB's example is still available.

use crate::weights::{Weights, WeightsError};
use padim_core::config::{BackboneKind, Tap};
use std::path::Path;
use tch::{Device, Tensor};

/// The three feature maps PaDiM uses, at strides 4, 8 and 16 of the input.
pub struct FeatureMaps(pub [Tensor; 3]);

/// A loaded backbone ready for inference.
pub struct Backbone {
    kind: BackboneKind,
    tap: Tap,
    device: Device,
    channels_last: bool,
    network: Network,
}

enum Network {
    ResNet(ResNet),
    EfficientNetLite(EfficientNetLite),
}

impl Backbone {
    /// Loads `kind` from a safetensors file onto `device`. Fails naming every missing, unexpected or
    /// misshapen tensor.
    pub fn load(kind: BackboneKind, weights: &Path, tap: Tap, device: Device) -> Result<Backbone, WeightsError> {
        // Channels-last (NHWC) kernels are faster for these networks on CPU (oneDNN); on CUDA cuDNN
        // picks its own layout.
        let channels_last = device == Device::Cpu;
        let mut file = Weights::load(weights, device)?;
        let network = match kind {
            BackboneKind::Resnet18 => Network::ResNet(ResNet::new(&mut file, ResNetSpec::RESNET18, channels_last)),
            BackboneKind::WideResnet50_2 => {
                Network::ResNet(ResNet::new(&mut file, ResNetSpec::WIDE_RESNET50_2, channels_last))
            }
            BackboneKind::EfficientnetLite0 => {
                Network::EfficientNetLite(EfficientNetLite::new(&mut file, LiteScaling::LITE0, channels_last))
            }
            BackboneKind::EfficientnetLite1 => {
                Network::EfficientNetLite(EfficientNetLite::new(&mut file, LiteScaling::LITE1, channels_last))
            }
            BackboneKind::EfficientnetLite2 => {
                Network::EfficientNetLite(EfficientNetLite::new(&mut file, LiteScaling::LITE2, channels_last))
            }
        };
        file.finish(kind.name())?;
        Ok(Backbone { kind, tap, device, channels_last, network })
    }

    pub fn kind(&self) -> BackboneKind {
        self.kind
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Channels of the three feature maps.
    pub fn channels(&self) -> [i64; 3] {
        feature_channels(self.kind)
    }

    /// The input normalisation the weights were trained with: per-channel mean and standard deviation
    /// of RGB values in [0, 1].
    pub fn normalization(&self) -> ([f32; 3], [f32; 3]) {
        normalization(self.kind)
    }

    fn prepare_input(&self, input: &Tensor) -> Tensor {
        let input = input.to_device(self.device);
        if self.channels_last { to_channels_last(&input) } else { input }
    }

    /// The three tapped feature maps for a normalised NCHW batch.
    pub fn features(&self, input: &Tensor) -> FeatureMaps {
        tch::no_grad(|| {
            let input = self.prepare_input(input);
            let (taps, _) = match &self.network {
                Network::ResNet(net) => net.forward(&input, self.tap, false),
                Network::EfficientNetLite(net) => net.forward(&input, self.tap, false),
            };
            FeatureMaps(taps)
        })
    }

    /// ImageNet class logits (the whole network), to check that pretrained weights and input
    /// normalisation are right.
    pub fn logits(&self, input: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let input = self.prepare_input(input);
            match &self.network {
                Network::ResNet(net) => net.forward(&input, self.tap, true).1,
                Network::EfficientNetLite(net) => net.forward(&input, self.tap, true).1,
            }
            .unwrap_or_else(|| Tensor::zeros([0], (tch::Kind::Float, self.device)))
        })
    }

    /// The PaDiM embedding: the stride-8 and stride-16 maps upsampled (nearest neighbour) onto the
    /// stride-4 grid and concatenated along channels. Returns a contiguous NCHW f32 tensor on the CPU.
    pub fn embed(&self, input: &Tensor) -> Tensor {
        self.embed_as(input, None, tch::Kind::Float)
    }

    /// [`embed`](Self::embed), keeping only `channels` (sorted indices into the embedding's
    /// channels) and cast to `kind`. The embedding is assembled in one pass into its NCHW result:
    /// each map's kept channels are selected (and the coarser maps cast) at the map's resolution, then
    /// copied onto the grid through a broadcast view, which is nearest-neighbour upsampling when the
    /// grid is an exact multiple of the map (a power of two, as at strides 4/8/16 of a crop divisible
    /// by 16; libtorch's own upsampling otherwise). Equal, value for value, to upsample, concatenate,
    /// select and cast, at a fraction of the memory traffic.
    pub fn embed_as(&self, input: &Tensor, channels: Option<&[usize]>, kind: tch::Kind) -> Tensor {
        let FeatureMaps(maps) = self.features(input);
        tch::no_grad(|| {
            let size = maps[0].size();
            let (n, grid_h, grid_w) = (size[0], size[2], size[3]);
            let mut first_channel = 0usize;
            let mut kept: Vec<(Tensor, i64)> = Vec::with_capacity(3);
            for map in maps {
                let count = map.size()[1] as usize;
                let range = first_channel..first_channel + count;
                first_channel += count;
                let map = match channels {
                    None => map,
                    Some(channels) => {
                        let local: Vec<i64> =
                            channels.iter().filter(|c| range.contains(c)).map(|&c| (c - range.start) as i64).collect();
                        if local.len() == count {
                            map
                        } else if local.is_empty() {
                            continue;
                        } else {
                            map.index_select(1, &Tensor::from_slice(&local).to_device(map.device()))
                        }
                    }
                };
                let width = map.size()[1];
                kept.push((map, width));
            }
            let total: i64 = kept.iter().map(|(_, width)| width).sum();
            let out = Tensor::empty([n, total, grid_h, grid_w], (kind, maps_device(&kept, self.device)));
            let mut offset = 0;
            for (map, width) in kept {
                let mut target = out.narrow(1, offset, width);
                offset += width;
                let [h, w] = [map.size()[2], map.size()[3]];
                let (fh, fw) = (grid_h / h, grid_w / w);
                let exact = grid_h == fh * h
                    && grid_w == fw * w
                    && (fh as u64).is_power_of_two()
                    && (fw as u64).is_power_of_two();
                if fh == 1 && fw == 1 && exact {
                    target.copy_(&map);
                } else if exact {
                    let map = map.to_kind(kind).contiguous();
                    let source = map.view([n, width, h, 1, w, 1]).expand([n, width, h, fh, w, fw], false);
                    target.view([n, width, h, fh, w, fw]).copy_(&source);
                } else {
                    target.copy_(&map.upsample_nearest2d([grid_h, grid_w], None, None));
                }
            }
            out.to_device(Device::Cpu)
        })
    }
}

/// The device of the maps being assembled (the backbone's when none are kept).
fn maps_device(kept: &[(Tensor, i64)], fallback: Device) -> Device {
    kept.first().map_or(fallback, |(map, _)| map.device())
}

/// Channels of the three feature maps of each backbone.
pub fn feature_channels(kind: BackboneKind) -> [i64; 3] {
    match kind {
        BackboneKind::Resnet18 => [64, 128, 256],
        BackboneKind::WideResnet50_2 => [256, 512, 1024],
        BackboneKind::EfficientnetLite0 | BackboneKind::EfficientnetLite1 => [24, 40, 112],
        BackboneKind::EfficientnetLite2 => [24, 48, 120],
    }
}

/// Names of the three tapped stages, as recorded in outputs.
pub fn feature_layers(kind: BackboneKind, tap: Tap) -> [String; 3] {
    let names: [&str; 3] = match kind {
        BackboneKind::Resnet18 | BackboneKind::WideResnet50_2 => ["layer1", "layer2", "layer3"],
        BackboneKind::EfficientnetLite0 => ["_blocks.2", "_blocks.4", "_blocks.10"],
        BackboneKind::EfficientnetLite1 | BackboneKind::EfficientnetLite2 => ["_blocks.3", "_blocks.6", "_blocks.14"],
    };
    let suffix = match (kind, tap) {
        (_, Tap::BlockOutput) => "",
        (BackboneKind::Resnet18, Tap::LastBn) => ".-1.bn2",
        (BackboneKind::WideResnet50_2, Tap::LastBn) => ".-1.bn3",
        (
            BackboneKind::EfficientnetLite0 | BackboneKind::EfficientnetLite1 | BackboneKind::EfficientnetLite2,
            Tap::LastBn,
        ) => "._bn2",
    };
    names.map(|n| format!("{n}{suffix}"))
}

/// Input normalisation of each set of weights.
pub fn normalization(kind: BackboneKind) -> ([f32; 3], [f32; 3]) {
    match kind {
        // torchvision's ImageNet statistics.
        BackboneKind::Resnet18 | BackboneKind::WideResnet50_2 => ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        // The EfficientNet-Lite TensorFlow builder feeds (pixel - 127) / 128 for 8-bit pixels.
        BackboneKind::EfficientnetLite0 | BackboneKind::EfficientnetLite1 | BackboneKind::EfficientnetLite2 => {
            ([127.0 / 255.0; 3], [128.0 / 255.0; 3])
        }
    }
}

fn to_channels_last(tensor: &Tensor) -> Tensor {
    tensor.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// How a convolution pads its input.
#[derive(Clone, Copy)]
enum Padding {
    /// The same number of zeros on every side (PyTorch's `padding=p`).
    Symmetric(i64),
    /// TensorFlow's "SAME": output size `ceil(input / stride)`, any odd padding on the bottom/right.
    TfSame,
}

/// A convolution with its following BatchNorm folded in.
struct ConvBn {
    weight: Tensor,
    bias: Tensor,
    kernel: i64,
    stride: i64,
    groups: i64,
    padding: Padding,
}

struct ConvSpec<'a> {
    conv: &'a str,
    bn: &'a str,
    in_channels: i64,
    out_channels: i64,
    kernel: i64,
    stride: i64,
    groups: i64,
    padding: Padding,
    eps: f64,
}

impl ConvBn {
    fn new(file: &mut Weights, spec: ConvSpec<'_>, channels_last: bool) -> ConvBn {
        let ConvSpec { conv, bn, in_channels, out_channels, kernel, stride, groups, padding, eps } = spec;
        let weight = file.take(&format!("{conv}.weight"), &[out_channels, in_channels / groups, kernel, kernel]);
        let gamma = file.take(&format!("{bn}.weight"), &[out_channels]);
        let beta = file.take(&format!("{bn}.bias"), &[out_channels]);
        let mean = file.take(&format!("{bn}.running_mean"), &[out_channels]);
        let var = file.take(&format!("{bn}.running_var"), &[out_channels]);
        tch::no_grad(|| {
            // Fold in f64 so that the fused weights are as exact as f32 allows.
            let scale = gamma.to_kind(tch::Kind::Double) / (var.to_kind(tch::Kind::Double) + eps).sqrt();
            let weight = (weight.to_kind(tch::Kind::Double) * scale.view([-1, 1, 1, 1])).to_kind(tch::Kind::Float);
            let bias =
                (beta.to_kind(tch::Kind::Double) - mean.to_kind(tch::Kind::Double) * &scale).to_kind(tch::Kind::Float);
            let weight = if channels_last { to_channels_last(&weight) } else { weight.contiguous() };
            ConvBn { weight, bias, kernel, stride, groups, padding }
        })
    }

    fn forward(&self, input: &Tensor) -> Tensor {
        match self.padding {
            Padding::Symmetric(p) => input.conv2d(&self.weight, Some(&self.bias), [self.stride], [p], [1], self.groups),
            Padding::TfSame => {
                let size = input.size();
                let (top, bottom) = tf_same(size[2], self.kernel, self.stride);
                let (left, right) = tf_same(size[3], self.kernel, self.stride);
                if top == bottom && left == right {
                    input.conv2d(&self.weight, Some(&self.bias), [self.stride], [top, left], [1], self.groups)
                } else {
                    input.constant_pad_nd([left, right, top, bottom]).conv2d(
                        &self.weight,
                        Some(&self.bias),
                        [self.stride],
                        [0],
                        [1],
                        self.groups,
                    )
                }
            }
        }
    }
}

/// TensorFlow "SAME" padding (before, after) of one dimension.
fn tf_same(size: i64, kernel: i64, stride: i64) -> (i64, i64) {
    let out = (size + stride - 1) / stride;
    let pad = ((out - 1) * stride + kernel - size).max(0);
    (pad / 2, pad - pad / 2)
}

struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn new(file: &mut Weights, name: &str, in_features: i64, out_features: i64) -> Linear {
        Linear {
            weight: file.take(&format!("{name}.weight"), &[out_features, in_features]),
            bias: file.take(&format!("{name}.bias"), &[out_features]),
        }
    }

    fn forward(&self, input: &Tensor) -> Tensor {
        input.linear(&self.weight, Some(&self.bias))
    }
}

// ----------------------------------------------------------------------------------------------
// ResNet (He et al. 2016), torchvision's layout: BasicBlock for ResNet-18, Bottleneck (stride on the
// 3x3 convolution, "v1.5") for Wide-ResNet-50-2 (Zagoruyko & Komodakis 2016).

#[derive(Clone, Copy)]
struct ResNetSpec {
    bottleneck: bool,
    blocks: [usize; 4],
    /// Width of the 3x3 convolutions relative to torchvision's `planes` (2 for the wide variant).
    width_factor: i64,
}

impl ResNetSpec {
    const RESNET18: ResNetSpec = ResNetSpec { bottleneck: false, blocks: [2, 2, 2, 2], width_factor: 1 };
    const WIDE_RESNET50_2: ResNetSpec = ResNetSpec { bottleneck: true, blocks: [3, 4, 6, 3], width_factor: 2 };
}

struct ResBlock {
    convs: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl ResBlock {
    /// Returns (block output, output of the last BatchNorm before the residual add).
    fn forward(&self, input: &Tensor, want_last_bn: bool) -> (Tensor, Option<Tensor>) {
        let mut x = input.shallow_clone();
        let last = self.convs.len() - 1;
        for (i, conv) in self.convs.iter().enumerate() {
            x = conv.forward(&x);
            if i < last {
                x = x.relu_();
            }
        }
        let last_bn = want_last_bn.then(|| x.copy());
        let identity = match &self.downsample {
            Some(down) => down.forward(input),
            None => input.shallow_clone(),
        };
        ((x + identity).relu_(), last_bn)
    }
}

struct ResNet {
    stem: ConvBn,
    layers: Vec<Vec<ResBlock>>,
    fc: Linear,
}

impl ResNet {
    fn new(file: &mut Weights, spec: ResNetSpec, channels_last: bool) -> ResNet {
        let eps = 1e-5;
        let stem = ConvBn::new(
            file,
            ConvSpec {
                conv: "conv1",
                bn: "bn1",
                in_channels: 3,
                out_channels: 64,
                kernel: 7,
                stride: 2,
                groups: 1,
                padding: Padding::Symmetric(3),
                eps,
            },
            channels_last,
        );
        let expansion = if spec.bottleneck { 4 } else { 1 };
        let mut in_channels = 64;
        let mut layers = Vec::new();
        for (stage, &n_blocks) in spec.blocks.iter().enumerate() {
            let planes = 64 << stage;
            let mut blocks = Vec::new();
            for index in 0..n_blocks {
                let stride = if stage > 0 && index == 0 { 2 } else { 1 };
                let prefix = format!("layer{}.{index}", stage + 1);
                let out_channels = planes * expansion;
                let mut conv = |name: &str, bn: &str, cin: i64, cout: i64, kernel: i64, stride: i64| {
                    ConvBn::new(
                        file,
                        ConvSpec {
                            conv: &format!("{prefix}.{name}"),
                            bn: &format!("{prefix}.{bn}"),
                            in_channels: cin,
                            out_channels: cout,
                            kernel,
                            stride,
                            groups: 1,
                            padding: Padding::Symmetric(kernel / 2),
                            eps,
                        },
                        channels_last,
                    )
                };
                let convs = if spec.bottleneck {
                    let width = planes * spec.width_factor;
                    vec![
                        conv("conv1", "bn1", in_channels, width, 1, 1),
                        conv("conv2", "bn2", width, width, 3, stride),
                        conv("conv3", "bn3", width, out_channels, 1, 1),
                    ]
                } else {
                    vec![
                        conv("conv1", "bn1", in_channels, planes, 3, stride),
                        conv("conv2", "bn2", planes, planes, 3, 1),
                    ]
                };
                let downsample = (stride != 1 || in_channels != out_channels)
                    .then(|| conv("downsample.0", "downsample.1", in_channels, out_channels, 1, stride));
                blocks.push(ResBlock { convs, downsample });
                in_channels = out_channels;
            }
            layers.push(blocks);
        }
        let fc = Linear::new(file, "fc", in_channels, 1000);
        ResNet { stem, layers, fc }
    }

    /// Taps layer1..layer3; with `classify`, runs on through layer4 and the classifier.
    fn forward(&self, input: &Tensor, tap: Tap, classify: bool) -> ([Tensor; 3], Option<Tensor>) {
        let mut x = self.stem.forward(input).relu_().max_pool2d([3], [2], [1], [1], false);
        let mut taps = Vec::with_capacity(3);
        let n_stages = if classify { 4 } else { 3 };
        for (stage, blocks) in self.layers.iter().take(n_stages).enumerate() {
            for (index, block) in blocks.iter().enumerate() {
                let is_tap = stage < 3 && index + 1 == blocks.len();
                let (out, last_bn) = block.forward(&x, is_tap && tap == Tap::LastBn);
                x = out;
                if is_tap {
                    taps.push(last_bn.unwrap_or_else(|| x.shallow_clone()));
                }
            }
        }
        let logits = classify.then(|| self.fc.forward(&x.adaptive_avg_pool2d([1, 1]).flatten(1, -1)));
        (into_three(taps), logits)
    }
}

fn into_three(taps: Vec<Tensor>) -> [Tensor; 3] {
    let mut taps = taps.into_iter();
    let mut next = || taps.next().unwrap_or_else(|| Tensor::zeros([0], tch::kind::FLOAT_CPU));
    [next(), next(), next()]
}

// ----------------------------------------------------------------------------------------------
// EfficientNet-Lite (Tan & Le 2019; the Lite variants drop squeeze-excitation, use ReLU6 and keep the
// stem and head fixed), as laid out by the `efficientnet-lite-pytorch` package: MBConv blocks with
// TensorFlow "SAME" padding and BatchNorm epsilon 1e-3. Lite1 and Lite2 scale Lite0's stage widths
// and repeats (compound scaling); the stem, the head and the repeats of the first and last stages
// stay fixed.

/// Compound scaling of Lite0: a width (channel) and a depth (repeat) multiplier.
#[derive(Debug, Clone, Copy)]
struct LiteScaling {
    width: f64,
    depth: f64,
}

impl LiteScaling {
    const LITE0: LiteScaling = LiteScaling { width: 1.0, depth: 1.0 };
    const LITE1: LiteScaling = LiteScaling { width: 1.0, depth: 1.1 };
    const LITE2: LiteScaling = LiteScaling { width: 1.1, depth: 1.2 };

    /// Channels scaled by the width, rounded to a multiple of 8 (never more than 10% down), as
    /// the TensorFlow builder's `round_filters`.
    fn filters(self, channels: i64) -> i64 {
        let scaled = channels as f64 * self.width;
        let mut rounded = ((scaled + 4.0) as i64 / 8 * 8).max(8);
        if (rounded as f64) < 0.9 * scaled {
            rounded += 8;
        }
        rounded
    }

    /// Repeats scaled by the depth, rounded up (`round_repeats`).
    fn repeats(self, repeats: usize) -> usize {
        (self.depth * repeats as f64).ceil() as usize
    }
}

struct MbConv {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    project: ConvBn,
    skip: bool,
}

impl MbConv {
    fn forward(&self, input: &Tensor, want_last_bn: bool) -> (Tensor, Option<Tensor>) {
        let mut x = match &self.expand {
            Some(expand) => expand.forward(input).clamp_(0.0, 6.0),
            None => input.shallow_clone(),
        };
        x = self.depthwise.forward(&x).clamp_(0.0, 6.0);
        x = self.project.forward(&x);
        if self.skip {
            let last_bn = want_last_bn.then(|| x.copy());
            (x + input, last_bn)
        } else {
            let last_bn = want_last_bn.then(|| x.shallow_clone());
            (x, last_bn)
        }
    }
}

struct EfficientNetLite {
    stem: ConvBn,
    blocks: Vec<MbConv>,
    taps: [usize; 3],
    head: ConvBn,
    fc: Linear,
}

impl EfficientNetLite {
    fn new(file: &mut Weights, scaling: LiteScaling, channels_last: bool) -> EfficientNetLite {
        let eps = 1e-3;
        // (repeats, kernel, stride, expand ratio, output channels) of the seven stages of Lite0.
        let lite0_stages: [(usize, i64, i64, i64, i64); 7] = [
            (1, 3, 1, 1, 16),
            (2, 3, 2, 6, 24),
            (2, 5, 2, 6, 40),
            (3, 3, 2, 6, 80),
            (3, 5, 1, 6, 112),
            (4, 5, 2, 6, 192),
            (1, 3, 1, 6, 320),
        ];
        let last = lite0_stages.len() - 1;
        let stages = lite0_stages.iter().enumerate().map(|(i, &(repeats, kernel, stride, expand, out))| {
            let repeats = if i == 0 || i == last { repeats } else { scaling.repeats(repeats) };
            (repeats, kernel, stride, expand, scaling.filters(out))
        });
        let stem_spec = ConvSpec {
            conv: "_conv_stem",
            bn: "_bn0",
            in_channels: 3,
            out_channels: 32,
            kernel: 3,
            stride: 2,
            groups: 1,
            padding: Padding::TfSame,
            eps,
        };
        let stem = ConvBn::new(file, stem_spec, channels_last);
        let mut in_channels = 32;
        let mut blocks = Vec::new();
        // The last block of the stride-4, -8 and -16 stages (the second, third and fifth).
        let mut taps = [0; 3];
        for (stage, (repeats, kernel, first_stride, expand_ratio, out_channels)) in stages.enumerate() {
            for repeat in 0..repeats {
                let stride = if repeat == 0 { first_stride } else { 1 };
                let index = blocks.len();
                let hidden = in_channels * expand_ratio;
                let mut conv = |name: &str, bn: &str, cin: i64, cout: i64, kernel: i64, stride: i64, groups: i64| {
                    ConvBn::new(
                        file,
                        ConvSpec {
                            conv: &format!("_blocks.{index}.{name}"),
                            bn: &format!("_blocks.{index}.{bn}"),
                            in_channels: cin,
                            out_channels: cout,
                            kernel,
                            stride,
                            groups,
                            padding: Padding::TfSame,
                            eps,
                        },
                        channels_last,
                    )
                };
                let expand = (expand_ratio != 1).then(|| conv("_expand_conv", "_bn0", in_channels, hidden, 1, 1, 1));
                let depthwise = conv("_depthwise_conv", "_bn1", hidden, hidden, kernel, stride, hidden);
                let project = conv("_project_conv", "_bn2", hidden, out_channels, 1, 1, 1);
                let skip = stride == 1 && in_channels == out_channels;
                blocks.push(MbConv { expand, depthwise, project, skip });
                in_channels = out_channels;
            }
            match stage {
                1 => taps[0] = blocks.len() - 1,
                2 => taps[1] = blocks.len() - 1,
                4 => taps[2] = blocks.len() - 1,
                _ => {}
            }
        }
        let head_spec = ConvSpec {
            conv: "_conv_head",
            bn: "_bn1",
            in_channels,
            out_channels: 1280,
            kernel: 1,
            stride: 1,
            groups: 1,
            padding: Padding::TfSame,
            eps,
        };
        let head = ConvBn::new(file, head_spec, channels_last);
        let fc = Linear::new(file, "_fc", 1280, 1000);
        EfficientNetLite { stem, blocks, taps, head, fc }
    }

    fn forward(&self, input: &Tensor, tap: Tap, classify: bool) -> ([Tensor; 3], Option<Tensor>) {
        let mut x = self.stem.forward(input).clamp_(0.0, 6.0);
        let mut taps = Vec::with_capacity(3);
        let n_blocks = if classify { self.blocks.len() } else { self.taps[2] + 1 };
        for (index, block) in self.blocks.iter().take(n_blocks).enumerate() {
            let is_tap = self.taps.contains(&index);
            let (out, last_bn) = block.forward(&x, is_tap && tap == Tap::LastBn);
            x = out;
            if is_tap {
                taps.push(last_bn.unwrap_or_else(|| x.shallow_clone()));
            }
        }
        let logits = classify.then(|| {
            let x = self.head.forward(&x).clamp_(0.0, 6.0);
            self.fc.forward(&x.adaptive_avg_pool2d([1, 1]).flatten(1, -1))
        });
        (into_three(taps), logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf_same_padding_matches_tensorflow() {
        // 224 input, 3x3 stride 2: output 112, one extra row/column at the bottom/right.
        assert_eq!(tf_same(224, 3, 2), (0, 1));
        assert_eq!(tf_same(56, 5, 2), (1, 2));
        assert_eq!(tf_same(28, 5, 1), (2, 2));
        assert_eq!(tf_same(112, 1, 1), (0, 0));
    }

    #[test]
    fn lite_scaling_matches_the_tensorflow_builder() {
        // round_filters / round_repeats of efficientnet_lite_builder.py for Lite0-2.
        let widths = |s: LiteScaling| [16, 24, 40, 80, 112, 192, 320].map(|c| s.filters(c));
        assert_eq!(widths(LiteScaling::LITE0), [16, 24, 40, 80, 112, 192, 320]);
        assert_eq!(widths(LiteScaling::LITE1), [16, 24, 40, 80, 112, 192, 320]);
        assert_eq!(widths(LiteScaling::LITE2), [16, 24, 48, 88, 120, 208, 352]);
        assert_eq!([2, 3, 4].map(|r| LiteScaling::LITE1.repeats(r)), [3, 4, 5]);
        assert_eq!([2, 3, 4].map(|r| LiteScaling::LITE2.repeats(r)), [3, 4, 5]);
    }
}
