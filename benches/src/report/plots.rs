//! Plots of a report, each as SVG and PNG (plotters): one chart per
//! question, with its target drawn where it has one. Text needs a TrueType
//! font: the first of a few usual system fonts is registered; without one
//! no plot is drawn and the report says so.
//!
//! - `hot_cross_core`: the hot empty round trip of each SOC kind beside the
//!   floor, crossbeam and iceoryx2 (target: 1.5× the floor);
//! - `sleeping_cross_core`: a sleeping worker beside raw futex wake-ups
//!   (target: 1.1× the job's futex reference);
//! - `same_core`: session and worker on one CPU beside the one-core floor
//!   and futex (target, hot: 1.2× futex);
//! - `library`: library procedures beside `sys_ping` (target: 1.15×);
//! - `payload_size_<kind>`: p50 by payload size, hot, cross-core (targets
//!   at 1 MiB);
//! - `start`, `restart`: start and restart times (targets where the issue
//!   sets them);
//! - `throughput`: calls per second of sessions × workers.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Result, anyhow};
use numaproc::SocKind;
use plotters::coord::Shift;
use plotters::element::{DashedPathElement, Drawable, PointCollection};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters_backend::{BackendCoord, DrawingErrorKind};

use super::{
    LARGE, Report, TARGET_FLOOR, TARGET_FUTEX, TARGET_LARGE_COPY, TARGET_LARGE_ZERO_COPY,
    TARGET_LIBRARY, TARGET_RESTART_MS, TARGET_SAME_CORE, TARGET_START_FORKED_MS,
    TARGET_START_SPAWNED_MS, find, ratio_to_copies, ready_samples, restart_samples, size_name,
    spread, standard_config, start_configs,
};
use crate::spec::{Contender, LatencyResult, Placement, StartConfig, WaitCase};
use crate::stats::{fmt_ns, fmt_rate};

/// Fonts tried, in order (Debian's fonts-dejavu-core first).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

const FAMILY: &str = "sans-serif";

/// Series colours (Okabe and Ito's palette, told apart also by readers
/// with colour-blindness), numaproc's first; red is kept for targets.
const COLORS: [RGBColor; 7] = [
    RGBColor(0, 114, 178),   // blue
    RGBColor(230, 159, 0),   // orange
    RGBColor(0, 158, 115),   // bluish green
    RGBColor(204, 121, 167), // reddish purple
    RGBColor(86, 180, 233),  // sky blue
    RGBColor(0, 0, 0),       // black
    RGBColor(140, 140, 140), // grey
];

/// Targets.
const TARGET_COLOR: RGBColor = RGBColor(213, 40, 0);

/// Marker shapes, in the order series get them.
#[derive(Clone, Copy)]
enum Shape {
    Circle,
    Triangle,
    Square,
    Diamond,
    Cross,
    Ring,
    Bar,
}

const SHAPES: [Shape; 7] = [
    Shape::Circle,
    Shape::Triangle,
    Shape::Square,
    Shape::Diamond,
    Shape::Cross,
    Shape::Ring,
    Shape::Bar,
];

/// The colour and marker of series `i`.
fn look(i: usize) -> (RGBColor, Shape) {
    (COLORS[i % COLORS.len()], SHAPES[i % SHAPES.len()])
}

/// A marker of one of the shapes at one point, drawn in pixels around it:
/// one element type for every shape (plotters' own shapes are each a type
/// of their own).
struct Marker<C> {
    at: C,
    shape: Shape,
    color: RGBColor,
}

fn marker<C>(shape: Shape, at: C, color: RGBColor) -> Marker<C> {
    Marker { at, shape, color }
}

impl<'a, C> PointCollection<'a, C> for &'a Marker<C> {
    type Point = &'a C;
    type IntoIter = std::iter::Once<&'a C>;
    fn point_iter(self) -> Self::IntoIter {
        std::iter::once(&self.at)
    }
}

