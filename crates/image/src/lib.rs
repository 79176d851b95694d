//! Image pre-processing: decode, convert to RGB, resize, centre-crop, normalise.
//!
//! It follows torchvision's `Resize` + `CenterCrop` + `ToTensor` + `Normalize` on PIL images: the
//! resize is a bilinear convolution with antialiasing, as Pillow's, done by `fast_image_resize`
//! (chosen because it reproduces Pillow's filters and is SIMD-accelerated); the crop offset rounds
//! half to even, as Python's `round`. Decoding is by the `image` crate (JPEG by zune-jpeg, PNG 8/16-bit,
//! gray, RGBA, CMYK JPEG). Gray images are replicated to three channels, alpha is dropped, 16-bit
//! samples are scaled to 8 bits, as the ImageNet-trained networks saw 8-bit RGB.
//!
//! Decoding is guarded: the header is read first and an image with more pixels than the configured
//! limit is refused before any pixel buffer is allocated (decompression bombs).

pub mod heatmap;

use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer, images::Image};
use image::{DynamicImage, ImageReader};
use padim_core::config::{AspectPolicy, Preprocess};
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// Why an image file could not be used. Each names the file.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("{path}: cannot read the file: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: the file is empty (0 bytes)")]
    Empty { path: PathBuf },
    #[error("{path}: not a recognised image format (JPEG, PNG, BMP, TIFF, WebP)")]
    UnknownFormat { path: PathBuf },
    #[error("{path}: cannot decode the image (truncated or corrupt?): {message}")]
    Decode { path: PathBuf, message: String },
    #[error("{path}: the image is {width}x{height}, smaller than the minimum side of {min_side} pixels")]
    TooSmall { path: PathBuf, width: u32, height: u32, min_side: u32 },
    #[error(
        "{path}: the image is {width}x{height} = {pixels} pixels, over the limit of {max_pixels} \
         (preprocess.max-pixels); refused before decoding"
    )]
    TooLarge { path: PathBuf, width: u32, height: u32, pixels: u64, max_pixels: u64 },
}

impl ImageError {
    /// A short machine-readable reason, recorded in the image table for skipped files.
    pub fn reason(&self) -> &'static str {
        match self {
            ImageError::Read { .. } => "unreadable",
            ImageError::Empty { .. } => "empty",
            ImageError::UnknownFormat { .. } => "not-an-image",
            ImageError::Decode { .. } => "corrupt",
            ImageError::TooSmall { .. } => "too-small",
            ImageError::TooLarge { .. } => "too-large",
        }
    }

    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ImageError::Read { path, .. }
            | ImageError::Empty { path }
            | ImageError::UnknownFormat { path }
            | ImageError::Decode { path, .. }
            | ImageError::TooSmall { path, .. }
            | ImageError::TooLarge { path, .. } => path,
        }
    }

    /// The message without the file's path, for places that name the file already (the image
    /// table's row, a table of predictions).
    pub fn detail(&self) -> String {
        let message = self.to_string();
        let prefix = format!("{}: ", self.path().display());
        message.strip_prefix(&prefix).map(str::to_string).unwrap_or(message)
    }
}

/// One pre-processed image: normalised CHW f32 of the crop size, and what was learnt on the way.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub pixels: Vec<f32>,
    pub width: u32,
    pub height: u32,
}

/// Pre-processing with fixed sizes and normalisation.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    settings: Preprocess,
    mean: [f32; 3],
    std: [f32; 3],
}

impl Preprocessor {
    pub fn new(settings: Preprocess, mean: [f32; 3], std: [f32; 3]) -> Preprocessor {
        Preprocessor { settings, mean, std }
    }

    /// Crop size (height, width): the network input.
    pub fn input_size(&self) -> (u32, u32) {
        (self.settings.crop[0], self.settings.crop[1])
    }

    /// Reads and pre-processes a file; `bytes` are returned for checksums.
    pub fn load(&self, path: &Path) -> Result<(Prepared, Vec<u8>), ImageError> {
        let bytes =
            std::fs::read(path).map_err(|e| ImageError::Read { path: path.to_path_buf(), message: e.to_string() })?;
        let prepared = self.prepare(path, &bytes)?;
        Ok((prepared, bytes))
    }

