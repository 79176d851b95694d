//! Safetensors encodings of partial statistics and of fitted models.
//!
//! A model file holds `channels` (I64 `[k]`), `mean` (F32 `[n_patches, k]`) and `precision` (F32
//! `[n_patches, k, k]`, the inverse covariances), or for a nearest-patch model `bank` (F32
//! `[n_patches, n_train, k]`, see [`crate::nearest`]), and one metadata entry `padim` whose value is the
//! JSON of [`ModelInfo`]. One entry keeps the header's bytes deterministic (safetensors writes a
//! metadata map in unspecified order). It loads in Python with `safetensors` alone.

use crate::nearest::Bank;
use crate::stats::{Gaussians, PatchStats};
use padim_core::channels::ChannelSubset;
use padim_core::config::{CovarianceEstimator, CovariancePool};
use rayon::prelude::*;
use safetensors::tensor::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

/// The metadata key of padim's JSON.
pub const METADATA_KEY: &str = "padim";

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("not a padim {kind} file: {message}")]
    Format { kind: &'static str, message: String },
}

/// What a model is and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ModelInfo {
    pub format_version: u32,
    pub subset: String,
    pub backbone: String,
    pub weights_sha256: String,
    pub tap: String,
    /// Names of the tapped layers, in embedding order.
    pub layers: Vec<String>,
    pub input_height: usize,
    pub input_width: usize,
    pub grid_height: usize,
    pub grid_width: usize,
    /// Channels of the full embedding the subset was taken from.
    pub embedding_channels: usize,
    pub epsilon: f64,
    pub n_train_images: u64,
    pub config_hash: String,
    /// The covariance estimator (absent: the sample covariance; a shrinking one also stores each
    /// patch's shrinkage as the `shrinkage` tensor, F32 `[n_patches]`).
    #[serde(default, skip_serializing_if = "CovarianceEstimator::is_sample")]
    pub covariance: CovarianceEstimator,
    /// The positions whose covariances were pooled (absent: each position its own).
    #[serde(default, skip_serializing_if = "CovariancePool::is_none")]
    pub pool: CovariancePool,
    /// Embedding-grid cells per model cell along each axis (absent: 1). A subset whose finest layer
    /// is coarser than the embedding grid (layers 2+3: stride 8 on the stride-4 grid) has the same
    /// values, so the same Gaussian, in every `factor x factor` block of cells: its model holds one
    /// per block (`grid_height x grid_width` is the model's grid), scored where the block starts and
    /// its distance given to every cell of the block, as the features were upsampled.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub grid_factor: usize,
}

fn one() -> usize {
    1
}

fn is_one(value: &usize) -> bool {
    *value == 1
}

impl ModelInfo {
    /// The newest format this padim reads: 2 adds `grid-factor` (models on a coarser grid are
    /// written as 2, others as 1, which older padim reads).
    pub const FORMAT_VERSION: u32 = 2;

    /// The format version a model of this grid is written with.
    pub fn format_for(grid_factor: usize) -> u32 {
        if grid_factor == 1 { 1 } else { 2 }
    }

    /// The embedding grid (height, width) the model's grid covers.
    pub fn embedding_grid(&self) -> (usize, usize) {
        (self.grid_height * self.grid_factor, self.grid_width * self.grid_factor)
    }

    /// The embedding-grid patch where each model cell's block starts, in the model's row-major
    /// order (the identity with a factor of 1).
    pub fn anchor_patches(&self) -> Vec<usize> {
        let (f, width) = (self.grid_factor, self.grid_width * self.grid_factor);
        (0..self.grid_height * self.grid_width)
            .map(|c| (c / self.grid_width) * f * width + (c % self.grid_width) * f)
            .collect()
    }

    /// The model cell of each embedding-grid patch (row-major), the nearest-neighbour upsampling
    /// of the model's grid onto the embedding's.
    pub fn cell_of_patches(&self) -> Vec<usize> {
        let (f, (height, width)) = (self.grid_factor, self.embedding_grid());
        (0..height * width).map(|p| (p / width / f) * self.grid_width + (p % width) / f).collect()
    }
}