impl<C, DB: DrawingBackend> Drawable<DB> for Marker<C> {
    fn draw<I: Iterator<Item = BackendCoord>>(
        &self,
        mut pos: I,
        backend: &mut DB,
        _: (u32, u32),
    ) -> Result<(), DrawingErrorKind<DB::ErrorType>> {
        let Some((x, y)) = pos.next() else {
            return Ok(());
        };
        let fill = self.color.filled();
        let line = self.color.stroke_width(2);
        let at = |dx: i32, dy: i32| (x + dx, y + dy);
        match self.shape {
            Shape::Circle => backend.draw_circle((x, y), 5, &fill, true),
            Shape::Ring => backend.draw_circle((x, y), 5, &line, false),
            Shape::Triangle => backend.fill_polygon([at(0, -7), at(6, 4), at(-6, 4)], &fill),
            Shape::Square => backend.draw_rect(at(-4, -4), at(4, 4), &fill, true),
            Shape::Diamond => {
                backend.fill_polygon([at(0, -6), at(6, 0), at(0, 6), at(-6, 0)], &fill)
            }
            Shape::Cross => {
                backend.draw_line(at(-5, -5), at(5, 5), &line)?;
                backend.draw_line(at(-5, 5), at(5, -5), &line)
            }
            Shape::Bar => backend.draw_rect(at(-6, -2), at(6, 2), &fill, true),
        }
    }
}

/// Registers a system font once; `Err` says why there is none.
fn font() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        for path in FONTS {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                for style in [FontStyle::Normal, FontStyle::Bold] {
                    if plotters::style::register_font(FAMILY, style, bytes).is_err() {
                        return Err(format!("{path} is not a usable font"));
                    }
                }
                return Ok(());
            }
        }
        Err(format!(
            "no TrueType font found (tried {}); install fonts-dejavu-core",
            FONTS.join(", ")
        ))
    })
    .clone()
}

/// The y range of a log axis holding `values`.
fn log_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
    if hi <= 0.0 {
        (1.0, 10.0)
    } else {
        (lo / 1.6, hi * 2.0)
    }
}

/// One point of a dot chart: a value (the marker) and a whisker around it.
#[derive(Clone, Copy)]
struct Dot {
    mid: f64,
    low: f64,
    high: f64,
}

/// One series of a dot chart: a value per category, if any.
struct DotSeries {
    name: String,
    dots: Vec<Option<Dot>>,
}

/// Categories along x (cases, configurations), series side by side within
/// each, a log y axis; a target per category drawn as a red dashed line
/// across it.
struct DotChart {
    title: String,
    y_desc: String,
    categories: Vec<String>,
    series: Vec<DotSeries>,
    targets: Vec<Option<f64>>,
    target_name: String,
    y_fmt: fn(f64) -> String,
}

/// x units per category.
const UNIT: i32 = 100;

fn draw_dots<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, c: &DotChart) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e:?}");
    root.fill(&WHITE).map_err(err)?;
    let (lo, hi) = log_range(
        c.series
            .iter()
            .flat_map(|s| s.dots.iter().flatten().flat_map(|d| [d.low, d.mid, d.high]))
            .chain(c.targets.iter().flatten().copied()),
    );
    let n = c.categories.len() as i32;
    let labels = c.categories.clone();
    let fmt_x = move |x: &i32| {
        if x.rem_euclid(UNIT) == 0 {
            usize::try_from(x / UNIT)
                .ok()
                .and_then(|i| labels.get(i).cloned())
                .unwrap_or_default()
        } else {
            String::new()
        }
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(&c.title, (FAMILY, 22))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(-UNIT / 2..n * UNIT - UNIT / 2, (lo..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n as usize + 1)
        .x_label_formatter(&fmt_x)
        .y_label_formatter(&|y: &f64| (c.y_fmt)(*y))
        .y_desc(c.y_desc.as_str())
        .label_style((FAMILY, 13))
        .draw()
        .map_err(err)?;
    // Thin separators between categories.
    for i in 1..n {
        let x = i * UNIT - UNIT / 2;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(x, lo), (x, hi)],
                RGBColor(220, 220, 220).stroke_width(1),
            )))
            .map_err(err)?;
    }
    let m = c.series.len().max(1) as i32;
    let step = (UNIT * 7 / 10) / m;
    let offset = |j: usize| j as i32 * step - (m - 1) * step / 2;
    for (j, s) in c.series.iter().enumerate() {
        let (color, shape) = look(j);
        let points: Vec<(i32, Dot)> = s
            .dots
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.map(|d| (i as i32 * UNIT + offset(j), d)))
            .filter(|(_, d)| d.mid > 0.0)
            .collect();
        chart
            .draw_series(points.iter().map(|&(x, d)| {
                PathElement::new(
                    vec![(x, d.low.max(lo)), (x, d.high.max(lo))],
                    color.stroke_width(1),
                )
            }))
            .map_err(err)?;
        chart
            .draw_series(
                points
                    .iter()
                    .map(|&(x, d)| marker(shape, (x, d.mid), color)),
            )
            .map_err(err)?
            .label(s.name.clone())
            .legend(move |(x, y)| marker(shape, (x + 9, y), color));
    }
    let dashes: Vec<(i32, f64)> = c
        .targets
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.map(|t| (i as i32 * UNIT, t)))
        .collect();
    if !dashes.is_empty() {
        chart
            .draw_series(dashes.iter().map(|&(x, t)| {
                DashedPathElement::new(
                    vec![(x - UNIT * 45 / 100, t), (x + UNIT * 45 / 100, t)],
                    6,
                    4,
                    TARGET_COLOR.stroke_width(2),
                )
            }))
            .map_err(err)?
            .label(c.target_name.clone())
            .legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], TARGET_COLOR.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FAMILY, 13))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// One line of a line chart: a name and a value per x position.
