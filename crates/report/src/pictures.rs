//! The report's pictures as PNG bytes: score histograms, ROC curves, the confusion matrix and
//! montages of heatmap overlays. Drawn with plotters into memory; text is rendered with ab_glyph
//! from a TrueType font found at run time (Debian's DejaVu Sans, or `PADIM_FONT`).

use crate::metrics::{Confusion, Roc};
use plotters::coord::Shift;
use plotters::element::BitMapElement;
use plotters::prelude::*;
use plotters::style::register_font;
use std::sync::OnceLock;

#[derive(Debug, thiserror::Error)]
pub enum PictureError {
    #[error(
        "no font for the report's pictures (tried {tried}): install Debian's fonts-dejavu-core (`make setup` does) \
         or set PADIM_FONT to a .ttf file"
    )]
    NoFont { tried: String },
    #[error("drawing {what}: {message}")]
    Draw { what: String, message: String },
    #[error("drawing {what}")]
    Png { what: String, source: padim_image::heatmap::PngError },
}

const FONT_CANDIDATES: [&str; 2] =
    ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf"];
/// The font's registration: `Err` with the paths tried.
static FONT: OnceLock<Result<(), String>> = OnceLock::new();

/// Registers the font once per process.
pub fn ensure_font() -> Result<(), PictureError> {
    FONT.get_or_init(|| {
        let mut candidates: Vec<String> = std::env::var("PADIM_FONT").into_iter().collect();
        candidates.extend(FONT_CANDIDATES.iter().map(|s| s.to_string()));
        for path in &candidates {
            if let Ok(bytes) = std::fs::read(path) {
                // plotters keeps fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(candidates.join(", "))
    })
    .clone()
    .map_err(|tried| PictureError::NoFont { tried })
}

fn draw_error(what: &str) -> impl Fn(String) -> PictureError + '_ {
    move |message| PictureError::Draw { what: what.to_string(), message }
}

/// Renders `draw` on a white `width x height` canvas and encodes it as PNG.
pub(crate) fn render(
    what: &str,
    (width, height): (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> Result<(), String>,
) -> Result<Vec<u8>, PictureError> {
    ensure_font()?;
    let mut buffer = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string()).map_err(draw_error(what))?;
        draw(&root).map_err(draw_error(what))?;
        root.present().map_err(|e| e.to_string()).map_err(draw_error(what))?;
    }
    encode_png(width, height, buffer).map_err(|source| PictureError::Png { what: what.to_string(), source })
}

pub use padim_image::heatmap::{encode_png, overlay};

const NORMAL_COLOR: RGBColor = RGBColor(31, 119, 180);
const ANOMALY_COLOR: RGBColor = RGBColor(214, 39, 40);

/// Histograms of normalised scores per class, one panel per `(title, scores, anomalous)`, with the
/// threshold as a vertical line.
pub fn histograms(
    panels: &[(&str, &[f64], &[bool])],
    threshold: f64,
    score_name: &str,
) -> Result<Vec<u8>, PictureError> {
    let width = 520 * panels.len() as u32;
    render("score histograms", (width, 400), |root| {
        let areas = root.split_evenly((1, panels.len()));
        for ((title, scores, anomalous), area) in panels.iter().zip(areas) {
            // The range of the data and the threshold, with a margin (normalised test scores may
            // leave [0, 1]).
            let max = scores.iter().copied().fold(threshold, f64::max);
            let min = scores.iter().copied().fold(threshold, f64::min);
            let margin = ((max - min) * 0.05).max(1e-6);
            let (lo, hi) = (min - margin, max + margin);
            let bins = 40usize;
            let width = (hi - lo) / bins as f64;
            let count = |anomaly: bool| {
                let mut counts = vec![0usize; bins];
                for (&s, &a) in scores.iter().zip(anomalous.iter()) {
                    if a == anomaly {
                        counts[(((s - lo) / width) as usize).min(bins - 1)] += 1;
                    }
                }
                counts
            };
            let (normal, anomaly) = (count(false), count(true));
            let top = normal.iter().chain(&anomaly).copied().max().unwrap_or(1) as f64 * 1.1;
            let mut chart = ChartBuilder::on(&area)
                .caption(*title, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(45)
                .build_cartesian_2d(lo..hi, 0f64..top)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc(format!("normalised {score_name} score"))
                .y_desc("images")
                .y_label_formatter(&|v| format!("{v:.0}"))
                .draw()
                .map_err(|e| e.to_string())?;
            for (counts, color, label) in [(&normal, NORMAL_COLOR, "normal"), (&anomaly, ANOMALY_COLOR, "anomalous")] {
                chart
                    .draw_series(counts.iter().enumerate().map(|(i, &c)| {
                        let x0 = lo + i as f64 * width;
                        Rectangle::new([(x0, 0.0), (x0 + width, c as f64)], color.mix(0.5).filled())
                    }))
                    .map_err(|e| e.to_string())?
                    .label(label)
                    .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.mix(0.5).filled()));
            }
            chart
                .draw_series(LineSeries::new([(threshold, 0.0), (threshold, top)], BLACK.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(format!("threshold {threshold:.3}"))
                .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], BLACK.stroke_width(2)));
            legend(&mut chart, SeriesLabelPosition::MiddleRight)?;
        }
        Ok(())
    })
}

