//! `numaproc-bench`: latency, library procedures, start and restart,
//! throughput and the NUMA memory matrix of numaproc, beside the floor and
//! the peers, measured in one run.
//!
//! The driver plans jobs and runs each in a fresh process (this binary
//! again, as `numaproc-bench job --spec JSON --result FILE`): a forked
//! engine needs a master without threads when it starts, and a fresh
//! process per job keeps jobs from disturbing each other. Within a job,
//! numaproc and its baselines run in interleaved blocks.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use numaproc::{DEFAULT_BUFFER, SocKind};
use numaproc_benches::peers::MAX_PAYLOAD;
use numaproc_benches::report::{self, Machine, Report};
use numaproc_benches::spec::{
    Contender, Job, JobResult, LatencyJob, NumaJob, Placement, ProbeJob, StartConfig, StartJob,
    ThroughputJob, WaitCase,
};
use numaproc_benches::sys::{allowed_cpus, cpu_model, memory_nodes, synthetic_like_this_machine};

mod client;
mod run;
mod start;

/// Every section, in the order a run takes them.
const SECTIONS: [&str; 5] = ["latency", "library", "start", "throughput", "numa"];

#[derive(Parser)]
#[command(
    name = "numaproc-bench",
    version,
    about = "Benchmarks of numaproc against the floor and its peers, in one run",
    long_about = "Benchmarks of numaproc against the floor and its peers, in one run.\n\n\
        Latency of empty and echo calls (0 B to 1 MiB) for each SOC kind, cross-core and \
        same-core, hot and sleeping workers, beside raw shared-memory spin and futex \
        ping-pong, a Unix socket, pipes, crossbeam channels, a function call, memcpy and \
        iceoryx2 request-response; Rust and C library procedures beside sys_ping; start \
        and restart times; throughput of sessions x workers; the NUMA memory matrix. \
        Writes summary.md, CSV, JSON and plots to the report directory."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    args: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs one job (used by the driver; not meant to be typed).
    #[command(hide = true)]
    Job {
        /// The job, as JSON.
        #[arg(long)]
        spec: String,
        /// Where to write the result, as JSON.
        #[arg(long)]
        result: PathBuf,
    },
    /// A client process of a job's server (used by jobs; not meant to be
    /// typed).
    #[command(hide = true)]
    ClientPeer {
        /// The server's name.
        #[arg(long)]
        name: String,
        /// Its runtime directory.
        #[arg(long)]
        dir: PathBuf,
        /// The CPU to pin to.
        #[arg(long)]
        cpu: Option<u32>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Fewer sizes, blocks and samples: finishes in well under a minute.
    #[arg(long)]
    quick: bool,
    /// Report directory.
    #[arg(long, value_name = "DIR", default_value = "target/bench-report")]
    out: PathBuf,
    /// SOC kinds to measure, comma-separated.
    #[arg(long, value_name = "KINDS", value_delimiter = ',', default_values_t = [SocKind::Emulated, SocKind::Forked, SocKind::Spawned])]
    kinds: Vec<SocKind>,
    /// Sections to run, comma-separated: latency, library, start,
    /// throughput, numa.
    #[arg(long, value_name = "SECTIONS", value_delimiter = ',', default_values_t = SECTIONS.map(str::to_owned))]
    only: Vec<String>,
    /// Latency wait cases to run, comma-separated: hot, sleeping, both-sleep.
    #[arg(long, value_name = "CASES", value_delimiter = ',', default_values_t = ["hot".to_owned(), "sleeping".to_owned(), "both-sleep".to_owned()])]
    waits: Vec<String>,
    /// Latency placements to run, comma-separated: cross-core, same-core.
    #[arg(long, value_name = "PLACES", value_delimiter = ',', default_values_t = ["cross-core".to_owned(), "same-core".to_owned()])]
    placements: Vec<String>,
    /// Latency payload sizes, comma-separated, in bytes or with a K or M
    /// suffix (KiB, MiB), at most 1M: replaces the run's sizes for every
    /// wait case (default: 0,64,1K,4K,16K,64K,256K,1M hot and 0,4K,64K
    /// sleeping; --quick: 0,4K,1M hot and 0 sleeping).
    #[arg(long, value_name = "SIZES", value_delimiter = ',', value_parser = parse_size)]
    sizes: Option<Vec<usize>>,
    /// Print nothing but the report's path and the summary.
    #[arg(long)]
    quiet: bool,
    /// Shared-memory name prefix of the jobs' engines (`[A-Za-z0-9_]`, 1 to
    /// 32 bytes): a run's objects are `/dev/shm/numaproc-PREFIX-*`.
    #[arg(long, value_name = "NAME", default_value = "bench")]
    prefix: String,
}

