//! The nearest-training-patch model: every training image's embedding at every grid position (after
//! a 3x3 neighbourhood mean), so that a patch is scored by its distance to the nearest training patch
//! at its position instead of its Mahalanobis distance to one Gaussian there (`covariance =
//! "nearest"`). It keeps every way a normal image looks at a position where one Gaussian averages
//! them; the fit stage accumulates one bank per extract shard and merges them.
//!
//! A bank grows by whole images and merges across shards by taking the union of images, kept in
//! image-id order, so that a sharded fit gives the same bank as one pass.

use padim_core::channels::ChannelSubset;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BankError {
    #[error("a batch of {n_images} images needs {expected} values, got {got}")]
    Shape { n_images: usize, expected: usize, got: usize },
    #[error("image {image}: embedding value at channel {channel}, patch {patch} is not finite")]
    NonFinite { image: u32, channel: usize, patch: usize },
    #[error("image {image} is in the bank twice (two shards, or one shard read twice)")]
    Duplicate { image: u32 },
    #[error("cannot merge banks of different grids or channels ({0})")]
    Incompatible(String),
}

/// Replaces each value of `values` (`[n][d][height * width]`, C order, patch = y * width + x) by the
/// mean of the values of the same image and channel in the 3x3 neighbourhood of its cell, over the
/// cells inside the grid (PyTorch's `avg_pool2d(3, stride=1, padding=1, count_include_pad=False)`).
/// Summed in f64.
pub fn mean_3x3(values: &[f32], height: usize, width: usize) -> Vec<f32> {
    let n_patches = height * width;
    assert!(n_patches > 0 && values.len().is_multiple_of(n_patches), "values are whole grids");
    let mut out = vec![0f32; values.len()];
    let rows = |y: usize| y.saturating_sub(1)..(y + 2).min(height);
    let columns = |x: usize| x.saturating_sub(1)..(x + 2).min(width);
    for (grid, out) in values.chunks_exact(n_patches).zip(out.chunks_exact_mut(n_patches)) {
        for y in 0..height {
            for x in 0..width {
                let (mut sum, mut count) = (0f64, 0u32);
                for yy in rows(y) {
                    for xx in columns(x) {
                        sum += grid[yy * width + xx] as f64;
                        count += 1;
                    }
                }
                out[y * width + x] = (sum / count as f64) as f32;
            }
        }
    }
    out
}

/// The 3x3-averaged embeddings of a set of training images, over some channels.
#[derive(Debug, Clone, PartialEq)]
pub struct Bank {
    height: usize,
    width: usize,
    channels: ChannelSubset,
    /// Image ids, ascending, each with its averaged embedding `[d][n_patches]`.
    images: Vec<(u32, Vec<f32>)>,
}

impl Bank {
    pub fn new(height: usize, width: usize, channels: ChannelSubset) -> Bank {
        Bank { height, width, channels, images: Vec::new() }
    }