struct Series {
    name: String,
    values: Vec<Option<f64>>,
    /// Drawn dashed (a computed baseline rather than a measured one).
    dashed: bool,
}

/// A target at one x position of a line chart: (x index, value, label).
type Mark = (usize, f64, String);

struct LineChart {
    title: String,
    x_desc: String,
    y_desc: String,
    x_labels: Vec<String>,
    series: Vec<Series>,
    marks: Vec<Mark>,
    log_y: bool,
    y_fmt: fn(f64) -> String,
}

fn draw_lines<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, c: &LineChart) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e:?}");
    root.fill(&WHITE).map_err(err)?;
    let values = || {
        c.series
            .iter()
            .flat_map(|s| s.values.iter().flatten().copied())
            .chain(c.marks.iter().map(|m| m.1))
    };
    let n = c.x_labels.len() as i32;
    let labels = c.x_labels.clone();
    let fmt_x = move |x: &i32| {
        usize::try_from(*x)
            .ok()
            .and_then(|i| labels.get(i).cloned())
            .unwrap_or_default()
    };
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(&c.title, (FAMILY, 22))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(80);
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_labels((n + 2) as usize)
                .x_label_formatter(&fmt_x)
                .y_label_formatter(&|y: &f64| (c.y_fmt)(*y))
                .x_desc(c.x_desc.as_str())
                .y_desc(c.y_desc.as_str())
                .label_style((FAMILY, 13))
                .draw()
                .map_err(err)?;
            for (i, s) in c.series.iter().enumerate() {
                let (color, shape) = look(i);
                let points: Vec<(i32, f64)> = s
                    .values
                    .iter()
                    .enumerate()
                    .filter_map(|(x, v)| v.filter(|v| *v > 0.0).map(|v| (x as i32, v)))
                    .collect();
                if s.dashed {
                    chart
                        .draw_series(DashedLineSeries::new(
                            points.clone(),
                            8,
                            5,
                            color.stroke_width(2),
                        ))
                        .map_err(err)?;
                } else {
                    chart
                        .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                        .map_err(err)?;
                }
                chart
                    .draw_series(points.iter().map(|&p| marker(shape, p, color)))
                    .map_err(err)?
                    .label(s.name.clone())
                    .legend(move |(x, y)| {
                        (EmptyElement::at((x, y))
                            + PathElement::new(vec![(0, 0), (18, 0)], color.stroke_width(2)))
                            + marker(shape, (9, 0), color)
                    });
            }
            if !c.marks.is_empty() {
                chart
                    .draw_series(c.marks.iter().map(|(x, v, label)| {
                        EmptyElement::at((*x as i32, *v))
                            + PathElement::new(
                                vec![(-16, 0), (16, 0)],
                                TARGET_COLOR.stroke_width(3),
                            )
                            + Text::new(
                                label.clone(),
                                (-20, 0),
                                (FAMILY, 12)
                                    .into_font()
                                    .color(&TARGET_COLOR)
                                    .pos(Pos::new(HPos::Right, VPos::Center)),
                            )
                    }))
                    .map_err(err)?
                    .label("target")
                    .legend(|(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], TARGET_COLOR.stroke_width(3))
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font((FAMILY, 13))
                .draw()
                .map_err(err)?;
        }};
    }
    if c.log_y {
        let (lo, hi) = log_range(values());
        body!(
            builder
                .build_cartesian_2d(-1..n, (lo..hi).log_scale())
                .map_err(err)?
        );
    } else {
        let hi = values().fold(0.0f64, f64::max).max(1.0);
        body!(
            builder
                .build_cartesian_2d(-1..n, 0.0..(hi * 1.25))
                .map_err(err)?
        );
    }
    root.present().map_err(err)?;
    Ok(())
}

