//! Anomaly maps: bilinear resizing (PyTorch's `interpolate(mode="bilinear", align_corners=False)`),
//! Gaussian smoothing with replicate padding (MATLAB's `imgaussfilt`), and summary statistics.

/// Resizes a row-major `height x width` map to `out_height x out_width` with half-pixel centres.
pub fn resize_bilinear(map: &[f32], height: usize, width: usize, out_height: usize, out_width: usize) -> Vec<f32> {
    // Source coordinate of each output coordinate, clamped at 0 as PyTorch does.
    let axis = |out: usize, input: usize| -> Vec<(usize, usize, f32)> {
        let scale = input as f32 / out as f32;
        (0..out)
            .map(|o| {
                let source = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
                let low = (source.floor() as usize).min(input - 1);
                let high = (low + 1).min(input - 1);
                (low, high, source - low as f32)
            })
            .collect()
    };
    let rows = axis(out_height, height);
    let cols = axis(out_width, width);
    let mut out = Vec::with_capacity(out_height * out_width);
    for &(y0, y1, wy) in &rows {
        for &(x0, x1, wx) in &cols {
            let top = map[y0 * width + x0] * (1.0 - wx) + map[y0 * width + x1] * wx;
            let bottom = map[y1 * width + x0] * (1.0 - wx) + map[y1 * width + x1] * wx;
            out.push(top * (1.0 - wy) + bottom * wy);
        }
    }
    out
}

/// A normalised 1-D Gaussian kernel of `size` taps (odd) and standard deviation `sigma`.
pub fn gaussian_kernel(sigma: f64, size: usize) -> Vec<f64> {
    let half = (size / 2) as f64;
    let weights: Vec<f64> = (0..size).map(|i| (-((i as f64 - half).powi(2)) / (2.0 * sigma * sigma)).exp()).collect();
    let sum: f64 = weights.iter().sum();
    weights.into_iter().map(|w| w / sum).collect()
}