/// The values of one tensor to write.
enum Data<'a> {
    /// f64 values stored as f32.
    F32(&'a [f64]),
    /// f32 values stored as they are.
    Single(&'a [f32]),
    F64(&'a [f64]),
    I64(Vec<i64>),
}

impl Data<'_> {
    fn dtype(&self) -> &'static str {
        match self {
            Data::F32(_) | Data::Single(_) => "F32",
            Data::F64(_) => "F64",
            Data::I64(_) => "I64",
        }
    }

    fn byte_len(&self) -> usize {
        match self {
            Data::F32(values) => values.len() * 4,
            Data::Single(values) => values.len() * 4,
            Data::F64(values) => values.len() * 8,
            Data::I64(values) => values.len() * 8,
        }
    }

    /// Writes the little-endian bytes into `out` (of `byte_len()`), in parallel blocks.
    fn write(&self, out: &mut [u8]) {
        const BLOCK: usize = 1 << 16;
        match self {
            Data::F32(values) => {
                out.par_chunks_mut(4 * BLOCK).zip(values.par_chunks(BLOCK)).for_each(|(out, values)| {
                    for (bytes, &v) in out.chunks_exact_mut(4).zip(values) {
                        bytes.copy_from_slice(&(v as f32).to_le_bytes());
                    }
                })
            }
            Data::Single(values) => {
                out.par_chunks_mut(4 * BLOCK).zip(values.par_chunks(BLOCK)).for_each(|(out, values)| {
                    for (bytes, &v) in out.chunks_exact_mut(4).zip(values) {
                        bytes.copy_from_slice(&v.to_le_bytes());
                    }
                })
            }
            Data::F64(values) => {
                out.par_chunks_mut(8 * BLOCK).zip(values.par_chunks(BLOCK)).for_each(|(out, values)| {
                    for (bytes, &v) in out.chunks_exact_mut(8).zip(values) {
                        bytes.copy_from_slice(&v.to_le_bytes());
                    }
                })
            }
            Data::I64(values) => {
                for (bytes, &v) in out.chunks_exact_mut(8).zip(values) {
                    bytes.copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
}

impl Data<'_> {
    /// Writes the little-endian bytes to `out`, a block of values at a time through `buffer`.
    fn write_to(&self, out: &mut dyn std::io::Write, buffer: &mut Vec<u8>) -> std::io::Result<()> {
        const BLOCK: usize = 1 << 18;
        fn blocks<T: Copy, const N: usize>(
            values: &[T],
            bytes: impl Fn(T) -> [u8; N],
            out: &mut dyn std::io::Write,
            buffer: &mut Vec<u8>,
        ) -> std::io::Result<()> {
            for block in values.chunks(BLOCK) {
                buffer.clear();
                buffer.extend(block.iter().flat_map(|&v| bytes(v)));
                out.write_all(buffer)?;
            }
            Ok(())
        }
        match self {
            Data::F32(values) => blocks(values, |v| (v as f32).to_le_bytes(), out, buffer),
            Data::Single(values) => blocks(values, f32::to_le_bytes, out, buffer),
            Data::F64(values) => blocks(values, f64::to_le_bytes, out, buffer),
            Data::I64(values) => blocks(values, i64::to_le_bytes, out, buffer),
        }
    }
}

/// A safetensors file's header: the 8-byte header length, the JSON header (tensors and one
/// `__metadata__` entry, keys sorted, padded with spaces to a multiple of 8 bytes). The tensors'
/// bytes follow in the given order.
fn header(tensors: &[(&str, Vec<usize>, Data)], metadata: String) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ METADATA_KEY: metadata }));
    let mut offset = 0;
    for (name, shape, data) in tensors {
        let end = offset + data.byte_len();
        header.insert(
            (*name).to_string(),
            serde_json::json!({ "dtype": data.dtype(), "shape": shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut json = serde_json::Value::Object(header).to_string().into_bytes();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out
}

/// [`serialize`] streamed to `out`: a model of hundreds of megabytes is never held whole.
fn serialize_to(
    tensors: &[(&str, Vec<usize>, Data)],
    metadata: String,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    out.write_all(&header(tensors, metadata))?;
    let mut buffer = Vec::new();
    for (_, _, data) in tensors {
        data.write_to(out, &mut buffer)?;
    }
    Ok(())
}

/// A safetensors file (see [`header`]) in one buffer: each tensor is converted straight into its
/// place rather than into a buffer of its own that `safetensors::serialize` would copy again. Every
/// file is read back with the `safetensors` crate.
fn serialize(tensors: &[(&str, Vec<usize>, Data)], metadata: String) -> Vec<u8> {
    let head = header(tensors, metadata);
    let start = head.len();
    let size: usize = tensors.iter().map(|(_, _, data)| data.byte_len()).sum();
    let mut out = vec![0u8; start + size];
    out[..start].copy_from_slice(&head);
    let mut rest = &mut out[start..];
    for (_, _, data) in tensors {
        let (place, tail) = rest.split_at_mut(data.byte_len());
        data.write(place);
        rest = tail;
    }
    out
}

/// Encodes a fitted model.
pub fn encode_model(gaussians: &Gaussians, info: &ModelInfo) -> Result<Vec<u8>, ModelError> {
    let (tensors, json) = model_tensors(gaussians, info)?;
    Ok(serialize(&tensors, json))
}

/// A fitted model's file, as [`encode_model`] encodes it, streamed to `out` (a fitted model is
/// hundreds of megabytes: the fit need not hold a second copy of it to write it). The metadata is
/// encoded first, so that only the writes can fail inside.
pub fn model_writer<'a>(
    gaussians: &'a Gaussians,
    info: &ModelInfo,
) -> Result<impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()> + 'a, ModelError> {
    let (tensors, json) = model_tensors(gaussians, info)?;
    Ok(move |out: &mut dyn std::io::Write| serialize_to(&tensors, json, out))
}

/// A tensor to write: its name, shape and values.
type Tensor<'a> = (&'static str, Vec<usize>, Data<'a>);

/// A fitted model's tensors and metadata JSON.
fn model_tensors<'a>(gaussians: &'a Gaussians, info: &ModelInfo) -> Result<(Vec<Tensor<'a>>, String), ModelError> {
    let (p, k) = (gaussians.n_patches, gaussians.channels.len());
    let json = serde_json::to_string(info).map_err(|e| ModelError::Format { kind: "model", message: e.to_string() })?;
    let mut tensors = vec![
        ("channels", vec![k], Data::I64(gaussians.channels.channels().iter().map(|&c| c as i64).collect())),
        ("mean", vec![p, k], Data::F32(&gaussians.mean)),
        ("precision", vec![p, k, k], Data::Single(&gaussians.precision)),
    ];
    if let Some(shrinkage) = &gaussians.shrinkage {
        tensors.push(("shrinkage", vec![p], Data::F32(shrinkage)));
    }
    Ok((tensors, json))
}