/// A chart of either form.
enum Plot {
    Dots(DotChart),
    Lines(LineChart),
}

impl Plot {
    /// Width in pixels: wide enough for the category labels.
    fn width(&self) -> u32 {
        match self {
            Plot::Dots(c) => (c.categories.len() as u32 * 120 + 200).max(960),
            Plot::Lines(_) => 960,
        }
    }

    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        match self {
            Plot::Dots(c) => draw_dots(root, c),
            Plot::Lines(c) => draw_lines(root, c),
        }
    }
}

/// Draws `plot` as `<dir>/<name>.svg` and `.png`.
fn save(dir: &Path, name: &str, plot: &Plot, files: &mut Vec<PathBuf>) -> Result<()> {
    let size = (plot.width(), 600);
    let svg = dir.join(format!("{name}.svg"));
    plot.draw(SVGBackend::new(&svg, size).into_drawing_area())?;
    files.push(svg);
    let png = dir.join(format!("{name}.png"));
    plot.draw(BitMapBackend::new(&png, size).into_drawing_area())?;
    files.push(png);
    Ok(())
}

/// p50 with a whisker to p99 of contender `c` at 0 B in job `r`.
fn dot(r: &LatencyResult, c: Contender) -> Option<Dot> {
    find(r, c, 0).map(|x| Dot {
        mid: x.summary.p50_ns as f64,
        low: x.summary.p50_ns as f64,
        high: x.summary.p99_ns as f64,
    })
}

/// A latency target of a chart: `limit` times the p50 of the contender
/// `of` picks in a job (none: no target there).
struct Goal<'a> {
    of: fn(&LatencyResult) -> Option<Contender>,
    limit: f64,
    name: &'a str,
}

/// A dot chart of the empty round trip of `jobs`, one category each,
/// `contenders` side by side, and the target of `goal`.
fn latency_dots(
    title: &str,
    jobs: &[&LatencyResult],
    category: fn(&LatencyResult) -> String,
    contenders: &[(Contender, &str)],
    goal: Goal<'_>,
) -> Option<DotChart> {
    if jobs.is_empty() {
        return None;
    }
    let series = contenders
        .iter()
        .map(|&(c, name)| DotSeries {
            name: name.to_owned(),
            dots: jobs.iter().map(|r| dot(r, c)).collect(),
        })
        .filter(|s| s.dots.iter().any(Option::is_some))
        .collect();
    let targets = jobs
        .iter()
        .map(|r| (goal.of)(r).and_then(|c| find(r, c, 0)))
        .map(|x| x.map(|x| x.summary.p50_ns as f64 * goal.limit))
        .collect();
    Some(DotChart {
        title: title.to_owned(),
        y_desc: "round trip, p50 (marker) to p99 (whisker), log".to_owned(),
        categories: jobs.iter().map(|r| category(r)).collect(),
        series,
        targets,
        target_name: goal.name.to_owned(),
        y_fmt: fmt_ns,
    })
}

fn jobs_of(report: &Report, keep: impl Fn(&LatencyResult) -> bool) -> Vec<&LatencyResult> {
    report.latency.iter().filter(|r| keep(r)).collect()
}