    /// Pre-processes encoded image bytes; `path` only names the image in errors.
    pub fn prepare(&self, path: &Path, bytes: &[u8]) -> Result<Prepared, ImageError> {
        let [crop_h, crop_w] = self.settings.crop;
        let mut pixels = vec![0f32; 3 * crop_h as usize * crop_w as usize];
        let (width, height) = self.prepare_into(path, bytes, &mut pixels)?;
        Ok(Prepared { pixels, width, height })
    }

    /// [`prepare`](Self::prepare) into `out` (3 x crop height x crop width values, a slot of a
    /// batch); returns the decoded image's width and height.
    pub fn prepare_into(&self, path: &Path, bytes: &[u8], out: &mut [f32]) -> Result<(u32, u32), ImageError> {
        let rgb = decode_rgb8(path, bytes, &self.settings)?;
        let (width, height) = (rgb.width(), rgb.height());
        let cropped = self.resize_and_crop(path, rgb)?;
        self.normalize_into(&cropped, out);
        Ok((width, height))
    }

    /// Resized then centre-cropped RGB8 pixels, row-major HWC, of the crop size.
    pub fn resize_and_crop(&self, path: &Path, rgb: image::RgbImage) -> Result<Vec<u8>, ImageError> {
        let (src_w, src_h) = (rgb.width(), rgb.height());
        let (resize_h, resize_w) = resized_size(src_h, src_w, &self.settings);
        let [crop_h, crop_w] = self.settings.crop;
        let src = Image::from_vec_u8(src_w, src_h, rgb.into_raw(), PixelType::U8x3)
            .map_err(|e| ImageError::Decode { path: path.to_path_buf(), message: e.to_string() })?;
        let mut resized = Image::new(resize_w, resize_h, PixelType::U8x3);
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        Resizer::new()
            .resize(&src, &mut resized, &options)
            .map_err(|e| ImageError::Decode { path: path.to_path_buf(), message: e.to_string() })?;
        let top = python_round((resize_h - crop_h) as f64 / 2.0) as usize;
        let left = python_round((resize_w - crop_w) as f64 / 2.0) as usize;
        let row = resize_w as usize * 3;
        let buffer = resized.buffer();
        let mut out = Vec::with_capacity(crop_h as usize * crop_w as usize * 3);
        for y in top..top + crop_h as usize {
            let start = y * row + left * 3;
            out.extend_from_slice(&buffer[start..start + crop_w as usize * 3]);
        }
        Ok(out)
    }

    /// HWC u8 to normalised CHW f32.
    pub fn normalize(&self, hwc: &[u8]) -> Vec<f32> {
        let mut chw = vec![0f32; hwc.len()];
        self.normalize_into(hwc, &mut chw);
        chw
    }