/// Encodes a nearest-patch model: `bank` is `[n_patches, n_train, k]` (`Bank::patch_major`).
pub fn encode_nearest(channels: &ChannelSubset, bank: &[f32], info: &ModelInfo) -> Result<Vec<u8>, ModelError> {
    let (p, k) = (info.grid_height * info.grid_width, channels.len());
    let t = bank.len() / (p * k).max(1);
    if !info.covariance.is_nearest() || t == 0 || bank.len() != p * t * k {
        return Err(ModelError::Format { kind: "model", message: "not a nearest-patch bank".into() });
    }
    let json = serde_json::to_string(info).map_err(|e| ModelError::Format { kind: "model", message: e.to_string() })?;
    Ok(serialize(
        &[
            ("channels", vec![k], Data::I64(channels.channels().iter().map(|&c| c as i64).collect())),
            ("bank", vec![p, t, k], Data::Single(bank)),
        ],
        json,
    ))
}

/// A model read back: f32 means and precisions as stored, or a nearest-patch model's bank.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub info: ModelInfo,
    pub channels: Vec<usize>,
    /// `[n_patches, k]` (empty for a nearest-patch model).
    pub mean: Vec<f32>,
    /// `[n_patches, k, k]` (empty for a nearest-patch model).
    pub precision: Vec<f32>,
    /// `[n_patches, n_bank, k]`: a nearest-patch model's training patches (empty for a Gaussian).
    pub bank: Vec<f32>,
}

impl Model {
    pub fn n_patches(&self) -> usize {
        self.info.grid_height * self.info.grid_width
    }