fn hot_cross_core(report: &Report) -> Option<DotChart> {
    let jobs = jobs_of(report, |r| {
        r.job.placement == Placement::Cross && r.job.wait == WaitCase::Hot && !r.job.libraries
    });
    latency_dots(
        "Hot empty round trip, cross-core: numaproc beside the floor and its peers",
        &jobs,
        |r| format!("{} SOC", r.job.kind),
        &[
            (Contender::Numaproc, "numaproc"),
            (Contender::ShmSpin, "shm-spin (the floor)"),
            (Contender::Crossbeam, "crossbeam (threads)"),
            (Contender::Iceoryx2, "iceoryx2"),
        ],
        Goal {
            of: |_| Some(Contender::ShmSpin),
            limit: TARGET_FLOOR,
            name: "target: numaproc ≤ 1.5× the floor",
        },
    )
}

fn sleeping_cross_core(report: &Report) -> Option<DotChart> {
    let jobs = jobs_of(report, |r| {
        r.job.placement == Placement::Cross && r.job.wait != WaitCase::Hot && !r.job.libraries
    });
    latency_dots(
        "Sleeping worker, cross-core: numaproc beside raw futex wake-ups",
        &jobs,
        |r| format!("{} {}", r.job.kind, r.job.wait.name()),
        &[
            (Contender::Numaproc, "numaproc"),
            (Contender::FutexSpin, "futex+spin (peer sleeps)"),
            (Contender::Futex, "futex (both sleep)"),
        ],
        Goal {
            of: |r| Some(r.job.reference),
            limit: TARGET_FUTEX,
            name: "target: ≤ 1.1× the case's futex reference",
        },
    )
}

fn same_core(report: &Report) -> Option<DotChart> {
    let jobs = jobs_of(report, |r| {
        r.job.placement == Placement::Same && !r.job.libraries
    });
    latency_dots(
        "Session and worker on one CPU: numaproc beside the one-core floor and futex",
        &jobs,
        |r| format!("{} {}", r.job.kind, r.job.wait.name()),
        &[
            (Contender::Numaproc, "numaproc"),
            (Contender::ShmYield, "shm-yield (the floor on one core)"),
            (Contender::Futex, "futex (both sleep)"),
            (Contender::FutexSpin, "futex+spin"),
        ],
        Goal {
            of: |r| (r.job.wait == WaitCase::Hot).then_some(Contender::Futex),
            limit: TARGET_SAME_CORE,
            name: "target (hot): ≤ 1.2× futex",
        },
    )
}

fn library(report: &Report) -> Option<DotChart> {
    let jobs = jobs_of(report, |r| r.job.libraries);
    latency_dots(
        "Library procedures (8 B in, 8 B out) beside sys_ping, hot, cross-core",
        &jobs,
        |r| format!("{} SOC", r.job.kind),
        &[
            (Contender::Numaproc, "sys_ping"),
            (Contender::Echo8, "sys_echo 8 B"),
            (Contender::RustLib, "Rust library: example.sum"),
            (Contender::CLib, "C library: c.sum"),
        ],
        Goal {
            of: |_| Some(Contender::Numaproc),
            limit: TARGET_LIBRARY,
            name: "target: ≤ 1.15× sys_ping",
        },
    )
}