/// A payload size: bytes, or a number with a K (KiB) or M (MiB) suffix.
fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let (digits, unit) = match t.strip_suffix(['K', 'k']) {
        Some(d) => (d, 1 << 10),
        None => match t.strip_suffix(['M', 'm']) {
            Some(d) => (d, 1 << 20),
            None => (t, 1),
        },
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (bytes, or a number with K or M)"))?;
    let size = n
        .checked_mul(unit)
        .filter(|&s| s <= MAX_PAYLOAD)
        .ok_or_else(|| format!("{text:?} is more than the largest payload, 1M"))?;
    Ok(size)
}

fn main() -> ExitCode {
    // When started as a spawned SOC of a job's engine, serve and exit.
    numaproc::soc::run_if_spawned();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Cmd::Job { spec, result }) => job(&spec, &result),
        Some(Cmd::ClientPeer { name, dir, cpu }) => client::serve(&name, &dir, cpu),
        None => drive(cli.args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("numaproc-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one job in this process and writes its result.
fn job(spec: &str, result: &Path) -> Result<()> {
    let job: Job = serde_json::from_str(spec).context("parsing the job")?;
    let out = match job {
        Job::Latency(j) => run::latency(j)?,
        Job::Throughput(j) => run::throughput(j)?,
        Job::Numa(j) => run::numa_matrix(j)?,
        Job::Start(j) => start::start(j)?,
        Job::Probe(j) => start::probe(j)?,
    };
    std::fs::write(result, serde_json::to_vec(&out)?)
        .with_context(|| format!("writing {}", result.display()))
}

/// Sizes, blocks and durations of a run.
struct Scale {
    sizes: Vec<usize>,
    sleep_sizes: Vec<usize>,
    blocks: usize,
    block_ms: u64,
    block_calls: usize,
    sleep_block_calls: usize,
    throughput: Vec<(usize, usize)>,
    throughput_ms: u64,
    throughput_blocks: usize,
    numa_bytes: usize,
    numa_passes: usize,
    numa_loads: usize,
    /// Runs (fresh processes) of each start configuration.
    start_reps: usize,
    /// Kills of a SOC per start job (forked and spawned).
    start_restarts: usize,
    job_timeout: Duration,
}

impl Scale {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                sizes: vec![0, 4 << 10, 1 << 20],
                sleep_sizes: vec![0],
                blocks: 4,
                block_ms: 15,
                block_calls: 5_000,
                sleep_block_calls: 200,
                throughput: vec![(1, 1), (2, 1), (2, 2)],
                throughput_ms: 200,
                throughput_blocks: 4,
                numa_bytes: 64 << 20,
                numa_passes: 2,
                numa_loads: 500_000,
                start_reps: 3,
                start_restarts: 2,
                job_timeout: Duration::from_secs(60),
            }
        } else {
            Self {
                sizes: vec![
                    0,
                    64,
                    1 << 10,
                    4 << 10,
                    16 << 10,
                    64 << 10,
                    256 << 10,
                    1 << 20,
                ],
                sleep_sizes: vec![0, 4 << 10, 64 << 10],
                blocks: 20,
                block_ms: 40,
                block_calls: 50_000,
                sleep_block_calls: 2_000,
                // Up to 8 sessions on 4 workers where the machine has the
                // CPUs for them to mean something.
                throughput: if allowed_cpus().len() >= 8 {
                    vec![
                        (1, 1),
                        (1, 2),
                        (2, 1),
                        (2, 2),
                        (4, 2),
                        (4, 4),
                        (6, 4),
                        (8, 4),
                    ]
                } else {
                    vec![(1, 1), (1, 2), (2, 1), (2, 2), (4, 2), (4, 4)]
                },
                throughput_ms: 2_000,
                throughput_blocks: 10,
                numa_bytes: 512 << 20,
                numa_passes: 5,
                numa_loads: 20_000_000,
                start_reps: 10,
                start_restarts: 5,
                job_timeout: Duration::from_secs(600),
            }
        }
    }
}