/// Separable Gaussian smoothing of a row-major map, replicating the border pixels. Both passes run
/// over whole rows (kernel tap outermost), so the inner loops are contiguous and vectorise.
pub fn smooth_gaussian(map: &[f32], height: usize, width: usize, sigma: f64, size: usize) -> Vec<f32> {
    let kernel = gaussian_kernel(sigma, size);
    let half = size / 2;
    let clamp = |v: isize, n: usize| v.clamp(0, n as isize - 1) as usize;
    let mut padded = vec![0f64; width + 2 * half];
    let mut horizontal = vec![0f64; height * width];
    for (row, out) in map.chunks_exact(width).zip(horizontal.chunks_exact_mut(width)) {
        for (x, value) in padded.iter_mut().enumerate() {
            *value = row[clamp(x as isize - half as isize, width)] as f64;
        }
        for (tap, &weight) in kernel.iter().enumerate() {
            for (o, &p) in out.iter_mut().zip(&padded[tap..tap + width]) {
                *o += weight * p;
            }
        }
    }
    let mut accumulator = vec![0f64; width];
    let mut out = vec![0f32; height * width];
    for (y, out_row) in out.chunks_exact_mut(width).enumerate() {
        accumulator.fill(0.0);
        for (tap, &weight) in kernel.iter().enumerate() {
            let source = clamp(y as isize + tap as isize - half as isize, height);
            for (a, &h) in accumulator.iter_mut().zip(&horizontal[source * width..(source + 1) * width]) {
                *a += weight * h;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&accumulator) {
            *o = a as f32;
        }
    }
    out
}

/// Bilinear resizing followed by Gaussian smoothing, as one linear operator per axis.
///
/// Both steps are linear and separable, so `smooth(resize(M)) = V M H^T` where `V`
/// (`out_height x height`) and `H` (`out_width x width`) are the products of each axis' smoothing
/// matrix (replicate padding folded in) and resizing matrix. A row of `V` or `H` is non-zero only
/// over the few source pixels the kernel reaches, so applying the pair costs about
/// `(height + out_height) * out_width * taps` multiply-adds with `taps` of about
/// `kernel_size * height / out_height + 2`: for a 56x56 grid to 224x224 with a 33-tap kernel, about
/// a sixth of resizing and then smoothing at full resolution. Built once per map size and shared.
#[derive(Debug, Clone, PartialEq)]
pub struct MapFilter {
    height: usize,
    width: usize,
    rows: AxisOperator,
    cols: AxisOperator,
}

/// A banded `out x input` matrix: per output index, the first source index and the weights of the
/// contiguous run of source indices from there.
#[derive(Debug, Clone, PartialEq)]
struct AxisOperator {
    first: Vec<usize>,
    weights: Vec<Vec<f64>>,
}

impl AxisOperator {
    fn new(input: usize, out: usize, kernel: &[f64]) -> AxisOperator {
        // Resizing: output o reads source pixels `low` and `high` (PyTorch's half-pixel rule).
        let scale = input as f64 / out as f64;
        let resize: Vec<(usize, usize, f64)> = (0..out)
            .map(|o| {
                let source = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
                let low = (source.floor() as usize).min(input - 1);
                let high = (low + 1).min(input - 1);
                (low, high, source - low as f64)
            })
            .collect();
        let half = kernel.len() / 2;
        let mut first = Vec::with_capacity(out);
        let mut weights = Vec::with_capacity(out);
        let mut dense = vec![0f64; input];
        for o in 0..out {
            dense.fill(0.0);
            for (tap, &weight) in kernel.iter().enumerate() {
                // Replicate padding: a tap outside the map reads the border pixel.
                let at = (o as isize + tap as isize - half as isize).clamp(0, out as isize - 1) as usize;
                let (low, high, fraction) = resize[at];
                dense[low] += weight * (1.0 - fraction);
                dense[high] += weight * fraction;
            }
            let start = dense.iter().position(|&w| w != 0.0).unwrap_or(0);
            let end = dense.iter().rposition(|&w| w != 0.0).map_or(start, |e| e + 1);
            first.push(start);
            weights.push(dense[start..end].to_vec());
        }
        AxisOperator { first, weights }
    }
}

impl MapFilter {
    /// The operator for `height x width` maps resized to `out_height x out_width` and smoothed with a
    /// Gaussian of `sigma` and `kernel_size` taps.
    pub fn new(
        height: usize,
        width: usize,
        out_height: usize,
        out_width: usize,
        sigma: f64,
        kernel_size: usize,
    ) -> MapFilter {
        let kernel = gaussian_kernel(sigma, kernel_size);
        MapFilter {
            height,
            width,
            rows: AxisOperator::new(height, out_height, &kernel),
            cols: AxisOperator::new(width, out_width, &kernel),
        }
    }

    pub fn out_height(&self) -> usize {
        self.rows.first.len()
    }

    pub fn out_width(&self) -> usize {
        self.cols.first.len()
    }

    /// The smoothed map at output resolution of a row-major `height x width` map (computed in f64).
    pub fn apply(&self, map: &[f32]) -> Vec<f32> {
        assert_eq!(map.len(), self.height * self.width, "map size");
        let out_width = self.out_width();
        // Along each row: `map H^T`, `height x out_width`.
        let mut horizontal = vec![0f64; self.height * out_width];
        for (row, out) in map.chunks_exact(self.width).zip(horizontal.chunks_exact_mut(out_width)) {
            for ((o, &first), weights) in out.iter_mut().zip(&self.cols.first).zip(&self.cols.weights) {
                *o = weights.iter().zip(&row[first..]).map(|(&w, &v)| w * v as f64).sum();
            }
        }
        // Down each column: `V (map H^T)`, whole rows at a time so the inner loop vectorises.
        let mut accumulator = vec![0f64; out_width];
        let mut out = vec![0f32; self.out_height() * out_width];
        for ((out_row, &first), weights) in
            out.chunks_exact_mut(out_width).zip(&self.rows.first).zip(&self.rows.weights)
        {
            accumulator.fill(0.0);
            for (source, &weight) in horizontal[first * out_width..].chunks_exact(out_width).zip(weights) {
                for (a, &h) in accumulator.iter_mut().zip(source) {
                    *a += weight * h;
                }
            }
            for (o, &a) in out_row.iter_mut().zip(&accumulator) {
                *o = a as f32;
            }
        }
        out
    }
}

/// Mean, max, min and top-fraction mean of a map.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MapStats {
    pub mean: f64,
    pub max: f32,
    pub min: f32,
    /// The mean of the `ceil(fraction x len)` highest values (at least one).
    pub top: f64,
}

impl MapStats {
    /// The statistics of `map`, with `top` over its highest `top_fraction` (in (0, 1]).
    pub fn of(map: &[f32], top_fraction: f64) -> MapStats {
        let mean = map.iter().map(|&v| v as f64).sum::<f64>() / map.len().max(1) as f64;
        let max = map.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let min = map.iter().copied().fold(f32::INFINITY, f32::min);
        MapStats { mean, max, min, top: top_mean(map, top_fraction) }
    }
}