    /// A bank from its images (each `(id, [d][n_patches] 3x3 means)`), as a partial file stored it.
    pub fn from_parts(
        height: usize,
        width: usize,
        channels: ChannelSubset,
        mut images: Vec<(u32, Vec<f32>)>,
    ) -> Result<Bank, BankError> {
        let expected = channels.len() * height * width;
        if let Some((_, values)) = images.iter().find(|(_, v)| v.len() != expected) {
            return Err(BankError::Shape { n_images: 1, expected, got: values.len() });
        }
        images.sort_unstable_by_key(|(id, _)| *id);
        if let Some(pair) = images.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(BankError::Duplicate { image: pair[0].0 });
        }
        Ok(Bank { height, width, channels, images })
    }

    pub fn n_patches(&self) -> usize {
        self.height * self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// The images, ascending by id, each with its 3x3 means `[d][n_patches]`.
    pub fn images(&self) -> impl Iterator<Item = (u32, &[f32])> + '_ {
        self.images.iter().map(|(id, values)| (*id, values.as_slice()))
    }

    /// Bytes of the bank's values.
    pub fn bytes(&self) -> u64 {
        (self.images.len() * self.channels.len() * self.n_patches() * 4) as u64
    }

    pub fn channels(&self) -> &ChannelSubset {
        &self.channels
    }

    /// Image ids in the bank, ascending.
    pub fn image_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.images.iter().map(|(id, _)| *id)
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Adds a batch: `values` is `[image_ids.len(), d, n_patches]` in C order (the bank's channels, in
    /// order). A non-finite value or an image already in the bank is an error; the bank is then
    /// unchanged.
    pub fn update(&mut self, image_ids: &[u32], values: &[f32]) -> Result<(), BankError> {
        let (n, d, n_patches) = (image_ids.len(), self.channels.len(), self.n_patches());
        let expected = n * d * n_patches;
        if values.len() != expected {
            return Err(BankError::Shape { n_images: n, expected, got: values.len() });
        }
        if let Some(position) = values.iter().position(|v| !v.is_finite()) {
            return Err(BankError::NonFinite {
                image: image_ids[position / (d * n_patches)],
                channel: self.channels.channels()[(position / n_patches) % d],
                patch: position % n_patches,
            });
        }
        let mut ids: Vec<u32> = image_ids.to_vec();
        ids.sort_unstable();
        if let Some(pair) = ids.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(BankError::Duplicate { image: pair[0] });
        }
        if let Some(&image) = ids.iter().find(|&&id| self.images.binary_search_by_key(&id, |(i, _)| *i).is_ok()) {
            return Err(BankError::Duplicate { image });
        }
        if d * n_patches == 0 {
            return Ok(());
        }
        let averaged = mean_3x3(values, self.height, self.width);
        self.images.extend(image_ids.iter().copied().zip(averaged.chunks_exact(d * n_patches).map(<[f32]>::to_vec)));
        self.images.sort_unstable_by_key(|(id, _)| *id);
        Ok(())
    }

    /// Merges another shard's bank over the same grid and channels into this one.
    pub fn merge(&mut self, other: Bank) -> Result<(), BankError> {
        if (self.height, self.width, &self.channels) != (other.height, other.width, &other.channels) {
            return Err(BankError::Incompatible(format!(
                "{}x{} grid, {} channels vs {}x{}, {}",
                self.height,
                self.width,
                self.channels.len(),
                other.height,
                other.width,
                other.channels.len()
            )));
        }
        if let Some(image) = other.image_ids().find(|id| self.images.binary_search_by_key(id, |(i, _)| *i).is_ok()) {
            return Err(BankError::Duplicate { image });
        }
        self.images.extend(other.images);
        self.images.sort_unstable_by_key(|(id, _)| *id);
        Ok(())
    }

    /// The bank of `subset` (within the bank's channels) laid out for scoring:
    /// `[n_patches][n_images][subset.len()]`, images in id order. `None` if the subset is not within.
    pub fn patch_major(&self, subset: &ChannelSubset) -> Option<Vec<f32>> {
        let positions = subset.positions_in(&self.channels)?;
        let (t, k, n_patches) = (self.images.len(), positions.len(), self.n_patches());
        let mut out = vec![0f32; n_patches * t * k];
        for (image, (_, values)) in self.images.iter().enumerate() {
            for (c, &position) in positions.iter().enumerate() {
                let row = &values[position * n_patches..][..n_patches];
                for (patch, &value) in row.iter().enumerate() {
                    out[(patch * t + image) * k + c] = value;
                }
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn subset(channels: &[usize]) -> ChannelSubset {
        ChannelSubset::explicit(channels.to_vec(), 100).unwrap()
    }

    #[test]
    fn mean_3x3_averages_the_cells_inside_the_grid() {
        // One 2x3 grid: 1 2 3 / 4 5 6. A corner averages its 4 cells, an edge cell its 6.
        let out = mean_3x3(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3);
        assert_eq!(out, vec![3.0, 3.5, 4.0, 3.0, 3.5, 4.0]);
        // A single cell is its own mean; a constant grid stays constant.
        assert_eq!(mean_3x3(&[7.5], 1, 1), vec![7.5]);
        assert!(mean_3x3(&[2.0; 20], 4, 5).iter().all(|&v| v == 2.0));
    }

    #[test]
    fn update_rejects_duplicates_and_bad_values_unchanged() {
        let mut bank = Bank::new(1, 2, subset(&[0]));
        bank.update(&[4], &[1.0, 2.0]).unwrap();
        let before = bank.clone();
        assert_eq!(bank.update(&[4], &[1.0, 2.0]), Err(BankError::Duplicate { image: 4 }));
        assert_eq!(bank.update(&[5, 5], &[1.0, 2.0, 1.0, 2.0]), Err(BankError::Duplicate { image: 5 }));
        assert_eq!(bank.update(&[6], &[1.0, f32::NAN]), Err(BankError::NonFinite { image: 6, channel: 0, patch: 1 }));
        assert!(matches!(bank.update(&[6], &[1.0]), Err(BankError::Shape { expected: 2, got: 1, .. })));
        assert_eq!(bank, before);
        let other = Bank::new(2, 1, subset(&[0]));
        assert!(matches!(bank.merge(other), Err(BankError::Incompatible(_))));
    }

    proptest! {
        /// Any split of the images into shards, merged in any order, gives the bank of one pass, and
        /// its patch-major layout holds each image's 3x3 mean at each position.
        #[test]
        fn sharded_banks_merge_into_the_one_pass_bank(
            (height, width, n) in (1usize..4, 1usize..4, 1usize..7),
            cut in 0usize..7,
            seed in any::<u64>(),
        ) {
            let d = 3;
            let n_patches = height * width;
            let mut state = seed | 1;
            let mut next = || { state ^= state << 13; state ^= state >> 7; state ^= state << 17; (state % 1000) as f32 / 100.0 - 5.0 };
            let values: Vec<f32> = (0..n * d * n_patches).map(|_| next()).collect();
            let ids: Vec<u32> = (0..n as u32).map(|i| 10 * i + 3).rev().collect();
            let mut whole = Bank::new(height, width, subset(&[1, 4, 7]));
            whole.update(&ids, &values).unwrap();
            let cut = cut.min(n);
            let per_image = d * n_patches;
            let mut first = Bank::new(height, width, subset(&[1, 4, 7]));
            first.update(&ids[..cut], &values[..cut * per_image]).unwrap();
            let mut second = Bank::new(height, width, subset(&[1, 4, 7]));
            second.update(&ids[cut..], &values[cut * per_image..]).unwrap();
            second.merge(first).unwrap();
            prop_assert_eq!(&second, &whole);
            prop_assert!(whole.image_ids().collect::<Vec<_>>().windows(2).all(|p| p[0] < p[1]));

            // Channels 1 and 7 of the bank's 1, 4, 7.
            let laid = whole.patch_major(&subset(&[1, 7])).unwrap();
            let averaged = mean_3x3(&values, height, width);
            for (rank, id) in whole.image_ids().enumerate() {
                let source = ids.iter().position(|&i| i == id).unwrap();
                for patch in 0..n_patches {
                    for (c, position) in [0usize, 2].into_iter().enumerate() {
                        let expected = averaged[(source * d + position) * n_patches + patch];
                        prop_assert_eq!(laid[(patch * n + rank) * 2 + c], expected);
                    }
                }
            }
            prop_assert!(whole.patch_major(&subset(&[2])).is_none());
        }
    }
}