    /// Whether this is a nearest-patch model (a bank, no Gaussians).
    pub fn is_nearest(&self) -> bool {
        self.info.covariance.is_nearest()
    }

    /// Training patches per position of a nearest-patch model.
    pub fn n_bank(&self) -> usize {
        self.bank.len() / (self.n_patches() * self.channels.len()).max(1)
    }

    /// Checks what a file cannot be trusted to hold: channel indices within the embedding, no
    /// channel twice, and finite means and precisions. A model that fails would score garbage
    /// (or index out of range), so it is refused at load, naming the problem.
    pub fn validate(&self) -> Result<(), ModelProblem> {
        let n_channels = self.info.embedding_channels;
        if let Some(&channel) = self.channels.iter().find(|&&c| c >= n_channels) {
            return Err(ModelProblem::ChannelOutOfRange { channel, n_channels });
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(&channel) = self.channels.iter().find(|&&c| !seen.insert(c)) {
            return Err(ModelProblem::ChannelTwice(channel));
        }
        let k = self.channels.len().max(1);
        if let Some(i) = self.mean.iter().position(|v| !v.is_finite()) {
            return Err(ModelProblem::Mean { patch: i / k, channel: i % k });
        }
        if let Some(i) = self.precision.iter().position(|v| !v.is_finite()) {
            return Err(ModelProblem::Precision { patch: i / (k * k) });
        }
        if self.is_nearest() {
            let n_bank = self.n_bank();
            if n_bank == 0 || self.bank.len() != self.n_patches() * n_bank * k || !self.mean.is_empty() {
                return Err(ModelProblem::BankShape { patches: self.n_patches(), k });
            }
            if let Some(i) = self.bank.iter().position(|v| !v.is_finite()) {
                return Err(ModelProblem::Bank { patch: i / (n_bank * k) });
            }
        } else if !self.bank.is_empty() {
            return Err(ModelProblem::BankInGaussian);
        }
        Ok(())
    }
}

/// What a model file holds that cannot be trusted ([`Model::validate`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelProblem {
    #[error("channel index {channel} is outside the embedding's {n_channels} channels")]
    ChannelOutOfRange { channel: usize, n_channels: usize },
    #[error("channel {0} is listed twice")]
    ChannelTwice(usize),
    #[error("the mean at patch {patch}, channel {channel} is not finite")]
    Mean { patch: usize, channel: usize },
    #[error("the precision matrix of patch {patch} holds a value that is not finite")]
    Precision { patch: usize },
    #[error("a nearest-patch model needs a bank of {patches} patches x n x {k}")]
    BankShape { patches: usize, k: usize },
    #[error("the bank at patch {patch} holds a value that is not finite")]
    Bank { patch: usize },
    #[error("a Gaussian model holds a bank")]
    BankInGaussian,
}

fn metadata(bytes: &[u8], kind: &'static str) -> Result<String, ModelError> {
    let (_, header) =
        SafeTensors::read_metadata(bytes).map_err(|e| ModelError::Format { kind, message: e.to_string() })?;
    header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(METADATA_KEY).cloned())
        .ok_or(ModelError::Format { kind, message: format!("no `{METADATA_KEY}` metadata") })
}

fn tensor<'data>(
    file: &SafeTensors<'data>,
    name: &str,
    dtype: Dtype,
    shape: &[usize],
    kind: &'static str,
) -> Result<&'data [u8], ModelError> {
    let view = file.tensor(name).map_err(|e| ModelError::Format { kind, message: format!("`{name}`: {e}") })?;
    if view.dtype() != dtype || view.shape() != shape {
        return Err(ModelError::Format {
            kind,
            message: format!("`{name}` is {:?} {:?}, expected {dtype:?} {shape:?}", view.dtype(), view.shape()),
        });
    }
    Ok(view.data())
}

/// The number of channels of a model file from its safetensors header alone (the JSON after the
/// 8-byte length), so that callers need not read the matrices.
pub fn channels_in_header(header: &[u8]) -> Result<usize, ModelError> {
    let format = |message: String| ModelError::Format { kind: "model", message };
    let header: serde_json::Value = serde_json::from_slice(header).map_err(|e| format(format!("bad header: {e}")))?;
    header["channels"]["shape"][0]
        .as_u64()
        .map(|k| k as usize)
        .ok_or_else(|| format("the header has no `channels` tensor shape".into()))
}