/// ROC curves with their operating points, the false-positive rate on a logarithmic axis: good
/// models differ at low false-positive rates, which a linear axis crowds into its left edge. Points
/// at a false-positive rate of 0 sit at the axis' left end, half the smallest rate any curve reaches
/// (one normal image in the largest split).
pub fn roc_curves(curves: &[(&str, &Roc, usize)]) -> Result<Vec<u8>, PictureError> {
    let colors = [NORMAL_COLOR, ANOMALY_COLOR, RGBColor(44, 160, 44), RGBColor(148, 103, 189)];
    let floor = log_axis_floor(curves.iter().flat_map(|(_, roc, _)| roc.fpr.iter().copied()));
    render("ROC curves", (520, 520), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("ROC (false-positive rate on a log scale)", ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((floor..1.0).log_scale(), 0f64..1.0)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(format!("false-positive rate (0 drawn at {floor:.0e})"))
            .y_desc("true-positive rate")
            .x_label_formatter(&|x| format!("{x:.0e}"))
            .draw()
            .map_err(|e| e.to_string())?;
        // Chance (TPR = FPR) is a curve on this axis.
        let chance = (0..=100).map(|i| floor * (1.0 / floor).powf(i as f64 / 100.0)).map(|x| (x, x));
        chart.draw_series(LineSeries::new(chance, BLACK.mix(0.3))).map_err(|e| e.to_string())?;
        for ((name, roc, point), color) in curves.iter().zip(colors.iter().cycle()) {
            let color = *color;
            chart
                .draw_series(LineSeries::new(
                    roc.fpr.iter().map(|&x| x.max(floor)).zip(roc.tpr.iter().copied()),
                    color.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(format!("{name}: AUC {:.4}", roc.auc()))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 12, y)], color.stroke_width(2)));
            chart
                .draw_series([Circle::new((roc.fpr[*point].max(floor), roc.tpr[*point]), 5, color.filled())])
                .map_err(|e| e.to_string())?;
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)
    })
}

/// The left end of a logarithmic false-positive axis: half the smallest positive rate (1e-3 when
/// no rate is positive).
pub(crate) fn log_axis_floor(rates: impl Iterator<Item = f64>) -> f64 {
    let smallest = rates.filter(|&r| r > 0.0).fold(f64::INFINITY, f64::min);
    if smallest.is_finite() { smallest / 2.0 } else { 1e-3 }
}

/// Draws the labelled series' legend at `position`, in the report's one style.
pub(crate) fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}

