//! Plots (SVG and PNG) of a run: latency against the number of Services per
//! backend, and the distribution of programming latency.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::{Kind, Row, Run};

/// Fonts tried for text (Debian's fonts-dejavu-core first).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers a font for plotters' ab_glyph text; Err when none is found.
pub fn init_font() -> Result<(), String> {
    for f in FONTS {
        if let Ok(bytes) = std::fs::read(f) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            return plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{f}: not a usable font"));
        }
    }
    Err(format!("no font found (tried {}); install fonts-dejavu-core", FONTS.join(", ")))
}

const PALETTE: &[RGBColor] = &[
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

fn backends(run: &Run) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in &run.rows {
        if !out.contains(&r.backend) {
            out.push(r.backend.clone());
        }
    }
    out
}

fn series(run: &Run, value: impl Fn(&Row) -> Option<f64>, include_direct: bool) -> Vec<Series> {
    backends(run)
        .into_iter()
        .filter_map(|b| {
            let mut points: Vec<(f64, f64)> = run
                .rows
                .iter()
                .filter(|r| r.backend == b && (include_direct || r.kind != Kind::Direct))
                .filter_map(|r| value(r).filter(|v| v.is_finite() && *v > 0.0).map(|v| (r.services as f64, v)))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            (!points.is_empty()).then_some(Series { name: b, points })
        })
        .collect()
}

/// Every plot's size in pixels.
const SIZE: (u32, u32) = (900, 520);

/// Evaluates `$draw` with `$root` bound to an SVG (`$svg` true) or PNG
/// drawing area at `$path`: the two backends are different types, so a
/// closure cannot take either.
macro_rules! on_area {
    ($path:expr, $svg:expr, |$root:ident| $draw:expr) => {
        if $svg {
            let $root = SVGBackend::new($path, SIZE).into_drawing_area();
            $draw
        } else {
            let $root = BitMapBackend::new($path, SIZE).into_drawing_area();
            $draw
        }
    };
}

type Res = Result<(), String>;
/// Draws one plot to a path, as SVG (`true`) or PNG.
type Draw<'a> = Box<dyn Fn(&Path, bool) -> Res + 'a>;

fn e<T: std::fmt::Display>(x: T) -> String {
    x.to_string()
}

fn draw_lines<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    y_desc: &str,
    data: &[Series],
    log_y: bool,
) -> Res {
    root.fill(&WHITE).map_err(e)?;
    let xmax = data.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(1.0, f64::max) * 1.5;
    let ymax = data.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(1.0, f64::max) * 1.3;
    let ymin = data.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(f64::INFINITY, f64::min).min(ymax) / 1.5;
    let mut builder = ChartBuilder::on(&root);
    builder.caption(title, ("sans-serif", 20)).margin(12).x_label_area_size(40).y_label_area_size(70);
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc("Services (log scale)")
                .y_desc(y_desc)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .draw()
                .map_err(e)?;
            for (i, s) in data.iter().enumerate() {
                let color = PALETTE[i % PALETTE.len()];
                chart
                    .draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))
                    .map_err(e)?
                    .label(s.name.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
                chart.draw_series(s.points.iter().map(|p| Circle::new(*p, 4, color.filled()))).map_err(e)?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(e)?;
        }};
    }
    if log_y {
        body!(builder.build_cartesian_2d((0.8f64..xmax).log_scale(), (ymin.max(1e-3)..ymax).log_scale()).map_err(e)?);
    } else {
        body!(builder.build_cartesian_2d((0.8f64..xmax).log_scale(), 0f64..ymax).map_err(e)?);
    }
    root.present().map_err(e)
}

fn draw_cdf<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, title: &str, data: &[Series]) -> Res {
    root.fill(&WHITE).map_err(e)?;
    let xmax = data.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(1e-3, f64::max) * 1.5;
    let xmin = data.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(f64::INFINITY, f64::min).min(xmax) / 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((xmin.max(1e-3)..xmax).log_scale(), 0f64..1.02)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("event in → kernel acknowledged (ms, log scale)")
        .y_desc("fraction of changes")
        .draw()
        .map_err(e)?;
    for (i, s) in data.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))
            .map_err(e)?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)
}

