//! The report: a markdown summary with ratio columns, CSV files, the raw
//! JSON, and plots (SVG and PNG) in one directory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::spec::{
    Contender, ContenderResult, LatencyResult, NumaResult, Placement, ProbeResult, StartConfig,
    StartResult, ThroughputResult, WaitCase,
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
    /// Start jobs (one per configuration and run).
    #[serde(default)]
    pub start: Vec<StartResult>,
    /// Start probes (one per run).
    #[serde(default)]
    pub probes: Vec<ProbeResult>,
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
/// Target: the same-core hot round trip at most this many times the raw
/// same-core futex ping-pong.
pub const TARGET_SAME_CORE: f64 = 1.2;
/// The payload of the large-payload targets.
pub const LARGE: usize = 1 << 20;
/// Target: the 1 MiB echo (the caller copies in and out) at most this many
/// times the floor plus two memcpy of 1 MiB.
pub const TARGET_LARGE_COPY: f64 = 1.2;
/// Target: the 1 MiB zero-copy echo at most this many times the floor plus
/// one memcpy of 1 MiB (the procedure's).
pub const TARGET_LARGE_ZERO_COPY: f64 = 1.1;
/// Target: a library procedure (8 B in, 8 B out) at most this many times
/// `sys_ping`.
pub const TARGET_LIBRARY: f64 = 1.15;
/// Target: 2 forked SOCs ready within this many ms.
pub const TARGET_START_FORKED_MS: f64 = 5.0;
/// Target: 2 spawned SOCs with a library ready within this many ms.
pub const TARGET_START_SPAWNED_MS: f64 = 10.0;
/// Target: a killed SOC serves again within this many ms beyond its
/// back-off.
pub const TARGET_RESTART_MS: f64 = 3.0;
/// Sessions sharing fewer workers, where the threads fit the CPUs: at
/// least this share of the calls/s of as many pairs as there are workers.
pub const TARGET_SHARED: f64 = 0.7;

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

/// numaproc's contender `who` at `size` over a composite baseline: the
/// floor's empty round trip (`ShmSpin` at 0 B) plus `copies` times a
/// memcpy of `size` bytes, all measured in the job; overall (p50s) and the
/// median over blocks paired in order. Also returns the baseline's p50.
pub fn ratio_to_copies(
    r: &LatencyResult,
    who: Contender,
    size: usize,
    copies: f64,
) -> Option<(f64, f64, f64)> {
    let n = find(r, who, size)?;
    let floor = find(r, Contender::ShmSpin, 0)?;
    let copy = find(r, Contender::Memcpy, size)?;
    let base = floor.summary.p50_ns as f64 + copies * copy.summary.p50_ns as f64;
    let per_block: Vec<f64> = n
        .block_p50_ns
        .iter()
        .zip(&floor.block_p50_ns)
        .zip(&copy.block_p50_ns)
        .map(|((&x, &f), &c)| x as f64 / (f as f64 + copies * c as f64).max(1.0))
        .collect();
    Some((
        n.summary.p50_ns as f64 / base.max(1.0),
        median(&per_block),
        base,
    ))
}

/// The median, smallest and largest of some samples (zeros when empty).
pub fn spread(values: &[u64]) -> (f64, f64, f64) {
    let v: Vec<f64> = values.iter().map(|&x| x as f64).collect();
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(0.0, f64::max);
    if v.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (median(&v), min, max)
    }
}

/// The start jobs of one configuration.
fn start_runs<'a>(report: &'a Report, c: &StartConfig) -> Vec<&'a StartResult> {
    report.start.iter().filter(|s| s.job.config == *c).collect()
}

/// The configurations of the start jobs, in the order they first ran.
pub fn start_configs(report: &Report) -> Vec<StartConfig> {
    let mut out: Vec<StartConfig> = Vec::new();
    for s in &report.start {
        if !out.contains(&s.job.config) {
            out.push(s.job.config.clone());
        }
    }
    out
}

/// Ready times (ns) of a configuration's runs.
pub fn ready_samples(report: &Report, c: &StartConfig) -> Vec<u64> {
    start_runs(report, c).iter().map(|s| s.ready_ns).collect()
}

/// Restart times (from the kill to a call served again, ns) of a
/// configuration's runs.
pub fn restart_samples(report: &Report, c: &StartConfig) -> Vec<u64> {
    start_runs(report, c)
        .iter()
        .flat_map(|s| s.restarts.iter().map(|r| r.served_ns))
        .collect()
}

/// The configuration a start target is about: the machine's topology,
/// default buffers and back-off.
pub fn standard_config(report: &Report, c: &StartConfig) -> bool {
    c.synthetic.is_none()
        && c.buffer == numaproc::DEFAULT_BUFFER
        && c.backoff_ms == numaproc::RestartPolicy::default().backoff_ms
        && !ready_samples(report, c).is_empty()
}

