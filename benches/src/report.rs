//! The report: a markdown summary with ratio columns, CSV files, the raw
//! JSON, and plots (SVG and PNG) in one directory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::spec::{
    Contender, ContenderResult, LatencyResult, NumaResult, Placement, ThroughputResult, WaitCase,
};
use crate::stats::{fmt_ns, fmt_rate, median};

/// The machine the run was made on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model (/proc/cpuinfo).
    pub cpu_model: String,
    /// CPUs this process may use.
    pub cpus: Vec<u32>,
    /// NUMA nodes with memory.
    pub mem_nodes: Vec<u32>,
    /// `uname -sr`.
    pub kernel: String,
}

/// Everything one run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// UTC date and time of the start, `YYYY-MM-DD HH:MM`.
    pub date: String,
    /// The machine.
    pub machine: Machine,
    /// Quick mode (fewer sizes and samples).
    pub quick: bool,
    /// Seconds the measurements took.
    pub seconds: f64,
    /// Latency jobs.
    pub latency: Vec<LatencyResult>,
    /// Throughput jobs.
    pub throughput: Vec<ThroughputResult>,
    /// NUMA matrices.
    pub numa: Vec<NumaResult>,
    /// Jobs that failed, with why.
    pub failures: Vec<String>,
}

/// Target: numaproc's hot round trip at most this many times the floor.
pub const TARGET_FLOOR: f64 = 1.5;
/// Target: numaproc at least this many times faster than iceoryx2.
pub const TARGET_IOX: f64 = 5.0;
/// Target: the sleeping-worker path at most this many times raw futex.
pub const TARGET_FUTEX: f64 = 1.1;
/// Target: a client process's hot round trip at most this many times the
/// engine's own session's.
pub const TARGET_CLIENT: f64 = 1.1;

fn find(r: &LatencyResult, c: Contender, size: usize) -> Option<&ContenderResult> {
    r.results
        .iter()
        .find(|x| x.contender == c && x.size == size && x.summary.count > 0)
}

/// numaproc's p50 over `c`'s, and the median of the per-block ratios
/// (blocks paired in order: each numaproc block ran next to the baseline's).
pub fn ratio(r: &LatencyResult, c: Contender, size: usize) -> Option<(f64, f64)> {
    let n = find(r, Contender::Numaproc, size)?;
    let b = find(r, c, size)?;
    let overall = n.summary.p50_ns as f64 / b.summary.p50_ns.max(1) as f64;
    let per_block: Vec<f64> = n
        .block_p50_ns
        .iter()
        .zip(&b.block_p50_ns)
        .map(|(&x, &y)| x as f64 / y.max(1) as f64)
        .collect();
    Some((overall, median(&per_block)))
}

/// A ratio with enough digits to tell small ones apart.
pub fn fmt_ratio(r: f64) -> String {
    if r >= 0.095 {
        format!("{r:.2}×")
    } else if r >= 0.0095 {
        format!("{r:.3}×")
    } else {
        format!("{r:.4}×")
    }
}