/// Decodes a model file.
pub fn decode_model(bytes: &[u8]) -> Result<Model, ModelError> {
    let (mut model, precision) = decode_model_parts(bytes)?;
    model.precision = le_f32s(precision);
    Ok(model)
}

/// Decodes a model file but for a Gaussian's precision matrices, which are returned as the file's
/// little-endian f32 bytes (`[patches, k, k]`, checked finite): a scorer that factorises them reads
/// them from there, without a copy of hundreds of megabytes first. The model's `precision` is empty.
pub fn decode_model_parts(bytes: &[u8]) -> Result<(Model, &[u8]), ModelError> {
    let kind = "model";
    let format = |message: String| ModelError::Format { kind, message };
    let info: ModelInfo =
        serde_json::from_str(&metadata(bytes, kind)?).map_err(|e| format(format!("bad metadata: {e}")))?;
    if info.format_version > ModelInfo::FORMAT_VERSION {
        return Err(format(format!("format version {} is newer than this padim's", info.format_version)));
    }
    let file = SafeTensors::deserialize(bytes).map_err(|e| format(e.to_string()))?;
    let k = file.tensor("channels").map_err(|e| format(e.to_string()))?.shape().first().copied().unwrap_or(0);
    let p = info.grid_height * info.grid_width;
    let channels =
        le_i64s(tensor(&file, "channels", Dtype::I64, &[k], kind)?).into_iter().map(|c| c as usize).collect();
    let (model, precision) = if info.covariance.is_nearest() {
        let t = file.tensor("bank").map_err(|e| format(format!("`bank`: {e}")))?.shape().get(1).copied().unwrap_or(0);
        let bank = le_f32s(tensor(&file, "bank", Dtype::F32, &[p, t, k], kind)?);
        (Model { info, channels, mean: Vec::new(), precision: Vec::new(), bank }, &[][..])
    } else {
        let mean = le_f32s(tensor(&file, "mean", Dtype::F32, &[p, k], kind)?);
        let precision = tensor(&file, "precision", Dtype::F32, &[p, k, k], kind)?;
        (Model { info, channels, mean, precision: Vec::new(), bank: Vec::new() }, precision)
    };
    model.validate().map_err(|problem| format(problem.to_string()))?;
    let not_finite = |b: &[u8]| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite();
    if let Some(i) = precision.chunks_exact(4).position(not_finite) {
        let problem = ModelProblem::Precision { patch: i / (k * k).max(1) };
        return Err(format(problem.to_string()));
    }
    Ok((model, precision))
}

/// A tensor's little-endian bytes (whole values, checked by [`tensor`]) as values: one copy on a
/// little-endian machine (the bytes need no alignment), a byte swap per value elsewhere.
fn le_values<T: bytemuck::Pod>(data: &[u8], swap: fn(T) -> T) -> Vec<T> {
    let mut values: Vec<T> = bytemuck::pod_collect_to_vec(data);
    if cfg!(target_endian = "big") {
        values.iter_mut().for_each(|v| *v = swap(*v));
    }
    values
}

fn le_i64s(data: &[u8]) -> Vec<i64> {
    le_values(data, i64::swap_bytes)
}

fn le_f32s(data: &[u8]) -> Vec<f32> {
    le_values(data, |v: f32| f32::from_bits(v.to_bits().swap_bytes()))
}

/// Encodes partial statistics (f64, exact) with `metadata` JSON.
pub fn encode_partial(stats: &PatchStats, metadata: String) -> Result<Vec<u8>, ModelError> {
    let (p, d) = (stats.n_patches(), stats.channels().len());
    Ok(serialize(
        &[
            ("count", vec![1], Data::I64(vec![stats.count() as i64])),
            ("channels", vec![d], Data::I64(stats.channels().channels().iter().map(|&c| c as i64).collect())),
            ("mean", vec![p, d], Data::F64(stats.mean())),
            ("comoment", vec![p, d, d], Data::F64(stats.comoment())),
        ],
        metadata,
    ))
}