fn fmt_ms(ns: f64) -> String {
    format!("{:.2} ms", ns / 1e6)
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
        "{} SOC, {}, {} worker{}",
        r.job.kind,
        r.job.placement.name(),
        r.job.wait.name(),
        if r.job.libraries {
            ", library procedures"
        } else {
            ""
        }
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

/// The targets, checked against this run.
fn targets(report: &Report, md: &mut String) {
    let _ = writeln!(md, "## Targets (p50, same run)\n");
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
        match (r.job.placement, r.job.wait, r.job.libraries) {
            (_, WaitCase::Hot, true) => {
                for c in [Contender::RustLib, Contender::CLib] {
                    row(
                        "library procedure ≤ 1.15× sys_ping (ratio: library ÷ sys_ping)",
                        c,
                        TARGET_LIBRARY,
                        true,
                        true,
                    );
                }
            }
            (Placement::Cross, WaitCase::Hot, false) => {
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
                any |= large_rows(r, md);
            }
            (Placement::Cross, WaitCase::Sleeping, _) => row(
                "sleeping ≤ 1.1× raw futex (wake + spin back)",
                Contender::FutexSpin,
                TARGET_FUTEX,
                true,
                false,
            ),
            (Placement::Cross, WaitCase::BothSleep, _) => row(
                "sleeping ≤ 1.1× raw futex (both sleep)",
                Contender::Futex,
                TARGET_FUTEX,
                true,
                false,
            ),
            (Placement::Same, WaitCase::Hot, false) => row(
                "same-core ≤ 1.2× raw futex ping-pong",
                Contender::Futex,
                TARGET_SAME_CORE,
                true,
                false,
            ),
            _ => {}
        }
    }
    any |= start_rows(report, md);
    any |= shared_rows(report, md);
    if !any {
        let _ = writeln!(md, "| (no job with a target ran) | | | | | |");
    }
    let _ = writeln!(
        md,
        "\nThe verdict uses the block-paired median: each numaproc block ran right \
         next to the baseline's, so both saw the same placement of the vCPUs. The \
         large-payload baselines add up the floor's empty round trip and memcpy of \
         1 MiB measured in the same job (see \"Large payloads\"). Start and restart \
         targets are limits on the p50 over fresh processes (see \"Start and restart\")."
    );
    if report.quick {
        let _ = writeln!(
            md,
            "\nThis is a quick run (a few short blocks per contender, a few starts per \
             configuration): where the host moves the vCPUs during it, a verdict can \
             flip. The full run (`scripts/bench`) decides."
        );
    }
}

/// The large-payload target rows of a hot cross-core job; whether any.
fn large_rows(r: &LatencyResult, md: &mut String) -> bool {
    let mut any = false;
    for (target, who, copies, limit) in [
        (
            "1 MiB echo ≤ 1.2× (floor + 2 memcpy of 1 MiB)",
            Contender::Numaproc,
            2.0,
            TARGET_LARGE_COPY,
        ),
        (
            "1 MiB zero-copy echo ≤ 1.1× (floor + 1 memcpy of 1 MiB)",
            Contender::ZeroCopy,
            1.0,
            TARGET_LARGE_ZERO_COPY,
        ),
    ] {
        let Some((o, b, base)) = ratio_to_copies(r, who, LARGE, copies) else {
            continue;
        };
        let Some(n) = find(r, who, LARGE) else {
            continue;
        };
        any = true;
        let _ = writeln!(
            md,
            "| {target} | {}: {} | {} | floor + {copies} × memcpy {} | {o:.2}× / {b:.2}× | {} |",
            job_title(r),
            who.name(),
            fmt_ns(n.summary.p50_ns as f64),
            fmt_ns(base),
            verdict(b, limit, true)
        );
    }
    any
}

/// The target rows of sessions sharing fewer workers where the sessions
/// and workers fit the CPUs with at most one thread more than CPUs (here:
/// 2 sessions on 1 worker on 2 CPUs); whether any.
fn shared_rows(report: &Report, md: &mut String) -> bool {
    let cpus = report.machine.cpus.len();
    let mut any = false;
    for t in &report.throughput {
        let (k, m) = (t.job.sessions, t.job.workers);
        if k <= m || k + m > cpus + 1 {
            continue;
        }
        let (Some(one), Some(ratio)) = (pair_rate(report, t), pair_ratio(report, t)) else {
            continue;
        };
        let share = ratio / m as f64;
        any = true;
        let _ = writeln!(
            md,
            "| {k} sessions on {m} worker{} ≥ {:.0}% of {m} pair{} | {} SOC, sys_ping, {:.1} s; claim wait p99 {} (worst session {}) | {} | {m} × one pair {} | {:.2}× / {share:.2}× | {} |",
            if m == 1 { "" } else { "s" },
            TARGET_SHARED * 100.0,
            if m == 1 { "" } else { "s" },
            t.job.kind,
            t.seconds,
            fmt_ns(t.claim_wait.p99_ns as f64),
            fmt_ns(worst_wait_p99(t) as f64),
            fmt_rate(t.calls_per_s),
            fmt_rate(one),
            t.calls_per_s / (m as f64 * one),
            verdict(share, TARGET_SHARED, false)
        );
    }
    any
}

