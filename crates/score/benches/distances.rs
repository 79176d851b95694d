//! `cargo bench --bench distances`: the score stage's distance throughput beside a plain BLAS GEMM
//! of the same shapes, in the same run, on the same threads.
//!
//! The shapes are the main job's two models (EfficientNet-Lite1 at 240 px: layers 2+3, 152
//! channels on the 30x30 grid of their stride-8 tap; all layers, 176 channels on the 60x60 grid),
//! a batch of `PADIM_BENCH_IMAGES` (default 128, the default `score.batch-images`) images. padim's
//! side is `distances_many` on a batch laid out as the reader gives it (`[image][channel][patch]`
//! f32), transposition included, in f32 and in f64. The yardstick is OpenBLAS's `sgemm` of the
//! deviations by a `k x k` matrix per cell (what `d^T P d` costs as a general product, `2 n k^2`
//! flops), from contiguous operands, cells in parallel. Throughput is given in those GEMM-equivalent
//! GFLOP/s for both (padim's triangular products do half the multiply-adds).
//!
//! The fit's numerics likewise, in f64 on the embedding grid of all 176 channels (60x60): the
//! co-moment update of a batch of 32 images (per patch `X^T X`, `2 n d^2` flops as a general
//! product) and the inverse covariances (`k^3` flops each by Cholesky), beside `dgemm` of the same
//! shapes (`n x d` by `d x d`, and `k x k` by `k x k` at `2 k^3`).
#![allow(clippy::print_stdout, clippy::unwrap_used)]

/// The padim binary's allocator, so that the stage runs as it does there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use padim_core::config::ComputePrecision;
use padim_fit::model::{Model, ModelInfo};
use padim_score::{Gaussian, distances_many};
use rayon::prelude::*;
use std::time::Instant;

/// A model of `k` channels on a `grid x grid` grid of cells of `factor x factor` patches, with
/// well-conditioned random precision matrices.
fn model(k: usize, grid: usize, factor: usize, salt: usize) -> Model {
    let cells = grid * grid;
    let precision: Vec<f32> = (0..cells)
        .into_par_iter()
        .flat_map_iter(|cell| {
            let a: Vec<f64> =
                (0..k * k).map(|i| (((i + cell * 31 + salt) * 7919 % 1013) as f64 / 1013.0 - 0.5) / k as f64).collect();
            (0..k * k).map(move |i| {
                let (r, c) = (i / k, i % k);
                let dot: f64 = (0..k).map(|t| a[r * k + t] * a[c * k + t]).sum();
                (dot + if r == c { 1.0 } else { 0.0 }) as f32
            })
        })
        .collect();
    Model {
        info: ModelInfo {
            format_version: ModelInfo::format_for(factor),
            subset: format!("k{k}"),
            backbone: "bench".into(),
            weights_sha256: String::new(),
            tap: String::new(),
            layers: vec![],
            input_height: grid * factor * 4,
            input_width: grid * factor * 4,
            grid_height: grid,
            grid_width: grid,
            embedding_channels: 176,
            epsilon: 0.01,
            n_train_images: 250,
            config_hash: String::new(),
            covariance: Default::default(),
            pool: Default::default(),
            grid_factor: factor,
        },
        channels: (176 - k..176).collect(),
        mean: (0..cells * k).map(|i| (i % 13) as f32 * 0.1).collect(),
        precision,
        bank: Vec::new(),
    }
}