/// p50 by payload size of one hot cross-core job, with the large-payload
/// targets at 1 MiB.
fn payload_size(r: &LatencyResult) -> LineChart {
    let sizes = &r.job.sizes;
    let p50 = |c: Contender| -> Vec<Option<f64>> {
        sizes
            .iter()
            .map(|&size| find(r, c, size).map(|x| x.summary.p50_ns as f64))
            .collect()
    };
    let mut series: Vec<Series> = [
        (Contender::Numaproc, "numaproc (copies in and out)"),
        (Contender::ZeroCopy, "numaproc zero-copy"),
        (Contender::ShmSpin, "shm-spin (raw, same copies)"),
        (Contender::Iceoryx2, "iceoryx2"),
        (Contender::Crossbeam, "crossbeam"),
        (Contender::Uds, "uds"),
    ]
    .into_iter()
    .map(|(c, name)| Series {
        name: name.to_owned(),
        values: p50(c),
        dashed: false,
    })
    .collect();
    series.push(Series {
        name: "floor (0 B) + 2 memcpy".to_owned(),
        values: sizes
            .iter()
            .map(|&size| ratio_to_copies(r, Contender::Numaproc, size, 2.0).map(|x| x.2))
            .collect(),
        dashed: true,
    });
    series.retain(|s| s.values.iter().any(Option::is_some));
    let mut marks = Vec::new();
    if let Some(x) = sizes.iter().position(|&s| s == LARGE) {
        for (who, copies, limit, label) in [
            (Contender::Numaproc, 2.0, TARGET_LARGE_COPY, "copy ≤ 1.2×"),
            (
                Contender::ZeroCopy,
                1.0,
                TARGET_LARGE_ZERO_COPY,
                "zero-copy ≤ 1.1×",
            ),
        ] {
            if let Some((_, _, base)) = ratio_to_copies(r, who, LARGE, copies) {
                marks.push((x, base * limit, label.to_owned()));
            }
        }
    }
    LineChart {
        title: format!(
            "Echo round trip p50 by payload: {} SOC, cross-core, hot",
            r.job.kind
        ),
        x_desc: "payload (in and out)".to_owned(),
        y_desc: "round trip p50 (log)".to_owned(),
        x_labels: sizes.iter().map(|&s| size_name(s)).collect(),
        series,
        marks,
        log_y: true,
        y_fmt: fmt_ns,
    }
}

/// A short name of a start configuration, for an axis.
fn short(c: &StartConfig) -> String {
    let kind = match c.kind {
        SocKind::Emulated => "emulated",
        SocKind::Forked => "forked",
        SocKind::Spawned => "spawned",
    };
    let mut s = format!("{kind} {}", c.socs);
    if c.library {
        s.push_str(" +lib");
    }
    if c.backoff_ms == 0 {
        s.push_str(" b0");
    }
    s
}

fn ms(ns: f64) -> f64 {
    ns / 1e6
}

fn fmt_ms(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0} ms")
    } else if v >= 1.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.2} ms")
    }
}

fn start(report: &Report) -> Option<DotChart> {
    let configs: Vec<StartConfig> = start_configs(report)
        .into_iter()
        .filter(|c| standard_config(report, c))
        .collect();
    if configs.is_empty() {
        return None;
    }
    let dot = |v: &[u64]| {
        (!v.is_empty()).then(|| {
            let (p50, min, max) = spread(v);
            Dot {
                mid: ms(p50),
                low: ms(min),
                high: ms(max),
            }
        })
    };
    let first = DotSeries {
        name: "first engine of a fresh process".to_owned(),
        dots: configs
            .iter()
            .map(|c| dot(&ready_samples(report, c)))
            .collect(),
    };
    let again = DotSeries {
        name: "second engine in the same process".to_owned(),
        dots: configs
            .iter()
            .map(|c| {
                let v: Vec<u64> = report
                    .start
                    .iter()
                    .filter(|s| s.job.config == *c)
                    .filter_map(|s| s.again_ready_ns)
                    .collect();
                dot(&v)
            })
            .collect(),
    };
    let targets = configs
        .iter()
        .map(|c| match (c.kind, c.socs, c.library) {
            (SocKind::Forked, 2, false) => Some(TARGET_START_FORKED_MS),
            (SocKind::Spawned, 2, true) => Some(TARGET_START_SPAWNED_MS),
            _ => None,
        })
        .collect();
    Some(DotChart {
        title: "Start: Engine::start until every SOC served a call (SOC kind, SOCs, library)"
            .to_owned(),
        y_desc: "ready, p50 (marker), min to max (whisker), log".to_owned(),
        categories: configs.iter().map(short).collect(),
        series: vec![first, again],
        targets,
        target_name: "target: 2 forked ≤ 5 ms, 2 spawned with a library ≤ 10 ms".to_owned(),
        y_fmt: fmt_ms,
    })
}

