//! PNG charts of benchmark results, drawn with plotters' bitmap backend and the DejaVu font
//! embedded in the binary, so plotting needs no system font or graphics library.
//!
//! A figure is a grid of [`Panel`]s; each panel has its own axes (linear or logarithmic)
//! and a legend naming its [`Series`].

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::Context;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Points joined by a line, in the order given.
    Line,
    /// Points only (a scatter).
    Points,
}

/// One named set of points.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub mark: Mark,
}

impl Series {
    pub fn line(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
            mark: Mark::Line,
        }
    }

    pub fn points(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
            mark: Mark::Points,
        }
    }
}

/// One chart of a figure.
#[derive(Debug, Clone, Default)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    pub series: Vec<Series>,
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(127, 127, 127),
];

const PANEL_SIZE: (u32, u32) = (560, 400);
const FONT: &str = "sans-serif";

/// The PNG written beside a JSON report: the same path with the extension `png`.
pub fn png_beside(json: &Path) -> PathBuf {
    json.with_extension("png")
}

/// Draws `panels` in a grid `columns` wide under `title` and writes it to `path` as PNG.
pub fn write_png(path: &Path, title: &str, panels: &[Panel], columns: usize) -> anyhow::Result<()> {
    anyhow::ensure!(!panels.is_empty(), "a figure needs at least one panel");
    register_embedded_font()?;
    let columns = columns.clamp(1, panels.len());
    let rows = panels.len().div_ceil(columns);
    let size = (
        PANEL_SIZE.0 * columns as u32,
        PANEL_SIZE.1 * rows as u32 + 40,
    );
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let root = root
        .titled(title, (FONT, 24).into_font())
        .map_err(plot_error)?;
    for (area, panel) in root.split_evenly((rows, columns)).iter().zip(panels) {
        draw_panel(area, panel).with_context(|| format!("panel '{}'", panel.title))?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

fn register_embedded_font() -> anyhow::Result<()> {
    static REGISTER: Once = Once::new();
    let mut result = Ok(());
    REGISTER.call_once(|| {
        result = register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| anyhow::anyhow!("the embedded DejaVu Sans font does not parse"));
    });
    result
}

fn plot_error<E: std::fmt::Display>(error: E) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the plot: {error}")
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
) -> anyhow::Result<()> {
    let x = axis_range(panel, |p| p.0, panel.log_x);
    let y = axis_range(panel, |p| p.1, panel.log_y);
    match (panel.log_x, panel.log_y) {
        (false, false) => draw_on(area, panel, x, y),
        (true, false) => draw_on(area, panel, x.log_scale(), y),
        (false, true) => draw_on(area, panel, x, y.log_scale()),
        (true, true) => draw_on(area, panel, x.log_scale(), y.log_scale()),
    }
}

/// The range of one axis over all points: padded, from zero for a linear axis whose values
/// are all positive, and over positive values only for a logarithmic one.
fn axis_range(panel: &Panel, coordinate: fn(&(f64, f64)) -> f64, log: bool) -> Range<f64> {
    let values = panel
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(coordinate))
        .filter(|v| v.is_finite() && (!log || *v > 0.0));
    let (low, high) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if low > high {
        return if log { 1.0..10.0 } else { 0.0..1.0 };
    }
    if log {
        (low / 1.5)..(high * 1.5)
    } else {
        let low = low.min(0.0);
        let span = (high - low).max(f64::EPSILON);
        low..(high + 0.08 * span)
    }
}

fn draw_on<DB, X, Y>(area: &DrawingArea<DB, Shift>, panel: &Panel, x: X, y: Y) -> anyhow::Result<()>
where
    DB: DrawingBackend,
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64> + Ranged<ValueType = f64>,
    Y::CoordDescType: ValueFormatter<f64> + Ranged<ValueType = f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 17))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(&panel.x_label)
        .y_desc(&panel.y_label)
        .x_label_formatter(&|v| tick_label(*v))
        .y_label_formatter(&|v| tick_label(*v))
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 14))
        .draw()
        .map_err(plot_error)?;
    for (index, series) in panel.series.iter().enumerate() {
        let color = PALETTE[index % PALETTE.len()];
        let points: Vec<(f64, f64)> = series
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        if series.mark == Mark::Line {
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(plot_error)?;
        }
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(plot_error)?
            .label(&series.name)
            .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

/// A tick value with at most three significant digits and no float noise: 0.7, 25, 12000.
fn tick_label(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        return format!("{value}");
    }
    let digits = 2 - value.abs().log10().floor() as i32;
    let scale = 10f64.powi(digits);
    let rounded = (value * scale).round() / scale;
    format!("{}", rounded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_figure_is_written_as_a_png_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("figure.png");
        let panel = Panel {
            title: "throughput".into(),
            x_label: "block size (KiB)".into(),
            y_label: "MB/s".into(),
            log_x: true,
            log_y: false,
            series: vec![
                Series::line("a", vec![(64.0, 100.0), (1024.0, 900.0)]),
                Series::points("b", vec![(64.0, 50.0), (4096.0, 700.0)]),
            ],
        };
        write_png(&path, "test figure", &[panel.clone(), panel], 2).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
    }

    #[test]
    fn tick_labels_keep_three_significant_digits() {
        assert_eq!(tick_label(0.7000000000000001), "0.7");
        assert_eq!(tick_label(0.30000000000000004), "0.3");
        assert_eq!(tick_label(12345.0), "12300");
        assert_eq!(tick_label(2.5), "2.5");
        assert_eq!(tick_label(0.0), "0");
    }

    #[test]
    fn the_png_goes_beside_the_json() {
        assert_eq!(
            png_beside(Path::new("out/io.json")),
            PathBuf::from("out/io.png")
        );
    }
}
