//! Heatmap overlays and PNG encoding, for the report's montages and `padim predict --overlays`:
//! here rather than in the report so that predict draws them without the report's tables and plots.
//!
//! The colour map is viridis as plotters 0.3 defines it (`ViridisRGB`: eight colours from
//! matplotlib's map, interpolated linearly and rounded), so that the report's pictures, which
//! plotters draws, and these overlays share one scale; a test of the report crate checks the two
//! agree on every input.

/// Viridis' control colours, evenly spaced over [0, 1].
const VIRIDIS: [[u8; 3]; 8] = [
    [68, 1, 84],
    [70, 50, 127],
    [54, 92, 141],
    [39, 127, 143],
    [31, 162, 136],
    [74, 194, 110],
    [160, 219, 57],
    [254, 232, 37],
];

/// The viridis colour of `t` (clamped to [0, 1]).
pub fn viridis(t: f64) -> [u8; 3] {
    let position = t.clamp(0.0, 1.0) * (VIRIDIS.len() - 1) as f64;
    let (lower, upper) = (position.floor() as usize, position.ceil() as usize);
    // The weight of the lower colour.
    let weight = position.ceil() - position;
    let mix = |c: usize| ((1.0 - weight) * VIRIDIS[upper][c] as f64 + weight * VIRIDIS[lower][c] as f64).round() as u8;
    [mix(0), mix(1), mix(2)]
}

/// An image with its anomaly map over it: the map (same size) coloured with viridis over the
/// display range `[0, display_max]`, blended at half opacity.
pub fn overlay(rgb: &[u8], map: &[f32], display_max: f64) -> Vec<u8> {
    let mut out = Vec::with_capacity(rgb.len());
    for (pixel, &value) in rgb.chunks_exact(3).zip(map) {
        let color = viridis(value as f64 / display_max);
        for (channel, heat) in pixel.iter().zip(color) {
            out.push(((*channel as f64 + heat as f64) / 2.0).round() as u8);
        }
    }
    out
}

/// Why pixels could not be encoded as PNG.
#[derive(Debug, thiserror::Error)]
pub enum PngError {
    #[error("{len} bytes are not the RGB8 pixels of a {width}x{height} image")]
    Size { width: u32, height: u32, len: usize },
    #[error("cannot encode PNG")]
    Encode(#[source] image::ImageError),
}

/// RGB8 pixels to PNG bytes.
pub fn encode_png(width: u32, height: u32, rgb: Vec<u8>) -> Result<Vec<u8>, PngError> {
    let len = rgb.len();
    let image = image::RgbImage::from_raw(width, height, rgb).ok_or(PngError::Size { width, height, len })?;
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).map_err(PngError::Encode)?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_and_control_points_are_viridis_colours() {
        assert_eq!(viridis(0.0), VIRIDIS[0]);
        assert_eq!(viridis(-3.0), VIRIDIS[0]);
        assert_eq!(viridis(1.0), VIRIDIS[7]);
        assert_eq!(viridis(f64::INFINITY), VIRIDIS[7]);
        assert_eq!(viridis(3.0 / 7.0), VIRIDIS[3]);
        // Halfway between two control colours.
        assert_eq!(viridis(0.5 / 7.0), [69, 26, 106]);
    }

    #[test]
    fn overlay_blends_half_and_half_and_png_decodes() {
        let rgb = vec![0u8, 100, 255, 10, 20, 30];
        let out = overlay(&rgb, &[0.0, 2.0], 1.0);
        assert_eq!(out, vec![34, 51, 170, 132, 126, 34]);
        let png = encode_png(2, 1, out.clone()).unwrap();
        let decoded = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(decoded.into_raw(), out);
        assert!(encode_png(3, 1, out).is_err());
    }
}