fn restart(report: &Report) -> Option<DotChart> {
    let configs: Vec<StartConfig> = start_configs(report)
        .into_iter()
        .filter(|c| c.synthetic.is_none() && c.buffer == numaproc::DEFAULT_BUFFER)
        .filter(|c| !restart_samples(report, c).is_empty())
        .collect();
    if configs.is_empty() {
        return None;
    }
    let series = |name: &str, minus_backoff: bool| DotSeries {
        name: name.to_owned(),
        dots: configs
            .iter()
            .map(|c| {
                let b = if minus_backoff {
                    c.backoff_ms as f64
                } else {
                    0.0
                };
                let v = restart_samples(report, c);
                (!v.is_empty()).then(|| {
                    let (p50, min, max) = spread(&v);
                    Dot {
                        mid: ms(p50) - b,
                        low: ms(min) - b,
                        high: ms(max) - b,
                    }
                })
            })
            .collect(),
    };
    Some(DotChart {
        title: "Restart: kill -9 of a SOC until a call to it is served again".to_owned(),
        y_desc: "p50 (marker), min to max (whisker), log".to_owned(),
        categories: configs.iter().map(short).collect(),
        series: vec![
            series("served again (total)", false),
            series("beyond the back-off (total − back-off)", true),
        ],
        targets: vec![Some(TARGET_RESTART_MS); configs.len()],
        target_name: "target: ≤ 3 ms beyond the back-off (b0: no back-off)".to_owned(),
        y_fmt: fmt_ms,
    })
}

fn throughput(report: &Report) -> Option<LineChart> {
    let mut configs: Vec<(usize, usize)> = report
        .throughput
        .iter()
        .map(|t| (t.job.sessions, t.job.workers))
        .collect();
    configs.sort_unstable();
    configs.dedup();
    let mut kinds: Vec<String> = report
        .throughput
        .iter()
        .map(|t| t.job.kind.to_string())
        .collect();
    kinds.dedup();
    let series: Vec<Series> = kinds
        .iter()
        .map(|k| Series {
            name: format!("{k} SOC"),
            values: configs
                .iter()
                .map(|&(s, w)| {
                    report
                        .throughput
                        .iter()
                        .find(|t| {
                            t.job.kind.to_string() == *k
                                && t.job.sessions == s
                                && t.job.workers == w
                        })
                        .map(|t| t.calls_per_s)
                })
                .collect(),
            dashed: false,
        })
        .collect();
    (!configs.is_empty()).then(|| LineChart {
        title: "Throughput: sys_ping calls per second".to_owned(),
        x_desc: "sessions × workers".to_owned(),
        y_desc: "calls/s".to_owned(),
        x_labels: configs.iter().map(|(s, w)| format!("{s}×{w}")).collect(),
        series,
        marks: Vec::new(),
        log_y: false,
        y_fmt: fmt_rate,
    })
}

/// Draws every plot; returns the files written and remarks on failures.
pub fn draw_all(report: &Report, dir: &Path) -> (Vec<PathBuf>, Vec<String>) {
    let mut files = Vec::new();
    let mut remarks = Vec::new();
    if let Err(e) = font() {
        remarks.push(format!("no plots: {e}"));
        return (files, remarks);
    }
    let mut plots: Vec<(String, Plot)> = Vec::new();
    for (name, chart) in [
        ("hot_cross_core", hot_cross_core(report)),
        ("sleeping_cross_core", sleeping_cross_core(report)),
        ("same_core", same_core(report)),
        ("library", library(report)),
        ("start", start(report)),
        ("restart", restart(report)),
    ] {
        if let Some(c) = chart {
            plots.push((name.to_owned(), Plot::Dots(c)));
        }
    }
    for r in &report.latency {
        if r.job.placement == Placement::Cross
            && r.job.wait == WaitCase::Hot
            && !r.job.libraries
            && r.job.sizes.len() >= 2
        {
            plots.push((
                format!("payload_size_{}", r.job.kind),
                Plot::Lines(payload_size(r)),
            ));
        }
    }
    if let Some(c) = throughput(report) {
        plots.push(("throughput".to_owned(), Plot::Lines(c)));
    }
    for (name, plot) in &plots {
        if let Err(e) = save(dir, name, plot, &mut files) {
            remarks.push(format!("plot {name}: {e:#}"));
        }
    }
    (files, remarks)
}