/// How many values the top fraction of `len` values holds: `ceil(fraction x len)`, at least one.
pub fn top_count(len: usize, fraction: f64) -> usize {
    ((fraction * len as f64).ceil() as usize).clamp(1, len.max(1))
}

/// The mean of the highest `fraction` of `values` (see [`top_count`]); NaN when empty.
pub fn top_mean(values: &[f32], fraction: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let k = top_count(values.len(), fraction);
    let nth = values.len() - k;
    let mut scratch = values.to_vec();
    scratch.select_nth_unstable_by(nth, f32::total_cmp);
    scratch[nth..].iter().map(|&v| v as f64).sum::<f64>() / k as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bilinear_matches_pytorch_half_pixel_rule() {
        // 2x2 -> 4x4: torch.nn.functional.interpolate([[0, 1], [2, 3]], size=4, mode="bilinear").
        let out = resize_bilinear(&[0.0, 1.0, 2.0, 3.0], 2, 2, 4, 4);
        let expected = [0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0];
        for (a, b) in out.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn kernel_is_normalised_and_symmetric() {
        let k = gaussian_kernel(4.0, 33);
        assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((k[0] - k[32]).abs() < 1e-15 && k[16] > k[15]);
    }

    #[test]
    fn filter_equals_resizing_then_smoothing() {
        // A non-square grid, an odd scale and a kernel wider than the map exercise the border rules.
        for (h, w, oh, ow, sigma, size) in [(56, 56, 224, 224, 4.0, 33), (7, 5, 28, 17, 2.5, 15), (3, 4, 3, 4, 1.0, 9)]
        {
            let map: Vec<f32> = (0..h * w).map(|i| ((i * 37 % 101) as f32 * 0.173).sin() * 5.0 + 6.0).collect();
            let reference = smooth_gaussian(&resize_bilinear(&map, h, w, oh, ow), oh, ow, sigma, size);
            let filter = MapFilter::new(h, w, oh, ow, sigma, size);
            assert_eq!((filter.out_height(), filter.out_width()), (oh, ow));
            let out = filter.apply(&map);
            let worst = out.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= 2e-5, "{h}x{w} -> {oh}x{ow}: {worst}");
        }
    }

    proptest! {
        /// Smoothing preserves constants and the mean of a map away from borders never leaves its
        /// range; its output lies within the input's min and max.
        #[test]
        fn smoothing_is_a_convex_combination(values in proptest::collection::vec(-10f32..10.0, 64)) {
            let out = smooth_gaussian(&values, 8, 8, 4.0, 33);
            let (lo, hi) = values.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
            prop_assert!(out.iter().all(|&v| v >= lo - 1e-4 && v <= hi + 1e-4));
            let constant = smooth_gaussian(&[2.5; 64], 8, 8, 4.0, 33);
            prop_assert!(constant.iter().all(|&v| (v - 2.5).abs() < 1e-5));
        }

        /// The combined operator is also a convex combination of the grid's values.
        #[test]
        fn filter_is_a_convex_combination(values in proptest::collection::vec(-10f32..10.0, 30)) {
            let out = MapFilter::new(5, 6, 20, 24, 4.0, 33).apply(&values);
            let (lo, hi) = values.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
            prop_assert!(out.iter().all(|&v| v >= lo - 1e-4 && v <= hi + 1e-4));
        }

        /// The top-fraction mean is the mean of the sorted map's last ceil(q n) values; it lies
        /// between the mean and the max, is the max for one value and the mean for the whole map.
        #[test]
        fn top_mean_is_the_mean_of_the_highest_values(
            values in proptest::collection::vec(-10f32..10.0, 1..200),
            fraction in 0.0001f64..1.0,
        ) {
            let mut sorted = values.clone();
            sorted.sort_by(f32::total_cmp);
            let k = ((fraction * values.len() as f64).ceil() as usize).max(1);
            let reference = sorted[values.len() - k..].iter().map(|&v| v as f64).sum::<f64>() / k as f64;
            let stats = MapStats::of(&values, fraction);
            prop_assert!((stats.top - reference).abs() < 1e-9, "{} vs {}", stats.top, reference);
            prop_assert!(stats.top <= stats.max as f64 + 1e-9 && stats.top >= stats.mean - 1e-9);
            prop_assert_eq!(MapStats::of(&values, 1e-9).top, stats.max as f64);
            prop_assert!((MapStats::of(&values, 1.0).top - stats.mean).abs() < 1e-9);
        }
    }
}