/// Decodes partial statistics and their metadata JSON.
pub fn decode_partial(bytes: &[u8], n_patches: usize) -> Result<(PatchStats, String), ModelError> {
    let kind = "partial statistics";
    let format = |message: String| ModelError::Format { kind, message };
    let json = metadata(bytes, kind)?;
    let file = SafeTensors::deserialize(bytes).map_err(|e| format(e.to_string()))?;
    let d = file.tensor("channels").map_err(|e| format(e.to_string()))?.shape().first().copied().unwrap_or(0);
    let doubles = |data: &[u8]| -> Vec<f64> { le_values(data, |v: f64| f64::from_bits(v.to_bits().swap_bytes())) };
    let count = le_i64s(tensor(&file, "count", Dtype::I64, &[1], kind)?)[0] as u64;
    let channels: Vec<usize> =
        le_i64s(tensor(&file, "channels", Dtype::I64, &[d], kind)?).into_iter().map(|c| c as usize).collect();
    let mean = doubles(tensor(&file, "mean", Dtype::F64, &[n_patches, d], kind)?);
    let comoment = doubles(tensor(&file, "comoment", Dtype::F64, &[n_patches, d, d], kind)?);
    if mean.iter().chain(&comoment).any(|v| !v.is_finite()) {
        return Err(format("the statistics hold values that are not finite".into()));
    }
    // No channels: the statistics of a fit of nearest-patch models only (the count alone).
    let channels = if channels.is_empty() {
        ChannelSubset::union(std::iter::empty())
    } else {
        ChannelSubset::explicit(channels, usize::MAX).map_err(|e| format(e.to_string()))?
    };
    let stats =
        PatchStats::from_parts(n_patches, channels, count, mean, comoment).map_err(|e| format(e.to_string()))?;
    Ok((stats, json))
}

/// Encodes a shard's nearest-patch bank (its images' 3x3 means, exact) with `metadata` JSON.
pub fn encode_bank_partial(bank: &Bank, metadata: String) -> Vec<u8> {
    let (t, d, p) = (bank.len(), bank.channels().len(), bank.n_patches());
    let values: Vec<f32> = bank.images().flat_map(|(_, values)| values.iter().copied()).collect();
    serialize(
        &[
            ("images", vec![t], Data::I64(bank.image_ids().map(i64::from).collect())),
            ("channels", vec![d], Data::I64(bank.channels().channels().iter().map(|&c| c as i64).collect())),
            ("grid", vec![2], Data::I64(vec![bank.height() as i64, bank.width() as i64])),
            ("values", vec![t, d, p], Data::Single(&values)),
        ],
        metadata,
    )
}