/// A placement with its (session CPU, worker CPU).
type Place = (Placement, Option<u32>, Option<u32>);

/// (session CPU, worker CPU) for each placement, from the default plan.
fn placements() -> (Vec<Place>, Vec<String>) {
    let mut notes = Vec::new();
    let plan = numaproc::Topology::detect()
        .map_err(|e| e.to_string())
        .and_then(|t| {
            numaproc::plan(&t, &numaproc::PlanRequest::default()).map_err(|e| e.to_string())
        });
    let cpus: Vec<u32> = match &plan {
        Ok(p) if p.binding => {
            let mut c: Vec<u32> = p.socs[0].workers.iter().map(|w| w.cpu).collect();
            c.sort_unstable();
            c.dedup();
            c
        }
        Ok(_) => {
            notes.push("workers are not bound on this machine: nothing is pinned".to_owned());
            Vec::new()
        }
        Err(e) => {
            notes.push(format!("no plan ({e}): nothing is pinned"));
            Vec::new()
        }
    };
    let out = match cpus.as_slice() {
        [a, b, ..] => vec![
            (Placement::Cross, Some(*a), Some(*b)),
            (Placement::Same, Some(*b), Some(*b)),
        ],
        [a] => {
            notes.push("one CPU only: no cross-core case".to_owned());
            vec![(Placement::Same, Some(*a), Some(*a))]
        }
        [] => vec![(Placement::Cross, None, None)],
    };
    (out, notes)
}

fn plan_jobs(args: &RunArgs, scale: &Scale) -> (Vec<Job>, Vec<String>) {
    let mut jobs = Vec::new();
    let (places, mut notes) = placements();
    let want = |s: &str| args.only.iter().any(|o| o == s);
    let prefix = args.prefix.clone();
    if want("latency") {
        for &kind in &args.kinds {
            for &(placement, session_cpu, worker_cpu) in &places {
                if !args.placements.iter().any(|p| p == placement.name()) {
                    continue;
                }
                for wait in [WaitCase::Hot, WaitCase::Sleeping, WaitCase::BothSleep] {
                    if !args.waits.iter().any(|w| w == wait.name()) {
                        continue;
                    }
                    use Contender::*;
                    let (contenders, reference) = match (placement, wait) {
                        (Placement::Cross, WaitCase::Hot) => (
                            vec![
                                Numaproc, ZeroCopy, Client, ShmSpin, ShmYield, Futex, Uds, Pipe,
                                Crossbeam, FnCall, Memcpy, Iceoryx2,
                            ],
                            ShmSpin,
                        ),
                        // Pure spinning on one core would wait out whole
                        // time slices: the floor there yields.
                        (Placement::Same, WaitCase::Hot) => (
                            vec![
                                Numaproc, Client, ShmYield, Futex, Uds, Pipe, Crossbeam, FnCall,
                            ],
                            ShmYield,
                        ),
                        (_, WaitCase::Sleeping) => (vec![Numaproc, FutexSpin, Futex], FutexSpin),
                        (_, WaitCase::BothSleep) => (vec![Numaproc, Futex, FutexSpin], Futex),
                    };
                    let hot = wait == WaitCase::Hot;
                    jobs.push(Job::Latency(LatencyJob {
                        kind,
                        placement,
                        wait,
                        sizes: if hot {
                            scale.sizes.clone()
                        } else {
                            scale.sleep_sizes.clone()
                        },
                        contenders,
                        reference,
                        blocks: scale.blocks,
                        block_calls: if hot {
                            scale.block_calls
                        } else {
                            scale.sleep_block_calls
                        },
                        block_ms: scale.block_ms,
                        gap_us: if hot { 0 } else { 50 },
                        session_cpu,
                        worker_cpu,
                        prefix: prefix.clone(),
                        libraries: false,
                    }));
                }
            }
        }
    }
    if want("library") {
        // Library procedures beside sys_ping, hot, cross-core.
        let cross = places.iter().find(|p| p.0 == Placement::Cross);
        match cross {
            Some(&(placement, session_cpu, worker_cpu)) => {
                for &kind in &args.kinds {
                    use Contender::*;
                    jobs.push(Job::Latency(LatencyJob {
                        kind,
                        placement,
                        wait: WaitCase::Hot,
                        sizes: vec![0],
                        contenders: vec![Numaproc, Echo8, RustLib, CLib],
                        reference: Numaproc,
                        blocks: scale.blocks,
                        block_calls: scale.block_calls,
                        block_ms: scale.block_ms,
                        gap_us: 0,
                        session_cpu,
                        worker_cpu,
                        prefix: prefix.clone(),
                        libraries: true,
                    }));
                }
            }
            None => notes.push("no cross-core placement: no library jobs".to_owned()),
        }
    }
    if want("start") {
        jobs.extend(start_jobs(args, scale, &prefix));
    }
    if want("throughput") {
        for &kind in &args.kinds {
            for &(sessions, workers) in &scale.throughput {
                jobs.push(Job::Throughput(ThroughputJob {
                    kind,
                    sessions,
                    workers,
                    duration_ms: scale.throughput_ms,
                    blocks: scale.throughput_blocks,
                    prefix: prefix.clone(),
                }));
            }
        }
    }
    if want("numa") {
        // One matrix, from the most isolated kind asked for.
        let kind = if args.kinds.contains(&SocKind::Forked) {
            SocKind::Forked
        } else {
            args.kinds.first().copied().unwrap_or_default()
        };
        jobs.push(Job::Numa(NumaJob {
            kind,
            bytes: scale.numa_bytes,
            passes: scale.numa_passes,
            chase_loads: scale.numa_loads,
            prefix,
        }));
    }
    (jobs, notes)
}