fn size_name(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

fn job_title(r: &LatencyResult) -> String {
    format!(
        "{} SOC, {}, {} worker",
        r.job.kind,
        r.job.placement.name(),
        r.job.wait.name()
    )
}

fn cpu_name(c: Option<u32>) -> String {
    c.map_or("unpinned".to_owned(), |c| format!("CPU {c}"))
}

fn verdict(value: f64, limit: f64, at_most: bool) -> String {
    let met = if at_most {
        value <= limit
    } else {
        value >= limit
    };
    if met {
        "met".to_owned()
    } else if at_most {
        format!("missed by {:.0}%", (value / limit - 1.0) * 100.0)
    } else {
        format!("missed by {:.0}%", (1.0 - value / limit) * 100.0)
    }
}

/// The targets of the issue, checked against this run.
fn targets(report: &Report, md: &mut String) {
    let _ = writeln!(md, "## Targets (0-byte round trip, p50, same run)\n");
    let _ = writeln!(
        md,
        "| target | case | numaproc | baseline | ratio (overall / block-paired median) | verdict |"
    );
    let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- |");
    let mut any = false;
    for r in &report.latency {
        let n = match find(r, Contender::Numaproc, 0) {
            Some(n) => n.summary.p50_ns as f64,
            None => continue,
        };
        let mut row = |target: &str, c: Contender, limit: f64, at_most: bool, invert: bool| {
            if let (Some((o, b)), Some(base)) = (ratio(r, c, 0), find(r, c, 0)) {
                let (o, b) = if invert { (1.0 / o, 1.0 / b) } else { (o, b) };
                any = true;
                let _ = writeln!(
                    md,
                    "| {target} | {} | {} | {} {} | {o:.2}× / {b:.2}× | {} |",
                    job_title(r),
                    fmt_ns(n),
                    c.name(),
                    fmt_ns(base.summary.p50_ns as f64),
                    verdict(b, limit, at_most)
                );
            }
        };
        match (r.job.placement, r.job.wait) {
            (Placement::Cross, WaitCase::Hot) => {
                row(
                    "hot ≤ 1.5× the floor",
                    Contender::ShmSpin,
                    TARGET_FLOOR,
                    true,
                    false,
                );
                row(
                    "≥ 5× faster than iceoryx2",
                    Contender::Iceoryx2,
                    TARGET_IOX,
                    false,
                    true,
                );
                row(
                    "client process ≤ 1.1× in-process (ratio: client ÷ in-process)",
                    Contender::Client,
                    TARGET_CLIENT,
                    true,
                    true,
                );
            }
            (Placement::Cross, WaitCase::Sleeping) => row(
                "sleeping ≤ 1.1× raw futex (wake + spin back)",
                Contender::FutexSpin,
                TARGET_FUTEX,
                true,
                false,
            ),
            (Placement::Cross, WaitCase::BothSleep) => row(
                "sleeping ≤ 1.1× raw futex (both sleep)",
                Contender::Futex,
                TARGET_FUTEX,
                true,
                false,
            ),
            _ => {}
        }
    }
    if !any {
        let _ = writeln!(md, "| (no cross-core latency job ran) | | | | | |");
    }
    let _ = writeln!(
        md,
        "\nThe verdict uses the block-paired median: each numaproc block ran right \
         next to the baseline's, so both saw the same placement of the vCPUs."
    );
    if report.quick {
        let _ = writeln!(
            md,
            "\nThis is a quick run (a few short blocks per contender): where the host \
             moves the vCPUs during it, a verdict can flip. The full run \
             (`scripts/bench`) decides."
        );
    }
}

fn headline(report: &Report, md: &mut String) {
    let _ = writeln!(md, "\n## Headline: empty round trip (0 B), p50\n");
    let _ = writeln!(
        md,
        "| case | numaproc p50 | p99 | p99.9 | calls/s | reference | ref p50 | × ref | × futex | × uds | iceoryx2 ÷ numaproc |"
    );
    let _ = writeln!(
        md,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for r in &report.latency {
        let Some(n) = find(r, Contender::Numaproc, 0) else {
            continue;
        };
        let s = n.summary;
        let x = |c: Contender| {
            ratio(r, c, 0).map_or("–".to_owned(), |(o, b)| {
                format!("{} ({})", fmt_ratio(o), fmt_ratio(b))
            })
        };
        let reference = r.job.reference;
        let ref_p50 =
            find(r, reference, 0).map_or("–".to_owned(), |b| fmt_ns(b.summary.p50_ns as f64));
        let iox = ratio(r, Contender::Iceoryx2, 0).map_or("–".to_owned(), |(o, b)| {
            format!("{:.1}× ({:.1}×)", 1.0 / o, 1.0 / b)
        });
        let futex = if reference == Contender::Futex {
            "(ref)".to_owned()
        } else {
            x(Contender::Futex)
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            job_title(r),
            fmt_ns(s.p50_ns as f64),
            fmt_ns(s.p99_ns as f64),
            fmt_ns(s.p999_ns as f64),
            fmt_rate(s.calls_per_s),
            reference.name(),
            ref_p50,
            x(reference),
            futex,
            x(Contender::Uds),
            iox
        );
    }
    let _ = writeln!(
        md,
        "\n`× X` is numaproc's p50 divided by X's (below 1: numaproc is faster); in \
         brackets, the median of the same ratio block by block."
    );
}

fn latency_tables(report: &Report, md: &mut String) {
    let _ = writeln!(md, "\n## Latency by job and payload\n");
    for r in &report.latency {
        let _ = writeln!(
            md,
            "### {}\n\nsession on {}, worker {} of SOC {} on {}; {}timer overhead {:.0} ns per sample (included everywhere); reference: {}.\n",
            job_title(r),
            cpu_name(r.session_cpu),
            r.worker.1,
            r.worker.0,
            cpu_name(r.worker_cpu),
            if r.job.gap_us > 0 {
                format!("the session sleeps {} µs before each call; ", r.job.gap_us)
            } else {
                "calls back to back; ".to_owned()
            },
            r.timer_ns,
            r.job.reference.name()
        );
        let _ = writeln!(
            md,
            "| payload | contender | samples | p50 | p90 | p99 | p99.9 | calls/s | numaproc ÷ this (p50) |"
        );
        let _ = writeln!(
            md,
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for &size in &r.job.sizes {
            for c in &r.job.contenders {
                let Some(x) = r
                    .results
                    .iter()
                    .find(|x| x.contender == *c && x.size == size)
                else {
                    continue;
                };
                let s = x.summary;
                if s.count == 0 {
                    let _ = writeln!(
                        md,
                        "| {} | {} | 0 | – | – | – | – | – | {} |",
                        size_name(size),
                        c.name(),
                        x.error.as_deref().unwrap_or("no samples").replace('|', "/")
                    );
                    continue;
                }
                let rat = if *c == Contender::Numaproc {
                    "1×".to_owned()
                } else {
                    ratio(r, *c, size).map_or("–".to_owned(), |(o, b)| {
                        format!("{} ({})", fmt_ratio(o), fmt_ratio(b))
                    })
                };
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    size_name(size),
                    c.name(),
                    s.count,
                    fmt_ns(s.p50_ns as f64),
                    fmt_ns(s.p90_ns as f64),
                    fmt_ns(s.p99_ns as f64),
                    fmt_ns(s.p999_ns as f64),
                    fmt_rate(s.calls_per_s),
                    rat
                );
            }
        }
        for n in &r.notes {
            let _ = writeln!(md, "\nnote: {n}");
        }
        let _ = writeln!(md);
    }
}

/// Throughput of one pair (1 session, 1 worker) of the same kind.
fn pair_rate(report: &Report, t: &ThroughputResult) -> Option<f64> {
    report
        .throughput
        .iter()
        .find(|x| x.job.kind == t.job.kind && x.job.sessions == 1 && x.job.workers == 1)
        .map(|x| x.calls_per_s)
}

/// Scaling efficiency: calls/s over (pairs × one pair's calls/s), where
/// pairs = min(sessions, workers).
pub fn efficiency(report: &Report, t: &ThroughputResult) -> Option<f64> {
    let one = pair_rate(report, t)?;
    let pairs = t.job.sessions.min(t.job.workers).max(1) as f64;
    (one > 0.0).then(|| t.calls_per_s / (pairs * one))
}

fn throughput_table(report: &Report, md: &mut String) {
    if report.throughput.is_empty() {
        return;
    }
    let _ = writeln!(md, "\n## Throughput (sys_ping, sessions × workers)\n");
    let _ = writeln!(
        md,
        "| kind | sessions | workers | calls/s | × one pair | efficiency |"
    );
    let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- |");
    for t in &report.throughput {
        let one = pair_rate(report, t);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            t.job.kind,
            t.job.sessions,
            t.job.workers,
            fmt_rate(t.calls_per_s),
            one.map_or("–".to_owned(), |o| format!("{:.2}×", t.calls_per_s / o)),
            efficiency(report, t).map_or("–".to_owned(), |e| format!("{:.0}%", e * 100.0))
        );
    }
    let _ = writeln!(
        md,
        "\nEfficiency = calls/s ÷ (min(sessions, workers) × the calls/s of one \
         session with one worker). On this machine sessions and workers share \
         {} CPUs, so more than one pair cannot scale.",
        report.machine.cpus.len()
    );
}

fn numa_tables(report: &Report, md: &mut String) {
    for n in &report.numa {
        let _ = writeln!(
            md,
            "\n## NUMA memory matrix ({} SOCs, {} MiB buffer, {} × {})\n",
            n.job.kind,
            n.job.bytes >> 20,
            n.worker_nodes.len(),
            n.mem_nodes.len()
        );
        for (title, pick) in [
            (
                "Sequential read, GB/s",
                (|m: &crate::numa::MemResult| format!("{:.1}", m.read_gbs))
                    as fn(&crate::numa::MemResult) -> String,
            ),
            ("Dependent load (pointer chase), ns", |m| {
                format!("{:.1}", m.chase_ns)
            }),
        ] {
            let _ = writeln!(md, "{title}:\n");
            let mut head = "| worker node \\ memory node |".to_owned();
            let mut rule = "| --- |".to_owned();
            for m in &n.mem_nodes {
                let _ = write!(head, " {m} |");
                rule.push_str(" --- |");
            }
            let _ = writeln!(md, "{head}\n{rule}");
            for w in &n.worker_nodes {
                let mut line = format!("| {w} |");
                for m in &n.mem_nodes {
                    let cell = n
                        .cells
                        .iter()
                        .find(|c| c.worker_node == *w && c.mem_node == *m);
                    let text = match cell.map(|c| &c.result) {
                        Some(Ok(r)) => {
                            let mut t = pick(r);
                            if !r.bound {
                                t.push_str(" (unbound)");
                            } else if r.placed_node.is_some_and(|p| p != *m) {
                                t.push_str(" (misplaced)");
                            }
                            t
                        }
                        Some(Err(e)) => format!("error: {}", e.replace('|', "/")),
                        None => "–".to_owned(),
                    };
                    let _ = write!(line, " {text} |");
                }
                let _ = writeln!(md, "{line}");
            }
            let _ = writeln!(md);
        }
        for note in &n.notes {
            let _ = writeln!(md, "note: {note}\n");
        }
    }
}

/// The markdown summary.
pub fn markdown(report: &Report) -> String {
    let mut md = String::new();
    let m = &report.machine;
    let _ = writeln!(md, "# numaproc benchmark report\n");
    let _ = writeln!(
        md,
        "{} UTC, {} run, {:.0} s of measurement. Machine: {}, {} CPU(s) ({}), NUMA node(s) with memory: {}; {}.\n",
        report.date,
        if report.quick { "quick" } else { "full" },
        report.seconds,
        m.cpu_model,
        m.cpus.len(),
        m.cpus
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
        m.mem_nodes
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
        m.kernel
    );
    targets(report, &mut md);
    headline(report, &mut md);
    throughput_table(report, &mut md);
    numa_tables(report, &mut md);
    latency_tables(report, &mut md);
    let _ = writeln!(md, "## Contenders\n");
    for c in [
        Contender::Numaproc,
        Contender::Client,
        Contender::ShmSpin,
        Contender::ShmYield,
        Contender::Futex,
        Contender::FutexSpin,
        Contender::Uds,
        Contender::Pipe,
        Contender::Crossbeam,
        Contender::FnCall,
        Contender::Iceoryx2,
    ] {
        let _ = writeln!(md, "- `{}`: {}", c.name(), c.about());
    }
    if !report.failures.is_empty() {
        let _ = writeln!(md, "\n## Failed jobs\n");
        for f in &report.failures {
            let _ = writeln!(md, "- {f}");
        }
    }
    md
}

fn csv_latency(report: &Report) -> String {
    let mut s = String::from(
        "kind,placement,wait,size,contender,count,p50_ns,p90_ns,p99_ns,p999_ns,max_ns,mean_ns,calls_per_s,numaproc_over_this_p50,numaproc_over_this_block_median,error\n",
    );
    for r in &report.latency {
        for x in &r.results {
            let (o, b) = if x.contender == Contender::Numaproc {
                (Some(1.0), Some(1.0))
            } else {
                ratio(r, x.contender, x.size).map_or((None, None), |(o, b)| (Some(o), Some(b)))
            };
            let f = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.4}"));
            let sm = x.summary;
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{},{},{:.1},{:.1},{},{},{}",
                r.job.kind,
                r.job.placement.name(),
                r.job.wait.name(),
                x.size,
                x.contender.name(),
                sm.count,
                sm.p50_ns,
                sm.p90_ns,
                sm.p99_ns,
                sm.p999_ns,
                sm.max_ns,
                sm.mean_ns,
                sm.calls_per_s,
                f(o),
                f(b),
                x.error
                    .as_deref()
                    .unwrap_or("")
                    .replace([',', '\n', '"'], " ")
            );
        }
    }
    s
}

