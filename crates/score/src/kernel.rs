//! The f32 distance kernel: `|| L^T d_i ||` for a block of deviations `d_i` and a cell's lower
//! Cholesky factor `L`, without BLAS. BLAS's triangular product packs `L` into its own layout on
//! every call, which for the few dozen images of a batch costs more than the product itself
//! (measured: two thirds of the time); here `L` is packed once, when the model is prepared.
//!
//! Packed layout: the columns of `L` in panels of [`LANES`]; panel `p` (columns `16p..16p + 16`,
//! zero-padded past `k`) holds the rows `16p..k` of those columns, row after row, since a lower
//! triangular matrix is zero above. Then for `ROWS` images at a time, every panel's outputs are
//! `ROWS x LANES` accumulators updated by one panel row times one broadcast deviation (a GEMM
//! micro-kernel's shape), and their squares summed: the triangular product and the norm in one pass.
//!
//! The loops are plain Rust: compiled once for AVX-512 and once for AVX2 + FMA, picked at run time
//! by what the CPU has (a portable binary; `multiversion` makes the variants and the dispatch), and
//! generic otherwise.

/// Columns per panel: one AVX-512 vector of f32.
pub const LANES: usize = 16;
/// Images per micro-kernel step.
const ROWS: usize = 8;

/// A cell's factor packed for [`distances`] (see the module's documentation).
pub fn pack(factor: &[f32], k: usize) -> Vec<f32> {
    let mut packed = vec![0f32; packed_len(k)];
    pack_into(|row, column| factor[row * k + column], k, &mut packed);
    packed
}

/// Packs the lower triangular factor whose entry (row, column) `factor` gives into `out`
/// ([`packed_len`] values).
pub fn pack_into(factor: impl Fn(usize, usize) -> f32, k: usize, out: &mut [f32]) {
    let mut at = 0;
    for panel in 0..k.div_ceil(LANES) {
        let first = panel * LANES;
        for row in first..k {
            for lane in 0..LANES {
                let column = first + lane;
                out[at] = if column < k && column <= row { factor(row, column) } else { 0.0 };
                at += 1;
            }
        }
    }
}

/// The length of a packed factor of `k` channels.
pub fn packed_len(k: usize) -> usize {
    (0..k.div_ceil(LANES)).map(|panel| (k - panel * LANES) * LANES).sum()
}

/// Writes into `out` the distance of each of `out.len()` images of `block` (`[image][u]`, the
/// values of a union of channels at one patch) to a cell's Gaussian: the norm of the image's
/// deviation from `mean` over the channels at `positions`, times the factor `packed` (as [`pack`]
/// lays it out). The deviations are gathered straight into the micro-kernel's interleaved layout.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+fma", "x86_64+avx2+fma"))]
pub fn distances(block: &[f32], u: usize, positions: &[usize], mean: &[f32], packed: &[f32], out: &mut [f32]) {
    let (n, k) = (out.len(), positions.len());
    assert!(block.len() >= n * u && mean.len() >= k && packed.len() >= packed_len(k), "matrix sizes");
    assert!(positions.iter().all(|&p| p < u), "positions within the union");
    // `ROWS` images' deviations interleaved (`[channel][image]`), so that each step of the
    // micro-kernel reads one contiguous group; images past `n` stay zero.
    let mut group = vec![[0f32; ROWS]; k];
    for image in (0..n).step_by(ROWS) {
        let rows = ROWS.min(n - image);
        let images = &block[image * u..(image + rows) * u];
        for ((slot, &p), &m) in group.iter_mut().zip(positions).zip(mean) {
            for (r, values) in images.chunks_exact(u).enumerate() {
                slot[r] = values[p] - m;
            }
        }
        let squares = step(&group, k, packed);
        for (distance, square) in out[image..image + rows].iter_mut().zip(&squares) {
            *distance = square.iter().map(|&s| s as f64).sum::<f64>().sqrt() as f32;
        }
    }
}