/// The start section: every SOC kind with 1 and 2 SOCs, with and without
/// the Rust example library; and, to see where the time goes, 2 SOCs
/// planned against a synthetic topology (no hwloc read of the machine),
/// with 64-byte buffers, and 1 SOC restarted without back-off. Each
/// configuration runs `start_reps` times, each time in a fresh process,
/// interleaved run by run with the others and with the probes.
fn start_jobs(args: &RunArgs, scale: &Scale, prefix: &str) -> Vec<Job> {
    let base = |kind: SocKind, socs: usize, library: bool| StartConfig {
        kind,
        socs,
        library,
        synthetic: None,
        buffer: DEFAULT_BUFFER,
        backoff_ms: numaproc::RestartPolicy::default().backoff_ms,
    };
    let mut configs = Vec::new();
    for &kind in &args.kinds {
        for socs in [1, 2] {
            for library in [false, true] {
                configs.push(base(kind, socs, library));
            }
        }
    }
    let shape = synthetic_like_this_machine();
    for &kind in &args.kinds {
        configs.push(StartConfig {
            synthetic: Some(shape.clone()),
            ..base(kind, 2, false)
        });
        if kind != SocKind::Emulated {
            configs.push(StartConfig {
                buffer: 64,
                ..base(kind, 2, false)
            });
            configs.push(StartConfig {
                backoff_ms: 0,
                ..base(kind, 1, false)
            });
        }
    }
    let mut jobs = Vec::new();
    let n = configs.len();
    for rep in 0..scale.start_reps {
        for k in 0..n {
            let config = configs[(k + rep) % n].clone();
            jobs.push(Job::Start(StartJob {
                restarts: if config.restartable() {
                    scale.start_restarts
                } else {
                    0
                },
                config,
                rep,
                prefix: prefix.to_owned(),
            }));
        }
        jobs.push(Job::Probe(ProbeJob { rep }));
    }
    jobs
}

/// Runs `job` in a child process, killing it after `timeout`.
fn run_child(job: &Job, dir: &Path, index: usize, timeout: Duration) -> Result<JobResult> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let result = dir.join(format!("job-{index}.json"));
    let _ = std::fs::remove_file(&result);
    let mut cmd = Command::new(exe);
    // The engine's and the libraries' info lines (a SOC restarting, a
    // library ready) would fill the terminal: errors only, unless asked.
    let chatty = matches!(job, Job::Start(_) | Job::Probe(_))
        || matches!(job, Job::Latency(l) if l.libraries);
    if chatty && std::env::var_os("NUMAPROC_LOG").is_none() {
        cmd.env("NUMAPROC_LOG", "error");
    }
    let mut child = cmd
        .arg("job")
        .arg("--spec")
        .arg(serde_json::to_string(job)?)
        .arg("--result")
        .arg(&result)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the job process")?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {timeout:?} and was killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if !status.success() {
        bail!("the job process failed ({status})");
    }
    let bytes = std::fs::read(&result).with_context(|| format!("reading {}", result.display()))?;
    let _ = std::fs::remove_file(&result);
    Ok(serde_json::from_slice(&bytes)?)
}

