//! `numaproc demo`: starts an engine on the embedded default
//! configuration (or `--config`), checks every worker, measures the round
//! trip beside the physical floor, shuts down, and reports.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use numaproc::sys::SysInfo;
use numaproc::{Engine, EngineOptions, OutputBuf, ProcContext, ProcError, SocKind, Target};
use numaproc_procs::stats::{fmt_ns, percentile};
use serde::Serialize;

use crate::{floor, libs};

const DEMO_TOML: &str = include_str!("demo.toml");

#[derive(clap::Args)]
pub(crate) struct DemoArgs {
    /// SOC kind: emulated (threads of this process), forked (child
    /// processes) or spawned (fresh processes of this executable).
    #[arg(long, value_name = "KIND")]
    kind: Option<SocKind>,
    /// Load this procedure library in every SOC and call its procedures.
    /// A name (`x` for `libx.so`, or a file name) is looked up in the
    /// library directory; a path (with a `/`, relative to the working
    /// directory) must lie beneath it. Repeatable.
    #[arg(long = "lib", value_name = "NAME|PATH")]
    libs: Vec<String>,
    /// Directory of procedure libraries (default: the directory of the
    /// first --lib path, else of this executable, where cargo puts the
    /// example libraries).
    #[arg(long, value_name = "DIR")]
    lib_dir: Option<std::path::PathBuf>,
    /// Number of SOCs (default: one per NUMA node).
    #[arg(long, value_name = "N")]
    socs: Option<usize>,
    /// Workers per SOC (default: the cores of the SOC's share of its node).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Number of timed sys_ping calls (1 to 10000000).
    #[arg(long, value_name = "N", default_value_t = 5000, value_parser = parse_calls)]
    calls: usize,
    /// Read engine options from a TOML file instead of the embedded default.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

/// Most timed calls of `numaproc demo`: their samples are kept in memory.
const MAX_DEMO_CALLS: usize = 10_000_000;

fn parse_calls(text: &str) -> Result<usize, String> {
    let n: usize = text
        .parse()
        .map_err(|e| format!("{text:?} is not a number of calls: {e}"))?;
    if (1..=MAX_DEMO_CALLS).contains(&n) {
        Ok(n)
    } else {
        Err(format!("must be 1 to {MAX_DEMO_CALLS}, got {n}"))
    }
}

/// The demo's user procedure: the 64-bit FNV-1a hash of the input.
fn demo_hash(_: &ProcContext<'_>, input: &[u8], out: &mut OutputBuf<'_>) -> Result<(), ProcError> {
    out.write(&numaproc_abi::fnv1a(input).to_le_bytes())
}

#[derive(Serialize)]
struct WorkerRow {
    soc: usize,
    node: u32,
    pid: u32,
    worker: usize,
    planned_cpu: Option<u32>,
    affinity: Vec<u32>,
    ping: bool,
    echo: bool,
    user: bool,
}

#[derive(Serialize)]
struct Latency {
    calls: usize,
    p50_ns: u64,
    p90_ns: u64,
    p99_ns: u64,
    p999_ns: u64,
    max_ns: u64,
    mean_ns: u64,
}

impl Latency {
    fn of(mut samples: Vec<u64>) -> Self {
        samples.sort_unstable();
        Latency {
            calls: samples.len(),
            p50_ns: percentile(&samples, 0.50),
            p90_ns: percentile(&samples, 0.90),
            p99_ns: percentile(&samples, 0.99),
            p999_ns: percentile(&samples, 0.999),
            max_ns: samples.last().copied().unwrap_or(0),
            mean_ns: samples.iter().sum::<u64>() / samples.len().max(1) as u64,
        }
    }
}

/// CPUs for the floor: two of the bound workers' that this process may
/// run on (see [`floor::cpus`]); unpinned when workers are not bound.
fn floor_cpus(engine: &Engine) -> (Option<u32>, Option<u32>) {
    let plan = engine.plan();
    if !plan.binding {
        return (None, None);
    }
    let workers: Vec<u32> = plan
        .socs
        .iter()
        .flat_map(|s| s.workers.iter().map(|w| w.cpu))
        .collect();
    floor::cpus(&workers, &numaproc::allowed_cpus().unwrap_or_default())
}

#[derive(Serialize)]
struct DemoReport {
    kind: SocKind,
    master_pid: u32,
    binding: bool,
    plan_notes: Vec<String>,
    workers: Vec<WorkerRow>,
    user_proc: String,
    library_procs: Vec<String>,
    latency: Latency,
    /// Which case the latency is: where the caller and the worker ran.
    case: Case,
    floor: Latency,
    floor_cpus: (Option<u32>, Option<u32>),
    shutdown: String,
    ok: bool,
}

/// Where the measured calls ran: the caller's CPU against the CPU of the
/// worker that served each call.
#[derive(Serialize)]
struct Case {
    /// "cross-core", "same-core", "mixed" or "unpinned".
    name: &'static str,
    /// Calls whose worker ran on another CPU than the caller.
    cross_core: usize,
    /// Calls whose worker was pinned to the caller's CPU.
    same_core: usize,
    /// (caller CPU, worker CPU, calls) seen.
    placements: Vec<(u32, u32, usize)>,
    /// Why this case.
    why: String,
}

impl Case {
    fn of(binding: bool, workers: usize, placements: Vec<(u32, u32, usize)>) -> Self {
        let count = |same: bool| -> usize {
            placements
                .iter()
                .filter(|(c, w, _)| (c == w) == same)
                .map(|p| p.2)
                .sum()
        };
        let (same_core, cross_core) = (count(true), count(false));
        let (name, why) = if !binding {
            (
                "unpinned",
                "workers are not pinned to CPUs here, so where each call ran is the scheduler's choice"
                    .to_owned(),
            )
        } else if same_core == 0 {
            (
                "cross-core",
                format!(
                    "a call takes an idle worker on another CPU than the caller's first, and one of the {workers} workers always was"
                ),
            )
        } else if cross_core == 0 {
            (
                "same-core",
                "no worker runs on another CPU than the caller's: the caller hands its CPU to the worker and sleeps until the answer"
                    .to_owned(),
            )
        } else {
            (
                "mixed",
                "for some calls the only idle worker was on the caller's CPU (it moved between CPUs, or another program kept the others busy)"
                    .to_owned(),
            )
        };
        Case {
            name,
            cross_core,
            same_core,
            placements,
            why,
        }
    }
}

/// Runs the demo: options, start, a check of every worker, the latency
/// beside the floor, shutdown, report. An error at any step drops the
/// engine, which stops its SOCs and removes its shared memory: nothing is
/// left behind.
pub(crate) fn run(args: DemoArgs) -> Result<ExitCode> {
    let (options, user_proc) = demo_options(&args)?;
    let kind = options.soc_kind;
    let engine = Engine::start(options).context("starting the engine")?;
    let rows = check_every_worker(&engine, user_proc)?;
    let Measured {
        latency,
        case,
        floor,
        floor_cpus,
    } = measure(&engine, args.calls)?;
    let library_procs = library_procs(&engine);
    let binding = engine.plan().binding;
    let plan_notes = engine.plan().notes.clone();
    let shutdown = match engine.shutdown() {
        Ok(()) => "clean".to_owned(),
        Err(e) => e.to_string(),
    };
    let master_pid = std::process::id();
    let pinned_ok = rows
        .iter()
        .all(|r| r.planned_cpu.is_none_or(|c| r.affinity == [c]));
    let in_own_process = kind == SocKind::Emulated || rows.iter().all(|r| r.pid != master_pid);
    let ok = rows.iter().all(|r| r.ping && r.echo && r.user)
        && pinned_ok
        && in_own_process
        && shutdown == "clean";
    let report = DemoReport {
        kind,
        master_pid,
        binding,
        plan_notes,
        workers: rows,
        user_proc: user_proc.to_owned(),
        library_procs,
        latency,
        case,
        floor,
        floor_cpus,
        shutdown,
        ok,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    if !ok {
        bail!("some checks failed (see above)");
    }
    Ok(ExitCode::SUCCESS)
}

/// Step 1: the engine's options (the embedded default or `--config`, with
/// the flags over them) and the user procedure to call.
fn demo_options(args: &DemoArgs) -> Result<(EngineOptions, &'static str)> {
    let mut options = match &args.config {
        Some(path) => EngineOptions::from_toml_file(path)?,
        None => EngineOptions::from_toml(DEMO_TOML).context("the embedded demo configuration")?,
    };
    if let Some(kind) = args.kind {
        options.soc_kind = kind;
    }
    if args.socs.is_some() {
        options.socs = args.socs;
    }
    if args.workers.is_some() {
        options.workers_per_soc = args.workers;
    }
    if !args.libs.is_empty() {
        let (dir, entries) = libs::resolve(&args.libs, args.lib_dir.as_deref(), || {
            Ok(std::env::current_exe()?
                .parent()
                .context("the executable's directory")?
                .to_owned())
        })?;
        options.library_dir = Some(dir);
        options.libraries.extend(entries);
    }
    // Registered Rust procedures cannot reach spawned SOCs: there the
    // "user" procedure must come from a library (the example library's
    // example.fnv1a computes the same hash).
    if options.soc_kind == SocKind::Spawned {
        if options.libraries.is_empty() {
            bail!(
                "spawned SOCs only have built-in and library procedures: add --lib numaproc_example \
                 (the example library, built next to this executable by scripts/demo)"
            );
        }
        return Ok((options, "example.fnv1a"));
    }
    Ok((options.register("demo.fnv1a", demo_hash)?, "demo.fnv1a"))
}

/// Step 2: every worker answers `sys_ping`, echoes 4 KiB, runs the user
/// procedure, and says where it runs.
fn check_every_worker(engine: &Engine, user_proc: &str) -> Result<Vec<WorkerRow>> {
    let mut rows = Vec::new();
    let payload: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    for soc in 0..engine.soc_count() {
        for worker in 0..engine.worker_count(soc) {
            let t = Target::Worker { soc, worker };
            let ping = engine
                .call_on(t, "sys_ping", b"")
                .is_ok_and(|o| o.is_empty());
            let echo = engine
                .call_on(t, "sys_echo", &payload)
                .is_ok_and(|o| o == payload);
            let user = engine
                .call_on(t, user_proc, &payload)
                .is_ok_and(|o| o == numaproc_abi::fnv1a(&payload).to_le_bytes());
            let info_bytes = engine
                .call_on(t, "sys_info", b"")
                .with_context(|| format!("sys_info on SOC {soc} worker {worker}"))?;
            let info: SysInfo = serde_json::from_slice(&info_bytes)?;
            rows.push(WorkerRow {
                soc,
                node: info.node,
                pid: info.pid,
                worker,
                planned_cpu: info.planned_cpu,
                affinity: info.affinity,
                ping,
                echo,
                user,
            });
        }
    }
    Ok(rows)
}

/// The round trip beside the floor, and where the floor ran.
struct Measured {
    latency: Latency,
    case: Case,
    floor: Latency,
    floor_cpus: (Option<u32>, Option<u32>),
}

/// Step 3: back-to-back `sys_ping` calls on any worker, the name resolved
/// once, in blocks interleaved with blocks of the raw floor, so that both
/// see the same placement of this machine's (virtual) CPUs; each call's
/// caller CPU and worker CPU are noted (outside the timed part).
fn measure(engine: &Engine, calls: usize) -> Result<Measured> {
    let plan = engine.plan();
    let worker_cpu = |w: numaproc::WorkerId| {
        plan.socs
            .get(w.soc)
            .and_then(|s| s.workers.get(w.worker))
            .map(|w| w.cpu)
    };
    let ping = engine.proc_id("sys_ping")?;
    let floor_cpus = floor_cpus(engine);
    let warmup = Instant::now();
    while warmup.elapsed() < Duration::from_millis(100) {
        engine.call(ping, b"")?;
    }
    const BLOCKS: usize = 10;
    let per_block = calls.div_ceil(BLOCKS);
    let mut samples = Vec::with_capacity(calls);
    let mut floor_samples = Vec::with_capacity(calls);
    let mut placements: std::collections::BTreeMap<(u32, u32), usize> = Default::default();
    for _ in 0..BLOCKS {
        floor_samples.extend(floor::spin_ping_pong(floor_cpus, per_block));
        for _ in 0..per_block {
            let t = Instant::now();
            let mut session = engine.submit(Target::Any, ping, b"")?;
            session.wait()?;
            samples.push(t.elapsed().as_nanos() as u64);
            if let (Some(c), Some(w)) = (current_cpu(), worker_cpu(session.worker())) {
                *placements.entry((c, w)).or_default() += 1;
            }
        }
    }
    let workers = plan.socs.iter().map(|s| s.workers.len()).sum();
    Ok(Measured {
        latency: Latency::of(samples),
        case: Case::of(
            plan.binding,
            workers,
            placements
                .into_iter()
                .map(|((c, w), n)| (c, w, n))
                .collect(),
        ),
        floor: Latency::of(floor_samples),
        floor_cpus,
    })
}

/// Step 4: the library procedures the SOCs serve, with their library.
fn library_procs(engine: &Engine) -> Vec<String> {
    engine
        .procedures()
        .filter_map(|p| match p.origin {
            numaproc::Origin::Library { name, version } => {
                Some(format!("{} ({name} {version})", p.name))
            }
            _ => None,
        })
        .collect()
}

fn print_report(r: &DemoReport) {
    let socs = r.workers.iter().map(|w| w.soc).max().map_or(0, |m| m + 1);
    println!(
        "numaproc demo: {socs} SOC(s), {kind} kind, {} worker(s), master pid {}",
        r.workers.len(),
        r.master_pid,
        kind = r.kind
    );
    println!(
        "binding: {}",
        if r.binding {
            "yes (each worker pinned to one CPU)"
        } else {
            "no"
        }
    );
    for note in &r.plan_notes {
        println!("note: {note}");
    }
    for p in &r.library_procs {
        println!("library procedure: {p}");
    }
    println!("user procedure: {}", r.user_proc);
    println!();
    println!(
        "{:>4} {:>5} {:>8} {:>7} {:>5} {:>9}  {:<5}{:<5}{:<5}",
        "SOC", "node", "pid", "worker", "cpu", "affinity", "ping", "echo", "user"
    );
    let ok = |b: bool| if b { "ok" } else { "FAIL" };
    for w in &r.workers {
        let aff = w
            .affinity
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let aff = if aff.len() > 9 {
            format!("{}…", &aff[..8])
        } else {
            aff
        };
        println!(
            "{:>4} {:>5} {:>8} {:>7} {:>5} {:>9}  {:<5}{:<5}{:<5}",
            w.soc,
            w.node,
            w.pid,
            w.worker,
            w.planned_cpu.map_or("-".to_owned(), |c| c.to_string()),
            aff,
            ok(w.ping),
            ok(w.echo),
            ok(w.user)
        );
    }
    let line = |what: &str, l: &Latency| {
        println!(
            "{what:<10} p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {})",
            fmt_ns(l.p50_ns as f64),
            fmt_ns(l.p90_ns as f64),
            fmt_ns(l.p99_ns as f64),
            fmt_ns(l.p999_ns as f64),
            fmt_ns(l.max_ns as f64),
            fmt_ns(l.mean_ns as f64)
        );
    };
    let cpu = |c: Option<u32>| c.map_or("any CPU".to_owned(), |c| format!("CPU {c}"));
    println!();
    println!(
        "Round trips, {} of each, in interleaved blocks:",
        r.latency.calls
    );
    line("sys_ping", &r.latency);
    let calls_on = r
        .case
        .placements
        .iter()
        .map(|(c, w, n)| format!("{n} from CPU {c} on the worker of CPU {w}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!("  case: {} ({calls_on})", r.case.name);
    println!("  why: {}", r.case.why);
    line("floor", &r.floor);
    println!(
        "  floor: two threads ping-pong one cache line by pure spinning ({} and {});",
        cpu(r.floor_cpus.0),
        cpu(r.floor_cpus.1)
    );
    println!(
        "  sys_ping / floor at p50: {:.1}x",
        r.latency.p50_ns as f64 / r.floor.p50_ns.max(1) as f64
    );
    println!("shutdown: {}", r.shutdown);
}

/// The CPU this thread runs on now.
fn current_cpu() -> Option<u32> {
    // SAFETY: sched_getcpu has no preconditions.
    u32::try_from(unsafe { nix::libc::sched_getcpu() }).ok()
}