/// The 2x2 confusion matrix with counts and row percentages.
pub fn confusion_matrix(c: &Confusion, title: &str) -> Result<Vec<u8>, PictureError> {
    render("confusion matrix", (460, 420), |root| {
        root.draw(&Text::new(title.to_string(), (20, 12), ("sans-serif", 18))).map_err(|e| e.to_string())?;
        let cells = [
            ("true normal", "predicted normal", c.tn, c.tn + c.fp, true),
            ("true normal", "predicted anomalous", c.fp, c.tn + c.fp, false),
            ("true anomalous", "predicted normal", c.fn_, c.fn_ + c.tp, false),
            ("true anomalous", "predicted anomalous", c.tp, c.fn_ + c.tp, true),
        ];
        let (x0, y0, size) = (130i32, 60i32, 150i32);
        for (i, (row, column, count, total, correct)) in cells.iter().enumerate() {
            let (r, col) = ((i / 2) as i32, (i % 2) as i32);
            let share = if *total == 0 { 0.0 } else { *count as f64 / *total as f64 };
            let base = if *correct { RGBColor(44, 160, 44) } else { ANOMALY_COLOR };
            let corner = (x0 + col * size, y0 + r * size);
            root.draw(&Rectangle::new(
                [corner, (corner.0 + size, corner.1 + size)],
                base.mix(0.15 + 0.7 * share).filled(),
            ))
            .map_err(|e| e.to_string())?;
            root.draw(&Rectangle::new([corner, (corner.0 + size, corner.1 + size)], BLACK))
                .map_err(|e| e.to_string())?;
            let text = format!("{count}");
            root.draw(&Text::new(text, (corner.0 + 50, corner.1 + 55), ("sans-serif", 26)))
                .map_err(|e| e.to_string())?;
            root.draw(&Text::new(format!("{:.1}%", 100.0 * share), (corner.0 + 50, corner.1 + 90), ("sans-serif", 16)))
                .map_err(|e| e.to_string())?;
            if r == 0 {
                root.draw(&Text::new(column.to_string(), (corner.0 + 5, y0 + 2 * size + 10), ("sans-serif", 14)))
                    .map_err(|e| e.to_string())?;
            }
            if col == 0 {
                root.draw(&Text::new(row.to_string(), (5, corner.1 + 70), ("sans-serif", 14)))
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    })
}

/// One tile of a montage: an RGB8 picture and its caption.
#[derive(Debug, Clone)]
pub struct Tile {
    pub rgb: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub caption: String,
}

/// Tiles in rows of `columns`, each with its caption underneath, under a title.
pub fn montage(title: &str, tiles: &[Tile], columns: usize) -> Result<Vec<u8>, PictureError> {
    let tile_w = tiles.iter().map(|t| t.width).max().unwrap_or(224);
    let tile_h = tiles.iter().map(|t| t.height).max().unwrap_or(224);
    let columns = columns.max(1).min(tiles.len().max(1));
    let rows = tiles.len().div_ceil(columns).max(1);
    let (pad, caption_h, title_h) = (8u32, 22u32, 36u32);
    let width = columns as u32 * (tile_w + pad) + pad;
    let height = title_h + rows as u32 * (tile_h + caption_h + pad) + pad;
    render(title, (width, height), |root| {
        root.draw(&Text::new(title.to_string(), (pad as i32, 8), ("sans-serif", 20))).map_err(|e| e.to_string())?;
        if tiles.is_empty() {
            root.draw(&Text::new("(none)", (pad as i32, title_h as i32 + 10), ("sans-serif", 16)))
                .map_err(|e| e.to_string())?;
        }
        for (i, tile) in tiles.iter().enumerate() {
            let (r, c) = ((i / columns) as u32, (i % columns) as u32);
            let x = (pad + c * (tile_w + pad)) as i32;
            let y = (title_h + r * (tile_h + caption_h + pad)) as i32;
            let element = BitMapElement::with_owned_buffer((x, y), (tile.width, tile.height), tile.rgb.clone())
                .ok_or_else(|| "tile buffer size".to_string())?;
            root.draw(&element).map_err(|e| e.to_string())?;
            root.draw(&Text::new(tile.caption.clone(), (x, y + tile.height as i32 + 4), ("sans-serif", 13)))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

/// A horizontal colour bar of the overlay's colormap from 0 to `display_max`.
pub fn colorbar(display_max: f64) -> Result<Vec<u8>, PictureError> {
    render("colour bar", (520, 70), |root| {
        for x in 0..480i32 {
            let [r, g, b] = padim_image::heatmap::viridis(x as f64 / 479.0);
            let color = RGBColor(r, g, b);
            root.draw(&Rectangle::new([(20 + x, 10), (21 + x, 35)], color.filled())).map_err(|e| e.to_string())?;
        }
        root.draw(&Text::new("0", (20, 42), ("sans-serif", 14))).map_err(|e| e.to_string())?;
        root.draw(&Text::new(format!("{display_max:.2} (Mahalanobis distance)"), (300, 42), ("sans-serif", 14)))
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use plotters::style::colors::colormaps::ViridisRGB;

    #[test]
    fn the_log_axis_starts_at_half_the_smallest_rate() {
        assert_eq!(super::log_axis_floor([0.0, 0.01, 0.5, 1.0].into_iter()), 0.005);
        assert_eq!(super::log_axis_floor([0.0, 0.0].into_iter()), 1e-3);
    }

    /// The overlays' viridis (padim-image's, which predict uses without plotters) is plotters' own,
    /// on a fine grid of [0, 1], at its control points and outside the range.
    #[test]
    fn heatmap_viridis_is_plotters_viridis() {
        let grid = (0..=100_000).map(|i| i as f64 / 100_000.0);
        let special = [0.0, 1.0, 1.0 / 7.0, 0.5, 6.0 / 7.0, -0.5, 1.5, 1e-12, 1.0 - 1e-12];
        for t in grid.chain(special) {
            let expected = ViridisRGB::get_color(t);
            assert_eq!(padim_image::heatmap::viridis(t), [expected.0, expected.1, expected.2], "t = {t}");
        }
    }
}
