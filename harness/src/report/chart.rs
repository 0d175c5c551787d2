//! The report's charts, drawn with plotters onto any backend: SVG for the HTML report and
//! the standalone files, PNG (bitmap) on request. A chart is a plain description
//! ([`Chart`]) so the same data draws identically on both backends and tests can check it.
//!
//! Text needs a font on the bitmap backend. Rather than depend on whatever fonts a machine
//! has (a CI runner often has none), DejaVu Sans is compiled in (the `dejavu` crate) and
//! registered as plotters' `sans-serif`; SVG output only names the family, and the browser
//! draws it with its own fonts.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use zonebench_agent::units::{format_bps, format_ns};

const FONT: &str = "sans-serif";

/// The palette of series: colour-blind-safe (Okabe-Ito), in order of use.
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(120, 120, 120),
    RGBColor(240, 228, 66),
];

/// How axis values and cell values are written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Units {
    Ns,
    Bps,
    /// A plain number with a unit suffix (`tx/s`, `services`).
    Plain(&'static str),
    /// 0..1 shown as a percentage.
    Fraction,
    Usd,
    /// Seconds since the Unix epoch, shown as a UTC date.
    Time,
}

impl Units {
    pub fn format(self, v: f64) -> String {
        match self {
            Units::Ns => format_ns(v),
            Units::Bps => format_bps(v),
            Units::Plain("") => trim_number(v),
            Units::Plain(u) => format!("{} {u}", trim_number(v)),
            Units::Fraction => format!("{:.0} %", v * 100.0),
            Units::Usd => {
                if v.abs() >= 1.0 {
                    format!("${v:.2}")
                } else {
                    format!("${v:.4}")
                }
            }
            Units::Time => {
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(v.max(0.0));
                let s = humantime::format_rfc3339_seconds(t).to_string();
                // 2026-01-01T02:00:00Z → 01-01 02:00
                s.get(5..16).map(|x| x.replace('T', " ")).unwrap_or(s)
            }
        }
    }
}

fn trim_number(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A zone × zone matrix: rows are client zones, columns server zones.
#[derive(Debug, Clone)]
pub struct Heatmap {
    pub zones: Vec<String>,
    /// `cells[row][col]`.
    pub cells: Vec<Vec<Option<f64>>>,
    pub units: Units,
    /// Latency: dark is slow. Throughput: dark is fast.
    pub higher_is_worse: bool,
}

/// One line of a line chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub color: usize,
    pub dashed: bool,
}

#[derive(Debug, Clone)]
pub struct Lines {
    pub series: Vec<Series>,
    pub x_label: String,
    pub y_label: String,
    pub x_units: Units,
    pub y_units: Units,
    pub log_x: bool,
}

/// Latency against percentile, x on the HdrHistogram "1/(1-p)" log scale.
#[derive(Debug, Clone)]
pub struct Percentiles {
    /// Points are `(percentile 0..1, latency ns)`.
    pub series: Vec<Series>,
}

/// Grouped bars: one group per category, one bar per series.
#[derive(Debug, Clone)]
pub struct Bars {
    pub categories: Vec<String>,
    /// `(label, value per category)`.
    pub series: Vec<(String, Vec<Option<f64>>)>,
    pub y_label: String,
    pub y_units: Units,
    /// A fixed top of the y axis (1.0 for fractions), else from the data.
    pub y_max: Option<f64>,
}

#[derive(Debug, Clone)]
pub enum Kind {
    Heatmap(Heatmap),
    Lines(Lines),
    Percentiles(Percentiles),
    Bars(Bars),
    /// Panels stacked top to bottom under one title, each with its own title.
    Stack(Vec<(String, Kind)>),
}

#[derive(Debug, Clone)]
pub struct Chart {
    /// File stem of the standalone files (`charts/<id>.svg`).
    pub id: String,
    pub title: String,
    pub width: u32,
    pub height: u32,
    pub kind: Kind,
}

#[derive(Debug, thiserror::Error)]
#[error("drawing chart {chart}: {message}")]
pub struct DrawError {
    pub chart: String,
    pub message: String,
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font shipped by the crate; a failure would leave
        // text undrawn on bitmaps, which the PNG tests would catch.
        if plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_err() {
            tracing::warn!("the embedded DejaVu Sans font could not be registered; chart text will be missing");
        }
    });
}