/// The highest per-session p99 claim wait of a throughput job.
fn worst_wait_p99(t: &ThroughputResult) -> u64 {
    t.claim_wait_per_session
        .iter()
        .map(|w| w.p99_ns)
        .max()
        .unwrap_or(0)
}

/// The start and restart target rows; whether any.
fn start_rows(report: &Report, md: &mut String) -> bool {
    use numaproc::SocKind;
    let mut any = false;
    let configs: Vec<StartConfig> = start_configs(report)
        .into_iter()
        .filter(|c| standard_config(report, c))
        .collect();
    for c in &configs {
        let (target, limit_ms) = match (c.kind, c.socs, c.library) {
            (SocKind::Forked, 2, false) => ("2 forked SOCs ready ≤ 5 ms", TARGET_START_FORKED_MS),
            (SocKind::Spawned, 2, true) => (
                "2 spawned SOCs with a library ready ≤ 10 ms",
                TARGET_START_SPAWNED_MS,
            ),
            _ => continue,
        };
        let samples = ready_samples(report, c);
        let (p50, min, max) = spread(&samples);
        any = true;
        let _ = writeln!(
            md,
            "| {target} | {}; {} fresh processes, `Engine::start` to one call served by every SOC | {} ({}–{}) | limit {limit_ms} ms | {:.2}× of the limit | {} |",
            c.describe(),
            samples.len(),
            fmt_ms(p50),
            fmt_ms(min),
            fmt_ms(max),
            p50 / (limit_ms * 1e6),
            verdict(p50 / 1e6, limit_ms, true)
        );
    }
    for c in configs.iter().filter(|c| c.restartable() && c.socs == 1) {
        let samples = restart_samples(report, c);
        if samples.is_empty() {
            continue;
        }
        let backoff = c.backoff_ms as f64 * 1e6;
        let (p50, min, max) = spread(&samples);
        let beyond = p50 - backoff;
        any = true;
        let _ = writeln!(
            md,
            "| restart ≤ 3 ms beyond the back-off | {}; {} kills (`kill -9`) to the first call served again | {} total ({}–{}); {} beyond | back-off {} ms, limit {} ms beyond | {:.2}× of the limit | {} |",
            c.describe(),
            samples.len(),
            fmt_ms(p50),
            fmt_ms(min),
            fmt_ms(max),
            fmt_ms(beyond),
            c.backoff_ms,
            TARGET_RESTART_MS,
            beyond / (TARGET_RESTART_MS * 1e6),
            verdict(beyond / 1e6, TARGET_RESTART_MS, true)
        );
    }
    any
}