    /// [`normalize`](Self::normalize) into `chw` (as long as `hwc`).
    pub fn normalize_into(&self, hwc: &[u8], chw: &mut [f32]) {
        let n = hwc.len() / 3;
        for c in 0..3 {
            // (v / 255 - mean) / std as one multiply-add, computed in f32 like torchvision.
            let plane = &mut chw[c * n..(c + 1) * n];
            for (out, pixel) in plane.iter_mut().zip(hwc.chunks_exact(3)) {
                *out = (pixel[c] as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
    }
}

/// Size (height, width) after the resize step, before cropping.
pub fn resized_size(height: u32, width: u32, settings: &Preprocess) -> (u32, u32) {
    let [target_h, target_w] = settings.resize;
    match settings.aspect {
        AspectPolicy::Stretch => (target_h, target_w),
        AspectPolicy::ShorterSide => {
            // torchvision: the short side becomes the target, the long side scales and truncates.
            let short_target = target_h.min(target_w) as u64;
            let [crop_h, crop_w] = settings.crop;
            if height <= width {
                let new_w = (short_target * width as u64 / height.max(1) as u64) as u32;
                (short_target as u32, new_w.max(crop_w))
            } else {
                let new_h = (short_target * height as u64 / width.max(1) as u64) as u32;
                (new_h.max(crop_h), short_target as u32)
            }
        }
    }
}

/// Python 3's `round`: halves go to the even neighbour.
fn python_round(value: f64) -> i64 {
    let floor = value.floor();
    let diff = value - floor;
    let floor = floor as i64;
    if diff > 0.5 || (diff == 0.5 && floor % 2 != 0) { floor + 1 } else { floor }
}

/// The width and height of the image file at `path`, from its header alone (no pixel is decoded).
pub fn header_size(path: &Path) -> Result<(u32, u32), ImageError> {
    let path_buf = || path.to_path_buf();
    let reader = ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| ImageError::Read { path: path_buf(), message: e.to_string() })?;
    if reader.format().is_none() {
        return Err(ImageError::UnknownFormat { path: path_buf() });
    }
    reader.into_dimensions().map_err(|e| ImageError::Decode { path: path_buf(), message: e.to_string() })
}

/// Decodes to 8-bit RGB with the size checks of `settings`.
pub fn decode_rgb8(path: &Path, bytes: &[u8], settings: &Preprocess) -> Result<image::RgbImage, ImageError> {
    let path_buf = || path.to_path_buf();
    if bytes.is_empty() {
        return Err(ImageError::Empty { path: path_buf() });
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Read { path: path_buf(), message: e.to_string() })?;
    let format = reader.format();
    if format.is_none() {
        return Err(ImageError::UnknownFormat { path: path_buf() });
    }
    if format == Some(image::ImageFormat::Jpeg) && !jpeg_is_complete(bytes) {
        // The JPEG decoder fills a truncated scan with grey instead of failing; PIL refuses it.
        return Err(ImageError::Decode {
            path: path_buf(),
            message: "the JPEG data ends before its end-of-image marker".into(),
        });
    }
    let (width, height) =
        reader.into_dimensions().map_err(|e| ImageError::Decode { path: path_buf(), message: e.to_string() })?;
    let pixels = width as u64 * height as u64;
    if pixels > settings.max_pixels {
        return Err(ImageError::TooLarge { path: path_buf(), width, height, pixels, max_pixels: settings.max_pixels });
    }
    if width.min(height) < settings.min_side {
        return Err(ImageError::TooSmall { path: path_buf(), width, height, min_side: settings.min_side });
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Read { path: path_buf(), message: e.to_string() })?;
    // A second line of defence: no single allocation beyond the pixel budget at 16-bit RGBA.
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(settings.max_pixels.saturating_mul(8).max(1 << 20));
    reader.limits(limits);
    let image = reader.decode().map_err(|e| ImageError::Decode { path: path_buf(), message: e.to_string() })?;
    Ok(match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

/// Whether a JPEG stream has an end-of-image marker (FF D9) after its last start-of-scan (FF DA).
///
/// Inside entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker, so FF D9
/// after the last scan header is the true end of the image; an embedded EXIF thumbnail's markers come
/// before the main scan. Trailing bytes after the marker are allowed, as decoders ignore them.
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_scan {
        Some(start) => bytes[start..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_jpeg_is_detected() {
        let complete = [0xFF, 0xD8, 0xFF, 0xDA, 1, 2, 0xFF, 0x00, 3, 0xFF, 0xD9, 0, 0];
        assert!(jpeg_is_complete(&complete));
        assert!(!jpeg_is_complete(&complete[..9]));
        // A thumbnail's end marker before the main scan does not count.
        let thumbnail_only = [0xFF, 0xD8, 0xFF, 0xDA, 1, 0xFF, 0xD9, 0xFF, 0xDA, 5, 6];
        assert!(!jpeg_is_complete(&thumbnail_only));
    }

    #[test]
    fn python_round_is_half_to_even() {
        assert_eq!(python_round(16.0), 16);
        assert_eq!(python_round(16.5), 16);
        assert_eq!(python_round(17.5), 18);
        assert_eq!(python_round(2.51), 3);
    }

    #[test]
    fn shorter_side_keeps_aspect() {
        let settings = Preprocess { aspect: AspectPolicy::ShorterSide, ..Preprocess::default() };
        assert_eq!(resized_size(300, 600, &settings), (256, 512));
        assert_eq!(resized_size(601, 300, &settings), (512, 256));
        let stretch = Preprocess::default();
        assert_eq!(resized_size(300, 600, &stretch), (256, 256));
    }

    #[test]
    fn normalisation_is_per_channel() {
        let pre = Preprocessor::new(Preprocess::default(), [0.5, 0.0, 0.25], [0.5, 1.0, 0.25]);
        let chw = pre.normalize(&[255, 0, 51, 0, 255, 102]);
        let expected = [1.0, -1.0, 0.0, 1.0, -0.2, 0.6];
        for (got, want) in chw.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{chw:?}");
        }
    }
}