impl Chart {
    /// The chart as an SVG document.
    pub fn to_svg(&self) -> Result<String, DrawError> {
        register_font();
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, (self.width, self.height)).into_drawing_area();
            self.draw(&root)?;
            root.present().map_err(|e| self.err(e))?;
        }
        Ok(out)
    }

    /// The chart as a PNG file.
    pub fn write_png(&self, path: &Path) -> Result<(), DrawError> {
        register_font();
        let root = BitMapBackend::new(path, (self.width, self.height)).into_drawing_area();
        self.draw(&root)?;
        root.present().map_err(|e| self.err(e))?;
        Ok(())
    }

    fn err(&self, e: impl std::fmt::Display) -> DrawError {
        DrawError { chart: self.id.clone(), message: e.to_string() }
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawError> {
        root.fill(&WHITE).map_err(|e| self.err(e))?;
        draw_kind(root, &self.title, &self.kind).map_err(|e| self.err(e))
    }
}

fn draw_kind<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, title: &str, kind: &Kind) -> DrawResult<DB> {
    match kind {
        Kind::Heatmap(h) => draw_heatmap(root, title, h),
        Kind::Lines(l) => draw_lines(root, title, l),
        Kind::Percentiles(p) => draw_percentiles(root, title, p),
        Kind::Bars(b) => draw_bars(root, title, b),
        Kind::Stack(panels) => {
            let inner = root.titled(title, (FONT, 20))?;
            for (area, (t, k)) in inner.split_evenly((panels.len().max(1), 1)).iter().zip(panels) {
                draw_kind(area, t, k)?;
            }
            Ok(())
        }
    }
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Light to dark: a sequential colour for `t` in 0..1.
fn ramp(t: f64, dark_is_bad: bool) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    // Latency: pale yellow → deep red. Throughput: pale → deep blue.
    let (lo, hi) = if dark_is_bad {
        ((255.0, 245.0, 200.0), (189.0, 0.0, 38.0))
    } else {
        ((240.0, 249.0, 255.0), (8.0, 69.0, 148.0))
    };
    let mix = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(mix(lo.0, hi.0), mix(lo.1, hi.1), mix(lo.2, hi.2))
}

fn draw_heatmap<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, title: &str, h: &Heatmap) -> DrawResult<DB> {
    let n = h.zones.len().max(1) as u32;
    let values: Vec<f64> = h.cells.iter().flatten().flatten().copied().collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        // Integer ranges are inclusive in plotters: 0..n-1 makes n segments.
        .build_cartesian_2d((0..n - 1).into_segmented(), (0..n - 1).into_segmented())?;
    // Row 0 (the first client zone) at the top: y = n - 1 - row.
    let zone_x = |v: &SegmentValue<u32>| match v {
        SegmentValue::CenterOf(i) => h.zones.get(*i as usize).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    let zone_y = |v: &SegmentValue<u32>| match v {
        SegmentValue::CenterOf(i) if *i < n => h.zones.get((n - 1 - *i) as usize).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(n as usize)
        .y_labels(n as usize)
        .x_label_formatter(&zone_x)
        .y_label_formatter(&zone_y)
        .x_desc("server zone (answered)")
        .y_desc("client zone")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 13))
        .draw()?;
    for (row, cells) in h.cells.iter().enumerate() {
        for (col, v) in cells.iter().enumerate() {
            let (x, y) = (col as u32, n - 1 - row as u32);
            // Colour by ratio to the smallest cell, on a log scale spanning at least 2×, so
            // cells within a few percent look alike and a zone boundary that doubles latency
            // stands out.
            let t = match v {
                Some(v) if lo > 0.0 && *v > 0.0 => (v / lo).ln() / (hi / lo).ln().max(2f64.ln()),
                _ => 0.0,
            };
            let fill = if v.is_some() { ramp(t, h.higher_is_worse) } else { RGBColor(235, 235, 235) };
            chart.draw_series(std::iter::once(Rectangle::new(
                [
                    (SegmentValue::Exact(x), SegmentValue::Exact(y)),
                    (SegmentValue::Exact(x + 1), SegmentValue::Exact(y + 1)),
                ],
                fill.filled(),
            )))?;
            chart.draw_series(std::iter::once(Rectangle::new(
                [
                    (SegmentValue::Exact(x), SegmentValue::Exact(y)),
                    (SegmentValue::Exact(x + 1), SegmentValue::Exact(y + 1)),
                ],
                WHITE.stroke_width(2),
            )))?;
            let label = v.map_or_else(|| "–".to_string(), |v| h.units.format(v));
            let ink = if v.is_some() && t > 0.55 { WHITE } else { BLACK };
            let style = TextStyle::from((FONT, 15).into_font()).color(&ink).pos(Pos::new(HPos::Center, VPos::Center));
            chart.draw_series(std::iter::once(Text::new(
                label,
                (SegmentValue::CenterOf(x), SegmentValue::CenterOf(y)),
                style,
            )))?;
        }
    }
    Ok(())
}