fn main() {
    let threads: usize = std::env::var("PADIM_BENCH_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let n: usize = std::env::var("PADIM_BENCH_IMAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(128);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().unwrap();
    padim_fit::single_threaded_blas();
    let (u, n_patches) = (176, 60 * 60);
    let models = [model(152, 30, 2, 1), model(176, 60, 1, 2)];
    let values: Vec<f32> = (0..n * u * n_patches).map(|i| ((i * 104_729 % 997) as f32 / 997.0 - 0.5) * 4.0).collect();
    let ids: Vec<u32> = (0..n as u32).collect();
    let union: Vec<usize> = (0..u).collect();
    // GEMM-equivalent flops of one batch: 2 n k^2 per cell.
    let flops: f64 =
        models.iter().map(|m| 2.0 * (n * m.channels.len() * m.channels.len() * m.n_patches()) as f64).sum();

    println!(
        "distances of {n} images to the main job's two models (152 ch x 900 cells, 176 ch x 3600 cells), {threads} threads"
    );
    println!("| computation | seconds per batch | GEMM-equivalent GFLOP/s | of the plain sgemm |");
    println!("|---|---|---|---|");
    let gemm = median(5, || plain_gemm(&models, n));
    let row = |name: &str, seconds: f64| {
        println!("| {name} | {seconds:.3} | {:.1} | {:.2}x |", flops / seconds / 1e9, gemm / seconds);
    };
    row("OpenBLAS sgemm, the same shapes (yardstick)", gemm);
    for (precision, name) in
        [(ComputePrecision::F32, "padim distances, f32 (default)"), (ComputePrecision::F64, "padim distances, f64")]
    {
        let prepared: Vec<Gaussian> = models.iter().map(|m| Gaussian::new(m, precision).unwrap()).collect();
        let with: Vec<(&Gaussian, &[usize])> =
            prepared.iter().zip(&models).map(|(g, m)| (g, &union[176 - m.channels.len()..])).collect();
        let seconds = median(5, || {
            let clock = Instant::now();
            let maps = distances_many(&with, &union, &ids, &values).unwrap();
            assert_eq!(maps.len(), 2);
            clock.elapsed().as_secs_f64()
        });
        row(name, seconds);
    }
    fit_rows();
}

/// The fit's rows: co-moment updates and inversions, beside `dgemm` of their shapes.
fn fit_rows() {
    use padim_fit::{ChannelSubset, PatchStats};
    let (n, d, n_patches) = (32, 176, 3600);
    let values: Vec<f32> = (0..n * d * n_patches).map(|i| ((i * 104_729 % 997) as f32 / 997.0 - 0.5) * 4.0).collect();
    let ids: Vec<u32> = (0..n as u32).collect();
    let update = median(3, || {
        let mut stats = PatchStats::new(n_patches, ChannelSubset::all(d));
        let clock = Instant::now();
        stats.update(&ids, &values).unwrap();
        clock.elapsed().as_secs_f64()
    });
    let mut stats = PatchStats::new(n_patches, ChannelSubset::all(d));
    for round in 0..8 {
        let shifted: Vec<f32> = values.iter().map(|v| v * (1.0 + round as f32 * 0.1)).collect();
        stats.update(&ids, &shifted).unwrap();
    }
    let all = ChannelSubset::all(d);
    let invert = median(3, || {
        let clock = Instant::now();
        stats.gaussians(&all, 0.01).unwrap();
        clock.elapsed().as_secs_f64()
    });
    let gemm = |m: usize, k: usize, cols: usize| {
        let a: Vec<f64> = (0..m * k).map(|i| (i % 17) as f64 * 0.01).collect();
        let b: Vec<f64> = (0..k * cols).map(|i| (i % 13) as f64 * 0.01).collect();
        median(3, || {
            let clock = Instant::now();
            (0..n_patches)
                .into_par_iter()
                .for_each_init(|| vec![0f64; m * cols], |c, _| padim_fit::blas::dgemm(m, k, cols, &a, &b, c));
            clock.elapsed().as_secs_f64()
        })
    };
    let (update_gemm, invert_gemm) = (gemm(d, n, d), gemm(d, d, d));
    let update_flops = 2.0 * (n * d * d * n_patches) as f64;
    let invert_flops = (d * d * d * n_patches) as f64;
    println!();
    println!("fit numerics, 176 channels x 3600 patches, f64");
    println!("| computation | seconds | GFLOP/s | of the plain dgemm |");
    println!("|---|---|---|---|");
    println!(
        "| OpenBLAS dgemm, 176 x 32 by 32 x 176 per patch (yardstick) | {update_gemm:.3} | {:.1} | 1.00x |",
        update_flops / update_gemm / 1e9
    );
    println!(
        "| padim co-moment update, 32 images (transposition included) | {update:.3} | {:.1} | {:.2}x |",
        update_flops / update / 1e9,
        update_gemm / update
    );
    println!(
        "| OpenBLAS dgemm, 176 x 176 by 176 x 176 per patch (yardstick, 2 k^3) | {invert_gemm:.3} | {:.1} | 1.00x |",
        2.0 * invert_flops / invert_gemm / 1e9
    );
    println!(
        "| padim inverse covariances (Cholesky, k^3) | {invert:.3} | {:.1} | {:.2}x |",
        invert_flops / invert / 1e9,
        invert_gemm / 2.0 / invert
    );
}

/// Seconds of one batch's general products: per cell, `n x k` deviations times a `k x k` matrix.
fn plain_gemm(models: &[Model; 2], n: usize) -> f64 {
    let work: Vec<(usize, usize)> =
        models.iter().flat_map(|m| (0..m.n_patches()).map(move |c| (m.channels.len(), c))).collect();
    let a: Vec<f32> = (0..n * 176).map(|i| (i % 17) as f32 * 0.01).collect();
    let clock = Instant::now();
    work.par_iter().for_each_init(
        || vec![0f32; n * 176],
        |c, &(k, cell)| {
            let m = &models[usize::from(k == 176)];
            padim_fit::blas::sgemm(n, k, &a[..n * k], &m.precision[cell * k * k..(cell + 1) * k * k], &mut c[..n * k]);
        },
    );
    clock.elapsed().as_secs_f64()
}

fn median(runs: usize, mut f: impl FnMut() -> f64) -> f64 {
    let mut times: Vec<f64> = (0..runs).map(|_| f()).collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}