/// Decodes a shard's nearest-patch bank and its metadata JSON.
pub fn decode_bank_partial(bytes: &[u8]) -> Result<(Bank, String), ModelError> {
    let kind = "partial bank";
    let format = |message: String| ModelError::Format { kind, message };
    let json = metadata(bytes, kind)?;
    let file = SafeTensors::deserialize(bytes).map_err(|e| format(e.to_string()))?;
    let shape = |name: &str| -> Result<Vec<usize>, ModelError> {
        Ok(file.tensor(name).map_err(|e| format(format!("`{name}`: {e}")))?.shape().to_vec())
    };
    let (t, d) = (shape("images")?.first().copied().unwrap_or(0), shape("channels")?.first().copied().unwrap_or(0));
    let grid = le_i64s(tensor(&file, "grid", Dtype::I64, &[2], kind)?);
    let (height, width) = (grid[0].max(0) as usize, grid[1].max(0) as usize);
    let images = le_i64s(tensor(&file, "images", Dtype::I64, &[t], kind)?);
    let channels: Vec<usize> =
        le_i64s(tensor(&file, "channels", Dtype::I64, &[d], kind)?).into_iter().map(|c| c as usize).collect();
    let values = le_f32s(tensor(&file, "values", Dtype::F32, &[t, d, height * width], kind)?);
    if values.iter().any(|v| !v.is_finite()) {
        return Err(format("the bank holds values that are not finite".into()));
    }
    let channels = ChannelSubset::explicit(channels, usize::MAX).map_err(|e| format(e.to_string()))?;
    let ids = images
        .iter()
        .map(|&i| u32::try_from(i).map_err(|_| format(format!("image id {i}"))))
        .collect::<Result<Vec<u32>, _>>()?;
    let per_image = d * height * width;
    let images = ids.into_iter().zip(values.chunks_exact(per_image.max(1)).map(<[f32]>::to_vec)).collect();
    let bank = Bank::from_parts(height, width, channels, images).map_err(|e| format(e.to_string()))?;
    Ok((bank, json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_and_model_round_trip() {
        let channels = ChannelSubset::explicit(vec![2, 5, 7], 10).unwrap();
        let mut stats = PatchStats::new(4, channels.clone());
        let values: Vec<f32> = (0..5 * 3 * 4).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        stats.update(&[0, 1, 2, 3, 4], &values).unwrap();
        let bytes = encode_partial(&stats, "{\"x\":1}".into()).unwrap();
        let (back, json) = decode_partial(&bytes, 4).unwrap();
        assert_eq!(back, stats);
        assert_eq!(json, "{\"x\":1}");
        assert_eq!(encode_partial(&back, json).unwrap(), bytes, "encoding is deterministic");

        let subset = ChannelSubset::explicit(vec![2, 7], 10).unwrap();
        let gaussians = stats.gaussians(&subset, 0.01).unwrap();
        let info = ModelInfo {
            format_version: 1,
            subset: "s".into(),
            backbone: "b".into(),
            weights_sha256: "w".into(),
            tap: "block-output".into(),
            layers: vec!["l".into()],
            input_height: 8,
            input_width: 8,
            grid_height: 2,
            grid_width: 2,
            embedding_channels: 10,
            epsilon: 0.01,
            n_train_images: 5,
            config_hash: "h".into(),
            covariance: Default::default(),
            pool: Default::default(),
            grid_factor: 1,
        };
        let encoded = encode_model(&gaussians, &info).unwrap();
        let mut streamed = Vec::new();
        model_writer(&gaussians, &info).unwrap()(&mut streamed).unwrap();
        assert_eq!(streamed, encoded, "the streamed model is the encoded one");
        let model = decode_model(&encoded).unwrap();
        assert_eq!(model.info, info);
        assert_eq!(model.channels, vec![2, 7]);
        assert_eq!(model.precision, gaussians.precision);
        assert_eq!(model.mean, gaussians.mean.iter().map(|&v| v as f32).collect::<Vec<_>>());
        assert!(decode_model(&bytes).is_err(), "a partial is not a model");
    }

    #[test]
    fn nearest_models_and_bank_partials_round_trip() {
        let channels = ChannelSubset::explicit(vec![1, 3], 4).unwrap();
        let mut bank = Bank::new(2, 3, channels.clone());
        let values: Vec<f32> = (0..3 * 2 * 6).map(|i| ((i * 37) % 11) as f32 * 0.3 - 1.0).collect();
        bank.update(&[9, 2, 5], &values).unwrap();
        let bytes = encode_bank_partial(&bank, "{\"x\":2}".into());
        let (back, json) = decode_bank_partial(&bytes).unwrap();
        assert_eq!((back, json.as_str()), (bank.clone(), "{\"x\":2}"));

        let subset = ChannelSubset::explicit(vec![3], 4).unwrap();
        let laid = bank.patch_major(&subset).unwrap();
        let info = ModelInfo {
            format_version: 1,
            subset: "n".into(),
            backbone: "b".into(),
            weights_sha256: "w".into(),
            tap: "block-output".into(),
            layers: vec!["l".into()],
            input_height: 8,
            input_width: 12,
            grid_height: 2,
            grid_width: 3,
            embedding_channels: 4,
            epsilon: 0.01,
            n_train_images: 3,
            config_hash: "h".into(),
            covariance: CovarianceEstimator::Nearest,
            pool: CovariancePool::None,
            grid_factor: 1,
        };
        let model = decode_model(&encode_nearest(&subset, &laid, &info).unwrap()).unwrap();
        assert_eq!((model.info.clone(), model.channels.clone(), model.n_bank()), (info.clone(), vec![3], 3));
        assert_eq!(model.bank, laid);
        assert!(model.mean.is_empty() && model.precision.is_empty());
        let gaussian = ModelInfo { covariance: CovarianceEstimator::Sample, ..info };
        assert!(encode_nearest(&subset, &laid, &gaussian).is_err(), "a bank needs a nearest-patch model's info");
    }
}