fn bounds(points: impl Iterator<Item = (f64, f64)>) -> ((f64, f64), (f64, f64)) {
    let mut xr = (f64::INFINITY, f64::NEG_INFINITY);
    let mut yr = (f64::INFINITY, f64::NEG_INFINITY);
    for (x, y) in points {
        xr = (xr.0.min(x), xr.1.max(x));
        yr = (yr.0.min(y), yr.1.max(y));
    }
    if !xr.0.is_finite() {
        return ((0.0, 1.0), (0.0, 1.0));
    }
    if xr.0 == xr.1 {
        xr = (xr.0 - 0.5 * xr.0.abs().max(1.0), xr.1 + 0.5 * xr.1.abs().max(1.0));
    }
    if yr.0 == yr.1 {
        yr.1 = yr.0 + yr.0.abs().max(1.0);
    }
    (xr, yr)
}

fn series_style(s: &Series) -> ShapeStyle {
    PALETTE[s.color % PALETTE.len()].stroke_width(2)
}

fn draw_legend<
    'a,
    DB: DrawingBackend + 'a,
    X: plotters::coord::ranged1d::Ranged,
    Y: plotters::coord::ranged1d::Ranged,
>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
) -> DrawResult<DB> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font((FONT, 13))
        .draw()
}

fn draw_lines<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, title: &str, l: &Lines) -> DrawResult<DB> {
    let ((x0, x1), (_, y1)) = bounds(l.series.iter().flat_map(|s| s.points.iter().copied()));
    let y_top = y1 * 1.1;
    let mut builder = ChartBuilder::on(root);
    builder.caption(title, (FONT, 18)).margin(12).margin_right(36).x_label_area_size(45).y_label_area_size(80);
    let x_fmt = |v: &f64| l.x_units.format(*v);
    let y_fmt = |v: &f64| l.y_units.format(*v);
    macro_rules! body {
        ($chart:ident) => {{
            $chart
                .configure_mesh()
                .x_desc(l.x_label.as_str())
                .y_desc(l.y_label.as_str())
                .x_label_formatter(&x_fmt)
                .y_label_formatter(&y_fmt)
                .x_labels(8)
                .label_style((FONT, 13))
                .axis_desc_style((FONT, 13))
                .light_line_style(BLACK.mix(0.05))
                .draw()?;
            for s in &l.series {
                let style = series_style(s);
                let pts = s.points.clone();
                let anno = if s.dashed {
                    $chart.draw_series(DashedLineSeries::new(pts.clone(), 6, 4, style))?
                } else {
                    $chart.draw_series(LineSeries::new(pts.clone(), style))?
                };
                anno.label(s.label.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
                $chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, style.filled())))?;
            }
            draw_legend(&mut $chart)?;
        }};
    }
    if l.log_x && x0 > 0.0 {
        let mut chart = builder.build_cartesian_2d((x0 / 1.5..x1 * 1.5).log_scale(), 0.0..y_top)?;
        body!(chart);
    } else {
        let pad = (x1 - x0) * 0.03;
        let mut chart = builder.build_cartesian_2d(x0 - pad..x1 + pad, 0.0..y_top)?;
        body!(chart);
    }
    Ok(())
}

/// `1/(1-p)`, the x coordinate of percentile `p` (HdrHistogram's plot).
pub fn percentile_x(p: f64) -> f64 {
    1.0 / (1.0 - p.min(0.999_999_9))
}