/// Today's UTC date and time, `YYYY-MM-DD HH:MM`.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60
    )
}

fn kernel() -> String {
    nix::sys::utsname::uname()
        .map(|u| {
            format!(
                "{} {}",
                u.sysname().to_string_lossy(),
                u.release().to_string_lossy()
            )
        })
        .unwrap_or_else(|_| "unknown kernel".to_owned())
}

fn drive(args: RunArgs) -> Result<()> {
    for s in &args.only {
        if !SECTIONS.contains(&s.as_str()) {
            bail!(
                "unknown section {s:?} (expected one of {})",
                SECTIONS.join(", ")
            );
        }
    }
    if args.kinds.is_empty() {
        bail!("--kinds names no SOC kind");
    }
    if let Err(e) = numaproc::ShmName::check_prefix(&args.prefix) {
        bail!("--prefix {:?}: {e}", args.prefix);
    }
    for w in &args.waits {
        if !["hot", "sleeping", "both-sleep"].contains(&w.as_str()) {
            bail!("unknown wait case {w:?} (expected hot, sleeping or both-sleep)");
        }
    }
    for p in &args.placements {
        if !["cross-core", "same-core"].contains(&p.as_str()) {
            bail!("unknown placement {p:?} (expected cross-core or same-core)");
        }
    }
    let mut scale = Scale::new(args.quick);
    if let Some(sizes) = &args.sizes {
        if sizes.is_empty() {
            bail!("--sizes needs at least one size");
        }
        scale.sizes = sizes.clone();
        scale.sleep_sizes = sizes.clone();
    }
    let (jobs, notes) = plan_jobs(&args, &scale);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut report = Report {
        date: utc_now(),
        machine: Machine {
            cpu_model: cpu_model(),
            cpus: allowed_cpus(),
            mem_nodes: memory_nodes(),
            kernel: kernel(),
        },
        quick: args.quick,
        seconds: 0.0,
        latency: Vec::new(),
        throughput: Vec::new(),
        numa: Vec::new(),
        start: Vec::new(),
        probes: Vec::new(),
        failures: Vec::new(),
    };
    let start = Instant::now();
    let total = jobs.len();
    let mut left_estimate: f64 = jobs.iter().map(Job::estimate_s).sum();
    for n in &notes {
        eprintln!("numaproc-bench: note: {n}");
    }
    for (i, job) in jobs.iter().enumerate() {
        let t = Instant::now();
        if !args.quiet {
            eprint!("[{:>2}/{total}] {} ...", i + 1, job.describe());
        }
        match run_child(job, &args.out, i, scale.job_timeout) {
            Ok(r) => {
                left_estimate -= job.estimate_s();
                if !args.quiet {
                    let done = start.elapsed().as_secs_f64();
                    let left = left_estimate.max(0.0);
                    eprintln!(
                        " {:.1} s (elapsed {done:.0} s, about {left:.0} s left)",
                        t.elapsed().as_secs_f64()
                    );
                }
                match r {
                    JobResult::Latency(l) => report.latency.push(l),
                    JobResult::Throughput(x) => report.throughput.push(x),
                    JobResult::Numa(x) => report.numa.push(x),
                    JobResult::Start(x) => report.start.push(x),
                    JobResult::Probe(x) => report.probes.push(x),
                }
            }
            Err(e) => {
                left_estimate -= job.estimate_s();
                if !args.quiet {
                    eprintln!(" FAILED: {e:#}");
                }
                report.failures.push(format!("{}: {e:#}", job.describe()));
            }
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    let (files, remarks) = report::write(&report, &args.out)?;
    print!("{}", report::markdown(&report));
    for r in remarks {
        eprintln!("numaproc-bench: {r}");
    }
    println!(
        "\nreport: {} ({} files: summary.md, latency.csv, start.csv, restart.csv, throughput.csv, numa.csv, results.json, plots)",
        args.out.display(),
        files.len()
    );
    if !report.failures.is_empty() {
        bail!("{} job(s) failed (see the report)", report.failures.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_bytes_and_binary_suffixes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("64"), Ok(64));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("16k"), Ok(16 << 10));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert!(parse_size("2M").unwrap_err().contains("largest payload"));
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
        assert!(parse_size("-1").is_err());
    }
}