/// The norms of the rows of `deviations` (`out.len()` rows of `k`) times the factor `packed`:
/// [`distances`] of deviations already taken.
pub fn norms(deviations: &[f32], k: usize, packed: &[f32], out: &mut [f32]) {
    let positions: Vec<usize> = (0..k).collect();
    distances(deviations, k, &positions, &vec![0.0; k], packed, out);
}

/// One micro-kernel step: for `ROWS` images' interleaved deviations, every panel's `ROWS x LANES`
/// outputs accumulated panel row by panel row, and their squares summed lane-wise. The
/// accumulators are values passed through [`fma`], so that they live in registers (measured: as
/// an indexed array they were stored to the stack at every step, at half the speed; two panels at
/// a time, 16 accumulators, were slower still).
#[inline(always)]
fn step(group: &[[f32; ROWS]], k: usize, packed: &[f32]) -> [[f32; LANES]; ROWS] {
    let mut squares = [[0f32; LANES]; ROWS];
    let mut rest = packed;
    for first in (0..k).step_by(LANES) {
        let (panel, tail) = rest.split_at((k - first) * LANES);
        rest = tail;
        let zero = [0f32; LANES];
        let (mut a0, mut a1, mut a2, mut a3, mut a4, mut a5, mut a6, mut a7) =
            (zero, zero, zero, zero, zero, zero, zero, zero);
        for (l, d) in panel.chunks_exact(LANES).zip(&group[first..k]) {
            let l: &[f32; LANES] = l.try_into().unwrap_or(&zero);
            a0 = fma(a0, d[0], l);
            a1 = fma(a1, d[1], l);
            a2 = fma(a2, d[2], l);
            a3 = fma(a3, d[3], l);
            a4 = fma(a4, d[4], l);
            a5 = fma(a5, d[5], l);
            a6 = fma(a6, d[6], l);
            a7 = fma(a7, d[7], l);
        }
        for (square, acc) in squares.iter_mut().zip([a0, a1, a2, a3, a4, a5, a6, a7]) {
            *square = fma_squares(*square, &acc);
        }
    }
    squares
}

/// `acc + d l`, lane by lane.
#[inline(always)]
fn fma(acc: [f32; LANES], d: f32, l: &[f32; LANES]) -> [f32; LANES] {
    let mut out = acc;
    for lane in 0..LANES {
        out[lane] = d.mul_add(l[lane], acc[lane]);
    }
    out
}

/// `sum + a * a`, lane by lane.
#[inline(always)]
fn fma_squares(sum: [f32; LANES], a: &[f32; LANES]) -> [f32; LANES] {
    let mut out = sum;
    for lane in 0..LANES {
        out[lane] = a[lane].mul_add(a[lane], sum[lane]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norms_are_the_triangular_products_norms() {
        // k = 37 (three panels, the last partial), 11 images (one step of 8 and 3 alone).
        let k = 37;
        let factor: Vec<f32> = (0..k * k)
            .map(|i| {
                let (row, column) = (i / k, i % k);
                if column > row { 0.0 } else { ((i * 7919 % 101) as f32 / 101.0 - 0.3) * 2.0 }
            })
            .collect();
        let n = 11;
        let deviations: Vec<f32> = (0..n * k).map(|i| ((i * 104_729 % 97) as f32 / 97.0 - 0.5) * 3.0).collect();
        let packed = pack(&factor, k);
        assert_eq!(packed.len(), packed_len(k));
        let mut out = vec![0f32; n];
        norms(&deviations, k, &packed, &mut out);
        for (image, &got) in out.iter().enumerate() {
            let d = &deviations[image * k..(image + 1) * k];
            let expected: f64 = (0..k)
                .map(|c| (c..k).map(|j| d[j] as f64 * factor[j * k + c] as f64).sum::<f64>().powi(2))
                .sum::<f64>()
                .sqrt();
            assert!((got as f64 - expected).abs() <= 1e-5 * expected.max(1.0), "image {image}: {got} vs {expected}");
        }
    }
}