/// Empirical CDF points (ms, fraction) of samples in µs.
fn cdf(samples_us: &[f64]) -> Vec<(f64, f64)> {
    let mut v: Vec<f64> = samples_us.iter().copied().filter(|x| x.is_finite() && *x > 0.0).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    v.iter().enumerate().flat_map(|(i, x)| [(x / 1e3, i as f64 / n), (x / 1e3, (i + 1) as f64 / n)]).collect()
}

/// Writes every plot as `<name>.svg` and `<name>.png` into `dir`; returns the SVG paths.
pub fn write_all(run: &Run, dir: &Path) -> Result<Vec<PathBuf>, String> {
    let connect = series(run, |r| r.connect_last.as_ref().map(|s| s.p50_us), false);
    let direct =
        series(run, |r| (r.kind == Kind::Direct).then(|| r.connect_last.as_ref().map(|s| s.p50_us)).flatten(), true);
    let mut connect_all = connect;
    connect_all.extend(direct);
    let change = series(run, |r| r.change_kernel.as_ref().filter(|s| !s.is_empty()).map(|s| s.p50_us / 1e3), false);
    let cold = series(run, |r| r.cold_answer.as_ref().filter(|s| !s.is_empty()).map(|s| s.p50_us / 1e3), false);
    // Distribution at the largest size that has change samples.
    let largest =
        run.rows.iter().filter(|r| r.change_kernel.as_ref().is_some_and(|s| !s.is_empty())).map(|r| r.services).max();
    let mut dist: Vec<Series> = Vec::new();
    if let Some(n) = largest {
        for r in run.rows.iter().filter(|r| r.services == n) {
            if let Some(s) = r.change_kernel.as_ref().filter(|s| !s.is_empty()) {
                dist.push(Series { name: format!("{}: one endpoint", r.backend), points: cdf(&s.samples_us) });
            }
            if let Some(c) = r.churn.as_ref().filter(|c| !c.kernel.is_empty()) {
                dist.push(Series {
                    name: format!("{}: churn {:.0}/s", r.backend, c.changes_per_second),
                    points: cdf(&c.kernel.samples_us),
                });
            }
        }
    }
    let dist_title =
        largest.map_or("programming latency".to_string(), |n| format!("programming latency at {n} Services"));
    let plots: Vec<(&str, Draw<'_>)> = vec![
        (
            "connect-latency",
            Box::new(|p: &Path, svg| {
                let t = "new-connection latency (p50, last-created Service)";
                on_area!(p, svg, |root| draw_lines(root, t, "connect() µs", &connect_all, false))
            }),
        ),
        (
            "change-latency",
            Box::new(|p: &Path, svg| {
                let t = "one endpoint changed: event in → kernel acknowledged (p50)";
                on_area!(p, svg, |root| draw_lines(root, t, "ms (log scale)", &change, true))
            }),
        ),
        (
            "cold-start",
            Box::new(|p: &Path, svg| {
                let t = "cold start: empty kernel → last Service answering (p50)";
                on_area!(p, svg, |root| draw_lines(root, t, "ms (log scale)", &cold, true))
            }),
        ),
        ("change-distribution", Box::new(|p: &Path, svg| on_area!(p, svg, |root| draw_cdf(root, &dist_title, &dist)))),
    ];
    let mut written = Vec::new();
    for (name, draw) in plots {
        let svg = dir.join(format!("{name}.svg"));
        draw(&svg, true).map_err(|err| format!("{}: {err}", svg.display()))?;
        let png = dir.join(format!("{name}.png"));
        draw(&png, false).map_err(|err| format!("{}: {err}", png.display()))?;
        written.push(svg);
    }
    Ok(written)
}