fn headline(report: &Report, md: &mut String) {
    if !report
        .latency
        .iter()
        .any(|r| !r.job.libraries && find(r, Contender::Numaproc, 0).is_some())
    {
        return;
    }
    let _ = writeln!(md, "\n## Headline: empty round trip (0 B), p50\n");
    let _ = writeln!(
        md,
        "| case | numaproc p50 | p99 | p99.9 | calls/s | reference | ref p50 | × ref | × futex | × uds | iceoryx2 ÷ numaproc |"
    );
    let _ = writeln!(
        md,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for r in report.latency.iter().filter(|r| !r.job.libraries) {
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

fn large_payloads(report: &Report, md: &mut String) {
    let jobs: Vec<&LatencyResult> = report
        .latency
        .iter()
        .filter(|r| {
            r.job.placement == Placement::Cross
                && r.job.wait == WaitCase::Hot
                && find(r, Contender::Memcpy, LARGE).is_some()
        })
        .collect();
    if jobs.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## Large payloads (1 MiB in, 1 MiB out, hot worker, cross-core, p50)\n"
    );
    let _ = writeln!(
        md,
        "| SOC kind | numaproc (copies in and out) | zero-copy | floor (0 B) | memcpy 1 MiB | shm-spin 1 MiB | copy ÷ (floor + 2 memcpy) | copy ÷ shm-spin 1 MiB | zero-copy ÷ (floor + 1 memcpy) | zero-copy ÷ floor |"
    );
    let _ = writeln!(
        md,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    let p50 = |r: &LatencyResult, c: Contender, size: usize| {
        find(r, c, size).map_or("–".to_owned(), |x| fmt_ns(x.summary.p50_ns as f64))
    };
    let rat = |v: Option<(f64, f64, f64)>| {
        v.map_or("–".to_owned(), |(o, b, _)| {
            format!("{} ({})", fmt_ratio(o), fmt_ratio(b))
        })
    };
    for r in jobs {
        let shm = ratio(r, Contender::ShmSpin, LARGE).map_or("–".to_owned(), |(o, b)| {
            format!("{} ({})", fmt_ratio(o), fmt_ratio(b))
        });
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.job.kind,
            p50(r, Contender::Numaproc, LARGE),
            p50(r, Contender::ZeroCopy, LARGE),
            p50(r, Contender::ShmSpin, 0),
            p50(r, Contender::Memcpy, LARGE),
            p50(r, Contender::ShmSpin, LARGE),
            rat(ratio_to_copies(r, Contender::Numaproc, LARGE, 2.0)),
            shm,
            rat(ratio_to_copies(r, Contender::ZeroCopy, LARGE, 1.0)),
            rat(ratio_to_copies(r, Contender::ZeroCopy, LARGE, 0.0)),
        );
    }
    let _ = writeln!(
        md,
        "\nThe numaproc row makes two copies: the caller's into the input buffer and \
         the caller's out of it (`sys_echo` answers in place, in the input buffer, \
         and copies nothing); the zero-copy row none (the caller leaves its input in \
         place and reads the answer through `wait()`'s slice), so its target, which \
         allows the procedure one copy, is met by construction, and the last column \
         holds it against the empty call. A procedure that reads all of its input \
         pulls it across cores, as shm-spin at 1 MiB does: two raw processes making \
         three copies (in, echo, out). `memcpy` is one copy between two buffers of \
         the caller, on its CPU. In brackets, block-paired medians."
    );
}

fn start_tables(report: &Report, md: &mut String) {
    let configs = start_configs(report);
    if configs.is_empty() && report.probes.is_empty() {
        return;
    }
    let _ = writeln!(md, "\n## Start and restart\n");
    let _ = writeln!(
        md,
        "Each run is a fresh process (as an application starts its engine). *Ready*: \
         from the call of `Engine::start` until one `sys_ping` was served by every SOC. \
         *Second engine*: the same configuration started again in the same process \
         after a shutdown.\n"
    );
    let _ = writeln!(
        md,
        "| configuration | workers | runs | ready p50 | min | max | `Engine::start` alone p50 | second engine p50 | shutdown p50 |"
    );
    let _ = writeln!(
        md,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for c in &configs {
        let runs = start_runs(report, c);
        let ready = spread(&runs.iter().map(|s| s.ready_ns).collect::<Vec<_>>());
        let start = spread(&runs.iter().map(|s| s.start_ns).collect::<Vec<_>>());
        let again: Vec<u64> = runs.iter().filter_map(|s| s.again_ready_ns).collect();
        let shutdown = spread(&runs.iter().map(|s| s.shutdown_ns).collect::<Vec<_>>());
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.describe(),
            runs.first().map_or(0, |s| s.workers),
            runs.len(),
            fmt_ms(ready.0),
            fmt_ms(ready.1),
            fmt_ms(ready.2),
            fmt_ms(start.0),
            if again.is_empty() {
                "–".to_owned()
            } else {
                fmt_ms(spread(&again).0)
            },
            fmt_ms(shutdown.0)
        );
    }
    let restartable: Vec<&StartConfig> = configs
        .iter()
        .filter(|c| !restart_samples(report, c).is_empty())
        .collect();
    if !restartable.is_empty() {
        let _ = writeln!(
            md,
            "\nRestart: `kill -9` of SOC 0's process (its pid from `Engine::socs`) until \
             a call to it was served again; *noticed*: until `Engine::socs` no longer \
             said ready.\n"
        );
        let _ = writeln!(
            md,
            "| configuration | back-off | kills | noticed p50 | served again p50 | min | max | beyond the back-off p50 | min | max |"
        );
        let _ = writeln!(
            md,
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for c in &restartable {
            let samples = restart_samples(report, c);
            let noticed: Vec<u64> = start_runs(report, c)
                .iter()
                .flat_map(|s| s.restarts.iter().map(|r| r.noticed_ns))
                .collect();
            let (p50, min, max) = spread(&samples);
            let b = c.backoff_ms as f64 * 1e6;
            let _ = writeln!(
                md,
                "| {} | {} ms | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.describe(),
                c.backoff_ms,
                samples.len(),
                fmt_ms(spread(&noticed).0),
                fmt_ms(p50),
                fmt_ms(min),
                fmt_ms(max),
                fmt_ms(p50 - b),
                fmt_ms(min - b),
                fmt_ms(max - b)
            );
        }
        restart_phases(report, &restartable, md);
    }
    start_breakdown(report, &configs, md);
    let notes: Vec<String> = report
        .start
        .iter()
        .flat_map(|s| {
            s.notes
                .iter()
                .map(move |n| format!("{} (run {}): {n}", s.job.config.describe(), s.job.rep + 1))
        })
        .collect();
    for n in notes {
        let _ = writeln!(md, "\nnote: {n}");
    }
}

/// The phases of the restarts, from what a thread polling `Engine::socs`
/// saw: p50 of each kill's own differences.
fn restart_phases(report: &Report, configs: &[&StartConfig], md: &mut String) {
    let _ = writeln!(
        md,
        "\nWhere a restart's time goes (p50 over the kills of each kill's own \
         phases; a thread polled `Engine::socs` every 50 µs for the new pid and the \
         ready state):\n"
    );
    let _ = writeln!(
        md,
        "| configuration | kill → death noticed | → new process (back-off, launch) | → ready (the new SOC's start) | → call served |"
    );
    let _ = writeln!(md, "| --- | --- | --- | --- | --- |");
    for c in configs {
        let kills: Vec<_> = start_runs(report, c)
            .iter()
            .flat_map(|s| s.restarts.iter().copied())
            .collect();
        let phase = |f: &dyn Fn(&crate::spec::RestartSample) -> Option<i128>| {
            let v: Vec<f64> = kills.iter().filter_map(f).map(|x| x as f64).collect();
            if v.is_empty() {
                "–".to_owned()
            } else {
                fmt_ms(median(&v))
            }
        };
        let d = |a: Option<u64>, b: Option<u64>| Some(i128::from(a?) - i128::from(b?));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            c.describe(),
            phase(&|k| Some(i128::from(k.noticed_ns))),
            phase(&|k| d(k.launched_ns, Some(k.noticed_ns))),
            phase(&|k| d(k.ready_ns, k.launched_ns)),
            phase(&|k| d(Some(k.served_ns), k.ready_ns)),
        );
    }
}

/// Where the start time goes, as seen from outside: the probes, and the
/// differences between configurations that differ in one thing.
fn start_breakdown(report: &Report, configs: &[StartConfig], md: &mut String) {
    let _ = writeln!(md, "\n### Where the start time goes\n");
    if !report.probes.is_empty() {
        let _ = writeln!(md, "Costs measured alone, each run in a fresh process:\n");
        let _ = writeln!(md, "| cost | p50 | min | max |");
        let _ = writeln!(md, "| --- | --- | --- | --- |");
        type Pick = fn(&ProbeResult) -> u64;
        let rows: [(&str, Pick); 5] = [
            ("hwloc: `Topology::detect`, first in the process", |p| {
                p.topology_ns
            }),
            ("hwloc: `Topology::detect` again", |p| p.topology_again_ns),
            (
                "hwloc: `Topology::synthetic` of this machine's shape",
                |p| p.synthetic_ns,
            ),
            ("`fork` of the process, child `_exit`, `waitpid`", |p| {
                p.fork_ns
            }),
            (
                "fork + exec of this binary (`--version`) until it exited",
                |p| p.exec_ns,
            ),
        ];
        for (what, pick) in rows {
            let v: Vec<u64> = report.probes.iter().map(pick).collect();
            let (p50, min, max) = spread(&v);
            let _ = writeln!(
                md,
                "| {what} | {} | {} | {} |",
                fmt_ms(p50),
                fmt_ms(min),
                fmt_ms(max)
            );
        }
    }
    let ready = |c: &StartConfig| {
        let v = ready_samples(report, c);
        (!v.is_empty()).then(|| spread(&v).0)
    };
    let mut lines = Vec::new();
    for c in configs.iter().filter(|c| standard_config(report, c)) {
        let Some(this) = ready(c) else { continue };
        let mut diff = |what: &str, other: StartConfig| {
            if let Some(that) = ready(&other) {
                lines.push(format!(
                    "- {}: {what}: {} ({} against {})",
                    c.describe(),
                    fmt_ms(this - that),
                    fmt_ms(this),
                    fmt_ms(that)
                ));
            }
        };
        if c.socs == 2 && !c.library {
            let mut o = c.clone();
            o.synthetic = report
                .start
                .iter()
                .find_map(|s| s.job.config.synthetic.clone());
            diff(
                "reading the machine's topology (against a synthetic one)",
                o,
            );
            diff(
                "64 KiB buffers per worker (against 64 B)",
                StartConfig {
                    buffer: 64,
                    ..c.clone()
                },
            );
            diff(
                "the second SOC (against 1 SOC)",
                StartConfig {
                    socs: 1,
                    ..c.clone()
                },
            );
        }
        if c.library {
            diff(
                "loading the Rust library (against none)",
                StartConfig {
                    library: false,
                    ..c.clone()
                },
            );
        }
        let again: Vec<u64> = start_runs(report, c)
            .iter()
            .filter_map(|s| s.again_ready_ns)
            .collect();
        if !again.is_empty() {
            let a = spread(&again).0;
            lines.push(format!(
                "- {}: the first engine of the process against the second: {} ({} against {})",
                c.describe(),
                fmt_ms(this - a),
                fmt_ms(this),
                fmt_ms(a)
            ));
        }
        if c.restartable() && c.socs == 1 && !c.library {
            let zero = StartConfig {
                backoff_ms: 0,
                ..c.clone()
            };
            let (a, b) = (restart_samples(report, c), restart_samples(report, &zero));
            if !a.is_empty() && !b.is_empty() {
                let (a, b) = (spread(&a).0, spread(&b).0);
                lines.push(format!(
                    "- {}: restart with a {} ms back-off against none: {} ({} against {})",
                    c.describe(),
                    c.backoff_ms,
                    fmt_ms(a - b),
                    fmt_ms(a),
                    fmt_ms(b)
                ));
            }
        }
    }
    if !lines.is_empty() {
        let _ = writeln!(
            md,
            "\nDifferences of ready p50 between configurations of this run that differ \
             in one thing (noisy: each is a difference of two medians of a few runs):\n"
        );
        for l in lines {
            let _ = writeln!(md, "{l}");
        }
    }
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

/// Throughput of one pair (1 session, 1 worker) of the same kind: the
/// job's own baseline, measured beside it, or else the one-pair job of
/// the run.
fn pair_rate(report: &Report, t: &ThroughputResult) -> Option<f64> {
    if let Some(p) = &t.paired {
        return Some(p.pair_calls_per_s);
    }
    report
        .throughput
        .iter()
        .find(|x| x.job.kind == t.job.kind && x.job.sessions == 1 && x.job.workers == 1)
        .map(|x| x.calls_per_s)
}

/// A throughput job's calls/s over one pair's: the median over its block
/// pairs where it has a baseline of its own, else the ratio of the totals
/// to the run's one-pair job (1 for that job itself).
fn pair_ratio(report: &Report, t: &ThroughputResult) -> Option<f64> {
    if let Some(p) = &t.paired {
        return Some(p.ratio_median);
    }
    let one = pair_rate(report, t)?;
    (one > 0.0).then(|| t.calls_per_s / one)
}

/// Pairs that can run at once: no more than the sessions, the workers,
/// or half the CPUs (a spinning pair keeps two busy).
fn limit_pairs(t: &ThroughputResult, cpus: usize) -> usize {
    t.job.sessions.min(t.job.workers).min(cpus / 2).max(1)
}

/// Scaling efficiency: calls/s over (pairs × one pair's calls/s), where
/// pairs = min(sessions, workers).
pub fn efficiency(report: &Report, t: &ThroughputResult) -> Option<f64> {
    let pairs = t.job.sessions.min(t.job.workers).max(1) as f64;
    Some(pair_ratio(report, t)? / pairs)
}

fn throughput_table(report: &Report, md: &mut String) {
    if report.throughput.is_empty() {
        return;
    }
    let _ = writeln!(md, "\n## Throughput (sys_ping, sessions × workers)\n");
    let cpus = report.machine.cpus.len();
    let _ = writeln!(
        md,
        "| kind | sessions | workers | calls/s | × one pair | efficiency | of the limit | claim wait p50 / p99 | worst session p99 | calls per session |"
    );
    let _ = writeln!(
        md,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for t in &report.throughput {
        let ratio = pair_ratio(report, t);
        let limit = limit_pairs(t, cpus) as f64;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} |",
            t.job.kind,
            t.job.sessions,
            t.job.workers,
            fmt_rate(t.calls_per_s),
            ratio.map_or("–".to_owned(), |r| format!("{r:.2}×")),
            efficiency(report, t).map_or("–".to_owned(), |e| format!("{:.0}%", e * 100.0)),
            ratio.map_or("–".to_owned(), |r| format!("{:.0}%", r / limit * 100.0)),
            fmt_ns(t.claim_wait.p50_ns as f64),
            fmt_ns(t.claim_wait.p99_ns as f64),
            fmt_ns(worst_wait_p99(t) as f64),
            t.per_session
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    let _ = writeln!(
        md,
        "\n*× one pair* is the median over the job's blocks of its calls/s ÷ \
         those of one session calling one worker of the same engine, measured in \
         blocks alternating with the job's (so that both see the same state \
         of the machine, whose vCPUs may move between runs). Efficiency = \
         × one pair ÷ min(sessions, workers). A pair of a spinning session and a spinning \
         worker keeps two CPUs busy, so on {cpus} CPUs at most {} pairs run at \
         once: *of the limit* is × one pair ÷ min(sessions, workers, {}), \
         the physical limit where sessions and workers do not fit the \
         CPUs. The claim wait is the time `claim` took for one call in {} of \
         each session (the wait for a worker, p50 / p99 of all sessions, and \
         the p99 of the session that waited most).",
        (cpus / 2).max(1),
        (cpus / 2).max(1),
        crate::spec::CLAIM_SAMPLE_EVERY
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
    large_payloads(report, &mut md);
    start_tables(report, &mut md);
    throughput_table(report, &mut md);
    numa_tables(report, &mut md);
    latency_tables(report, &mut md);
    let _ = writeln!(md, "## Contenders\n");
    for c in [
        Contender::Numaproc,
        Contender::ZeroCopy,
        Contender::Client,
        Contender::Echo8,
        Contender::RustLib,
        Contender::CLib,
        Contender::ShmSpin,
        Contender::ShmYield,
        Contender::Futex,
        Contender::FutexSpin,
        Contender::Uds,
        Contender::Pipe,
        Contender::Crossbeam,
        Contender::FnCall,
        Contender::Memcpy,
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

fn start_columns(c: &StartConfig) -> String {
    format!(
        "{},{},{},{},{},{}",
        c.kind,
        c.socs,
        c.library,
        if c.synthetic.is_some() {
            "synthetic"
        } else {
            "machine"
        },
        c.buffer,
        c.backoff_ms
    )
}

fn csv_start(report: &Report) -> String {
    let mut s = String::from(
        "kind,socs,library,topology,buffer,backoff_ms,run,workers,start_ns,ready_ns,again_ready_ns,shutdown_ns\n",
    );
    for r in &report.start {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{}",
            start_columns(&r.job.config),
            r.job.rep + 1,
            r.workers,
            r.start_ns,
            r.ready_ns,
            r.again_ready_ns.map_or(String::new(), |n| n.to_string()),
            r.shutdown_ns
        );
    }
    s
}

fn csv_restart(report: &Report) -> String {
    let mut s = String::from(
        "kind,socs,library,topology,buffer,backoff_ms,run,kill,noticed_ns,launched_ns,ready_ns,served_ns,beyond_backoff_ns,failed_calls\n",
    );
    for r in &report.start {
        for (i, x) in r.restarts.iter().enumerate() {
            let b = r.job.config.backoff_ms.saturating_mul(1_000_000);
            let opt = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{}",
                start_columns(&r.job.config),
                r.job.rep + 1,
                i + 1,
                x.noticed_ns,
                opt(x.launched_ns),
                opt(x.ready_ns),
                x.served_ns,
                i128::from(x.served_ns) - i128::from(b),
                x.failed_calls
            );
        }
    }
    s
}

fn csv_throughput(report: &Report) -> String {
    let mut s = String::from(
        "kind,sessions,workers,calls,seconds,calls_per_s,pair_calls_per_s,over_one_pair,efficiency,claim_wait_p50_ns,claim_wait_p99_ns,claim_wait_worst_session_p99_ns,per_session\n",
    );
    for t in &report.throughput {
        let _ = writeln!(
            s,
            "{},{},{},{},{:.3},{:.1},{},{},{},{},{},{},{}",
            t.job.kind,
            t.job.sessions,
            t.job.workers,
            t.calls,
            t.seconds,
            t.calls_per_s,
            pair_rate(report, t).map_or(String::new(), |r| format!("{r:.1}")),
            pair_ratio(report, t).map_or(String::new(), |r| format!("{r:.4}")),
            efficiency(report, t).map_or(String::new(), |e| format!("{e:.4}")),
            t.claim_wait.p50_ns,
            t.claim_wait.p99_ns,
            worst_wait_p99(t),
            t.per_session
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" ")
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

/// Writes summary.md, latency.csv, start.csv, restart.csv, throughput.csv,
/// numa.csv, results.json and the plots into `dir`; returns the files written and remarks about
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
    put("start.csv", csv_start(report))?;
    put("restart.csv", csv_restart(report))?;
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
                libraries: false,
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

    /// A shared-worker job's ratio is its block-paired median where it
    /// has a baseline of its own, else the ratio to the run's one-pair
    /// job; its target row appears where sessions and workers fit the
    /// CPUs with one thread to spare, with the verdict of that median.
    #[test]
    fn shared_worker_targets_use_the_paired_baseline() {
        use crate::spec::{PairedBaseline, ThroughputJob};
        let tp =
            |sessions: usize, workers: usize, rate: f64, paired: Option<f64>| ThroughputResult {
                job: ThroughputJob {
                    kind: numaproc::SocKind::Forked,
                    sessions,
                    workers,
                    duration_ms: 1000,
                    blocks: 4,
                    prefix: "t".into(),
                },
                calls: (rate as u64),
                seconds: 1.0,
                calls_per_s: rate,
                per_session: vec![rate as u64 / sessions as u64; sessions],
                session_cpus: vec![None; sessions],
                claim_wait: Summary::default(),
                claim_wait_per_session: vec![
                    Summary {
                        p99_ns: 300_000,
                        ..Summary::default()
                    };
                    sessions
                ],
                paired: paired.map(|r| PairedBaseline {
                    pair_calls_per_s: 5e6,
                    ratio_median: r,
                    blocks: 4,
                }),
            };
        let mut report = Report {
            date: String::new(),
            machine: Machine {
                cpu_model: String::new(),
                cpus: vec![0, 1],
                mem_nodes: vec![0],
                kernel: String::new(),
            },
            quick: false,
            seconds: 1.0,
            latency: vec![],
            throughput: vec![
                tp(1, 1, 8e6, None),
                tp(2, 1, 4e6, Some(0.82)),
                tp(4, 2, 3e6, Some(0.75)),
                tp(2, 2, 4e6, None),
            ],
            numa: vec![],
            start: vec![],
            probes: vec![],
            failures: vec![],
        };
        let ratio = |r: &Report, i: usize| pair_ratio(r, &r.throughput[i]).unwrap();
        assert!((ratio(&report, 0) - 1.0).abs() < 1e-9);
        assert!((ratio(&report, 1) - 0.82).abs() < 1e-9, "the paired median");
        assert!(
            (ratio(&report, 3) - 0.5).abs() < 1e-9,
            "4 M/s over the pair job's 8"
        );
        assert!((efficiency(&report, &report.throughput[2]).unwrap() - 0.375).abs() < 1e-9);
        let mut md = String::new();
        assert!(shared_rows(&report, &mut md));
        assert_eq!(md.lines().count(), 1, "only 2 on 1 fits 2 CPUs: {md}");
        assert!(
            md.contains("2 sessions on 1 worker ≥ 70% of 1 pair"),
            "{md}"
        );
        assert!(
            md.contains("0.80× / 0.82×") && md.ends_with("| met |\n"),
            "{md}"
        );
        assert!(md.contains("worst session 300.0 µs"), "{md}");
        report.throughput[1].paired.as_mut().unwrap().ratio_median = 0.56;
        let mut md = String::new();
        shared_rows(&report, &mut md);
        assert!(md.ends_with("| missed by 20% |\n"), "{md}");
        // On 16 CPUs, 4 on 2 fits too.
        report.machine.cpus = (0..16).collect();
        let mut md = String::new();
        shared_rows(&report, &mut md);
        assert_eq!(md.lines().count(), 2, "{md}");
        assert!(
            md.contains("4 sessions on 2 workers ≥ 70% of 2 pairs"),
            "{md}"
        );
        assert!(md.contains("missed by 46%"), "0.75 / 2 = 0.375: {md}");
    }

    #[test]
    fn large_payload_baselines_add_the_floor_and_the_copies() {
        let at = |c: Contender, size: usize, p50: u64, blocks: Vec<u64>| ContenderResult {
            size,
            ..result(c, p50, blocks)
        };
        let r = LatencyResult {
            job: LatencyJob {
                kind: numaproc::SocKind::Forked,
                placement: Placement::Cross,
                wait: WaitCase::Hot,
                sizes: vec![0, LARGE],
                contenders: vec![Contender::Numaproc, Contender::ShmSpin, Contender::Memcpy],
                reference: Contender::ShmSpin,
                blocks: 2,
                block_calls: 10,
                block_ms: 1,
                gap_us: 0,
                session_cpu: None,
                worker_cpu: None,
                prefix: "t".into(),
                libraries: false,
            },
            worker: (0, 0),
            worker_cpu: None,
            session_cpu: None,
            timer_ns: 20.0,
            results: vec![
                at(Contender::ShmSpin, 0, 100, vec![100, 200]),
                at(Contender::Numaproc, LARGE, 2_500, vec![2_200, 4_200]),
                at(Contender::Memcpy, LARGE, 1_000, vec![1_000, 1_000]),
            ],
            notes: vec![],
        };
        // 2500 / (100 + 2 × 1000); blocks: 2200 / 2100, 4200 / 2200.
        let (o, b, base) = ratio_to_copies(&r, Contender::Numaproc, LARGE, 2.0).unwrap();
        assert!((base - 2_100.0).abs() < 1e-9);
        assert!((o - 2_500.0 / 2_100.0).abs() < 1e-9);
        assert!((b - (2_200.0 / 2_100.0 + 4_200.0 / 2_200.0) / 2.0).abs() < 1e-9);
        assert!(ratio_to_copies(&r, Contender::ZeroCopy, LARGE, 1.0).is_none());
        assert_eq!(spread(&[3, 1, 2]), (2.0, 1.0, 3.0));
        assert_eq!(spread(&[]), (0.0, 0.0, 0.0));
    }
}