fn csv_throughput(report: &Report) -> String {
    let mut s = String::from("kind,sessions,workers,calls,seconds,calls_per_s,efficiency\n");
    for t in &report.throughput {
        let _ = writeln!(
            s,
            "{},{},{},{},{:.3},{:.1},{}",
            t.job.kind,
            t.job.sessions,
            t.job.workers,
            t.calls,
            t.seconds,
            t.calls_per_s,
            efficiency(report, t).map_or(String::new(), |e| format!("{e:.4}"))
        );
    }
    s
}

fn csv_numa(report: &Report) -> String {
    let mut s = String::from(
        "kind,worker_node,mem_node,bytes,read_gbs,chase_ns,bound,placed_node,cpu,error\n",
    );
    for n in &report.numa {
        for c in &n.cells {
            match &c.result {
                Ok(r) => {
                    let _ = writeln!(
                        s,
                        "{},{},{},{},{:.3},{:.2},{},{},{},{}",
                        n.job.kind,
                        c.worker_node,
                        c.mem_node,
                        r.bytes,
                        r.read_gbs,
                        r.chase_ns,
                        r.bound,
                        r.placed_node.map_or(String::new(), |p| p.to_string()),
                        r.cpu.map_or(String::new(), |p| p.to_string()),
                        r.note.as_deref().unwrap_or("").replace(',', " ")
                    );
                }
                Err(e) => {
                    let _ = writeln!(
                        s,
                        "{},{},{},{},,,,,,{}",
                        n.job.kind,
                        c.worker_node,
                        c.mem_node,
                        n.job.bytes,
                        e.replace([',', '\n'], " ")
                    );
                }
            }
        }
    }
    s
}

