//! Plots of a report, each as SVG and PNG (plotters). Text needs a
//! TrueType font: the first of a few usual system fonts is registered;
//! without one no plot is drawn and the report says so.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{Report, size_name};
use crate::spec::{Contender, Placement, WaitCase};

/// Fonts tried, in order (Debian's fonts-dejavu-core first).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

const FAMILY: &str = "sans-serif";

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

/// One line of a chart: a name and a value per x position.
struct Series {
    name: String,
    values: Vec<Option<f64>>,
}

struct Chart<'a> {
    title: String,
    x_desc: &'a str,
    y_desc: &'a str,
    x_labels: Vec<String>,
    series: Vec<Series>,
    log_y: bool,
    /// Formats a y value for the axis labels.
    y_fmt: fn(f64) -> String,
}

fn draw_chart<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, c: &Chart<'_>) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e:?}");
    root.fill(&WHITE).map_err(err)?;
    let values: Vec<f64> = c
        .series
        .iter()
        .flat_map(|s| s.values.iter().flatten().copied())
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let (lo, hi) = values
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(a, b), &v| (a.min(v), b.max(v)));
    let (lo, hi) = if values.is_empty() {
        (1.0, 10.0)
    } else {
        (lo, hi)
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
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80);
    let palette = |i: usize| Palette99::pick(i).to_rgba();
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_labels((n + 2) as usize)
                .x_label_formatter(&fmt_x)
                .y_label_formatter(&|y: &f64| (c.y_fmt)(*y))
                .x_desc(c.x_desc)
                .y_desc(c.y_desc)
                .label_style((FAMILY, 13))
                .draw()
                .map_err(err)?;
            for (i, s) in c.series.iter().enumerate() {
                let color = palette(i);
                let points: Vec<(i32, f64)> = s
                    .values
                    .iter()
                    .enumerate()
                    .filter_map(|(x, v)| v.filter(|v| *v > 0.0).map(|v| (x as i32, v)))
                    .collect();
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                    .map_err(err)?
                    .label(s.name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(
                        points
                            .iter()
                            .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
                    )
                    .map_err(err)?;
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
        body!(
            builder
                .build_cartesian_2d(-1..n, ((lo / 1.5)..(hi * 3.0)).log_scale())
                .map_err(err)?
        );
    } else {
        body!(
            builder
                .build_cartesian_2d(-1..n, 0.0..(hi * 1.15))
                .map_err(err)?
        );
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Draws `chart` as `<dir>/<name>.svg` and `.png`.
fn save(dir: &Path, name: &str, chart: &Chart<'_>, files: &mut Vec<PathBuf>) -> Result<()> {
    let svg = dir.join(format!("{name}.svg"));
    draw_chart(SVGBackend::new(&svg, (960, 600)).into_drawing_area(), chart)?;
    files.push(svg);
    let png = dir.join(format!("{name}.png"));
    draw_chart(
        BitMapBackend::new(&png, (960, 600)).into_drawing_area(),
        chart,
    )?;
    files.push(png);
    Ok(())
}

/// p50 against payload size of every contender of each hot cross-core job.
fn latency_vs_size(report: &Report) -> Vec<(String, Chart<'static>)> {
    let mut out = Vec::new();
    for r in &report.latency {
        if r.job.wait != WaitCase::Hot || r.job.sizes.len() < 2 {
            continue;
        }
        let series = r
            .job
            .contenders
            .iter()
            .map(|&c| Series {
                name: c.name().to_owned(),
                values: r
                    .job
                    .sizes
                    .iter()
                    .map(|&size| {
                        r.results
                            .iter()
                            .find(|x| x.contender == c && x.size == size && x.summary.count > 0)
                            .map(|x| x.summary.p50_ns as f64)
                    })
                    .collect(),
            })
            .collect();
        out.push((
            format!(
                "latency_vs_size_{}_{}",
                r.job.kind,
                match r.job.placement {
                    Placement::Cross => "cross",
                    Placement::Same => "same",
                }
            ),
            Chart {
                title: format!(
                    "Echo round trip p50 by payload: {} SOC, {}, hot",
                    r.job.kind,
                    r.job.placement.name()
                ),
                x_desc: "payload (in and out)",
                y_desc: "round trip p50 (log)",
                x_labels: r.job.sizes.iter().map(|&s| size_name(s)).collect(),
                series,
                log_y: true,
                y_fmt: crate::stats::fmt_ns,
            },
        ));
    }
    out
}

/// Percentiles of the empty round trip, every contender of the hot
/// cross-core jobs (baselines once).
fn percentiles(report: &Report) -> Option<Chart<'static>> {
    let mut series = Vec::new();
    let mut seen = Vec::new();
    for r in report
        .latency
        .iter()
        .filter(|r| r.job.placement == Placement::Cross)
    {
        for x in r
            .results
            .iter()
            .filter(|x| x.size == 0 && x.summary.count > 0)
        {
            let name = if x.contender == Contender::Numaproc {
                format!("numaproc {} {}", r.job.kind, r.job.wait.name())
            } else {
                x.contender.name().to_owned()
            };
            if seen.contains(&name) {
                continue;
            }
            seen.push(name.clone());
            let s = x.summary;
            series.push(Series {
                name,
                values: [s.p50_ns, s.p90_ns, s.p99_ns, s.p999_ns]
                    .iter()
                    .map(|&v| Some(v as f64))
                    .collect(),
            });
        }
    }
    (!series.is_empty()).then(|| Chart {
        title: "Empty round trip, cross-core: percentiles".to_owned(),
        x_desc: "percentile",
        y_desc: "round trip (log)",
        x_labels: ["p50", "p90", "p99", "p99.9"].map(str::to_owned).to_vec(),
        series,
        log_y: true,
        y_fmt: crate::stats::fmt_ns,
    })
}

fn throughput(report: &Report) -> Option<Chart<'static>> {
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
        })
        .collect();
    (!configs.is_empty()).then(|| Chart {
        title: "Throughput: sys_ping calls per second".to_owned(),
        x_desc: "sessions × workers",
        y_desc: "calls/s",
        x_labels: configs.iter().map(|(s, w)| format!("{s}×{w}")).collect(),
        series,
        log_y: false,
        y_fmt: crate::stats::fmt_rate,
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
    let mut charts = latency_vs_size(report);
    if let Some(c) = percentiles(report) {
        charts.push(("latency_percentiles_0B".to_owned(), c));
    }
    if let Some(c) = throughput(report) {
        charts.push(("throughput".to_owned(), c));
    }
    for (name, chart) in &charts {
        if let Err(e) = save(dir, name, chart, &mut files) {
            remarks.push(format!("plot {name}: {e:#}"));
        }
    }
    (files, remarks)
}