fn percentile_label(x: f64) -> String {
    let p = (1.0 - 1.0 / x) * 100.0;
    let s = format!("{p:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

fn draw_percentiles<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, title: &str, p: &Percentiles) -> DrawResult<DB> {
    let pts = p.series.iter().flat_map(|s| s.points.iter().map(|&(q, v)| (percentile_x(q), v)));
    let ((_, x1), (y0, y1)) = bounds(pts);
    let x_max = 10f64.powf(x1.max(10.0).log10().ceil());
    let mut builder = ChartBuilder::on(root);
    builder.caption(title, (FONT, 18)).margin(12).margin_right(36).x_label_area_size(45).y_label_area_size(80);
    // Latency tails run orders of magnitude past the median; a log axis keeps the body of
    // the distribution (where same and cross zone differ) readable.
    if y0 > 0.0 && y1 / y0 > 10.0 {
        let mut chart = builder.build_cartesian_2d((1.0..x_max).log_scale(), (y0 / 1.2..y1 * 1.2).log_scale())?;
        percentile_body(&mut chart, p)
    } else {
        let mut chart = builder.build_cartesian_2d((1.0..x_max).log_scale(), 0.0..y1 * 1.1)?;
        percentile_body(&mut chart, p)
    }
}

fn percentile_body<
    'a,
    DB: DrawingBackend + 'a,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<plotters::coord::combinators::LogCoord<f64>, Y>>,
    p: &Percentiles,
) -> DrawResult<DB> {
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency")
        .x_label_formatter(&|v| percentile_label(*v))
        .y_label_formatter(&|v| format_ns(*v))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 13))
        .light_line_style(BLACK.mix(0.05))
        .draw()?;
    for s in &p.series {
        let style = series_style(s);
        let pts: Vec<(f64, f64)> = s.points.iter().map(|&(q, v)| (percentile_x(q), v)).collect();
        let anno = if s.dashed {
            chart.draw_series(DashedLineSeries::new(pts, 6, 4, style))?
        } else {
            chart.draw_series(LineSeries::new(pts, style))?
        };
        anno.label(s.label.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    }
    draw_legend(chart)
}

fn draw_bars<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, title: &str, b: &Bars) -> DrawResult<DB> {
    let n = b.categories.len().max(1) as f64;
    let data_max = b.series.iter().flat_map(|(_, v)| v.iter().flatten()).copied().fold(0.0f64, f64::max);
    let y_top = b.y_max.unwrap_or(if data_max > 0.0 { data_max * 1.15 } else { 1.0 });
    // With several series the legend sits right of the bars, in a margin of its own.
    let legend_w: u32 = if b.series.len() > 1 { 130 } else { 0 };
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 18))
        .margin(12)
        .margin_right(12 + legend_w)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..n, 0.0..y_top)?;
    let y_fmt = |v: &f64| b.y_units.format(*v);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(b.y_label.as_str())
        .y_label_formatter(&y_fmt)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 13))
        .light_line_style(BLACK.mix(0.05))
        .draw()?;
    let k = b.series.len().max(1) as f64;
    let width = 0.8 / k;
    for (si, (_, values)) in b.series.iter().enumerate() {
        let color = PALETTE[si % PALETTE.len()];
        let bars = values.iter().enumerate().filter_map(|(ci, v)| {
            let v = (*v)?;
            let x0 = ci as f64 + 0.1 + si as f64 * width;
            Some(Rectangle::new([(x0, 0.0), (x0 + width * 0.92, v)], color.filled()))
        });
        chart.draw_series(bars)?;
        // The value above each bar.
        let texts = values.iter().enumerate().filter_map(|(ci, v)| {
            let v = (*v)?;
            let x = ci as f64 + 0.1 + (si as f64 + 0.46) * width;
            let style = TextStyle::from((FONT, 11).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
            Some(Text::new(b.y_units.format(v), (x, v), style))
        });
        chart.draw_series(texts)?;
    }
    // Category names under their groups.
    let names = b.categories.iter().enumerate().map(|(ci, name)| {
        let style = TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
        EmptyElement::at((ci as f64 + 0.5, 0.0)) + Text::new(name.clone(), (0, 8), style)
    });
    chart.draw_series(names)?;
    if b.series.len() > 1 {
        // The legend goes in the right margin, drawn on the whole area: the plotting area
        // clips what lies outside it.
        let (xr, yr) = chart.plotting_area().get_pixel_range();
        let base = root.get_base_pixel();
        let x0 = xr.end - base.0 + 14;
        let mut y = yr.start - base.1 + 6;
        for (si, (label, _)) in b.series.iter().enumerate() {
            let color = PALETTE[si % PALETTE.len()];
            root.draw(&Rectangle::new([(x0, y), (x0 + 12, y + 12)], color.filled()))?;
            let style = TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
            root.draw(&Text::new(label.clone(), (x0 + 18, y + 6), style))?;
            y += 20;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_positions_follow_the_one_over_one_minus_p_scale() {
        assert_eq!(percentile_x(0.0), 1.0);
        assert!((percentile_x(0.99) - 100.0).abs() < 1e-9);
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(2.0), "50%");
    }

    #[test]
    fn units_format_as_people_read_them() {
        assert_eq!(Units::Fraction.format(0.955), "96 %");
        assert_eq!(Units::Plain("services").format(10000.0), "10.0k services");
        assert_eq!(Units::Time.format(1_767_232_800.0), "01-01 02:00");
    }
}