/// Writes summary.md, latency.csv, throughput.csv, numa.csv, results.json
/// and the plots into `dir`; returns the files written and remarks about
/// plots that could not be drawn.
pub fn write(report: &Report, dir: &Path) -> Result<(Vec<PathBuf>, Vec<String>)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files = Vec::new();
    let mut put = |name: &str, text: String| -> Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        files.push(p);
        Ok(())
    };
    put("summary.md", markdown(report))?;
    put("latency.csv", csv_latency(report))?;
    put("throughput.csv", csv_throughput(report))?;
    put("numa.csv", csv_numa(report))?;
    put("results.json", serde_json::to_string_pretty(report)?)?;
    let (plots, remarks) = crate::report::plots::draw_all(report, dir);
    files.extend(plots);
    Ok((files, remarks))
}

pub mod plots;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::LatencyJob;
    use crate::stats::Summary;

    fn result(c: Contender, p50: u64, blocks: Vec<u64>) -> ContenderResult {
        ContenderResult {
            contender: c,
            size: 0,
            summary: Summary {
                count: 10,
                p50_ns: p50,
                ..Summary::default()
            },
            block_p50_ns: blocks,
            error: None,
        }
    }

    #[test]
    fn ratios_pair_blocks() {
        let r = LatencyResult {
            job: LatencyJob {
                kind: numaproc::SocKind::Emulated,
                placement: Placement::Cross,
                wait: WaitCase::Hot,
                sizes: vec![0],
                contenders: vec![Contender::Numaproc, Contender::ShmSpin],
                reference: Contender::ShmSpin,
                blocks: 3,
                block_calls: 10,
                block_ms: 1,
                gap_us: 0,
                session_cpu: None,
                worker_cpu: None,
                prefix: "t".into(),
            },
            worker: (0, 0),
            worker_cpu: None,
            session_cpu: None,
            timer_ns: 20.0,
            results: vec![
                result(Contender::Numaproc, 300, vec![150, 600, 160]),
                result(Contender::ShmSpin, 200, vec![100, 500, 100]),
            ],
            notes: vec![],
        };
        let (o, b) = ratio(&r, Contender::ShmSpin, 0).unwrap();
        assert!((o - 1.5).abs() < 1e-9);
        assert!((b - 1.5).abs() < 1e-9, "median of 1.5, 1.2, 1.6");
        assert_eq!(verdict(1.4, 1.5, true), "met");
        assert_eq!(verdict(1.8, 1.5, true), "missed by 20%");
        assert_eq!(size_name(1 << 20), "1 MiB");
        assert_eq!(size_name(4096), "4 KiB");
        assert_eq!(size_name(0), "0 B");
    }
}
